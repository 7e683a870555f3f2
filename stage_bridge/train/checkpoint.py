"""Training checkpoints that a crash or Ctrl-C never corrupts.

Layout of a run folder:

    RUN_DIR/
      model.safetensors, stage_bridge.json   the latest weights: `resolve(RUN_DIR)` loads them, so
                                             `stage-bridge generate --model RUN_DIR` and the daemon work
      checkpoints/step-00001000/             one complete checkpoint per save (the last `keep`):
        model.safetensors, stage_bridge.json   the whole model (LM with the context-token rows
                                               merged, EnCodec, T5): a native stage-bridge model
        trainer_state.pt                       optimizer, schedule, GradScaler, RNG states, step,
                                               epoch and data position
      best/                                  the model of the step with the lowest validation loss
        model.safetensors, stage_bridge.json, best.json (its step and loss)

A checkpoint is written into a hidden temporary folder next to the others, fsynced, then renamed
to its final name in one atomic step: a `step-*` folder exists complete or not at all. Only then
are the top-level files replaced, each atomically by a hard link (or copy) of the new file
(`atomic.copy_atomic`). Whatever is interrupted, the previous checkpoint stays intact and loadable; `--resume`
always continues from the newest complete `step-*` folder.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import copy_atomic, fsync_folder, write_atomic
from ..engine.checkpoints import NATIVE_CONFIG, NATIVE_WEIGHTS, Checkpoint, save_native

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.pt"
BEST = "best"
BEST_INFO = "best.json"
STATE_VERSION = 1
DIR_MODE = 0o755  # readable by the daemon whatever user it runs as; mkdtemp alone gives 0700
_STEP_RX = re.compile(r"^step-(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RX.match(p.name)
        if m and p.is_dir() and all((p / f).is_file() for f in (NATIVE_WEIGHTS, NATIVE_CONFIG, TRAINER_STATE)):
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def remove_stale_temporaries(run_dir: Path) -> None:
    """Folders and files left by a save that was interrupted (never a complete checkpoint)."""
    root = Path(run_dir) / CHECKPOINTS
    for p in list(root.iterdir()) if root.is_dir() else []:
        if p.name.startswith(".") and p.name.endswith(".part"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    for p in Path(run_dir).glob(".*.part"):  # .best.*.part is a folder
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def save_checkpoint(run_dir: Path, step: int, model: Checkpoint, trainer_state: dict[str, Any],
                    keep: int = 1) -> Path:
    """Write checkpoint `step` atomically, point the run's top-level model at it, prune old ones."""
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    if final.exists():
        raise FileExistsError(f"{final} already exists")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".part", dir=root))
    try:
        save_native(model, tmp)  # each file fsynced and readable by all, like the next one
        write_atomic(tmp / TRAINER_STATE, lambda f: torch.save(trainer_state, f))
        os.chmod(tmp, DIR_MODE)
        fsync_folder(tmp)
        os.rename(tmp, final)
    except BaseException:  # KeyboardInterrupt included: leave nothing partial behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_folder(root)
    publish(run_dir, final)
    prune(run_dir, keep)
    return final


def save_best(run_dir: Path, step: int, valid_loss: float, model: Checkpoint) -> Path:
    """Make ``run_dir/best`` the model of `step` (the lowest validation loss so far).

    Written like a checkpoint into a hidden temporary folder, then each file is moved into
    ``best/`` by an atomic rename (weights, then the config, then ``best.json`` naming the step
    and loss last): a crash leaves either the old best model or the new one loadable."""
    run_dir = Path(run_dir)
    best = run_dir / BEST
    best.mkdir(parents=True, exist_ok=True)
    os.chmod(best, DIR_MODE)
    tmp = Path(tempfile.mkdtemp(prefix=".best.", suffix=".part", dir=run_dir))
    try:
        save_native(model, tmp)
        for name in (NATIVE_WEIGHTS, NATIVE_CONFIG):
            os.replace(tmp / name, best / name)
        info = json.dumps({"step": step, "valid_loss": valid_loss}).encode()
        write_atomic(best / BEST_INFO, lambda f: f.write(info), replace=True)
        fsync_folder(best)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return best


def publish(run_dir: Path, step_dir: Path) -> None:
    """Make `step_dir`'s model the run's top-level model (weights first, then its config)."""
    for name in (NATIVE_WEIGHTS, NATIVE_CONFIG):
        copy_atomic(step_dir / name, Path(run_dir) / name, replace=True)


def prune(run_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` (>= 1) checkpoints."""
    found = list_checkpoints(run_dir)
    for _, p in found[: max(0, len(found) - max(1, keep))]:
        shutil.rmtree(p, ignore_errors=True)


def load_trainer_state(step_dir: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    state = torch.load(Path(step_dir) / TRAINER_STATE, map_location=map_location, weights_only=True)
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"{step_dir / TRAINER_STATE}: unknown trainer-state version {state.get('version')}")
    return state


# -- random number generators ----------------------------------------------------------------------

def capture_rng(extra: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every RNG state as tensors and plain values (loadable with weights_only=True)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    for key, gen in (extra or {}).items():
        state[f"gen.{key}"] = gen.get_state()
    return state


def restore_rng(state: dict[str, Any], extra: dict[str, torch.Generator] | None = None) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    for key, gen in (extra or {}).items():
        gen.set_state(state[f"gen.{key}"])
