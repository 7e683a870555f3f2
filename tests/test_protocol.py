"""The OSC protocol's pure functions: request parsing/validation and outbound messages."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pythonosc.osc_message import OscMessage

from stage_bridge.bridge import protocol as P
from stage_bridge.bridge.protocol import (GenerateRequest, ProtocolError, Tempo, parse_cancel, parse_generate,
                                         parse_options, parse_tempo)

BASE = ["verse-1", "/music/verse.wav", "drums", 8]


def refused(code: str, fn, *args, **kwargs) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, (info.value.code, str(info.value))
    assert info.value.code in P.ERROR_CODES and str(info.value)
    return info.value


# -- /stage/generate: accepted --------------------------------------------------------------------

def test_generate_minimal_defaults():
    req = parse_generate(BASE)
    assert req == GenerateRequest("verse-1", "/music/verse.wav", "drums", 8)
    assert (req.bpm, req.beats_per_bar, req.beat_unit, req.offset, req.prompt, req.takes, req.context_mode,
            req.seed) == (None, None, None, 0.0, "", 1, "mix+click", None)


def test_generate_every_option():
    req = parse_generate(BASE + ["bpm", 97.5, "beats_per_bar", 7, "beat_unit", 8, "offset", 0.25,
                                 "prompt", "Genres: Funk.", "takes", 3, "context_mode", "mix", "seed", 1234])
    assert req == GenerateRequest("verse-1", "/music/verse.wav", "drums", 8, 97.5, 7, 8, 0.25, "Genres: Funk.",
                                  3, "mix", 1234)


def test_generate_whole_floats_from_max_become_ints():
    req = parse_generate(["j", "", " Bass ", 16.0, "beats_per_bar", 3.0, "beat_unit", 4.0, "takes", 2.0,
                          "seed", 7.0, "bpm", 120, "offset", 2, "context_mode", "click"])
    assert req.instrument == "bass"
    for value, expected in ((req.bars, 16), (req.beats_per_bar, 3), (req.beat_unit, 4), (req.takes, 2),
                            (req.seed, 7)):
        assert value == expected and type(value) is int
    assert req.bpm == 120.0 and type(req.bpm) is float
    assert req.offset == 2.0 and type(req.offset) is float


@pytest.mark.parametrize("mode", P.CONTEXT_MODES)
def test_generate_each_context_mode(mode):
    assert parse_generate(BASE + ["context_mode", mode]).context_mode == mode


@pytest.mark.parametrize("job_id", ["a", "A.b_c-9", "x" * 64, "0"])
def test_generate_job_ids_accepted(job_id):
    assert parse_generate([job_id, *BASE[1:]]).job_id == job_id


@pytest.mark.parametrize("bars,bpm,offset,seed,takes", [(1, 30, 0, 0, 1), (512, 300.0, 3600, 2**31 - 1, 8)])
def test_generate_range_edges_accepted(bars, bpm, offset, seed, takes):
    req = parse_generate(["j", "p", "drums", bars, "bpm", bpm, "offset", offset, "seed", seed, "takes", takes])
    assert (req.bars, req.bpm, req.offset, req.seed, req.takes) == (bars, bpm, offset, seed, takes)


def test_generate_click_mode_needs_no_context():
    assert parse_generate(["j", "", "drums", 4, "context_mode", "click"]).context_path == ""


def test_generate_dash_means_no_context():
    """The Max device sends "-" for "no context" (Max may drop an empty symbol); it is no path."""
    assert parse_generate(["j", "-", "drums", 4, "context_mode", "click"]).context_path == ""
    with pytest.raises(ProtocolError) as err:
        parse_generate(["j", "-", "drums", 4, "context_mode", "mix"])
    assert err.value.code == "bad_request"


def test_generate_custom_instrument_list():
    assert parse_generate(["j", "p", "keys", 4], instruments=("keys",)).instrument == "keys"
    refused("bad_instrument", parse_generate, ["j", "p", "drums", 4], instruments=("keys",))


def test_generate_prompt_at_limit():
    assert len(parse_generate(BASE + ["prompt", "x" * 500]).prompt) == 500


# -- /stage/generate: refused ----------------------------------------------------------------------

@pytest.mark.parametrize("args,code", [
    ([], "bad_request"),
    (["j", "p", "drums"], "bad_request"),
    (["", "p", "drums", 4], "bad_job_id"),
    (["x" * 65, "p", "drums", 4], "bad_job_id"),
    ([".hidden", "p", "drums", 4], "bad_job_id"),
    (["-dash", "p", "drums", 4], "bad_job_id"),
    (["a/b", "p", "drums", 4], "bad_job_id"),
    (["a b", "p", "drums", 4], "bad_job_id"),
    (["é", "p", "drums", 4], "bad_job_id"),
    (["ok\n", "p", "drums", 4], "bad_job_id"),
    ([12, "p", "drums", 4], "bad_job_id"),
    ([None, "p", "drums", 4], "bad_job_id"),
    (["j", 5, "drums", 4], "bad_request"),
    (["j", b"p", "drums", 4], "bad_request"),
    (["j", "p", "piano", 4], "bad_instrument"),
    (["j", "p", 1, 4], "bad_instrument"),
    (["j", "p", "", 4], "bad_instrument"),
    (["j", "p", "drums", 0], "bad_bars"),
    (["j", "p", "drums", 513], "bad_bars"),
    (["j", "p", "drums", -1], "bad_bars"),
    (["j", "p", "drums", 4.5], "bad_bars"),
    (["j", "p", "drums", "4"], "bad_bars"),
    (["j", "p", "drums", True], "bad_bars"),
    (["j", "p", "drums", math.nan], "bad_bars"),
    (["j", "p", "drums", math.inf], "bad_bars"),
    (["j", "p", "drums", None], "bad_bars"),
    (BASE + ["bpm"], "bad_option"),
    (BASE + ["bpm", 120, "takes"], "bad_option"),
    (BASE + ["tempo", 120], "bad_option"),
    (BASE + [5, 120], "bad_option"),
    (BASE + [None, 1], "bad_option"),
    (BASE + ["bpm", "120"], "bad_option"),
    (BASE + ["bpm", True], "bad_option"),
    (BASE + ["bpm", math.nan], "bad_option"),
    (BASE + ["bpm", math.inf], "bad_option"),
    (BASE + ["bpm", 10**400], "bad_option"),
    (BASE + ["bpm", 29.99], "bad_tempo"),
    (BASE + ["bpm", 300.01], "bad_tempo"),
    (BASE + ["bpm", 0], "bad_tempo"),
    (BASE + ["beats_per_bar", 0], "bad_tempo"),
    (BASE + ["beats_per_bar", 33], "bad_tempo"),
    (BASE + ["beats_per_bar", 2.5], "bad_option"),
    (BASE + ["beats_per_bar", "4"], "bad_option"),
    (BASE + ["beat_unit", 3], "bad_tempo"),
    (BASE + ["beat_unit", 32], "bad_tempo"),
    (BASE + ["beat_unit", 0.5], "bad_option"),
    (BASE + ["offset", -0.001], "bad_option"),
    (BASE + ["offset", 3600.5], "bad_option"),
    (BASE + ["offset", math.nan], "bad_option"),
    (BASE + ["offset", "0"], "bad_option"),
    (BASE + ["prompt", 5], "bad_option"),
    (BASE + ["prompt", "x" * 501], "bad_option"),
    (BASE + ["takes", 0], "bad_option"),
    (BASE + ["takes", 9], "bad_option"),
    (BASE + ["takes", 1.5], "bad_option"),
    (BASE + ["context_mode", "drums"], "bad_option"),
    (BASE + ["context_mode", 1], "bad_option"),
    (BASE + ["seed", -1], "bad_option"),
    (BASE + ["seed", 2**31], "bad_option"),
    (BASE + ["seed", 1.5], "bad_option"),
    (["j", "", "drums", 4], "bad_request"),  # mix+click (the default) needs a context file
    (["j", "", "drums", 4, "context_mode", "mix"], "bad_request"),
])
def test_generate_refused(args, code):
    refused(code, parse_generate, args)


def test_generate_job_id_checked_first():
    """Errors name the job, so the id is validated before anything else can fail."""
    refused("bad_job_id", parse_generate, ["bad id", 5, "piano", 0])
    refused("bad_request", parse_generate, ["bad id"])  # except for too few arguments


def test_error_messages_say_what_to_do():
    assert f"1 to {P.MAX_BARS}" in str(refused("bad_bars", parse_generate, ["j", "p", "drums", 600]))
    assert f"{P.BPM_RANGE[0]} to {P.BPM_RANGE[1]}" in str(refused("bad_tempo", parse_generate, BASE + ["bpm", 10]))
    assert "prompt" in str(refused("bad_option", parse_generate, BASE + ["prompt"]))


# -- options by name (the inbox sidecar's way in) ---------------------------------------------------

def test_options_defaults_and_normalising():
    assert parse_options({}) == {"bpm": None, "beats_per_bar": None, "beat_unit": None, "offset": 0.0, "prompt": "",
                                 "takes": 1, "context_mode": P.DEFAULT_CONTEXT_MODE, "seed": None,
                                 "candidates": None, "scores": False}
    opts = parse_options({"bpm": 90, "takes": 2.0, "offset": 1, "seed": 7.0})
    assert (opts["bpm"], opts["takes"], opts["offset"], opts["seed"]) == (90.0, 2, 1.0, 7)
    assert type(opts["bpm"]) is float and type(opts["takes"]) is int


@pytest.mark.parametrize("options,code", [
    ({"colour": "red"}, "bad_option"), ({"bars": 4}, "bad_option"), ({"bpm": "fast"}, "bad_option"),
    ({"bpm": 1000}, "bad_tempo"), ({"beat_unit": 3}, "bad_tempo"), ({"takes": 0}, "bad_option"),
    ({"prompt": "x" * (P.MAX_PROMPT_CHARS + 1)}, "bad_option"), ({"offset": P.MAX_OFFSET_S + 1}, "bad_option"),
    ({"seed": P.MAX_SEED + 1}, "bad_option"), ({"context_mode": "loud"}, "bad_option"),
    ({"candidates": P.MAX_CANDIDATES + 1}, "bad_option"), ({"takes": 3, "candidates": 2}, "bad_option"),
    ({"candidates": 0}, "bad_option"), ({"candidates": 2.5}, "bad_option"), ({"scores": 2}, "bad_option"),
    ({"scores": "yes"}, "bad_option"),
])
def test_options_refused_as_in_generate(options, code):
    refused(code, parse_options, options)
    pairs = [x for kv in options.items() for x in kv]
    refused(code, parse_generate, BASE + pairs)  # the same rule, whichever way the options came


# -- /stage/tempo and /stage/cancel ----------------------------------------------------------------

@pytest.mark.parametrize("args,expected", [
    ([120.0], Tempo(120.0)),
    ([90], Tempo(90.0)),
    ([140.5, 7, 8], Tempo(140.5, 7, 8)),
    ([140.5, 6.0, 8.0], Tempo(140.5, 6, 8)),
    ([30, 1, 1], Tempo(30.0, 1, 1)),
    ([300, 32, 16], Tempo(300.0, 32, 16)),
])
def test_tempo_accepted(args, expected):
    tempo = parse_tempo(args)
    assert tempo == expected and tempo.source == "osc"
    assert type(tempo.bpm) is float
    assert tempo.beats_per_bar is None or type(tempo.beats_per_bar) is int


@pytest.mark.parametrize("args,code", [
    ([], "bad_request"),
    ([120, 4], "bad_request"),
    ([120, 4, 4, 1], "bad_request"),
    (["120"], "bad_tempo"),
    ([True], "bad_tempo"),
    ([None], "bad_tempo"),
    ([29], "bad_tempo"),
    ([301.0], "bad_tempo"),
    ([math.nan], "bad_tempo"),
    ([-math.inf], "bad_tempo"),
    ([120, 0, 4], "bad_tempo"),
    ([120, 33, 4], "bad_tempo"),
    ([120, 4.5, 4], "bad_tempo"),
    ([120, "4", 4], "bad_tempo"),
    ([120, 4, 3], "bad_tempo"),
    ([120, 4, 6.0], "bad_tempo"),
    ([120, 4, None], "bad_tempo"),
])
def test_tempo_refused(args, code):
    refused(code, parse_tempo, args)


def test_cancel():
    assert parse_cancel(["take-7"]) == "take-7"
    refused("bad_request", parse_cancel, [])
    refused("bad_request", parse_cancel, ["a", "b"])
    refused("bad_job_id", parse_cancel, [7])
    refused("bad_job_id", parse_cancel, ["../x"])


def test_protocol_error_codes_are_known():
    with pytest.raises(AssertionError):
        ProtocolError("no_such_code", "x")
    assert all(isinstance(v, str) and v for v in P.ERROR_CODES.values())


# -- outbound ----------------------------------------------------------------------------------------

def test_message_round_trip():
    msg = OscMessage(P.message(P.DONE, "job-1", "/out/a.wav", "/out/b.wav"))
    assert msg.address == P.DONE and msg.params == ["job-1", "/out/a.wav", "/out/b.wav"]
    msg = OscMessage(P.message(P.STATUS, "idle", 3, 120.5, "osc", "cpu", "drums=tiny-random"))
    assert msg.params == ["idle", 3, 120.5, "osc", "cpu", "drums=tiny-random"]
    msg = OscMessage(P.message(P.PROGRESS, "j", 33.3))
    assert msg.params[0] == "j" and msg.params[1] == pytest.approx(33.3, rel=1e-6)
    assert OscMessage(P.message(P.PONG)).params == []
    assert OscMessage(P.message(P.ACCEPTED, "j", True)).params == ["j", 1]  # bools as ints
    assert OscMessage(P.message(P.ERROR, "j", "bad_bars", "ünïcode ✓")).params == ["j", "bad_bars", "ünïcode ✓"]


def test_message_types_on_the_wire():
    dgram = P.message("/x", 1, 2.0, "s")
    assert b",ifs\x00" in dgram
    assert len(dgram) % 4 == 0


def test_message_values_past_32_bits():
    """A ping token echoed back may be an int64 or a double (liblo's h and d): never a crash."""
    for value in (2**31, -2**31 - 1, 2**62, -2**63):
        assert OscMessage(P.message(P.PONG, value)).params == [value]
    assert OscMessage(P.message(P.PONG, 1e300)).params == [1e300]
    assert OscMessage(P.message(P.PONG, 2**31 - 1)).params == [2**31 - 1]
    assert b",i" in P.message(P.PONG, 5) and b",f" in P.message(P.PONG, 5.0)
    inf = OscMessage(P.message(P.PONG, math.inf)).params[0]
    assert inf == math.inf


# -- property: nothing but ProtocolError -----------------------------------------------------------

_KEYS = st.sampled_from(["bpm", "beats_per_bar", "beat_unit", "offset", "prompt", "takes", "context_mode", "seed",
                         "tempo", ""])
_VALUES = st.one_of(
    st.integers(), st.integers(-2**63, 2**63), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=80),
    st.binary(max_size=16), st.booleans(), st.none(), st.lists(st.integers(), max_size=3),
    st.sampled_from(["drums", "bass", "", "mix", "click", "mix+click", "job-1", 120.0, 4.0, 4]), _KEYS)


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.lists(_VALUES, max_size=12),
    st.tuples(st.sampled_from(["j", "job.1", "bad id"]), st.sampled_from(["", "/p.wav", 3]),
              st.sampled_from(["drums", "bass", "Drums ", "x"]), _VALUES,
              st.lists(st.one_of(_KEYS, _VALUES), max_size=10)).map(lambda t: [*t[:4], *t[4]]),
))
def test_parse_generate_only_raises_protocol_error(args):
    try:
        req = parse_generate(args)
    except ProtocolError as e:
        assert e.code in P.ERROR_CODES
    else:  # what it accepts is fully valid
        assert P.JOB_ID.fullmatch(req.job_id) and req.instrument in P.INSTRUMENTS
        assert type(req.bars) is int and 1 <= req.bars <= P.MAX_BARS
        assert req.bpm is None or (type(req.bpm) is float and 30 <= req.bpm <= 300)
        assert 1 <= req.takes <= P.MAX_TAKES and req.context_mode in P.CONTEXT_MODES
        assert math.isfinite(req.offset)


