"""The machine report (engine/machine.py): a slow CPU decode explains itself."""

from __future__ import annotations

import json
import os

import torch

from stage_bridge.engine import machine as M
from stage_bridge.engine.lm import LMConfig, StageLM


def _write(root, rel: str, text: str):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_thp_mode_reads_the_bracketed_choice(tmp_path):
    _write(tmp_path, "kernel/mm/transparent_hugepage/enabled", "always [madvise] never\n")
    _write(tmp_path, "kernel/mm/transparent_hugepage/defrag", "always defer defer+madvise madvise [never]\n")
    assert M.thp_mode("enabled", tmp_path) == "madvise"
    assert M.thp_mode("defrag", tmp_path) == "never"
    assert M.thp_mode("enabled", tmp_path / "absent") is None  # not Linux


def test_cpu_flags_and_numa_nodes(tmp_path):
    _write(tmp_path, "cpuinfo", "processor\t: 0\nmodel name\t: AMD EPYC 9654\nflags\t\t: fpu sse avx2 fma avx512f "
                                "avx512_bf16\n\nprocessor\t: 1\n")
    model, flags = M.cpu_model_and_flags(tmp_path)
    assert model == "AMD EPYC 9654"
    assert flags["avx2"] and flags["avx512f"] and flags["avx512_bf16"] and not flags["amx_tile"]
    for n in (0, 1):
        (tmp_path / f"devices/system/node/node{n}").mkdir(parents=True)
    (tmp_path / "devices/system/node/possible").write_text("0-1")
    assert M.numa_nodes(tmp_path) == 2
    assert M.numa_nodes(tmp_path / "absent") is None


def test_allocator_seen_in_the_process_maps(tmp_path):
    _write(tmp_path, "self/maps", "7f00-7f10 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert M.allocator(tmp_path, env={})["name"] == "glibc malloc"
    _write(tmp_path, "self/maps", "7f00-7f10 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n")
    env = {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "MALLOC_CONF": "thp:always", "HOME": "/x"}
    got = M.allocator(tmp_path, env=env)
    assert got == {"name": "jemalloc", "ld_preload": env["LD_PRELOAD"], "env": {"MALLOC_CONF": "thp:always"}}


def test_huge_page_share_weighs_each_mapping_by_the_bytes_in_it(tmp_path):
    _write(tmp_path, "self/smaps",
           "1000-3000 rw-p 00000000 00:00 0\nRss:                   8 kB\nAnonHugePages:         8 kB\n"
           "3000-5000 rw-p 00000000 00:00 0\nRss:                   8 kB\nAnonHugePages:         0 kB\n")
    assert M.huge_page_share([(0x1000, 0x2000)], tmp_path) == 1.0
    assert M.huge_page_share([(0x1000, 0x4000)], tmp_path) == 0.5
    assert M.huge_page_share([(0x2000, 0x2000)], tmp_path) == 0.5  # half in each mapping
    assert M.huge_page_share([(0x9000, 0x100)], tmp_path) is None  # in no mapping
    assert M.huge_page_share([(0x1000, 0x10)], tmp_path / "absent") is None


def _tiny_lm() -> StageLM:
    return StageLM(LMConfig(dim=64, num_layers=2, num_heads=4, ffn_dim=128, card=64, text_dim=64)).eval()


def test_report_says_whether_the_weights_are_packed_and_is_json():
    lm = _tiny_lm()
    plain = M.decode_report(lm)
    assert plain["weights_packed"] == 0.0
    packed = lm.pack_for_cpu()
    report = M.decode_report(lm)
    assert report["weights_packed"] == (1.0 if packed else 0.0)
    json.dumps(report)  # plain JSON values only
    assert report["torch_threads"] == torch.get_num_threads()
    assert report["torch_interop_threads"] == torch.get_num_interop_threads()
    if hasattr(os, "sched_getaffinity"):
        assert report["affinity"] == sorted(os.sched_getaffinity(0))
    text = M.format_report(report)
    assert "THP enabled=" in text and "torch " in text and "allocator" in text
    if packed:
        assert "decode weights packed 100%" in text


def test_hints_name_what_costs_speed():
    base = M.decode_report()
    slow = {**base, "torch_threads": 8, "affinity": [0, 1], "thp_enabled": "madvise", "weights_on_huge_pages": 0.1,
            "weights_packed": 0.0, "mkldnn_available": True, "numa_nodes": 2,
            "allocator": {"name": "tcmalloc", "ld_preload": "libtcmalloc.so", "env": {}}}
    hints = "\n".join(M.hints(slow))
    assert "8 torch threads on 2 usable cores" in hints and "--threads 2" in hints
    assert "only 10% of the decode weights lie on huge pages" in hints
    assert "not packed for oneDNN" in hints and "tcmalloc" in hints and "2 NUMA nodes" in hints
    good = {**slow, "torch_threads": 2, "weights_on_huge_pages": 0.9, "weights_packed": 1.0, "numa_nodes": 1,
            "allocator": {"name": "glibc malloc", "ld_preload": None, "env": {}}, "cpu_flags": {"avx2": True}}
    assert M.hints(good) == []


def test_bench_prints_the_report_and_puts_it_under_machine(capsys):
    from stage_bridge.bench import main

    args = ["--layers", "2", "--dim", "64", "--heads", "4", "--ffn", "128", "--context-frames", "8",
            "--gen-frames", "4", "--repeats", "1", "--json", "--bw-mib", "16", "--probe-every", "4",
            "--skip-transformers", "--warmup-frames", "2"]
    assert main(args) == 0
    captured = capsys.readouterr()
    m = json.loads(captured.out)["machine"]
    for key in ("cpu_use", "thp_enabled", "thp_defrag", "torch_threads", "torch_interop_threads", "affinity", "cpu_flags",
                "mkldnn_enabled", "weights_packed", "allocator", "numa_nodes", "hints"):
        assert key in m, key
    assert m["weights_packed"] == (1.0 if json.loads(captured.out)["ours_weights_packed"] else 0.0)
    assert "huge pages: THP enabled=" in captured.err


def test_cpu_use_splits_the_machine_between_us_others_and_the_hypervisor(tmp_path, monkeypatch):
    monkeypatch.setattr(M.os, "cpu_count", lambda: 2)
    # user nice system idle iowait irq softirq steal: 400 ticks in all
    start = M.CpuSnapshot(wall=0.0, process=0.0, machine=(0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
    end = M.CpuSnapshot(wall=2.0, process=2.0, machine=(280, 0, 20, 60, 0, 0, 0, 40, 0, 0))
    use = M.cpu_use_since(start, end)
    assert use == {"this_process": 0.5, "other_processes": 0.25, "steal": 0.1}  # 300/400 busy, we had 2 of 4 s
    hints = "\n".join(M.hints({**M.decode_report(), "cpu_use": use}))
    assert "other processes used 25% of the CPU time" in hints and "took 10% of the CPU time (steal)" in hints
    assert M.cpu_use_since(start, M.CpuSnapshot(2.0, 2.0, None))["steal"] is None  # off Linux: only our share


def test_cpu_use_sees_a_busy_process_here():
    if M.cpu_snapshot().machine is None:
        import pytest
        pytest.skip("no /proc/stat")
    start = M.cpu_snapshot()
    deadline = M.time.monotonic() + 0.3
    while M.time.monotonic() < deadline:
        pass
    use = M.cpu_use_since(start)
    assert use["this_process"] > 0 and 0 <= use["steal"] <= 1 and use["other_processes"] >= 0
