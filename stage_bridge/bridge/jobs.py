"""Jobs: a bounded queue served by one model worker, recorded in an SQLite journal, and the
job service every front end (OSC, inbox) submits through.

Why one worker: a single GPU serves one generation at a time best, and a musician wants the
job they asked for first to finish first. Why a journal: the daemon may be killed at any
moment (laptop lid, kill -9, power); on restart, queued and interrupted jobs run again and
`stage-bridge jobs` shows what happened. Outputs are published atomically by the runner, so
an interrupted job never leaves a partial file to clean up (only hidden `.part` temp files,
which the server removes at start). Why a service: the front ends need only "submit this
request", "cancel", "is there a tempo / room"; they never reach into the queue or journal.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

from ..errors import Cancelled, StageError
from .job import StemJob, job_from_request, resolve_context_path
from .protocol import ERROR_CODES, GenerateRequest, ProtocolError, Tempo
from .tempo import TempoSource

log = logging.getLogger("stage_bridge.jobs")

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
ACTIVE = (QUEUED, RUNNING)


@dataclass
class Job:
    """What became of a request: its state, outputs or error (the request itself never changes)."""

    spec: StemJob
    state: str = QUEUED
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    outputs: list[str] = field(default_factory=list)
    error_code: str | None = None
    error_message: str | None = None

    @property
    def id(self) -> str:
        return self.spec.id


class Journal:
    """The job history in an SQLite file (WAL mode: a crash mid-write loses at most that write)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("""CREATE TABLE IF NOT EXISTS jobs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, state TEXT NOT NULL, params TEXT NOT NULL,
            created REAL NOT NULL, updated REAL NOT NULL, outputs TEXT NOT NULL DEFAULT '[]',
            error_code TEXT, error_message TEXT)""")
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state)")

    def add(self, job: Job) -> None:
        with self._lock:
            self._db.execute("INSERT INTO jobs (id, state, params, created, updated, outputs) VALUES (?,?,?,?,?,?)",
                             (job.id, job.state, json.dumps(job.spec.params()), job.created, job.updated,
                              json.dumps(job.outputs)))

    def update(self, job: Job) -> None:
        job.updated = time.time()
        with self._lock:  # the latest row of that id (ids may be reused after a job ended)
            self._db.execute("""UPDATE jobs SET state=?, updated=?, outputs=?, error_code=?, error_message=?
                                WHERE seq=(SELECT MAX(seq) FROM jobs WHERE id=?)""",
                             (job.state, job.updated, json.dumps(job.outputs), job.error_code, job.error_message,
                              job.id))

    def _rows(self, where: str, args: tuple = (), order: str = "seq") -> list[Job]:
        with self._lock:
            rows = self._db.execute(f"SELECT id, state, params, created, updated, outputs, error_code, error_message "
                                    f"FROM jobs {where} ORDER BY {order}", args).fetchall()
        return [Job(StemJob.from_params(r[0], json.loads(r[2])), r[1], r[3], r[4], json.loads(r[5]), r[6], r[7])
                for r in rows]

    def active(self) -> list[Job]:
        """Queued and interrupted (running) jobs, oldest first."""
        return self._rows("WHERE state IN (?, ?)", ACTIVE)

    def history(self, limit: int = 50) -> list[Job]:
        return self._rows("", (), f"seq DESC LIMIT {int(limit)}")[::-1]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Events(Protocol):
    def accepted(self, job: Job, position: int) -> None: ...
    def progress(self, job: Job, percent: float) -> None: ...
    def done(self, job: Job) -> None: ...
    def failed(self, job: Job) -> None: ...
    def cancelled(self, job: Job) -> None: ...


Runner = Callable[[StemJob, Callable[[float], None], Callable[[], bool]], list[str]]  # -> output paths


