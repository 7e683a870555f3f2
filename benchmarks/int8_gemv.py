"""Which int8 weight product streams fastest for a decode step's 2 rows (issue 15, goal 1)?

Why: with `--precision int8` a CPU decode step is bound by reading the int8 weights (and the KV
cache). This measures, side by side in one process on the same weights, alternating, the
effective weight-read rate of: FBGEMM's dynamic quantized linear (what `engine/quant.py` runs),
an Inductor-compiled product that dequantizes inside a reduction (`(x * w.float()).sum(-1) * s`,
the fused kernel a compiled int8 step would get), the same compiled as `w.float() @ x.T`, and
the fp32 product for reference. 24 distinct 4096x1024 matrices, so they stream from memory.

Usage: python benchmarks/int8_gemv.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

N, K, M = 4096, 1024, 24  # musicgen-small's feed-forward shape; 24 matrices ~ one per layer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    torch.manual_seed(0)
    ws = [torch.randn(N, K) for _ in range(M)]
    x = torch.randn(2, K)
    scales = [w.abs().amax(1) / 127 for w in ws]
    q = [torch.round(w / s[:, None]).to(torch.int8) for w, s in zip(ws, scales)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors are deprecated upstream, FBGEMM still runs them
        packed = [torch.ops.quantized.linear_prepack(
            torch.quantize_per_channel(w, s, torch.zeros(N, dtype=torch.long), 0, torch.qint8), None)
            for w, s in zip(ws, scales)]
    reduce_ = torch.compile(lambda x, w, s: (x[:, None, :] * w[None].to(torch.float32)).sum(-1) * s, dynamic=False)
    matmul = torch.compile(lambda x, w, s: torch.mm(w.to(torch.float32), x.t()).t() * s, dynamic=False)
    forms = {
        "fbgemm linear_dynamic (int8)": (lambda: [torch.ops.quantized.linear_dynamic(x, p, True) for p in packed], 1),
        "inductor dequant+reduce (int8)": (lambda: [reduce_(x, w, s) for w, s in zip(q, scales)], 1),
        "inductor dequant+mm (int8)": (lambda: [matmul(x, w, s) for w, s in zip(q, scales)], 1),
        "fp32 weight @ x.T": (lambda: [torch.mm(w, x.t()) for w in ws], 4),
    }
    for run, _ in forms.values():
        run()  # compile / warm
    times: dict[str, list[float]] = {name: [] for name in forms}
    for _ in range(args.rounds):
        for name, (run, _) in forms.items():
            t = time.perf_counter()
            for _ in range(5):
                run()
            times[name].append((time.perf_counter() - t) / 5)
    print(f"{M} matrices {N}x{K}, 2 rows, {torch.get_num_threads()} threads; median of {args.rounds} rounds")
    for name, (_, bytes_per_weight) in forms.items():
        m = statistics.median(times[name])
        print(f"{name:34s} {m * 1e3:7.2f} ms  {N * K * M * bytes_per_weight / m / 1e9:5.1f} GB/s of weights read")


if __name__ == "__main__":
    main()
