"""Jam playback (capture mode, `--play-device`): each finished take plays on an output from the
next bar line that is a multiple of its length, in time with the MIDI clock, looping until the
transport stops or the next take replaces it.

Why the clock decides every buffer and not a sample counter: the DAW's clock and the output's
sample clock drift apart, and the DAW may change tempo, stop or jump. So a helper thread fits
the clock's newest ticks (barclock.position_line) a few dozen times a second, and the output
callback asks that line which song position its buffer will be heard at (the buffer's DAC time,
as PortAudio reports it, on the clock the ticks are stamped with) and plays the take from the
matching sample. It keeps playing on from where the previous buffer ended while that stays
within RESYNC_S of where the clock says it should be, so jitter never clicks; farther off (a
tempo change, a jump) it jumps.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from .barclock import Line, position_line
from .capture import MAX_CHANNELS, AudioDevice, close_stream, open_stream, portaudio

RESYNC_S = 0.003          # further than this from where the clock says: jump there
REFIT_S = 0.02            # how often the clock's line is refitted


class Transport(Protocol):
    """What playback needs of the MIDI clock (midiclock.ClockTracker)."""

    def run_ticks(self) -> tuple[np.ndarray, np.ndarray]: ...

    @property
    def playing(self) -> bool: ...


@dataclass
class _Loop:
    samples: np.ndarray            # (n, channels) at the output's rate
    loop_ticks: int                # its length in clock ticks (bars * ticks per bar)
    start: float | None = None     # song position (ticks) it starts at, once known
    next_index: int | None = None  # where the previous buffer ended


class Playback:
    """Plays takes on `device` in time with `transport` (see the module docstring)."""

    def __init__(self, device: AudioDevice, transport: Transport, *, clock: Callable[[], float] = time.monotonic,
                 stream_factory: Callable[..., Any] | None = None, refit_s: float | None = REFIT_S) -> None:
        self.device = device
        self.transport = transport
        self.sample_rate = device.default_rate
        self.channels = min(device.channels, MAX_CHANNELS)
        self._clock = clock
        self._loop: _Loop | None = None
        self._line: Line | None = None
        self._latency = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stream = open_stream(stream_factory or portaudio().OutputStream, device, self.channels,
                                   self.sample_rate, self._callback, "output")
        self._thread = None
        if refit_s is not None:
            self._thread = threading.Thread(target=self._refit_loop, args=(refit_s,), name="stage-bridge-playback",
                                            daemon=True)
            self._thread.start()

    @property
    def latency(self) -> float:
        """Seconds from a buffer's callback to its sound at the output, as PortAudio reported it
        to the latest callback: what the callback schedules ahead, so the take is *heard* on the
        bar line."""
        return self._latency

    def play(self, samples: np.ndarray, sample_rate: int, loop_ticks: int) -> None:
        """Play `samples` ((channels, n) float32) from the next song position that is a multiple
        of `loop_ticks` (its length in ticks), looping; replaces what plays now."""
        from ..audio import resample

        audio = resample(np.asarray(samples, np.float32), sample_rate, self.sample_rate)
        if audio.shape[0] < self.channels:
            audio = np.repeat(audio, self.channels, axis=0)
        with self._lock:
            self._loop = _Loop(np.ascontiguousarray(audio[: self.channels].T), loop_ticks)

    def refit(self) -> None:
        """Fit the clock's line now (the helper thread does this every `refit_s`)."""
        if not self.transport.playing:
            line = None
            with self._lock:
                self._loop = None          # the transport stopped: the loop ends
        else:
            line = position_line(*self.transport.run_ticks())
        with self._lock:
            self._line = line

    def _refit_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.refit()
            except Exception:   # keep playback alive whatever one fit did
                pass

    def _callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        now = self._clock()
        dac, current = (float(getattr(time_info, name, 0.0) or 0.0) for name in ("outputBufferDacTime", "currentTime"))
        latency = self._latency = dac - current if 0.0 <= dac - current < 1.0 else 0.0
        with self._lock:
            loop, line = self._loop, self._line
            if loop is None or line is None:
                outdata.fill(0.0)
                return
            # of this buffer's first sample; the callback time stands for the buffer's middle, as
            # an input buffer's arrival does (capture.py: the clock's ticks are stamped that way too)
            position = line.position_at(now + latency - frames / 2 / self.sample_rate)
            if loop.start is None:                                # the next multiple of its length
                loop.start = float(np.ceil(position / loop.loop_ticks) * loop.loop_ticks)
            n = len(loop.samples)
            samples_per_tick = line.seconds_per_tick * self.sample_rate
            ahead = int(round((loop.start - position) * samples_per_tick))
            if ahead >= frames:                                   # starts after this buffer
                outdata.fill(0.0)
                return
            lead = max(ahead, 0)
            index = (-ahead if ahead < 0 else 0) % n
            if loop.next_index is not None and ahead < 0:
                drift = (index - loop.next_index + n // 2) % n - n // 2
                if abs(drift) <= RESYNC_S * self.sample_rate:
                    index = loop.next_index
            idx = (index + np.arange(frames - lead)) % n
            outdata[:lead] = 0.0
            outdata[lead:] = loop.samples[idx]
            loop.next_index = (index + frames - lead) % n

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        stream, self._stream = self._stream, None
        close_stream(stream)
