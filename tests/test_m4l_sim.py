"""Whole scenarios: the BUILT Max for Live device in the Max simulation against a real daemon.

`max_for_live/sim/driver.js` runs the simulation (max_for_live/sim: the .amxd's patcher and frozen
scripts, every object as its Max documentation says, a simulated Live and transport) behind a JSON-lines
interface. The device talks real OSC over UDP to `stage-bridge serve --model tiny-random`; its send and
receive ports are its live.numbox parameters, set as a Live set would restore them. Between the device
and the daemon sits a small UDP relay (this file) that logs every message and, for the Windows scenario,
maps the simulated Windows paths to this machine's folders (the daemon runs here, on POSIX paths).

Time in the simulation (Max's scheduler, Live's transport) only moves when a test advances it; the only
real waiting is for UDP replies and the daemon's work, on conditions with generous timeouts.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path, PureWindowsPath
from typing import Any, Callable, Iterator

import pytest
import soundfile as sf
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from conftest import require_tool
from node_lines import NodeLines
from daemon_util import Daemon

pytestmark = pytest.mark.slow  # node + a whole daemon

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "max_for_live" / "sim" / "driver.js"
BOOT = "Macintosh HD"
WIN_HOME = "C:\\Users\\Bob\\AppData\\Local\\stage-bridge"
JOB_TIMEOUT_MS = 120_000  # tiny-random on a loaded 2-core machine


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Relay:
    """UDP between device and daemon: device -> `inbound` port -> daemon; daemon -> `reply` port -> device.
    `to_daemon` / `to_device` rewrite string arguments (identity unless a scenario maps paths)."""

    def __init__(self) -> None:
        self.inbound = self._socket()
        self.reply = self._socket()
        self.daemon_port = 0
        self.device_port = 0
        self.to_daemon: Callable[[str], str] = lambda s: s
        self.to_device: Callable[[str], str] = lambda s: s
        self.log: list[tuple[str, str, list[Any]]] = []   # (direction, address, params)
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._pump, args=(self.inbound, "out"), daemon=True),
                         threading.Thread(target=self._pump, args=(self.reply, "in"), daemon=True)]
        for t in self._threads:
            t.start()

    @staticmethod
    def _socket() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.2)
        return s

    def port(self, sock: socket.socket) -> int:
        return sock.getsockname()[1]

    def _pump(self, sock: socket.socket, direction: str) -> None:
        while not self._stop.is_set():
            try:
                data, _ = sock.recvfrom(65536)
            except (socket.timeout, OSError):
                continue
            msg = OscMessage(data)
            mapper = self.to_daemon if direction == "out" else self.to_device
            params = list(msg.params)
            mapped = [mapper(p) if isinstance(p, str) else p for p in params]
            if mapped != params:
                builder = OscMessageBuilder(address=msg.address)
                for p in mapped:
                    builder.add_arg(p)
                data = builder.build().dgram
            with self._lock:
                self.log.append((direction, msg.address, params))
                self._lock.notify_all()
            target = self.daemon_port if direction == "out" else self.device_port
            if target:
                sock.sendto(data, ("127.0.0.1", target))

    def sent(self, address: str) -> list[list[Any]]:
        """What the device sent with this address (before any mapping)."""
        with self._lock:  # re-entrant use from wait_sent: Condition's default lock is an RLock
            return [p for d, a, p in self.log if d == "out" and a == address]

    def wait_sent(self, address: str, count: int, timeout: float = 30.0) -> list[list[Any]]:
        """Until the device has sent `count` messages with this address through the relay."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self.sent(address)) >= count, timeout):
                raise AssertionError(f"the device sent {len(self.sent(address))} {address}, not {count}: {self.log[-10:]}")
            return self.sent(address)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        self.inbound.close()
        self.reply.close()


