"""Decode benchmark: our STAGE decoder against transformers' MusicGen, and the memory floor.

Both sides run a musicgen-small-sized decoder with the very same random weights (transformers'
`MusicgenForCausalLM` is built first and ours is loaded from its state dict through
`lm_from_transformers`), on the same device, dtype and thread count, with a KV cache,
classifier-free guidance (2 rows per take), top-k sampling, and the same number of prefill
tokens and decode steps. Each side is warmed up once, then timed `--repeats` times (alternating);
medians are reported.

- OURS: the real loop, `generate_codes`, one window holding all `--context-frames` context
  frames, timed over the steps of `--gen-frames` generated frames (see `run_ours`). A progress
  callback stamps every sampled step: prefill = time from the call (including the cross-attention
  precompute) to the first sampled step; ms/step = time between the first and the last sampled
  step / (steps - 1), i.e. one decode forward plus one sampling each.
- TRANSFORMERS: `MusicgenForCausalLM` run the way its documentation says to continue from a
  prefix (https://huggingface.co/docs/transformers/kv_cache, "Prefill a cache" / "Re-use Cache to
  continue generation": a forward over the prefix fills a Cache object that `generate` is given
  and continues from, feeding only the tokens the cache does not hold): one public forward fills a KV cache with the
  delay-patterned prompt minus its last token (both CFG rows; with text, an `EncoderDecoderCache`
  so the cross-attention K/V are computed once, as we do), then the public `generate` continues
  from that cache with `max_new_tokens` = our step count, `guidance_scale=3.0`, `do_sample=True,
  top_k=250`. A streamer stamps every sampled token, measured exactly as ours.
  Why not `generate(prompt)` alone: transformers 5.x's `prepare_inputs_for_generation` for
  MusicGen feeds only the LAST prompt token whenever a cache object exists, and `generate` always
  creates one, so its prefill would skip the prompt and its steps attend to ~S keys instead of
  ~prompt + S (cheap and wrong). Pre-filling through the public API keeps the work identical on
  every version that honours a given cache, without subclassing private generate plumbing.
  The cache's keyword is `cache` from transformers 5.24 and `past_key_values` before; the bench
  reads it from `forward`'s signature and records it (`transformers_cache_kwarg`). It also checks
  what ran (a forward hook): one forward of prompt - 1 tokens, then exactly one single-token
  forward per sampled token; anything else stops the bench with what was seen. Transformers'
  "prefill" therefore includes its first single-token step (one step more than ours).
- FLOOR: bytes that must be read per decode step / memory bandwidth. Bytes = every weight a
  decode step touches (all linears of all layers, cross-attention q/out only when there is text,
  layer norms, the output heads, and just the K embedding rows per row) + the self-attention
  KV cache at the average number of keys over the decode steps + the cross-attention K/V (text
  only). Bandwidth = (bytes read + bytes written) / time of a copy of a `--bw-mib` tensor on the
  device (the STREAM "copy" convention), taken as the rate at which a decode step can stream its
  bytes. On a shared machine that rate drifts by a third or more within minutes, so it is
  measured during the timed runs themselves: every `--probe-every` sampled steps one copy runs
  with the run's clock stopped (`StepProbe`). Each run is compared with the median of its own
  probes (ours/floor = median over runs); `floor_ms_per_step` uses the median of all of them.
  A separate fastest-of-5 probe after the runs is reported for reference.
- PRECISION (`--precision int8|int4|bf16|fp16`): ours runs in that precision and, side by side
  in the same runs (alternating), a copy of ours in fp32 on the same weights (`fp32_*` keys,
  `speedup_vs_fp32`); each has its own floor (int8/int4 linears read 1 / 0.5 byte per weight plus
  their scales). The quality cost on these random weights, against fp32 (`quality`): one greedy
  generation of `--quality-frames` frames drives both decoders with fp32's tokens (teacher
  forcing), comparing their next-token logits at every step (max |diff|, mean KL, top-1 and
  top-k set agreement); then each decodes greedily on its own, and the share of frames they
  agree on is `greedy_frame_agreement`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch

from .engine.model import DECODE_PRECISIONS, PRECISIONS

CARD = 2048
NUM_CODEBOOKS = 4


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stage-bridge bench",
        description="Decode speed of our STAGE decoder vs transformers' MusicGen (same random weights), "
                    "and the memory-bandwidth floor.")
    p.add_argument("--layers", type=int, default=24, help="decoder layers (musicgen-small: 24)")
    p.add_argument("--dim", type=int, default=1024, help="model width (musicgen-small: 1024)")
    p.add_argument("--heads", type=int, default=16, help="attention heads (musicgen-small: 16)")
    p.add_argument("--ffn", type=int, default=4096, help="feed-forward width (musicgen-small: 4096)")
    p.add_argument("--context-frames", type=int, default=500, help="context frames (500 = 10 s)")
    p.add_argument("--gen-frames", type=int, default=250, help="generated frames (250 = 5 s)")
    p.add_argument("--batch", type=int, default=1, help="takes; CFG doubles the rows")
    p.add_argument("--text-tokens", type=int, default=8,
                   help="random text-prompt states for cross-attention, as a short T5 prompt (0 = no prompt: "
                        "both implementations then skip cross-attention, as STAGE does without --prompt)")
    p.add_argument("--guidance", type=float, default=3.0, help="CFG scale (> 1)")
    p.add_argument("--top-k", type=int, default=250)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side (median reported)")
    p.add_argument("--warmup-frames", type=int, default=16,
                   help="generated frames of the one warm-up run per side (same context)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=tuple(PRECISIONS), default="fp32")
    p.add_argument("--bw-mib", type=int, default=512, help="size of the bandwidth-probe copy")
    p.add_argument("--probe-every", type=int, default=16,
                   help="probe the bandwidth every this many sampled steps of each timed run (clock stopped)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-transformers", action="store_true", help="time ours only")
    p.add_argument("--compile", action="store_true",
                   help="ours: decode steps compiled by TorchInductor (CPU, fp32; as `generate/serve --compile`); "
                        "the warm-up run then includes compiling")
    p.add_argument("--precision", choices=DECODE_PRECISIONS, default=None,
                   help="ours in this precision (int8/int4: integer weights, CPU), side by side with ours in fp32 "
                        "on the same weights, with the quality cost (default: --dtype, no side-by-side)")
    p.add_argument("--quality-frames", type=int, default=250,
                   help="with --precision: generated frames of the quality comparison (greedy, one window)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (progress on stderr)")
    return p


# -- models ------------------------------------------------------------------------------------

def build_models(args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    """(transformers model, our StageLM, our LMConfig) with identical weights."""
    from transformers import MusicgenDecoderConfig, MusicgenForCausalLM

    from .engine.checkpoints import KeyMapper, lm_from_transformers
    from .engine.lm import LMConfig, StageLM

    torch.manual_seed(args.seed)
    hf_cfg = MusicgenDecoderConfig(hidden_size=args.dim, num_hidden_layers=args.layers,
                                   num_attention_heads=args.heads, ffn_dim=args.ffn, num_codebooks=NUM_CODEBOOKS,
                                   vocab_size=CARD, pad_token_id=CARD, bos_token_id=CARD,
                                   decoder_start_token_id=CARD, dropout=0.0, attention_dropout=0.0,
                                   activation_dropout=0.0)
    hf = MusicgenForCausalLM(hf_cfg).eval()
    hf.generation_config.decoder_start_token_id = CARD  # as facebook/musicgen-small's generation_config
    hf.generation_config.pad_token_id = CARD
    with torch.no_grad():  # our pad row is zero by construction; make theirs match (identical weights)
        for e in hf.model.decoder.embed_tokens:
            e.weight[CARD].zero_()
    cfg = LMConfig(dim=args.dim, num_layers=args.layers, num_heads=args.heads, ffn_dim=args.ffn,
                   num_codebooks=NUM_CODEBOOKS, card=CARD, text_dim=args.dim)
    m = KeyMapper(hf.state_dict(), "transformers MusicgenForCausalLM (random)")
    state = lm_from_transformers(m, cfg, "model.decoder.", "", None)
    m.finish(ignore=["model.decoder.embed_positions.weights"])
    ours = StageLM(cfg)
    ours.load_state_dict(state, strict=True)
    del state
    ours = ours.eval().to(device=device, dtype=dtype)
    hf = hf.to(device=device, dtype=dtype)
    return hf, ours, cfg


# -- timing ------------------------------------------------------------------------------------

@dataclass
class Run:
    prefill_s: float
    ms_per_step: float
    total_s: float
    steps: int
    copy_gbps: list[float]  # the copy probes taken during this run


class StepProbe:
    """Measures memory bandwidth during a timed run, between its decode steps.

    Why: on a shared machine the copy rate drifts by a third or more within minutes (measured
    here: 31 to 65 GB/s within one benchmark), so a probe taken before or after a run says little
    about the run. Every `every` sampled steps this copies a `mib` MiB tensor once (read + written
    bytes / time) and stops the run's clock meanwhile (`paused`), so the steps are timed without
    the probes and the floor is computed from the bandwidth of the same seconds.
    """

    def __init__(self, device: torch.device, mib: int, every: int, sync: Callable[[], None]):
        self.src = torch.ones(mib * 2**20 // 4, dtype=torch.float32, device=device)
        self.dst = torch.empty_like(self.src)
        self.dst.copy_(self.src)  # fault the pages in
        self.every, self.sync = every, sync
        self.rates: list[float] = []
        self.paused = 0.0

    def start(self) -> None:
        """A new run: forget earlier probes."""
        self.rates, self.paused = [], 0.0

    def now(self) -> float:
        """The run's clock: wall time less the time spent probing."""
        return time.perf_counter() - self.paused

    def after_step(self, done: int) -> None:
        if done % self.every:
            return
        self.sync()
        t = time.perf_counter()
        self.dst.copy_(self.src)
        self.sync()
        dt = time.perf_counter() - t
        self.rates.append(2 * self.src.numel() * 4 / dt / 1e9)
        self.paused += dt


def _syncer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _summarize(t0: float, stamps: list[float], steps: int, side: str, probe: StepProbe) -> Run:
    """prefill = call -> first sampled step; ms/step over the rest; total = call -> last sampled step."""
    if len(stamps) != steps or steps < 2:
        raise RuntimeError(f"{side}: expected {steps} sampled steps, saw {len(stamps)}")
    return Run(stamps[0] - t0, 1000.0 * (stamps[-1] - stamps[0]) / (steps - 1), stamps[-1] - t0, steps,
               list(probe.rates))


def run_ours(decoder, context_codes: torch.Tensor, gen_frames: int, args, text_states, probe: StepProbe) -> Run:
    """`generate_codes` with the whole context in one window, timed over `gen_frames + K - 1` steps.

    `generate_codes` pairs target frame t with context frame t (context beyond the target is
    unused), so for a context longer than the generated part the request covers the context's
    length and is cancelled (its own `should_cancel`) once `gen_frames + K - 1` steps are sampled:
    prefill and every timed step then do exactly the work of a `[context][SEP][gen_frames]`
    window. (Only the preallocated KV cache is longer, which the eager CPU step never reads; the
    CUDA-graph step attends over the whole cache.)
    In the `compiled` mode the forwards are not counted: a hook would change what the compiled
    step was traced with and make it recompile.
    """
    from .engine.decoder import COMPILED
    from .engine.generate import Windows, generate_codes
    from .engine.lm import masked_prefix_spans
    from .engine.sampling import SamplingParams
    from .errors import Cancelled

    total = max(context_codes.shape[-1], gen_frames)
    steps = gen_frames + NUM_CODEBOOKS - 1
    stamps: list[float] = []

    def progress(done: int, total_steps: int) -> None:
        probe.sync()
        stamps.append(probe.now())
        probe.after_step(done)

    sampling = SamplingParams(guidance=args.guidance, top_k=args.top_k)
    calls: list[tuple[int, int]] = []  # (rows, steps) per forward (CUDA-graph capture runs 1-step forwards; a replay calls no hook)
    lm = decoder.lm
    hook = None if decoder.mode == COMPILED else lm.register_forward_pre_hook(
        lambda mod, a: calls.append((a[0].shape[0], a[0].shape[-1])))
    probe.start()
    probe.sync()
    t0 = probe.now()
    with torch.inference_mode():
        cross = None
        if text_states is not None:
            mask = torch.ones(text_states.shape[:2], dtype=torch.bool, device=text_states.device)
            cross = lm.cross_context(text_states, mask)
        try:
            generate_codes(decoder, context_codes, total, takes=args.batch, sampling=sampling, seed=args.seed,
                           cross=cross, windows=Windows(total, 0), progress=progress,
                           should_cancel=lambda: len(stamps) >= steps)
        except Cancelled:
            pass
        finally:
            if hook is not None:
                hook.remove()
    # one prefill up to the first sampled step (context, SEP, the delay pattern's first frame step) for
    # every row; with guidance and a long context the unconditional rows' from their SEP
    # (Decoder.prefill, lm.masked_prefix_spans); then single steps over all rows
    prefill, rows = context_codes.shape[-1] + 2, sampling.rows(args.batch)
    if hook is not None:
        pre = [(r, n) for r, n in calls if (r, n) != (rows, 1)]
        valid = torch.ones(rows, prefill, dtype=torch.bool)
        valid[:, 0] = False  # the delay pattern's padding-only step
        valid[args.batch:, : context_codes.shape[-1] + 1] = False  # unconditional rows: up to their SEP
        spans = masked_prefix_spans(valid)
        expected = [(rows, prefill)] if spans is None else [(hi - lo, prefill - first) for lo, hi, first in spans]
        if pre != expected:
            raise RuntimeError(f"ours: prefill forwards were {pre} (rows, steps), expected {expected}")
    return _summarize(t0, stamps, steps, "ours", probe)


class _Teacher:
    """Quacks like a `Decoder` for `generate_codes`: runs `ref` and `other` on the same tokens and
    returns `ref`'s logits, so the generation follows `ref` (teacher forcing) while `compare`
    sees both decoders' next-token logits at every step. Each decoder attends to the
    cross-attention K/V its own weights made (`crosses`)."""

    def __init__(self, ref, other, crosses, compare: Callable[[torch.Tensor, torch.Tensor], None]):
        self.ref, self.other, self.crosses, self.compare = ref, other, crosses, compare
        self.lm, self.device, self.mode = ref.lm, ref.device, ref.mode

    @contextmanager
    def generation(self, rows: int, max_steps: int, cross):
        with self.ref.generation(rows, max_steps, self.crosses[0]), \
                self.other.generation(rows, max_steps, self.crosses[1]):
            yield self

    def begin_window(self, step_valid: torch.Tensor) -> None:
        self.ref.begin_window(step_valid)
        self.other.begin_window(step_valid)

    def prefill(self, tokens: torch.Tensor, positions: torch.Tensor, upto: int) -> torch.Tensor:
        return self._both(lambda d: d.prefill(tokens, positions, upto))

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, s: int) -> torch.Tensor:
        return self._both(lambda d: d.step(tokens, positions, s))

    def _both(self, run) -> torch.Tensor:
        ref = run(self.ref)
        self.compare(ref, run(self.other))
        return ref


