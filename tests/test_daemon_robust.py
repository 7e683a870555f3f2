"""The daemon as a musician's computer sees it: a real process, real UDP, kill -9, SIGTERM, fuzz.

Every test starts `stage-bridge serve --model tiny-random` itself (CPU, random weights: the audio
is noise, the plumbing is real) and talks to it with python-osc. Replies come back to a UDP
socket of the test's own. Waits are bounded: a hung daemon fails a test, never hangs the run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import soundfile as sf
from pythonosc.osc_packet import OscPacket
from pythonosc.udp_client import SimpleUDPClient

from osc_replies import UNPARSEABLE, OscReplies
from stage_bridge.bridge import protocol as P

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 90.0  # importing torch on a loaded 2-core machine takes a while
SR = 48000  # the daemon's output rate for click-only jobs
READY = re.compile(r"stage-bridge ready: OSC (\S+):(\d+),")

pytestmark = [pytest.mark.slow,  # whole daemons started, killed and flooded
              pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]


# -- plumbing --------------------------------------------------------------------------------------

def job_event(address: str, job_id: str) -> Callable[[str, list[Any]], bool]:
    return lambda a, p: a == address and p[:1] == [job_id]


def progress_at_least(job_id: str, percent: float) -> Callable[[str, list[Any]], bool]:
    return lambda a, p: a == P.PROGRESS and p[:1] == [job_id] and p[1] >= percent


class Daemon:
    """One `stage-bridge serve` process; its stdout+stderr go to a log file (never a pipe that fills)."""

    def __init__(self, home: Path, replies: OscReplies, log: Path, *extra: str, queue_size: int | None = None):
        self.home, self.replies, self.log_path = home, replies, log
        args = [sys.executable, "-m", "stage_bridge.cli", "serve", "--model", "tiny-random", "--home", str(home),
                "--osc-port", "0", "--reply-port", str(replies.port), "--no-midi", "--no-watch", *extra]
        if queue_size is not None:
            args += ["--queue-size", str(queue_size)]
        self.log_file = open(log, "ab")
        self.log_start = log.stat().st_size
        self.proc = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=self.log_file,
                                     stderr=subprocess.STDOUT, env=daemon_env(home.parent))
        self.port: int | None = None
        self.client: SimpleUDPClient | None = None
        self.started = time.monotonic()

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(self.log_start)
            return f.read().decode("utf-8", "replace")

    def wait_ready(self, timeout: float = START_TIMEOUT) -> "Daemon":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = READY.search(self.log())
            if m:
                self.port = int(m.group(2))
                self.client = SimpleUDPClient("127.0.0.1", self.port)
                self.ready_after = time.monotonic() - self.started
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"daemon not ready within {timeout:.0f} s:\n{self.log()[-3000:]}")

    def send(self, address: str, *args: Any) -> None:
        assert self.client is not None
        self.client.send_message(address, list(args))

    def send_raw(self, data: bytes) -> None:
        assert self.port is not None
        self.client._sock.sendto(data, ("127.0.0.1", self.port))  # type: ignore[union-attr]

    def ping(self, token: str, timeout: float = 5.0, resend: float = 1.0) -> float:
        """Seconds until the pong for `token` came back (re-sent every `resend` s: UDP may drop)."""
        t0 = time.monotonic()
        mark = self.replies.mark()
        while True:
            self.send(P.PING, token)
            try:
                left = min(resend, t0 + timeout - time.monotonic())
                self.replies.wait(lambda a, p: a == P.PONG and p == [token], left, since=mark, what=f"pong {token}")
                return time.monotonic() - t0
            except TimeoutError:
                if time.monotonic() - t0 >= timeout:
                    raise
                assert self.alive(), f"daemon died:\n{self.log()[-3000:]}"

    def generate(self, job_id: str, bars: int, takes: int = 1, **options: Any) -> None:
        args: list[Any] = [job_id, options.pop("context", ""), "drums", bars, "bpm", 120.0, "takes", takes,
                           "seed", 7]
        if not args[1]:
            args += ["context_mode", "click"]
        for k, v in options.items():
            args += [k, v]
        self.send(P.GENERATE, *args)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.log_file.close()

    def terminate(self, timeout: float = 30.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.log_file.close()


def daemon_env(base: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGE_BRIDGE_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", XDG_CONFIG_HOME=str(base / "xdg-config"),
               PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


@pytest.fixture
def replies():
    r = OscReplies()
    yield r
    r.close()


@pytest.fixture
def daemons():
    """Start daemons through this; any still running at the end is killed (with its log shown on failure)."""
    started: list[Daemon] = []

    def start(*args: Any, **kwargs: Any) -> Daemon:
        d = Daemon(*args, **kwargs)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.alive():
            d.kill()
        elif not d.log_file.closed:
            d.log_file.close()


def journal_states(home: Path) -> dict[str, str]:
    """Latest state of each job id, read straight from the SQLite journal."""
    db = sqlite3.connect(str(home / "jobs.sqlite3"), timeout=10)
    try:
        rows = db.execute("SELECT id, state FROM jobs ORDER BY seq").fetchall()
    finally:
        db.close()
    return dict(rows)


# writer.publish_takes publishes each sidecar before its WAV, so no kill leaves a take without its sidecar
# (test_kill_at_every_publish_step checks every step). True would tolerate such takes again.
LONE_TAKE_BUG = False


def check_outbox(outbox: Path, lone_takes: list[str] | None = None) -> dict[str, dict]:
    """The invariant after any crash: every visible file is a complete, readable take with its sidecar.

    Hidden `.*.part` temp files are allowed (the next start removes them); so is a sidecar whose take
    never appeared (harmless: no DAW imports JSON). Returns wav name -> sidecar. While LONE_TAKE_BUG
    stands, takes without a sidecar are tolerated when `lone_takes` is given (and appended to it),
    but they must still be complete and readable.
    """
    names = sorted(os.listdir(outbox))
    visible = [n for n in names if not n.startswith(".")]
    odd_hidden = [n for n in names if n.startswith(".") and not n.endswith(".part")]
    assert not odd_hidden, f"unexpected hidden files in the outbox: {odd_hidden}"
    takes = {}
    for name in visible:
        path = outbox / name
        if name.endswith(".wav"):
            info = sf.info(str(path))
            data, sr = sf.read(str(path), dtype="float32")  # complete: reads to the end
            assert len(data) == info.frames > 0, name
            meta = path.with_suffix(".json")
            if not meta.exists():
                assert LONE_TAKE_BUG and lone_takes is not None, \
                    f"{name} was published without its sidecar (outbox: {names})"
                lone_takes.append(name)
                continue
            sidecar = json.loads(meta.read_text())
            assert sr == sidecar["sample_rate"] and len(data) == sidecar["num_samples"], name
            assert sidecar["file"] == name
            takes[name] = sidecar
        elif name.endswith(".json"):
            json.loads(path.read_text())  # complete JSON
        else:
            raise AssertionError(f"unexpected file in the outbox: {name}")
    return takes


def part_files(outbox: Path) -> list[str]:
    return [n for n in os.listdir(outbox) if n.startswith(".") and n.endswith(".part")]


def wait_until(cond: Callable[[], Any], timeout: float, what: str, poll: float = 0.001) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def samples(bars: int, bpm: float = 120.0, beats_per_bar: int = 4) -> int:
    return round(bars * beats_per_bar * 60 / bpm * SR)


# -- the fuzz ----------------------------------------------------------------------------------------

ADDRESSES = [P.PING, P.GENERATE, P.TEMPO, P.CANCEL, P.STATUS, "/stage", "/stage/generate/x", "/", "/stage/job/done",
             "/STAGE/PING", "/stage/ping/", "/stage/*", "/stage/gener?te", "//stage/ping"]
KEYS = ["bpm", "beats_per_bar", "beat_unit", "offset", "prompt", "takes", "context_mode", "seed", "tempo"]


def pad(b: bytes) -> bytes:
    return b + b"\0" * (4 - len(b) % 4)


def enc(tag: str, v: Any) -> bytes:
    if tag == "i":
        return struct.pack(">i", v)
    if tag in "ht":
        return struct.pack(">q" if tag == "h" else ">Q", v)
    if tag == "f":
        return struct.pack(">f", v)
    if tag == "d":
        return struct.pack(">d", v)
    if tag == "s":
        return pad(v.encode("utf-8", "surrogatepass"))
    if tag == "b":
        return struct.pack(">i", len(v)) + v + b"\0" * (-len(v) % 4)
    if tag in "crm":
        return struct.pack(">I", v)
    return b""  # T F N I [ ]


def osc(address: str | bytes, args: list[tuple[str, Any]]) -> bytes:
    addr = address.encode() if isinstance(address, str) else address
    return pad(addr) + pad(b"," + "".join(t for t, _ in args).encode()) + b"".join(enc(t, v) for t, v in args)


def rand_text(rng: random.Random, n: int) -> str:
    alphabet = "abcXYZ019 ._-/\\~é✓\t\n"
    return "".join(rng.choice(alphabet) for _ in range(n))


def rand_arg(rng: random.Random) -> tuple[str, Any]:
    k = rng.randrange(14)
    if k == 0:
        return "i", rng.randint(-2**31, 2**31 - 1)
    if k == 1:
        return "i", rng.choice([0, 1, -1, 2, 4, 8, 16, 30, 120, 300, 512, 513, 2**31 - 1, -2**31])
    if k == 2:
        return "f", rng.choice([math.nan, math.inf, -math.inf, 0.0, -0.0, 120.0, 29.9, 300.1, 4.0, 2.5, 1e38,
                                rng.uniform(-1e6, 1e6)])
    if k == 3:
        return "s", rand_text(rng, rng.randrange(40))
    if k == 4:
        return "s", rng.choice(KEYS + ["drums", "bass", "click", "mix", "mix+click", "", "/etc/passwd",
                                       "../../etc/passwd", "~/x.wav", "fz-id"])
    if k == 5:
        return "b", rng.randbytes(rng.randrange(20))
    if k == 6:
        return rng.choice("TFNI"), None
    if k == 7:
        return "h", rng.choice([2**40, -2**63, 2**63 - 1, rng.randint(-2**63, 2**63 - 1)])
    if k == 8:
        return "d", rng.choice([1e300, -1e300, math.nan, 120.0, 5e-324, rng.uniform(-1e9, 1e9)])
    if k == 9:
        return "t", rng.randint(0, 2**64 - 1)
    if k == 10:
        return rng.choice("crm"), rng.randint(0, 2**32 - 1)
    if k == 11:
        return "s", "\udc80" if rng.random() < 0.5 else "x" * rng.randrange(100, 2000)  # bad UTF-8, long
    if k == 12:
        return "i", rng.choice([4, 1, 2])
    return "f", float(rng.choice([1, 2, 4, 8, 120]))


def fz_garbage_generate(rng: random.Random) -> bytes:
    """/stage/generate with plausible then garbage arguments (bars kept tiny in case one is valid)."""
    args: list[tuple[str, Any]] = []
    if rng.random() < 0.7:
        args = [("s", rng.choice(["fz-" + str(rng.randrange(10**6)), "", "bad id", "x" * 70, ".x"])),
                ("s", rng.choice(["", "/etc/passwd", "inbox", "nope.wav", "../x.wav"])),
                ("s", rng.choice(["drums", "bass", "Drums", "piano", ""])),
                rng.choice([("i", 1), ("f", 1.0), ("i", 0), ("i", 513), ("f", 1.5), ("s", "1"), ("T", None)])]
        for _ in range(rng.randrange(6)):
            args.append(("s", rng.choice(KEYS)) if rng.random() < 0.8 else rand_arg(rng))
            args.append(rand_arg(rng))
        if rng.random() < 0.1:  # an odd count
            args.append(("s", rng.choice(KEYS)))
        if rng.random() < 0.05:  # sometimes valid apart from the garbage above: make it count
            args += [("s", "context_mode"), ("s", "click"), ("s", "bpm"), ("f", 120.0), ("s", "takes"), ("i", 1)]
    else:
        args = [rand_arg(rng) for _ in range(rng.randrange(12))]
    return osc(P.GENERATE, args)


def fz_other_garbage(rng: random.Random) -> bytes:
    return osc(rng.choice(ADDRESSES), [rand_arg(rng) for _ in range(rng.randrange(6))])


def fz_random_bytes(rng: random.Random) -> bytes:
    n = rng.choice([0, 1, 3, 4, 8, rng.randrange(64), rng.randrange(2000)])
    head = rng.choice([b"", b"/", b"#", b"/stage/generate\0", b"#bundle\0", b","])
    return (head + rng.randbytes(n))[: max(n, 1)]


def fz_truncated(rng: random.Random) -> bytes:
    full = rng.choice([fz_garbage_generate, fz_other_garbage])(rng)
    good = osc(P.GENERATE, [("s", "fz-t"), ("s", ""), ("s", "drums"), ("i", 1), ("s", "bpm"), ("f", 120.0)])
    data = full if rng.random() < 0.5 else good
    return data[: rng.randrange(len(data))] if len(data) > 1 else data


def fz_wrong_tags(rng: random.Random) -> bytes:
    """Known addresses whose type tags do not match the payload (too long, too short, unknown tags)."""
    tags = "".join(rng.choice("ifsbhdtTFNI[]crmSx?,") for _ in range(rng.randrange(1, 10)))
    payload = rng.randbytes(rng.randrange(0, 40))
    if rng.random() < 0.3:
        payload = b"".join(enc(t, v) for t, v in (rand_arg(rng) for _ in range(3)))
    return pad(rng.choice(ADDRESSES[:5]).encode()) + pad(b"," + tags.encode()) + payload


def fz_huge(rng: random.Random) -> bytes:
    n = rng.choice([10_000, 40_000, 64_000])
    s = "x" * n if rng.random() < 0.5 else rand_text(rng, n // 8)
    which = rng.randrange(4)
    if which == 0:
        data = osc(P.GENERATE, [("s", s), ("s", ""), ("s", "drums"), ("i", 1)])
    elif which == 1:
        data = osc(P.GENERATE, [("s", "fz-huge"), ("s", s), ("s", "drums"), ("i", 1), ("s", "bpm"), ("f", 120.0)])
    elif which == 2:
        data = osc(P.PING, [("s", s)])
    else:
        data = osc(P.GENERATE, [("s", "fz-huge-prompt"), ("s", ""), ("s", "drums"), ("i", 1), ("s", "prompt"),
                                ("s", s)])
    return data[:65000]


def bundle(contents: list[bytes], timetag: int = 1) -> bytes:
    return b"#bundle\0" + struct.pack(">Q", timetag) + b"".join(struct.pack(">i", len(c)) + c for c in contents)


def fz_nested_bundle(rng: random.Random) -> bytes:
    inner = [rng.choice([fz_other_garbage, fz_garbage_generate, fz_truncated])(rng) for _ in range(rng.randrange(3))]
    data = bundle(inner, rng.randint(0, 2**64 - 1))
    depth = rng.choice([1, 2, 5, 50, 400, 1500, 3000])
    for _ in range(depth):
        data = bundle([data] if rng.random() < 0.9 else [data, osc(P.STATUS, [])])
        if len(data) > 60_000:
            break
    return data


def fz_bad_bundle(rng: random.Random) -> bytes:
    content = rng.choice([fz_other_garbage, fz_truncated])(rng)
    size = rng.choice([-1, 0, 1, 3, len(content) - 1, len(content) + 1, len(content) + 4, 2**31 - 1, -2**31])
    kind = rng.randrange(6)
    if kind == 0:
        return b"#bundle\0" + struct.pack(">Q", 1) + struct.pack(">i", size) + content
    if kind == 1:
        return b"#bundle\0"[: rng.randrange(1, 9)]
    if kind == 2:
        return b"#bundle\0" + rng.randbytes(rng.randrange(0, 12))
    if kind == 3:  # one good element, then a bad size
        return bundle([osc(P.STATUS, [])]) + struct.pack(">i", size) + content[: rng.randrange(len(content) + 1)]
    if kind == 4:  # a nested bundle whose inner size lies
        inner = b"#bundle\0" + struct.pack(">Q", 1) + struct.pack(">i", size) + content
        return bundle([inner])
    return b"#bundle" + rng.randbytes(rng.randrange(0, 30))  # no NUL after the header


FUZZERS = [fz_random_bytes, fz_truncated, fz_wrong_tags, fz_huge, fz_nested_bundle, fz_bad_bundle,
           fz_garbage_generate, fz_other_garbage]
FUZZ_WEIGHTS = [3, 3, 3, 0.3, 1, 2, 4, 3]


def would_queue(data: bytes) -> set[str]:
    """Job ids a datagram could legitimately create: /stage/generate messages that parse_generate accepts."""
    logging.disable(logging.WARNING)  # python-osc warns on the root logger about every odd type tag
    try:
        msgs = [m.message for m in OscPacket(data).messages]
    except Exception:
        return set()
    finally:
        logging.disable(logging.NOTSET)
    ids = set()
    for m in msgs:
        if m.address == P.GENERATE:
            try:
                ids.add(P.parse_generate(list(m.params)).job_id)
            except P.ProtocolError:
                pass
    return ids


# -- shared daemon for the fuzz and path tests --------------------------------------------------------

@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    base = tmp_path_factory.mktemp("shared")
    home = base / "home"
    r = OscReplies()
    d = Daemon(home, r, base / "daemon.log")
    try:
        d.wait_ready()
        yield d, r, home, base
    finally:
        if d.alive():
            assert d.terminate(30) == 0, d.log()[-3000:]
        r.close()


N_PACKETS = 10_000
SYNC_EVERY = 100


def test_fuzz_10000_packets(shared):
    d, replies, home, _ = shared
    rng = random.Random(20240607)
    t0 = time.monotonic()
    allowed: set[str] = set()
    valid_ids = [f"fz-valid-{i}" for i in range(3)]
    valid_at = {2000: valid_ids[0], 5000: valid_ids[1], 9000: valid_ids[2]}
    sizes = []
    cancelled: set[str] = set()
    for i in range(N_PACKETS):
        if i % SYNC_EVERY == 0:  # let the daemon catch up, so the kernel does not drop most of the fuzz
            d.ping(f"sync-{i}", timeout=15)
            for job_id in sorted(allowed - cancelled):  # valid by chance: do not let them pile up
                d.send(P.CANCEL, job_id)
            cancelled |= allowed
            if i in valid_at:  # genuinely valid requests, mixed in (right after a sync: never dropped)
                d.generate(valid_at[i], 1)
        data = rng.choices(FUZZERS, FUZZ_WEIGHTS)[0](rng)
        allowed |= would_queue(data)
        sizes.append(len(data))
        try:
            d.send_raw(data)
        except OSError as e:  # only a datagram too big for UDP may fail to send
            assert len(data) > 65000, e
    sent_s = time.monotonic() - t0
    d.ping("after-fuzz", timeout=15)
    assert d.alive(), d.log()[-3000:]
    d.ping("final", timeout=15)  # still answering after the fuzz
    d.send(P.STATUS)
    replies.wait(lambda a, p: a == P.STATUS and len(p) == 6, 5, what="status")

    for job_id in allowed - cancelled:  # a few fuzz messages were valid requests: do not let them run on
        d.send(P.CANCEL, job_id)
    for job_id in valid_ids:
        replies.wait(lambda a, p, j=job_id: a in (P.DONE, P.ERROR, P.CANCELLED) and p[:1] == [j], 60,
                     what=f"end of {job_id}")
        assert replies.find(job_event(P.DONE, job_id)), replies.find(lambda a, p, j=job_id: p[:1] == [j])
    wait_until(lambda: not set(journal_states(home).values()) & {"queued", "running"}, 60, "fuzz jobs to end",
               poll=0.2)

    states = journal_states(home)
    assert set(valid_ids) <= set(states)
    garbage_jobs = set(states) - set(valid_ids) - allowed
    assert not garbage_jobs, f"jobs created from invalid messages: {sorted(garbage_jobs)[:10]}"
    takes = check_outbox(home / "outbox")
    assert {s["job_id"] for s in takes.values()} <= set(valid_ids) | allowed
    assert {s["job_id"] for s in takes.values()} >= set(valid_ids)
    log = d.log()
    errors = tracebacks(log)
    assert not errors, f"handler errors (the sender got no reply): {sorted(set(errors))}"
    assert not replies.find(lambda a, p: a == UNPARSEABLE)
    print(f"\nfuzz: {N_PACKETS} packets ({sum(sizes) / 1e6:.1f} MB) in {sent_s:.1f} s, "
          f"{log.count('dropped a malformed')} malformed, {log.count('ignored unknown OSC')} unknown address, "
          f"{log.count('refused ')} refused, {len(allowed)} valid by chance; "
          f"total {time.monotonic() - t0:.1f} s")


def tracebacks(log: str) -> list[str]:
    """The final `Type: message` line (first 80 characters) of each traceback in a daemon log."""
    found = []
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            for later in lines[i + 1:]:
                if later and not later.startswith(" "):
                    found.append(later[:80])
                    break
    return found


# -- paths ------------------------------------------------------------------------------------------

def write_wav(path: Path, seconds: float = 2.5) -> Path:
    import numpy as np
    rng = np.random.default_rng(0)
    sf.write(str(path), (0.1 * rng.standard_normal(int(SR * seconds))).astype("float32"), SR, subtype="FLOAT")
    return path


def test_path_escapes_are_forbidden(shared):
    d, replies, home, base = shared
    outside = base / "outside"
    outside.mkdir(exist_ok=True)
    secret = write_wav(outside / "x.wav")
    inbox = home / "inbox"
    inside = write_wav(inbox / "inside.wav")
    (inbox / "link-out.wav").symlink_to(secret)
    (inbox / "dir-out").symlink_to(outside, target_is_directory=True)
    (inbox / "link-in.wav").symlink_to(inside)
    (home / "bounces" / "rel-link.wav").symlink_to(Path("..") / "inbox" / "inside.wav")
    cases = {
        "p-etc": "/etc/passwd",
        "p-dotdot": f"{home}/../outside/x.wav",
        "p-rel-dotdot": "../outside/x.wav",  # relative paths are relative to home
        "p-deep-dotdot": f"{inbox}/../../outside/x.wav",
        "p-link-out": str(inbox / "link-out.wav"),
        "p-rel-link-out": "inbox/link-out.wav",
        "p-dir-link-out": str(inbox / "dir-out" / "x.wav"),
        "p-tilde": "~/../../etc/passwd",
    }
    mark = replies.mark()
    for job_id, path in cases.items():
        d.generate(job_id, 1, context=path)
    for job_id, path in cases.items():
        _, params = replies.wait(lambda a, p, j=job_id: p[:1] == [j], 15, since=mark, what=f"reply for {job_id}")
        assert params[:2] == [job_id, "forbidden_path"], (path, params)
        assert "--allow-root" in params[2]
    d.generate("p-missing", 1, context="inbox/nope.wav")
    _, params = replies.wait(lambda a, p: p[:1] == ["p-missing"], 15, since=mark)
    assert params[:2] == ["p-missing", "file_missing"]

    accepted = {"p-link-in": str(inbox / "link-in.wav"), "p-rel-link-in": "bounces/rel-link.wav",
                "p-plain": "inbox/inside.wav", "p-dotdot-in": f"{home}/bounces/../inbox/inside.wav"}
    for job_id, path in accepted.items():
        d.generate(job_id, 1, context=path, context_mode="mix")
    for job_id in accepted:
        a, params = replies.wait(lambda a, p, j=job_id: p[:1] == [j], 15, since=mark, what=f"reply for {job_id}")
        assert a == P.ACCEPTED, params
    for job_id in accepted:
        replies.wait(lambda a, p, j=job_id: a in (P.DONE, P.ERROR) and p[:1] == [j], 60, since=mark)
        _, params = replies.find(lambda a, p, j=job_id: a in (P.DONE, P.ERROR) and p[:1] == [j])[0]
        assert len(params) == 2 and params[1].endswith(".wav"), params  # done, with one take
    states = journal_states(home)
    assert not set(cases) & set(states) and all(states[j] == "done" for j in accepted)
    sidecar = json.loads(Path(replies.find(job_event(P.DONE, "p-link-in"))[0][1][1]).with_suffix(".json").read_text())
    assert sidecar["context_path"] == str(inside.resolve())  # the real file, symlinks resolved
    assert secret.exists() and check_outbox(home / "outbox")


def test_odd_context_paths_get_a_reply(shared):
    d, replies, home, _ = shared
    (home / "inbox" / "loop-a.wav").symlink_to(home / "inbox" / "loop-b.wav")
    (home / "inbox" / "loop-b.wav").symlink_to(home / "inbox" / "loop-a.wav")
    cases = {"odd-long-name": "inbox/" + "x" * 300 + ".wav", "odd-long-path": "inbox/" + "d/" * 3000 + "x.wav",
             "odd-loop": "inbox/loop-a.wav", "odd-user": "~no-such-user-here/x.wav"}
    mark = replies.mark()
    for job_id, path in cases.items():
        d.generate(job_id, 1, context=path)
    d.ping("after-odd-paths")  # replies to earlier messages have come by now
    got = {job_id: replies.find(lambda a, p, j=job_id: p[:1] == [j], since=mark) for job_id in cases}
    assert d.alive()
    codes = {j: [p[1] for _, p in r] for j, r in got.items()}
    assert all(c in (["file_missing"], ["forbidden_path"]) for c in codes.values()), codes


# -- kill -9 ----------------------------------------------------------------------------------------

LONG, SHORT, SHORT2 = "long", "short", "short2"
LONG_BARS, LONG_TAKES, SHORT_BARS = 16, 2, 2


def test_kill_9_at_any_point_loses_nothing_and_leaves_no_partial_file(tmp_path, replies, daemons):
    home = tmp_path / "home"
    outbox = home / "outbox"
    log = tmp_path / "daemon.log"
    rng = random.Random()  # a different delay each run (printed, and named in any failure)
    timings: dict[str, Any] = {}
    lone: list[str] = []

    def start() -> Daemon:
        d = daemons(home, replies, log).wait_ready()
        assert not part_files(outbox), "a .part temp file survived a restart"
        timings.setdefault("ready_s", []).append(round(d.ready_after, 1))
        return d

    def killed(d: Daemon, where: str, late: bool = False) -> dict[str, dict]:
        d.kill()
        states = journal_states(home)
        if late:  # the kill may land after LONG's last link, even after SHORT started (or ended)
            assert states.get(LONG) in ("running", "done") and states.get(SHORT) in ("queued", "running", "done") \
                and (states[LONG] == "done" or states[SHORT] == "queued"), (where, states)
        else:
            assert states.get(LONG) in ("queued", "running") and states.get(SHORT) == "queued", (where, states)
        try:
            return check_outbox(outbox, lone)
        except AssertionError as e:
            raise AssertionError(f"after kill -9 {where}: {e}") from None

    # 1. right after the jobs were accepted
    d = start()
    mark = replies.mark()
    d.generate(LONG, LONG_BARS, takes=LONG_TAKES)
    d.generate(SHORT, SHORT_BARS)
    replies.wait(job_event(P.ACCEPTED, SHORT), 15, since=mark)
    assert replies.find(job_event(P.ACCEPTED, LONG), since=mark)[0][1] == [LONG, 0]
    assert check_outbox(outbox) == {} and killed(d, "after accepted") == {}

    # 2. mid-generation
    d = start()
    mark = replies.mark()
    replies.wait(progress_at_least(LONG, 30), 90, since=mark, what="progress >= 30 %")
    assert killed(d, "at 30 %") == {}

    # 3. while the takes are being written (from when a hidden .part file appears, plus a random delay;
    # test_kill_at_every_publish_step covers each write and link of publishing deterministically)
    d = start()
    t0 = time.monotonic()
    wait_until(lambda: part_files(outbox), 120, "a .part file")
    timings["to_part_s"] = round(time.monotonic() - t0, 1)
    timings["delay_ms"] = round(rng.uniform(0, 25), 1)
    time.sleep(timings["delay_ms"] / 1000)
    # the sidecar goes first and a tiny model writes fast: the kill may also come after the last link
    killed(d, f"while writing ({timings['delay_ms']} ms after the first .part appeared)", late=True)
    finished = {j for j, state in journal_states(home).items() if state == "done"}
    timings["after_kill"] = sorted(os.listdir(outbox))

    # 4. the last restart finishes everything
    d = start()
    mark = replies.mark()
    d.generate(SHORT2, SHORT_BARS)  # and takes new work as usual
    expected = [j for j in (LONG, SHORT) if j not in finished] + [SHORT2]
    for job_id in expected:
        replies.wait(job_event(P.DONE, job_id), 120, since=mark, what=f"done {job_id}")
    assert d.ping("alive") < 5
    order = [p[0] for a, p in replies.find(lambda a, p: a == P.DONE, since=mark)]
    assert order == expected  # resumed in their original order, new work after
    takes = check_outbox(outbox, lone)
    for job_id, bars, n_takes in ((LONG, LONG_BARS, LONG_TAKES), (SHORT, SHORT_BARS, 1), (SHORT2, SHORT_BARS, 1)):
        paths = replies.find(job_event(P.DONE, job_id), since=mark if job_id in expected else 0)[-1][1][1:]
        assert len(paths) == n_takes
        for path in map(Path, paths):
            assert path.parent == outbox and path.name in takes
            assert sf.info(str(path)).frames == samples(bars) and sf.info(str(path)).samplerate == SR
            assert takes[path.name]["job_id"] == job_id and takes[path.name]["bars"] == bars
    assert journal_states(home) == {LONG: "done", SHORT: "done", SHORT2: "done"}
    assert d.terminate(30) == 0

    out = subprocess.run([sys.executable, "-m", "stage_bridge.cli", "jobs", "--home", str(home)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, env=daemon_env(tmp_path))
    assert out.returncode == 0, out.stderr
    listed = {line.split()[2]: line.split()[3] for line in out.stdout.splitlines() if len(line.split()) > 3}
    assert listed == {LONG: "done", SHORT: "done", SHORT2: "done"}, out.stdout
    reported = {Path(path).name for _, params in replies.find(lambda a, p: a == P.DONE) for path in params[1:]}
    orphans = sorted((set(takes) | set(lone)) - reported)
    print(f"\nkill -9: {timings}; takes left by interrupted runs: {orphans}, of which without sidecar: "
          f"{sorted(set(lone))}")


KILL_AT = r"""
import os, signal, sys
from pathlib import Path
import numpy as np
from stage_bridge.bridge import writer

