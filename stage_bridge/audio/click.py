"""The metronome click STAGE was trained with, rebuilt without librosa.

STAGE's training data conditioned on ``librosa.clicks(beats) + librosa.clicks(downbeats)``
(1 kHz, 100 ms, same length as the audio) clipped to [-1, 1]. The model learned that exact
sound, so we reproduce it sample for sample: an exponentially decaying 1 kHz sine placed at
``floor(t * sr)`` for every beat, added a second time on downbeats (which therefore clip), cut
off at the end of the clip, overlapping clicks summed.
"""

from __future__ import annotations

import numpy as np

from stage_bridge.audio.timing import beat_samples


def click_waveform(sr: int, freq: float = 1000.0, duration: float = 0.1) -> np.ndarray:
    """One click: ``logspace(0, -10, base=2) * sin(2*pi*freq/sr * k)``, ``round(sr*duration)`` long.

    Same formula and operation order as ``librosa.clicks``' default click, so values match it.
    """
    length = int(np.round(sr * duration))
    envelope = np.logspace(0, -10, num=length, base=2.0)
    angular_freq = 2 * np.pi * freq / float(sr)
    return (envelope * np.sin(angular_freq * np.arange(length))).astype(np.float32)


def click_onsets(
    num_samples: int,
    sample_rate: int,
    bpm: float,
    beats_per_bar: int = 4,
    beat_unit: int = 4,
    offset_s: float = 0.0,
) -> np.ndarray:
    """Sample indices (int64) where a click starts: every beat in the clip, downbeats included."""
    onsets, _ = beat_samples(num_samples, sample_rate, bpm, beats_per_bar, beat_unit, offset_s)
    return onsets


def click_track(
    num_samples: int,
    sample_rate: int,
    bpm: float,
    beats_per_bar: int = 4,
    beat_unit: int = 4,
    offset_s: float = 0.0,
    freq: float = 1000.0,
) -> np.ndarray:
    """A ``num_samples``-long float32 click track: beats at unit level, downbeats doubled.

    Clipped to [-1, 1] exactly like STAGE's training data, so default downbeats hit 1.0.
    """
    beats, downbeats = beat_samples(
        num_samples, sample_rate, bpm, beats_per_bar, beat_unit, offset_s
    )
    click = click_waveform(sample_rate, freq).astype(np.float64)
    track = _place(beats, click, num_samples) + _place(downbeats, click, num_samples)
    return np.clip(track, -1.0, 1.0).astype(np.float32)


def _place(onsets: np.ndarray, click: np.ndarray, num_samples: int) -> np.ndarray:
    """Sum a copy of ``click`` starting at each onset, truncated at ``num_samples``."""
    out = np.zeros(num_samples, dtype=np.float64)
    for start in onsets:
        end = min(int(start) + click.shape[0], num_samples)
        out[start:end] += click[: end - start]
    return out
