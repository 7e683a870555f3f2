"""A private JACK server (dummy backend) for tests, always cleaned up afterwards.

jackd2 keeps only 8 server slots in /dev/shm/jack-shm-registry. A server that dies uncleanly
(SIGKILL, crash) leaves its slot, its shared-memory segments (/dev/shm/jack-<uid>-<n>), its
semaphores (/dev/shm/jack_sem.<uid>_<server>_*) and sockets (/dev/shm/jack_<server>_<uid>_*)
behind; jackd only reclaims a slot for the *same* server name, so with per-process names each
unclean exit leaks one slot and after eight no server starts. `clean_stale()` removes what dead
servers named `stagebridge-test-*` left; `jack_server()` runs it before starting and after
stopping, stops jackd by PID (SIGTERM, then SIGKILL), and retries a failed start once after
cleaning.

Every JACK client started here gets JACK_NO_START_SERVER=1: a client that cannot reach its
server must fail, not start a default (ALSA) server of its own.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

SHM = Path("/dev/shm")
REGISTRY = SHM / "jack-shm-registry"
PREFIX = "stagebridge-test-"

# jack2 shm.h: header {u32 magic, u16 protocol, (pad), i32 type, u32 size, u32 hdr_len,
# u32 entry_len, {pid_t pid; char name[...]} server[8]} (hdr_len = 24 + 8 * slot size, 264
# here); entries {i32 index, pid_t allocator, u32 size, char id[...]} of entry_len from hdr_len.
_MAGIC = 0x4A41434B
_SERVERS, _SERVER_OFFSET = 8, 24

_counter = itertools.count()


def jack_env(server: str) -> dict[str, str]:
    """Environment for a JACK client of `server` (never auto-starts a server)."""
    env = dict(os.environ)
    env.update(JACK_DEFAULT_SERVER=server, JACK_NO_START_SERVER="1", JACK_NO_AUDIO_RESERVATION="1")
    return env


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _server_of(slot_name: str) -> str:
    # a slot holds "jack-<uid>:<server>:" (jack2's per-user server prefix)
    parts = slot_name.split(":")
    return parts[1] if len(parts) >= 2 else slot_name


def _layout(data: bytes) -> tuple[int, int, int] | None:
    """(slot_len, hdr_len, entry_len) of a registry image, None if it is not one."""
    if len(data) < _SERVER_OFFSET or struct.unpack_from("<I", data)[0] != _MAGIC:
        return None
    hdr_len, entry_len = struct.unpack_from("<II", data, 16)
    slot_len = (hdr_len - _SERVER_OFFSET) // _SERVERS
    if slot_len < 8 or entry_len < 12 or len(data) < hdr_len:
        return None
    return slot_len, hdr_len, entry_len


def _slots(data: bytes, slot_len: int) -> Iterator[tuple[int, int, str]]:
    for i in range(_SERVERS):
        off = _SERVER_OFFSET + i * slot_len
        pid = struct.unpack_from("<i", data, off)[0]
        name = data[off + 4:off + slot_len].split(b"\0")[0].decode(errors="replace")
        yield off, pid, name


def registry_servers() -> list[tuple[int, str]]:
    """(pid, server name) of every used server slot in the registry."""
    try:
        data = REGISTRY.read_bytes()
    except OSError:
        return []
    layout = _layout(data)
    if layout is None:
        return []
    return [(pid, _server_of(name)) for _, pid, name in _slots(data, layout[0]) if pid or name]


def clean_stale(prefix: str = PREFIX) -> list[str]:
    """Remove what dead jackd servers whose name starts with `prefix` left in /dev/shm.

    Only slots whose process is gone are touched (never a live server, never other names).
    Returns a description of what was removed.
    """
    removed: list[str] = []
    dead_pids: set[int] = set()
    with contextlib.suppress(OSError):
        with open(REGISTRY, "r+b") as f:
            data = f.read()
            layout = _layout(data)
            if layout is not None:
                slot_len, hdr_len, entry_len = layout
                for i, (off, pid, name) in enumerate(_slots(data, slot_len)):
                    name = _server_of(name)
                    if name.startswith(prefix) and not _alive(pid):
                        f.seek(off)
                        f.write(bytes(slot_len))
                        dead_pids.add(pid)
                        removed.append(f"registry slot {i} ({name}, pid {pid})")
                for j in range((len(data) - hdr_len) // entry_len if dead_pids else 0):
                    off = hdr_len + j * entry_len
                    allocator = struct.unpack_from("<i", data, off + 4)[0]
                    if allocator in dead_pids:
                        seg = data[off + 12:off + entry_len].split(b"\0")[0].decode(errors="replace")
                        if seg:
                            with contextlib.suppress(OSError):
                                (SHM / seg.lstrip("/")).unlink()
                        f.seek(off + 4)
                        f.write(bytes(entry_len - 4))          # keep the index, free the entry
                        removed.append(f"segment {seg or j}")
    # semaphores and sockets of servers that are not running (any leftover of ours)
    running = {name for pid, name in registry_servers() if _alive(pid)}
    uid = os.getuid()
    # our names (PREFIX<pid>-<n>) have no "_"; semaphores: jack_sem.<uid>_<server>_<client>,
    # sockets: jack_<server>_<uid>_<n>
    pattern = re.compile(rf"^jack(?:_sem\.{uid})?_({re.escape(prefix)}[^_]*)_")
    for path in itertools.chain(SHM.glob(f"jack_sem.{uid}_{prefix}*"), SHM.glob(f"jack_{prefix}*")):
        match = pattern.match(path.name)
        if match is None or match.group(1) in running:
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path.name)
    # the per-user metadata database of jackd; only when no server is left at all
    db = SHM / f"jack_db-{uid}"
    if removed and db.is_dir() and not any(_alive(pid) for pid, _ in registry_servers()):
        shutil.rmtree(db, ignore_errors=True)
        removed.append(db.name)
    return removed


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


@contextlib.contextmanager
def client_process(args: list[str], server: str, stop_signal: int = signal.SIGINT) -> Iterator[subprocess.Popen]:
    """Run a JACK client program against `server`; stop it by PID when done."""
    proc = subprocess.Popen(args, env=jack_env(server), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        _stop(proc, stop_signal)


def jack_cmd(server: str, *args: str, input: str | None = None, timeout: float = 5.0) -> subprocess.CompletedProcess:
    """Run a JACK command-line tool (jack_lsp, jack_connect, ...) against `server`."""
    return subprocess.run(list(args), env=jack_env(server), input=input, capture_output=True,
                          text=True, timeout=timeout)


def ports(server: str, *filters: str) -> list[str]:
    res = jack_cmd(server, "jack_lsp", *filters)
    return [line.strip() for line in res.stdout.splitlines() if line.strip()] if res.returncode == 0 else []


def wait_until(condition, timeout: float = 3.0) -> bool:
    """Whether `condition()` came true within `timeout` seconds (polled): for what a JACK client
    or the daemon does on its own threads (clock runs, transport messages)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def wait_for_port(server: str, fragment: str, timeout: float = 5.0) -> str:
    """Full name of the first port containing `fragment`, waiting for it to appear."""
    deadline = time.monotonic() + timeout
    while True:
        found = [p for p in ports(server) if fragment in p]
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"no JACK port containing {fragment!r} (ports: {ports(server)})")
        time.sleep(0.05)


