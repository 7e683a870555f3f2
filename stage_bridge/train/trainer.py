"""Fine-tuning MusicGen into STAGE: batches, the loss, and the training loop.

One training sequence is STAGE's `[context][context token][target]`, delay-interleaved exactly as
at inference (`engine.pattern.build_sequence`). Contexts of one batch differ in length: shorter
ones are left-padded with the pad token, which inside the conditioning part is invalid (masked
out of attention, positions counted from the first valid step), so a padded row computes exactly
what it would alone. Targets all have the same length.

The loss is MusicGen's: the logits at step s - 1 predict the tokens of step s; cross-entropy is
taken only where step s holds a target frame of that codebook, averaged per codebook, then over
the codebooks. The context, the context token and pattern holes are never targets. By default
only the pattern's *valid* steps are scored, as STAGE trains (`keep_only_valid_steps=True` in
giorgioskij/stage train_stage_drums.py; the rule is audiocraft's `valid_layout`, the first
T + 1 steps of a T-frame delayed sequence): codebook q's last q frames are not scored.

Dropout of the conditioning, as STAGE trains it: with probability `context_dropout` an example's
whole context becomes padding (the unconditional branch of classifier-free guidance), with
probability `text_dropout` its prompt becomes "" (exactly zero cross-attention), and each word
of a kept prompt is dropped with probability `word_dropout` (STAGE's T5 conditioner:
conditioning/t5embedder.py, word_dropout=0.3, words split on spaces).

The context token's embedding rows live in a separate parameter during training (`SepTokenLM`)
so that they can have their own learning rate; they are merged back into the embedding tables
whenever weights are saved.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import signal
import sys
import threading
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..atomic import write_atomic
from ..engine.checkpoints import Checkpoint, load_state_file
from ..engine.lm import LMConfig, StageLM
from ..engine.model import PRECISIONS, StageModel
from ..engine.pattern import StageLayout, build_sequence, step_positions
from ..errors import BadArgument, WeightsMissing
from . import checkpoint as ckpt_io
from .schedule import Schedule, ScheduleConfig, build_optimizer

METRICS_CSV = "metrics.csv"
LOSS_PNG = "loss_curve.png"
TENSORBOARD_DIR = "tensorboard"
CSV_FIELDS = ("step", "phase", "loss", "valid_loss", "lr_main", "lr_sep", "seconds")


class ExampleLike(Protocol):
    """What the trainer needs of a `dataset.TrainExample`."""

    context: Tensor  # (K, Tc) long, pad allowed
    target: Tensor  # (K, Tt) long, every batch element the same Tt
    prompt: str


# -- batches and the loss --------------------------------------------------------------------------

@dataclass
class Batch:
    tokens: Tensor  # (B, K, S) long
    valid: Tensor  # (B, K, S) bool
    layout: StageLayout
    prompts: list[str]
    context_dropped: Tensor  # (B,) bool
    text_dropped: Tensor  # (B,) bool

    def __len__(self) -> int:
        return self.tokens.shape[0]


def make_batch(examples: Sequence[ExampleLike], cfg: LMConfig, device: torch.device | str = "cpu",
               context_dropout: float = 0.0, text_dropout: float = 0.0,
               generator: torch.Generator | None = None, word_dropout: float = 0.0) -> Batch:
    """Left-pad the contexts, apply conditioning dropout, lay out one STAGE sequence per example.

    The dropout draws come from `generator` (two uniform vectors per batch, then one uniform per
    word of every prompt, always drawn so the generator advances the same way whatever the
    probabilities).
    """
    if not examples:
        raise ValueError("empty batch")
    k, pad = cfg.num_codebooks, cfg.pad_id
    tt = examples[0].target.shape[-1]
    for ex in examples:
        if ex.target.ndim != 2 or ex.target.shape != (k, tt):
            raise ValueError(f"every target must be ({k}, {tt}) codes; got {tuple(ex.target.shape)}")
        if ex.context.ndim != 2 or ex.context.shape[0] != k:
            raise ValueError(f"every context must be ({k}, Tc) codes; got {tuple(ex.context.shape)}")
    b = len(examples)
    tc = max(ex.context.shape[-1] for ex in examples)
    context = torch.full((b, k, tc), pad, dtype=torch.long)
    for i, ex in enumerate(examples):
        n = ex.context.shape[-1]
        if n:
            context[i, :, tc - n:] = ex.context.long()
    target = torch.stack([ex.target.long() for ex in examples])
    if target.numel() and (target.min() < 0 or target.max() >= cfg.card):
        raise ValueError(f"target codes must be in [0, {cfg.card})")
    if context.numel() and (context.min() < 0 or context.max() > pad):
        raise ValueError(f"context codes must be in [0, {cfg.card}] ({cfg.card} = no context)")
    prompts = [str(ex.prompt or "") for ex in examples]
    if generator is not None:
        drop_ctx = torch.rand(b, generator=generator) < context_dropout
        drop_txt = torch.rand(b, generator=generator) < text_dropout
        prompts = [drop_words(p, word_dropout, generator) for p in prompts]
    else:
        drop_ctx = torch.zeros(b, dtype=torch.bool)
        drop_txt = torch.zeros(b, dtype=torch.bool)
    context[drop_ctx] = pad
    prompts = ["" if d else p for p, d in zip(prompts, drop_txt.tolist())]
    layout = StageLayout(tc, tt, k)
    tokens, valid = build_sequence(context.to(device), target.to(device), layout, cfg.card)
    return Batch(tokens, valid, layout, prompts, drop_ctx, drop_txt)


def drop_words(prompt: str, p: float, generator: torch.Generator) -> str:
    """Each space-separated word of ``prompt`` dropped with probability ``p`` (STAGE's T5 word
    dropout: conditioning/t5embedder.py `tokenize`); one uniform drawn per word whatever ``p``."""
    if not prompt:
        return prompt
    words = prompt.split(" ")
    keep = (torch.rand(len(words), generator=generator) >= p).tolist()
    return " ".join(w for w, k in zip(words, keep) if k)


def scored_frames(layout: StageLayout, q: int, valid_steps_only: bool = True) -> range:
    """Frame indices of codebook ``q`` the loss scores: the target frames, less the last ``q``
    when only valid steps count (a T-frame delayed sequence has T + 1 valid steps, and step s
    holds frame s - 1 - q of codebook q, so frames from T - q on fall outside them)."""
    end = layout.num_frames - (q if valid_steps_only else 0)
    return range(layout.target_offset, max(layout.target_offset, end))


def target_mask(layout: StageLayout, device: torch.device | str = "cpu", valid_steps_only: bool = True) -> Tensor:
    """(K, S) bool: the positions the loss is taken on (target frames of the delayed sequence)."""
    frame = layout.frame_of(device)
    q = torch.arange(layout.num_codebooks, device=device)[:, None]
    end = layout.num_frames - (q if valid_steps_only else 0)
    return (frame >= layout.target_offset) & (frame < end)


def codebook_cross_entropy(logits: Tensor, tokens: Tensor, layout: StageLayout,
                           valid_steps_only: bool = True) -> tuple[Tensor, Tensor]:
    """MusicGen's loss on the target codes only (`scored_frames` of each codebook).

    logits: (B, K, >= S' , card) of steps 0, 1, ... (step s - 1 predicts step s); S' is
    `num_frames` with ``valid_steps_only``, else S - 1. tokens: (B, K, S).
    Returns (sum over codebooks / K, (K,) per-codebook CE, detached); a codebook with no scored
    frame counts 0, as in STAGE's models/loss.py.
    Codebook k of target frame f sits at step f + 1 + k, so it is predicted by logits f + k.
    """
    per = []
    for q in range(layout.num_codebooks):
        frames = scored_frames(layout, q, valid_steps_only)
        if not len(frames):
            per.append(logits.new_zeros((), dtype=torch.float32))
            continue
        lo, hi = frames.start, frames.stop
        lq = logits[:, q, lo + q: hi + q]
        tq = tokens[:, q, lo + q + 1: hi + q + 1]
        per.append(F.cross_entropy(lq.reshape(-1, lq.shape[-1]).float(), tq.reshape(-1)))
    per_codebook = torch.stack(per)
    return per_codebook.mean(), per_codebook.detach()


Forward = Callable[[Tensor, Tensor, Tensor, "Tensor | None", "Tensor | None"], Tensor]


def stage_loss(forward: Forward, batch: Batch, text_states: Tensor | None = None,
               text_mask: Tensor | None = None, valid_steps_only: bool = True) -> tuple[Tensor, Tensor]:
    """One plain causal forward (no cache) and the target-only cross-entropy.

    With ``valid_steps_only`` the input stops at the last valid step, as STAGE builds it
    (`build_pattern_sequence(..., keep_only_valid_steps=True)`): causal attention makes the
    scored logits the same either way, the shorter input only saves work."""
    step_valid = batch.valid.any(1)
    positions = step_positions(step_valid)
    n = batch.layout.num_frames if valid_steps_only else batch.tokens.shape[-1] - 1
    logits = forward(batch.tokens[..., :n], positions[:, :n], step_valid[:, :n], text_states, text_mask)
    return codebook_cross_entropy(logits, batch.tokens, batch.layout, valid_steps_only)


# -- the context token as a parameter of its own ---------------------------------------------------

class SepTokenLM(nn.Module):
    """A StageLM whose context-token rows are the separate parameter `sep_rows` (K, dim).

    Forward hooks on the K embedding tables substitute `sep_rows[k]` wherever the context token
    appears and keep the pad row an exact zero (it never receives a gradient, as inference
    requires). The table rows `sep_id` themselves are unused until `merged_lm_state` /
    `merge` write `sep_rows` back.
    """

    def __init__(self, lm: StageLM):
        super().__init__()
        previous = lm.__dict__.get("_sep_token_owner")
        if previous is not None and previous() is not None:  # wrapped before: start from its rows
            previous().merge()
        lm.__dict__["_sep_token_owner"] = weakref.ref(self)  # (not a registered submodule)
        self.lm = lm
        sep = lm.cfg.sep_id
        self.sep_rows = nn.Parameter(torch.stack([e.weight.detach()[sep].clone() for e in lm.emb]))
        self._hooks = [e.register_forward_hook(self._make_hook(q)) for q, e in enumerate(lm.emb)]

    def _make_hook(self, q: int):
        sep, pad = self.lm.cfg.sep_id, self.lm.cfg.pad_id

        def hook(module: nn.Module, args: tuple, out: Tensor) -> Tensor:
            ids = args[0][..., None]
            out = torch.where(ids == sep, self.sep_rows[q].to(out.dtype), out)
            return out.masked_fill(ids == pad, 0.0)

        return hook

    def forward(self, tokens: Tensor, positions: Tensor, key_valid: Tensor, text_states: Tensor | None = None,
                text_mask: Tensor | None = None) -> Tensor:
        cross = self.lm.cross_context(text_states, text_mask) if text_states is not None else None
        return self.lm(tokens, positions, key_valid, 0, cross)

    def lm_parameters(self) -> list[nn.Parameter]:
        return list(self.lm.parameters())

    def set_phase(self, phase: int) -> None:
        """Phase 1: only `sep_rows` trains. Phase 2: every LM weight too."""
        self.sep_rows.requires_grad_(True)
        for p in self.lm.parameters():
            p.requires_grad_(phase >= 2)

    @torch.no_grad()
    def merged_lm_state(self) -> dict[str, Tensor]:
        """The LM's state on the CPU with `sep_rows` in the tables and exact-zero pad rows."""
        cfg = self.lm.cfg
        state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in self.lm.state_dict().items()}
        for q in range(cfg.num_codebooks):
            w = state[f"emb.{q}.weight"]
            w[cfg.sep_id] = self.sep_rows[q].detach().to("cpu", w.dtype)
            w[cfg.pad_id] = 0.0
        return state

    @torch.no_grad()
    def load_lm_state(self, state: dict[str, Tensor]) -> None:
        self.lm.load_state_dict(state, strict=True)
        self.sep_rows.copy_(torch.stack([e.weight[self.lm.cfg.sep_id] for e in self.lm.emb]))

    @torch.no_grad()
    def merge(self) -> StageLM:
        """Write `sep_rows` into the tables, remove the hooks and return the plain LM."""
        for q, e in enumerate(self.lm.emb):
            e.weight[self.lm.cfg.sep_id] = self.sep_rows[q].to(e.weight.dtype)
        self.lm.zero_pad_rows()
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self.lm.__dict__.pop("_sep_token_owner", None)
        return self.lm


