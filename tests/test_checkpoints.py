"""Checkpoint loading: every official layout maps strictly onto our modules at full musicgen-small size.

The key/shape manifests in tests/fixtures/manifests/ are copies of ../shared/reference/*.tsv (see
its README): the state dicts of MusicGen-small as transformers and audiocraft build them, and of
STAGE's LightningMusicgen. Nothing here needs the real weights or a network.

- Mapping: each manifest becomes a state dict of meta tensors (no memory), goes through the
  mapping functions and the loaders, and is loaded with strict=True into modules built on meta.
- Real files: full-size files with random float16 values go through `resolve` and `build_model`
  (one ~1.2 GB file alive at a time, deleted after each test).
- Errors, the `tiny-random` preset and the native format on small dicts.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import pickle
import shutil
import sys
from pathlib import Path

from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import EncodecModel, MusicgenConfig, MusicgenDecoderConfig, T5EncoderModel

from stage_bridge.engine import checkpoints, model as model_mod
from stage_bridge.engine.checkpoints import (STAGE_WEIGHTS_URL, KeyMapper, codec_from_audiocraft,
                                             codec_from_transformers, lm_from_audiocraft, lm_from_stage,
                                             lm_from_transformers, load_state_file, load_torch_file, resolve,
                                             save_native, sep_row, t5_state)
from stage_bridge.engine.codec import musicgen_codec_config
from stage_bridge.engine.lm import LMConfig, StageLM
from stage_bridge.engine.model import build_model
from stage_bridge.engine.text import ByteTokenizer, t5_base_config
from stage_bridge.errors import CheckpointError, WeightsMissing

MANIFESTS = Path(__file__).parent / "fixtures" / "manifests"
MUSICGEN_SMALL = LMConfig(dim=1024, num_layers=24, num_heads=16, ffn_dim=4096, num_codebooks=4, card=2048,
                          text_dim=768)
HF_POSITIONS = "decoder.model.decoder.embed_positions.weights"
STAGE_T5_ALIAS = "condition_provider.embedders.description.t5.shared.weight"
CPU = torch.device("cpu")


# -- manifests ---------------------------------------------------------------------------------

def manifest(name: str) -> dict[str, tuple[int, ...]]:
    """key -> shape, in file order."""
    out: dict[str, tuple[int, ...]] = {}
    for line in (MANIFESTS / f"{name}.tsv").read_text().splitlines():
        if line.strip():
            key, shape, dtype = line.split("\t")
            assert dtype == "float32"
            out[key] = tuple(int(s) for s in shape.split(",")) if shape else ()
    return out


def hf_shapes(legacy: bool = False) -> dict[str, tuple[int, ...]]:
    """transformers layout; `legacy`: weight_g/weight_v names plus the positional table that some
    converted hub files carry."""
    shapes = manifest("hf_musicgen_small")
    if not legacy:
        return shapes
    out = {}
    for k, s in shapes.items():
        k = k.replace(".parametrizations.weight.original0", ".weight_g")
        out[k.replace(".parametrizations.weight.original1", ".weight_v")] = s
    out[HF_POSITIONS] = (2048, 1024)
    return out


def stage_shapes(drop_alias: bool = True) -> dict[str, tuple[int, ...]]:
    """STAGE layout; safetensors' save_model keeps one alias of the tied T5 embedding (611 tensors)."""
    shapes = manifest("stage_lightning_musicgen")
    if drop_alias:
        del shapes[STAGE_T5_ALIAS]
    return shapes


def meta_state(shapes: dict[str, tuple[int, ...]]) -> dict:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def layout_shapes(layout: str) -> dict[str, dict[str, tuple[int, ...]]]:
    """file name -> key shapes, for each layout under test."""
    if layout == "stage-612":
        return {"stage-drums.safetensors": stage_shapes(drop_alias=False)}
    if layout == "stage-611":
        return {"stage-drums.safetensors": stage_shapes()}
    if layout == "hf":
        return {"model.safetensors": hf_shapes()}
    if layout == "hf-legacy":
        return {"model.safetensors": hf_shapes(legacy=True)}
    if layout == "audiocraft":
        return {"state_dict.bin": manifest("audiocraft_musicgen_small_lm"),
                "compression_state_dict.bin": manifest("audiocraft_encodec_32khz")}
    raise AssertionError(layout)


LAYOUTS = ["stage-612", "stage-611", "hf", "hf-legacy", "audiocraft"]


