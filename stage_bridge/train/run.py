"""`stage-bridge train`: fine-tune MusicGen into a STAGE model for one instrument.

    stage-bridge train prepare --data DIR            (optional: analyse the songs ahead, resumable)
    stage-bridge train --data DIR --instrument drums --base facebook/musicgen-small --out RUN_DIR

Single process by default; launched by `torchrun` (RANK / WORLD_SIZE / LOCAL_RANK set) it trains
with DistributedDataParallel, one process per GPU, and only rank 0 logs and saves.
See docs/training.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..argtypes import real, whole_number
from ..atomic import write_atomic
from ..errors import BadArgument, StageError

if TYPE_CHECKING:
    import torch

    from .trainer import DistInfo

# torch, the engine and the trainer are imported when training starts: `add_train_arguments` is
# called whenever the CLI builds its parser, which must stay fast.

TRAIN_CONFIG = "train_config.json"
# Options that define the run: on --resume they come from train_config.json, not the command line.
RUN_DEFINING = ("data", "instrument", "base", "batch", "grad_accum", "seed", "phase1_steps", "warmup_steps", "lr",
                "sep_lr", "context_dropout", "text_dropout", "word_dropout", "weight_decay", "clip", "clip_mode",
                "loss_mask", "split", "valid_per_song", "tracker")
# Settings of runs made before an option existed: what those runs did.
OLD_RUN_DEFAULTS = {"word_dropout": 0.0, "clip_mode": "norm", "loss_mask": "all", "split": "hash", "valid_per_song": 4,
                    "tracker": "librosa"}
CODEC_RATE, CODEC_HOP = 32000, 640  # MusicGen's EnCodec: what `train prepare` analyses for without a model


# How long a process may wait for the others at a barrier or collective. Song preparation is
# shared by all processes (each analyses every world-th song), so the longest wait is one
# share of it; an hour covers thousands of songs. torch's default (10 min for NCCL) does not.
PROCESS_GROUP_TIMEOUT = datetime.timedelta(hours=1)


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = parser
    p.add_argument("action", nargs="?", choices=("prepare",),
                   help="prepare: only analyse the songs of --data (decode, activity, beats) into the cache, "
                        "with a progress bar; resumable. `train` does it first anyway")
    p.add_argument("--data", type=Path, default=None,
                   help="folder of songs with separated stems (see docs/training.md); required unless --resume")
    p.add_argument("--instrument", default=None, help="the stem to learn to generate (drums, bass, ...); "
                   "required unless --resume")
    p.add_argument("--base", default="facebook/musicgen-small",
                   help="model to start from: facebook/musicgen-small, a STAGE .safetensors or a run folder")
    p.add_argument("--out", type=Path, default=None, help="run folder (must be new or empty unless --resume); "
                   "required to train")
    p.add_argument("--tracker", choices=("auto", "librosa", "beat_this"), default="auto",
                   help="beat tracker for songs without beats: auto = Beat This when its package and local "
                        "checkpoint are here (what the STAGE paper used), else librosa")
    p.add_argument("--steps", type=whole_number(1), default=1_000,
                   help="optimizer steps in all (default 1000, the paper's)")
    p.add_argument("--batch", type=whole_number(1), default=2, help="examples per micro-batch and process (default 2)")
    p.add_argument("--grad-accum", type=whole_number(1), default=4, help="micro-batches per optimizer step (default 4)")
    p.add_argument("--precision", default="auto", type=precision_choice,
                   help="autocast precision: auto, fp32, bf16 or fp16; master weights stay fp32 "
                        "(auto: bf16 on a GPU that has it, else fp32)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--device", default="auto", help="auto, cuda, cuda:N, mps or cpu (torchrun: one GPU per process)")
    p.add_argument("--valid-every", type=whole_number(1), default=100,
                   help="validation loss every K steps (default 100)")
    p.add_argument("--valid-per-song", type=whole_number(1), default=4,
                   help="validation windows per validation song, fixed for the whole run (default 4)")
    p.add_argument("--save-every", type=whole_number(1), default=250,
                   help="checkpoint every K steps, at the end and on Ctrl-C/SIGTERM (default 250)")
    p.add_argument("--keep-checkpoints", type=whole_number(1), default=1, help="how many checkpoints to keep")
    p.add_argument("--log-every", type=whole_number(1), default=10, help="metrics row every K steps")
    p.add_argument("--seed", type=int, default=0, help="data order, split and dropout draws")
    p.add_argument("--phase1-steps", type=whole_number(0), default=200, help="steps training only the context token (default 200)")
    p.add_argument("--warmup-steps", type=whole_number(0), default=500, help="phase-2 learning-rate ramp (default 500)")
    p.add_argument("--lr", type=real(0.0), default=1e-5, help="phase-2 learning rate of the LM weights (default 1e-5)")
    p.add_argument("--sep-lr", type=real(0.0), default=1e-4, help="context-token learning rate in phase 1 (default 1e-4)")
    p.add_argument("--context-dropout", type=real(0.0, 1.0), default=0.1, help="P(context replaced by padding)")
    p.add_argument("--text-dropout", type=real(0.0, 1.0), default=0.5,
                   help="P(prompt dropped); 1 trains without prompts (no T5 needed)")
    p.add_argument("--word-dropout", type=real(0.0, 1.0), default=0.3, help="P(a word of a kept prompt dropped)")
    p.add_argument("--weight-decay", type=real(0.0), default=1e-3)
    p.add_argument("--clip", type=real(0.0), default=1.0, help="gradient clipping threshold (0: off)")
    p.add_argument("--clip-mode", choices=("value", "norm"), default="value",
                   help="value: each gradient element clipped to [-clip, clip], as the STAGE paper trained "
                        "(default); norm: the global gradient norm")
    p.add_argument("--loss-mask", choices=("valid", "all"), default="valid",
                   help="valid: score only the delay pattern's valid steps, as STAGE (default); all: every "
                        "target code")
    p.add_argument("--split", choices=("hash", "artist", "reference"), default="hash",
                   help="song split: hash of the name (default), artist-aware, or the reference's last 24 "
                        "songs by name for validation")
    p.add_argument("--num-workers", type=whole_number(0), default=0, help="DataLoader worker processes")
    p.add_argument("--cache", type=Path, default=None,
                   help="token cache folder, shared by runs (default: the per-user data folder's train-cache)")
    p.add_argument("--weights-dir", type=Path, default=None, help="where named weights live")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


# -- distributed -----------------------------------------------------------------------------------

def init_distributed(device_arg: str) -> tuple[DistInfo, torch.device]:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK: join the process group, one GPU per process."""
    import torch

    from ..engine.model import pick_device
    from .trainer import DistInfo

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ:
        return DistInfo(), pick_device(device_arg)
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    base = pick_device(device_arg)
    if base.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif base.type == "cpu":
        device, backend = base, "gloo"
    else:
        raise BadArgument(f"multi-process training runs on CUDA GPUs (or CPU), not {base.type}")
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=PROCESS_GROUP_TIMEOUT)
    return DistInfo(rank, world, local_rank), device


