"""The decode benchmark runs end to end on a tiny decoder and prints one JSON object."""

from __future__ import annotations

import json

from stage_bridge.bench import main

TINY = ["--layers", "2", "--dim", "64", "--heads", "4", "--ffn", "128", "--context-frames", "20",
        "--gen-frames", "10", "--repeats", "1", "--json", "--bw-mib", "64", "--probe-every", "4"]


def test_bench_json(capsys):
    assert main(TINY) == 0
    out = capsys.readouterr().out
    result = json.loads(out)  # stdout holds exactly one JSON object; progress goes to stderr
    for key in ("ours_ms_per_step", "transformers_ms_per_step", "ratio", "floor_ms_per_step", "ours_over_floor",
                "ours_prefill_s", "transformers_prefill_s"):
        assert isinstance(result[key], float) and result[key] > 0, key
    assert result["device"] == "cpu" and result["dtype"] == "fp32"
    assert result["threads"] >= 1 and result["torch_version"]
    assert result["machine"]["cpu_count"] >= 1
    w = result["workload"]
    assert (w["prefill_tokens"], w["decode_steps"], w["rows"]) == (22, 13, 2)  # 20 + 1 + 1; 10 + 4 - 1; CFG
    assert result["floor"]["bytes_per_step"] > result["floor"]["weight_bytes"] > 0
    assert abs(result["ratio"] - result["transformers_ms_per_step"] / result["ours_ms_per_step"]) < 1e-9
    # bandwidth drifts on shared machines: probed between the steps of each timed run (13 steps, every 4th)
    assert len(result["floor"]["in_run_copy_gbps"]) == 2 * 3 and result["floor"]["probe_every_steps"] == 4
    assert len(result["ours_runs_over_floor"]) == 1 and result["ours_over_floor"] == result["ours_runs_over_floor"][0]
    assert isinstance(result["ours_weights_packed"], bool)


def test_floor_counts_every_weight_a_decode_step_reads():
    """Weight bytes = all parameters of our decoder, less what a decode step does not read: the
    cross-attention K/V projections (precomputed once), the text projection and the embedding tables
    (only K rows per row are gathered)."""
    from stage_bridge.bench import floor_bytes
    from stage_bridge.engine.lm import LMConfig, StageLM

    cfg = LMConfig(dim=32, num_layers=3, num_heads=4, ffn_dim=48, num_codebooks=4, card=64, text_dim=32)
    lm = StageLM(cfg)
    skipped = ("cross_attn.kv.", "text_proj.", "emb.")
    read = sum(p.numel() for n, p in lm.named_parameters() if not any(s in n for s in skipped))
    rows = 2
    got = floor_bytes(cfg, rows, avg_keys=10.0, text_tokens=5, elem_bytes=4)
    assert got["weights"] == 4 * (read + rows * cfg.num_codebooks * cfg.dim)
    assert got["self_kv"] == 4 * 2 * cfg.num_layers * rows * 10.0 * cfg.dim
    assert got["cross_kv"] == 4 * 2 * cfg.num_layers * rows * 5 * cfg.dim
    no_text = floor_bytes(cfg, rows, avg_keys=10.0, text_tokens=0, elem_bytes=4)  # cross-attention skipped
    cross = sum(p.numel() for n, p in lm.named_parameters()
                if "cross_attn.q." in n or "cross_attn.out." in n or "cross_norm." in n)
    assert got["weights"] - no_text["weights"] == 4 * cross and no_text["cross_kv"] == 0

