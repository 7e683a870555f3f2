"""What explains a CPU decode's speed on this machine: the machine report.

Why: the same fp32 decode ran at 1.25-1.7x the memory floor on one 2-core AMD EPYC and at
2.3-2.6x on another of the same kind (issue 15). A decode step streams ~1.4 GB of weights per
step, so its speed depends on things no timing shows: whether the weights sit on transparent
huge pages (the kernel's `madvise` mode gives them only to memory that asks), whether they are
packed for oneDNN, how many threads run on how many cores, which vector units the CPU has,
which allocator serves the memory. `decode_report` reads them once, so a slow run explains
itself (`stage-bridge bench` prints it and puts it in its JSON under `machine`), and `hints`
turns what is known to cost speed into one-line notes.

It also says who had the CPUs during a run (`cpu_snapshot` before, `cpu_use_since` after):
other processes and a hypervisor's steal slow a decode as surely as slow memory does.
Everything here only reads (sysfs, /proc, environment, torch's settings); nothing is changed.
Off Linux the Linux-only fields are None.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

# The CPU flags that decide which kernels run: AVX2/AVX-512 for fp32 GEMMs (oneDNN, Inductor's
# C++), AVX-512 BF16/VNNI and AMX for bf16/int8 products.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")
ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")  # a library of one of these names in the process: not glibc's malloc
SYS = Path("/sys")
PROC = Path("/proc")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def thp_mode(name: str, sys_root: Path = SYS) -> str | None:
    """The selected value of /sys/kernel/mm/transparent_hugepage/`name` (`enabled`, `defrag`):
    the word in brackets of e.g. `always [madvise] never`; None where there is no such file."""
    text = _read(sys_root / "kernel/mm/transparent_hugepage" / name)
    if text is None:
        return None
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else text.strip() or None


def cpu_model_and_flags(proc_root: Path = PROC) -> tuple[str | None, dict[str, bool]]:
    """(model name, {flag: present} for CPU_FLAGS) from /proc/cpuinfo's first processor."""
    text = _read(proc_root / "cpuinfo") or ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), None)
    flag_line = next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), "")
    present = set(flag_line.split(":", 1)[1].split()) if ":" in flag_line else set()
    return model, {f: f in present for f in CPU_FLAGS} if present else {}


def numa_nodes(sys_root: Path = SYS) -> int | None:
    folder = sys_root / "devices/system/node"
    if not folder.is_dir():
        return None
    return sum(1 for p in folder.iterdir() if re.fullmatch(r"node\d+", p.name))


