"""An OSC reply port for tests and benchmarks: every message the daemon sends, recorded with its
arrival time by a thread, and waited on by predicate (no sleeps, no polling in the caller).

One recorder for the daemon tests and the daemon benchmarks (benchmarks/ put tests/ on their
path for it); it imports nothing from pytest."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Callable

from pythonosc.osc_packet import OscPacket

Predicate = Callable[[str, list[Any]], bool]
UNPARSEABLE = "<unparseable>"  # the address recorded for a datagram that is not valid OSC


class OscReplies:
    """A UDP socket on loopback (`port`); `messages` holds (monotonic time, address, params)."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)  # bursts of progress replies
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(0.1)
        self.port: int = self.sock.getsockname()[1]
        self.messages: list[tuple[float, str, list[Any]]] = []
        self.cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="osc-replies", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            now = time.monotonic()
            try:
                msgs = [(m.message.address, list(m.message.params)) for m in OscPacket(data).messages]
            except Exception:  # noqa: BLE001 - the daemon must only send valid OSC; tests look for this
                msgs = [(UNPARSEABLE, [data[:64]])]
            with self.cond:
                self.messages.extend((now, a, p) for a, p in msgs)
                self.cond.notify_all()

    def mark(self) -> int:
        """A position in `messages`: pass it as `since` to look only at later replies."""
        with self.cond:
            return len(self.messages)

    def find(self, pred: Predicate, since: int = 0) -> list[tuple[str, list[Any]]]:
        """Every (address, params) from `since` on that `pred` accepts."""
        with self.cond:
            return [(a, p) for _, a, p in self.messages[since:] if pred(a, p)]

    def wait_timed(self, pred: Predicate, timeout: float, since: int = 0,
                   what: str = "a reply") -> tuple[float, str, list[Any]]:
        """The first (arrival time, address, params) from `since` on that `pred` accepts, waiting
        up to `timeout` seconds for it; TimeoutError names `what` and the last replies."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for t, a, p in self.messages[since:]:
                    if pred(a, p):
                        return t, a, p
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = [(a, p) for _, a, p in self.messages[max(since, len(self.messages) - 8):]]
                    raise TimeoutError(f"no {what} within {timeout:.0f} s; last replies: {tail}")
                self.cond.wait(min(left, 0.2))

    def wait(self, pred: Predicate, timeout: float, since: int = 0, what: str = "a reply") -> tuple[str, list[Any]]:
        """`wait_timed` without the arrival time."""
        _, a, p = self.wait_timed(pred, timeout, since, what)
        return a, p

    def next(self, since: int, timeout: float) -> tuple[str, list[Any]]:
        """The reply at position `since` (e.g. the first after `mark()`), waiting for it: for a
        reader that must see every reply in order."""
        return self.wait(lambda a, p: True, timeout, since, what=f"reply number {since + 1}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
