"""Beats for the click context: a small beat tracker and the STAGE click at arbitrary times.

STAGE's click contexts were built from beat annotations of the full mix. When a dataset gives
no beats we track them ourselves, once per song (the dataset caches the result):

1. Onset strength: log mel-band power spectrogram at 100 frames/s, positive spectral flux
   averaged over bands, DC removed with a leaky differentiator (Ellis 2007).
2. Tempo: autocorrelation of the onset strength weighted by a log-normal prior centred on
   120 bpm (one octave wide), peak refined by parabolic interpolation. A known bpm skips this.
3. Beats: Ellis' dynamic programme. Each frame's score is its onset strength plus the best
   predecessor score penalised by ``tightness * log(interval / period)^2``; the best path is
   backtracked from the strongest last beat and weak beats at either end are trimmed.
4. Refinement: each beat moves to the sharpest transient within 25 ms on a 1 ms energy-flux
   curve, when there is a clear one, so clicks line up with the music to a few milliseconds
   instead of the 10 ms frame grid.

Pure numpy/scipy; around a second for a four-minute song.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.signal import lfilter

from stage_bridge.audio.click import click_waveform

FRAME_RATE = 100.0  # onset-strength frames per second
BPM_RANGE = (40.0, 240.0)
_REFINE_WINDOW_S = 0.025
_FINE_HOP_S = 0.001


def onset_strength(y: np.ndarray, sr: int, n_bands: int = 40) -> tuple[np.ndarray, float]:
    """Onset strength envelope of mono ``y`` and its frame rate (frames per second).

    Frame ``t`` is centred on sample ``t * hop``; the value is the mean positive change of
    log mel-band power from frame ``t - 1`` to ``t``.
    """
    y = np.asarray(y, dtype=np.float32)
    hop = max(1, int(round(sr / FRAME_RATE)))
    n_fft = 1 << int(math.ceil(math.log2(0.032 * sr)))
    padded = np.pad(y, (n_fft // 2, n_fft // 2))
    n_frames = 1 + max(0, (padded.shape[0] - n_fft) // hop)
    window = np.hanning(n_fft).astype(np.float32)
    fb = _mel_filterbank(sr, n_fft, n_bands)
    logmel = np.empty((n_frames, n_bands), dtype=np.float32)
    chunk = 2048
    for a in range(0, n_frames, chunk):
        b = min(n_frames, a + chunk)
        idx = np.arange(a, b)[:, None] * hop + np.arange(n_fft)[None, :]
        spec = np.abs(np.fft.rfft(padded[idx] * window, axis=1)) ** 2
        logmel[a:b] = 10.0 * np.log10(spec @ fb.T + 1e-10)
    logmel = np.maximum(logmel, logmel.max(initial=-100.0) - 80.0)
    flux = np.zeros(n_frames, dtype=np.float64)
    if n_frames > 1:
        flux[1:] = np.maximum(np.diff(logmel, axis=0), 0.0).mean(axis=1)
    flux = lfilter([1.0, -1.0], [1.0, -0.99], flux)  # remove the slowly varying part
    std = flux.std()
    return (flux / std if std > 0 else flux), sr / hop


def estimate_tempo(envelope: np.ndarray, frame_rate: float, prior_bpm: float = 120.0) -> float:
    """Most likely tempo (bpm) of an onset envelope: prior-weighted autocorrelation peak."""
    env = np.asarray(envelope, dtype=np.float64)
    env = env - env.mean()
    max_lag = int(frame_rate * 60.0 / BPM_RANGE[0]) + 2
    if env.shape[0] < 4 or not np.any(env):
        return prior_bpm
    n = 1 << int(math.ceil(math.log2(2 * env.shape[0])))
    spec = np.fft.rfft(env, n)
    ac = np.fft.irfft(spec * np.conj(spec), n)[: min(max_lag + 2, env.shape[0])]
    lags = np.arange(ac.shape[0], dtype=np.float64)
    with np.errstate(divide="ignore"):
        bpm = 60.0 * frame_rate / lags
        weight = np.exp(-0.5 * np.log2(bpm / prior_bpm) ** 2)
    valid = (bpm >= BPM_RANGE[0]) & (bpm <= BPM_RANGE[1])
    score = np.where(valid, ac * weight, -np.inf)
    k = int(np.argmax(score))
    if not np.isfinite(score[k]):
        return prior_bpm
    lag = float(k)
    if 0 < k < ac.shape[0] - 1:  # parabolic interpolation on the raw autocorrelation
        a, b, c = ac[k - 1], ac[k], ac[k + 1]
        denom = a - 2 * b + c
        if denom < 0:
            lag = k + 0.5 * (a - c) / denom
    return float(60.0 * frame_rate / lag)


def track_beats(
    y: np.ndarray, sr: int, bpm: float | None = None, tightness: float = 100.0, refine: bool = True
) -> tuple[np.ndarray, float]:
    """Beat times (seconds, ascending float64) of mono audio ``y`` and the tempo used (bpm).

    ``bpm`` fixes the tempo (e.g. from metadata); otherwise it is estimated. Silent or very
    short audio gives no beats.
    """
    y = np.asarray(y, dtype=np.float32)
    if y.ndim != 1:
        raise ValueError(f"track_beats wants mono 1-D audio, got shape {y.shape}")
    if y.shape[0] < sr or not np.any(y):
        return np.zeros(0), float(bpm or 120.0)
    env, fps = onset_strength(y, sr)
    tempo = float(bpm) if bpm else estimate_tempo(env, fps)
    frames = _dp_beats(env, fps * 60.0 / tempo, tightness)
    times = frames / fps
    if refine and times.size:
        times = _refine(y, sr, times)
    return np.unique(np.clip(times, 0.0, None)), tempo


def downbeats_every(beats: np.ndarray | list[float], beats_per_bar: int = 4) -> np.ndarray:
    """Downbeats when none are known: every ``beats_per_bar``-th beat from the first one."""
    return np.asarray(beats, dtype=np.float64)[::beats_per_bar].copy()


def click_at(beats_s, downbeats_s, num_samples: int, sr: int, freq: float = 1000.0) -> np.ndarray:
    """STAGE's training click for arbitrary beat times: float32, ``num_samples`` long.

    ``librosa.clicks(beats) + librosa.clicks(downbeats)`` clipped to [-1, 1]: the click of
    `stage_bridge.audio.click_waveform` starts at ``floor(t * sr)`` for each time in
    ``[0, num_samples / sr)`` and is cut at the end of the clip.
    """
    click = click_waveform(sr, freq).astype(np.float64)
    out = np.zeros(num_samples, dtype=np.float64)
    for times in (beats_s, downbeats_s):
        for start in click_onset_samples(times, num_samples, sr):
            end = min(start + click.shape[0], num_samples)
            out[start:end] += click[: end - start]
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def click_onset_samples(times_s, num_samples: int, sr: int) -> np.ndarray:
    """Sample indices ``floor(t * sr)`` of the times that fall inside a clip (int64)."""
    t = np.asarray(times_s, dtype=np.float64).reshape(-1)
    idx = np.floor(t * sr).astype(np.int64)
    return idx[(t >= 0) & (idx >= 0) & (idx < num_samples)]


# -- internals ---------------------------------------------------------------------------------

def _mel_filterbank(sr: int, n_fft: int, n_bands: int, fmin: float = 30.0) -> np.ndarray:
    """Triangular filters evenly spaced on the mel scale from ``fmin`` to Nyquist."""
    def mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    edges = hz(np.linspace(mel(fmin), mel(sr / 2.0), n_bands + 2))
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    fb = np.zeros((n_bands, freqs.shape[0]), dtype=np.float32)
    for i in range(n_bands):
        lo, mid, hi = edges[i], edges[i + 1], edges[i + 2]
        rise = (freqs - lo) / max(mid - lo, 1e-9)
        fall = (hi - freqs) / max(hi - mid, 1e-9)
        fb[i] = np.maximum(0.0, np.minimum(rise, fall))
    return fb


def _dp_beats(env: np.ndarray, period: float, tightness: float) -> np.ndarray:
    """Ellis' dynamic-programming beat placement on an onset envelope; frame indices."""
    n = env.shape[0]
    half = int(round(period))
    k = np.arange(-half, half + 1, dtype=np.float64)
    local = np.convolve(env, np.exp(-0.5 * (k * 32.0 / period) ** 2), mode="same")
    offsets = np.arange(-int(round(2 * period)), -max(1, int(round(period / 2))) + 1)
    txcost = -tightness * np.log(-offsets / period) ** 2
    cum = np.zeros(n)
    back = np.full(n, -1, dtype=np.int64)
    thresh = 0.01 * max(local.max(), 0.0)
    started = False
    for t in range(n):
        idx = t + offsets
        ok = idx >= 0
        if ok.any():
            cand = cum[idx[ok]] + txcost[ok]
            j = int(np.argmax(cand))
            best = cand[j]
        else:
            best = -np.inf
        if started and np.isfinite(best):
            cum[t] = local[t] + best
            back[t] = idx[ok][j]
        else:
            cum[t] = local[t]
        started = started or local[t] > thresh
    maxima = np.flatnonzero((cum[1:-1] >= cum[:-2]) & (cum[1:-1] > cum[2:])) + 1
    if maxima.size == 0:
        return np.zeros(0)
    med = np.median(cum[maxima])
    last = int(maxima[cum[maxima] >= 0.5 * med][-1])
    beats = [last]
    while back[beats[-1]] >= 0:
        beats.append(int(back[beats[-1]]))
    beats = np.array(beats[::-1], dtype=np.int64)
    strength = local[beats]
    limit = 0.5 * math.sqrt(float(np.mean(strength**2))) if strength.size else 0.0
    keep = np.flatnonzero(strength >= limit)
    if keep.size == 0:
        return np.zeros(0)
    return beats[keep[0] : keep[-1] + 1].astype(np.float64)


