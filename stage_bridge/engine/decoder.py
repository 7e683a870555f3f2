"""The decoder the engine generates with: one object that owns the decode mode and the KV cache.

Why one object (the gpt-fast way): how a decode step runs is a property of the loaded model, not
of each call. `build_model` picks the mode once; the generation loop only asks for a prefill and
then one step at a time, and never branches on the mode.

Modes:
- `eager`: the step reads only the filled part of the cache (CPU, MPS; the reference path that
  every other mode is tested against).
- `cuda-graph`: a single-token step of a 24-layer decoder is a few hundred small kernels; on a
  GPU launching them costs far more than running them. The step runs with static shapes (the
  cache attended over its whole length with a mask, the step index a device tensor), captured
  once per generation into a CUDA graph and replayed with one launch. Off CUDA the same
  static-shape step runs uncaptured (how the tests check it on a CPU).
- `compiled`: the CPU step fused by TorchInductor (`CompiledDecoder`, opt-in: `--compile`). Its
  KV cache is kept between generations, since a cache of a new shape would recompile the step.

Precision: `quantize` ("int8" or "int4") stores the block linears' weights as small integers
(`quant.py`) before any step runs, on the CPU in the eager mode only; `quantized` says which ran.
The eager CPU step runs our kernels where they build (`kernels.py`: attention in one call per
layer, the int4 product); quantized, the KV cache is then kept in fp16 (`cache_dtype`).

Use per generation: `with decoder.generation(rows, max_steps, cross):`, then per window
`begin_window(step_valid)`, one `prefill`, and `step` for every following step.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor

from ..errors import BadArgument
from . import kernels
from .compiled import CompiledDecoder
from .lm import CrossContext, Span, StageLM, masked_prefix_spans
from .quant import quantize_decoder, quantize_problem, scheme_of

EAGER, CUDA_GRAPH, COMPILED = "eager", "cuda-graph", "compiled"
MODES = (EAGER, CUDA_GRAPH, COMPILED)


def default_mode(device: torch.device, compile: bool = False) -> str:
    """`compiled` when asked for (CPU only; `build_model` checks), a CUDA graph on CUDA, else eager."""
    if compile:
        return COMPILED
    return CUDA_GRAPH if device.type == "cuda" else EAGER


class StaticStep:
    """Static-shape step buffers; captured as a CUDA graph when `capture` (requires CUDA)."""

    def __init__(self, lm: StageLM, cross: CrossContext | None, rows: int, max_steps: int, capture: bool):
        dev = lm.heads[0].weight.device
        self.lm, self.cross = lm, cross
        self.tokens = torch.full((rows, lm.cfg.num_codebooks, 1), lm.cfg.pad_id, dtype=torch.long, device=dev)
        self.positions = torch.zeros(rows, 1, dtype=torch.long, device=dev)
        self.key_valid = torch.zeros(rows, max_steps, dtype=torch.bool, device=dev)
        self.step = torch.zeros((), dtype=torch.long, device=dev)
        self.graph: torch.cuda.CUDAGraph | None = None
        if capture:
            self._capture()

    def _run(self) -> Tensor:
        return self.lm(self.tokens, self.positions, self.key_valid, self.step, self.cross)[:, :, -1]

    def _capture(self) -> None:
        # Warm up on a side stream (allocator, cuBLAS workspaces), writing only at the last
        # cache slot, which every window overwrites before attending to it.
        self.step.fill_(self.key_valid.shape[-1] - 1)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._run()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self._run()

    def begin_window(self, step_valid: Tensor) -> None:
        self.key_valid.zero_()
        self.key_valid[:, : step_valid.shape[-1]] = step_valid

    def __call__(self, tokens: Tensor, positions: Tensor, step: int) -> Tensor:
        self.tokens.copy_(tokens)
        self.positions.copy_(positions)
        self.step.fill_(step)
        if self.graph is None:
            return self._run()
        self.graph.replay()
        return self.out


class Decoder:
    """`lm` plus how its decode steps run (`mode`, `quantized`) and the KV cache they fill."""

    def __init__(self, lm: StageLM, mode: str = EAGER, quantize: str | None = None):
        if mode not in MODES:
            raise ValueError(f"unknown decode mode {mode!r}; one of {', '.join(MODES)}")
        if quantize is not None:  # before the compiled step could see the fp32 weights
            weight = lm.heads[0].weight
            problem = quantize_problem(quantize, weight.device, weight.dtype, compiled=mode == COMPILED)
            if problem is not None:
                raise BadArgument(problem)
            quantize_decoder(lm, quantize)
        self.lm, self.mode = lm, mode
        self.quantized: str | None = scheme_of(lm)  # "int8", "int4", or None (floating point)
        # Quantized, the cache is kept in fp16 where our attention kernel reads it (half the bytes a
        # step reads from it; the weights are rounded far more than that already).
        self.cache_dtype = torch.float16 if self.quantized and mode == EAGER and kernels.library() else None
        # COMPILED: `CompiledDecoder` checks the weights are plain fp32 on the CPU and a compiler exists.
        self.compiled = CompiledDecoder(lm) if mode == COMPILED else None
        self._cross: CrossContext | None = None
        self._step_valid: Tensor | None = None
        self._spans: list[Span] | None = None
        self._static: StaticStep | None = None

    @property
    def device(self) -> torch.device:
        return self.lm.heads[0].weight.device

    @contextmanager
    def generation(self, rows: int, max_steps: int, cross: CrossContext | None) -> Iterator[Decoder]:
        """Set up the cache (and the CUDA graph) for `rows` rows of up to `max_steps` steps; tear
        it down afterwards, except the compiled step's, which is kept for the next generation."""
        self._cross = cross
        if self.compiled is not None:
            self.compiled.prepare(rows, max_steps)
            self.compiled.mark_prompt_length_dynamic(cross)
        else:
            self.lm.setup_cache(rows, max_steps, self.cache_dtype)
        try:
            if self.mode == CUDA_GRAPH:
                self._static = StaticStep(self.lm, cross, rows, max_steps, capture=self.device.type == "cuda")
            yield self
        finally:
            self._static, self._cross, self._step_valid, self._spans = None, None, None, None
            if self.compiled is None:
                self.lm.clear_cache()

    def begin_window(self, step_valid: Tensor) -> None:
        """A new window: which of its steps hold real tokens (B, S), for the attention masks.
        Rows that may attend to nothing before some step (the unconditional rows' masked
        context) are prefilled from there, and the eager step's attention skips those keys
        (`masked_prefix_spans`: the same logits for less work)."""
        self._step_valid = step_valid
        self._spans = masked_prefix_spans(step_valid)
        if self._static is not None:
            self._static.begin_window(step_valid)

    def prefill(self, tokens: Tensor, positions: Tensor, upto: int) -> Tensor:
        """Run steps [0, upto) of the window at once (always eager); logits (B, K, V) of the last.
        Each run of rows starts at its first valid step: the steps before it are never attended
        to, so their keys and values need not be computed."""
        if self._spans is None:
            return self.lm(tokens[..., :upto], positions[:, :upto], self._step_valid[:, :upto], 0, self._cross)[:, :, -1]
        cross = self._cross or CrossContext(None, None)
        logits = []
        for lo, hi, first in self._spans:
            first = min(first, upto - 1)
            logits.append(self.lm(tokens[lo:hi, :, first:upto], positions[lo:hi, first:upto],
                                  self._step_valid[lo:hi, :upto], first, cross.rows(lo, hi), slice(lo, hi),
                                  [(0, hi - lo, first)] if first else None)[:, :, -1])
        return torch.cat(logits)

    def step(self, tokens: Tensor, positions: Tensor, s: int) -> Tensor:
        """tokens (B, K, 1), positions (B, 1) at window step `s` -> logits (B, K, V)."""
        if self._static is not None:
            return self._static(tokens, positions, s)
        if self.compiled is not None:
            return self.compiled(tokens, positions, self._step_valid[:, : s + 1], self._cross)
        return self.lm(tokens, positions, self._step_valid[:, : s + 1], s, self._cross, spans=self._spans)[:, :, -1]
