"""The opt-in compiled CPU decode step (`--compile`): same results as eager, one compile per kind."""

from __future__ import annotations

import os

import pytest
import torch

from stage_bridge.engine import compiled as compiled_mod
from stage_bridge.engine.compiled import CompiledDecoder, compile_problem
from stage_bridge.engine.decoder import COMPILED, Decoder
from stage_bridge.engine.generate import Windows, generate_codes
from stage_bridge.engine.lm import StageLM
from stage_bridge.engine.pattern import StageLayout, build_sequence, step_positions
from stage_bridge.engine.sampling import SamplingParams

from conftest import require_tool
from test_kv_cache import CFG
from test_kv_cache import _lm as random_lm

WINDOW = 12  # frames: keeps the preallocated cache small


def _lm(seed: int = 0) -> StageLM:
    return random_lm(seed).requires_grad_(False)  # as build_model(compile=True) leaves it


CPU = torch.device("cpu")


def _no_compiler() -> bool:
    return compile_problem(CPU, torch.float32) is not None


def require_compiler() -> None:
    """Skip where Inductor has no C++ compiler, but fail in CI (STAGE_BRIDGE_CI=1), which installs g++."""
    if _no_compiler():
        require_tool("g++")


def test_compile_problem_names_what_is_missing(monkeypatch):
    lm = _lm()
    assert "fp32" in compile_problem(CPU, torch.bfloat16)
    assert "CUDA graph" in compile_problem(torch.device("cuda"), torch.float32)
    packed = _lm()
    if packed.pack_for_cpu():
        with pytest.raises(ValueError, match="compile=True"):
            CompiledDecoder(packed)

    def no_compiler():
        raise RuntimeError("no c++")

    import torch._inductor.cpp_builder as builder
    monkeypatch.setattr(builder, "get_cpp_compiler", no_compiler)
    assert "C++ compiler" in compile_problem(CPU, torch.float32)
    with pytest.raises(ValueError, match="C\\+\\+ compiler"):
        CompiledDecoder(lm)


def test_build_model_refuses_compile_without_a_compiler(monkeypatch):
    from stage_bridge.engine import model as model_mod
    from stage_bridge.engine.checkpoints import resolve
    from stage_bridge.errors import CompileUnavailable

    monkeypatch.setattr(model_mod, "compile_problem", lambda device, dtype: "--compile needs a C++ compiler")
    with pytest.raises(CompileUnavailable, match="C\\+\\+ compiler"):
        model_mod.build_model(resolve("tiny-random"), torch.device("cpu"), compile=True)


@pytest.mark.slow
def test_compiled_generation_equals_eager_and_compiles_once_per_kind():
    """Same codes as the eager path, with and without a text prompt, across lengths, prompt sizes
    and windows; lengths are symbolic, so only a new kind of step (rows, text or not) compiles."""
    require_compiler()
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    eager, lm = _lm(4), _lm(4)
    decoder = Decoder(lm, COMPILED)
    params = SamplingParams(guidance=3.0, top_k=20)
    graphs = lambda: counters["stats"]["unique_graphs"]  # noqa: E731
    start = graphs()
    for frames, text_tokens, window in [(8, 3, 500), (10, 5, 500), (6, 0, 500), (9, 0, 500), (20, 0, 8)]:
        ctx = torch.randint(0, CFG.card, (4, frames))
        cross_e = cross_c = None
        if text_tokens:
            text = torch.randn(2, text_tokens, CFG.text_dim)
            mask = torch.ones(2, text_tokens, dtype=torch.bool)
            mask[1] = False  # the unconditional row has no text
            cross_e, cross_c = eager.cross_context(text, mask), lm.cross_context(text, mask)
        windows = Windows(window, 3)  # the last case: long-form, 4 windows
        want = generate_codes(Decoder(eager), ctx, frames, takes=1, sampling=params, seed=3, cross=cross_e,
                              windows=windows)
        got = generate_codes(decoder, ctx, frames, takes=1, sampling=params, seed=3, cross=cross_c, windows=windows)
        assert torch.equal(got, want), (frames, text_tokens, window)
    assert graphs() - start == 2  # with text, without text


@torch.no_grad()
def max_step_logit_diff(eager: StageLM, decoder: CompiledDecoder) -> float:
    """The largest logit difference between `decoder`'s compiled steps and `eager`'s (same
    weights) over the generated steps of one small random sequence: a row with context and the
    masked row guidance adds."""
    layout = StageLayout(6, 5, 4)
    ctx = torch.randint(0, CFG.card, (2, 4, 6))
    ctx[1:] = CFG.pad_id
    tokens, valid = build_sequence(ctx, torch.randint(0, CFG.card, (2, 4, 5)), layout, CFG.card)
    step_valid = valid.any(1)
    positions = step_positions(step_valid)
    split, n = layout.first_generated_step, tokens.shape[-1]
    eager.setup_cache(2, n)
    decoder.prepare(2, n)
    for m in (eager, decoder.lm):
        m(tokens[..., :split], positions[:, :split], step_valid[:, :split], 0, None)
    diff = 0.0
    for s in range(split, n):
        want = eager(tokens[..., s:s + 1], positions[:, s:s + 1], step_valid[:, :s + 1], s, None)[:, :, -1]
        got = decoder(tokens[..., s:s + 1], positions[:, s:s + 1], step_valid[:, :s + 1], None)
        diff = max(diff, float((got - want).abs().max()))
    return diff


@pytest.mark.slow
def test_compiled_step_logits_equal_eager_step():
    require_compiler()
    torch._dynamo.reset()
    eager, lm = _lm(5), _lm(5)
    assert max_step_logit_diff(eager, CompiledDecoder(lm, window_frames=WINDOW)) < 1e-4


def test_prepare_keeps_a_cache_that_fits():
    lm = _lm()
    decoder = CompiledDecoder.__new__(CompiledDecoder)  # no compiling needed to check the cache policy
    decoder.lm, decoder.capacity = lm, 30
    decoder.prepare(2, 20)
    first = lm.layers[0].self_attn.cache
    assert first.k.shape[2] == 30
    decoder.prepare(2, 25)
    assert lm.layers[0].self_attn.cache is first  # same shape: no recompile
    decoder.prepare(4, 25)
    assert lm.layers[0].self_attn.cache.k.shape[:3] == (4, CFG.num_heads, 30)
    decoder.prepare(4, 40)
    assert lm.layers[0].self_attn.cache.k.shape[2] == 40
    assert compiled_mod.INDUCTOR_OPTIONS["freezing"]


def _serve_cfg(tmp_path, **kw):
    from stage_bridge.bridge.config import ServeConfig

    return ServeConfig(home=tmp_path, models={"drums": "tiny-random"}, device="cpu", **kw)


def test_daemon_without_a_compiler_warns_and_runs_uncompiled(tmp_path, monkeypatch, caplog):
    """--compile is a speed option: where it cannot work the daemon says why and serves anyway."""
    from stage_bridge.bridge import daemon
    from stage_bridge.engine import compiled

    monkeypatch.setattr(compiled, "compile_problem", lambda device, dtype: "--compile needs a C++ compiler.")
    with caplog.at_level("WARNING", logger="stage_bridge.daemon"):
        models, _ = daemon.load_models(_serve_cfg(tmp_path, compile=True))
    assert models["drums"].decoder.mode == "eager" and models["drums"].decoder.compiled is None
    assert "C++ compiler" in caplog.text and "without it" in caplog.text


@pytest.mark.slow
def test_daemon_compiles_before_it_answers(tmp_path, caplog):
    require_compiler()
    from stage_bridge.bridge import daemon

    torch._dynamo.reset()
    with caplog.at_level("INFO", logger="stage_bridge.daemon"):
        models, _ = daemon.load_models(_serve_cfg(tmp_path, compile=True))
    model = models["drums"]
    assert model.decoder.mode == COMPILED and model.lm.layers[0].self_attn.cache is not None  # kept for reuse
    assert "compiled in" in caplog.text


@pytest.mark.slow
def test_a_step_that_fails_to_compile_runs_eager(caplog, monkeypatch):
    """A compiler that is present but cannot build Inductor's code must not fail a generation."""
    monkeypatch.setattr(compiled_mod, "compile_problem", lambda device, dtype: None)  # "a compiler is present"
    eager, lm = _lm(6), _lm(6)
    decoder = Decoder(lm, COMPILED)
    calls = []

    def broken(*args):
        calls.append(1)
        raise RuntimeError("C++ compile error: omp.h: No such file or directory")

    decoder.compiled._step = broken
    ctx = torch.randint(0, CFG.card, (4, 6))
    params = SamplingParams(guidance=3.0, top_k=20)
    want = generate_codes(Decoder(eager), ctx, 6, takes=1, sampling=params, seed=2)
    with caplog.at_level("WARNING", logger="stage_bridge.engine.compiled"):
        got = generate_codes(decoder, ctx, 6, takes=1, sampling=params, seed=2)
    assert torch.equal(got, want)
    assert len(calls) == 1 and "omp.h" in decoder.compiled.failed and "without --compile" in caplog.text


@pytest.mark.slow
def test_second_process_loads_the_compiled_step_from_the_users_cache(tmp_path):
    """Compiling is paid once per machine: a second process finds the step in the cache folder
    under the user's cache dir (XDG_CACHE_HOME here) and does not compile it again; both steps
    give the eager step's logits."""
    require_compiler()
    import json
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != compiled_mod.CACHE_ENV}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    child = Path(__file__).with_name("compile_cache_child.py")

    def run() -> dict:
        out = subprocess.run([sys.executable, str(child), "7"], env=env, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    first, second = run(), run()
    folder = tmp_path / "cache" / "stage-bridge" / "inductor"
    assert first["cache_dir"] == second["cache_dir"] == str(folder)
    assert first["failed"] is None and second["failed"] is None
    assert first["fx"].get("fxgraph_cache_miss", 0) >= 1 and not first["fx"].get("fxgraph_cache_bypass")
    assert second["fx"].get("fxgraph_cache_hit", 0) >= 1
    assert not second["fx"].get("fxgraph_cache_miss") and not second["fx"].get("fxgraph_cache_bypass")
    assert first["max_diff"] < 1e-4 and second["max_diff"] < 1e-4
    assert any(folder.rglob("*.py"))  # the generated code lives there, not in the temporary folder


def test_cache_folder_is_the_users_unless_they_chose_one(monkeypatch, tmp_path):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    ours = tmp_path / "ours"
    for before, after in [(None, str(ours)), (default_cache_dir(), str(ours)), ("/their/choice", "/their/choice")]:
        if before is None:
            monkeypatch.delenv(compiled_mod.CACHE_ENV, raising=False)
        else:
            monkeypatch.setenv(compiled_mod.CACHE_ENV, before)
        compiled_mod.use_cache_dir(ours)
        assert os.environ[compiled_mod.CACHE_ENV] == after
