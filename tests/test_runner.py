"""The stem runner: a StemJob reaches the engine in one place, and every front end publishes
the same sidecar (the daemon's runner and `stage-bridge generate`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from stage_bridge.audio.loudness import DEFAULT_OFFSET_LU, REFERENCE_LUFS
from stage_bridge.bridge.job import StemJob
from stage_bridge.bridge.runner import RenderSettings, StemRunner, stem_request
from stage_bridge.cli import main
from stage_bridge.engine.sampling import SamplingParams
from stage_bridge.errors import WeightsMissing


def click_job(job_id: str = "j1", **fields) -> StemJob:
    return StemJob(**{"id": job_id, "source": "osc", "name": "song", "context_path": "", "instrument": "drums",
                      "bars": 1, "bpm": 120.0, "tempo_source": "osc", "beats_per_bar": 3, "beat_unit": 8,
                      "offset": 0.25, "prompt": "", "takes": 2, "context_mode": "click", "seed": 5, **fields})


def test_stem_request_carries_every_job_setting():
    job = click_job()
    sampling = SamplingParams(2.0, 50, 0.5, 0.9)
    req = stem_request(job, None, RenderSettings(sample_rate=22050, click_gain_db=-3.0, sampling=sampling,
                                                 loudness_offset_lu=2.5))
    for name in ("bpm", "bars", "beats_per_bar", "beat_unit", "offset", "context_mode", "prompt", "takes", "seed"):
        assert getattr(req, name) == getattr(job, name), name
    assert (req.context, req.sample_rate, req.click_gain_db, req.sampling, req.loudness_offset_lu) == \
        (None, 22050, -3.0, sampling, 2.5)
    default = stem_request(job, None, RenderSettings(sample_rate=22050))  # unset: the engine's own defaults
    engine = {f.name: f.default for f in dataclasses.fields(type(default))}
    assert (default.click_gain_db, default.sampling) == (engine["click_gain_db"], engine["sampling"])
    assert default.loudness_offset_lu == engine["loudness_offset_lu"] == DEFAULT_OFFSET_LU
    off = stem_request(job, None, RenderSettings(sample_rate=22050, loudness_offset_lu=None))
    assert off.loudness_offset_lu is None  # None is "off" here, not "the engine's default"


def test_a_model_that_failed_to_load_fails_its_jobs(tmp_path):
    runner = StemRunner({"drums": WeightsMissing("no weights")}, tmp_path, RenderSettings(sample_rate=48000))
    with pytest.raises(WeightsMissing):
        runner(click_job(), lambda p: None, lambda: False)
    assert list(tmp_path.iterdir()) == []


def test_daemon_and_cli_write_the_same_sidecar(tmp_path, capsys):
    from stage_bridge.engine.model import load_model

    daemon_out, cli_out = tmp_path / "daemon", tmp_path / "cli"
    daemon_out.mkdir()
    runner = StemRunner({"drums": load_model("tiny-random", "cpu")}, daemon_out, RenderSettings(sample_rate=48000))
    percents: list[float] = []
    paths = runner(click_job(takes=1), percents.append, lambda: False)
    assert percents[0] == 0.0 and percents[-1] == 100.0
    daemon_meta = json.loads(Path(paths[0]).with_suffix(".json").read_text())

    assert main(["generate", "--instrument", "drums", "--bpm", "120", "--bars", "1", "--model", "tiny-random",
                 "--context-mode", "click", "--out", str(cli_out), "--quiet", "--seed", "5"]) == 0
    (cli_path,) = capsys.readouterr().out.split()
    cli_meta = json.loads(Path(cli_path).with_suffix(".json").read_text())

    assert set(daemon_meta) == set(cli_meta)
    assert {"job_id", "model", "random_weights", "source", "name", "context_path", "instrument", "bars", "bpm",
            "tempo_source", "beats_per_bar", "beat_unit", "offset", "prompt", "takes", "context_mode", "seed",
            "sample_rate", "num_samples", "duration_s", "device", "precision", "decode_mode", "compiled",
            "timings", "created",
            "stage_bridge", "guidance", "top_k", "top_p", "temperature", "click_gain_db", "take",
            "file", "loudness_offset_lu", "lufs", "context_lufs", "gain_db", "fit", "rank"} == set(cli_meta)
    for meta in (daemon_meta, cli_meta):  # every score of the issue, and the best take first
        assert set(meta["fit"]) >= {"grid_f1", "offset_ms", "tempo_bpm", "lufs", "context_lufs", "true_peak_db",
                                    "clipping", "silence_ratio", "score"}
        assert meta["rank"] == meta["take"] == 1 and meta["fit"]["lufs"] == meta["lufs"]
    assert daemon_meta["job_id"] == "j1" and daemon_meta["source"] == "osc" and daemon_meta["tempo_source"] == "osc"
    assert cli_meta["source"] == "cli" and cli_meta["job_id"].startswith("cli-")
    assert cli_meta["tempo_source"] == "request" and cli_meta["context_path"] == ""
    # how the model was loaded comes from the model itself (not from what was asked for)
    assert (cli_meta["precision"], cli_meta["decode_mode"], cli_meta["compiled"]) == ("fp32", "eager", False)
    # click mode: no context loudness, so both land the default offset under the reference level
    for meta in (daemon_meta, cli_meta):
        assert meta["context_lufs"] is None and meta["loudness_offset_lu"] == DEFAULT_OFFSET_LU
        assert abs(meta["lufs"] - (REFERENCE_LUFS - DEFAULT_OFFSET_LU)) < 0.5 and meta["gain_db"] != 0.0
