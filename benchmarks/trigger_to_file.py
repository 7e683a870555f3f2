"""Trigger-to-file through the real daemon: OSC /stage/generate -> take published, split into parts.

Starts `stage-bridge serve` as a subprocess on free loopback ports (as osc_latency.py does), writes
a context WAV into the daemon's home (a folder it may read), then sends `/stage/generate` for it
`--runs` times (after one warm-up job) and times each from the send to `/stage/job/done`, the
WAV on disk. The parts come from the daemon itself: the take's sidecar (`timings`: encode_s,
prefill_s, generate_s, decode_s, total_s; engine/generate.py) and the runner's log line for the
job, which adds write_s (publishing the takes, after the sidecar was written):

  encode         context build + EnCodec encode                          encode_s
  prefill        prompt + one forward over the window + first sample     prefill_s
  decode         the remaining decode steps (and later windows)          generate_s - prefill_s
  codec decode   EnCodec decode + resampling + loudness matching         decode_s
  write          publishing the takes (.part, link, sidecar first)       write_s
  osc + queue    everything else from the send to `done`: OSC, journal, queue, context file read,
                 memory check, the reply                                 trigger_to_done - total_s - write_s

Models: `--size tiny` is the built-in tiny-random model; `--size small` a musicgen-small-sized
decoder (24 layers, d=1024) with the real 32 kHz EnCodec's shape, all weights random, saved once
as a native checkpoint under `--cache` and reused. Random weights: speed only, the audio is noise.

Usage: python benchmarks/trigger_to_file.py [--size tiny|small] [--bars 8] [--bpm 120]
       [--context-s 10] [--runs 3] [--device cpu|cuda] [--precision fp32] [--compile] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from osc_latency import OscReplies, free_port, reply
from pythonosc.udp_client import SimpleUDPClient

PARTS = ("encode", "prefill", "decode", "codec_decode", "write", "osc_queue")


def job_timings(line: str, job_id: str) -> dict[str, float]:
    """The timings in the runner's log line for `job_id` (`job ID: encode_s 0.120, ..., write_s 0.004`)."""
    text = line.split(f"job {job_id}: ", 1)[1]
    return {k: float(v) for k, v in re.findall(r"(\w+_s) ([0-9.]+)", text)}


def make_small_checkpoint(folder: Path) -> Path:
    """A musicgen-small-sized STAGE model with random weights, as a native checkpoint in `folder`
    (made once: ~1.5 GB): the decoder at musicgen-small's size, EnCodec at the real 32 kHz
    model's shape, and a one-layer T5 of t5-base's width (prompts are not benchmarked)."""
    import torch
    from transformers import T5Config, T5EncoderModel

    from stage_bridge.engine.checkpoints import NATIVE_CONFIG, NATIVE_WEIGHTS, Checkpoint, random_codec, save_native
    from stage_bridge.engine.codec import musicgen_codec_config
    from stage_bridge.engine.lm import LMConfig, StageLM

    if (folder / NATIVE_CONFIG).exists() and (folder / NATIVE_WEIGHTS).exists():
        return folder
    torch.manual_seed(0)
    cfg = LMConfig()
    lm = StageLM(cfg)
    codec_cfg = musicgen_codec_config()
    codec = random_codec(codec_cfg)
    text_cfg = T5Config(vocab_size=259, d_model=cfg.text_dim, d_kv=64, d_ff=256, num_layers=1, num_heads=4,
                        feed_forward_proj="relu", is_encoder_decoder=False)
    text = T5EncoderModel(text_cfg)
    ckpt = Checkpoint("musicgen-small-random", "native", cfg, lm.state_dict(), codec_cfg, codec.state_dict(), text_cfg,
                      text.state_dict(), None, is_random=True)
    save_native(ckpt, folder)
    return folder


