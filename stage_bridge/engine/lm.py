"""The STAGE decoder: MusicGen's transformer with a context token and a static KV cache.

Architecture (MusicGen-small by default): K summed codebook embeddings (card + 2 rows: `card`
is the zeroed pad, `card + 1` the context token), parameter-free sinusoidal positions, N pre-norm
blocks of [self-attention, cross-attention to the projected T5 states, GELU feed-forward],
a final LayerNorm and K output heads. LayerNorms have biases; linears do not.

Speed: decoding on any device is memory-bound, so one forward serves prefill and single-step
decode, self-attention K/V live in a cache preallocated once per generation (written in place,
read only up to the current length), and cross-attention K/V are computed once per generation.
Without a cache (training, reference checks) the same forward runs plain causal attention.
On a CPU the eager single step runs our kernels where they build (engine/kernels.py): attention
in one call per layer, and with our int8/int4 weights each whole block in one call.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels
from .quant import QuantLinear


@dataclass(frozen=True)
class LMConfig:
    dim: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    ffn_dim: int = 4096
    num_codebooks: int = 4
    card: int = 2048
    text_dim: int = 768
    max_period: float = 10000.0
    norm_eps: float = 1e-5

    @property
    def pad_id(self) -> int:
        return self.card

    @property
    def sep_id(self) -> int:
        """The STAGE context token."""
        return self.card + 1

    @property
    def vocab_rows(self) -> int:
        return self.card + 2

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def to_dict(self) -> dict:
        return asdict(self)


def additive(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """Boolean mask (True = attend) -> additive attention mask: 0 where allowed, -inf elsewhere.
    Built once per forward (or generation) and added to the scores, one op per attention."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))


