"""KV-cached decoding equals full recompute; masking behaves like removing the masked steps."""

from __future__ import annotations

import pytest
import torch

from stage_bridge.engine.decoder import CUDA_GRAPH, EAGER, Decoder
from stage_bridge.engine.generate import Windows, generate_codes
from stage_bridge.engine.lm import LMConfig, StageLM
from stage_bridge.engine.pattern import StageLayout, build_sequence, delay_revert, step_positions
from stage_bridge.engine.sampling import SamplingParams, apply_guidance, sample_next

CFG = LMConfig(dim=32, num_layers=2, num_heads=4, ffn_dim=64, num_codebooks=4, card=50, text_dim=12)


def _lm(seed: int = 0) -> StageLM:
    torch.manual_seed(seed)
    lm = StageLM(CFG)
    with torch.no_grad():
        for p in lm.parameters():
            p.normal_(0, 0.3)
    lm.zero_pad_rows()
    return lm.eval()


def _sequence(rows: int = 2, tc: int = 6, tt: int = 5):
    ctx = torch.randint(0, CFG.card, (rows, 4, tc))
    ctx[1:] = CFG.pad_id  # second row: masked context (unconditional branch)
    tgt = torch.randint(0, CFG.card, (rows, 4, tt))
    layout = StageLayout(tc, tt, 4)
    tokens, valid = build_sequence(ctx, tgt, layout, CFG.card)
    return tokens, valid.any(1), layout


@torch.no_grad()
def test_cached_prefill_and_steps_equal_full_forward():
    lm = _lm()
    tokens, step_valid, layout = _sequence()
    positions = step_positions(step_valid)
    text = torch.randn(2, 3, CFG.text_dim)
    cross = lm.cross_context(text, torch.tensor([[True, True, False], [False, False, False]]))
    full = lm(tokens, positions, step_valid, 0, cross)
    assert torch.isfinite(full).all()

    n = tokens.shape[-1]
    split = layout.first_generated_step
    lm.setup_cache(2, n)
    got = [lm(tokens[..., :split], positions[:, :split], step_valid[:, :split], 0, cross)]
    for s in range(split, n):
        got.append(lm(tokens[..., s:s + 1], positions[:, s:s + 1], step_valid[:, :s + 1], s, cross))
    lm.clear_cache()
    got = torch.cat(got, dim=2)
    valid_rows = step_valid[:, :, None, None].transpose(1, 2).expand_as(full)  # compare valid steps
    assert (got - full)[valid_rows].abs().max() < 1e-5


@torch.no_grad()
def test_packed_cpu_weights_decode_like_plain_ones():
    """Inference on a CPU runs on oneDNN-packed weights: cached decode must match plain recompute."""
    plain, packed = _lm(), _lm()
    if not packed.pack_for_cpu():
        pytest.skip("this torch build cannot pack weights for oneDNN")
    tokens, step_valid, layout = _sequence()
    positions = step_positions(step_valid)
    text = torch.randn(2, 3, CFG.text_dim)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    full = plain(tokens, positions, step_valid, 0, plain.cross_context(text, mask))
    cross = packed.cross_context(text, mask)
    split, n = layout.first_generated_step, tokens.shape[-1]
    packed.setup_cache(2, n)
    got = [packed(tokens[..., :split], positions[:, :split], step_valid[:, :split], 0, cross)]
    for s in range(split, n):
        got.append(packed(tokens[..., s:s + 1], positions[:, s:s + 1], step_valid[:, :s + 1], s, cross))
    got = torch.cat(got, dim=2)
    valid_rows = step_valid[:, :, None, None].transpose(1, 2).expand_as(full)
    assert (got - full)[valid_rows].abs().max() < 1e-4


@torch.no_grad()
def test_masked_steps_are_the_same_as_absent_steps():
    """A fully masked context changes nothing compared to no context at all."""
    lm = _lm(1)
    tgt = torch.randint(0, CFG.card, (1, 4, 5))
    masked = torch.full((1, 4, 7), CFG.pad_id)
    t1, v1 = build_sequence(masked, tgt, StageLayout(7, 5, 4), CFG.card)
    t2, v2 = build_sequence(masked[..., :0], tgt, StageLayout(0, 5, 4), CFG.card)
    s1, s2 = v1.any(1), v2.any(1)
    l1 = lm(t1, step_positions(s1), s1)
    l2 = lm(t2, step_positions(s2), s2)
    first = int(s1[0].float().argmax())
    first2 = int(s2[0].float().argmax())
    assert (l1[:, :, first:] - l2[:, :, first2:]).abs().max() < 1e-5


@torch.no_grad()
def _naive_generate(lm: StageLM, ctx: torch.Tensor, frames: int, takes: int, params: SamplingParams, seed: int):
    """The reference algorithm: recompute the whole prefix for every step, no cache."""
    g = torch.Generator().manual_seed(seed)
    layout = StageLayout(ctx.shape[-1], frames, 4)
    context = torch.cat([ctx[None].expand(takes, -1, -1), torch.full((takes, 4, ctx.shape[-1]), CFG.pad_id)])
    tokens, valid = build_sequence(context, torch.full((2 * takes, 4, frames), CFG.pad_id), layout, CFG.card)
    sv = valid.any(1)
    pos = step_positions(sv)
    fill = layout.generated_mask()
    for s in range(layout.first_generated_step, layout.num_steps):
        logits = lm(tokens[..., :s], pos[:, :s], sv[:, :s])[:, :, -1]
        nxt = sample_next(apply_guidance(logits, params.guidance), params, g)
        tokens[:, :, s] = torch.where(fill[:, s], torch.cat([nxt, nxt]), tokens[:, :, s])
    return delay_revert(tokens[:takes])[:, :, layout.target_offset:]