# -- configuration ---------------------------------------------------------------------------------

CLIP_MODES = ("value", "norm")


@dataclass
class TrainConfig:
    """One run's settings. Defaults are the STAGE paper's and reference code's
    (train_stage_drums.py, training/train.py, models/lightning_musicgen.py): ~1,000 steps of
    batch 2 x 4 accumulated = 8, AdamW(1e-5, betas 0.9/0.95, decay 1e-3), gradients clipped by
    value at 1.0, context dropout 0.1, description dropout 0.5, word dropout 0.3, only valid
    steps scored. The reference trained in fp16 mixed precision; our GPU default is bf16 (no
    loss scaling needed), and ``precision="fp16"`` trains as the reference did."""

    steps: int = 1_000
    batch: int = 2
    grad_accum: int = 4
    precision: str = "fp32"  # a name of engine.model.PRECISIONS (autocast; master weights stay fp32)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    weight_decay: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    clip: float = 1.0
    clip_mode: str = "value"  # "value": each gradient element to [-clip, clip] (the reference's); "norm"
    context_dropout: float = 0.1
    text_dropout: float = 0.5
    word_dropout: float = 0.3
    valid_steps_only: bool = True  # score only the delay pattern's valid steps (the reference's mask)
    valid_every: int = 100
    save_every: int = 250
    keep_checkpoints: int = 1
    log_every: int = 10
    seed: int = 0
    num_workers: int = 0
    progress: bool = True
    meta: dict[str, Any] = field(default_factory=dict)  # stored in the saved model's stage_bridge.json

    def validate(self) -> None:
        for name in ("steps", "batch", "grad_accum", "valid_every", "save_every", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise BadArgument(f"{name} must be >= 1")
        if self.precision not in PRECISIONS:
            raise BadArgument(f"unknown precision {self.precision!r}; use one of {', '.join(PRECISIONS)}")
        if not all(0.0 <= p <= 1.0 for p in (self.context_dropout, self.text_dropout, self.word_dropout)):
            raise BadArgument("dropout probabilities must be within [0, 1]")
        if self.clip_mode not in CLIP_MODES:
            raise BadArgument(f"unknown clip mode {self.clip_mode!r}; use one of {', '.join(CLIP_MODES)}")
        try:
            self.schedule.validate()
        except ValueError as e:
            raise BadArgument(str(e)) from None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


def check_precision(precision: str, device: torch.device) -> None:
    """fp16 training needs a gradient scaler, which only CUDA has; bf16 and fp32 run anywhere."""
    if precision == "fp16" and device.type != "cuda":
        raise BadArgument("--precision fp16 needs a CUDA GPU (it uses a gradient scaler); use bf16 or fp32")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun job (world 1: a plain single process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


# -- data order that resumes exactly ---------------------------------------------------------------

class ResumableSampler(torch.utils.data.Sampler[int]):
    """DistributedSampler's order (a seeded permutation per epoch, padded to a multiple of the
    world size, every world-th index for this rank) that can start part-way into an epoch."""

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world: int = 1):
        self.size, self.seed, self.rank, self.world = size, seed, rank, world
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, start: int) -> None:
        self.start = start

    def rank_indices(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=g).tolist()
        per_rank = math.ceil(self.size / self.world) if self.size else 0
        total = per_rank * self.world
        if order and total > len(order):
            order += (order * math.ceil(total / len(order)))[: total - len(order)]
        return order[self.rank: total: self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self.rank_indices()[self.start:])

    def __len__(self) -> int:
        return max(0, (math.ceil(self.size / self.world) if self.size else 0) - self.start)


