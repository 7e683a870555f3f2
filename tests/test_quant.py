"""Weight-only int8/int4 decoding (`--precision int8|int4`): against the fp32 eager decoder.

Tolerances are relative to the spread (std) of the fp32 logits over the vocabulary: int8 within
5 % of it (measured 0.9-1.6 % on the models here), int4 within 50 % (measured 12-22 %)."""

from __future__ import annotations

import copy
import json
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from stage_bridge.engine.checkpoints import resolve
from stage_bridge.engine.decoder import COMPILED, Decoder
from stage_bridge.engine.generate import generate_codes
from stage_bridge.engine.lm import LMConfig, StageLM
from stage_bridge.engine.model import build_model, decode_precision, load_model
from stage_bridge.engine.quant import (
    INT4_GROUP, QuantLinear, int4_group, kernel_takes, quantize_int4, quantize_int8, quantize_problem,
)
from stage_bridge.errors import BadArgument

CPU = torch.device("cpu")
TOLERANCE = {"int8": 0.05, "int4": 0.5}  # max |logit diff| / std of the fp32 logits
SMALL = LMConfig(dim=256, num_layers=4, num_heads=4, ffn_dim=1024, num_codebooks=4, card=2048, text_dim=128)


def _tiny() -> StageLM:
    return build_model(resolve("tiny-random"), CPU, inference=False).lm


def _small() -> StageLM:
    torch.manual_seed(0)
    return StageLM(SMALL).eval()


def _logits(lm: StageLM, seed: int = 0) -> torch.Tensor:
    """A prefill of 24 random steps with a 5-token text prompt, 2 rows: (2, K, 24, card)."""
    g = torch.Generator().manual_seed(seed)
    cfg = lm.cfg
    tokens = torch.randint(0, cfg.card, (2, cfg.num_codebooks, 24), generator=g)
    positions = torch.arange(24)[None].expand(2, -1)
    text = torch.randn(2, 5, cfg.text_dim, generator=g)
    with torch.inference_mode():
        cross = lm.cross_context(text, torch.ones(2, 5, dtype=torch.bool))
        return lm(tokens, positions, torch.ones(2, 24, dtype=torch.bool), 0, cross)


def _quantized(lm: StageLM, scheme: str) -> StageLM:
    q = copy.deepcopy(lm)
    Decoder(q, quantize=scheme)
    return q


# -- the kernels --------------------------------------------------------------------------------

def test_private_kernels_keep_their_signatures():
    """quant.py calls these private ATen ops directly: a PyTorch that renames or reshapes them
    must fail here, not at a musician's first generation."""
    ops = torch.ops.aten
    assert str(ops._weight_int8pack_mm.default._schema) == \
        "aten::_weight_int8pack_mm(Tensor self, Tensor mat2, Tensor scales) -> Tensor"
    assert str(ops._weight_int4pack_mm_for_cpu.default._schema) == \
        "aten::_weight_int4pack_mm_for_cpu(Tensor self, Tensor mat2, int qGroupSize, Tensor qScaleAndZeros) -> Tensor"
    assert str(ops._convert_weight_to_int4pack_for_cpu.default._schema) == \
        "aten::_convert_weight_to_int4pack_for_cpu(Tensor self, int innerKTiles) -> Tensor"


@pytest.mark.parametrize("rows", [1, 2, 7])
@pytest.mark.parametrize("shape", [(64, 128), (96, 64), (48, 256)])
def test_kernels_compute_the_dequantized_product(shape, rows):
    """What the kernels compute, checked independently of them: x @ (dequantized W).T from the
    codes and scales by plain arithmetic (int4: code - 8 times scale plus zero, per group)."""
    torch.manual_seed(0)
    n, k = shape
    w, x = torch.randn(n, k), torch.randn(rows, k)
    q, scales = quantize_int8(w)
    want = x @ (q.float() * scales[:, None]).t()
    got = torch.ops.aten._weight_int8pack_mm(x, q, scales)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())

    group = int4_group(k)
    codes, s4, zeros = quantize_int4(w, group)
    plain = ((codes.view(n, -1, group).float() - 8.0) * s4[..., None] + zeros[..., None]).view(n, k)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    got4 = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group, torch.stack([s4, zeros], -1).transpose(0, 1).contiguous())
    want4 = x @ plain.t()
    assert torch.allclose(got4, want4, rtol=1e-4, atol=1e-4 * want4.abs().max().item())


