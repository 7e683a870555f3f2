"""The stem runner: one job in, published takes out, the same for the daemon and the CLI.

Why here and only here: a `StemJob` becomes the engine's `StemRequest` in exactly one place
(`stem_request`), so a new setting cannot reach the engine by one front end and not another;
and the takes are published with one sidecar (writer.take_sidecar, take_loudness and take_fits).

Why it also refuses and resumes: here a job meets the disk and the machine. What could never
finish is refused before any work (a name too long for the take files; more memory than is
free, engine/budget.py), and a job run again after a crash ends with exactly its takes under
their own names: its seed was fixed when it was made, and the takes the interrupted run
published are found by their sidecars (`published_takes`).
"""

from __future__ import annotations

import glob
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from ..atomic import open_regular, temp_name
from ..errors import Cancelled, StageError
from ..limits import MAX_FILE_NAME_BYTES
from .job import StemJob
from .protocol import ProtocolError
from ..audio.loudness import DEFAULT_OFFSET_LU
from .writer import publish_takes, take_fits, take_loudness, take_sidecar, take_stem

if TYPE_CHECKING:
    from ..audio import Audio
    from ..engine.budget import ContextShape, FreeMemory
    from ..engine.generate import StemRequest, StemResult
    from ..engine.model import StageModel
    from ..engine.sampling import SamplingParams

log = logging.getLogger("stage_bridge.runner")

EngineProgress = Callable[[int, int], None]  # (steps done, steps in all), as render_stem reports it


@dataclass(frozen=True)
class RenderSettings:
    """How to render, beyond what a job asks: the same for every job of a daemon or CLI run.

    `sample_rate`: the output rate of click-only jobs (a context file sets its own);
    `click_gain_db`, `sampling` None: the engine's defaults; `loudness_offset_lu`: how many LU
    under the context the takes arrive, None for as generated (so it has no "engine default"
    None). (How the model was loaded, its precision and decode mode, the sidecar reads from the
    model itself.)
    """

    sample_rate: int
    click_gain_db: float | None = None
    sampling: "SamplingParams | None" = None
    loudness_offset_lu: float | None = DEFAULT_OFFSET_LU


def load_context(job: StemJob, roots: Sequence[Path] = ()) -> "Audio | None":
    """The job's context audio; with `roots`, the file actually opened must lie in them (the path
    was checked when the job was accepted, but a link may have been swapped since)."""
    from ..audio import load_audio

    return load_audio(job.context_path, inside=roots or None) if job.context_path else None


def context_file_shape(path: str) -> "ContextShape | None":
    """The context file's shape from its header, without reading (or blocking on) its samples:
    opened without blocking and refused unless a regular file, as every input of the daemon."""
    import soundfile as sf

    from ..engine.budget import ContextShape

    if not path:
        return None
    try:
        with open_regular(Path(path)) as f:
            info = sf.info(f)
    except (OSError, RuntimeError, TypeError, ValueError):  # the worker reports the file's own error when it runs
        return None
    return ContextShape(info.frames, info.channels, info.samplerate)


def stem_request(job: StemJob, context: "Audio | None", settings: RenderSettings) -> "StemRequest":
    """The engine's request for `job`: the one place a job's settings reach the engine."""
    from ..engine.generate import StemRequest

    engine_defaults_unless_set = {k: v for k, v in (("click_gain_db", settings.click_gain_db),
                                                    ("sampling", settings.sampling)) if v is not None}
    return StemRequest(bpm=job.bpm, bars=job.bars, context=context, beats_per_bar=job.beats_per_bar,
                       beat_unit=job.beat_unit, offset=job.offset, context_mode=job.context_mode, prompt=job.prompt,
                       takes=job.takes, candidates=job.candidates, seed=job.seed, sample_rate=settings.sample_rate,
                       loudness_offset_lu=settings.loudness_offset_lu, **engine_defaults_unless_set)


def check_output_name(job: StemJob) -> None:
    """Refuse, before generating, a name whose take files the filesystem could not create.

    The longest name publishing makes is the hidden temp file (atomic.temp_name) of the last
    take's sidecar with a collision number; file names are limited in bytes."""
    longest = temp_name(f"{take_stem(job.name, job.instrument, job.bpm, job.takes)}-999.json")
    over = len(longest.encode()) - MAX_FILE_NAME_BYTES
    if over > 0:
        raise ProtocolError("bad_request", f"the name {job.name[:40]!r}... is too long for the take files' names "
                                           f"(at most {MAX_FILE_NAME_BYTES} bytes each): shorten it by at least "
                                           f"{over} characters and send it again.")


def context_shape(audio: "Audio | None") -> "ContextShape | None":
    from ..engine.budget import ContextShape

    return None if audio is None else ContextShape(audio.samples.shape[1], audio.samples.shape[0], audio.sample_rate)


