"""Speed and pitch augmentation, applied identically to every stem of a training pair.

STAGE augments with Rubber Band, each with p = 0.5 (data/stemmed_dataset.py `__getitem__`): a time
ratio drawn uniformly from [0.8, 1.2] and rounded to two decimals, and an integer pitch shift
uniformly in [-4, +4] semitones; the dataset draws the same (`StemPairDataset.plan`).
``Augmentation.speed`` is the playback speed, the inverse of Rubber Band's time ratio.

Keeping stems aligned: all stems of a window are stretched in ONE call, as the channels of one
multichannel buffer. Rubber Band stretches every channel with the same time map, so a
transient shared by the target and the context lands on the same output sample in both
(stretching them separately would not: its transient-aware, non-uniform time map depends on
the signal). Beat times follow the nominal map ``t_out = (t_in - start) / speed``; clicks are
synthesised after stretching at those times, so they stay sharp.

Backends:
- ``"rubberband"``: `pedalboard.time_stretch` (Rubber Band R3 engine, high quality, offline,
  formants preserved). Used whenever pedalboard can be imported. Note: pedalboard and Rubber
  Band are GPL-3.0 licensed, so pedalboard is an optional dependency of stage-bridge.
- ``"phase-vocoder"``: the fallback, pure numpy/soxr. A phase vocoder (1024-point Hann STFT,
  hop 256, i.e. 32 ms / 8 ms at 32 kHz) stretches by ``speed / 2**(semitones/12)`` and soxr
  then resamples by ``2**(semitones/12)``, giving the requested speed and pitch. All channels
  share one linear time map, so stems stay aligned, but attacks are smeared over about +-15 ms
  and the sound is "phasier" than Rubber Band: acceptable for augmentation, not for listening.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import soxr

from stage_bridge.audio import fit_length
from stage_bridge.errors import BadArgument

SPEED_RANGE = (0.8, 1.2)  # Rubber Band time ratios STAGE draws from
PITCH_RANGE = 4
BACKENDS = ("auto", "rubberband", "phase-vocoder")


@dataclass(frozen=True)
class Augmentation:
    """``speed`` > 1 plays faster (a window then covers ``speed`` times more source audio);
    ``semitones`` shifts the pitch."""

    speed: float = 1.0
    semitones: int = 0

    @property
    def identity(self) -> bool:
        return self.speed == 1.0 and self.semitones == 0


@functools.lru_cache(maxsize=None)
def rubberband_available() -> bool:
    try:
        import pedalboard  # noqa: F401
    except ImportError:
        return False
    return hasattr(pedalboard, "time_stretch")


def resolve_backend(backend: str = "auto") -> str:
    """``"auto"`` -> Rubber Band when pedalboard is installed, else the phase vocoder."""
    if backend not in BACKENDS:
        raise BadArgument(f"Unknown stretch backend {backend!r}; choose one of: {', '.join(BACKENDS)}.")
    if backend == "auto":
        return "rubberband" if rubberband_available() else "phase-vocoder"
    if backend == "rubberband" and not rubberband_available():
        raise BadArgument("The 'rubberband' stretch backend needs pedalboard: pip install pedalboard.")
    return backend


def stretch(audio: np.ndarray, sr: int, speed: float = 1.0, semitones: float = 0.0,
            backend: str = "auto") -> np.ndarray:
    """Time-stretch and pitch-shift ``(channels, n)`` (or 1-D) float audio, all channels alike.

    Returns float32 with the same layout and exactly ``round(n / speed)`` samples.
    """
    x = np.asarray(audio, dtype=np.float32)
    mono = x.ndim == 1
    if mono:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"expected 1-D or (channels, n) audio, got shape {x.shape}")
    if not (speed > 0 and math.isfinite(speed)):
        raise ValueError(f"speed must be a positive number, got {speed!r}")
    n_out = int(round(x.shape[1] / speed))
    if speed == 1.0 and semitones == 0:
        y = x.copy()
    elif resolve_backend(backend) == "rubberband":
        import pedalboard

        y = pedalboard.time_stretch(np.ascontiguousarray(x), float(sr), stretch_factor=float(speed),
                                    pitch_shift_in_semitones=float(semitones), high_quality=True)
    else:
        y = _vocoder(x, sr, speed, semitones)
    y = fit_length(np.asarray(y, dtype=np.float32), n_out)
    return y[0] if mono else y


def window_times(times, start_s: float, span_s: float, speed: float) -> np.ndarray:
    """Source times in ``[start_s, start_s + span_s)`` mapped into a stretched window."""
    t = np.asarray(times if times is not None else [], dtype=np.float64).reshape(-1)
    t = t[(t >= start_s) & (t < start_s + span_s)]
    return (t - start_s) / speed


# -- fallback ----------------------------------------------------------------------------------

def _vocoder(x: np.ndarray, sr: int, speed: float, semitones: float) -> np.ndarray:
    factor = 2.0 ** (semitones / 12.0)
    y = _pv_stretch(x, speed / factor)
    if factor != 1.0:
        y = soxr.resample(np.ascontiguousarray(y.T), sr * factor, sr, quality="HQ").T
    return y


def _pv_stretch(x: np.ndarray, rate: float, n_fft: int = 1024, hop: int = 256) -> np.ndarray:
    """Phase-vocoder time stretch of (C, n) audio by ``rate`` (> 1: shorter), channels alike."""
    if rate == 1.0:
        return x.copy()
    c, n = x.shape
    window = np.hanning(n_fft + 1)[:-1]
    pad = np.pad(x, ((0, 0), (n_fft // 2, n_fft // 2 + hop)))
    n_frames = 1 + (pad.shape[1] - n_fft) // hop
    idx = np.arange(n_frames)[:, None] * hop + np.arange(n_fft)[None, :]
    spec = np.fft.rfft(pad[:, idx] * window, axis=-1)  # (C, frames, bins)
    steps = np.arange(0.0, n_frames - 1, rate)
    lo = steps.astype(int)
    frac = (steps - lo)[None, :, None]
    mag = (1 - frac) * np.abs(spec[:, lo]) + frac * np.abs(spec[:, lo + 1])
    advance = 2 * np.pi * hop * np.arange(spec.shape[-1]) / n_fft
    dphi = np.angle(spec[:, lo + 1]) - np.angle(spec[:, lo]) - advance
    dphi = dphi - 2 * np.pi * np.round(dphi / (2 * np.pi)) + advance
    phase = np.angle(spec[:, :1]) + np.concatenate([np.zeros_like(dphi[:, :1]), np.cumsum(dphi, axis=1)[:, :-1]],
                                                   axis=1)
    frames = np.fft.irfft(mag * np.exp(1j * phase), n_fft, axis=-1) * window
    n_out = (len(steps) - 1) * hop + n_fft
    out = np.zeros((c, n_out))
    norm = np.zeros(n_out)
    for k in range(len(steps)):
        out[:, k * hop : k * hop + n_fft] += frames[:, k]
        norm[k * hop : k * hop + n_fft] += window**2
    out /= np.maximum(norm, 1e-3)
    return out[:, n_fft // 2 :].astype(np.float32)
