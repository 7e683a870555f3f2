"""MusicGen's delay pattern and STAGE's `[context][context token][target]` layout.

MusicGen predicts 4 EnCodec codebooks per 20 ms frame. With the *delay* pattern, codebook k of
frame t is emitted at sequence step t + 1 + k (step 0 holds only padding), so one forward pass
predicts codebook 0 of frame t together with codebook 1 of frame t-1, and so on. A sequence of T
frames therefore takes T + K steps.

STAGE concatenates, *before* interleaving, the context's frames, one frame made of the context
token (id `card + 1` in every codebook) and the target's frames:

    frames:  [ c_0 ... c_{Tc-1} | SEP | x_0 ... x_{Tt-1} ]         (K rows each)
    steps:   delay(frames)  ->  K x (Tc + 1 + Tt + K)

Context and target are time-aligned: x_t is the stem for the same instant as c_t. Padding
(`card`, an all-zero embedding) fills pattern holes and stands for "no context" (the
unconditional branch of classifier-free guidance, and left padding of short contexts). Inside the
conditioning part (everything up to and including SEP) padding is *invalid* and excluded from
attention; a step whose codebooks are all invalid is masked for every later query, and positions
are counted from the first valid step. This mirrors the reference (`InterleavedContextPromptProcessor`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def delay_interleave(frames: Tensor, pad: int) -> Tensor:
    """(B, K, T) frame codes -> (B, K, T + K) delayed sequence; holes are `pad`."""
    b, k, t = frames.shape
    seq = frames.new_full((b, k, t + k), pad)
    for q in range(k):
        seq[:, q, q + 1 : q + 1 + t] = frames[:, q]
    return seq


def delay_revert(seq: Tensor) -> Tensor:
    """(B, K, S) delayed sequence -> (B, K, S - K) frame codes (inverse of `delay_interleave`)."""
    b, k, s = seq.shape
    t = s - k
    return torch.stack([seq[:, q, q + 1 : q + 1 + t] for q in range(k)], dim=1)


def delay_pattern_mask(num_frames: int, num_codebooks: int, device: torch.device | str = "cpu") -> Tensor:
    """(K, T + K) bool: True where the delayed sequence holds a real frame (not a pattern hole)."""
    step = torch.arange(num_frames + num_codebooks, device=device)
    frame = step[None, :] - 1 - torch.arange(num_codebooks, device=device)[:, None]
    return (frame >= 0) & (frame < num_frames)


@dataclass(frozen=True)
class StageLayout:
    """Where everything sits in one STAGE sequence (one window of generation).

    `prompt_frames` target frames at the start are given (continuation from a previous window);
    the rest of the target is generated.
    """

    context_frames: int
    target_frames: int
    num_codebooks: int = 4
    prompt_frames: int = 0

    @property
    def num_frames(self) -> int:
        return self.context_frames + 1 + self.target_frames

    @property
    def num_steps(self) -> int:
        return self.num_frames + self.num_codebooks

    @property
    def target_offset(self) -> int:
        """Frame index of the first target frame (right after the context token)."""
        return self.context_frames + 1

    @property
    def first_generated_step(self) -> int:
        """First step that holds a frame to generate (codebook 0 of the first free target frame)."""
        return self.target_offset + self.prompt_frames + 1

    def frame_of(self, device: torch.device | str = "cpu") -> Tensor:
        """(K, S) long: the frame index each (codebook, step) holds (may be out of range)."""
        step = torch.arange(self.num_steps, device=device)
        return step[None, :] - 1 - torch.arange(self.num_codebooks, device=device)[:, None]

    def generated_mask(self, device: torch.device | str = "cpu") -> Tensor:
        """(K, S) bool: positions the sampler must fill (target frames after the prompt)."""
        frame = self.frame_of(device)
        return (frame >= self.target_offset + self.prompt_frames) & (frame < self.num_frames)


def build_sequence(
    context: Tensor,
    target: Tensor,
    layout: StageLayout,
    card: int,
) -> tuple[Tensor, Tensor]:
    """Lay out one STAGE sequence.

    context: (B, K, Tc) codes, `card` (pad) where there is no context (masked context).
    target:  (B, K, Tt) codes; positions still to be generated may hold anything (they are
             overwritten by the sampler and are never attended to before they are sampled).
    Returns (tokens (B, K, S) long, valid (B, K, S) bool). `valid` is False for pattern holes and
    for padding inside the conditioning part; `valid.any(1)` is the per-step attention mask.
    """
    b, k, tc = context.shape
    assert tc == layout.context_frames and target.shape[-1] == layout.target_frames
    pad, sep = card, card + 1
    sep_frame = context.new_full((b, k, 1), sep)
    frames = torch.cat([context, sep_frame, target.to(context.dtype)], dim=-1)
    tokens = delay_interleave(frames, pad)
    valid = delay_pattern_mask(layout.num_frames, k, tokens.device)[None].expand(b, -1, -1)
    in_conditioning = layout.frame_of(tokens.device) < layout.target_offset
    valid = valid & ~(in_conditioning[None] & (tokens == pad))
    return tokens, valid


def step_positions(step_valid: Tensor) -> Tensor:
    """(B, S) bool -> (B, S) long positions counted from each row's first valid step (0 before it)."""
    s = step_valid.shape[-1]
    first = torch.argmax(step_valid.long(), dim=-1, keepdim=True)
    return (torch.arange(s, device=step_valid.device)[None] - first).clamp_min(0)