def test_round_trip_error_is_bounded():
    """int8: every weight within half a step (scale / 2) of its original; int4: within half a
    step of its group. And the codes use the whole range, so the scales are not wasteful."""
    torch.manual_seed(1)
    w = torch.randn(40, 128) * torch.linspace(0.01, 3.0, 40)[:, None]  # channels of very different size
    q, scales = quantize_int8(w)
    err = (q.float() * scales[:, None] - w).abs()
    assert (err <= scales[:, None] / 2 + 1e-6).all()
    assert q.abs().amax(1).eq(127).all()

    codes, s4, zeros = quantize_int4(w, 64)
    back = ((codes.view(40, 2, 64).float() - 8.0) * s4[..., None] + zeros[..., None]).view(40, 128)
    assert ((back - w).abs().view(40, 2, 64) <= s4[..., None] / 2 + 1e-5).all()
    assert codes.min() == 0 and codes.max() == 15


@pytest.mark.parametrize("shape", [(7, 5), (5, 7), (17, 33), (1, 1)])
def test_odd_shapes_never_reach_the_private_kernels(shape, monkeypatch):
    """Shapes the private kernels are not known to take (bf16 `_weight_int8pack_mm` crashed the
    process on 7x5) never reach them: the layer multiplies by its dequantized weight instead
    (int8 without FBGEMM, int4)."""
    from stage_bridge.engine import quant

    torch.manual_seed(0)
    w = torch.randn(*shape)
    x = torch.randn(3, shape[1])
    monkeypatch.setattr(quant, "fbgemm_pack", lambda q, scales: None)  # as on a build without FBGEMM
    for scheme in ("int8", "int4"):
        layer = QuantLinear(w, scheme)
        assert layer.kernel == "dequantized" and not kernel_takes(scheme, *shape)
        assert torch.equal(layer(x), F.linear(x, layer.dequantized()))
        assert (layer.dequantized() - w).abs().max() <= w.abs().max() * (0.01 if scheme == "int8" else 0.2)


def _close(got: torch.Tensor, want: torch.Tensor, rel: float) -> bool:
    return bool((got - want).abs().max() <= rel * want.abs().max())


@pytest.mark.parametrize("shape", [(64, 2 * INT4_GROUP), (7, 5)])
def test_fbgemm_int8_computes_the_product_of_its_weights(shape, monkeypatch):
    """Without our kernels (no compiler), int8 runs FBGEMM's dynamic linear. It also rounds each
    input to 7-bit integers (one scale per call), so it agrees with the product by its
    dequantized weight to ~1-2 % of the output's scale, any shape."""
    from stage_bridge.engine import quant

    monkeypatch.setattr(quant.kernels, "library", lambda: None)
    torch.manual_seed(0)
    layer = QuantLinear(torch.randn(*shape), "int8")
    if layer.packed is None:
        pytest.skip("this PyTorch build has no FBGEMM / x86 quantized engine")
    assert layer.kernel == "fbgemm-dynamic"
    x = torch.randn(2, 3, shape[1])  # batch dims are kept
    assert layer(x).shape == (2, 3, shape[0])
    assert _close(layer(x), F.linear(x, layer.dequantized()), 0.04)


def test_private_kernels_on_bf16_activations(monkeypatch):
    """Without FBGEMM, int8 runs `_weight_int8pack_mm`; without our kernels (no compiler), int4
    runs `_weight_int4pack_mm_for_cpu`: both on bf16 activations, so within bf16 rounding
    (~0.4 %) of the dequantized product."""
    from stage_bridge.engine import quant

    torch.manual_seed(0)
    monkeypatch.setattr(quant, "fbgemm_pack", lambda q, scales: None)
    monkeypatch.setattr(quant.kernels, "library", lambda: None)
    x = torch.randn(2, 3, 2 * INT4_GROUP)
    for scheme, kernel in (("int8", "int8pack-bf16"), ("int4", "int4pack-bf16")):
        layer = QuantLinear(torch.randn(64, 2 * INT4_GROUP), scheme)
        assert layer.kernel == kernel
        assert _close(layer(x), F.linear(x, layer.dequantized()), 0.02)


