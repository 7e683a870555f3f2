"""The control room: a web page, served by the daemon, to watch, hear, compare and keep takes.

Why in the daemon's process: the page is one more front end of the same `JobService` (submit,
cancel, events), so it adds no second queue and no second journal; it runs on its own thread
with its own event loop (uvicorn), and never touches a model.

The HTTP API (JSON unless said):
    GET  /                                  the page (web_static/index.html)
    GET  /api/status                        device, models, precision, tempo, inputs, queue, keep folders
    GET  /api/events                        server-sent events: hello, accepted, progress, done, failed, cancelled
    GET  /api/jobs[?limit=N]                the take history (journal + sidecars), newest first
    POST /api/jobs?filename=F&instrument=I[&bars=B&bpm=..&beats_per_bar=..&beat_unit=..&offset=..
                   &prompt=..&takes=..&context_mode=..&seed=..]   body: the audio file's bytes
    POST /api/jobs/{job_id}/cancel
    GET  /api/jobs/{job_id}/context         its context audio;  .../context.png its waveform
    GET  /api/takes/{take_id}/audio[?download=1]                 .../waveform.png its waveform
    POST /api/takes/{take_id}/keep          {"folder": INDEX}: a copy, readable name, in that keep folder
    POST /api/takes/{take_id}/delete        the take and its sidecar to the platform's trash

Security (`Guard`): by default the server listens on loopback and accepts only a loopback Host
header (so a web page elsewhere cannot reach it through DNS rebinding); beyond loopback only with
--allow-remote and a token, which every request must then carry (header `X-Stage-Token`, or
`?token=` for what the browser fetches by URL: audio, pictures, the event stream). A request with
an `Origin` must come from the page's own origin, and every POST must carry the header
`X-Stage-Bridge: 1`, which a cross-site form cannot send (CSRF). Ids, never paths, come from the
page: a take id names only a file the daemon wrote (takes.find_take), a job id only a journal
job; an upload is size-limited and lands in bounces/ under a name the daemon makes.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import os
import secrets
import socket
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, Sequence

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..atomic import copy_atomic, is_disk_full
from ..audio.io import load_audio
from ..audio.waveform import waveform_png
from ..errors import StageError
from . import protocol as P
from .jobs import Job, JobService
from .osc import LOOPBACK
from .takes import Take, context_file, find_take, job_takes
from .tempo import TempoSource
from .trash import trash
from .watcher import AUDIO_EXTENSIONS, default_bars

log = logging.getLogger("stage_bridge.web")

STATIC = Path(__file__).with_name("web_static")
MAX_UPLOAD_BYTES = 512 * 1024 * 1024  # about 45 minutes of 48 kHz stereo 24-bit WAV
UPLOAD_CHUNK = 1 << 20
HISTORY_LIMIT = 50
SOURCE = "web"
CSRF_HEADER = "x-stage-bridge"
TOKEN_HEADER = "x-stage-token"
KEEP_FOLDER = "kept"  # in the home folder: the first place "keep" copies to
MEDIA_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".aif": "audio/aiff",
               ".aiff": "audio/aiff"}
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
                                 b"frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
]


class WebError(Exception):
    """A refusal the page shows: HTTP status, a code (those of the OSC protocol where one fits), a message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


# -- events: the job service's events as a server-sent event stream ------------------------------

