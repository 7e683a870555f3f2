"""EnCodec (the 32 kHz MusicGen configuration) through transformers' `EncodecModel`.

The LM only ever sees codes: the context is encoded once per request, and only the generated
frames are decoded. Long code sequences are decoded in overlapping chunks so memory stays flat
for a whole song.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import EncodecConfig, EncodecModel


def musicgen_codec_config() -> EncodecConfig:
    """The published 32 kHz EnCodec of MusicGen (4 codebooks of 2048 at 50 Hz)."""
    return EncodecConfig(
        target_bandwidths=[2.2], sampling_rate=32000, audio_channels=1, normalize=False,
        chunk_length_s=None, overlap=None, hidden_size=128, num_filters=64,
        num_residual_layers=1, upsampling_ratios=[8, 5, 4, 4], norm_type="weight_norm",
        kernel_size=7, last_kernel_size=7, residual_kernel_size=3, dilation_growth_rate=2,
        use_causal_conv=False, pad_mode="reflect", compress=2, num_lstm_layers=2,
        trim_right_ratio=1.0, codebook_size=2048, codebook_dim=128, use_conv_shortcut=False,
    )


class Codec:
    """Waveform <-> codes. `encode` takes (B, n) float audio at `sample_rate`."""

    def __init__(self, model: EncodecModel, num_codebooks: int):
        self.model = model.eval()
        self.num_codebooks = num_codebooks
        if len(model.quantizer.layers) < num_codebooks:
            raise ValueError(f"codec has {len(model.quantizer.layers)} codebooks, LM needs {num_codebooks}")

    @property
    def sample_rate(self) -> int:
        return int(self.model.config.sampling_rate)

    @property
    def hop_length(self) -> int:
        return int(self.model.config.hop_length)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def frames_for(self, num_samples: int) -> int:
        return -(-num_samples // self.hop_length)

    @torch.inference_mode()
    def encode(self, wav: Tensor) -> Tensor:
        """(B, n) -> (B, K, ceil(n / hop)) long codes."""
        if wav.shape[-1] == 0:
            return torch.zeros(wav.shape[0], self.num_codebooks, 0, dtype=torch.long, device=wav.device)
        x = wav[:, None, :].to(self.device, torch.float32)
        emb = self.model.encoder(x)
        codes, residual = [], emb
        for layer in self.model.quantizer.layers[: self.num_codebooks]:
            idx = layer.encode(residual)
            residual = residual - layer.decode(idx)
            codes.append(idx)
        return torch.stack(codes, dim=1)[..., : self.frames_for(wav.shape[-1])]

    @torch.inference_mode()
    def decode(self, codes: Tensor, chunk_frames: int = 1500, overlap_frames: int = 50) -> Tensor:
        """(B, K, T) -> (B, T * hop) float audio; chunked with a linear crossfade for long T."""
        t = codes.shape[-1]
        if t <= chunk_frames:
            return self._decode(codes)
        hop = self.hop_length
        out = torch.zeros(codes.shape[0], t * hop, device=self.device)
        weight = torch.zeros(t * hop, device=self.device)
        start = 0
        while start < t:
            end = min(start + chunk_frames, t)
            audio = self._decode(codes[..., start:end])
            n = audio.shape[-1]
            w = torch.ones(n, device=self.device)
            fade = overlap_frames * hop
            if start > 0:
                w[:fade] = torch.linspace(0.0, 1.0, fade + 2, device=self.device)[1:-1]
            if end < t:
                w[-fade:] = torch.linspace(1.0, 0.0, fade + 2, device=self.device)[1:-1]
            out[:, start * hop : start * hop + n] += audio * w
            weight[start * hop : start * hop + n] += w
            if end == t:
                break
            start = end - overlap_frames
        return out / weight.clamp_min(1e-8)

    def _decode(self, codes: Tensor) -> Tensor:
        codes = codes.to(self.device)
        emb = sum(layer.decode(codes[:, q]) for q, layer in enumerate(self.model.quantizer.layers[: codes.shape[1]]))
        return self.model.decoder(emb)[:, 0, : codes.shape[-1] * self.hop_length]
