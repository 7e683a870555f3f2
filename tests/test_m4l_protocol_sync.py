"""The Max for Live device's copy of the OSC protocol agrees with the Python definition.

The device (max_for_live/src/stage_logic.js, run by Max's [js]) cannot import Python, so it keeps
its own addresses, instruments, context modes, limits, job-id pattern and error texts. Here it is
loaded under Node and held against stage_bridge: constants it exports by value; limits by
behaviour, because most of them live inside its checks and texts: for requests at either side of
each Python limit the device's verdict (sent, or refused with an error code) must be the daemon's
verdict for the very arguments the device sends, and the device's texts must quote Python's
numbers. A request the device refuses never reaches the daemon, so a device stricter than the
daemon would silently lose features and a looser one would show the daemon's raw refusal.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import require_tool
from stage_bridge.audio.context import CONTEXT_MODES
from stage_bridge.audio.timing import BEAT_UNITS, BEATS_PER_BAR_RANGE, BPM_RANGE
from stage_bridge.bridge import protocol as P
from stage_bridge.errors import StageError
from stage_bridge.limits import MAX_BARS, MAX_OFFSET_S, MAX_PROMPT_CHARS, MAX_SEED, MAX_TAKES

LOGIC = Path(__file__).resolve().parents[1] / "max_for_live" / "src" / "stage_logic.js"

# The probes sit on these limits, so either side moving its limit makes the verdicts differ.
PROMPT_CHARS, OFFSET_S, SEED_MAX = MAX_PROMPT_CHARS, MAX_OFFSET_S, MAX_SEED

# Each call is [function, args...] on the StageLogic exports; ["get", name] reads an export and
# ["ui", key, value] sets a control on a fresh Controller and returns its view's ui.
NODE = r"""
const L = require(process.argv[1]);
const calls = JSON.parse(require('fs').readFileSync(0, 'utf8'));
process.stdout.write(JSON.stringify(calls.map(([fn, ...args]) => {
  try {
    if (fn === 'get') return { ok: L[args[0]] };
    if (fn === 'ui') { const c = new L.Controller({}); c.onSet(args[0], args[1], []); return { ok: c.view().ui }; }
    return { ok: L[fn](...args) };
  } catch (e) {
    if (e instanceof L.LogicError) return { code: e.code, message: e.message };
    throw e;
  }
})));
"""


def js(*calls: list[Any]) -> list[dict[str, Any]]:
    """Results of the calls in one Node process: {"ok": value} or {"code", "message"} (a refusal)."""
    node = require_tool("node")
    run = subprocess.run([node, "-e", NODE, str(LOGIC)], input=json.dumps(calls), capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def get(name: str) -> Any:
    return js(["get", name])[0]["ok"]


def daemon_verdict(parse, args: list[Any]) -> str:
    try:
        parse(args)
    except StageError as e:
        return e.code
    return "ok"


def device_verdict(result: dict[str, Any]) -> str:
    return "ok" if "ok" in result else result["code"]


# ------------------------------------------------------------------------------ constants
def test_addresses():
    assert get("ADDRESS") == {
        "ping": P.PING, "generate": P.GENERATE, "tempo": P.TEMPO, "cancel": P.CANCEL, "status": P.STATUS,
        "info": P.INFO, "pong": P.PONG, "accepted": P.ACCEPTED, "progress": P.PROGRESS, "done": P.DONE,
        "error": P.ERROR, "cancelled": P.CANCELLED}


def test_done_scores_layout():
    assert get("SCORE_KEYS") == list(P.SCORE_KEYS) and get("TAKE_MARK") == P.TAKE_MARK


def test_instruments_and_context_modes():
    assert get("INSTRUMENTS") == list(P.INSTRUMENTS)
    assert get("CONTEXT_MODES") == list(CONTEXT_MODES)
    assert get("NO_CONTEXT") == P.NO_CONTEXT
    assert get("NO_WEB") == P.NO_WEB


def test_every_error_code_has_a_device_text_and_no_other():
    device = set(get("ERROR_TEXTS"))
    assert device - set(P.ERROR_CODES) == set(), "the device explains codes the daemon never sends"
    assert set(P.ERROR_CODES) - device == set(), "the device has no plain words for these daemon codes"


def test_device_controls_stay_within_the_protocol():
    assert all(1 <= bars <= MAX_BARS for bars in get("BAR_CHOICES"))
    bars_ok, bars_over, takes = js(["ui", "bars", MAX_BARS], ["ui", "bars", MAX_BARS + 1], ["ui", "takes", 10**6])
    assert bars_ok["ok"]["bars"] == MAX_BARS and bars_over["ok"]["bars"] != MAX_BARS + 1
    assert 1 <= takes["ok"]["takes"] <= MAX_TAKES        # the device offers fewer; never more


# ------------------------------------------------------------------------------ /stage/generate
BASE = {"jobId": "sync-1", "contextPath": "/tmp/context.wav", "instrument": "drums", "bars": 4, "bpm": 120,
        "beatsPerBar": 4, "beatUnit": 4, "offset": 0, "prompt": "", "takes": 1, "mode": "mix+click"}


def sent_args(req: dict[str, Any]) -> list[Any]:
    """The /stage/generate arguments the device sends for `req` (checked against the device below)."""
    mode = req.get("mode", P.DEFAULT_CONTEXT_MODE)
    args = [req["jobId"], P.NO_CONTEXT if mode == "click" else req["contextPath"], req["instrument"], req["bars"],
            "bpm", req["bpm"], "beats_per_bar", req["beatsPerBar"], "beat_unit", req["beatUnit"],
            "offset", req["offset"], "takes", req["takes"], "context_mode", mode, "scores", 1]
    if req["prompt"]:
        args += ["prompt", req["prompt"]]
    if req.get("seed") is not None:
        args += ["seed", req["seed"]]
    return args


def _generate_probes() -> list[tuple[str, Any]]:
    lo, hi = BPM_RANGE
    (blo, bhi), units = BEATS_PER_BAR_RANGE, BEAT_UNITS
    return ([("bars", v) for v in (0, 1, MAX_BARS, MAX_BARS + 1, 2.5)]
            + [("takes", v) for v in (0, 1, MAX_TAKES, MAX_TAKES + 1)]
            + [("bpm", v) for v in (lo - 0.5, lo, hi, hi + 0.5)]
            + [("beatsPerBar", v) for v in (blo - 1, blo, bhi, bhi + 1)]
            + [("beatUnit", v) for v in range(max(units) * 2 + 1)]
            + [("mode", v) for v in (*CONTEXT_MODES, "loop")]
            + [("instrument", v) for v in (*P.INSTRUMENTS, "Drums!")]   # any other model name: the daemon's call
            + [("prompt", "x" * n) for n in (PROMPT_CHARS, PROMPT_CHARS + 1)]
            + [("offset", v) for v in (-0.5, 0, OFFSET_S, OFFSET_S + 0.5)]
            + [("seed", v) for v in (-1, 0, SEED_MAX, SEED_MAX + 1)]
            + [("jobId", v) for v in ("a" * 64, "a" * 65, "-a", "a b")])


GENERATE_PROBES = _generate_probes()


def test_generate_device_and_daemon_agree_at_every_limit():
    reqs = [{**BASE, key: value} for key, value in GENERATE_PROBES]
    disagree = []
    for (key, value), req, result in zip(GENERATE_PROBES, reqs, js(*(["generateMessage", r] for r in reqs))):
        args = sent_args(req)
        if "ok" in result:
            assert result["ok"]["address"] == P.GENERATE
            assert [a["value"] for a in result["ok"]["args"]] == args, (key, value)
        verdicts = device_verdict(result), daemon_verdict(P.parse_generate, args)
        if verdicts[0] != verdicts[1]:
            disagree.append(f"{key}={str(value)[:12]!r}: device {verdicts[0]}, daemon {verdicts[1]}")
    assert not disagree, "\n".join(disagree)


def test_generate_default_context_mode():
    [result] = js(["generateMessage", {k: v for k, v in BASE.items() if k != "mode"}])
    args = [a["value"] for a in result["ok"]["args"]]
    assert args[args.index("context_mode") + 1] == P.DEFAULT_CONTEXT_MODE


# ------------------------------------------------------------------------------ tempo, job ids
def test_tempo_device_and_daemon_agree_at_every_limit():
    lo, hi = BPM_RANGE
    (blo, bhi), units = BEATS_PER_BAR_RANGE, BEAT_UNITS
    probes = ([(bpm, 4, 4) for bpm in (lo - 0.5, lo, hi, hi + 0.5)]
              + [(120, n, 4) for n in (blo - 1, blo, bhi, bhi + 1)]
              + [(120, 4, d) for d in range(max(units) * 2 + 1)])
    results = js(*(["tempoMessage", *p] for p in probes))
    disagree = [f"{p}: device {device_verdict(r)}, daemon {daemon_verdict(P.parse_tempo, list(p))}"
                for p, r in zip(probes, results)
                if device_verdict(r) != daemon_verdict(P.parse_tempo, list(p))]
    assert not disagree, "\n".join(disagree)
    assert {r["ok"]["address"] for r in results if "ok" in r} == {P.TEMPO}


@pytest.mark.parametrize("job_id", ["a", "A.b_c-9", "9" * 64, "9" * 65, "", ".a", "_a", "-a", "a/b", "a b",
                                    "a\u00e9", "a\n"])
def test_job_ids_agree(job_id):
    [result] = js(["cancelMessage", job_id])
    assert ("ok" in result) == bool(P.JOB_ID.fullmatch(job_id)), result
    if "ok" in result:
        assert result["ok"]["address"] == P.CANCEL
    else:
        assert result["code"] == "bad_job_id"


# ------------------------------------------------------------------------------ texts
def _or_list(values) -> str:
    return ", ".join(map(str, values[:-1])) + f" or {values[-1]}"


def test_texts_quote_the_python_limits():
    lo, hi = BPM_RANGE
    (blo, bhi), units = BEATS_PER_BAR_RANGE, BEAT_UNITS
    texts = get("ERROR_TEXTS")
    assert f"1 to {MAX_BARS} bars" in texts["bad_bars"]
    assert f"{lo} to {hi} bpm" in texts["bad_tempo"] and f"over {_or_list(units)}" in texts["bad_tempo"]
    refusals = js(["generateMessage", {**BASE, "bars": MAX_BARS + 1}],
                  ["generateMessage", {**BASE, "takes": MAX_TAKES + 1}],
                  ["tempoMessage", hi + 1, 4, 4],
                  ["tempoMessage", 120, bhi + 1, 4],
                  ["generateMessage", {**BASE, "prompt": "x" * (PROMPT_CHARS + 1)}],
                  ["generateMessage", {**BASE, "offset": OFFSET_S + 1}],
                  ["generateMessage", {**BASE, "seed": SEED_MAX + 1}])
    quoted = [f"from 1 to {MAX_BARS}", f"1 to {MAX_TAKES}", f"{lo} to {hi} bpm",
              f"({blo}-{bhi} over {_or_list(units)})", f"{PROMPT_CHARS} at most", f"0 to {OFFSET_S} seconds",
              f"0 to {SEED_MAX}"]
    for refusal, expected in zip(refusals, quoted):
        assert expected in refusal["message"], (expected, refusal)
