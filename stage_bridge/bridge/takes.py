"""The take history: the journal's jobs with the takes the daemon wrote for them (read-only).

Why a module: the control room shows, keeps and deletes takes by an id, and that id must only
ever reach a file the daemon made. A take id is the WAV's file name in `outbox/`; it names a
take only when that name is a plain file name (no folder part, not hidden), the file is a regular
file directly in `outbox/` (a symlink is not), and its sidecar is ours: a JSON object whose
`file` is that name and which has a `take` number and a `job_id` (the sidecar `writer.py` writes
before every take). Nothing the page sends is ever used as a path.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..atomic import open_regular
from .jobs import Job
from .writer import format_bpm

_TAKE_ID = re.compile(r"[^./\\\x00-\x1f][^/\\\x00-\x1f]{0,250}\.wav")
MAX_SIDECAR_BYTES = 1 << 20  # ours are a few hundred bytes; a bigger .json is not ours


@dataclass(frozen=True)
class Take:
    """One published take: `id` (the WAV's name in outbox/), its path and its sidecar."""

    id: str
    path: Path
    sidecar: dict[str, Any]

    @property
    def meta_path(self) -> Path:
        return self.path.with_suffix(".json")

    def readable_name(self) -> str:
        """The name a kept copy gets: `verse - drums take 1 (120 bpm, seed 7).wav`."""
        s = self.sidecar
        name = str(s.get("name") or "take").strip() or "take"
        bpm = s.get("bpm")
        details = ", ".join(x for x in (f"{format_bpm(float(bpm))} bpm" if isinstance(bpm, (int, float)) else "",
                                        f"seed {s['seed']}" if isinstance(s.get("seed"), int) else "") if x)
        text = f"{name} - {s.get('instrument', '')} take {s.get('take', '')}" + (f" ({details})" if details else "")
        safe = "".join(c if c.isalnum() or c in " -_.()," else "_" for c in text).strip(" .") or "take"
        return safe[:200] + ".wav"


def read_sidecar(meta: Path) -> dict[str, Any] | None:
    """The sidecar at `meta` if it is a readable JSON object, else None (never blocks: open_regular)."""
    try:
        with open_regular(meta) as f:
            data = json.loads(f.read(MAX_SIDECAR_BYTES + 1) or b"null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def find_take(outbox: Path, take_id: str) -> Take | None:
    """The take called `take_id`, or None when no file the daemon made has that name."""
    if not isinstance(take_id, str) or not _TAKE_ID.fullmatch(take_id):
        return None
    wav = Path(outbox) / take_id
    try:
        st = os.lstat(wav)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    sidecar = read_sidecar(wav.with_suffix(".json"))
    if sidecar is None or sidecar.get("file") != take_id or "take" not in sidecar or "job_id" not in sidecar:
        return None
    return Take(take_id, wav, sidecar)


def job_takes(job: Job, outbox: Path) -> list[Take]:
    """The takes of `job` still in `outbox` (deleted or moved ones are left out), in take order."""
    found = []
    for output in job.outputs:
        p = Path(output)
        if p.parent.resolve() != Path(outbox).resolve():
            continue
        take = find_take(outbox, p.name)
        if take is not None and take.sidecar.get("job_id") == job.id:
            found.append(take)
    return sorted(found, key=lambda t: (t.sidecar.get("take") or 0, t.id))


def context_file(job: Job, roots: Sequence[Path]) -> Path | None:
    """The job's context file if it still exists inside the daemon's readable folders (the same
    rule a request's path passed), else None. Click-mode jobs have none."""
    if not job.spec.context_path:
        return None
    try:
        real = Path(job.spec.context_path).resolve()
        if not any(real == r or r in real.parents for r in roots):
            return None
        return real if stat.S_ISREG(os.stat(real).st_mode) else None
    except (OSError, RuntimeError, ValueError):
        return None
