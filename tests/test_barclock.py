"""Bar lines from synthetic jittered clocks: barclock's fits against a known truth.

The model of a JACK-like system (what the real-peer test in test_capture_jack.py runs): the
song's frame f plays at T0 + f / SR; the server processes cycles of PERIOD frames, cycle N at
T0 + PERIOD * (N + 1) / SR plus a little; a tick whose frame falls in cycle N is stamped when
cycle N is processed, and the audio buffer of cycle N arrives then too, later by however long
the interpreter took (one-sided, exponential). The capture started at song frame F0, so the
truth for bar b (from 0) is capture sample b * bar_frames - F0.
"""

from __future__ import annotations

import numpy as np
import pytest

from stage_bridge.audio.timing import bars_to_samples
from stage_bridge.bridge.barclock import BarSpan, NoSpan, locate_bars, sample_at, ticks_per_bar, time_of_position
from stage_bridge.bridge.midiclock import TICKS_PER_QUARTER, ClockTracker

SR, PERIOD, T0, F0 = 48000, 256, 1000.0, 12345


def simulate(bpm=120.0, seconds=20.0, late_ticks=0.0, callback_delay=0.0003, drift_ppm=0.0, seed=0,
             dropout_at=None, dropout_frames=0, start_position=0):
    """(tick times, positions, callback times, samples, segments) of `seconds` of playing."""
    rng = np.random.default_rng(seed)
    frames_per_tick = SR * 60.0 / bpm / TICKS_PER_QUARTER
    n_ticks = int(seconds * SR / frames_per_tick)
    pos = start_position + np.arange(n_ticks)
    f_tick = pos * frames_per_tick
    cycle = np.floor(f_tick / PERIOD)
    t_tick = T0 + PERIOD * (cycle + 1) / SR + rng.uniform(0, 0.0001, n_ticks)
    late = rng.random(n_ticks) < late_ticks
    t_tick[late] += rng.uniform(0.002, 0.006, late.sum())
    t_tick = np.maximum.accumulate(t_tick)
    # audio: cycles from the one holding F0 on; the card's clock runs drift_ppm fast
    first = int(np.ceil(F0 / PERIOD))
    n_cycles = int(f_tick[-1] / PERIOD) + 4 - first
    k = first + np.arange(n_cycles)
    cb_t = T0 + PERIOD * (k + 1) / SR * (1 - drift_ppm * 1e-6) + rng.exponential(callback_delay, n_cycles)
    samples = (k * PERIOD - F0 + PERIOD / 2).astype(float)
    segments = np.zeros(n_cycles, int)
    if dropout_at is not None:           # the input lost `dropout_frames` at that time
        after = cb_t > dropout_at
        samples[after] -= dropout_frames
        segments[after] = 1
    return t_tick, pos.astype(float), cb_t, samples, segments


def truth(bar: int, bpm=120.0, beats=4, unit=4) -> float:
    bar_frames = SR * 60.0 / bpm * beats * 4 / unit
    return bar * bar_frames - F0