def test_manifests_match_the_reference_counts():
    assert len(manifest("hf_musicgen_small")) == 612
    assert len(manifest("audiocraft_musicgen_small_lm")) == 300
    assert len(manifest("audiocraft_encodec_32khz")) == 116
    assert len(stage_shapes(drop_alias=False)) == 612
    assert len(stage_shapes()) == 611


# -- mapping at full size on the meta device ---------------------------------------------------

def strict_load_on_meta(lm_state: dict, codec_state: dict, text_state: dict | None,
                        lm_cfg: LMConfig = MUSICGEN_SMALL, codec_cfg=None, text_cfg=None) -> None:
    """Every key and shape must match modules built from the configs (strict, nothing allocated)."""
    with torch.device("meta"):
        lm = StageLM(lm_cfg)
        codec = EncodecModel(codec_cfg or musicgen_codec_config())
        text = T5EncoderModel(text_cfg or t5_base_config()) if text_state is not None else None
    lm.load_state_dict(lm_state, strict=True, assign=True)
    codec.load_state_dict(codec_state, strict=True, assign=True)
    if text is not None:
        text.load_state_dict(text_state, strict=True, assign=True)


def map_layout(layout: str, files: dict[str, dict]) -> tuple[dict, dict, dict | None]:
    """The mapping functions, called as the loaders call them, through KeyMappers that must finish."""
    cfg = MUSICGEN_SMALL
    if layout.startswith("hf"):
        m = KeyMapper(files["model.safetensors"], layout)
        lm = lm_from_transformers(m, cfg, "decoder.model.decoder.", "decoder.", "enc_to_dec_proj.")
        codec = codec_from_transformers(m)
        text = t5_state(m, "text_encoder.")
        m.finish(ignore=[HF_POSITIONS])
        return lm, codec, text
    if layout == "audiocraft":
        m = KeyMapper(files["state_dict.bin"], "state_dict.bin")
        lm = lm_from_audiocraft(m, cfg)
        m.finish()
        cm = KeyMapper(files["compression_state_dict.bin"], "compression_state_dict.bin")
        codec = codec_from_audiocraft(cm, "")
        cm.finish()
        return lm, codec, None
    m = KeyMapper(files["stage-drums.safetensors"], layout)
    lm = lm_from_stage(m, cfg)
    codec = codec_from_audiocraft(m, "encodec_model.")
    text = t5_state(m, "condition_provider.embedders.description.t5.")
    m.finish()
    return lm, codec, text


def source_embedding_rows(layout: str, files: dict[str, dict]) -> int:
    key = {"hf": "decoder.model.decoder.embed_tokens.0.weight", "audiocraft": "emb.0.weight",
           "stage": "lm.decoder.token_emb.emb.0.weight"}[layout.split("-")[0]]
    return next(iter(f[key] for f in files.values() if key in f)).shape[0]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_mapping_is_strict_at_full_size_on_meta(layout):
    files = {name: meta_state(shapes) for name, shapes in layout_shapes(layout).items()}
    lm, codec, text = map_layout(layout, files)

    # STAGE already has the context-token row; base MusicGen tables (card + pad) grow by one.
    assert source_embedding_rows(layout, files) == (2050 if layout.startswith("stage") else 2049)
    for k in range(4):
        assert tuple(lm[f"emb.{k}.weight"].shape) == (2050, 1024)
        assert tuple(lm[f"heads.{k}.weight"].shape) == (2048, 1024)
    if text is not None:  # both names of the tied T5 embedding, whichever the file kept
        assert text["shared.weight"].shape == text["encoder.embed_tokens.weight"].shape == (32128, 768)
    strict_load_on_meta(lm, codec, text)


def write_hf_config(folder: Path) -> None:
    """config.json of MusicgenForConditionalGeneration with musicgen-small's sub-configs."""
    MusicgenConfig(text_encoder=t5_base_config(), audio_encoder=musicgen_codec_config(),
                   decoder=MusicgenDecoderConfig()).save_pretrained(folder)


