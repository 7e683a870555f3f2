"""What a real computer does to the daemon's files: full disks, FIFOs and symlinks swapped in,
the home folder deleted, a corrupt journal, files that say when they are complete (issue 14).

Real files, real processes, real signals: the full disk is a small tmpfs mounted for the test
(needs root, as in CI; skipped with the reason otherwise), the daemon a `stage-bridge serve`
subprocess (tiny-random, CPU) answering liblo's oscsend/oscdump. Every wait is on an event
with a generous timeout, never on elapsed time.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from daemon_util import OscMsg, Rig, running_daemon, unique_id
from stage_bridge.audio import load_audio
from stage_bridge.bridge import protocol as P
from stage_bridge.bridge.jobs import Job, JobService, Journal
from stage_bridge.bridge.tempo import TempoSource
from stage_bridge.bridge.watcher import DISK_FULL_RETRY_S, InboxWatcher
from stage_bridge.errors import ForbiddenPath, NotAudio

POSIX = pytest.mark.skipif(sys.platform == "win32", reason="FIFOs, symlinks and tmpfs are POSIX")
pytestmark = [POSIX]
slow = pytest.mark.slow  # a whole daemon started
JOB_END = 180.0  # a tiny-random job on a loaded 2-core machine, generously


# -- plumbing --------------------------------------------------------------------------------------

@pytest.fixture
def tmpfs(tmp_path):
    """`tmpfs(size)`: a fresh folder on its own small filesystem (a disk that can fill up)."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            pytest.skip("a tmpfs (a disk that can fill up) needs root to mount; CI runs as root")
        folder = tmp_path / f"fs{len(mounted)}"
        folder.mkdir()
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path, leave: int = 0) -> list[Path]:
    """Fill `folder`'s filesystem until only about `leave` bytes are free; returns the filler files."""
    fillers = [folder / ".filler", folder / ".filler-tail"]
    target = max(0, shutil.disk_usage(folder).free - leave)
    chunk = b"\0" * (1 << 20)
    fd = os.open(fillers[0], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while target > 0:
            target -= os.write(fd, chunk[:min(target, len(chunk))])
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)
    if leave == 0:  # the last partial pages too
        fd = os.open(fillers[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 512)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
        finally:
            os.close(fd)
    return fillers


def unfill(fillers: list[Path]) -> None:
    for f in fillers:
        f.unlink(missing_ok=True)


def write_wav(path: Path, seconds: float = 2.0, sr: int = 32000) -> Path:
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr, subtype="PCM_16")
    return path


def generate(rig: Rig, job_id: str, bars: int, context: str = "", takes: int = 1) -> None:
    args: list[Any] = [job_id, context, "drums", bars, "bpm", 120.0, "takes", takes, "seed", 7]
    types = "sssisfsisi"
    if not context:
        args += ["context_mode", "click"]
        types += "ss"
    rig.send(P.GENERATE, types, *args)


def is_job(address: str, job_id: str) -> Any:
    return lambda m: m.address == address and m.args[:1] == (job_id,)


def progress_at_least(job_id: str, percent: float) -> Any:
    return lambda m: m.address == P.PROGRESS and m.args[:1] == (job_id,) and m.args[1] >= percent


def status(rig: Rig) -> OscMsg:
    mark = rig.dump.mark()
    rig.send(P.STATUS)
    return rig.dump.wait_for(lambda m: m.address == P.STATUS, 30, since=mark)


def full_log(rig: Rig) -> str:
    return "".join(rig.daemon.log)


def journal_states(home: Path) -> dict[str, str]:
    db = sqlite3.connect(str(home / "jobs.sqlite3"), timeout=10)
    try:
        return dict(db.execute("SELECT id, state FROM jobs ORDER BY seq").fetchall())
    finally:
        db.close()


def wait_until(cond: Any, timeout: float, what: str, rig: Rig) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.05)):
        if cond():
            return
        done.wait(0.05)
    raise AssertionError(f"waited {timeout} s for {what}:\n{full_log(rig)}")


def takes_in(outbox: Path) -> list[str]:
    return sorted(p.name for p in outbox.iterdir()) if outbox.is_dir() else []


# -- items 1 and 6: a full disk -----------------------------------------------------------------------

