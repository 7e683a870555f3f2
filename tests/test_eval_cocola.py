"""COCOLA coherence (`stage_bridge.eval.cocola`): the official checkpoint layout loads strictly,
anything else is a clear error, the score is the paper's asymmetric bilinear similarity, and
`stage-bridge eval` puts a COCOLA column in its report exactly when a checkpoint is local.

Checkpoints are built here with random weights in the layout COCOLA's repository publishes (a
Lightning .ckpt whose hyperparameters pickle COCOLA's own enums, a module absent at load time).
Where efficientnet_pytorch is installed, the network is also checked against it."""

import csv
import enum
import json
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch

from train_fixtures import make_plain

from stage_bridge.cli import main
from stage_bridge.errors import CheckpointError, WeightsMissing
from stage_bridge.eval import cocola as cc
from stage_bridge.eval.report import write_report
from stage_bridge.eval.run import REAL, EvalResult, EvalSettings, make_excerpt, take_path
from stage_bridge.audio import load_audio, to_mono
from stage_bridge.train.dataset import discover_songs

SR = 32000
PREFIX = "encoder.encoder.model.0."  # CoCola.encoder (CoColaEncoder).encoder (EfficientNetEncoder).model[0]

# A few keys and shapes of COCOLA_HP_v1's state_dict, written out from the repository's model code
# (CoCola -> CoColaEncoder -> EfficientNetEncoder -> efficientnet_pytorch's EfficientNet-B0, 2 channels).
OFFICIAL_SHAPES = {
    PREFIX + "_conv_stem.weight": (32, 2, 3, 3),
    PREFIX + "_bn0.running_var": (32,),
    PREFIX + "_blocks.0._depthwise_conv.weight": (32, 1, 3, 3),
    PREFIX + "_blocks.0._se_reduce.weight": (8, 32, 1, 1),
    PREFIX + "_blocks.1._expand_conv.weight": (96, 16, 1, 1),
    PREFIX + "_blocks.4._depthwise_conv.weight": (240, 1, 5, 5),
    PREFIX + "_blocks.15._project_conv.weight": (320, 1152, 1, 1),
    PREFIX + "_blocks.15._bn2.num_batches_tracked": (),
    PREFIX + "_conv_head.weight": (1280, 320, 1, 1),
    PREFIX + "_bn1.bias": (1280,),
    "encoder.projection.weight": (512, 1280),
    "layer_norm.weight": (512,),
    "similarity.w": (512, 512),
}
OFFICIAL_KEY_COUNT = 363  # 358 EfficientNet-B0 tensors (no classifier) + projection 2 + layer norm 2 + W


def calibrate(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights that still tell inputs apart: batch-norm statistics measured on random
    feature images (left at 0/1, a deep random network maps every input to the same output)."""
    torch.manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a plain average over the calibration batches
            m.reset_running_stats()
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.rand(4, 2, 64, 201) * -80.0)
    return net.eval()


def random_state(seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    """A state dict in COCOLA's key layout with random values (the bilinear W as COCOLA initialises it)."""
    net = cc.CocolaNet()
    calibrate(net.encoder.encoder.model[0], seed)
    with torch.no_grad():
        net.similarity.w.normal_(0.0, 0.05)
        net.layer_norm.weight.uniform_(0.5, 1.5)
    return OrderedDict((k, v.clone()) for k, v in net.state_dict().items())


def save_lightning(path, state, monkeypatch) -> None:
    """Save ``state`` as Lightning 2.2 saves COCOLA (hyperparameters hold COCOLA's enums)."""
    constants = types.ModuleType("contrastive_model.constants")

    class EmbeddingMode(enum.Enum):
        RANDOM = "random"

    class ModelInputType(enum.Enum):
        DOUBLE_CHANNEL_HARMONIC_PERCUSSIVE = "double_channel_harmonic_percussive"

    for cls in (EmbeddingMode, ModelInputType):
        cls.__module__, cls.__qualname__ = constants.__name__, cls.__name__
        setattr(constants, cls.__name__, cls)
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "contrastive_model", types.ModuleType("contrastive_model"))
        m.setitem(sys.modules, "contrastive_model.constants", constants)
        torch.save({
            "epoch": 41, "global_step": 123456, "pytorch-lightning_version": "2.2.1", "state_dict": state,
            "loops": {"fit_loop": {"state_dict": {}}}, "callbacks": {"ModelCheckpoint{'monitor': 'valid_loss'}": {
                "best_model_score": torch.tensor(1.5), "best_model_path": "/x/checkpoint-epoch=41.ckpt"}},
            "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(4)}},
                                  "param_groups": [{"lr": 0.001, "params": [0]}]}],
            "lr_schedulers": [], "hparams_name": "kwargs",
            "hyper_parameters": {"learning_rate": 0.001, "embedding_dim": 512, "dropout_p": 0.1,
                                 "embedding_mode": EmbeddingMode.RANDOM,
                                 "input_type": ModelInputType.DOUBLE_CHANNEL_HARMONIC_PERCUSSIVE},
        }, str(path))
    assert "contrastive_model" not in sys.modules  # loading must not need COCOLA's code


