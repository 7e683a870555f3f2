"""The inbox watcher: which files start jobs, when, with which settings, and only once.

The watcher talks to a real JobService (journal, queue, tempo source) without any OSC socket.
Most tests never start its worker, so submitted jobs stay queued (in memory and in the journal)
and no model runs. One test runs a real job with the tiny-random model.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stage_bridge.bridge import protocol as P
from stage_bridge.bridge.jobs import Job, JobService, Journal
from stage_bridge.bridge.runner import RenderSettings, StemRunner
from stage_bridge.bridge.tempo import TempoSource
from stage_bridge.bridge.watcher import InboxWatcher, default_bars, inbox_job_id

SR = 44100
LATER = 10.0  # seconds added to `now` so the settle time has passed
TIMEOUT = 120.0


class Ends:
    """jobs.Events that remembers how each job ended, for waiting on it."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.ended: dict[str, Job] = {}

    def accepted(self, job, position): pass

    def progress(self, job, percent): pass

    def _end(self, job: Job) -> None:
        with self.cond:
            self.ended[job.id] = job
            self.cond.notify_all()

    done = failed = cancelled = _end

    def wait(self, job_id: str, timeout: float = TIMEOUT) -> Job:
        with self.cond:
            assert self.cond.wait_for(lambda: job_id in self.ended, timeout), f"job {job_id} never ended"
            return self.ended[job_id]


@dataclass
class Home:
    """A daemon's home folder and its job service, as the watcher sees them."""

    path: Path
    service: JobService
    ends: Ends
    instruments: tuple[str, ...] = ("drums", "bass")
    watchers: list[InboxWatcher] = field(default_factory=list)

    @property
    def inbox(self) -> Path:
        return self.path / "inbox"

    @property
    def outbox(self) -> Path:
        return self.path / "outbox"

    def tempo(self, *args) -> None:
        """As /stage/tempo would set it."""
        self.service.tempo.set(P.parse_tempo(args))

    def watcher(self, **kw) -> InboxWatcher:
        return InboxWatcher(self.service, self.inbox, self.instruments, **kw)

    def close(self) -> None:
        self.service.stop()
        self.service.close()


@pytest.fixture
def make_home(tmp_path):
    homes: list[Home] = []

    def make(home: Path | None = None, models=None, queue_size: int = 16) -> Home:
        path = home or tmp_path / "home"
        for sub in ("inbox", "outbox"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        models = models if models is not None else {"drums": None, "bass": None}  # never run unless started
        ends = Ends()
        runner = StemRunner(models, path / "outbox", RenderSettings(sample_rate=48000))
        service = JobService(Journal(path / "jobs.sqlite3"), runner, ends, TempoSource(), path, capacity=queue_size)
        h = Home(path, service, ends, tuple(models))
        homes.append(h)
        return h

    yield make
    for h in homes:
        h.close()


def _wav(path: Path, seconds: float = 4.0, sr: int = SR, **kw) -> Path:
    rng = np.random.default_rng(len(path.name))
    sf.write(str(path), (rng.standard_normal((int(round(seconds * sr)), 2)) * 0.1).astype(np.float32), sr, **kw)
    return path


def _settle(w: InboxWatcher, polls: int = 2) -> list:
    jobs = []
    for _ in range(polls):
        jobs += w.poll_once(now=time.time() + LATER)
    return jobs


def _snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
            for p in sorted(folder.iterdir())}


def _messages(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "stage_bridge.watcher")


# -- names ---------------------------------------------------------------------------------------

def test_matching_names_and_extensions(make_home):
    b = make_home()
    b.tempo(120.0)
    inbox = b.inbox
    _wav(inbox / "a.drums.wav")
    _wav(inbox / "b.bass.flac")
    _wav(inbox / "c.drums.aif", format="AIFF")
    _wav(inbox / "D.DRUMS.AIFF", format="AIFF")
    _wav(inbox / "e.bass.ogg", format="OGG", subtype="VORBIS")
    _wav(inbox / "my song.v2.bass.wav")
    w = b.watcher()
    jobs = _settle(w)
    got = {(j.spec.name, j.spec.instrument) for j in jobs}
    assert got == {("a", "drums"), ("b", "bass"), ("c", "drums"), ("D", "drums"), ("e", "bass"),
                   ("my song.v2", "bass")}
    for j in jobs:
        assert P.check_job_id(j.id) and j.id.startswith("inbox-")
        assert j.spec.source == "inbox" and j.spec.bpm == 120.0 and j.spec.tempo_source == "osc"
        assert Path(j.spec.context_path).parent == inbox.resolve()
        assert j.spec.bars == 2  # 4 s at 120 bpm 4/4
    assert b.service.queue_length == 6
    assert {j.id for j in b.service.journal.history()} == {j.id for j in jobs}


