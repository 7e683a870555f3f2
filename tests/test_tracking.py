"""audio.tracking: the named tracker finds the beats, the meter and the bar phase of clicks and of
FluidSynth-rendered songs with known beats and meters (4/4 and 3/4); Beat This runs only from a
local checkpoint."""

import sys
import types

import numpy as np
import pytest
import soundfile as sf

from stage_bridge.audio.click import click_track
from stage_bridge.audio.tracking import TrackerUnavailable, track_beats

SR = 32000


@pytest.mark.parametrize("beats_per_bar, told", [(4, True), (3, True), (4, False), (3, False)])
def test_click_beats_and_downbeats(beats_per_bar, told):
    bpm = 120.0
    y = click_track(SR * 10, SR, bpm, beats_per_bar=beats_per_bar)
    got = track_beats(y, SR, beats_per_bar=beats_per_bar if told else None)
    period = 60.0 / bpm
    # every tracked beat sits on the grid (within one onset frame), and the tempo is the click's
    assert np.all(np.abs(got.beats / period - np.round(got.beats / period)) * period < 0.025)
    assert got.bpm == pytest.approx(bpm, rel=0.02)
    bar = period * beats_per_bar
    assert len(got.downbeats) >= 3
    assert np.all(np.abs(got.downbeats / bar - np.round(got.downbeats / bar)) * bar < 0.025)
    assert got.tracker.startswith("librosa ")


def test_beats_only_skips_the_downbeat_estimate(monkeypatch):
    """Callers that score beats only get the same beats without the chroma analysis."""
    import stage_bridge.audio.tracking as tracking

    y = click_track(SR * 8, SR, 120.0, beats_per_bar=3)
    full = track_beats(y, SR, beats_per_bar=3)
    monkeypatch.setattr(tracking, "beat_accents", lambda *a: pytest.fail("downbeats were estimated"))
    only = track_beats(y, SR, beats_per_bar=3, downbeats=False)
    assert np.array_equal(only.beats, full.beats) and only.bpm == full.bpm
    assert len(full.downbeats) >= 3 and len(only.downbeats) == 0


def test_unknown_and_unavailable_trackers_say_what_to_do(monkeypatch):
    y = np.zeros(SR, dtype=np.float32)
    with pytest.raises(ValueError, match="choose one of"):
        track_beats(y, SR, tracker="nope")
    monkeypatch.setitem(sys.modules, "beat_this", None)  # not installed: importing it fails
    with pytest.raises(TrackerUnavailable, match="not installed.*--tracker librosa"):
        track_beats(y, SR, tracker="beat_this")


def test_beat_this_runs_only_from_a_local_checkpoint(tmp_path, monkeypatch):
    """A stand-in `beat_this` package: without the checkpoint file the error names where it goes;
    with it, the tracker is built from that local path (nothing else) and its answer is used."""
    from stage_bridge.audio import tracking

    built = []

    class Audio2Beats:  # beat_this/inference.py's signature and result (cited in audio/tracking.py)
        def __init__(self, checkpoint_path, device, dbn):
            built.append((checkpoint_path, device, dbn))

        def __call__(self, signal, sr):
            assert signal.ndim == 1 and sr == SR
            return np.array([0.5, 1.0, 1.5, 2.0, 2.5]), np.array([0.5, 2.0])

    pkg = types.ModuleType("beat_this")
    inference = types.ModuleType("beat_this.inference")
    inference.Audio2Beats = Audio2Beats
    pkg.inference = inference
    monkeypatch.setitem(sys.modules, "beat_this", pkg)
    monkeypatch.setitem(sys.modules, "beat_this.inference", inference)
    ckpt = tmp_path / "final0.ckpt"
    monkeypatch.setenv(tracking.BEAT_THIS_ENV, str(ckpt))
    tracking._beat_this_model.cache_clear()
    y = np.zeros(SR * 3, dtype=np.float32)
    with pytest.raises(TrackerUnavailable, match=f"no Beat This checkpoint at {ckpt}.*--tracker librosa"):
        track_beats(y, SR, tracker="beat_this")
    ckpt.write_bytes(b"weights")
    got = track_beats(np.stack([y, y]), SR, tracker="beat_this")
    assert built == [(str(ckpt), "cpu", False)]
    assert got.beats.tolist() == [0.5, 1.0, 1.5, 2.0, 2.5] and got.downbeats.tolist() == [0.5, 2.0]
    assert got.bpm == pytest.approx(120.0) and got.tracker.startswith("beat_this")
    tracking._beat_this_model.cache_clear()


