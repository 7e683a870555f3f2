"""Compiling once per machine: the `--compile` step's first start vs later starts, and its speed.

Why (benchmarks/RESULTS.md, "Compiling once per machine"): the compiled CPU decode step is
kept in Inductor's FX graph cache under the user's cache folder (engine/compiled.py), so only
the first process on a machine compiles. This prints the first generation's time (compiling,
or loading from the cache) with the FX cache counters, then eager (oneDNN-packed weights) vs
the compiled step in alternating pairs, and the process's peak memory.

Run it twice with the same --cache: the second process should show `fxgraph_cache_hit` and a
first generation in seconds rather than minutes.
Usage: python benchmarks/compile_cache.py --cache DIR [--pairs 3] [--gen-frames 100] [--layers 24]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cache", type=Path, required=True, help="Inductor's cache folder (TORCHINDUCTOR_CACHE_DIR)")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--gen-frames", type=int, default=100)
    p.add_argument("--layers", type=int, default=24)
    args = p.parse_args()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(args.cache)  # a folder the user chose wins over ours
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from stage_bridge.cli import prefer_huge_pages

    prefer_huge_pages()  # as the CLI does, before torch loads
    import torch
    from torch._dynamo.utils import counters

    import stage_bridge.engine.lm as lm_mod
    from compiled_step import timed_run
    from stage_bridge.engine.decoder import COMPILED, Decoder

    torch.manual_seed(0)
    cfg = lm_mod.LMConfig(num_layers=args.layers, text_dim=1024)
    eager = lm_mod.StageLM(cfg).eval().requires_grad_(False)
    lm = lm_mod.StageLM(cfg).eval().requires_grad_(False)
    lm.load_state_dict(eager.state_dict())
    compiled = Decoder(lm, COMPILED)
    eager.pack_for_cpu()
    eager_decoder = Decoder(eager)
    context = torch.randint(0, cfg.card, (cfg.num_codebooks, 500))
    t = time.perf_counter()
    timed_run(compiled, context, None, 8)
    print(f"first compiled generation (compiling, or loading from the cache): {time.perf_counter() - t:.1f} s; "
          f"{ {k: v for k, v in counters['inductor'].items() if 'fxgraph' in k} }", flush=True)
    timed_run(eager_decoder, context, None, 8)
    ratios = []
    for _ in range(args.pairs):
        e = timed_run(eager_decoder, context, None, args.gen_frames)
        c = timed_run(compiled, context, None, args.gen_frames)
        ratios.append(e / c)
        print(f"eager {e:.2f} ms/step, compiled {c:.2f} ms/step, eager/compiled {e / c:.2f}", flush=True)
    if ratios:
        print(f"median eager/compiled: {statistics.median(ratios):.2f} (> 1: compiled is faster)")
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(f"peak resident memory of this process (both decoders): {peak_gb:.2f} GB")


if __name__ == "__main__":
    main()
