"""The CPU decode step compiled by TorchInductor (opt-in: `--compile`).

Why: an eager decode step of the 24-layer decoder is ~900 small ops, each a Python call and a
trip through memory, between 148 weight products. Inductor fuses everything between the products
(norms, residuals, GELU, the whole single-query attention over the KV cache) into a few C++
loops, and packs the frozen weights for its own small-row GEMM kernels. Measured on a 2-core
AMD EPYC (fp32, musicgen-small size): 1.09-1.42x faster per step (median 1.16x) than the eager
step on oneDNN-packed weights, and 1.07-1.33x the memory floor (benchmarks/RESULTS.md).

What it costs, and why it is not the default:
- a C++ compiler on the machine (Inductor writes and builds C++); `compile_problem` says when
  there is none;
- compiling: ~1-2 minutes on 2 cores, once per process for each kind of step (number of rows,
  i.e. takes with guidance; with or without a text prompt). Later generations of that kind reuse
  it; lengths (context, bars, prompt tokens) are symbolic, so they do not recompile;
- memory: Inductor keeps its own packed copy of the weights next to the model's, and the KV
  cache stays allocated between generations (musicgen-small, fp32: 2.1 GB resident before
  compiling, 4.3 GB after, 5.5 GB at the peak while compiling; measured);
- no reuse across processes (torch 2.13): freezing's weight-pack pass replaces every linear's
  weight by a packed constant held as an mkldnn-layout tensor (MKL's packed format for these
  static-row products), and Inductor's FX graph cache refuses any graph holding one ("mkldnn
  tensors unpickleable", counter `fxgraph_cache_bypass`). Turning the packing off
  (`cpp.weight_prepack=False`) makes the graph cacheable but also turns off the CPP GEMM
  template (Inductor only offers it with packing on): the ~3x slower products. So every start
  compiles. Measured to be reusable and about as fast: packing off with the products traced as
  `weight @ x.T` (benchmarks/compile_cache.py; needs a one-line change in `lm.linear`). The
  other way is AOTInductor, which needs the step to take the KV caches as inputs so that the
  eager prefill and the packaged step share them (benchmarks/RESULTS.md).
So it pays off in the resident daemon and in long sessions, not in a one-off CLI call. The
eager path (oneDNN-packed weights) stays the default.

Prefill stays eager on the model's plain weights (`linear` runs them through oneDNN, as fast as
packed for hundreds of rows). The KV caches are kept between generations at one capacity (a
full window), so their shape never changes and never causes a recompile.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from .lm import CrossContext, StageLM
from .pattern import StageLayout

# freezing: weights become constants, so Inductor may pack them; max_autotune with the CPP
# backend: its small-row GEMM kernels (measured 7x faster than MKL's packed linear for 2 rows).
INDUCTOR_OPTIONS = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}

log = logging.getLogger("stage_bridge.engine.compiled")


def compile_problem(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why a decode step on `device` in `dtype` cannot be compiled here, or None when it can."""
    if device.type != "cpu":
        return f"--compile is for the CPU; on {device.type} the decode step runs as a CUDA graph or eager."
    if dtype != torch.float32:
        return "--compile needs --precision fp32 on the CPU."
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
        get_cpp_compiler()
    except Exception:  # noqa: BLE001 - any failure here means the same thing to the user
        return ("--compile needs a C++ compiler (gcc or clang; on macOS the Xcode command line tools, "
                "on Windows Visual Studio's C++ build tools). Install one or run without --compile.")
    return None


class _DecodeStep(nn.Module):
    """One single-token step, all shapes from the arguments (what Dynamo traces)."""

    def __init__(self, lm: StageLM):
        super().__init__()
        self.lm = lm

    def forward(self, tokens: Tensor, positions: Tensor, key_valid: Tensor,
                cross_kv: list[tuple[Tensor, Tensor]] | None, cross_bias: Tensor | None) -> Tensor:
        start = key_valid.shape[-1] - 1
        return self.lm(tokens, positions, key_valid, start, CrossContext(cross_kv, cross_bias))[:, :, -1]


class CompiledDecoder:
    """Runs `lm`'s single-token decode steps through one `torch.compile`d module.

    `lm` must hold plain fp32 CPU weights (build the model with `compile=True`) and must not be
    changed afterwards: Inductor has frozen a copy of its weights.
    """

    def __init__(self, lm: StageLM, window_frames: int = 500):
        if any(p.is_mkldnn for p in lm.parameters()):
            raise ValueError("the decoder's weights are packed for the eager CPU path; build the model with compile=True.")
        problem = compile_problem(lm.heads[0].weight.device, lm.heads[0].weight.dtype)
        if problem is not None:
            raise ValueError(problem)
        self.lm = lm
        self.capacity = StageLayout(window_frames, window_frames, lm.cfg.num_codebooks).num_steps
        self._step = torch.compile(_DecodeStep(lm).eval())
        self._eager = _DecodeStep(lm)
        self.failed: str | None = None  # why compiling failed; steps then run eager

    def prepare(self, rows: int, max_steps: int) -> None:
        """Give `lm` KV caches for `rows` rows, reusing the current ones when they fit: a cache of
        a new shape would make Dynamo recompile the step."""
        cache = self.lm.layers[0].self_attn.cache
        if cache is None or cache.k.shape[0] != rows or cache.k.shape[2] < max_steps:
            self.lm.setup_cache(rows, max(max_steps, self.capacity))

    @staticmethod
    def mark_prompt_length_dynamic(cross: CrossContext | None) -> None:
        """Once per generation: the prompt's token count is symbolic in the compiled step, so a
        prompt of another length does not recompile (the same tensors serve every step)."""
        if cross is not None and cross.kv is not None:
            for k, v in cross.kv:
                torch._dynamo.mark_dynamic(k, 2)
                torch._dynamo.mark_dynamic(v, 2)
            torch._dynamo.mark_dynamic(cross.bias, 3)

    def __call__(self, tokens: Tensor, positions: Tensor, key_valid: Tensor, cross: CrossContext | None) -> Tensor:
        """tokens (B, K, 1), positions (B, 1), key_valid (B, step + 1) -> logits (B, K, V).
        `cross` must have passed through `mark_prompt_length_dynamic` for this generation."""
        # Slices of the window's sequence have strides that depend on its length; Dynamo guards
        # on strides, so pass compact copies (a few bytes) and the step as a symbolic size.
        tokens, positions, key_valid = tokens.contiguous(), positions.contiguous(), key_valid.contiguous()
        torch._dynamo.mark_dynamic(key_valid, 1)
        kv = cross.kv if cross is not None else None
        bias = cross.bias if cross is not None else None
        if self.failed is None:
            try:
                with torch._inductor.config.patch(INDUCTOR_OPTIONS):
                    return self._step(tokens, positions, key_valid, kv, bias)
            except Exception as e:  # noqa: BLE001 - a toolchain that fails must not fail the music
                # A step that failed to compile (a compiler that cannot build Inductor's C++, a
                # missing OpenMP) runs eager from now on; the same step eager shows a real bug.
                self.failed = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
                log.warning("compiling the decode step failed (%s); decoding without --compile", self.failed)
        return self._eager(tokens, positions, key_valid, kv, bias)
