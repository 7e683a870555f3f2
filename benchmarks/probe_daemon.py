"""An adversarial probe of `stage-bridge serve`: does it stay whole under a long run, a flood of
inbox files and repeated kill -9? Repeatable, bounded in time, loopback only (issue 14).

Starts `stage-bridge serve --model tiny-random` (CPU, random weights: the audio is noise, the
plumbing is real) as a subprocess on free 127.0.0.1 ports, each part in a fresh home folder:
1. soak: N one-bar jobs one after another; the daemon's resident memory (RSS) and open file
   descriptors are sampled after every job (after a short warm-up, the growth should be ~0);
2. burst: M inbox files moved into `inbox/` at once (more than the queue holds): every one must
   end as a job with its take (queue_full refusals are retried by the watcher), none lost;
3. kill -9: jobs queued, the daemon killed at K random instants and restarted each time; at the
   end every take must be whole (readable, the right length) and paired with its sidecar (and no
   sidecar alone, no temp file); takes beyond what the jobs asked for are counted as duplicates.
Prints a summary (and one JSON object with --json). Linux reads RSS and fds from /proc; elsewhere
those figures are left out.

Usage: python benchmarks/probe_daemon.py [--soak 60] [--burst 100] [--kills 5] [--seed S] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from pythonosc.udp_client import SimpleUDPClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from osc_replies import OscReplies  # noqa: E402 - the daemon tests' reply recorder

READY = "stage-bridge ready: OSC "
START_TIMEOUT = 120.0
JOB_TIMEOUT = 120.0
ENDS = ("/stage/job/done", "/stage/job/error", "/stage/job/cancelled")
SR = 48000  # the daemon's output rate for click-only jobs


def last_words(replies: OscReplies) -> dict[str, tuple[str, list[Any]]]:
    """The last word about each job id."""
    return {p[0]: (a, p) for a, p in replies.find(lambda a, p: a in ENDS)}


class Daemon:
    def __init__(self, home: Path, replies: OscReplies, watch: bool = False):
        self.home, self.replies = home, replies
        home.mkdir(parents=True, exist_ok=True)
        private = home.parent / f".{home.name}-env"
        env = {k: v for k, v in os.environ.items() if not k.startswith("STAGE_BRIDGE_")}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
                   OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"), XDG_CONFIG_HOME=str(private / "config"),
                   STAGE_BRIDGE_CONFIG=str(private / "no-config.toml"),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
        cmd = [sys.executable, "-m", "stage_bridge.cli", "serve", "--model", "tiny-random", "--device", "cpu",
               "--home", str(home), "--osc-port", "0", "--reply-port", str(replies.port), "--no-midi"]
        if not watch:
            cmd.append("--no-watch")
        self.log_path = home.parent / f"{home.name}.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        self.client = self._wait_ready()

    def _wait_ready(self) -> SimpleUDPClient:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for line in self.log_path.read_text(errors="replace").splitlines()[::-1]:
                if line.startswith(READY):
                    port = int(line[len(READY):].split(",", 1)[0].rsplit(":", 1)[1])
                    return SimpleUDPClient("127.0.0.1", port)
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with {self.proc.returncode}; see {self.log_path}")
            time.sleep(0.1)
        self.kill()
        raise TimeoutError(f"the daemon was not ready in {START_TIMEOUT} s; see {self.log_path}")

    def generate(self, job_id: str, bars: int, takes: int = 1) -> None:
        self.client.send_message("/stage/generate", [job_id, "", "drums", bars, "bpm", 120.0, "takes", takes,
                                                     "context_mode", "click"])

    def usage(self) -> tuple[int | None, int | None]:
        """(RSS in bytes, open fds) of the daemon, from /proc (None elsewhere)."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
            rss = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) * 1024
            return rss, len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        except (OSError, StopIteration, ValueError):
            return None, None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._log.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        finally:
            self._log.close()


def soak(base: Path, jobs: int, warmup: int = 5) -> dict[str, Any]:
    replies = OscReplies()
    d = Daemon(base / "soak", replies)
    samples: list[tuple[int | None, int | None]] = []
    t0 = time.monotonic()
    try:
        for i in range(jobs):
            job_id = f"soak-{i}"
            d.generate(job_id, 1)
            a, p = replies.wait(lambda a, p, j=job_id: a in ENDS and p[:1] == [j], JOB_TIMEOUT, what=f"end of {job_id}")
            if a != "/stage/job/done":
                raise RuntimeError(f"{job_id}: {a} {p}")
            samples.append(d.usage())
        elapsed = time.monotonic() - t0
    finally:
        rc = d.stop()
        replies.close()
    rss = [r for r, _ in samples if r is not None]
    fds = [f for _, f in samples if f is not None]
    after = rss[min(warmup, len(rss) - 1):] if rss else []
    return {"jobs": jobs, "seconds": round(elapsed, 1), "exit_code": rc,
            "rss_mb_after_warmup": round(after[0] / 2**20, 1) if after else None,
            "rss_mb_last": round(rss[-1] / 2**20, 1) if rss else None,
            "rss_growth_mb": round((after[-1] - after[0]) / 2**20, 2) if after else None,
            "fds_min": min(fds) if fds else None, "fds_max": max(fds) if fds else None}


