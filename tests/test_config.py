"""Daemon settings: command line > environment (STAGE_BRIDGE_*) > TOML file > defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stage_bridge.bridge.config import KEYS, ServeConfig, load_config, parse_models
from stage_bridge.errors import BadArgument


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No real config file, data folder or STAGE_BRIDGE_* variable may leak into these tests."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    for key in list(os.environ):
        if key.startswith("STAGE_BRIDGE_"):
            monkeypatch.delenv(key)


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def refused(match: str, *args, **kwargs) -> str:
    with pytest.raises(BadArgument, match=match) as info:
        load_config(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and len(message) < 500  # one line; the longest lists every setting
    return message


def test_defaults(tmp_path):
    cfg = load_config({}, env={}, config_file=tmp_path / "absent.toml")
    d = ServeConfig(home=Path("unused"))
    assert cfg.home == (tmp_path / "xdg-data" / "stage-bridge").resolve()
    assert (cfg.osc_host, cfg.osc_port, cfg.reply_host, cfg.reply_port) == ("127.0.0.1", 9000, "127.0.0.1", 9001)
    assert cfg.models == {"drums": "stage-drums", "bass": "stage-bass"}
    assert (cfg.device, cfg.allow_remote, cfg.midi, cfg.watch, cfg.queue_size, cfg.midi_api) == \
        (d.device, False, True, True, 16, "auto")
    assert cfg.allow_roots == [] and cfg.weights_dir is None and cfg.midi_in is None


def test_default_config_file_is_read(tmp_path):
    folder = tmp_path / "xdg-config" / "stage-bridge"
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text("osc_port = 9100\n")
    assert load_config({}, env={}).osc_port == 9100
    other = toml(tmp_path, "osc_port = 9200\n")  # STAGE_BRIDGE_CONFIG names another file
    assert load_config({}, env={"STAGE_BRIDGE_CONFIG": str(other)}).osc_port == 9200


def test_precedence_cli_env_file_default(tmp_path):
    path = toml(tmp_path, 'osc_port = 9100\nreply_port = 9101\ndevice = "cpu"\nqueue_size = 3\n')
    env = {"STAGE_BRIDGE_OSC_PORT": "9200", "STAGE_BRIDGE_REPLY_PORT": "9201"}
    cfg = load_config({"osc_port": 9300, "reply_port": None, "device": None}, env=env, config_file=path)
    assert cfg.osc_port == 9300  # command line
    assert cfg.reply_port == 9201  # environment (the command line said nothing: None)
    assert cfg.device == "cpu"  # file
    assert cfg.queue_size == 3  # file
    assert cfg.reply_host == "127.0.0.1"  # default


@pytest.mark.parametrize("source", ["file", "env", "cli"])
def test_every_kind_of_value_from_each_source(tmp_path, source):
    home, root1, root2, weights = (tmp_path / x for x in ("home", "r1", "r2", "w"))
    file_text = (f'home = "{home}"\nallow_root = ["{root1}", "{root2}"]\nweights_dir = "{weights}"\n'
                 'allow_remote = true\nmidi = false\nwatch = false\nqueue_size = 5\nmidi_api = "alsa"\n'
                 'midi_in = "IAC Driver Bus 1"\nosc_host = "0.0.0.0"\nmodel = "tiny-random"\n')
    env = {"STAGE_BRIDGE_HOME": str(home), "STAGE_BRIDGE_ALLOW_ROOT": f"{root1}{os.pathsep}{root2}",
           "STAGE_BRIDGE_WEIGHTS_DIR": str(weights), "STAGE_BRIDGE_ALLOW_REMOTE": "yes", "STAGE_BRIDGE_MIDI": "0",
           "STAGE_BRIDGE_WATCH": "off", "STAGE_BRIDGE_QUEUE_SIZE": "5", "STAGE_BRIDGE_MIDI_API": "alsa",
           "STAGE_BRIDGE_MIDI_IN": "IAC Driver Bus 1", "STAGE_BRIDGE_OSC_HOST": "0.0.0.0",
           "STAGE_BRIDGE_MODEL": "tiny-random"}
    cli = {"home": home, "allow_root": [root1, root2], "weights_dir": weights, "allow_remote": True, "midi": False,
           "watch": False, "queue_size": 5, "midi_api": "alsa", "midi_in": "IAC Driver Bus 1", "osc_host": "0.0.0.0",
           "model": ["tiny-random"]}
    path = toml(tmp_path, file_text) if source == "file" else tmp_path / "absent.toml"
    cfg = load_config(cli if source == "cli" else {}, env=env if source == "env" else {}, config_file=path)
    assert cfg.home == home.resolve()
    assert cfg.allow_roots == [root1, root2] and cfg.weights_dir == weights
    assert (cfg.allow_remote, cfg.midi, cfg.watch, cfg.queue_size) == (True, False, False, 5)
    assert (cfg.midi_api, cfg.midi_in, cfg.osc_host) == ("alsa", "IAC Driver Bus 1", "0.0.0.0")
    assert cfg.models == {"drums": "tiny-random", "bass": "tiny-random"}
    assert cfg.inbox == home.resolve() / "inbox" and cfg.journal_path == home.resolve() / "jobs.sqlite3"


def test_home_expands_user(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_config({"home": "~/sb"}, env={}, config_file=tmp_path / "absent.toml")
    assert cfg.home == (tmp_path / "sb").resolve()


@pytest.mark.parametrize("text", ["true", "1", "YES", "On"])
def test_bool_true_spellings(tmp_path, text):
    assert load_config({}, env={"STAGE_BRIDGE_ALLOW_REMOTE": text}, config_file=tmp_path / "x").allow_remote is True


@pytest.mark.parametrize("text", ["false", "0", "no", "OFF"])
def test_bool_false_spellings(tmp_path, text):
    assert load_config({}, env={"STAGE_BRIDGE_MIDI": text}, config_file=tmp_path / "x").midi is False


# -- models ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value,expected", [
    ("tiny-random", {"drums": "tiny-random", "bass": "tiny-random"}),
    ("drums=a,bass=b", {"drums": "a", "bass": "b"}),
    (" drums = a , bass = b ", {"drums": "a", "bass": "b"}),
    ("bass=~/models/my-bass", {"drums": "stage-drums", "bass": "~/models/my-bass"}),
    ("Drums=a", {"drums": "a", "bass": "stage-bass"}),
    ("keys=k", {"drums": "stage-drums", "bass": "stage-bass", "keys": "k"}),
    (["tiny-random", "bass=b"], {"drums": "tiny-random", "bass": "b"}),  # --model repeated: later wins
    (["drums=a", "drums=c"], {"drums": "c", "bass": "stage-bass"}),
    (["drums=a,bass=b", "x"], {"drums": "x", "bass": "x"}),
    ({"drums": "a", "bass": "b"}, {"drums": "a", "bass": "b"}),  # a TOML [model] table
    ("", {"drums": "stage-drums", "bass": "stage-bass"}),
])
def test_parse_models(value, expected):
    assert parse_models(value) == expected


@pytest.mark.parametrize("value", ["2x=a", "dr ums=a", "=a", "a-b=c"])
def test_parse_models_refuses_bad_instrument(value):
    with pytest.raises(BadArgument, match="instrument name"):
        parse_models(value)


def test_models_from_each_source(tmp_path):
    path = toml(tmp_path, '[model]\ndrums = "file-drums"\nbass = "file-bass"\n')
    assert load_config({}, env={}, config_file=path).models == {"drums": "file-drums", "bass": "file-bass"}
    env = {"STAGE_BRIDGE_MODEL": "drums=env-drums"}
    assert load_config({}, env=env, config_file=path).models == {"drums": "env-drums", "bass": "stage-bass"}
    cli = {"model": ["tiny-random", "bass=cli-bass"]}
    assert load_config(cli, env=env, config_file=path).models == {"drums": "tiny-random", "bass": "cli-bass"}


# -- refused ------------------------------------------------------------------------------------

@pytest.mark.parametrize("key,value,match", [
    ("osc_port", "abc", r"setting osc_port: 'abc' is not a valid int"),
    ("osc_port", "90.5", r"osc_port"),
    ("reply_port", "", r"reply_port"),
    ("queue_size", "many", r"queue_size"),
    ("allow_remote", "maybe", r"setting allow_remote: 'maybe' is not a valid bool"),
    ("midi", "2", r"midi"),
])
def test_bad_env_values(tmp_path, key, value, match):
    refused(match, {}, env={f"STAGE_BRIDGE_{key.upper()}": value}, config_file=tmp_path / "absent.toml")


@pytest.mark.parametrize("text,match", [
    ("osc_port = 9000.5\n", r"osc_port: 9000\.5 is not a valid int"),
    ("osc_port = true\n", r"osc_port: True is not a valid int"),
    ("osc_port = inf\n", r"osc_port: inf is not a valid int"),
    ("osc_port = [1]\n", r"osc_port"),
    ('osc_port = "x"\n', r"osc_port"),
    ("queue_size = 2.5\n", r"queue_size: 2.5 is not a valid int"),
    ('allow_remote = "perhaps"\n', r"allow_remote"),
    ("osc_port = 70000\n", r"port 70000 must be 0-65535"),
    ("reply_port = -1\n", r"port -1 must be 0-65535"),
    ("queue_size = 0\n", r"queue size 0 must be 1-1000"),
    ("queue_size = 1001\n", r"queue size 1001 must be 1-1000"),
    ('midi_api = "oss"\n', r"midi api 'oss': use one of auto, alsa, jack, coremidi, winmm"),
    ('model = "9=x"\n', r"instrument name must be a single word"),
    ("osc_prot = 9000\n", r"unknown setting 'osc_prot'"),
    ('[midi_settings]\nin = "x"\n', r"unknown setting 'midi_settings'"),
    ("osc_port = \n", r"cannot be read"),
    ("this is not toml", r"cannot be read.*Fix or remove it"),
])
def test_bad_file_values(tmp_path, text, match):
    message = refused(match, {}, env={}, config_file=toml(tmp_path, text))
    if "unknown setting" in match or "cannot be read" in match:
        assert str(tmp_path / "config.toml") in message  # says which file


def test_whole_floats_are_accepted_as_ints(tmp_path):
    assert load_config({}, env={}, config_file=toml(tmp_path, "osc_port = 9002.0\n")).osc_port == 9002


def test_unknown_setting_lists_known_ones(tmp_path):
    message = refused("unknown setting", {}, env={}, config_file=toml(tmp_path, "colour = 'red'\n"))
    for key in ("osc_port", "allow_root", "model"):
        assert key in message


def test_bad_values_on_the_command_line(tmp_path):
    refused(r"port 65536 must be 0-65535", {"osc_port": 65536}, env={}, config_file=tmp_path / "absent.toml")
    refused(r"midi api 'x'", {"midi_api": "x"}, env={}, config_file=tmp_path / "absent.toml")
    refused(r"instrument name", {"model": ["drums=a", "1=b"]}, env={}, config_file=tmp_path / "absent.toml")


def test_bad_env_value_is_refused_even_when_the_cli_sets_the_key(tmp_path):
    """A bad environment value is refused even when the command line sets the same key."""
    refused("osc_port", {"osc_port": 9000}, env={"STAGE_BRIDGE_OSC_PORT": "x"}, config_file=tmp_path / "a.toml")


def test_unknown_cli_keys_are_ignored(tmp_path):
    cfg = load_config({"log_level": "DEBUG", "config": "x"}, env={}, config_file=tmp_path / "absent.toml")
    assert cfg.osc_port == 9000


def test_every_key_maps_to_a_serveconfig_field():
    fields = set(ServeConfig.__dataclass_fields__)
    assert {field for _, field in KEYS.values()} <= fields


def test_compile_is_a_boolean_setting(tmp_path):
    assert load_config({}, env={}, config_file=tmp_path / "absent.toml").compile is False
    assert load_config({}, env={}, config_file=toml(tmp_path, "compile = true\n")).compile is True
    assert load_config({}, env={"STAGE_BRIDGE_COMPILE": "1"}, config_file=tmp_path / "a.toml").compile is True
    assert load_config({"compile": None}, env={}, config_file=tmp_path / "a.toml").compile is False


def test_loudness_offset_a_number_or_off_from_each_source(tmp_path):
    from stage_bridge.audio.loudness import DEFAULT_OFFSET_LU

    absent = tmp_path / "absent.toml"
    assert load_config({}, env={}, config_file=absent).loudness_offset == DEFAULT_OFFSET_LU
    assert load_config({}, env={}, config_file=toml(tmp_path, "loudness_offset = 3\n")).loudness_offset == 3.0
    assert load_config({}, env={}, config_file=toml(tmp_path, "loudness_offset = 4.5\n")).loudness_offset == 4.5
    assert load_config({}, env={}, config_file=toml(tmp_path, 'loudness_offset = "off"\n')).loudness_offset is None
    assert load_config({}, env={}, config_file=toml(tmp_path, "loudness_offset = false\n")).loudness_offset is None
    assert load_config({}, env={"STAGE_BRIDGE_LOUDNESS_OFFSET": "Off"}, config_file=absent).loudness_offset is None
    assert load_config({}, env={"STAGE_BRIDGE_LOUDNESS_OFFSET": "0"}, config_file=absent).loudness_offset == 0.0
    assert load_config({"loudness_offset": 9}, env={"STAGE_BRIDGE_LOUDNESS_OFFSET": "off"},
                       config_file=absent).loudness_offset == 9.0


@pytest.mark.parametrize("value, match", [("loud", "loudness_offset: 'loud' is not a valid number"),
                                          ("true", "not a valid number"), ("99", "loudness offset must be from 0"),
                                          ("-3", "loudness offset must be from 0"), ("nan", "loudness offset")])
def test_bad_loudness_offsets_are_refused(tmp_path, value, match):
    refused(match, {}, env={"STAGE_BRIDGE_LOUDNESS_OFFSET": value}, config_file=tmp_path / "absent.toml")