# -- the decoder --------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("make", [_tiny, _small], ids=["tiny-random", "small-random"])
def test_quantized_logits_within_tolerance_of_fp32(make, scheme):
    lm = make()
    ref = _logits(lm)
    q = _quantized(lm, scheme)
    got = _logits(q)
    assert (got - ref).abs().max() <= TOLERANCE[scheme] * ref.std()
    if scheme == "int8":  # the ranking of the vocabulary survives: the same best token nearly everywhere
        assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.95


def test_what_is_quantized_and_what_stays_fp32():
    q = _quantized(_small(), "int8")
    for block in q.layers:
        for layer in (block.self_attn.qkv, block.self_attn.out, block.cross_attn.q, block.cross_attn.kv,
                      block.cross_attn.out, block.ffn.up, block.ffn.down):
            assert isinstance(layer, QuantLinear) and layer.scheme == "int8" and layer.kernel != "dequantized"
    assert all(h.weight.dtype == torch.float32 for h in q.heads)
    assert all(e.weight.dtype == torch.float32 for e in q.emb) and q.text_proj.weight.dtype == torch.float32
    q.pack_for_cpu()  # packs what is left in fp32 (the heads), skips the quantized layers
    assert isinstance(q.layers[0].ffn.up, QuantLinear)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_same_seed_same_tokens(scheme):
    model = load_model("tiny-random", "cpu", precision=scheme)
    assert model.precision == scheme and model.decoder.quantized == scheme
    context = torch.randint(0, model.lm.cfg.card, (model.lm.cfg.num_codebooks, 12), generator=torch.Generator().manual_seed(0))
    a = generate_codes(model.decoder, context, 12, takes=2, seed=5)
    b = generate_codes(model.decoder, context, 12, takes=2, seed=5)
    assert torch.equal(a, b)


def test_refused_where_not_offered():
    assert "CPU" in quantize_problem("int8", torch.device("cuda"), torch.float32)
    assert "CPU" in quantize_problem("int4", torch.device("mps"), torch.float32)
    assert "fp32" in quantize_problem("int8", CPU, torch.bfloat16)
    assert "--compile" in quantize_problem("int8", CPU, torch.float32, compiled=True)
    assert quantize_problem("int8", CPU, torch.float32) is None
    with pytest.raises(BadArgument, match="--compile"):
        Decoder(_small().requires_grad_(False), COMPILED, quantize="int8")
    with pytest.raises(BadArgument, match="int8"):  # a wrong name lists the quantized ones too
        decode_precision("int9")
    assert decode_precision("int4") == (torch.float32, "int4") and decode_precision("bf16") == (torch.bfloat16, None)


def test_generate_records_the_precision_in_the_sidecar(tmp_path, capsys):
    from stage_bridge.cli import main

    args = ["generate", "--instrument", "drums", "--bpm", "120", "--bars", "1", "--model", "tiny-random",
            "--context-mode", "click", "--out", str(tmp_path / "out"), "--quiet", "--seed", "3", "--device", "cpu"]
    assert main(args + ["--precision", "int8"]) == 0
    take = Path(capsys.readouterr().out.split()[0])
    assert json.loads(take.with_suffix(".json").read_text())["precision"] == "int8"
    assert main(args + ["--precision", "int8", "--compile"]) == 2  # refused in one line, before any work
    assert "--compile" in capsys.readouterr().err


# -- the benchmark ------------------------------------------------------------------------------

BENCH = ["--layers", "2", "--dim", "64", "--heads", "4", "--ffn", "128", "--context-frames", "20",
         "--gen-frames", "10", "--repeats", "1", "--json", "--bw-mib", "64", "--probe-every", "4",
         "--skip-transformers", "--quality-frames", "12"]


