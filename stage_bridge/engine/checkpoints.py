"""Model weights from every official layout, mapped strictly onto our modules.

Layouts:
- `transformers`: `facebook/musicgen-small` (MusicgenForConditionalGeneration: decoder, T5 text
  encoder, EnCodec, projection) or a bare MusicgenForCausalLM; a local folder or a hub id found
  in huggingface_hub's cache.
- `audiocraft`: `state_dict.bin` (LM + text projection) + `compression_state_dict.bin` (EnCodec);
  T5 is not stored there and comes from `t5-base`.
- `stage`: the official `stage-drums.safetensors` / `stage-bass.safetensors` (x-transformers
  layout; the whole model: LM with the 2050-row embeddings, EnCodec, T5, projection).
- `native`: what stage-bridge itself writes (fine-tuning runs): `model.safetensors` + `stage_bridge.json`.
- `tiny-random`: a small model with fixed random weights. It produces noise and exists only for
  tests and demos; it is never chosen unless asked for by name.

Every key is accounted for: a missing or unexpected key raises `CheckpointError` naming it.
Missing files raise `WeightsMissing` saying which files to get and where to put them.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import Tensor
import transformers
from transformers import EncodecConfig, T5Config

from ..atomic import write_atomic
from ..errors import CheckpointError, WeightsMissing
from .codec import musicgen_codec_config
from .lm import LMConfig
from .text import t5_base_config

TINY_RANDOM = "tiny-random"
STAGE_NAMES = ("stage-drums", "stage-bass")
STAGE_WEIGHTS_URL = "https://drive.google.com/drive/folders/1tNZsN3OYC8PGVklCRPkebPvS5QGX1w1q"
T5_TOKENIZER_IDS = ("t5-base", "google-t5/t5-base")
NATIVE_CONFIG = "stage_bridge.json"
NATIVE_WEIGHTS = "model.safetensors"
SEP_INIT_SEED = 2049


@dataclass
class Checkpoint:
    """Weights of a whole model, already in our parameter names."""

    name: str
    format: str
    lm_config: LMConfig
    lm_state: dict[str, Tensor]
    codec_config: EncodecConfig
    codec_state: dict[str, Tensor]
    text_config: T5Config
    text_state: dict[str, Tensor] | None  # None: load pretrained T5 weights from `tokenizer`
    tokenizer: str | None  # folder or hub id of the T5 tokenizer; None: byte tokenizer (tiny)
    is_random: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


# -- strict key accounting ---------------------------------------------------------------------

class KeyMapper:
    """Hands out tensors by key and refuses to finish while any key is left over."""

    def __init__(self, state: dict[str, Tensor], source: str):
        self.state = state
        self.source = source
        self.used: set[str] = set()

    def take(self, key: str) -> Tensor:
        if key not in self.state:
            raise CheckpointError(f"{self.source}: missing key '{key}'. The file is incomplete or "
                                  "of another model; re-download it.")
        self.used.add(key)
        return self.state[key]

    def take_prefix(self, prefix: str) -> dict[str, Tensor]:
        out = {k[len(prefix):]: v for k, v in self.state.items() if k.startswith(prefix)}
        self.used.update(prefix + k for k in out)
        return out

    def finish(self, ignore: Iterable[str] = ()) -> None:
        ignored = set(ignore)
        extra = sorted(k for k in self.state if k not in self.used and k not in ignored)
        if extra:
            raise CheckpointError(f"{self.source}: unexpected key '{extra[0]}'"
                                  + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
                                  + ". This is not a layout stage-bridge knows; check --model.")


def _count(state: dict[str, Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in state for m in [rx.match(k)] if m}
    return max(found) + 1 if found else 0


def sep_row(dim: int, dtype: torch.dtype) -> Tensor:
    """Initial embedding of the context token for a base model (seeded Kaiming normal, as STAGE)."""
    g = torch.Generator().manual_seed(SEP_INIT_SEED)
    return (torch.randn(1, dim, generator=g) * (2.0 / dim) ** 0.5).to(dtype)


def _grow_embedding(w: Tensor, cfg: LMConfig, source: str) -> Tensor:
    """Base MusicGen tables have card + 1 rows (pad); STAGE adds the context token row."""
    if w.shape[0] == cfg.vocab_rows:
        return w
    if w.shape[0] == cfg.vocab_rows - 1:
        return torch.cat([w, sep_row(w.shape[1], w.dtype).to(w.device)])
    raise CheckpointError(f"{source}: embedding has {w.shape[0]} rows, expected {cfg.vocab_rows - 1} or {cfg.vocab_rows}.")


def _finalize_lm(lm: dict[str, Tensor], cfg: LMConfig) -> dict[str, Tensor]:
    for k in range(cfg.num_codebooks):
        w = lm[f"emb.{k}.weight"].clone()
        w[cfg.pad_id] = 0.0
        lm[f"emb.{k}.weight"] = w
    return lm


def _block_keys(n: int) -> str:
    return f"layers.{n}."


def lm_from_transformers(m: KeyMapper, cfg: LMConfig, dec: str, heads: str, proj: str | None) -> dict[str, Tensor]:
    """`dec` = prefix of MusicgenDecoder (e.g. 'decoder.model.decoder.'), `heads` of lm_heads."""
    lm: dict[str, Tensor] = {}
    for k in range(cfg.num_codebooks):
        lm[f"emb.{k}.weight"] = _grow_embedding(m.take(f"{dec}embed_tokens.{k}.weight"), cfg, m.source)
        lm[f"heads.{k}.weight"] = m.take(f"{heads}lm_heads.{k}.weight")
    for n in range(cfg.num_layers):
        s, o = f"{dec}layers.{n}.", _block_keys(n)
        lm[o + "self_attn.qkv.weight"] = torch.cat([m.take(s + f"self_attn.{p}_proj.weight") for p in "qkv"])
        lm[o + "self_attn.out.weight"] = m.take(s + "self_attn.out_proj.weight")
        lm[o + "cross_attn.q.weight"] = m.take(s + "encoder_attn.q_proj.weight")
        lm[o + "cross_attn.kv.weight"] = torch.cat([m.take(s + f"encoder_attn.{p}_proj.weight") for p in "kv"])
        lm[o + "cross_attn.out.weight"] = m.take(s + "encoder_attn.out_proj.weight")
        lm[o + "ffn.up.weight"] = m.take(s + "fc1.weight")
        lm[o + "ffn.down.weight"] = m.take(s + "fc2.weight")
        for ours, theirs in (("self_norm", "self_attn_layer_norm"), ("cross_norm", "encoder_attn_layer_norm"),
                             ("ffn_norm", "final_layer_norm")):
            for p in ("weight", "bias"):
                lm[f"{o}{ours}.{p}"] = m.take(f"{s}{theirs}.{p}")
    for p in ("weight", "bias"):
        lm[f"out_norm.{p}"] = m.take(f"{dec}layer_norm.{p}")
        lm[f"text_proj.{p}"] = m.take(f"{proj}{p}") if proj else _default_text_proj(cfg)[p]
    return _finalize_lm(lm, cfg)


def _default_text_proj(cfg: LMConfig) -> dict[str, Tensor]:
    """A bare MusicgenForCausalLM has no projection; text then needs states already in `dim`."""
    w = torch.zeros(cfg.dim, cfg.text_dim)
    w[: min(cfg.dim, cfg.text_dim), : min(cfg.dim, cfg.text_dim)] = torch.eye(min(cfg.dim, cfg.text_dim))
    return {"weight": w, "bias": torch.zeros(cfg.dim)}


def lm_from_audiocraft(m: KeyMapper, cfg: LMConfig) -> dict[str, Tensor]:
    lm: dict[str, Tensor] = {}
    d = cfg.dim
    for k in range(cfg.num_codebooks):
        lm[f"emb.{k}.weight"] = _grow_embedding(m.take(f"emb.{k}.weight"), cfg, m.source)
        lm[f"heads.{k}.weight"] = m.take(f"linears.{k}.weight")
    for n in range(cfg.num_layers):
        s, o = f"transformer.layers.{n}.", _block_keys(n)
        lm[o + "self_attn.qkv.weight"] = m.take(s + "self_attn.in_proj_weight")
        lm[o + "self_attn.out.weight"] = m.take(s + "self_attn.out_proj.weight")
        cross = m.take(s + "cross_attention.in_proj_weight")
        lm[o + "cross_attn.q.weight"], lm[o + "cross_attn.kv.weight"] = cross[:d], cross[d:]
        lm[o + "cross_attn.out.weight"] = m.take(s + "cross_attention.out_proj.weight")
        lm[o + "ffn.up.weight"] = m.take(s + "linear1.weight")
        lm[o + "ffn.down.weight"] = m.take(s + "linear2.weight")
        for ours, theirs in (("self_norm", "norm1"), ("cross_norm", "norm_cross"), ("ffn_norm", "norm2")):
            for p in ("weight", "bias"):
                lm[f"{o}{ours}.{p}"] = m.take(f"{s}{theirs}.{p}")
    for p in ("weight", "bias"):
        lm[f"out_norm.{p}"] = m.take(f"out_norm.{p}")
        lm[f"text_proj.{p}"] = m.take(f"condition_provider.conditioners.description.output_proj.{p}")
    return _finalize_lm(lm, cfg)


def lm_from_stage(m: KeyMapper, cfg: LMConfig) -> dict[str, Tensor]:
    """x-transformers: sublayer 3N is self-attention, 3N+1 cross-attention, 3N+2 feed-forward."""
    lm: dict[str, Tensor] = {}
    x = "lm.decoder.attn_layers.layers."
    for k in range(cfg.num_codebooks):
        lm[f"emb.{k}.weight"] = _grow_embedding(m.take(f"lm.decoder.token_emb.emb.{k}.weight"), cfg, m.source)
        lm[f"heads.{k}.weight"] = m.take(f"lm.decoder.to_logits.linears.{k}.weight")
    for n in range(cfg.num_layers):
        o = _block_keys(n)
        sa, ca, ff = (f"{x}{3 * n + j}." for j in range(3))
        lm[o + "self_attn.qkv.weight"] = torch.cat([m.take(f"{sa}1.to_{p}.weight") for p in "qkv"])
        lm[o + "self_attn.out.weight"] = m.take(sa + "1.to_out.weight")
        lm[o + "cross_attn.q.weight"] = m.take(ca + "1.to_q.weight")
        lm[o + "cross_attn.kv.weight"] = torch.cat([m.take(f"{ca}1.to_{p}.weight") for p in "kv"])
        lm[o + "cross_attn.out.weight"] = m.take(ca + "1.to_out.weight")
        lm[o + "ffn.up.weight"] = m.take(ff + "1.ff.0.0.weight")
        lm[o + "ffn.down.weight"] = m.take(ff + "1.ff.2.weight")
        for ours, src in (("self_norm", sa), ("cross_norm", ca), ("ffn_norm", ff)):
            for p in ("weight", "bias"):
                lm[f"{o}{ours}.{p}"] = m.take(f"{src}0.0.{p}")
    for p in ("weight", "bias"):
        lm[f"out_norm.{p}"] = m.take(f"lm.decoder.attn_layers.final_norm.{p}")
        lm[f"text_proj.{p}"] = m.take(f"condition_provider.embedders.description.output_proj.{p}")
    return _finalize_lm(lm, cfg)


# -- EnCodec and T5 ----------------------------------------------------------------------------

_WN = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}


def codec_from_audiocraft(m: KeyMapper, prefix: str = "") -> dict[str, Tensor]:
    """audiocraft / STAGE SEANet names -> transformers EncodecModel names (same layer indices)."""
    out: dict[str, Tensor] = {}
    for key, value in m.take_prefix(prefix).items():
        k = re.sub(r"^(encoder|decoder)\.model\.(\d+)\.", r"\1.layers.\2.", key)
        k = k.replace(".conv.conv.", ".conv.").replace(".convtr.convtr.", ".conv.")
        k = re.sub(r"^quantizer\.vq\.layers\.(\d+)\._codebook\.", r"quantizer.layers.\1.codebook.", k)
        for old, new in _WN.items():
            k = re.sub(rf"\.{old}$", "." + new, k)
        out[k] = value
    return out


def codec_from_transformers(m: KeyMapper, prefix: str = "audio_encoder.") -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in m.take_prefix(prefix).items():
        for old, new in _WN.items():
            key = re.sub(rf"\.{old}$", "." + new, key)
        out[key] = value
    return out


def t5_state(m: KeyMapper, prefix: str) -> dict[str, Tensor]:
    """T5EncoderModel keys; `shared` and `encoder.embed_tokens` are one tensor stored under
    either or both names (safetensors drops one alias)."""
    state = m.take_prefix(prefix)
    if "shared.weight" not in state and "encoder.embed_tokens.weight" in state:
        state["shared.weight"] = state["encoder.embed_tokens.weight"]
    if "encoder.embed_tokens.weight" not in state and "shared.weight" in state:
        state["encoder.embed_tokens.weight"] = state["shared.weight"]
    if not state:
        raise CheckpointError(f"{m.source}: no T5 text-encoder weights under '{prefix}'.")
    return state


# -- files -------------------------------------------------------------------------------------

class _Inert:
    """What an object of a class a checkpoint names beyond tensors and containers becomes
    (audiocraft's stored experiment config, a Lightning checkpoint's hyper-parameter enums): built
    from its arguments and state without running any of that class's code."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


