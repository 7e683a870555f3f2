"""Musical time: bars, beats, seconds and samples.

DAW convention: ``bpm`` counts quarter notes whatever the meter, so a bar of
``beats_per_bar/beat_unit`` lasts ``beats_per_bar * (4 / beat_unit) * 60 / bpm`` seconds
(6/8 at 120 bpm is 1.5 s). Sample counts are derived with exact rational arithmetic from the
numbers the musician typed (120.5 is 241/2, not the nearest binary float) so a 4-bar take lands
on exactly the sample the DAW expects and loops without drift.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction

import numpy as np

from stage_bridge.errors import BadArgument

BPM_RANGE = (30, 300)
BEATS_PER_BAR_RANGE = (1, 32)
BEAT_UNITS = (1, 2, 4, 8, 16)


def validate_tempo(bpm: float, beats_per_bar: int = 4, beat_unit: int = 4) -> None:
    """Raise `BadArgument` unless tempo and meter are something a DAW session could have."""
    if not _is_real(bpm) or not math.isfinite(bpm) or not BPM_RANGE[0] <= bpm <= BPM_RANGE[1]:
        raise BadArgument(
            f"Tempo {bpm!r} is not usable: give a bpm between {BPM_RANGE[0]} and {BPM_RANGE[1]} "
            "(quarter notes per minute, as shown in your DAW)."
        )
    lo, hi = BEATS_PER_BAR_RANGE
    if not is_int(beats_per_bar) or not lo <= beats_per_bar <= hi:
        raise BadArgument(
            f"Beats per bar {beats_per_bar!r} is not usable: give a whole number from {lo} to {hi} "
            "(the top number of the time signature)."
        )
    if not is_int(beat_unit) or beat_unit not in BEAT_UNITS:
        units = ", ".join(str(u) for u in BEAT_UNITS)
        raise BadArgument(
            f"Beat unit {beat_unit!r} is not usable: the bottom number of the time signature "
            f"must be one of {units}."
        )


def beat_seconds(bpm: float, beat_unit: int = 4) -> float:
    """Length of one beat (a ``1/beat_unit`` note) in seconds."""
    validate_tempo(bpm, beat_unit=beat_unit)
    return float(_beat_fraction(bpm, beat_unit))


def bar_seconds(bpm: float, beats_per_bar: int = 4, beat_unit: int = 4) -> float:
    """Length of one bar in seconds."""
    validate_tempo(bpm, beats_per_bar, beat_unit)
    return float(_bar_fraction(bpm, beats_per_bar, beat_unit))


def bars_to_seconds(bars: float, bpm: float, beats_per_bar: int = 4, beat_unit: int = 4) -> float:
    """Length of ``bars`` bars (fractions allowed) in seconds."""
    validate_tempo(bpm, beats_per_bar, beat_unit)
    return float(_exact(_non_negative(bars, "bars")) * _bar_fraction(bpm, beats_per_bar, beat_unit))


def bars_to_samples(
    bars: float, bpm: float, sample_rate: int, beats_per_bar: int = 4, beat_unit: int = 4
) -> int:
    """Length of ``bars`` bars in samples, rounded to the nearest sample (ties round up).

    Exact: 4 bars at 120 bpm and 44100 Hz is 352800, with no floating-point error to round.
    """
    validate_tempo(bpm, beats_per_bar, beat_unit)
    seconds = _exact(_non_negative(bars, "bars")) * _bar_fraction(bpm, beats_per_bar, beat_unit)
    return _round_half_up(seconds * _sample_rate(sample_rate))


def seconds_to_samples(seconds: float, sr: int) -> int:
    """``seconds`` in samples at ``sr`` Hz, rounded to the nearest sample (ties round up)."""
    return _round_half_up(_exact(_non_negative(seconds, "seconds")) * _sample_rate(sr))


def beat_times(
    bpm: float,
    duration_s: float,
    beats_per_bar: int = 4,
    beat_unit: int = 4,
    offset_s: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Times (seconds, float64) of every beat and every downbeat in ``[0, duration_s)``.

    ``offset_s`` is the time of a downbeat; the grid extends both ways from it, so with a
    positive offset the pickup beats before it are included, and downbeats fall every
    ``beats_per_bar`` beats counted from it.
    """
    validate_tempo(bpm, beats_per_bar, beat_unit)
    end = _exact(_non_negative(duration_s, "duration_s"))
    numbers_, times = _grid(bpm, beat_unit, offset_s, end)
    beats = np.array([float(t) for t in times], dtype=np.float64)
    return beats, beats[numbers_ % beats_per_bar == 0]


