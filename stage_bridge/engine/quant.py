"""Quantized linear layers for CPU decoding (`--precision int8|int4`).

Why: a decode step multiplies two rows (one take with guidance) by every weight matrix, so its
time is the time to read the weights. Stored as int8 (symmetric, one scale per output channel)
the decoder blocks' linears are a quarter of their fp32 bytes; as int4 (a scale and an offset
per group of 64 input channels) about a sixth. Activations between the layers stay fp32.

What is quantized: the linears of every block (self-attention qkv and out, cross-attention q, kv
and out, feed-forward up and down: 97 % of the weights a step reads). What stays fp32: the
codebook embeddings (a step reads 4 rows of them), the layer norms, the text projection, and
the 4 output heads (2 % of the bytes, and the logits are what is sampled from; with our kernels
the step reads an fp16 copy of them).

Kernels, fastest first (QuantLinear.kernel says which runs; benchmarks/RESULTS.md): our own
(engine/kernels.cpp, built once per machine where a C++ compiler exists): int8 and int4 products
that round each product's input rows to int8 per group of 64 (llama.cpp's Q8 x Q4 arithmetic) and
run AVX-512 VNNI's integer multiply-adds where the CPU has them, with the LayerNorm before, the
GELU after and the residual fused in; the eager step then runs each block in one call
(`kernels.block_step`), keeps the KV cache and the heads in fp16. Without our kernels: int8 runs
FBGEMM's dynamic quantized linear (which also rounds its inputs, to 7 bits with one scale per
call), or the private `_weight_int8pack_mm` without FBGEMM; int4 runs the private
`_weight_int4pack_mm_for_cpu`. Both private kernels run bf16 activations (on fp32 ones they took a
scalar path, 5-40x slower), and `_weight_int8pack_mm` with bf16 activations crashed the process
(segfault, torch 2.13) on widths not in 32s, e.g. 7x5: shapes a kernel is not known to take
(`kernel_takes`) multiply by the dequantized weight instead. tests/test_quant.py pins the private
ops' schemas and results, so a PyTorch that changes them is noticed rather than trusted.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels

if TYPE_CHECKING:
    from .lm import StageLM

INT8, INT4 = "int8", "int4"
SCHEMES = (INT8, INT4)
INT4_GROUP = 64  # input channels per int4 scale/offset (see `int4_group`)
BLOCK_LINEARS = ("self_attn.qkv", "self_attn.out", "cross_attn.q", "cross_attn.kv", "cross_attn.out",
                 "ffn.up", "ffn.down")


def quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """(N, K) float -> int8 (N, K) and fp32 scales (N,): symmetric per output channel, the
    channel's largest magnitude mapped to 127 (so the error per weight is at most scale / 2)."""
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / 127.0).clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