@settings(max_examples=200, deadline=None)
@given(st.lists(_VALUES, max_size=5))
def test_parse_tempo_and_cancel_only_raise_protocol_error(args):
    for fn in (parse_tempo, parse_cancel):
        try:
            fn(args)
        except ProtocolError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False, width=64),
                          st.text(st.characters(blacklist_characters="\x00")), st.booleans()), max_size=6))
def test_message_builds_any_reply(args):
    """Any value an inbound message can carry (OSC strings hold no NUL) makes a parseable reply."""
    msg = OscMessage(P.message("/stage/pong", *args))
    assert len(msg.params) == len(args)


# -- candidates and scores (issue 16) ----------------------------------------------------------------

def test_candidates_and_scores_options():
    req = parse_generate(BASE + ["takes", 2, "candidates", 6.0, "scores", 1])
    assert (req.takes, req.candidates, req.scores) == (2, 6, True) and type(req.candidates) is int
    assert parse_generate(BASE + ["candidates", P.MAX_CANDIDATES]).candidates == P.MAX_CANDIDATES
    assert parse_generate(BASE + ["takes", 3, "candidates", 3]).candidates == 3
    assert "best takes" in str(refused("bad_option", parse_generate, BASE + ["takes", 4, "candidates", 2]))


def test_done_without_scores_is_what_it_always_was():
    assert P.done_args("j", ["/o/a.wav", "/o/b.wav"]) == ["j", "/o/a.wav", "/o/b.wav"]