@torch.inference_mode()
def quality(ref, other, context_codes: torch.Tensor, frames: int, args, text_states) -> dict:
    """The quality cost of `other` (e.g. int8) against `ref` (fp32) on the same weights, over one
    greedy generation of `frames` frames + the delay pattern's flush (see module docstring).
    Logits are compared per row (both CFG rows) and codebook, before guidance: max |diff|, the
    mean KL(ref || other) of softmax(logits), whether the argmax agrees, and the mean overlap of
    the 250 best (STAGE's top-k). The fp32 logits' spread is reported for scale."""
    from .engine.generate import Windows, generate_codes
    from .engine.sampling import SamplingParams

    greedy = SamplingParams(guidance=args.guidance, top_k=args.top_k, temperature=0.0)
    crosses = [None, None]
    if text_states is not None:
        mask = torch.ones(text_states.shape[:2], dtype=torch.bool, device=text_states.device)
        crosses = [d.lm.cross_context(text_states, mask) for d in (ref, other)]
    k = 250
    sums = {"max_abs": 0.0, "kl": 0.0, "top1": 0.0, "topk": 0.0, "n": 0, "steps": 0, "logit_max": 0.0, "var": 0.0}

    def compare(a: torch.Tensor, b: torch.Tensor) -> None:
        a, b = a.double(), b.double()  # KL of near-equal distributions: float32 rounding shows as < 0
        la, lb = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
        ta, tb = a.topk(k, dim=-1).indices, b.topk(k, dim=-1).indices
        overlap = (ta[..., :, None] == tb[..., None, :]).any(-1).float().sum(-1) / k
        sums["max_abs"] = max(sums["max_abs"], float((a - b).abs().max()))
        sums["logit_max"] = max(sums["logit_max"], float(a.abs().max()))
        sums["kl"] += float((la.exp() * (la - lb)).sum(-1).sum())
        sums["top1"] += float((a.argmax(-1) == b.argmax(-1)).float().sum())
        sums["topk"] += float(overlap.sum())
        sums["var"] += float(a.var(-1).sum())
        sums["n"] += a.numel() // a.shape[-1]
        sums["steps"] += 1

    teacher = _Teacher(ref, other, crosses, compare)
    codes_ref = generate_codes(teacher, context_codes, frames, takes=args.batch, sampling=greedy, seed=args.seed,
                               windows=Windows(frames, 0))
    codes_other = generate_codes(other, context_codes, frames, takes=args.batch, sampling=greedy, seed=args.seed,
                                 cross=crosses[1], windows=Windows(frames, 0))
    same = (codes_ref == codes_other).all(dim=1)  # (takes, frames): every codebook of the frame
    differ = (~same).nonzero()
    n = sums["n"]
    return {"max_abs_logit_diff": sums["max_abs"], "mean_kl": sums["kl"] / n, "top1_agreement": sums["top1"] / n,
            "top250_agreement": sums["topk"] / n,
            "greedy_frame_agreement": float(same.float().mean()),
            "greedy_first_different_frame": int(differ[:, 1].min()) if len(differ) else None,
            "fp32_logit_std": (sums["var"] / n) ** 0.5, "fp32_logit_max_abs": sums["logit_max"],
            "compared_steps": sums["steps"], "frames": frames,
            "definition": "teacher-forced on the fp32 greedy tokens: per row (both CFG rows) and codebook, the "
                          "next-token logits before guidance; KL(fp32 || ours) in nats, mean; top-k overlap "
                          "|top_k(fp32) & top_k(ours)| / k; greedy_frame_agreement: frames (all codebooks) equal "
                          "between two free greedy decodes"}


class BaselineError(RuntimeError):
    """transformers did not run the baseline's workload (a version that changed its generate path)."""


