"""eval.embedders: the tiny embedder, VGGish's front end and network, the transformers loaders
(on tiny random models saved by the test), and the errors when weights are missing."""

import numpy as np
import pytest
import torch

from stage_bridge.errors import BadArgument, WeightsMissing
from stage_bridge.eval.embedders import (VGGISH_FILE, TinyEmbedder, _VGGishFrontEnd, embed_clip, load_embedder,
                                         vggish_network, weights_location)

SR = 32000


def _tone(freq, seconds=3.0, sr=SR):
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_tiny_embedder_is_deterministic_and_tells_sounds_apart():
    emb = load_embedder("tiny")
    a, b = embed_clip(emb, _tone(100.0), SR), embed_clip(emb, _tone(3000.0), SR)
    assert a.shape == (31, TinyEmbedder.bands)  # 3 s at 10 frames/s, centred frames
    np.testing.assert_array_equal(a, embed_clip(load_embedder("tiny"), _tone(100.0), SR))
    assert np.argmax(a.mean(0)) < np.argmax(b.mean(0))  # the low tone's energy sits in a lower band


def test_vggish_front_end_examples_and_mel_band_of_a_tone():
    front = _VGGishFrontEnd()
    examples = front(_tone(1000.0, seconds=2.5, sr=16000))
    assert examples.shape == (2, 96, 64)  # 0.96 s examples, non-overlapping, the rest dropped
    band = int(np.argmax(examples.mean(axis=(0, 1))))
    edges = np.linspace(1127 * np.log(1 + 125 / 700), 1127 * np.log(1 + 7500 / 700), 66)
    assert edges[band] < 1127 * np.log(1 + 1000 / 700) < edges[band + 2]  # 1 kHz lands in its own band
    assert front(np.zeros(100, dtype=np.float32)).shape == (1, 96, 64)  # short clips: one padded example


def test_vggish_loads_torchvggish_weights_and_embeds_128d(tmp_path):
    torch.manual_seed(0)
    state = {f"{k}": v for k, v in vggish_network().state_dict().items()}
    folder = tmp_path / "vggish"
    folder.mkdir()
    torch.save(state, folder / VGGISH_FILE)
    emb = load_embedder("vggish", folder)
    out = embed_clip(emb, _tone(440.0, seconds=3.0), SR)
    assert out.shape == (3, 128) and np.isfinite(out).all()
    assert (out < 0).any()  # taken before the last ReLU, as frechet-audio-distance does


def test_vggish_missing_or_wrong_weights_say_what_to_put_where(tmp_path):
    with pytest.raises(WeightsMissing, match=VGGISH_FILE) as info:
        load_embedder("vggish", weights_dir=tmp_path)
    assert str(weights_location("vggish", tmp_path)) in str(info.value)
    wrong = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(WeightsMissing, match="is not torchvggish"):
        load_embedder("vggish", wrong)


def test_unknown_embedder_and_missing_transformers_folders(tmp_path):
    with pytest.raises(BadArgument, match="choose from"):
        load_embedder("openl3")
    for name, example in (("clap", "laion/clap-htsat-unfused"), ("mert", "m-a-p/MERT-v1-95M")):
        with pytest.raises(WeightsMissing, match=example):
            load_embedder(name, weights_dir=tmp_path)


def test_clap_from_a_local_transformers_folder(tmp_path):
    from transformers import ClapAudioConfig, ClapConfig, ClapFeatureExtractor, ClapModel, ClapTextConfig

    audio = ClapAudioConfig(depths=[1, 1], num_attention_heads=[1, 2], patch_embeds_hidden_size=8, hidden_size=16,
                            projection_dim=8)
    text = ClapTextConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=1,
                          intermediate_size=16, projection_dim=8)
    ClapModel(ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=8)).save_pretrained(
        tmp_path / "clap")
    ClapFeatureExtractor(truncation="rand_trunc").save_pretrained(tmp_path / "clap")
    emb = load_embedder("clap", weights_dir=None, weights=tmp_path / "clap")
    assert emb.sample_rate == 48000 and emb.name == "clap (clap)"
    out = embed_clip(emb, _tone(440.0, seconds=12.0), SR)  # longer than CLAP's 10 s: cut, not randomly cropped
    assert out.shape == (1, 8)
    np.testing.assert_allclose(out, embed_clip(emb, _tone(440.0, seconds=12.0), SR))
    assert np.linalg.norm(out) == pytest.approx(1.0, rel=1e-5)  # CLAP's normalized projection


def test_mert_slot_loads_a_local_frame_model(tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    cfg = Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                         conv_dim=(8, 8), conv_stride=(5, 64), conv_kernel=(10, 64), num_conv_pos_embeddings=16,
                         num_conv_pos_embedding_groups=2, num_feat_extract_layers=2)
    Wav2Vec2Model(cfg).save_pretrained(tmp_path / "mert")
    Wav2Vec2FeatureExtractor(sampling_rate=24000).save_pretrained(tmp_path / "mert")
    emb = load_embedder("mert", tmp_path / "mert")
    assert emb.sample_rate == 24000
    out = embed_clip(emb, _tone(440.0, seconds=2.0), SR)
    assert out.shape == ((((48000 - 10) // 5 + 1) - 64) // 64 + 1, 16)  # the last layer's frames, one row each