def test_generate_codes_equals_naive_recompute():
    lm = _lm(2)
    ctx = torch.randint(0, CFG.card, (4, 6))  # shorter than the target, as in STAGE training
    params = SamplingParams(guidance=3.0, top_k=20, top_p=0.0, temperature=1.0)
    want = _naive_generate(lm, ctx, 8, 2, params, seed=7)
    got = generate_codes(Decoder(lm), ctx, 8, takes=2, sampling=params, seed=7)
    assert torch.equal(got, want)
    again = generate_codes(Decoder(lm), ctx, 8, takes=2, sampling=params, seed=7)
    assert torch.equal(got, again)
    assert not torch.equal(got[0], got[1])  # takes differ
    assert int(got.max()) < CFG.card  # never pad / context token in the output


def test_windowed_generation_covers_every_frame_and_continues_from_prompt():
    lm = _lm(3)
    ctx = torch.randint(0, CFG.card, (4, 40))
    steps = []
    out = generate_codes(Decoder(lm), ctx, 40, takes=1, sampling=SamplingParams(top_k=10), seed=1,
                         windows=Windows(16, 6), progress=lambda d, t: steps.append((d, t)))
    assert out.shape == (1, 4, 40) and int(out.max()) < CFG.card
    assert steps[-1][0] == steps[-1][1]  # progress reaches 100 %
    assert [d for d, _ in steps] == list(range(1, steps[-1][1] + 1))


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_static_shape_step_equals_eager_generation(device):
    """The static-shape step (what a CUDA graph replays; captured on CUDA) gives the same codes."""
    lm = _lm(4).to(device)
    ctx = torch.randint(0, CFG.card, (4, 12), device=device)
    params = SamplingParams(top_k=15)
    eager = generate_codes(Decoder(lm, EAGER), ctx, 20, takes=2, sampling=params, seed=3, windows=Windows(12, 4))
    static = generate_codes(Decoder(lm, CUDA_GRAPH), ctx, 20, takes=2, sampling=params, seed=3,
                            windows=Windows(12, 4))
    assert torch.equal(eager, static)


def test_masked_prefix_spans_group_rows_by_their_first_valid_step():
    from stage_bridge.engine.lm import masked_prefix_spans

    valid = torch.ones(4, 300, dtype=torch.bool)
    valid[:, 0] = False  # the delay pattern's padding-only step: too short to be worth skipping
    assert masked_prefix_spans(valid) is None
    valid[2:, :200] = False  # unconditional rows: masked context
    assert masked_prefix_spans(valid) == [(0, 2, 0), (2, 4, 200)]
    assert masked_prefix_spans(valid, min_skip=1) == [(0, 2, 1), (2, 4, 200)]
    assert masked_prefix_spans(valid, min_skip=201) is None


@torch.no_grad()
def test_unconditional_rows_skip_their_masked_context_with_the_same_logits():
    """With a long context, the decoder prefills the unconditional rows from their context token
    and their steps attend from there: the keys it skips are never read (NaN planted in them
    stays out of the logits, where a masked read would spread it), and every logit equals a full
    forward's."""
    lm = _lm(5)
    tokens, step_valid, layout = _sequence(tc=140, tt=4)
    positions = step_positions(step_valid)
    text = torch.randn(2, 3, CFG.text_dim)
    cross = lm.cross_context(text, torch.tensor([[True, True, False], [False, False, False]]))
    full = lm(tokens, positions, step_valid, 0, cross)
    split, n = layout.first_generated_step, tokens.shape[-1]
    forwards = []
    hook = lm.register_forward_pre_hook(lambda mod, a: forwards.append(tuple(a[0].shape[::2])))
    decoder = Decoder(lm, EAGER)
    with decoder.generation(2, n, cross):
        sep = int(step_valid[1].float().argmax())
        for blk in lm.layers:  # the unconditional row's masked context: never to be read
            blk.self_attn.cache.k[1, :, :sep] = float("nan")
            blk.self_attn.cache.v[1, :, :sep] = float("nan")
        decoder.begin_window(step_valid)
        got = [decoder.prefill(tokens, positions, split)]
        for s in range(split, n - 1):
            got.append(decoder.step(tokens[..., s:s + 1], positions[:, s:s + 1], s))
    hook.remove()
    assert forwards[:2] == [(1, split), (1, split - sep)]  # each row prefilled from its first valid step
    got = torch.stack(got, dim=2)
    assert torch.isfinite(got).all()
    assert (got - full[:, :, split - 1 : n - 1]).abs().max() < 1e-5


def test_generate_codes_with_a_long_masked_context_equals_naive_recompute():
    lm = _lm(6)
    ctx = torch.randint(0, CFG.card, (4, 130))  # generate_codes pairs target frame t with context frame t
    params = SamplingParams(guidance=3.0, top_k=20)
    want = _naive_generate(lm, ctx, 130, 1, params, seed=9)
    assert torch.equal(generate_codes(Decoder(lm), ctx, 130, takes=1, sampling=params, seed=9), want)
