"""EnCodec in chunks equals EnCodec in one piece: the codes exactly, the audio to float rounding.

Why it matters: a song-long context is encoded (and takes decoded) chunk by chunk so memory
stays that of a chunk (issue 14: 68 minutes in one piece reached 11 GB). The one-piece result
is transformers' own `EncodecModel` encoder/decoder run over the whole signal."""

from __future__ import annotations


import pytest
import torch

from stage_bridge.engine.codec import Codec, musicgen_codec_config
from stage_bridge.engine.model import load_model
from transformers import EncodecModel


def _codec(kind: str) -> Codec:
    if kind == "tiny-random":
        return load_model("tiny-random", "cpu").codec
    # the published 32 kHz layout (2 LSTM layers, 64 filters) with random weights
    torch.manual_seed(1)
    model = EncodecModel(musicgen_codec_config())
    with torch.no_grad():  # random codebooks, so that codes differ from frame to frame
        for layer in model.quantizer.layers:
            layer.codebook.embed.normal_(std=0.05)
    return Codec(model.eval(), 4)


@pytest.fixture(scope="module", params=["tiny-random", "musicgen-32khz"])
def codec(request) -> Codec:
    return _codec(request.param)


def one_piece_codes(codec: Codec, wav: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return codec._quantize(codec.model.encoder(wav[:, None, :]))[..., : codec.frames_for(wav.shape[-1])]


def one_piece_audio(codec: Codec, codes: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return codec.model.decoder(codec._embed(codes))[:, 0, : codes.shape[-1] * codec.hop_length]


# lengths: under one frame, exactly one, a partial last frame, many chunks with a partial last frame
@pytest.mark.parametrize("num_samples", [1, 640, 641, 640 * 53 + 17])
def test_chunked_encode_gives_the_one_piece_codes(codec, num_samples):
    wav = torch.randn(2, num_samples, generator=torch.Generator().manual_seed(num_samples)) * 0.3
    expected = one_piece_codes(codec, wav)
    codec.chunk_frames = 7  # many seams, each closer to the next than any margin
    try:
        got = codec.encode(wav)
    finally:
        codec.chunk_frames = 500
    assert got.shape == expected.shape == (2, 4, codec.frames_for(num_samples))
    assert torch.equal(got, expected)


def test_chunked_decode_gives_the_one_piece_audio_at_every_seam(codec):
    card = codec.model.config.codebook_size
    codes = torch.randint(0, card, (2, 4, 61), generator=torch.Generator().manual_seed(0))
    expected = one_piece_audio(codec, codes)
    codec.chunk_frames = 7
    try:
        got = codec.decode(codes)
    finally:
        codec.chunk_frames = 500
    assert got.shape == expected.shape == (2, 61 * codec.hop_length)
    # float rounding only (another summation order): 1e-7 measured, against audio of ~0.1-1
    assert (got - expected).abs().max().item() < 1e-5 * max(expected.abs().max().item(), 1e-3)


def test_without_the_margin_the_seams_would_show(codec):
    """The check above can fail: chunks computed without their margins differ at the seams."""
    card = codec.model.config.codebook_size
    codes = torch.randint(0, card, (1, 4, 30), generator=torch.Generator().manual_seed(0))
    expected = one_piece_audio(codec, codes)
    codec.chunk_frames = 7
    head, tail = codec._decoder.head_margin, codec._decoder.tail_margin
    codec._decoder.head_margin = codec._decoder.tail_margin = 0
    try:
        got = codec.decode(codes)
    finally:
        codec._decoder.head_margin, codec._decoder.tail_margin = head, tail
        codec.chunk_frames = 500
    assert (got - expected).abs().max().item() > 1e-3 * expected.abs().max().item()