def write_context(path: Path, seconds: float, bpm: float, sample_rate: int = 44100) -> Path:
    """A deterministic context: decaying noise bursts on the beats (drums-like), stereo."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    n = int(seconds * sample_rate)
    audio = 0.02 * rng.standard_normal((n, 2)).astype(np.float32)
    beat = int(60.0 / bpm * sample_rate)
    burst = (rng.standard_normal(4000) * np.exp(-np.arange(4000) / 600.0)).astype(np.float32)
    for start in range(0, n - len(burst), beat):
        audio[start:start + len(burst)] += 0.5 * burst[:, None]
    sf.write(path, audio, sample_rate, subtype="PCM_16")
    return path


class Daemon:
    """`stage-bridge serve` as a subprocess; its stderr is drained by a thread into `lines`."""

    def __init__(self, model: str, home: Path, osc_port: int, reply_port: int, device: str, precision: str,
                 compile: bool):
        cmd = [sys.executable, "-m", "stage_bridge.cli", "serve", "--model", model, "--home", str(home),
               "--osc-port", str(osc_port), "--reply-port", str(reply_port), "--no-midi", "--no-watch",
               "--log-level", "INFO", "--device", device, "--precision", precision] + (["--compile"] if compile else [])
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.proc.stderr:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, pattern: re.Pattern[str] | str, timeout: float) -> re.Match[str]:
        """The first stderr line matching `pattern` (waiting up to `timeout` s for it)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self.changed:
            while True:
                for line in self.lines[seen:]:
                    m = rx.search(line)
                    if m:
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and seen == len(self.lines):
                    tail = "\n".join(self.lines[-15:])
                    raise RuntimeError(f"the daemon printed no line matching {rx.pattern!r}; its last lines:\n{tail}")
                self.changed.wait(min(left, 1.0))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_job(client: SimpleUDPClient, replies: OscReplies, daemon: Daemon, job_id: str, context: Path, bars: int,
            bpm: float, timeout: float) -> dict:
    """Send one job; time it to `done` and split it with the daemon's own timings."""
    t0 = time.monotonic()  # the recorder stamps arrivals on this clock
    client.send_message("/stage/generate", [job_id, str(context), "drums", bars, "bpm", bpm])
    t_done, _, params = replies.wait_timed(reply("/stage/job/done", job_id), timeout, what=f"done {job_id}")
    wav = Path(params[1])
    if not wav.is_file():
        raise RuntimeError(f"{job_id}: done arrived before {wav} was on disk")
    sidecar = json.loads(wav.with_suffix(".json").read_text())["timings"]
    logged = job_timings(daemon.wait_for(rf"job {re.escape(job_id)}: \w+_s ", timeout=30).string, job_id)
    total = t_done - t0
    parts = {"encode": sidecar["encode_s"], "prefill": sidecar["prefill_s"],
             "decode": sidecar["generate_s"] - sidecar["prefill_s"], "codec_decode": sidecar["decode_s"],
             "write": logged["write_s"]}
    parts["osc_queue"] = total - sidecar["total_s"] - logged["write_s"]
    return {"job_id": job_id, "trigger_to_file_s": total, "parts_s": parts, "sidecar_timings": sidecar,
            "file": str(wav)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=("tiny", "small"), default="tiny")
    ap.add_argument("--bars", type=int, default=8)
    ap.add_argument("--bpm", type=float, default=120.0)
    ap.add_argument("--context-s", type=float, default=10.0, help="seconds of context audio")
    ap.add_argument("--runs", type=int, default=3, help="timed jobs after one warm-up job (median reported)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--compile", action="store_true", help="serve --compile (CPU fp32)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "stage-bridge-bench-small",
                    help="where --size small keeps its random checkpoint (made once)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for one job")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    model = "tiny-random" if args.size == "tiny" else str(make_small_checkpoint(args.cache))
    home = Path(tempfile.mkdtemp(prefix="stage-bridge-t2f-"))
    context = write_context(home / "context.wav", args.context_s, args.bpm)
    osc_port, replies = free_port(), OscReplies()
    reply_port = replies.port
    daemon = Daemon(model, home, osc_port, reply_port, args.device, args.precision, args.compile)
    t_start = time.perf_counter()
    try:
        daemon.wait_for("stage-bridge ready", timeout=args.timeout)
        ready_s = time.perf_counter() - t_start
        client = SimpleUDPClient("127.0.0.1", osc_port)
        warm = run_job(client, replies, daemon, "t2f-warm", context, args.bars, args.bpm, args.timeout)
        runs = [run_job(client, replies, daemon, f"t2f-{i}", context, args.bars, args.bpm, args.timeout)
                for i in range(args.runs)]
    finally:
        daemon.stop()
        replies.close()
    med = {p: statistics.median(r["parts_s"][p] for r in runs) for p in PARTS}
    result = {"size": args.size, "model": model, "device": args.device, "precision": args.precision,
              "compile": args.compile, "bars": args.bars, "bpm": args.bpm, "context_s": args.context_s,
              "daemon_ready_s": ready_s, "warmup": warm,
              "trigger_to_file_s": statistics.median(r["trigger_to_file_s"] for r in runs),
              "parts_s": med, "runs": runs, "cpus": os.cpu_count(),
              "loadavg_1min_at_end": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"trigger-to-file through the daemon: {args.size} (random weights), {args.device} {args.precision}"
          f"{' compiled' if args.compile else ''}, {args.bars} bars at {args.bpm:g} bpm, {args.context_s:g} s context; "
          f"daemon ready after {ready_s:.1f} s; median of {args.runs} after one warm-up "
          f"({warm['trigger_to_file_s']:.2f} s)")
    print("  ".join(f"{p} {med[p]:.3f}" for p in PARTS) + f"  =  {result['trigger_to_file_s']:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
