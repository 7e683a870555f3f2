"""Sample-rate conversion with a length the rest of the pipeline can rely on.

The model runs at 32 kHz while songs arrive at 44.1/48 kHz; going back and forth must keep bar
lengths exact, so the output always has ``round(n * sr_out / sr_in)`` samples, whatever the
resampler's own rounding does.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import soxr

from stage_bridge.audio.length import fit_length


def resample(samples: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample 1-D or ``(channels, n)`` float32 audio from ``sr_in`` to ``sr_out`` Hz.

    Uses soxr "VHQ" (transparent for music). Returns float32 with the same layout and exactly
    ``round(n * sr_out / sr_in)`` samples; a copy of the input when the rates are equal.
    """
    sr_in, sr_out = _rate(sr_in, "sr_in"), _rate(sr_out, "sr_out")
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim not in (1, 2):
        raise ValueError(f"expected 1-D or (channels, n) samples, got shape {samples.shape}")
    if sr_in == sr_out:
        return samples.copy()
    n = samples.shape[-1]
    target = round(Fraction(n * sr_out, sr_in))
    if n == 0:
        return np.zeros(samples.shape[:-1] + (0,), dtype=np.float32)
    frames = np.ascontiguousarray(samples.T)  # soxr wants (n, channels)
    out = soxr.resample(frames, sr_in, sr_out, quality="VHQ").astype(np.float32, copy=False)
    return fit_length(out.T, target)


def _rate(value: int, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value <= 0:
        raise ValueError(f"{name} must be a positive integer sample rate, got {value!r}")
    return int(value)
