"""Capture mode's front end: "drums over the last N bars" -> the context cut from the capture
input at the bar lines -> a job through the same JobService as every other front end.

Why through the job service: a capture job is an ordinary job whose context file the daemon
wrote itself. So it is journaled, queued, checked (the file is written into bounces/, which
the path checks allow, atomically) and published with the one sidecar like any other; what
is particular to it (which bar, which sample, any dropout) travels in `StemJob.capture` and so
lands in the journal and in every take's sidecar.

Triggers: `/stage/capture` (osc.py) and MIDI notes on the daemon's MIDI input (`on_midi`, the
MidiClockInput listener): by default C1 (36) = drums and D1 (38) = bass over the last
`default_bars` bars; a control change number (`bars_cc`, off by default) sets that bar count.
The context is the last N whole bars ending at the most recent bar line the clock passed, so
the take starts on a downbeat of the song. With jam playback (playback.py), a finished capture
job's first take loops on the play device in time with the clock (`finished`).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Protocol, Sequence

import numpy as np

from ..audio import load_audio, write_audio_atomic
from ..errors import StageError
from ..limits import MAX_BARS
from . import protocol as P
from .barclock import BarSpan, NoSpan, locate_bars, ticks_per_bar
from .capture import Capture, Dropout
from .jobs import Job, JobService
from .job import DEFAULT_METER

if TYPE_CHECKING:
    from .playback import Playback

log = logging.getLogger("stage_bridge.capture")

DEFAULT_TRIGGERS = {36: "drums", 38: "bass"}   # MIDI note -> instrument (C1, D1 as Live names them)
DEFAULT_BARS = 4
AUDIO_WAIT_S = 1.0     # how long to wait for the audio of the newest bar line to arrive


class RunTicks(Protocol):
    """What a capture needs of the MIDI clock (midiclock.ClockTracker)."""

    def run_ticks(self) -> tuple[np.ndarray, np.ndarray]: ...

    @property
    def bpm(self) -> float | None: ...


Send = Callable[..., None]


class CaptureJobs:
    """Turns capture requests into jobs. `meter`: (beats_per_bar, beat_unit) from the config,
    or None to take it from /stage/tempo (else 4/4); a request's own meter wins."""

    def __init__(self, capture: Capture, clock: RunTicks, service: JobService, bounces: Path,
                 instruments: Sequence[str], send: Send, *, default_bars: int = DEFAULT_BARS,
                 meter: tuple[int, int] | None = None, triggers: Mapping[int, str] | None = None,
                 bars_cc: int | None = None, playback: "Playback | None" = None) -> None:
        self.capture, self.clock, self.service = capture, clock, service
        self.bounces = Path(bounces)
        self.instruments = tuple(instruments)
        self.send = send
        self.bars = default_bars
        self.meter = meter
        self.triggers = dict(DEFAULT_TRIGGERS if triggers is None else triggers)
        self.bars_cc = bars_cc
        self.playback = playback
        self._lock = threading.Lock()          # one capture at a time (OSC and MIDI threads)

    def meter_for(self, req: P.CaptureRequest) -> tuple[int, int]:
        tempo = self.service.current_tempo()
        bpb, unit = self.meter or (None, None)
        if tempo is not None:
            bpb, unit = bpb or tempo.beats_per_bar, unit or tempo.beat_unit
        return req.beats_per_bar or bpb or DEFAULT_METER, req.beat_unit or unit or DEFAULT_METER

    def submit(self, req: P.CaptureRequest, source: str = "capture") -> Job:
        """Cut the last `req.bars` bars, write them into bounces/ and queue the job; ProtocolError
        (the usual codes: no_tempo without a playing clock, bad_bars when fewer bars were played or
        kept) when it cannot be. Replies /stage/capture/taken once queued."""
        with self._lock:
            beats_per_bar, beat_unit = self.meter_for(req)
            span = locate_bars(req.bars, beats_per_bar, beat_unit, *self.clock.run_ticks(),
                               *self.capture.arrivals(), self.capture.sample_rate, bpm=self.clock.bpm)
            if isinstance(span, NoSpan):
                raise P.ProtocolError("no_tempo" if span.bars_played is None else "bad_bars",
                                      f"cannot capture: {span.reason}.")
            if not self.capture.wait_for(span.start + span.length, AUDIO_WAIT_S):
                raise P.ProtocolError("no_tempo", "cannot capture: the audio input stopped delivering sound "
                                                  "(is the capture device still running?).")
            try:
                audio, dropouts = self.capture.read(span.start, span.length)
            except StageError as e:
                raise P.ProtocolError("bad_bars", f"cannot capture: {e}.") from None
            job_id = req.job_id or f"capture-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
            path = self.bounces / f"{job_id}.wav"
            try:
                write_audio_atomic(path, audio, self.capture.sample_rate, subtype="FLOAT")
            except FileExistsError:
                raise P.ProtocolError("duplicate_job", f"a capture called {job_id} exists already; use a new "
                                                       "job_id.") from None
            except StageError as e:
                raise P.ProtocolError("output_not_writable", f"cannot write the captured bars: {e}") from None
            info = capture_info(span, self.capture.sample_rate, dropouts)
            gen = P.GenerateRequest(job_id, str(path), req.instrument, req.bars, bpm=span.bpm,
                                    beats_per_bar=beats_per_bar, beat_unit=beat_unit, prompt=req.prompt,
                                    takes=req.takes, context_mode=req.context_mode, seed=req.seed)
            try:
                job = self.service.submit(gen, source=source, name=f"capture bar {span.bar}", capture=info)
            except BaseException:
                path.unlink(missing_ok=True)       # refused: leave nothing behind
                raise
        counts = self.capture.counts
        log.info("capture %s: %s over bars %d-%d (%d samples from %d, %.2f bpm, error %.2f ms, %d dropout(s); "
                 "the input's overflows/underflows since the start: %d/%d)", job_id, req.instrument, span.bar,
                 span.bar + span.bars - 1, span.length, span.start, span.bpm, info["mapping_error_ms"], len(dropouts),
                 counts["input_overflow"], counts["input_underflow"])
        self.send(P.CAPTURE_TAKEN, job.id, span.bar, span.bars, span.start, float(span.bpm), len(dropouts),
                  float(info["mapping_error_ms"]))
        return job

    def on_midi(self, message: list[int], t: float) -> None:
        """MidiClockInput listener: trigger notes start a capture, the bars controller sets N.

        The capture runs on a thread of its own: it may wait for the newest audio, and the MIDI
        polling thread must keep draining the clock meanwhile."""
        kind, number, value = message[0] & 0xF0, message[1], message[2]
        if kind == 0xB0 and self.bars_cc is not None and number == self.bars_cc:
            self.bars = min(max(value, 1), MAX_BARS)
            log.info("capture length set to %d bars (MIDI CC %d)", self.bars, number)
        elif kind == 0x90 and number in self.triggers:
            threading.Thread(target=self._trigger, args=(number, self.bars), name="stage-bridge-capture",
                             daemon=True).start()

    def _trigger(self, note: int, bars: int) -> None:
        try:
            self.submit(P.CaptureRequest(P.check_instrument(self.triggers[note], self.instruments), bars),
                        source="capture")
        except P.ProtocolError as e:           # no job exists yet: the refusal goes out like OSC's
            log.info("refused MIDI capture trigger (note %d): %s", note, e)
            self.send(P.ERROR, "", e.code, P.clip(str(e), P.MAX_MESSAGE_CHARS))
        except Exception:
            log.exception("MIDI capture trigger (note %d) failed", note)


    def finished(self, job: Job) -> None:
        """A job is done: jam playback (if any) loops a capture job's first take from the next bar
        line that is a multiple of its length."""
        if self.playback is None or not job.spec.capture or not job.outputs:
            return
        try:
            take = load_audio(job.outputs[0])
        except StageError as e:
            log.warning("jam playback: cannot read %s: %s", job.outputs[0], e)
            return
        self.playback.play(take.samples, take.sample_rate,
                           job.spec.bars * ticks_per_bar(job.spec.beats_per_bar, job.spec.beat_unit))
        log.info("jam playback: %s from the next bar line that is a multiple of %d bar(s)", job.outputs[0],
                 job.spec.bars)


def capture_info(span: BarSpan, sample_rate: int, dropouts: Sequence[Dropout]) -> dict:
    """StemJob.capture: JSON-ready, and what the sidecar says of the capture."""
    return {"bar": span.bar, "bars": span.bars, "start_sample": span.start, "length": span.length,
            "sample_rate": sample_rate, "mapping_error_ms": round(1000.0 * span.error / sample_rate, 3),
            "dropouts": len(dropouts), "dropout_samples": [d.sample - span.start for d in dropouts]}