@pytest.fixture
def ckpt(tmp_path, monkeypatch):
    path = tmp_path / "cocola" / "COCOLA_HP_v1.ckpt"
    path.parent.mkdir()
    state = random_state()
    save_lightning(path, state, monkeypatch)
    return path, state


def _tone_and_clicks(seconds: float, sr: int = 16000):
    t = np.arange(int(seconds * sr)) / sr
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    clicks = np.zeros_like(tone)
    clicks[:: sr // 2] = 1.0  # a click every half second
    return tone, clicks


# -- the checkpoint ------------------------------------------------------------------------------

def test_official_layout_loads_strictly_and_scores(ckpt):
    path, state = ckpt
    assert len(state) == OFFICIAL_KEY_COUNT
    for key, shape in OFFICIAL_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    model = cc.Cocola(path.parent)  # the folder: its one checkpoint
    assert model.path == path
    for key, value in model.net.state_dict().items():  # every tensor came from the file
        assert torch.equal(value, state[key]), key
    tone, clicks = _tone_and_clicks(6.0)
    score = model.score(tone, clicks, 16000)
    assert np.isfinite(score)
    assert model.score(tone, clicks, 16000) == score  # deterministic (eval mode: no dropout)
    assert model.embed(tone, 16000).shape == (2, cc.EMBEDDING_DIM)  # 6 s: two 5 s windows


def test_bare_state_dict_loads_too(tmp_path):
    path = tmp_path / "cocola.pt"
    torch.save(random_state(1), str(path))
    assert np.isfinite(cc.Cocola(path).score(*_tone_and_clicks(5.0), 16000))


def _save_plain(tmp_path, state, name="bad.ckpt"):
    path = tmp_path / name
    torch.save({"state_dict": state}, str(path))
    return path


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("similarity.w"), "missing key 'similarity.w'"),
    (lambda s: s.__setitem__("head.weight", torch.zeros(3)), "unexpected key 'head.weight'"),
    (lambda s: s.__setitem__("encoder.projection.weight", torch.zeros(256, 1280)),
     "'encoder.projection.weight' has shape (256, 1280), expected (512, 1280)"),
    (lambda s: s.__setitem__(PREFIX + "_conv_stem.weight", torch.zeros(32, 1, 3, 3)), "single-channel"),
])
def test_a_wrong_key_or_shape_is_a_clear_error(tmp_path, change, message):
    state = random_state()
    change(state)
    with pytest.raises(CheckpointError) as err:
        cc.Cocola(_save_plain(tmp_path, state))
    text = str(err.value)
    assert message in text and "COCOLA_HP_v1" in text and "\n" not in text


def test_missing_or_ambiguous_or_unreadable_checkpoints_say_what_to_do(tmp_path):
    with pytest.raises(WeightsMissing, match="no COCOLA checkpoint at .*--cocola FILE"):
        cc.Cocola(tmp_path / "nowhere")
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.ckpt", "b.ckpt"):
        (two / name).write_bytes(b"x")
    with pytest.raises(WeightsMissing, match="holds 2 checkpoints"):
        cc.Cocola(two)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read as a checkpoint.*COCOLA_HP_v1"):
        cc.Cocola(junk)


