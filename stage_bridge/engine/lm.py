"""The STAGE decoder: MusicGen's transformer with a context token and a static KV cache.

Architecture (MusicGen-small by default): K summed codebook embeddings (card + 2 rows: `card`
is the zeroed pad, `card + 1` the context token), parameter-free sinusoidal positions, N pre-norm
blocks of [self-attention, cross-attention to the projected T5 states, GELU feed-forward],
a final LayerNorm and K output heads. LayerNorms have biases; linears do not.

Speed: decoding on any device is memory-bound, so one forward serves prefill and single-step
decode, self-attention K/V live in a cache preallocated once per generation (written in place,
read only up to the current length), and cross-attention K/V are computed once per generation.
Without a cache (training, reference checks) the same forward runs plain causal attention.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
    weights. On CPUs, `F.linear` with a few rows can stream weights at a fraction of memory
    bandwidth (measured on a 2-core AMD EPYC: ~9 GB/s), while the same product as
    weight @ x.T runs near copy bandwidth (~34 GB/s). Same numbers, different loop order.
    """
    rows = x.numel() // x.shape[-1]
    if x.device.type != "cpu" or rows > 16:
        return F.linear(x, weight)
    flat = x.reshape(rows, x.shape[-1])
    return torch.mm(weight, flat.t()).t().contiguous().view(*x.shape[:-1], weight.shape[0])


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Scaled dot-product attention with a boolean mask (True = attend).

    A single query (decode) is two batched matrix-vector products: fused kernels tile over
    queries and leave most of a GPU idle when there is one (measured on an H100: 53 us vs a few
    us per call), so that case is written out; several queries (prefill, training) use SDPA.
    """
    if q.shape[-2] != 1:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


class KVCache(nn.Module):
    """Preallocated keys/values of one self-attention layer: (B, H, max_steps, head_dim)."""

    def __init__(self, batch: int, heads: int, max_steps: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        super().__init__()
        shape = (batch, heads, max_steps, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, start: int | Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store K/V of steps [start, start + T). An int start returns only the filled prefix
        (eager: read no more than needed); a tensor start (device scalar) returns the whole
        cache, so shapes stay static for CUDA graphs; the mask hides the unfilled part."""
        if isinstance(start, Tensor):
            idx = start + torch.arange(k.shape[2], device=k.device)
            self.k.index_copy_(2, idx, k)
            self.v.index_copy_(2, idx, v)
            return self.k, self.v
        end = start + k.shape[2]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


class SelfAttention(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.cache: KVCache | None = None

    def forward(self, x: Tensor, start: int | Tensor, mask: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = linear(x, self.qkv.weight).view(b, t, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        if self.cache is not None:
            k, v = self.cache.update(start, k, v)
        y = attend(q, k, v, mask)
        return linear(y.transpose(1, 2).reshape(b, t, d), self.out.weight)


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
        return k, v

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], mask: Tensor) -> Tensor:
        b, t, d = x.shape
        q = linear(x, self.q.weight).view(b, t, self.num_heads, -1).transpose(1, 2)
        y = attend(q, kv[0], kv[1], mask)
        return linear(y.transpose(1, 2).reshape(b, t, d), self.out.weight)


class FeedForward(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.up = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.down = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return linear(F.gelu(linear(x, self.up.weight)), self.down.weight)


class Block(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.self_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.self_attn = SelfAttention(cfg)
        self.cross_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.cross_attn = CrossAttention(cfg)
        self.ffn_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.ffn = FeedForward(cfg)

    def forward(self, x: Tensor, start: int | Tensor, mask: Tensor,
                cross_kv: tuple[Tensor, Tensor] | None, cross_mask: Tensor | None) -> Tensor:
        x = x + self.self_attn(self.self_norm(x), start, mask)
        if cross_kv is not None:
            x = x + self.cross_attn(self.cross_norm(x), cross_kv, cross_mask)
        return x + self.ffn(self.ffn_norm(x))


@dataclass
class CrossContext:
    """Per-generation cross-attention K/V for every block (None: no text in any row, which
    contributes exactly zero, as attention to all-zero states would)."""

    kv: list[tuple[Tensor, Tensor]] | None
    mask: Tensor | None


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
        self.zero_pad_rows()

    @torch.no_grad()
    def zero_pad_rows(self) -> None:
        """The pad embedding must be exactly zero: padding contributes nothing to a step."""
        for e in self.emb:
            e.weight[self.cfg.pad_id].zero_()

    # -- per-generation state -------------------------------------------------------------
    def setup_cache(self, batch: int, max_steps: int) -> None:
        p = self.heads[0].weight
        for blk in self.layers:
            blk.self_attn.cache = KVCache(batch, self.cfg.num_heads, max_steps, self.cfg.head_dim, p.dtype, p.device)

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
        return CrossContext(kv, mask[:, None, None, :])

    # -- forward --------------------------------------------------------------------------
    def forward(self, tokens: Tensor, positions: Tensor, key_valid: Tensor, start: int | Tensor = 0,
                cross: CrossContext | None = None) -> Tensor:
        """Logits for `tokens` placed at steps [start, start + T).

        tokens:    (B, K, T) long, no negative ids.
        positions: (B, T) long sinusoid positions (counted from each row's first valid step).
        key_valid: (B, >= start + T) bool, which steps may be attended to.
        start:     int (eager), or a 0-d long tensor on the device (static shapes: attends over
                   the whole cache; what CUDA graphs capture).
        Returns (B, K, T, card) logits. With a cache set up, K/V of these steps are stored.
        """
        b, k, t = tokens.shape
        x = sum(self.emb[q](tokens[:, q]) for q in range(k))
        x = x + sinusoidal_embedding(positions, self.cfg.dim, self.cfg.max_period).to(x.dtype)
        mask = self.attention_mask(key_valid, start, t)
        cross = cross or CrossContext(None, None)
        for i, blk in enumerate(self.layers):
            x = blk(x, start, mask, cross.kv[i] if cross.kv is not None else None, cross.mask)
        x = self.out_norm(x)
        return torch.stack([linear(x, head.weight) for head in self.heads], dim=1)

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
