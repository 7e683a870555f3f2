"""Beats, downbeats and onsets of audio, from a well-kept tracker chosen by name.

Why one module: the take's fit check (does it lock to the grid?), the evaluation (beat F1 of a
generated stem against its context) and training (click contexts built from a song's beats) must
all mean the same thing by "the beats of this audio", and a report must be able to name the
tracker that produced them (`Beats.tracker`).

Trackers:
- ``librosa``: librosa's dynamic-programming beat tracker (Ellis 2007) on its onset-strength
  envelope; needs no weights. Downbeats: the bar phase whose beats carry the most onset strength.
- ``beat_this``: Beat This (Foscarin et al., 2024), the tracker the STAGE paper used; only when
  its package and a local checkpoint are present (nothing is downloaded).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TRACKERS = ("librosa", "beat_this")
HOP = 512  # onset-envelope hop (librosa's default): 11.6 ms at 44.1 kHz


class TrackerUnavailable(RuntimeError):
    """The chosen tracker cannot run here (package or checkpoint missing); the message says what
    to install or where to put the checkpoint."""


@dataclass(frozen=True)
class Beats:
    """Tracked beat and downbeat times in seconds (downbeats are a subset of beats), the tempo
    they imply, and the tracker's name and version for reports."""

    beats: np.ndarray
    downbeats: np.ndarray
    bpm: float
    tracker: str


def _mono(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float32)
    return y.mean(axis=0) if y.ndim == 2 else y


def onset_strength(y: np.ndarray, sr: int) -> np.ndarray:
    """librosa's onset-strength envelope of mono ``y`` at `HOP` samples per frame."""
    import librosa

    return librosa.onset.onset_strength(y=_mono(y), sr=sr, hop_length=HOP)


def onset_times(y: np.ndarray, sr: int) -> np.ndarray:
    """Onset times in seconds (librosa's peak picking on the onset envelope, backtracked to the
    preceding energy minimum is NOT applied: the peak is where the attack is heard)."""
    import librosa

    env = onset_strength(y, sr)
    frames = librosa.onset.onset_detect(onset_envelope=env, sr=sr, hop_length=HOP, units="frames")
    return librosa.frames_to_time(frames, sr=sr, hop_length=HOP)


def _downbeats(beats: np.ndarray, env: np.ndarray, sr: int, beats_per_bar: int) -> np.ndarray:
    """Every `beats_per_bar`-th beat, starting at the phase whose beats hold the most onset
    strength (accents fall on the one more often than elsewhere)."""
    if len(beats) == 0 or beats_per_bar <= 1:
        return beats.copy()
    frames = np.clip(np.round(beats * sr / HOP).astype(int), 0, len(env) - 1)
    strength = env[frames]
    phase = int(np.argmax([strength[p::beats_per_bar].mean() if len(strength[p::beats_per_bar]) else -1.0
                           for p in range(beats_per_bar)]))
    return beats[phase::beats_per_bar]


def _track_librosa(y: np.ndarray, sr: int, beats_per_bar: int, bpm: float | None) -> Beats:
    import librosa

    env = onset_strength(y, sr)
    kwargs = {"bpm": float(bpm)} if bpm else {}
    tempo, frames = librosa.beat.beat_track(onset_envelope=env, sr=sr, hop_length=HOP, units="frames", **kwargs)
    beats = librosa.frames_to_time(frames, sr=sr, hop_length=HOP)
    tempo = float(np.atleast_1d(tempo)[0])
    if len(beats) > 1:
        tempo = 60.0 / float(np.median(np.diff(beats)))
    return Beats(beats=beats, downbeats=_downbeats(beats, env, sr, beats_per_bar), bpm=tempo,
                 tracker=f"librosa {librosa.__version__}")


def track_beats(y: np.ndarray, sr: int, *, tracker: str = "librosa", beats_per_bar: int = 4,
                bpm: float | None = None) -> Beats:
    """Beats and downbeats of ``y`` (mono, or channels-first stereo) at ``sr``.

    ``bpm`` is a tempo hint where the caller knows it; ``beats_per_bar`` the meter's beats."""
    if tracker == "librosa":
        return _track_librosa(y, sr, beats_per_bar, bpm)
    if tracker == "beat_this":
        raise TrackerUnavailable("the Beat This tracker is not set up here; use --tracker librosa")
    raise ValueError(f"unknown beat tracker {tracker!r}; choose one of: {', '.join(TRACKERS)}")


F1_TOLERANCE_S = 0.07  # the STAGE paper's (and mir_eval's default) beat-matching window


def beat_f1(reference: np.ndarray, estimated: np.ndarray, tolerance_s: float = F1_TOLERANCE_S) -> float:
    """F-measure of ``estimated`` event times against ``reference`` ones (seconds), each matched
    at most once within ``tolerance_s``: mir_eval's implementation, without its usual trimming of
    the first 5 s (a take or an 8-bar context is often only that long)."""
    import mir_eval

    ref = np.sort(np.asarray(reference, dtype=np.float64))
    est = np.sort(np.asarray(estimated, dtype=np.float64))
    if ref.size == 0 or est.size == 0:  # mir_eval's answer too, without its warning
        return 0.0
    return float(mir_eval.beat.f_measure(ref, est, f_measure_threshold=tolerance_s))