def quantize_int4(weight: Tensor, group: int = INT4_GROUP) -> tuple[Tensor, Tensor, Tensor]:
    """(N, K) float -> codes (N, K) int32 in [0, 15], and fp32 scales and zeros (N, K / group).

    Asymmetric per group of `group` input channels, in the convention of PyTorch's int4 kernels:
    w ~= (code - 8) * scale + zero, the group's minimum at code 0 and its maximum at code 15."""
    n, k = weight.shape
    w = weight.detach().float().view(n, k // group, group)
    lo, hi = w.amin(dim=-1), w.amax(dim=-1)
    scales = ((hi - lo) / 15.0).clamp(min=torch.finfo(torch.float32).tiny)
    codes = torch.round((w - lo[..., None]) / scales[..., None]).clamp(0, 15).to(torch.int32)
    return codes.view(n, k), scales, lo + 8.0 * scales


def int4_group(in_features: int) -> int:
    """Input channels per int4 scale/offset: `INT4_GROUP` where it divides the width, else 32,
    else one group per output channel (the kernel takes 32, 64, 128 or 256)."""
    for group in (INT4_GROUP, 32):
        if in_features % group == 0:
            return group
    return in_features


def kernel_takes(scheme: str, out_features: int, in_features: int) -> bool:
    """Whether a private kernel may be given an (out, in) weight (see module doc).
    `_weight_int8pack_mm` with bf16 activations crashed on widths that are not in 32s;
    `_weight_int4pack_mm_for_cpu` packs outputs in 16s and groups of 32, 64, 128 or 256 inputs."""
    if scheme == INT8:
        return in_features % 32 == 0
    return out_features % 16 == 0 and int4_group(in_features) in (32, 64, 128, 256)


def bytes_per_weight(scheme: str, in_features: int, ours: bool = False) -> float:
    """Bytes a product reads per weight: the integer plus its share of the scales (and offsets);
    `ours`: our int8 kernel also reads an int32 weight sum per output and group (kernels.cpp)."""
    if scheme == INT8:
        return 1.0 + 4.0 / in_features + (4.0 / int4_group(in_features) if ours else 0.0)  # fp32 scale per output
    return 0.5 + 4.0 / int4_group(in_features)  # a 16-bit scale and zero per group


def fbgemm_pack(q: Tensor, scales: Tensor):
    """int8 weights + per-channel scales as FBGEMM's packed linear (PyTorch's x86 quantized
    engine), or None where the build has none or its product disagrees with the plain one."""
    if "fbgemm" not in torch.backends.quantized.supported_engines and \
            "x86" not in torch.backends.quantized.supported_engines:
        return None
    try:
        with warnings.catch_warnings():  # quantized tensors are deprecated in favour of torchao (not a dependency)
            warnings.simplefilter("ignore")
            zeros = torch.zeros(q.shape[0], dtype=torch.long)
            qw = torch._make_per_channel_quantized_tensor(q, scales.double(), zeros, 0)
            packed = torch.ops.quantized.linear_prepack(qw, None)
        probe = torch.linspace(-1.0, 1.0, q.shape[1])[None]
        want = probe @ (q.float() * scales[:, None]).t()
        got = torch.ops.quantized.linear_dynamic(probe, packed, True)
        if not torch.allclose(got, want, rtol=0.05, atol=0.05 * float(want.abs().max())):
            return None
    except (RuntimeError, AttributeError):
        return None
    return packed


class QuantLinear(nn.Module):
    """A bias-free linear with int8 (per output channel) or int4 (group-wise) weights; fp32 in and out.

    Which kernel multiplies is chosen once, fastest first (module doc): ours (`q8-...`/`q4-...`),
    else FBGEMM's (int8) or PyTorch's private int4 kernel; shapes no kernel is known to take
    multiply by the dequantized weight. Inference only."""

    def __init__(self, weight: Tensor, scheme: str):
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"unknown quantization {scheme!r}; one of {', '.join(SCHEMES)}")
        self.scheme = scheme
        self.out_features, self.in_features = weight.shape
        self.fast = kernel_takes(scheme, *weight.shape)
        self.packed = None  # FBGEMM's packed int8 weight (then the plain codes are not kept)
        self.q4: kernels.Q4Weight | None = None  # our int4 kernel's weight (kernels.py; int4 only)
        self.kernels: kernels.Kernels | None = None
        self.q8: kernels.Q8Weight | None = None
        if scheme == INT8:
            q, scales = quantize_int8(weight)
            group = int4_group(self.in_features)  # our kernel rounds activations per group of these
            kern = kernels.library() if kernels.q4_supports(self.out_features, self.in_features, group) else None
            if kern is not None:  # ours (kernels.cpp): its own tiled layout, nothing else kept
                self.fast, self.kernels = True, kern
                self.q8 = kernels.q8_pack(kern, q, scales, group)
                return
            self.packed = fbgemm_pack(q, scales)
            self.register_buffer("qweight", q if self.packed is None else None)
            self.register_buffer("scales", scales)
        else:
            self.group = int4_group(self.in_features)
            codes, scales, zeros = quantize_int4(weight, self.group)
            kern = kernels.library() if kernels.q4_supports(self.out_features, self.in_features, self.group) else None
            if kern is not None:  # ours (kernels.cpp): its own tiled layout, nothing else kept
                self.fast, self.kernels = True, kern
                self.q4 = kernels.q4_pack(kern, codes, scales, zeros, self.group)
                return
            self.register_buffer("codes", codes if not self.fast else
                                 torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1))
            # the kernel's layout: (K / group, N, 2) of [scale, zero], in its activations' dtype
            scale_zero = torch.stack([scales, zeros], dim=-1).transpose(0, 1).contiguous()
            self.register_buffer("scale_zero", scale_zero.to(torch.bfloat16) if self.fast else scale_zero)

    @property
    def kernel(self) -> str:
        """Which product runs (for reports)."""
        if self.packed is not None:
            return "fbgemm-dynamic"
        if self.q4 is not None or self.q8 is not None:
            return f"{'q4' if self.q4 is not None else 'q8'}-{self.kernels.kind}"
        if not self.fast:
            return "dequantized"
        return "int8pack-bf16" if self.scheme == INT8 else "int4pack-bf16"

    def dequantized(self) -> Tensor:
        """The fp32 weight this layer stores, (out, in): for checks and the fallback."""
        if self.q8 is not None:  # the identity's rows are exact in the kernel's int8 activations
            return kernels.q8_linear(self.kernels, torch.eye(self.in_features), self.q8).t().contiguous()
        if self.scheme == INT8:
            if self.packed is not None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return torch.ops.quantized.linear_unpack(self.packed)[0].dequantize()
            return self.qweight.float() * self.scales[:, None]
        if self.q4 is not None:  # the identity's rows are exact in the kernel's int8 activations
            return kernels.q4_linear(self.kernels, torch.eye(self.in_features), self.q4).t().contiguous()
        if self.fast:  # the kernel's packed layout is its own: multiply the identity through it
            eye = torch.eye(self.in_features)  # (slow: fp32 rows take the kernel's scalar path; checks only)
            return torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.codes, self.group, self.scale_zero.float()).t()
        scales, zeros = self.scale_zero.transpose(0, 1).unbind(-1)  # (N, K / group) each
        w = (self.codes.view(self.out_features, -1, self.group).float() - 8.0) * scales[..., None] + zeros[..., None]
        return w.view(self.out_features, self.in_features)

    def forward(self, x: Tensor, norm: nn.LayerNorm | None = None, residual: Tensor | None = None,
                gelu: bool = False) -> Tensor:
        """[residual +] gelu?(norm?(x) @ weight.T): our int8 and int4 kernels apply the norm, the GELU
        and the residual within its product (one call, one pass over the activations); the other
        kernels run them around the product."""
        if self.q4 is not None:
            return kernels.q4_linear(self.kernels, x, self.q4, norm, residual, gelu)
        if self.q8 is not None:
            return kernels.q8_linear(self.kernels, x, self.q8, norm, residual, gelu)
        if norm is not None:
            x = norm(x)
        y = self._product(x)
        if gelu:
            y = F.gelu(y)
        return y if residual is None else residual + y

    def _product(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features)
        if self.packed is not None:
            y = torch.ops.quantized.linear_dynamic(flat.float().contiguous(), self.packed, True)
        elif not self.fast:
            y = F.linear(flat, self.dequantized())
        elif self.scheme == INT8:
            y = torch.ops.aten._weight_int8pack_mm(flat.to(torch.bfloat16).contiguous(), self.qweight,
                                                   self.scales.to(torch.bfloat16)).float()
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat.to(torch.bfloat16).contiguous(), self.codes,
                                                           self.group, self.scale_zero).float()
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, {self.scheme}, {self.kernel}"


