"""`stage-bridge eval`: excerpt choice, song selection, the take cache, the command line's errors,
and (slow) a whole run on FluidSynth-rendered songs with the tiny-random model whose report
must hold exactly what the metric functions give for the same stems."""

import csv
import json

import numpy as np
import pytest
import soundfile as sf

from train_fixtures import make_moisesdb, make_plain, require_fluidsynth

from stage_bridge.audio import bars_to_samples, load_audio, to_mono
from stage_bridge.audio.tracking import track_beats
from stage_bridge.cli import main
from stage_bridge.eval import run as eval_run
from stage_bridge.eval.embedders import TinyEmbedder, embed_clip
from stage_bridge.eval.metrics import fad, kad
from stage_bridge.eval.run import REAL, EvalSettings, beat_scores, choose_songs, make_excerpt, model_tag, take_path
from stage_bridge.train.dataset import discover_songs, write_split

SR = 32000


@pytest.fixture
def plain(tmp_path):
    root = tmp_path / "plain"
    return root, make_plain(root, songs=3, seconds=20, bpm_list=(120, 100, 90), silent_until={(1, "drums"): 10.5})


def test_excerpt_is_whole_bars_from_the_first_downbeat_where_the_stem_plays(plain):
    root, truth = plain
    songs, _ = discover_songs(root)
    ex = make_excerpt(songs[0], "drums", ("vocals",), 2, SR, "librosa")
    assert ex.start_s == pytest.approx(truth[0]["downbeats"][0], abs=1 / SR)
    assert ex.bpm == 120.0 and ex.target.shape == (bars_to_samples(2, 120.0, SR),)
    np.testing.assert_allclose(ex.click_beats, np.arange(8) * 0.5, atol=1 / SR)  # the click's 8 beats
    a = round(ex.start_s * SR)
    others = sum(sf.read(str(truth[0]["stems"][s][0]), dtype="float32")[0] for s in ("bass", "keys"))  # no vocals
    np.testing.assert_allclose(ex.context, others[a:a + ex.target.shape[0]], atol=1e-6)
    late = make_excerpt(songs[1], "drums", ("vocals",), 2, SR, "librosa")  # drums enter at 10.5 s
    bar = 4 * 60.0 / truth[1]["bpm"]  # the first downbeat whose first bar already has drums in it
    assert late.start_s == pytest.approx(next(d for d in truth[1]["downbeats"] if d + bar > 10.5), abs=1 / SR)
    assert late.start_s > truth[1]["downbeats"][0]
    with pytest.raises(eval_run.BadArgument, match="use fewer --bars"):
        make_excerpt(songs[1], "drums", ("vocals",), 8, SR, "librosa")


def test_songs_come_from_the_split_test_list(plain, tmp_path):
    root, truth = plain
    write_split(tmp_path / "run", {"train": [truth[0]["name"]], "valid": [truth[1]["name"]],
                                   "test": [truth[2]["name"], "gone"]})
    settings = EvalSettings(data=root, model="tiny-random", instrument="drums", out=tmp_path / "r",
                            split=tmp_path / "run")
    songs, warnings = choose_songs(settings)
    assert [s.name for s in songs] == [truth[2]["name"]]
    assert any("not usable" in w and "gone" in w for w in warnings)
    with pytest.raises(eval_run.BadArgument, match="has a 'guitar' stem"):
        choose_songs(EvalSettings(data=root, model="tiny-random", instrument="guitar", out=tmp_path / "r"))


def test_cache_tag_changes_with_what_changes_the_audio(tmp_path):
    base = EvalSettings(data=tmp_path, model="tiny-random", instrument="drums", out=tmp_path / "r")
    same = EvalSettings(data=tmp_path / "elsewhere", model="tiny-random", instrument="drums", out=tmp_path / "r",
                        seeds=(0, 1, 2), embedders=("tiny",))
    assert model_tag(base) == model_tag(same)  # data folder, seeds and embedders do not change a take
    for change in ({"model": "stage-drums"}, {"bars": 8}, {"guidance": 2.0}, {"precision": "bf16"},
                   {"click_gain_db": -12.0}, {"exclude": ()}):
        other = EvalSettings(**{**base.__dict__, **change})
        assert model_tag(other) != model_tag(base), change
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"1")
    trained = EvalSettings(**{**base.__dict__, "model": str(run)})
    tag = model_tag(trained)
    assert tag.startswith("run-") and model_tag(trained) == tag
    (run / "model.safetensors").write_bytes(b"22")  # retrained in place: its old takes must not be reused
    assert model_tag(trained) != tag
    assert take_path(base, "a/b", "mix+click", 3).parts[-4:] == (model_tag(base), "a_b", "mix_click", "seed3.wav")


