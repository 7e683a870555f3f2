"""How well a take fits the song it was made for: its scores, and the one rule that ranks takes.

Why at generation time: the commonest complaint about stem generators is a part that does not
lock to the song's grid. Scored right after decoding, every take says how well it locks (and a
request may generate more candidates than it keeps, keeping the best: engine/generate.py), so a
musician auditions the best take first and a program can read why it was ranked there.

Per take (`Fit`), against the bar grid the request implies (bpm, meter, first downbeat):
- ``grid_f1``: the F-measure, with the STAGE paper's 70 ms window (audio/tracking.beat_f1, i.e.
  mir_eval's), of the take's beats against the grid's beats. The take's beats come from the
  tracker (audio/tracking.track_beats) told the request's tempo, so it looks for beats at that
  rate and the F-measure asks where the take puts them: on the grid, off it, or drifting.
- ``offset_ms``: the median signed distance (positive: late) from each grid beat matched within
  the window to the take's beat. The tracker hears every attack a little late (its frames are
  ~10 ms long and it marks where the energy has risen); that lag is measured once per request on
  STAGE's own click over the same grid and taken off, so 0 ms means "where the click is heard".
  None when no beat is within the window.
- ``tempo_bpm``: the take's own tempo (quarter notes per minute), from the tracker left free,
  read at the metrical level nearest the request (x2 or /2: a beat tracker cannot tell a
  half-time feel from half the tempo). None when the tracker finds fewer than two beats.
- ``lufs`` and ``context_lufs``: integrated loudness of the take as published and of the context
  mix over the same bars (audio/loudness.measure_lufs; None: silence, or no mix).
- ``true_peak_db``: the peak of the take oversampled to at least 192 kHz (4x at 48 kHz, as
  ITU-R BS.1770-4 Annex 2 asks; soxr's VHQ band-limited interpolation, streamed in blocks so
  memory stays flat), in dBTP; None for digital silence. ``clipping``: the true peak is above
  0 dBTP, so the take would clip once converted to fixed point or played by a converter.
- ``silence_ratio``: the share of the grid's beats (blocks one beat long) whose RMS is under
  -60 dBFS: nothing is heard during that beat. A take that is mostly silent is useless, whatever
  its few hits do; a sparse part that plays something every beat or two is not silent (so the
  block is a beat, not a fixed time: a quarter note at 60 bpm lasts a second).

The score and the ranking rule (`score`, `rank`) are defined here and nowhere else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from stage_bridge.audio.click import click_track
from stage_bridge.audio.io import to_mono
from stage_bridge.audio.timing import beat_times
from stage_bridge.audio.tracking import F1_TOLERANCE_S, beat_f1, track_beats

TRUE_PEAK_MIN_RATE = 192_000  # BS.1770-4 Annex 2: oversample to at least this rate
TRUE_PEAK_BLOCK = 1 << 16  # input samples per streamed block
CLIP_DBTP = 0.0
SILENCE_DBFS = -60.0  # a beat under this RMS is not heard under a mix


@dataclass(frozen=True)
class Grid:
    """The bar grid a request implies: the tempo in quarter notes per minute (DAW convention),
    the meter, and the time of a downbeat in seconds from the take's first sample."""

    bpm: float
    beats_per_bar: int = 4
    beat_unit: int = 4
    offset_s: float = 0.0

    @property
    def beat_rate(self) -> float:
        """Grid beats (1/beat_unit notes) per minute: what a beat tracker counts."""
        return self.bpm * self.beat_unit / 4.0

    @property
    def beat_s(self) -> float:
        return 60.0 / self.beat_rate

    def beats(self, duration_s: float) -> np.ndarray:
        return beat_times(self.bpm, duration_s, self.beats_per_bar, self.beat_unit, self.offset_s)[0]