def _list_collate(examples: list) -> list:
    return examples


def _worker_ignores_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which stops at a safe point and
    saves (a terminal's Ctrl-C reaches every process of its group). SIGTERM is left alone: the
    DataLoader itself ends stuck workers with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# -- logging ---------------------------------------------------------------------------------------

class MetricsLog:
    """metrics.csv (always), TensorBoard (when importable); rows after `resume_step` are dropped."""

    def __init__(self, run_dir: Path, resume_step: int | None = None, tensorboard: bool = True):
        self.path = Path(run_dir) / METRICS_CSV
        if resume_step is not None and self.path.exists():
            rows = [r for r in read_metrics(self.path) if int(r["step"]) <= resume_step]
            write_atomic(self.path, lambda f: f.write(_csv_text(rows).encode()), replace=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self.file = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=CSV_FIELDS)
        if new:
            self.writer.writeheader()
            self.file.flush()
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception:  # tensorboard not installed: CSV only
                SummaryWriter = None
            if SummaryWriter is not None:
                self.tb = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR),
                                        purge_step=None if resume_step is None else resume_step + 1)

    def log(self, row: dict[str, Any]) -> None:
        self.writer.writerow({k: _fmt(row.get(k)) for k in CSV_FIELDS})
        self.file.flush()
        if self.tb is not None:
            step = int(row["step"])
            for key in ("loss", "valid_loss", "lr_main", "lr_sep"):
                if row.get(key) is not None:
                    self.tb.add_scalar(f"train/{key}" if key != "valid_loss" else "valid/loss", row[key], step)
            self.tb.flush()

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}" if abs(v) < 1e-3 and v != 0 else f"{v:.6f}"
    return str(v)