class JackServer(str):
    """The server name (a str), plus what jackd printed, time-stamped with time.monotonic().

    `xruns` lists the monotonic times of jackd's xrun reports: after an xrun the dummy driver
    re-anchors its cycle clock, so every later timestamp shifts (a phase jump).
    """

    process: subprocess.Popen
    lines: list[tuple[float, str]]

    @property
    def xruns(self) -> list[float]:
        return [t for t, line in list(self.lines) if "xrun" in line.lower()]

    def log(self) -> str:
        return "\n".join(line for _, line in list(self.lines))


def _start(name: str, rate: int, period: int) -> JackServer:
    server = JackServer(name)
    server.lines = []
    server.process = subprocess.Popen(
        ["jackd", "-n", name, "-d", "dummy", "-r", str(rate), "-p", str(period)],
        env=jack_env(name), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True)

    def read(stream=server.process.stdout, lines=server.lines) -> None:
        for raw in iter(stream.readline, b""):
            lines.append((time.monotonic(), raw.decode(errors="replace").rstrip()))
        stream.close()

    threading.Thread(target=read, name=f"jackd-log-{name}", daemon=True).start()
    return server


def _wait_ready(server: JackServer, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        with contextlib.suppress(subprocess.TimeoutExpired):
            if any(p.startswith("system:") for p in ports(server)):
                return True
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def jack_server(name: str | None = None, *, rate: int = 48000, period: int = 256,
                timeout: float = 10.0, set_environ: bool = True) -> Iterator[JackServer]:
    """Start `jackd -d dummy` under its own server name; yield the name; always clean up.

    The name is a `JackServer` (a str with jackd's time-stamped output and xrun times).
    With `set_environ`, JACK_DEFAULT_SERVER (and JACK_NO_START_SERVER) are set in this process
    while the server runs, for in-process clients such as python-rtmidi's JACK backend.
    """
    name = name or f"{PREFIX}{os.getpid()}-{next(_counter)}"
    clean_stale()
    server = None
    saved = {k: os.environ.get(k) for k in ("JACK_DEFAULT_SERVER", "JACK_NO_START_SERVER")}
    try:
        for attempt in range(2):
            server = _start(name, rate, period)
            if _wait_ready(server, timeout):
                break
            _stop(server.process)
            if attempt == 0 and clean_stale():
                continue              # stale slots of dead servers were in the way: once more
            time.sleep(0.1)           # let the reader thread collect the last lines
            raise RuntimeError(f"jackd -n {name} -d dummy did not start:\n{server.log()[-2000:]}")
        if set_environ:
            os.environ.update(JACK_DEFAULT_SERVER=name, JACK_NO_START_SERVER="1")
        yield server
    finally:
        if set_environ:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        if server is not None:
            _stop(server.process)
        clean_stale()
