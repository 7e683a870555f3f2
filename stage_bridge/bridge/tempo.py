"""The project tempo a job uses when its request gives none: /stage/tempo first, then MIDI clock.

Why a separate source: the OSC handlers set it, the job service and the inbox watcher read it,
and `/stage/status` reports it. /stage/tempo wins because the device sends it from Live's own
transport (meter included); a MIDI clock only says bpm, and only while it is ticking.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Protocol

from .protocol import Tempo

if TYPE_CHECKING:
    from .midiclock import ClockSnapshot


class Clock(Protocol):
    """What the tempo source needs of a MIDI clock input (midiclock.MidiClockInput)."""

    def snapshot(self, now: float) -> "ClockSnapshot": ...


class TempoSource:
    """The last /stage/tempo, else the MIDI clock's live estimate, else None."""

    def __init__(self, clock: Clock | None = None):
        self._clock = clock
        self._osc: Tempo | None = None
        self._lock = threading.Lock()

    def set(self, tempo: Tempo) -> None:
        """A tempo from /stage/tempo: it stays until the next one."""
        with self._lock:
            self._osc = tempo

    def current(self) -> Tempo | None:
        with self._lock:
            if self._osc is not None:
                return self._osc
        if self._clock is not None:
            snap = self._clock.snapshot(time.monotonic())
            if snap.alive and snap.bpm is not None:
                return Tempo(round(float(snap.bpm), 2), source="midi")
        return None