def test_bench_runs_the_precision_and_fp32_side_by_side(capsys):
    from stage_bridge.bench import main

    assert main(BENCH + ["--precision", "int8"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["precision"] == "int8" and r["dtype"] == "fp32"
    assert len(r["ours_runs_ms_per_step"]) == len(r["fp32_runs_ms_per_step"]) == 1
    assert abs(r["speedup_vs_fp32"] - r["fp32_ms_per_step"] / r["ours_ms_per_step"]) < 1e-9
    assert r["floor"]["bytes_per_step"] < r["floor"]["fp32_bytes_per_step"]  # int8 linears read fewer bytes
    assert r["floor_ms_per_step"] < r["fp32_floor_ms_per_step"]
    q = r["quality"]
    assert q["compared_steps"] == 12 + 3 and q["frames"] == 12  # prefill's last + one per sampled step
    assert 0 <= r["max_abs_logit_diff"] <= TOLERANCE["int8"] * q["fp32_logit_std"]
    assert 0 <= r["mean_kl"] < 1e-3
    for key in ("top1_agreement", "top250_agreement"):
        assert 0.9 <= r[key] <= 1.0, key
    assert 0.0 <= r["greedy_frame_agreement"] <= 1.0  # free greedy decodes part at the first near-tie
    assert "heads" in r["quantized_layers"]


def test_bench_without_precision_has_no_side_by_side(capsys):
    from stage_bridge.bench import main

    assert main(BENCH) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["precision"] == "fp32" and r["fp32_ms_per_step"] is None and r["quality"] is None
    assert r["floor"]["bytes_per_step"] == r["floor"]["fp32_bytes_per_step"]


def test_bench_refuses_a_precision_it_cannot_run(capsys):
    from stage_bridge.bench import main

    assert main(BENCH + ["--precision", "int8", "--compile"]) == 2
    assert "--compile" in capsys.readouterr().err
    assert main(BENCH + ["--precision", "int8", "--dtype", "bf16"]) == 2
    assert "fp32" in capsys.readouterr().err


def test_the_daemon_serves_integer_precisions_and_drops_compile_for_them(tmp_path, caplog):
    """`serve --precision int8` loads quantized models (the sidecar and `doctor` then say int8);
    --compile does not apply to integer kernels: said in the log, and the models still load."""
    from stage_bridge.bridge import daemon
    from stage_bridge.bridge.config import ServeConfig

    with caplog.at_level("WARNING", logger="stage_bridge.daemon"):
        models, _ = daemon.load_models(ServeConfig(home=tmp_path, models={"drums": "tiny-random"}, device="cpu",
                                                   precision="int8", compile=True))
    model = models["drums"]
    assert model.precision == "int8" and model.decoder.mode == "eager"
    assert "--compile does not apply to --precision int8" in caplog.text
    models, _ = daemon.load_models(ServeConfig(home=tmp_path, models={"drums": "tiny-random"}, device="cpu",
                                               precision="int4"))
    assert models["drums"].precision == "int4"


def test_daemon_on_a_gpu_runs_an_integer_precision_config_in_fp32(tmp_path, monkeypatch, caplog):
    """A config written for a laptop (`precision = "int8"`) still serves on a GPU machine: the
    integer kernels are CPU ones, so it says so and loads fp32 instead of failing every model."""
    from stage_bridge.bridge import daemon
    from stage_bridge.bridge.config import ServeConfig
    from stage_bridge.engine import model as model_mod

    built, loaded = [], types.SimpleNamespace(is_random=False)
    monkeypatch.setattr(model_mod, "pick_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(model_mod, "build_model", lambda ckpt, device, dtype, compile, quantize: built.append(
        (device.type, dtype, quantize)) or loaded)
    with caplog.at_level("WARNING", logger="stage_bridge.daemon"):
        models, _ = daemon.load_models(ServeConfig(home=tmp_path, models={"drums": "tiny-random"}, precision="int8"))
    assert built == [("cuda", torch.float32, None)] and models["drums"] is loaded
    assert "--precision int8 is for the CPU; on cuda the models run in fp32" in caplog.text
