"""The resident daemon: warm models, OSC in and out, one job worker, tempo from OSC or MIDI clock.

Threads: the OSC receive loop (parses, validates, queues: never touches the model), the job
worker (the only user of the models), the inbox watcher, and the MIDI input callback. The main
thread waits for SIGINT/SIGTERM and then stops everything cleanly.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pythonosc.osc_packet import OscPacket, ParseError

from ..errors import Cancelled, StageError
from . import protocol as P
from .jobs import Job, JobQueue, Journal
from .writer import publish_takes, remove_orphan_sidecars

log = logging.getLogger("stage_bridge.server")

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeConfig:
    home: Path
    models: dict[str, str] = field(default_factory=lambda: {"drums": "stage-drums", "bass": "stage-bass"})
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False  # CPU: compile the decode step (engine/compiled.py) before answering
    osc_host: str = "127.0.0.1"
    osc_port: int = 9000
    reply_host: str = "127.0.0.1"
    reply_port: int = 9001
    allow_remote: bool = False
    midi: bool = True
    midi_in: str | None = None
    midi_api: str = "auto"
    allow_roots: list[Path] = field(default_factory=list)
    queue_size: int = 16
    weights_dir: Path | None = None
    watch: bool = True
    sample_rate: int = 48000  # output rate of click-only jobs (no context file to follow)

    @property
    def inbox(self) -> Path:
        return self.home / "inbox"

    @property
    def outbox(self) -> Path:
        return self.home / "outbox"

    @property
    def bounces(self) -> Path:
        return self.home / "bounces"

    @property
    def journal_path(self) -> Path:
        return self.home / "jobs.sqlite3"


def check_listen_host(cfg: ServeConfig) -> str:
    """Loopback unless explicitly allowed: OSC has no authentication."""
    host = cfg.osc_host
    if host not in LOOPBACK and not cfg.allow_remote:
        raise StageError(f"--osc-host {host} would accept commands from other computers; add --allow-remote "
                         "if that is really what you want (default: 127.0.0.1, this computer only).")
    return host


def prepare_home(cfg: ServeConfig) -> None:
    """Create the folders and remove what a crash left half-done (only files we create)."""
    for d in (cfg.home, cfg.inbox, cfg.outbox, cfg.bounces):
        d.mkdir(parents=True, exist_ok=True)
    for tmp in cfg.outbox.glob(".*.part"):
        log.info("removing unfinished temp file %s", tmp.name)
        tmp.unlink(missing_ok=True)
    for meta in remove_orphan_sidecars(cfg.outbox):
        log.info("removed %s: its take was never written (interrupted)", meta.name)


class Bridge:
    """The daemon's state and its OSC handlers (plain methods, one per address)."""

    def __init__(self, cfg: ServeConfig, models: dict[str, Any], device_name: str, clock: Any = None):
        """`models`: instrument -> StageModel, or the StageError explaining why it is missing."""
        self.cfg = cfg
        self.models = models
        self.device_name = device_name
        self.clock = clock  # a midiclock.ClockTracker-like object with snapshot(now), or None
        self.tempo: P.Tempo | None = None
        self._roots = [p.resolve() for p in [cfg.home, *cfg.allow_roots]]
        prepare_home(cfg)
        self.journal = Journal(cfg.journal_path)
        self.queue = JobQueue(self.journal, self.run_job, self, cfg.queue_size)
        self._reply = socket.socket(socket.AF_INET6 if ":" in cfg.reply_host else socket.AF_INET, socket.SOCK_DGRAM)
        self._reply_addr = (cfg.reply_host, cfg.reply_port)
        self._stop = threading.Event()
        self._sock = self._bind()
        self._threads: list[threading.Thread] = []
        self.handlers: dict[str, Callable[[list[Any]], None]] = {
            P.PING: self.on_ping, P.GENERATE: self.on_generate, P.TEMPO: self.on_tempo,
            P.CANCEL: self.on_cancel, P.STATUS: self.on_status, P.INFO: self.on_info,
        }

    def _bind(self) -> socket.socket:
        host = check_listen_host(self.cfg)
        if host not in LOOPBACK:
            log.warning("listening on %s: any computer that can reach this port can start jobs", host)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((host, self.cfg.osc_port))
        except OSError as e:
            sock.close()
            raise StageError(f"cannot listen on {host}:{self.cfg.osc_port} ({e.strerror}): is another stage-bridge "
                             "running? Stop it or choose another --osc-port.") from None
        sock.settimeout(0.2)
        return sock

    @property
    def osc_address(self) -> tuple[str, int]:
        return self._sock.getsockname()[:2]

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        for job in self.queue.start(resume=True):
            log.info("resuming job %s", job.id)
        t = threading.Thread(target=self._receive_loop, name="stage-bridge-osc", daemon=True)
        t.start()
        self._threads.append(t)

    def add_thread(self, target: Callable[[threading.Event], None], name: str) -> None:
        """Run `target(stop_event)` until shutdown (used for the inbox watcher)."""
        t = threading.Thread(target=target, args=(self._stop,), name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self.queue.stop()
        for t in self._threads:
            t.join(timeout=5)
        self._sock.close()
        self._reply.close()
        self.journal.close()

    # -- OSC in ---------------------------------------------------------------------------
    def _receive_loop(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self._sock.recvfrom(65536)
            except socket.timeout:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            self.handle_datagram(data, addr)

    def handle_datagram(self, data: bytes, addr: Any = None) -> None:
        """Parse one UDP datagram (message or bundle) and dispatch; malformed input is dropped."""
        try:
            messages = [m.message for m in OscPacket(data).messages]
        except (ParseError, Exception) as e:  # a fuzzed packet can trip any parser path
            log.warning("dropped a malformed OSC packet from %s (%d bytes): %s", addr, len(data), e)
            return
        for msg in messages:
            handler = self.handlers.get(msg.address)
            if handler is None:
                log.warning("ignored unknown OSC address %r from %s", msg.address, addr)
                continue
            try:
                handler(list(msg.params))
            except P.ProtocolError as e:
                about_job = msg.address in (P.GENERATE, P.CANCEL) and msg.params and isinstance(msg.params[0], str)
                job_id = msg.params[0] if about_job else ""
                log.info("refused %s %s: %s", msg.address, job_id, e)
                self.send(P.ERROR, job_id, e.code, str(e))
            except Exception:
                log.exception("handler for %s failed", msg.address)

    def send(self, address: str, *args: Any) -> None:
        try:
            self._reply.sendto(P.message(address, *args), self._reply_addr)
        except OSError as e:
            log.warning("could not send %s to %s:%s (%s)", address, *self._reply_addr, e)

    def on_ping(self, args: list[Any]) -> None:
        self.send(P.PONG, *args[:1])

    def on_tempo(self, args: list[Any]) -> None:
        self.tempo = P.parse_tempo(args)

    def on_cancel(self, args: list[Any]) -> None:
        self.queue.cancel(P.parse_cancel(args))

    def on_status(self, args: list[Any]) -> None:
        running = self.queue.running
        if running is not None:
            bpm, source = running.params["bpm"], running.params["tempo_source"]
        else:
            ambient = self.ambient_tempo()
            bpm, source = (ambient[0], ambient[1]) if ambient else (0.0, "none")
        models = ",".join(f"{i}={getattr(m, 'name', 'missing')}" for i, m in self.models.items())
        self.send(P.STATUS, "busy" if running else "idle", self.queue.queue_length, float(bpm), source,
                  self.device_name, models)

    def on_info(self, args: list[Any]) -> None:
        """Where the daemon lives, so the device writes its recordings where they may be read."""
        self.send(P.INFO, str(self.cfg.home), str(self.cfg.bounces))

    def on_generate(self, args: list[Any]) -> None:
        req = P.parse_generate(args, tuple(self.models))
        self.submit(req, source="osc")

    # -- requests -> jobs -----------------------------------------------------------------
    def ambient_tempo(self) -> tuple[float, str, int | None, int | None] | None:
        """The project tempo when a request gives none: /stage/tempo first, then MIDI clock."""
        if self.tempo is not None:
            return self.tempo.bpm, "osc", self.tempo.beats_per_bar, self.tempo.beat_unit
        if self.clock is not None:
            snap = self.clock.snapshot(time.monotonic())
            if snap.alive and snap.bpm is not None:
                return round(float(snap.bpm), 2), "midi", None, None
        return None

    def context_path(self, text: str) -> str:
        """Resolve (symlinks included) and require the file inside home or an allowed root."""
        if not text:
            return ""
        try:  # ~unknown-user, symlink loops (RuntimeError before 3.13), names too long, NUL bytes
            p = Path(text).expanduser()
            if not p.is_absolute():
                p = self.cfg.home / p
            real = p.resolve()
        except (OSError, RuntimeError, ValueError):
            raise P.ProtocolError("file_missing", f"{text[:200]} cannot be resolved to a file.") from None
        if not any(real == r or r in real.parents for r in self._roots):
            raise P.ProtocolError("forbidden_path", f"{text} is outside the folders the daemon may read "
                                                    f"({', '.join(map(str, self._roots))}); start it with "
                                                    "--allow-root FOLDER to allow more.")
        try:
            is_file = real.is_file()
        except (OSError, ValueError):
            is_file = False
        if not is_file:
            raise P.ProtocolError("file_missing", f"{text} does not exist (or is not a file).")
        return str(real)

    def submit(self, req: P.GenerateRequest, source: str, name: str | None = None) -> Job:
        path = self.context_path(req.context_path)
        if req.bpm is not None:
            bpm, tempo_source, bpb, unit = req.bpm, "request", None, None
        else:
            ambient = self.ambient_tempo()
            if ambient is None:
                raise P.ProtocolError("no_tempo", "no tempo: send bpm with the request, or /stage/tempo, or run a "
                                                  "MIDI clock into the daemon.")
            bpm, tempo_source, bpb, unit = ambient
        params = {
            "source": source, "name": name or (Path(path).stem if path else req.job_id), "context_path": path,
            "instrument": req.instrument, "bars": req.bars, "bpm": bpm, "tempo_source": tempo_source,
            "beats_per_bar": req.beats_per_bar or bpb or 4, "beat_unit": req.beat_unit or unit or 4,
            "offset": req.offset, "prompt": req.prompt, "takes": req.takes, "context_mode": req.context_mode,
            "seed": req.seed,
        }
        job = Job(req.job_id, params)
        self.queue.submit(job)
        return job

    # -- events (called by the worker) ------------------------------------------------------
    def accepted(self, job: Job, position: int) -> None:
        self.send(P.ACCEPTED, job.id, position)

    def progress(self, job: Job, percent: float) -> None:
        self.send(P.PROGRESS, job.id, float(percent))

    def done(self, job: Job) -> None:
        log.info("job %s done: %s", job.id, ", ".join(job.outputs))
        self.send(P.DONE, job.id, *job.outputs)

    def failed(self, job: Job) -> None:
        log.info("job %s failed: %s %s", job.id, job.error_code, job.error_message)
        self.send(P.ERROR, job.id, job.error_code or "engine_error", job.error_message or "")

    def cancelled(self, job: Job) -> None:
        self.send(P.CANCELLED, job.id)

    # -- the work -------------------------------------------------------------------------
    def run_job(self, job: Job, progress: Callable[[float], None], should_cancel: Callable[[], bool]) -> list[str]:
        from ..audio import load_audio
        from ..engine.generate import StemRequest, render_stem

        p = job.params
        model = self.models.get(p["instrument"])
        if isinstance(model, BaseException) or model is None:
            raise model if isinstance(model, StageError) else P.ProtocolError("bad_instrument", "no model loaded.")
        context = load_audio(p["context_path"]) if p["context_path"] else None
        request = StemRequest(bpm=p["bpm"], bars=p["bars"], context=context, beats_per_bar=p["beats_per_bar"],
                              beat_unit=p["beat_unit"], offset=p["offset"], context_mode=p["context_mode"],
                              prompt=p["prompt"], takes=p["takes"], seed=p["seed"], sample_rate=self.cfg.sample_rate)
        progress(0.0)
        result = render_stem(model, request, progress=lambda d, t: progress(95.0 * d / t), should_cancel=should_cancel)
        if should_cancel():
            raise Cancelled("cancelled before writing")
        sidecar = {"job_id": job.id, "model": model.name, "random_weights": model.is_random, **p,
                   "seed": result.seed, "sample_rate": result.sample_rate, "num_samples": result.num_samples,
                   "timings": {k: round(v, 4) for k, v in result.timings.items()}}
        paths = publish_takes(self.cfg.outbox, p["name"], p["instrument"], p["bpm"], result.takes,
                              result.sample_rate, sidecar)
        progress(100.0)
        return [str(x) for x in paths]
