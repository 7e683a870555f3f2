"""audio.fit: every per-take score against a signal whose answer is known, and the ranking rule."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from stage_bridge.audio.click import click_track
from stage_bridge.audio.fit import HEARD_ENOUGH, Fit, Grid, rank, score, score_takes, silence_ratio, true_peak_db
from stage_bridge.audio.tracking import beat_f1
from train_fixtures import FIRST_BEAT_S, _parts, _render_all, beat_grid, find_soundfont, require_fluidsynth

SR = 44100


def delayed(x: np.ndarray, seconds: float) -> np.ndarray:
    """`x` played `seconds` later (negative: earlier), same length."""
    n = round(abs(seconds) * SR)
    if seconds >= 0:
        return np.concatenate([np.zeros(n, np.float32), x])[: x.size]
    return np.concatenate([x[n:], np.zeros(n, np.float32)])


@pytest.fixture(scope="module")
def click_fits():
    """A click on a 97 bpm grid whose first downbeat is at 0.3 s, scored as it is, 100 ms late,
    30 ms late and 30 ms early, and digital silence."""
    grid = Grid(97.0, 4, 4, 0.3)
    click = click_track(SR * 12, SR, grid.bpm, offset_s=grid.offset_s)
    takes = [click, delayed(click, 0.1), delayed(click, 0.03), delayed(click, -0.03), np.zeros_like(click)]
    return score_takes(takes, SR, grid, [None] * len(takes), None)


def test_a_click_against_its_own_grid(click_fits):
    fit = click_fits[0]
    # librosa's tracker leaves out the clip's very first beat (its onset envelope starts there),
    # so one of the 19 grid beats is missed at most: F1 >= 36/37
    assert fit.grid_f1 >= 36 / 37
    assert fit.offset_ms == pytest.approx(0.0, abs=1.0)  # the tracker's own lag, measured on the click, is taken off
    assert fit.tempo_bpm == pytest.approx(97.0, rel=0.02)


def test_a_click_100_ms_late_misses_every_beat(click_fits):
    late = click_fits[1]
    assert late.grid_f1 < 0.1 and late.offset_ms is None and late.score < 0.1


def test_offsets_say_early_or_late(click_fits):
    hop_ms = 512 / SR * 1000  # the tracker's frame: its beats are this precise
    assert click_fits[2].offset_ms == pytest.approx(30.0, abs=hop_ms)
    assert click_fits[3].offset_ms == pytest.approx(-30.0, abs=hop_ms)
    assert click_fits[2].grid_f1 >= 36 / 37 and click_fits[3].grid_f1 >= 36 / 37  # inside the 70 ms window


def test_silence_scores_nothing(click_fits):
    silent = click_fits[4]
    assert (silent.grid_f1, silent.offset_ms, silent.tempo_bpm, silent.true_peak_db) == (0.0, None, None, None)
    assert silent.silence_ratio == 1.0 and silent.score == 0.0 and not silent.clipping


def render_drums(tmp_path, bpm: float, seconds: float) -> np.ndarray:
    """Kick, snare and eighth-note hi-hats at `bpm`, the first beat at FIRST_BEAT_S, rendered by
    FluidSynth with the GM soundfont (as the training tests render their songs)."""
    import soundfile as sf

    require_fluidsynth()
    parts = _parts(bpm, seconds, {})
    out = tmp_path / f"drums-{bpm:g}.wav"
    _render_all(shutil.which("fluidsynth"), find_soundfont(), [(SR, 9, 0, parts["kick_snare"] + parts["hats"], out)],
                seconds, tmp_path)
    audio, rate = sf.read(str(out), dtype="float32", always_2d=True)
    assert rate == SR
    return audio.T


@pytest.mark.parametrize("bpm", [72.0, 120.0, 168.0])
def test_fluidsynth_drums_at_known_tempi(tmp_path, bpm):
    seconds = 16.0
    drums = render_drums(tmp_path, bpm, seconds)
    grid = Grid(bpm, 4, 4, FIRST_BEAT_S)
    (fit,) = score_takes([drums], SR, grid, [None], None)
    known, _ = beat_grid(bpm, seconds)
    assert fit.grid_f1 >= 0.9, fit
    assert fit.tempo_bpm == pytest.approx(bpm, rel=0.03), fit  # read at the request's metrical level
    assert abs(fit.offset_ms) < 25.0, fit
    assert fit.silence_ratio < 0.2 and fit.score == fit.grid_f1
    # the tracker, told the tempo, against the beats the MIDI file was written with
    from stage_bridge.audio.tracking import track_beats

    beats = track_beats(drums, SR, bpm=bpm).beats
    assert beat_f1(np.array(known), beats) >= 0.9
    # and the same drums a 16th note late (a wrong phase): the grid no longer fits
    (late,) = score_takes([delayed(drums[0], 15.0 / bpm)], SR, grid, [None], None)
    assert late.grid_f1 < 0.5 and late.score < fit.score


def test_true_peak_between_samples():
    # a sine at a quarter of the rate, 45 degrees off: every sample is at 0.707 of the peak
    amplitude = 0.5
    x = (amplitude * np.sin(2 * np.pi * np.arange(SR) / 4 + np.pi / 4)).astype(np.float32)
    assert 20 * math.log10(np.max(np.abs(x))) == pytest.approx(20 * math.log10(amplitude) - 3.01, abs=0.02)
    assert true_peak_db(x, SR) == pytest.approx(20 * math.log10(amplitude), abs=0.05)
    assert true_peak_db(np.zeros(100, np.float32), SR) is None
    # over full scale between samples: clipping, though no sample reaches 1.0
    (fit,) = score_takes([x * 2.4], SR, Grid(120.0), [None], None)  # samples at 0.85, the wave peaks at 1.2
    assert np.max(np.abs(x * 2.4)) < 1.0 and fit.true_peak_db == pytest.approx(20 * math.log10(1.2), abs=0.05)
    assert fit.clipping


def test_silence_ratio_counts_beats_under_minus_60_dbfs():
    beat = round(0.5 * SR)
    x = np.full(beat * 40, 10 ** (-70 / 20), np.float32)
    x[: beat * 10 : beat // 2] = 0.5  # a hit every eighth note for 10 beats, then 30 beats of near-silence
    assert silence_ratio(x, SR, 0.5) == pytest.approx(0.75)
    assert silence_ratio(x[: beat * 10], SR, 0.5) == 0.0 and silence_ratio(np.zeros(0), SR, 0.5) == 1.0


def test_score_rule():
    assert score(0.9, 0.0) == score(0.9, 1 - HEARD_ENOUGH) == pytest.approx(0.9)  # rests are music
    assert score(0.9, 0.75) == pytest.approx(0.45) and score(1.0, 1.0) == 0.0      # mostly silent: useless


def fit_with(score_: float, offset_ms: float | None) -> Fit:
    return Fit(grid_f1=score_, offset_ms=offset_ms, tempo_bpm=None, lufs=None, context_lufs=None, true_peak_db=None,
               clipping=False, silence_ratio=0.0, score=score_)


def test_ranking_best_score_first_then_closest_to_the_grid_then_generation_order():
    fits = [fit_with(0.5, 3.0), fit_with(0.9, 20.0), fit_with(0.9, -5.0), fit_with(0.5, None), fit_with(0.5, 3.0)]
    assert rank(fits) == [2, 1, 0, 4, 3]
    assert rank([]) == []
