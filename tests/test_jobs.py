"""JobQueue + Journal with a fake runner: ordering, limits, cancel, failures, persistence (no model)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from stage_bridge.bridge.job import StemJob
from stage_bridge.bridge.jobs import CANCELLED, DONE, FAILED, QUEUED, RUNNING, Job, JobQueue, Journal
from stage_bridge.bridge.protocol import ProtocolError
from stage_bridge.errors import Cancelled, NotAudio, StageError

TIMEOUT = 10.0


class Recorder:
    """The Events protocol, recording (event, job id, detail) in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, object]] = []
        self.cond = threading.Condition()

    def _add(self, kind: str, job: Job, detail: object = None) -> None:
        with self.cond:
            self.events.append((kind, job.id, detail))
            self.cond.notify_all()

    def accepted(self, job, position):
        self._add("accepted", job, position)

    def progress(self, job, percent):
        self._add("progress", job, percent)

    def done(self, job):
        self._add("done", job, list(job.outputs))

    def failed(self, job):
        self._add("failed", job, (job.error_code, job.error_message))

    def cancelled(self, job):
        self._add("cancelled", job)

    def wait(self, kind: str, job_id: str, timeout: float = TIMEOUT) -> tuple:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for e in self.events:
                    if e[0] == kind and e[1] == job_id:
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {kind} for {job_id}; events: {self.events}")
                self.cond.wait(left)

    def of(self, job_id: str) -> list[str]:
        with self.cond:
            return [e[0] for e in self.events if e[1] == job_id]

    def finished(self) -> list[str]:
        with self.cond:
            return [e[1] for e in self.events if e[0] in ("done", "failed", "cancelled")]


