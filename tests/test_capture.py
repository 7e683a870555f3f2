"""Capture mode without real peers: the capture buffer fed by a stand-in stream, and a whole
in-process server taking captures through its job service (tiny-random model), with a
synthetic clock and song whose bar lines are known. (Real JACK, PortAudio and jack_midi_clock:
test_capture_jack.py.)"""

from __future__ import annotations

import json
import socket
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from pythonosc.osc_message import OscMessage

from stage_bridge.audio.timing import bars_to_samples
from stage_bridge.bridge import protocol as P
from stage_bridge.bridge.capture import Capture, CaptureUnavailable, AudioDevice
from stage_bridge.bridge.config import load_config, parse_trigger_notes
from stage_bridge.bridge.midiclock import TICKS_PER_QUARTER, ClockTracker, MidiClockInput
from stage_bridge.errors import BadArgument

SR, PERIOD, BPM = 48000, 256, 120.0
BAR = int(SR * 60 / BPM * 4)
DEVICE = AudioDevice(3, "Loopback Audio", "Core Audio", 2, SR, (44100, SR))


class FakeStream:
    """sounddevice.InputStream's part Capture uses; the test calls `callback` itself. Per
    python-sounddevice's API docs (Streams, sounddevice 0.5): InputStream(samplerate, blocksize,
    device, channels, dtype, ..., callback), the callback called as callback(indata, frames, time,
    status), and start()/stop()/close() on the stream."""

    def __init__(self, device, channels, samplerate, dtype, callback):
        assert (device, channels, samplerate, dtype) == (DEVICE.index, 2, SR, "float32")
        self.callback = callback
        self.running = False

    def start(self):
        self.running = True

    def stop(self):
        self.running = False

    def close(self):
        pass


class Status:
    """sounddevice.CallbackFlags as the callback's `status`: the boolean attributes
    input_overflow and input_underflow (python-sounddevice API docs, CallbackFlags)."""

    def __init__(self, **flags):
        self.__dict__.update(flags)

    def __bool__(self):
        return any(self.__dict__.values())