def _finish_distributed(info: DistInfo) -> None:
    """End the process group once nothing else holds it. Why the order matters: a DDP wrapper's
    Reducer holds the group too; freed after `destroy_process_group` it holds the last reference
    and destroys the Gloo group with the GIL held (pybind11 frees the Reducer without releasing
    it), joining Gloo's worker threads, while a worker freeing a finished allreduce whose tensors
    Python owns waits for the GIL: both wait forever (CI met it: the trained run never exited;
    the blocking destructor is pytorch/pytorch#56297). So the model goes first (`_train`'s frame,
    any reference cycles), then the group, whose own binding frees it without the GIL
    (`intrusive_ptr_no_gil_destructor_trampoline_class_`, pytorch/pytorch#154976)."""
    if info.enabled:
        import gc

        import torch.distributed as dist

        gc.collect()
        if dist.is_initialized():
            dist.destroy_process_group()


def _barrier(info) -> None:
    if info.enabled:
        import torch.distributed as dist
        dist.barrier()


# -- the command -----------------------------------------------------------------------------------

def precision_choice(name: str) -> str:
    """--precision: "auto" or a name of the engine's precision table. Imported only when the
    option is parsed, so that building the CLI's parser never loads torch."""
    from ..engine.model import PRECISIONS

    if name != "auto" and name not in PRECISIONS:
        raise argparse.ArgumentTypeError(f"invalid choice: {name!r} (choose from auto, {', '.join(PRECISIONS)})")
    return name


