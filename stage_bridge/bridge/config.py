"""Daemon settings (`ServeConfig`) from the command line, environment variables and a TOML file.

Also the default model of each instrument (`DEFAULT_MODELS`), the one definition the daemon's
settings and `stage-bridge generate` share.

Precedence: command line > environment (STAGE_BRIDGE_*) > config file > defaults. The file
lives in the platform's config folder (`stage-bridge doctor` prints where), e.g.

    # ~/.config/stage-bridge/config.toml
    osc_port = 9000
    reply_port = 9001
    device = "auto"
    midi_in = "IAC Driver Bus 1"
    allow_root = ["~/Music/Ableton"]
    loudness_offset = 6      # takes arrive 6 LU under the song; "off" keeps them as generated
    web_port = 9002          # the control room page; web = false turns it off
    capture_device = "BlackHole"   # capture mode (docs/any-daw.md); also play_device, capture_bars,
                                   # meter, triggers, bars_cc
    [model]
    drums = "stage-drums"
    bass = "~/models/my-bass-run"
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import BadArgument
from ..paths import user_config_dir, user_data_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_MODELS = {"drums": "stage-drums", "bass": "stage-bass"}  # instrument -> model, unless told otherwise


def _default_loudness_offset() -> float:
    from ..audio.loudness import DEFAULT_OFFSET_LU  # here, not at the top: the CLI imports this module on every start

    return DEFAULT_OFFSET_LU


@dataclass
class ServeConfig:
    """Everything `stage-bridge serve` is told (see KEYS for where each comes from)."""

    home: Path
    models: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_MODELS))
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
    loudness_offset: float | None = field(default_factory=_default_loudness_offset)  # LU under the context; None: off
    web: bool = True  # the control room (bridge/web.py)
    web_host: str = "127.0.0.1"  # beyond loopback only with allow_remote, and then always with a token
    web_port: int = 9002
    web_token: str | None = None  # required on every request when set (generated when web_host is not loopback)
    # capture mode (capturejob.py): the input to record, the output for jam playback, the bars a
    # MIDI trigger captures, the meter ("7/8"; None: /stage/tempo's, else 4/4), the trigger notes
    # ("drums=36,bass=38") and the controller that sets the bar count (None: none)
    capture_device: str | None = None
    play_device: str | None = None
    capture_bars: int = 4
    meter: str | None = None
    triggers: str = "drums=36,bass=38"
    bars_cc: int | None = None

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


ENV_PREFIX = "STAGE_BRIDGE_"
KEYS = {  # key: (type, ServeConfig field)
    "model": (str, "models"), "device": (str, "device"), "precision": (str, "precision"), "compile": (bool, "compile"), "osc_host": (str, "osc_host"), "osc_port": (int, "osc_port"),
    "reply_host": (str, "reply_host"), "reply_port": (int, "reply_port"), "allow_remote": (bool, "allow_remote"),
    "midi": (bool, "midi"), "midi_in": (str, "midi_in"), "midi_api": (str, "midi_api"), "home": (Path, "home"),
    "allow_root": (list, "allow_roots"), "queue_size": (int, "queue_size"), "weights_dir": (Path, "weights_dir"),
    "watch": (bool, "watch"), "sample_rate": (int, "sample_rate"), "loudness_offset": (float, "loudness_offset"),
    "capture_device": (str, "capture_device"), "play_device": (str, "play_device"), "capture_bars": (int, "capture_bars"),
    "meter": (str, "meter"), "triggers": (str, "triggers"),
    "bars_cc": (int, "bars_cc"),
}
KEYS.update({"web": (bool, "web"), "web_host": (str, "web_host"), "web_port": (int, "web_port"),
             "web_token": (str, "web_token")})
OFF = ("off", "none", "false", "no")  # how a float setting (loudness_offset) is turned off


def default_config_file() -> Path:
    return user_config_dir() / "config.toml"


def parse_models(value: Any) -> dict[str, str]:
    """'NAME' (every instrument), 'drums=A,bass=B', a list of those, or a TOML table."""
    models = dict(DEFAULT_MODELS)
    if isinstance(value, Mapping):
        items = [f"{k}={v}" for k, v in value.items()]
    elif isinstance(value, (list, tuple)):
        items = [x for v in value for x in str(v).split(",")]
    else:
        items = str(value).split(",")
    for item in (i.strip() for i in items if i.strip()):
        if "=" in item:
            inst, name = (x.strip() for x in item.split("=", 1))
            if not inst.isidentifier():
                raise BadArgument(f"model setting '{item}': the instrument name must be a single word.")
            models[inst.lower()] = name
        else:
            models = {i: item for i in models}
    return models


def _convert(key: str, value: Any) -> Any:
    kind = KEYS[key][0]
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind is list:
            items = value if isinstance(value, list) else str(value).split(os.pathsep)
            return [Path(str(v)).expanduser() for v in items if str(v)]
        if kind is Path:
            return Path(str(value)).expanduser()
        if kind is int:  # whole numbers only: int(9000.5) or int("1e3") must not quietly become another port
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if kind is float:  # a number, or off (also TOML's false)
            if value is False or str(value).strip().lower() in OFF:
                return None
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        return value if key == "model" else str(value)
    except (TypeError, ValueError, OverflowError):
        what = "number (or off)" if kind is float else kind.__name__
        raise BadArgument(f"setting {key}: {value!r} is not a valid {what}.") from None


def load_config(cli: Mapping[str, Any], env: Mapping[str, str] | None = None,
                config_file: Path | None = None) -> ServeConfig:
    """`cli`: settings given on the command line (None = not given)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = config_file or Path(env.get(ENV_PREFIX + "CONFIG", default_config_file()))
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise BadArgument(f"config file {path} cannot be read: {e}. Fix or remove it.") from None
        unknown = sorted(set(data) - set(KEYS))
        if unknown:
            close = difflib.get_close_matches(unknown[0], KEYS, 1)  # a typo: name the one meant, briefly
            hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(KEYS)}"
            raise BadArgument(f"config file {path}: unknown setting '{unknown[0]}' ({hint}).")
        values.update({k: _convert(k, v) for k, v in data.items()})
    for key in KEYS:
        if ENV_PREFIX + key.upper() in env:
            values[key] = _convert(key, env[ENV_PREFIX + key.upper()])
    for key, value in cli.items():
        if value is not None and key in KEYS:
            values[key] = _convert(key, value)
    home = values.pop("home", None) or user_data_dir()
    cfg = ServeConfig(home=Path(home).expanduser().resolve())
    for key, value in values.items():
        field_name = KEYS[key][1]
        setattr(cfg, field_name, parse_models(value) if key == "model" else value)
    from ..audio.loudness import validate_loudness_offset  # (not at the top: see _default_loudness_offset)
    from .midiclock import MIDI_APIS  # here, not at the top: the CLI imports this module on every start

    if cfg.midi_api not in MIDI_APIS:
        raise BadArgument(f"midi api '{cfg.midi_api}': use one of {', '.join(MIDI_APIS)}.")
    for port in (cfg.osc_port, cfg.reply_port):
        if not 0 <= port <= 65535:
            raise BadArgument(f"port {port} must be 0-65535.")
    if not 1 <= cfg.queue_size <= 1000:
        raise BadArgument(f"queue size {cfg.queue_size} must be 1-1000.")
    validate_loudness_offset(cfg.loudness_offset)
    if not 0 <= cfg.web_port <= 65535:
        raise BadArgument(f"web port {cfg.web_port} must be 0-65535.")
    check_capture_settings(cfg)
    return cfg