@slow
def test_disk_full_mid_job_ends_it_with_disk_full_and_the_worker_lives_on(tmpfs):
    """The disk fills while a job runs: that job (whose take and journal row no longer fit) ends
    with `disk_full`, the daemon goes back to idle, a job sent while the disk is full is refused
    with `disk_full`, and once there is space again the next job runs; the journal then says
    what became of the job the full disk kept out of it."""
    home = tmpfs("48m")
    with running_daemon(home) as rig:
        long, mark = unique_id("long"), rig.dump.mark()
        generate(rig, long, 16, takes=2)
        rig.dump.wait_for(progress_at_least(long, 4), JOB_END, since=mark)
        fillers = fill(home)
        end = rig.dump.wait_job_end(long, JOB_END, since=mark)
        assert (end.address, end.args[1]) == (P.ERROR, "disk_full"), end
        assert "free some space" in end.args[2].lower(), end
        assert status(rig).args[:2] == ("idle", 0)

        refused = unique_id("while-full")  # refused at the door (journal) or at publishing: either way said so
        generate(rig, refused, 1)
        end = rig.dump.wait_job_end(refused, JOB_END, since=mark)
        assert (end.address, end.args[1]) == (P.ERROR, "disk_full"), end

        unfill(fillers)
        after = unique_id("after")
        generate(rig, after, 1)
        end = rig.dump.wait_job_end(after, JOB_END, since=mark)
        assert end.address == P.DONE, end
        assert all(Path(p).is_file() for p in end.args[1:])
        states = journal_states(home)
        assert states[long] == "failed" and states[after] == "done", states
        assert "Traceback" not in full_log(rig), full_log(rig)


@slow
def test_a_take_that_does_not_fit_is_disk_full_not_an_engine_error(tmpfs):
    """A nearly full disk: the journal still fits, the take does not. The job ends with
    `disk_full` (soundfile's short-write AssertionError must not surface as `engine_error`) and
    leaves nothing behind: no take, no sidecar, no temp file."""
    home = tmpfs("32m")
    with running_daemon(home) as rig:
        fillers = fill(home, leave=256 << 10)  # 8 bars of FLOAT audio need ~3 MB
        job, mark = unique_id("big"), rig.dump.mark()
        generate(rig, job, 8)
        end = rig.dump.wait_job_end(job, JOB_END, since=mark)
        assert (end.address, end.args[1]) == (P.ERROR, "disk_full"), end
        assert "AssertionError" not in end.args[2]
        assert takes_in(home / "outbox") == []
        unfill(fillers)
        job2 = unique_id("fits")
        generate(rig, job2, 1)
        assert rig.dump.wait_job_end(job2, JOB_END, since=mark).address == P.DONE


def _service(home: Path) -> JobService:
    def runner(spec, progress, cancel):  # noqa: ANN001 (jobs.Runner)
        return []

    class Quiet:
        def accepted(self, job: Job, position: int) -> None: ...
        def progress(self, job: Job, percent: float) -> None: ...
        def done(self, job: Job) -> None: ...
        def failed(self, job: Job) -> None: ...
        def cancelled(self, job: Job) -> None: ...

    for d in ("inbox", "outbox"):
        (home / d).mkdir(parents=True, exist_ok=True)
    return JobService(Journal(home / "jobs.sqlite3"), runner, Quiet(), TempoSource(), home,
                      folders=(home / "inbox", home / "outbox"))


def test_inbox_files_refused_while_the_disk_was_full_are_retried(tmpfs, caplog):
    """The inbox file arrives on a full disk: refused (`disk_full`, logged once), then started
    by itself once there is space again, without the file changing."""
    caplog.set_level(logging.DEBUG, logger="stage_bridge.watcher")
    home = tmpfs("8m")
    service = _service(home)
    try:
        write_wav(home / "inbox" / "song.drums.wav", seconds=2.0)
        (home / "inbox" / "song.json").write_text(json.dumps({"bpm": 120}))
        watcher = InboxWatcher(service, home / "inbox", ("drums",), settle=0.0)
        fillers = fill(home)
        now = 1e10  # polls at chosen instants: the mtimes are long past
        assert watcher.poll_once(now) == []  # first seen
        assert watcher.poll_once(now + 0.1) == []  # refused: the journal cannot take the job
        assert watcher.poll_once(now + 0.2) == []  # not retried yet
        assert [r.levelno for r in caplog.records if "not started (disk_full)" in r.getMessage()] == [logging.WARNING]
        unfill(fillers)
        jobs = watcher.poll_once(now + 0.1 + DISK_FULL_RETRY_S)
        assert [j.spec.name for j in jobs] == ["song"]
        assert [j.id for j in service.journal.history()] == [jobs[0].id]
    finally:
        service.stop()
        service.close()


# -- items 2 and 8: a context swapped after acceptance -------------------------------------------