def resolve_precision(name: str, device) -> str:
    """"auto" -> bf16 on a GPU that has it, else fp32; an explicit precision must suit the device."""
    import torch

    from .trainer import check_precision

    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    check_precision(name, device)
    return name


def _settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    keys = RUN_DEFINING + ("precision", "steps", "valid_every", "save_every", "keep_checkpoints",
                           "log_every", "num_workers")
    out = {k: getattr(args, k) for k in keys}
    out["data"] = str(Path(args.data).expanduser().resolve()) if args.data is not None else None
    base = Path(args.base).expanduser()
    out["base"] = str(base.resolve()) if base.exists() else args.base
    out["cache"] = str(Path(args.cache).expanduser().resolve()) if args.cache else str(default_cache_dir())
    return out


def _train_config(s: dict[str, Any], precision: str, progress: bool, meta: dict):
    from .schedule import ScheduleConfig
    from .trainer import TrainConfig

    return TrainConfig(
        steps=s["steps"], batch=s["batch"], grad_accum=s["grad_accum"], precision=precision,
        schedule=ScheduleConfig(phase1_steps=s["phase1_steps"], warmup_steps=s["warmup_steps"], sep_lr=s["sep_lr"],
                                lr=s["lr"], sep_final_lr=s["lr"]),
        weight_decay=s["weight_decay"], clip=s["clip"], clip_mode=s["clip_mode"], context_dropout=s["context_dropout"],
        text_dropout=s["text_dropout"], word_dropout=s["word_dropout"], valid_steps_only=s["loss_mask"] == "valid",
        valid_every=s["valid_every"],
        save_every=s["save_every"], keep_checkpoints=s["keep_checkpoints"], log_every=s["log_every"], seed=s["seed"],
        num_workers=s["num_workers"], progress=progress, meta=meta)


def _prepare_run_dir(run_dir: Path, resume: bool, info) -> None:
    if resume:
        if not (run_dir / TRAIN_CONFIG).is_file():
            raise BadArgument(f"--resume: {run_dir} is not a training run (no {TRAIN_CONFIG}).")
        return
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise BadArgument(f"{run_dir} already exists and is not empty: choose a new --out, or add --resume to "
                          "continue the run in it.")
    if info.main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BadArgument(f"cannot create the run folder {run_dir} ({e.strerror or e}).") from None


def default_cache_dir() -> Path:
    from ..paths import user_data_dir
    return user_data_dir() / "train-cache"


def prepare_songs(data: Path, cache: Path, tracker: str, progress: bool, info=None, sr: int = CODEC_RATE,
                  hop: int = CODEC_HOP) -> list:
    """Discover the songs of ``data`` and analyse each once into ``cache`` (resumable; with several
    processes each analyses its share, then all wait for the others). Returns the songs."""
    from .dataset import discover_songs, prepare

    songs, warnings = discover_songs(Path(data))  # logs each warning itself
    rank, world = (info.rank, info.world) if info is not None else (0, 1)
    done, failed = prepare(songs, sr, hop, Path(cache), tracker, progress=progress, rank=rank, world=world)
    if warnings and rank == 0:
        print(f"note: {len(songs)} songs found, {len(warnings)} skipped (see the warnings above)", file=sys.stderr)
    if info is not None:
        _barrier(info)
    return songs


