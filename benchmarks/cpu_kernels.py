"""Our CPU decode kernels (engine/kernels.cpp) against PyTorch's, side by side in one process.

Each side is a musicgen-small-sized decoder (random weights) decoding with guidance from a
context of `--context` frames; per pair the sides alternate, and each reports the median ms
per step over its first `--steps` steps of a window:

  fused      our integer product + attention, each block one call (the default with kernels)
  per-op     our kernels, but each block run op by op from Python (`Block.plan` off)
  pytorch    PyTorch's kernels (FBGEMM int8 / `_weight_int4pack_mm_for_cpu`, eager attention,
             fp32 cache and heads): what runs where our kernels cannot be built

Usage: python benchmarks/cpu_kernels.py [--precision int8|int4] [--context 500] [--steps 63] [--pairs 3]
Prints the ratios pytorch/fused and per-op/fused per pair and their medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from stage_bridge.cli import prefer_huge_pages  # noqa: E402
from stage_bridge.engine import kernels, lm as lm_module  # noqa: E402
from stage_bridge.engine.decoder import Decoder  # noqa: E402
from stage_bridge.engine.generate import Windows, generate_codes  # noqa: E402
from stage_bridge.engine.lm import Block, LMConfig, StageLM  # noqa: E402
from stage_bridge.engine.sampling import SamplingParams  # noqa: E402
from stage_bridge.errors import Cancelled  # noqa: E402


def build(precision: str, ours: bool) -> Decoder:
    torch.manual_seed(0)
    lm = StageLM(LMConfig()).eval().requires_grad_(False)
    real = kernels.library
    if not ours:  # as on a machine without a compiler: PyTorch's kernels are chosen at construction
        kernels.library = lambda: None
    try:
        decoder = Decoder(lm, "eager", quantize=precision)
    finally:
        kernels.library = real
    lm.pack_for_cpu()
    return decoder


def ms_per_step(decoder: Decoder, context: torch.Tensor, steps: int, side: str) -> float:
    plan, step_kernels = Block.plan, lm_module.step_kernels
    if side == "per-op":
        Block.plan = lambda self: None
    if side == "pytorch":
        lm_module.step_kernels = lambda x, start: None
    stamps: list[float] = []
    frames = max(context.shape[-1], steps + 10)
    try:
        with torch.inference_mode():
            generate_codes(decoder, context, frames, takes=1, sampling=SamplingParams(), seed=1,
                           windows=Windows(frames, 0), progress=lambda d, t: stamps.append(time.perf_counter()),
                           should_cancel=lambda: len(stamps) > steps)
    except Cancelled:
        pass
    finally:
        Block.plan, lm_module.step_kernels = plan, step_kernels
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:])) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", choices=("int8", "int4"), default="int8")
    ap.add_argument("--context", type=int, default=500)
    ap.add_argument("--steps", type=int, default=63)
    ap.add_argument("--pairs", type=int, default=3)
    args = ap.parse_args()
    prefer_huge_pages()
    if kernels.library() is None:
        print(f"our kernels are not available here: {kernels.why_not()}", file=sys.stderr)
        return 2
    print(f"kernels: {kernels.library().kind}; {args.precision}, musicgen-small size, context {args.context} frames, "
          f"CFG, {torch.get_num_threads()} threads", flush=True)
    decoders = {"fused": build(args.precision, True), "pytorch": build(args.precision, False)}
    decoders["per-op"] = decoders["fused"]
    context = torch.randint(0, 2048, (4, args.context), generator=torch.Generator().manual_seed(1))
    for side, dec in decoders.items():  # warm-up
        ms_per_step(dec, context, 4, side)
    ratios: dict[str, list[float]] = {"pytorch": [], "per-op": []}
    for pair in range(args.pairs):
        got = {side: ms_per_step(dec, context, args.steps, side) for side, dec in decoders.items()}
        for side in ratios:
            ratios[side].append(got[side] / got["fused"])
        print(f"pair {pair + 1}: " + ", ".join(f"{side} {ms:.2f} ms/step" for side, ms in got.items())
              + f"; pytorch/fused {ratios['pytorch'][-1]:.2f}, per-op/fused {ratios['per-op'][-1]:.2f}", flush=True)
    print(f"median: pytorch/fused {statistics.median(ratios['pytorch']):.2f}x, "
          f"per-op/fused {statistics.median(ratios['per-op']):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
