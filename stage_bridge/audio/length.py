"""Bringing audio to an exact number of samples.

Every stage that hands audio on promises a length: the context is exactly as long as the
request, a resampled signal exactly ``round(n * sr_out / sr_in)`` samples, a stretched window
exactly the training window, a take exactly its bars. Resamplers, stretchers and codecs are
off by a few samples in either direction, so each of those places ends with the same step,
defined here once: cut the surplus at the end, or add silence at the end.
"""

from __future__ import annotations

import numpy as np


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """``x`` cropped or zero-padded at the end of its last axis to exactly ``n`` samples.

    Works for mono ``(n,)`` and multi-channel ``(channels, n)`` audio alike, keeps the dtype,
    and always returns a new C-contiguous array (never a view of ``x``), so the caller may
    modify the result without touching its input.
    """
    x = np.asarray(x)
    out = np.zeros(x.shape[:-1] + (n,), dtype=x.dtype)
    kept = min(n, x.shape[-1])
    out[..., :kept] = x[..., :kept]
    return out