def burst(base: Path, files: int) -> dict[str, Any]:
    home = base / "burst"
    staging = base / "burst-staging"
    staging.mkdir(parents=True)
    t = np.arange(2 * 32000) / 32000  # one bar at 120 bpm
    audio = (0.3 * np.sin(2 * np.pi * 110 * t)).astype(np.float32)
    for i in range(files):
        sf.write(staging / f"b{i:03d}.drums.wav", audio, 32000, subtype="PCM_16")
    replies = OscReplies()
    d = Daemon(home, replies, watch=True)
    ends: dict[str, tuple[str, list[Any]]] = {}
    try:
        d.client.send_message("/stage/tempo", [120.0])
        inbox = home / "inbox"
        t0 = time.monotonic()
        for f in sorted(staging.iterdir()):
            os.replace(f, inbox / f.name)  # each appears complete, all within milliseconds
        deadline = t0 + JOB_TIMEOUT + files * 5.0
        while time.monotonic() < deadline:
            ends = {k: v for k, v in last_words(replies).items() if k.startswith("inbox-")}
            if len(ends) >= files:
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - t0
    finally:
        rc = d.stop()
        replies.close()
    done = [k for k, (a, _) in ends.items() if a == "/stage/job/done"]
    takes = sorted((home / "outbox").glob("*.wav"))
    return {"files": files, "jobs_done": len(done), "jobs_failed": len(ends) - len(done), "takes": len(takes),
            "lost": files - len(ends), "seconds": round(elapsed, 1), "exit_code": rc}


def check_outbox(outbox: Path) -> dict[str, Any]:
    """Every take whole and paired with its sidecar; takes per job id."""
    problems, per_job = [], {}
    for wav in sorted(outbox.glob("*.wav")):
        meta = wav.with_suffix(".json")
        if not meta.exists():
            problems.append(f"{wav.name}: no sidecar")
            continue
        data = json.loads(meta.read_text())
        info = sf.info(str(wav))
        if data.get("file") != wav.name or info.frames != data.get("num_samples"):
            problems.append(f"{wav.name}: {info.frames} frames, sidecar says {data.get('num_samples')}")
        per_job.setdefault(data["job_id"], []).append(wav.name)
    for meta in outbox.glob("*.json"):
        if not meta.with_suffix(".wav").exists():
            problems.append(f"{meta.name}: a sidecar without its take")
    parts = [p.name for p in outbox.iterdir() if p.name.endswith(".part")]
    problems += [f"{p}: a temp file" for p in parts]
    return {"problems": problems, "per_job": per_job}


def journal_active(home: Path) -> int:
    db = sqlite3.connect(str(home / "jobs.sqlite3"), timeout=10)
    try:
        return db.execute("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')").fetchone()[0]
    finally:
        db.close()


def kills(base: Path, count: int, rng: random.Random) -> dict[str, Any]:
    home = base / "kill"
    jobs = {f"k{i}": 2 for i in range(4)}  # id -> takes
    bars = 16  # long enough that most kills land mid-job
    replies = OscReplies()
    delays: list[float] = []
    active: list[int] = []  # jobs the journal held queued or running at each kill
    try:
        d = Daemon(home, replies)
        for job_id, takes in jobs.items():
            d.generate(job_id, bars, takes)
        for _ in range(count):
            delay = round(rng.uniform(0.1, 3.0), 2)
            delays.append(delay)
            time.sleep(delay)  # the probe's random instant; nothing is judged by time
            d.kill()
            active.append(journal_active(home))
            d = Daemon(home, replies)
        deadline = time.monotonic() + JOB_TIMEOUT * len(jobs)
        while time.monotonic() < deadline and not set(jobs) <= set(last_words(replies)):
            time.sleep(0.2)
        rc = d.stop()
    finally:
        replies.close()
    report = check_outbox(home / "outbox")
    extra = {j: len(report["per_job"].get(j, [])) - n for j, n in jobs.items()}
    return {"kills": count, "delays_s": delays, "active_at_kill": active, "jobs": len(jobs),
            "takes_asked": sum(jobs.values()),
            "takes_found": sum(len(v) for v in report["per_job"].values()),
            "duplicates": sum(max(0, e) for e in extra.values()), "missing": sum(max(0, -e) for e in extra.values()),
            "broken": report["problems"], "exit_code": rc}


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "os": platform.platform(), "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--soak", type=int, default=60, help="jobs in the soak (0: skip)")
    ap.add_argument("--burst", type=int, default=100, help="inbox files at once (0: skip)")
    ap.add_argument("--kills", type=int, default=5, help="kill -9 and restart this many times (0: skip)")
    ap.add_argument("--seed", type=int, default=None, help="seed of the kill instants (printed)")
    ap.add_argument("--keep", action="store_true", help="keep the homes and logs (printed)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    base = Path(tempfile.mkdtemp(prefix="stage-probe-"))
    out: dict[str, Any] = {"machine": machine(), "seed": seed}
    t0 = time.monotonic()
    try:
        if args.soak:
            out["soak"] = soak(base, args.soak)
        if args.burst:
            out["burst"] = burst(base, args.burst)
        if args.kills:
            out["kill9"] = kills(base, args.kills, random.Random(seed))
    finally:
        out["seconds"] = round(time.monotonic() - t0, 1)
        if args.keep:
            out["kept"] = str(base)
        else:
            shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for part in ("machine", "soak", "burst", "kill9"):
            if part in out:
                print(f"{part}: " + ", ".join(f"{k}={v}" for k, v in out[part].items()))
        print(f"seed={seed}, {out['seconds']} s in all")
    ok = all(out.get(p, {}).get("exit_code", 0) == 0 for p in ("soak", "burst", "kill9")) \
        and out.get("burst", {}).get("lost", 0) == 0 and not out.get("kill9", {}).get("broken")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
