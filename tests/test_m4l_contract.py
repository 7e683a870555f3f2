"""The Max for Live device's protocol contract, against the real daemon.

The device's logic (max_for_live/src/stage_logic.js) runs under Node behind a small JSON-lines
driver (max_for_live/tests/contract_driver.js). This test plays Max around it: it feeds the logic
UI and Live events, sends exactly the OSC messages the logic produced (with the logic's type tags)
over real UDP to `stage-bridge serve` (tiny-random model), writes the "recording" where the logic's
recorder action says (a Max path, converted the way Max's conformpath does), and feeds the daemon's
real replies back through the logic's reply parser. The assertions are on the logic's view: the
state, the progress, the takes (which must exist on disk) and the plain-words error texts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import soundfile as sf
from pythonosc.osc_message_builder import OscMessageBuilder

from conftest import require_tool
from node_lines import NodeLines
from daemon_util import Daemon
from osc_replies import OscReplies
from stage_bridge.audio.timing import bars_to_samples
from stage_bridge.bridge import protocol as P

pytestmark = pytest.mark.slow  # the device's logic in node against a whole daemon

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "max_for_live" / "tests" / "contract_driver.js"
BOOT = "Macintosh HD"        # the device runs as on a Mac: Max paths are "Macintosh HD:/..."
SAMPLE_RATE = 44100
ENDS = (P.DONE, P.ERROR, P.CANCELLED)


class Logic(NodeLines):
    """stage_logic.js under Node, one JSON request/answer per line."""

    def __init__(self, node: str):
        super().__init__(node, DRIVER)

    def call(self, fn: str, *args: Any) -> Any:
        return self.ask(cmd="call", fn=fn, args=list(args))["result"]


def max_to_native(max_path: str) -> str:
    """What Max's conformpath does with "Volume:/path" on a Mac (independent of the JS version)."""
    volume, rest = max_path.split(":", 1)
    assert rest.startswith("/"), max_path
    return rest if volume == BOOT else f"/Volumes/{volume}{rest}"