def load_on_meta(layout: str, folder: Path, monkeypatch, drop: str | None = None,
                 add: dict | None = None):
    """Run the real loader over a folder whose files are replaced by meta state dicts."""
    files = {name: meta_state(shapes) for name, shapes in layout_shapes(layout).items()}
    for state in files.values():
        state.pop(drop, None)
    for name, extra in (add or {}).items():
        files[name].update(extra)
    folder.mkdir(exist_ok=True)
    for name in files:
        (folder / name).touch()
    if layout.startswith("hf"):
        write_hf_config(folder)
    monkeypatch.setattr(checkpoints, "load_state_file", lambda path: dict(files[Path(path).name]))
    if layout.startswith("stage"):
        return checkpoints.from_stage_file(folder / "stage-drums.safetensors", "stage-drums")
    return resolve(str(folder))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_loaders_infer_musicgen_small_on_meta(layout, tmp_path, monkeypatch):
    ckpt = load_on_meta(layout, tmp_path / "model", monkeypatch)
    assert ckpt.lm_config == MUSICGEN_SMALL == LMConfig()
    assert ckpt.format == {"stage": "stage", "hf": "transformers", "audiocraft": "audiocraft"}[layout.split("-")[0]]
    if layout == "audiocraft":
        assert ckpt.text_state is None and ckpt.tokenizer == "t5-base"
        assert ckpt.codec_config.pad_mode == "constant"
    else:
        assert ckpt.codec_config.pad_mode == "reflect"
        assert ckpt.text_config.num_layers == 12 and ckpt.text_config.d_model == 768
    strict_load_on_meta(ckpt.lm_state, ckpt.codec_state, ckpt.text_state, ckpt.lm_config,
                        ckpt.codec_config, ckpt.text_config)


# -- real full-size files through resolve + build_model ----------------------------------------

class XpConfig:
    """Stands for omegaconf's DictConfig stored as 'xp.cfg' next to audiocraft's best_state."""

    def __init__(self, **values):
        self._content = {k: XpNode(v) for k, v in values.items()}
        self._flags = {"readonly": False}


class XpNode:
    def __init__(self, value):
        self._val = value

    def __getstate__(self):
        return {"_val": self._val, "_parent": None}


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """float16 random values (the loaders must accept another dtype than the fp32 manifests)."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g, dtype=torch.float16) for k, s in shapes.items()}


@pytest.fixture
def big_dir(tmp_path):
    """A folder for one ~1.2 GB model, removed at teardown (pytest keeps old tmp_paths)."""
    folder = tmp_path / "big"
    folder.mkdir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
    gc.collect()


@pytest.fixture
def no_hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, so nothing cached on this machine (t5-base, musicgen) is found."""
    import huggingface_hub.constants as hub_constants
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def byte_tokenizer(monkeypatch):
    """Stand-in for the absent t5-base tokenizer, so build_model loads the file's T5 strictly."""
    monkeypatch.setattr(model_mod, "_load_tokenizer", lambda source: ByteTokenizer())


def check_lm_state(ckpt, emb_source: torch.Tensor, qkv_parts: list[torch.Tensor],
                   cross_parts: list[torch.Tensor]) -> None:
    """Values land where they belong (layer 5; self-attention rows q;k;v, cross q | k;v)."""
    assert ckpt.lm_config == MUSICGEN_SMALL
    emb = ckpt.lm_state["emb.0.weight"]
    assert emb.shape == (2050, 1024)
    assert torch.equal(emb[:2048], emb_source[:2048])
    assert not emb[2048].any()  # pad row zeroed
    want_sep = emb_source[2049] if emb_source.shape[0] == 2050 else sep_row(1024, emb_source.dtype)[0]
    assert torch.equal(emb[2049], want_sep)
    assert torch.equal(ckpt.lm_state["layers.5.self_attn.qkv.weight"], torch.cat(qkv_parts))
    assert torch.equal(ckpt.lm_state["layers.5.cross_attn.q.weight"], cross_parts[0])
    assert torch.equal(ckpt.lm_state["layers.5.cross_attn.kv.weight"], torch.cat(cross_parts[1:]))


def check_built(built, ckpt, with_text: bool) -> None:
    assert built.lm.heads[0].weight.dtype == torch.float32  # build_model casts the fp16 file
    assert torch.equal(built.lm.emb[0].weight[2049], ckpt.lm_state["emb.0.weight"][2049].float())
    assert not built.lm.emb[3].weight[2048].any()
    assert built.sample_rate == 32000 and built.codec.num_codebooks == 4
    assert (built.text is not None) == with_text


