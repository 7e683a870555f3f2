"""Our decoder equals transformers' MusicGen on the same random weights (fp32, < 1e-4)."""

from __future__ import annotations

import platform

import pytest
import torch
from transformers import (EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, MusicgenForCausalLM,
                          MusicgenForConditionalGeneration, T5Config)

from stage_bridge.engine.checkpoints import from_transformers_folder
from stage_bridge.engine.lm import StageLM

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
            num_codebooks=4, pad_token_id=64, bos_token_id=64, max_position_embeddings=256,
            dropout=0.0, activation_dropout=0.0, attention_dropout=0.0)


# Where oneDNN is part of every torch build (x86-64), packing must happen, not fall back quietly.
PACKING_EXPECTED = platform.machine().lower() in ("x86_64", "amd64")


def _ours(folder, packed: bool = False) -> tuple[StageLM, object]:
    ckpt = from_transformers_folder(folder)
    lm = StageLM(ckpt.lm_config)
    lm.load_state_dict(ckpt.lm_state, strict=True)
    if packed:
        assert lm.pack_for_cpu() or not PACKING_EXPECTED
    return lm.eval(), ckpt


def _random_init(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
def test_causal_lm_logits_match(tmp_path, packed):
    """Also with the weights packed for the CPU, which is how inference runs there."""
    hf = MusicgenForCausalLM(MusicgenDecoderConfig(**TINY)).eval()
    _random_init(hf)
    hf.save_pretrained(tmp_path)
    ours, _ = _ours(tmp_path, packed)

    b, k, s = 2, 4, 23
    tokens = torch.randint(0, 64, (b, k, s))
    tokens[:, 1:, 0] = 64  # pad appears in real sequences; HF's pad row is random, ours zeroed
    with torch.no_grad():
        hf.model.decoder.embed_tokens[0].weight[64].zero_()
        for e in hf.model.decoder.embed_tokens:
            e.weight[64].zero_()
        states = torch.randn(b, 5, 32)
        want = hf(input_ids=tokens.reshape(b * k, s), encoder_hidden_states=states).logits.reshape(b, k, s, 64)
        pos = torch.arange(s).expand(b, s)
        cross = ours.cross_context(states, torch.ones(b, 5, dtype=torch.bool))
        got = ours(tokens, pos, torch.ones(b, s, dtype=torch.bool), cross=cross)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-4


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
def test_conditional_generation_logits_match_with_text(tmp_path, packed):
    """The whole transformers layout: T5 states -> enc_to_dec_proj -> cross-attention."""
    t5 = T5Config(vocab_size=100, d_model=24, d_kv=6, d_ff=48, num_layers=1, num_heads=4,
                  feed_forward_proj="relu", dropout_rate=0.0)
    codec = EncodecConfig(target_bandwidths=[1.2], sampling_rate=32000, hidden_size=16, num_filters=4,
                          upsampling_ratios=[8, 5, 4, 4], use_causal_conv=False, num_lstm_layers=1,
                          codebook_size=64, codebook_dim=16, use_conv_shortcut=False)
    cfg = MusicgenConfig(text_encoder=t5.to_dict(), audio_encoder=codec.to_dict(),
                         decoder=MusicgenDecoderConfig(**TINY).to_dict())
    hf = MusicgenForConditionalGeneration(cfg).eval()
    _random_init(hf.decoder)
    _random_init(hf.enc_to_dec_proj)
    hf.save_pretrained(tmp_path)
    ours, ckpt = _ours(tmp_path, packed)
    assert ckpt.format == "transformers" and ckpt.text_state is not None and ckpt.codec_state

    b, k, s = 2, 4, 17
    tokens = torch.randint(0, 64, (b, k, s))
    ids = torch.randint(2, 100, (b, 7))
    mask = torch.ones(b, 7, dtype=torch.long)
    mask[1, 4:] = 0
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=tokens.reshape(b * k, s)).logits
        want = want.reshape(b, k, s, 64)
        t5_states = hf.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        cross = ours.cross_context(t5_states, mask.bool())
        got = ours(tokens, torch.arange(s).expand(b, s), torch.ones(b, s, dtype=torch.bool), cross=cross)
    assert (got - want).abs().max().item() < 1e-4


def test_decode_linear_equals_f_linear():
    """The CPU path computes weight @ x.T, or runs oneDNN on a packed weight or (many rows, no
    autograd) a plain one; same numbers as F.linear for decode-, prefill- and training-sized inputs."""
    from stage_bridge.engine.lm import linear, pack_linear_weight

    w = torch.randn(96, 32)
    packed = pack_linear_weight(w)
    assert packed is not None or not PACKING_EXPECTED
    for shape in [(1, 1, 32), (2, 1, 32), (4, 3, 32), (3, 40, 32)]:
        x = torch.randn(shape)
        want = torch.nn.functional.linear(x, w)
        for weight in [w] + ([packed] if packed is not None else []):
            for grad in (True, False):  # without autograd, many rows on a plain weight run oneDNN
                with torch.set_grad_enabled(grad):
                    got = linear(x, weight)
                assert got.shape == want.shape
                assert torch.allclose(got, want, atol=1e-5)


def test_packing_applies_only_to_fp32_on_cpu_and_leaves_no_gradient_path():
    from stage_bridge.engine.lm import LMConfig, pack_linear_weight

    assert pack_linear_weight(torch.randn(8, 4, dtype=torch.bfloat16)) is None
    lm = StageLM(LMConfig(dim=16, num_layers=1, num_heads=2, ffn_dim=32, num_codebooks=2, card=8, text_dim=8))
    assert not lm.to(torch.bfloat16).pack_for_cpu()
    lm = lm.float()
    if lm.pack_for_cpu():
        assert all(m.weight.is_mkldnn and not m.weight.requires_grad for m in lm.projections())
        assert not lm.layers[0].cross_attn.kv.weight.is_mkldnn  # used once per generation, kept plain
