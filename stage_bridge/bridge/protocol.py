"""The OSC protocol between the DAW (the Max for Live device) and the daemon.

Plain data and pure functions: parsing and validating inbound messages into typed requests,
and building outbound messages. No sockets here, so the device's logic, the daemon and the
tests share one definition. docs/protocol.md is the human-readable version of this file.

Inbound (to the daemon's osc-port):
    /stage/ping [token]
    /stage/generate <job_id:s> <context_path:s> <instrument:s> <bars:i> [key value]...
        keys: bpm f, beats_per_bar i, beat_unit i, offset f, prompt s, takes i,
              context_mode s (mix|click|mix+click; default mix+click), seed i,
              candidates i (generate this many, keep the best `takes`), scores i (1: done carries them)
    /stage/tempo <bpm:f> [beats_per_bar:i beat_unit:i]
    /stage/cancel <job_id:s>
    /stage/status
    /stage/info
    /stage/capture <instrument:s> <bars:i> [key value]...     (capture mode: serve --capture-device)
        keys: job_id s, beats_per_bar i, beat_unit i, prompt s, takes i, context_mode s, seed i
Outbound (to reply-host:reply-port):
    /stage/pong [token]
    /stage/job/accepted <job_id> <queue_position:i>
    /stage/job/progress <job_id> <percent:f>
    /stage/job/done <job_id> <path>... [take <k:i> (<score key:s> <value:f|i>)...]...  (scores: if asked)
    /stage/job/error <job_id> <code:s> <message:s>
    /stage/job/cancelled <job_id>
    /stage/status <state:s> <queue_length:i> <bpm:f> <tempo_source:s> <device:s> <model:s>
    /stage/info <home:s> <bounces:s> <web_url:s>   (web_url "-" when the control room is off)
    /stage/capture/taken <job_id> <bar:i> <bars:i> <start_sample:i> <bpm:f> <dropouts:i> <error_ms:f>
    /stage/capture/done <job_id> <bar:i> <start_sample:i> <dropouts:i> <path>...   (after /stage/job/done)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from pythonosc.osc_message_builder import OscMessageBuilder

from ..audio.context import CONTEXT_MODES
from ..audio.timing import BEAT_UNITS, BEATS_PER_BAR_RANGE, BPM_RANGE, is_int
from ..errors import StageError
from ..limits import MAX_BARS, MAX_CANDIDATES, MAX_JOB_ID_CHARS, MAX_OFFSET_S, MAX_PROMPT_CHARS, MAX_SEED, MAX_TAKES

PING, GENERATE, TEMPO, CANCEL, STATUS = "/stage/ping", "/stage/generate", "/stage/tempo", "/stage/cancel", "/stage/status"
INFO = "/stage/info"  # asked and answered under the same address
PONG = "/stage/pong"
ACCEPTED, PROGRESS, DONE = "/stage/job/accepted", "/stage/job/progress", "/stage/job/done"
ERROR, CANCELLED = "/stage/job/error", "/stage/job/cancelled"
CAPTURE, CAPTURE_TAKEN, CAPTURE_DONE = "/stage/capture", "/stage/capture/taken", "/stage/capture/done"

INSTRUMENTS = ("drums", "bass")
DEFAULT_CONTEXT_MODE = "mix+click"
JOB_ID = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_JOB_ID_CHARS - 1}}}")
# What a reply echoes of what it was sent, at most: a refused job id (which may be longer than a valid
# one) and the error message. So every reply fits one UDP datagram, however long the message it answers.
MAX_ECHO_CHARS = 200
MAX_MESSAGE_CHARS = 1000

_UNITS = ", ".join(map(str, BEAT_UNITS[:-1])) + f" or {BEAT_UNITS[-1]}"

# Every error code the daemon sends in /stage/job/error, with what it means for the musician.
ERROR_CODES = {
    "bad_request": "the message has the wrong number or kinds of arguments",
    "bad_job_id": f"job ids are 1-{MAX_JOB_ID_CHARS} letters, digits, '.', '_' or '-'",
    "duplicate_job": "a job with this id is already queued or running",
    "bad_instrument": "the instrument is not one the daemon has a model for",
    "bad_bars": f"bars must be a whole number from 1 to {MAX_BARS}",
    "bad_tempo": (f"bpm must be {BPM_RANGE[0]}-{BPM_RANGE[1]}; beats_per_bar {BEATS_PER_BAR_RANGE[0]}-"
                  f"{BEATS_PER_BAR_RANGE[1]}; beat_unit {_UNITS}"),
    "bad_option": "an unknown option key, or a value of the wrong kind or range",
    "no_tempo": "no tempo: none in the request, no /stage/tempo, no MIDI clock",
    "forbidden_path": "the context file is outside the folders the daemon may read",
    "file_missing": "the context file does not exist",
    "not_audio": "the context file is not readable audio",
    "empty_audio": "the context file is empty or silent",
    "non_finite_audio": "the context file contains NaN or infinite samples",
    "queue_full": "too many jobs are waiting; try again when one finishes",
    "too_large": "the job needs more memory than this machine has free; the message says the most bars that fit",
    "unknown_job": "no queued or running job has this id",
    "weights_missing": "model weights are missing on the daemon's machine",
    "out_of_memory": "the GPU or computer ran out of memory for this job",
    "output_not_writable": "the daemon cannot write into its outbox folder",
    "disk_full": "the disk of the daemon's home folder is full; free some space and try again",
    "engine_error": "the generation failed for another reason (see the daemon's log)",
}


class ProtocolError(StageError):
    """A request the daemon refuses; `code` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str):
        assert code in ERROR_CODES, code
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class GenerateRequest:
    """A validated `/stage/generate` (or inbox file): what was asked, before the daemon fills in
    the tempo it knows and resolves the path. `bpm`, `beats_per_bar`, `beat_unit` None: not given."""

    job_id: str
    context_path: str
    instrument: str
    bars: int
    bpm: float | None = None
    beats_per_bar: int | None = None
    beat_unit: int | None = None
    offset: float = 0.0
    prompt: str = ""
    takes: int = 1
    context_mode: str = DEFAULT_CONTEXT_MODE
    seed: int | None = None
    candidates: int | None = None
    scores: bool = False