def _swap_after_acceptance(rig: Rig, swap: Any) -> tuple[str, OscMsg]:
    """A long job holds the worker; a context job is accepted, its file swapped (`swap(path)`),
    then the long job cancelled so the context job runs. Returns (its id, its last word)."""
    ctx = write_wav(rig.home / "bounces" / "ctx.wav")
    hold, job, mark = unique_id("hold"), unique_id("ctx"), rig.dump.mark()
    generate(rig, hold, 32)
    rig.dump.wait_for(progress_at_least(hold, 1), JOB_END, since=mark)
    generate(rig, job, 1, context=str(ctx))
    rig.dump.wait_for(is_job(P.ACCEPTED, job), 30, since=mark)
    swap(ctx)
    rig.send(P.CANCEL, "s", hold)
    assert rig.dump.wait_job_end(hold, 60, since=mark).address == P.CANCELLED
    return job, rig.dump.wait_job_end(job, JOB_END, since=mark)


@slow
def test_a_context_swapped_for_a_fifo_fails_the_job_and_never_blocks(tmp_path):
    def to_fifo(ctx: Path) -> None:
        ctx.unlink()
        os.mkfifo(ctx)

    with running_daemon(tmp_path / "home") as rig:
        job, end = _swap_after_acceptance(rig, to_fifo)
        assert (end.address, end.args[1]) == (P.ERROR, "not_audio"), end
        assert "not a regular file" in end.args[2]
        mark = rig.dump.mark()
        rig.send(P.CANCEL, "s", job)  # the worker is free: cancel answers (the job has ended)
        reply = rig.dump.wait_for(lambda m: m.address == P.ERROR and m.args[:1] == (job,), 30, since=mark)
        assert reply.args[1] == "unknown_job"
        assert status(rig).args[0] == "idle"


@slow
def test_a_context_swapped_for_a_symlink_out_of_the_allowed_folders_is_refused(tmp_path):
    secret = write_wav(tmp_path / "outside.wav", seconds=3.0)

    def to_symlink(ctx: Path) -> None:
        ctx.unlink()
        ctx.symlink_to(secret)

    with running_daemon(tmp_path / "home") as rig:
        _, end = _swap_after_acceptance(rig, to_symlink)
        assert (end.address, end.args[1]) == (P.ERROR, "forbidden_path"), end
        assert takes_in(rig.outbox) == []


def test_load_audio_checks_the_file_it_opened_not_the_name(tmp_path):
    inside = tmp_path / "home"
    inside.mkdir()
    secret = write_wav(tmp_path / "outside.wav")
    ctx = write_wav(inside / "ctx.wav")
    roots = [inside.resolve()]
    assert load_audio(ctx, inside=roots).num_samples == 64000
    ctx.unlink()
    ctx.symlink_to(secret)
    with pytest.raises(ForbiddenPath, match="outside"):
        load_audio(ctx, inside=roots)
    ctx.unlink()
    os.mkfifo(ctx)
    result: list[BaseException] = []
    t = threading.Thread(target=lambda: result.append(pytest.raises(NotAudio, load_audio, ctx).value))
    t.start()
    t.join(30)  # a blocking open would never return (no writer ever comes)
    assert not t.is_alive() and "not a regular file" in str(result[0])


# -- item 3: FIFOs in the inbox and the outbox ------------------------------------------------------

@slow
def test_fifos_named_like_sidecars_neither_stop_startup_nor_stall_the_inbox(tmp_path):
    home = tmp_path / "home"
    for d in ("inbox", "outbox"):
        (home / d).mkdir(parents=True)
    os.mkfifo(home / "outbox" / "x.json")  # startup's orphan-sidecar cleanup reads outbox/*.json
    os.mkfifo(home / "inbox" / "x.json")  # the sidecar of x.drums.wav
    write_wav(home / "inbox" / "x.drums.wav")
    os.mkfifo(home / "inbox" / "y.drums.wav")
    with running_daemon(home, watch=True) as rig:
        mark = rig.dump.mark()
        write_wav(home / "inbox" / "z.drums.wav", seconds=2.0)
        (home / "inbox" / "z.json").write_text(json.dumps({"bpm": 120}))
        done = rig.dump.wait_for(lambda m: m.address == P.DONE and str(m.args[0]).startswith("inbox-z-"), JOB_END,
                                 since=mark)
        assert Path(done.args[1]).is_file()
        log = full_log(rig)
        assert "x.drums.wav: cannot read its sidecar x.json" in log and "not a regular file" in log, log
        assert "Traceback" not in log
    assert (home / "outbox" / "x.json").exists()  # not ours: left alone