def quantize_problem(scheme: str, device: torch.device, dtype: torch.dtype, compiled: bool = False) -> str | None:
    """Why `scheme` cannot run here, or None: CPU only (the kernels are CPU ones), fp32
    activations, not the compiled step (it freezes and packs fp32 weights itself)."""
    if scheme not in SCHEMES:
        return f"unknown weight precision '{scheme}'; use one of {', '.join(SCHEMES)}."
    if device.type != "cpu":
        return (f"--precision {scheme} is for the CPU; on {device.type} use --precision bf16 "
                "(or fp16), which halves the bytes a step reads there.")
    if dtype != torch.float32:
        return f"--precision {scheme} keeps fp32 activations; the model must be loaded in fp32."
    if compiled:
        return f"--precision {scheme} decodes eager; it cannot be combined with --compile."
    return None


@torch.no_grad()
def quantize_decoder(lm: StageLM, scheme: str) -> None:
    """Replace every block linear of `lm` by a `QuantLinear` of `scheme`, in place (one-way: the
    fp32 weights of those layers are freed). `lm` must hold plain (unpacked) fp32 CPU weights.
    Where our kernels run, the heads also get an fp16 copy for the step (`lm.heads_half`)."""
    for block in lm.layers:
        for path in BLOCK_LINEARS:
            parent_path, name = path.rsplit(".", 1)
            parent = block.get_submodule(parent_path)
            layer = getattr(parent, name)
            if not isinstance(layer, nn.Linear) or layer.weight.is_mkldnn:
                raise ValueError(f"{path} is not a plain linear (already quantized or packed)")
            setattr(parent, name, QuantLinear(layer.weight, scheme))
        block.__dict__.pop("_plan", None)  # `Block.plan` is built again from the new layers
    if kernels.library() is not None and not any(h.weight.is_mkldnn for h in lm.heads):
        lm.heads_half = torch.cat([h.weight.detach() for h in lm.heads]).to(torch.float16).contiguous()


def scheme_of(lm: StageLM) -> str | None:
    """The quantization of `lm`'s block linears, or None when they are floating point."""
    layer = lm.layers[0].ffn.up if len(lm.layers) else None
    return layer.scheme if isinstance(layer, QuantLinear) else None