class WebEvents:
    """jobs.Events for the page: every state change goes to each open event stream.

    Called from the job worker and the OSC thread; each stream is an asyncio queue on the web
    server's loop, filled with `call_soon_threadsafe`. The running job's latest progress is kept
    so a page opened mid-job shows it at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: dict[asyncio.Queue, asyncio.AbstractEventLoop] = {}
        self._progress: dict[str, float] = {}
        self._closed = False

    def subscribe(self) -> asyncio.Queue:
        """A new stream (call on the web server's loop); it ends with None when the daemon stops."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=1000)
        with self._lock:
            if self._closed:
                queue.put_nowait(None)
            else:
                self._streams[queue] = asyncio.get_running_loop()
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        with self._lock:
            self._streams.pop(queue, None)

    def progress_of(self, job_id: str) -> float:
        with self._lock:
            return self._progress.get(job_id, 0.0)

    def publish(self, event: dict[str, Any] | None) -> None:
        with self._lock:
            streams = list(self._streams.items())
        for queue, loop in streams:
            try:
                loop.call_soon_threadsafe(_offer, queue, event)
            except RuntimeError:  # that loop has closed
                self.unsubscribe(queue)

    def close(self) -> None:
        """End every stream (the daemon is stopping)."""
        with self._lock:
            self._closed = True
        self.publish(None)

    def accepted(self, job: Job, position: int) -> None:
        self.publish({"type": "accepted", "job": job.id, "position": position})

    def progress(self, job: Job, percent: float) -> None:
        with self._lock:
            self._progress = {job.id: float(percent)}
        self.publish({"type": "progress", "job": job.id, "percent": float(percent)})

    def _ended(self, job: Job, event: dict[str, Any]) -> None:
        with self._lock:
            self._progress.pop(job.id, None)
        self.publish({"job": job.id, **event})

    def done(self, job: Job) -> None:
        self._ended(job, {"type": "done", "takes": [Path(p).name for p in job.outputs]})

    def failed(self, job: Job) -> None:
        self._ended(job, {"type": "failed", "code": job.error_code, "message": job.error_message})

    def cancelled(self, job: Job) -> None:
        self._ended(job, {"type": "cancelled"})


def _offer(queue: asyncio.Queue, event: dict[str, Any] | None) -> None:
    try:
        queue.put_nowait(event)
    except asyncio.QueueFull:  # a stalled page: it reloads its state at the next `hello`
        pass


# -- what the page reads --------------------------------------------------------------------------

@dataclass(frozen=True)
class WebContext:
    """What the app reads and acts on (fixed for the daemon's life). `models`: one entry per
    instrument (instrument, model, random_weights, precision, decode_mode, or error);
    `inputs`: what feeds the daemon besides OSC (e.g. "midi clock": "IAC Driver Bus 1")."""

    service: JobService
    tempo: TempoSource
    events: WebEvents
    instruments: Sequence[str]
    models: Sequence[Mapping[str, Any]]
    device: str
    precision: str
    home: Path
    outbox: Path
    bounces: Path
    roots: Sequence[Path]
    keep_folders: Sequence[Path]
    inputs: Mapping[str, str] = field(default_factory=dict)
    token: str | None = None
    max_upload: int = MAX_UPLOAD_BYTES
    # capture mode (serve --capture-device): cut the last bars of the input and queue their job
    # (capturejob.CaptureJobs.submit); None: the daemon records no input
    capture: Callable[[P.CaptureRequest], Job] | None = None


def _json_job(job: Job, ctx: WebContext, takes: Sequence[Take] | None = None) -> dict[str, Any]:
    s = job.spec
    out = {"id": job.id, "state": job.state, "source": s.source, "name": s.name, "instrument": s.instrument,
           "bars": s.bars, "bpm": s.bpm, "tempo_source": s.tempo_source, "meter": f"{s.beats_per_bar}/{s.beat_unit}",
           "prompt": s.prompt, "takes": s.takes, "context_mode": s.context_mode, "seed": s.seed,
           "created": job.created, "updated": job.updated, "error_code": job.error_code,
           "error_message": job.error_message}
    if takes is not None:
        out["context"] = context_file(job, ctx.roots) is not None
        out["results"] = [_json_take(t) for t in takes]
    return out


def _json_take(take: Take) -> dict[str, Any]:
    s = take.sidecar
    keys = ("take", "seed", "prompt", "model", "random_weights", "duration_s", "sample_rate", "num_samples", "lufs",
            "context_lufs", "gain_db", "timings", "device", "precision", "created", "fit")
    return {"id": take.id, **{k: s[k] for k in keys if k in s}}


def status(ctx: WebContext) -> dict[str, Any]:
    running = ctx.service.running
    tempo = ctx.tempo.current()
    return {
        "device": ctx.device, "precision": ctx.precision, "models": list(ctx.models),
        "instruments": list(ctx.instruments), "inputs": dict(ctx.inputs),
        "tempo": {"bpm": tempo.bpm, "source": tempo.source, "beats_per_bar": tempo.beats_per_bar,
                  "beat_unit": tempo.beat_unit} if tempo else None,
        "running": ({**_json_job(running, ctx), "progress": ctx.events.progress_of(running.id)}
                    if running is not None else None),
        "queued": [_json_job(j, ctx) for j in ctx.service.queued()],
        "keep_folders": [str(p) for p in ctx.keep_folders],
        "max_upload": ctx.max_upload,
        "capture": ctx.capture is not None,
    }


def history(ctx: WebContext, limit: int) -> list[dict[str, Any]]:
    """The latest `limit` jobs, newest first, each with its takes still in outbox/."""
    return [_json_job(job, ctx, job_takes(job, ctx.outbox)) for job in reversed(ctx.service.history(limit))]


def _journal_job(ctx: WebContext, job_id: str) -> Job:
    job = ctx.service.find(job_id)
    if job is not None:
        return job
    raise WebError(404, "unknown_job", f"no job is called {P.clip(job_id, P.MAX_ECHO_CHARS)}.")


def _take(ctx: WebContext, take_id: str) -> Take:
    take = find_take(ctx.outbox, take_id)
    if take is None:
        raise WebError(404, "unknown_take", "no take the daemon made has that name (deleted, or never made).")
    return take


@functools.lru_cache(maxsize=128)
def _picture(path: str, mtime_ns: int, size: int, roots: tuple[Path, ...]) -> bytes:
    return waveform_png(load_audio(path, inside=list(roots)).samples)


def picture(path: Path, roots: Sequence[Path]) -> bytes:
    """The waveform PNG of the audio file `path` (cached while the file is unchanged)."""
    st = os.stat(path)
    return _picture(str(path), st.st_mtime_ns, st.st_size, tuple(roots))


def keep(ctx: WebContext, take: Take, folder_index: Any) -> Path:
    """Copy `take` (and its sidecar, for the record) into keep folder number `folder_index`
    under its readable name (`name (2).wav` when taken); returns the copy's path."""
    if isinstance(folder_index, bool) or not isinstance(folder_index, int) \
            or not 0 <= folder_index < len(ctx.keep_folders):
        raise WebError(400, "bad_request", f"folder must be a number from 0 to {len(ctx.keep_folders) - 1}.")
    folder = ctx.keep_folders[folder_index]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WebError(400, "output_not_writable", f"cannot make {folder} ({e.strerror or e}); pick another "
                                                   "folder.") from None
    base = take.readable_name()[:-len(".wav")]
    for n in range(1, 1000):
        target = folder / (base + (f" ({n})" if n > 1 else "") + ".wav")
        if target.exists() or target.with_suffix(".json").exists():
            continue
        try:
            copy_atomic(take.path, target)
        except FileExistsError:
            continue
        try:
            copy_atomic(take.meta_path, target.with_suffix(".json"))
        except (FileExistsError, OSError) as e:
            log.warning("kept %s without its sidecar: %s", target, e)
        return target
    raise WebError(409, "keep_failed", f"{folder} has no free name for {base}.wav; tidy it up and try again.")


def delete(take: Take) -> list[str]:
    """The take, then its sidecar, to the platform's trash; returns where they went."""
    try:
        moved = [str(trash(take.path))]
    except OSError as e:
        raise WebError(500, "trash_failed", f"{take.id} could not be moved to the trash ({e.strerror or e}); "
                                            "it is still there.") from None
    try:
        moved.append(str(trash(take.meta_path)))
    except (OSError, StageError) as e:  # the take itself is in the trash: say so, do not fail
        log.warning("deleted %s, but its sidecar stayed: %s", take.path.name, e)
    return moved


# -- uploads ------------------------------------------------------------------------------------

OPTION_PARSERS: dict[str, Callable[[str], Any]] = {"bpm": float, "offset": float, "beats_per_bar": int,
                                                    "beat_unit": int, "takes": int, "seed": int,
                                                    "prompt": str, "context_mode": str}


def upload_options(query: QueryParams, ctx: WebContext) -> tuple[str, str, str, int | None, dict[str, Any]]:
    """(stem, extension, instrument, bars or None, parse_options' result) from the query string;
    ProtocolError for a bad value (the same validator as OSC and the inbox)."""
    filename = Path(query.get("filename", "").replace("\\", "/")).name
    stem, ext = os.path.splitext(filename)
    if ext.lower() not in AUDIO_EXTENSIONS:
        raise P.ProtocolError("not_audio", f"{P.clip(filename, 200) or 'the file'}: drop an audio file "
                                           f"({' '.join(AUDIO_EXTENSIONS)}).")
    instrument = P.check_instrument(query.get("instrument", ""), ctx.instruments)
    raw = {k: v for k, v in query.items() if k in OPTION_PARSERS and v != ""}
    options: dict[str, Any] = {}
    for key, text in raw.items():
        try:
            options[key] = OPTION_PARSERS[key](text)
        except ValueError:
            raise P.ProtocolError("bad_option", f"option {key}: {P.clip(text, 50)!r} is not a number.") from None
    bars = P.check_bars(int(query["bars"])) if query.get("bars", "").isdigit() else None
    if query.get("bars", "") not in ("", None) and bars is None:
        raise P.ProtocolError("bad_bars", f"bars {P.clip(query['bars'], 50)!r} must be a whole number.")
    safe = "".join(c if c.isalnum() or c in "-_ " else "_" for c in stem).strip()[:80] or "upload"
    return safe, ext.lower(), instrument, bars, P.parse_options(options)


async def receive_upload(request: Request, folder: Path, limit: int) -> Path:
    """The request body in a hidden temp file in `folder`; 413 (and nothing left) past `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise WebError(413, "too_large", f"the file is larger than {limit // (1 << 20)} MiB; export a shorter "
                                         "section.")
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".web-upload-", suffix=".part", dir=folder)
    tmp = Path(name)
    size = 0
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise WebError(413, "too_large", f"the file is larger than {limit // (1 << 20)} MiB; export "
                                                     "a shorter section.")
                await run_in_threadpool(f.write, chunk)
        if size == 0:
            raise WebError(400, "empty_audio", "the file is empty.")
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if is_disk_full(e):
            raise WebError(507, "disk_full", f"the disk is full ({e.strerror}); free some space, then drop the "
                                             "file again.") from None
        raise WebError(500, "output_not_writable", f"the upload could not be saved in {folder}: {e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def publish_upload(tmp: Path, folder: Path, stem: str, ext: str, tag: str) -> Path:
    """Give the complete upload its name in bounces/: `STEM.web-TAG.EXT` (never replacing a file)."""
    final = folder / f"{stem}.{tag}{ext}"
    try:
        os.link(tmp, final)  # fails if the name is taken; never replaces
    finally:
        tmp.unlink(missing_ok=True)
    return final


def submit_upload(ctx: WebContext, query: QueryParams, tmp: Path) -> Job:
    """Check the uploaded file and the options, publish the file in bounces/ and queue its job;
    on any refusal nothing is left behind."""
    final: Path | None = None
    try:
        stem, ext, instrument, bars, options = upload_options(query, ctx)
        audio = load_audio(tmp)  # refuses what is not audio at once, not after the queue (NotAudio, ...)
        job_id = f"{SOURCE}-{secrets.token_hex(5)}"
        if bars is None:  # the whole file, in whole bars at the job's tempo
            tempo = ctx.service.current_tempo()
            bpm = options["bpm"] or (tempo.bpm if tempo else None)
            if bpm is None:
                raise P.ProtocolError("no_tempo", "no tempo: type the bpm, or send the tempo from Live.")
            bars = default_bars(audio.num_samples, audio.sample_rate, bpm,
                                options["beats_per_bar"] or (tempo.beats_per_bar if tempo else None) or 4,
                                options["beat_unit"] or (tempo.beat_unit if tempo else None) or 4,
                                options["offset"])
        final = publish_upload(tmp, ctx.bounces, stem, ext, job_id)
        request = P.make_request(job_id, str(final), instrument, bars, options)
        return ctx.service.submit(request, source=SOURCE, name=stem)
    except BaseException:
        tmp.unlink(missing_ok=True)
        if final is not None:
            final.unlink(missing_ok=True)
        raise


# -- the app --------------------------------------------------------------------------------------

def _error(status_code: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status_code)


def _handled(endpoint: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Refusals become JSON errors: WebError as said, ProtocolError/StageError as 400 with their code."""
    @functools.wraps(endpoint)
    async def wrapper(request: Request) -> Response:
        try:
            return await endpoint(request)
        except WebError as e:
            return _error(e.status, e.code, str(e))
        except P.ProtocolError as e:
            return _error(409 if e.code in ("queue_full", "duplicate_job") else 400, e.code, str(e))
        except StageError as e:
            return _error(400, e.code, str(e))
    return wrapper


def build_app(ctx: WebContext) -> Starlette:
    """The Starlette app: the page, its static files and the API (see the module's docstring)."""

    def thread(fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        return lambda *a: run_in_threadpool(fn, *a)  # file and journal work off the event loop

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-store"})

    async def api_status(request: Request) -> Response:
        return JSONResponse(await thread(status)(ctx))

    async def api_events(request: Request) -> Response:
        queue = ctx.events.subscribe()

        async def stream():
            try:
                yield "retry: 2000\n\ndata: " + json.dumps({"type": "hello"}) + "\n\n"
                while True:
                    try:
                        event = await asyncio.wait_for(queue.get(), 15.0)
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"  # through proxies that close quiet connections
                        continue
                    if event is None:
                        return
                    yield "data: " + json.dumps(event) + "\n\n"
            finally:
                ctx.events.unsubscribe(queue)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def api_jobs(request: Request) -> Response:
        text = request.query_params.get("limit", str(HISTORY_LIMIT))
        limit = int(text) if text.isdigit() else HISTORY_LIMIT
        return JSONResponse(await thread(history)(ctx, max(1, min(limit, 1000))))

    async def api_submit(request: Request) -> Response:
        tmp = await receive_upload(request, ctx.bounces, ctx.max_upload)
        job = await thread(submit_upload)(ctx, request.query_params, tmp)
        return JSONResponse(_json_job(job, ctx), status_code=201)

    async def api_capture(request: Request) -> Response:
        """The page's capture button: the same request as OSC's `/stage/capture`, validated by the
        same parser, cut and queued by the same capture service."""
        if ctx.capture is None:
            raise WebError(409, "bad_request", "this daemon records no audio input: start it with --capture-device "
                                               "(docs/any-daw.md).")
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise WebError(400, "bad_request", 'send JSON: {"instrument": "drums", "bars": 8}.')
        args = [body.get("instrument"), body.get("bars")]
        for key, value in body.items():  # every other key is an option: an unknown one is refused as on OSC
            if key not in ("instrument", "bars"):
                args += [key, value]
        req = P.parse_capture(args, ctx.instruments)
        job = await thread(ctx.capture)(req)
        return JSONResponse(_json_job(job, ctx), status_code=201)

    async def api_cancel(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            await thread(ctx.service.cancel)(job_id)
        except P.ProtocolError as e:
            raise WebError(404, e.code, str(e)) from None
        return JSONResponse({"cancelling": job_id})

    async def _context(request: Request) -> Path:
        job = await thread(_journal_job)(ctx, request.path_params["job_id"])
        path = context_file(job, ctx.roots)
        if path is None:
            raise WebError(404, "no_context", "this job has no context file (click mode, or it was deleted).")
        return path

    async def api_context(request: Request) -> Response:
        path = await _context(request)
        return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream"))

    async def api_context_png(request: Request) -> Response:
        png = await thread(picture)(await _context(request), ctx.roots)
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-cache"})

    async def api_take_audio(request: Request) -> Response:
        take = await thread(_take)(ctx, request.path_params["take_id"])
        download = request.query_params.get("download") == "1"
        return FileResponse(take.path, media_type="audio/wav", filename=take.readable_name() if download else None)

    async def api_take_png(request: Request) -> Response:
        take = await thread(_take)(ctx, request.path_params["take_id"])
        png = await thread(picture)(take.path, [ctx.outbox])
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-cache"})

    async def api_keep(request: Request) -> Response:
        take = await thread(_take)(ctx, request.path_params["take_id"])
        try:
            body = await request.json()
        except ValueError:
            raise WebError(400, "bad_request", "send JSON: {\"folder\": 0}.") from None
        folder = body.get("folder", 0) if isinstance(body, dict) else None
        path = await thread(keep)(ctx, take, folder)
        return JSONResponse({"kept": str(path)})

    async def api_delete(request: Request) -> Response:
        take = await thread(_take)(ctx, request.path_params["take_id"])
        return JSONResponse({"trashed": await thread(delete)(take)})

    routes = [
        Route("/", _handled(index)),
        Route("/api/status", _handled(api_status)),
        Route("/api/events", _handled(api_events)),
        Route("/api/jobs", _handled(api_jobs), methods=["GET"]),
        Route("/api/jobs", _handled(api_submit), methods=["POST"]),
        Route("/api/capture", _handled(api_capture), methods=["POST"]),
        Route("/api/jobs/{job_id}/cancel", _handled(api_cancel), methods=["POST"]),
        Route("/api/jobs/{job_id}/context", _handled(api_context)),
        Route("/api/jobs/{job_id}/context.png", _handled(api_context_png)),
        Route("/api/takes/{take_id}/audio", _handled(api_take_audio)),
        Route("/api/takes/{take_id}/waveform.png", _handled(api_take_png)),
        Route("/api/takes/{take_id}/keep", _handled(api_keep), methods=["POST"]),
        Route("/api/takes/{take_id}/delete", _handled(api_delete), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    async def http_error(request: Request, exc: Exception) -> Response:  # no route, wrong method: JSON too
        code = getattr(exc, "status_code", 500)
        return _error(code, "not_found" if code == 404 else "bad_request", str(getattr(exc, "detail", exc)))

    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


# -- the guard: Host, Origin, CSRF header, token ---------------------------------------------------

class Guard:
    """ASGI middleware in front of the app: refuses a request from the wrong Host or Origin,
    a POST without the CSRF header, and, with a token, one without it. `hosts`: the Host header
    values accepted (None: any, only with a token); every response gets the security headers."""

    SAFE_METHODS = ("GET", "HEAD")

    def __init__(self, app: Any, hosts: frozenset[str] | None, token: str | None):
        if hosts is None and not token:
            raise ValueError("a server beyond loopback needs a token")
        self.app, self.hosts, self.token = app, hosts, token

    def refusal(self, scope: Mapping[str, Any]) -> tuple[int, str, str] | None:
        headers = Headers(scope=scope)
        host = headers.get("host", "").lower()
        if self.hosts is not None and host not in self.hosts:
            return 403, "wrong_host", "open the page at the address the daemon printed (http://127.0.0.1:PORT/)."
        origin = headers.get("origin")
        if origin is not None and origin.lower() != f"http://{host}":
            return 403, "wrong_origin", "requests from other web pages are refused."
        if scope["method"] not in self.SAFE_METHODS and headers.get(CSRF_HEADER) != "1":
            return 403, "csrf", f"a POST needs the header {CSRF_HEADER}: 1 (the page sends it)."
        if self.token:
            query = QueryParams(scope.get("query_string", b""))
            given = headers.get(TOKEN_HEADER) or query.get("token") or ""
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return 401, "bad_token", "open the page with the address the daemon printed (it has ?token=...)."
        return None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        refused = self.refusal(scope)
        if refused is not None:
            await _error(*refused)(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


def loopback_hosts(port: int) -> frozenset[str]:
    return frozenset(f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]"))


def check_web_host(host: str, allow_remote: bool) -> None:
    """Loopback unless --allow-remote (then the page also needs its token: `WebServer`)."""
    if host not in LOOPBACK and not allow_remote:
        raise StageError(f"--web-host {host} would show the control room to other computers; add --allow-remote "
                         "if that is really what you want (it then needs a token; default: 127.0.0.1).")


class WebServer:
    """The app on uvicorn, on its own thread and event loop. The socket is bound at once, so a
    taken port is reported before the daemon says it is ready, and port 0 gets a free one."""

    def __init__(self, ctx: WebContext, host: str, port: int):
        import uvicorn

        self.ctx = ctx
        self.host = host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if os.name != "nt":
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((host, port))
            self.sock.listen(64)
        except OSError as e:
            self.sock.close()
            raise StageError(f"the control room cannot listen on {host}:{port} ({e.strerror}); choose another "
                             "--web-port, or --no-web.") from None
        self.port = self.sock.getsockname()[1]
        remote = host not in LOOPBACK
        app = Guard(build_app(ctx), None if remote else loopback_hosts(self.port), ctx.token)
        config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False, lifespan="off",
                                ws="none", http="h11", timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The page's address (with the token when one is needed): printed once, in the ready line."""
        shown = {"localhost": "127.0.0.1", "0.0.0.0": socket.gethostname(), "::": socket.gethostname()}.get(
            self.host, self.host)  # every interface: the name other computers reach this one by
        shown = f"[{shown}]" if ":" in shown else shown
        return f"http://{shown}:{self.port}/" + (f"?token={self.ctx.token}" if self.ctx.token else "")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self.sock]},
                                        name="stage-bridge-web", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the event streams, then the server (open connections get 2 s)."""
        self.ctx.events.close()
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.sock.close()


def new_token() -> str:
    return secrets.token_urlsafe(24)