def build_datasets(settings: dict[str, Any], model, run_dir: Path, resume: bool, write: bool, songs: list):
    """Songs -> split (split.json; re-read on --resume) -> the train and valid datasets."""
    import copy

    from .dataset import SPLIT_FILE, StemPairDataset, normalize_stem, read_split, split_songs, write_split

    by_name = {s.name: s for s in songs}
    if resume and (run_dir / SPLIT_FILE).exists():
        split = read_split(run_dir)
    else:
        mode = settings["split"]
        eligible = [s for s in songs if normalize_stem(settings["instrument"]) in s.stems] if mode == "reference" \
            else songs  # the reference splits the songs that have the target stem
        split = split_songs(eligible, settings["seed"], mode=mode)
        if write:
            write_split(run_dir, split)
    gone = [n for part in ("train", "valid") for n in split[part] if n not in by_name]
    if gone:
        print(f"warning: {len(gone)} song(s) of the run's split are no longer usable in {settings['data']} "
              f"(e.g. {gone[0]})", file=sys.stderr)
    codec = model.codec
    if settings["num_workers"] > 0 and codec.device.type != "cpu":  # workers encode on the CPU
        from ..engine.codec import Codec
        codec = Codec(copy.deepcopy(codec.model).cpu(), codec.num_codebooks)
    cache = Path(settings["cache"])

    def make(part: str, fixed: bool):
        chosen = [by_name[n] for n in split[part] if n in by_name]
        if not chosen:
            return None
        return StemPairDataset(chosen, settings["instrument"], codec, cache, seed=settings["seed"], augment=not fixed,
                               fixed=fixed, per_song=settings["valid_per_song"], tracker=settings["tracker"])

    train = make("train", False)
    if train is None:
        raise BadArgument(f"no training songs: the split of {len(songs)} song(s) left none for training.")
    try:
        valid = make("valid", True)
    except StageError as e:  # e.g. no audible window in the few validation songs
        print(f"warning: no validation set ({e}); the validation loss is not computed", file=sys.stderr)
        valid = None
    return train, valid


def run_prepare(args: argparse.Namespace) -> int:
    """`stage-bridge train prepare --data DIR`: the analysis `train` starts with, on its own."""
    try:
        if args.data is None:
            raise BadArgument("train prepare needs --data DIR (the songs to analyse).")
        cache = Path(args.cache).expanduser() if args.cache else default_cache_dir()
        _warn_without_rubberband()
        songs = prepare_songs(args.data, cache, args.tracker, progress=not args.quiet)
        print(f"prepared {len(songs)} songs in {cache}")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: songs analysed so far are kept; run the same command again to continue",
              file=sys.stderr)
        return 130
    except StageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _warn_without_rubberband() -> None:
    from .augment import rubberband_available

    if not rubberband_available():
        print("warning: pedalboard is not installed: speed/pitch augmentation uses the phase-vocoder fallback, "
              "which smears attacks by about 15 ms (targets too). Install the train extra: "
              "pip install -e '.[train]' (pedalboard is GPL-3.0).", file=sys.stderr)


def run_training(args: argparse.Namespace) -> int:
    """Entry point of `stage-bridge train` (and `train prepare`). Returns the exit status (0, 2 usage,
    128 + the signal when interrupted)."""
    if getattr(args, "action", None) == "prepare":
        return run_prepare(args)
    from . import checkpoint as ckpt_io
    from .trainer import DistInfo

    info = DistInfo()
    if args.out is None:
        print("error: --out RUN_DIR is required to train (the run folder).", file=sys.stderr)
        return 2
    run_dir = Path(args.out).expanduser()
    try:
        info, device = init_distributed(args.device)
        return _train(args, run_dir, info, device)
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", None)  # trainer.Interrupted: the last completed step was saved
        if info.main:
            last = ckpt_io.latest_checkpoint(run_dir) if run_dir.is_dir() else None
            where = (f"saved {last.name}" if signum is not None and last else
                     f"the last checkpoint ({last.name}) is intact" if last else "no checkpoint was written yet")
            print(f"\ninterrupted: {where}; continue with --resume", file=sys.stderr)
        return 128 + (signum or 2)
    except StageError as e:
        if info.main:
            print(f"error: {e}", file=sys.stderr)
        return 2
    except BaseException as e:
        import traceback

        traceback.clear_frames(e.__traceback__)  # `_train`'s locals (the model) go now, before the group ends
        raise
    finally:
        _finish_distributed(info)