def _csv_text(rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def read_metrics(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_loss_curve(run_dir: Path) -> Path | None:
    """loss_curve.png from metrics.csv (None when matplotlib is missing or nothing was logged)."""
    path = Path(run_dir) / METRICS_CSV
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return None
    rows = read_metrics(path) if path.exists() else []
    train = [(int(r["step"]), float(r["loss"])) for r in rows if r.get("loss")]
    valid = [(int(r["step"]), float(r["valid_loss"])) for r in rows if r.get("valid_loss")]
    if not train and not valid:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1)
    if valid:
        ax.plot(*zip(*valid), label="valid", marker="o", markersize=3)
    phase2 = [int(r["step"]) for r in rows if r.get("phase") == "2"]
    if phase2 and train and phase2[0] > train[0][0]:
        ax.axvline(phase2[0], color="grey", linestyle=":", linewidth=1, label="phase 2")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (target codes)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        return write_atomic(Path(run_dir) / LOSS_PNG, lambda f: fig.savefig(f, format="png"), replace=True)
    finally:
        plt.close(fig)


# -- the trainer -----------------------------------------------------------------------------------

class Interrupted(KeyboardInterrupt):
    """Training stopped on a signal after saving its last completed step (`signum`: which)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _StopSignals:
    """While active, SIGINT and SIGTERM only set `signum` (the loop stops at a safe point); a
    second one raises KeyboardInterrupt at once. Only the main thread can own signal handlers:
    elsewhere nothing is installed and signals behave as before."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this micro-batch and saving the last step "
              "(again to abort without saving)", file=sys.stderr)

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