def test_find_cocola_runs_only_with_a_local_checkpoint(tmp_path, ckpt):
    path, _ = ckpt
    weights = tmp_path / "weights"
    found, why = cc.find_cocola(None, weights)
    assert found is None and str(weights / "eval" / "cocola") in why
    (weights / "eval" / "cocola").mkdir(parents=True)
    (weights / "eval" / "cocola" / path.name).write_bytes(path.read_bytes())
    assert cc.find_cocola(None, weights) == (weights / "eval" / "cocola" / path.name, "")
    assert cc.find_cocola(path, weights) == (path, "")  # --cocola wins
    with pytest.raises(WeightsMissing):  # asked for, not there: an error, not a silent skip
        cc.find_cocola(tmp_path / "missing.ckpt", weights)


# -- the score -----------------------------------------------------------------------------------

def test_score_is_the_asymmetric_bilinear_similarity(ckpt):
    """s(x, y) = e(x)^T W e(y): a general W makes s(x, y) != s(y, x); a symmetric W makes them equal."""
    path, _ = ckpt
    model = cc.Cocola(path)
    tone, clicks = _tone_and_clicks(5.0)
    ex, ey = model.embed(tone, 16000), model.embed(clicks, 16000)
    assert torch.all(ex.abs() <= 1) and (ex - ey).abs().max() > 0.1  # tanh(LayerNorm(.)) of different inputs
    w = model.net.similarity.w.detach()
    want = float((ex[0] @ w @ ey[0]))
    assert model.coherence(ex, ey) == pytest.approx(want, rel=1e-5)
    assert model.score(tone, clicks, 16000) == pytest.approx(want, rel=1e-5)  # context first, stem second
    assert abs(model.score(tone, clicks, 16000) - model.score(clicks, tone, 16000)) > 1e-3
    with torch.no_grad():
        model.net.similarity.w.copy_((w + w.T) / 2)
    assert model.score(tone, clicks, 16000) == pytest.approx(model.score(clicks, tone, 16000), rel=1e-5)


def test_long_clips_are_scored_in_evenly_spread_windows(ckpt):
    path, _ = ckpt
    model = cc.Cocola(path)
    y = np.random.default_rng(0).standard_normal(16000 * 8).astype(np.float32) * 0.1
    w = cc.windows(y)
    assert w.shape == (2, cc.WINDOW)
    np.testing.assert_array_equal(w[0], y[:cc.WINDOW])
    np.testing.assert_array_equal(w[1], y[-cc.WINDOW:])  # the last window ends with the clip
    assert cc.windows(y[:16000 * 10 - 1]).shape == (2, cc.WINDOW)
    short = cc.windows(y[:16000])
    assert short.shape == (1, cc.WINDOW) and not short[0, 16000:].any()  # padded with silence
    tone, clicks = _tone_and_clicks(8.0)
    ex, ey = model.embed(tone, 16000), model.embed(clicks, 16000)
    with torch.no_grad():
        assert model.coherence(ex, ey) == pytest.approx(float(model.net.pairwise(ex, ey).mean()), rel=1e-6)
    parts = [model.score(tone[s:s + cc.WINDOW], clicks[s:s + cc.WINDOW], 16000) for s in (0, 16000 * 3)]
    assert model.coherence(ex, ey) == pytest.approx(np.mean(parts), rel=1e-5)


