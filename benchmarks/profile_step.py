"""Where does one decode step's time go? (a development tool, not a comparison)

Builds a musicgen-small-sized StageLM with random weights, sets up a cache as in a real
generation (500 context + 250 target frames, CFG rows), then reports:
- the replay time of the CUDA-graphed step alone and of the eager step,
- the top kernels of one eager static-shape step (torch.profiler), by total device time.
Usage: python benchmarks/profile_step.py [--device cuda] [--dtype fp32|bf16]
"""

from __future__ import annotations

import argparse
import time

from stage_bridge.cli import prefer_huge_pages

prefer_huge_pages()  # as the CLI does; it must run before torch is imported

import torch  # noqa: E402

from stage_bridge.engine.lm import LMConfig, StageLM  # noqa: E402
from stage_bridge.engine.decoder import CUDA_GRAPH, EAGER, Decoder, StaticStep  # noqa: E402
from stage_bridge.engine.model import PRECISIONS  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="fp32", choices=list(PRECISIONS))
    p.add_argument("--steps", type=int, default=755)
    p.add_argument("--rows", type=int, default=2)
    args = p.parse_args()
    dtype = PRECISIONS[args.dtype]
    dev = torch.device(args.device)
    torch.manual_seed(0)
    lm = StageLM(LMConfig()).to(dev, dtype).eval()
    lm.pack_for_cpu()  # as build_model does for inference (CPU, fp32)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rows, n = args.rows, args.steps
    valid = torch.ones(rows, n, dtype=torch.bool, device=dev)
    tok = torch.randint(0, 2048, (rows, 4, 1), device=dev)
    pos = torch.full((rows, 1), n - 10, device=dev)
    with torch.inference_mode():
        text = torch.randn(rows, 8, 768, device=dev)
        cross = lm.cross_context(text, torch.ones(rows, 8, dtype=torch.bool, device=dev))
        results = {}
        for mode in (EAGER, CUDA_GRAPH):  # CUDA_GRAPH off CUDA: the same static-shape step, uncaptured
            decoder = Decoder(lm, mode)
            with decoder.generation(rows, n, cross):
                decoder.begin_window(valid)
                for _ in range(5):
                    decoder.step(tok, pos, n - 10)
                sync()
                t = time.perf_counter()
                for _ in range(50):
                    decoder.step(tok, pos, n - 10)
                sync()
            results[mode] = (time.perf_counter() - t) / 50 * 1e3
        print({k: f"{v:.3f} ms" for k, v in results.items()})
        lm.setup_cache(rows, n)
        static = StaticStep(lm, cross, rows, n, capture=False)
        static.begin_window(valid)
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with torch.profiler.profile(activities=acts) as prof:
            for _ in range(3):
                static(tok, pos, n - 10)
            sync()
        key = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=18))


if __name__ == "__main__":
    main()
