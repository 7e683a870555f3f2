"""How much memory a request needs at its peak, and whether this machine has it free now.

Why before running: a request the protocol allows (512 bars at 30 bpm, 8 takes) needs tens of
GB; started anyway it fails after minutes, or pushes the computer into swap while a musician
is recording. So a job is sized from what it asks (length, takes, CFG rows, context file) and
the model's shape, and refused at once with `TooLarge`, whose message says the most bars that
fit. The estimate is an upper bound by design (each term rounds up; see `need`): refusing a job
that would just have fitted costs a musician one more try with fewer bars, a job that runs out
of memory costs minutes and may take the DAW down with it.

Memory comes in two kinds: the host's RAM (audio arrays, always) and the accelerator's (KV
cache, activations, codec chunks). On the CPU, and on Apple's unified memory, both are RAM.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import torch

from ..audio.timing import bars_to_samples
from ..errors import TooLarge
from .generate import StemRequest, Windows
from .model import StageModel

GB = 1e9
FLOAT32 = 4
FLOAT64 = 8
CONTEXT_BYTES = 20  # per model-rate sample (see `need`)
TAKE_BYTES = 12  # per output sample and take
LOUDNESS_BYTES = 64  # per output sample, once
SCORE_BYTES = 96  # per output sample, once: scoring one take at a time (audio/fit.py)
SCORER_BYTES = 250_000_000  # the beat tracker's code (librosa, numba), loaded by a process's first scoring
BASE_BYTES = 150_000_000  # what any job may add once: allocator slack, kernels and work buffers set up on first use
HEADROOM = 0.85  # of what the OS reports free: the DAW, the OS and allocator slack need the rest


@dataclass(frozen=True)
class ContextShape:
    """The context file as stored: its length in frames, channels and rate (no samples read)."""

    frames: int
    channels: int
    sample_rate: int


@dataclass(frozen=True)
class Memory:
    """Bytes of host RAM and of accelerator memory (0 where the accelerator is the host's RAM)."""

    host: int
    device: int = 0

    def fits(self, free: "Memory") -> bool:
        return self.host <= free.host and self.device <= free.device


FreeMemory = Callable[[torch.device], Memory]  # what is free now, per kind (injectable for tests)


def need(model: StageModel, req: StemRequest, context: ContextShape | None) -> Memory:
    """Peak memory of rendering `req` with `model` (weights excluded: they are loaded already).

    `req.context` may be unloaded (None): `context` gives the file's shape. Terms (bytes per
    sample measured with tracemalloc on tiny-random, then rounded up):
    - the context: the file as float32, its mono mix, the mix at the model rate, the context
      signal (20 B per model-rate sample: built in float64, kept as float32);
    - the takes (every candidate generated: `req.batch`): each decoded at the model rate (float32, in host memory: codec.decode), resampled,
      cropped and matched at the output rate (8 B measured, 12 counted);
    - loudness matching: pyloudnorm's float64 filter passes over one signal at a time (the
      context, then each take; both as stereo): 40-61 B per output sample measured, 64 counted;
    - the decoder: KV cache (2 x layers x rows x steps x dim) plus one layer's prefill
      activations (the FFN, the attention scores) for the longest window;
    - the codec: one chunk of its widest layer (several tensors of it alive at once);
    - scoring (audio/fit.py), one take at a time after matching: the onset envelope's spectrogram,
      the tracker, the silence blocks: 70 B per output sample measured, 96 counted; and the
      tracker's code, imported and compiled by a process's first scoring (235 MB measured, 250
      counted; counted always: an upper bound, a daemon has loaded it before its first job);
    - a fixed `BASE_BYTES` for what the first job of a process sets up (~100 MB measured).
    tests/test_budget.py checks the sum against the peak RSS of real requests.
    """
    sr = model.sample_rate
    out_rate = context.sample_rate if context is not None else req.sample_rate
    n_out = bars_to_samples(req.bars, req.bpm, out_rate, req.beats_per_bar, req.beat_unit)
    n_model = int(round(Fraction(n_out) * sr / out_rate))
    host = BASE_BYTES + SCORER_BYTES + n_model * CONTEXT_BYTES + n_out * (LOUDNESS_BYTES + SCORE_BYTES)
    if context is not None:
        host += context.frames * (context.channels + 1) * FLOAT32  # the file, its mono mix
    host += req.batch * (n_model * FLOAT32 + n_out * TAKE_BYTES)  # every candidate, kept or not

    cfg = model.lm.cfg
    width = next(model.lm.parameters()).element_size()
    rows = req.sampling.rows(req.batch)
    window = min(Windows().frames, model.codec.frames_for(n_model))
    steps = window + 1 + window + cfg.num_codebooks  # context, separator, target, delay (pattern.StageLayout)
    kv = 2 * cfg.num_layers * rows * steps * cfg.dim * width
    prefill = rows * steps * (cfg.ffn_dim + 4 * cfg.dim + cfg.num_heads * steps) * max(width, FLOAT32)
    logits = rows * cfg.num_codebooks * cfg.vocab_rows * FLOAT32 * 4
    codec = model.codec
    chunk = (codec.chunk_frames + 2 * codec.margin_frames) * codec.hop_length
    filters = int(codec.model.config.num_filters)
    codec_work = chunk * filters * FLOAT32 * 6
    engine = kv + prefill + logits + codec_work
    if _shares_host_memory(model.device):
        return Memory(host + engine)
    return Memory(host, engine)


def check_fits(model: StageModel, req: StemRequest, context: ContextShape | None, free: Memory) -> None:
    """TooLarge, saying the most bars (at this tempo, meter and number of takes) that fit, when
    `req` needs more than `free` allows."""
    want = need(model, req, context)
    usable = Memory(int(free.host * HEADROOM), int(free.device * HEADROOM))
    if want.fits(usable):
        return

    def fitting_bars(smaller: StemRequest) -> int:  # need grows with bars: bisect for the largest that fits
        lo, hi = 0, req.bars - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if need(model, dataclasses.replace(smaller, bars=mid), context).fits(usable):
                lo = mid
            else:
                hi = mid - 1
        return lo

    kind = "GPU memory" if want.device > usable.device else "memory"
    needed, has = (want.device, free.device) if kind == "GPU memory" else (want.host, free.host)
    meter = f"{req.beats_per_bar}/{req.beat_unit}"
    bars = fitting_bars(req)
    takes = "1 take" if req.takes == 1 else f"{req.takes} takes"
    if req.batch > req.takes:
        takes += f" of {req.batch} candidates"
    if bars:
        advice = f"at most {bars} bars fit on this machine now ({req.bpm:g} bpm, {meter}, {takes})"
    else:
        advice = "not even 1 bar fits on this machine now"
    if req.batch > 1 and (single := fitting_bars(dataclasses.replace(req, takes=1, candidates=None))) > bars:
        advice += f", or {single} bars with 1 take"
    raise TooLarge(f"{req.bars} bars with {takes} need about {needed / GB:.1f} GB of {kind} and "
                   f"{has / GB:.1f} GB are free: {advice}. Close other programs or ask for less.")


def _shares_host_memory(device: torch.device) -> bool:
    return device.type in ("cpu", "mps")


def free_memory(device: torch.device) -> Memory:
    """What the OS says is free now: RAM (within this process's memory limit, if any), and the
    accelerator's free memory plus what torch holds cached but unused. Unknown: unlimited, so a
    platform we cannot read never refuses a job."""
    host = _free_ram()
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)  # cudaMemGetInfo: free and total bytes (torch.cuda docs)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return Memory(host, int(free + cached))
    return Memory(host)


