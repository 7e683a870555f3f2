"""The optional text prompt: T5 encoder states (the LM owns MusicGen's projection of them).

An empty prompt yields an all-False mask, which the LM turns into an exact zero contribution:
that is also the unconditional branch of classifier-free guidance.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import torch
from torch import Tensor
from transformers import T5Config, T5EncoderModel


class Tokenizer(Protocol):
    def __call__(self, texts: list[str], **kwargs: Any) -> Any: ...


def t5_base_config() -> T5Config:
    """t5-base's encoder, as MusicGen-small and STAGE use it."""
    return T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12,
                    num_heads=12, relative_attention_num_buckets=32,
                    relative_attention_max_distance=128, dropout_rate=0.1,
                    layer_norm_epsilon=1e-6, feed_forward_proj="relu", is_encoder_decoder=False)


class ByteTokenizer:
    """UTF-8 bytes + EOS, T5-style ids (0 pad, 1 eos, bytes from 3). Only for the tiny-random
    preset, which must work without downloading the real sentencepiece vocabulary."""

    vocab_size = 259

    def __call__(self, texts: list[str], **_: Any) -> dict[str, Tensor]:
        ids = [[b + 3 for b in t.encode("utf-8")] + [1] for t in texts]
        n = max(len(i) for i in ids)
        input_ids = torch.zeros(len(ids), n, dtype=torch.long)
        mask = torch.zeros(len(ids), n, dtype=torch.long)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}


class TextEncoder:
    def __init__(self, model: T5EncoderModel, tokenizer: Tokenizer):
        self.model = model.eval()
        self.tokenizer = tokenizer

    @torch.inference_mode()
    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """prompts -> (states (B, L, d_t5), mask (B, L) bool). Empty prompts get an all-False mask."""
        texts = [p.strip() for p in prompts]
        device = next(self.model.parameters()).device
        tok = self.tokenizer(texts, return_tensors="pt", padding=True)
        ids = tok["input_ids"].to(device)
        mask = tok["attention_mask"].to(device).bool()
        states = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        for row, t in enumerate(texts):
            if not t:
                mask[row] = False
        return states.float(), mask