class SimDevice(NodeLines):
    """The simulation under Node, one JSON request/answer per line."""

    def __init__(self, node: str, relay: Relay, **options: Any) -> None:
        self.relay = relay
        self.receive_port = free_port()
        relay.device_port = self.receive_port
        super().__init__(node, DRIVER, "the simulation")
        params = {"Send port": relay.port(relay.inbound), "Receive port": self.receive_port}
        self.ask("create", options={"parameters": params, **options})
        self.ask("start")

    def ask(self, cmd: str, **request: Any) -> dict[str, Any]:
        return super().ask(cmd=cmd, **request)

    def wait(self, until: str, timeout_ms: int = JOB_TIMEOUT_MS) -> None:
        try:
            self.ask("wait", until=until, timeoutMs=timeout_ms)
        except RuntimeError as e:
            raise AssertionError(f"{e}\nstate: {json.dumps(self.state(), default=str)[-3000:]}") from None

    def state(self) -> dict[str, Any]:
        return self.ask("state")["state"]

    def click(self, name: str, value: Any = None) -> None:
        self.ask("click", name=name, value=value)

    def connect(self) -> None:
        """Until the daemon answered the ping and told its folders (the device asks on connecting)."""
        self.wait("sim.led === 1 && sim.received.some((m) => m.address === '/stage/info')", 30_000)

    def close(self) -> None:
        try:
            self.ask("close")
        finally:
            super().close()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One daemon for every scenario (starting one costs a torch import): its home is a macOS-style home
    with spaces, found by the device from where the device file lives."""
    node = require_tool("node")
    root = tmp_path_factory.mktemp("m4l-sim")
    home = root / "Users" / "alice" / "Library" / "Application Support" / "stage-bridge"
    relay = Relay()
    daemon = Daemon(home=home, reply_port=relay.port(relay.reply))
    try:
        daemon.start()
        relay.daemon_port = daemon.osc_port
        yield {"node": node, "root": root, "home": home, "relay": relay, "daemon": daemon,
               "device_path": f"{BOOT}:{root}/Users/alice/Music/Ableton/User Library/Presets/Audio Effects/"
                              "Max Audio Effect/STAGE Bridge.amxd"}
    finally:
        code = daemon.stop()
        relay.close()
    assert code == 0, daemon.log_text()


@pytest.fixture
def device(rig: dict[str, Any]) -> Iterator[Callable[..., SimDevice]]:
    made: list[SimDevice] = []

    def make(**options: Any) -> SimDevice:
        options.setdefault("os", "macintosh")
        options.setdefault("devicePath", rig["device_path"])
        d = SimDevice(rig["node"], rig["relay"], **options)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()
    rig["relay"].to_daemon = rig["relay"].to_device = lambda s: s


def generated(rig: dict[str, Any]) -> list[list[Any]]:
    return rig["relay"].sent("/stage/generate")


def take_names(state: dict[str, Any]) -> list[str]:
    """The file names of the last finished job's takes, from its /stage/job/done (the takes menu
    shows "take K - grid 0.94" for each; the paths come before the first "take" mark)."""
    done = [m for m in state["received"] if m["address"] == "/stage/job/done"][-1]
    values = [a["value"] for a in done["args"][1:]]
    paths = values[:values.index("take")] if "take" in values else values
    assert [f"take {k}" for k in range(1, len(paths) + 1)] == [r.split(" - grid ")[0] for r in state["results"]]
    return [PureWindowsPath(p).name for p in paths]  # either form: the Windows scenario relays Windows paths


def click_job(d: SimDevice) -> dict[str, Any]:
    d.click("Context", 1)
    d.click("Generate")
    d.wait("sim.results.length === 1 && sim.progress === 100")
    return d.state()


def test_click_job(rig: dict[str, Any], device: Callable[..., SimDevice]) -> None:
    d = device()
    d.connect()
    before = len(generated(rig))
    state = click_job(d)
    job = generated(rig)[before:]
    assert len(job) == 1 and job[0][1] == "-" and job[0][2] == "drums", job
    take = rig["home"] / "outbox" / take_names(state)[0]
    assert take.is_file(), state["results"]
    assert sf.info(str(take)).duration > 0
    assert state["errors"] == [], state["posts"]
    assert state["status"].startswith("Done"), state["status"]


def test_mix_click_job_with_the_transport_playing(rig: dict[str, Any], device: Callable[..., SimDevice]) -> None:
    d = device()
    d.connect()
    d.click("Bars", 0)                        # 1 bar
    d.ask("locate", beats=13.25)
    d.ask("play")
    before = len(generated(rig))
    d.click("Generate")
    assert d.state()["status"] == "Recording 1 bars starts at bar 5...", d.state()["status"]
    d.ask("advance", ms=1374)                 # 2.75 beats to the bar line at 120 bpm = 1375 ms
    assert d.state()["recorded"] == [] and "starts at bar 5" in d.state()["status"]
    d.ask("advance", ms=1)
    assert d.state()["status"].startswith("Recording 1 bars from bar 5"), d.state()["status"]
    d.ask("advance", ms=2250 + 300)           # 1 bar + the 250 ms tail, then the 300 ms settle
    rig["relay"].wait_sent("/stage/generate", before + 1)
    state = d.state()
    [rec] = state["recorded"]
    bounce = Path(rec["file"])
    assert bounce.parent == rig["home"] / "bounces"            # the daemon's bounces/ folder
    assert sf.info(str(bounce)).frames == round(2.25 * 44100)
    assert generated(rig)[before][1] == str(bounce)
    d.wait("sim.results.length === 1 && sim.progress === 100")
    state = d.state()
    assert (rig["home"] / "outbox" / take_names(state)[0]).is_file()
    assert state["errors"] == [], state["posts"]


@pytest.mark.parametrize("splits_spaces", [False, True], ids=["one-symbol", "split-at-spaces"])
def test_insert_on_a_mac_home_with_spaces(rig: dict[str, Any], device: Callable[..., SimDevice],
                                          splits_spaces: bool) -> None:
    assert " " in str(rig["home"])
    d = device(splitsSpaces=splits_spaces)
    d.connect()
    d.ask("locate", beats=5.0)
    state = click_job(d)
    d.click("ui_tracks", 1)                   # "4 Stem"
    d.click("Insert clip")
    state = d.state()
    clips = state["tracksOfSet"][3]["arrangement_clips"]
    assert len(clips) == 1, (state["status"], state["posts"])
    take = rig["home"] / "outbox" / take_names(state)[0]
    assert clips[0]["file_path"] == f"/Volumes/{BOOT}{take}"
    assert clips[0]["start_time"] == 8 and clips[0]["warping"] == 0
    assert state["status"].startswith("Inserted "), state["status"]
    d.click("Insert into", 1)                 # Session view
    d.click("Insert clip")
    state = d.state()
    assert state["tracksOfSet"][3]["clip_slots"][1]["has_clip"] == 1, state["status"]
    assert "Session view, scene 2" in state["status"]


def test_windows_paths(rig: dict[str, Any], device: Callable[..., SimDevice], tmp_path: Path) -> None:
    """max.os 'windows': Max paths C:/..., native C:\\...; drive C: is a folder here whose
    Users/Bob/AppData/Local/stage-bridge is the daemon's home, and the relay maps the two forms."""
    drive = tmp_path / "C"
    (drive / "Users" / "Bob" / "AppData" / "Local").mkdir(parents=True)
    (drive / "Users" / "Bob" / "AppData" / "Local" / "stage-bridge").symlink_to(rig["home"], target_is_directory=True)
    home = str(rig["home"])
    relay = rig["relay"]
    relay.to_daemon = lambda s: home + s[len(WIN_HOME):].replace("\\", "/") if s.startswith(WIN_HOME) else s
    relay.to_device = lambda s: WIN_HOME + s[len(home):].replace("/", "\\") if s.startswith(home) else s
    d = device(os="windows", drives={"C": str(drive)},
               devicePath="C:/Users/Bob/Documents/Ableton/User Library/STAGE Bridge.amxd")
    d.connect()
    d.ask("play")
    before = len(generated(rig))
    d.click("Bars", 0)
    d.click("Generate")
    d.ask("advance", ms=10_000)
    context = rig["relay"].wait_sent("/stage/generate", before + 1)[before][1]
    assert context.startswith(WIN_HOME + "\\bounces\\live-") and context.endswith(".wav"), context
    d.wait("sim.results.length === 1 && sim.progress === 100")
    d.click("Insert clip")
    state = d.state()
    clips = state["tracksOfSet"][0]["arrangement_clips"]
    assert len(clips) == 1, (state["status"], state["posts"])
    assert clips[0]["file_path"] == (WIN_HOME + "\\outbox\\" + take_names(state)[0]).replace("\\", "/")
    assert state["errors"] == [], state["posts"]


