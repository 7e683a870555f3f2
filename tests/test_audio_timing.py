"""Bars/beats/seconds/samples arithmetic (stage_bridge.audio.timing)."""

from __future__ import annotations

import numpy as np
import pytest

from stage_bridge.audio import (
    bar_seconds,
    bars_to_samples,
    bars_to_seconds,
    beat_samples,
    beat_seconds,
    beat_times,
    seconds_to_samples,
    validate_tempo,
)
from stage_bridge.errors import BadArgument


@pytest.mark.parametrize(
    ("bars", "bpm", "sr", "beats_per_bar", "beat_unit", "expected"),
    [
        (4, 120, 44100, 4, 4, 352800),
        (2, 90, 48000, 6, 8, 192000),  # 2 bars * 3 quarters * 60/90 s * 48000
        (4, 100, 48000, 3, 4, 345600),
        (2, 140, 44100, 7, 8, 132300),
        (1, 60, 32000, 5, 4, 160000),
        (16, 128, 48000, 4, 4, 1440000),
        (4, 90, 44100, 4, 4, 470400),  # 60/90 is not a binary float; the result still is exact
        (8, 174, 32000, 4, 4, 353103),  # 353103.448...
        (1, 120.5, 44100, 4, 4, 87834),  # 87834.024...
        (0.5, 120, 44100, 4, 4, 44100),
    ],
)
def test_bars_to_samples(bars, bpm, sr, beats_per_bar, beat_unit, expected):
    result = bars_to_samples(bars, bpm, sr, beats_per_bar, beat_unit)
    assert result == expected
    assert isinstance(result, int)


def test_bars_to_samples_rounds_to_nearest():
    # 1 bar of 1/16 at 300 bpm = 0.05 s; at 22050 Hz that is 1102.5 samples -> ties go up
    assert bars_to_samples(1, 300, 22050, 1, 16) == 1103
    assert seconds_to_samples(0.5 / 44100, 44100) == 1
    assert seconds_to_samples(0.49 / 44100, 44100) == 0


def test_seconds_and_beats():
    assert beat_seconds(120) == 0.5
    assert beat_seconds(120, beat_unit=8) == 0.25
    assert bar_seconds(120) == 2.0
    assert bar_seconds(120, 6, 8) == 1.5
    assert bar_seconds(90, 3, 4) == pytest.approx(2.0)
    assert bars_to_seconds(4, 120) == 8.0
    assert bars_to_seconds(2, 120, 6, 8) == 3.0
    assert seconds_to_samples(1.5, 48000) == 72000
    assert seconds_to_samples(0, 48000) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bpm": 29.9}, "between 30 and 300"),
        ({"bpm": 300.5}, "between 30 and 300"),
        ({"bpm": float("nan")}, "bpm"),
        ({"bpm": float("inf")}, "bpm"),
        ({"bpm": "120"}, "bpm"),
        ({"bpm": True}, "bpm"),
        ({"bpm": 120, "beats_per_bar": 0}, "from 1 to 32"),
        ({"bpm": 120, "beats_per_bar": 33}, "from 1 to 32"),
        ({"bpm": 120, "beats_per_bar": 3.5}, "whole number"),
        ({"bpm": 120, "beat_unit": 3}, "1, 2, 4, 8, 16"),
        ({"bpm": 120, "beat_unit": 32}, "1, 2, 4, 8, 16"),
    ],
)
def test_validate_tempo_errors(kwargs, match):
    with pytest.raises(BadArgument, match=match):
        validate_tempo(**kwargs)


@pytest.mark.parametrize(
    ("bpm", "beats_per_bar", "beat_unit"),
    [(30, 1, 1), (300, 32, 16), (120.5, 7, 8), (np.float64(97.0), 4, 4)],
)
def test_validate_tempo_accepts(bpm, beats_per_bar, beat_unit):
    validate_tempo(bpm, beats_per_bar, beat_unit)


def test_other_functions_validate_too():
    with pytest.raises(BadArgument):
        bars_to_samples(4, 500, 44100)
    with pytest.raises(BadArgument):
        bars_to_samples(-1, 120, 44100)
    with pytest.raises(BadArgument):
        beat_times(120, float("nan"))


def test_beat_times_basic_grid():
    beats, downbeats = beat_times(120, 4.0)
    np.testing.assert_allclose(beats, np.arange(8) * 0.5)
    np.testing.assert_allclose(downbeats, [0.0, 2.0])


def test_beat_times_duration_is_half_open():
    beats, _ = beat_times(120, 2.0)
    assert beats[-1] == 1.5
    assert beat_times(120, 0.0)[0].size == 0


def test_beat_times_offset_extends_grid_backwards():
    # first downbeat at 1.25 s, 4/4 at 120 bpm: pickup beats at 0.25, 0.75
    beats, downbeats = beat_times(120, 4.0, offset_s=1.25)
    np.testing.assert_allclose(beats, [0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.25, 3.75])
    np.testing.assert_allclose(downbeats, [1.25, 3.25])


def test_beat_times_compound_meter_downbeats():
    beats, downbeats = beat_times(120, 3.0, beats_per_bar=6, beat_unit=8, offset_s=0.25)
    np.testing.assert_allclose(np.diff(beats), 0.25)
    assert beats[0] == 0.0  # 0.25 - 0.25
    np.testing.assert_allclose(downbeats, [0.25, 1.75])


def test_beat_samples_are_exact_floors():
    onsets, downbeats = beat_samples(3 * 44100, 44100, 90)
    # 2/3 s * 44100 = 29400 exactly; a float computation would floor to 29399
    np.testing.assert_array_equal(onsets, [0, 29400, 58800, 88200, 117600])
    np.testing.assert_array_equal(downbeats, [0, 117600])
    assert onsets.dtype == np.int64


def test_whole_bars_rounds_down_with_a_tolerance():
    from stage_bridge.audio.timing import whole_bars

    assert whole_bars(4 * 44100, 44100, 120) == 2
    assert whole_bars(4 * 44100 - 1, 44100, 120) == 2  # a sample short still counts (10 ms tolerance)
    assert whole_bars(int(3.9 * 44100), 44100, 120) == 1
    assert whole_bars(3 * 44100, 44100, 120, 6, 8) == 2  # 6/8 at 120: a bar is 1.5 s
    assert whole_bars(10 * 44100, 44100, 120, offset_s=9.5) == 0
    with pytest.raises(BadArgument):
        whole_bars(44100, 44100, 10)


def test_whole_bars_uses_the_bpm_as_typed():
    """19 bars of 4/4 at 30.4 bpm are exactly 7 200 000 samples at 48 kHz; the binary float nearest
    30.4 is a little more than 30.4, which would make that 18.99... bars."""
    from stage_bridge.audio.timing import bars_to_samples, whole_bars

    assert bars_to_samples(19, 30.4, 48000) == 7_200_000
    assert whole_bars(7_200_000, 48000, 30.4, tolerance_s=0) == 19