@pytest.mark.parametrize("bpm", [90.0, 120.0, 174.0])
def test_the_last_bars_start_on_the_downbeat(bpm):
    data = simulate(bpm)
    span = locate_bars(4, 4, 4, *data, SR)
    assert isinstance(span, BarSpan), span
    end_bar = int(data[1][-1] // ticks_per_bar(4, 4))
    assert span.bar == end_bar - 4 + 1                    # numbered as the DAW shows it
    assert abs(span.start - truth(span.bar - 1, bpm)) <= 16, (span, truth(span.bar - 1, bpm))
    assert span.error < 16
    assert span.bpm == pytest.approx(bpm, abs=0.01)
    assert span.length == bars_to_samples(4, span.bpm, SR, 4, 4)


def test_late_ticks_and_slow_callbacks_do_not_move_the_bar_line():
    data = simulate(128.0, late_ticks=0.1, callback_delay=0.002, seed=3)
    span = locate_bars(2, 4, 4, *data, SR)
    assert isinstance(span, BarSpan)
    assert abs(span.start - truth(span.bar - 1, 128.0)) <= 24, span


def test_a_drifting_sound_card_is_followed():
    data = simulate(120.0, seconds=60.0, drift_ppm=80.0)
    span = locate_bars(8, 4, 4, *data, SR)
    # with the card 80 ppm fast, truth in card samples is the song time scaled by the same
    assert abs(span.start - truth(span.bar - 1) * (1 + 80e-6)) <= 16 + 80e-6 * F0, span


def test_meter_decides_where_bars_are():
    data = simulate(120.0)
    span = locate_bars(3, 6, 8, *data, SR)              # 6/8: three quarters, 72 ticks a bar
    assert ticks_per_bar(6, 8) == 72
    assert isinstance(span, BarSpan)
    assert abs(span.start - truth(span.bar - 1, 120.0, 6, 8)) <= 16
    assert span.length == bars_to_samples(3, span.bpm, SR, 6, 8)


def test_song_position_pointer_numbering():
    """A run started from a Song Position Pointer in bar 9 numbers its bars from there."""
    data = simulate(120.0, seconds=12.0, start_position=8 * 96)
    span = locate_bars(2, 4, 4, *data, SR)
    assert isinstance(span, BarSpan)
    assert span.bar > 9
    assert abs(span.start - truth(span.bar - 1)) <= 16


def test_too_few_bars_played_says_how_many():
    data = simulate(120.0, seconds=5.0)                  # 2.5 bars
    refused = locate_bars(4, 4, 4, *data, SR)
    assert isinstance(refused, NoSpan) and refused.bars_played == 2, refused
    assert "2 whole bar" in refused.reason
    assert isinstance(locate_bars(2, 4, 4, *data, SR), BarSpan)


def test_no_ticks():
    refused = locate_bars(1, 4, 4, np.array([]), np.array([]), np.array([]), np.array([]), np.array([]), SR)
    assert isinstance(refused, NoSpan) and refused.bars_played is None


def test_a_dropout_splits_the_sample_clock():
    """After the input lost frames, times after it map by the buffers after it only."""
    t_tick, pos, cb_t, samples, segments = simulate(120.0, seconds=20.0, dropout_at=T0 + 10.0,
                                                    dropout_frames=4800)
    t = T0 + 12.0
    after = sample_at(t, cb_t, samples, segments, SR)
    expected = (t - T0) * SR - F0 - PERIOD + PERIOD / 2 - 4800   # the processing-time convention
    assert after is not None and abs(after.value - expected) <= 16
    glued = sample_at(t, cb_t, samples, np.zeros_like(segments), SR, span=4.0)  # what ignoring it would do
    assert abs(glued.value - expected) > 100


def test_time_of_position_extrapolates_to_the_newest_bar_line():
    t = T0 + np.arange(300) * 0.02
    pos = np.arange(300, dtype=float)
    est = time_of_position(t, pos, 310.0)
    assert est is not None and est.value == pytest.approx(T0 + 310 * 0.02, abs=1e-9)
    assert time_of_position(t[:5], pos[:5], 0.0) is None


def test_tracker_keeps_the_run_with_song_positions():
    tracker = ClockTracker()
    tracker.on_start(0.0)
    for i in range(10):
        tracker.on_tick(0.02 * i)
    t, p = tracker.run_ticks()
    assert list(p) == list(range(10)) and t[0] == 0.0
    tracker.on_stop(0.3)
    assert len(tracker.run_ticks()[0]) == 0
    tracker.on_tick(0.31)                                 # stopped: not part of any run
    tracker.on_song_position(16, 0.4)                     # bar 2 beat 1 in 4/4
    tracker.on_continue(0.4)
    tracker.on_tick(0.5)
    tracker.on_tick(0.52)
    assert list(tracker.run_ticks()[1]) == [96, 97]


def test_tracker_run_keeps_the_newest_ticks():
    capacity, extra = 64, 17
    tracker = ClockTracker(run_capacity=capacity)
    tracker.on_start(0.0)
    for i in range(capacity + extra):
        tracker.on_tick(0.02 * i)
    t, p = tracker.run_ticks()
    assert list(p) == list(range(extra, capacity + extra))
    assert np.all(np.diff(t) > 0)


def test_the_clocks_own_tempo_sets_the_length():
    """The tracker's tempo (robust to phase jumps) wins over the bars' own duration, rounded to 0.01."""
    data = simulate(120.0)
    span = locate_bars(4, 4, 4, *data, SR, bpm=119.996)
    assert span.bpm == 120.0 and span.length == 4 * 96000
    span = locate_bars(4, 4, 4, *data, SR, bpm=121.234)
    assert span.bpm == 121.23 and span.length == bars_to_samples(4, 121.23, SR)
