"""Our decoder equals transformers' MusicGen on the same random weights (fp32, < 1e-4)."""

from __future__ import annotations

import torch
from transformers import (EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, MusicgenForCausalLM,
                          MusicgenForConditionalGeneration, T5Config)

from stage_bridge.engine.checkpoints import from_transformers_folder
from stage_bridge.engine.lm import StageLM

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
            num_codebooks=4, pad_token_id=64, bos_token_id=64, max_position_embeddings=256,
            dropout=0.0, activation_dropout=0.0, attention_dropout=0.0)


def _ours(folder) -> tuple[StageLM, object]:
    ckpt = from_transformers_folder(folder)
    lm = StageLM(ckpt.lm_config)
    lm.load_state_dict(ckpt.lm_state, strict=True)
    return lm.eval(), ckpt


def _random_init(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)


def test_causal_lm_logits_match(tmp_path):
    hf = MusicgenForCausalLM(MusicgenDecoderConfig(**TINY)).eval()
    _random_init(hf)
    hf.save_pretrained(tmp_path)
    ours, _ = _ours(tmp_path)

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


def test_conditional_generation_logits_match_with_text(tmp_path):
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
    ours, ckpt = _ours(tmp_path)
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
    """The CPU decode path computes weight @ x.T; same numbers as F.linear."""
    from stage_bridge.engine.lm import linear

    w = torch.randn(96, 32)
    for shape in [(1, 1, 32), (2, 1, 32), (4, 3, 32), (3, 40, 32)]:
        x = torch.randn(shape)
        assert torch.allclose(linear(x, w), torch.nn.functional.linear(x, w), atol=1e-5)
        assert linear(x, w).shape == (*shape[:-1], 96)