def test_job_ids_are_sanitised_and_distinct():
    a = inbox_job_id("é è/x" * 30 + ".drums.wav", "é è/x" * 30, 100, 5)
    b = inbox_job_id("..drums.wav", ".", 100, 5)
    c = inbox_job_id("a.drums.wav", "a", 100, 6)
    d = inbox_job_id("a.drums.wav", "a", 101, 5)
    e = inbox_job_id("a.bass.wav", "a", 101, 5)
    for x in (a, b, c, d, e):
        assert P.check_job_id(x) and len(x) <= 64
    assert len({c, d, e}) == 3


def test_ignored_files_are_logged_once_and_never_jobs(make_home, caplog):
    caplog.set_level(logging.DEBUG, logger="stage_bridge.watcher")
    b = make_home()
    b.tempo(120.0)
    inbox = b.inbox
    names = ["song.wav", "song.vocals.wav", "song.drums.mp3", ".hidden.drums.wav", "take.drums.wav.part",
             "take.drums.TMP", "lonely.json", "notes.txt"]
    for n in names:
        _wav(inbox / "x.wav").rename(inbox / n) if n.endswith((".wav", ".part")) else (inbox / n).write_text("{}")
    (inbox / "folder.drums.wav").mkdir()
    before = _snapshot(inbox)
    w = b.watcher()
    assert _settle(w, polls=4) == []
    log_text = _messages(caplog)
    for n in names + ["folder.drums.wav"]:
        assert log_text.count(f"ignored {n}:") == 1, n
    assert "no instrument in the name" in log_text and "not a supported audio file" in log_text
    assert b.service.queue_length == 0 and b.service.journal.history() == []
    assert _snapshot(inbox) == before


# -- completeness ---------------------------------------------------------------------------------