@pytest.mark.slow
def test_stage_safetensors_full_size(big_dir, byte_tokenizer):
    state = random_state(stage_shapes())
    save_file(state, str(big_dir / "stage-drums.safetensors"))
    with safe_open(str(big_dir / "stage-drums.safetensors"), "pt") as f:
        assert len(list(f.keys())) == 611

    ckpt = resolve("stage-drums", weights_dir=big_dir)
    assert (ckpt.format, ckpt.name, ckpt.is_random) == ("stage", "stage-drums", False)
    x = "lm.decoder.attn_layers.layers.15.1."
    c = "lm.decoder.attn_layers.layers.16.1."
    check_lm_state(ckpt, state["lm.decoder.token_emb.emb.0.weight"], [state[f"{x}to_{p}.weight"] for p in "qkv"],
                   [state[f"{c}to_{p}.weight"] for p in "qkv"])
    t5_emb = state["condition_provider.embedders.description.t5.encoder.embed_tokens.weight"]
    assert torch.equal(ckpt.text_state["shared.weight"], t5_emb)
    del state

    built = build_model(ckpt, CPU)
    check_built(built, ckpt, with_text=True)
    assert torch.equal(built.text.model.shared.weight, t5_emb.float())
    assert built.text.model.encoder.embed_tokens.weight is built.text.model.shared.weight
    assert built.codec.model.config.pad_mode == "reflect"


@pytest.mark.slow
def test_audiocraft_folder_full_size(big_dir, no_hub_cache):
    lm_state = random_state(manifest("audiocraft_musicgen_small_lm"), seed=1)
    cfg = XpConfig(solver="musicgen", dset="audio/default")
    torch.save({"best_state": lm_state, "xp.cfg": cfg}, big_dir / "state_dict.bin")
    emb0 = lm_state["emb.0.weight"].clone()
    qkv = list(lm_state["transformer.layers.5.self_attn.in_proj_weight"].clone().chunk(3))
    cross = list(lm_state["transformer.layers.5.cross_attention.in_proj_weight"].clone().chunk(3))
    del lm_state
    torch.save({"best_state": random_state(manifest("audiocraft_encodec_32khz"), seed=2), "xp.cfg": cfg},
               big_dir / "compression_state_dict.bin")
    gc.collect()

    ckpt = resolve(str(big_dir))
    assert ckpt.format == "audiocraft"
    check_lm_state(ckpt, emb0, qkv, cross)
    assert ckpt.text_state is None and ckpt.codec_config.pad_mode == "constant"

    built = build_model(ckpt, CPU)  # offline: no t5-base tokenizer or weights
    check_built(built, ckpt, with_text=False)
    assert "t5-base" in built.text_missing_reason and "stage-bridge weights --fetch" in built.text_missing_reason
    with pytest.raises(WeightsMissing, match="t5-base"):
        built.require_text()
    assert built.codec.model.config.pad_mode == "constant"


@pytest.mark.slow
@pytest.mark.parametrize("legacy", [False, True], ids=["parametrizations", "weight_g_v"])
def test_transformers_folder_full_size(legacy, big_dir, byte_tokenizer):
    shapes = hf_shapes(legacy)
    state = random_state(shapes, seed=3)
    assert (HF_POSITIONS in state) == legacy
    write_hf_config(big_dir)
    save_file(state, str(big_dir / "model.safetensors"))

    ckpt = resolve(str(big_dir))
    assert ckpt.format == "transformers"
    h = "decoder.model.decoder.layers.5.self_attn."
    check_lm_state(ckpt, state["decoder.model.decoder.embed_tokens.0.weight"],
                   [state[f"{h}{p}_proj.weight"] for p in "qkv"],
                   [state[f"decoder.model.decoder.layers.5.encoder_attn.{p}_proj.weight"] for p in "qkv"])
    g = "encoder.layers.0.conv." + ("weight_g" if legacy else "parametrizations.weight.original0")
    assert torch.equal(ckpt.codec_state["encoder.layers.0.conv.parametrizations.weight.original0"],
                       state["audio_encoder." + g])
    del state

    built = build_model(ckpt, CPU)
    check_built(built, ckpt, with_text=True)
    assert built.codec.model.config.pad_mode == "reflect"


# -- audiocraft's pickled experiment config ----------------------------------------------------

def test_named_classes_load_as_inert_stand_ins(tmp_path):
    path = tmp_path / "state_dict.bin"
    torch.save({"best_state": {"emb.0.weight": torch.ones(3, 2)}, "xp.cfg": XpConfig(a=1, b=[2, 3])}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, map_location="cpu", weights_only=True)
    obj = load_torch_file(path)
    assert type(obj["xp.cfg"]) is not XpConfig  # an inert stand-in: the class was never looked up
    assert torch.equal(load_state_file(path)["emb.0.weight"], torch.ones(3, 2))