def _refine(y: np.ndarray, sr: int, times: np.ndarray) -> np.ndarray:
    """Move each beat to the sharpest nearby transient (1 ms energy flux), when one stands out."""
    hop = max(1, int(round(_FINE_HOP_S * sr)))
    emphasised = np.diff(y.astype(np.float64), prepend=0.0)  # first difference favours attacks
    n = emphasised.shape[0] // hop
    if n < 3:
        return times
    energy = (emphasised[: n * hop] ** 2).reshape(n, hop).sum(axis=1)
    smooth = np.convolve(energy, np.ones(2) / 2.0, mode="same")
    log_e = 10.0 * np.log10(smooth + 1e-12)
    log_e = np.maximum(log_e, log_e.max() - 80.0)
    flux = np.zeros(n)
    flux[1:] = np.maximum(np.diff(log_e), 0.0)
    # a rise spread over 3 ms still counts as one attack
    flux = np.convolve(flux, np.ones(3), mode="same")
    reach = int(round(_REFINE_WINDOW_S / _FINE_HOP_S))
    context = 10 * reach
    out = times.copy()
    for i, t in enumerate(times):
        c = int(round(t / _FINE_HOP_S))
        a, b = max(0, c - reach), min(n, c + reach + 1)
        if b - a < 3:
            continue
        j = a + int(np.argmax(flux[a:b]))
        around = flux[max(0, c - context) : min(n, c + context + 1)]
        if flux[j] > 3.0 * (around.mean() + 1e-9):
            # the attack begins at the first frame of the rise
            k = j
            while k > a and flux[k - 1] > 0.2 * flux[j]:
                k -= 1
            out[i] = k * _FINE_HOP_S
    return out
