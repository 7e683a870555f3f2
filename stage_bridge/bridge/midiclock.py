"""Project tempo from MIDI beat clock (24 ticks per quarter note).

Two layers:

* `ClockTracker` is pure logic: it is fed time-stamped clock events (tick, Start, Continue,
  Stop, Song Position Pointer) and answers the tempo, the transport state and the song
  position. It does no I/O and starts no threads, so it is tested with synthetic timestamps.
  Its methods take an internal lock, so one thread may feed it while another reads it.
* `MidiClockInput` opens a MIDI input with python-rtmidi and feeds a `ClockTracker` from a
  polling thread of its own (see its docstring for why not from rtmidi's callback).

Tempo estimator
---------------
Ticks arrive with jitter: a JACK client sees them once per process cycle (5.3 ms at 256
frames / 48 kHz, so timestamps are quantised to that), callbacks add scheduling latency, and
on a shared CPU a stall delays a run of ticks that then arrive bunched (or a sender that
skipped a cycle loses them). Averaging tick intervals is therefore useless. We fit the line
`time = intercept + seconds_per_tick * tick_index` by least squares (optimal for Gaussian
jitter) and report `60 / (24 * seconds_per_tick)`. Its slope error falls as N**-1.5, so the
window length matters most: `window` = 144 ticks (six beats). With 1 ms jitter a 96-tick
window misses +-0.1 BPM at 174 BPM in ~2 % of cases and 72 ticks in ~20 %; 144 ticks hold
all 2 s of ticks even at 174 BPM (worst error over 200 seeds: 0.07 BPM). At least `min_ticks`
(12) usable ticks are needed before a tempo is reported.

Disturbances are handled inside the fit instead of by restarting it, because a restart throws
away the precision built up so far:

* late ticks: the fit starts from the previous tick's line (or a robust Theil-Sen start),
  rejects points more than `reject_sigmas` (3.5) robust standard deviations (1.4826 * MAD of
  all residuals) away, and refits, three times. A plain fit misses by 0.2-0.4 BPM with 10 %
  late ticks; the robust one stays within 0.1;
* bunches: a tick arriving less than `bunch_factor` (1/4) tick period after the previous one
  was held up, and so was the previous one: both keep their tick index but stay out of the
  fit (unless a third of all intervals are that short: then the input is merely coarse);
* gaps: after a gap over `split_factor` (4) periods the received-tick count may no longer
  equal the clock's tick index (lost ticks), so the ticks after it start a new *segment* with
  its own intercept; all segments share one slope. Segments whose offset is within a quarter
  tick of a whole number of ticks (lost ticks; 0 for a mere delay) are re-indexed and merged,
  so a dropout costs no precision. A gap over `reset_after_ticks` (24) periods means the
  clock was paused: the window restarts;
* a run of at least `change_run` (5) newest ticks all more than 2 sigma off the line on one
  side is a tempo change or a phase jump of the clock (a few lost ticks without a long gap, a
  driver re-anchoring its cycle after an xrun). The run's own slope decides: clearly different
  and drifting away, a tempo change (the window restarts with the run); the same slope, a
  phase jump (the run becomes a new segment). A tempo change is followed within a second
  (120 -> 140 BPM); a change too small to see in a few ticks (1 %) within one window.

Limit: a phase jump smaller than about 4 jitter sigmas cannot be told from jitter quickly and
biases the estimate by up to 1.5 * jump / window duration until it leaves the window (the
JACK dummy driver re-anchors its cycle clock every few seconds; a 3 ms jump at 174 BPM is
worth up to ~0.5 BPM for 2 s).

The window also restarts on Start, Continue, Stop and Song Position Pointer (a tempo may be
changed there). After any restart the previous estimate is held until the new window has
`min_ticks` usable ticks, so `bpm` is None only before the first estimate.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import StageError

TICKS_PER_QUARTER = 24

# MIDI system real-time / common status bytes used by beat clock.
_CLOCK, _START, _CONTINUE, _STOP, _SONG_POSITION = 0xF8, 0xFA, 0xFB, 0xFC, 0xF2


class MidiUnavailable(StageError):
    """No MIDI input could be opened (no MIDI system, no such port, API not built in)."""

    code = "midi_unavailable"


@dataclass(frozen=True)
class ClockSnapshot:
    """The clock's state at one instant (immutable, safe to hand to another thread)."""

    bpm: float | None          # tempo estimate; None until enough ticks were seen
    playing: bool              # between Start/Continue and Stop
    position: float            # song position (quarter notes) of the most recent tick
    alive: bool                # ticks arrived recently (a silent clock is no tempo source)
    last_tick_time: float | None


