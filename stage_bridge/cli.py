"""`stage-bridge`: the command line.

User mistakes (bad arguments, missing files or weights) print one `error: ...` line and exit
with status 2, leaving no file behind; only bugs show a traceback.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import uuid
from pathlib import Path
from typing import Sequence

from . import __version__
from .argtypes import real, whole_number
from .bridge.config import DEFAULT_MODELS
from .errors import StageError
from .limits import MAX_CANDIDATES, MAX_TAKES

_DEFAULTS = " / ".join(DEFAULT_MODELS.values())

class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports errors in the same one-line form (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


PRECISION_HELP = ("decoder precision: fp32 (default), bf16 or fp16 (about 2x faster on a GPU), or int8 "
                  "(CPU only, not with --compile: int8 decoder weights, about 2.4x faster per step than fp32, "
                  "small logit differences; int4: faster still but far less faithful); the sidecar records which ran")
COMPILE_HELP = ("CPU, fp32 only: compile the decode step with TorchInductor (needs a C++ compiler); the first "
                "time on this machine each kind of generation compiles for a minute or two, later processes load "
                "it from the cache (about half a minute of tracing); then about 10%% faster per step")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="stage-bridge", description="Generate a drum or bass stem that fits your song.")
    p.add_argument("--version", action="version", version=f"stage-bridge {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)

    g = sub.add_parser("generate", help="generate a stem for a context audio file")
    g.add_argument("--context", type=Path, help="the song so far (WAV/FLAC/AIFF/OGG); optional with --context-mode click")
    g.add_argument("--instrument", required=True, help=" or ".join(DEFAULT_MODELS))
    g.add_argument("--bpm", type=real(), required=True, help="tempo in quarter notes per minute (30-300)")
    g.add_argument("--bars", type=whole_number(), required=True, help="length of the stem in bars")
    g.add_argument("--beats-per-bar", type=whole_number(), default=4)
    g.add_argument("--beat-unit", type=whole_number(), default=4, help="the meter's denominator (4 for 4/4, 8 for 6/8)")
    g.add_argument("--offset", type=real(), default=0.0, help="seconds from the context's start to its first downbeat")
    g.add_argument("--prompt", default="", help='optional text, e.g. "Genres: Rock. Moods: happy."')
    g.add_argument("--takes", type=whole_number(), default=1, help=f"how many variations to generate (1-{MAX_TAKES})")
    g.add_argument("--candidates", type=whole_number(), default=None, metavar="N",
                   help=f"generate N (in one batch, up to {MAX_CANDIDATES}) and keep the --takes that fit the grid best "
                        "(default: as many as --takes; takes are always ordered best first)")
    g.add_argument("--context-mode", default="mix", choices=["mix", "click", "mix+click"])
    g.add_argument("--click-gain-db", type=real(), default=-6.0, help="click level in mix+click mode")
    loud = g.add_mutually_exclusive_group()
    loud.add_argument("--loudness-offset", type=real(), default=None, metavar="LU",
                      help="how far under the context's loudness the takes arrive, in LU (default 6; "
                           "never so loud that they clip)")
    loud.add_argument("--no-loudness-match", dest="loudness_match", action="store_false",
                      help="keep the takes at the level the model made them")
    g.add_argument("--seed", type=int, default=None, help="same seed, same result (default: random, saved in the sidecar)")
    g.add_argument("--guidance", type=real(), default=3.0, help="classifier-free guidance scale")
    g.add_argument("--top-k", type=int, default=250)
    g.add_argument("--top-p", type=real(), default=0.0)
    g.add_argument("--temperature", type=real(), default=1.0)
    g.add_argument("--sample-rate", type=whole_number(), default=44100, help="output rate when there is no context file")
    g.add_argument("--model", default=None, help=f"model name or path (default: {_DEFAULTS})")
    g.add_argument("--weights-dir", type=Path, default=None, help="where named weights live")
    g.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    g.add_argument("--precision", default="fp32", help=PRECISION_HELP)
    g.add_argument("--compile", action="store_true", help=COMPILE_HELP + " (pays off in `serve`, rarely here)")
    g.add_argument("--out", type=Path, required=True, help="folder for the takes (created if missing)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=cmd_generate)

    w = sub.add_parser("weights", help="show which model weights are present, or fetch them")
    w.add_argument("--fetch", metavar="NAME", default=None, help="download a Hugging Face model (e.g. facebook/musicgen-small, t5-base)")
    w.add_argument("--weights-dir", type=Path, default=None)
    w.set_defaults(func=cmd_weights)

    s = sub.add_parser("serve", help="run the daemon: warm models, OSC for the Max for Live device, watched folders")
    s.add_argument("--model", action="append", default=None, metavar="NAME|INSTRUMENT=NAME",
                   help=f"model for every instrument, or per instrument (repeatable); default {_DEFAULTS}")
    s.add_argument("--device", default=None, help="auto (cuda > mps > cpu), cuda, mps or cpu")
    s.add_argument("--precision", default=None, help=PRECISION_HELP)
    s.add_argument("--compile", action="store_const", const=True, default=None,
                   help=COMPILE_HELP + "; the daemon compiles before it answers")
    s.add_argument("--osc-host", default=None, help="address to listen on (default 127.0.0.1)")
    s.add_argument("--osc-port", type=whole_number(), default=None, help="default 9000")
    s.add_argument("--reply-host", default=None, help="where replies go (default 127.0.0.1)")
    s.add_argument("--reply-port", type=whole_number(), default=None, help="default 9001")
    s.add_argument("--allow-remote", action="store_const", const=True, default=None,
                   help="allow --osc-host other than loopback (other computers can then start jobs)")
    s.add_argument("--midi-in", default=None, metavar="PORT_NAME", help='MIDI clock source, e.g. "IAC Driver Bus 1"')
    s.add_argument("--midi-api", default=None, help="auto, alsa, jack, coremidi or winmm")
    s.add_argument("--no-midi", dest="midi", action="store_const", const=False, default=None, help="no MIDI clock input")
    s.add_argument("--no-watch", dest="watch", action="store_const", const=False, default=None, help="do not watch inbox/")
    s.add_argument("--home", type=Path, default=None, help="folder for inbox/, outbox/, bounces/ and the job journal")
    s.add_argument("--allow-root", action="append", type=Path, default=None, metavar="DIR",
                   help="another folder contexts may be read from (repeatable)")
    s.add_argument("--queue-size", type=whole_number(), default=None)
    s.add_argument("--weights-dir", type=Path, default=None)
    s.add_argument("--config", type=Path, default=None, help="TOML config file (default: the platform's config folder)")
    s.add_argument("--log-level", default="INFO")
    s.add_argument("--web-port", type=whole_number(), default=None,
                   help="port of the control room page (default 9002; 0: any free port, the ready line tells)")
    s.add_argument("--web-host", default=None,
                   help="address of the control room (default 127.0.0.1; another needs --allow-remote and then a "
                        "token, printed once in the ready line; set your own with web_token in the config file)")
    s.add_argument("--no-web", dest="web", action="store_const", const=False, default=None,
                   help="no control room page")
    s.add_argument("--capture-device", default=None, metavar="NAME_OR_INDEX",
                   help="capture mode: record this audio input (see `stage-bridge doctor`) and generate over its "
                        "last bars on a MIDI note or /stage/capture (docs/any-daw.md)")
    s.add_argument("--play-device", default=None, metavar="NAME_OR_INDEX",
                   help="capture mode: play each finished take on this output, in time with the MIDI clock")
    s.set_defaults(func=cmd_serve)

    d = sub.add_parser("doctor", help="show devices, MIDI ports, weights and settings")
    d.add_argument("--config", type=Path, default=None)
    d.add_argument("--home", type=Path, default=None)
    d.set_defaults(func=cmd_doctor)

    j = sub.add_parser("jobs", help="list the daemon's job history")
    j.add_argument("--home", type=Path, default=None)
    j.add_argument("--limit", type=whole_number(), default=30)
    j.set_defaults(func=cmd_jobs)

    v = sub.add_parser("service", help="start the daemon automatically at login (install, uninstall, status)")
    v.add_argument("action", choices=["install", "uninstall", "status"],
                   help="install: start at every login (and now); uninstall: stop that; status: installed? running?")
    v.add_argument("--config", type=Path, default=None,
                   help="TOML config file the service's daemon reads (install) and status takes the ports from "
                        "(default: the one `serve` reads)")
    v.set_defaults(func=cmd_service)

    from .train.run import add_train_arguments

    t = sub.add_parser("train", help="fine-tune MusicGen into a STAGE model for any instrument")
    add_train_arguments(t)
    t.set_defaults(func=cmd_train)

    from .eval.command import add_eval_arguments

    e = sub.add_parser("eval", help="the STAGE paper's metrics (beat F1, FAD, KAD, COCOLA) of a model on a multitrack test set")
    add_eval_arguments(e)
    e.set_defaults(func=cmd_eval)

    # Listed for --help only: `main` hands everything after "bench" to the benchmark's own parser.
    sub.add_parser("bench", help="decoder speed benchmark (ours vs transformers)", add_help=False)
    return p


def cmd_generate(args: argparse.Namespace) -> int:
    from .audio.loudness import DEFAULT_OFFSET_LU
    from .bridge.job import StemJob
    from .bridge.runner import RenderSettings, load_context, render_and_publish, stem_request
    from .bridge.writer import ensure_writable
    from .engine.model import decode_precision, load_model, pick_device
    from .engine.quant import quantize_problem
    from .engine.sampling import SamplingParams
    from .errors import BadArgument

    instrument = args.instrument.strip().lower()
    if instrument not in DEFAULT_MODELS and args.model is None:
        raise BadArgument(f"unknown instrument '{args.instrument}'; use {' or '.join(DEFAULT_MODELS)} "
                          "(or give --model for your own).")
    if args.context is None and args.context_mode != "click":
        raise BadArgument(f"--context is required with --context-mode {args.context_mode} (or use --context-mode click).")
    context_path = str(args.context.resolve()) if args.context is not None else ""
    job = StemJob(id=f"cli-{uuid.uuid4().hex[:12]}", source="cli", name=args.context.stem if args.context else "click",
                  context_path=context_path, instrument=instrument, bars=args.bars, bpm=args.bpm,
                  beats_per_bar=args.beats_per_bar, beat_unit=args.beat_unit, offset=args.offset, prompt=args.prompt,
                  takes=args.takes, context_mode=args.context_mode, seed=args.seed, candidates=args.candidates)
    offset = args.loudness_offset if args.loudness_offset is not None else DEFAULT_OFFSET_LU
    settings = RenderSettings(sample_rate=args.sample_rate, click_gain_db=args.click_gain_db,
                              sampling=SamplingParams(args.guidance, args.top_k, args.top_p, args.temperature),
                              loudness_offset_lu=offset if args.loudness_match else None)
    request = stem_request(job, load_context(job), settings)
    request.validate()
    request.sampling.validate()
    dtype, quantize = decode_precision(args.precision)  # a wrong name is refused before any folder is made
    if quantize is not None and (problem := quantize_problem(quantize, pick_device(args.device), dtype, args.compile)):
        raise BadArgument(problem)
    out_dir = ensure_writable(args.out)

    model = load_model(args.model or DEFAULT_MODELS[instrument], args.device, args.weights_dir, args.precision,
                       compile=args.compile)
    if model.is_random:
        print(f"warning: model '{model.name}' has random weights and produces noise (for tests and demos only)",
              file=sys.stderr)
    progress = None if args.quiet else ProgressBar()
    try:
        paths, result = render_and_publish(model, job, request, out_dir, settings, progress=progress)
    finally:
        if progress is not None:
            progress.close()
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for path, fit in zip(paths, result.fits):
        print(path)
        print(f"  score {fit.score:.2f}, grid {fit.grid_f1:.2f}" +
              (f", {fit.offset_ms:+.0f} ms" if fit.offset_ms is not None else ""), file=sys.stderr)
    return 0


class ProgressBar:
    """A tqdm bar fed by the engine's (done, total) progress callback."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="step", desc="generating", file=sys.stderr, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _serve_settings(args: argparse.Namespace) -> dict:
    keys = ("model", "device", "precision", "compile", "osc_host", "osc_port", "reply_host", "reply_port", "allow_remote", "midi",
            "midi_in", "midi_api", "watch", "home", "allow_root", "queue_size", "weights_dir")
    keys += ("web", "web_host", "web_port", "capture_device", "play_device")
    return {k: getattr(args, k, None) for k in keys}