class Device:
    """Max's side of the device: performs the logic's actions and feeds it the daemon's replies."""

    def __init__(self, logic: Logic, daemon: Daemon, replies: OscReplies, tag: str, wire: str = "message",
                 **options: Any):
        self.logic, self.daemon, self.replies, self.wire = logic, daemon, replies, wire
        self.out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sent: list[dict[str, Any]] = []
        self.recorder: dict[str, Any] | None = None
        self.scheduled: list[dict[str, Any]] = []
        self.other_actions: list[dict[str, Any]] = []
        self.views: list[dict[str, Any]] = []
        self.view = logic.ask(cmd="create", options={"os": "macintosh", "bootVolume": BOOT, "tag": tag,
                                                     "now": time.time() * 1000, **options})["view"]

    def dispatch(self, event: dict[str, Any]) -> dict[str, Any]:
        event.setdefault("now", time.time() * 1000)
        answer = self.logic.ask(cmd="dispatch", event=event)
        for action in answer["actions"]:
            self.perform(action)
        self.view = answer["view"]
        self.views.append(self.view)
        return self.view

    def perform(self, action: dict[str, Any]) -> None:
        kind = action["type"]
        if kind == "send":
            msg = action[self.wire]
            builder = OscMessageBuilder(address=msg["address"])
            for arg in msg["args"]:
                builder.add_arg(arg["value"], arg["type"])  # exactly the logic's value and type tag
            self.out.sendto(builder.build().dgram, (self.daemon.osc_host, self.daemon.osc_port))
            self.sent.append(msg)
        elif kind == "recorder" and action["command"] == "open":
            self.recorder = action
        elif kind == "schedule":
            self.scheduled.append(action)
        else:
            self.other_actions.append(action)

    def set(self, key: str, value: Any) -> dict[str, Any]:
        return self.dispatch({"type": "set", "key": key, "value": value})

    def live(self, bpm: float, num: int = 4, den: int = 4) -> None:
        for key, value in (("num", num), ("den", den), ("tempo", bpm)):
            self.dispatch({"type": "live", "key": key, "value": value})

    def osc_reply(self, address: str, args: list[Any]) -> dict[str, Any]:
        # [udpreceive] hands Max plain atoms: strings, ints, floats
        return self.dispatch({"type": "osc", "address": address, "args": args})

    def connect(self) -> None:
        since = self.replies.mark()
        self.dispatch({"type": "tick"})
        token = self.sent[-1]["args"][0]["value"]
        assert self.sent[-1]["address"] == P.PING
        while True:
            address, args = self.replies.next(since, 10)
            since += 1
            if address == P.PONG and args == [token]:
                break
        self.osc_reply(address, args)
        assert self.view["connection"] == "connected"
        assert [m["address"] for m in self.sent[-2:]] == [P.STATUS, P.INFO], self.sent[-3:]
        waiting = {P.STATUS, P.INFO}
        while waiting:   # the status and info replies
            address, args = self.replies.next(since, 10)
            since += 1
            if address in waiting:
                self.osc_reply(address, args)
                waiting.discard(address)

    def run_job(self, job_id: str, timeout: float = 90.0,
                on_reply: Callable[[str, list[Any]], None] | None = None, since: int = 0) -> tuple[str, list[Any]]:
        """Feed every reply about `job_id` to the logic until the job's last word."""
        while True:
            address, args = self.replies.next(since, timeout)
            since += 1
            if not (address.startswith("/stage/job/") and args[:1] == [job_id]):
                continue
            self.osc_reply(address, args)
            if on_reply:
                on_reply(address, args)
            if address in ENDS:
                return address, args

    def generate(self, transport: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.dispatch({"type": "generate", "transport": transport or {}})

    def generated(self) -> dict[str, Any]:
        gens = [m for m in self.sent if m["address"] == P.GENERATE]
        assert len(gens) == 1, self.sent
        return gens[0]


@pytest.fixture(scope="module")
def node() -> str:
    return require_tool("node")


@pytest.fixture(scope="module")
def logic(node: str):
    lg = Logic(node)
    yield lg
    lg.close()


@pytest.fixture(scope="module")
def rig(tmp_path_factory, node):
    """One daemon for the module: drums = tiny-random; bass = stage-bass, whose weights are absent."""
    replies = OscReplies()
    home = tmp_path_factory.mktemp("m4l") / "home"
    daemon = Daemon(home, replies.port, models=("drums=tiny-random", "bass=stage-bass"))
    try:
        daemon.start()
    except BaseException:
        daemon.kill()
        replies.close()
        raise
    try:
        yield daemon, replies
    finally:
        rc = daemon.stop()
        replies.close()
    assert rc == 0, daemon.log_text()


def typed(msg: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(a["type"], a["value"]) for a in msg["args"]]


def sidecar(take: str) -> dict[str, Any]:
    return json.loads(Path(take).with_suffix(".json").read_text())


def progress_values(views: list[dict[str, Any]]) -> list[int]:
    return [v["progress"] for v in views if v["phase"] == "generating"]


# -- without a daemon --------------------------------------------------------------------------------

def test_every_daemon_error_code_has_plain_words(logic):
    texts = logic.call("errorText", "x")
    assert "x" in texts
    for code in P.ERROR_CODES:
        text = logic.call("errorText", code)
        assert "(" + code + ")" not in text, f"{code} has no plain-words text"


@pytest.mark.parametrize("bars,bpm,num,den,sr", [(1, 120.0, 4, 4, 44100), (4, 97.0, 6, 8, 44100), (8, 128.0, 4, 4, 48000),
                                               (16, 30.0, 7, 8, 48000), (2, 300.0, 5, 16, 22050), (3, 91.5, 3, 4, 96000)])
def test_recording_length_matches_the_daemons_bar_math(logic, bars, bpm, num, den, sr):
    assert logic.call("recordingSamples", bars, bpm, num, den, sr) == bars_to_samples(bars, bpm, sr, num, den)


# -- against the daemon ------------------------------------------------------------------------------

def test_click_mode_one_bar(logic, rig):
    daemon, replies = rig
    dev = Device(logic, daemon, replies, "clk1")
    dev.live(120.0)
    dev.connect()
    # the daemon's /stage/info names its control room page, and the ready device shows where
    assert re.fullmatch(r"Connected\. Ready\. Takes in your browser: http://127\.0\.0\.1:\d+/", dev.view["status"])
    dev.set("modeIndex", 1)     # click
    dev.set("barsIndex", 0)     # 1 bar
    since = replies.mark()
    view = dev.generate({"songBeats": 5.0, "playing": True})
    assert view["state"] == "generating" and dev.recorder is None
    msg = dev.generated()
    job = view["jobId"]
    assert typed(msg) == [("s", job), ("s", P.NO_CONTEXT), ("s", "drums"), ("i", 1), ("s", "bpm"), ("f", 120), ("s", "beats_per_bar"),
                          ("i", 4), ("s", "beat_unit"), ("i", 4), ("s", "offset"), ("f", 0), ("s", "takes"), ("i", 1),
                          ("s", "context_mode"), ("s", "click"), ("s", "scores"), ("i", 1)]
    address, args = dev.run_job(job, since=since)
    assert address == P.DONE, args
    view = dev.view
    assert view["state"] == "done" and view["progress"] == 100
    assert view["paths"] == args[1:args.index(P.TAKE_MARK)] and len(view["paths"]) == 1
    assert all(Path(p).is_file() for p in view["paths"])
    assert Path(view["paths"][0]).name.startswith(job + ".drums.120bpm.take1")
    # the menu says the take's grid fit, as its sidecar records it (the daemon's scores reached the device)
    assert view["results"] == [f"take 1 - grid {sidecar(view['paths'][0])['fit']['grid_f1']:.2f}"]
    seen = progress_values(dev.views)
    assert any(0 < p < 100 for p in seen), seen          # the daemon's progress reached the view
    assert seen == sorted(seen)
    meta = sidecar(view["paths"][0])
    assert (meta["bars"], meta["bpm"], meta["context_mode"], meta["beats_per_bar"], meta["beat_unit"]) == (1, 120.0, "click", 4, 4)


def test_mix_click_with_a_recorded_bounce(logic, rig):
    daemon, replies = rig
    dev = Device(logic, daemon, replies, "mix1")
    dev.live(100.0, 6, 8)
    dev.connect()
    dev.set("home", str(daemon.home))       # the "Daemon folder" setting, as a native path
    dev.set("barsIndex", 1)                 # 2 bars
    view = dev.generate({"songBeats": 10.2, "playing": True, "loopOn": False})
    assert view["state"] == "waiting" and view["status"] == "Recording 2 bars starts at bar 5..."
    rec = dev.recorder
    assert rec is not None and rec["path"].startswith(BOOT + ":")
    bounce = Path(max_to_native(rec["path"]))
    assert bounce.parent == daemon.home / "bounces" and str(bounce) == rec["nativePath"] == view["bounce"]
    kinds = {a["type"]: a for a in dev.other_actions}
    assert kinds["arm"]["ticks"] == 12 * 480 and kinds["gate"]["open"] is True
    # Max records: from the bar line until the [delay] fires (2 bars of 6/8 at 100 bpm + the tail)
    dev.dispatch({"type": "recordStarted"})
    assert dev.view["state"] == "recording"
    frames = round(kinds["stopAfter"]["ms"] / 1000 * SAMPLE_RATE)
    assert frames >= bars_to_samples(2, 100.0, SAMPLE_RATE, 6, 8)
    rng = np.random.default_rng(1)
    sf.write(bounce, (rng.standard_normal((frames, 2)) * 0.1).astype(np.float32), SAMPLE_RATE, subtype="PCM_24")
    dev.dispatch({"type": "recordStopped"})
    assert dev.scheduled and dev.scheduled[-1]["afterMs"] >= 100
    since = replies.mark()
    dev.dispatch(dev.scheduled[-1]["event"])        # [sfrecord~] closed the file: send it
    msg = dev.generated()
    job = dev.view["jobId"]
    assert typed(msg)[:4] == [("s", job), ("s", str(bounce)), ("s", "drums"), ("i", 2)]
    assert ("s", "mix+click") in typed(msg)
    address, args = dev.run_job(job, since=since)
    assert address == P.DONE, args
    assert dev.view["state"] == "done"
    takes = dev.view["paths"]
    assert len(takes) == 1 and Path(takes[0]).is_file()
    assert Path(takes[0]).name.startswith(bounce.stem + ".drums.100bpm.take1")
    meta = sidecar(takes[0])
    assert Path(meta["context_path"]) == bounce.resolve()
    assert (meta["bars"], meta["beats_per_bar"], meta["beat_unit"], meta["offset"], meta["context_mode"]) == (2, 6, 8, 0.0, "mix+click")
    info = sf.info(takes[0])
    assert info.samplerate == SAMPLE_RATE
    assert info.frames == logic.call("recordingSamples", 2, 100.0, 6, 8, SAMPLE_RATE)
    # Insert: where the recording started, as the path Live's API wants on a Mac
    dev.dispatch({"type": "insert", "trackIndex": 0})
    insert = dev.other_actions[-1]
    assert insert["type"] == "insertClip" and insert["startBeats"] == 12
    assert insert["path"] == "/Volumes/" + BOOT + takes[0]


@pytest.mark.parametrize("wire", ["message", "wire"])
def test_prompt_with_spaces_and_quotes(logic, rig, wire):
    """Sent with the protocol's types, and as Max's [udpsend] sends them (whole numbers as ints)."""
    daemon, replies = rig
    dev = Device(logic, daemon, replies, "pr" + wire[:2], wire=wire)
    dev.live(121.0)
    dev.connect()
    prompt = 'Genres: "Post-Rock",  it\'s loud; Moods: "happy" & calm'
    dev.set("modeIndex", 1)
    dev.set("barsIndex", 0)
    dev.set("prompt", "  " + prompt + "\n")
    since = replies.mark()
    dev.generate()
    msg = dev.generated()
    assert typed(msg)[-2:] == [("s", "prompt"), ("s", prompt)]
    assert typed(msg)[5] == (("i", 121) if wire == "wire" else ("f", 121))
    address, args = dev.run_job(dev.view["jobId"], since=since)
    assert address == P.DONE, args
    assert sidecar(args[1])["prompt"] == prompt


def test_two_takes(logic, rig):
    daemon, replies = rig
    dev = Device(logic, daemon, replies, "two1")
    dev.live(140.0)
    dev.connect()
    dev.set("modeIndex", 1)
    dev.set("barsIndex", 0)
    dev.set("takes", 2)
    since = replies.mark()
    dev.generate()
    assert ("i", 2) in typed(dev.generated())
    address, args = dev.run_job(dev.view["jobId"], since=since)
    assert address == P.DONE, args
    view = dev.view
    assert len(view["paths"]) == 2 and all(Path(p).is_file() for p in view["paths"])
    assert [Path(p).name.split(".")[-2] for p in view["paths"]] == ["take1", "take2"]
    assert [n.split(" - ")[0] for n in view["results"]] == ["take 1", "take 2"]  # best first
    grids = [sidecar(p)["fit"] for p in view["paths"]]
    assert grids[0]["score"] >= grids[1]["score"]
    assert view["status"].startswith("Done: 2 takes.")


def test_cancel(logic, rig):
    daemon, replies = rig
    dev = Device(logic, daemon, replies, "can1")
    dev.live(30.0)                  # 16 bars at 30 bpm: long enough to cancel mid-way
    dev.connect()
    dev.set("modeIndex", 1)
    dev.set("barsIndex", 4)         # 16 bars
    dev.set("takes", 4)
    since = replies.mark()
    dev.generate()
    job = dev.view["jobId"]

    def cancel_once_running(address: str, args: list[Any]) -> None:
        if address == P.PROGRESS and dev.view["phase"] == "generating" and not any(
                m["address"] == P.CANCEL for m in dev.sent):
            dev.dispatch({"type": "cancel"})
            assert dev.view["status"] == "Cancelling..."

    address, args = dev.run_job(job, on_reply=cancel_once_running, since=since)
    assert [m for m in dev.sent if m["address"] == P.CANCEL] == [
        {"address": P.CANCEL, "args": [{"type": "s", "value": job}]}]
    assert address == P.CANCELLED, args
    assert dev.view["state"] == "idle" and dev.view["status"] == "Cancelled." and dev.view["progress"] == 0
    assert not list(daemon.outbox.glob(job + ".*"))


def test_forbidden_path(logic, rig, tmp_path):
    """The "Daemon folder" points elsewhere: the daemon refuses to read the bounce."""
    daemon, replies = rig
    dev = Device(logic, daemon, replies, "frb1")
    dev.live(120.0)
    dev.connect()
    elsewhere = tmp_path / "not-the-daemon"
    (elsewhere / "bounces").mkdir(parents=True)
    dev.set("home", str(elsewhere))
    dev.set("modeIndex", 0)         # mix
    dev.set("barsIndex", 0)
    dev.generate({"songBeats": 0.0, "playing": True})
    bounce = Path(max_to_native(dev.recorder["path"]))
    assert bounce.parent == elsewhere / "bounces"
    sf.write(bounce, (np.random.default_rng(2).standard_normal((SAMPLE_RATE * 3, 2)) * 0.1).astype(np.float32), SAMPLE_RATE)
    dev.dispatch({"type": "recordStarted"})
    dev.dispatch({"type": "recordStopped"})
    since = replies.mark()
    dev.dispatch(dev.scheduled[-1]["event"])
    address, args = dev.run_job(dev.view["jobId"], since=since)
    assert address == P.ERROR and args[1] == "forbidden_path"
    view = dev.view
    assert view["state"] == "error"
    assert view["status"] == logic.call("errorText", "forbidden_path")
    assert "Daemon folder" in view["status"]
    assert view["error"]["detail"] == args[2]
    assert view["canGenerate"] is True


def test_weights_missing(logic, rig):
    daemon, replies = rig
    dev = Device(logic, daemon, replies, "wts1")
    dev.live(120.0)
    dev.set("instrumentIndex", 1)   # bass: its weights are not installed on this daemon
    dev.connect()
    assert "bass model weights are missing" in dev.view["status"]      # from /stage/status already
    dev.set("modeIndex", 1)
    since = replies.mark()
    dev.generate()
    address, args = dev.run_job(dev.view["jobId"], since=since)
    assert address == P.ERROR and args[1] == "weights_missing"
    assert dev.view["state"] == "error"
    assert dev.view["status"] == logic.call("errorText", "weights_missing")
    assert "stage-bridge weights" in dev.view["status"]


# -- the launcher (stage_launcher.js) starts the real daemon --------------------------------------------

LAUNCHER = REPO / "max_for_live" / "src" / "stage_launcher.js"
STUB_MAX_API = REPO / "max_for_live" / "sim" / "node_modules_stub"


class Launcher:
    """stage_launcher.js in Node as node.script runs it, with the stand-in max-api module
    (max_for_live/sim/node_modules_stub): messages in as JSON lines, outlet/post lines out."""

    def __init__(self, node: str, env: dict[str, str]):
        self.proc = subprocess.Popen([node, str(LAUNCHER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1, env={**env, "NODE_PATH": str(STUB_MAX_API)})
        self.lines: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(json.loads(line))
                self._cond.notify_all()

    def send(self, *message: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(list(message)) + "\n")
        self.proc.stdin.flush()

    def outlet(self, n: int, timeout: float) -> list[Any]:
        """The n-th (1-based) outlet message, waiting for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                outs = [line["outlet"] for line in self.lines if "outlet" in line]
                if len(outs) >= n:
                    return outs[n - 1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no outlet #{n} within {timeout} s: {self.lines}")
                self._cond.wait(left)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def test_launcher_starts_the_real_daemon_once_and_reports_a_second_as_already_running(node, tmp_path):
    """The device's launcher finds `stage-bridge` in the checkout the device file sits in, starts
    `serve` on the device's ports, and the daemon answers /stage/ping there. Asked again, it starts
    nothing; a second launcher (another device) gets "already PORT" from the second daemon's
    port-in-use refusal. The daemon exits 0 on SIGTERM and the launcher reports it."""
    from urllib.parse import quote

    from daemon_util import free_udp_port

    checkout = tmp_path / "stage bridge"
    command = checkout / ".venv" / "bin" / "stage-bridge"
    command.parent.mkdir(parents=True)
    command.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m stage_bridge.cli "$@"\n')
    command.chmod(0o755)
    (checkout / "max_for_live").mkdir()
    env = {
        "HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path), "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
        "STAGE_BRIDGE_CONFIG": str(tmp_path / "no-config.toml"), "STAGE_BRIDGE_HOME": str(tmp_path / "home"),
        "STAGE_BRIDGE_MODEL": "tiny-random", "STAGE_BRIDGE_DEVICE": "cpu", "STAGE_BRIDGE_MIDI": "0",
        "STAGE_BRIDGE_WATCH": "0", "XDG_CONFIG_HOME": str(tmp_path / "cfg"), "XDG_DATA_HOME": str(tmp_path / "data"),
    }
    replies = OscReplies()
    osc_port = free_udp_port()
    first, second = Launcher(node, env), Launcher(node, env)
    pid = None
    try:
        first.send("launch", osc_port, replies.port, "-", quote(str(checkout / "max_for_live"), safe=""))
        word, pid = first.outlet(1, 60)
        assert word == "started" and pid > 0
        ping = OscMessageBuilder(P.PING)
        ping.add_arg("launched", "s")
        datagram = ping.build().dgram
        deadline = time.monotonic() + 240
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            while not replies.find(lambda a, p: a == P.PONG):
                assert time.monotonic() < deadline, \
                    f"no pong; log: {[p.read_text() for p in tmp_path.glob('stage-bridge-serve-*.log')]}"
                s.sendto(datagram, ("127.0.0.1", osc_port))
                time.sleep(0.5)
        first.send("launch", osc_port, replies.port, "-", "-")
        assert first.outlet(2, 30) == ["started", pid], "one child at a time: no second daemon"
        second.send("launch", osc_port, replies.port, quote(str(command), safe=""), "-")
        assert second.outlet(1, 60)[0] == "started"
        assert second.outlet(2, 240) == ["already", osc_port], "the second daemon refused the taken port"
        os.kill(pid, signal.SIGTERM)
        assert first.outlet(3, 60)[:2] == ["exited", 0]
        pid = None
    finally:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        first.close()
        second.close()
        replies.close()
