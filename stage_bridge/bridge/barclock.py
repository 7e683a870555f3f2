"""Where the bar lines are: MIDI clock ticks and audio buffers, both time-stamped on arrival on
one monotonic clock, mapped to sample positions of the capture buffer. Pure functions, no I/O.

Why two fits and not one counter. The clock says *which* tick is which (song position, from
Start, Continue, Song Position Pointer and the tick count: 24 per quarter note) but each tick's
arrival is jittered by up to a process cycle; the audio arrives in buffers whose callbacks are
late by however long the interpreter took to run them. Neither alone says which sample a bar
line is. So each side is fitted with a straight line over many events around the instant of
interest, which averages the jitter away:

* `time_of_position`: tick arrival time against song position (least squares, late ticks
  rejected as in midiclock.fit_clock), over the ticks within SPAN_TICKS of the bar line;
* `sample_at`: buffer arrival time against the sample it stands for (capture.py: its middle),
  over the buffers of the same segment (between dropouts) within SPAN_S of that time. A buffer
  can arrive late, never early, so the line is put through the earliest arrivals (ENVELOPE
  quantile of the residuals), not their mean.

The tempo, and so the bars' exact length, is midiclock's robust fit where given. Jam playback
uses `position_line` (the newest ticks' line) the other way round: time -> song position.

Each returns its standard error; `locate_bars` adds them up (in samples) as the mapping error
it reports. Known bias: both sides are stamped when the data reaches the daemon, so a DAW
whose audio reaches the input later than its clock reaches the MIDI port (a loopback driver's
buffer) shifts every bar line by that difference; docs/any-daw.md says what to expect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..audio.timing import BPM_RANGE, bars_to_samples
from .midiclock import TICKS_PER_QUARTER

SPAN_TICKS = 192          # ticks either side of a bar line that fit its time (two bars of 4/4)
SPAN_S = 0.5              # seconds of audio buffers either side of an instant that fit its sample
MIN_POINTS = 12           # fewer usable ticks or buffers: no answer
REJECT_SIGMAS = 3.5       # farther off the line than this many robust sigmas: an outlier
ENVELOPE = 0.1            # the quantile of buffer arrival residuals the sample line goes through
MIN_SIGMA_S = 0.0002      # an exact clock must not reject its own rounding noise


def ticks_per_bar(beats_per_bar: int, beat_unit: int) -> int:
    """MIDI clock ticks in one bar (24 per quarter note; 6/8, three quarters, has 72)."""
    return beats_per_bar * TICKS_PER_QUARTER * 4 // beat_unit


@dataclass(frozen=True)
class Estimate:
    value: float
    error: float          # standard error, same unit as value


def _robust_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, np.ndarray, float] | None:
    """(slope, intercept at x=0, residuals, sigma) of y against x, refitted without outliers."""
    keep = np.ones(len(x), bool)
    for _ in range(3):
        if keep.sum() < MIN_POINTS:
            return None
        slope, intercept = np.polyfit(x[keep], y[keep], 1)
        r = y - intercept - slope * x
        sigma = max(1.4826 * float(np.median(np.abs(r[keep] - np.median(r[keep])))), MIN_SIGMA_S)
        keep = np.abs(r) <= REJECT_SIGMAS * sigma
    return float(slope), float(intercept), r, sigma


def time_of_position(times: np.ndarray, positions: np.ndarray, target: float,
                     span: float = SPAN_TICKS) -> Estimate | None:
    """When the clock passed song position `target` (in ticks), from ticks that arrived at
    `times` at song positions `positions` (one transport run: positions rise one per tick).

    Uses the ticks within `span` of the target (one-sided at the newest tick: a bar line that
    has just passed is extrapolated from the ticks before it); None when too few.
    """
    times, positions = np.asarray(times, float), np.asarray(positions, float)
    sel = np.abs(positions - target) <= span
    if sel.sum() < MIN_POINTS:
        return None
    x, y = positions[sel] - target, times[sel]
    fit = _robust_fit(x, y - y[0])
    if fit is None or not fit[0] > 0:
        return None
    slope, intercept, r, sigma = fit
    kept = np.abs(r) <= REJECT_SIGMAS * sigma
    xk = x[kept]
    sxx = float(((xk - xk.mean()) ** 2).sum())
    error = sigma * math.sqrt(1 / kept.sum() + xk.mean() ** 2 / sxx) if sxx > 0 else sigma
    return Estimate(float(y[0] + intercept), error)


def sample_at(t: float, cb_times: np.ndarray, cb_samples: np.ndarray, cb_segments: np.ndarray,
              sample_rate: int, span: float = SPAN_S) -> Estimate | None:
    """The capture buffer's sample position at monotonic time `t`, from its buffers: each
    arrived at `cb_times` and stands for sample `cb_samples` (capture.Capture says which), in
    `cb_segments` (a new segment after each dropout: its samples do not continue the previous
    ones in time).

    Fitted over the buffers of `t`'s segment within `span` seconds of `t`. The slope is free
    (a sound card's clock drifts against the computer's by tens of ppm); the line is then moved
    down to the earliest arrivals, since a callback is only ever late.
    """
    cb_times = np.asarray(cb_times, float)
    cb_samples = np.asarray(cb_samples, float)
    cb_segments = np.asarray(cb_segments)
    if len(cb_times) == 0:
        return None
    before = np.flatnonzero(cb_times <= t)
    segment = cb_segments[before[-1]] if len(before) else cb_segments[0]
    sel = (cb_segments == segment) & (np.abs(cb_times - t) <= span)
    if sel.sum() < MIN_POINTS:
        return None
    x, y = cb_times[sel] - t, cb_samples[sel]
    fit = _robust_fit(y - y[0], x)                         # arrival time against sample position
    if fit is None or not fit[0] > 0:
        return None
    seconds_per_sample, intercept, r, sigma = fit
    kept = np.abs(r) <= REJECT_SIGMAS * sigma
    intercept += float(np.quantile(r[kept], ENVELOPE))
    # time x = intercept + s * (sample - y0)  =>  sample at x = 0
    sample = y[0] - intercept / seconds_per_sample
    error_s = sigma / math.sqrt(kept.sum())
    return Estimate(float(sample), error_s / seconds_per_sample)


@dataclass(frozen=True)
class Line:
    """Song position (ticks) against time: the clock's newest ticks fitted (jam playback)."""

    t0: float
    position0: float
    seconds_per_tick: float

    def position_at(self, t: float) -> float:
        return self.position0 + (t - self.t0) / self.seconds_per_tick