def test_a_growing_file_is_not_picked_until_stable(make_home, tmp_path):
    b = make_home()
    b.tempo(120.0)
    full = _wav(tmp_path / "full.wav").read_bytes()  # the finished export, built elsewhere
    target = b.inbox / "verse.drums.wav"
    w = b.watcher()
    with open(target, "wb") as f:
        for k in range(1, 5):
            f.write(full[(k - 1) * len(full) // 4:k * len(full) // 4])
            f.flush()
            os.utime(target, ns=(time.time_ns() - 10**10,) * 2)  # even an old mtime does not hide growth
            assert w.poll_once(now=time.time() + LATER) == [], k
    jobs = _settle(w)
    assert [j.spec.name for j in jobs] == ["verse"]


def test_empty_and_fresh_files_wait(make_home):
    b = make_home()
    b.tempo(120.0)
    empty = b.inbox / "empty.drums.wav"
    empty.touch()
    _wav(b.inbox / "fresh.drums.wav")
    w = b.watcher(settle=1.0)
    now = time.time()
    assert w.poll_once(now=now) == [] and w.poll_once(now=now + 0.1) == []  # younger than `settle`
    jobs = w.poll_once(now=now + 2.0)
    assert [j.spec.name for j in jobs] == ["fresh"]  # the empty file is still waiting
    assert w.poll_once(now=now + 5.0) == []
    _wav(empty)  # now written: it changes, then settles
    assert w.poll_once(now=time.time() + LATER) == []
    assert [j.spec.name for j in w.poll_once(now=time.time() + LATER)] == ["empty"]


def test_a_future_mtime_waits_settle_seconds_of_observation(make_home):
    b = make_home()
    b.tempo(120.0)
    f = _wav(b.inbox / "skew.drums.wav")
    future = time.time_ns() + 3600 * 10**9
    os.utime(f, ns=(future, future))
    w = b.watcher(settle=1.0)
    now = time.time()
    assert w.poll_once(now=now) == [] and w.poll_once(now=now + 0.5) == []
    assert len(w.poll_once(now=now + 1.5)) == 1


# -- settings -------------------------------------------------------------------------------------

def test_sidecar_values_are_used(make_home):
    b = make_home()
    inbox = b.inbox
    _wav(inbox / "chorus.bass.wav")
    _wav(inbox / "chorus.drums.wav")
    side = {"bpm": 90, "bars": 3, "prompt": "Genres: Funk.", "takes": 2, "beats_per_bar": 3, "beat_unit": 8,
            "offset": 0.5, "context_mode": "mix", "seed": 7}
    (inbox / "chorus.json").write_text(json.dumps(side))
    jobs = _settle(b.watcher())
    assert len(jobs) == 2
    for j in jobs:
        p = j.spec
        assert (p.bpm, p.bars, p.prompt, p.takes, p.beats_per_bar, p.beat_unit, p.offset,
                p.context_mode, p.seed) == (90.0, 3, "Genres: Funk.", 2, 3, 8, 0.5, "mix", 7)
        assert p.tempo_source == "request" and p.name == "chorus"


def test_bars_default_to_the_length_rounded_down(make_home):
    b = make_home()
    b.tempo(120.0, 3, 4)  # 3/4 at 120: a bar is 1.5 s
    inbox = b.inbox
    _wav(inbox / "long.drums.wav", seconds=7.4)  # 4.93 bars -> 4
    _wav(inbox / "short.drums.wav", seconds=0.3)  # less than a bar -> 1
    _wav(inbox / "exact.drums.wav", seconds=6.0 - 0.002)  # 2 ms short of 4 bars: DAW rounding -> 4
    _wav(inbox / "side.drums.wav", seconds=9.0)
    (inbox / "side.json").write_text(json.dumps({"bpm": 60, "beats_per_bar": 4, "offset": 1.0}))  # (9-1)/4 -> 2
    got = {j.spec.name: j.spec.bars for j in _settle(b.watcher())}
    assert got == {"long": 4, "short": 1, "exact": 4, "side": 2}


def test_default_bars_helper():
    assert default_bars(4 * SR, SR, 120, 4, 4) == 2
    assert default_bars(4 * SR - 1, SR, 120, 4, 4) == 2  # one sample short still counts
    assert default_bars(int(3.9 * SR), SR, 120, 4, 4) == 1
    assert default_bars(3 * SR, SR, 120, 6, 8) == 2  # 6/8 at 120: a bar is 1.5 s
    assert default_bars(10 * SR, SR, 120, 4, 4, offset=9.5) == 1
    assert default_bars(3600 * SR, SR, 300, 4, 4) == P.MAX_BARS


# -- refusals -------------------------------------------------------------------------------------

def test_bad_sidecar_is_logged_once_and_retried_when_fixed(make_home, caplog):
    caplog.set_level(logging.INFO, logger="stage_bridge.watcher")
    b = make_home()
    b.tempo(120.0)
    inbox = b.inbox
    _wav(inbox / "a.drums.wav")
    _wav(inbox / "b.drums.wav")
    _wav(inbox / "c.drums.wav")
    _wav(inbox / "d.drums.wav")
    (inbox / "a.json").write_text("{bpm: 120,")
    (inbox / "b.json").write_text(json.dumps({"bpm": 1000}))
    (inbox / "c.json").write_text("[120, 4]")
    (inbox / "d.json").write_text(json.dumps({"bpm": 100, "colour": "red"}))  # unknown key: warned, ignored
    w = b.watcher()
    jobs = _settle(w, polls=5)
    assert [j.spec.name for j in jobs] == ["d"] and jobs[0].spec.bpm == 100.0
    text = _messages(caplog)
    assert text.count("a.drums.wav: sidecar a.json is not valid JSON") == 1
    assert text.count("b.drums.wav: sidecar b.json has a bad value") == 1 and "bpm 1000" in text
    assert text.count("c.drums.wav: sidecar c.json must be a JSON object") == 1
    assert "d.drums.wav: sidecar d.json: ignored unknown key(s) 'colour'" in text
    (inbox / "a.json").write_text(json.dumps({"bpm": 100, "bars": 2}))
    jobs = _settle(w)
    assert [(j.spec.name, j.spec.bpm, j.spec.bars) for j in jobs] == [("a", 100.0, 2)]


def test_no_tempo_is_logged_and_retried_once_a_tempo_arrives(make_home, caplog):
    caplog.set_level(logging.INFO, logger="stage_bridge.watcher")
    b = make_home()
    _wav(b.inbox / "a.drums.wav")
    _wav(b.inbox / "b.drums.wav")
    (b.inbox / "b.json").write_text(json.dumps({"bars": 4}))  # bars given: refused by JobService.submit
    w = b.watcher()
    assert _settle(w, polls=5) == []
    text = _messages(caplog)
    assert text.count("a.drums.wav: not started (no_tempo)") == 1
    assert text.count("b.drums.wav: not started (no_tempo)") == 1
    b.tempo(100.0)
    jobs = w.poll_once(now=time.time() + LATER)
    assert sorted((j.spec.name, j.spec.bars, j.spec.bpm) for j in jobs) == [("a", 1, 100.0),
                                                                                           ("b", 4, 100.0)]


def test_queue_full_is_logged_and_retried_when_there_is_room(make_home, caplog):
    caplog.set_level(logging.INFO, logger="stage_bridge.watcher")
    b = make_home(queue_size=1)
    b.tempo(120.0)
    _wav(b.inbox / "a.drums.wav")
    _wav(b.inbox / "b.drums.wav")
    w = b.watcher()
    jobs = _settle(w, polls=4)
    assert len(jobs) == 1
    assert _messages(caplog).count("not started (queue_full)") == 1
    b.service.cancel(jobs[0].id)
    assert len(w.poll_once(now=time.time() + LATER)) == 1


def test_unreadable_and_forbidden_files_are_logged_not_retried(make_home, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="stage_bridge.watcher")
    b = make_home()
    b.tempo(120.0)
    (b.inbox / "junk.drums.wav").write_bytes(b"this is not audio" * 100)
    outside = _wav(tmp_path / "outside.wav")
    (b.inbox / "link.drums.wav").symlink_to(outside)
    w = b.watcher()
    assert _settle(w, polls=5) == []
    text = _messages(caplog)
    assert text.count("junk.drums.wav: cannot read it as audio") == 1
    assert text.count("link.drums.wav: not started (forbidden_path)") == 1


# -- once only ------------------------------------------------------------------------------------

def test_processed_once_across_polls_and_restarts_and_again_after_a_change(make_home, tmp_path):
    home = tmp_path / "home"
    b1 = make_home(home)
    b1.tempo(120.0)
    f = _wav(b1.inbox / "verse.drums.wav")
    w1 = b1.watcher()
    first = _settle(w1)
    assert len(first) == 1
    assert _settle(w1, polls=4) == []
    b1.close()

    b2 = make_home(home)
    b2.tempo(120.0)
    w2 = b2.watcher()
    assert _settle(w2, polls=4) == []
    assert b2.service.queue_length == 0

    _wav(f, seconds=6.0)  # re-exported: new size and mtime
    second = _settle(w2)
    assert len(second) == 1 and second[0].id != first[0].id and second[0].spec.bars == 3
    os.utime(f, ns=(f.stat().st_mtime_ns + 10**9,) * 2)  # same size, new mtime (a re-export) counts too
    assert len(_settle(w2)) == 1
    assert len([j for j in b2.service.journal.history() if j.spec.source == "inbox"]) == 3


def test_nothing_in_the_inbox_is_deleted_moved_or_changed(make_home):
    b = make_home()
    b.tempo(120.0)
    inbox = b.inbox
    _wav(inbox / "a.drums.wav")
    _wav(inbox / "a.bass.flac")
    (inbox / "a.json").write_text(json.dumps({"bars": 2}))
    (inbox / "bad.drums.wav").write_bytes(b"xx")
    (inbox / "other.txt").write_text("hello")
    (inbox / ".x.part").write_text("partial")
    before = _snapshot(inbox)
    w = b.watcher()
    assert len(_settle(w, polls=4)) == 2
    assert _snapshot(inbox) == before


def test_run_thread_picks_files_up_and_stops(make_home):
    b = make_home()
    b.tempo(120.0)
    f = _wav(b.inbox / "a.drums.wav")
    os.utime(f, ns=(time.time_ns() - 10**10,) * 2)
    w = b.watcher(interval=0.02, settle=0.0)
    stop = threading.Event()
    t = threading.Thread(target=w.run, args=(stop,), daemon=True)
    t.start()
    deadline = time.time() + 5
    while b.service.queue_length == 0 and time.time() < deadline:
        time.sleep(0.02)
    stop.set()
    t.join(2)
    assert not t.is_alive() and b.service.queue_length == 1


# -- a real job -----------------------------------------------------------------------------------

def test_a_real_job_writes_the_stem_to_the_outbox(make_home):
    from stage_bridge.audio import bars_to_samples
    from stage_bridge.engine.model import load_model

    model = load_model("tiny-random", "cpu")
    b = make_home(models={"drums": model})
    inbox = b.inbox
    _wav(inbox / "verse.drums.wav", seconds=2.5)  # 1 bar at 120 bpm (rounded down)
    (inbox / "verse.json").write_text(json.dumps({"bpm": 120, "seed": 3}))
    before = _snapshot(inbox)
    b.service.start()
    (job,) = _settle(b.watcher())
    job = b.ends.wait(job.id)
    assert job.state == "done", (job.error_code, job.error_message)
    out = b.outbox / "verse.drums.120bpm.take1.wav"
    assert [Path(p) for p in job.outputs] == [out]
    info = sf.info(str(out))
    assert info.frames == bars_to_samples(1, 120, info.samplerate)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["source"] == "inbox" and meta["job_id"] == job.id and meta["bars"] == 1
    assert meta | job.spec.params() == meta  # the job as asked, all of it
    assert _snapshot(inbox) == before
