"""Beats, downbeats and onsets of audio, from a well-kept tracker chosen by name.

Why one module: the take's fit check (does it lock to the grid?), the evaluation (beat F1 of a
generated stem against its context) and training (click contexts built from a song's beats) must
all mean the same thing by "the beats of this audio", and a report must be able to name the
tracker that produced them (`Beats.tracker`).

Trackers:
- ``librosa``: librosa's dynamic-programming beat tracker (Ellis 2007) on its onset-strength
  envelope; needs no weights. Downbeats come from `estimate_downbeats`: the meter (3 or 4 beats
  per bar unless the caller knows it) and bar phase whose beats carry the most accent, where a
  beat's accent is what marks a bar's first beat in most music: a chord change (beat-synchronous
  chroma novelty), a low-frequency attack (kick, bass note) and the overall attack strength.
- ``beat_this``: Beat This (Foscarin et al., ISMIR 2024), the tracker the STAGE paper used; its
  own beat and downbeat heads, no post-processing DBN ("minimal" peak picking). Only when the
  ``beat_this`` package and a local checkpoint are present: nothing is ever downloaded. The
  checkpoint is ``$STAGE_BRIDGE_BEAT_THIS_CHECKPOINT`` or ``<user data>/beat_this/final0.ckpt``
  (`beat_this_checkpoint`).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stage_bridge.paths import user_data_dir

TRACKERS = ("librosa", "beat_this")
HOP = 512  # onset-envelope hop (librosa's default): 11.6 ms at 44.1 kHz
ACCENT_HOP = 128  # finer for the accents: a coarse frame grid beats with the tempo and fakes accents
METERS = (3, 4)  # beats per bar `estimate_downbeats` chooses from when the caller does not know it
LOW_FMAX = 150.0  # Hz: the band whose attacks are kicks and bass notes
BEAT_THIS_ENV = "STAGE_BRIDGE_BEAT_THIS_CHECKPOINT"


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


def beat_accents(y: np.ndarray, sr: int, beats: np.ndarray) -> np.ndarray:
    """How strongly each beat sounds like the first of a bar (one number per beat).

    The sum of: the low-band (< 150 Hz: kick, bass note) attack strength at the beat plus half
    the full-band one, both in units of the full-band envelope's spread (so a band with nothing
    in it adds nothing rather than amplified noise); and twice the chord change there: the
    cosine distance between the chroma of the beat starting there and of the one before,
    weighted by how loud the quieter of the two is (silence has no chords)."""
    import librosa

    y = _mono(y)
    hop = ACCENT_HOP
    full = librosa.onset.onset_strength(y=y, sr=sr, hop_length=hop)
    # 4 mel bands under 150 Hz: wider than an STFT bin at up to 48 kHz, so none is empty (librosa warns)
    low = librosa.onset.onset_strength(y=y, sr=sr, hop_length=hop, fmax=LOW_FMAX, n_mels=4)
    chroma = librosa.feature.chroma_stft(y=y, sr=sr, hop_length=hop, norm=None)
    n = min(chroma.shape[1], len(full), len(low))
    frames = np.clip(np.round(np.asarray(beats) * sr / hop).astype(int), 0, n - 1)
    reach = int(np.ceil(0.03 * sr / hop))  # a tracked beat may sit up to 30 ms off its attack

    def at_beats(env: np.ndarray) -> np.ndarray:
        return np.array([env[max(0, f - reach): f + reach + 1].max() for f in frames])

    scale = float(full[:n].std()) or 1.0
    attack = (at_beats(low[:n]) + 0.5 * at_beats(full[:n])) / scale
    bounds = np.append(frames, n)
    seg = np.stack([chroma[:, a:max(b, a + 1)].mean(axis=1) for a, b in zip(bounds[:-1], bounds[1:])], axis=1)
    energy = seg.sum(axis=0)
    unit = seg / np.maximum(np.linalg.norm(seg, axis=0, keepdims=True), 1e-12)
    change = np.zeros(len(frames))
    if len(frames) > 1:
        loud = np.sqrt(np.minimum(energy[1:], energy[:-1]) / max(float(energy.max()), 1e-12))
        change[1:] = (1.0 - (unit[:, 1:] * unit[:, :-1]).sum(axis=0)) * loud
    return attack + 2.0 * change


def estimate_downbeats(accents: np.ndarray, beats_per_bar: int | None = None) -> tuple[int, int]:
    """(beats per bar, index of the first downbeat) that best explain the accents: for each
    candidate meter (`METERS`, or the one given) and phase, the mean accent of the beats it calls
    downbeats minus that of the others; the largest contrast wins. Under two bars of beats there
    is too little evidence: 4 (or the given meter) and phase 0."""
    acc = np.asarray(accents, dtype=np.float64)
    meters = (beats_per_bar,) if beats_per_bar else METERS
    best = (-np.inf, meters[-1], 0)
    for m in meters:
        if m <= 1 or len(acc) < 2 * m:
            continue
        for phase in range(m):
            on = np.zeros(len(acc), dtype=bool)
            on[phase::m] = True
            contrast = acc[on].mean() - acc[~on].mean()
            if contrast > best[0]:
                best = (contrast, m, phase)
    return best[1], best[2]


def _track_librosa(y: np.ndarray, sr: int, beats_per_bar: int | None, bpm: float | None, downbeats: bool) -> Beats:
    import librosa

    env = onset_strength(y, sr)
    kwargs = {"bpm": float(bpm)} if bpm else {}
    tempo, frames = librosa.beat.beat_track(onset_envelope=env, sr=sr, hop_length=HOP, units="frames", **kwargs)
    beats = librosa.frames_to_time(frames, sr=sr, hop_length=HOP)
    tempo = float(np.atleast_1d(tempo)[0])
    if len(beats) > 1:
        tempo = 60.0 / float(np.median(np.diff(beats)))
    if not downbeats:
        found = beats[:0]
    elif beats_per_bar == 1 or len(beats) == 0:
        found = beats.copy()
    else:
        meter, phase = estimate_downbeats(beat_accents(y, sr, beats), beats_per_bar)
        found = beats[phase::meter]
    return Beats(beats=beats, downbeats=found, bpm=tempo, tracker=f"librosa {librosa.__version__}")


def beat_this_checkpoint() -> Path:
    """Where the Beat This checkpoint is looked for (it is never downloaded)."""
    env = os.environ.get(BEAT_THIS_ENV)
    return Path(env).expanduser() if env else user_data_dir() / "beat_this" / "final0.ckpt"


def beat_this_ready() -> bool:
    """Whether the Beat This tracker can run here (package importable, checkpoint on disk)."""
    import importlib.util

    try:
        found = importlib.util.find_spec("beat_this") is not None
    except (ImportError, ValueError, AttributeError):  # a broken or blocked installation
        found = False
    return found and beat_this_checkpoint().is_file()


@functools.lru_cache(maxsize=2)
def _beat_this_model(path: str):
    # github.com/CPJKU/beat_this, beat_this/inference.py: Audio2Beats(checkpoint_path, device,
    # float16=False, dbn=False); its load_model tries `checkpoint_path` as a local file first and
    # downloads only on FileNotFoundError, which `_track_beat_this` rules out by checking the file.
    # Calling it with (signal, sr) resamples to 22.05 kHz itself and returns its Postprocessor's
    # (beats, downbeats) in seconds ("minimal": peaks within +-70 ms with logit > 0).
    from beat_this.inference import Audio2Beats

    return Audio2Beats(checkpoint_path=path, device="cpu", dbn=False)


def _track_beat_this(y: np.ndarray, sr: int) -> Beats:
    try:
        import beat_this  # noqa: F401
    except ImportError:
        raise TrackerUnavailable("the Beat This tracker is not installed (pip install "
                                 "https://github.com/CPJKU/beat_this/archive/main.zip, then put its final0.ckpt "
                                 f"at {beat_this_checkpoint()}); or use --tracker librosa") from None
    path = beat_this_checkpoint()
    if not path.is_file():
        raise TrackerUnavailable(f"no Beat This checkpoint at {path}: download final0.ckpt from the Beat This "
                                 f"README and put it there (or set {BEAT_THIS_ENV}); or use --tracker librosa")
    beats, downbeats = _beat_this_model(str(path))(_mono(y).astype(np.float32), sr)
    beats = np.asarray(beats, dtype=np.float64)
    downbeats = np.asarray(downbeats, dtype=np.float64)
    bpm = 60.0 / float(np.median(np.diff(beats))) if len(beats) > 1 else 0.0
    version = getattr(beat_this, "__version__", "")
    return Beats(beats=beats, downbeats=downbeats, bpm=bpm, tracker=f"beat_this {version} {path.name}".strip())


def track_beats(y: np.ndarray, sr: int, *, tracker: str = "librosa", beats_per_bar: int | None = 4,
                bpm: float | None = None, downbeats: bool = True) -> Beats:
    """Beats and downbeats of ``y`` (mono, or channels-first stereo) at ``sr``.

    ``bpm`` is a tempo hint where the caller knows it (librosa only); ``beats_per_bar`` the
    meter's beats when known, ``None`` to estimate it (3 or 4). Beat This finds the meter
    itself and ignores both. ``downbeats=False`` is for callers that score beats only (a take's
    fit, beat F1): librosa's path then skips the downbeat estimate, whose chroma analysis of the
    whole signal costs more time and memory than the beats, and `Beats.downbeats` is empty."""
    if tracker == "librosa":
        return _track_librosa(y, sr, beats_per_bar, bpm, downbeats)
    if tracker == "beat_this":
        return _track_beat_this(y, sr)
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
