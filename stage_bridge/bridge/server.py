"""The daemon assembled: home folder, job service, OSC transport and dispatcher, inbox watcher.

Why one place: each part knows only the narrow interface of the next (the transport hands
datagrams to the dispatcher, handlers and the watcher call the job service, the queue calls
the stem runner and sends events through the transport), and this is where they are plugged
together and started and stopped in the right order.

Threads: the OSC receive loop (parses, validates, queues: never touches the model), the job
worker (the only user of the models), the inbox watcher, the MIDI input's polling thread, the
control room's web server (its own event loop; a front end like OSC, on the same job service)
and, in capture mode, PortAudio's audio threads, jam playback's clock fit and one short thread
per MIDI capture trigger.
"""

from __future__ import annotations

import logging
import threading
from functools import partial
from typing import TYPE_CHECKING, Callable, Mapping

from ..errors import StageError
from . import protocol as P
from .capturejob import CaptureJobs
from .config import ServeConfig, parse_meter, parse_trigger_notes
from .jobs import FanOut, Job, JobService, Journal, readable_roots
from .osc import LOOPBACK, OscContext, OscEvents, UdpTransport, build_dispatcher, check_listen_host, dispatch
from .runner import RenderSettings, StemRunner
from .tempo import Clock, TempoSource
from .writer import remove_orphan_sidecars

if TYPE_CHECKING:
    from ..engine.model import StageModel
    from .jobs import Events
    from .web import WebServer
    from .capture import Capture
    from .capturejob import RunTicks
    from .playback import Playback

log = logging.getLogger("stage_bridge.server")


def prepare_home(cfg: ServeConfig) -> None:
    """Create the folders and remove what a crash left half-done (only files we create)."""
    for d in (cfg.home, cfg.inbox, cfg.outbox, cfg.bounces):
        d.mkdir(parents=True, exist_ok=True)
    for tmp in cfg.outbox.glob(".*.part"):
        log.info("removing unfinished temp file %s", tmp.name)
        tmp.unlink(missing_ok=True)
    for meta in remove_orphan_sidecars(cfg.outbox):
        log.info("removed %s: its take was never written (interrupted)", meta.name)


class Server:
    """The running daemon's parts. `models`: instrument -> StageModel, or the StageError saying
    why it could not load (its jobs then fail with that error)."""

    def __init__(self, cfg: ServeConfig, models: Mapping[str, "StageModel | StageError"], device_name: str,
                 clock: Clock | None = None, inputs: Mapping[str, str] | None = None, capture: "Capture | None" = None,
                 ticks: "RunTicks | None" = None, playback: "Playback | None" = None):
        """`inputs`: what feeds the daemon besides OSC, shown on the control room (e.g. the MIDI clock
        port); `capture`, `ticks`: capture mode's input and the MIDI clock's tracker (both or
        neither); `playback`: jam playback of finished capture takes (capture mode only)."""
        self.cfg = cfg
        host = check_listen_host(cfg.osc_host, cfg.allow_remote)
        if cfg.web:
            from .web import check_web_host
            check_web_host(cfg.web_host, cfg.allow_remote)
        prepare_home(cfg)
        self.transport = UdpTransport(host, cfg.osc_port, cfg.reply_host, cfg.reply_port)
        self.tempo = TempoSource(clock)
        settings = RenderSettings(sample_rate=cfg.sample_rate, loudness_offset_lu=cfg.loudness_offset)
        runner = StemRunner(models, cfg.outbox, settings, roots=readable_roots(cfg.home, cfg.allow_roots))
        events: Events = OscEvents(self.transport.send, after_done=self._after_done)
        if cfg.web:
            from .web import WebEvents
            self.web_events = WebEvents()
            events = FanOut(events, self.web_events)
        self.service = JobService(Journal(cfg.journal_path), runner, events, self.tempo,
                                  cfg.home, cfg.allow_roots, cfg.queue_size,
                                  folders=(cfg.inbox, cfg.outbox, cfg.bounces), admit=runner.admit)
        summary = ",".join(f"{i}={getattr(m, 'name', 'missing')}" for i, m in models.items())
        self.captures = None if capture is None or ticks is None else CaptureJobs(
            capture, ticks, self.service, cfg.bounces, tuple(models), self.transport.send,
            default_bars=cfg.capture_bars, meter=parse_meter(cfg.meter) if cfg.meter else None,
            triggers=parse_trigger_notes(cfg.triggers), bars_cc=cfg.bars_cc, playback=playback)
        self.web = self._web(models, device_name, dict(inputs or {})) if cfg.web else None
        self.dispatcher = build_dispatcher(OscContext(self.service, self.tempo, self.transport.send, tuple(models),
                                                      summary, device_name, cfg.home, cfg.bounces,
                                                      self.web.url if self.web else P.NO_WEB, self.captures))
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _web(self, models: Mapping[str, "StageModel | StageError"], device_name: str,
             inputs: dict[str, str]) -> "WebServer | None":
        """The control room, bound now; a taken port is logged and the daemon runs without it
        (the OSC side is what the device needs)."""
        from .web import WebContext, WebServer, new_token

        cfg = self.cfg
        token = cfg.web_token or (None if cfg.web_host in LOOPBACK else new_token())
        described = [{"instrument": i, "model": m.name, "random_weights": m.is_random, "precision": m.precision,
                      "decode_mode": m.decoder.mode} if not isinstance(m, StageError)
                     else {"instrument": i, "error": str(m), "code": m.code} for i, m in models.items()]
        ctx = WebContext(self.service, self.tempo, self.web_events, tuple(models), described, device_name,
                         cfg.precision, cfg.home, cfg.outbox, cfg.bounces, self.service.roots,
                         [cfg.home / "kept", *cfg.allow_roots], inputs, token,
                         capture=None if self.captures is None else partial(self.captures.submit, source="web"))
        try:
            return WebServer(ctx, cfg.web_host, cfg.web_port)
        except StageError as e:
            log.warning("%s The daemon runs without it.", e)
            return None

    def _after_done(self, job: Job) -> None:
        if self.captures is not None:
            self.captures.finished(job)

    @property
    def osc_address(self) -> tuple[str, int]:
        return self.transport.address

    def start(self) -> list[Job]:
        """Resume the journal's unfinished jobs, then answer OSC; returns the resumed jobs."""
        resumed = self.service.start()
        for job in resumed:
            log.info("resuming job %s", job.id)
        self.add_thread(lambda stop: self.transport.serve(stop, self.handle_datagram), "stage-bridge-osc")
        if self.web is not None:
            self.web.start()
        return resumed

    def handle_datagram(self, data: bytes, sender: object = None) -> None:
        dispatch(self.dispatcher, data, sender, self.transport.send)

    def add_thread(self, target: Callable[[threading.Event], None], name: str) -> None:
        """Run `target(stop_event)` until shutdown (the OSC loop, the inbox watcher)."""
        t = threading.Thread(target=target, args=(self._stop,), name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        if self.web is not None:
            self.web.stop()
        self.service.stop()
        for t in self._threads:
            t.join(timeout=5)
        self.transport.close()
        self.service.close()