def cmd_serve(args: argparse.Namespace) -> int:
    from .bridge.config import load_config
    from .bridge.daemon import run_daemon

    logging_level = getattr(__import__("logging"), str(args.log_level).upper(), None)
    if not isinstance(logging_level, int):
        from .errors import BadArgument
        raise BadArgument(f"--log-level {args.log_level}: use DEBUG, INFO, WARNING or ERROR.")
    return run_daemon(load_config(_serve_settings(args), config_file=args.config), logging_level)


def cmd_doctor(args: argparse.Namespace) -> int:
    from .bridge.config import load_config
    from .bridge.daemon import doctor

    return doctor(load_config({"home": args.home}, config_file=args.config))


def cmd_jobs(args: argparse.Namespace) -> int:
    from .bridge.config import load_config
    from .bridge.jobs import Journal

    cfg = load_config({"home": args.home})
    if not cfg.journal_path.exists():
        print(f"no jobs yet ({cfg.journal_path} does not exist)")
        return 0
    journal = Journal(cfg.journal_path)
    for job in journal.history(args.limit):
        when = _dt.datetime.fromtimestamp(job.created).strftime("%Y-%m-%d %H:%M:%S")
        spec = job.spec
        what = f"{spec.instrument} {spec.bars} bars @ {spec.bpm} bpm ({spec.source})"
        detail = ", ".join(job.outputs) if job.outputs else (f"{job.error_code}: {job.error_message}" if job.error_code else "")
        print(f"{when}  {job.id:<24} {job.state:<9} {what}  {detail}")
    journal.close()
    return 0