def test_a_config_class_from_an_absent_module_loads_without_importing_it(tmp_path, monkeypatch):
    """Written as omegaconf.dictconfig.DictConfig (a module absent here), it still loads."""
    if importlib.util.find_spec("omegaconf") is not None:
        pytest.skip("omegaconf is installed; this test needs it absent")
    path = tmp_path / "state_dict.bin"
    fake = type(sys)("omegaconf.dictconfig")
    with monkeypatch.context() as mp:
        cls = type("DictConfig", (XpConfig,), {"__module__": "omegaconf.dictconfig"})
        fake.DictConfig = cls
        mp.setitem(sys.modules, "omegaconf", type(sys)("omegaconf"))
        mp.setitem(sys.modules, "omegaconf.dictconfig", fake)
        torch.save({"best_state": {"linears.0.weight": torch.arange(4.0)}, "xp.cfg": cls(x=1)}, path)
    assert "omegaconf" not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        torch.load(path, map_location="cpu", weights_only=False)
    assert torch.equal(load_state_file(path)["linears.0.weight"], torch.arange(4.0))
    assert "omegaconf" not in sys.modules


class _RunsCode:
    """A pickle that calls a function when loaded (what a hostile checkpoint does)."""

    def __init__(self, call: Any, *args: Any):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize("call", ["os.system", "builtins.exec", "builtins.__import__", "torch.hub.load"])
def test_a_checkpoint_that_names_code_runs_none_of_it(tmp_path, call):
    """Whatever a checkpoint names beyond tensors and containers (os.system, exec, __import__, a
    torch function) is a stand-in that is never called; the weights still load."""
    import builtins
    import os

    marker = tmp_path / "ran"
    target = {"os.system": os.system, "builtins.exec": builtins.exec, "builtins.__import__": builtins.__import__,
              "torch.hub.load": torch.hub.load}[call]
    arg = {"os.system": f"touch {marker}", "builtins.exec": f"open({str(marker)!r}, 'w')",
           "builtins.__import__": "antigravity", "torch.hub.load": "pytorch/vision"}[call]
    path = tmp_path / "state_dict.bin"
    torch.save({"best_state": {"emb.0.weight": torch.ones(2)}, "payload": _RunsCode(target, arg)}, path)
    try:
        assert torch.equal(load_state_file(path)["emb.0.weight"], torch.ones(2))
    except CheckpointError as e:  # torch refuses some modules (os, posix, ...) outright: also fine
        assert "blocked" in str(e), e
    assert not marker.exists() and "antigravity" not in sys.modules


# -- errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout,key", [
    ("stage-611", "lm.decoder.attn_layers.layers.40.1.to_k.weight"),
    ("stage-611", "lm.decoder.token_emb.emb.0.weight"),
    ("stage-611", "condition_provider.embedders.description.output_proj.weight"),
    ("hf", "decoder.model.decoder.layers.23.encoder_attn.v_proj.weight"),
    ("hf", "enc_to_dec_proj.weight"),
    ("hf", "decoder.lm_heads.0.weight"),
    ("audiocraft", "transformer.layers.11.cross_attention.in_proj_weight"),
    ("audiocraft", "emb.0.weight"),
    ("audiocraft", "condition_provider.conditioners.description.output_proj.bias"),
])
def test_missing_key_is_named(layout, key, tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="missing key") as info:
        load_on_meta(layout, tmp_path / "model", monkeypatch, drop=key)
    assert f"'{key}'" in str(info.value)


@pytest.mark.parametrize("layout,file,key", [
    ("stage-611", "stage-drums.safetensors", "lm.decoder.memory_tokens"),
    ("hf", "model.safetensors", "decoder.model.decoder.layers.0.self_attn.rotary.inv_freq"),
    ("audiocraft", "state_dict.bin", "transformer.layers.3.extra.weight"),
])
def test_unexpected_key_is_named(layout, file, key, tmp_path, monkeypatch):
    extra = {file: {key: torch.empty(4, device="meta")}}
    with pytest.raises(CheckpointError, match="unexpected key") as info:
        load_on_meta(layout, tmp_path / "model", monkeypatch, add=extra)
    assert f"'{key}'" in str(info.value)