class JobQueue:
    """Bounded FIFO + one worker thread. `submit`/`cancel` never block on the model."""

    def __init__(self, journal: Journal, runner: Runner, events: Events, capacity: int = 16,
                 progress_step: float = 2.0):
        self.journal, self.runner, self.events = journal, runner, events
        self.capacity = capacity
        self.progress_step = progress_step
        self._queue: deque[Job] = deque()
        self._running: Job | None = None
        self._cancel_running = threading.Event()
        self._stopping = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="stage-bridge-worker", daemon=True)

    # -- control --------------------------------------------------------------------------
    def start(self, resume: bool = True) -> list[Job]:
        """Start the worker; with `resume`, re-queue the journal's unfinished jobs first."""
        resumed = []
        if resume:
            for job in self.journal.active():
                job.state = QUEUED
                self.journal.update(job)
                self._queue.append(job)
                resumed.append(job)
        self._thread.start()
        return resumed

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel the running job (it leaves no file); queued jobs stay queued for the next start."""
        with self._cond:
            self._stopping = True
            self._cancel_running.set()
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- requests -------------------------------------------------------------------------
    def submit(self, job: Job) -> int:
        """Queue a job; returns its position (0 = runs next). ProtocolError when full/duplicate."""
        with self._cond:
            if self._stopping:
                raise ProtocolError("engine_error", "the daemon is shutting down.")
            if any(j.id == job.id for j in self._queue) or (self._running and self._running.id == job.id):
                raise ProtocolError("duplicate_job", f"job {job.id} is already queued or running; use a new id.")
            if len(self._queue) >= self.capacity:
                raise ProtocolError("queue_full", f"{len(self._queue)} jobs are waiting (the limit); try again when "
                                                  "one has finished, or cancel one.")
            self.journal.add(job)
            self._queue.append(job)
            position = len(self._queue) - 1 + (1 if self._running else 0)
            self.events.accepted(job, position)
            self._cond.notify_all()
        return position

    def cancel(self, job_id: str) -> None:
        with self._cond:
            if self._running is not None and self._running.id == job_id:
                self._cancel_running.set()
                return
            for job in self._queue:
                if job.id == job_id:
                    self._queue.remove(job)
                    job.state = CANCELLED
                    self.journal.update(job)
                    self.events.cancelled(job)
                    return
        raise ProtocolError("unknown_job", f"no queued or running job is called {job_id}.")

    @property
    def running(self) -> Job | None:
        return self._running

    @property
    def stopped(self) -> bool:
        """The worker has ended (after `stop`)."""
        return self._stopping and not self._thread.is_alive()

    def has_room(self) -> bool:
        with self._cond:
            return len(self._queue) < self.capacity

    @property
    def queue_length(self) -> int:
        with self._cond:
            return len(self._queue)

    # -- the worker -----------------------------------------------------------------------
    def _next(self) -> Job | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            job = self._queue.popleft()
            self._running = job
            self._cancel_running.clear()
            return job

    def _work(self) -> None:
        while (job := self._next()) is not None:
            job.state = RUNNING
            self.journal.update(job)
            last = [-self.progress_step]

            def progress(percent: float, job: Job = job) -> None:
                if percent - last[0] >= self.progress_step or percent >= 100.0:
                    last[0] = percent
                    self.events.progress(job, round(percent, 1))

            try:
                job.outputs = self.runner(job.spec, progress, self._cancel_running.is_set)
                job.state = DONE
            except Cancelled:
                job.state = CANCELLED  # by the user, or by a clean shutdown
            except StageError as e:
                job.state, job.error_code, job.error_message = FAILED, _code(e), str(e)
            except MemoryError as e:
                job.state, job.error_code, job.error_message = FAILED, "out_of_memory", f"out of memory: {e}"
            except Exception as e:  # an engine bug must fail only this job, never the daemon
                oom = type(e).__name__ == "OutOfMemoryError"
                log.exception("job %s failed", job.id)
                job.state = FAILED
                job.error_code = "out_of_memory" if oom else "engine_error"
                job.error_message = ("the GPU ran out of memory; try fewer takes or bars" if oom
                                     else f"{type(e).__name__}: {e}")
            self.journal.update(job)
            with self._cond:
                self._running = None
            if job.state == DONE:
                self.events.done(job)
            elif job.state == FAILED:
                self.events.failed(job)
            elif job.state == CANCELLED:
                self.events.cancelled(job)


class JobService:
    """Requests in, jobs out: resolves a request's tempo and path, then queues and journals it.

    The one interface the front ends use (OSC handlers, inbox watcher); it owns the journal and
    the queue, and reads the tempo from the shared `TempoSource`.
    """

    def __init__(self, journal: Journal, runner: Runner, events: Events, tempo: TempoSource, home: Path,
                 roots: Sequence[Path] = (), capacity: int = 16):
        """`roots`: folders (besides `home`) context files may be read from."""
        self.journal = journal
        self.tempo = tempo
        self.home = Path(home)
        self.roots = [p.resolve() for p in [self.home, *roots]]
        self.queue = JobQueue(journal, runner, events, capacity)

    def start(self) -> list[Job]:
        """Start the worker, first re-queueing what the journal left unfinished."""
        return self.queue.start(resume=True)

    def stop(self) -> None:
        """Cancel the running job; queued ones stay in the journal for the next start."""
        self.queue.stop()

    def close(self) -> None:
        """After `stop` and after every front end has stopped submitting."""
        self.journal.close()

    def submit(self, req: GenerateRequest, source: str, name: str | None = None) -> Job:
        """Queue the job `req` asks for; ProtocolError when it cannot be (no tempo, path, full, ...)."""
        path = resolve_context_path(req.context_path, self.home, self.roots)
        job = Job(job_from_request(req, source, path, self.tempo.current(), name))
        self.queue.submit(job)
        return job

    def cancel(self, job_id: str) -> None:
        self.queue.cancel(job_id)

    def current_tempo(self) -> Tempo | None:
        return self.tempo.current()

    def has_room(self) -> bool:
        return self.queue.has_room()

    @property
    def running(self) -> Job | None:
        return self.queue.running

    @property
    def queue_length(self) -> int:
        return self.queue.queue_length

    def job_ids(self, source: str, limit: int = 100_000) -> set[str]:
        """Ids of the journal's latest `limit` jobs from `source` (the inbox's once-only memory)."""
        return {job.id for job in self.journal.history(limit) if job.spec.source == source}


def _code(e: StageError) -> str:
    return e.code if e.code in ERROR_CODES else "engine_error"