def test_features_are_harmonic_then_percussive_mel_db():
    """A 440 Hz tone plus a click every 0.5 s: the tone is in channel 0 (harmonic), the clicks in
    channel 1 (percussive), as COCOLA's checkpoint expects them."""
    import librosa

    tone, clicks = _tone_and_clicks(5.0)
    harmonic, percussive = f = cc.hpss_features(tone + clicks)
    assert f.shape == (2, 64, 501) and f.dtype == np.float32  # 5 s at a 160 hop, centred frames
    assert f.max(axis=(1, 2)).tolist() == [0.0, 0.0] and f.min() >= -80.0  # dB under each channel's max
    band = int(np.argmin(np.abs(librosa.mel_frequencies(66, fmin=60.0, fmax=7800.0)[1:-1] - 440.0)))
    assert np.median(harmonic[band]) > -3.0 and np.median(percussive[band]) < -40.0
    on, off = np.arange(0, 501, 50), np.arange(25, 501, 50)  # frames at and between the clicks
    assert percussive[:, on].mean() > percussive[:, off].mean() + 30.0
    assert percussive[:, on].mean() > harmonic[:, on].mean() + 30.0


def test_network_matches_efficientnet_pytorch(tmp_path, monkeypatch):
    """The same random weights in efficientnet_pytorch's EfficientNet-B0 (COCOLA's encoder) and
    the rest of the score written out: same embeddings and score to float precision."""
    effnet = pytest.importorskip("efficientnet_pytorch")
    torch.manual_seed(3)
    ref = calibrate(effnet.EfficientNet.from_name("efficientnet-b0", include_top=False, in_channels=2), 3)
    projection, norm = torch.nn.Linear(1280, 512), torch.nn.LayerNorm(512)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(512))
        norm.bias.copy_(0.1 * torch.randn(512))
    w = 0.05 * torch.randn(512, 512)
    state = OrderedDict({PREFIX + k: v for k, v in ref.state_dict().items()})
    state.update({"encoder.projection.weight": projection.weight.detach(), "encoder.projection.bias": projection.bias.detach(),
                  "layer_norm.weight": norm.weight.detach(), "layer_norm.bias": norm.bias.detach(), "similarity.w": w})
    path = tmp_path / "cocola.ckpt"
    save_lightning(path, state, monkeypatch)
    ours = cc.Cocola(path).net.double()  # float64 on both sides: float32 noise in 50 layers is not the question
    tone, clicks = _tone_and_clicks(5.0)
    feats = torch.from_numpy(np.stack([cc.hpss_features(tone), cc.hpss_features(clicks)])).double()
    ref, projection, norm, w = ref.double(), projection.double(), norm.double(), w.double()
    with torch.no_grad():
        e = torch.tanh(norm(projection(ref(feats).flatten(1))))
        got = ours.embed(feats)
        assert (e[0] - e[1]).abs().max() > 0.1  # the weights tell the two inputs apart
        torch.testing.assert_close(got, e, rtol=1e-9, atol=1e-9)
        assert float(ours.pairwise(got[:1], got[1:])) == pytest.approx(float(e[0] @ w @ e[1]), rel=1e-9)


# -- the report ------------------------------------------------------------------------------------

def _result(ran: bool) -> EvalResult:
    rows = [{"song": "s", "mode": m, "seed": 0 if m != REAL else None, "start_s": 0.0, "song_bpm": 120.0,
             "f1_context": 1.0, "f1_click": 1.0, "bpm": 120.0, "beats": 8, **({"cocola": c} if ran else {})}
            for m, c in (("mix", 0.25), (REAL, 0.75))]
    table = [{"mode": m, "clips": 1, "f1_context_mean": 1.0, "f1_context_std": 0.0, "f1_click_mean": 1.0,
              "f1_click_std": 0.0, "fad_tiny": None, "kad_tiny": None,
              **({"cocola_mean": c, "cocola_std": 0.0} if ran else {})} for m, c in (("mix", 0.25), (REAL, 0.75))]
    settings = {"instrument": "drums", "model": "m", "bars": 2, "seeds": [0], "embedders": ["tiny"], "tracker": "librosa"}
    cocola = {"ran": ran, "checkpoint": "/w/c.ckpt" if ran else None, "why": "" if ran else "no checkpoint in /w"}
    return EvalResult(settings, rows, table, "librosa 0.11", ["tiny"], [], {"total_s": 1.0}, cocola)