call, n = sys.argv[2], int(sys.argv[3])
real = getattr(os, call)
count = 0

def dying(*args, **kwargs):
    global count
    count += 1
    if call == "fsync" and count == n:  # die while a temp file is being written
        os.kill(os.getpid(), signal.SIGKILL)
    result = real(*args, **kwargs)
    if call == "link" and count == n:  # die right after a file was published
        os.kill(os.getpid(), signal.SIGKILL)
    return result

setattr(os, call, dying)
takes = [np.full(4800, 0.1 * k, np.float32) for k in (1, 2)]
writer.publish_takes(Path(sys.argv[1]), "song", "drums", 120.0, takes, 48000, {"job_id": "k", "sample_rate": 48000,
                                                                              "num_samples": 4800})
print("finished")
"""


LONE = pytest.mark.xfail(LONE_TAKE_BUG, strict=True, reason="a take without its sidecar")


@pytest.mark.parametrize("call,n", [
    pytest.param("link", 1, marks=LONE), ("link", 2), pytest.param("link", 3, marks=LONE), ("link", 4),
    ("fsync", 1), pytest.param("fsync", 2, marks=LONE), pytest.param("fsync", 3, marks=LONE), ("fsync", 4),
    ("fsync", 5), pytest.param("fsync", 6, marks=LONE), pytest.param("fsync", 7, marks=LONE), ("fsync", 8)])
def test_kill_at_every_publish_step(tmp_path, call, n):
    """kill -9 at every step of publishing a 2-take job: after each of its 4 links (take, sidecar, take,
    sidecar) and in each of its 8 fsyncs (a temp file's, then the folder's, per file)."""
    from stage_bridge.bridge.config import ServeConfig
    from stage_bridge.bridge.server import prepare_home

    home = tmp_path / "home"
    (home / "outbox").mkdir(parents=True)
    out = subprocess.run([sys.executable, "-c", KILL_AT, str(home / "outbox"), call, str(n)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == -signal.SIGKILL, (out.returncode, out.stdout, out.stderr)
    takes = check_outbox(home / "outbox")
    assert len(takes) == (n // 4 if call == "fsync" else n // 2)
    prepare_home(ServeConfig(home=home))  # what the next start does
    assert not part_files(home / "outbox")
    assert check_outbox(home / "outbox") == takes


# -- SIGTERM ---------------------------------------------------------------------------------------

def test_sigterm_cancels_the_running_job_and_keeps_the_queue(tmp_path, replies, daemons):
    home = tmp_path / "home"
    log = tmp_path / "daemon.log"
    d = daemons(home, replies, log).wait_ready()
    mark = replies.mark()
    d.generate("run", LONG_BARS, takes=LONG_TAKES)
    d.generate("q1", SHORT_BARS)
    d.generate("q2", SHORT_BARS)
    replies.wait(job_event(P.ACCEPTED, "q2"), 15, since=mark)
    replies.wait(progress_at_least("run", 30), 90, since=mark, what="progress >= 30 %")
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    rc = d.proc.wait(60)  # cancelled, not waited for: the journal and outbox checks below tell
    stop_s = time.monotonic() - t0
    assert rc == 0, d.log()[-3000:]
    replies.wait(job_event(P.CANCELLED, "run"), 2, since=mark, what="cancelled run")
    assert not replies.find(lambda a, p: a in (P.DONE, P.ERROR), since=mark)
    assert os.listdir(home / "outbox") == []  # no take, no temp file
    assert journal_states(home) == {"run": "cancelled", "q1": "queued", "q2": "queued"}
    assert "Traceback" not in d.log()

    d = daemons(home, replies, log).wait_ready()
    mark = replies.mark()
    for job_id in ("q1", "q2"):
        replies.wait(job_event(P.DONE, job_id), 90, since=mark, what=f"done {job_id}")
    assert not replies.find(lambda a, p: p[:1] == ["run"], since=mark)  # a cancelled job stays cancelled
    assert journal_states(home) == {"run": "cancelled", "q1": "done", "q2": "done"}
    assert len(check_outbox(home / "outbox")) == 2
    t0 = time.monotonic()
    assert d.terminate(15) == 0  # idle: stops promptly too
    print(f"\nSIGTERM: exit 0 after {stop_s:.2f} s while busy, {time.monotonic() - t0:.2f} s when idle")


# -- remote access -----------------------------------------------------------------------------------

def test_osc_host_all_interfaces_needs_allow_remote(tmp_path, replies, daemons):
    refused = daemons(tmp_path / "h1", replies, tmp_path / "refused.log", "--osc-host", "0.0.0.0")
    allowed = daemons(tmp_path / "h2", replies, tmp_path / "allowed.log", "--osc-host", "0.0.0.0", "--allow-remote")
    assert refused.proc.wait(START_TIMEOUT) == 2
    refused.log_file.close()
    errors = [line for line in refused.log().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--allow-remote" in errors[0], refused.log()
    assert "Traceback" not in refused.log() and "ready" not in refused.log()

    allowed.wait_ready()
    log = allowed.log()
    assert re.search(r"WARNING .*listening on 0\.0\.0\.0", log), log
    assert "stage-bridge ready: OSC 0.0.0.0:" in log
    assert allowed.ping("remote-ok") < 5  # reachable (here through loopback)
    assert allowed.terminate(30) == 0