def beat_samples(
    num_samples: int,
    sample_rate: int,
    bpm: float,
    beats_per_bar: int = 4,
    beat_unit: int = 4,
    offset_s: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample indices ``floor(t * sample_rate)`` (int64) of the beats and downbeats in a clip.

    Same grid as `beat_times` over ``num_samples / sample_rate`` seconds, but floored exactly
    (a beat at 2/3 s at 44100 Hz is sample 29400, not the 29399 float rounding would give).
    """
    validate_tempo(bpm, beats_per_bar, beat_unit)
    rate = _sample_rate(sample_rate)
    if not is_int(num_samples) or num_samples < 0:
        raise ValueError(f"num_samples must be a non-negative integer, got {num_samples!r}")
    numbers_, times = _grid(bpm, beat_unit, offset_s, Fraction(int(num_samples), rate))
    onsets = np.array([math.floor(t * rate) for t in times], dtype=np.int64)
    return onsets, onsets[numbers_ % beats_per_bar == 0]


def _grid(
    bpm: float, beat_unit: int, offset_s: float, end: Fraction
) -> tuple[np.ndarray, list[Fraction]]:
    """Beat numbers k (0 = the downbeat at ``offset_s``) and exact times of beats in [0, end)."""
    offset = _exact(_finite(offset_s, "offset_s"))
    beat = _beat_fraction(bpm, beat_unit)
    first = math.ceil(-offset / beat)
    stop = max(first, math.ceil((end - offset) / beat))  # first k at or past the end
    return np.arange(first, stop, dtype=np.int64), [offset + k * beat for k in range(first, stop)]


def _beat_fraction(bpm: float, beat_unit: int) -> Fraction:
    """Exact seconds per beat: ``(4 / beat_unit) * 60 / bpm``."""
    return Fraction(240, int(beat_unit)) / _exact(bpm)


def _bar_fraction(bpm: float, beats_per_bar: int, beat_unit: int) -> Fraction:
    """Exact seconds per bar."""
    return _beat_fraction(bpm, beat_unit) * int(beats_per_bar)


def whole_bars(frames: int, sample_rate: int, bpm: float, beats_per_bar: int = 4, beat_unit: int = 4,
               offset_s: float = 0.0, tolerance_s: Fraction = Fraction(1, 100)) -> int:
    """Whole bars in ``frames`` samples after ``offset_s``, rounded down (0 if less than one).

    A clip up to ``tolerance_s`` short of a whole bar counts as that bar, because DAWs round bar
    lengths to whole samples. Exact like every length here (the bpm as typed, not its float).
    """
    validate_tempo(bpm, beats_per_bar, beat_unit)
    length = Fraction(int(frames), _sample_rate(sample_rate)) - _exact(_finite(offset_s, "offset_s")) + tolerance_s
    return max(0, math.floor(length / _bar_fraction(bpm, beats_per_bar, beat_unit)))


def _exact(value: float) -> Fraction:
    """The rational number the user meant: ints exactly, floats via their shortest decimal."""
    if isinstance(value, numbers.Integral):
        return Fraction(int(value))
    if isinstance(value, Fraction):
        return value
    return Fraction(str(value))


def _round_half_up(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))


def _sample_rate(sr: int) -> int:
    if not is_int(sr) or sr <= 0:
        raise ValueError(f"sample rate must be a positive integer, got {sr!r}")
    return int(sr)


def _non_negative(value: float, name: str) -> float:
    if not _is_real(value) or not math.isfinite(value) or value < 0:
        raise BadArgument(f"{name} must be a finite number of zero or more, got {value!r}.")
    return value


def _finite(value: float, name: str) -> float:
    if not _is_real(value) or not math.isfinite(value):
        raise BadArgument(f"{name} must be a finite number, got {value!r}.")
    return value


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_int(value: object) -> bool:
    """A whole number that is not a bool (True is an int to Python, never a count to a musician)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
