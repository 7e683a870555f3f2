"""A job run again (after a crash) makes the same takes under the same names, exactly once each
(issue 14, item 5): its seed is drawn when it is made and journaled; the takes an interrupted
run published are found by their sidecars."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stage_bridge.bridge.job import StemJob, job_from_request
from stage_bridge.bridge.jobs import Job, Journal
from stage_bridge.bridge.protocol import GenerateRequest, Tempo
from stage_bridge.bridge.runner import RenderSettings, StemRunner, published_takes
from stage_bridge.engine.budget import Memory
from stage_bridge.engine.model import load_model
from stage_bridge.limits import MAX_SEED


def test_the_seed_is_drawn_when_the_job_is_made_and_journaled(tmp_path):
    req = GenerateRequest("j1", "", "drums", 1, bpm=120.0, context_mode="click")
    seeds = {job_from_request(req, "osc", "", None).seed for _ in range(20)}
    assert all(isinstance(s, int) and 0 <= s <= MAX_SEED for s in seeds) and len(seeds) > 1
    given = job_from_request(GenerateRequest("j2", "", "drums", 1, bpm=120.0, context_mode="click", seed=7), "osc",
                             "", Tempo(100.0))
    assert given.seed == 7

    journal = Journal(tmp_path / "jobs.sqlite3")
    spec = job_from_request(req, "osc", "", None)
    journal.add(Job(spec))
    (again,) = journal.active()
    assert again.spec == spec  # a restart runs it with the seed it was accepted with
    journal.close()


def test_an_old_journal_row_without_a_drawn_seed_still_loads():
    params = {"source": "osc", "name": "song", "context_path": "", "instrument": "drums", "bars": 1, "bpm": 120.0,
              "tempo_source": "request", "beats_per_bar": 4, "beat_unit": 4, "offset": 0.0, "prompt": "",
              "takes": 1, "context_mode": "click", "seed": None}
    assert StemJob.from_params("old", params).seed is None


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-random", "cpu")


def three_takes(job_id: str = "resume-1") -> StemJob:
    return StemJob(id=job_id, source="osc", name="song", context_path="", instrument="drums", bars=1, bpm=120.0,
                   context_mode="click", takes=3, seed=11)


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_run_interrupted_after_its_first_take_ends_with_exactly_its_takes(model, tmp_path):
    runner = StemRunner({"drums": model}, tmp_path, RenderSettings(sample_rate=22050),
                        free_memory=lambda device: Memory(10**12))
    job = three_takes()
    first = runner(job, lambda p: None, lambda: False)
    audio = {Path(p).name: sf.read(p)[0] for p in first}
    for path in first[1:]:  # what kill -9 right after the first take left: take 1 only
        Path(path).unlink()
        Path(path).with_suffix(".json").unlink()
    assert list(published_takes(tmp_path, job)) == [1]

    again = runner(job, lambda p: None, lambda: False)
    assert again == first  # the same names
    assert files(tmp_path) == sorted(n for p in first for n in (Path(p).name, Path(p).with_suffix(".json").name))
    for path in again:  # the same takes: the journaled seed
        assert np.array_equal(sf.read(path)[0], audio[Path(path).name])


def test_a_run_whose_takes_were_all_published_does_nothing_again(model, tmp_path):
    runner = StemRunner({"drums": model}, tmp_path, RenderSettings(sample_rate=22050),
                        free_memory=lambda device: Memory(10**12))
    job = three_takes()
    first = runner(job, lambda p: None, lambda: False)
    stamps = {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in first}
    steps: list[float] = []
    assert runner(job, steps.append, lambda: False) == first
    assert steps == [100.0] and stamps == {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in first}


def test_another_job_of_the_same_name_is_not_mistaken_for_it(model, tmp_path):
    runner = StemRunner({"drums": model}, tmp_path, RenderSettings(sample_rate=22050),
                        free_memory=lambda device: Memory(10**12))
    first = runner(three_takes("a"), lambda p: None, lambda: False)
    other = runner(three_takes("b"), lambda p: None, lambda: False)  # same name and settings, another job
    assert set(first).isdisjoint(other) and len(files(tmp_path)) == 12
    reused_id = StemJob(**{**three_takes("a").params(), "id": "a", "seed": 12})  # an id reused for a new request
    assert published_takes(tmp_path, reused_id) == {}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_fifos_named_like_takes_or_contexts_never_block(tmp_path):
    import threading

    from stage_bridge.bridge.runner import context_file_shape

    job = three_takes()
    os.mkfifo(tmp_path / "song.drums.120bpm.take1.json")
    (tmp_path / "song.drums.120bpm.take1.wav").write_bytes(b"RIFF")
    os.mkfifo(tmp_path / "context.wav")
    results: list = []
    worker = threading.Thread(target=lambda: results.extend([published_takes(tmp_path, job),
                                                              context_file_shape(str(tmp_path / "context.wav"))]),
                              daemon=True)
    worker.start()
    worker.join(30)
    assert results == [{}, None]  # (a blocking open would leave the thread waiting for a writer)