@dataclass(frozen=True)
class Fit:
    """One take's scores (see the module's docstring for each); None: nothing to measure."""

    grid_f1: float
    offset_ms: float | None
    tempo_bpm: float | None
    lufs: float | None
    context_lufs: float | None
    true_peak_db: float | None
    clipping: bool
    silence_ratio: float
    score: float

    def as_dict(self) -> dict[str, Any]:
        """The sidecar's ``fit`` object: rounded for reading, None as JSON null."""
        def r(x: float | None, digits: int) -> float | None:
            return None if x is None else round(float(x), digits)

        return {"score": r(self.score, 4), "grid_f1": r(self.grid_f1, 4), "offset_ms": r(self.offset_ms, 1),
                "tempo_bpm": r(self.tempo_bpm, 2), "lufs": r(self.lufs, 2), "context_lufs": r(self.context_lufs, 2),
                "true_peak_db": r(self.true_peak_db, 2), "clipping": bool(self.clipping),
                "silence_ratio": r(self.silence_ratio, 4)}


HEARD_ENOUGH = 0.5
"""A take heard at least this share of the time is judged on its grid fit alone (rests are music)."""


def score(grid_f1: float, silence_ratio: float) -> float:
    """The one score, 0 to 1: ``grid_f1``, times a factor that is 1 while the take is heard at
    least `HEARD_ENOUGH` of the time and falls linearly to 0 for a silent take. Why the factor:
    the tracker, told the tempo, keeps counting beats through a silent stretch, so the
    F-measure alone would forgive a take that is mostly silent, which is useless."""
    heard = 1.0 - float(silence_ratio)
    return float(grid_f1) * min(1.0, heard / HEARD_ENOUGH)


def rank(fits: Sequence[Fit]) -> list[int]:
    """Indices of `fits`, best first: higher score; on a tie, the smaller absolute offset (None
    last); then generation order, so the ranking is deterministic."""
    def key(i: int) -> tuple[float, float, int]:
        offset = fits[i].offset_ms
        return -fits[i].score, math.inf if offset is None else abs(offset), i

    return sorted(range(len(fits)), key=key)


def tracker_lag_s(grid: Grid, num_samples: int, sample_rate: int) -> float:
    """How late the tracker hears STAGE's click on `grid` (median, seconds; 0 if it finds none):
    the lag `score_takes` takes off every take's beats."""
    click = click_track(num_samples, sample_rate, grid.bpm, grid.beats_per_bar, grid.beat_unit, grid.offset_s)
    beats = track_beats(click, sample_rate, beats_per_bar=grid.beats_per_bar, bpm=grid.beat_rate, downbeats=False).beats
    signed = _matched_offsets(grid.beats(num_samples / sample_rate), beats)
    return float(np.median(signed)) if signed.size else 0.0


def score_takes(takes: Sequence[np.ndarray], sample_rate: int, grid: Grid, lufs: Sequence[float | None],
                context_lufs: float | None) -> list[Fit]:
    """Every take's `Fit` (in the order given). `takes`: mono or ``(channels, n)`` audio of one
    length; `lufs`: each take's integrated loudness as published (measure_lufs; the engine has
    it from loudness matching, so it is not measured twice)."""
    if not takes:
        return []
    n = np.asarray(takes[0]).shape[-1]
    grid_beats = grid.beats(n / sample_rate)
    lag = tracker_lag_s(grid, n, sample_rate)
    return [_fit(to_mono(take), sample_rate, grid, grid_beats, lag, loud, context_lufs)
            for take, loud in zip(takes, lufs, strict=True)]


