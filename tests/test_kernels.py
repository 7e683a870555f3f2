"""Our CPU decode kernels (engine/kernels.cpp) against plain PyTorch arithmetic.

Each kernel is checked against a PyTorch reference of the same arithmetic (tight tolerances:
float summation order only), and the int4 product also against the dequantized fp32 product
(the cost of rounding its activations to int8). The portable build (no AVX-512) is checked
against the native one, and the decoder's step with the kernels against the step without.
"""

from __future__ import annotations

import math
import platform
import shutil

import pytest
import torch
import torch.nn.functional as F

from stage_bridge.engine import kernels
from stage_bridge.engine import lm as lm_module
from stage_bridge.engine.quant import quantize_int4, quantize_int8

KERN = kernels.library()
needs_kernels = pytest.mark.skipif(KERN is None, reason=f"CPU kernels not available: {kernels.why_not()}")


def _rounded_rows(h, group):
    """kernels.cpp's activation rounding: per row and group of `group`, scale a = max|h| / 127
    (1 for an all-zero group), codes round(h / a) (ties to even). -> (groups, a, codes)."""
    m, k = h.shape
    hg = h.view(m, k // group, group)
    amax = hg.abs().amax(-1)
    a = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
    return hg, a, torch.round(hg * torch.where(amax > 0, 127 / amax, torch.zeros_like(amax))[..., None])


def q4_reference(x, codes, scales, zeros, group, norm=None, residual=None, gelu=False):
    """kernels.cpp's int4 product in PyTorch: activations rounded to int8 per group
    (`_rounded_rows`), an exact integer dot per group, then w = (code - 8) * s + z."""
    h = norm(x) if norm is not None else x
    m, k = h.shape
    n = codes.shape[0]
    hg, a, xq = _rounded_rows(h, group)
    dot = torch.einsum("mgk,ngk->mng", xq.double(), codes.view(n, k // group, group).double())  # exact integers
    s, z = scales.half().double(), zeros.half().double()
    y = (((dot - 8 * xq.sum(-1).double()[:, None]) * s[None] * a.double()[:, None] + z[None] * hg.sum(-1).double()[:, None])
         .sum(-1).float())
    if gelu:
        y = F.gelu(y)
    return y if residual is None else residual + y


def q8_reference(x, q, scales, group):
    """kernels.cpp's int8 product in PyTorch: activations rounded (`_rounded_rows`), an exact
    integer dot per group, scaled per group and then by the output channel's scale."""
    m, k = x.shape
    n = q.shape[0]
    _, a, xq = _rounded_rows(x, group)
    dot = torch.einsum("mgk,ngk->mng", xq.double(), q.view(n, k // group, group).double())
    return ((dot * a.double()[:, None]).sum(-1) * scales.double()).float()


def _q4_case(n, k, group, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    codes, scales, zeros = quantize_int4(w, group)
    return w, codes, scales, zeros


@needs_kernels
@pytest.mark.parametrize("n,k,group,m", [(3072, 1024, 64, 2), (1024, 4096, 64, 1), (64, 128, 32, 5), (16, 64, 64, 9)])
def test_q4_linear_is_the_int8_activation_product(n, k, group, m):
    """Rows in blocks of 4 and a remainder (m = 5, 9), one tile (n = 16), groups of 32 and 64."""
    w, codes, scales, zeros = _q4_case(n, k, group)
    packed = kernels.q4_pack(KERN, codes, scales, zeros, group)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(1))
    got = kernels.q4_linear(KERN, x, packed)
    want = q4_reference(x, codes, scales, zeros, group)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    # what rounding the activations costs against the weights' own product: ~1 % of the output's scale
    deq = ((codes.view(n, -1, group).float() - 8) * scales.half().float()[..., None]
           + zeros.half().float()[..., None]).view(n, k)
    assert (got - x @ deq.t()).abs().max() <= 0.02 * (x @ deq.t()).abs().max()


@needs_kernels
@pytest.mark.parametrize("n,k,m", [(3072, 1024, 2), (1024, 4096, 1), (48, 128, 5), (16, 64, 9)])
def test_q8_linear_is_the_int8_activation_product(n, k, m):
    """Pairs of tiles and a lone last one (n = 48, 16), rows in blocks of 4 and a remainder."""
    g = torch.Generator().manual_seed(7)
    q, scales = quantize_int8(torch.randn(n, k, generator=g) * 0.05)
    packed = kernels.q8_pack(KERN, q, scales, 64)
    x = torch.randn(m, k, generator=g)
    got = kernels.q8_linear(KERN, x, packed)
    want = q8_reference(x, q, scales, 64)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    exact = x @ (q.float() * scales[:, None]).t()
    assert (got - exact).abs().max() <= 0.02 * exact.abs().max()
    residual = torch.randn(m, n, generator=g)
    assert torch.allclose(kernels.q8_linear(KERN, x, packed, residual=residual), residual + got, atol=1e-5)
    assert torch.allclose(kernels.q8_linear(KERN, x, packed, gelu=True), F.gelu(got), atol=1e-5)


@needs_kernels
@pytest.mark.parametrize("gelu", [False, True])
def test_q4_linear_fuses_norm_gelu_and_residual(gelu):
    n, k, group = 256, 512, 64
    _, codes, scales, zeros = _q4_case(n, k, group)
    packed = kernels.q4_pack(KERN, codes, scales, zeros, group)
    g = torch.Generator().manual_seed(2)
    norm = torch.nn.LayerNorm(k)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=g)
        norm.bias.normal_(generator=g)
    x = torch.randn(1, 2, k, generator=g) * 3 + 1  # batch dims are kept; the norm has work to do
    residual = None if gelu else torch.randn(1, 2, n, generator=g)
    with torch.no_grad():
        got = kernels.q4_linear(KERN, x, packed, norm, residual, gelu=gelu)
        want = q4_reference(x.view(2, k), codes, scales, zeros, group, norm, None if residual is None else residual.view(2, n),
                            gelu)
    assert got.shape == (1, 2, n)
    # LayerNorm in double (kernel) vs float (PyTorch) may move an activation across a rounding
    # boundary: one int8 step of one input, ~1e-4 of the output's scale
    assert (got.view(2, n) - want).abs().max() <= 2e-4 * want.abs().max()


@needs_kernels
def test_q4_pack_refuses_shapes_it_cannot_tile():
    codes = torch.zeros(24, 64, dtype=torch.int32)
    with pytest.raises(ValueError, match="16s"):
        kernels.q4_pack(KERN, codes, torch.ones(24, 1), torch.zeros(24, 1), 64)


def attention_reference(q, k, v, first, bias):
    """Per row b and head: softmax(q.k / sqrt(D) + bias) over keys [first[b], n) @ v."""
    b, h, n, d = k.shape
    out = []
    for r in range(b):
        f = int(first[r])
        scores = torch.einsum("hd,hnd->hn", q[r], k[r, :, f:].float()) / math.sqrt(d) + bias[r, f:n]
        out.append(torch.einsum("hn,hnd->hd", torch.softmax(scores, -1), v[r, :, f:].float()).reshape(-1))
    return torch.stack(out)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_attend_step_writes_the_cache_and_attends_from_each_rows_first_key(dtype):
    b, h, max_steps, d, pos = 2, 4, 300, 64, 200
    g = torch.Generator().manual_seed(3)
    k_cache = torch.randn(b, h, max_steps, d, generator=g).to(dtype)
    v_cache = torch.randn(b, h, max_steps, d, generator=g).to(dtype)
    k_cache[1, :, :150] = float("nan")  # row 1 starts at key 150: the keys before it must not be read
    v_cache[1, :, :150] = float("nan")
    qkv = torch.randn(b, 3 * h * d, generator=g)
    bias = torch.zeros(b, 1, 1, pos + 1)
    bias[0, ..., 10:40] = float("-inf")  # masked keys inside the span weigh exactly nothing
    first = torch.tensor([0, 150], dtype=torch.int32)
    got = kernels.attend_step(KERN, qkv, k_cache, v_cache, pos, first, bias.view(b, -1))
    q, k_new, v_new = qkv.view(b, 3, h, d).unbind(1)
    assert torch.equal(k_cache[:, :, pos], k_new.to(dtype)) and torch.equal(v_cache[:, :, pos], v_new.to(dtype))
    want = attention_reference(q, k_cache[:, :, : pos + 1], v_cache[:, :, : pos + 1], first, bias.view(b, -1))
    assert torch.isfinite(got).all()
    assert (got - want).abs().max() <= 1e-5


@needs_kernels
def test_attend_fixed_is_cross_attention():
    b, h, n, d = 2, 4, 7, 16
    g = torch.Generator().manual_seed(4)
    q, k, v = torch.randn(b, h * d, generator=g), torch.randn(b, h, n, d, generator=g), torch.randn(b, h, n, d, generator=g)
    bias = torch.zeros(b, n)
    bias[1, 3:] = float("-inf")
    got = kernels.attend_fixed(KERN, q, k, v, bias)
    want = attention_reference(q.view(b, h, d), k, v, torch.zeros(b), bias)
    assert (got - want).abs().max() <= 1e-5


@needs_kernels
def test_f16_linear():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(96, 1000, generator=g).half()  # a width not in 16s takes the scalar tail
    x = torch.randn(3, 1, 1000, generator=g)
    got = kernels.f16_linear(KERN, x, w)
    want = x @ w.float().t()
    assert got.shape == (3, 1, 96) and (got - want).abs().max() <= 1e-4


def test_build_without_a_compiler_says_what_to_do(tmp_path):
    with pytest.raises(RuntimeError, match="apt install g\\+\\+"):
        kernels.build(tmp_path, compiler="no-such-c++-compiler")
    assert not list(tmp_path.iterdir())  # nothing half-built left behind


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("STAGE_BRIDGE_KERNELS", "off")
    kernels._load.cache_clear()
    try:
        assert kernels.library() is None and "STAGE_BRIDGE_KERNELS" in kernels.why_not()
    finally:
        monkeypatch.delenv("STAGE_BRIDGE_KERNELS")
        kernels._load.cache_clear()


@needs_kernels
@pytest.mark.skipif(platform.machine() != "x86_64" or shutil.which("c++") is None, reason="x86-64 with a compiler")
def test_portable_build_agrees_with_the_native_one(tmp_path):
    """The portable C++ (no AVX-512: other x86 CPUs, ARM) against the native build, same inputs."""
    flags = tuple(f if f != "-march=native" else "-march=x86-64-v2" for f in kernels.FLAGS)
    portable = kernels.open_library(kernels.build(tmp_path, flags=flags))
    assert portable.kind == "portable"
    _, codes, scales, zeros = _q4_case(128, 256, 64)
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(6))
    results = []
    q8, s8 = quantize_int8(torch.randn(48, 256, generator=torch.Generator().manual_seed(8)))
    for kern in (KERN, portable):
        packed = kernels.q4_pack(kern, codes, scales, zeros, 64)
        packed8 = kernels.q8_pack(kern, q8, s8, 64)
        results.append((kernels.q4_linear(kern, x, packed), kernels.q4_linear(kern, x, packed, gelu=True),
                        kernels.q8_linear(kern, x, packed8)))
    for native, port in zip(*results):
        assert (native - port).abs().max() <= 1e-5 * native.abs().max()
    k_cache = torch.randn(2, 2, 40, 32).half()
    v_cache = torch.randn(2, 2, 40, 32).half()
    qkv = torch.randn(2, 3 * 64)
    outs = [kernels.attend_step(kern, qkv, k_cache.clone(), v_cache.clone(), 30, None, None) for kern in (KERN, portable)]
    assert (outs[0] - outs[1]).abs().max() <= 1e-5


def _teacher_forced_steps(decoder, tokens, positions, step_valid, prefill_upto, cross=None):
    """Prefill, then every following step of the window on given tokens: the logits of each."""
    out = []
    with decoder.generation(tokens.shape[0], tokens.shape[-1], cross):
        decoder.begin_window(step_valid)
        out.append(decoder.prefill(tokens, positions, prefill_upto))
        for s in range(prefill_upto, tokens.shape[-1]):
            out.append(decoder.step(tokens[..., s : s + 1], positions[:, s : s + 1], s))
    return torch.stack(out)


@needs_kernels
@pytest.mark.parametrize("scheme", [None, "int8", "int4"])
@pytest.mark.parametrize("text", [False, True])
def test_decoder_step_with_the_kernels_matches_without(scheme, text, monkeypatch):
    """The eager CPU step through our kernels (attention in one call; int4: our product, an fp16
    cache and fp16 heads) against the same model's step through PyTorch's ops, on the same
    tokens, with guidance (the unconditional row's masked context skipped) and with and without
    a text prompt: fp32 to 1e-5; int4 within the cost of the fp16 cache and heads."""
    from stage_bridge.engine.decoder import Decoder
    from stage_bridge.engine.lm import LMConfig, StageLM

    torch.manual_seed(0)
    cfg = LMConfig(dim=64, num_layers=2, num_heads=4, ffn_dim=128, card=32, text_dim=16)
    lm = StageLM(cfg).eval().requires_grad_(False)
    decoder = Decoder(lm, quantize=scheme)
    g = torch.Generator().manual_seed(1)
    steps, upto = 160, 150
    tokens = torch.randint(0, cfg.card, (2, cfg.num_codebooks, steps), generator=g)
    positions = torch.arange(steps).repeat(2, 1)
    step_valid = torch.ones(2, steps, dtype=torch.bool)
    step_valid[:, 0] = False
    step_valid[1, :140] = False  # the unconditional row: its context is padding
    seen = []
    real = lm_module.step_kernels
    monkeypatch.setattr(lm_module, "step_kernels", lambda x, start: seen.append(real(x, start)) or seen[-1])
    with torch.no_grad():
        cross = lm.cross_context(torch.randn(2, 3, 16, generator=g), torch.tensor([[1, 1, 0], [0, 0, 0]])) if text else None
        fast = _teacher_forced_steps(decoder, tokens, positions, step_valid, upto, cross)
        assert any(k is not None for k in seen)  # the kernels ran
        monkeypatch.setattr(lm_module, "step_kernels", lambda x, start: None)
        decoder.cache_dtype, lm.heads_half = None, None
        plain = _teacher_forced_steps(decoder, tokens, positions, step_valid, upto, cross)
    if scheme is None:
        assert torch.equal(fast[0], plain[0])  # the prefill never runs the step kernels
    tol = 1e-5 if scheme is None else 2e-2
    assert (fast - plain).abs().max() <= tol * plain.abs().max()


@needs_kernels
@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("text", [False, True])
def test_fused_block_step_is_the_blocks_step(scheme, text, monkeypatch):
    """`kernels.block_step` (one call per block) against the same blocks run op by op through the
    same kernels, fp16 cache and heads alike: the same arithmetic, so to float rounding."""
    from stage_bridge.engine.decoder import Decoder
    from stage_bridge.engine.lm import Block, LMConfig, StageLM

    torch.manual_seed(0)
    cfg = LMConfig(dim=64, num_layers=2, num_heads=4, ffn_dim=128, card=32, text_dim=16)
    lm = StageLM(cfg).eval().requires_grad_(False)
    decoder = Decoder(lm, quantize=scheme)
    assert all(blk.plan() is not None for blk in lm.layers)
    g = torch.Generator().manual_seed(1)
    steps, upto = 160, 150
    tokens = torch.randint(0, cfg.card, (2, cfg.num_codebooks, steps), generator=g)
    positions = torch.arange(steps).repeat(2, 1)
    step_valid = torch.ones(2, steps, dtype=torch.bool)
    step_valid[:, 0] = False
    step_valid[1, :140] = False
    fused_calls = []
    real = kernels.block_step
    monkeypatch.setattr(kernels, "block_step", lambda *a: fused_calls.append(1) or real(*a))
    with torch.no_grad():
        cross = lm.cross_context(torch.randn(2, 3, 16, generator=g), torch.tensor([[1, 1, 0], [0, 0, 0]])) if text else None
        fused = _teacher_forced_steps(decoder, tokens, positions, step_valid, upto, cross)
        assert len(fused_calls) == cfg.num_layers * (steps - upto)
        monkeypatch.setattr(Block, "plan", lambda self: None)
        per_op = _teacher_forced_steps(decoder, tokens, positions, step_valid, upto, cross)
    assert (fused - per_op).abs().max() <= 1e-5 * per_op.abs().max()


@pytest.fixture(params=[False, True], ids=["kernels-as-built", "kernels-off"])
def off(request, monkeypatch):
    """Our kernels as this machine builds them, or turned off by STAGE_BRIDGE_KERNELS; `library()`
    answers afresh for the test and again after it."""
    if request.param:
        monkeypatch.setenv("STAGE_BRIDGE_KERNELS", "off")
    kernels._load.cache_clear()
    yield request.param
    monkeypatch.delenv("STAGE_BRIDGE_KERNELS", raising=False)
    kernels._load.cache_clear()


def test_doctor_says_which_cpu_kernels_run(off, tmp_path, capsys):
    from stage_bridge.bridge import daemon
    from stage_bridge.bridge.config import ServeConfig

    assert daemon.doctor(ServeConfig(home=tmp_path, models={"drums": "tiny-random"}, device="cpu")) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("CPU decode kernels"))
    if off:
        assert "not used (turned off by STAGE_BRIDGE_KERNELS)" in line
    elif KERN is not None:
        assert KERN.kind in line


def test_the_daemon_warns_when_integer_weights_run_without_our_kernels(off, tmp_path, caplog):
    from stage_bridge.bridge import daemon
    from stage_bridge.bridge.config import ServeConfig

    with caplog.at_level("WARNING"):
        models, device = daemon.load_models(ServeConfig(home=tmp_path, models={"drums": "tiny-random"}, device="cpu",
                                                        precision="int8"))
    assert device == "cpu" and not isinstance(models["drums"], Exception)
    warned = [r.getMessage() for r in caplog.records if "decode kernels are not used" in r.getMessage()]
    if off:
        assert warned == ["our CPU decode kernels are not used (turned off by STAGE_BRIDGE_KERNELS): --precision "
                          "int8 decodes about half as fast with PyTorch's own."]
    elif KERN is not None:
        assert warned == []


@needs_kernels
@pytest.mark.skipif(platform.system() != "Linux", reason="reads /proc/self/maps")
def test_one_openmp_runtime_in_the_process():
    """Our library's OpenMP regions run on the runtime PyTorch loaded (same soname), not a second
    one: two runtimes would keep two thread pools on the same cores (see bridge/daemon.py). In a
    fresh process with only PyTorch and our library: other packages (scikit-learn, sentencepiece)
    bring their own copies, which a test process may have loaded already."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from stage_bridge.engine import kernels\n"
        "from stage_bridge.engine.quant import quantize_int8\n"
        "kern = kernels.library()\n"
        "w = kernels.q8_pack(kern, *quantize_int8(torch.randn(64, 128)), 64)\n"
        "kernels.q8_linear(kern, torch.randn(2, 128), w)\n"  # an OpenMP region of ours has run
        "torch.randn(256, 256) @ torch.randn(256, 256)\n"  # and one of PyTorch's
        "print('\\n'.join(sorted({ln.split()[-1] for ln in open('/proc/self/maps') if 'gomp' in ln or 'omp.so' in ln})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    runtimes = done.stdout.split()
    assert len(runtimes) == 1 and "/torch/lib/" in runtimes[0], runtimes