def cache_kwarg(hf) -> str:
    """The keyword transformers' MusicGen takes its KV cache by: `cache` from 5.24, before that
    `past_key_values`. Read from the public signature, so a rename is seen rather than guessed."""
    import inspect

    params = inspect.signature(hf.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise BaselineError(f"transformers {_hf_version()}: MusicgenForCausalLM.forward takes neither `cache` nor "
                        "`past_key_values`; the baseline cannot hand it a KV cache. Run with --skip-transformers.")


def _hf_version() -> str:
    import transformers

    return transformers.__version__


@torch.inference_mode()
def continue_from_prefix(hf, prompt: torch.Tensor, steps: int, text_states: torch.Tensor | None = None,
                         **generate_kwargs) -> torch.Tensor:
    """transformers' documented way to continue from a prefix (https://huggingface.co/docs/transformers/kv_cache,
    "Prefill a cache"; verified per version by tests/test_bench.py): fill a KV cache with a public forward of
    the prompt (in the delay pattern, as generate feeds it) minus its last token, for both CFG rows,
    then call the public `generate` with that cache. Returns generate's output."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    name = cache_kwarg(hf)
    text = {} if text_states is None else {"encoder_hidden_states": text_states}
    cache = DynamicCache() if text_states is None else EncoderDecoderCache(DynamicCache(), DynamicCache())
    rows = 2 if generate_kwargs.get("guidance_scale", 1.0) > 1 else 1  # MusicGen doubles the batch for CFG
    try:
        ids, mask = hf.build_delay_pattern_mask(prompt, hf.generation_config.pad_token_id,
                                                max_length=prompt.shape[-1] + steps)
        ids = hf.apply_delay_pattern_mask(ids, mask)
        hf(input_ids=ids[:, :-1].repeat(rows, 1), use_cache=True, **{name: cache}, **text)
        return hf.generate(prompt, max_new_tokens=steps, min_new_tokens=steps, use_cache=True, num_return_sequences=1,
                           **{name: cache}, **text, **generate_kwargs)
    except Exception as e:  # noqa: BLE001 - any failure here is transformers refusing this way of running it
        raise BaselineError(f"transformers {_hf_version()}: generate() failed to continue from a prefilled KV cache "
                            f"({type(e).__name__}: {str(e).strip()[:300]}). This baseline is known to work with "
                            "transformers 5.x; run with --skip-transformers to time ours alone.") from e


def run_transformers(hf, prompt: torch.Tensor, steps: int, args, text_states, probe: StepProbe) -> Run:
    """Prefill a KV cache through the public forward, continue with the public generate (module docstring)."""
    from transformers.generation.streamers import BaseStreamer

    class Stamps(BaseStreamer):
        def __init__(self):
            self.t: list[float] = []

        def put(self, value):  # first call: the prompt (before the first step); then one per sampled token
            probe.sync()
            self.t.append(probe.now())
            if len(self.t) > 1:
                probe.after_step(len(self.t) - 1)

        def end(self):
            pass

    streamer = Stamps()
    calls: list[int] = []
    hook = hf.register_forward_pre_hook(lambda mod, a, kw: calls.append(kw["input_ids"].shape[-1]), with_kwargs=True)
    try:
        probe.start()
        probe.sync()
        t0 = probe.now()
        continue_from_prefix(hf, prompt, steps, text_states, do_sample=True, top_k=args.top_k,
                             guidance_scale=args.guidance, streamer=streamer)
    finally:
        hook.remove()
    expected = [prompt.shape[-1] - 1] + [1] * steps
    if calls != expected:
        seen = f"{calls[:3]}{'...' if len(calls) > 3 else ''} ({len(calls)} forwards)"
        raise BaselineError(
            f"transformers {_hf_version()}: expected one prefill forward of {expected[0]} tokens and then {steps} "
            f"single-token forwards, saw {seen}. generate() did not continue from the prefilled KV cache "
            "(it recomputed or skipped tokens), so its timing would not be comparable; run with --skip-transformers.")
    if len(streamer.t) != steps + 1:
        raise BaselineError(f"transformers {_hf_version()}: the streamer saw {len(streamer.t) - 1} sampled tokens, "
                            f"expected {steps}.")
    return _summarize(t0, streamer.t[1:], steps, "transformers", probe)


def measure_bandwidth(device: torch.device, mib: int, repeats: int = 5) -> dict:
    """Fastest of `repeats` copies of a `mib` MiB tensor: GB/s counting read + written bytes, and a
    read-only reduction (sum) for reference."""
    sync = _syncer(device)
    n = mib * 2**20 // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # fault the pages in
    best = float("inf")
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        dst.copy_(src)
        sync()
        best = min(best, time.perf_counter() - t)
    best_sum = float("inf")
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        src.sum()
        sync()
        best_sum = min(best_sum, time.perf_counter() - t)
    nbytes = n * 4
    del src, dst
    return {"copy_bytes": nbytes, "copy_s": best,
            "copy_gbps": 2 * nbytes / best / 1e9,  # read + write
            "copy_one_way_gbps": nbytes / best / 1e9,
            "sum_read_gbps": nbytes / best_sum / 1e9}


def floor_bytes(cfg, rows: int, avg_keys: float, text_tokens: int, elem_bytes: int,
                quantized: str | None = None, kv_bytes: int | None = None, head_bytes: int | None = None,
                ours: bool = False) -> dict:
    """Bytes a decode step must read. `quantized` ("int8"/"int4"): the block linears are read at
    their stored size (engine/quant.py: integers plus scales); `kv_bytes`/`head_bytes`: the
    self-attention cache's and the output heads' element size where it is not `elem_bytes`
    (the quantized CPU step keeps both in fp16); `ours`: our integer kernels' layout
    (`QuantLinear.q8`/`q4`); all else at `elem_bytes`."""
    from .engine.quant import bytes_per_weight

    d, f, n, k = cfg.dim, cfg.ffn_dim, cfg.num_layers, cfg.num_codebooks
    has_text = text_tokens > 0
    linears = [(3 * d, d), (d, d), (f, d), (d, f)] + ([(d, d), (d, d)] if has_text else [])  # (out, in)
    per_weight = (lambda fan_in: bytes_per_weight(quantized, fan_in, ours)) if quantized else (lambda fan_in: elem_bytes)
    per_layer = (sum(o * i * per_weight(i) for o, i in linears)  # qkv, out, FFN, cross q + out (K/V precomputed)
                 + (3 if has_text else 2) * 2 * d * elem_bytes)  # layer norms (weight + bias)
    weights = (n * per_layer + (2 * d + rows * k * d) * elem_bytes  # + out norm, emb rows
               + k * cfg.card * d * (head_bytes or elem_bytes))  # + heads
    kv = 2 * n * rows * avg_keys * d * (kv_bytes or elem_bytes)
    cross_kv = 2 * n * rows * text_tokens * d * elem_bytes
    return {"weights": weights, "self_kv": kv, "cross_kv": cross_kv, "total": weights + kv + cross_kv}


def _proc_field(path: str, prefix: str) -> str | None:
    """The first line of a /proc file starting with `prefix` (None off Linux)."""
    try:
        with open(path) as fh:
            return next((line for line in fh if line.startswith(prefix)), None)
    except OSError:
        return None


def machine_info(device: torch.device) -> dict:
    """The run's platform, memory, load and GPU; the CPU itself (model, flags, threads, huge
    pages, allocator) is engine/machine.py's report, merged in by the caller."""
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine()}
    mem_total = _proc_field("/proc/meminfo", "MemTotal")
    if mem_total:
        info["mem_total_gib"] = round(int(mem_total.split()[1]) / 2**20, 1)
    if hasattr(os, "getloadavg"):  # other work on the machine skews every number here
        info["loadavg_1min_at_end"] = round(os.getloadavg()[0], 2)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# -- main --------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except BaselineError as e:
        _log(f"error: {e}")
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.guidance <= 1.0:
        _log("--guidance must be > 1 (transformers only applies CFG above 1).")
        return 2
    if min(args.context_frames, args.batch, args.repeats, args.probe_every) < 1 or args.gen_frames < 2 \
            or args.dim % args.heads:
        _log("need --context-frames >= 1, --gen-frames >= 2, --batch >= 1, --repeats >= 1, --probe-every >= 1, "
             "dim divisible by heads.")
        return 2
    side = args.precision is not None and args.precision != args.dtype
    if side and args.dtype != "fp32":
        _log("--precision is compared with fp32: leave --dtype at fp32.")
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        _log("--device cuda: no CUDA device is available.")
        return 2
    import transformers
    from transformers.utils import logging as hf_logging

    from .engine.pattern import StageLayout

    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    device, dtype = torch.device(args.device), PRECISIONS[args.dtype]
    if hasattr(os, "getloadavg") and os.getloadavg()[0] > 0.5 and device.type == "cpu":
        _log(f"note: load average is {os.getloadavg()[0]:.2f}; other processes will skew the timings.")
    load_start = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None

    _log(f"building models ({args.layers} layers, d={args.dim}, {args.heads} heads, ffn {args.ffn}) "
         f"on {args.device} {args.dtype}, {threads} threads ...")
    hf, ours, cfg = build_models(args, device, dtype)
    from .engine.decoder import COMPILED, Decoder, default_mode
    from .engine.model import decode_precision
    from .engine.sampling import SamplingParams
    from .errors import BadArgument

    precision = args.precision or args.dtype
    p_dtype, quantize = decode_precision(precision)
    mode = default_mode(device, args.compile)
    ours.requires_grad_(False)
    try:  # a side-by-side copy is made before packing (what build_model does for inference, CPU fp32)
        chosen = copy.deepcopy(ours).to(dtype=p_dtype) if side else ours
        decoder = Decoder(chosen, mode, quantize)
        ref_decoder = Decoder(ours, mode) if side else None
    except (ValueError, BadArgument) as e:  # compiled: not CPU fp32 or no C++ compiler; int8/int4: not CPU
        _log(str(e))
        return 2
    packed = False
    if not args.compile:
        packed = chosen.pack_for_cpu()
        if side:
            ours.pack_for_cpu()
    compiled = decoder.mode == COMPILED
    layout = StageLayout(args.context_frames, args.gen_frames, NUM_CODEBOOKS)
    prefill_tokens, steps = layout.first_generated_step, layout.num_steps - layout.first_generated_step
    rows = SamplingParams(guidance=args.guidance).rows(args.batch)

    g = torch.Generator().manual_seed(args.seed)
    context = torch.randint(0, CARD, (NUM_CODEBOOKS, args.context_frames), generator=g).to(device)
    prompt = torch.randint(0, CARD, (args.batch * NUM_CODEBOOKS, prefill_tokens), generator=g).to(device)
    text = None
    if args.text_tokens > 0:
        text = torch.randn(rows, args.text_tokens, args.dim, generator=g).to(device=device, dtype=dtype)

    # decode forwards run at steps prefill_tokens .. prefill_tokens + steps - 2; step s reads keys 1 .. s
    # (step 0 is padding only); an unconditional row (its context all padding) only from the SEP on
    avg_keys = prefill_tokens + steps / 2.0 - 1 - (rows - args.batch) * args.context_frames / rows
    fb = floor_bytes(cfg, rows, avg_keys, args.text_tokens, torch.finfo(p_dtype).bits // 8, quantize,  # ours
                     kv_bytes=decoder.cache_dtype.itemsize if decoder.cache_dtype else None,
                     head_bytes=chosen.heads_half.element_size() if chosen.heads_half is not None else None,
                     ours=quantize is not None and chosen.layers[0].ffn.up.kernels is not None)
    fb32 = floor_bytes(cfg, rows, avg_keys, args.text_tokens, torch.finfo(dtype).bits // 8)  # fp32, transformers
    floor_ms = lambda gbps, b=fb: 1000.0 * b["total"] / (gbps * 1e9)  # noqa: E731
    probe_every = max(1, min(args.probe_every, steps - 1))
    probe = StepProbe(device, args.bw_mib, probe_every, _syncer(device))

    warm = max(2, min(args.warmup_frames, args.gen_frames))
    warm_steps = StageLayout(args.context_frames, warm, NUM_CODEBOOKS).num_steps - prefill_tokens
    _log(f"warm-up ({warm} frames{', compiling the decode step' if compiled else ''}) ...")
    t_warm = time.perf_counter()
    run_ours(decoder, context, warm, args, text, probe)
    ours_warmup_s = time.perf_counter() - t_warm
    if side:
        run_ours(ref_decoder, context, warm, args, text, probe)
    if not args.skip_transformers:
        run_transformers(hf, prompt, warm_steps, args, text, probe)

    from .engine.machine import cpu_snapshot, decode_report, format_report
    cpu_start = cpu_snapshot()  # who had the CPUs during the timed runs: machine.cpu_use
    ours_runs: list[Run] = []
    fp32_runs: list[Run] = []
    hf_runs: list[Run] = []
    over_floor = lambda run, b=fb: run.ms_per_step / floor_ms(statistics.median(run.copy_gbps), b)  # noqa: E731
    for r in range(args.repeats):
        o = run_ours(decoder, context, args.gen_frames, args, text, probe)
        ours_runs.append(o)
        _log(f"[{r + 1}/{args.repeats}] ours{f' {precision}':<9} prefill {o.prefill_s:.3f} s, {o.ms_per_step:.2f} "
             f"ms/step, {over_floor(o):.2f}x the floor")
        if side:
            f = run_ours(ref_decoder, context, args.gen_frames, args, text, probe)
            fp32_runs.append(f)
            _log(f"[{r + 1}/{args.repeats}] ours fp32:    prefill {f.prefill_s:.3f} s, {f.ms_per_step:.2f} ms/step, "
                 f"{over_floor(f, fb32):.2f}x the floor")
        if not args.skip_transformers:
            h = run_transformers(hf, prompt, steps, args, text, probe)
            hf_runs.append(h)
            _log(f"[{r + 1}/{args.repeats}] transformers: prefill {h.prefill_s:.3f} s, {h.ms_per_step:.2f} ms/step, "
                 f"{over_floor(h, fb32):.2f}x the floor")
    scores = None
    if side:
        _log(f"quality of {precision} against fp32 ({args.quality_frames} frames, greedy) ...")
        scores = quality(ref_decoder, decoder, context, args.quality_frames, args, text)
    attn_impl = getattr(hf.config, "_attn_implementation", None)
    hf_cache = None if args.skip_transformers else cache_kwarg(hf)
    machine = decode_report(ours, since=cpu_start)  # what explains a slow run (engine/machine.py)
    _log(format_report(machine))
    from .engine import kernels

    cpu_kernels = kern.kind if (kern := kernels.library()) else f"not used: {kernels.why_not()}"
    kernel_name = chosen.layers[0].ffn.up.kernel if quantize else None
    heads_half, cache_dtype = chosen.heads_half is not None, decoder.cache_dtype or p_dtype
    fused = device.type == "cpu" and all(blk.plan() is not None for blk in chosen.layers)
    _log(f"our CPU kernels: {cpu_kernels}; {precision} product: {kernel_name or 'float'}, KV cache "
         f"{str(cache_dtype).removeprefix('torch.')}, heads {'fp16' if heads_half else str(p_dtype).removeprefix('torch.')}"
         f", fused block step {'yes' if fused else 'no'}")
    del hf, ours, decoder, ref_decoder, chosen, probe
    if device.type == "cuda":
        torch.cuda.empty_cache()
    _log(f"bandwidth probe ({args.bw_mib} MiB copy, fastest of 5) ...")
    bw = measure_bandwidth(device, args.bw_mib)
    in_run = [g for run in ours_runs + fp32_runs + hf_runs for g in run.copy_gbps]

    med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    ours_ms = med([r.ms_per_step for r in ours_runs])
    hf_ms = med([r.ms_per_step for r in hf_runs])
    fp32_ms = med([r.ms_per_step for r in fp32_runs])
    scores = scores or {}
    side_by_side = {  # --precision: ours in `precision` vs ours in fp32, same weights, same runs
        "precision": precision,
        "fp32_ms_per_step": fp32_ms,
        "speedup_vs_fp32": fp32_ms / ours_ms if fp32_ms is not None else None,
        "fp32_floor_ms_per_step": floor_ms(statistics.median(in_run), fb32) if side else None,
        "fp32_over_floor": med([over_floor(r, fb32) for r in fp32_runs]),
        "fp32_runs_ms_per_step": [r.ms_per_step for r in fp32_runs],
        "fp32_prefill_s": med([r.prefill_s for r in fp32_runs]),
        **{key: scores.get(key) for key in ("max_abs_logit_diff", "mean_kl", "top1_agreement", "top250_agreement",
                                            "greedy_frame_agreement")},
        "quality": scores or None,
        "quantized_layers": "the decoder blocks' linears (self-attention qkv/out, cross-attention q/kv/out, "
                            "feed-forward); embeddings, norms and text projection stay fp32, the 4 output heads "
                            + ("fp16 in the step (fp32 in prefill)" if heads_half else "fp32")
                            if quantize else None,
        "quantized_kernel": kernel_name,  # which product ran (engine/quant.py QuantLinear.kernel)
        "kv_cache_dtype": str(cache_dtype).removeprefix("torch."),
        "fused_block_step": fused,  # one kernels.cpp call per block and step (engine/lm.py StageLM._fused_step)
        "cpu_kernels": cpu_kernels,  # engine/kernels.py: built for this CPU, or why not
    }
    result = {
        "ours_ms_per_step": ours_ms,
        "transformers_ms_per_step": hf_ms,
        "ratio": hf_ms / ours_ms if hf_ms is not None else None,
        "ratio_definition": "transformers_ms_per_step / ours_ms_per_step (> 1: ours is faster)",
        "floor_ms_per_step": floor_ms(statistics.median(in_run)),
        "ours_over_floor": med([over_floor(r) for r in ours_runs]),
        "transformers_over_floor": med([over_floor(r, fb32) for r in hf_runs]),
        "ours_prefill_s": med([r.prefill_s for r in ours_runs]),
        "transformers_prefill_s": med([r.prefill_s for r in hf_runs]),
        "ours_to_last_step_s": med([r.total_s for r in ours_runs]),
        "transformers_to_last_step_s": med([r.total_s for r in hf_runs]),
        "ours_runs_ms_per_step": [r.ms_per_step for r in ours_runs],
        "transformers_runs_ms_per_step": [r.ms_per_step for r in hf_runs],
        "ours_runs_over_floor": [over_floor(r) for r in ours_runs],
        "transformers_runs_over_floor": [over_floor(r, fb32) for r in hf_runs],
        "repeats": args.repeats,
        "device": args.device,
        "dtype": args.dtype,
        "threads": threads,
        "ours_weights_packed": packed,
        "ours_compiled": args.compile,
        "ours_warmup_s": ours_warmup_s,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "transformers_cache_kwarg": hf_cache,
        "transformers_attn_implementation": attn_impl,
        "machine": {**machine_info(device), "loadavg_1min_at_start": load_start, **machine},
        "model": {"layers": args.layers, "dim": args.dim, "heads": args.heads, "ffn": args.ffn,
                  "codebooks": NUM_CODEBOOKS, "card": CARD, "weights": "random, identical on both sides"},
        "workload": {"context_frames": args.context_frames, "gen_frames": args.gen_frames, "batch": args.batch,
                     "rows": rows, "guidance": args.guidance, "top_k": args.top_k, "text_tokens": args.text_tokens,
                     "prefill_tokens": prefill_tokens, "decode_steps": steps, "avg_keys_per_decode_step": avg_keys},
        **side_by_side,
        "floor": {"fp32_bytes_per_step": fb32["total"], "bytes_per_step": fb["total"], "weight_bytes": fb["weights"], "self_kv_bytes": fb["self_kv"],
                  "cross_kv_bytes": fb["cross_kv"], "bandwidth_gbps": statistics.median(in_run),
                  "bandwidth_convention": "copies of a large tensor taken between decode steps of the timed runs "
                                          "(clock stopped meanwhile): (bytes read + bytes written) / time, median; "
                                          "the floor assumes a decode step streams its bytes at this rate",
                  "in_run_copy_gbps": in_run,
                  "separate_probe": {"copy_gbps": bw["copy_gbps"], "copy_one_way_gbps": bw["copy_one_way_gbps"],
                                     "sum_read_gbps": bw["sum_read_gbps"], "note": "fastest of 5, after the runs"},
                  "probe_mib": args.bw_mib, "probe_every_steps": probe_every},
    }
    table = format_table(result)
    if args.json:
        _log(table)
        print(json.dumps(result))
    else:
        print(table)
    return 0


def _ours_mode(r: dict) -> str:
    if r.get("ours_compiled"):
        return f" (ours: decode step compiled by Inductor; warm-up incl. compiling {r['ours_warmup_s']:.0f} s)"
    return " (ours: oneDNN-packed weights)" if r.get("ours_weights_packed") else ""


def format_table(r: dict) -> str:
    w, f, m = r["workload"], r["floor"], r["machine"]
    sep = f["separate_probe"]
    fmt = lambda x, spec: format(x, spec) if x is not None else "-"  # noqa: E731
    where = m.get("gpu") or m.get("cpu_model") or m.get("processor")
    lines = [
        f"decode benchmark: {r['model']['layers']} layers, d={r['model']['dim']}, {r['model']['heads']} heads, "
        f"ffn {r['model']['ffn']}, 4x{CARD} codebooks, random weights (identical on both sides)",
        f"{r['device']} ({where}), {r['dtype']}{_ours_mode(r)}, "
        f"{r['threads']} threads, torch {r['torch_version']}, "
        f"transformers {r['transformers_version']} (attn: {r['transformers_attn_implementation']})",
        f"context {w['context_frames']} frames, {w['gen_frames']} generated: prefill {w['prefill_tokens']} steps, "
        f"{w['decode_steps']} sampled steps, {w['rows']} rows (batch {w['batch']} x CFG {w['guidance']:g}), "
        f"top-k {w['top_k']}, text tokens {w['text_tokens']}; median of {r['repeats']}",
        "",
        f"{'ours ms/step':>13} {'transformers ms/step':>21} {'transformers/ours':>18} {'floor ms/step':>14} "
        f"{'ours/floor':>11}",
        f"{fmt(r['ours_ms_per_step'], '.2f'):>13} {fmt(r['transformers_ms_per_step'], '.2f'):>21} "
        f"{fmt(r['ratio'], '.2f'):>18} {fmt(r['floor_ms_per_step'], '.2f'):>14} {fmt(r['ours_over_floor'], '.2f'):>11}",
        "",
        f"prefill ({w['prefill_tokens']} steps x {w['rows']} rows): ours {fmt(r['ours_prefill_s'], '.3f')} s, "
        f"transformers {fmt(r['transformers_prefill_s'], '.3f')} s",
        f"call to last sampled step: ours {fmt(r['ours_to_last_step_s'], '.2f')} s, "
        f"transformers {fmt(r['transformers_to_last_step_s'], '.2f')} s",
        f"floor: {f['bytes_per_step'] / 1e9:.3f} GB read per step (weights {f['weight_bytes'] / 1e9:.3f} GB, "
        f"self-attn KV {f['self_kv_bytes'] / 1e9:.3f} GB at {w['avg_keys_per_decode_step']:.1f} keys avg, "
        f"cross KV {f['cross_kv_bytes'] / 1e9:.3f} GB) / {f['bandwidth_gbps']:.2f} GB/s",
        f"bandwidth during the runs ({len(f['in_run_copy_gbps'])} copies of {f['probe_mib']} MiB, one every "
        f"{f['probe_every_steps']} steps, (read + written bytes) / time): median {f['bandwidth_gbps']:.1f}, "
        f"range {min(f['in_run_copy_gbps']):.1f}-{max(f['in_run_copy_gbps']):.1f} GB/s",
        f"separate probe after the runs (fastest of 5): copy {sep['copy_gbps']:.1f} GB/s "
        f"({sep['copy_one_way_gbps']:.1f} each way), read-only sum {sep['sum_read_gbps']:.1f} GB/s",
        f"ours/floor per run (each against its own probes): "
        f"{', '.join(format(x, '.2f') for x in r['ours_runs_over_floor'])}",
    ]
    if r.get("fp32_ms_per_step") is not None:
        lines += [
            "",
            f"precision {r['precision']} vs fp32 (ours, same weights, same runs): {r['ours_ms_per_step']:.2f} vs "
            f"{r['fp32_ms_per_step']:.2f} ms/step = {r['speedup_vs_fp32']:.2f}x; floors {r['floor_ms_per_step']:.2f} vs "
            f"{r['fp32_floor_ms_per_step']:.2f} ms/step ({f['bytes_per_step'] / 1e9:.3f} vs "
            f"{f['fp32_bytes_per_step'] / 1e9:.3f} GB read per step)",
        ]
        if r.get("quality"):
            q = r["quality"]
            lines.append(
                f"quality vs fp32 ({q['compared_steps']} steps, teacher-forced): max |logit diff| "
                f"{q['max_abs_logit_diff']:.4f} (fp32 logits: std {q['fp32_logit_std']:.3f}, max |.| "
                f"{q['fp32_logit_max_abs']:.3f}), mean KL {q['mean_kl']:.2e}, top-1 agreement {q['top1_agreement']:.4f}, "
                f"top-250 {q['top250_agreement']:.4f}; greedy frames equal {q['greedy_frame_agreement']:.3f} "
                f"(first different: {q['greedy_first_different_frame']})")
    
    return "\n".join(lines)
