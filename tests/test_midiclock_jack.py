"""MIDI clock against real peers: jackd (dummy backend) + jack_midi_clock -> MidiClockInput.

The criterion is the tracker's estimate after 2 s of ticks: within 0.1 BPM. Ticks are
time-stamped on arrival and recorded; xruns are tolerated by judging the first 2 s of ticks
that jackd reported no xrun for (after an xrun the dummy driver re-anchors its cycle clock and
every later tick shifts by a fraction of a cycle, a phase jump no estimator can tell from
jitter within 2 s; the dummy driver does that every few seconds even on an idle machine).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

import numpy as np
import pytest

import jackutil
from conftest import require_tool
from stage_bridge.bridge.midiclock import ClockTracker, MidiClockInput, list_input_ports

pytestmark = pytest.mark.slow  # a real jackd and jack-midi-clock

WINDOW_S = 2.0
XRUN_MARGIN_S = 0.1
DEADLINE_S = 10.0          # wall time allowed per tempo to find 2 s of ticks without an xrun


class RecordingTracker(ClockTracker):
    def __init__(self) -> None:
        super().__init__()
        self.ticks: list[float] = []
        self.events: list[tuple[str, float]] = []

    def on_tick(self, t: float) -> None:
        self.ticks.append(t)
        super().on_tick(t)

    def on_start(self, t: float) -> None:
        self.events.append(("start", t))
        super().on_start(t)

    def on_stop(self, t: float) -> None:
        self.events.append(("stop", t))
        super().on_stop(t)

    def on_continue(self, t: float) -> None:
        self.events.append(("continue", t))
        super().on_continue(t)


@pytest.fixture(scope="module")
def jack():
    for tool in ("jackd", "jack_midi_clock", "jack_lsp", "jack_connect", "jack_transport"):
        require_tool(tool)
    with jackutil.jack_server() as server:
        roll(server)
        yield server
    name = str(server)
    assert all(n != name for _, n in jackutil.registry_servers()), "jackd left its registry slot"
    assert not [p for p in os.listdir(jackutil.SHM) if name in p], "jackd left files in /dev/shm"


@contextlib.contextmanager
def midi_clock(server: str, bpm: float):
    """Run jack_midi_clock at `bpm`; yield its output port; afterwards wait until it is gone
    (the next test's clock must not meet a dying one under the same name)."""
    with jackutil.client_process(["jack_midi_clock", "-b", str(bpm), "-B"], server) as proc:
        port = jackutil.wait_for_port(server, "jack_midi_clock")
        try:
            yield port
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(5)
            deadline = time.monotonic() + 5
            while jackutil.ports(server, "jack_midi_clock") and time.monotonic() < deadline:
                time.sleep(0.05)


def roll(server: str, *commands: str) -> None:
    res = jackutil.jack_cmd(server, "jack_transport", input="\n".join((*commands, "play", "quit")) + "\n")
    assert res.returncode == 0, res.stderr


def clean_window(ticks: list[float], xruns: list[float], start_after: float) -> np.ndarray | None:
    """The first 2 s of ticks after `start_after` with no xrun in or near them."""
    ticks_a = np.asarray(ticks)
    xr = np.asarray(xruns)
    for i in np.flatnonzero(ticks_a >= start_after):
        t0 = ticks_a[i]
        if ticks_a[-1] - t0 < WINDOW_S:
            return None
        window = ticks_a[i:][ticks_a[i:] - t0 <= WINDOW_S]
        if not np.any((xr > t0 - XRUN_MARGIN_S) & (xr < window[-1] + XRUN_MARGIN_S)):
            return window
    return None


@pytest.mark.parametrize(("bpm", "port"), [(90.0, None), (128.0, "JACK_MIDI_CLOCK"), (174.0, None)])
def test_tempo_from_jack_midi_clock(jack, bpm, port):
    with midi_clock(jack, bpm) as source:
        tracker = RecordingTracker()
        # a named port (case-insensitive part of the name) is connected by rtmidi itself;
        # the virtual port is connected from outside, as a user would in a patchbay
        with MidiClockInput(port, api="jack", tracker=tracker) as clock_in:
            if port is None:
                target = jackutil.wait_for_port(jack, "STAGE Bridge:")
                res = jackutil.jack_cmd(jack, "jack_connect", source, target)
                assert res.returncode == 0, res.stderr
            else:
                assert clock_in.port_name == source
            connected = time.monotonic()
            window = None
            while window is None and time.monotonic() - connected < DEADLINE_S:
                time.sleep(0.1)
                window = clean_window(tracker.ticks, jack.xruns, connected)
            live = clock_in.snapshot()
    assert tracker.ticks, f"no clock ticks arrived\n{jack.log()}"
    assert window is not None, (f"no 2 s of ticks without an xrun within {DEADLINE_S} s "
                                f"({len(jack.xruns)} xruns, {len(tracker.ticks)} ticks)")
    replay = ClockTracker()
    for t in window:
        replay.on_tick(float(t))
    assert replay.bpm == pytest.approx(bpm, abs=0.1), (len(window), len(jack.xruns))
    # the live tracker saw the same ticks (and maybe xruns): it must at least be close and alive
    assert live.alive and live.bpm == pytest.approx(bpm, abs=1.0)


def test_transport_messages_reach_the_tracker(jack):
    with midi_clock(jack, 120):
        tracker = RecordingTracker()
        with MidiClockInput("jack_midi_clock", api="jack", tracker=tracker):
            assert jackutil.wait_until(lambda: len(tracker.ticks) >= 5), "no clock ticks"
            res = jackutil.jack_cmd(jack, "jack_transport", input="stop\nquit\n")
            assert res.returncode == 0, res.stderr
            assert jackutil.wait_until(lambda: ("stop", ) <= tuple(e for e, _ in tracker.events[:1])), tracker.events
            assert not tracker.playing
            roll(jack, "locate 0")                         # rolling again (Continue or Start)
            assert jackutil.wait_until(lambda: tracker.playing), tracker.events
            assert jackutil.wait_until(lambda: tracker.song_position_beats >= 0.5)
    assert tracker.events[-1][0] in ("start", "continue"), tracker.events
    assert tracker.song_position_beats < 3.0


def test_list_input_ports_sees_the_clock(jack):
    with midi_clock(jack, 100) as source:
        assert source in list_input_ports("jack")


def test_clean_stale_frees_the_slot_of_a_killed_server():
    require_tool("jackd")
    name = f"{jackutil.PREFIX}{os.getpid()}-killed"
    server = jackutil._start(name, 48000, 256)
    try:
        assert jackutil._wait_ready(server, 10.0), server.log()
        assert name in [n for _, n in jackutil.registry_servers()]
    finally:
        server.process.send_signal(signal.SIGKILL)        # an unclean exit leaks the slot
        server.process.wait()
    assert name in [n for _, n in jackutil.registry_servers()]
    removed = jackutil.clean_stale()
    assert any(name in r for r in removed)
    assert name not in [n for _, n in jackutil.registry_servers()]
    assert not [p for p in os.listdir(jackutil.SHM) if name in p]