@pytest.mark.parametrize("extra, message", [
    (["--embedders", "openl3"], "--embedders must be some of"),
    (["--modes", "drums"], "--modes must be some of"),
    (["--tracker", "madmom"], "--tracker must be one of"),
    (["--embedder-weights", "foo=bar"], "unknown embedder 'foo'"),
    (["--seeds", "-1"], "--seeds must be whole numbers"),
    (["--embedders", "tiny", "--tracker", "beat_this"], "tracker"),  # no Beat This checkpoint here: said up front
    (["--embedders", "vggish"], "vggish-10086976.pth"),  # weights missing: said before anything is generated
    (["--embedders", "tiny", "--model", "stage-drums"], "Weights for 'stage-drums' are missing"),  # stops the run
])
def test_bad_eval_arguments_one_line_exit_2_nothing_written(plain, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.setenv("STAGE_BRIDGE_WEIGHTS", str(tmp_path / "no-weights"))
    root, _ = plain
    out = tmp_path / "report"
    rc = main(["eval", "--data", str(root), "--model", "tiny-random", "--instrument", "drums", "--out", str(out),
               "--quiet", *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_a_clip_that_cannot_be_generated_is_skipped_with_a_warning(tmp_path):
    """Song 0's context stems are silent: mix mode has nothing to accompany (one warning), click
    mode still generates, and the table counts what was scored."""
    root = tmp_path / "plain"
    make_plain(root, songs=1, seconds=8, silent_until={(0, "bass"): 99.0, (0, "keys"): 99.0})
    settings = EvalSettings(data=root, model="tiny-random", instrument="drums", out=tmp_path / "r", bars=1,
                            modes=("mix", "click"), embedders=("tiny",), device="cpu")
    result = eval_run.evaluate(settings, quiet=True)
    skipped = [w for w in result.warnings if "not generated" in w]
    assert len(skipped) == 1 and skipped[0].startswith("song00 mix seed 0: not generated") and "silent" in skipped[0]
    assert [(r["mode"], r["seed"]) for r in result.rows] == [(REAL, None), ("click", 0)]
    assert {row["mode"]: row["clips"] for row in result.table} == {"mix": 0, "click": 1, REAL: 1}


# -- end to end --------------------------------------------------------------------------------------

def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_eval_end_to_end_report_holds_the_metric_functions_numbers(tmp_path, capsys, monkeypatch):
    require_fluidsynth()
    data, out = tmp_path / "songs", tmp_path / "report"
    truth = make_moisesdb(data)
    args = ["eval", "--data", str(data), "--model", "tiny-random", "--instrument", "drums", "--out", str(out),
            "--bars", "2", "--embedders", "tiny", "--device", "cpu", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    for name in ("table.md", "table.csv", "per_song.csv", "settings.json", "beat_f1.png", "per_song.png"):
        assert (out / name).is_file() and str(out / name) in printed
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table, per_song = _read_csv(out / "table.csv"), _read_csv(out / "per_song.csv")
    record = json.loads((out / "settings.json").read_text())
    modes = ("mix", "click", "mix+click")
    assert [r["mode"] for r in table] == [*modes, REAL]
    assert record["tracker"].startswith("librosa ") and record["embedders"] == ["tiny"]
    assert record["settings"]["model"] == "tiny-random" and record["settings"]["bars"] == 2
    assert len(per_song) == len(truth) * (len(modes) + 1)

    # the same numbers from the metric functions, on the cached takes and the real excerpts
    settings = EvalSettings(data=data, model="tiny-random", instrument="drums", out=out, bars=2, embedders=("tiny",),
                            device="cpu")
    emb = TinyEmbedder()
    sets: dict[str, list] = {m: [] for m in (*modes, REAL)}
    for song in discover_songs(data)[0]:
        ex = make_excerpt(song, "drums", ("vocals",), 2, SR, "librosa")
        context_beats = track_beats(ex.context, SR).beats
        rows = {r["mode"]: r for r in per_song if r["song"] == song.name}
        for mode in (*modes, REAL):
            audio = ex.target if mode == REAL else to_mono(load_audio(take_path(settings, song.name, mode, 0)).samples)
            want = beat_scores(audio, ex, context_beats, "librosa")
            row = rows[mode]
            assert float(row["f1_context"]) == want["f1_context"] and float(row["f1_click"]) == want["f1_click"]
            assert float(row["bpm"]) == pytest.approx(want["bpm"]) and float(row["start_s"]) == pytest.approx(ex.start_s)
            sets[mode].append(embed_clip(emb, audio, SR))
    silent_song = truth[1]["name"]  # its drums enter at 10.5 s: the excerpt starts after that
    assert all(float(r["start_s"]) >= 10.5 for r in per_song if r["song"] == silent_song)
    markdown = (out / "table.md").read_text()
    for row in table:
        mine = [float(r["f1_click"]) for r in per_song if r["mode"] == row["mode"]]
        assert float(row["f1_click_mean"]) == pytest.approx(np.mean(mine), abs=1e-12)
        assert int(row["clips"]) == len(truth)
        if row["mode"] == REAL:
            assert row["fad_tiny"] == row["kad_tiny"] == ""
            continue
        real, gen = np.concatenate(sets[REAL]), np.concatenate(sets[row["mode"]])
        assert float(row["fad_tiny"]) == pytest.approx(fad(real, gen), rel=1e-9)
        assert float(row["kad_tiny"]) == pytest.approx(kad(real, gen), rel=1e-9)
        assert f"{fad(real, gen):.3f}" in markdown and f"{kad(real, gen):.3f}" in markdown

    # resumable: a rerun finds every take cached, loads no model, and reports the same numbers
    before = (out / "table.csv").read_text()
    monkeypatch.setattr(eval_run._LazyModel, "get", lambda self: pytest.fail("a cached take was generated again"))
    assert main(args) == 0
    assert (out / "table.csv").read_text() == before
