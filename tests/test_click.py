"""The STAGE-compatible metronome (stage_bridge.audio.click)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from stage_bridge.audio import click_onsets, click_track, click_waveform

METERS = [(4, 4), (3, 4), (7, 8), (6, 8)]


def _expected_onsets(num_samples, sr, bpm, beats_per_bar, beat_unit, offset_s):
    """Independent reference: exact beat times t, clicks at floor(t * sr) inside the clip."""
    beat = Fraction(4, beat_unit) * 60 / Fraction(str(bpm))
    offset = Fraction(str(offset_s))
    k = math.ceil(-offset / beat)
    onsets, downbeats = [], []
    while (offset + k * beat) * sr < num_samples:
        sample = math.floor((offset + k * beat) * sr)
        onsets.append(sample)
        if k % beats_per_bar == 0:
            downbeats.append(sample)
        k += 1
    return onsets, downbeats


@pytest.mark.parametrize("sr", [44100, 32000])
@pytest.mark.parametrize(("freq", "duration"), [(1000.0, 0.1), (880.0, 0.05)])
def test_click_waveform_matches_librosa_formula(sr, freq, duration):
    n = int(np.round(sr * duration))
    reference = np.logspace(0, -10, num=n, base=2.0) * np.sin(2 * np.pi * freq / sr * np.arange(n))
    click = click_waveform(sr, freq, duration)
    assert click.dtype == np.float32
    assert click.shape == (n,)
    np.testing.assert_allclose(click, reference, atol=1e-6)


@pytest.mark.parametrize("bpm", [60, 90, 120.5, 174])
@pytest.mark.parametrize("offset_s", [0.0, 0.25])
@pytest.mark.parametrize(("beats_per_bar", "beat_unit"), METERS)
def test_click_onsets_land_on_floor_of_beat_time(bpm, offset_s, beats_per_bar, beat_unit):
    sr, num_samples = 44100, 8 * 44100
    expected, _ = _expected_onsets(num_samples, sr, bpm, beats_per_bar, beat_unit, offset_s)
    onsets = click_onsets(num_samples, sr, bpm, beats_per_bar, beat_unit, offset_s)
    np.testing.assert_array_equal(onsets, expected)


@pytest.mark.parametrize("bpm", [60, 90, 120.5, 174])
@pytest.mark.parametrize("offset_s", [0.0, 0.25])
@pytest.mark.parametrize(("beats_per_bar", "beat_unit"), METERS)
def test_click_track_is_sum_of_beat_and_downbeat_clicks(bpm, offset_s, beats_per_bar, beat_unit):
    """Rebuild STAGE's clicks(beats) + clicks(downbeats), clip, and compare sample by sample."""
    sr, num_samples = 32000, 6 * 32000
    beats, downbeats = _expected_onsets(num_samples, sr, bpm, beats_per_bar, beat_unit, offset_s)
    click = np.logspace(0, -10, num=round(sr * 0.1), base=2.0) * np.sin(
        2 * np.pi * 1000.0 / sr * np.arange(round(sr * 0.1))
    )
    reference = np.zeros(num_samples)
    for start in beats + downbeats:
        end = min(start + click.size, num_samples)
        reference[start:end] += click[: end - start]
    reference = np.clip(reference, -1, 1)

    track = click_track(num_samples, sr, bpm, beats_per_bar, beat_unit, offset_s)

    assert track.dtype == np.float32 and track.shape == (num_samples,)
    np.testing.assert_allclose(track, reference, atol=1e-6)


@pytest.mark.parametrize("freq", [1000.0, 50.0])
def test_downbeat_click_is_twice_as_loud(freq):
    sr, bpm = 44100, 60  # one beat per second: clicks never overlap
    track = click_track(4 * sr, sr, bpm, freq=freq)
    window = int(0.005 * sr)
    downbeat_peak = np.max(np.abs(track[:window]))
    beat_peak = np.max(np.abs(track[sr : sr + window]))
    assert downbeat_peak == 1.0 or downbeat_peak / beat_peak == pytest.approx(2.0, rel=1e-5)
    # sample by sample the downbeat is the beat click doubled, then clipped
    np.testing.assert_allclose(
        track[:window], np.clip(2 * track[sr : sr + window], -1, 1), atol=1e-6
    )


def test_default_downbeat_is_clipped_like_stage():
    track = click_track(2 * 44100, 44100, 120)
    assert np.max(np.abs(track)) == 1.0
    assert np.max(np.abs(track[22050:24000])) < 1.0


def test_clicks_are_truncated_at_the_end():
    sr = 32000
    num_samples = 48000 + 100  # the beat at 1.5 s (sample 48000) is cut after 100 samples
    track = click_track(num_samples, sr, 120)
    assert track.shape == (num_samples,)
    np.testing.assert_allclose(track[-100:], click_waveform(sr)[:100], atol=1e-6)


def test_offset_places_pickup_beats_before_downbeat():
    sr = 44100
    onsets = click_onsets(2 * sr, sr, 120, offset_s=0.75)
    np.testing.assert_array_equal(onsets, [int(t * sr) for t in (0.25, 0.75, 1.25, 1.75)])
    track = click_track(2 * sr, sr, 120, offset_s=0.75)
    assert np.max(np.abs(track[onsets[1] : onsets[1] + 200])) == 1.0  # downbeat clipped
    assert np.max(np.abs(track[onsets[0] : onsets[0] + 200])) < 1.0


def test_overlapping_clicks_are_summed():
    # 1/16 notes at 300 bpm are 50 ms apart, shorter than the 100 ms click
    sr = 32000
    track = click_track(sr, sr, 300, beats_per_bar=16, beat_unit=16)
    onsets = click_onsets(sr, sr, 300, beats_per_bar=16, beat_unit=16)
    assert np.diff(onsets)[0] == 1600
    single = click_waveform(sr)
    start = onsets[2]  # beats 1 and 2 are not downbeats; the downbeat click has ended
    expected = np.clip(single[:10] + single[1600:1610], -1, 1)
    np.testing.assert_allclose(track[start : start + 10], expected, atol=1e-6)
