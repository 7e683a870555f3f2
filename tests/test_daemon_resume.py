"""kill -9 right after the first take of a multi-take job appears, then a restart: the job ends
with exactly its takes, under their own names (issue 14, item 5: 7 files were left for a 3-take
job). A real daemon, a real SIGKILL, the outbox watched file by file (no sleeps)."""

from __future__ import annotations

import os
import time

import pytest

from daemon_util import Daemon, OscDump, unique_id
from stage_bridge.bridge import protocol as P

pytestmark = pytest.mark.slow  # two daemon starts and a kill -9

TAKES = 3


def wait_for_file(folder, name: str, timeout: float = 120.0) -> list[str]:
    """Poll the folder as fast as it can be listed until `name` is in it; returns the listing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = os.listdir(folder)
        if name in names:
            return names
    raise TimeoutError(f"{name} did not appear in {folder}; it holds {sorted(os.listdir(folder))}")


def test_kill_right_after_the_first_take_then_restart_gives_exactly_the_takes(tmp_path):
    home = tmp_path / "home"
    job = unique_id("resume")
    with OscDump() as dump:
        daemon = Daemon(home, dump.port).start()
        try:
            mark = dump.mark()
            daemon.send(P.GENERATE, "sssisfsiss", job, "", "drums", 8, "bpm", 120.0, "takes", TAKES,
                        "context_mode", "click")
            dump.wait_for(lambda m: m.address == P.ACCEPTED and m.args[0] == job, 30, since=mark)
            seen = wait_for_file(daemon.outbox, f"{job}.drums.120bpm.take1.wav")
            daemon.kill()  # SIGKILL: no handler runs
        finally:
            daemon.kill()
        left = sorted(n for n in os.listdir(daemon.outbox) if not n.startswith("."))

        restarted = Daemon(home, dump.port).start()
        try:
            end = dump.wait_job_end(job, 120, since=mark)
        finally:
            assert restarted.stop() == 0, restarted.log_text()
    assert end.address == P.DONE, end
    expected = [f"{job}.drums.120bpm.take{k}.{ext}" for k in range(1, TAKES + 1) for ext in ("json", "wav")]
    outbox = sorted(n for n in os.listdir(home / "outbox") if not n.startswith("."))
    assert outbox == sorted(expected), f"seen when killed: {sorted(seen)}; left: {left}"
    assert sorted(os.path.basename(p) for p in end.args[1:]) == [n for n in sorted(expected) if n.endswith(".wav")]
