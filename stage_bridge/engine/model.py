"""A whole STAGE model (decoder, codec, text encoder) loaded once onto one device.

This is what the daemon keeps warm: building it reads weights from disk; using it does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import EncodecModel, T5EncoderModel

from ..errors import BadArgument, CheckpointError, CompileUnavailable, DeviceUnavailable, WeightsMissing
from .checkpoints import Checkpoint, find_tokenizer, resolve
from .codec import Codec
from .compiled import compile_problem
from .decoder import Decoder, default_mode
from .lm import StageLM
from .quant import SCHEMES
from .text import ByteTokenizer, TextEncoder

DEVICES = ("auto", "cuda", "mps", "cpu")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # floating point (training too)
DECODE_PRECISIONS = (*PRECISIONS, *SCHEMES)  # what a decoder may run: + int8/int4 weights (CPU)


def decode_precision(name: str) -> tuple[torch.dtype, str | None]:
    """The decoder's precision: (dtype of its activations and float weights, integer
    quantization or None). fp32 is the default everywhere (exact, and what the reference ran);
    bf16/fp16 halve the bytes each step reads, so decoding on a GPU is about twice as fast;
    int8/int4 (CPU) store the block linears in about a quarter / a sixth of their fp32 bytes
    (engine/quant.py; int8 measured 2.4x faster per step than fp32 on 2 cores), with fp32
    activations between the layers. All but fp32 cost small logit differences
    (benchmarks/RESULTS.md). Never chosen silently: the sidecar records it."""
    if name in SCHEMES:
        return torch.float32, name
    if name not in PRECISIONS:
        raise BadArgument(f"unknown precision '{name}'; use one of {', '.join(DECODE_PRECISIONS)}.")
    return PRECISIONS[name], None


def pick_device(name: str = "auto") -> torch.device:
    """auto: CUDA, then Apple MPS, then CPU. An explicit device that is absent is an error."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise BadArgument(f"unknown device '{name}'; use one of {', '.join(DEVICES)}.")
    has_mps = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailable("CUDA was requested but no NVIDIA GPU is usable here; use --device auto or cpu.")
    if name == "mps" and not has_mps:
        raise DeviceUnavailable("MPS was requested but this is not an Apple-silicon Mac with MPS; use --device auto or cpu.")
    return torch.device(name)


@dataclass
class StageModel:
    name: str
    decoder: Decoder  # the decoder LM and how its decode steps run (eager, CUDA graph or compiled)
    codec: Codec
    text: TextEncoder | None  # None: the T5 tokenizer/weights are absent; prompts are refused
    device: torch.device
    is_random: bool
    text_missing_reason: str = ""

    @property
    def lm(self) -> StageLM:
        return self.decoder.lm

    @property
    def precision(self) -> str:
        """The decoder's precision by name (one of DECODE_PRECISIONS), as the sidecar records it."""
        if self.decoder.quantized is not None:
            return self.decoder.quantized
        dtype = self.lm.heads[0].weight.dtype
        return next(name for name, d in PRECISIONS.items() if d == dtype)

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    def require_text(self) -> TextEncoder:
        if self.text is None:
            raise WeightsMissing(self.text_missing_reason)
        return self.text