# -- item 7: the home deleted while the daemon runs -----------------------------------------------

@slow
def test_home_deleted_while_running_is_made_again_and_no_inbox_file_runs_twice(tmp_path):
    home = tmp_path / "home"
    with running_daemon(home, watch=True) as rig:
        mark = rig.dump.mark()
        first = unique_id("first")
        generate(rig, first, 1)
        assert rig.dump.wait_job_end(first, JOB_END, since=mark).address == P.DONE
        shutil.rmtree(home)
        wait_until(lambda: (home / "inbox").is_dir(), 60, "the watcher to find its inbox gone and the service "
                                                           "to make the folders again", rig)
        write_wav(home / "inbox" / "song.drums.wav")
        (home / "inbox" / "song.json").write_text(json.dumps({"bpm": 120}))
        done = rig.dump.wait_for(lambda m: m.address == P.DONE and str(m.args[0]).startswith("inbox-song-"),
                                 JOB_END, since=mark)
        song = done.args[0]
        assert "was deleted or replaced while the daemon ran" in full_log(rig)
        assert journal_states(home) == {song: "done"}
    with running_daemon(home, watch=True) as rig:
        mark = rig.dump.mark()
        write_wav(home / "inbox" / "later.drums.wav")
        (home / "inbox" / "later.json").write_text(json.dumps({"bpm": 120}))
        rig.dump.wait_for(lambda m: m.address == P.DONE and str(m.args[0]).startswith("inbox-later-"), JOB_END,
                          since=mark)
        assert not [m for m in rig.dump.snapshot(mark) if m.args[:1] == (song,)], "the inbox file ran twice"


# -- item 10 (its parts in these files): a corrupt journal --------------------------------------------

@slow
def test_a_corrupt_journal_is_moved_aside_and_a_new_one_started(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    garbage = b"this is not an SQLite database\n" * 200
    (home / "jobs.sqlite3").write_bytes(garbage)
    with running_daemon(home) as rig:
        job, mark = unique_id("fresh"), rig.dump.mark()
        generate(rig, job, 1)
        assert rig.dump.wait_job_end(job, JOB_END, since=mark).address == P.DONE
        log = full_log(rig)
        assert "could not be read" in log and "moved it aside" in log and "Traceback" not in log, log
    aside = list(home.glob("jobs.sqlite3.corrupt-*"))
    assert [p.read_bytes() for p in aside if not p.name.endswith(("-wal", "-shm"))] == [garbage]
    assert journal_states(home) == {job: "done"}


# -- item 11: NAME.ready ----------------------------------------------------------------------------

def test_a_ready_marker_starts_a_file_without_waiting_for_the_stable_size_window(tmp_path):
    home = tmp_path / "home"
    service = _service(home)
    service.tempo.set(P.parse_tempo([120.0]))
    try:
        watcher = InboxWatcher(service, home / "inbox", ("drums",), settle=3600.0)  # the window never passes
        write_wav(home / "inbox" / "a.drums.wav")
        write_wav(home / "inbox" / "b.drums.wav")
        now = time.time()  # the files are seconds old: the hour-long window has not passed
        assert watcher.poll_once(now) == [] and watcher.poll_once(now + 1) == []
        marker = home / "inbox" / "a.ready"
        marker.touch()
        jobs = watcher.poll_once(now + 2)
        assert [j.spec.name for j in jobs] == ["a"]
        # a marker older than the file (left from an earlier export) does not count
        old = home / "inbox" / "b.ready"
        old.touch()
        past = (home / "inbox" / "b.drums.wav").stat().st_mtime_ns - 10**9
        os.utime(old, ns=(past, past))
        assert watcher.poll_once(now + 3) == []
    finally:
        service.stop()
        service.close()


def test_file_names_with_newlines_stay_on_one_log_line(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="stage_bridge.watcher")
    home = tmp_path / "home"
    service = _service(home)
    try:
        (home / "inbox" / "evil\nERROR forged line.drums.wav").write_bytes(b"not audio" * 100)
        (home / "inbox" / "evil\nERROR forged line.json").write_text(json.dumps({"bpm": 120}))
        watcher = InboxWatcher(service, home / "inbox", ("drums",), settle=0.0)
        assert watcher.poll_once(1e10) == [] and watcher.poll_once(1e10 + 1) == []
        lines = [r.getMessage() for r in caplog.records if "evil" in r.getMessage()]
        assert lines and all("\n" not in line and "evil\\nERROR forged line" in line for line in lines), lines
    finally:
        service.stop()
        service.close()
