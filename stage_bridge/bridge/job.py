"""One stem job as every front end asks for it: the frozen request the journal stores.

Why one type: the OSC handler, the inbox watcher and `stage-bridge generate` all build a
`StemJob`; the job queue journals it, the stem runner (runner.py) turns it into the engine's
request and the writer describes it in each take's sidecar. So a setting has one name and one
meaning from the wire to the file. What becomes of a job (queued, running, done, its outputs,
its error) lives apart from it, in jobs.py: the request never changes once made.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..limits import random_seed
from .protocol import DEFAULT_CONTEXT_MODE, GenerateRequest, ProtocolError, Tempo

DEFAULT_METER = 4  # beats_per_bar and beat_unit when neither the request nor the tempo source says
ADDED_PARAMS = ("candidates", "scores", "capture")  # fields added after the journal's format was fixed (see `params`)


@dataclass(frozen=True)
class StemJob:
    """Everything needed to render and name one job's takes, tempo and path already resolved.

    `source`: "osc", "inbox", "cli" or "capture"; `name`: the first part of the output file names;
    `tempo_source`: "request", "osc" or "midi"; `context_path`: resolved, or "" in click mode;
    `seed`: drawn when the job is made if the request gave none (`job_from_request`), so the
    journal holds it and a job run again after a crash makes the same takes. (None only in
    journals written before, and for the CLI without --seed: the engine then draws one.)
    `candidates`: how many takes are generated to keep the best `takes` (None: `takes`);
    `scores`: the front end asked for each take's scores in its reply (`/stage/job/done`).
    """

    id: str
    source: str
    name: str
    context_path: str
    instrument: str
    bars: int
    bpm: float
    tempo_source: str = "request"
    beats_per_bar: int = DEFAULT_METER
    beat_unit: int = DEFAULT_METER
    offset: float = 0.0
    prompt: str = ""
    takes: int = 1
    context_mode: str = DEFAULT_CONTEXT_MODE
    seed: int | None = None
    candidates: int | None = None
    scores: bool = False
    # capture mode (capturejob.py): where the context was cut from the input: bar, bars,
    # start_sample, sample_rate, dropouts, mapping_error_ms. None for every other job.
    capture: dict[str, Any] | None = None

    def params(self) -> dict[str, Any]:
        """The journal's `params` column (every field but the id, JSON-serialisable). A field of
        `ADDED_PARAMS` is stored only when it differs from its default, so a job that does not use
        it is journaled (and described in its sidecars) exactly as before: an older stage-bridge
        still reads the journal, and `from_params` gives a missing key its default."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "id" and not (f.name in ADDED_PARAMS and getattr(self, f.name) == f.default)}

    @classmethod
    def from_params(cls, job_id: str, params: Mapping[str, Any]) -> "StemJob":
        """Back from the journal (a key added since a row was written takes its default)."""
        return cls(job_id, **params)


def job_from_request(req: GenerateRequest, source: str, context_path: str, ambient: Tempo | None,
                     name: str | None = None) -> StemJob:
    """The job a request asks for: its own bpm, else the project tempo (and that tempo's meter
    where the request gives none), and its own seed, else one drawn now. `context_path` is
    already resolved (`resolve_context_path`)."""
    if req.bpm is not None:
        bpm, tempo_source, bpb, unit = req.bpm, "request", None, None
    elif ambient is not None:
        bpm, tempo_source, bpb, unit = ambient.bpm, ambient.source, ambient.beats_per_bar, ambient.beat_unit
    else:
        raise ProtocolError("no_tempo", "no tempo: send bpm with the request, or /stage/tempo, or run a "
                                        "MIDI clock into the daemon.")
    return StemJob(
        id=req.job_id, source=source, name=name or (Path(context_path).stem if context_path else req.job_id),
        context_path=context_path, instrument=req.instrument, bars=req.bars, bpm=bpm, tempo_source=tempo_source,
        beats_per_bar=req.beats_per_bar or bpb or DEFAULT_METER, beat_unit=req.beat_unit or unit or DEFAULT_METER,
        offset=req.offset, prompt=req.prompt, takes=req.takes, context_mode=req.context_mode,
        seed=req.seed if req.seed is not None else random_seed(), candidates=req.candidates, scores=req.scores)


def resolve_context_path(text: str, home: Path, roots: Sequence[Path]) -> str:
    """Resolve (symlinks included) and require an existing file inside one of `roots`;
    relative paths are relative to `home`. "" stays "" (click mode)."""
    if not text:
        return ""
    try:  # ~unknown-user, symlink loops (RuntimeError before 3.13), names too long, NUL bytes
        p = Path(text).expanduser()
        if not p.is_absolute():
            p = home / p
        real = p.resolve()
    except (OSError, RuntimeError, ValueError):
        raise ProtocolError("file_missing", f"{text[:200]} cannot be resolved to a file.") from None
    if not any(real == r or r in real.parents for r in roots):
        raise ProtocolError("forbidden_path", f"{text} is outside the folders the daemon may read "
                                              f"({', '.join(map(str, roots))}); start it with "
                                              "--allow-root FOLDER to allow more.")
    try:
        is_file = real.is_file()
    except (OSError, ValueError):
        is_file = False
    if not is_file:
        raise ProtocolError("file_missing", f"{text} does not exist (or is not a file).")
    return str(real)
