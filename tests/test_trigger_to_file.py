"""benchmarks/trigger_to_file.py: a job through the real daemon, split by the daemon's own timings."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def t2f(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports its sibling osc_latency
    module = importlib.import_module("trigger_to_file")
    yield module
    sys.modules.pop("trigger_to_file", None)


def test_render_stem_reports_the_prefill_inside_generate():
    import torch

    from stage_bridge.engine.checkpoints import tiny_random
    from stage_bridge.engine.generate import StemRequest, render_stem
    from stage_bridge.engine.model import build_model

    model = build_model(tiny_random(), torch.device("cpu"))
    steps = []
    result = render_stem(model, StemRequest(bpm=120.0, bars=1, context_mode="click", seed=1),
                         progress=lambda done, total: steps.append(done))
    t = result.timings
    assert {"encode_s", "prefill_s", "generate_s", "decode_s", "total_s"} <= set(t)
    assert 0 < t["prefill_s"] < t["generate_s"]
    assert steps and steps == list(range(1, len(steps) + 1))  # the caller's progress still sees every step


def test_runner_log_line_parses(t2f):
    line = "12:00:01 INFO stage_bridge.runner: job t2f-1: encode_s 0.120, prefill_s 0.010, generate_s 1.500, " \
           "decode_s 0.070, total_s 1.690, write_s 0.004"
    assert t2f.job_timings(line, "t2f-1") == {"encode_s": 0.12, "prefill_s": 0.01, "generate_s": 1.5,
                                              "decode_s": 0.07, "total_s": 1.69, "write_s": 0.004}


@pytest.mark.slow
def test_trigger_to_file_through_the_daemon(t2f, capsys):
    assert t2f.main(["--runs", "1", "--bars", "1", "--context-s", "3", "--timeout", "300", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    run = result["runs"][0]
    assert Path(run["file"]).is_file()
    parts = run["parts_s"]
    assert set(parts) == set(t2f.PARTS)
    # the daemon's own timings fit inside the time measured from outside, and each part is real
    assert all(v >= 0 for v in parts.values()), parts
    assert parts["prefill"] > 0 and parts["decode"] > 0 and parts["write"] > 0
    assert run["sidecar_timings"]["prefill_s"] < run["sidecar_timings"]["generate_s"]
    assert result["parts_s"] == parts  # one run: its parts are the medians
