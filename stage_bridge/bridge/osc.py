"""The daemon's OSC side: handlers as plain functions on a python-osc `Dispatcher`, a UDP
transport that only moves datagrams, and the job events sent back as replies.

Why apart: the handlers are the protocol's behaviour and can be called without a socket; the
transport knows sockets and nothing of the protocol; `dispatch` is the one place where
malformed packets are dropped, unknown addresses logged and refusals (ProtocolError) become
`/stage/job/error`. Handlers run on the receive thread and never touch a model: `/stage/generate`
only queues, so `/stage/ping` is answered at once even while a job runs.
"""

from __future__ import annotations

import functools
import json
import logging
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_packet import OscPacket

from ..atomic import open_regular
from ..errors import StageError
from . import protocol as P
from .jobs import Job, JobService
from .tempo import TempoSource

if TYPE_CHECKING:
    from .capturejob import CaptureJobs

log = logging.getLogger("stage_bridge.osc")

LOOPBACK = ("127.0.0.1", "localhost", "::1")
PATTERN_CHARS = frozenset("*?[]{}")

Send = Callable[..., None]  # send(address, *args): one reply message


@dataclass(frozen=True)
class OscContext:
    """What the handlers read and act on (fixed for the daemon's life)."""

    service: JobService
    tempo: TempoSource
    send: Send
    instruments: Sequence[str]
    models: str  # "drums=NAME,bass=NAME" ("missing" where weights are missing), for /stage/status
    device: str
    home: Path
    bounces: Path
    web_url: str = P.NO_WEB  # the control room's address, "-" when it is off
    captures: "CaptureJobs | None" = None  # capture mode (serve --capture-device); None: not listening


# -- handlers: (context, address, *osc_args) -----------------------------------------------------

def on_ping(ctx: OscContext, address: str, *args: Any) -> None:
    ctx.send(P.PONG, *args[:1])


def on_tempo(ctx: OscContext, address: str, *args: Any) -> None:
    ctx.tempo.set(P.parse_tempo(args))


def on_cancel(ctx: OscContext, address: str, *args: Any) -> None:
    ctx.service.cancel(P.parse_cancel(args))


def on_status(ctx: OscContext, address: str, *args: Any) -> None:
    running = ctx.service.running
    if running is not None:  # the tempo the running job uses, and where it came from
        bpm, source = running.spec.bpm, running.spec.tempo_source
    else:
        tempo = ctx.tempo.current()
        bpm, source = (tempo.bpm, tempo.source) if tempo else (0.0, "none")
    ctx.send(P.STATUS, "busy" if running else "idle", ctx.service.queue_length, float(bpm), source, ctx.device,
             ctx.models)


def on_info(ctx: OscContext, address: str, *args: Any) -> None:
    """Where the daemon lives, so the device writes its recordings where they may be read, and
    the control room's address, so the device can show it."""
    ctx.send(P.INFO, str(ctx.home), str(ctx.bounces), ctx.web_url)


def on_generate(ctx: OscContext, address: str, *args: Any) -> None:
    ctx.service.submit(P.parse_generate(args, ctx.instruments), source="osc")


def on_capture(ctx: OscContext, address: str, *args: Any) -> None:
    req = P.parse_capture(args, ctx.instruments)
    if ctx.captures is None:
        raise P.ProtocolError("bad_request", "this daemon records no audio input: start it with --capture-device "
                                             "(see `stage-bridge doctor` for the inputs).")
    ctx.captures.submit(req, source="capture")


def on_unknown(client: Any, address: str, *args: Any) -> None:
    log.warning("ignored unknown OSC address %r from %s", address, client)


HANDLERS = {P.PING: on_ping, P.GENERATE: on_generate, P.TEMPO: on_tempo, P.CANCEL: on_cancel, P.STATUS: on_status,
            P.INFO: on_info, P.CAPTURE: on_capture}


def build_dispatcher(ctx: OscContext) -> Dispatcher:
    dispatcher = Dispatcher(strict_timing=False)  # bundles run now: a far-future timetag must not park the thread
    for address, handler in HANDLERS.items():
        dispatcher.map(address, functools.partial(handler, ctx))
    dispatcher.set_default_handler(on_unknown, needs_reply_address=True)
    return dispatcher


def dispatch(dispatcher: Dispatcher, data: bytes, client: Any, send: Send) -> None:
    """Parse one datagram (message or bundle) and run its handlers; malformed input is dropped.

    Addresses must match exactly: an OSC pattern such as `/stage/*` would otherwise reach every
    handler, `/stage/generate` included.
    """
    try:
        messages = [m.message for m in OscPacket(data).messages]
    except Exception as e:  # a fuzzed packet can trip any parser path
        log.warning("dropped a malformed OSC packet from %s (%d bytes): %s", client, len(data), e)
        return
    for msg in messages:
        if PATTERN_CHARS & set(msg.address):
            on_unknown(client, msg.address)
            continue
        for handler in dispatcher.handlers_for_address(msg.address):
            try:
                handler.invoke(client, msg)
            except P.ProtocolError as e:
                about_job = msg.address in (P.GENERATE, P.CANCEL) and msg.params and isinstance(msg.params[0], str)
                job_id = P.clip(msg.params[0], P.MAX_ECHO_CHARS) if about_job else _capture_job_id(msg)
                log.info("refused %s %s: %s", msg.address, job_id, e)
                send(P.ERROR, job_id, e.code, P.clip(str(e), P.MAX_MESSAGE_CHARS))
            except Exception:
                log.exception("handler for %s failed", msg.address)


