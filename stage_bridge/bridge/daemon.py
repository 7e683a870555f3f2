"""`stage-bridge serve` and `stage-bridge doctor`: models, MIDI clock, then the server, until a signal.

Models load once, before the daemon answers: a musician's first request must not wait for
weights. A model whose weights are missing does not stop the daemon (the device can still
connect and say what is wrong); its jobs fail with `weights_missing`. They load on a thread
that ends before the jobs' worker starts (`on_own_thread`), so the worker is the only thread
running PyTorch's CPU kernels. The main thread waits for SIGINT/SIGTERM and then stops
everything cleanly.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Callable, TypeVar

from ..audio.fit import warm_up as warm_up_fit
from ..errors import StageError
from .config import ServeConfig
from .osc import LOOPBACK, check_listen_host
from .server import Server

if TYPE_CHECKING:
    from ..engine.model import StageModel
    from .capture import Capture
    from .midiclock import MidiClockInput
    from .playback import Playback

log = logging.getLogger("stage_bridge.daemon")
T = TypeVar("T")


def on_own_thread(work: Callable[[], T], name: str = "stage-bridge-loader") -> T:
    """`work()` run on a thread of its own that ends with it: its result, or its exception.

    Why: PyTorch's CPU kernels run on OpenMP (libgomp in PyTorch's Linux builds), which keeps a
    pool of threads for every thread that has run a parallel region, for as long as that thread
    lives. Loading a model runs such regions (packing the weights), and jobs decode on the
    worker thread; loaded on the main thread, two pools would live side by side, and once
    libgomp manages more threads than there are CPUs it stops spinning between regions
    (`gomp_managed_threads > gomp_available_cpus` in libgomp's config/linux/wait.h: a short
    throttled spin, then a futex sleep), so every parallel region of every decode step waits
    for sleeping threads to wake. Measured on a 2-core AMD EPYC (int8 decoder, 500 context
    frames): 49 ms per step on the worker with the main thread's pool alive, 28-32 without it.
    A thread that ends takes its pool with it (tests/test_engine_thread.py checks this).

    Ctrl+C meanwhile cannot stop `work` halfway (PyTorch's C++ code would be cut off as the
    interpreter exits, which aborts the process with "terminate called without an active
    exception"): the first waits for it to end, then stops as before; a second stops at once.
    """
    box: dict[str, object] = {}
    ended = threading.Event()  # not Thread.join: on Python 3.11 a join cut by Ctrl+C marks the thread ended

    def run() -> None:
        try:
            box["result"] = work()
        except BaseException as e:  # noqa: BLE001 - handed to the caller as it was
            box["error"] = e
        finally:
            ended.set()

    thread = threading.Thread(target=run, name=name, daemon=True)
    try:
        thread.start()
        ended.wait()
    except KeyboardInterrupt:
        if not thread.is_alive():  # not started yet, or ended already: nothing runs that could be cut
            raise
        # nothing is written while loading, so a second Ctrl+C may skip the interpreter's exit (and its abort)
        previous = signal.signal(signal.SIGINT, lambda *_: os._exit(130))
        print("stopping once the model being loaded is in (a few seconds); Ctrl+C again stops at once",
              file=sys.stderr, flush=True)
        ended.wait()
        thread.join()
        signal.signal(signal.SIGINT, previous)
        raise
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


def load_models(cfg: ServeConfig) -> "tuple[dict[str, StageModel | StageError], str]":
    """instrument -> StageModel (or the StageError saying why not); models shared by name."""
    from ..engine.checkpoints import resolve
    from ..engine.compiled import compile_problem
    from ..engine.model import build_model, decode_precision, pick_device

    device = pick_device(cfg.device)
    dtype, quantize = decode_precision(cfg.precision)
    if quantize is not None and device.type != "cpu":  # a config written for a laptop, run on a GPU
        log.warning("--precision %s is for the CPU; on %s the models run in fp32 (--precision bf16 is the fast "
                    "choice there). Each take's sidecar says which precision ran.", quantize, device.type)
        dtype, quantize = decode_precision("fp32")
    compile = cfg.compile
    if compile and quantize is not None:
        log.warning("--compile does not apply to --precision %s (its integer kernels run eager); continuing "
                    "without it.", quantize)
        compile = False
    if compile and (problem := compile_problem(device, dtype)) is not None:
        log.warning("%s Continuing without it (a speed option only).", problem)
        compile = False
    if device.type == "cpu":  # built here, before `ready`, where it is built at all (engine/kernels.py)
        from ..engine import kernels

        if kernels.library() is None and quantize is not None:
            log.warning("our CPU decode kernels are not used (%s): --precision %s decodes about half as fast "
                        "with PyTorch's own.", kernels.why_not(), quantize)
    loaded: "dict[str, StageModel | StageError]" = {}
    models: "dict[str, StageModel | StageError]" = {}
    for instrument, name in cfg.models.items():
        if name not in loaded:
            try:
                log.info("loading model %s for %s on %s ...", name, instrument, device)
                loaded[name] = build_model(resolve(name, cfg.weights_dir), device, dtype, compile=compile,
                                           quantize=quantize)
                if loaded[name].is_random:
                    log.warning("model %s has random weights: it produces noise (tests and demos only)", name)
                if compile:
                    compile_decode_step(loaded[name])
            except StageError as e:
                log.warning("%s: %s", instrument, e)
                loaded[name] = e
        models[instrument] = loaded[name]
    return models, str(device)


def compile_decode_step(model: "StageModel") -> None:
    """Compile the decode step before the daemon answers, as weights are loaded before: the first
    job must not wait for it. This compiles the commonest kind (one take, no prompt); others
    (more takes, a prompt) compile at their first job."""
    import time

    from ..engine.generate import warm_up

    log.info("compiling the decode step of %s for this CPU (one-time; a minute or two on few cores) ...", model.name)
    t = time.perf_counter()
    warm_up(model.decoder)
    log.info("compiled in %.0f s", time.perf_counter() - t)


def open_midi(cfg: ServeConfig) -> "MidiClockInput | None":
    if not cfg.midi:
        return None
    from .midiclock import MidiClockInput

    try:
        midi = MidiClockInput(cfg.midi_in, cfg.midi_api)
    except StageError as e:
        log.warning("no MIDI clock: %s (tempo then comes from the device's /stage/tempo)", e)
        return None
    log.info("MIDI clock input: %s (%s)", midi.port_name, midi.api)
    return midi


def open_capture(cfg: ServeConfig) -> "Capture | None":
    """Capture mode's input, or None; a named input that cannot be opened stops the start (the
    musician asked for it: running without would only fail later, at every trigger)."""
    if cfg.capture_device is None:
        return None
    from .capture import Capture, find_device

    capture = Capture(find_device(cfg.capture_device))
    log.info("capture input: %s (%s), %d Hz, %d channel(s)", capture.device.name, capture.device.host_api,
             capture.sample_rate, capture.channels)
    return capture


def open_playback(cfg: ServeConfig, midi: "MidiClockInput | None") -> "Playback | None":
    """Jam playback's output, or None (it needs capture mode and a MIDI clock to follow)."""
    if cfg.play_device is None:
        return None
    if cfg.capture_device is None or midi is None:
        log.warning("--play-device is for capture mode with a MIDI clock (--capture-device and a clock input); "
                    "no jam playback")
        return None
    from .capture import find_device
    from .playback import Playback

    playback = Playback(find_device(cfg.play_device, "output"), midi.tracker)
    log.info("jam playback on: %s (%s), %d Hz", playback.device.name, playback.device.host_api, playback.sample_rate)
    return playback