def sinusoidal_embedding(positions: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """(...,) long -> (..., dim) float32: [cos | sin], as MusicGen / audiocraft."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=positions.device, dtype=torch.float32)
                      * (-math.log(max_period) / (half - 1)))
    phase = positions.to(torch.float32)[..., None] * freqs
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


def linear(x: Tensor, weight: Tensor) -> Tensor:
    """x @ weight.T for a bias-free layer, fast for decode-sized inputs on a CPU.

    Decoding multiplies a handful of rows by every weight matrix, so it is bound by reading the
    weights. A weight packed by `pack_linear_weight` (oneDNN's blocked layout) runs oneDNN's own
    kernels. Unpacked on a CPU, `F.linear` with a few rows can stream weights at a fraction of
    memory bandwidth (measured on a 2-core AMD EPYC: ~9 GB/s, MKL's small-product path), while
    the same product as weight @ x.T streams at ~28 GB/s. Same numbers, different loop order.
    Many rows (prefill) without autograd run oneDNN on the plain weight: it reorders the weight
    per call, which hundreds of rows amortize (within ~10-15% of packed, ~2x MKL, measured).
    Under `torch.compile` the small-row product is traced in the same weight @ x.T order: with
    Inductor's weight packing off (engine/compiled.py) that order is what keeps the compiled
    step fast, and an unpacked graph is one Inductor's cache can keep across processes.
    (Fusing the GELU and the residual adds into oneDNN's calls was tried: no measurable gain.)
    """
    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")
    if x.device.type != "cpu":
        return F.linear(x, weight)
    rows = x.numel() // x.shape[-1]
    if rows > 16:
        if (weight.dtype == torch.float32 and not torch.is_grad_enabled() and torch.backends.mkldnn.is_available()
                and not torch.compiler.is_compiling()):
            return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")  # prefill: ~2x MKL
        return F.linear(x, weight)
    flat = x.reshape(rows, x.shape[-1])
    return torch.mm(weight, flat.t()).t().contiguous().view(*x.shape[:-1], weight.shape[0])


def project(x: Tensor, layer: nn.Linear | QuantLinear, norm: nn.LayerNorm | None = None,
            residual: Tensor | None = None, gelu: bool = False) -> Tensor:
    """[residual +] gelu?(`layer`(norm?(x))), the fast way: a float linear through `linear`, an
    int8/int4 quantized one (`--precision int8|int4`) through its own kernel, which may fuse the
    norm, the GELU and the residual into its product (ours do: fewer passes and calls per layer)."""
    if isinstance(layer, QuantLinear):
        return layer(x, norm, residual, gelu)
    y = linear(x if norm is None else norm(x), layer.weight)
    if gelu:
        y = F.gelu(y)
    return y if residual is None else residual + y


def step_kernels(x: Tensor, start: int | Tensor) -> kernels.Kernels | None:
    """Our CPU kernels (engine/kernels.py) when this forward is an eager single-step decode on
    the CPU in fp32 without autograd, the case they are written for; else None (PyTorch's ops)."""
    if (x.shape[1] != 1 or not isinstance(start, int) or x.device.type != "cpu" or x.dtype != torch.float32
            or torch.is_grad_enabled() or torch.compiler.is_compiling()):
        return None
    return kernels.library()


def first_keys(spans: list[Span] | None) -> Tensor | None:
    """Per row, the first key it may attend to (int32, for the step kernels; read only), or None:
    all from 0. A window's spans stay the same for all its steps and layers: built once each."""
    return None if spans is None else _first_keys(tuple(spans))


@functools.lru_cache(maxsize=16)
def _first_keys(spans: tuple[Span, ...]) -> Tensor:
    return torch.tensor([first for lo, hi, first in spans for _ in range(lo, hi)], dtype=torch.int32)


def pack_linear_weight(weight: Tensor, rows_hint: int = 2) -> Tensor | None:
    """`weight` in oneDNN's packed layout for `linear`, or None where that is not possible.

    Why: on the CPU measured (2-core AMD EPYC), oneDNN's kernels on a packed weight stream it at
    0.84-0.97 of the copy bandwidth for decode-sized inputs (the best unpacked form: 0.5-0.8) and
    run prefill-sized products ~2.4x faster than MKL. `rows_hint` is the rows a decode step has
    (2: CFG); other counts run correctly. Only fp32 on a CPU; the packed tensor replaces the weight, so
    memory is not doubled, and autograd cannot flow into it (inference only). The product is
    checked once against the plain one, so a build whose oneDNN lacks the op falls back cleanly.
    """
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or not torch.backends.mkldnn.is_available():
        return None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows_hint)
        probe = torch.ones(1, weight.shape[1])
        if not torch.allclose(linear(probe, packed), probe @ weight.detach().t(), rtol=1e-4, atol=1e-4):
            return None
    except (RuntimeError, AttributeError):
        return None
    return packed


Span = tuple[int, int, int]  # rows [lo, hi) of a batch, and the first step any of them may attend to
MIN_SKIP = 128  # fewer masked leading steps than this are read anyway (see `masked_prefix_spans`)


def masked_prefix_spans(step_valid: Tensor, min_skip: int = MIN_SKIP) -> list[Span] | None:
    """Runs of consecutive rows by the first step they may attend to, or None when no row has at
    least `min_skip` masked leading steps (nothing worth skipping).

    Why: with guidance, the unconditional rows' context is fully masked (all padding), so they
    attend to nothing before the context token, yet a step over a shared cache would read their
    context keys and values only to weight them by exp(-inf) = 0. Attention over each run from
    its first valid step reads the same numbers minus those, and prefill can start those rows
    there: the same logits, with the attention's cache reads (a step's largest cost after the
    weights) and the prefill's work nearly halved for a long context. Each extra run costs a few
    more small ops per layer (int8 decoder, 2-core AMD EPYC: per step 1.18x faster at 500 context
    frames, median of 6 pairs; about even at 150; prefill 1.8x), hence `min_skip`: shorter
    masked prefixes are attended to with the mask, as before.
    """
    first = [f if f >= min_skip else 0 for f in torch.argmax(step_valid.to(torch.uint8), dim=-1).tolist()]
    if not any(first):
        return None
    spans: list[Span] = []
    for row, f in enumerate(first):
        if spans and spans[-1][2] == f:
            spans[-1] = (spans[-1][0], row + 1, f)
        else:
            spans.append((row, row + 1, f))
    return spans


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """Scaled dot-product attention with an additive mask `bias` (B, 1, T, N): 0 attends, -inf not.

    A single query (decode) is two batched matrix-vector products: fused kernels tile over
    queries and leave most of a GPU idle when there is one (measured on an H100: 53 us vs a few
    us per call), so that case is written out; several queries (prefill, training) use SDPA.
    The scores are computed as k @ q.T, keys along rows: the cache-streaming order that MKL
    runs ~1.4x faster than q @ k.T on a CPU (2-core AMD EPYC). Its (B, H, N, 1) result viewed
    as (B, H, 1, N) is still contiguous, so the softmax takes its fast last-dimension path
    (over dim -2 it took 29 us per call instead of a few) and nothing is copied.
    """
    if q.shape[-2] != 1:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    scores = torch.matmul(k, (q * q.shape[-1] ** -0.5).transpose(-1, -2)).transpose(-1, -2)  # (B, H, 1, N)
    return torch.matmul(torch.softmax(scores + bias, dim=-1), v)


class KVCache(nn.Module):
    """Preallocated keys/values of one self-attention layer: (B, H, max_steps, head_dim)."""

    def __init__(self, batch: int, heads: int, max_steps: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        super().__init__()
        shape = (batch, heads, max_steps, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, start: int | Tensor, k: Tensor, v: Tensor, rows: slice = slice(None)) -> tuple[Tensor, Tensor]:
        """Store K/V of steps [start, start + T) for `rows` (all by default). An int start returns
        only the filled prefix (eager: read no more than needed); a tensor start (device scalar)
        returns the whole cache, so shapes stay static for CUDA graphs; the mask hides the
        unfilled part."""
        if isinstance(start, Tensor):
            idx = start + torch.arange(k.shape[2], device=k.device)
            self.k.index_copy_(2, idx, k)
            self.v.index_copy_(2, idx, v)
            return self.k, self.v
        end = start + k.shape[2]
        self.k[rows, :, start:end] = k
        self.v[rows, :, start:end] = v
        return self.k[rows, :, :end], self.v[rows, :, :end]


class SelfAttention(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.cache: KVCache | None = None

    def forward(self, x: Tensor, norm: nn.LayerNorm, start: int | Tensor, bias: Tensor, rows: slice = slice(None),
                spans: list[Span] | None = None) -> Tensor:
        """x + attention(norm(x)). `rows`: which of the cache's rows `x` holds; `spans`: per run
        of these rows, the first key it may attend to (`masked_prefix_spans`); the keys before
        it are not read."""
        b, t, d = x.shape
        qkv = project(x, self.qkv, norm)
        kern = step_kernels(x, start) if self.cache is not None and rows == slice(None) else None
        if kern is not None:  # one call: cache write, scores, softmax, weighted sum
            y = kernels.attend_step(kern, qkv.view(b, 3 * d), self.cache.k, self.cache.v, start, first_keys(spans),
                                    bias.view(b, -1))
            return project(y.view(b, t, d), self.out, residual=x)
        q, k, v = qkv.view(b, t, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        if self.cache is not None:
            k, v = self.cache.update(start, k, v, rows)
            k, v = k.to(q.dtype), v.to(q.dtype)  # a cache kept in fp16 for our step kernel (Decoder)
        if spans is None:
            y = attend(q, k, v, bias)
        else:
            y = torch.cat([attend(q[lo:hi], k[lo:hi, :, first:], v[lo:hi, :, first:], bias[lo:hi, ..., first:])
                           for lo, hi, first in spans])
        return project(y.transpose(1, 2).reshape(b, t, d), self.out, residual=x)


class CrossAttention(nn.Module):
    """Attends to the projected text states; their K/V are computed once by `precompute`."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.q = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.kv = nn.Linear(cfg.dim, 2 * cfg.dim, bias=False)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def precompute(self, states: Tensor) -> tuple[Tensor, Tensor]:
        b, n, _ = states.shape
        k, v = self.kv(states).view(b, n, 2, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        return k.contiguous(), v.contiguous()  # else every decode step's matmul copies them

    def forward(self, x: Tensor, norm: nn.LayerNorm, kv: tuple[Tensor, Tensor], bias: Tensor) -> Tensor:
        """x + attention(norm(x)) to the text states."""
        b, t, d = x.shape
        q = project(x, self.q, norm)
        kern = step_kernels(x, 0)
        if kern is not None:
            y = kernels.attend_fixed(kern, q.view(b, d), kv[0], kv[1], bias.view(b, -1))
            return project(y.view(b, t, d), self.out, residual=x)
        y = attend(q.view(b, t, self.num_heads, -1).transpose(1, 2), kv[0], kv[1], bias)
        return project(y.transpose(1, 2).reshape(b, t, d), self.out, residual=x)


class FeedForward(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.up = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.down = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x: Tensor, norm: nn.LayerNorm) -> Tensor:
        """x + feed_forward(norm(x))."""
        return project(project(x, self.up, norm, gelu=True), self.down, residual=x)


class Block(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.self_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.self_attn = SelfAttention(cfg)
        self.cross_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.cross_attn = CrossAttention(cfg)
        self.ffn_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.ffn = FeedForward(cfg)

    def plan(self) -> kernels.BlockPlan | None:
        """This block for our fused step kernel (`kernels.block_step`), or None where its linears
        are not all our integer kernels' (fp32, or PyTorch's int8/int4 kernels). Built once."""
        if "_plan" not in self.__dict__:
            layers = (self.self_attn.qkv, self.self_attn.out, self.cross_attn.q, self.cross_attn.out, self.ffn.up,
                      self.ffn.down)
            weights = [getattr(m, "q4", None) or getattr(m, "q8", None) for m in layers]
            self._plan = (kernels.BlockPlan((self.self_norm, self.cross_norm, self.ffn_norm), tuple(weights))
                          if all(w is not None for w in weights) else None)
        return self._plan

    def forward(self, x: Tensor, start: int | Tensor, bias: Tensor,
                cross_kv: tuple[Tensor, Tensor] | None, cross_bias: Tensor | None,
                rows: slice = slice(None), spans: list[Span] | None = None) -> Tensor:
        x = self.self_attn(x, self.self_norm, start, bias, rows, spans)
        if cross_kv is not None:
            x = self.cross_attn(x, self.cross_norm, cross_kv, cross_bias)
        return self.ffn(x, self.ffn_norm)


@dataclass
class CrossContext:
    """Per-generation cross-attention K/V for every block (None: no text in any row, which
    contributes exactly zero, as attention to all-zero states would)."""

    kv: list[tuple[Tensor, Tensor]] | None
    bias: Tensor | None  # (B, 1, 1, L) additive mask over the text tokens

    def rows(self, lo: int, hi: int) -> CrossContext:
        """The same context for rows [lo, hi) only (views, nothing copied)."""
        if self.kv is None:
            return self
        return CrossContext([(k[lo:hi], v[lo:hi]) for k, v in self.kv], self.bias[lo:hi])


class StageLM(nn.Module):
    """MusicGen decoder with STAGE's context token. See module docstring."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        self.emb = nn.ModuleList(nn.Embedding(cfg.vocab_rows, cfg.dim) for _ in range(cfg.num_codebooks))
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.out_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.heads = nn.ModuleList(nn.Linear(cfg.dim, cfg.card, bias=False) for _ in range(cfg.num_codebooks))
        self.text_proj = nn.Linear(cfg.text_dim, cfg.dim)
        # The heads in fp16, one (K * card, dim) matrix, for the CPU step kernel: set by
        # `quant.quantize_decoder` (quantized precisions only; the fp32 heads stay for prefill).
        self.heads_half: Tensor | None = None
        self.zero_pad_rows()

    @torch.no_grad()
    def zero_pad_rows(self) -> None:
        """The pad embedding must be exactly zero: padding contributes nothing to a step."""
        for e in self.emb:
            e.weight[self.cfg.pad_id].zero_()

    @torch.no_grad()
    def pack_for_cpu(self) -> bool:
        """Swap each projection that `linear` runs for its oneDNN-packed form (CPU, fp32; see
        `pack_linear_weight`). One-way and for inference only: a packed model cannot be trained,
        saved or moved; build a fresh one for that. False (nothing changed) where not possible."""
        packed_any = False
        for layer in self.projections():
            if not isinstance(layer, nn.Linear):  # quantized: its integer weights are packed already
                continue
            packed = pack_linear_weight(layer.weight)
            if packed is not None:
                layer.weight = nn.Parameter(packed, requires_grad=False)
                packed_any = True
        return packed_any

    def projections(self) -> list[nn.Linear | QuantLinear]:
        """The linears a decode step multiplies by (cross-attention K/V are precomputed)."""
        per_block = [(b.self_attn.qkv, b.self_attn.out, b.cross_attn.q, b.cross_attn.out, b.ffn.up, b.ffn.down)
                     for b in self.layers]
        return [m for group in per_block for m in group] + list(self.heads)

    # -- per-generation state -------------------------------------------------------------
    def setup_cache(self, batch: int, max_steps: int, dtype: torch.dtype | None = None) -> None:
        """A cache per block, in the model's dtype unless `dtype` is given."""
        p = self.heads[0].weight
        for blk in self.layers:
            blk.self_attn.cache = KVCache(batch, self.cfg.num_heads, max_steps, self.cfg.head_dim, dtype or p.dtype,
                                          p.device)

    def clear_cache(self) -> None:
        for blk in self.layers:
            blk.self_attn.cache = None

    def cross_context(self, text_states: Tensor | None, text_mask: Tensor | None) -> CrossContext:
        """Project T5 states (B, L, text_dim) and precompute every block's cross K/V.

        Rows whose mask is all False (no text) attend to one zero state, i.e. get exactly zero,
        which is how MusicGen and STAGE treat an empty description.
        """
        if text_states is None:
            return CrossContext(None, None)
        p = self.heads[0].weight
        states = self.text_proj(text_states.to(p.dtype))
        mask = text_mask.to(torch.bool) if text_mask is not None else torch.ones(states.shape[:2], dtype=torch.bool, device=states.device)
        empty = ~mask.any(-1)
        states = states * mask[..., None].to(states.dtype)
        mask = mask.clone()
        mask[empty, 0] = True
        kv = [blk.cross_attn.precompute(states) for blk in self.layers]
        return CrossContext(kv, additive(mask, states.dtype)[:, None, None, :])

    # -- forward --------------------------------------------------------------------------
    def forward(self, tokens: Tensor, positions: Tensor, key_valid: Tensor, start: int | Tensor = 0,
                cross: CrossContext | None = None, rows: slice = slice(None),
                spans: list[Span] | None = None) -> Tensor:
        """Logits for `tokens` placed at steps [start, start + T).

        tokens:    (B, K, T) long, no negative ids.
        positions: (B, T) long sinusoid positions (counted from each row's first valid step).
        key_valid: (B, >= start + T) bool, which steps may be attended to.
        start:     int (eager), or a 0-d long tensor on the device (static shapes: attends over
                   the whole cache; what CUDA graphs capture).
        rows:      which rows of the KV cache these B rows are (a prefill of some rows only).
        spans:     attention per run of these rows from its first valid key
                   (`masked_prefix_spans`), skipping keys the mask hides anyway.
        Returns (B, K, T, card) logits. With a cache set up, K/V of these steps are stored.
        """
        b, k, t = tokens.shape
        books = tokens.transpose(0, 1).contiguous()  # (K, B, T): one copy here, not one per table
        x = sum(self.emb[q](books[q]) for q in range(k))
        x = x + sinusoidal_embedding(positions, self.cfg.dim, self.cfg.max_period).to(x.dtype)
        bias = additive(self.attention_mask(key_valid, start, t), x.dtype)
        cross = cross or CrossContext(None, None)
        kern = step_kernels(x, start) if rows == slice(None) and self.layers and self.layers[0].self_attn.cache else None
        if kern is not None and all(blk.plan() is not None for blk in self.layers):
            x = self._fused_step(kern, x, start, bias, cross, spans)
        else:
            for i, blk in enumerate(self.layers):
                x = blk(x, start, bias, cross.kv[i] if cross.kv is not None else None, cross.bias, rows, spans)
        x = self.out_norm(x)
        kern = step_kernels(x, start) if self.heads_half is not None else None
        if kern is not None:  # (B, 1, K * card) is (B, K, 1, card) in memory
            return kernels.f16_linear(kern, x, self.heads_half).view(b, k, t, -1)
        return torch.stack([linear(x, head.weight) for head in self.heads], dim=1)

    def _fused_step(self, kern: kernels.Kernels, x: Tensor, start: int, bias: Tensor, cross: CrossContext,
                    spans: list[Span] | None) -> Tensor:
        """Every block's single step through `kernels.block_step` (one call per block: the same
        arithmetic as `Block.forward` with our integer kernels, without ~3 ms of Python-level
        ops a step on a 2-core CPU). x (B, 1, D) -> (B, 1, D)."""
        b, _, d = x.shape
        flat = x.reshape(b, d).float().contiguous()
        first = first_keys(spans)
        scratch = torch.empty(b * (4 * d + self.cfg.ffn_dim))
        flat_bias = bias.reshape(b, -1)
        cross_bias = cross.bias.reshape(b, -1) if cross.kv is not None else None
        for i, blk in enumerate(self.layers):
            cache = blk.self_attn.cache
            kernels.block_step(kern, blk.plan(), flat, self.cfg.num_heads, cache.k, cache.v, start, first, flat_bias,
                               cross.kv[i] if cross.kv is not None else None, cross_bias, scratch)
        return flat.view(b, 1, d)

    @staticmethod
    def attention_mask(key_valid: Tensor, start: int | Tensor, t: int) -> Tensor:
        """(B, 1, T, N) bool: causal, valid keys only, and always the query itself (so a fully
        masked query yields finite values instead of NaN; its output is never used).
        N = start + T for an int start, else the whole of `key_valid` (static shapes)."""
        n = start + t if isinstance(start, int) else key_valid.shape[-1]
        q_idx = (start + torch.arange(t, device=key_valid.device))[:, None]
        k_idx = torch.arange(n, device=key_valid.device)[None, :]
        causal = k_idx <= q_idx
        mask = (causal[None] & key_valid[:, None, :n]) | (k_idx == q_idx)[None]
        return mask[:, None]