def _capture_job_id(msg: Any) -> str:
    """The job_id a refused /stage/capture named (so its client can match the error), else ""."""
    if msg.address != P.CAPTURE:
        return ""
    params = list(msg.params[2:])
    for key, value in zip(params[::2], params[1::2]):
        if key == "job_id" and isinstance(value, str):
            return P.clip(value, P.MAX_ECHO_CHARS)
    return ""


# -- job events as replies ------------------------------------------------------------------------

class OscEvents:
    """jobs.Events: each state change of a job sent to the device. `after_done`: what else
    happens when a job is done, after its replies (capture mode's jam playback)."""

    def __init__(self, send: Send, after_done: Callable[[Job], None] | None = None):
        self.send = send
        self.after_done = after_done

    def accepted(self, job: Job, position: int) -> None:
        self.send(P.ACCEPTED, job.id, position)

    def progress(self, job: Job, percent: float) -> None:
        self.send(P.PROGRESS, job.id, float(percent))

    def done(self, job: Job) -> None:
        log.info("job %s done: %s", job.id, ", ".join(job.outputs))
        fits = [take_fit(Path(path)) for path in job.outputs] if job.spec.scores else []
        self.send(P.DONE, *P.done_args(job.id, job.outputs, fits))
        if job.spec.capture:  # capture mode: where the context began, and any dropout in it
            c = job.spec.capture
            self.send(P.CAPTURE_DONE, job.id, int(c["bar"]), int(c["start_sample"]), int(c["dropouts"]), *job.outputs)
        if self.after_done is not None:
            self.after_done(job)

    def failed(self, job: Job) -> None:
        log.info("job %s failed: %s %s", job.id, job.error_code, job.error_message)
        message = P.clip(job.error_message or "", P.MAX_MESSAGE_CHARS)
        self.send(P.ERROR, job.id, job.error_code or "engine_error", message)

    def cancelled(self, job: Job) -> None:
        self.send(P.CANCELLED, job.id)


def take_fit(wav: Path) -> dict[str, Any] | None:
    """The `fit` object of a published take's sidecar (the one record of its scores, whether
    this run or an interrupted one published it); None when it cannot be read."""
    try:
        with open_regular(wav.with_suffix(".json")) as f:
            fit = json.loads(f.read(1 << 20)).get("fit")
    except (OSError, ValueError, AttributeError):
        return None
    return fit if isinstance(fit, dict) else None


# -- the transport --------------------------------------------------------------------------------

def check_listen_host(host: str, allow_remote: bool) -> str:
    """Loopback unless explicitly allowed: OSC has no authentication."""
    if host not in LOOPBACK and not allow_remote:
        raise StageError(f"--osc-host {host} would accept commands from other computers; add --allow-remote "
                         "if that is really what you want (default: 127.0.0.1, this computer only).")
    return host


class UdpTransport:
    """Datagrams in (to a handler), OSC messages out to one reply address."""

    def __init__(self, host: str, port: int, reply_host: str, reply_port: int):
        if host not in LOOPBACK:
            log.warning("listening on %s: any computer that can reach this port can start jobs", host)
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._sock.bind((host, port))
        except OSError as e:
            self._sock.close()
            raise StageError(f"cannot listen on {host}:{port} ({e.strerror}): is another stage-bridge "
                             "running? Stop it or choose another --osc-port.") from None
        self._sock.settimeout(0.2)
        self._reply_addr = (reply_host, reply_port)
        self._reply = _reply_socket(reply_host, reply_port)

    @property
    def address(self) -> tuple[str, int]:
        return self._sock.getsockname()[:2]

    @property
    def reply_source(self) -> tuple[str, int]:
        """Where replies are sent from (the interface that reaches the reply host)."""
        return self._reply.getsockname()[:2]

    def send(self, address: str, *args: Any) -> None:
        try:
            self._reply.sendto(P.message(address, *args), self._reply_addr)
        except OSError as e:
            log.warning("could not send %s to %s:%s (%s)", address, *self._reply_addr, e)

    def serve(self, stop: threading.Event, handle: Callable[[bytes, Any], None]) -> None:
        """Hand every datagram to `handle(data, sender)` until `stop` is set."""
        while not stop.is_set():
            try:
                data, addr = self._sock.recvfrom(65536)
            except socket.timeout:
                continue
            except OSError:
                if stop.is_set():
                    return
                continue
            handle(data, addr)

    def close(self) -> None:
        self._sock.close()
        self._reply.close()


def _reply_socket(host: str, port: int) -> socket.socket:
    """A UDP socket bound to the local address that reaches `host` (127.0.0.1 for a loopback
    reply host), so that sending never binds it to every interface: an unbound socket gets
    0.0.0.0:<ephemeral> at its first send and accepts datagrams from any computer, which
    nothing ever reads. Where the route is unknown yet (a remote reply host while the network
    is down), the OS picks at the first send, as before, with a warning."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:  # connect() on UDP sends nothing: it only routes
            probe.connect((host, port))
            source = probe.getsockname()[0]
        sock.bind((source, 0))
    except OSError as e:
        log.warning("replies to %s:%s: no route yet (%s); the first reply picks the interface", host, port, e)
    return sock
