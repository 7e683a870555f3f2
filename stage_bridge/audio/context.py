"""The conditioning signal the model listens to while it writes the new stem.

STAGE was trained with two kinds of context: the song mix, or a bare metronome click. We add a
third, the mix with a quieter click on top, to pin the groove to the DAW grid when the mix
itself is rhythmically vague. The click is always the training-identical `click_track`.
"""

from __future__ import annotations

import math

import numpy as np

from stage_bridge.audio.click import click_track
from stage_bridge.audio.length import fit_length
from stage_bridge.errors import BadArgument

CONTEXT_MODES = ("mix", "click", "mix+click")

_PEAK_CEILING = 0.999


def build_context(
    mode: str,
    num_samples: int,
    sample_rate: int,
    mix: np.ndarray | None = None,
    bpm: float | None = None,
    beats_per_bar: int = 4,
    beat_unit: int = 4,
    offset_s: float = 0.0,
    click_gain_db: float = -6.0,
) -> np.ndarray:
    """Return the 1-D float32 context, exactly ``num_samples`` long at ``sample_rate``.

    ``mix`` must already be mono at ``sample_rate``; it is cropped or zero-padded. ``"click"``
    is the click alone at full level (as in training). ``"mix+click"`` adds the click at
    ``click_gain_db`` and, if that pushes the peak over 1, turns the whole signal down to a
    0.999 peak rather than clipping the music.
    """
    _check_request(mode, mix, bpm, click_gain_db)
    if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 0:
        raise ValueError(f"num_samples must be a non-negative integer, got {num_samples!r}")
    num_samples = int(num_samples)
    if mode == "mix":
        return _fit(mix, num_samples)
    click = click_track(num_samples, sample_rate, bpm, beats_per_bar, beat_unit, offset_s)
    if mode == "click":
        return click
    combined = _fit(mix, num_samples).astype(np.float64) + click * 10.0 ** (click_gain_db / 20.0)
    peak = float(np.max(np.abs(combined), initial=0.0))
    if peak > 1.0:
        combined *= _PEAK_CEILING / peak
    return combined.astype(np.float32)


def _check_request(
    mode: str, mix: np.ndarray | None, bpm: float | None, click_gain_db: float
) -> None:
    """Reject combinations that cannot produce a context, with a hint on how to fix them."""
    if mode not in CONTEXT_MODES:
        choices = ", ".join(CONTEXT_MODES)
        raise BadArgument(f"Unknown context mode {mode!r}; choose one of: {choices}.")
    if "mix" in mode and mix is None:
        raise BadArgument(
            f"Context mode {mode!r} needs the song: give an audio file, or use the 'click' mode."
        )
    if "click" in mode and bpm is None:
        raise BadArgument(
            f"Context mode {mode!r} needs the song tempo: give the bpm shown in your DAW."
        )
    if not math.isfinite(click_gain_db):
        raise BadArgument(f"Click level {click_gain_db!r} dB is not a number; use e.g. -6.")


def _fit(mix: np.ndarray, num_samples: int) -> np.ndarray:
    """Crop or zero-pad the mono ``mix`` to ``num_samples`` (float32 copy)."""
    mix = np.asarray(mix, dtype=np.float32)
    if mix.ndim != 1:
        raise ValueError(f"mix must be mono (1-D); got shape {mix.shape}. Use audio.to_mono first.")
    return fit_length(mix, num_samples)