@pytest.mark.parametrize("ran", [True, False])
def test_report_has_a_cocola_column_only_when_it_ran(tmp_path, ran):
    paths = write_report(_result(ran), tmp_path / "r")
    with open(paths["table_csv"], newline="") as f:
        table = list(csv.DictReader(f))
    with open(paths["per_song_csv"], newline="") as f:
        per_song = list(csv.DictReader(f))
    record = json.loads(paths["settings_json"].read_text())
    markdown = paths["table_md"].read_text()
    assert record["cocola"]["ran"] is ran
    if ran:
        assert [float(r["cocola_mean"]) for r in table] == [0.25, 0.75]
        assert [float(r["cocola"]) for r in per_song] == [0.25, 0.75]
        assert "COCOLA vs context" in markdown and "0.250 ± 0.000" in markdown
        assert record["cocola"]["checkpoint"] == "/w/c.ckpt"
    else:
        assert "cocola_mean" not in table[0] and "cocola" not in per_song[0]
        assert "COCOLA not computed (no checkpoint in /w)" in markdown


def test_a_cocola_path_that_holds_no_checkpoint_stops_eval_before_generating(tmp_path, capsys):
    root = tmp_path / "plain"
    make_plain(root, songs=1, seconds=8)
    out = tmp_path / "report"
    rc = main(["eval", "--data", str(root), "--model", "tiny-random", "--instrument", "drums", "--out", str(out),
               "--embedders", "tiny", "--device", "cpu", "--quiet", "--cocola", str(tmp_path / "nope.ckpt")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "no COCOLA checkpoint at" in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_eval_end_to_end_reports_cocola_per_mode(tmp_path, monkeypatch, ckpt):
    """A checkpoint in WEIGHTS_DIR/eval/cocola/: every clip gets the score `Cocola.score` gives
    for it and its context, and the table has the per-mode means."""
    path, _ = ckpt
    weights = tmp_path / "weights"
    (weights / "eval" / "cocola").mkdir(parents=True)
    (weights / "eval" / "cocola" / path.name).write_bytes(path.read_bytes())
    monkeypatch.setenv("STAGE_BRIDGE_WEIGHTS", str(weights))
    root, out = tmp_path / "plain", tmp_path / "report"
    make_plain(root, songs=2, seconds=10, bpm_list=(120, 100))
    assert main(["eval", "--data", str(root), "--model", "tiny-random", "--instrument", "drums", "--out", str(out),
                 "--bars", "2", "--modes", "mix", "click", "--embedders", "tiny", "--device", "cpu", "--quiet"]) == 0
    with open(out / "table.csv", newline="") as f:
        table = list(csv.DictReader(f))
    with open(out / "per_song.csv", newline="") as f:
        per_song = list(csv.DictReader(f))
    record = json.loads((out / "settings.json").read_text())
    assert record["cocola"] == {"ran": True, "checkpoint": str(weights / "eval" / "cocola" / path.name), "why": ""}
    assert "COCOLA vs context" in (out / "table.md").read_text()
    model = cc.Cocola(path)
    settings = EvalSettings(data=root, model="tiny-random", instrument="drums", out=out, bars=2, embedders=("tiny",),
                            device="cpu")
    for song in discover_songs(root)[0]:
        ex = make_excerpt(song, "drums", ("vocals",), 2, SR, "librosa")
        for mode in ("mix", "click", REAL):
            audio = ex.target if mode == REAL else to_mono(load_audio(take_path(settings, song.name, mode, 0)).samples)
            row = next(r for r in per_song if r["song"] == song.name and r["mode"] == mode)
            assert float(row["cocola"]) == pytest.approx(model.score(ex.context, audio, SR), rel=1e-5, abs=1e-6)
    for row in table:
        mine = [float(r["cocola"]) for r in per_song if r["mode"] == row["mode"]]
        assert float(row["cocola_mean"]) == pytest.approx(np.mean(mine), abs=1e-12)
        assert float(row["cocola_std"]) == pytest.approx(np.std(mine), abs=1e-12)
    assert [r["mode"] for r in table] == ["mix", "click", REAL]
