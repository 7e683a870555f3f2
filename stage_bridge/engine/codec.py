"""EnCodec (the 32 kHz MusicGen configuration) through transformers' `EncodecModel`.

The LM only ever sees codes: the context is encoded once per request, and only the generated
frames are decoded. Both run in chunks of frames, so a whole song (an hour of context) needs
the memory of a few seconds of audio, not of the song: in one piece, the first layers alone
hold 64 channels per sample (11 GB for 68 minutes).

Why chunking changes nothing: EnCodec 32 kHz is convolutions around one LSTM. A convolution
stack has a finite reach, so a chunk computed with `margin` frames of real signal on each side
and cropped gives the frames of the one-piece result; the LSTM is run chunk after chunk with
its state carried over, which is the one-piece recurrence. Chunks start on frame boundaries
(640 samples), so every strided layer sees the same alignment, and the first and last chunk
keep the signal's true edges with the same padding. What remains is float rounding (another
summation order in a convolution of another length): ~1e-6 in the embeddings, which can flip a
code only where two codebook entries are that close (tests/test_codec_chunks.py measures it).
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
from torch import Tensor, nn
from transformers import EncodecConfig, EncodecModel

CHUNK_FRAMES = 500  # 10 s per chunk: the encoder's first layers then hold ~0.3 GB per row


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
    """Waveform <-> codes. `encode` takes (B, n) float audio at `sample_rate`.

    `chunk_frames`: frames per chunk (memory scales with it, not with the length)."""

    def __init__(self, model: EncodecModel, num_codebooks: int, chunk_frames: int = CHUNK_FRAMES):
        self.model = model.eval()
        self.num_codebooks = num_codebooks
        self.chunk_frames = chunk_frames
        if len(model.quantizer.layers) < num_codebooks:
            raise ValueError(f"codec has {len(model.quantizer.layers)} codebooks, LM needs {num_codebooks}")
        self._encoder = _split_at_lstm(model.encoder.layers, 1 / self.hop_length)
        self._decoder = _split_at_lstm(model.decoder.layers, 1.0)

    @property
    def margin_frames(self) -> int:
        """The widest margin a chunk is computed with, on each side."""
        return max(self._encoder.head_margin, self._encoder.tail_margin, self._decoder.head_margin,
                   self._decoder.tail_margin)

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
        """(B, n) -> (B, K, ceil(n / hop)) long codes, chunk by chunk."""
        frames = self.frames_for(wav.shape[-1])
        if frames == 0:
            return torch.zeros(wav.shape[0], self.num_codebooks, 0, dtype=torch.long, device=wav.device)
        hop = self.hop_length

        def samples(a: int, b: int) -> Tensor:  # frames [a, b) of the input, as the encoder reads them
            return wav[:, None, a * hop : b * hop].to(self.device, torch.float32)

        chunks = self._encoder.stream(samples, frames, hop, self.chunk_frames)
        return torch.cat([self._quantize(emb) for emb in chunks], dim=-1)

    @torch.inference_mode()
    def decode(self, codes: Tensor) -> Tensor:
        """(B, K, T) -> (B, T * hop) float audio in host memory, chunk by chunk and one row at a time
        (so the accelerator's memory grows neither with the length nor with the number of takes)."""
        t, hop = codes.shape[-1], self.hop_length
        out = torch.zeros(codes.shape[0], t * hop)
        for row in range(codes.shape[0]):
            done = 0
            for audio in self._decoder.stream(lambda a, b: self._embed(codes[row : row + 1, :, a:b]), t, 1,
                                              self.chunk_frames):
                out[row, done : done + audio.shape[-1]] = audio[0, 0].cpu()
                done += audio.shape[-1]
        return out

    def _quantize(self, emb: Tensor) -> Tensor:
        codes, residual = [], emb
        for layer in self.model.quantizer.layers[: self.num_codebooks]:
            idx = layer.encode(residual)
            residual = residual - layer.decode(idx)
            codes.append(idx)
        return torch.stack(codes, dim=1)

    def _embed(self, codes: Tensor) -> Tensor:
        codes = codes.to(self.device)
        return sum(layer.decode(codes[:, q]) for q, layer in enumerate(self.model.quantizer.layers[: codes.shape[1]]))


class _Streamed:
    """A codec half: a convolution stack, an LSTM, a convolution stack, run over frame chunks.

    `head` and `tail` are the stacks before and after the LSTM (`lstm`: HF's EncodecLSTM, whose
    output is `lstm(x) + x`), each with `margin` frames of reach on either side."""

    def __init__(self, head: nn.Sequential, lstm: nn.Module, tail: nn.Sequential, head_margin: int, tail_margin: int):
        self.head, self.lstm, self.tail = head, lstm, tail
        self.head_margin, self.tail_margin = head_margin, tail_margin

    def stream(self, read: Callable[[int, int], Tensor], frames: int, per_frame: int, chunk: int) -> Iterator[Tensor]:
        """The outputs of frames [0, frames) in order, in pieces. `read(a, b)`: the input of frames
        [a, b) with `per_frame` input elements per frame (the last frame may be short)."""
        state = None
        tail = _Window(self.tail, self.tail_margin, frames)
        for a in range(0, frames, chunk):
            b = min(a + chunk, frames)
            lo, hi = max(0, a - self.head_margin), min(frames, b + self.head_margin)
            x = self.head(read(lo, hi))[..., a - lo : b - lo].permute(2, 0, 1)  # (time, batch, channels)
            y, state = self.lstm.lstm(x, state)
            yield from tail.push((y + x).permute(1, 2, 0))


class _Window:
    """Runs `stack` over frames pushed in order, each output once `margin` frames of right
    context have arrived (or the sequence ended), computed on the kept frames and cropped."""

    def __init__(self, stack: nn.Sequential, margin: int, frames: int):
        self.stack, self.margin, self.frames = stack, margin, frames
        self.kept: Tensor | None = None  # frames [self.start, self.start + kept) of the input
        self.start = 0
        self.done = 0  # frames whose output has been given

    def push(self, x: Tensor) -> Iterator[Tensor]:
        self.kept = x if self.kept is None else torch.cat([self.kept, x], dim=-1)
        end = self.start + self.kept.shape[-1]
        ready = end if end == self.frames else end - self.margin
        if ready <= self.done:
            return
        out = self.stack(self.kept)
        per = out.shape[-1] // self.kept.shape[-1]  # output elements per frame
        yield out[..., (self.done - self.start) * per : (ready - self.start) * per]
        self.done = ready
        drop = max(0, self.done - self.margin - self.start)
        self.kept, self.start = self.kept[..., drop:], self.start + drop


def _split_at_lstm(layers: nn.ModuleList, frames_per_element: float) -> _Streamed:
    """`layers` cut around its one LSTM, each stack with its reach in frames (see `_reach`).
    `frames_per_element`: frames per element of the input (1 / hop for audio, 1 for frames)."""
    i = next(k for k, layer in enumerate(layers) if hasattr(layer, "lstm"))
    head, tail = nn.Sequential(*layers[:i]), nn.Sequential(*layers[i + 1 :])
    return _Streamed(head, layers[i], tail, _reach(head, frames_per_element), _reach(tail, 1.0))


def _reach(stack: nn.Module, frames_per_element: float) -> int:
    """How many frames on either side an output of `stack` may depend on, rounded up generously:
    each convolution reaches its kernel's span in its input's elements (a transposed one, the
    kernel over its stride), converted to frames by the resolution at that layer."""
    total, per = 0.0, frames_per_element
    for m in stack.modules():
        if isinstance(m, nn.ConvTranspose1d):
            total += (math.ceil(m.kernel_size[0] / m.stride[0]) + 1) * per
            per /= m.stride[0]
        elif isinstance(m, nn.Conv1d):
            total += ((m.kernel_size[0] - 1) * m.dilation[0] + 1) * per
            per *= m.stride[0]
    return math.ceil(total) + 1