@dataclass(frozen=True)
class Tempo:
    """A project tempo and where it came from ("osc": /stage/tempo, "midi": MIDI clock).
    Meter None: the source does not say (MIDI clock never does)."""

    bpm: float
    beats_per_bar: int | None = None
    beat_unit: int | None = None
    source: str = "osc"


# -- validation helpers ------------------------------------------------------------------------

def _is_number(v: Any) -> bool:
    if is_int(v):
        return abs(v) <= 2**63  # math.isfinite would overflow on ints past float range
    return isinstance(v, float) and math.isfinite(v)


def _whole(v: Any) -> Any:
    """Max sends numbers from number boxes as floats at times: 4.0 counts as 4."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def check_bpm(bpm: Any) -> float:
    if not _is_number(bpm) or not BPM_RANGE[0] <= bpm <= BPM_RANGE[1]:
        raise ProtocolError("bad_tempo", f"bpm {bpm!r} is not usable: give a number from {BPM_RANGE[0]} to "
                                         f"{BPM_RANGE[1]}.")
    return float(bpm)


def check_meter(beats_per_bar: Any, beat_unit: Any) -> tuple[int | None, int | None]:
    lo, hi = BEATS_PER_BAR_RANGE
    if beats_per_bar is not None and (not is_int(beats_per_bar) or not lo <= beats_per_bar <= hi):
        raise ProtocolError("bad_tempo", f"beats_per_bar {beats_per_bar!r} must be a whole number from {lo} to {hi}.")
    if beat_unit is not None and (not is_int(beat_unit) or beat_unit not in BEAT_UNITS):
        raise ProtocolError("bad_tempo", f"beat_unit {beat_unit!r} must be {_UNITS}.")
    return beats_per_bar, beat_unit


def check_bars(bars: Any) -> int:
    bars = _whole(bars)
    if not is_int(bars) or not 1 <= bars <= MAX_BARS:
        raise ProtocolError("bad_bars", f"bars {bars!r} must be a whole number from 1 to {MAX_BARS}.")
    return int(bars)


def check_job_id(job_id: Any) -> str:
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        shown = clip(job_id, MAX_ECHO_CHARS) if isinstance(job_id, str) else job_id
        raise ProtocolError("bad_job_id", f"job id {shown!r}: use 1-{MAX_JOB_ID_CHARS} letters, digits, '.', '_' "
                                          "or '-'.")
    return job_id


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, marked with "..." where cut: what a reply may echo of
    what it was sent (job ids, paths, values) without outgrowing a datagram."""
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


