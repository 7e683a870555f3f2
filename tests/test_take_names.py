"""Take file names are checked against the filesystem's limit before generating (issue 14, 10):
a 230-character inbox name used to fail after generating, with advice about disk space."""

from __future__ import annotations

from pathlib import Path

import pytest

from stage_bridge.bridge.job import StemJob
from stage_bridge.bridge.protocol import ProtocolError
from stage_bridge.bridge.runner import RenderSettings, StemRunner, check_output_name
from stage_bridge.engine.budget import Memory
from stage_bridge.engine.model import load_model


def job(name: str, takes: int = 2) -> StemJob:
    return StemJob(id="names-1", source="inbox", name=name, context_path="", instrument="drums", bars=1, bpm=120.0,
                   context_mode="click", takes=takes, seed=1)


def longest_allowed(takes: int = 2) -> int:
    n = 1
    while True:
        try:
            check_output_name(job("n" * (n + 1), takes))
        except ProtocolError:
            return n
        n += 1


@pytest.fixture(scope="module")
def runner_for(tmp_path_factory):
    model = load_model("tiny-random", "cpu")
    return lambda out: StemRunner({"drums": model}, out, RenderSettings(sample_rate=22050),
                                  free_memory=lambda device: Memory(10**12))


def test_a_230_character_name_is_refused_before_generating(runner_for, tmp_path):
    steps: list[float] = []
    with pytest.raises(ProtocolError) as e:
        runner_for(tmp_path)(job("x" * 230), steps.append, lambda: False)
    assert e.value.code == "bad_request" and "shorten it by at least" in str(e.value)
    assert steps == [] and list(tmp_path.iterdir()) == []  # refused before any work


def test_the_longest_allowed_name_publishes_on_a_real_filesystem(runner_for, tmp_path):
    """The rule matches the filesystem: the longest name it allows publishes every take (with the
    hidden temp files publishing makes), even after a name collision."""
    n = longest_allowed()
    assert 150 < n < 230
    run = runner_for(tmp_path)
    first = run(job("n" * n), lambda p: None, lambda: False)
    again = run(StemJob(**{**job("n" * n).params(), "id": "names-2"}), lambda p: None, lambda: False)
    assert len(first) == len(again) == 2 and all(Path(p).is_file() for p in first + again)
    assert {Path(p).name for p in again}.isdisjoint(Path(p).name for p in first)  # "-2" names
    with pytest.raises(ProtocolError):
        check_output_name(job("n" * (n + 1)))


def test_multibyte_names_count_in_bytes():
    n = longest_allowed()
    with pytest.raises(ProtocolError):
        check_output_name(job("é" * (n // 2 + 1)))  # 2 bytes each in UTF-8
    check_output_name(job("é" * (n // 2)))
