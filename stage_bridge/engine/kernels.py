"""Our CPU decode kernels (kernels.cpp): built once per machine, loaded with ctypes.

Why: on a 2-core CPU the int4 step was bound by PyTorch's int4 kernel (it reads int4 weights at
a third of memory speed) and by a dozen small ops per attention (benchmarks/RESULTS.md). The
kernels are plain C++ with a C ABI, so building needs a C++ compiler and nothing from PyTorch's
build machinery, and takes about a second; the library is kept under the user's cache folder,
keyed by the source, the compiler and the CPU (it is built for this CPU's instruction set).

Without a compiler, or with `STAGE_BRIDGE_KERNELS=off`, nothing is built and `library()` says
why: the callers keep PyTorch's own kernels. Nothing here runs on a GPU.

The OpenMP pragmas link the runtime by its soname (libgomp.so.1 with GCC), the one PyTorch has
already loaded, so our parallel regions share each thread's pool with PyTorch's own (two
runtimes would oversubscribe two cores; see bridge/daemon.py `on_own_thread`).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..paths import user_cache_dir

SOURCE = Path(__file__).with_name("kernels.cpp")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-fopenmp", "-fPIC", "-shared", "-fno-math-errno")
TILE = 16  # output columns per packed tile (kernels.cpp)
KINDS = {1: "portable", 2: "avx512-vnni"}

_p = ctypes.c_void_p
_i64 = ctypes.c_int64
_SIGNATURES = {
    "sb_kind": (ctypes.c_int, []),
    "sb_q4_pack": (None, [_p, _p, _p, _i64, _i64, _i64, _p, _p, _p]),
    "sb_q4_linear": (None, [_p, _i64, _i64, _p, _p, _p, _i64, _i64, _p, _p, ctypes.c_float, _p, ctypes.c_int, _p,
                            ctypes.c_int]),
    "sb_q8_pack": (None, [_p, _i64, _i64, _i64, _p, _p]),
    "sb_q8_linear": (None, [_p, _i64, _i64, _p, _p, _p, _i64, _i64, _p, _p, ctypes.c_float, _p, ctypes.c_int, _p,
                            ctypes.c_int]),
    "sb_block_step": (None, [_p, _p, _i64, _i64, _i64, _p, _p, ctypes.c_int, _i64, _i64, _i64, _p, _p, _i64, _p, _p,
                             _i64, _p, _p, ctypes.c_int]),
    "sb_f16_linear": (None, [_p, _i64, _i64, _p, _i64, _p, ctypes.c_int]),
    "sb_attend": (None, [_p, _i64, _p, _p, ctypes.c_int, _i64, _i64, _p, _p, _i64, _p, _i64, _p, _i64, _p, _i64,
                         _i64, _i64, ctypes.c_int]),
}


@dataclass(frozen=True)
class Kernels:
    """The loaded library; `kind` says which code paths it was built with (for reports)."""

    lib: ctypes.CDLL
    kind: str


def _cpu_id() -> str:
    """What -march=native depends on: the CPU's model and flags (a shared home folder may be
    used from several machines)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))][:2]
        return "\n".join(lines) or platform.processor()
    except OSError:
        return platform.machine() + platform.processor()