class FakeRunner:
    """Per job id: block until released (polling should_cancel), then return outputs or raise."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.gates: dict[str, threading.Event] = {}
        self.raises: dict[str, BaseException] = {}
        self.running_now = threading.Event()
        self.lock = threading.Lock()

    def hold(self, job_id: str) -> threading.Event:
        with self.lock:
            return self.gates.setdefault(job_id, threading.Event())

    def __call__(self, job, progress, should_cancel):
        with self.lock:
            self.started.append(job.id)
            gate = self.gates.get(job.id)
        progress(0.0)
        if gate is not None:
            while not gate.wait(0.005):
                if should_cancel():
                    raise Cancelled("cancelled by the test")
        for p in (1.0, 2.0, 50.0, 51.0, 95.0):
            progress(p)
        if job.id in self.raises:
            raise self.raises[job.id]
        progress(100.0)
        return [f"/out/{job.id}.wav"]

    def wait_started(self, job_id: str, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while job_id not in self.started:
            assert time.monotonic() < deadline, f"{job_id} never started; started: {self.started}"
            time.sleep(0.002)


@pytest.fixture
def journal(tmp_path: Path):
    j = Journal(tmp_path / "jobs.sqlite3")
    yield j
    j.close()


@pytest.fixture
def make_queue(journal):
    queues: list[JobQueue] = []

    def make(capacity: int = 16, resume: bool = True, runner=None, events=None):
        runner = runner or FakeRunner()
        events = events or Recorder()
        q = JobQueue(journal, runner, events, capacity=capacity)
        q.start(resume=resume)
        queues.append(q)
        return q, runner, events

    yield make
    for q in queues:
        q.stop(timeout=5)


def spec(job_id: str, **fields) -> StemJob:
    return StemJob(**{"id": job_id, "source": "osc", "name": job_id, "context_path": "", "instrument": "drums",
                      "bars": 4, "bpm": 120.0, "context_mode": "click", **fields})


def job(job_id: str, **fields) -> Job:
    return Job(spec(job_id, **fields))


def busy(q: JobQueue, runner: FakeRunner, *queued: str) -> threading.Event:
    """Job "a" running, held until the returned gate is set, and `queued` submitted behind it."""
    gate = runner.hold("a")
    q.submit(job("a"))
    runner.wait_started("a")
    for job_id in queued:
        q.submit(job(job_id))
    return gate


def states(journal: Journal) -> dict[str, str]:
    return {j.id: j.state for j in journal.history(1000)}


def test_fifo_order_and_positions(make_queue, journal):
    q, runner, ev = make_queue()
    gate = runner.hold("a")
    assert q.submit(job("a")) == 0
    runner.wait_started("a")
    assert q.running is not None and q.running.id == "a"
    assert [q.submit(job(x)) for x in "bcd"] == [1, 2, 3]
    assert q.queue_length == 3
    assert [e[2] for e in ev.events if e[0] == "accepted"] == [0, 1, 2, 3]
    assert states(journal) == {"a": RUNNING, "b": QUEUED, "c": QUEUED, "d": QUEUED}
    gate.set()
    ev.wait("done", "d")
    assert runner.started == ["a", "b", "c", "d"]
    assert ev.finished() == ["a", "b", "c", "d"]
    assert states(journal) == dict.fromkeys("abcd", DONE)
    assert journal.history()[0].outputs == ["/out/a.wav"]
    assert ev.wait("done", "a")[2] == ["/out/a.wav"]
    assert q.running is None and q.queue_length == 0


def test_progress_is_throttled_and_ends_at_100(make_queue):
    q, runner, ev = make_queue()
    q.submit(job("a"))
    ev.wait("done", "a")
    percents = [e[2] for e in ev.events if e[0] == "progress"]
    assert percents == [0.0, 2.0, 50.0, 95.0, 100.0]  # steps of at least 2 %, and always the 100
    assert ev.of("a") == ["accepted"] + ["progress"] * 5 + ["done"]


def test_capacity_queue_full(make_queue, journal):
    q, runner, ev = make_queue(capacity=2)
    gate = busy(q, runner, "b", "c")
    with pytest.raises(ProtocolError) as info:
        q.submit(job("d"))
    assert info.value.code == "queue_full"
    assert "d" not in states(journal) and "accepted" not in ev.of("d")
    q.cancel("c")  # room again
    assert q.submit(job("d")) == 2
    gate.set()
    ev.wait("done", "d")
    assert runner.started == ["a", "b", "d"]


def test_duplicate_job(make_queue, journal):
    q, runner, ev = make_queue()
    gate = busy(q, runner, "b")
    for dup in ("a", "b"):  # running, queued
        with pytest.raises(ProtocolError) as info:
            q.submit(job(dup))
        assert info.value.code == "duplicate_job"
    assert len(journal.history()) == 2
    gate.set()
    ev.wait("done", "b")
    q.submit(job("a"))  # an id may be reused once its job has ended
    ev.wait("accepted", "a")
    deadline = time.monotonic() + TIMEOUT
    while ev.of("a").count("done") < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    history = journal.history()
    assert [j.id for j in history] == ["a", "b", "a"] and {j.state for j in history} == {DONE}


def test_cancel_queued_job(make_queue, journal):
    q, runner, ev = make_queue()
    gate = busy(q, runner, "b", "c")
    q.cancel("b")
    assert ev.of("b") == ["accepted", "cancelled"]
    assert states(journal)["b"] == CANCELLED and q.queue_length == 1
    gate.set()
    ev.wait("done", "c")
    assert runner.started == ["a", "c"]
    assert states(journal) == {"a": DONE, "b": CANCELLED, "c": DONE}


def test_cancel_running_job(make_queue, journal):
    q, runner, ev = make_queue()
    runner.hold("a")  # never released: only should_cancel ends it
    q.submit(job("a"))
    q.submit(job("b"))
    runner.wait_started("a")
    q.cancel("a")
    ev.wait("cancelled", "a")
    ev.wait("done", "b")  # the next job is not affected by the cancel flag
    assert states(journal) == {"a": CANCELLED, "b": DONE}
    assert "done" not in ev.of("a") and "failed" not in ev.of("a")


def test_cancel_unknown_job(make_queue):
    q, runner, ev = make_queue()
    with pytest.raises(ProtocolError) as info:
        q.cancel("nope")
    assert info.value.code == "unknown_job"
    q.submit(job("a"))
    ev.wait("done", "a")
    with pytest.raises(ProtocolError) as info:  # finished jobs cannot be cancelled either
        q.cancel("a")
    assert info.value.code == "unknown_job"


class OutOfMemoryError(RuntimeError):
    """Stands for torch.cuda.OutOfMemoryError (matched by name: no torch import in the queue)."""


@pytest.mark.parametrize("exc,code", [
    (NotAudio("the context is not audio"), "not_audio"),
    (ProtocolError("bad_instrument", "no model loaded."), "bad_instrument"),
    (StageError("a StageError whose code the protocol does not know"), "engine_error"),
    (RuntimeError("boom"), "engine_error"),
    (ZeroDivisionError("division by zero"), "engine_error"),
    (MemoryError("cannot allocate"), "out_of_memory"),
    (OutOfMemoryError("CUDA out of memory"), "out_of_memory"),
])
def test_failures_become_error_codes_and_the_worker_keeps_serving(make_queue, journal, exc, code):
    q, runner, ev = make_queue()
    runner.raises["bad"] = exc
    q.submit(job("bad"))
    q.submit(job("next"))
    _, _, (got_code, message) = ev.wait("failed", "bad")
    assert got_code == code and message
    ev.wait("done", "next")
    assert states(journal) == {"bad": FAILED, "next": DONE}
    stored = journal.history()[0]
    assert (stored.error_code, stored.error_message) == (got_code, message)
    if code == "engine_error" and not isinstance(exc, StageError):
        assert type(exc).__name__ in message


def test_journal_persists_across_reopen(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    j = Journal(path)
    a = job("a", prompt="ünï", seed=3)
    b = job("b", bars=8)
    j.add(a)
    j.add(b)
    a.state, a.outputs = DONE, ["/out/a.wav"]
    j.update(a)
    b.state, b.error_code, b.error_message = FAILED, "not_audio", "nope"
    j.update(b)
    j.add(job("c", bars=1))
    j.close()

    j = Journal(path)
    history = j.history()
    assert [(x.id, x.state) for x in history] == [("a", DONE), ("b", FAILED), ("c", QUEUED)]
    assert history[0].spec == spec("a", prompt="ünï", seed=3) and history[0].outputs == ["/out/a.wav"]
    assert (history[1].error_code, history[1].error_message) == ("not_audio", "nope")
    assert [x.id for x in j.active()] == ["c"]
    assert [x.id for x in j.history(limit=2)] == ["b", "c"]
    j.close()


def test_resume_requeues_queued_and_interrupted_jobs(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    j = Journal(path)
    for job_id, state in (("old", DONE), ("interrupted", RUNNING), ("gone", CANCELLED), ("w1", QUEUED),
                          ("bad", FAILED), ("w2", QUEUED)):
        x = job(job_id, bars=1)
        j.add(x)
        x.state = state
        j.update(x)
    j.close()  # as if the daemon was killed

    j = Journal(path)
    runner, ev = FakeRunner(), Recorder()
    q = JobQueue(j, runner, ev)
    resumed = q.start(resume=True)
    try:
        assert [x.id for x in resumed] == ["interrupted", "w1", "w2"]
        ev.wait("done", "w2")
        assert runner.started == ["interrupted", "w1", "w2"]
        assert not any(e[0] == "accepted" for e in ev.events)  # resumed, not newly accepted
        assert states(j) == {"old": DONE, "interrupted": DONE, "gone": CANCELLED, "w1": DONE, "bad": FAILED,
                             "w2": DONE}
    finally:
        q.stop(timeout=5)
        j.close()


def test_start_without_resume_leaves_journal_alone(tmp_path):
    j = Journal(tmp_path / "jobs.sqlite3")
    j.add(job("w", bars=1))
    runner, ev = FakeRunner(), Recorder()
    q = JobQueue(j, runner, ev)
    assert q.start(resume=False) == []
    q.submit(job("new"))  # the worker serves new work only: once "new" is done it has passed "w" by
    ev.wait("done", "new")
    q.stop(timeout=5)
    assert runner.started == ["new"] and states(j) == {"w": QUEUED, "new": DONE}
    j.close()


def test_stop_cancels_running_and_keeps_queued(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    j = Journal(path)
    runner, ev = FakeRunner(), Recorder()
    runner.hold("a")
    q = JobQueue(j, runner, ev)
    q.start()
    q.submit(job("a"))
    q.submit(job("b"))
    q.submit(job("c"))
    runner.wait_started("a")
    q.stop(timeout=TIMEOUT)
    assert q.stopped  # the running job was cancelled and the worker ended (not left behind by the timeout)
    assert ev.of("a")[-1] == "cancelled"
    assert runner.started == ["a"]
    with pytest.raises(ProtocolError) as info:
        q.submit(job("late"))
    assert info.value.code == "engine_error"
    assert states(j) == {"a": CANCELLED, "b": QUEUED, "c": QUEUED}
    j.close()

    j = Journal(path)  # the next start runs the queued ones, not the cancelled one
    runner2, ev2 = FakeRunner(), Recorder()
    q2 = JobQueue(j, runner2, ev2)
    q2.start()
    ev2.wait("done", "c")
    q2.stop(timeout=5)
    assert runner2.started == ["b", "c"]
    assert states(j) == {"a": CANCELLED, "b": DONE, "c": DONE}
    j.close()


def test_stop_when_idle_ends_the_worker(make_queue):
    q, runner, ev = make_queue()
    q.stop(timeout=TIMEOUT)
    assert q.stopped


def test_submit_from_many_threads(make_queue, journal):
    q, runner, ev = make_queue(capacity=1000)
    gate = runner.hold("blocker")
    q.submit(job("blocker"))
    runner.wait_started("blocker")
    positions: list[int] = []
    lock = threading.Lock()

    def submit(t: int) -> None:
        for i in range(20):
            pos = q.submit(job(f"t{t}-{i}"))
            with lock:
                positions.append(pos)

    threads = [threading.Thread(target=submit, args=(t,)) for t in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gate.set()
    deadline = time.monotonic() + TIMEOUT
    while len(ev.finished()) < 101:
        assert time.monotonic() < deadline, len(ev.finished())
        time.sleep(0.01)
    assert sorted(runner.started[1:]) == sorted(f"t{t}-{i}" for t in range(5) for i in range(20))
    for t in range(5):  # each thread's jobs ran in its submission order
        mine = [x for x in runner.started if x.startswith(f"t{t}-")]
        assert mine == [f"t{t}-{i}" for i in range(20)]
    assert set(states(journal).values()) == {DONE}
    assert sorted(positions) == list(range(1, 101))  # no two jobs were told the same place


# -- the journal's format ------------------------------------------------------------------------

# A row exactly as the daemon wrote it before StemJob existed (params: a JSON object of these keys).
OLD_SCHEMA = """CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, state TEXT NOT NULL, params TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL, outputs TEXT NOT NULL DEFAULT '[]',
    error_code TEXT, error_message TEXT)"""
OLD_PARAMS = {"source": "inbox", "name": "verse", "context_path": "/home/me/stage/inbox/verse.drums.wav",
              "instrument": "drums", "bars": 8, "bpm": 97.5, "tempo_source": "osc", "beats_per_bar": 3, "beat_unit": 4,
              "offset": 0.25, "prompt": "Genres: Funk.", "takes": 2, "context_mode": "mix", "seed": None}


def test_a_journal_written_in_the_old_format_loads(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    db = sqlite3.connect(str(path))
    db.execute(OLD_SCHEMA)
    db.execute("INSERT INTO jobs (id, state, params, created, updated, outputs) VALUES (?,?,?,?,?,?)",
               ("inbox-verse-0123456789", "done", json.dumps(OLD_PARAMS), 1.5, 2.5, '["/out/verse.wav"]'))
    db.execute("INSERT INTO jobs (id, state, params, created, updated) VALUES (?,?,?,?,?)",
               ("osc-1", "queued", json.dumps({**OLD_PARAMS, "source": "osc", "seed": 7}), 3.0, 3.0))
    db.commit()
    db.close()
    j = Journal(path)
    try:
        done, queued = j.history()
        assert done.spec == StemJob("inbox-verse-0123456789", **OLD_PARAMS)
        assert (done.state, done.outputs, done.created) == (DONE, ["/out/verse.wav"], 1.5)
        assert queued.spec.seed == 7 and queued.spec.source == "osc" and [x.id for x in j.active()] == ["osc-1"]
    finally:
        j.close()


def test_the_journal_stores_exactly_the_old_params_keys(journal, tmp_path):
    journal.add(job("a"))
    db = sqlite3.connect(str(tmp_path / "jobs.sqlite3"))
    try:
        (params,) = db.execute("SELECT params FROM jobs").fetchone()
    finally:
        db.close()
    assert set(json.loads(params)) == set(OLD_PARAMS)