def parse_meter(text: str) -> tuple[int, int]:
    """"7/8" -> (7, 8), checked against the meters a request may have."""
    from ..audio.timing import validate_tempo  # (not at the top: see _default_loudness_offset)

    try:
        beats, unit = (int(x) for x in str(text).split("/"))
        validate_tempo(120, beats, unit)
    except (ValueError, BadArgument):
        raise BadArgument(f"capture meter {text!r}: write it as a time signature such as 4/4 or 7/8.") from None
    return beats, unit


def parse_trigger_notes(text: str) -> dict[int, str]:
    """"drums=36,bass=38" -> {36: "drums", 38: "bass"} (MIDI note numbers; C1 = 36 in Live)."""
    notes: dict[int, str] = {}
    for item in (i.strip() for i in str(text).split(",") if i.strip()):
        inst, _, note = item.partition("=")
        if not note.strip().isdigit() or not 0 <= int(note) <= 127 or not inst.strip().isidentifier():
            raise BadArgument(f"trigger notes {text!r}: write instrument=NOTE pairs such as drums=36,bass=38 "
                              "(notes 0-127).")
        notes[int(note)] = inst.strip().lower()
    return notes


def check_capture_settings(cfg: ServeConfig) -> None:
    from ..limits import MAX_BARS

    if not 1 <= cfg.capture_bars <= MAX_BARS:
        raise BadArgument(f"capture bars {cfg.capture_bars} must be 1-{MAX_BARS}.")
    if cfg.bars_cc is not None and not 0 <= cfg.bars_cc <= 127:
        raise BadArgument(f"capture bars CC {cfg.bars_cc} must be a controller number 0-127.")
    if cfg.meter is not None:
        parse_meter(cfg.meter)
    parse_trigger_notes(cfg.triggers)
