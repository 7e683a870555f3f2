"""Publishing takes: unique names, atomic writes, a JSON sidecar per take.

A DAW or folder watcher must never see a partial file and nothing existing is ever
overwritten: each WAV is written to a hidden `.part` file in the destination folder and
hard-linked into place (which fails if the name was taken meanwhile; we then take the next
free name). The sidecar is published first and the WAV second, so even a kill -9 between the
two never leaves a take without its description; a sidecar left without its WAV is removed
by `remove_orphan_sidecars` when the daemon starts again. `take_sidecar` (what the takes of a job
share), `take_loudness` and `take_fits` (each take's own) are the one description of a take, whether the
daemon or `stage-bridge generate` made it.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from .. import __version__
from ..atomic import open_regular, write_atomic
from ..audio import write_audio_atomic
from ..errors import OutputNotWritable
from .job import StemJob

if TYPE_CHECKING:
    from ..engine.generate import StemRequest, StemResult
    from ..engine.model import StageModel


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


def take_sidecar(job: StemJob, model: "StageModel", request: "StemRequest", result: "StemResult") -> dict[str, Any]:
    """What every take's `.json` says (before its take number and file name): the job as asked,
    what the engine made of it (seed, length) and with what (model, device, settings, version)."""
    from ..engine.decoder import COMPILED

    sampling = request.sampling
    return {
        "job_id": job.id, **job.params(), "seed": result.seed,
        "model": model.name, "random_weights": model.is_random,
        "sample_rate": result.sample_rate, "num_samples": result.num_samples,
        "duration_s": result.num_samples / result.sample_rate,
        "guidance": sampling.guidance, "top_k": sampling.top_k, "top_p": sampling.top_p,
        "temperature": sampling.temperature, "click_gain_db": request.click_gain_db,
        "loudness_offset_lu": request.loudness_offset_lu,
        "device": str(model.device), "precision": model.precision, "decode_mode": model.decoder.mode,
        "compiled": model.decoder.mode == COMPILED,
        "timings": {k: round(v, 4) for k, v in result.timings.items()},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "stage_bridge": __version__,
    }


def take_loudness(result: "StemResult") -> list[dict[str, Any]]:
    """Each take's own sidecar fields, in take order: its loudness after matching (`lufs`), the
    context's (`context_lufs`) and the gain applied (`gain_db`). JSON has no infinity: what could
    not be measured (silence; no context in click mode) is null."""
    def db(x: float | None) -> float | None:
        return None if x is None else round(x, 2)

    return [{"lufs": db(m.lufs), "context_lufs": db(m.context_lufs), "gain_db": db(m.gain_db)}
            for m in result.loudness]


def take_fits(result: "StemResult") -> list[dict[str, Any]]:
    """Each take's scores (`fit`, audio/fit.Fit.as_dict; null where not measured) and its `rank`
    among all the candidates generated, in take order: takes are ranked best first, so take K
    has rank K."""
    return [{"fit": fit.as_dict(), "rank": k} for k, fit in enumerate(result.fits, start=1)]


def remove_orphan_sidecars(folder: Path) -> list[Path]:
    """Delete our sidecars whose WAV never appeared (a crash between the two publications).

    Anything else named `*.json` (a FIFO, a folder, a file that is not ours) is left alone and
    never blocks the start (`open_regular`)."""
    removed = []
    for meta in Path(folder).glob("*.json"):
        try:
            with open_regular(meta) as f:
                data = json.loads(f.read())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("file") == meta.with_suffix(".wav").name and "take" in data \
                and not meta.with_suffix(".wav").exists():
            meta.unlink(missing_ok=True)
            removed.append(meta)
    return removed


def publish_takes(folder: Path, name: str, instrument: str, bpm: float, takes: Sequence[np.ndarray],
                  sample_rate: int, sidecar: dict[str, Any], per_take: Sequence[Mapping[str, Any]] = (),
                  numbers: Sequence[int] = ()) -> list[Path]:
    """Write every take (+ `.json` sidecar: `sidecar`, the take's own `per_take` fields if given,
    the take number and file name); returns the WAV paths. `numbers`: the takes' numbers when
    they are not 1, 2, ... (a resumed job publishes only the takes it is missing).

    If any take fails, the takes already written by this call are removed again.
    """
    written: list[Path] = []
    try:
        for i, audio in enumerate(takes):
            k = numbers[i] if numbers else i + 1
            base = take_stem(name, instrument, bpm, k)
            for n in itertools.count(1):
                wav = folder / (base + (f"-{n}" if n > 1 else "") + ".wav")
                meta = wav.with_suffix(".json")
                if wav.exists() or meta.exists():
                    continue
                try:  # the sidecar first: a take must never be seen (or survive a kill -9) without it
                    own = per_take[i] if per_take else {}
                    write_json_atomic(meta, {**sidecar, **own, "take": k, "file": wav.name})
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
