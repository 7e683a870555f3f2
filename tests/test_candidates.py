"""Candidates and ranking (issue 16): N generated in one batch, the K that fit best kept, best
first; the scores reach the sidecar, `/stage/job/done` (when asked) and the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from stage_bridge.audio import Audio
from stage_bridge.bridge import protocol as P
from stage_bridge.bridge.job import StemJob
from stage_bridge.bridge.jobs import DONE, Job
from stage_bridge.bridge.osc import OscEvents
from stage_bridge.bridge.runner import RenderSettings, StemRunner, render_and_publish, stem_request
from stage_bridge.cli import main
from stage_bridge.engine.generate import StemRequest, render_stem
from stage_bridge.errors import BadArgument


@pytest.fixture(scope="module")
def model():
    from stage_bridge.engine.model import load_model

    return load_model("tiny-random", "cpu")


def click_request(**fields) -> StemRequest:
    return StemRequest(**{"bpm": 120.0, "bars": 2, "context_mode": "click", "sample_rate": 16000, "seed": 11,
                          **fields})


def test_the_kept_takes_are_the_best_of_all_candidates_best_first(model):
    every = render_stem(model, click_request(takes=4, candidates=4))
    kept = render_stem(model, click_request(takes=2, candidates=4))
    scores = [f.score for f in every.fits]
    assert scores == sorted(scores, reverse=True) and len(every.takes) == 4
    assert [f.score for f in kept.fits] == scores[:2]  # the same batch, ranked once: its two best
    for a, b in zip(kept.takes, every.takes[:2]):
        np.testing.assert_array_equal(a, b)
    assert "score_s" in kept.timings


def test_candidates_must_cover_the_takes(model):
    with pytest.raises(BadArgument, match="candidates must be from the number of takes"):
        render_stem(model, click_request(takes=3, candidates=2))


def test_budget_counts_every_candidate(model):
    from stage_bridge.engine.budget import need

    many = need(model, click_request(takes=1, candidates=8), None)
    assert many == need(model, click_request(takes=8), None)
    assert many.host + many.device > sum(dataclasses.astuple(need(model, click_request(takes=1), None)))


def test_reference_tone_loudness_is_pyloudnorms(model, tmp_path):
    """The context's and the take's LUFS in the sidecar are what pyloudnorm reads (BS.1770) for the
    same audio heard on two speakers, and a 997 Hz tone at -20 dBFS on both reads -20 LUFS."""
    import pyloudnorm
    import soundfile as sf

    sr = 48000
    tone = (0.1 * np.sin(2 * np.pi * 997 * np.arange(sr * 4) / sr)).astype(np.float32)
    job = StemJob(id="tone", source="cli", name="tone", context_path="", instrument="drums", bars=2, bpm=120.0,
                  context_mode="mix", seed=3)
    settings = RenderSettings(sample_rate=sr)
    request = stem_request(job, Audio(tone[np.newaxis], sr), settings)
    paths, _ = render_and_publish(model, job, request, tmp_path, settings)
    meta = json.loads(paths[0].with_suffix(".json").read_text())
    meter = pyloudnorm.Meter(sr, block_size=0.4)
    reference = meter.integrated_loudness(np.stack([tone, tone], axis=1).astype(np.float64))
    assert reference == pytest.approx(-20.0, abs=0.05)
    assert meta["fit"]["context_lufs"] == pytest.approx(reference, abs=0.01)
    take, _ = sf.read(str(paths[0]), dtype="float64")
    assert meta["fit"]["lufs"] == pytest.approx(meter.integrated_loudness(np.stack([take, take], axis=1)), abs=0.01)


def test_done_carries_every_score_of_the_sidecar_when_asked(model, tmp_path):
    job = StemJob(id="j-scores", source="osc", name="song", context_path="", instrument="drums", bars=2, bpm=120.0,
                  takes=2, candidates=3, context_mode="click", seed=5, scores=True)
    runner = StemRunner({"drums": model}, tmp_path, RenderSettings(sample_rate=16000))
    outputs = runner(job, lambda p: None, lambda: False)
    sent: list[tuple] = []
    events = OscEvents(lambda address, *args: sent.append((address, *args)))
    events.done(Job(job, state=DONE, outputs=outputs))
    events.done(Job(dataclasses.replace(job, scores=False), state=DONE, outputs=outputs))
    (address, *args), (_, *plain) = sent
    assert address == P.DONE and plain == ["j-scores", *outputs]  # not asked: as it always was
    assert args[:3] == ["j-scores", *outputs]
    metas = [json.loads(Path(p).with_suffix(".json").read_text()) for p in outputs]
    assert [m["rank"] for m in metas] == [m["take"] for m in metas] == [1, 2]
    assert metas[0]["fit"]["score"] >= metas[1]["fit"]["score"]
    takes = " ".join(map(str, args[3:])).split("take ")[1:]
    for k, (meta, text) in enumerate(zip(metas, takes), start=1):
        words = text.split()
        assert int(words[0]) == k
        pairs = dict(zip(words[1::2], words[2::2]))
        expected = {key: v for key, v in meta["fit"].items() if v is not None}
        assert set(pairs) == set(expected) == set(P.SCORE_KEYS) - {"context_lufs"}  # click mode: no context
        for key, value in expected.items():
            assert float(pairs[key]) == pytest.approx(float(value)), key


def test_cli_candidates_and_takes(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", "--instrument", "drums", "--bpm", "120", "--bars", "2", "--model", "tiny-random",
                 "--context-mode", "click", "--out", str(out), "--quiet", "--seed", "5", "--takes", "2",
                 "--candidates", "3", "--sample-rate", "16000"]) == 0
    captured = capsys.readouterr()
    paths = captured.out.split()
    metas = [json.loads(Path(p).with_suffix(".json").read_text()) for p in paths]
    assert [(m["take"], m["rank"], m["candidates"]) for m in metas] == [(1, 1, 3), (2, 2, 3)]
    assert metas[0]["fit"]["score"] >= metas[1]["fit"]["score"]
    assert f"grid {metas[0]['fit']['grid_f1']:.2f}" in captured.err  # each take's fit, said on stderr

    assert main(["generate", "--instrument", "drums", "--bpm", "120", "--bars", "2", "--model", "tiny-random",
                 "--context-mode", "click", "--out", str(tmp_path / "none"), "--quiet", "--takes", "3",
                 "--candidates", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: candidates must be") and not (tmp_path / "none").exists()


def test_the_new_job_fields_reach_the_journal_only_when_used():
    """A job without candidates or scores is journaled with exactly the keys it always had (an
    older stage-bridge still reads the journal); one with them keeps them across a restart."""
    plain = StemJob(id="a", source="osc", name="n", context_path="", instrument="drums", bars=1, bpm=120.0)
    assert "candidates" not in plain.params() and "scores" not in plain.params()
    used = dataclasses.replace(plain, takes=2, candidates=5, scores=True)
    assert (used.params()["candidates"], used.params()["scores"]) == (5, True)
    assert StemJob.from_params("a", used.params()) == used and StemJob.from_params("a", plain.params()) == plain