UNKNOWN = sys.maxsize


def _free_ram() -> int:
    return min(_os_available(), _cgroup_room())


def _os_available() -> int:
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    # "An estimate of how much memory is available for starting new applications,
                    # without swapping" (docs.kernel.org/filesystems/proc.html, /proc/meminfo)
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
    elif sys.platform == "darwin":  # free + inactive + speculative + purgeable pages, each "Pages NAME: N" in
        # vm_stat(1)'s output after "page size of N bytes" (man vm_stat; Activity Monitor counts the same as available)
        try:
            text = subprocess.run(["vm_stat"], capture_output=True, text=True, timeout=5, check=True).stdout
            page = int(re.search(r"page size of (\d+)", text).group(1))  # type: ignore[union-attr]
            pages = {m[0]: int(m[1]) for m in re.findall(r"Pages (\w+):\s+(\d+)", text)}
            return page * sum(pages.get(k, 0) for k in ("free", "inactive", "speculative", "purgeable"))
        except (OSError, ValueError, AttributeError, subprocess.SubprocessError):
            pass
    elif sys.platform == "win32":
        import ctypes

        class MEMORYSTATUSEX(ctypes.Structure):
            _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                        ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                        ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                        ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
                        ("ullAvailExtendedVirtual", ctypes.c_ulonglong)]

        # GlobalMemoryStatusEx / MEMORYSTATUSEX, dwLength set by the caller; ullAvailPhys: "physical memory
        # currently available" (learn.microsoft.com/windows/win32/api/sysinfoapi/nf-sysinfoapi-globalmemorystatusex)
        status = MEMORYSTATUSEX(dwLength=ctypes.sizeof(MEMORYSTATUSEX))
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):  # type: ignore[attr-defined]
            return int(status.ullAvailPhys)
    return UNKNOWN


def _cgroup_room() -> int:
    """A container's (cgroup v2) memory limit minus its use: the OS figure ignores it. memory.max is
    a byte count or "max", memory.current the usage in bytes (docs.kernel.org/admin-guide/cgroup-v2.html)."""
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit == "max":
            return UNKNOWN
        with open("/sys/fs/cgroup/memory.current") as f:
            return max(0, int(limit) - int(f.read().strip()))
    except (OSError, ValueError):
        return UNKNOWN


__all__ = ["ContextShape", "Memory", "FreeMemory", "need", "check_fits", "free_memory", "HEADROOM"]