def _train(args: argparse.Namespace, run_dir: Path, info: DistInfo, device: torch.device) -> int:
    """`run_training`'s work, in a frame of its own: the model, the trainer and its DDP wrapper are
    gone when it returns, before `_finish_distributed` ends the process group."""
    import torch

    from ..engine.checkpoints import resolve
    from ..engine.model import build_model
    from . import checkpoint as ckpt_io
    from .trainer import Trainer

    if not args.resume and (args.data is None or args.instrument is None):
        raise BadArgument("--data and --instrument are required (except with --resume).")
    _prepare_run_dir(run_dir, args.resume, info)
    _barrier(info)
    settings = _settings_from_args(args)
    step_dir = None
    if args.resume:
        stored = json.loads((run_dir / TRAIN_CONFIG).read_text())
        old = stored["settings"]
        defaults = add_train_arguments(argparse.ArgumentParser(add_help=False))
        given = [k for k in RUN_DEFINING if k not in ("data", "base") and getattr(args, k) != defaults.get_default(k)]
        changed = [k for k in given if k in old and old[k] != settings[k]]
        if changed and info.main:
            print("note: resuming with the run's own "
                  + ", ".join(f"--{k.replace('_', '-')} {old[k]}" for k in changed) + f" ({TRAIN_CONFIG})",
                  file=sys.stderr)
        moved_data = settings["data"]  # an explicit --data may point to where the songs are now
        settings.update({k: old.get(k, OLD_RUN_DEFAULTS.get(k)) for k in RUN_DEFINING
                         if k in old or k in OLD_RUN_DEFAULTS})
        if moved_data is not None:
            settings["data"] = moved_data
        if args.precision == "auto":  # an explicit --precision may change (exactness needs the same one)
            settings["precision"] = old.get("precision", "auto")
        step_dir = ckpt_io.latest_checkpoint(run_dir)
    precision = resolve_precision(settings["precision"], device)
    settings["precision"] = precision

    base_ckpt = resolve(str(step_dir) if step_dir is not None else settings["base"], args.weights_dir)
    if base_ckpt.meta.get("decoder_only"):
        raise BadArgument(f"{settings['base']} is a bare decoder without EnCodec/T5; use a full model "
                          "(facebook/musicgen-small).")
    model = build_model(base_ckpt, device, torch.float32, inference=False)
    if model.is_random and info.main:
        print(f"warning: model '{model.name}' has random weights (for tests and demos only)", file=sys.stderr)
    base_ckpt.lm_state, base_ckpt.codec_state = {}, {}  # the live modules hold the weights now
    if model.text is not None:
        base_ckpt.text_state = None

    meta = {"name": run_dir.resolve().name, "instrument": settings["instrument"],
            "base": base_ckpt.meta.get("base", settings["base"])}
    config = _train_config(settings, precision, progress=not args.quiet, meta=meta)
    config.validate()
    if info.main and not args.resume:
        stored = {"settings": settings, "train_config": config.to_dict(), "world_size": info.world,
                  "stage_bridge_version": __version__}
        write_atomic(run_dir / TRAIN_CONFIG, lambda f: f.write(json.dumps(stored, indent=2).encode()),
                     replace=True)
    if info.main:
        _warn_without_rubberband()
    songs = prepare_songs(Path(settings["data"]), Path(settings["cache"]), settings["tracker"],
                          progress=info.main and not args.quiet, info=info, sr=model.codec.sample_rate,
                          hop=model.codec.hop_length)
    train_set, valid_set = build_datasets(settings, model, run_dir, args.resume, write=info.main, songs=songs)

    trainer = Trainer(model, base_ckpt, train_set, valid_set, run_dir, config, info)
    if step_dir is not None:
        trainer.restore(step_dir, load_weights=False)  # the model was built from step_dir itself
        if info.main:
            print(f"resuming {run_dir} at step {trainer.step}", file=sys.stderr)
    if trainer.step >= config.steps:
        if info.main:
            print(f"the run is already at step {trainer.step} >= --steps {config.steps}; nothing to do "
                  "(raise --steps to train further)", file=sys.stderr)
        return 0
    trainer.fit()
    if info.main:
        print(f"trained {trainer.step} steps; the model is {run_dir} (stage-bridge generate --model {run_dir})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m stage_bridge.train.run ...` (what docs/training.md shows for torchrun)."""
    parser = argparse.ArgumentParser(prog="stage-bridge train", description="Fine-tune MusicGen into STAGE.")
    add_train_arguments(parser)
    return run_training(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