class Timeline:
    """A synthetic song and its clock: cycle N of PERIOD frames is processed at
    T0 + PERIOD * (N + 1) / SR; its ticks are stamped then and its audio arrives then."""

    T0 = 500.0

    def __init__(self, seconds: float, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.song = rng.standard_normal((int(seconds * SR), 2)).astype(np.float32) * 0.1
        self.now = self.T0
        self.capture: Capture | None = None
        self.tracker = ClockTracker()

    def clock(self) -> float:
        return self.now

    def play(self, capture: Capture, drop_cycles: range = range(0)) -> None:
        """Feed the whole song: ticks to the tracker, buffers to the capture (cycles in
        `drop_cycles` never arrive; the next buffer reports an overflow)."""
        frames_per_tick = SR * 60 / BPM / TICKS_PER_QUARTER
        self.tracker.on_start(self.T0)
        tick, dropped = 0, False
        for n in range(len(self.song) // PERIOD):
            self.now = self.T0 + PERIOD * (n + 1) / SR
            while tick * frames_per_tick < PERIOD * (n + 1):
                self.tracker.on_tick(self.now + 1e-5)
                tick += 1
            if n in drop_cycles:
                dropped = True
                continue
            capture._callback(self.song[n * PERIOD:(n + 1) * PERIOD], PERIOD, None,
                              Status(input_overflow=dropped))
            dropped = False


def fake_capture(timeline: Timeline, seconds: float = 60.0) -> Capture:
    return Capture(DEVICE, seconds, clock=timeline.clock, stream_factory=FakeStream)


# -- the buffer ----------------------------------------------------------------------------------

def test_the_ring_keeps_the_newest_samples_and_refuses_the_rest():
    capture = Capture(DEVICE, 1.0, clock=lambda: 0.0, stream_factory=FakeStream)
    data = np.arange(3 * SR, dtype=np.float32).reshape(-1, 1).repeat(2, axis=1)
    for i in range(0, len(data), 1000):
        capture._callback(data[i:i + 1000], len(data[i:i + 1000]), None, Status())
    assert capture.total == 3 * SR
    got, dropouts = capture.read(2 * SR + 10, 500)
    assert got.shape == (2, 500) and got[0, 0] == 2 * SR + 10 and got[1, -1] == 2 * SR + 509 and not dropouts
    with pytest.raises(CaptureUnavailable, match="last 1 s"):
        capture.read(SR, 10)                              # overwritten
    with pytest.raises(CaptureUnavailable):
        capture.read(3 * SR - 5, 10)                      # not captured yet
    assert not capture.wait_for(3 * SR + 1, 0.01)
    times, samples, segments = capture.arrivals()
    assert len(times) == 144 and samples[0] == 500 and set(segments) == {0}


def test_a_dropout_starts_a_segment_and_is_reported_inside_a_window():
    capture = Capture(DEVICE, 10.0, clock=lambda: 0.0, stream_factory=FakeStream)
    block = np.zeros((PERIOD, 2), np.float32)
    for n in range(10):
        capture._callback(block, PERIOD, None, Status(input_overflow=(n == 6)))
    _, _, segments = capture.arrivals()
    assert list(segments) == [0] * 6 + [1] * 4
    assert [(d.sample, d.kind) for d in capture.dropouts] == [(6 * PERIOD, "input overflow")]
    assert capture.counts == {"input_overflow": 1, "input_underflow": 0}
    assert len(capture.read(5 * PERIOD, 2 * PERIOD)[1]) == 1
    assert capture.read(0, 6 * PERIOD)[1] == []         # ends where the dropout is: not inside


class FakeSoundDevice:
    """The part of sounddevice `list_devices` reads: two host APIs, a mic, a loopback, speakers.
    Per python-sounddevice's API docs (Checking Hardware): query_devices() gives one dict per device
    with 'name', 'hostapi', 'max_input_channels', 'max_output_channels', 'default_samplerate';
    query_hostapis() one dict per host API with 'name'; check_input_settings(device, channels,
    samplerate=...) does nothing when the settings are supported and raises when not."""

    DEVICES = [{"name": "MacBook Microphone", "hostapi": 0, "max_input_channels": 1, "max_output_channels": 0,
                "default_samplerate": 48000.0},
               {"name": "BlackHole 2ch", "hostapi": 0, "max_input_channels": 2, "max_output_channels": 2,
                "default_samplerate": 44100.0},
               {"name": "BlackHole 2ch", "hostapi": 1, "max_input_channels": 2, "max_output_channels": 2,
                "default_samplerate": 48000.0},
               {"name": "Speakers", "hostapi": 0, "max_input_channels": 0, "max_output_channels": 2,
                "default_samplerate": 48000.0}]

    @staticmethod
    def query_hostapis():
        return [{"name": "Core Audio"}, {"name": "JACK Audio Connection Kit"}]

    def query_devices(self):
        return self.DEVICES

    @staticmethod
    def check_input_settings(device, channels, samplerate):
        if samplerate > 48000:
            raise ValueError("Invalid sample rate")

    check_output_settings = check_input_settings


def test_devices_are_found_by_number_name_and_host_api(monkeypatch):
    from stage_bridge.bridge import capture as C

    monkeypatch.setattr(C, "portaudio", FakeSoundDevice)
    inputs = C.list_devices("input")
    assert [(d.index, d.name, d.host_api, d.channels, d.rates) for d in inputs] == [
        (0, "MacBook Microphone", "Core Audio", 1, (44100, 48000)), (1, "BlackHole 2ch", "Core Audio", 2, (44100, 48000)),
        (2, "BlackHole 2ch", "JACK Audio Connection Kit", 2, (44100, 48000))]
    assert C.find_device("blackhole").index == 1
    assert C.find_device("BlackHole@jack").index == 2
    assert C.find_device("2").default_rate == 48000
    assert C.find_device("speak", "output").index == 3
    with pytest.raises(CaptureUnavailable, match=r"no audio input matches 'Speakers'.*1: BlackHole 2ch \(Core Audio\)"
                                                 r".*--capture-device"):
        C.find_device("Speakers")
    with pytest.raises(CaptureUnavailable, match="--play-device"):
        C.find_device("9", "output")


def test_portaudio_that_cannot_list_devices_is_unavailable_not_a_crash(monkeypatch):
    """sounddevice raises PortAudioError from query_devices()/query_hostapis() when PortAudio is
    not initialised or its host API fails (python-sounddevice API docs: "PortAudioError: ... raised
    by PortAudio functions"): `doctor` and capture then say so instead of a traceback."""
    from stage_bridge.bridge import capture as C

    class Broken(FakeSoundDevice):
        @staticmethod
        def query_hostapis():
            raise RuntimeError("PortAudio not initialized [PaErrorCode -10000]")

    monkeypatch.setattr(C, "portaudio", Broken)
    with pytest.raises(CaptureUnavailable, match="PortAudio cannot list the audio devices.*PaErrorCode -10000"):
        C.list_devices("input")


def test_an_input_that_cannot_open_says_which():
    def broken(**kwargs):
        raise RuntimeError("device busy")

    with pytest.raises(CaptureUnavailable, match="Loopback Audio.*device busy"):
        Capture(DEVICE, 1.0, stream_factory=broken)


# -- the MIDI side -------------------------------------------------------------------------------

def test_midi_input_hands_notes_and_controllers_to_the_listener_only():
    got = []
    fake = types.SimpleNamespace(tracker=ClockTracker(), listener=lambda m, t: got.append((m, t)))
    for message in ([0x90, 36, 100], [0x91, 38, 0], [0x80, 36, 0], [0xB0, 20, 8], [0xF8], [0xFA]):
        MidiClockInput._dispatch(fake, message, 1.5)
    assert got == [([0x90, 36, 100], 1.5), ([0xB0, 20, 8], 1.5)]   # velocity 0 is a note-off
    assert fake.tracker.playing


# -- the protocol and settings -------------------------------------------------------------------

def test_parse_capture():
    req = P.parse_capture(["Drums", 4.0, "job_id", "c-1", "takes", 2, "beats_per_bar", 3])
    assert (req.instrument, req.bars, req.job_id, req.takes, req.beats_per_bar) == ("drums", 4, "c-1", 2, 3)
    for args, code in ((["drums"], "bad_request"), (["drums", 0], "bad_bars"), (["drums", 2, "bpm", 120.0], "bad_option"),
                       (["drums", 2, "offset", 1.0], "bad_option"), (["drums", 2, "job_id", "a b"], "bad_job_id"),
                       (["drums", 2, "takes"], "bad_option"), (["flute", 2], "bad_instrument")):
        with pytest.raises(P.ProtocolError) as e:
            P.parse_capture(args)
        assert e.value.code == code, args


def test_capture_settings(tmp_path):
    cfg = load_config({"capture_device": "BlackHole 2ch", "home": tmp_path},
                      env={"STAGE_BRIDGE_CAPTURE_BARS": "8", "STAGE_BRIDGE_TRIGGERS": "drums=48,bass=50"},
                      config_file=tmp_path / "none.toml")
    assert (cfg.capture_device, cfg.capture_bars, parse_trigger_notes(cfg.triggers)) == (
        "BlackHole 2ch", 8, {48: "drums", 50: "bass"})
    for env in ({"STAGE_BRIDGE_CAPTURE_BARS": "0"}, {"STAGE_BRIDGE_TRIGGERS": "drums=C1"},
                {"STAGE_BRIDGE_METER": "4-4"}, {"STAGE_BRIDGE_BARS_CC": "128"}):
        with pytest.raises(BadArgument):
            load_config({"home": tmp_path}, env=env, config_file=tmp_path / "none.toml")


# -- a whole server ------------------------------------------------------------------------------

class Replies:
    """The daemon's reply port: every OSC message it sends, parsed."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.messages: list[tuple] = []
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except OSError:
                continue
            m = OscMessage(data)
            with self._cond:
                self.messages.append((m.address, *m.params))
                self._cond.notify_all()

    def wait(self, address: str, first=None, timeout: float = 120.0) -> tuple:
        def found():
            return next((m for m in self.messages if m[0] == address and (first is None or m[1] == first)), None)

        with self._cond:
            assert self._cond.wait_for(found, timeout), (address, first, self.messages)
            return found()

    def close(self):
        self._stop = True
        self._thread.join()
        self.sock.close()


@pytest.fixture(scope="module")
def tiny():
    from stage_bridge.engine.model import load_model

    return load_model("tiny-random", "cpu")


class PlaybackStub:
    """What CaptureJobs asks of jam playback."""

    def __init__(self):
        self.played: list[tuple] = []
        self.called = threading.Event()

    def play(self, samples, sample_rate, loop_ticks):
        self.played.append((samples.shape, sample_rate, loop_ticks))
        self.called.set()


@pytest.fixture
def rig(tmp_path, tiny):
    from stage_bridge.bridge.server import Server

    replies = Replies()
    playback = PlaybackStub()
    cfg = load_config({"home": tmp_path / "home", "reply_port": replies.port, "osc_port": 0},
                      env={}, config_file=tmp_path / "none.toml")
    timeline = Timeline(seconds=14.1)   # seven bar lines passed
    capture = fake_capture(timeline)
    server = Server(cfg, {"drums": tiny, "bass": tiny}, "cpu", capture=capture, ticks=timeline.tracker,
                    playback=playback)
    server.start()
    try:
        yield types.SimpleNamespace(server=server, timeline=timeline, capture=capture, replies=replies, cfg=cfg,
                                    playback=playback)
    finally:
        server.stop()
        replies.close()


def send(rig, address, *args):
    rig.server.handle_datagram(P.message(address, *args))


def test_osc_capture_runs_a_job_over_the_last_bars(rig):
    rig.timeline.play(rig.capture)
    send(rig, P.CAPTURE, "drums", 2, "job_id", "cap-1", "seed", 7)
    taken = rig.replies.wait(P.CAPTURE_TAKEN, "cap-1")
    _, _, bar, bars, start, bpm, dropouts, error_ms = taken
    # 14.1 s: 7 bars played: the last two whole ones are bars 6 and 7 (DAW numbering)
    assert (bar, bars, dropouts) == (6, 2, 0)
    assert abs(start - 5 * BAR) <= 16 and bpm == pytest.approx(BPM, abs=0.01) and error_ms < 1.0
    done = rig.replies.wait(P.DONE, "cap-1")
    cap_done = rig.replies.wait(P.CAPTURE_DONE, "cap-1")
    assert cap_done[2:5] == (bar, start, 0) and cap_done[5:] == done[2:]
    side = json.loads(Path(done[2]).with_suffix(".json").read_text())
    assert side["source"] == "capture" and side["bars"] == 2 and side["seed"] == 7
    info = dict(side["capture"])
    assert info.pop("mapping_error_ms") == pytest.approx(error_ms, abs=1e-3)
    assert info == {"bar": 6, "bars": 2, "start_sample": start, "length": bars_to_samples(2, side["bpm"], SR),
                    "sample_rate": SR, "dropouts": 0, "dropout_samples": []}
    context, rate = sf.read(side["context_path"], dtype="float32", always_2d=True)
    assert Path(side["context_path"]) == rig.cfg.bounces / "cap-1.wav"
    assert rate == SR and len(context) == side["capture"]["length"]
    np.testing.assert_array_equal(context, rig.timeline.song[start:start + len(context)])
    job = rig.server.service.journal.history()[-1]
    assert job.spec.capture == side["capture"]               # journaled: a restart resumes it as it was
    # jam playback got the take (after the replies), to loop every 2 bars (2 * 96 ticks)
    assert rig.playback.called.wait(30)
    [(shape, rate, loop_ticks)] = rig.playback.played
    assert shape[1] == 2 * BAR and rate == SR and loop_ticks == 192


def test_a_dropout_inside_the_window_is_in_the_reply_and_sidecar(rig):
    rig.timeline.play(rig.capture, drop_cycles=range(2000, 2003))     # ~10.7 s: inside bars 6-7
    send(rig, P.CAPTURE, "bass", 2, "job_id", "cap-drop")
    taken = rig.replies.wait(P.CAPTURE_TAKEN, "cap-drop")
    assert taken[6] == 1
    rig.replies.wait(P.DONE, "cap-drop")
    cap_done = rig.replies.wait(P.CAPTURE_DONE, "cap-drop")
    assert cap_done[4] == 1
    side = json.loads(Path(cap_done[5]).with_suffix(".json").read_text())
    assert side["capture"]["dropouts"] == 1 and 0 < side["capture"]["dropout_samples"][0] < side["capture"]["length"]


def test_a_midi_note_triggers_the_configured_bars(rig):
    captures = rig.server.captures
    captures.bars_cc = 20
    rig.timeline.play(rig.capture)
    captures.on_midi([0xB0, 20, 3], 0.0)                      # the bars controller: 3 bars
    captures.on_midi([0x90, 38, 100], 0.0)                    # D1: bass
    taken = rig.replies.wait(P.CAPTURE_TAKEN)
    assert taken[2:4] == (5, 3)
    done = rig.replies.wait(P.DONE, taken[1])
    side = json.loads(Path(done[2]).with_suffix(".json").read_text())
    assert side["instrument"] == "bass" and side["bars"] == 3


def test_refusals(rig):
    send(rig, P.CAPTURE, "drums", 2, "job_id", "early")       # nothing played yet
    assert rig.replies.wait(P.ERROR, "early")[2] == "no_tempo"
    rig.timeline.play(rig.capture)
    send(rig, P.CAPTURE, "drums", 9, "job_id", "long")         # only 7 bars played
    error = rig.replies.wait(P.ERROR, "long")
    assert error[2] == "bad_bars" and "7 whole bar" in error[3]
    rig.server.captures.on_midi([0x90, 36, 100], 0.0)         # 4 bars: fine; the same id twice is not
    rig.replies.wait(P.CAPTURE_TAKEN)
    send(rig, P.CAPTURE, "drums", 1, "job_id", "twice")
    rig.replies.wait(P.CAPTURE_TAKEN, "twice")
    send(rig, P.CAPTURE, "drums", 1, "job_id", "twice")
    assert rig.replies.wait(P.ERROR, "twice")[2] == "duplicate_job"
    assert sorted(p.name for p in rig.cfg.bounces.iterdir()) == sorted(
        [m[1] + ".wav" for m in rig.replies.messages if m[0] == P.CAPTURE_TAKEN])  # refused: no file left


def test_a_daemon_without_capture_refuses_it(tmp_path, tiny):
    from stage_bridge.bridge.server import Server

    replies = Replies()
    cfg = load_config({"home": tmp_path / "home", "reply_port": replies.port, "osc_port": 0}, env={},
                      config_file=tmp_path / "none.toml")
    server = Server(cfg, {"drums": tiny}, "cpu")
    try:
        server.handle_datagram(P.message(P.CAPTURE, "drums", 2))
        error = replies.wait(P.ERROR)
        assert error[2] == "bad_request" and "--capture-device" in error[3]
    finally:
        server.stop()
        replies.close()


# -- jam playback --------------------------------------------------------------------------------

class FakeOutStream(FakeStream):
    def __init__(self, device, channels, samplerate, dtype, callback):
        self.callback = callback


class Transport:
    """A clock at 120 bpm from T0, ticks up to `until` seconds."""

    T0 = 100.0
    SPT = 60 / BPM / TICKS_PER_QUARTER

    def __init__(self, until: float):
        n = int(until / self.SPT)
        self.positions = np.arange(n, dtype=float)
        self.times = self.T0 + self.positions * self.SPT
        self.playing = True

    def run_ticks(self):
        return self.times, self.positions


def test_playback_starts_at_the_next_multiple_of_its_length_and_loops(tmp_path):
    from stage_bridge.bridge.playback import Playback

    transport = Transport(until=1.3)
    now = [transport.T0 + 1.3]
    playback = Playback(DEVICE, transport, clock=lambda: now[0], stream_factory=FakeOutStream, refit_s=None)
    take = np.tile(np.arange(BAR, dtype=np.float32) / BAR, (2, 1))       # one bar: a ramp, value = index / BAR
    playback.play(take, SR, loop_ticks=96)
    playback.refit()
    out = np.zeros((PERIOD, 2), np.float32)
    info = types.SimpleNamespace(outputBufferDacTime=0.0, currentTime=0.0)

    def buffer(at: float) -> np.ndarray:
        """The buffer whose first sample plays at `at` (its callback stands for its middle)."""
        now[0] = transport.T0 + at + PERIOD / 2 / SR
        playback._callback(out, PERIOD, info, None)
        return np.rint(out[:, 0] * BAR).astype(int)

    assert not buffer(1.3).any()                                         # bar 1: silence until bar 2
    first = buffer(2.0 - 48 / SR)                                        # bar 2 begins 48 samples in
    assert not first[:48].any() and list(first[48:51]) == [0, 1, 2]
    assert buffer(2.0 + 208 / SR + 0.001)[0] == 208                      # 1 ms of jitter: plays on
    assert buffer(2.5)[0] == 24000                                       # far off: jumps to the clock
    assert buffer(4.0 + 10 / SR)[0] == 10                                # bar 3: the loop again
    transport.playing = False
    playback.refit()
    assert not buffer(4.1).any()                                         # stopped: the loop is over
    playback.close()


def test_playback_is_silent_without_a_clock():
    from stage_bridge.bridge.playback import Playback

    transport = Transport(until=0.05)                                    # too few ticks to fit
    playback = Playback(DEVICE, transport, clock=lambda: transport.T0 + 0.05, stream_factory=FakeOutStream,
                        refit_s=None)
    playback.play(np.ones((1, 1000), np.float32), SR, loop_ticks=96)
    playback.refit()
    out = np.ones((PERIOD, 2), np.float32)
    playback._callback(out, PERIOD, types.SimpleNamespace(outputBufferDacTime=0.0, currentTime=0.0), None)
    assert not out.any()
    playback.close()