def build_model(ckpt: Checkpoint, device: torch.device, dtype: torch.dtype = torch.float32,
                inference: bool = True, compile: bool = False, quantize: str | None = None) -> StageModel:
    """Instantiate the modules from config and load the checkpoint's tensors strictly.

    `inference` packs the decoder's weights for the CPU's fast kernels where that applies
    (`StageLM.pack_for_cpu`); training passes False to keep plain, trainable weights.
    `compile` instead keeps them plain and compiles the CPU decode step (`CompiledDecoder`;
    the compiling itself happens at the first generation of each kind, or in `warm_up`).
    `quantize` ("int8"/"int4", CPU fp32 eager only) stores the decoder's block linears as integers
    (`Decoder`; refused with BadArgument where not offered).
    The decode mode is chosen here, once: `decoder.default_mode`."""
    problem = compile_problem(device, dtype) if compile else None
    if problem is not None:
        raise CompileUnavailable(problem)
    lm = StageLM(ckpt.lm_config)
    _load(lm, ckpt.lm_state, f"{ckpt.name} (decoder)")
    lm = lm.to(device=device, dtype=dtype).eval()
    if compile or quantize is not None:
        lm.requires_grad_(False)
    decoder = Decoder(lm, default_mode(device, compile), quantize)  # quantizes before packing
    if inference and not compile:
        lm.pack_for_cpu()  # what is left in fp32 (all of it, or the heads of a quantized decoder)

    if not ckpt.codec_state:
        raise WeightsMissing(f"{ckpt.name} holds no EnCodec weights (a bare decoder). Use a full model "
                             "(facebook/musicgen-small, a STAGE .safetensors or a stage-bridge run).")
    codec_model = EncodecModel(ckpt.codec_config)
    codec_state = _match_weight_norm(ckpt.codec_state, codec_model.state_dict().keys())
    _load(codec_model, codec_state, f"{ckpt.name} (EnCodec)")
    codec = Codec(codec_model.to(device).eval(), ckpt.lm_config.num_codebooks)

    text, reason = _text_encoder(ckpt, device)
    return StageModel(ckpt.name, decoder, codec, text, device, ckpt.is_random, reason)


def load_model(name_or_path: str, device: str = "auto", weights_dir: Path | None = None,
               precision: str = "fp32", compile: bool = False) -> StageModel:
    dtype, quantize = decode_precision(precision)
    return build_model(resolve(name_or_path, weights_dir), pick_device(device), dtype, compile=compile,
                       quantize=quantize)


def _load(module: torch.nn.Module, state: dict, what: str) -> None:
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("embed_positions.weights")]
    if missing:
        raise CheckpointError(f"{what}: missing key '{missing[0]}' ({len(missing)} in all).")
    if result.unexpected_keys:
        raise CheckpointError(f"{what}: unexpected key '{result.unexpected_keys[0]}' ({len(result.unexpected_keys)} in all).")


def _match_weight_norm(state: dict, model_keys) -> dict:
    """transformers versions differ in weight-norm names (weight_g/_v vs parametrizations)."""
    if any(k.endswith(".weight_g") for k in model_keys):
        return {k.replace("parametrizations.weight.original0", "weight_g")
                 .replace("parametrizations.weight.original1", "weight_v"): v for k, v in state.items()}
    return state


def _text_encoder(ckpt: Checkpoint, device: torch.device) -> tuple[TextEncoder | None, str]:
    """T5 + tokenizer, or None and what to do to get them (prompts are optional)."""
    tokenizer = ByteTokenizer() if ckpt.tokenizer is None else _load_tokenizer(ckpt.tokenizer)
    if tokenizer is None:
        return None, ("The text prompt needs the t5-base tokenizer, which is not on this machine. Run "
                      "`stage-bridge weights --fetch t5-base` where a network exists, or generate without a prompt.")
    if ckpt.text_state is not None:
        t5 = T5EncoderModel(ckpt.text_config)
        _load(t5, ckpt.text_state, f"{ckpt.name} (T5)")
    else:  # audiocraft does not store T5: the pretrained t5-base next to its tokenizer
        t5 = _pretrained_t5(ckpt.tokenizer)
        if t5 is None:
            return None, ("The text prompt needs the t5-base encoder weights; run `stage-bridge weights --fetch "
                          "t5-base` where a network exists, or generate without a prompt.")
    return TextEncoder(t5.to(device).eval(), tokenizer), ""


def _load_tokenizer(source: str):
    folder = find_tokenizer(source)
    if folder is None:
        return None
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(folder))


def _pretrained_t5(source: str) -> T5EncoderModel | None:
    folder = find_tokenizer(source)  # the t5-base snapshot holds weights next to the tokenizer
    if folder is None or not any(folder.glob("*.safetensors")):
        return None
    return T5EncoderModel.from_pretrained(str(folder))