def _fit(take: np.ndarray, sr: int, grid: Grid, grid_beats: np.ndarray, lag_s: float, lufs: float | None,
         context_lufs: float | None) -> Fit:
    beats = track_beats(take, sr, beats_per_bar=grid.beats_per_bar, bpm=grid.beat_rate, downbeats=False).beats - lag_s
    f1 = beat_f1(grid_beats, beats)
    signed = _matched_offsets(grid_beats, beats)
    free = track_beats(take, sr, beats_per_bar=grid.beats_per_bar, downbeats=False)
    tempo = _nearest_octave(free.bpm * 4.0 / grid.beat_unit, grid.bpm) if len(free.beats) >= 2 else None
    peak = true_peak_db(take, sr)
    silence = silence_ratio(take, sr, grid.beat_s)
    return Fit(grid_f1=f1, offset_ms=float(np.median(signed)) * 1000.0 if signed.size else None, tempo_bpm=tempo,
               lufs=lufs, context_lufs=context_lufs, true_peak_db=peak,
               clipping=peak is not None and peak > CLIP_DBTP, silence_ratio=silence, score=score(f1, silence))


def _matched_offsets(reference: np.ndarray, events: np.ndarray) -> np.ndarray:
    """Signed seconds from each reference time to its nearest event, where that is within the
    F-measure's window (a beat the F-measure does not match has no meaningful offset)."""
    if reference.size == 0 or events.size == 0:
        return np.zeros(0)
    events = np.sort(events)
    i = np.clip(np.searchsorted(events, reference), 1, max(len(events) - 1, 1))
    left, right = events[i - 1], events[np.minimum(i, len(events) - 1)]
    nearest = np.where(np.abs(left - reference) <= np.abs(right - reference), left, right)
    signed = nearest - reference
    return signed[np.abs(signed) <= F1_TOLERANCE_S]


def _nearest_octave(bpm: float, target: float) -> float | None:
    """`bpm` doubled or halved until it is within a factor sqrt(2) of `target`."""
    if not math.isfinite(bpm) or bpm <= 0:
        return None
    return float(bpm * 2.0 ** round(math.log2(target / bpm)))


def true_peak_db(samples: np.ndarray, sample_rate: int) -> float | None:
    """The true peak of mono `samples` in dBTP (see the module's docstring); None for digital
    silence or no samples."""
    import soxr  # the resampler audio/resample.py uses, here streamed: a whole take at 192 kHz is big

    x = np.asarray(samples, dtype=np.float32)
    if x.size == 0 or not np.any(x):
        return None
    factor = max(1, math.ceil(TRUE_PEAK_MIN_RATE / sample_rate))
    if factor == 1:
        peak = float(np.max(np.abs(x)))
    else:
        stream = soxr.ResampleStream(sample_rate, sample_rate * factor, 1, dtype="float32", quality="VHQ")
        peak = float(np.max(np.abs(x)))  # the samples themselves are on the interpolated curve
        for start in range(0, x.size, TRUE_PEAK_BLOCK):
            block = x[start:start + TRUE_PEAK_BLOCK]
            out = stream.resample_chunk(block, last=start + TRUE_PEAK_BLOCK >= x.size)
            if out.size:
                peak = max(peak, float(out.max()), float(-out.min()))
    return 20.0 * math.log10(peak)


def silence_ratio(samples: np.ndarray, sample_rate: int, block_s: float) -> float:
    """The share of `block_s` blocks of mono `samples` (the last one may be shorter) whose RMS
    is under `SILENCE_DBFS`; 1.0 for no samples."""
    x = np.asarray(samples, dtype=np.float64)
    if x.size == 0:
        return 1.0
    block = max(1, round(block_s * sample_rate))
    pad = -x.size % block
    squares = np.pad(x * x, (0, pad)).reshape(-1, block)
    counts = np.full(squares.shape[0], block, dtype=np.float64)
    counts[-1] = block - pad
    rms_sq = squares.sum(axis=1) / counts
    threshold = 10.0 ** (SILENCE_DBFS / 10.0)  # on the squared RMS
    return float(np.mean(rms_sq < threshold))


def warm_up() -> None:
    """Score two seconds of click once, so that the one-time work of the first scoring in a
    process (importing librosa's tracker and numba compiling it: seconds, tens of seconds on a
    cold cache) is not paid on a take's way to the musician."""
    sr, grid = 22050, Grid(120.0)
    click = click_track(2 * sr, sr, grid.bpm)
    score_takes([click], sr, grid, [None], None)
