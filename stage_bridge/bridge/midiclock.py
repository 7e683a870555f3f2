"""Project tempo from MIDI beat clock (24 ticks per quarter note), read with python-rtmidi.

Bottom up: `fit_clock` is a pure function (tick arrival times in, seconds per tick out) that
holds all the statistics; `ClockTracker` is fed time-stamped clock events, keeps the newest
ticks in a `TickRing` and answers tempo, transport state and song position (no I/O, no
threads); `MidiClockInput` feeds a tracker from python-rtmidi, and hands note and controller
messages (capture triggers) to a listener.

The tracker also keeps every tick of the current transport run with its song position
(`run_ticks`): capture mode (capturejob.py) fits the bar lines to them (barclock.py).

Why the fit looks the way it does. Ticks arrive with jitter (a JACK client sees them once per
process cycle, 5.3 ms at 256 frames / 48 kHz; scheduling adds more), a stall on a busy CPU
delivers a run of ticks late and bunched, and a sender that skips a cycle loses ticks. So we
fit the line `time = intercept + seconds_per_tick * tick_index` by least squares over WINDOW
ticks (its slope error falls as N**-1.5: 144 ticks stay within 0.1 BPM with 1 ms jitter, where
72 miss one time in five), and handle disturbances inside the fit rather than by restarting
it, which would throw the precision away:

* late ticks: points over REJECT_SIGMAS robust sigmas (MAD) off the line are left out and the
  line refitted (a plain fit misses by 0.2-0.4 BPM with 10 % late ticks);
* bunches (a tick within BUNCH_BELOW of a period after the previous one: both were held up)
  keep their tick index but stay out of the fit;
* gaps over SPLIT_AFTER periods may have lost ticks: the ticks after one start a *segment* with
  its own intercept (all share the slope); a segment a whole number of ticks off is re-indexed
  and merged back. A gap over RESTART_AFTER periods is a pause: the window restarts;
* a run of CHANGE_RUN newest ticks all off the line on one side is a tempo change (the window
  restarts with the run, so 120 -> 140 BPM is followed within a second) or a phase jump (lost
  ticks without a long gap, a driver re-anchoring after an xrun: the run gets a segment).

Limit: a phase jump under about 4 jitter sigmas cannot be told from jitter quickly and biases
the estimate by up to 1.5 * jump / window duration while it is in the window (the JACK dummy
driver re-anchors every few seconds: 3 ms at 174 BPM is worth ~0.5 BPM for 2 s).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import StageError

TICKS_PER_QUARTER = 24
MIDI_APIS = ("auto", "alsa", "jack", "coremidi", "winmm")   # the --midi-api choices

WINDOW = 144            # ticks in the fit (six beats; see the module docstring)
MIN_TICKS = 12          # usable ticks before a tempo is reported
REJECT_SIGMAS = 3.5     # farther off the line than this many robust sigmas: an outlier
MIN_SIGMA_S = 0.0005 / REJECT_SIGMAS   # an exact clock must not reject its own rounding noise
SPLIT_AFTER = 4.0       # a gap of this many periods may have lost ticks: new segment
RESTART_AFTER = 24.0    # a gap of this many periods is a pause: restart the window
BUNCH_BELOW = 0.25      # an interval shorter than this many periods: both ticks were held up
MERGE_WITHIN = 0.25     # a segment this close to a whole number of ticks off is re-indexed
CHANGE_RUN = 5          # this many newest ticks off the line on one side: tempo or phase change
RUN_CAPACITY = 1 << 16  # ticks of one transport run kept with their song positions (11 min at 120 bpm)

# MIDI system real-time / common status bytes used by beat clock.
_CLOCK, _START, _CONTINUE, _STOP, _SONG_POSITION = 0xF8, 0xFA, 0xFB, 0xFC, 0xF2
_NOTE_ON, _CONTROL_CHANGE = 0x90, 0xB0   # channel messages passed to the listener (high nibble)

# listener(message bytes, arrival time): note-on (velocity > 0) and control change messages
ChannelListener = Callable[[list[int], float], None]


class MidiUnavailable(StageError):
    """No MIDI input could be opened (no MIDI system, no such port, API not built in)."""

    code = "midi_unavailable"


# ------------------------------------------------------------------------------------ the fit
@dataclass(frozen=True)
class Fit:
    """What `fit_clock` found: the slope, and whether the newest ticks left the line."""

    seconds_per_tick: float
    change: str | None = None   # the newest ticks left the line: "tempo" or "phase"
    since: float = math.inf     # arrival time of the first of them

    @property
    def bpm(self) -> float:
        return 60.0 / (TICKS_PER_QUARTER * self.seconds_per_tick)


def fit_clock(t: np.ndarray, segment: np.ndarray, usable: np.ndarray,
              prior: float | None = None) -> Fit | None:
    """Seconds per tick of the ticks received at times `t`; None while too few are usable.

    One entry per received tick, oldest first, so an entry's position is its tick index within
    its `segment` (ids never decrease; a new id where ticks may have been lost). Entries not
    `usable` (held-up ticks) count for the index only. `prior`, the previous fit's slope, seeds
    the robust fit: a start from scratch breaks down when a quarter of a short window sits on
    a shifted grid after lost ticks. `change` reports a run of newest ticks that left the line;
    the caller then restarts the window at `since` ("tempo") or gives the ticks from `since` a
    segment of their own ("phase"), and fits again.
    """
    usable = np.asarray(usable, bool)
    k = np.flatnonzero(usable).astype(float)
    if len(k) < MIN_TICKS:
        return None
    t_abs = np.asarray(t, float)[usable]
    k -= k[0]
    t = t_abs - t_abs[0]
    seg = np.unique(np.asarray(segment)[usable], return_inverse=True)[1]
    slope = prior if prior is not None else _median_slope(k, t, seg)
    if slope is None or not slope > 0:
        return None
    for attempt in range(3):
        line = _robust_line(k, t, seg, slope)
        if line is None:
            return None
        slope, intercept, keep, sigma = line
        merged = _merge_segments(k, t, seg, slope, intercept, keep) if attempt < 2 else None
        if merged is None:
            break
        k, seg = merged
    if keep.sum() < MIN_TICKS:
        return None
    change, run = _newest_run(k, t, seg, t - intercept[seg] - slope * k, slope, sigma)
    return Fit(slope, change, float(t_abs[-run])) if change else Fit(slope)


def _robust_line(k: np.ndarray, t: np.ndarray, seg: np.ndarray, slope: float):
    """(slope, intercepts, kept points, sigma): one slope shared by all segments, an intercept
    each, fitted by least squares to the points within REJECT_SIGMAS robust sigmas of the line
    (three rounds from `slope`); None if the points do not make a rising line."""
    nseg = int(seg.max()) + 1
    intercept = _medians(t - slope * k, seg, nseg)
    for _ in range(3):
        r = t - intercept[seg] - slope * k
        # MAD over all residuals: robust up to half outliers (over the kept points only it
        # would shrink every round)
        sigma = max(1.4826 * float(np.median(np.abs(r - np.median(r)))), MIN_SIGMA_S)
        keep = np.abs(r) <= REJECT_SIGMAS * sigma
        w = keep.astype(float)
        n = np.bincount(seg, w, nseg)
        mk = np.bincount(seg, w * k, nseg) / np.maximum(n, 1)
        mt = np.bincount(seg, w * t, nseg) / np.maximum(n, 1)
        kc, tc = k - mk[seg], t - mt[seg]
        sxx = float(w @ (kc * kc))
        slope = float(w @ (kc * tc)) / sxx if sxx > 0 else 0.0
        if not slope > 0:
            return None
        # a segment the fit rejected entirely keeps a robust intercept
        intercept = np.where(n > 0, mt - slope * mk, _medians(t - slope * k, seg, nseg))
    return slope, intercept, keep, sigma


def _merge_segments(k, t, seg, slope, intercept, keep):
    """(k, seg) with the segments that sit a whole number of ticks (lost ticks; 0 for a mere
    delay) off the best-supported one re-indexed into it, or None if none does.

    Offsets are measured point by point and summarised by their median, so a late first tick
    cannot spoil a short segment's offset.
    """
    if seg.max() == 0:
        return None
    ref = int(np.argmax(np.bincount(seg, keep)))
    k, seg = k.copy(), seg.copy()
    merged = False
    for j in set(range(int(seg.max()) + 1)) - {ref}:
        sel = seg == j
        offset = float(np.median(t[sel] - intercept[ref] - slope * k[sel])) / slope
        if abs(offset - round(offset)) <= MERGE_WITHIN:
            k[sel] += round(offset)
            seg[sel] = ref
            merged = True
    return (k, np.unique(seg, return_inverse=True)[1]) if merged else None


def _newest_run(k, t, seg, r, slope, sigma) -> tuple[str | None, int]:
    """("tempo" | "phase" | None, run length): did the newest ticks all leave the line?

    A run of at least CHANGE_RUN newest ticks of the newest segment, all more than 2 sigma off
    the line on the same side. Isolated late ticks never form one. Its own slope, over its
    points near its own robust line (so a bunch of delayed ticks does not count), decides:
    more than 6 standard errors from the window's slope and drifting away is a tempo change,
    less than 3 a phase jump; in between nothing is decided yet (the run grows).
    """
    off = (np.abs(r) > 2 * sigma) & (np.sign(r) == np.sign(r[-1])) & (seg == seg[-1])
    run = len(off) if off.all() else int(np.argmin(off[::-1]))
    if not CHANGE_RUN <= run < len(off):
        return None, 0
    ks, ts = k[-run:], t[-run:]
    own = _median_slope(ks, ts, np.zeros(run, int))
    if own is None or not 0.5 * slope < own < 2.0 * slope:
        return None, 0
    near = np.abs(ts - float(np.median(ts - own * ks)) - own * ks) <= REJECT_SIGMAS * sigma
    if near.sum() < max(run * 3 // 4, 4):
        return None, 0
    kc, tn = ks[near] - ks[near].mean(), ts[near]
    sxx = float(kc @ kc)
    own = float(kc @ (tn - tn.mean())) / sxx
    se = sigma / math.sqrt(sxx)
    if abs(own - slope) > 6 * se and np.sign(own - slope) == np.sign(r[-1]):
        return "tempo", run
    if abs(own - slope) < 3 * se:
        return "phase", run
    return None, 0


def _median_slope(k: np.ndarray, t: np.ndarray, seg: np.ndarray) -> float | None:
    """Median slope between points half a segment apart: a start that ignores late ticks."""
    dk, dt = [], []
    for j in range(int(seg.max()) + 1):
        kj, tj = k[seg == j], t[seg == j]
        h = max(len(kj) // 2, 1)
        dk.append(kj[h:] - kj[:-h])
        dt.append(tj[h:] - tj[:-h])
    dk_all = np.concatenate(dk)
    return float(np.median(np.concatenate(dt) / dk_all)) if len(dk_all) else None


def _medians(x: np.ndarray, seg: np.ndarray, nseg: int) -> np.ndarray:
    return np.array([np.median(x[seg == j]) for j in range(nseg)])


# ------------------------------------------------------------------------------ the tracker
class TickRing:
    """The newest received ticks (arrival time, segment id, usable flag) in fixed numpy arrays.

    Written round-robin, so a tick costs no allocation and the oldest falls out by itself.
    Every received tick is stored, so its position is its tick index (which is why a held-up
    tick is flagged instead of left out).
    """

    def __init__(self, capacity: int) -> None:
        self.t = np.zeros(capacity)
        self.segment = np.zeros(capacity, np.int64)
        self.usable = np.zeros(capacity, bool)
        self.size = 0
        self._end = 0                      # the slot the next tick goes to

    def slots(self) -> np.ndarray:
        """Slot of each stored tick, oldest first."""
        return (self._end - self.size + np.arange(self.size)) % len(self.t)

    def append(self, t: float, new_segment: bool = False, usable: bool = True) -> None:
        last = int(self.segment[self._end - 1]) if self.size else 0
        self.t[self._end], self.segment[self._end], self.usable[self._end] = t, last + new_segment, usable
        self._end = (self._end + 1) % len(self.t)
        self.size = min(self.size + 1, len(self.t))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(t, segment, usable) copies, oldest first: the arguments of `fit_clock`."""
        s = self.slots()
        return self.t[s], self.segment[s], self.usable[s]

    def drop_before(self, t: float) -> None:
        self.size -= int(np.sum(self.t[self.slots()] < t))

    def clear(self) -> None:
        self.size = 0


