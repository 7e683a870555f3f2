"""Publishing takes: unique names, atomic writes, a JSON sidecar per take.

A DAW or folder watcher must never see a partial file and nothing existing is ever
overwritten: each WAV is written to a hidden `.part` file in the destination folder and
hard-linked into place (which fails if the name was taken meanwhile; we then take the next
free name). The sidecar is published first and the WAV second, so even a kill -9 between the
two never leaves a take without its description; a sidecar left without its WAV is removed
by `remove_orphan_sidecars` when the daemon starts again.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..atomic import write_atomic
from ..audio import write_audio_atomic
from ..errors import OutputNotWritable


def ensure_writable(folder: Path) -> Path:
    """Create `folder` if needed and prove we can write there (before spending minutes generating)."""
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".stage-bridge-check-", suffix=".part"):
            pass
    except OSError as e:
        raise OutputNotWritable(f"cannot write to the output folder {folder} ({e.strerror or e}). "
                                "Choose another folder with --out or fix its permissions.") from None
    return folder.resolve()


def format_bpm(bpm: float) -> str:
    return f"{bpm:.3f}".rstrip("0").rstrip(".")


def take_stem(name: str, instrument: str, bpm: float, take: int) -> str:
    """`NAME.INSTRUMENT.BPMbpm.takeK` (e.g. `verse.drums.120bpm.take1`)."""
    safe = "".join(c if c.isalnum() or c in "-_ " else "_" for c in name).strip() or "stem"
    return f"{safe}.{instrument}.{format_bpm(bpm)}bpm.take{take}"


def write_json_atomic(path: Path, data: dict[str, Any]) -> Path:
    return write_atomic(path, lambda f: f.write(json.dumps(data, indent=2, sort_keys=True).encode()))


def remove_orphan_sidecars(folder: Path) -> list[Path]:
    """Delete our sidecars whose WAV never appeared (a crash between the two publications)."""
    removed = []
    for meta in Path(folder).glob("*.json"):
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("file") == meta.with_suffix(".wav").name and "take" in data \
                and not meta.with_suffix(".wav").exists():
            meta.unlink(missing_ok=True)
            removed.append(meta)
    return removed


def publish_takes(folder: Path, name: str, instrument: str, bpm: float, takes: Sequence[np.ndarray],
                  sample_rate: int, sidecar: dict[str, Any]) -> list[Path]:
    """Write every take (+ `.json` sidecar with `sidecar` and the take number); returns the WAV paths.

    If any take fails, the takes already written by this call are removed again.
    """
    written: list[Path] = []
    try:
        for k, audio in enumerate(takes, start=1):
            base = take_stem(name, instrument, bpm, k)
            for n in itertools.count(1):
                wav = folder / (base + (f"-{n}" if n > 1 else "") + ".wav")
                meta = wav.with_suffix(".json")
                if wav.exists() or meta.exists():
                    continue
                try:  # the sidecar first: a take must never be seen (or survive a kill -9) without it
                    write_json_atomic(meta, {**sidecar, "take": k, "file": wav.name})
                except FileExistsError:  # taken between the check and the link
                    continue
                try:
                    write_audio_atomic(wav, audio, sample_rate, subtype="FLOAT")
                except BaseException as e:
                    meta.unlink(missing_ok=True)
                    if isinstance(e, FileExistsError):
                        continue
                    raise
                written.append(wav)
                break
    except BaseException:
        for wav in written:
            for p in (wav, wav.with_suffix(".json")):
                p.unlink(missing_ok=True)
        raise
    return written