def allocator(proc_root: Path = PROC, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Which malloc serves the process: a jemalloc/tcmalloc/mimalloc library mapped into it (by
    LD_PRELOAD or linked), else glibc's; plus the environment that tunes it."""
    env = dict(os.environ if env is None else env)
    maps = _read(proc_root / "self/maps") or ""
    found = sorted({name for name in ALLOCATORS if re.search(rf"lib{name}[^/]*\.so", maps)})
    tuning = {k: v for k, v in env.items() if k.startswith(("MALLOC_", "GLIBC_TUNABLES", "JE_MALLOC", "MALLOC_CONF",
                                                              "TCMALLOC_"))}
    return {"name": found[0] if found else "glibc malloc", "ld_preload": env.get("LD_PRELOAD") or None,
            "env": tuning}


def anon_huge_pages_mib(proc_root: Path = PROC) -> float | None:
    """How much of this process's memory sits on transparent huge pages (smaps_rollup)."""
    text = _read(proc_root / "self/smaps_rollup")
    if text is None:
        return None
    m = re.search(r"^AnonHugePages:\s+(\d+) kB", text, re.M)
    return round(int(m.group(1)) / 1024, 1) if m else None


def _weights(lm: nn.Module) -> list[torch.Tensor]:
    projections = getattr(lm, "projections", None)
    return [m.weight for m in projections()] if callable(projections) else [p for p in lm.parameters()]


def weight_span(t: torch.Tensor) -> tuple[int, int]:
    """(address, bytes) of a weight's memory, packed (oneDNN) or plain."""
    if t.is_mkldnn:
        return torch.ops.mkldnn.data_ptr(t), torch.ops.mkldnn._nbytes(t)
    return t.data_ptr(), t.untyped_storage().nbytes()


def huge_page_share(spans: list[tuple[int, int]], proc_root: Path = PROC) -> float | None:
    """The share of the bytes in `spans` whose memory mappings are backed by huge pages, from
    /proc/self/smaps (per mapping: AnonHugePages / Rss, weighted by the span's bytes in it; an
    estimate, since smaps counts per mapping, not per byte). None off Linux."""
    text = _read(proc_root / "self/smaps")
    if text is None or not spans:
        return None
    maps: list[tuple[int, int, int, int]] = []  # start, end, rss kB, anon huge kB
    start = end = rss = huge = 0
    for line in text.splitlines():
        head = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
        if head:
            if end:
                maps.append((start, end, rss, huge))
            start, end, rss, huge = int(head.group(1), 16), int(head.group(2), 16), 0, 0
        elif line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("AnonHugePages:"):
            huge = int(line.split()[1])
    if end:
        maps.append((start, end, rss, huge))
    total = covered = 0.0
    for addr, n in spans:
        for lo, hi, rss_kb, huge_kb in maps:
            overlap = min(hi, addr + n) - max(lo, addr)
            if overlap > 0 and rss_kb:
                total += overlap
                covered += overlap * min(1.0, huge_kb / rss_kb)
    return round(covered / total, 3) if total else None


@dataclass(frozen=True)
class CpuSnapshot:
    """Clocks at one instant, to tell afterwards who had the CPUs meanwhile (`cpu_use_since`)."""
    wall: float
    process: float  # this process's user + system seconds
    machine: tuple[int, ...] | None  # /proc/stat's first line (clock ticks), None off Linux


def _proc_stat(proc_root: Path = PROC) -> tuple[int, ...] | None:
    text = _read(proc_root / "stat")
    if not text or not text.startswith("cpu "):
        return None
    return tuple(int(v) for v in text.splitlines()[0].split()[1:])


def cpu_snapshot(proc_root: Path = PROC) -> CpuSnapshot:
    t = os.times()
    return CpuSnapshot(time.monotonic(), t.user + t.system, _proc_stat(proc_root))


def cpu_use_since(start: CpuSnapshot, end: CpuSnapshot | None = None) -> dict[str, float | None]:
    """Who used the CPUs between two snapshots, as shares of all CPU time of the machine:
    this process, other processes, and the hypervisor (`steal`: time a virtual CPU wanted to
    run but the host ran someone else). Why: with 2 cores, one other busy process halves a
    decode's compute, which no bandwidth probe shows; on a VM, steal does the same."""
    end = end or cpu_snapshot()
    cpus = os.cpu_count() or 1
    wall = end.wall - start.wall
    mine = (end.process - start.process) / (wall * cpus) if wall > 0 else None
    out: dict[str, float | None] = {"this_process": mine, "other_processes": None, "steal": None}
    if start.machine and end.machine:
        d = [b - a for a, b in zip(start.machine, end.machine)]
        total = sum(d[:8])  # user nice system idle iowait irq softirq steal (guest time is inside user)
        if total > 0:
            busy = (d[0] + d[1] + d[2] + d[5] + d[6]) / total
            out["steal"] = round(d[7] / total, 3)
            out["other_processes"] = round(max(0.0, busy - (mine or 0.0)), 3)
    out["this_process"] = None if mine is None else round(mine, 3)
    return out


def decode_report(lm: nn.Module | None = None, since: CpuSnapshot | None = None) -> dict[str, Any]:
    """Everything that explains a CPU decode's speed here (see the module docstring), as plain
    JSON values. With `lm` (a StageLM), also whether its decode weights are packed for oneDNN and
    how much of them lies on huge pages; with `since` (taken before the run), who had the CPUs
    during the run (`cpu_use`)."""
    model, flags = cpu_model_and_flags()
    try:
        affinity: list[int] | None = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on macOS/Windows
        affinity = None
    report: dict[str, Any] = {
        "cpu_model": model,
        "cpu_flags": flags,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "affinity": affinity,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_PROC_BIND",
                                                  "OMP_PLACES", "KMP_AFFINITY", "GOMP_CPU_AFFINITY")
                       if k in os.environ},
        "thp_enabled": thp_mode("enabled"),
        "thp_defrag": thp_mode("defrag"),
        "thp_mem_alloc_enable": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        "anon_huge_pages_mib": anon_huge_pages_mib(),
        "mkldnn_available": torch.backends.mkldnn.is_available(),
        "mkldnn_enabled": bool(torch.backends.mkldnn.enabled),
        "mkl_available": torch.backends.mkl.is_available(),
        "allocator": allocator(),
        "numa_nodes": numa_nodes(),
    }
    if lm is not None:
        weights = _weights(lm)
        report["weights_packed"] = round(sum(w.is_mkldnn for w in weights) / len(weights), 3) if weights else None
        cpu = [w for w in weights if w.device.type == "cpu"]
        report["weights_on_huge_pages"] = huge_page_share([weight_span(w) for w in cpu]) if cpu else None
    if since is not None:
        report["cpu_use"] = cpu_use_since(since)
    report["hints"] = hints(report)
    return report