@pytest.mark.parametrize("empty_text", ["text", "nothing"], ids=["bare-text", "no-output"])
def test_empty_prompt_and_home_fields(rig: dict[str, Any], device: Callable[..., SimDevice], empty_text: str) -> None:
    d = device(emptyText=empty_text)
    d.connect()
    d.ask("play")
    before = len(generated(rig))
    d.click("Bars", 0)
    d.click("Generate")                       # bangs both (empty) text fields first
    d.ask("advance", ms=10_000)
    d.wait("sim.results.length === 1 && sim.progress === 100")
    [job] = generated(rig)[before:]
    assert "prompt" not in job, job
    assert Path(job[1]).parent == rig["home"] / "bounces", job
    assert d.state()["errors"] == []


def test_audition_of_a_real_take(rig: dict[str, Any], device: Callable[..., SimDevice]) -> None:
    """The daemon's take (its real length) plays from the bar where its recording started, at the dial's
    level, ends on its own, and waits for Live to come back to that bar."""
    d = device()
    d.connect()
    d.click("Bars", 0)
    d.ask("locate", beats=13.25)
    d.ask("play")
    d.click("Generate")
    d.ask("advance", ms=1375 + 2250 + 300)
    d.wait("sim.results.length === 1 && sim.progress === 100")
    d.ask("stop")
    d.ask("locate", beats=12.0)
    d.click("Audition level", -12)
    d.click("Audition")
    state = d.state()
    assert state["status"].startswith("Audition armed: "), state["status"]
    take = rig["home"] / "outbox" / take_names(state)[0]
    seconds = sf.info(str(take)).duration
    assert abs(seconds - 2.0) < 0.01              # one bar at 120 bpm
    d.ask("play")
    d.ask("advance", ms=2000 + 2)                 # to bar 5 (the device arms a tick after it: about 1 ms)
    assert d.state()["status"].startswith("Auditioning "), d.state()["status"]
    d.ask("advance", ms=round(seconds * 1000))
    state = d.state()
    assert state["status"].startswith("Audition armed: "), state["status"]   # played to its end
    assert state["errors"] == [], state["posts"]
