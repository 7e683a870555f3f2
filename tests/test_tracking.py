"""audio.tracking: the named tracker finds the beats and the bar phase of a click with known beats."""

import numpy as np
import pytest

from stage_bridge.audio.click import click_track
from stage_bridge.audio.tracking import TrackerUnavailable, track_beats

SR = 32000


@pytest.mark.parametrize("beats_per_bar", [4, 3])
def test_click_beats_and_downbeats(beats_per_bar):
    bpm = 120.0
    y = click_track(SR * 10, SR, bpm, beats_per_bar=beats_per_bar)
    got = track_beats(y, SR, beats_per_bar=beats_per_bar)
    period = 60.0 / bpm
    # every tracked beat sits on the grid (within one onset frame), and the tempo is the click's
    assert np.all(np.abs(got.beats / period - np.round(got.beats / period)) * period < 0.025)
    assert got.bpm == pytest.approx(bpm, rel=0.02)
    bar = period * beats_per_bar
    assert len(got.downbeats) >= 3
    assert np.all(np.abs(got.downbeats / bar - np.round(got.downbeats / bar)) * bar < 0.025)
    assert got.tracker.startswith("librosa ")


def test_unknown_and_unavailable_trackers_say_what_to_do():
    y = np.zeros(SR, dtype=np.float32)
    with pytest.raises(ValueError, match="choose one of"):
        track_beats(y, SR, tracker="nope")
    with pytest.raises(TrackerUnavailable, match="--tracker librosa"):
        track_beats(y, SR, tracker="beat_this")


def test_beat_f1_known_answers():
    from stage_bridge.audio.tracking import beat_f1

    grid = np.arange(0.0, 8.0, 0.5)
    assert beat_f1(grid, grid) == 1.0
    assert beat_f1(grid, grid + 0.1) == 0.0          # every beat 100 ms late: outside 70 ms
    assert beat_f1(grid, grid + 0.05) == 1.0         # 50 ms late: inside
    assert beat_f1(grid, grid[::2]) == pytest.approx(2 * 0.5 / 1.5)  # precision 1, recall 0.5
    assert beat_f1(grid, np.array([])) == 0.0
