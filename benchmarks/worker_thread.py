"""Decoding on a worker thread, with and without the main thread's OpenMP pool alive (pairs).

Why: the daemon decodes on its job worker thread. If the thread that loaded the model (the
main thread, before `daemon.on_own_thread`) keeps the OpenMP pool it made while packing the
weights, libgomp manages more threads than there are CPUs and stops spinning between parallel
regions, so every region of a decode step waits for sleeping threads (daemon.py says more).
A pool cannot be taken from a living thread, so each side runs in a child process of its own:
`main-pool` loads the model on the main thread, `no-main-pool` on a thread that ends; both then
decode on a new thread, as the daemon's worker does. The sides alternate, `--pairs` times, and
each pair gives a ratio (> 1: the main thread's pool slows the worker by that much).

Usage: python benchmarks/worker_thread.py [--pairs 3] [--precision int8] [--gen-frames 100] [--layers 24]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading

SIDES = ("main-pool", "no-main-pool")


def child(side: str, precision: str, gen_frames: int, layers: int) -> None:
    """One side: load, then decode on a new thread; prints {"ms_per_step": ...}."""
    from compiled_step import timed_run  # imports torch after asking for huge pages, as the CLI does

    import torch

    from stage_bridge.bridge.daemon import on_own_thread
    from stage_bridge.engine.decoder import Decoder
    from stage_bridge.engine.lm import LMConfig, StageLM

    def load() -> Decoder:
        torch.manual_seed(0)
        lm = StageLM(LMConfig(num_layers=layers)).eval().requires_grad_(False)
        decoder = Decoder(lm, quantize=None if precision == "fp32" else precision)
        lm.pack_for_cpu()  # as build_model does: what runs the main thread's parallel regions
        return decoder

    decoder = load() if side == "main-pool" else on_own_thread(load)
    context = torch.randint(0, 2048, (4, 500))
    ms: list[float] = []
    for _ in range(2):  # the first run warms up; the second is timed
        worker = threading.Thread(target=lambda: ms.append(timed_run(decoder, context, None, gen_frames)))
        worker.start()
        worker.join()
    print(json.dumps({"ms_per_step": ms[-1]}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--precision", default="int8", choices=("fp32", "int8", "int4"))
    p.add_argument("--gen-frames", type=int, default=100)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.precision, args.gen_frames, args.layers)
        return
    ratios = []
    for i in range(args.pairs):
        ms = {}
        for side in SIDES:
            out = subprocess.run([sys.executable, __file__, "--child", side, "--precision", args.precision,
                                  "--gen-frames", str(args.gen_frames), "--layers", str(args.layers)],
                                 check=True, capture_output=True, text=True).stdout
            ms[side] = json.loads(out.strip().splitlines()[-1])["ms_per_step"]
        ratios.append(ms["main-pool"] / ms["no-main-pool"])
        print(f"[{i + 1}/{args.pairs}] {args.precision}: main thread's pool alive {ms['main-pool']:.2f} ms/step, "
              f"gone {ms['no-main-pool']:.2f} ms/step, ratio {ratios[-1]:.2f}", flush=True)
    print(f"median ratio (main pool alive / gone): {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
