"""Context audio in, stem audio out.

Two layers:
- `generate_codes`: the autoregressive loop over STAGE sequences. Long requests run in
  overlapping windows of at most `window_frames` target frames (the length STAGE was trained
  on); each later window is given the previous window's last `overlap_frames` generated frames
  as a fixed prefix of its target, and the time-aligned slice of the context, so the stem
  continues seamlessly for a whole song.
- `render_stem`: the musician's request (bpm, bars, meter, context mode) -> takes at the
  context file's sample rate, exactly N bars long and starting at the context's first sample,
  each brought `loudness_offset_lu` under the context mix's loudness (audio/loudness.py), then
  scored against the request's grid (audio/fit.py) and ordered best first. A request may
  generate more `candidates` than the `takes` it keeps: all of them in one batch (one row
  each, as takes are), the best `takes` kept.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from ..audio import (Audio, CONTEXT_MODES, DEFAULT_OFFSET_LU, LoudnessMatch, bars_to_samples, build_context,
                     fit_length, is_silent, match_loudness, measure_lufs, resample, to_mono, validate_loudness_offset,
                     validate_tempo)
from ..audio.fit import Fit, Grid, rank, score_takes
from ..audio.fit import warm_up as warm_up_fit
from ..errors import BadArgument, Cancelled, EmptyAudio, OutOfMemory
from ..limits import MAX_BARS, MAX_CANDIDATES, MAX_TAKES, random_seed
from .decoder import Decoder
from .lm import CrossContext
from .model import StageModel
from .pattern import StageLayout, build_sequence, delay_revert, step_positions
from .sampling import SamplingParams, apply_guidance, sample_next

Progress = Callable[[int, int], None]  # (steps done, steps total)
ShouldCancel = Callable[[], bool]

@dataclass(frozen=True)
class WindowPlan:
    start: int  # first target frame of the window
    frames: int  # target frames in the window
    prompt: int  # of which given by the previous window

    def steps(self, num_codebooks: int) -> int:
        """Decode steps: each free frame, plus K - 1 to flush the delay pattern."""
        return self.frames - self.prompt + num_codebooks - 1


def plan_windows(total_frames: int, window_frames: int = 500, overlap_frames: int = 250) -> list[WindowPlan]:
    if not 0 <= overlap_frames < window_frames:
        raise BadArgument(f"overlap ({overlap_frames} frames) must be smaller than the window ({window_frames}).")
    plans, start, prompt = [], 0, 0
    while True:
        frames = min(window_frames, total_frames - start)
        plans.append(WindowPlan(start, frames, prompt))
        if start + frames >= total_frames:
            return plans
        prompt = overlap_frames
        start = start + frames - overlap_frames


@dataclass(frozen=True)
class Windows:
    """How long requests are cut: windows of at most `frames` target frames (10 s, the length
    STAGE was trained on), each later one continuing from the previous one's last `overlap`."""
    frames: int = 500
    overlap: int = 250


