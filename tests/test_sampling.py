"""Guidance, top-k, top-p, temperature and seeding."""

from __future__ import annotations

import pytest
import torch

from stage_bridge.engine.sampling import SamplingParams, apply_guidance, sample_next
from stage_bridge.errors import BadArgument


def test_guidance_formula_on_batched_rows():
    cond, uncond = torch.randn(2, 4, 10), torch.randn(2, 4, 10)
    got = apply_guidance(torch.cat([cond, uncond]), 3.0)
    assert torch.allclose(got, uncond + 3.0 * (cond - uncond))


def test_top_k_never_samples_outside_the_k_best():
    logits = torch.randn(64, 4, 100)
    best = logits.topk(5, dim=-1).indices
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        tok = sample_next(logits, SamplingParams(top_k=5), g)
        assert (best == tok[..., None]).any(-1).all()


def test_top_k_and_top_p_sample_the_renormalised_distribution():
    """Frequencies over 40000 draws match softmax over the kept tokens (top-k 3, then top-p)."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, 3.0]).log_softmax(-1).expand(40000, 6)
    g = torch.Generator().manual_seed(3)
    freq = torch.bincount(sample_next(logits, SamplingParams(top_k=3), g), minlength=6) / 40000
    want = torch.zeros(6)
    want[[5, 0, 1]] = torch.tensor([3.0, 2.0, 1.0]).softmax(-1)
    assert (freq - want).abs().max() < 0.015
    freq = torch.bincount(sample_next(logits, SamplingParams(top_k=3, top_p=0.8), g), minlength=6) / 40000
    want = torch.zeros(6)
    want[[5, 0]] = torch.tensor([3.0, 2.0]).softmax(-1)  # the best two reach 0.91 >= 0.8: the third is dropped
    assert (freq - want).abs().max() < 0.015


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(2000, 4)
    tok = sample_next(logits, SamplingParams(top_k=0, top_p=0.7), torch.Generator().manual_seed(1))
    assert set(tok.tolist()) == {0, 1}


def test_temperature_zero_is_greedy_and_seed_reproduces():
    logits = torch.randn(3, 4, 50)
    assert torch.equal(sample_next(logits, SamplingParams(temperature=0.0), None), logits.argmax(-1))
    a = sample_next(logits, SamplingParams(), torch.Generator().manual_seed(5))
    b = sample_next(logits, SamplingParams(), torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


@pytest.mark.parametrize("params", [SamplingParams(guidance=-1), SamplingParams(top_k=-3),
                                    SamplingParams(top_p=1.5), SamplingParams(temperature=-0.1)])
def test_invalid_parameters_are_refused(params):
    with pytest.raises(BadArgument):
        params.validate()
