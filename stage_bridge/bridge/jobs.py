"""Jobs: a bounded queue served by one model worker, recorded in an SQLite journal, and the
job service every front end (OSC, inbox) submits through.

Why one worker: a single GPU serves one generation at a time best, and a musician wants the
job they asked for first to finish first. Why a journal: the daemon may be killed at any
moment (laptop lid, kill -9, power); on restart, queued and interrupted jobs run again and
`stage-bridge jobs` shows what happened. Outputs are published atomically by the runner, so
an interrupted job never leaves a partial file to clean up (only hidden `.part` temp files,
which the server removes at start). Why a service: the front ends need only "submit this
request", "cancel", "is there a tempo / room"; they never reach into the queue or journal.

Why the worker never dies: it is the only thread that runs jobs, so an exception escaping it
would leave `/stage/status` busy forever and every later job accepted and never run. Every
failure (a full disk while the journal is written included) ends that job with an error reply.
Why the journal checks its file: a musician may delete the home folder while the daemon runs;
SQLite would go on writing into the deleted file and the history (and the inbox's memory of
what it already ran) would be lost at the next start. So before each write the journal checks
that its file is still the one it opened and otherwise starts a new one there, with the jobs
still queued or running; the folders are made again too.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

from ..atomic import disk_full, is_disk_full
from ..errors import Cancelled, DiskFull, StageError
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
    """The job history in an SQLite file (WAL mode: a crash mid-write loses at most that write).

    A file that is not a readable journal (corrupt, or not SQLite at all) is moved aside to
    `jobs.sqlite3.corrupt-DATE` and a new one started, with a warning: the daemon must start.
    Writes raise `DiskFull` when the disk is full."""

    _CORRUPT = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db, self._identity = self._open()

    def _open(self) -> tuple[sqlite3.Connection, tuple[int, int]]:
        try:
            db = self._connect()
        except sqlite3.DatabaseError as e:
            if getattr(e, "sqlite_errorcode", None) not in self._CORRUPT:
                if is_disk_full(e):
                    raise disk_full(self.path.parent, e) from e
                raise
            aside = self._move_aside()
            log.warning("the job journal %s could not be read (%s); moved it aside to %s and started a new one "
                        "(the job history before now is in that file)", self.path, e, aside.name)
            db = self._connect()
        st = os.stat(self.path)
        return db, (st.st_dev, st.st_ino)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("""CREATE TABLE IF NOT EXISTS jobs (
                seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, state TEXT NOT NULL, params TEXT NOT NULL,
                created REAL NOT NULL, updated REAL NOT NULL, outputs TEXT NOT NULL DEFAULT '[]',
                error_code TEXT, error_message TEXT)""")
            db.execute("CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state)")
            check = db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                error = sqlite3.DatabaseError(f"quick_check: {check[0] if check else 'no answer'}")
                error.sqlite_errorcode = 11  # type: ignore[attr-defined]
                raise error
        except BaseException:
            db.close()
            raise
        return db

    def _move_aside(self) -> Path:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):  # SQLite's companions belong to the old file
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                os.replace(src, Path(f"{aside}{suffix}"))
        return aside

    def ensure(self) -> bool:
        """Start a new journal file if ours was deleted or replaced; True when it did (it is then empty)."""
        with self._lock:
            try:
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self._identity:
                    return False
            except OSError:
                pass
            log.warning("the job journal %s was deleted or replaced while the daemon ran; starting a new one "
                        "(the jobs before now are no longer listed)", self.path)
            self._db.close()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db, self._identity = self._open()
            return True

    def add(self, job: Job) -> None:
        self._write("INSERT INTO jobs (id, state, params, created, updated, outputs) VALUES (?,?,?,?,?,?)",
                    (job.id, job.state, json.dumps(job.spec.params()), job.created, job.updated,
                     json.dumps(job.outputs)))

    def update(self, job: Job) -> None:
        """Record the job's state (its latest row: ids may be reused after a job ended; a job the
        journal lacks, because it was started anew, is added)."""
        job.updated = time.time()
        changed = self._write("""UPDATE jobs SET state=?, updated=?, outputs=?, error_code=?, error_message=?
                                 WHERE seq=(SELECT MAX(seq) FROM jobs WHERE id=?)""",
                              (job.state, job.updated, json.dumps(job.outputs), job.error_code, job.error_message,
                               job.id))
        if not changed:
            self._write("""INSERT INTO jobs (id, state, params, created, updated, outputs, error_code, error_message)
                           VALUES (?,?,?,?,?,?,?,?)""",
                        (job.id, job.state, json.dumps(job.spec.params()), job.created, job.updated,
                         json.dumps(job.outputs), job.error_code, job.error_message))

    def _write(self, sql: str, args: tuple) -> int:
        with self._lock:
            try:
                return self._db.execute(sql, args).rowcount
            except sqlite3.Error as e:
                if is_disk_full(e):
                    raise disk_full(self.path.parent, e) from e
                raise

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

    def latest(self, job_id: str) -> Job | None:
        """The latest job called `job_id` (ids may be reused after a job ended), or None."""
        rows = self._rows("WHERE id=?", (job_id,), "seq DESC LIMIT 1")
        return rows[0] if rows else None

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Events(Protocol):
    def accepted(self, job: Job, position: int) -> None: ...
    def progress(self, job: Job, percent: float) -> None: ...
    def done(self, job: Job) -> None: ...
    def failed(self, job: Job) -> None: ...
    def cancelled(self, job: Job) -> None: ...


class FanOut:
    """Events for several front ends at once (the OSC replies, the control room's stream): one
    that fails is logged and never keeps the others, or the worker, from going on."""

    def __init__(self, *targets: Events):
        self.targets = targets

    def _each(self, name: str, *args: object) -> None:
        for target in self.targets:
            try:
                getattr(target, name)(*args)
            except Exception:
                log.exception("the %s event of %s could not be delivered", name, type(target).__name__)

    def accepted(self, job: Job, position: int) -> None:
        self._each("accepted", job, position)

    def progress(self, job: Job, percent: float) -> None:
        self._each("progress", job, percent)

    def done(self, job: Job) -> None:
        self._each("done", job)

    def failed(self, job: Job) -> None:
        self._each("failed", job)

    def cancelled(self, job: Job) -> None:
        self._each("cancelled", job)


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
        self._unrecorded: list[Job] = []  # ended jobs the journal could not be told about yet
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
            try:
                self._record(job, new=True)
            except DiskFull as e:
                raise ProtocolError("disk_full", str(e)) from None
            except (sqlite3.Error, OSError) as e:
                log.error("job %s not accepted: the journal %s cannot be written (%s)", job.id, self.journal.path, e)
                raise ProtocolError("engine_error", f"the job journal cannot be written ({e}); see the daemon's "
                                                    "log.") from None
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
                    self._record_or_log(job)
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

    def queued(self) -> list[Job]:
        """The waiting jobs, next first (a snapshot)."""
        with self._cond:
            return list(self._queue)

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

    def _record(self, job: Job, new: bool = False) -> None:
        """Write `job` to the journal; if the journal had to be started anew, the jobs still
        queued or running go into it first (so a restart resumes them and no inbox file runs twice),
        and the ends a full disk kept out of it are written now (so a restart does not run them again)."""
        with self._cond:
            if self.journal.ensure():
                for other in ([self._running] if self._running else []) + list(self._queue):
                    if other is not job:
                        self.journal.update(other)
            while self._unrecorded:
                self.journal.update(self._unrecorded[0])
                self._unrecorded.pop(0)
            (self.journal.add if new else self.journal.update)(job)

    def _record_or_log(self, job: Job) -> bool:
        try:
            self._record(job)
            return True
        except Exception as e:  # a full disk must not stop the worker; the reply still goes out
            log.error("job %s (%s): could not record it in the journal %s: %s", job.id, job.state, self.journal.path, e)
            with self._cond:
                if job.state not in ACTIVE and all(j is not job for j in self._unrecorded):
                    self._unrecorded.append(job)  # written with the journal's next successful write
            return False

    def _work(self) -> None:
        while (job := self._next()) is not None:
            try:
                self._run(job)
            except Exception:  # never reached by design; if it is, the worker still lives on
                log.exception("job %s: unexpected failure in the worker", job.id)
            finally:
                with self._cond:
                    self._running = None

    def _run(self, job: Job) -> None:
        job.state = RUNNING
        if self._record_or_log(job):
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
            except Exception as e:  # any failure must fail only this job, never the daemon
                job.state = FAILED
                job.error_code, job.error_message = failure(e)
                if job.error_code == "engine_error":
                    log.exception("job %s failed", job.id)
        else:  # not even its start could be recorded (disk full): run nothing the journal would run again
            job.state, job.error_code = FAILED, "disk_full"
            job.error_message = ("the disk is full: the job could not be recorded, so it was not run. "
                                 "Free some space, then send it again.")
        self._record_or_log(job)
        with self._cond:
            self._running = None
        try:
            if job.state == DONE:
                self.events.done(job)
            elif job.state == FAILED:
                self.events.failed(job)
            elif job.state == CANCELLED:
                self.events.cancelled(job)
        except Exception:
            log.exception("job %s: could not send its %s reply", job.id, job.state)


def readable_roots(home: Path, extra: Sequence[Path] = ()) -> list[Path]:
    """The folders (resolved) whose files the daemon may read: its home, then `extra`."""
    return [Path(p).resolve() for p in [home, *extra]]


def failure(e: Exception) -> tuple[str, str]:
    """The (code, message) a failed job reports for exception `e`."""
    if isinstance(e, StageError):
        return _code(e), str(e)
    if is_disk_full(e):
        return "disk_full", f"the disk is full ({getattr(e, 'strerror', None) or e}); free some space, then try again"
    if isinstance(e, MemoryError):
        return "out_of_memory", f"out of memory: {e}"
    if type(e).__name__ == "OutOfMemoryError":
        return "out_of_memory", "the GPU ran out of memory; try fewer takes or bars"
    return "engine_error", f"{type(e).__name__}: {e}"


class JobService:
    """Requests in, jobs out: resolves a request's tempo and path, then queues and journals it.

    The one interface the front ends use (OSC handlers, inbox watcher); it owns the journal and
    the queue, and reads the tempo from the shared `TempoSource`.
    """

    def __init__(self, journal: Journal, runner: Runner, events: Events, tempo: TempoSource, home: Path,
                 roots: Sequence[Path] = (), capacity: int = 16, folders: Sequence[Path] = (),
                 admit: Callable[[StemJob], None] | None = None):
        """`roots`: folders (besides `home`) context files may be read from; `folders`: those of
        `home` the daemon needs (made again if deleted while it runs, see `ensure_home`);
        `admit`: refuses (ProtocolError) a job that could never run, before it is queued, so the
        musician hears at once instead of after the queue (runner.StemRunner.admit)."""
        self.journal = journal
        self.tempo = tempo
        self.home = Path(home)
        self.roots = readable_roots(self.home, roots)
        self.folders = [self.home, *map(Path, folders)]
        self._runner = runner
        self._admit = admit
        self.queue = JobQueue(journal, self._run, events, capacity)

    def ensure_home(self) -> None:
        """Make the home's folders again if they were deleted (logged); the journal file is
        checked at its next write (`Journal.ensure`)."""
        for folder in self.folders:
            if not folder.is_dir():
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                    log.warning("%s was missing (deleted while the daemon ran?); made it again", folder)
                except OSError as e:
                    log.error("cannot make %s again: %s", folder, e)

    def _run(self, spec: StemJob, progress: Callable[[float], None], should_cancel: Callable[[], bool]) -> list[str]:
        self.ensure_home()
        return self._runner(spec, progress, should_cancel)

    def start(self) -> list[Job]:
        """Start the worker, first re-queueing what the journal left unfinished."""
        return self.queue.start(resume=True)

    def stop(self) -> None:
        """Cancel the running job; queued ones stay in the journal for the next start."""
        self.queue.stop()

    def close(self) -> None:
        """After `stop` and after every front end has stopped submitting."""
        self.journal.close()

    def submit(self, req: GenerateRequest, source: str, name: str | None = None,
               capture: dict | None = None) -> Job:
        """Queue the job `req` asks for; ProtocolError when it cannot be (no tempo, path, full, ...).
        `capture`: where a capture job's context was cut from the input (StemJob.capture)."""
        self.ensure_home()
        path = resolve_context_path(req.context_path, self.home, self.roots)
        job = Job(dataclasses.replace(job_from_request(req, source, path, self.tempo.current(), name), capture=capture))
        if self._admit is not None:
            self._admit(job.spec)
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

    def queued(self) -> list[Job]:
        """The waiting jobs, next first (the control room's queue)."""
        return self.queue.queued()

    def history(self, limit: int = 50) -> list[Job]:
        """The journal's latest `limit` jobs, oldest first (read-only; the control room's take history)."""
        return self.journal.history(limit)

    def find(self, job_id: str) -> Job | None:
        """The journal's latest job called `job_id` (read-only), or None."""
        return self.journal.latest(job_id)

    def job_ids(self, source: str, limit: int = 100_000) -> set[str]:
        """Ids of the journal's latest `limit` jobs from `source` (the inbox's once-only memory)."""
        return {job.id for job in self.journal.history(limit) if job.spec.source == source}


def _code(e: StageError) -> str:
    return e.code if e.code in ERROR_CODES else "engine_error"
