"""A job's memory is sized before it runs (engine/budget.py): too large -> `too_large` with the
most bars that fit; an allocation that fails anyway -> `out_of_memory` (issue 14, item 4).

The free memory is injected (the OS figure otherwise), so these tests decide what "this
machine" has; the estimate itself is checked against the peak RSS of real requests."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stage_bridge.bridge.job import StemJob
from stage_bridge.bridge.protocol import ProtocolError
from stage_bridge.bridge.runner import RenderSettings, StemRunner, stem_request
from stage_bridge.engine.budget import HEADROOM, ContextShape, Memory, check_fits, free_memory, need
from stage_bridge.engine.generate import StemRequest, allocation_failures_as_out_of_memory
from stage_bridge.engine.model import load_model
from stage_bridge.engine.sampling import SamplingParams
from stage_bridge.errors import OutOfMemory, TooLarge

REPO = Path(__file__).resolve().parents[1]
MB = 1_000_000


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-random", "cpu")


def click(bars: int = 8, bpm: float = 120.0, takes: int = 1, **kw) -> StemRequest:
    return StemRequest(bpm=bpm, bars=bars, context_mode="click", takes=takes, seed=1, **kw)


def test_need_grows_with_length_takes_guidance_and_the_context(model):
    base = need(model, click(), None).host
    assert need(model, click(bars=16), None).host > base
    assert need(model, click(bpm=60.0), None).host > base  # the same bars last twice as long
    assert need(model, click(takes=2), None).host > base
    unguided = dataclasses.replace(click(), sampling=SamplingParams(guidance=1.0))
    assert need(model, unguided, None).host < base  # CFG doubles the decoder's rows
    assert need(model, click(), ContextShape(10 * 44100, 2, 44100)).host > base


def test_the_largest_request_the_protocol_allows_is_tens_of_gb(model):
    """Issue 14's request: 512 bars at 30 bpm (68 min), 8 takes. The takes alone, at 44.1 kHz in
    float32, are 5.8 GB per copy: far beyond a laptop."""
    worst = need(model, click(bars=512, bpm=30.0, takes=8), None)
    assert worst.host > 20e9


def test_too_large_says_the_most_bars_that_fit(model):
    req = click(bars=512, bpm=30.0, takes=4)
    free = Memory(int(need(model, click(bars=100, bpm=30.0, takes=4), None).host / HEADROOM) + 1)
    with pytest.raises(TooLarge) as e:
        check_fits(model, req, None, free)
    text = str(e.value)
    assert e.value.code == "too_large"
    most = int(re.search(r"at most (\d+) bars fit", text).group(1))
    assert most == 100  # the largest that fits, not just one that does
    assert "30 bpm" in text and "4 takes" in text and "GB" in text
    single = int(re.search(r"or (\d+) bars with 1 take", text).group(1))
    assert single > most
    check_fits(model, dataclasses.replace(req, bars=most), None, free)  # and it does fit


def test_nothing_fits_says_so(model):
    with pytest.raises(TooLarge, match="not even 1 bar fits"):
        check_fits(model, click(), None, Memory(1000))


def test_free_memory_reads_the_os():
    free = free_memory(load_model("tiny-random", "cpu").device)
    assert 0 < free.host and free.device == 0


def job(**fields) -> StemJob:
    return StemJob(**{"id": "big-1", "source": "osc", "name": "song", "context_path": "", "instrument": "drums",
                      "bars": 512, "bpm": 30.0, "context_mode": "click", "takes": 8, "seed": 3, **fields})


def test_a_real_job_too_large_is_refused_before_any_work(model, tmp_path):
    runner = StemRunner({"drums": model}, tmp_path, RenderSettings(sample_rate=44100),
                        free_memory=lambda device: Memory(2_000 * MB))
    with pytest.raises(ProtocolError) as refused:
        runner.admit(job())  # at acceptance: a refusal like any other, code too_large
    assert refused.value.code == "too_large"
    steps: list[float] = []
    with pytest.raises(TooLarge) as at_start:
        runner(job(), steps.append, lambda: False)  # and when it runs (a resumed job, memory taken since)
    assert str(refused.value) == str(at_start.value)
    assert steps == [0.0] and list(tmp_path.iterdir()) == []
    most = int(re.search(r"at most (\d+) bars fit", str(refused.value)).group(1))
    paths = runner(job(bars=1, takes=1), steps.append, lambda: False)  # a job that fits runs as ever
    assert len(paths) == 1 and Path(paths[0]).is_file() and 1 <= most < 512


def test_the_job_service_refuses_a_job_too_large_before_queueing_it(model, tmp_path):
    """With the runner's admit (as the daemon wires it), a too-large request never reaches the
    queue or the journal: the front end gets `too_large` at once."""
    from stage_bridge.bridge import protocol as P
    from stage_bridge.bridge.jobs import JobService, Journal
    from stage_bridge.bridge.tempo import TempoSource

    class Quiet:
        def __getattr__(self, name):
            return lambda *args, **kw: None

    runner = StemRunner({"drums": model}, tmp_path / "outbox", RenderSettings(sample_rate=44100),
                        free_memory=lambda device: Memory(2_000 * MB))
    service = JobService(Journal(tmp_path / "jobs.sqlite3"), runner, Quiet(), TempoSource(), tmp_path,
                         admit=runner.admit)
    try:
        req = P.make_request("big-2", "", "drums", 512, P.parse_options({"bpm": 30.0, "context_mode": "click",
                                                                           "takes": 8}))
        with pytest.raises(ProtocolError) as refused:
            service.submit(req, source="osc")
        assert refused.value.code == "too_large"
        assert service.queue_length == 0 and service.journal.history(10) == []
        small = P.make_request("small-1", "", "drums", 1, P.parse_options({"bpm": 120.0, "context_mode": "click"}))
        assert service.submit(small, source="osc").id == "small-1"  # one that fits is queued as ever
        assert service.queue_length == 1
    finally:
        service.close()


def test_admit_reads_the_context_files_header(model, tmp_path):
    import numpy as np
    import soundfile as sf

    wav = tmp_path / "ctx.wav"
    sf.write(wav, np.zeros((48000 * 4, 2), dtype="float32"), 48000)
    runner = StemRunner({"drums": model}, tmp_path, RenderSettings(sample_rate=44100),
                        free_memory=lambda device: Memory(10**12))
    spec = job(context_path=str(wav), context_mode="mix", bars=2, bpm=120.0, takes=1)
    runner.admit(spec)
    small = need(model, stem_request(spec, None, runner.settings), ContextShape(48000 * 4, 2, 48000))
    runner.free_memory = lambda device: Memory(int(small.host * HEADROOM) - 1)
    with pytest.raises(ProtocolError, match="bars fit|not even 1 bar"):
        runner.admit(spec)


@pytest.mark.parametrize("error", [MemoryError("Unable to allocate 31.2 GiB for an array"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't "
                                                "allocate memory: you tried to allocate 40000000000 bytes."),
                                   RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)")])
def test_allocation_failures_are_out_of_memory(error):
    with pytest.raises(OutOfMemory) as e, allocation_failures_as_out_of_memory():
        raise error
    assert e.value.code == "out_of_memory" and "fewer bars or takes" in str(e.value)


def test_other_runtime_errors_stay_what_they_are():
    with pytest.raises(RuntimeError, match="shape mismatch"), allocation_failures_as_out_of_memory():
        raise RuntimeError("shape mismatch")


def _python(code: str, timeout: float = 300) -> dict:
    """Run `code` in a fresh interpreter (its own memory figures and limits); its last line is JSON."""
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux (bytes on macOS)")
@pytest.mark.parametrize("mode,takes", [("click", 1), ("mix", 4)])
def test_the_estimate_bounds_a_real_requests_peak(mode, takes, tmp_path):
    """Real requests (64 s of audio, tiny-random): the peak RSS they add stays under the estimate,
    and the estimate is not so far above that it would refuse what fits. (What they add includes
    one-time growth, kernels and allocator, which only makes the first check stricter.)"""
    got = _python(f"""
        import json, resource
        import numpy as np, soundfile as sf
        from stage_bridge.audio import load_audio
        from stage_bridge.engine.budget import ContextShape, need
        from stage_bridge.engine.generate import StemRequest, render_stem
        from stage_bridge.engine.model import load_model

        path = {str(tmp_path / 'ctx.wav')!r}
        sf.write(path, (np.random.default_rng(0).standard_normal((64 * 44100, 2)) * 0.1).astype("float32"), 44100)
        model = load_model("tiny-random", "cpu")
        def request(bars):
            context = load_audio(path) if {mode!r} == "mix" else None
            return StemRequest(bpm=60.0, bars=bars, context=context, context_mode={mode!r}, takes={takes}, seed=1)
        req = request(16)
        with open("/proc/self/statm") as f:  # resident now (the peak so far may be higher: imports)
            before = int(f.read().split()[1]) * resource.getpagesize()
        render_stem(model, req)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # this job's peak: above any before
        shape = ContextShape(64 * 44100, 2, 44100) if {mode!r} == "mix" else None
        print(json.dumps({{"added": peak - before, "estimate": need(model, req, shape).host}}))
    """)
    assert got["added"] <= got["estimate"] <= 4 * got["added"], got  # measured: 1.9-2.3x


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS is enforced by Linux")
def test_a_failed_allocation_ends_the_job_as_out_of_memory(tmp_path):
    """A real allocation failure (the address space capped under what the job needs, the estimate
    told there is plenty): the job fails with out_of_memory and writes nothing."""
    got = _python(f"""
        import json, resource
        from pathlib import Path
        from stage_bridge.bridge.job import StemJob
        from stage_bridge.bridge.runner import RenderSettings, StemRunner
        from stage_bridge.engine.budget import Memory
        from stage_bridge.engine.model import load_model
        from stage_bridge.errors import StageError

        model = load_model("tiny-random", "cpu")
        out = Path({str(tmp_path)!r})
        runner = StemRunner({{"drums": model}}, out, RenderSettings(sample_rate=44100),
                            free_memory=lambda device: Memory(10**13))
        with open("/proc/self/status") as f:
            size = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (size + 400_000_000, resource.RLIM_INFINITY))
        job = StemJob("oom-1", "osc", "song", "", "drums", 512, 30.0, context_mode="click", takes=8, seed=1)
        try:
            runner(job, lambda p: None, lambda: False)
            print(json.dumps({{"code": None}}))
        except StageError as e:
            print(json.dumps({{"code": e.code, "message": str(e), "files": sorted(p.name for p in out.iterdir())}}))
    """)
    assert got["code"] == "out_of_memory", got
    assert got["files"] == [] and "fewer bars or takes" in got["message"]
