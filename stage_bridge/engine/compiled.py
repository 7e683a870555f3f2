"""The CPU decode step compiled by TorchInductor (opt-in: `--compile`).

Why: an eager decode step of the 24-layer decoder is ~900 small ops, each a Python call and a
trip through memory, between 148 weight products. Inductor fuses everything between the products
(norms, residuals, GELU, the whole single-query attention over the KV cache) into a few C++
loops.

Compiled once per machine, not once per process: Inductor keeps what it built in its FX graph
cache, here under the user's cache folder (`inductor_cache_dir`), and a later process that traces
the same step loads it instead of compiling (measured on a 2-core AMD EPYC, musicgen-small size:
the first process's first generation takes 52-106 s, a later process's 21-30 s, which is Dynamo's
tracing and freezing; the cache folder holds ~3 MB, frozen weights are not stored). For that the
graph must hold no oneDNN-packed constants, which the cache refuses ("mkldnn tensors
unpickleable"): Inductor's weight packing is off (`cpp.weight_prepack`), and the small-row
products are traced as `weight @ x.T` (`lm.linear`), the order that streams the plain weights
fast. That step measured 0.94-1.29x the eager step's speed on oneDNN-packed weights (medians
1.07-1.18x; the packed, uncacheable compiled step: median 1.16x).

What it costs, and why it is not the default (benchmarks/RESULTS.md):
- a C++ compiler on the machine (Inductor writes and builds C++); `compile_problem` says when
  there is none;
- the first start on a machine compiles for 1-2 minutes on 2 cores (for each kind of step:
  number of rows, i.e. takes with guidance; with or without a text prompt), later starts ~21-30 s
  of tracing, where eager answers at once, for ~1.1x per step. Lengths (context, bars, prompt
  tokens) are symbolic, so they do not recompile. A new PyTorch or a changed model recompiles
  (the cache key holds the torch version and the generated code);
- memory: the KV cache stays allocated between generations.
So it pays off in the resident daemon and in long sessions, not in a one-off CLI call. The
eager path (oneDNN-packed weights) stays the default.

Prefill stays eager on the model's plain weights (`linear` runs them through oneDNN, as fast as
packed for hundreds of rows). The KV caches are kept between generations at one capacity (a
full window), so their shape never changes and never causes a recompile.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from ..paths import user_cache_dir
from .lm import CrossContext, StageLM
from .pattern import StageLayout

# freezing: weights become constants Inductor can fold into the step; weight_prepack off: a
# packed weight is an mkldnn tensor, which the FX graph cache refuses, so with it on every process
# compiled again (counter `fxgraph_cache_bypass`); the max_autotune settings are those measured.
INDUCTOR_OPTIONS = {"freezing": True, "cpp.weight_prepack": False, "max_autotune": True,
                    "max_autotune_gemm_backends": "CPP,ATEN"}
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"  # Inductor reads its cache folder only from this variable

log = logging.getLogger("stage_bridge.engine.compiled")


def inductor_cache_dir() -> Path:
    """Where compiled steps are kept between processes: the user's cache folder, not Inductor's
    default under the temporary folder, which many systems empty at every boot."""
    return user_cache_dir() / "inductor"


def use_cache_dir(folder: Path) -> None:
    """Point Inductor's caches at `folder` unless the user chose another with
    TORCHINDUCTOR_CACHE_DIR. Inductor has no setting for it but this variable, read whenever it
    looks for its cache; importing torch's compiler already writes Inductor's default into it,
    so that value counts as unset (tests/test_compiled.py checks the files land in `folder`)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get(CACHE_ENV)
    if current is None or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        os.environ[CACHE_ENV] = str(folder)


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

    def __init__(self, lm: StageLM, window_frames: int = 500, cache_dir: Path | None = None):
        if any(p.is_mkldnn for p in lm.parameters()):
            raise ValueError("the decoder's weights are packed for the eager CPU path; build the model with compile=True.")
        problem = compile_problem(lm.heads[0].weight.device, lm.heads[0].weight.dtype)
        if problem is not None:
            raise ValueError(problem)
        use_cache_dir(cache_dir or inductor_cache_dir())
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