def load_torch_file(path: Path) -> dict[str, Any]:
    """A pickled PyTorch checkpoint, read only with torch's weights-only unpickler.

    Why: a pickle can run any code it names. Files that name only tensors and containers load as
    they are. Files that also name other classes (audiocraft's `.bin` stores its omegaconf config
    next to the weights) load with each of exactly those names standing for an `_Inert` class
    (`torch.serialization.get_unsafe_globals_in_checkpoint` lists them), so nothing is imported
    and nothing named, `os.system` included, is called; the weights are what we keep."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    stand_ins = [(type(name.rsplit(".", 1)[-1], (_Inert,), {}), name) for name in names]
    with torch.serialization.safe_globals(stand_ins):
        return torch.load(path, map_location="cpu", weights_only=True)


def load_state_file(path: Path) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        obj = load_torch_file(path)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as e:  # corrupt or not a checkpoint at all (safetensors/pickle/zip errors)
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {e}).") from e
    if isinstance(obj, dict) and "best_state" in obj:  # audiocraft package
        obj = obj["best_state"]
        if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
            obj = obj["model"]
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # lightning checkpoint
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a state dict.")
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}


def _load_transformers_weights(folder: Path) -> dict[str, Tensor]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, Tensor] = {}
        for s in shards:
            state.update(load_state_file(folder / s))
        return state
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).exists():
            return load_state_file(folder / name)
    raise WeightsMissing(f"{folder} has a config.json but no model.safetensors or pytorch_model.bin. "
                         "Download the whole model folder again.")


# -- the layouts -------------------------------------------------------------------------------

def from_transformers_folder(folder: Path, name: str | None = None) -> Checkpoint:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder / 'config.json'} cannot be read ({e}); download the model folder again.") from None
    state = _load_transformers_weights(folder)
    m = KeyMapper(state, str(folder))
    if "decoder.model.decoder.embed_tokens.0.weight" in state:  # MusicgenForConditionalGeneration
        dcfg = config.get("decoder", {})
        cfg = _hf_lm_config(dcfg, m, "decoder.model.decoder.", "decoder.", m.take("enc_to_dec_proj.weight").shape[1])
        lm = lm_from_transformers(m, cfg, "decoder.model.decoder.", "decoder.", "enc_to_dec_proj.")
        codec = codec_from_transformers(m)
        text = t5_state(m, "text_encoder.")
        m.finish(ignore=["decoder.model.decoder.embed_positions.weights"])
        codec_cfg = EncodecConfig(**{k: v for k, v in config.get("audio_encoder", {}).items()
                                     if k not in ("architectures", "model_type", "transformers_version")}) \
            if "audio_encoder" in config else musicgen_codec_config()
        text_cfg = T5Config(**{k: v for k, v in config.get("text_encoder", {}).items()
                               if k not in ("architectures", "model_type", "transformers_version")}) \
            if "text_encoder" in config else t5_base_config()
        tok = str(folder) if _has_tokenizer(folder) else T5_TOKENIZER_IDS[0]
        return Checkpoint(name or str(folder), "transformers", cfg, lm, codec_cfg, codec, text_cfg, text, tok)
    if "model.decoder.embed_tokens.0.weight" in state:  # bare MusicgenForCausalLM
        cfg = _hf_lm_config(config, m, "model.decoder.", "", config.get("hidden_size", 1024))
        lm = lm_from_transformers(m, cfg, "model.decoder.", "", None)
        m.finish(ignore=["model.decoder.embed_positions.weights"])
        return Checkpoint(name or str(folder), "transformers", cfg, lm, musicgen_codec_config(), {},
                          t5_base_config(), None, T5_TOKENIZER_IDS[0], meta={"decoder_only": True})
    raise CheckpointError(f"{folder}: config.json present but the weights are not a MusicGen model.")


def _hf_lm_config(dcfg: dict, m: KeyMapper, dec: str, heads: str, text_dim: int) -> LMConfig:
    state = m.state
    dim = m.take(f"{dec}embed_tokens.0.weight").shape[1]
    return LMConfig(
        dim=dim,
        num_layers=dcfg.get("num_hidden_layers", _count(state, re.escape(dec) + r"layers\.(\d+)\.")),
        num_heads=dcfg.get("num_attention_heads", dim // 64),
        ffn_dim=m.take(f"{dec}layers.0.fc1.weight").shape[0],
        num_codebooks=_count(state, re.escape(heads) + r"lm_heads\.(\d+)\."),
        card=m.take(f"{heads}lm_heads.0.weight").shape[0],
        text_dim=text_dim,
    )


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / f).exists() for f in ("spiece.model", "tokenizer.json"))


def from_audiocraft_folder(folder: Path, name: str | None = None) -> Checkpoint:
    lm_state = load_state_file(folder / "state_dict.bin")
    m = KeyMapper(lm_state, str(folder / "state_dict.bin"))
    dim = m.take("emb.0.weight").shape[1]
    cfg = LMConfig(dim=dim, num_layers=_count(lm_state, r"transformer\.layers\.(\d+)\."), num_heads=dim // 64,
                   ffn_dim=m.take("transformer.layers.0.linear1.weight").shape[0],
                   num_codebooks=_count(lm_state, r"linears\.(\d+)\."), card=m.take("linears.0.weight").shape[0],
                   text_dim=m.take("condition_provider.conditioners.description.output_proj.weight").shape[1])
    lm = lm_from_audiocraft(m, cfg)
    m.finish()
    if not (folder / "compression_state_dict.bin").exists():
        raise WeightsMissing(f"{folder} has the audiocraft LM (state_dict.bin) but not its EnCodec: put "
                             "compression_state_dict.bin from the same model next to it.")
    cm = KeyMapper(load_state_file(folder / "compression_state_dict.bin"), str(folder / "compression_state_dict.bin"))
    codec = codec_from_audiocraft(cm)
    cm.finish()
    codec_cfg = musicgen_codec_config()
    codec_cfg.pad_mode = "constant"  # audiocraft's musicgen_32khz SEANet pads with zeros
    return Checkpoint(name or str(folder), "audiocraft", cfg, lm, codec_cfg, codec, t5_base_config(), None,
                      T5_TOKENIZER_IDS[0])


def from_stage_file(path: Path, name: str | None = None) -> Checkpoint:
    state = load_state_file(path)
    m = KeyMapper(state, str(path))
    dim = m.take("lm.decoder.token_emb.emb.0.weight").shape[1]
    n_sub = _count(state, r"lm\.decoder\.attn_layers\.layers\.(\d+)\.")
    if n_sub % 3:
        raise CheckpointError(f"{path}: {n_sub} x-transformers sublayers is not a multiple of 3.")
    cfg = LMConfig(dim=dim, num_layers=n_sub // 3, num_heads=dim // 64,
                   ffn_dim=m.take("lm.decoder.attn_layers.layers.2.1.ff.0.0.weight").shape[0],
                   num_codebooks=_count(state, r"lm\.decoder\.to_logits\.linears\.(\d+)\."),
                   card=m.take("lm.decoder.to_logits.linears.0.weight").shape[0],
                   text_dim=m.take("condition_provider.embedders.description.output_proj.weight").shape[1])
    lm = lm_from_stage(m, cfg)
    codec = codec_from_audiocraft(m, "encodec_model.")
    text = t5_state(m, "condition_provider.embedders.description.t5.")
    m.finish()
    return Checkpoint(name or path.stem, "stage", cfg, lm, musicgen_codec_config(), codec, t5_base_config(), text,
                      T5_TOKENIZER_IDS[0])


def from_native_folder(folder: Path, name: str | None = None) -> Checkpoint:
    meta = json.loads((folder / NATIVE_CONFIG).read_text())
    if not (folder / NATIVE_WEIGHTS).exists():
        raise WeightsMissing(f"{folder} has {NATIVE_CONFIG} but no {NATIVE_WEIGHTS}; the run did not save a checkpoint.")
    state = load_state_file(folder / NATIVE_WEIGHTS)
    m = KeyMapper(state, str(folder / NATIVE_WEIGHTS))
    lm, codec = m.take_prefix("lm."), m.take_prefix("codec.")
    text = m.take_prefix("text.") or None
    if text is not None and "shared.weight" in text:  # save_native stores the tied T5 embedding once
        text.setdefault("encoder.embed_tokens.weight", text["shared.weight"])
    m.finish()
    return Checkpoint(name or meta.get("name", folder.name), "native", LMConfig(**meta["lm_config"]), lm,
                      EncodecConfig(**meta["codec_config"]), codec, T5Config(**meta["text_config"]), text,
                      meta.get("tokenizer"), is_random=meta.get("is_random", False), meta=meta.get("meta", {}))


def save_native(ckpt: Checkpoint, folder: Path) -> None:
    """Write a checkpoint that `resolve` loads back exactly (atomic per file)."""
    from safetensors.torch import save_file
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"lm.{k}": v.contiguous() for k, v in ckpt.lm_state.items()}
    tensors.update({f"codec.{k}": v.contiguous() for k, v in ckpt.codec_state.items()})
    tensors.update({f"text.{k}": v.contiguous() for k, v in (ckpt.text_state or {}).items()
                    if k != "encoder.embed_tokens.weight"})
    meta = {"name": ckpt.name, "format_version": 1, "lm_config": ckpt.lm_config.to_dict(),
            "codec_config": ckpt.codec_config.to_dict(), "text_config": ckpt.text_config.to_dict(),
            "tokenizer": ckpt.tokenizer, "is_random": ckpt.is_random, "meta": ckpt.meta}
    for k in ("architectures", "transformers_version", "model_type"):
        meta["codec_config"].pop(k, None)
        meta["text_config"].pop(k, None)
    write_atomic(folder / NATIVE_WEIGHTS, lambda f: save_file(tensors, f.name), replace=True)
    write_atomic(folder / NATIVE_CONFIG, lambda f: f.write(json.dumps(meta, indent=2).encode()), replace=True)


# -- tiny-random -------------------------------------------------------------------------------

def random_codec(codec_cfg: EncodecConfig) -> "transformers.EncodecModel":
    """EnCodec with random weights AND random codebooks (transformers initialises codebooks to
    zeros, so every code would decode alike): for random checkpoints of any size."""
    from transformers import EncodecModel

    codec = EncodecModel(codec_cfg)
    with torch.no_grad():
        for layer in codec.quantizer.layers:
            layer.codebook.embed.normal_()
            layer.codebook.embed_avg.copy_(layer.codebook.embed)
            layer.codebook.inited.fill_(1.0)
    return codec


def tiny_random(seed: int = 0) -> Checkpoint:
    """Small dims, fixed seed, random weights: produces noise. For tests and demos only."""
    from transformers import T5EncoderModel
    from .lm import StageLM

    torch.manual_seed(seed)
    cfg = LMConfig(dim=32, num_layers=2, num_heads=4, ffn_dim=64, num_codebooks=4, card=64, text_dim=16)
    lm = StageLM(cfg)
    for p in lm.parameters():
        torch.nn.init.normal_(p, std=0.2)
    lm.zero_pad_rows()
    codec_cfg = EncodecConfig(target_bandwidths=[1.2], sampling_rate=32000, audio_channels=1, normalize=False,
                              hidden_size=16, num_filters=4, num_residual_layers=1, upsampling_ratios=[8, 5, 4, 4],
                              use_causal_conv=False, num_lstm_layers=1, codebook_size=64, codebook_dim=16,
                              use_conv_shortcut=False)
    codec = random_codec(codec_cfg)
    text_cfg = T5Config(vocab_size=259, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4,
                        feed_forward_proj="relu", is_encoder_decoder=False)
    text = T5EncoderModel(text_cfg)
    return Checkpoint(TINY_RANDOM, "tiny-random", cfg, lm.state_dict(), codec_cfg, codec.state_dict(), text_cfg,
                      text.state_dict(), None, is_random=True)


# -- resolution --------------------------------------------------------------------------------

def default_weights_dir() -> Path:
    """Where named weights (stage-drums.safetensors, ...) live: $STAGE_BRIDGE_WEIGHTS or the
    per-user data folder."""
    env = os.environ.get("STAGE_BRIDGE_WEIGHTS")
    if env:
        return Path(env).expanduser()
    from ..paths import user_data_dir
    return user_data_dir() / "weights"


def missing_weights_help(name: str, weights_dir: Path) -> str:
    if name in STAGE_NAMES:
        return (f"Weights for '{name}' are missing. Download {name}.safetensors from {STAGE_WEIGHTS_URL} "
                f"and put it at {weights_dir / (name + '.safetensors')}. The text prompt also needs the "
                f"t5-base tokenizer: run `stage-bridge weights --fetch t5-base` once where a network exists "
                "(or generate without --prompt).")
    return (f"Weights for '{name}' are not on this machine. Run `stage-bridge weights --fetch {name}` "
            f"where a network exists (it goes to the Hugging Face cache), or pass --model with the path "
            "of a local copy (a folder with config.json and model.safetensors).")


def hub_snapshot(repo_id: str, allow_download: bool = False) -> Path | None:
    """A locally cached Hugging Face snapshot of `repo_id` (None when not cached)."""
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(repo_id, local_files_only=not allow_download,
                                      allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception:  # not cached / offline / unknown repo: the caller explains what to do
        return None


def detect_layout(path: Path) -> Callable[[Path, str | None], Checkpoint]:
    if path.is_file():
        if path.suffix == ".safetensors":
            return from_stage_file
        if path.name in ("state_dict.bin", "compression_state_dict.bin"):
            return lambda p, n=None: from_audiocraft_folder(p.parent, n)
        raise CheckpointError(f"{path}: not a checkpoint stage-bridge knows (.safetensors from STAGE, "
                              "audiocraft's state_dict.bin, or a model folder).")
    if (path / NATIVE_CONFIG).exists():
        return from_native_folder
    if (path / "config.json").exists():
        return from_transformers_folder
    if (path / "state_dict.bin").exists():
        return from_audiocraft_folder
    raise WeightsMissing(f"{path} holds no model: expected {NATIVE_CONFIG} (a stage-bridge run), config.json + "
                         "model.safetensors (transformers), or state_dict.bin + compression_state_dict.bin (audiocraft).")


def resolve(name_or_path: str, weights_dir: Path | None = None) -> Checkpoint:
    """A model by preset name, named weights file, local path or Hugging Face hub id."""
    if name_or_path == TINY_RANDOM:
        return tiny_random()
    weights_dir = weights_dir or default_weights_dir()
    path = Path(name_or_path).expanduser()
    if path.exists():
        return detect_layout(path)(path, None)
    if name_or_path in STAGE_NAMES:
        f = weights_dir / f"{name_or_path}.safetensors"
        if not f.exists():
            raise WeightsMissing(missing_weights_help(name_or_path, weights_dir))
        return from_stage_file(f, name_or_path)
    if (weights_dir / name_or_path).exists():
        p = weights_dir / name_or_path
        return detect_layout(p)(p, name_or_path)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name_or_path):
        snap = hub_snapshot(name_or_path)
        if snap is not None and (snap / "config.json").exists():
            return from_transformers_folder(snap, name_or_path)
        raise WeightsMissing(missing_weights_help(name_or_path, weights_dir))
    raise WeightsMissing(f"'{name_or_path}' is neither a file or folder, nor a known model "
                         f"({', '.join(STAGE_NAMES)}, {TINY_RANDOM}, or a Hugging Face id like facebook/musicgen-small).")


def find_tokenizer(source: str) -> Path | None:
    """A local folder holding the T5 tokenizer for `source` (folder or hub id), if any."""
    p = Path(source).expanduser()
    if p.is_dir() and _has_tokenizer(p):
        return p
    for repo in ((source,) if "/" in source else ()) + T5_TOKENIZER_IDS:
        try:
            from huggingface_hub import snapshot_download
            snap = Path(snapshot_download(repo, local_files_only=True,
                                          allow_patterns=["spiece.model", "tokenizer*.json", "*config.json"]))
        except Exception:
            continue
        if _has_tokenizer(snap):
            return snap
    return None


__all__ = ["Checkpoint", "KeyMapper", "resolve", "tiny_random", "save_native", "load_state_file",
           "lm_from_transformers", "lm_from_audiocraft", "lm_from_stage", "codec_from_audiocraft",
           "codec_from_transformers", "t5_state", "TINY_RANDOM", "STAGE_NAMES", "default_weights_dir",
           "missing_weights_help", "find_tokenizer", "hub_snapshot"]
