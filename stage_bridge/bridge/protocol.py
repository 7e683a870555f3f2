"""The OSC protocol between the DAW (the Max for Live device) and the daemon.

Plain data and pure functions: parsing and validating inbound messages into typed requests,
and building outbound messages. No sockets here, so the device's logic, the daemon and the
tests share one definition. docs/protocol.md is the human-readable version of this file.

Inbound (to the daemon's osc-port):
    /stage/ping [token]
    /stage/generate <job_id:s> <context_path:s> <instrument:s> <bars:i> [key value]...
        keys: bpm f, beats_per_bar i, beat_unit i, offset f, prompt s, takes i,
              context_mode s (mix|click|mix+click; default mix+click), seed i
    /stage/tempo <bpm:f> [beats_per_bar:i beat_unit:i]
    /stage/cancel <job_id:s>
    /stage/status
    /stage/info
Outbound (to reply-host:reply-port):
    /stage/pong [token]
    /stage/job/accepted <job_id> <queue_position:i>
    /stage/job/progress <job_id> <percent:f>
    /stage/job/done <job_id> <path>...
    /stage/job/error <job_id> <code:s> <message:s>
    /stage/job/cancelled <job_id>
    /stage/status <state:s> <queue_length:i> <bpm:f> <tempo_source:s> <device:s> <model:s>
    /stage/info <home:s> <bounces:s>
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

from pythonosc.osc_message_builder import OscMessageBuilder

from ..audio.context import CONTEXT_MODES
from ..audio.timing import BEAT_UNITS, BEATS_PER_BAR_RANGE, BPM_RANGE
from ..errors import StageError
from ..limits import MAX_BARS, MAX_TAKES

PING, GENERATE, TEMPO, CANCEL, STATUS = "/stage/ping", "/stage/generate", "/stage/tempo", "/stage/cancel", "/stage/status"
INFO = "/stage/info"  # asked and answered under the same address
PONG = "/stage/pong"
ACCEPTED, PROGRESS, DONE = "/stage/job/accepted", "/stage/job/progress", "/stage/job/done"
ERROR, CANCELLED = "/stage/job/error", "/stage/job/cancelled"

INSTRUMENTS = ("drums", "bass")
DEFAULT_CONTEXT_MODE = "mix+click"
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

# Every error code the daemon sends in /stage/job/error, with what it means for the musician.
ERROR_CODES = {
    "bad_request": "the message has the wrong number or kinds of arguments",
    "bad_job_id": "job ids are 1-64 letters, digits, '.', '_' or '-'",
    "duplicate_job": "a job with this id is already queued or running",
    "bad_instrument": "the instrument is not one the daemon has a model for",
    "bad_bars": "bars must be a whole number from 1 to 512",
    "bad_tempo": "bpm must be 30-300; beats_per_bar 1-32; beat_unit 1, 2, 4, 8 or 16",
    "bad_option": "an unknown option key, or a value of the wrong kind or range",
    "no_tempo": "no tempo: none in the request, no /stage/tempo, no MIDI clock",
    "forbidden_path": "the context file is outside the folders the daemon may read",
    "file_missing": "the context file does not exist",
    "not_audio": "the context file is not readable audio",
    "empty_audio": "the context file is empty or silent",
    "non_finite_audio": "the context file contains NaN or infinite samples",
    "queue_full": "too many jobs are waiting; try again when one finishes",
    "unknown_job": "no queued or running job has this id",
    "weights_missing": "model weights are missing on the daemon's machine",
    "out_of_memory": "the GPU or computer ran out of memory for this job",
    "output_not_writable": "the daemon cannot write into its outbox folder",
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


@dataclass(frozen=True)
class Tempo:
    bpm: float
    beats_per_bar: int | None = None
    beat_unit: int | None = None


# -- validation helpers ------------------------------------------------------------------------

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    if _is_int(v):
        return abs(v) <= 2**63  # math.isfinite would overflow on ints past float range
    return isinstance(v, float) and math.isfinite(v)


def check_bpm(bpm: Any) -> float:
    if not _is_number(bpm) or not BPM_RANGE[0] <= bpm <= BPM_RANGE[1]:
        raise ProtocolError("bad_tempo", f"bpm {bpm!r} is not usable: give a number from 30 to 300.")
    return float(bpm)


def check_meter(beats_per_bar: Any, beat_unit: Any) -> tuple[int | None, int | None]:
    lo, hi = BEATS_PER_BAR_RANGE
    if beats_per_bar is not None and (not _is_int(beats_per_bar) or not lo <= beats_per_bar <= hi):
        raise ProtocolError("bad_tempo", f"beats_per_bar {beats_per_bar!r} must be a whole number from 1 to 32.")
    if beat_unit is not None and (not _is_int(beat_unit) or beat_unit not in BEAT_UNITS):
        raise ProtocolError("bad_tempo", f"beat_unit {beat_unit!r} must be 1, 2, 4, 8 or 16.")
    return beats_per_bar, beat_unit


def check_job_id(job_id: Any) -> str:
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        raise ProtocolError("bad_job_id", f"job id {job_id!r}: use 1-64 letters, digits, '.', '_' or '-'.")
    return job_id


_OPTION_TYPES = {"bpm": "number", "beats_per_bar": "int", "beat_unit": "int", "offset": "number", "prompt": "str",
                 "takes": "int", "context_mode": "str", "seed": "int"}


def parse_generate(args: Sequence[Any], instruments: Sequence[str] = INSTRUMENTS) -> GenerateRequest:
    """Validate `/stage/generate` arguments. The job id is checked first so errors can name it."""
    if len(args) < 4:
        raise ProtocolError("bad_request", "/stage/generate needs job_id, context_path, instrument, bars "
                                           "followed by optional key value pairs.")
    job_id = check_job_id(args[0])
    context_path, instrument, bars = args[1], args[2], args[3]
    if not isinstance(context_path, str):
        raise ProtocolError("bad_request", "context_path must be a string (it may be empty in click mode).")
    if not isinstance(instrument, str) or instrument.strip().lower() not in instruments:
        raise ProtocolError("bad_instrument", f"instrument {instrument!r}: use one of {', '.join(instruments)}.")
    if isinstance(bars, float) and bars.is_integer():
        bars = int(bars)  # Max sends numbers from number boxes as floats at times
    if not _is_int(bars) or not 1 <= bars <= MAX_BARS:
        raise ProtocolError("bad_bars", f"bars {bars!r} must be a whole number from 1 to {MAX_BARS}.")
    rest = list(args[4:])
    if len(rest) % 2:
        raise ProtocolError("bad_option", f"options come in key value pairs; '{rest[-1]}' has no value.")
    opts: dict[str, Any] = {}
    for key, value in zip(rest[::2], rest[1::2]):
        kind = _OPTION_TYPES.get(key) if isinstance(key, str) else None
        if kind is None:
            raise ProtocolError("bad_option", f"unknown option {key!r}; known: {', '.join(_OPTION_TYPES)}.")
        if kind == "int" and isinstance(value, float) and value.is_integer():
            value = int(value)
        ok = {"int": _is_int, "number": _is_number, "str": lambda v: isinstance(v, str)}[kind](value)
        if not ok:
            raise ProtocolError("bad_option", f"option {key} needs a {kind}, got {value!r}.")
        opts[key] = value
    bpm = check_bpm(opts["bpm"]) if "bpm" in opts else None
    bpb, unit = check_meter(opts.get("beats_per_bar"), opts.get("beat_unit"))
    offset = float(opts.get("offset", 0.0))
    if offset < 0 or offset > 3600:
        raise ProtocolError("bad_option", f"offset {offset} must be 0 to 3600 seconds.")
    takes = opts.get("takes", 1)
    if not 1 <= takes <= MAX_TAKES:
        raise ProtocolError("bad_option", f"takes {takes} must be 1 to {MAX_TAKES}.")
    mode = opts.get("context_mode", DEFAULT_CONTEXT_MODE)
    if mode not in CONTEXT_MODES:
        raise ProtocolError("bad_option", f"context_mode {mode!r}: use one of {', '.join(CONTEXT_MODES)}.")
    if mode != "click" and not context_path:
        raise ProtocolError("bad_request", f"context_mode {mode} needs a context_path (only click mode works without).")
    seed = opts.get("seed")
    if seed is not None and not 0 <= seed < 2**31:
        raise ProtocolError("bad_option", f"seed {seed} must be 0 to 2147483647.")
    prompt = opts.get("prompt", "")
    if len(prompt) > 500:
        raise ProtocolError("bad_option", "prompt is longer than 500 characters.")
    return GenerateRequest(job_id, context_path, instrument.strip().lower(), bars, bpm, bpb, unit, offset, prompt,
                           takes, mode, seed)


def parse_tempo(args: Sequence[Any]) -> Tempo:
    if len(args) not in (1, 3):
        raise ProtocolError("bad_request", "/stage/tempo takes bpm, or bpm beats_per_bar beat_unit.")
    bpm = check_bpm(args[0])
    if len(args) == 3:
        values = [int(v) if isinstance(v, float) and v.is_integer() else v for v in args[1:]]
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
        else:
            b.add_arg(str(a), "s")
    return b.build().dgram