OPTION_TYPES = {"bpm": "number", "beats_per_bar": "int", "beat_unit": "int", "offset": "number", "prompt": "str",
                "takes": "int", "context_mode": "str", "seed": "int", "candidates": "int", "scores": "int"}
_KIND_CHECKS = {"int": is_int, "number": _is_number, "str": lambda v: isinstance(v, str)}


def parse_options(options: Mapping[Any, Any]) -> dict[str, Any]:
    """Validate a request's optional settings by name: the key value pairs of `/stage/generate`
    and the keys of an inbox sidecar both come here, so they are checked by the same rules.

    Returns every option, normalised, with its default where not given (bpm and meter None).
    """
    for key, value in options.items():
        kind = OPTION_TYPES.get(key) if isinstance(key, str) else None
        if kind is None:
            raise ProtocolError("bad_option", f"unknown option {key!r}; known: {', '.join(OPTION_TYPES)}.")
        if not _KIND_CHECKS[kind](_whole(value) if kind == "int" else value):
            raise ProtocolError("bad_option", f"option {key} needs a {kind}, got {value!r}.")
    opts = {k: (_whole(v) if OPTION_TYPES[k] == "int" else v) for k, v in options.items()}
    bpm = check_bpm(opts["bpm"]) if "bpm" in opts else None
    bpb, unit = check_meter(opts.get("beats_per_bar"), opts.get("beat_unit"))
    offset = float(opts.get("offset", 0.0))
    if not 0 <= offset <= MAX_OFFSET_S:
        raise ProtocolError("bad_option", f"offset {offset} must be 0 to {MAX_OFFSET_S} seconds.")
    takes = opts.get("takes", 1)
    if not 1 <= takes <= MAX_TAKES:
        raise ProtocolError("bad_option", f"takes {takes} must be 1 to {MAX_TAKES}.")
    mode = opts.get("context_mode", DEFAULT_CONTEXT_MODE)
    if mode not in CONTEXT_MODES:
        raise ProtocolError("bad_option", f"context_mode {mode!r}: use one of {', '.join(CONTEXT_MODES)}.")
    seed = opts.get("seed")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise ProtocolError("bad_option", f"seed {seed} must be 0 to {MAX_SEED}.")
    prompt = opts.get("prompt", "")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ProtocolError("bad_option", f"prompt is longer than {MAX_PROMPT_CHARS} characters.")
    candidates = opts.get("candidates")
    if candidates is not None and not takes <= candidates <= MAX_CANDIDATES:
        raise ProtocolError("bad_option", f"candidates {candidates} must be from takes ({takes}) to {MAX_CANDIDATES}: "
                                          "that many are generated and the best takes kept.")
    scores = opts.get("scores", 0)
    if scores not in (0, 1):
        raise ProtocolError("bad_option", f"scores {scores} must be 0 or 1 (1: /stage/job/done carries each take's "
                                          "scores).")
    return {"bpm": bpm, "beats_per_bar": bpb, "beat_unit": unit, "offset": offset, "prompt": prompt, "takes": takes,
            "context_mode": mode, "seed": seed, "candidates": candidates, "scores": bool(scores)}