@dataclass
class StepRecord:
    step: int
    phase: int
    loss: float
    valid_loss: float | None
    lr_main: float
    lr_sep: float
    seconds: float


class Trainer:
    """Trains `model.lm` (fp32 master weights on `model.device`) on `train_set`.

    `base` describes the model the weights came from (configs, tokenizer, name); the weights
    themselves are read from the live modules whenever a checkpoint is written.
    """

    def __init__(self, model: StageModel, base: Checkpoint, train_set: torch.utils.data.Dataset,
                 valid_set: torch.utils.data.Dataset | None, run_dir: Path, config: TrainConfig,
                 dist: DistInfo = DistInfo()):
        config.validate()
        self.model, self.cfg, self.dist = model, config, dist
        self.run_dir = Path(run_dir)
        self.train_set, self.valid_set = train_set, valid_set
        self.device = model.device
        self.lm_cfg: LMConfig = model.lm.cfg
        if any(p.is_mkldnn for p in model.lm.parameters()):
            raise ValueError("this model's weights are packed for inference; build it with "
                             "build_model(..., inference=False) to train it")
        if next(model.lm.parameters()).dtype != torch.float32:
            raise ValueError("train with fp32 master weights (build_model(..., dtype=torch.float32)); "
                             "use --precision for mixed precision")
        check_precision(config.precision, self.device)
        self.text_enabled = config.text_dropout < 1.0
        if self.text_enabled and model.text is None:
            raise WeightsMissing(model.text_missing_reason + " (or train without prompts: --text-dropout 1)")

        for module in (model.codec.model, model.text.model if model.text is not None else None):
            if module is not None:
                module.eval().requires_grad_(False)
        model.lm.train()
        self.net = SepTokenLM(model.lm).to(self.device)
        self.ddp: nn.Module | None = None
        self.phase = 0
        self.schedule = Schedule(config.schedule)
        self.optimizer = build_optimizer([self.net.sep_rows], self.net.lm_parameters(), config.betas,
                                         config.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.dropout_gen = torch.Generator().manual_seed(config.seed * 1_000_003 + dist.rank)
        self.sampler = ResumableSampler(len(train_set), config.seed, dist.rank, dist.world)
        self.step = 0  # optimizer steps done
        self.epoch = 0
        self.micro_in_epoch = 0  # micro-batches of this epoch consumed (data position)
        self.elapsed = 0.0  # training seconds over all sessions
        self.last_saved_step: int | None = None
        self.best_valid: float | None = None  # lowest validation loss so far (its model is in best/)
        self._base = base
        self._frozen_states = self._capture_frozen_states()

    # -- pieces ------------------------------------------------------------------------------
    def _autocast(self):
        dtype = PRECISIONS[self.cfg.precision]
        if dtype == torch.float32:  # the master weights' own precision: nothing to cast
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _forward_module(self) -> nn.Module:
        return self.ddp if self.ddp is not None else self.net

    def _set_phase(self, phase: int) -> None:
        if phase == self.phase:
            return
        self.net.set_phase(phase)
        if self.dist.enabled:
            # DDP fixes the set of trainable parameters when it is built: wrap anew per phase.
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.ddp = None
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DDP(self.net, device_ids=ids, find_unused_parameters=not self.text_enabled)
        self.phase = phase

    def encode_text(self, prompts: list[str]) -> tuple[Tensor | None, Tensor | None]:
        if not self.text_enabled:
            return None, None
        states, mask = self.model.text.encode(prompts)  # inference tensors (T5 frozen)
        return states.clone(), mask.clone()

    def batch_loss(self, examples: Sequence[ExampleLike], train: bool) -> tuple[Tensor, Batch]:
        batch = make_batch(examples, self.lm_cfg, self.device,
                           self.cfg.context_dropout if train else 0.0, self.cfg.text_dropout if train else 0.0,
                           self.dropout_gen if train else None, self.cfg.word_dropout)
        states, mask = self.encode_text(batch.prompts)
        with self._autocast():
            loss, _ = stage_loss(self._forward_module() if train else self.net, batch, states, mask,
                                 self.cfg.valid_steps_only)
        return loss, batch

    def _loader(self, dataset, sampler, epoch: int) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            dataset, batch_size=self.cfg.batch, sampler=sampler, collate_fn=_list_collate,
            num_workers=self.cfg.num_workers, generator=torch.Generator().manual_seed(self.cfg.seed + epoch),
            pin_memory=False, worker_init_fn=_worker_ignores_stop_signals if self.cfg.num_workers else None)

    def _all_mean(self, value: float, weight: float = 1.0) -> float:
        if not self.dist.enabled:
            return value
        import torch.distributed as dist
        t = torch.tensor([value * weight, weight], dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return float(t[0] / t[1]) if t[1] > 0 else float("nan")

    def _barrier(self) -> None:
        if self.dist.enabled:
            import torch.distributed as dist
            dist.barrier()

    # -- validation --------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean loss over every example of the validation set (a fixed sample spread over all
        its songs, see `dataset.ValidationSet`), whatever the number of processes: each rank
        takes every world-th example, none twice, and the sums are added up. Every example has
        the same number of scored codes, so the mean of batch means weighted by batch size is
        the mean over examples."""
        if self.valid_set is None or len(self.valid_set) == 0:
            return None
        if hasattr(self.valid_set, "set_epoch"):
            self.valid_set.set_epoch(0)
        shard = list(range(self.dist.rank, len(self.valid_set), self.dist.world))
        total, count = 0.0, 0
        for examples in self._loader(self.valid_set, shard, 0):
            loss, batch = self.batch_loss(examples, train=False)
            total += float(loss) * len(batch)
            count += len(batch)
        if self.dist.enabled:
            mean = self._all_mean(total / max(count, 1), float(count))
            return None if math.isnan(mean) else mean
        return total / count if count else None

    # -- one optimizer step ------------------------------------------------------------------
    def _micro_step(self, examples: Sequence[ExampleLike], sync: bool) -> float:
        ctx = self.ddp.no_sync() if (self.ddp is not None and not sync) else contextlib.nullcontext()
        with ctx:
            loss, _ = self.batch_loss(examples, train=True)
            self.scaler.scale(loss / self.cfg.grad_accum).backward()
        return float(loss.detach())

    def _optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if self.cfg.clip > 0 and params:
            if self.cfg.clip_mode == "value":  # Lightning's gradient_clip_algorithm="value" (training/train.py)
                torch.nn.utils.clip_grad_value_(params, self.cfg.clip)
            else:
                torch.nn.utils.clip_grad_norm_(params, self.cfg.clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    # -- the loop ----------------------------------------------------------------------------
    def fit(self) -> list[StepRecord]:
        """Train until `config.steps` optimizer steps are done. Returns this session's records.

        Ctrl-C (SIGINT) or SIGTERM stops at the next micro-batch: the unfinished step's
        gradients are dropped, the data position and random states go back to where that step
        began, the last completed step is saved (atomically) and `Interrupted` is raised, so
        `--resume` continues exactly. A second signal, or any other exception, propagates at
        once and saves nothing (the last checkpoint stays as it was).
        """
        cfg = self.cfg
        if len(self.train_set) == 0:
            raise BadArgument("the training set is empty: no examples to train on")
        log = None
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt_io.remove_stale_temporaries(self.run_dir)
            log = MetricsLog(self.run_dir, resume_step=self.step)
        bar = None
        if self.dist.main and cfg.progress and self.step < cfg.steps:
            from tqdm import tqdm
            bar = tqdm(total=cfg.steps, initial=self.step, unit="step", desc="training", dynamic_ncols=True,
                       file=sys.stderr)
        session: list[StepRecord] = []
        accum, losses = 0, []
        t_last = time.perf_counter()
        stop = _StopSignals()
        try:
            with stop:
                while self.step < cfg.steps:
                    self.sampler.set_epoch(self.epoch)
                    self.sampler.set_start(self.micro_in_epoch * cfg.batch)
                    if hasattr(self.train_set, "set_epoch"):
                        self.train_set.set_epoch(self.epoch)
                    for examples in self._loader(self.train_set, self.sampler, self.epoch):
                        if accum == 0:
                            step_start = self._position()
                            self._set_phase(self.schedule.phase(self.step))
                            lr_main, lr_sep = self.schedule.apply(self.optimizer, self.step)
                        losses.append(self._micro_step(examples, sync=accum == cfg.grad_accum - 1))
                        accum += 1
                        self.micro_in_epoch += 1
                        if accum < cfg.grad_accum:
                            if self._stop_requested(stop):
                                self._rewind(step_start)
                                raise Interrupted(stop.signum)
                            continue
                        self._optimizer_step()
                        self.step += 1
                        now = time.perf_counter()
                        self.elapsed += now - t_last
                        t_last = now
                        loss = self._all_mean(sum(losses) / len(losses))
                        accum, losses = 0, []
                        valid_loss = (self.validate() if self.step % cfg.valid_every == 0 or self.step == cfg.steps
                                      else None)
                        t_last = time.perf_counter()  # validation time is not training time
                        rec = StepRecord(self.step, self.phase, loss, valid_loss, lr_main, lr_sep,
                                         round(self.elapsed, 3))
                        session.append(rec)
                        if log is not None and (self.step % cfg.log_every == 0 or valid_loss is not None
                                                or self.step == cfg.steps):
                            log.log(asdict(rec))
                        if bar is not None:
                            bar.update(1)
                            bar.set_postfix(loss=f"{loss:.4f}", phase=self.phase, refresh=False)
                        if valid_loss is not None and (self.best_valid is None or valid_loss < self.best_valid):
                            self.best_valid = valid_loss
                            self.save_best(valid_loss)
                        if self.step % cfg.save_every == 0 or self.step == cfg.steps:
                            self.save()
                        if self._stop_requested(stop):
                            raise Interrupted(stop.signum)
                        if self.step >= cfg.steps:
                            break
                    else:
                        self.epoch += 1
                        self.micro_in_epoch = 0
                        continue
                    break
        except Interrupted:
            self.optimizer.zero_grad(set_to_none=True)
            self.save()  # the last completed step (a no-op when it is saved already)
            raise
        finally:
            if bar is not None:
                bar.close()
            if log is not None:
                log.close()
        if self.dist.main:
            plot_loss_curve(self.run_dir)
        return session

    def _position(self) -> tuple[int, int, dict[str, Any]]:
        """Where an optimizer step begins: (epoch, micro-batch in it, every random state)."""
        return self.epoch, self.micro_in_epoch, ckpt_io.capture_rng({"dropout": self.dropout_gen})

    def _rewind(self, position: tuple[int, int, dict[str, Any]]) -> None:
        """Back to the start of an unfinished step (its micro-batches will be drawn again)."""
        self.epoch, self.micro_in_epoch, rng = position
        ckpt_io.restore_rng(rng, {"dropout": self.dropout_gen})

    def _stop_requested(self, stop: _StopSignals) -> bool:
        """Whether any process got a stop signal (all processes stop at the same micro-batch)."""
        if not self.dist.enabled:
            return stop.signum is not None
        import torch.distributed as dist
        flag = torch.tensor([0 if stop.signum is None else stop.signum], dtype=torch.int64,
                            device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and stop.signum is None:
            stop.signum = int(flag.item())
        return bool(flag.item())

    def save_best(self, valid_loss: float) -> None:
        """The model of the step with the lowest validation loss so far, in ``best/`` (rank 0)."""
        if self.dist.main:
            ckpt_io.save_best(self.run_dir, self.step, valid_loss, self.model_checkpoint())

    # -- checkpoints -------------------------------------------------------------------------
    def _capture_frozen_states(self) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
        codec = {k: v.detach().to("cpu", copy=True) for k, v in self.model.codec.model.state_dict().items()}
        if self.model.text is not None:
            text = {k: v.detach().to("cpu", copy=True) for k, v in self.model.text.model.state_dict().items()}
        else:
            text = self._base.text_state
        return codec, text

    def model_checkpoint(self) -> Checkpoint:
        """The whole model as it is now (merged context-token rows), ready for save_native."""
        b = self._base
        codec, text = self._frozen_states
        meta = dict(b.meta or {})
        meta.update(self.cfg.meta)
        meta.update({"trained_step": self.step, "trained_by": "stage-bridge train"})
        name = self.cfg.meta.get("name") or self.run_dir.name
        return Checkpoint(name, "native", b.lm_config, self.net.merged_lm_state(), b.codec_config, codec,
                          b.text_config, text, b.tokenizer, is_random=b.is_random, meta=meta)

    def trainer_state(self) -> dict[str, Any]:
        rng = ckpt_io.capture_rng({"dropout": self.dropout_gen})
        if self.dist.enabled:
            import torch.distributed as dist
            per_rank: list = [None] * self.dist.world
            dist.all_gather_object(per_rank, rng)
        else:
            per_rank = [rng]
        return {"version": ckpt_io.STATE_VERSION, "step": self.step, "epoch": self.epoch,
                "micro_in_epoch": self.micro_in_epoch, "elapsed": self.elapsed, "world": self.dist.world,
                "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": per_rank, "config": _plain(self.cfg.to_dict()),
                "best_valid": self.best_valid}

    def save(self) -> Path | None:
        """Checkpoint the current step (rank 0 writes; every rank takes part in gathering RNGs)."""
        if self.last_saved_step == self.step:
            return None
        state = self.trainer_state()
        path = None
        if self.dist.main:
            path = ckpt_io.save_checkpoint(self.run_dir, self.step, self.model_checkpoint(), state,
                                           keep=self.cfg.keep_checkpoints)
        self.last_saved_step = self.step
        self._barrier()
        return path

    def restore(self, step_dir: Path, load_weights: bool = True) -> None:
        """Continue exactly from a checkpoint written by `save`."""
        step_dir = Path(step_dir)
        state = ckpt_io.load_trainer_state(step_dir)
        if load_weights:
            weights = load_state_file(step_dir / ckpt_io.NATIVE_WEIGHTS)
            lm_state = {k[3:]: v for k, v in weights.items() if k.startswith("lm.")}
            self.net.load_lm_state({k: v.to(self.device) for k, v in lm_state.items()})
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.micro_in_epoch, self.elapsed = int(state["micro_in_epoch"]), float(state["elapsed"])
        self.schedule.load_state_dict(state["schedule"])
        # the optimizer's per-parameter state exists only for parameters that were trained
        self._set_phase(self.schedule.phase(self.step))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.best_valid = state.get("best_valid")
        rngs = state["rng"]
        if int(state.get("world", 1)) == self.dist.world:
            ckpt_io.restore_rng(rngs[self.dist.rank], {"dropout": self.dropout_gen})
        else:
            print(f"warning: the checkpoint was written by {state.get('world')} processes, this run has "
                  f"{self.dist.world}: the data order and dropout draws will differ from an uninterrupted run",
                  file=sys.stderr)
            ckpt_io.restore_rng(rngs[0])
            self.sampler = ResumableSampler(len(self.train_set), self.cfg.seed, self.dist.rank, self.dist.world)
            self.micro_in_epoch = (self.micro_in_epoch * int(state.get("world", 1))) // self.dist.world
        self.last_saved_step = self.step


def _plain(obj: Any) -> Any:
    """JSON-like values only (the trainer state loads with weights_only=True)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


__all__ = ["Batch", "make_batch", "target_mask", "codebook_cross_entropy", "stage_loss", "SepTokenLM",
           "TrainConfig", "DistInfo", "ResumableSampler", "MetricsLog", "plot_loss_curve", "read_metrics",
           "StepRecord", "Trainer"]
