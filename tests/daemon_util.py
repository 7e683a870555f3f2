"""Driving the real daemon from tests: a subprocess daemon plus independent OSC peers.

- `Daemon` / `run_daemon(...)`: `python -m stage_bridge.cli serve ...` as a subprocess on free UDP
  ports, ready when it prints `stage-bridge ready:` on stderr, stopped with SIGTERM (must exit 0).
- `OscDump`: liblo's `oscdump -L PORT` as a subprocess; its lines parsed into `OscMsg`s.
- `oscsend(...)`: liblo's `oscsend` CLI.

The OSC peers are liblo's programs, not python-osc (which the daemon itself uses), so the tests
check the wire format against a second implementation.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from conftest import require_tool

REPO = Path(__file__).resolve().parents[1]
READY = "stage-bridge ready:"
READY_TIMEOUT = 90.0  # importing torch + building the tiny model on a loaded 2-core machine


def unique_id(prefix: str) -> str:
    """A job id / token no other test uses (job ids: letters, digits, '.', '_', '-')."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- oscsend -------------------------------------------------------------------------------------

def oscsend(host: str, port: int, address: str, types: str = "", *args: Any) -> None:
    """`oscsend HOST PORT ADDRESS TYPES ARGS...`: `types` is the OSC type tag string without the
    comma (e.g. "sssi"); one arg per tag (T, F, N take none)."""
    exe = require_tool("oscsend")
    cmd = [exe, host, str(port), address]
    if types:
        cmd += [types, *(str(a) for a in args)]
    elif args:
        raise ValueError("args given without type tags")
    subprocess.run(cmd, check=True, timeout=10, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


# -- oscdump -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OscMsg:
    address: str
    types: str
    args: tuple[Any, ...]


def parse_oscdump_line(line: str) -> OscMsg | None:
    """`<timetag> <address> <types> <args...>` as liblo 0.31's oscdump prints it.

    Strings are printed in double quotes without escaping, so a string argument ends at the
    first `"` after which the rest of the line still parses for the remaining types (backtracking).
    """
    line = line.rstrip("\n")
    parts = line.split(" ", 3)
    if len(parts) < 2 or not parts[1].startswith("/"):
        return None
    if len(parts) == 2:
        return OscMsg(parts[1], "", ())
    address, types = parts[1], parts[2]
    if types == "":  # no arguments: "<tt> /addr " (trailing space)
        return OscMsg(address, "", ())
    rest = parts[3] if len(parts) > 3 else ""
    args = _parse_args(types, rest)
    if args is None:
        raise ValueError(f"cannot parse oscdump line {line!r}")
    return OscMsg(address, types, tuple(args))


def _parse_args(types: str, text: str) -> list[Any] | None:
    if not types:
        return [] if text == "" else None
    t, more = types[0], types[1:]
    if t in "sS":
        if not text.startswith('"'):
            return None
        pos = 1
        while (end := text.find('"', pos)) != -1:
            after = text[end + 1:]
            if (not more and after == "") or (more and after.startswith(" ")):
                tail = _parse_args(more, after[1:] if more else "")
                if tail is not None:
                    return [text[1:end], *tail]
            pos = end + 1
        return None
    if t in "TFN":  # printed as a bare letter/word
        token, _, after = text.partition(" ")
        tail = _parse_args(more, after)
        return None if tail is None else [{"T": True, "F": False, "N": None}[t], *tail]
    token, sep, after = text.partition(" ")
    if bool(more) != bool(sep):
        return None
    try:
        value: Any = int(token) if t in "ih" else float(token) if t in "fd" else token
    except ValueError:
        return None
    tail = _parse_args(more, after)
    return None if tail is None else [value, *tail]


class _PortTaken(RuntimeError):
    pass


class OscDump:
    """Run `oscdump -L PORT` and collect every message it prints (thread-safe)."""

    PROBE = "/oscdump/probe"

    def __init__(self, port: int | None = None, host: str = "127.0.0.1"):
        self.exe = require_tool("oscdump")
        self.host = host
        self._fixed_port = port is not None
        self.port = port or free_udp_port()
        self.messages: list[OscMsg] = []
        self.raw: list[str] = []
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0, attempts: int = 3) -> "OscDump":
        for attempt in range(attempts):
            try:
                return self._start(timeout)
            except _PortTaken:
                if self._fixed_port or attempt == attempts - 1:
                    raise
                self.port = free_udp_port()  # another program took it between our check and oscdump's bind
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> "OscDump":
        self.messages, self.raw = [], []
        # -L: line-buffered stdout even though it is a pipe (otherwise output arrives in 4 KiB lumps)
        self._proc = subprocess.Popen([self.exe, "-L", str(self.port)], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace",
                                      bufsize=1)
        self._thread = threading.Thread(target=self._read, name=f"oscdump-{self.port}", daemon=True)
        self._thread.start()
        # liblo prints nothing when it is listening: probe until our own message comes back
        token = unique_id("probe")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._thread.join(2)
                raise _PortTaken(f"oscdump -L {self.port} exited with {self._proc.returncode}: " + "".join(self.raw))
            oscsend(self.host, self.port, self.PROBE, "s", token)
            try:
                self.wait_for(lambda m: m.address == self.PROBE and m.args == (token,), timeout=0.3)
                return self
            except TimeoutError:
                continue
        self.stop()
        raise TimeoutError(f"oscdump on port {self.port} did not receive its probe in {timeout} s")

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            with self._cond:
                self.raw.append(line)
                try:
                    msg = parse_oscdump_line(line)
                except ValueError:
                    msg = None
                if msg is not None:
                    self.messages.append(msg)
                self._cond.notify_all()

    def mark(self) -> int:
        """An index for `wait_for(..., since=mark)`: only messages that arrive after now."""
        with self._cond:
            return len(self.messages)

    def snapshot(self, since: int = 0) -> list[OscMsg]:
        with self._cond:
            return list(self.messages[since:])

    def wait_for(self, predicate: Callable[[OscMsg], bool], timeout: float = 10.0, since: int = 0) -> OscMsg:
        """The first message (from index `since`) matching `predicate`; TimeoutError if none comes."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages[since:]:
                    if predicate(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    recent = "\n".join(f"  {m}" for m in self.messages[-15:])
                    raise TimeoutError(f"no matching OSC message on port {self.port} within {timeout} s; "
                                       f"last received:\n{recent}")
                self._cond.wait(min(left, 0.5))

    def job(self, job_id: str) -> list[OscMsg]:
        """Every /stage/job/* message about `job_id`, in order of arrival."""
        return [m for m in self.snapshot() if m.address.startswith("/stage/job/") and m.args[:1] == (job_id,)]

    def wait_job_end(self, job_id: str, timeout: float = 60.0, since: int = 0) -> OscMsg:
        """The job's last word: done, error or cancelled (the first one from index `since`)."""
        ends = ("/stage/job/done", "/stage/job/error", "/stage/job/cancelled")
        return self.wait_for(lambda m: m.address in ends and m.args[:1] == (job_id,), timeout, since)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> "OscDump":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# -- the daemon ----------------------------------------------------------------------------------

class Daemon:
    """`stage-bridge serve` in a subprocess (tiny-random model, CPU, no MIDI)."""

    def __init__(self, home: Path, reply_port: int, models: Sequence[str] = ("tiny-random",),
                 extra_args: Sequence[str] = (), env: dict[str, str] | None = None, watch: bool = False,
                 osc_port: int | None = None, midi: bool = False):
        self.home = Path(home)
        self.osc_host = "127.0.0.1"
        self.osc_port = osc_port or 0  # 0: the OS picks a free port; the ready line tells which
        self.reply_port = reply_port
        self.models = list(models)
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.watch = watch
        self.midi = midi
        self.log: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self._ready = threading.Event()
        self._lines = threading.Condition()
        self._terminated = False
        self._thread: threading.Thread | None = None

    @property
    def outbox(self) -> Path:
        return self.home / "outbox"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "stage_bridge.cli", "serve"]
        for m in self.models:
            cmd += ["--model", m]
        cmd += ["--device", "cpu", "--home", str(self.home), "--osc-port", str(self.osc_port),
                "--reply-port", str(self.reply_port), "--web-port", "0"]  # 0: no two test daemons fight over 9002
        if not self.midi:
            cmd.append("--no-midi")
        if not self.watch:
            cmd.append("--no-watch")
        return cmd + self.extra_args

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STAGE_BRIDGE_")}
        private = self.home.parent / f".{self.home.name}-env"
        env.update({
            "STAGE_BRIDGE_CONFIG": str(private / "no-config.toml"),  # never the user's config file
            "XDG_CONFIG_HOME": str(private / "config"), "XDG_DATA_HOME": str(private / "data"),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        })
        env.update(self.extra_env)
        return env

    def launch(self) -> "Daemon":
        """Start the process (returns at once; see `wait_ready`)."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.command(), cwd=REPO, env=self.environment(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8",
                                     errors="replace", bufsize=1)
        self._thread = threading.Thread(target=self._read, name="stage-bridge-log", daemon=True)
        self._thread.start()
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> "Daemon":
        """Until it prints the ready line; kills it and raises (with its log) if it dies or hangs."""
        assert self.proc is not None and self._thread is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.2):
            if self.proc.poll() is not None:
                self._thread.join(2)
                raise RuntimeError(f"the daemon exited with {self.proc.returncode} before it was ready:\n"
                                   + self.log_text())
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"the daemon was not ready within {timeout} s:\n" + self.log_text())
        return self

    def start(self, timeout: float = READY_TIMEOUT) -> "Daemon":
        return self.launch().wait_ready(timeout)

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:  # drained to the end so the pipe never fills up
            with self._lines:
                self.log.append(line)
                self._lines.notify_all()
            if line.startswith(READY):  # "stage-bridge ready: OSC 127.0.0.1:PORT, replies to ..."
                self.osc_port = int(line.split(",", 1)[0].rsplit(":", 1)[1])
                self._ready.set()

    def log_text(self) -> str:
        return "".join(self.log[-80:])

    def wait_log(self, predicate: Callable[[str], bool], timeout: float = 60.0, since: int = 0) -> str:
        """The first log line from index `since` on for which `predicate` holds (waits for it)."""
        with self._lines:
            if not self._lines.wait_for(lambda: any(predicate(x) for x in self.log[since:]), timeout):
                raise TimeoutError(f"no such log line within {timeout} s:\n" + self.log_text())
            return next(x for x in self.log[since:] if predicate(x))

    def send(self, address: str, types: str = "", *args: Any) -> None:
        oscsend(self.osc_host, self.osc_port, address, types, *args)

    def terminate(self) -> None:
        """One SIGTERM only: a second one may land while the interpreter shuts down, after Python has put
        the default handler back, and kill it with -15."""
        if self.proc is not None and self.proc.poll() is None and not self._terminated:
            self._terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status (0 for a clean stop)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._thread is not None:
            self._thread.join(5)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class Rig:
    """A running daemon and the oscdump that receives its replies."""

    daemon: Daemon
    dump: OscDump

    @property
    def home(self) -> Path:
        return self.daemon.home

    @property
    def outbox(self) -> Path:
        return self.daemon.outbox

    def send(self, address: str, types: str = "", *args: Any) -> None:
        self.daemon.send(address, types, *args)


@contextlib.contextmanager
def running_daemons(*specs: dict[str, Any]) -> Iterator[list[Rig]]:
    """One oscdump + daemon per spec (`Daemon` keyword arguments, `home` required), started in
    parallel (each start costs seconds of torch import). On exit all get SIGTERM together and each
    must exit 0."""
    require_tool("oscsend")
    require_tool("oscdump")
    with contextlib.ExitStack() as stack:
        dumps = [stack.enter_context(OscDump()) for _ in specs]
        daemons = [Daemon(reply_port=dump.port, **spec) for dump, spec in zip(dumps, specs)]
        try:
            for d in daemons:
                d.launch()
            for d in daemons:
                d.wait_ready()
        except BaseException:
            for d in daemons:
                d.kill()
            raise
        ok = False
        try:
            yield [Rig(d, dump) for d, dump in zip(daemons, dumps)]
            ok = True
        finally:
            for d in daemons:
                d.terminate()
            codes = [d.stop() for d in daemons]
        if ok:
            for d, rc in zip(daemons, codes):
                assert rc == 0, f"the daemon exited with {rc} after SIGTERM:\n{d.log_text()}"


@contextlib.contextmanager
def running_daemon(home: Path, **kwargs: Any) -> Iterator[Rig]:
    """`running_daemons` for a single daemon."""
    with running_daemons(dict(home=home, **kwargs)) as (rig,):
        yield rig