def test_key_mapper_names_keys():
    m = KeyMapper({"a.weight": torch.zeros(1), "b.weight": torch.zeros(1), "c.bias": torch.zeros(1)}, "x.bin")
    with pytest.raises(CheckpointError, match="x.bin: missing key 'z.weight'"):
        m.take("z.weight")
    m.take("a.weight")
    with pytest.raises(CheckpointError, match=r"unexpected key 'b.weight' \(and 1 more\)"):
        m.finish()
    m.finish(ignore=["b.weight", "c.bias"])


@pytest.mark.parametrize("part,key", [("codec_state", "quantizer.layers.1.codebook.embed"),
                                      ("text_state", "encoder.block.0.layer.1.DenseReluDense.wi.weight"),
                                      ("lm_state", "layers.1.ffn.down.weight")])
def test_build_model_refuses_missing_and_extra_keys(part, key):
    """Keys the layout mappers pass through by prefix (EnCodec, T5) are checked by build_model."""
    ckpt = resolve("tiny-random")
    state = getattr(ckpt, part)
    value = state.pop(key)
    with pytest.raises(CheckpointError, match=f"missing key '{key}'"):
        build_model(ckpt, CPU)
    state[key] = value
    state["bogus.weight"] = value
    with pytest.raises(CheckpointError, match="unexpected key 'bogus.weight'"):
        build_model(ckpt, CPU)


def test_named_stage_weights_missing(tmp_path):
    with pytest.raises(WeightsMissing) as info:
        resolve("stage-drums", weights_dir=tmp_path)
    msg = str(info.value)
    assert "stage-drums.safetensors" in msg
    assert str(tmp_path / "stage-drums.safetensors") in msg
    assert STAGE_WEIGHTS_URL in msg and STAGE_WEIGHTS_URL.startswith("https://")


def test_hub_id_offline_is_weights_missing(tmp_path, no_hub_cache):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(WeightsMissing, match="stage-bridge weights --fetch"):
        resolve("facebook/musicgen-small", weights_dir=tmp_path)


def test_non_checkpoint_files(tmp_path):
    (tmp_path / "notes.txt").write_text("not weights")
    (tmp_path / "junk.safetensors").write_bytes(os.urandom(4096))
    save_file({"classifier.weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    junk_bin = tmp_path / "junk"
    junk_bin.mkdir()
    (junk_bin / "state_dict.bin").write_bytes(os.urandom(4096))
    other_bin = tmp_path / "other"
    other_bin.mkdir()
    torch.save({"best_state": {"classifier.weight": torch.zeros(2)}}, other_bin / "state_dict.bin")
    for path in ("notes.txt", "junk.safetensors", "other.safetensors", "junk", "other"):
        with pytest.raises(CheckpointError):
            resolve(str(tmp_path / path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsMissing, match="holds no model"):
        resolve(str(tmp_path / "empty"))
    with pytest.raises(WeightsMissing, match="neither a file or folder"):
        resolve(str(tmp_path / "absent"), weights_dir=tmp_path)


# -- tiny-random and the native format -----------------------------------------------------------

def all_tensors(ckpt) -> dict[str, torch.Tensor]:
    out = {f"lm.{k}": v for k, v in ckpt.lm_state.items()}
    out.update({f"codec.{k}": v for k, v in ckpt.codec_state.items()})
    out.update({f"text.{k}": v for k, v in (ckpt.text_state or {}).items()})
    return out


def test_tiny_random_is_fixed():
    a, b = resolve("tiny-random"), resolve("tiny-random")
    assert a.is_random and a.format == "tiny-random" and a.tokenizer is None
    ta, tb = all_tensors(a), all_tensors(b)
    assert ta.keys() == tb.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    built = build_model(a, CPU)
    assert built.is_random and built.text is not None


def test_native_round_trip_is_exact(tmp_path):
    ckpt = resolve("tiny-random")
    ckpt.meta = {"run": "unit-test"}
    save_native(ckpt, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "stage_bridge.json").read_text())["is_random"] is True
    back = resolve(str(tmp_path / "run"))
    assert (back.format, back.name, back.is_random, back.tokenizer, back.meta) == \
        ("native", "tiny-random", True, None, {"run": "unit-test"})
    assert back.lm_config == ckpt.lm_config
    assert back.codec_config.to_dict() == ckpt.codec_config.to_dict()
    assert back.text_config.to_dict() == ckpt.text_config.to_dict()
    want, got = all_tensors(ckpt), all_tensors(back)
    assert want.keys() == got.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
    build_model(back, CPU)  # the tied T5 embedding is restored, so the strict load passes