def test_meter_and_phase_from_accents():
    from stage_bridge.audio.tracking import estimate_downbeats

    rng = np.random.default_rng(0)
    for meter in (3, 4):
        for phase in range(meter):
            acc = rng.normal(0, 0.3, 24)
            acc[phase::meter] += 1.0
            assert estimate_downbeats(acc) == (meter, phase)
            assert estimate_downbeats(acc, beats_per_bar=meter) == (meter, phase)
    assert estimate_downbeats(np.ones(5)) == (4, 0)  # under two bars: no evidence


@pytest.fixture(scope="module")
def fluidsynth_songs(tmp_path_factory):
    """Six 16 s songs (drums, bass, piano, guitar) at six tempi, every other one in 3/4."""
    from train_fixtures import make_moisesdb, require_fluidsynth

    require_fluidsynth()
    root = tmp_path_factory.mktemp("songs")
    truth = make_moisesdb(root, songs=6, seconds=16, bpm_list=(100, 120, 90, 132, 110, 75), meters=(4, 3),
                          silent_until={})
    for song in truth:
        mix = np.zeros(16 * SR)
        for files in song["stems"].values():
            for f in files:
                y, sr = sf.read(str(f), dtype="float32", always_2d=True)
                y = y.mean(axis=1)
                if sr != SR:
                    from stage_bridge.audio import resample
                    y = resample(y, sr, SR)
                mix[: len(y)] += y[: len(mix)]
        song["mix"] = mix.astype(np.float32)
    return truth


def test_beat_and_downbeat_f1_on_fluidsynth_songs(fluidsynth_songs):
    """The tracker, told nothing of the meter, on songs whose beats and meters are known: beat
    F1 (70 ms) >= 0.9 and downbeat F1 >= 0.85 on every song, 3/4 ones included."""
    from stage_bridge.audio.tracking import beat_f1

    rows = []
    for song in fluidsynth_songs:
        got = track_beats(song["mix"], SR, beats_per_bar=None)
        rows.append((song["meter"], song["bpm"], beat_f1(song["beats"], got.beats),
                     beat_f1(song["downbeats"], got.downbeats), got.bpm))
    print("\nmeter  bpm  beat F1  downbeat F1  tracked bpm")
    for meter, bpm, f_beat, f_down, tracked in rows:
        print(f"{meter}/4  {bpm:5.0f}  {f_beat:.3f}  {f_down:.3f}  {tracked:.1f}")
    for meter in (3, 4):
        mine = [r for r in rows if r[0] == meter]
        print(f"{meter}/4 mean: beat F1 {np.mean([r[2] for r in mine]):.3f}, "
              f"downbeat F1 {np.mean([r[3] for r in mine]):.3f}")
    assert all(r[2] >= 0.9 for r in rows), rows
    assert all(r[3] >= 0.85 for r in rows), rows


def test_beat_f1_known_answers():
    from stage_bridge.audio.tracking import beat_f1

    grid = np.arange(0.0, 8.0, 0.5)
    assert beat_f1(grid, grid) == 1.0
    assert beat_f1(grid, grid + 0.1) == 0.0          # every beat 100 ms late: outside 70 ms
    assert beat_f1(grid, grid + 0.05) == 1.0         # 50 ms late: inside
    assert beat_f1(grid, grid[::2]) == pytest.approx(2 * 0.5 / 1.5)  # precision 1, recall 0.5
    assert beat_f1(grid, np.array([])) == 0.0
