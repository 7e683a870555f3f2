"""Loudness: takes arrive a little quieter than the song they were made for.

Why: a musician auditions a take against the song. A take that comes in louder than the mix is
heard as "too much" before it is heard as good or bad, and the model's output level says nothing
about the song's. So each take is brought a fixed number of loudness units (LU) under the
context, the way a stem sits under a mix, and never so far up that it clips.

Integrated loudness (ITU-R BS.1770-4, measured with pyloudnorm) is how loud a listener hears a
whole passage; peak or RMS level is not (a snare-heavy take and a sustained bass line at the same
peak sound very differently loud). The gain is capped by the sample peak instead: it stays at or
below `PEAK_CEILING_DBFS`, whose 1 dB of headroom also covers most peaks between samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stage_bridge.audio.io import to_mono
from stage_bridge.errors import BadArgument

DEFAULT_OFFSET_LU = 6.0
"""How far under the context a take lands unless told otherwise: clearly audible, not in front."""

MAX_OFFSET_LU = 40.0
"""Further under than this is inaudible next to the song: surely a typo, refused."""

REFERENCE_LUFS = -14.0
"""The loudness a take is matched against when there is no context to measure (click mode, or a
silent mix in mix+click mode): that of a typical finished mix (what streaming services normalise
to), so with the default offset a click-only take arrives at -20 LUFS."""

PEAK_CEILING_DBFS = -1.0
"""A matched take's sample peak never goes above this (the gain is capped instead)."""

BLOCK_S = 0.4  # BS.1770's gating block


@dataclass(frozen=True)
class LoudnessMatch:
    """What matching did to one take. None is "nothing to measure": a silent take (`lufs`), or no
    context loudness (`context_lufs`: click mode, or a silent mix)."""

    lufs: float | None  # the take's integrated loudness after the gain, LUFS
    context_lufs: float | None  # the context's, over the bars the take covers, LUFS
    gain_db: float  # the gain applied to the take (0.0 when matching is off or the take is silent)
    limited: bool = False  # the peak ceiling capped the gain: the take is quieter than asked


def validate_loudness_offset(offset_lu: float | None) -> None:
    """None turns matching off; otherwise a number of LU under the context, 0 to `MAX_OFFSET_LU`."""
    if offset_lu is None:
        return
    if isinstance(offset_lu, bool) or not isinstance(offset_lu, (int, float)) or not math.isfinite(offset_lu) \
            or not 0.0 <= offset_lu <= MAX_OFFSET_LU:
        raise BadArgument(f"loudness offset must be from 0 to {MAX_OFFSET_LU:g} LU under the context (got "
                          f"{offset_lu!r}); turn loudness matching off to keep takes as generated.")


def measure_lufs(samples: np.ndarray, sample_rate: int) -> float | None:
    """Integrated loudness (LUFS) of 1-D mono or ``(channels, n)`` audio; None when there is nothing
    to measure (no samples, or everything under BS.1770's -70 LUFS gate, i.e. silence).

    Measured as a DAW plays it, so a mono take and a stereo mix compare as they are heard: mono on
    both speakers (two equal channels), more than two channels folded to that. Audio shorter than
    one 400 ms gating block is measured looped to one block (a short clip is heard looped).
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 1:
        x = x[np.newaxis]
    if x.shape[0] > 2:
        x = to_mono(x).astype(np.float64)[np.newaxis]
    if x.shape[0] == 1:
        x = np.repeat(x, 2, axis=0)
    n = x.shape[1]
    if n == 0 or not np.any(x):
        return None
    block = math.ceil(BLOCK_S * sample_rate)
    if n < block:
        x = np.tile(x, (1, -(-block // n)))
    import pyloudnorm  # here, not at the top: it loads scipy.signal (a second), and the audio package is light

    lufs = float(pyloudnorm.Meter(sample_rate, block_size=BLOCK_S).integrated_loudness(x.T))
    return lufs if math.isfinite(lufs) else None


def match_loudness(take: np.ndarray, sample_rate: int, context_lufs: float | None, offset_lu: float | None,
                   ceiling_dbfs: float = PEAK_CEILING_DBFS) -> tuple[np.ndarray, LoudnessMatch]:
    """Bring a mono `take` `offset_lu` under `context_lufs` (under `REFERENCE_LUFS` when there is
    no context loudness), with its sample peak at most `ceiling_dbfs`.

    `offset_lu` None: matching is off and the take is returned as it is, only measured. A silent
    take is returned as it is (there is no loudness to match).
    """
    before = measure_lufs(take, sample_rate)
    if offset_lu is None or before is None:
        return take, LoudnessMatch(before, context_lufs, 0.0)
    target = (REFERENCE_LUFS if context_lufs is None else context_lufs) - offset_lu
    wanted = target - before
    headroom = ceiling_dbfs - 20.0 * math.log10(float(np.max(np.abs(take))))  # > 0 peak: `before` was measured
    gain_db = min(wanted, headroom)
    out = (np.asarray(take, dtype=np.float64) * 10.0 ** (gain_db / 20.0)).astype(np.float32)
    return out, LoudnessMatch(measure_lufs(out, sample_rate), context_lufs, gain_db, limited=wanted > headroom)
