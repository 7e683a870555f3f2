"""The stem runner: one job in, published takes out, the same for the daemon and the CLI.

Why here and only here: a `StemJob` becomes the engine's `StemRequest` in exactly one place
(`stem_request`), so a new setting cannot reach the engine by one front end and not another;
and the takes are published with one sidecar (writer.take_sidecar and writer.take_loudness).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

from ..errors import Cancelled, StageError
from .job import StemJob
from .protocol import ProtocolError
from ..audio.loudness import DEFAULT_OFFSET_LU
from .writer import publish_takes, take_loudness, take_sidecar

if TYPE_CHECKING:
    from ..audio import Audio
    from ..engine.generate import StemRequest, StemResult
    from ..engine.model import StageModel
    from ..engine.sampling import SamplingParams

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


def load_context(job: StemJob) -> "Audio | None":
    from ..audio import load_audio

    return load_audio(job.context_path) if job.context_path else None


def stem_request(job: StemJob, context: "Audio | None", settings: RenderSettings) -> "StemRequest":
    """The engine's request for `job`: the one place a job's settings reach the engine."""
    from ..engine.generate import StemRequest

    engine_defaults_unless_set = {k: v for k, v in (("click_gain_db", settings.click_gain_db),
                                                    ("sampling", settings.sampling)) if v is not None}
    return StemRequest(bpm=job.bpm, bars=job.bars, context=context, beats_per_bar=job.beats_per_bar,
                       beat_unit=job.beat_unit, offset=job.offset, context_mode=job.context_mode, prompt=job.prompt,
                       takes=job.takes, seed=job.seed, sample_rate=settings.sample_rate,
                       loudness_offset_lu=settings.loudness_offset_lu, **engine_defaults_unless_set)


def render_and_publish(model: "StageModel", job: StemJob, request: "StemRequest", outbox: Path,
                       settings: RenderSettings, progress: EngineProgress | None = None,
                       should_cancel: Callable[[], bool] | None = None) -> tuple[list[Path], "StemResult"]:
    """Render `request` (built by `stem_request`) and publish its takes into `outbox`.
    Nothing is written if `should_cancel` turns true before publishing (`Cancelled`)."""
    from ..engine.generate import render_stem

    result = render_stem(model, request, progress=progress, should_cancel=should_cancel)
    if should_cancel is not None and should_cancel():
        raise Cancelled("cancelled before writing")
    sidecar = take_sidecar(job, model, request, result)
    paths = publish_takes(outbox, job.name, job.instrument, job.bpm, result.takes, result.sample_rate, sidecar,
                          take_loudness(result))
    return paths, result


@dataclass
class StemRunner:
    """The daemon's runner (jobs.Runner): the job's instrument picks its warm model.

    `models`: instrument -> StageModel, or the StageError saying why it could not load.
    """

    models: Mapping[str, "StageModel | StageError"]
    outbox: Path
    settings: RenderSettings

    def __call__(self, job: StemJob, progress: Callable[[float], None], should_cancel: Callable[[], bool]) -> list[str]:
        model = self.models.get(job.instrument)
        if isinstance(model, StageError):
            raise model
        if model is None:
            raise ProtocolError("bad_instrument", "no model loaded.")
        request = stem_request(job, load_context(job), self.settings)
        progress(0.0)
        paths, _ = render_and_publish(model, job, request, self.outbox, self.settings,
                                      progress=lambda done, total: progress(95.0 * done / total),
                                      should_cancel=should_cancel)
        progress(100.0)
        return [str(p) for p in paths]
