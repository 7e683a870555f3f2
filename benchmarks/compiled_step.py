"""Eager vs compiled CPU decode (`--compile`), side by side in one process.

Two musicgen-small-sized decoders with the same random weights: the default eager one on
oneDNN-packed weights, and one whose decode step is compiled by TorchInductor
(engine/compiled.py). After one warm-up each (the compiled one compiles then; its time is
printed), they generate alternately, `--pairs` times, the benchmark's workload (500 context
frames, 250 generated, CFG, 8 text tokens); each pair gives a ratio, so a drift in the shared
machine's memory speed hits both sides of a pair alike. Prints ms/step per run and the median
ratio eager/compiled (> 1: compiled is faster).

Usage: python benchmarks/compiled_step.py [--pairs 3] [--gen-frames 250] [--layers 24]
"""

from __future__ import annotations

import argparse
import statistics
import time

from stage_bridge.cli import prefer_huge_pages

prefer_huge_pages()  # as the CLI does; it must run before torch is imported

import torch  # noqa: E402

from stage_bridge.engine.decoder import COMPILED, Decoder  # noqa: E402
from stage_bridge.engine.generate import Windows, generate_codes  # noqa: E402
from stage_bridge.engine.lm import LMConfig, StageLM  # noqa: E402
from stage_bridge.engine.sampling import SamplingParams  # noqa: E402
from stage_bridge.errors import Cancelled  # noqa: E402


def timed_run(decoder: Decoder, context: torch.Tensor, cross, gen_frames: int) -> float:
    """ms per sampled step over `gen_frames + 3` steps of one window holding the whole context."""
    steps = gen_frames + decoder.lm.cfg.num_codebooks - 1
    stamps: list[float] = []
    try:
        generate_codes(decoder, context, context.shape[-1], takes=1, sampling=SamplingParams(), seed=0, cross=cross,
                       windows=Windows(context.shape[-1], 0),
                       progress=lambda done, total: stamps.append(time.perf_counter()),
                       should_cancel=lambda: len(stamps) >= steps)
    except Cancelled:
        pass
    return 1000.0 * (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--context-frames", type=int, default=500)
    p.add_argument("--gen-frames", type=int, default=250)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--text-tokens", type=int, default=8)
    args = p.parse_args()
    torch.manual_seed(0)
    cfg = LMConfig(num_layers=args.layers, text_dim=1024)
    eager = StageLM(cfg).eval().requires_grad_(False)
    lm = StageLM(cfg).eval().requires_grad_(False)
    lm.load_state_dict(eager.state_dict())
    try:
        compiled = Decoder(lm, COMPILED)
    except ValueError as e:  # no C++ compiler: the message says what to install
        raise SystemExit(str(e)) from None
    packed = eager.pack_for_cpu()
    eager_decoder = Decoder(eager)
    context = torch.randint(0, cfg.card, (cfg.num_codebooks, args.context_frames))
    crosses = {}
    with torch.inference_mode():
        if args.text_tokens:
            text = torch.randn(2, args.text_tokens, cfg.text_dim)
            mask = torch.ones(2, args.text_tokens, dtype=torch.bool)
            crosses = {"eager": eager.cross_context(text, mask), "compiled": lm.cross_context(text, mask)}
    print(f"{args.layers} layers, {torch.get_num_threads()} threads, eager weights packed: {packed}")
    t = time.perf_counter()
    timed_run(eager_decoder, context, crosses.get("eager"), 8)
    print(f"warm-up eager: {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    timed_run(compiled, context, crosses.get("compiled"), 8)
    print(f"warm-up compiled (compiling the step): {time.perf_counter() - t:.1f} s")
    ratios = []
    for i in range(args.pairs):
        e = timed_run(eager_decoder, context, crosses.get("eager"), args.gen_frames)
        c = timed_run(compiled, context, crosses.get("compiled"), args.gen_frames)
        ratios.append(e / c)
        print(f"[{i + 1}/{args.pairs}] eager {e:.2f} ms/step, compiled {c:.2f} ms/step, eager/compiled {e / c:.2f}")
    print(f"median eager/compiled: {statistics.median(ratios):.2f} (> 1: compiled is faster)")


if __name__ == "__main__":
    main()
