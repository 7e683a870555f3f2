"""OSC responsiveness of the daemon, measured side by side in one run.

Starts `stage-bridge serve --model tiny-random` as a subprocess on free loopback ports, then:
1. ping round-trip (send /stage/ping, wait for /stage/pong) while idle: p50 / p99 / max;
2. the same while a long generation runs (the goal: p99 < 5 ms while busy);
3. trigger-to-file: from sending /stage/generate (click mode, 4 bars) to /stage/job/done, and
   until the WAV exists on disk.
Usage: python benchmarks/osc_latency.py [--pings 500] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from pythonosc.udp_client import SimpleUDPClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from osc_replies import OscReplies  # noqa: E402 - the daemon tests' reply recorder


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reply(address: str, job_or_token: str) -> Callable[[str, list[Any]], bool]:
    return lambda a, p: a == address and p[:1] == [job_or_token]


def percentiles(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    pick = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
    return {"p50_ms": 1e3 * statistics.median(xs), "p99_ms": 1e3 * pick(0.99), "max_ms": 1e3 * xs[-1]}


def ping_series(client: SimpleUDPClient, replies: OscReplies, n: int, tag: str) -> list[float]:
    out = []
    for i in range(n):
        token = f"{tag}{i}"
        t0 = time.monotonic()  # the recorder stamps arrivals on this clock
        client.send_message("/stage/ping", [token])
        t1, _, _ = replies.wait_timed(reply("/stage/pong", token), 5.0)
        out.append(t1 - t0)
        time.sleep(0.002)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pings", type=int, default=500)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="stage-bridge-bench-"))
    osc_port, replies = free_port(), OscReplies()
    reply_port = replies.port
    proc = subprocess.Popen([sys.executable, "-m", "stage_bridge.cli", "serve", "--model", "tiny-random", "--home",
                             str(home), "--osc-port", str(osc_port), "--reply-port", str(reply_port), "--no-midi",
                             "--no-watch", "--log-level", "WARNING"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for line in proc.stderr:
            if "stage-bridge ready" in line:
                break
        else:
            raise RuntimeError("the daemon did not start")
        client = SimpleUDPClient("127.0.0.1", osc_port)
        ping_series(client, replies, 20, "warm")
        idle = ping_series(client, replies, args.pings, "idle")

        client.send_message("/stage/generate", ["busy", "", "drums", 256, "bpm", 120.0, "context_mode", "click"])
        replies.wait(reply("/stage/job/progress", "busy"), 60)
        busy = ping_series(client, replies, args.pings, "busy")
        client.send_message("/stage/cancel", ["busy"])
        replies.wait(reply("/stage/job/cancelled", "busy"), 60)

        t0 = time.monotonic()
        client.send_message("/stage/generate", ["t2f", "", "drums", 4, "bpm", 120.0, "context_mode", "click"])
        t_done, _, paths = replies.wait_timed(reply("/stage/job/done", "t2f"), 120)
        t_file = t_done if Path(paths[1]).exists() else None
        result = {
            "idle": percentiles(idle), "busy": percentiles(busy),
            "trigger_to_done_s": t_done - t0, "file_exists_at_done": t_file is not None,
            "pings": args.pings, "model": "tiny-random", "cpus": os.cpu_count(),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        replies.close()
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"ping round-trip over loopback ({args.pings} pings each), ms")
    print(f"{'':8}{'p50':>8}{'p99':>8}{'max':>8}")
    for name in ("idle", "busy"):
        r = result[name]
        print(f"{name:8}{r['p50_ms']:8.2f}{r['p99_ms']:8.2f}{r['max_ms']:8.2f}")
    print(f"busy/idle p99 ratio: {result['busy']['p99_ms'] / result['idle']['p99_ms']:.1f}x (goal: busy p99 < 5 ms)")
    print(f"trigger-to-file (tiny-random, 4 bars, click): {result['trigger_to_done_s'] * 1e3:.0f} ms; "
          f"file on disk when done arrived: {result['file_exists_at_done']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
