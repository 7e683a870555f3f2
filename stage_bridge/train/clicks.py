"""STAGE's training click at arbitrary beat times (a song's tracked or annotated beats).

`stage_bridge.audio.click` builds the click on a tempo grid for inference; training needs it at
the beats of a window of real music, after stretching: ``librosa.clicks(beats) +
librosa.clicks(downbeats)`` clipped to [-1, 1], as data/stemmed_dataset.py builds it.
"""

from __future__ import annotations

import numpy as np

from stage_bridge.audio.click import click_waveform


def click_at(beats_s, downbeats_s, num_samples: int, sr: int, freq: float = 1000.0) -> np.ndarray:
    """STAGE's training click for arbitrary beat times: float32, ``num_samples`` long.

    ``librosa.clicks(beats) + librosa.clicks(downbeats)`` clipped to [-1, 1]: the click of
    `stage_bridge.audio.click_waveform` starts at ``floor(t * sr)`` for each time in
    ``[0, num_samples / sr)`` and is cut at the end of the clip.
    """
    click = click_waveform(sr, freq).astype(np.float64)
    out = np.zeros(num_samples, dtype=np.float64)
    for times in (beats_s, downbeats_s):
        for start in click_onset_samples(times, num_samples, sr):
            end = min(start + click.shape[0], num_samples)
            out[start:end] += click[: end - start]
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def click_onset_samples(times_s, num_samples: int, sr: int) -> np.ndarray:
    """Sample indices ``floor(t * sr)`` of the times that fall inside a clip (int64)."""
    t = np.asarray(times_s, dtype=np.float64).reshape(-1)
    idx = np.floor(t * sr).astype(np.int64)
    return idx[(t >= 0) & (idx >= 0) & (idx < num_samples)]