def published_takes(outbox: Path, job: StemJob) -> dict[int, Path]:
    """The takes of `job` already in `outbox` (published by a run of it that was interrupted):
    take number -> WAV. A take counts when its sidecar names this job (its id and every setting,
    the seed included) and its WAV is there: the sidecar is published first and the WAV last,
    so both there means the take is whole."""
    found: dict[int, Path] = {}
    for k in range(1, job.takes + 1):
        base = take_stem(job.name, job.instrument, job.bpm, k)
        for meta in outbox.glob(glob.escape(base) + "*.json"):
            if not re.fullmatch(re.escape(base) + r"(-\d+)?", meta.stem) or not meta.with_suffix(".wav").is_file():
                continue
            try:
                with open_regular(meta) as f:
                    data = json.loads(f.read(1 << 20))
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and data.get("job_id") == job.id and data.get("take") == k \
                    and all(data.get(key) == value for key, value in job.params().items()):
                found[k] = meta.with_suffix(".wav")
    return found


def render_and_publish(model: "StageModel", job: StemJob, request: "StemRequest", outbox: Path,
                       settings: RenderSettings, progress: EngineProgress | None = None,
                       should_cancel: Callable[[], bool] | None = None,
                       free_memory: "FreeMemory | None" = None,
                       interrupted: Mapping[int, Path] | None = None) -> tuple[list[Path], "StemResult"]:
    """Render `request` (built by `stem_request`) and publish its takes into `outbox`.

    Refused before any work: a name too long for the take files, a request needing more memory
    than `free_memory` (default: what the OS reports) says is free (`TooLarge`). Nothing is
    written if `should_cancel` turns true before publishing (`Cancelled`). `interrupted`: the
    takes an interrupted run of this job published (`published_takes`); rendered again with
    the job's seed they are the same takes, and publishing them again under their own names is
    what keeps a job to exactly its number of takes (they are removed just before)."""
    from ..engine import budget
    from ..engine.generate import render_stem

    check_output_name(job)
    free = (free_memory or budget.free_memory)(model.device)
    if request.context is not None:  # already loaded: that memory is the estimate's, not taken from what is free
        free = budget.Memory(free.host + request.context.samples.nbytes, free.device)
    budget.check_fits(model, request, context_shape(request.context), free)
    result = render_stem(model, request, progress=progress, should_cancel=should_cancel)
    if should_cancel is not None and should_cancel():
        raise Cancelled("cancelled before writing")
    sidecar = take_sidecar(job, model, request, result)
    found = dict(interrupted or {})
    missing = [k for k in range(1, len(result.takes) + 1) if k not in found]
    own = [{**loudness, **fit} for loudness, fit in zip(take_loudness(result), take_fits(result), strict=True)]
    t_write = time.perf_counter()
    new = publish_takes(outbox, job.name, job.instrument, job.bpm, [result.takes[k - 1] for k in missing],
                        result.sample_rate, sidecar, [own[k - 1] for k in missing], numbers=missing)
    result.timings["write_s"] = time.perf_counter() - t_write  # after the sidecars: the log says it
    log.info("job %s: %s", job.id, ", ".join(f"{k} {v:.3f}" for k, v in result.timings.items()))
    found.update(zip(missing, new))
    return [found[k] for k in sorted(found)], result


@dataclass
class StemRunner:
    """The daemon's runner (jobs.Runner): the job's instrument picks its warm model.

    `models`: instrument -> StageModel, or the StageError saying why it could not load.
    """

    models: Mapping[str, "StageModel | StageError"]
    outbox: Path
    settings: RenderSettings
    roots: Sequence[Path] = ()  # the folders a context file may be read from (jobs.readable_roots)
    free_memory: "FreeMemory | None" = None  # None: what the OS reports (engine/budget.free_memory)

    def admit(self, job: StemJob) -> None:
        """Refuse now what could never run, before the job is queued (ProtocolError, as every
        refusal of a front end): a name too long for the take files (`bad_request`), more memory
        than is free (`too_large`, the context's length read from its file's header)."""
        from ..engine import budget
        from ..errors import TooLarge

        check_output_name(job)
        model = self.models.get(job.instrument)
        if model is None or isinstance(model, StageError):
            return  # the job fails with the model's own error when it runs
        try:
            budget.check_fits(model, stem_request(job, None, self.settings), context_file_shape(job.context_path),
                              (self.free_memory or budget.free_memory)(model.device))
        except TooLarge as e:
            raise ProtocolError(e.code, str(e)) from None

    def __call__(self, job: StemJob, progress: Callable[[float], None], should_cancel: Callable[[], bool]) -> list[str]:
        model = self.models.get(job.instrument)
        if isinstance(model, StageError):
            raise model
        if model is None:
            raise ProtocolError("bad_instrument", "no model loaded.")
        check_output_name(job)
        interrupted = published_takes(self.outbox, job) if job.seed is not None else {}
        if len(interrupted) == job.takes:  # all published before the daemon was stopped: nothing to do again
            progress(100.0)
            return [str(interrupted[k]) for k in sorted(interrupted)]
        request = stem_request(job, load_context(job, self.roots), self.settings)
        progress(0.0)
        paths, _ = render_and_publish(model, job, request, self.outbox, self.settings,
                                      progress=lambda done, total: progress(95.0 * done / total),
                                      should_cancel=should_cancel, free_memory=self.free_memory,
                                      interrupted=interrupted)
        progress(100.0)
        return [str(p) for p in paths]