def check_instrument(instrument: Any, instruments: Sequence[str]) -> str:
    if not isinstance(instrument, str) or instrument.strip().lower() not in instruments:
        raise ProtocolError("bad_instrument", f"instrument {instrument!r}: use one of {', '.join(instruments)}.")
    return instrument.strip().lower()


def make_request(job_id: str, context_path: str, instrument: str, bars: int,
                 options: Mapping[str, Any]) -> GenerateRequest:
    """The request from checked positional fields and `parse_options`'s result (OSC and inbox)."""
    if options["context_mode"] != "click" and not context_path:
        raise ProtocolError("bad_request", f"context_mode {options['context_mode']} needs a context_path (only "
                                           "click mode works without).")
    return GenerateRequest(job_id, context_path, instrument, bars, **options)


# `context_path` value meaning "no context" (click mode). An empty OSC string also works, but Max may drop an
# empty symbol between [js] and [udpsend], so the Max device sends this; no absolute path can be "-".
NO_CONTEXT = "-"
NO_WEB = "-"  # /stage/info's web_url when the daemon serves no control room page


def parse_generate(args: Sequence[Any], instruments: Sequence[str] = INSTRUMENTS) -> GenerateRequest:
    """Validate `/stage/generate` arguments. The job id is checked first so errors can name it."""
    if len(args) < 4:
        raise ProtocolError("bad_request", "/stage/generate needs job_id, context_path, instrument, bars "
                                           "followed by optional key value pairs.")
    job_id = check_job_id(args[0])
    context_path = args[1]
    if not isinstance(context_path, str):
        raise ProtocolError("bad_request", "context_path must be a string (it may be empty in click mode).")
    if context_path == NO_CONTEXT:
        context_path = ""
    instrument = check_instrument(args[2], instruments)
    bars = check_bars(args[3])
    rest = list(args[4:])
    if len(rest) % 2:
        raise ProtocolError("bad_option", f"options come in key value pairs; '{rest[-1]}' has no value.")
    for key in rest[::2]:  # unhashable or odd keys are refused before they meet a dict
        if not isinstance(key, str) or key not in OPTION_TYPES:
            raise ProtocolError("bad_option", f"unknown option {key!r}; known: {', '.join(OPTION_TYPES)}.")
    return make_request(job_id, context_path, instrument, bars, parse_options(dict(zip(rest[::2], rest[1::2]))))


@dataclass(frozen=True)
class CaptureRequest:
    """A validated `/stage/capture` (or MIDI note trigger): generate over the last `bars` whole
    bars of the capture input. `job_id` "" lets the daemon name the job; the tempo always
    comes from the MIDI clock (what the bars took), so bpm and offset are not options."""

    instrument: str
    bars: int
    job_id: str = ""
    beats_per_bar: int | None = None
    beat_unit: int | None = None
    prompt: str = ""
    takes: int = 1
    context_mode: str = DEFAULT_CONTEXT_MODE
    seed: int | None = None


CAPTURE_OPTIONS = ("job_id", "beats_per_bar", "beat_unit", "prompt", "takes", "context_mode", "seed")


def parse_capture(args: Sequence[Any], instruments: Sequence[str] = INSTRUMENTS) -> CaptureRequest:
    """Validate `/stage/capture <instrument> <bars> [key value]...` (options as parse_options)."""
    if len(args) < 2:
        raise ProtocolError("bad_request", "/stage/capture needs instrument and bars, followed by optional key "
                                           "value pairs.")
    instrument = check_instrument(args[0], instruments)
    bars = check_bars(args[1])
    rest = list(args[2:])
    if len(rest) % 2:
        raise ProtocolError("bad_option", f"options come in key value pairs; '{rest[-1]}' has no value.")
    for key in rest[::2]:
        if not isinstance(key, str) or key not in CAPTURE_OPTIONS:
            raise ProtocolError("bad_option", f"unknown option {key!r} for /stage/capture; known: "
                                              f"{', '.join(CAPTURE_OPTIONS)}.")
    options = dict(zip(rest[::2], rest[1::2]))
    job_id = check_job_id(options.pop("job_id")) if "job_id" in options else ""
    opts = parse_options(options)
    return CaptureRequest(instrument, bars, job_id, opts["beats_per_bar"], opts["beat_unit"], opts["prompt"],
                          opts["takes"], opts["context_mode"], opts["seed"])


