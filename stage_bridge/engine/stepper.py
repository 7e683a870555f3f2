"""How one decode step runs: eager, replayed as a CUDA graph, or compiled for the CPU.

A single-token step of a 24-layer decoder is a few hundred small kernels; on a GPU launching
them costs far more than running them. On CUDA the step is captured once per generation into a
CUDA graph (static shapes: the cache is attended over its whole length with a mask, the step
index is a device tensor) and replayed with one launch. On CPU/MPS the eager step reads only
the filled part of the cache; on the CPU it may instead run through `CompiledDecoder` (opt-in).

Usage per generation: `lm.setup_cache(rows, max_steps)`, build a stepper, then for every
window `begin_window(step_valid)` and call it once per step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .compiled import CompiledDecoder
from .lm import CrossContext, StageLM


class EagerStepper:
    def __init__(self, lm: StageLM, cross: CrossContext | None):
        self.lm, self.cross = lm, cross
        self.step_valid: Tensor | None = None

    def begin_window(self, step_valid: Tensor) -> None:
        self.step_valid = step_valid

    def __call__(self, tokens: Tensor, positions: Tensor, step: int) -> Tensor:
        """tokens (B, K, 1), positions (B, 1) at sequence step `step` -> logits (B, K, V)."""
        return self.lm(tokens, positions, self.step_valid[:, : step + 1], step, self.cross)[:, :, -1]


class CompiledStepper(EagerStepper):
    def __init__(self, lm: StageLM, cross: CrossContext | None, decoder: CompiledDecoder):
        super().__init__(lm, cross)
        self.decoder = decoder
        decoder.mark_prompt_length_dynamic(cross)

    def __call__(self, tokens: Tensor, positions: Tensor, step: int) -> Tensor:
        return self.decoder(tokens, positions, self.step_valid[:, : step + 1], self.cross)


class StaticStepper:
    """Static-shape step; captured as a CUDA graph when `capture` (requires CUDA)."""

    def __init__(self, lm: StageLM, cross: CrossContext | None, rows: int, max_steps: int, capture: bool):
        dev = lm.heads[0].weight.device
        k = lm.cfg.num_codebooks
        self.lm, self.cross = lm, cross
        self.tokens = torch.full((rows, k, 1), lm.cfg.pad_id, dtype=torch.long, device=dev)
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


Stepper = EagerStepper | StaticStepper


def make_stepper(lm: StageLM, cross: CrossContext | None, rows: int, max_steps: int,
                 use_graph: bool | None = None, compiled: CompiledDecoder | None = None) -> Stepper:
    """`compiled` when given; else a CUDA graph on CUDA (unless `use_graph` is False), eager elsewhere."""
    if compiled is not None:
        return CompiledStepper(lm, cross, compiled)
    on_cuda = lm.heads[0].weight.device.type == "cuda"
    if use_graph is None:
        use_graph = on_cuda
    if use_graph:
        return StaticStepper(lm, cross, rows, max_steps, capture=on_cuda)
    return EagerStepper(lm, cross)
