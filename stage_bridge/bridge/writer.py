"""Publishing takes: unique names, atomic writes, a JSON sidecar per take.

A DAW or folder watcher must never see a partial file and nothing existing is ever
overwritten: each WAV is written to a hidden `.part` file in the destination folder and
hard-linked into place (which fails if the name was taken meanwhile; we then take the next
free name). The sidecar follows the same way; if it cannot be written the take is removed,
so a take never exists without its description.
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
                try:
                    write_audio_atomic(wav, audio, sample_rate, subtype="FLOAT")
                except FileExistsError:  # taken between the check and the link
                    continue
                written.append(wav)
                write_json_atomic(meta, {**sidecar, "take": k, "file": wav.name})
                break
    except BaseException:
        for wav in written:
            for p in (wav, wav.with_suffix(".json")):
                p.unlink(missing_ok=True)
        raise
    return written