def parse_tempo(args: Sequence[Any]) -> Tempo:
    if len(args) not in (1, 3):
        raise ProtocolError("bad_request", "/stage/tempo takes bpm, or bpm beats_per_bar beat_unit.")
    bpm = check_bpm(args[0])
    if len(args) == 3:
        values = [_whole(v) for v in args[1:]]
        if None in values:  # an OSC nil is not "not given" here: the three-argument form names the meter
            raise ProtocolError("bad_tempo", f"beats_per_bar and beat_unit must be whole numbers, got {values}.")
        bpb, unit = check_meter(*values)
        return Tempo(bpm, bpb, unit)
    return Tempo(bpm)


def parse_cancel(args: Sequence[Any]) -> str:
    if len(args) != 1:
        raise ProtocolError("bad_request", "/stage/cancel takes exactly one job id.")
    return check_job_id(args[0])


# -- outbound ----------------------------------------------------------------------------------

# The scores of a take (its sidecar's `fit` object, audio/fit.py) that `/stage/job/done` carries
# when the request asked with `scores 1`, in this order after the take's `take <k>` pair.
SCORE_KEYS = ("score", "grid_f1", "offset_ms", "tempo_bpm", "lufs", "context_lufs", "true_peak_db", "clipping",
              "silence_ratio")
TAKE_MARK = "take"  # starts a take's scores; no path is "take" (paths are absolute)


def done_args(job_id: str, paths: Sequence[str], fits: Sequence[Mapping[str, Any] | None] = ()) -> list[Any]:
    """The arguments of `/stage/job/done`: the job id and every take's path, then, when `fits`
    is given (one per path: the sidecar's `fit` object, or None if unreadable), each take's
    scores as `take <k:i>` followed by `<key:s> <value>` pairs in `SCORE_KEYS` order.

    Why this shape: a client that predates scores never asks for them and reads every argument
    after the id as a path, as before; one that asks reads paths up to the first `take`. A score
    that was not measured (null: silence, no context) is left out rather than sent as a fake
    number; `clipping` is an int (0 or 1), the others floats."""
    args: list[Any] = [job_id, *paths]
    for k, fit in enumerate(fits, start=1):
        args += [TAKE_MARK, k]
        for key in SCORE_KEYS:
            value = (fit or {}).get(key)
            if isinstance(value, bool):
                args += [key, int(value)]
            elif isinstance(value, (int, float)) and math.isfinite(value):
                args += [key, float(value)]
    return args

def message(address: str, *args: Any) -> bytes:
    """One OSC message as bytes (ints as i, floats as f, strings as s; h and d when too big for 32 bits)."""
    b = OscMessageBuilder(address=address)
    for a in args:
        if isinstance(a, bool):
            b.add_arg(int(a), "i")
        elif isinstance(a, int):  # int64 ('h') and double ('d') only where 32 bits cannot hold the value
            b.add_arg(a, "i" if -2**31 <= a < 2**31 else "h")
        elif isinstance(a, float):
            b.add_arg(a, "d" if math.isfinite(a) and abs(a) > 3.4028234663852886e38 else "f")
        else:  # a lone surrogate (a file name's undecodable bytes) cannot be UTF-8: sent escaped, never dropped
            b.add_arg(str(a).encode("utf-8", "backslashreplace").decode("utf-8"), "s")
    return b.build().dgram
