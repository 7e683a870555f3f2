"""Capture mode's ears: a rolling buffer of the last minutes of one audio input (sounddevice,
i.e. PortAudio), each buffer time-stamped on arrival, with dropouts counted and remembered.

Why time-stamped on arrival: the MIDI clock's ticks are stamped the same way on the same clock
(midiclock.MidiClockInput), which is what lets barclock.py say which sample a bar line is.
Each buffer stands for its middle sample: its samples were taken over its length, and where
clock and audio pass through one cycle-driven server (JACK) the ticks of a cycle arrive
stamped with that cycle too, so the middle leaves no bias on average.

Why dropouts are remembered and not glued over: when PortAudio reports an input overflow or
underflow (JACK: an xrun), samples may be missing at that point, and then the ones after it no
longer continue the ones before in time; gluing them silently would shift every later bar
line. So the buffer starts a new *segment* there (barclock's sample-clock fit never crosses
one: the samples of each stretch are placed by that stretch's own arrival times) and a capture
whose window contains one says so in its reply and sidecar. (PortAudio's buffer timestamps
cannot say how many went missing: with JACK they are taken when the late callback runs, and
tested under load they showed gaps of any size where no cycle was lost.)

The PortAudio callback runs on the audio thread: it copies the buffer into a preallocated ring
under a short lock and notes the time; nothing else (no allocation, no logging).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import StageError

RING_SECONDS = 300.0      # how much input is kept (five minutes: a long song section)
EVENTS = 1 << 16          # buffer arrival records kept (a minute and more at 48 kHz / 256)
MAX_DROPOUTS = 4096      # dropouts remembered
MAX_CHANNELS = 2          # the model listens to a stereo mix at most
COMMON_RATES = (44100, 48000, 88200, 96000)


class CaptureUnavailable(StageError):
    """A capture input or playback output could not be found or opened."""

    code = "capture_unavailable"


def portaudio():
    """The sounddevice module (PortAudio), imported when capture mode or jam playback is used."""
    try:
        import sounddevice
    except (ImportError, OSError) as e:   # OSError: the PortAudio library itself is missing
        raise CaptureUnavailable(f"capture mode needs sounddevice and PortAudio: pip install sounddevice "
                                 f"(on Linux also the libportaudio2 package) ({e})") from None
    return sounddevice


def open_stream(factory: Callable[..., Any], device: AudioDevice, channels: int, rate: int,
                callback: Callable[..., None], direction: str) -> Any:
    """Open and start a float32 PortAudio stream (`factory`: sounddevice's InputStream or
    OutputStream, or a test's stand-in) on `device`; CaptureUnavailable says why not."""
    try:
        stream = factory(device=device.index, channels=channels, samplerate=rate, dtype="float32", callback=callback)
        stream.start()
    except Exception as e:  # noqa: BLE001 - PortAudio's errors vary by host API; all mean "not usable now"
        raise CaptureUnavailable(f"cannot open the audio {direction} {device.name!r} ({device.host_api}) at "
                                 f"{rate} Hz: {e}; is another program holding it?") from None
    return stream


def close_stream(stream: Any) -> None:
    """Stop and close a stream from `open_stream` (sounddevice: stop() ends the callbacks, close()
    frees PortAudio's stream), closing it even when stopping fails."""
    if stream is not None:
        try:
            stream.stop()
        finally:
            stream.close()


@dataclass(frozen=True)
class AudioDevice:
    index: int
    name: str
    host_api: str
    channels: int               # of the direction asked for (input or output)
    default_rate: int
    rates: tuple[int, ...]      # the COMMON_RATES the device accepts


def list_devices(direction: str = "input") -> list[AudioDevice]:
    """Every audio input (or output) PortAudio sees, with its host API, channels and usable
    rates (`stage-bridge doctor`; capture mode's input, jam playback's output)."""
    sd = portaudio()
    check = sd.check_input_settings if direction == "input" else sd.check_output_settings
    try:
        apis, devices = sd.query_hostapis(), sd.query_devices()
    except Exception as e:  # noqa: BLE001 - sounddevice.PortAudioError (e.g. PortAudio not initialised)
        raise CaptureUnavailable(f"PortAudio cannot list the audio devices ({e}); restart stage-bridge, "
                                 f"and check that the audio system (JACK, Core Audio, WASAPI) is running") from None
    found = []
    for i, d in enumerate(devices):
        channels = int(d[f"max_{direction}_channels"])
        if channels < 1:
            continue
        rates = []
        for rate in COMMON_RATES:
            try:
                check(device=i, channels=min(channels, MAX_CHANNELS), samplerate=rate)
                rates.append(rate)
            except Exception:     # PortAudioError or ValueError: not this rate
                pass
        found.append(AudioDevice(i, d["name"], apis[d["hostapi"]]["name"], channels, int(d["default_samplerate"]),
                                 tuple(rates)))
    return found


def find_device(name_or_index: str, direction: str = "input") -> AudioDevice:
    """The device a musician named: its number as `stage-bridge doctor` lists it, or part of its
    name (case-insensitive; with a host API as "NAME@API" where one name appears under several)."""
    devices = list_devices(direction)
    text = name_or_index.strip()
    if text.isdigit():
        matches = [d for d in devices if d.index == int(text)]
    else:
        name, _, api = text.partition("@")
        matches = [d for d in devices if name.casefold() in d.name.casefold()
                   and api.casefold() in d.host_api.casefold()]
    if not matches:
        listed = "; ".join(f"{d.index}: {d.name} ({d.host_api})" for d in devices) or "none"
        option = "--capture-device" if direction == "input" else "--play-device"
        raise CaptureUnavailable(f"no audio {direction} matches {name_or_index!r} ({direction}s: {listed}); run "
                                 f"`stage-bridge doctor` and pass one of those to {option}")
    return matches[0]


@dataclass(frozen=True)
class Dropout:
    sample: int            # where in the capture's sample count the samples went missing
    time: float            # arrival time of the buffer that reported it
    kind: str              # "input overflow" or "input underflow"


class Capture:
    """The last `seconds` of one input, opened at its default rate (at most two channels).

    Sample positions count from the first sample captured (they never wrap; the ring keeps the
    newest `seconds`). `stream_factory` is sounddevice.InputStream unless a test passes another.
    """

    def __init__(self, device: AudioDevice, seconds: float = RING_SECONDS, *,
                 clock: Callable[[], float] = time.monotonic, stream_factory: Callable[..., Any] | None = None,
                 rate: int | None = None) -> None:
        self.device = device
        self.sample_rate = int(rate or device.default_rate)
        self.channels = min(device.channels, MAX_CHANNELS)
        self._clock = clock
        self._ring = np.zeros((int(seconds * self.sample_rate), self.channels), np.float32)
        self._ev_t = np.zeros(EVENTS)
        self._ev_sample = np.zeros(EVENTS)
        self._ev_segment = np.zeros(EVENTS, np.int64)
        self._events = 0
        self._total = 0                    # samples captured so far
        self._segment = 0
        self.counts = {"input_overflow": 0, "input_underflow": 0}       # since the start, for the log
        self.dropouts: deque[Dropout] = deque(maxlen=MAX_DROPOUTS)   # the newest; a storm must not grow memory
        self._cond = threading.Condition()
        self._stream = open_stream(stream_factory or portaudio().InputStream, device, self.channels,
                                   self.sample_rate, self._callback, "input")

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        t = self._clock()
        with self._cond:
            for kind in ("input_overflow", "input_underflow"):
                if status and getattr(status, kind, False):
                    self.dropouts.append(Dropout(self._total, t, kind.replace("_", " ")))
                    self.counts[kind] += 1
                    self._segment += 1
            self._write(indata)
            slot = self._events % EVENTS
            self._ev_t[slot] = t
            self._ev_sample[slot] = self._total - frames / 2       # the buffer's middle (module docstring)
            self._ev_segment[slot] = self._segment
            self._events += 1
            self._cond.notify_all()

    def _write(self, data: np.ndarray) -> None:
        n, ring = len(self._ring), self._ring
        pos = self._total % n
        data = data[-n:]
        first = min(len(data), n - pos)
        ring[pos:pos + first] = data[:first]
        ring[:len(data) - first] = data[first:]
        self._total += len(data)

    @property
    def total(self) -> int:
        """Samples captured so far."""
        with self._cond:
            return self._total

    def arrivals(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(arrival times, the sample each stands for, segment) of the kept buffers, oldest first:
        the arguments of barclock.sample_at."""
        with self._cond:
            n = min(self._events, EVENTS)
            slots = (self._events - n + np.arange(n)) % EVENTS
            return self._ev_t[slots], self._ev_sample[slots], self._ev_segment[slots]

    def wait_for(self, sample: int, timeout: float) -> bool:
        """Wait until sample `sample` has been captured; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._total >= sample, timeout)

    def read(self, start: int, length: int) -> tuple[np.ndarray, list[Dropout]]:
        """Samples [start, start + length) as (channels, length) float32, and the dropouts inside.

        Raises CaptureUnavailable when they are not (or no longer) in the ring."""
        with self._cond:
            n = len(self._ring)
            if start < 0 or start + length > self._total or start < self._total - n:
                kept = self._total - max(self._total - n, 0)
                raise CaptureUnavailable(f"those samples are not in the capture buffer (it holds the last "
                                         f"{kept / self.sample_rate:.0f} s); ask for fewer bars")
            idx = (start + np.arange(length)) % n
            out = self._ring[idx].T.copy()
            inside = [d for d in self.dropouts if start < d.sample < start + length]
        return out, inside

    def close(self) -> None:
        stream, self._stream = self._stream, None
        close_stream(stream)