def hints(r: dict[str, Any]) -> list[str]:
    """One line for each thing in report `r` that is known to slow a CPU decode down."""
    out = []
    cores = len(r["affinity"]) if r.get("affinity") else r.get("cpu_count")
    if cores and r["torch_threads"] > cores:
        out.append(f"{r['torch_threads']} torch threads on {cores} usable cores: threads wait for each other "
                   f"(set --threads {cores} or OMP_NUM_THREADS={cores}).")
    if r.get("thp_enabled") == "never":
        out.append("transparent huge pages are off (never): weights are read through 4 KiB pages.")
    on_huge = r.get("weights_on_huge_pages")
    if on_huge is not None and on_huge < 0.5 and r.get("thp_enabled") in ("madvise", "always"):
        out.append(f"only {on_huge:.0%} of the decode weights lie on huge pages (THP mode {r['thp_enabled']}).")
    if r.get("weights_packed") == 0 and r.get("mkldnn_available"):
        out.append("the decode weights are not packed for oneDNN (compiled or non-fp32 decoder, or packing failed).")
    if not r.get("mkldnn_available"):
        out.append("this torch has no oneDNN (mkldnn): weights stay unpacked, products run slower.")
    use = r.get("cpu_use") or {}
    if (use.get("other_processes") or 0) >= 0.1:
        out.append(f"other processes used {use['other_processes']:.0%} of the CPU time during the run: "
                   "the decode had fewer cores than it has threads.")
    if (use.get("steal") or 0) >= 0.05:
        out.append(f"the hypervisor took {use['steal']:.0%} of the CPU time (steal): the virtual CPUs ran slower.")
    flags = r.get("cpu_flags") or {}
    if flags and not flags.get("avx2"):
        out.append("the CPU has no AVX2: fp32 products run on narrow vector units.")
    if r.get("allocator", {}).get("name") != "glibc malloc":
        out.append(f"allocator {r['allocator']['name']} (not glibc's malloc) serves this process.")
    if (r.get("numa_nodes") or 0) > 1:
        out.append(f"{r['numa_nodes']} NUMA nodes: weights on another node stream slower.")
    return out


def format_report(r: dict[str, Any]) -> str:
    """The report in a few lines, for a person reading a benchmark's output."""
    flags = r.get("cpu_flags") or {}
    have = ", ".join(f for f, v in flags.items() if v) or "unknown"
    alloc = r["allocator"]
    lines = [
        f"machine: {r.get('cpu_model') or 'unknown CPU'} ({r['torch_cpu_capability']}; flags: {have}); "
        f"{r['cpu_count']} CPUs, affinity {r['affinity']}, NUMA nodes {r['numa_nodes']}",
        f"threads: torch {r['torch_threads']}, interop {r['torch_interop_threads']}"
        + (f", env {r['thread_env']}" if r["thread_env"] else ""),
        f"huge pages: THP enabled={r['thp_enabled']} defrag={r['thp_defrag']}, "
        f"THP_MEM_ALLOC_ENABLE={r['thp_mem_alloc_enable']}, process on huge pages {r['anon_huge_pages_mib']} MiB"
        + (f", decode weights on huge pages {r['weights_on_huge_pages']:.0%}"
           if r.get("weights_on_huge_pages") is not None else ""),
        f"oneDNN: available {r['mkldnn_available']}, enabled {r['mkldnn_enabled']}"
        + (f", decode weights packed {r['weights_packed']:.0%}" if r.get("weights_packed") is not None else "")
        + f"; MKL {r['mkl_available']}; allocator {alloc['name']}"
        + (f" (LD_PRELOAD={alloc['ld_preload']})" if alloc["ld_preload"] else "")
        + (f", {alloc['env']}" if alloc["env"] else ""),
    ]
    if r.get("cpu_use"):
        use = r["cpu_use"]
        pct = lambda x: "?" if x is None else f"{x:.0%}"  # noqa: E731
        lines.append(f"CPU time during the run: this process {pct(use['this_process'])}, other processes "
                     f"{pct(use['other_processes'])}, hypervisor steal {pct(use['steal'])}")
    lines += [f"note: {h}" for h in r["hints"]]
    return "\n".join(lines)