@torch.inference_mode()
def generate_codes(
    decoder: Decoder,
    context_codes: Tensor | None,
    total_frames: int,
    takes: int = 1,
    sampling: SamplingParams = SamplingParams(),
    seed: int = 0,
    cross: CrossContext | None = None,
    windows: Windows = Windows(),
    progress: Progress | None = None,
    should_cancel: ShouldCancel | None = None,
) -> Tensor:
    """(K, Tc) context codes (or None) -> (takes, K, total_frames) generated target codes.

    Context frame t is time-aligned with target frame t; context beyond the target is unused.
    `cross` must hold `sampling.rows(takes)` rows (conditional first), as `render_stem` builds it.
    """
    cfg = decoder.lm.cfg
    device = decoder.device
    sampling.validate()
    rows = sampling.rows(takes)
    generator = torch.Generator(device=device).manual_seed(seed)
    if context_codes is None:
        context_codes = torch.zeros(cfg.num_codebooks, 0, dtype=torch.long)
    context_codes = context_codes.to(device)
    plans = plan_windows(total_frames, windows.frames, windows.overlap)
    layouts = [StageLayout(context_codes[:, p.start : p.start + p.frames].shape[-1], p.frames, cfg.num_codebooks,
                           p.prompt) for p in plans]
    total_steps = sum(p.steps(cfg.num_codebooks) for p in plans)
    out = torch.full((takes, cfg.num_codebooks, total_frames), cfg.pad_id, dtype=torch.long, device=device)
    with decoder.generation(rows, max(layout.num_steps for layout in layouts), cross):
        done = 0
        for plan, layout in zip(plans, layouts):
            context = context_codes[None, :, plan.start : plan.start + layout.context_frames].expand(takes, -1, -1)
            if sampling.guided:  # unconditional rows: the context fully masked (all padding)
                context = torch.cat([context, torch.full_like(context, cfg.pad_id)])
            target = out[:, :, plan.start : plan.start + plan.frames].repeat(rows // takes, 1, 1)
            tokens, valid = build_sequence(context, target, layout, cfg.card)
            report = (lambda n, base=done: progress(base + n, total_steps)) if progress else (lambda n: None)
            out[:, :, plan.start : plan.start + plan.frames] = _decode_window(
                decoder, tokens, valid, layout, takes, sampling, generator, report, should_cancel)
            done += plan.steps(cfg.num_codebooks)
    return out


def _decode_window(decoder: Decoder, tokens: Tensor, valid: Tensor, layout: StageLayout, takes: int,
                   sampling: SamplingParams, generator: torch.Generator, on_step: Callable[[int], None],
                   should_cancel: ShouldCancel | None) -> Tensor:
    step_valid = valid.any(1)
    positions = step_positions(step_valid)
    fill = layout.generated_mask(tokens.device)  # (K, S)
    start, n_steps = layout.first_generated_step, layout.num_steps
    decoder.begin_window(step_valid)
    logits = decoder.prefill(tokens, positions, start)
    for s in range(start, n_steps):
        _check_cancel(should_cancel)
        guided = apply_guidance(logits, sampling.guidance) if sampling.guided else logits
        nxt = sample_next(guided, sampling, generator)  # (takes, K)
        if sampling.guided:
            nxt = torch.cat([nxt, nxt])
        tokens[:, :, s] = torch.where(fill[:, s], nxt, tokens[:, :, s])
        on_step(s - start + 1)
        if s + 1 < n_steps:
            logits = decoder.step(tokens[..., s : s + 1], positions[:, s : s + 1], s)
    return delay_revert(tokens[:takes])[:, :, layout.target_offset :]


def warm_up(decoder: Decoder) -> None:
    """Run a two-frame generation of the commonest kind (one take, no prompt), so that a resident
    daemon's first job does not pay for one-time work: compiling the step (`compiled`, a minute or
    two on few cores), kernel selection and allocator growth elsewhere. Other kinds (more takes, a
    prompt) pay theirs at their first job."""
    generate_codes(decoder, None, 2, takes=1)


# -- the musician's request --------------------------------------------------------------------

@dataclass(frozen=True)
class StemRequest:
    bpm: float
    bars: int
    context: Audio | None = None
    beats_per_bar: int = 4
    beat_unit: int = 4
    offset: float = 0.0  # seconds from the context's start to its first downbeat (click phase)
    context_mode: str = "mix"
    prompt: str = ""
    takes: int = 1
    seed: int | None = None
    sample_rate: int = 44100  # output rate when there is no context file
    click_gain_db: float = -6.0
    sampling: SamplingParams = SamplingParams()
    loudness_offset_lu: float | None = DEFAULT_OFFSET_LU  # takes this far under the context mix; None: as generated
    candidates: int | None = None  # generated in the batch, the best `takes` of them kept; None: `takes`

    @property
    def batch(self) -> int:
        """How many takes are generated (the batch's rows before CFG doubles them)."""
        return self.takes if self.candidates is None else self.candidates

    def validate(self) -> None:
        validate_tempo(self.bpm, self.beats_per_bar, self.beat_unit)
        if not isinstance(self.bars, int) or not 1 <= self.bars <= MAX_BARS:
            raise BadArgument(f"bars must be a whole number from 1 to {MAX_BARS} (got {self.bars}).")
        if self.context_mode not in CONTEXT_MODES:
            raise BadArgument(f"unknown context mode '{self.context_mode}'; use one of {', '.join(CONTEXT_MODES)}.")
        if self.context_mode != "click" and self.context is None:
            raise BadArgument(f"context mode '{self.context_mode}' needs a context audio file (or use --context-mode click).")
        if not 1 <= self.takes <= MAX_TAKES:
            raise BadArgument(f"takes must be from 1 to {MAX_TAKES} (got {self.takes}).")
        if self.candidates is not None and not self.takes <= self.candidates <= MAX_CANDIDATES:
            raise BadArgument(f"candidates must be from the number of takes ({self.takes}) to {MAX_CANDIDATES} "
                              f"(got {self.candidates}): that many are generated and the best takes kept.")
        if not math.isfinite(self.offset) or self.offset < 0:
            raise BadArgument(f"offset must be a number of seconds >= 0 (got {self.offset}).")
        if self.context is not None and self.context_mode == "mix" and is_silent(self.context.samples):
            raise EmptyAudio("the context is silent, so there is nothing to accompany. Check the file, or use "
                             "--context-mode click to generate from the tempo alone.")
        if not 8000 <= self.sample_rate <= 384000:
            raise BadArgument(f"sample rate must be between 8000 and 384000 Hz (got {self.sample_rate}).")
        validate_loudness_offset(self.loudness_offset_lu)


@dataclass
class StemResult:
    takes: list[np.ndarray]  # mono float32, each exactly `num_samples` long
    sample_rate: int
    num_samples: int
    seed: int
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    loudness: list[LoudnessMatch] = field(default_factory=list)  # one per take, in the order of `takes`
    fits: list[Fit] = field(default_factory=list)  # one per take, in the order of `takes`: best first


def render_stem(model: StageModel, req: StemRequest, progress: Progress | None = None,
                should_cancel: ShouldCancel | None = None) -> StemResult:
    """Render `req`'s takes. A failed allocation, in RAM or on the GPU, is `OutOfMemory`."""
    req.validate()
    with allocation_failures_as_out_of_memory():
        return _render_stem(model, req, progress, should_cancel)


@contextlib.contextmanager
def allocation_failures_as_out_of_memory() -> Iterator[None]:
    """numpy's MemoryError, torch's OutOfMemoryError (CUDA), and the RuntimeError torch's CPU and
    MPS allocators raise, as one `OutOfMemory` (the code `out_of_memory`) saying what to do."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        text = str(e)
        if not (isinstance(e, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in text
                or "out of memory" in text.lower()):
            raise
        detail = text.split("\n", 1)[0][:160]
        raise OutOfMemory(f"out of memory while generating ({detail or type(e).__name__}); try fewer bars or "
                          "takes, or close other programs.") from e


@torch.inference_mode()
def _render_stem(model: StageModel, req: StemRequest, progress: Progress | None,
                 should_cancel: ShouldCancel | None) -> StemResult:
    t_start = time.perf_counter()
    # The first scoring in a process imports and JIT-compiles the beat tracker (seconds): done
    # meanwhile, so it is paid while the model generates, not after (a no-op once done).
    warming = threading.Thread(target=_warm_up_fit, name="stage-bridge-fit-warm-up", daemon=True)
    warming.start()
    warnings: list[str] = []
    sr_out = req.context.sample_rate if req.context is not None else req.sample_rate
    n_out = bars_to_samples(req.bars, req.bpm, sr_out, req.beats_per_bar, req.beat_unit)
    sr = model.sample_rate
    n_model = int(round(Fraction(n_out) * sr / sr_out))

    mix = None
    if req.context is not None and req.context_mode != "click":
        mix = resample(to_mono(req.context.samples), req.context.sample_rate, sr)[:n_model]
        if is_silent(mix):  # only possible in mix+click mode: validate() refuses a silent mix alone
            warnings.append("the context is silent; only the click guides the generation")
    ctx_len = n_model if req.context_mode != "mix" else mix.shape[-1]
    ctx_wav = build_context(req.context_mode, ctx_len, sr, mix=mix, bpm=req.bpm, beats_per_bar=req.beats_per_bar,
                            beat_unit=req.beat_unit, offset_s=req.offset, click_gain_db=req.click_gain_db)
    codec = model.codec
    context_codes = codec.encode(torch.from_numpy(ctx_wav)[None])[0]
    _check_cancel(should_cancel)
    t_encoded = time.perf_counter()

    batch = req.batch
    rows = req.sampling.rows(batch)
    cross = CrossContext(None, None)
    if req.prompt.strip():
        states, mask = model.require_text().encode([req.prompt] * batch + [""] * (rows - batch))
        cross = model.lm.cross_context(states, mask)
    seed = req.seed if req.seed is not None else random_seed()
    first_step: list[float] = []  # when the first step was sampled: the prefill's end

    def on_step(done: int, total: int) -> None:
        if not first_step:
            first_step.append(time.perf_counter())
        if progress is not None:
            progress(done, total)

    codes = generate_codes(model.decoder, context_codes, codec.frames_for(n_model), batch, req.sampling, seed,
                           cross, progress=on_step, should_cancel=should_cancel)
    t_generated = time.perf_counter()
    _check_cancel(should_cancel)
    audio = codec.decode(codes)[:, :n_model].numpy()  # float32, in host memory
    takes, loudness = _match_takes([fit_length(resample(a, sr, sr_out), n_out) for a in audio], sr_out, req)
    t_decoded = time.perf_counter()
    _check_cancel(should_cancel)
    warming.join()
    grid = Grid(req.bpm, req.beats_per_bar, req.beat_unit, req.offset)
    fits = score_takes(takes, sr_out, grid, [m.lufs for m in loudness], loudness[0].context_lufs)
    best = rank(fits)[:req.takes]
    takes, loudness, fits = [takes[i] for i in best], [loudness[i] for i in best], [fits[i] for i in best]
    for k, m in enumerate(loudness, start=1):
        if m.limited:
            warnings.append(f"take {k} is quieter than asked ({m.gain_db:+.1f} dB applied): any louder would clip")
    t_done = time.perf_counter()
    # generate_s = prefill_s (the prompt, the context window's one forward, the first sampled step)
    # + the decode steps; decode_s is EnCodec's decode and fitting the takes; score_s is scoring
    # every candidate and ranking them (audio/fit.py).
    timings = {"encode_s": t_encoded - t_start, "prefill_s": (first_step or [t_generated])[0] - t_encoded,
               "generate_s": t_generated - t_encoded, "decode_s": t_decoded - t_generated,
               "score_s": t_done - t_decoded, "total_s": t_done - t_start}
    return StemResult(takes, sr_out, n_out, seed, timings, warnings, loudness, fits)


def _warm_up_fit() -> None:
    try:
        warm_up_fit()
    except Exception:  # noqa: BLE001 - scoring itself then raises the same error, where it is reported
        pass


def _match_takes(takes: list[np.ndarray], sample_rate: int,
                 req: StemRequest) -> tuple[list[np.ndarray], list[LoudnessMatch]]:
    """Each take `req.loudness_offset_lu` under the context MIX over the same bars (the click is
    not part of the song). Click mode, or a silent mix, has no context loudness: the takes are then
    matched to audio/loudness.REFERENCE_LUFS instead (`context_lufs` None)."""
    context_lufs = None
    if req.context is not None and req.context_mode != "click":
        context_lufs = measure_lufs(req.context.samples[:, :len(takes[0])], sample_rate)
    matched = [match_loudness(take, sample_rate, context_lufs, req.loudness_offset_lu) for take in takes]
    return [audio for audio, _ in matched], [m for _, m in matched]


def _check_cancel(should_cancel: ShouldCancel | None) -> None:
    if should_cancel is not None and should_cancel():
        raise Cancelled("generation cancelled")