def run_daemon(cfg: ServeConfig, level: int = logging.INFO) -> int:
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    check_listen_host(cfg.osc_host, cfg.allow_remote)  # refuse at once, before minutes of model loading
    if cfg.web:
        from .web import check_web_host
        check_web_host(cfg.web_host, cfg.allow_remote)
    if cfg.capture_device is not None:  # likewise a capture device that is not there
        from .capture import find_device
        find_device(cfg.capture_device)
        if cfg.play_device is not None:
            find_device(cfg.play_device, "output")
    models, device = on_own_thread(lambda: load_models(cfg))
    started = time.perf_counter()
    on_own_thread(warm_up_fit)  # the beat tracker's one-time start (seconds) is paid before `ready`, not by a take
    log.info("beat tracker ready in %.1f s", time.perf_counter() - started)
    midi = open_midi(cfg)
    capture = playback = None
    try:
        inputs = {"MIDI clock": f"{midi.port_name} ({midi.api})"} if midi else {}
        capture = open_capture(cfg)
        if capture is not None:
            inputs["capture"] = cfg.capture_device
            if midi is None:
                log.warning("capture mode without a MIDI clock: captures are refused until the daemon is started "
                            "with a MIDI clock input (it says where the bar lines are)")
        playback = open_playback(cfg, midi)
        if playback is not None:
            inputs["jam playback"] = cfg.play_device
        server = Server(cfg, models, device, clock=midi, inputs=inputs, capture=capture,
                        ticks=midi.tracker if midi else None, playback=playback)
    except StageError:
        for part in (midi, capture, playback):
            if part:
                part.close()
        raise
    if midi is not None and server.captures is not None:
        midi.listener = server.captures.on_midi
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    # The OSC thread must get the interpreter quickly while the worker runs Python code between
    # kernels: a 1 ms switch interval (default 5 ms) keeps ping answers within milliseconds.
    sys.setswitchinterval(0.001)
    server.start()  # resumes journal jobs first, so the watcher cannot queue one twice
    if cfg.watch:
        from .watcher import InboxWatcher
        server.add_thread(InboxWatcher(server.service, cfg.inbox, tuple(models)).run, "stage-bridge-inbox")
    host, port = server.osc_address
    web = f"web {server.web.url}" if server.web else "web off"  # the only place a token is printed
    print(f"stage-bridge ready: OSC {host}:{port}, replies to {cfg.reply_host}:{cfg.reply_port}, "
          f"device {device}, home {cfg.home}, {web}", file=sys.stderr, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        log.info("stopping ...")
        if midi:
            midi.listener = None
        server.stop()
        for part in (midi, capture, playback):
            if part:
                part.close()
        log.info("stopped")
    return 0


def web_address(cfg: ServeConfig) -> str:
    """The control room's address as `doctor` tells it (the token, when one is needed, only `serve` prints)."""
    host = f"[{cfg.web_host}]" if ":" in cfg.web_host else cfg.web_host
    needs_token = cfg.web_token is not None or cfg.web_host not in LOOPBACK
    return f"http://{host}:{cfg.web_port}/" + (" (add ?token=... as `serve` prints it)" if needs_token else "")


def doctor(cfg: ServeConfig) -> int:
    """Print what the daemon would find: devices, MIDI ports, weights, folders and settings."""
    import torch

    from ..engine.checkpoints import STAGE_NAMES, default_weights_dir
    from .config import default_config_file

    print(f"config file: {default_config_file()} ({'present' if default_config_file().exists() else 'not present'})")
    print(f"home: {cfg.home}  (inbox/, outbox/, bounces/, jobs.sqlite3)")
    print(f"OSC: listen {cfg.osc_host}:{cfg.osc_port}, reply to {cfg.reply_host}:{cfg.reply_port}")
    print(f"control room: {web_address(cfg)}" if cfg.web else "control room: off (web = false / --no-web)")
    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    print(f"devices: cuda {'yes: ' + torch.cuda.get_device_name(0) if cuda else 'no'}, mps {'yes' if mps else 'no'}, "
          f"cpu yes ({torch.get_num_threads()} threads); --device {cfg.device}")
    on_cpu = not cuda and not mps if cfg.device == "auto" else cfg.device == "cpu"
    print(f"precision: {cfg.precision}" + ((" (integer weights)" if on_cpu else " (CPU only: fp32 on this device)")
                                           if cfg.precision in ("int8", "int4") else "")
          + (", decode step compiled" if cfg.compile else ""))
    if on_cpu:
        from ..engine import kernels

        kern = kernels.library()  # built on first use for this processor (a second or two), then cached
        print(f"CPU decode kernels: {kern.kind} (ours: attention; with --precision int8/int4 the whole step)" if kern
              else f"CPU decode kernels: not used ({kernels.why_not()}); PyTorch's own kernels run instead")
    weights_dir = cfg.weights_dir or default_weights_dir()
    print(f"weights folder: {weights_dir}")
    for instrument, name in cfg.models.items():
        present = "built in" if name == "tiny-random" else (
            "present" if name not in STAGE_NAMES or (weights_dir / f"{name}.safetensors").exists() else "MISSING")
        print(f"  {instrument}: {name} ({present})")
    try:
        from .midiclock import list_input_ports
        ports = list_input_ports(cfg.midi_api)
        print(f"MIDI inputs ({cfg.midi_api}): {', '.join(ports) if ports else 'none'}")
    except StageError as e:
        print(f"MIDI: unavailable ({e})")
    from .capture import list_devices

    for direction, option in (("input", "--capture-device"), ("output", "--play-device")):
        try:
            devices = list_devices(direction)
        except StageError as e:
            print(f"audio {direction}s: unavailable ({e})")
            break
        print(f"audio {direction}s (for {option}, by number or name):" if devices else f"audio {direction}s: none")
        for d in devices:
            print(f"  {d.index}: {d.name} ({d.host_api}), {d.channels} channel(s), rates "
                  f"{', '.join(map(str, d.rates)) or 'none of the usual'} (default {d.default_rate})")
    if cfg.capture_device is not None:
        print(f"capture: {cfg.capture_device}, {cfg.capture_bars} bars per trigger, trigger notes {cfg.triggers}")
    return 0