def test_done_with_scores_paths_first_then_each_take_in_order():
    fits = [{"score": 0.9, "grid_f1": 0.9, "offset_ms": -3.5, "tempo_bpm": 120.1, "lufs": -20.0, "context_lufs": None,
             "true_peak_db": -2.0, "clipping": False, "silence_ratio": 0.0, "rank": 1, "extra": "ignored"},
            None]  # an unreadable sidecar: its take is still marked, with no scores
    args = P.done_args("j", ["/o/a.wav", "/o/b.wav"], fits)
    assert args[:3] == ["j", "/o/a.wav", "/o/b.wav"]
    assert args[3:] == ["take", 1, "score", 0.9, "grid_f1", 0.9, "offset_ms", -3.5, "tempo_bpm", 120.1, "lufs", -20.0,
                        "true_peak_db", -2.0, "clipping", 0, "silence_ratio", 0.0, "take", 2]
    # on the wire: a client reads paths up to the first "take", then key value pairs
    decoded = OscMessage(P.message(P.DONE, *args)).params
    assert decoded[:3] == ["j", "/o/a.wav", "/o/b.wav"] and decoded[3:5] == ["take", 1]
    assert type(decoded[decoded.index("clipping") + 1]) is int
    assert decoded[decoded.index("grid_f1") + 1] == pytest.approx(0.9)
