"""Experiment: a compiled CPU decode step that Inductor's FX graph cache can reuse across processes.

Why (benchmarks/RESULTS.md, "Compiling once per machine"): the `--compile` step never hits the
FX graph cache because freezing packs every weight into an mkldnn-layout constant, which the
cache refuses. Here packing is off (`TORCHINDUCTOR_CPP_WEIGHT_PREPACK=0`: cacheable) and the
products are traced as `weight @ x.T` (the fast unpacked order of `lm.linear`; the product's
compiled step traces `F.linear`), patched in from outside for this experiment only. Prints the
first generation's time (compiling, or loading from the cache) with the FX cache counters, then
eager (oneDNN-packed weights) vs this compiled step in alternating pairs.

Run it twice with the same --cache: the second process should show `fxgraph_cache_hit`.
Usage: python benchmarks/compile_cache.py --cache DIR [--pairs 3] [--gen-frames 100] [--layers 24]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ["TORCHINDUCTOR_CPP_WEIGHT_PREPACK"] = "0"  # read when Inductor's config loads


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cache", type=Path, required=True, help="Inductor's cache folder (TORCHINDUCTOR_CACHE_DIR)")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--gen-frames", type=int, default=100)
    p.add_argument("--layers", type=int, default=24)
    args = p.parse_args()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(args.cache)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from stage_bridge.cli import prefer_huge_pages

    prefer_huge_pages()  # as the CLI does, before torch loads
    import torch
    from torch._dynamo.utils import counters

    import stage_bridge.engine.lm as lm_mod
    from compiled_step import timed_run
    from stage_bridge.engine.decoder import COMPILED, Decoder

    plain_linear = lm_mod.linear

    def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            flat = x.reshape(-1, x.shape[-1])
            return torch.mm(weight, flat.t()).t().reshape(*x.shape[:-1], weight.shape[0])
        return plain_linear(x, weight)

    lm_mod.linear = linear  # this experiment only
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
        print(f"eager {e:.2f} ms/step, compiled (cacheable) {c:.2f} ms/step, eager/compiled {e / c:.2f}", flush=True)
    if ratios:
        print(f"median eager/compiled: {statistics.median(ratios):.2f} (> 1: compiled is faster)")


if __name__ == "__main__":
    main()