def build(folder: Path | None = None, compiler: str | None = None, flags: tuple[str, ...] = FLAGS) -> Path:
    """Compile kernels.cpp for this machine unless already built; the library's path. Raises
    RuntimeError saying what to do when there is no compiler or the build fails. (`flags`: the
    tests build the portable path with another -march.)"""
    cxx = compiler or os.environ.get("CXX", "c++")
    exe = shutil.which(cxx)
    if exe is None:
        raise RuntimeError(f"no C++ compiler ({cxx!r}) on PATH; install one (Debian/Ubuntu: apt install g++) "
                           "for the fast CPU kernels")
    try:
        version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise RuntimeError(f"the C++ compiler {exe} does not run: {err}") from err
    key = hashlib.sha256("\0".join([SOURCE.read_text(), " ".join(flags), version, _cpu_id()]).encode()).hexdigest()[:16]
    folder = folder or user_cache_dir() / "kernels"
    target = folder / f"stage_bridge_kernels-{key}.so"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)  # built aside, then renamed: never a half-written library
    os.close(fd)
    try:
        done = subprocess.run([exe, *flags, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"building the CPU kernels failed ({exe}):\n{done.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.cache
def _load() -> Kernels | str:
    if os.environ.get("STAGE_BRIDGE_KERNELS", "").lower() in ("0", "off", "no", "false"):
        return "turned off by STAGE_BRIDGE_KERNELS"
    if platform.system() != "Linux":
        return f"not built on {platform.system()} yet (PyTorch's kernels run instead)"
    try:
        return open_library(build())
    except (RuntimeError, OSError) as err:
        return str(err)


def open_library(path: Path) -> Kernels:
    """Load a built library and declare its functions' C types (ctypes checks each call's)."""
    lib = ctypes.CDLL(str(path))
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return Kernels(lib, KINDS.get(lib.sb_kind(), "unknown"))


def library() -> Kernels | None:
    """The kernels, built and loaded on first use in this process, or None (see `why_not`)."""
    got = _load()
    return got if isinstance(got, Kernels) else None


def why_not() -> str | None:
    """Why the kernels are not available here, or None when they are."""
    got = _load()
    return got if isinstance(got, str) else None


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _half(cache: Tensor) -> int:
    if cache.dtype not in (torch.float32, torch.float16):
        raise ValueError(f"the attention kernel reads fp32 or fp16 keys and values, not {cache.dtype}")
    return int(cache.dtype == torch.float16)


def q4_supports(out_features: int, in_features: int, group: int) -> bool:
    """Shapes the int4 and int8 kernels take: outputs in tiles of 16, whole groups of a multiple of 8."""
    return out_features % TILE == 0 and in_features % group == 0 and group % 8 == 0


@dataclass(frozen=True)
class Q4Weight:
    """An int4 weight in the kernel's tiled layout (see kernels.cpp `sb_q4_pack`)."""

    packed: Tensor  # uint8 (N * K / 2,)
    scales: Tensor  # fp16 (N / 16, K / group, 16)
    zeros: Tensor  # fp16, as scales
    out_features: int
    in_features: int
    group: int


@dataclass(frozen=True)
class Q8Weight:
    """An int8 weight in the kernel's tiled layout (see kernels.cpp `sb_q8_pack`)."""

    packed: Tensor  # int8 (N * K,)
    wsum: Tensor  # int32 (N / 16, K / group, 16): 128 * each column's weight sum per group
    scales: Tensor  # fp32 (N,), one per output channel
    out_features: int
    in_features: int
    group: int  # the activations' rounding group


def _check_shape(n: int, k: int, group: int) -> None:
    if not q4_supports(n, k, group):
        raise ValueError(f"the integer kernels take outputs in 16s and groups of a multiple of 8 (got {n}x{k}, {group})")


def q4_pack(kern: Kernels, codes: Tensor, scales: Tensor, zeros: Tensor, group: int) -> Q4Weight:
    """codes (N, K) in [0, 15], scales and zeros (N, K / group) float: w ~= (code - 8) * scale + zero."""
    n, k = codes.shape
    _check_shape(n, k, group)
    c = codes.to(torch.uint8).contiguous()
    s = scales.to(torch.float16).contiguous()
    z = zeros.to(torch.float16).contiguous()
    packed = torch.empty(n * k // 2, dtype=torch.uint8)
    ts = torch.empty(n // TILE, k // group, TILE, dtype=torch.float16)
    tz = torch.empty_like(ts)
    kern.lib.sb_q4_pack(c.data_ptr(), s.data_ptr(), z.data_ptr(), n, k, group, packed.data_ptr(), ts.data_ptr(),
                        tz.data_ptr())
    return Q4Weight(packed, ts, tz, n, k, group)


def q8_pack(kern: Kernels, q: Tensor, scales: Tensor, group: int) -> Q8Weight:
    """q (N, K) int8, symmetric, w ~= q * scales[n]; `group`: inputs per activation scale."""
    n, k = q.shape
    _check_shape(n, k, group)
    packed = torch.empty(n * k, dtype=torch.int8)
    wsum = torch.empty(n // TILE, k // group, TILE, dtype=torch.int32)
    kern.lib.sb_q8_pack(q.to(torch.int8).contiguous().data_ptr(), n, k, group, packed.data_ptr(), wsum.data_ptr())
    return Q8Weight(packed, wsum, scales.float().contiguous(), n, k, group)


def _activations(x: Tensor, in_features: int, out_features: int, norm: torch.nn.LayerNorm | None,
                 residual: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None, float]:
    flat = x.reshape(-1, in_features).float().contiguous()
    y = torch.empty(flat.shape[0], out_features, dtype=torch.float32)
    res = None if residual is None else residual.reshape(flat.shape[0], out_features).float().contiguous()
    if norm is None:
        return flat, y, res, None, None, 0.0
    return flat, y, res, norm.weight.detach().contiguous(), norm.bias.detach().contiguous(), norm.eps


def q4_linear(kern: Kernels, x: Tensor, w: Q4Weight, norm: torch.nn.LayerNorm | None = None,
              residual: Tensor | None = None, gelu: bool = False) -> Tensor:
    """[residual +] gelu?(norm?(x) @ w.T) for fp32 CPU `x` (..., in_features); the activations
    are rounded to int8 per group of the weight's (see kernels.cpp)."""
    flat, y, res, ln_w, ln_b, eps = _activations(x, w.in_features, w.out_features, norm, residual)
    kern.lib.sb_q4_linear(flat.data_ptr(), flat.shape[0], w.in_features, w.packed.data_ptr(), w.scales.data_ptr(),
                          w.zeros.data_ptr(), w.out_features, w.group, _ptr(ln_w), _ptr(ln_b), eps, _ptr(res), int(gelu),
                          y.data_ptr(), torch.get_num_threads())
    return y.view(*x.shape[:-1], w.out_features)


def q8_linear(kern: Kernels, x: Tensor, w: Q8Weight, norm: torch.nn.LayerNorm | None = None,
              residual: Tensor | None = None, gelu: bool = False) -> Tensor:
    """As `q4_linear`, for an int8 weight."""
    flat, y, res, ln_w, ln_b, eps = _activations(x, w.in_features, w.out_features, norm, residual)
    kern.lib.sb_q8_linear(flat.data_ptr(), flat.shape[0], w.in_features, w.packed.data_ptr(), w.wsum.data_ptr(),
                          w.scales.data_ptr(), w.out_features, w.group, _ptr(ln_w), _ptr(ln_b), eps, _ptr(res),
                          int(gelu), y.data_ptr(), torch.get_num_threads())
    return y.view(*x.shape[:-1], w.out_features)


def f16_linear(kern: Kernels, x: Tensor, weight: Tensor) -> Tensor:
    """x (..., K) fp32 @ weight.T for an fp16 weight (N, K) (the output heads); fp32 out."""
    if weight.dtype != torch.float16 or not weight.is_contiguous():
        raise ValueError("f16_linear takes a contiguous fp16 weight")
    n, k = weight.shape
    flat = x.reshape(-1, k).float().contiguous()
    y = torch.empty(flat.shape[0], n, dtype=torch.float32)
    kern.lib.sb_f16_linear(flat.data_ptr(), flat.shape[0], k, weight.data_ptr(), n, y.data_ptr(),
                           torch.get_num_threads())
    return y.view(*x.shape[:-1], n)


def attend_step(kern: Kernels, qkv: Tensor, k_cache: Tensor, v_cache: Tensor, pos: int, first: Tensor | None,
                bias: Tensor | None) -> Tensor:
    """One decode step's self-attention: qkv (B, 3 * H * D) fp32 of this step; the caches
    (B, H, max_steps, D), fp32 or fp16, get its key and value at `pos`; each row b attends keys
    [first[b], pos] (int32 (B,); None: from 0) with the additive `bias` (B, >= pos + 1; None:
    none). Returns (B, H * D)."""
    b, h, _, d = k_cache.shape
    if not (qkv.is_contiguous() and k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("attend_step takes contiguous tensors")
    out = torch.empty(b, h * d, dtype=torch.float32)
    base = qkv.data_ptr()
    step = qkv.element_size() * h * d
    kern.lib.sb_attend(base, qkv.shape[-1], k_cache.data_ptr(), v_cache.data_ptr(), _half(k_cache), k_cache.stride(0),
                       k_cache.stride(1), base + step, base + 2 * step, pos, _ptr(first), pos + 1, _ptr(bias),
                       0 if bias is None else bias.stride(0), out.data_ptr(), b, h, d, torch.get_num_threads())
    return out


def attend_fixed(kern: Kernels, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
    """Single-query attention of q (B, H * D) over fixed keys/values k, v (B, H, L, D) (the
    cross-attention's text states) with the additive `bias` (B, L). Returns (B, H * D)."""
    b, h, n, d = k.shape
    if not (q.is_contiguous() and k.is_contiguous() and v.is_contiguous()):
        raise ValueError("attend_fixed takes contiguous tensors")
    out = torch.empty(b, h * d, dtype=torch.float32)
    kern.lib.sb_attend(q.data_ptr(), q.shape[-1], k.data_ptr(), v.data_ptr(), _half(k), k.stride(0), k.stride(1), None, None,
                       0, None, n, _ptr(bias), 0 if bias is None else bias.stride(0), out.data_ptr(), b, h, d,
                       torch.get_num_threads())
    return out


class _Linear(ctypes.Structure):
    _fields_ = [("bits", ctypes.c_int64), ("packed", _p), ("a", _p), ("b", _p), ("N", _i64), ("K", _i64), ("G", _i64)]


class _Block(ctypes.Structure):
    _fields_ = [(name, _p) for name in ("self_w", "self_b", "cross_w", "cross_b", "ffn_w", "ffn_b")] + \
               [("eps", ctypes.c_float)] + \
               [(name, _Linear) for name in ("qkv", "out", "cross_q", "cross_out", "up", "down")]


def _linear_struct(w: Q4Weight | Q8Weight) -> _Linear:
    if isinstance(w, Q4Weight):
        return _Linear(4, w.packed.data_ptr(), w.scales.data_ptr(), w.zeros.data_ptr(), w.out_features, w.in_features,
                       w.group)
    return _Linear(8, w.packed.data_ptr(), w.wsum.data_ptr(), w.scales.data_ptr(), w.out_features, w.in_features,
                   w.group)


class BlockPlan:
    """One decoder block for `block_step`: its three LayerNorms and six integer weights
    (qkv, out, cross q, cross out, up, down) as the C struct kernels.cpp reads. Holds the
    tensors it points into, so they live as long as the plan."""

    def __init__(self, norms: tuple[torch.nn.LayerNorm, ...], weights: tuple[Q4Weight | Q8Weight, ...]):
        self.tensors = [t.detach().contiguous() for norm in norms for t in (norm.weight, norm.bias)]
        self.weights = weights
        ptrs = [t.data_ptr() for t in self.tensors]
        self.struct = _Block(*ptrs, norms[0].eps, *(_linear_struct(w) for w in weights))
        self.ffn_dim = weights[4].out_features


def block_step(kern: Kernels, plan: BlockPlan, x: Tensor, heads: int, k_cache: Tensor, v_cache: Tensor, pos: int,
               first: Tensor | None, bias: Tensor, cross_kv: tuple[Tensor, Tensor] | None, cross_bias: Tensor | None,
               scratch: Tensor) -> None:
    """One block's decode step on x (B, D) fp32, in place (kernels.cpp `sb_block_step`): the
    cache gets this step's key and value at `pos`; `first`, `bias` as `attend_step`; cross_kv
    (B, H, L, D / H) with cross_bias (B, L) or None; `scratch` (>= B * (4 * D + ffn) floats)."""
    b, d = x.shape
    if not (x.is_contiguous() and k_cache.is_contiguous() and v_cache.is_contiguous() and scratch.is_contiguous()):
        raise ValueError("block_step takes contiguous tensors")
    if scratch.numel() < b * (4 * d + plan.ffn_dim):
        raise ValueError("block_step's scratch is too small")
    ck = cv = None
    n_text = 0
    if cross_kv is not None:
        ck, cv = cross_kv
        if not (ck.is_contiguous() and cv.is_contiguous()):
            raise ValueError("block_step takes contiguous cross-attention keys and values")
        n_text = ck.shape[2]
    kern.lib.sb_block_step(ctypes.addressof(plan.struct), x.data_ptr(), b, d, heads, k_cache.data_ptr(), v_cache.data_ptr(),
                           _half(k_cache), k_cache.stride(0), k_cache.stride(1), pos, _ptr(first), bias.data_ptr(),
                           bias.stride(0), _ptr(ck), _ptr(cv), n_text, _ptr(cross_bias), scratch.data_ptr(),
                           torch.get_num_threads())