@dataclass(frozen=True)
class _Fit:
    seconds_per_tick: float
    used: int                  # ticks the fit kept
    stderr: float              # standard error of seconds_per_tick
    change: str | None         # the newest ticks left the line: "tempo" or "phase"
    at: int                    # window index of the first of them


class ClockTracker:
    """Tempo, transport state and song position from time-stamped MIDI clock events.

    Timestamps are seconds on any monotonic clock (use the same clock for `now` arguments).
    Every method takes an internal lock: one thread may feed events while others read.
    The tempo is re-estimated at every tick (0.2-0.5 ms of numpy for a full window), so the
    result never depends on when or how often it is read.
    """

    def __init__(self, *, window: int = 144, min_ticks: int = 12, reject_sigmas: float = 3.5,
                 min_reject_s: float = 0.0005, split_factor: float = 4.0, bunch_factor: float = 0.25,
                 reset_after_ticks: float = 24.0, change_run: int = 5) -> None:
        if window < min_ticks or min_ticks < 4 or change_run < 4:
            raise ValueError("need window >= min_ticks >= 4 and change_run >= 4")
        self.window = window
        self.min_ticks = min_ticks
        self.reject_sigmas = reject_sigmas
        self.min_reject_s = min_reject_s
        self.split_factor = split_factor
        self.bunch_factor = bunch_factor
        self.reset_after_ticks = reset_after_ticks
        self.change_run = change_run
        self._lock = threading.RLock()
        # the window: tick index (received-tick count), timestamp, segment id
        self._k: deque[int] = deque(maxlen=window)
        self._t: deque[float] = deque(maxlen=window)
        self._seg: deque[int] = deque(maxlen=window)
        self._ok: deque[bool] = deque(maxlen=window)   # False: a bunched (held-up) tick
        self._dts: deque[float] = deque(maxlen=24)   # recent tick intervals (for gap detection)
        self._count = 0
        self._segment = 0
        self._fit: _Fit | None = None
        self._bpm: float | None = None             # latest estimate, held across restarts
        self._last_tick: float | None = None
        self._playing = False
        self._position_ticks = 0                   # song position of the latest tick, in ticks
        self._first_tick_pending = False

    # ------------------------------------------------------------------ events
    def on_tick(self, t: float) -> None:
        with self._lock:
            bunched = False
            if self._last_tick is not None:
                t = max(t, self._last_tick)        # MIDI never reorders; clamp clock noise
                dt = t - self._last_tick
                period = float(np.median(self._dts)) if len(self._dts) >= 3 else None
                if period is not None and dt > self.reset_after_ticks * period:
                    self._restart_window()         # the clock was paused: its phase is unrelated
                else:
                    if period is not None and dt > self.split_factor * period:
                        self._segment += 1         # ticks may have been lost: new intercept
                    elif period is not None and dt < self.bunch_factor * period and self._ok \
                            and sum(d < self.bunch_factor * period for d in self._dts) < len(self._dts) / 3:
                        # Delivered together with the previous tick: both were held up (a stall).
                        # Unless the input is that coarse anyway (a third of the intervals).
                        bunched = True
                        self._ok[-1] = False
                    self._dts.append(dt)
            self._last_tick = t
            self._k.append(self._count)
            self._t.append(t)
            self._seg.append(self._segment)
            self._ok.append(not bunched)
            self._count += 1
            if self._playing:
                if self._first_tick_pending:
                    self._first_tick_pending = False  # this tick plays at the position itself
                else:
                    self._position_ticks += 1
            self._refit()

    def on_start(self, t: float) -> None:
        with self._lock:
            self._restart_window()
            self._playing = True
            self._position_ticks = 0
            self._first_tick_pending = True

    def on_continue(self, t: float) -> None:
        with self._lock:
            self._restart_window()
            self._playing = True

    def on_stop(self, t: float) -> None:
        with self._lock:
            self._restart_window()
            self._playing = False

    def on_song_position(self, beats16: int, t: float) -> None:
        """Song Position Pointer: `beats16` sixteenth notes ("MIDI beats") since song start."""
        with self._lock:
            self._restart_window()
            self._position_ticks = int(beats16) * (TICKS_PER_QUARTER // 4)
            self._first_tick_pending = True        # the next tick plays at exactly this position

    def reset(self) -> None:
        """Forget everything (e.g. a different clock source)."""
        with self._lock:
            self._restart_window()
            self._bpm = None
            self._last_tick = None
            self._playing = False
            self._position_ticks = 0
            self._first_tick_pending = False

    # ------------------------------------------------------------------ queries
    @property
    def bpm(self) -> float | None:
        """Tempo in quarter notes per minute; None until `min_ticks` ticks were seen.

        After a window restart (transport message, pause, tempo change) the previous estimate is
        held until the new window has `min_ticks` usable ticks.
        """
        with self._lock:
            return self._bpm

    @property
    def bpm_stderr(self) -> float | None:
        """Standard error of the current window's estimate (BPM), None without a current fit."""
        with self._lock:
            fit = self._fit
            if fit is None:
                return None
            return 60.0 / TICKS_PER_QUARTER * fit.stderr / fit.seconds_per_tick ** 2

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

    @property
    def last_tick_time(self) -> float | None:
        with self._lock:
            return self._last_tick

    def is_alive(self, now: float, timeout: float = 0.5) -> bool:
        """True when a tick arrived within `timeout` seconds before `now`."""
        with self._lock:
            return self._last_tick is not None and now - self._last_tick <= timeout

    def snapshot(self, now: float, timeout: float = 0.5) -> ClockSnapshot:
        with self._lock:
            return ClockSnapshot(bpm=self._bpm, playing=self._playing,
                                 position=self._position_ticks / TICKS_PER_QUARTER,
                                 alive=self.is_alive(now, timeout), last_tick_time=self._last_tick)

    # ------------------------------------------------------------------ internals
    def _restart_window(self) -> None:
        self._k.clear()
        self._t.clear()
        self._seg.clear()
        self._ok.clear()
        self._dts.clear()
        self._segment += 1
        self._fit = None

    def _refit(self) -> None:
        prior = self._fit.seconds_per_tick if self._fit is not None else None
        fit = _estimate(self, prior)
        if fit is not None and fit.change == "tempo":
            # keep only the ticks at the new tempo; hold the old estimate until enough of them
            for _ in range(fit.at):
                self._k.popleft()
                self._t.popleft()
                self._seg.popleft()
                self._ok.popleft()
            fit = _estimate(self, None, detect_change=False)
        elif fit is not None and fit.change == "phase":
            # the clock jumped by a fraction of a tick (e.g. a driver resync): new intercept
            self._segment += 1
            for i in range(fit.at, len(self._seg)):
                self._seg[i] = self._segment
            fit = _estimate(self, fit.seconds_per_tick, detect_change=False)
        self._fit = fit
        if fit is not None:
            self._bpm = 60.0 / (TICKS_PER_QUARTER * fit.seconds_per_tick)


def _newest_run_changed(tr: ClockTracker, k: np.ndarray, t: np.ndarray, r: np.ndarray,
                        inv: np.ndarray, slope: float, scale: float,
                        threshold: float) -> tuple[str | None, int]:
    """("tempo" | "phase" | None, run): did the newest ticks all leave the fitted line?

    A run of at least `change_run` newest ticks of the newest segment, all more than 2 sigma
    off the line on the same side, is either a tempo change or a jump of the clock's phase
    (lost ticks, a driver that re-anchored its cycle after an xrun). Its own slope, over its
    points near its own robust line (so a bunch of delayed ticks does not count), tells them
    apart: more than 6 standard errors from the window's slope is a tempo change, less than 3
    a phase jump; in between nothing is decided yet (the run grows). Isolated late ticks never
    form such a run.
    """
    n = len(t)
    run = 0
    sign = np.sign(r[-1])
    off = np.abs(r) > 2 * max(scale, tr.min_reject_s / tr.reject_sigmas)
    while run < n and off[-1 - run] and np.sign(r[-1 - run]) == sign and inv[-1 - run] == inv[-1]:
        run += 1
    if not tr.change_run <= run < n:
        return None, 0
    ks, ts = k[-run:], t[-run:]
    own = _median_slope(*_pairs(ks, ts))
    if own is None or not 0.5 * slope < own < 2.0 * slope:
        return None, 0
    own_r = ts - float(np.median(ts - own * ks)) - own * ks
    near = np.abs(own_r) <= threshold
    if near.sum() < max(run * 3 // 4, 4):
        return None, 0
    kn, tn = ks[near], ts[near]
    kc = kn - kn.mean()
    own_sxx = float(kc @ kc)
    own = float(kc @ (tn - tn.mean())) / own_sxx
    se = max(scale, tr.min_reject_s / tr.reject_sigmas) / math.sqrt(own_sxx)
    if abs(own - slope) > 6 * se and np.sign(own - slope) == sign:   # moving away: tempo
        return "tempo", run
    if abs(own - slope) < 3 * se:
        return "phase", run
    return None, 0


def _pooled_line(k: np.ndarray, t: np.ndarray, inv: np.ndarray, nseg: int, mask: np.ndarray):
    """Least-squares slope shared by all segments, one intercept per segment (over `mask`)."""
    w = mask.astype(float)
    n = np.bincount(inv, weights=w, minlength=nseg)
    safe = np.maximum(n, 1)
    mk = np.bincount(inv, weights=w * k, minlength=nseg) / safe
    mt = np.bincount(inv, weights=w * t, minlength=nseg) / safe
    kc = k - mk[inv]
    tc = t - mt[inv]
    sxx = float(np.sum(w * kc * kc))
    if sxx <= 0:
        return None
    slope = float(np.sum(w * kc * tc)) / sxx
    if not slope > 0:
        return None
    return slope, mt - slope * mk, sxx, n


def _pairs(k: np.ndarray, t: np.ndarray):
    """(dk, dt) of the point pairs half the run apart."""
    h = max(len(k) // 2, 1)
    return k[h:] - k[:-h], t[h:] - t[:-h]


def _median_slope(dk: np.ndarray, dt: np.ndarray) -> float | None:
    """Median of pairwise slopes (ignores a minority of outliers)."""
    if len(dk) == 0:
        return None
    return float(np.median(dt / dk))


def _estimate(tr: ClockTracker, prior: float | None, detect_change: bool = True) -> _Fit | None:
    ok = np.fromiter(tr._ok, bool, len(tr._ok))
    index = np.flatnonzero(ok)                      # bunched ticks never enter the fit
    n_ticks = len(index)
    if n_ticks < tr.min_ticks:
        return None
    k = np.fromiter(tr._k, float, len(ok))[index]
    t = np.fromiter(tr._t, float, len(ok))[index]
    k -= k[0]
    t -= t[0]                                       # keep the numbers small (precision)
    _, inv = np.unique(np.fromiter(tr._seg, int, len(ok))[index], return_inverse=True)

    # Start from the previous tick's fit when there is one: a robust start computed from scratch
    # breaks down when a quarter of a short window sits on a shifted grid (after lost ticks).
    slope = prior
    for merge_pass in range(3):
        nseg = int(inv.max()) + 1
        if slope is None:
            # robust start: median of the long-baseline slopes within each segment
            pairs = [_pairs(k[inv == j], t[inv == j]) for j in range(nseg)]
            slope = _median_slope(np.concatenate([p[0] for p in pairs]),
                                  np.concatenate([p[1] for p in pairs]))
            if slope is None or not slope > 0:
                return None
        intercept = np.array([np.median(t[inv == j] - slope * k[inv == j]) for j in range(nseg)])
        mask = np.ones(n_ticks, bool)
        for _ in range(3):
            r = t - intercept[inv] - slope * k
            # MAD over all residuals: robust up to half outliers (a MAD over the kept points
            # only would shrink at each pass)
            scale = 1.4826 * float(np.median(np.abs(r - np.median(r))))
            threshold = max(tr.reject_sigmas * scale, tr.min_reject_s)
            mask = np.abs(r) <= threshold
            line = _pooled_line(k, t, inv, nseg, mask)
            if line is None:
                return None
            slope, intercept, sxx, counts = line
            for j in np.flatnonzero(counts == 0):       # a segment the fit rejected entirely
                intercept[j] = np.median(t[inv == j] - slope * k[inv == j])
        r = t - intercept[inv] - slope * k
        if nseg == 1 or merge_pass == 2:
            break
        # Merge segments whose offset is a whole number of ticks (lost or merely delayed ticks).
        # Offsets are measured point by point against the best-supported segment's line and
        # summarised by their median, so a late first tick cannot spoil a short segment's offset.
        ref = int(np.argmax(counts))
        merged = False
        for j in range(nseg):
            if j == ref:
                continue
            sel = inv == j
            offset = float(np.median(t[sel] - intercept[ref] - slope * k[sel])) / slope
            m = round(offset)
            if abs(offset - m) <= 0.25:
                k[sel] += m
                inv[sel] = ref
                merged = True
        if not merged:
            break
        _, inv = np.unique(inv, return_inverse=True)

    used = int(mask.sum())
    if used < tr.min_ticks:
        return None
    dof = max(used - (int(inv.max()) + 1) - 1, 1)
    stderr = math.sqrt(float(np.sum(r[mask] ** 2)) / dof / sxx)

    change, run = None, 0
    if detect_change:
        change, run = _newest_run_changed(tr, k, t, r, inv, slope, scale, threshold)
    at = int(index[n_ticks - run]) if change else 0
    return _Fit(seconds_per_tick=slope, used=used, stderr=stderr, change=change, at=at)


# ---------------------------------------------------------------------------------- rtmidi
_API_NAMES = ("auto", "alsa", "jack", "coremidi", "winmm")
_NO_VIRTUAL_ON_WINDOWS = ("Windows MIDI cannot create a virtual port: pass --midi-in with the name "
                          "of the port your DAW sends clock to (e.g. a loopMIDI port)")


def _rtmidi():
    try:
        import rtmidi
    except ImportError as e:  # pragma: no cover - dependency missing
        raise MidiUnavailable("MIDI clock input needs python-rtmidi: pip install python-rtmidi "
                              f"(or take the tempo from OSC instead) ({e})") from None
    return rtmidi


def _api_constant(rtmidi, name: str) -> int:
    return {"alsa": rtmidi.API_LINUX_ALSA, "jack": rtmidi.API_UNIX_JACK,
            "coremidi": rtmidi.API_MACOSX_CORE, "winmm": rtmidi.API_WINDOWS_MM}[name]


def _api_label(rtmidi, api: int) -> str:
    names = {rtmidi.API_LINUX_ALSA: "alsa", rtmidi.API_UNIX_JACK: "jack",
             rtmidi.API_MACOSX_CORE: "coremidi", rtmidi.API_WINDOWS_MM: "winmm"}
    return names.get(api) or rtmidi.get_api_name(api)


def _open_midi_in(api: str, client_name: str):
    """A `rtmidi.MidiIn` on the requested API; "auto" tries every compiled API in rtmidi's order."""
    if api not in _API_NAMES:
        raise MidiUnavailable(f"unknown MIDI API {api!r}; choose one of {', '.join(_API_NAMES)}")
    rtmidi = _rtmidi()
    compiled = [a for a in rtmidi.get_compiled_api() if a != rtmidi.API_RTMIDI_DUMMY]
    compiled_names = ", ".join(_api_label(rtmidi, a) for a in compiled) or "none"
    if api == "auto":
        candidates = compiled
    else:
        wanted = _api_constant(rtmidi, api)
        if wanted not in compiled:
            raise MidiUnavailable(f"this python-rtmidi was built without {api} support (it has: "
                                  f"{compiled_names}); choose another --midi-api")
        candidates = [wanted]
    if not candidates:
        raise MidiUnavailable("python-rtmidi was built without any MIDI system; reinstall "
                              "python-rtmidi or take the tempo from OSC instead")
    failures = []
    for a in candidates:
        try:
            return rtmidi.MidiIn(a, name=client_name), _api_label(rtmidi, a)
        except Exception as e:   # rtmidi.SystemError: no ALSA sequencer, JACK server not running
            failures.append(f"{_api_label(rtmidi, a)}: {e}")
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
    (CoreMIDI, ALSA and JACK; impossible on Windows).

    Threads and timestamps. rtmidi is *polled* from a thread of ours (every `poll_interval`
    seconds) instead of being given a Python callback: with JACK, rtmidi runs its callback in
    the JACK process thread, which must then take the GIL; that delays the whole JACK graph
    (jackd reported "client = STAGE Bridge was not finished" xruns) and, worse, when libjack
    cancelled that thread while it waited for the GIL the interpreter deadlocked (seen in
    testing). Polled messages are time-stamped with rtmidi's delta times, which rtmidi takes
    where the message arrives (the JACK process cycle, the ALSA sequencer event, CoreMIDI's
    host time): chained from the first message, anchored to `time.monotonic()` (never later
    than the moment we read it) so they share a clock with `ClockTracker.is_alive(now)`.
    rtmidi's delta is measured from the previous message *it saw*, so nothing may be dropped
    inside rtmidi: `ignore_types(sysex=False, timing=False, active_sense=False)` lets every
    message through (clock included, which rtmidi ignores by default) and we drop the ones we
    do not need here.
    """

    VIRTUAL_PORT = "STAGE Bridge"
    RESYNC_S = 1.0         # a drained queue whose newest stamp lags this much: re-anchor

    def __init__(self, port_name: str | None = None, api: str = "auto", *,
                 tracker: ClockTracker | None = None, client_name: str = "STAGE Bridge",
                 poll_interval: float | None = 0.002,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tracker = tracker if tracker is not None else ClockTracker()
        self._clock = clock
        self._midi_in = None
        self._stamp: float | None = None          # time of the latest message (chained deltas)
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if api == "winmm" and port_name is None:
            raise MidiUnavailable(_NO_VIRTUAL_ON_WINDOWS)
        midi_in, self.api = _open_midi_in(api, client_name)
        try:
            if port_name is None and self.api == "winmm":
                raise MidiUnavailable(_NO_VIRTUAL_ON_WINDOWS)
            midi_in.ignore_types(sysex=False, timing=False, active_sense=False)
            if port_name is None:
                try:
                    midi_in.open_virtual_port(self.VIRTUAL_PORT)
                except Exception as e:
                    raise MidiUnavailable(f"cannot create the virtual MIDI port {self.VIRTUAL_PORT!r} "
                                          f"on {self.api} ({e}); pass --midi-in with the name of an "
                                          "existing port") from None
                self.port_name = self.VIRTUAL_PORT
            else:
                ports = list(midi_in.get_ports())
                needle = port_name.casefold()
                matches = [i for i, p in enumerate(ports) if needle in p.casefold()]
                if not matches:
                    listing = ", ".join(repr(p) for p in ports) or "none"
                    raise MidiUnavailable(f"no MIDI input port matches {port_name!r} on {self.api} "
                                          f"(available: {listing}); check --midi-in, or leave it out "
                                          "to get a virtual port named 'STAGE Bridge'")
                try:
                    midi_in.open_port(matches[0], self.VIRTUAL_PORT)
                except Exception as e:
                    raise MidiUnavailable(f"cannot open MIDI input {ports[matches[0]]!r} ({e}); "
                                          "is another program holding it?") from None
                self.port_name = ports[matches[0]]
        except BaseException:
            midi_in.delete()
            raise
        self._midi_in = midi_in
        if poll_interval is not None:
            self._thread = threading.Thread(target=self._run, args=(poll_interval,),
                                            name="stage-bridge-midi-clock", daemon=True)
            self._thread.start()

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
            midi_in = self._midi_in
            if midi_in is None:
                return 0
            batch = []
            while True:
                item = midi_in.get_message()
                if not item:
                    break
                batch.append(item)
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

    def _dispatch(self, message, t: float) -> None:
        if not message:
            return
        status = message[0]
        tracker = self.tracker
        if status == _CLOCK:
            tracker.on_tick(t)
        elif status == _START:
            tracker.on_start(t)
        elif status == _CONTINUE:
            tracker.on_continue(t)
        elif status == _STOP:
            tracker.on_stop(t)
        elif status == _SONG_POSITION and len(message) >= 3:
            tracker.on_song_position((message[1] & 0x7F) | ((message[2] & 0x7F) << 7), t)

    def snapshot(self, now: float | None = None, timeout: float = 0.5) -> ClockSnapshot:
        """The tracker's snapshot at `now` (default: time.monotonic(), the clock of the stamps)."""
        return self.tracker.snapshot(self._clock() if now is None else now, timeout)

    @property
    def closed(self) -> bool:
        return self._midi_in is None

    def close(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        with self._poll_lock:
            midi_in, self._midi_in = self._midi_in, None
        if midi_in is None:
            return
        try:
            midi_in.close_port()
        finally:
            midi_in.delete()

    def __enter__(self) -> MidiClockInput:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass
