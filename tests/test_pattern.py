"""Delay pattern and STAGE layout on hand-worked examples (reference: audiocraft's delayed
pattern with an initial empty step, and STAGE's InterleavedContextPromptProcessor)."""

from __future__ import annotations

import torch

from stage_bridge.engine.pattern import (StageLayout, build_sequence, delay_interleave, delay_pattern_mask,
                                         delay_revert, step_positions)

P = 99  # pad id in these examples (card = 99, context token = 100)
S = 100


def test_delay_interleave_hand_worked():
    frames = torch.tensor([[[10, 11, 12], [20, 21, 22], [30, 31, 32], [40, 41, 42]]])
    want = torch.tensor([[[P, 10, 11, 12, P, P, P],
                          [P, P, 20, 21, 22, P, P],
                          [P, P, P, 30, 31, 32, P],
                          [P, P, P, P, 40, 41, 42]]])
    assert torch.equal(delay_interleave(frames, P), want)
    assert torch.equal(delay_revert(want), frames)
    assert torch.equal(delay_pattern_mask(3, 4), want[0] != P)


def test_stage_layout_hand_worked():
    """Context c0 c1, the context token, target x0 x1: steps 0..8."""
    ctx = torch.tensor([[[1, 2], [3, 4], [5, 6], [7, 8]]])
    tgt = torch.tensor([[[11, 12], [13, 14], [15, 16], [17, 18]]])
    layout = StageLayout(context_frames=2, target_frames=2, num_codebooks=4)
    tokens, valid = build_sequence(ctx, tgt, layout, card=P)
    want = torch.tensor([[[P, 1, 2, S, 11, 12, P, P, P],
                          [P, P, 3, 4, S, 13, 14, P, P],
                          [P, P, P, 5, 6, S, 15, 16, P],
                          [P, P, P, P, 7, 8, S, 17, 18]]])
    assert torch.equal(tokens, want)
    assert torch.equal(valid, want != P)
    assert layout.num_steps == 9
    assert layout.first_generated_step == 4  # codebook 0 of x0
    gen = layout.generated_mask()
    assert torch.equal(gen, torch.isin(want[0], tgt))
    assert torch.equal(step_positions(valid.any(1)), torch.tensor([[0, 0, 1, 2, 3, 4, 5, 6, 7]]))


def test_masked_context_is_invalid_and_positions_restart():
    """The unconditional branch: the whole context is padding, so the first valid step is the
    one holding codebook 0 of the context token, and positions count from there."""
    ctx = torch.full((1, 4, 3), P)
    tgt = torch.tensor([[[11, 12], [13, 14], [15, 16], [17, 18]]])
    layout = StageLayout(3, 2, 4)
    tokens, valid = build_sequence(ctx, tgt, layout, card=P)
    step_valid = valid.any(1)[0]
    assert step_valid.tolist() == [False] * 4 + [True] * 6
    assert tokens[0, 0, 4] == S
    assert step_positions(step_valid[None])[0].tolist() == [0, 0, 0, 0, 0, 1, 2, 3, 4, 5]
    # padding in the target part (a pattern hole) stays a hole, never "valid"
    assert not valid[0, 0, -1]


def test_prompt_frames_shift_the_first_generated_step():
    layout = StageLayout(context_frames=5, target_frames=10, num_codebooks=4, prompt_frames=3)
    assert layout.first_generated_step == 5 + 1 + 3 + 1
    gen = layout.generated_mask()
    frame = layout.frame_of()
    assert bool(((frame >= 9) & (frame < 16) == gen).all())