def position_line(times: np.ndarray, positions: np.ndarray, span: float = SPAN_TICKS) -> Line | None:
    """The line through the newest `span` ticks (late ones rejected); None when too few."""
    times, positions = np.asarray(times, float), np.asarray(positions, float)
    if len(times) == 0:
        return None
    target = float(positions[-1])
    sel = positions >= target - span
    fit = _robust_fit(positions[sel] - target, times[sel] - times[sel][0]) if sel.sum() >= MIN_POINTS else None
    if fit is None or not fit[0] > 0:
        return None
    return Line(float(times[sel][0]) + fit[1], target, fit[0])


@dataclass(frozen=True)
class BarSpan:
    """The last `bars` whole bars as a slice of the capture buffer."""

    bar: int               # the first bar's number as the DAW shows it (bar 1 starts at song position 0)
    bars: int
    start: int             # first sample, in the capture buffer's sample count
    length: int            # exactly `bars` bars at `bpm`, in samples
    bpm: float             # the tempo those bars were played at (quarter notes per minute)
    error: float           # the mapping's standard error, in samples


@dataclass(frozen=True)
class NoSpan:
    """Why the bars cannot be located; `bars_played` is set when too few were played."""

    reason: str
    bars_played: int | None = None


def last_bar(position_ticks: float, bar_ticks: int) -> int:
    """Index (from 0) of the most recent bar line at or before `position_ticks`."""
    return int(position_ticks // bar_ticks)


def locate_bars(bars: int, beats_per_bar: int, beat_unit: int, tick_times: np.ndarray,
                tick_positions: np.ndarray, cb_times: np.ndarray, cb_samples: np.ndarray,
                cb_segments: np.ndarray, sample_rate: int, bpm: float | None = None) -> BarSpan | NoSpan:
    """The last `bars` whole bars before the newest tick, mapped into the capture buffer; or
    why not (too few bars since the transport started, too few ticks or buffers).

    `bpm`: the clock's tempo (midiclock's fit, which is robust to the phase jumps an xrun
    leaves in the ticks); None measures it as what the bars took between their two bar lines
    (two local fits: a phase jump between them is a tempo error). The length is exactly `bars`
    bars at that tempo, rounded to 0.01 bpm, so the take and the context agree to the sample.
    """
    if len(tick_positions) == 0:
        return NoSpan("no MIDI clock ticks with the transport playing")
    bar_ticks = ticks_per_bar(beats_per_bar, beat_unit)
    end_bar = last_bar(float(tick_positions[-1]), bar_ticks)
    first_bar = end_bar - bars
    have = end_bar - max(math.ceil(float(tick_positions[0]) / bar_ticks), 0)
    if first_bar < 0 or first_bar * bar_ticks < tick_positions[0]:
        return NoSpan(f"only {max(have, 0)} whole bar(s) were played since the transport started; ask for at "
                      f"most that many, or let it play longer", max(have, 0))
    t_start = time_of_position(tick_times, tick_positions, first_bar * bar_ticks)
    t_end = time_of_position(tick_times, tick_positions, end_bar * bar_ticks)
    if t_start is None or t_end is None:
        return NoSpan("too few MIDI clock ticks around those bar lines (the clock stalled?)")
    if bpm is None:
        seconds = t_end.value - t_start.value
        bpm = 60.0 * bars * bar_ticks / TICKS_PER_QUARTER / seconds if seconds > 0 else 0.0
    bpm = round(bpm, 2)
    if not BPM_RANGE[0] <= bpm <= BPM_RANGE[1]:
        return NoSpan(f"the clock says {bpm} bpm, outside {BPM_RANGE[0]}-{BPM_RANGE[1]}")
    start = sample_at(t_start.value, cb_times, cb_samples, cb_segments, sample_rate)
    if start is None:
        recorded = len(cb_times) > 0 and float(np.min(cb_times)) < t_start.value - SPAN_S
        return NoSpan("the input had too many dropouts around the first of those bars to place it; try again "
                      "(and see the daemon's log)" if recorded else
                      "the input was not recording yet when the first of those bars began; ask for fewer bars", 0)
    error = math.hypot(t_start.error * sample_rate, start.error)
    return BarSpan(bar=first_bar + 1, bars=bars, start=int(round(start.value)),
                   length=bars_to_samples(bars, bpm, sample_rate, beats_per_bar, beat_unit),
                   bpm=bpm, error=error)