@dataclass(frozen=True)
class ClockSnapshot:
    """The clock's state at one instant (immutable, safe to hand to another thread)."""

    bpm: float | None          # tempo estimate; None until enough ticks were seen
    playing: bool              # between Start/Continue and Stop
    position: float            # song position (quarter notes) of the most recent tick
    alive: bool                # ticks arrived recently (a silent clock is no tempo source)


class ClockTracker:
    """Tempo, transport state and song position from time-stamped MIDI clock events.

    Times are seconds on any monotonic clock (the same one for `now`). Every method takes a
    lock: one thread may feed events while others read. The tempo is refitted at every tick
    (well under a millisecond), so it never depends on when it is read. Start, Continue, Stop
    and Song Position Pointer restart the window (the tempo may have been changed meanwhile);
    after any restart the previous estimate is held until the new window has MIN_TICKS ticks.
    """

    def __init__(self, run_capacity: int = RUN_CAPACITY) -> None:
        self._lock = threading.RLock()
        self._ring = TickRing(WINDOW)
        self._fit: Fit | None = None       # the current window's fit (the next one's prior)
        self._bpm: float | None = None     # latest estimate, held across restarts
        self._last_tick: float | None = None
        self._playing = False
        self._position_ticks = 0           # song position of the latest tick, in ticks
        self._first_tick_pending = False   # the next tick plays at the position itself
        self._run_t = np.zeros(run_capacity)           # this transport run's ticks (round-robin)
        self._run_pos = np.zeros(run_capacity, np.int64)
        self._run_size = 0

    def on_tick(self, t: float) -> None:
        with self._lock:
            ring = self._ring
            if self._last_tick is not None:
                t = max(t, self._last_tick)        # MIDI never reorders; clamp clock noise
            intervals = np.diff(ring.arrays()[0][-TICKS_PER_QUARTER - 1:])   # the last beat's
            new_segment, usable = False, True
            if len(intervals) >= 3:
                period = float(np.median(intervals))
                dt = t - self._last_tick
                if dt > RESTART_AFTER * period:
                    self._restart_window()         # the clock was paused: its phase is unrelated
                elif dt > SPLIT_AFTER * period:
                    new_segment = True             # ticks may have been lost: new intercept
                elif dt < BUNCH_BELOW * period and np.mean(intervals < BUNCH_BELOW * period) < 1 / 3:
                    # delivered with the previous tick: both were held up (unless a third of
                    # all intervals are that short: then the input is merely coarse)
                    ring.usable[ring.slots()[-1]] = False
                    usable = False
            ring.append(t, new_segment, usable)
            self._last_tick = t
            if self._playing:
                if self._first_tick_pending:
                    self._first_tick_pending = False
                else:
                    self._position_ticks += 1
                slot = self._run_size % len(self._run_t)
                self._run_t[slot], self._run_pos[slot] = t, self._position_ticks
                self._run_size += 1
            self._refit()

    def on_start(self, t: float) -> None:
        with self._lock:                           # Start = Song Position 0 + Continue
            self.on_song_position(0, t)
            self.on_continue(t)

    def on_continue(self, t: float) -> None:
        with self._lock:
            self._restart_window()
            self._run_size = 0                     # a pause lies between the old ticks and the new
            self._playing = True

    def on_stop(self, t: float) -> None:
        with self._lock:
            self._restart_window()
            self._run_size = 0
            self._playing = False

    def on_song_position(self, beats16: int, t: float) -> None:
        """Song Position Pointer: `beats16` sixteenth notes ("MIDI beats") since song start."""
        with self._lock:
            self._restart_window()
            self._run_size = 0                     # the song position jumped
            self._position_ticks = int(beats16) * (TICKS_PER_QUARTER // 4)
            self._first_tick_pending = True

    def reset(self) -> None:
        """Forget everything (e.g. a different clock source)."""
        with self._lock:
            self._restart_window()
            self._bpm = self._last_tick = None
            self._playing = self._first_tick_pending = False
            self._position_ticks = self._run_size = 0

    @property
    def bpm(self) -> float | None:
        """Tempo in quarter notes per minute; None before the first estimate."""
        with self._lock:
            return self._bpm

    @property
    def playing(self) -> bool:
        with self._lock:
            return self._playing

    @property
    def song_position_beats(self) -> float:
        """Song position (quarter notes since song start) of the most recent tick.

        As the MIDI spec says, the first tick after Start (or after a Song Position Pointer)
        plays at the position itself; each further tick while playing advances 1/24 quarter.
        """
        with self._lock:
            return self._position_ticks / TICKS_PER_QUARTER

    def run_ticks(self) -> tuple[np.ndarray, np.ndarray]:
        """(arrival times, song positions in ticks) of the ticks since the transport last
        started, continued or jumped (the newest `run_capacity`, oldest first): the bar lines' data."""
        with self._lock:
            capacity = len(self._run_t)
            n = min(self._run_size, capacity)
            slots = (self._run_size - n + np.arange(n)) % capacity
            return self._run_t[slots], self._run_pos[slots]

    @property
    def last_tick_time(self) -> float | None:
        with self._lock:
            return self._last_tick

    def snapshot(self, now: float, timeout: float = 0.5) -> ClockSnapshot:
        """The state at `now`; `alive` when a tick arrived within `timeout` seconds before."""
        with self._lock:
            alive = self._last_tick is not None and now - self._last_tick <= timeout
            return ClockSnapshot(bpm=self._bpm, playing=self._playing, alive=alive,
                                 position=self._position_ticks / TICKS_PER_QUARTER)

    def _restart_window(self) -> None:
        self._ring.clear()
        self._fit = None

    def _refit(self) -> None:
        ring = self._ring
        fit = fit_clock(*ring.arrays(), prior=self._fit.seconds_per_tick if self._fit else None)
        # the refit after a change may report one again; its slope is what counts
        if fit is not None and fit.change == "tempo":
            ring.drop_before(fit.since)            # keep the ticks at the new tempo only
            fit = fit_clock(*ring.arrays())
        elif fit is not None and fit.change == "phase":
            slots = ring.slots()
            ring.segment[slots[ring.t[slots] >= fit.since]] += 1
            fit = fit_clock(*ring.arrays(), prior=fit.seconds_per_tick)
        self._fit = fit
        if fit is not None:
            self._bpm = fit.bpm


# ---------------------------------------------------------------------------------- rtmidi
_RTMIDI_APIS = {"alsa": "API_LINUX_ALSA", "jack": "API_UNIX_JACK", "coremidi": "API_MACOSX_CORE",
                "winmm": "API_WINDOWS_MM"}


def _rtmidi():
    """The rtmidi module, imported only when MIDI is used (it is an optional dependency)."""
    try:
        import rtmidi
    except ImportError as e:  # pragma: no cover - dependency missing
        raise MidiUnavailable("MIDI clock input needs python-rtmidi: pip install python-rtmidi "
                              f"(or take the tempo from OSC instead) ({e})") from None
    return rtmidi


def _open_midi_in(api: str, client_name: str):
    """(rtmidi.MidiIn, API name) on `api`; "auto" tries every compiled API in rtmidi's order."""
    if api not in MIDI_APIS:
        raise MidiUnavailable(f"unknown MIDI API {api!r}; choose one of {', '.join(MIDI_APIS)}")
    rtmidi = _rtmidi()
    names = {getattr(rtmidi, const): name for name, const in _RTMIDI_APIS.items()}

    def label(a: int) -> str:
        return names.get(a) or rtmidi.get_api_name(a)

    compiled = [a for a in rtmidi.get_compiled_api() if a != rtmidi.API_RTMIDI_DUMMY]
    if api == "auto":
        candidates = compiled
    elif getattr(rtmidi, _RTMIDI_APIS[api]) in compiled:
        candidates = [getattr(rtmidi, _RTMIDI_APIS[api])]
    else:
        raise MidiUnavailable(f"this python-rtmidi was built without {api} support (it has: "
                              f"{', '.join(map(label, compiled)) or 'none'}); choose another --midi-api")
    if not candidates:
        raise MidiUnavailable("python-rtmidi was built without any MIDI system; reinstall "
                              "python-rtmidi or take the tempo from OSC instead")
    failures = []
    for a in candidates:
        try:
            return rtmidi.MidiIn(a, name=client_name), label(a)
        except Exception as e:   # rtmidi.SystemError: no ALSA sequencer, JACK server not running
            failures.append(f"{label(a)}: {e}")
    hint = ("start the JACK server (or your MIDI system) first" if api in ("jack", "auto")
            else "check that the MIDI system is running")
    raise MidiUnavailable(f"no MIDI system could be opened ({'; '.join(failures)}); {hint}, "
                          "choose another --midi-api, or take the tempo from OSC instead")


def list_input_ports(api: str = "auto") -> list[str]:
    """Names of the MIDI input ports (sources) visible on `api` (for `stage-bridge doctor`)."""
    midi_in, _ = _open_midi_in(api, "STAGE Bridge doctor")
    try:
        return list(midi_in.get_ports())
    finally:
        midi_in.delete()


class MidiClockInput:
    """Feeds a `ClockTracker` from a MIDI input opened with python-rtmidi.

    `port_name`: connect to the first input port whose name contains it (case-insensitive);
    None opens a virtual input port named "STAGE Bridge" for the DAW to send clock to
    (CoreMIDI, ALSA and JACK; impossible on Windows). `listener` gets the note-on and control
    change messages (capture mode's triggers) with their arrival times, on the polling thread;
    it may be set later (`listener` attribute), once what it triggers exists.

    Threads and timestamps. rtmidi is *polled* from a thread of ours (every `poll_interval`
    seconds) instead of being given a Python callback: with JACK, rtmidi runs its callback in
    the JACK process thread, which must then take the GIL; that delays the whole JACK graph
    (jackd reported "client = STAGE Bridge was not finished" xruns) and, worse, when libjack
    cancelled that thread while it waited for the GIL the interpreter deadlocked (seen in
    testing). Polled messages are time-stamped with rtmidi's delta times, which rtmidi takes
    where the message arrives (the JACK process cycle, the ALSA sequencer event, CoreMIDI's
    host time): chained from the first message, anchored to `clock()` (never later than the
    moment we read it) so they share a clock with `snapshot(now)`. rtmidi's delta is measured
    from the previous message *it saw*, so nothing may be dropped inside rtmidi:
    `ignore_types(sysex=False, timing=False, active_sense=False)` lets every message through
    (clock included, which rtmidi ignores by default) and we drop the ones we do not need.
    """

    CLIENT_NAME = VIRTUAL_PORT = "STAGE Bridge"
    RESYNC_S = 1.0         # a drained queue whose newest stamp lags this much: re-anchor

    def __init__(self, port_name: str | None = None, api: str = "auto", *,
                 tracker: ClockTracker | None = None, poll_interval: float | None = 0.002,
                 clock: Callable[[], float] = time.monotonic, listener: ChannelListener | None = None) -> None:
        self.tracker = tracker if tracker is not None else ClockTracker()
        self.listener = listener
        self._clock = clock
        self._stamp: float | None = None          # time of the latest message (chained deltas)
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        midi_in, self.api = _open_midi_in(api, self.CLIENT_NAME)
        try:
            midi_in.ignore_types(sysex=False, timing=False, active_sense=False)
            self.port_name = self._open_port(midi_in, port_name)
        except BaseException:
            midi_in.delete()
            raise
        self._midi_in = midi_in
        if poll_interval is not None:
            self._thread = threading.Thread(target=self._run, args=(poll_interval,),
                                            name="stage-bridge-midi-clock", daemon=True)
            self._thread.start()

    def _open_port(self, midi_in, port_name: str | None) -> str:
        if port_name is None:
            if self.api == "winmm":
                raise MidiUnavailable("Windows MIDI cannot create a virtual port: pass --midi-in with "
                                      "the name of the port your DAW sends clock to (e.g. a loopMIDI port)")
            try:
                midi_in.open_virtual_port(self.VIRTUAL_PORT)
            except Exception as e:
                raise MidiUnavailable(f"cannot create the virtual MIDI port {self.VIRTUAL_PORT!r} "
                                      f"on {self.api} ({e}); pass --midi-in with the name of an "
                                      "existing port") from None
            return self.VIRTUAL_PORT
        ports = list(midi_in.get_ports())
        matches = [i for i, p in enumerate(ports) if port_name.casefold() in p.casefold()]
        if not matches:
            raise MidiUnavailable(f"no MIDI input port matches {port_name!r} on {self.api} "
                                  f"(available: {', '.join(map(repr, ports)) or 'none'}); check "
                                  "--midi-in, or leave it out to get a virtual port named 'STAGE Bridge'")
        try:
            midi_in.open_port(matches[0], self.VIRTUAL_PORT)
        except Exception as e:
            raise MidiUnavailable(f"cannot open MIDI input {ports[matches[0]]!r} ({e}); "
                                  "is another program holding it?") from None
        return ports[matches[0]]

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:           # keep the clock input alive whatever one message did
                pass
            self._stop.wait(interval)

    def poll(self) -> int:
        """Hand every message rtmidi has queued to the tracker; returns how many there were.

        The background thread calls this; call it yourself when `poll_interval` is None.
        Times: rtmidi's deltas chained from the previous message; the newest message of a batch
        is never stamped later than now (the first batch, or a late chain, is anchored so), and
        a chain that lags now by more than RESYNC_S (rtmidi dropped messages: queue overflow)
        is re-anchored the same way.
        """
        with self._poll_lock:
            if self._midi_in is None:
                return 0
            batch = list(iter(self._midi_in.get_message, None))
            if not batch:
                return 0
            now = self._clock()
            deltas = np.array([max(float(delta), 0.0) for _, delta in batch])
            if self._stamp is None:
                deltas[0] = 0.0
                times = now - deltas.sum() + np.cumsum(deltas)
            else:
                times = self._stamp + np.cumsum(deltas)
                late = now - times[-1]
                if late < 0 or late > self.RESYNC_S:
                    times += late
            self._stamp = float(times[-1])
            for (message, _), t in zip(batch, times):
                self._dispatch(message, float(t))
            return len(batch)

    def _dispatch(self, message: list[int], t: float) -> None:
        status = message[0] if message else None
        if status == _CLOCK:
            self.tracker.on_tick(t)
        elif status == _START:
            self.tracker.on_start(t)
        elif status == _CONTINUE:
            self.tracker.on_continue(t)
        elif status == _STOP:
            self.tracker.on_stop(t)
        elif status == _SONG_POSITION and len(message) >= 3:
            self.tracker.on_song_position((message[1] & 0x7F) | ((message[2] & 0x7F) << 7), t)
        elif status is not None and len(message) >= 3 and self.listener is not None and (
                (status & 0xF0 == _NOTE_ON and message[2] > 0) or status & 0xF0 == _CONTROL_CHANGE):
            self.listener(list(message), t)

    def snapshot(self, now: float | None = None, timeout: float = 0.5) -> ClockSnapshot:
        """The tracker's snapshot at `now` (default: `clock()`, the clock of the stamps)."""
        return self.tracker.snapshot(self._clock() if now is None else now, timeout)

    def close(self) -> None:
        """Stop polling and release the MIDI port (idempotent)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        with self._poll_lock:
            midi_in, self._midi_in = self._midi_in, None
        if midi_in is not None:
            try:
                midi_in.close_port()
            finally:
                midi_in.delete()

    def __enter__(self) -> MidiClockInput:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