def cmd_service(args: argparse.Namespace) -> int:
    from .bridge import service
    from .bridge.config import load_config

    host = service.Host.current()
    if args.config is not None and not args.config.is_file():
        from .errors import BadArgument
        raise BadArgument(f"--config {args.config}: no such file; give the path of your TOML config file.")
    if args.action == "uninstall":
        return service.uninstall(host, service.run_command, print)
    cfg = load_config({}, config_file=args.config)  # the ports the daemon will use; a bad file is refused here
    if args.action == "install":
        return service.install(host, cfg, service.run_command, print, config_file=args.config)
    return service.status(host, cfg, service.run_command, print)


def cmd_weights(args: argparse.Namespace) -> int:
    from .engine.checkpoints import STAGE_NAMES, default_weights_dir, hub_snapshot, missing_weights_help

    weights_dir = args.weights_dir or default_weights_dir()
    if args.fetch:
        if args.fetch in STAGE_NAMES:
            print(missing_weights_help(args.fetch, weights_dir))
            return 0
        snap = hub_snapshot(args.fetch, allow_download=True)
        if snap is None:
            from .errors import WeightsMissing
            raise WeightsMissing(f"could not download '{args.fetch}' (no network, or no such model on the Hugging Face hub).")
        print(f"{args.fetch}: {snap}")
        return 0
    print(f"weights folder: {weights_dir}")
    for name in STAGE_NAMES:
        f = weights_dir / f"{name}.safetensors"
        print(f"  {name:<24} {'present' if f.exists() else 'missing'}  {f}")
    for repo in ("facebook/musicgen-small", "t5-base"):
        snap = hub_snapshot(repo)
        print(f"  {repo:<24} {'present' if snap else 'missing'}  {snap or '(Hugging Face cache)'}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train.run import run_training

    return run_training(args)


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval.command import run_eval

    return run_eval(args)


def prefer_huge_pages() -> None:
    """Ask PyTorch to back its large CPU tensors (weights, KV cache) with transparent huge pages.

    Why: a decode step streams ~1.4 GB of weights; with 4 KiB pages the packed-weight products
    reached 0.80-0.85 of the copy bandwidth on a 2-core AMD EPYC, with huge pages 0.86-1.0.
    PyTorch reads THP_MEM_ALLOC_ENABLE once, at its first allocation, so this only acts before
    torch is imported (a user's own setting wins; Linux only, elsewhere it changes nothing).
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def main(argv: Sequence[str] | None = None) -> int:
    prefer_huge_pages()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:1] == ["bench"]:
        from .bench import main as bench_main
        return bench_main(argv[1:])
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error already printed
        return int(e.code or 0)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except StageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
