"""MIDI clock: the tempo estimator on synthetic clocks, transport/position logic, the rtmidi adapter."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from stage_bridge.bridge import midiclock
from stage_bridge.bridge.midiclock import ClockSnapshot, ClockTracker, MidiClockInput, MidiUnavailable
from stage_bridge.errors import StageError

TEMPOS = (90.0, 128.0, 174.0)
SEEDS = range(20)
T0 = 1000.0


def clock(bpm: float, seconds: float, rng: np.random.Generator, *, jitter: float = 0.001,
          late_prob: float = 0.03, t0: float = T0) -> np.ndarray:
    """Tick arrival times of a steady clock: Gaussian jitter, occasional 5-20 ms late ticks.

    Delivery keeps the order (a late tick holds up the ones behind it), like a MIDI stream.
    """
    period = 60.0 / (24 * bpm)
    n = int(seconds / period) + 1
    t = t0 + np.arange(n) * period + rng.normal(0.0, jitter, n)
    late = rng.random(n) < late_prob
    t[late] += rng.uniform(0.005, 0.020, late.sum())
    return np.maximum.accumulate(t)


def feed(tracker: ClockTracker, times) -> ClockTracker:
    for t in times:
        tracker.on_tick(float(t))
    return tracker


def first_seconds(times: np.ndarray, seconds: float = 2.0) -> np.ndarray:
    return times[times - times[0] <= seconds]


# ------------------------------------------------------------------------- steady tempo
@pytest.mark.parametrize("bpm", TEMPOS)
def test_within_a_tenth_of_a_bpm_after_two_seconds_of_jittered_ticks(bpm):
    errors = []
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        times = first_seconds(clock(bpm, 3.0, rng))
        errors.append(feed(ClockTracker(), times).bpm - bpm)
    assert max(map(abs, errors)) < 0.1, errors


@pytest.mark.parametrize("bpm", TEMPOS)
def test_many_late_ticks_are_rejected(bpm):
    for seed in SEEDS:
        rng = np.random.default_rng(100 + seed)
        times = first_seconds(clock(bpm, 3.0, rng, late_prob=0.10))
        tracker = feed(ClockTracker(), times)
        assert tracker.bpm == pytest.approx(bpm, abs=0.1), seed


def test_plain_least_squares_would_fail_the_late_ticks():
    # the reason for the robust fit: the same data through a plain fit misses by far more
    worst = 0.0
    for seed in SEEDS:
        times = first_seconds(clock(174.0, 3.0, np.random.default_rng(100 + seed), late_prob=0.10))
        slope = np.polyfit(np.arange(len(times)), times, 1)[0]
        worst = max(worst, abs(60 / (24 * slope) - 174.0))
    assert worst > 0.2


def test_exact_clock_is_exact():
    times = T0 + np.arange(50) * 60.0 / (24 * 120.0)
    assert feed(ClockTracker(), times).bpm == pytest.approx(120.0, abs=1e-6)


# ------------------------------------------------------------------------- xruns, dropouts
def _xrun_cases(times: np.ndarray, period: float):
    n = len(times)
    lost_run = np.delete(times, np.arange(n // 2, n // 2 + 10))        # 10 ticks lost (gap > 4x)
    lost_single = np.delete(times, [n // 4, n // 2, 3 * n // 4])         # single ticks lost
    held = times.copy()                                                 # stalls: 6 ticks held up,
    for i in (n // 3, 2 * n // 3):                                      # then delivered at once
        held[i:i + 6] = held[i + 6]
    short_stalls = times.copy()
    for i in range(10, n - 10, 17):
        short_stalls[i:i + 3] = short_stalls[i + 3]
    return {"lost_run": lost_run, "lost_single": lost_single, "held": held,
            "short_stalls": short_stalls}


@pytest.mark.parametrize("bpm", TEMPOS)
def test_dropouts_and_stalls_do_not_disturb_the_estimate(bpm):
    for seed in range(10):
        rng = np.random.default_rng(200 + seed)
        times = first_seconds(clock(bpm, 3.0, rng))
        for name, case in _xrun_cases(times, 60 / (24 * bpm)).items():
            tracker = feed(ClockTracker(), np.maximum.accumulate(case))
            assert tracker.bpm == pytest.approx(bpm, abs=0.1), (name, seed)


def test_a_long_pause_restarts_the_window_but_keeps_the_last_tempo():
    tracker = feed(ClockTracker(), T0 + np.arange(100) * 60 / (24 * 120))
    assert tracker.bpm == pytest.approx(120.0)
    resume = T0 + 10.0 + np.arange(5) * 60 / (24 * 100)                # 10 s later, at 100 BPM
    feed(tracker, resume)
    assert tracker.bpm == pytest.approx(120.0)                         # too few ticks: held
    feed(tracker, T0 + 10.0 + np.arange(5, 40) * 60 / (24 * 100))
    assert tracker.bpm == pytest.approx(100.0, abs=1e-6)               # old ticks not mixed in


def test_out_of_order_timestamps_are_clamped():
    times = T0 + np.arange(60) * 60 / (24 * 120)
    times[30] = times[29] - 0.001                                      # arrived "before" the last
    assert feed(ClockTracker(), times).bpm == pytest.approx(120.0, abs=0.05)


# ------------------------------------------------------------------------- tempo changes
@pytest.mark.parametrize(("before", "after"), [(120.0, 140.0), (140.0, 120.0), (90.0, 174.0)])
def test_tempo_change_is_followed_within_a_second(before, after):
    for seed in range(10):
        rng = np.random.default_rng(300 + seed)
        first = clock(before, 3.0, rng)
        second = clock(after, 3.0, rng, t0=first[-1] + 60 / (24 * after))
        tracker = feed(ClockTracker(), first)
        assert tracker.bpm == pytest.approx(before, abs=0.1)
        change = second[0]
        feed(tracker, second[second < change + 1.0])
        assert tracker.bpm == pytest.approx(after, abs=0.5), seed     # within a second
        feed(tracker, second[second >= change + 1.0])
        assert tracker.bpm == pytest.approx(after, abs=0.1), seed     # settled


def test_small_tempo_change_is_followed_within_a_window():
    rng = np.random.default_rng(7)
    first = clock(120.0, 3.0, rng)
    second = clock(121.0, 4.0, rng, t0=first[-1] + 60 / (24 * 121))
    tracker = feed(ClockTracker(), first)
    feed(tracker, second)
    assert tracker.bpm == pytest.approx(121.0, abs=0.1)


# ------------------------------------------------------------------------- reporting
def test_nothing_is_reported_before_enough_ticks():
    tracker = ClockTracker()
    period = 60 / (24 * 120)
    assert tracker.bpm is None
    for i in range(midiclock.MIN_TICKS - 1):
        tracker.on_tick(T0 + i * period)
        assert tracker.bpm is None
    tracker.on_tick(T0 + (midiclock.MIN_TICKS - 1) * period)
    assert tracker.bpm == pytest.approx(120.0)


def test_alive_times_out():
    tracker = ClockTracker()
    assert not tracker.snapshot(T0).alive
    assert tracker.last_tick_time is None
    tracker.on_tick(T0)
    assert tracker.last_tick_time == T0
    assert tracker.snapshot(T0 + 0.3).alive
    assert not tracker.snapshot(T0 + 0.6).alive
    assert tracker.snapshot(T0 + 0.6, timeout=1.0).alive
    feed(tracker, T0 + np.arange(1, 30) * 60 / (24 * 120))
    snap = tracker.snapshot(T0 + 60.0)
    assert snap.bpm == pytest.approx(120.0) and not snap.alive   # a dead clock keeps its tempo


def test_snapshot_is_immutable():
    tracker = feed(ClockTracker(), T0 + np.arange(30) * 60 / (24 * 100))
    snap = tracker.snapshot(T0 + 0.7)
    assert isinstance(snap, ClockSnapshot)
    assert snap.alive and not snap.playing and snap.position == 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.bpm = 1.0  # type: ignore[misc]


# ------------------------------------------------------------------------- transport
def test_start_stop_continue_and_position():
    tracker = ClockTracker()
    period = 60 / (24 * 120)
    t = T0
    assert not tracker.playing
    feed(tracker, t + np.arange(10) * period)                 # clock while stopped: no position
    assert tracker.song_position_beats == 0.0
    t += 10 * period
    tracker.on_start(t)
    assert tracker.playing and tracker.song_position_beats == 0.0
    feed(tracker, t + np.arange(49) * period)                 # first tick plays at 0, then 48 more
    assert tracker.song_position_beats == pytest.approx(2.0)
    t += 49 * period
    tracker.on_stop(t)
    assert not tracker.playing
    feed(tracker, t + np.arange(5) * period)                  # stopped: position stays
    assert tracker.song_position_beats == pytest.approx(2.0)
    t += 5 * period
    tracker.on_continue(t)
    feed(tracker, [t, t + period])                            # continue: the next tick advances
    assert tracker.song_position_beats == pytest.approx(2.0 + 2 / 24)


def test_song_position_pointer():
    tracker = ClockTracker()
    period = 60 / (24 * 120)
    tracker.on_song_position(16, T0)                          # 16 sixteenths = 4 quarters
    assert tracker.song_position_beats == pytest.approx(4.0)
    assert not tracker.playing
    tracker.on_continue(T0 + 0.1)
    feed(tracker, T0 + 0.1 + np.arange(7) * period)           # the first tick plays at 4.0
    assert tracker.song_position_beats == pytest.approx(4.0 + 6 / 24)
    tracker.on_song_position(0, T0 + 1)
    tracker.on_start(T0 + 1)
    tracker.on_tick(T0 + 1)
    assert tracker.song_position_beats == 0.0


@pytest.mark.parametrize("event", ["start", "stop", "continue", "song_position"])
def test_transport_messages_restart_the_window(event):
    tracker = feed(ClockTracker(), T0 + np.arange(100) * 60 / (24 * 120))
    t = T0 + 100 * 60 / (24 * 120)
    if event == "song_position":
        tracker.on_song_position(8, t)
    else:
        getattr(tracker, f"on_{event}")(t)
    assert tracker.bpm == pytest.approx(120.0)                 # held until the new window is ready
    new = t + np.arange(1, 13) * 60 / (24 * 90)                # the DAW changed tempo meanwhile
    feed(tracker, new[:-1])
    assert tracker.bpm == pytest.approx(120.0)
    feed(tracker, new[-1:])
    assert tracker.bpm == pytest.approx(90.0, abs=1e-6)        # nothing of the old window left


def test_reset_forgets_everything():
    tracker = feed(ClockTracker(), T0 + np.arange(30) * 60 / (24 * 120))
    tracker.on_start(T0 + 1)
    tracker.reset()
    assert tracker.bpm is None and not tracker.playing and tracker.last_tick_time is None


# ------------------------------------------------------------------------- the pure fit
def grid(n: int, bpm: float = 120.0, t0: float = T0) -> np.ndarray:
    return t0 + np.arange(n) * 60 / (24 * bpm)


def one_segment(t: np.ndarray):
    return t, np.zeros(len(t), int), np.ones(len(t), bool)


def test_fit_needs_min_ticks_usable_ticks():
    t, seg, usable = one_segment(grid(midiclock.MIN_TICKS + 2))
    assert midiclock.fit_clock(t, seg, usable).bpm == pytest.approx(120.0)
    usable[:3] = False
    assert midiclock.fit_clock(t, seg, usable) is None


def test_fit_leaves_unusable_ticks_out_but_counts_them():
    t, seg, usable = one_segment(grid(40))
    t[[10, 11, 25]] += [0.5, -0.3, 0.2]                       # held up far off the grid
    usable[[10, 11, 25]] = False
    before = t.copy()
    assert midiclock.fit_clock(t, seg, usable).bpm == pytest.approx(120.0, abs=1e-6)
    assert np.array_equal(t, before)                         # pure: the inputs stay as they were


def test_fit_merges_a_segment_after_lost_ticks():
    full = grid(60) + np.random.default_rng(1).normal(0.0, 0.001, 60)
    lost = np.delete(full, range(30, 40))                    # ten ticks lost in the gap
    fit = midiclock.fit_clock(lost, np.repeat([0, 1], [30, 20]), np.ones(50, bool))
    # merged: the very fit of one segment with the right tick index (separate intercepts, which
    # a segment that could not be merged keeps, differ by ~1e-6 s per tick here)
    usable = np.ones(60, bool)
    usable[30:40] = False
    known = midiclock.fit_clock(full, np.zeros(60, int), usable)
    assert fit.seconds_per_tick == pytest.approx(known.seconds_per_tick, rel=1e-9, abs=0)
    # the same ticks as one segment would have a wrong tick index: far off
    assert abs(midiclock.fit_clock(lost, np.zeros(50, int), np.ones(50, bool)).bpm - 120.0) > 5


def test_fit_reports_a_tempo_change_from_the_first_tick_at_the_new_tempo():
    old = grid(60)
    new = old[-1] + np.arange(1, 8) * 60 / (24 * 140)
    fit = midiclock.fit_clock(*one_segment(np.concatenate([old, new])))
    assert fit.change == "tempo" and fit.since == new[0]
    assert fit.bpm == pytest.approx(120.0, abs=1.0)          # the caller refits from `since`


def test_fit_reports_a_phase_jump():
    t = grid(60)
    t[-7:] += 0.010                                          # the clock jumped half a tick
    fit = midiclock.fit_clock(*one_segment(t))
    assert fit.change == "phase" and fit.since == t[-7]
    seg = np.repeat([0, 1], [53, 7])                         # the caller's refit: a new segment
    again = midiclock.fit_clock(t, seg, np.ones(60, bool), prior=fit.seconds_per_tick)
    assert again.bpm == pytest.approx(120.0, abs=1e-6) and again.change is None


def test_tick_ring_keeps_the_newest_ticks_oldest_first():
    ring = midiclock.TickRing(4)
    for i in range(6):
        ring.append(float(i), new_segment=(i == 3), usable=(i != 4))
    t, seg, usable = ring.arrays()
    assert t.tolist() == [2.0, 3.0, 4.0, 5.0]
    assert seg.tolist() == [0, 1, 1, 1] and usable.tolist() == [True, True, False, True]
    ring.drop_before(4.0)
    assert ring.arrays()[0].tolist() == [4.0, 5.0]
    ring.append(6.0)
    assert ring.arrays()[0].tolist() == [4.0, 5.0, 6.0]
    ring.clear()
    assert ring.arrays()[0].size == 0


# ------------------------------------------------------------------------- rtmidi adapter
class FakeMidiIn:
    instances: list["FakeMidiIn"] = []

    def __init__(self, api, name=None, *, ports=("Midi Through:0", "DAW Clock Out", "daw clock 2")):
        self.api, self.name, self.ports = api, name, list(ports)
        self.ignored = None
        self.queue: list[tuple[list[int], float]] = []
        self.opened = None
        self.deleted = False
        FakeMidiIn.instances.append(self)

    def ignore_types(self, sysex=True, timing=True, active_sense=True):
        self.ignored = dict(sysex=sysex, timing=timing, active_sense=active_sense)

    def get_message(self):
        return self.queue.pop(0) if self.queue else None

    def get_ports(self):
        return self.ports

    def open_port(self, index, name=None):
        self.opened = ("port", index, name)

    def open_virtual_port(self, name=None):
        self.opened = ("virtual", name)

    def close_port(self):
        self.opened = None

    def delete(self):
        self.deleted = True


def fake_rtmidi(failing=(), compiled=(2, 3)):
    """A stand-in for the rtmidi module: API 2 = ALSA, 3 = JACK, as in python-rtmidi."""

    def midi_in(api, name=None):
        if api in failing:
            raise RuntimeError(f"{api} not available")
        return FakeMidiIn(api, name)

    return types.SimpleNamespace(
        API_UNSPECIFIED=0, API_MACOSX_CORE=1, API_LINUX_ALSA=2, API_UNIX_JACK=3,
        API_WINDOWS_MM=4, API_RTMIDI_DUMMY=5, get_compiled_api=lambda: list(compiled),
        get_api_name=lambda a: {1: "core", 2: "alsa", 3: "jack", 4: "winmm"}.get(a, "dummy"),
        MidiIn=midi_in)


@pytest.fixture
def fake(monkeypatch):
    FakeMidiIn.instances.clear()

    def install(**kw):
        monkeypatch.setattr(midiclock, "_rtmidi", lambda: fake_rtmidi(**kw))

    install()
    return install


def test_virtual_port_and_every_message_let_through(fake):
    clock_in = MidiClockInput(None, api="alsa", poll_interval=None)
    midi_in = FakeMidiIn.instances[-1]
    assert midi_in.api == 2 and clock_in.api == "alsa"
    assert midi_in.opened == ("virtual", "STAGE Bridge") and clock_in.port_name == "STAGE Bridge"
    # clock enabled, and nothing dropped inside rtmidi (its delta times chain every message)
    assert midi_in.ignored == dict(sysex=False, timing=False, active_sense=False)
    clock_in.close()
    clock_in.close()                                           # idempotent
    assert midi_in.deleted and midi_in.opened is None
    assert clock_in.poll() == 0


def test_port_name_matches_case_insensitively(fake):
    with MidiClockInput("DAW CLOCK", api="jack") as clock_in:
        assert FakeMidiIn.instances[-1].opened[:2] == ("port", 1)
        assert clock_in.port_name == "DAW Clock Out"


def test_unknown_port_lists_what_exists(fake):
    with pytest.raises(MidiUnavailable, match="DAW Clock Out") as err:
        MidiClockInput("nope", api="alsa")
    assert err.value.code == "midi_unavailable" and isinstance(err.value, StageError)
    assert FakeMidiIn.instances[-1].deleted


def test_auto_falls_back_to_the_next_api(fake):
    fake(failing=(2,))                                         # no ALSA sequencer (as here)
    with MidiClockInput(None) as clock_in:
        assert clock_in.api == "jack"


def test_auto_with_nothing_available(fake):
    fake(failing=(2, 3))
    with pytest.raises(MidiUnavailable, match="alsa.*jack"):
        MidiClockInput(None)


def test_api_not_compiled_in(fake):
    fake(compiled=(2,))
    with pytest.raises(MidiUnavailable, match="without jack"):
        MidiClockInput(None, api="jack")
    with pytest.raises(MidiUnavailable, match="unknown MIDI API"):
        MidiClockInput(None, api="oss")


def test_no_virtual_port_on_windows(fake):
    fake(compiled=(4,))
    with pytest.raises(MidiUnavailable, match="--midi-in"):
        MidiClockInput(None, api="winmm")
    with pytest.raises(MidiUnavailable, match="--midi-in"):
        MidiClockInput(None, api="auto")
    with MidiClockInput("daw", api="winmm") as clock_in:      # a named port is fine
        assert clock_in.api == "winmm"


def test_messages_are_decoded_and_stamped_with_rtmidi_delta_times(fake):
    now = [T0]
    clock_in = MidiClockInput(None, api="alsa", poll_interval=None, clock=lambda: now[0])
    queue = FakeMidiIn.instances[-1].queue
    period = 60 / (24 * 128)
    queue += [([0xF2, 0x10, 0x00], 0.0), ([0xFE], 0.1), ([0xFB], 0.1)]   # SPP 16, sensing, continue
    queue += [([0xF8], period if i else 0.0) for i in range(40)]
    queue += [([0x90, 60, 100], 0.0), ([], 0.0)]                       # a note, garbage: ignored
    now[0] = T0 + 5.0                                                  # read late, all at once
    assert clock_in.poll() == 45
    tracker = clock_in.tracker
    assert tracker.bpm == pytest.approx(128.0)                         # from the delta times
    assert tracker.last_tick_time == pytest.approx(T0 + 5.0)           # the newest is "now"
    snap = clock_in.snapshot()
    assert snap.playing and snap.alive
    assert snap.position == pytest.approx(4.0 + 39 / 24)
    assert not clock_in.snapshot(T0 + 60.0).alive                      # the server passes `now`
    queue.append(([0xFC], 0.01))
    now[0] += 0.02
    clock_in.poll()
    assert not tracker.playing
    queue.append(([0xFA], 0.01))
    clock_in.poll()
    assert tracker.playing and tracker.song_position_beats == 0.0
    clock_in.close()


def test_delta_chain_is_anchored_to_the_read_time(fake):
    now = [T0]
    clock_in = MidiClockInput(None, api="alsa", poll_interval=None, clock=lambda: now[0])
    queue = FakeMidiIn.instances[-1].queue
    queue.append(([0xF8], 0.0))
    now[0] = T0 + 0.002                          # the first message was read 2 ms late
    clock_in.poll()
    assert clock_in.tracker.last_tick_time == T0 + 0.002
    queue.append(([0xF8], 0.02))
    now[0] = T0 + 0.030                          # read 8 ms late: keeps the chain's T0 + 0.022
    clock_in.poll()
    assert clock_in.tracker.last_tick_time == pytest.approx(T0 + 0.022)
    queue.append(([0xF8], 0.02))
    now[0] = T0 + 0.040                          # chain says 0.042: later than now -> now
    clock_in.poll()
    assert clock_in.tracker.last_tick_time == pytest.approx(T0 + 0.040)
    queue.append(([0xF8], 0.02))
    now[0] = T0 + 3.0                            # lagging by seconds (rtmidi dropped messages)
    clock_in.poll()
    assert clock_in.tracker.last_tick_time == pytest.approx(T0 + 3.0)    # re-anchored
    clock_in.close()


def test_background_thread_polls(fake):
    with MidiClockInput(None, api="alsa", poll_interval=0.001) as clock_in:
        FakeMidiIn.instances[-1].queue += [([0xF8], 0.0 if i == 0 else 0.02) for i in range(20)]
        deadline = time.monotonic() + 5
        while clock_in.tracker.bpm is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert clock_in.tracker.bpm == pytest.approx(125.0)


def test_list_input_ports(fake):
    assert midiclock.list_input_ports("alsa") == ["Midi Through:0", "DAW Clock Out", "daw clock 2"]
    assert FakeMidiIn.instances[-1].deleted


def test_every_midi_api_choice_opens_that_api(fake):
    fake(compiled=(1, 2, 3, 4))
    for api in midiclock.MIDI_APIS:
        with MidiClockInput("daw", api=api, poll_interval=None) as clock_in:
            assert clock_in.api == ("coremidi" if api == "auto" else api)   # auto: rtmidi's first


def test_importing_the_module_does_not_import_rtmidi():
    # the daemon imports config (and MIDI_APIS) without MIDI; python-rtmidi is optional
    code = "import sys, stage_bridge.bridge.midiclock; assert 'rtmidi' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_real_rtmidi_reports_a_missing_jack_server(monkeypatch):
    rtmidi = pytest.importorskip("rtmidi")
    if rtmidi.API_UNIX_JACK not in rtmidi.get_compiled_api():
        pytest.skip("python-rtmidi without JACK")
    monkeypatch.setenv("JACK_DEFAULT_SERVER", "stagebridge-no-such-server")
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")
    with pytest.raises(MidiUnavailable, match="JACK") as err:
        MidiClockInput(None, api="jack")
    assert "OSC" in str(err.value)
