"""Takes arrive loudness-matched to the context: N LU under the mix, never clipping, and the
sidecar says what was done (real audio through pyloudnorm; nothing mocked)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from stage_bridge.audio import Audio
from stage_bridge.audio.loudness import (DEFAULT_OFFSET_LU, MAX_OFFSET_LU, PEAK_CEILING_DBFS, REFERENCE_LUFS,
                                         LoudnessMatch, match_loudness, measure_lufs, validate_loudness_offset)
from stage_bridge.bridge.writer import publish_takes, take_loudness
from stage_bridge.engine.generate import StemRequest, StemResult, render_stem
from stage_bridge.errors import BadArgument

SR = 48000


def sine(amplitude: float, seconds: float = 3.0, freq: float = 997.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def pink(seconds: float = 3.0, level: float = 0.05, seed: int = 0) -> np.ndarray:
    """Pink noise (1/f power): the spectrum of a mix, unlike a sine."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum[1:] /= np.sqrt(np.arange(1, spectrum.size))
    x = np.fft.irfft(spectrum, n)
    return (level * x / np.abs(x).max()).astype(np.float32)


def peak_dbfs(x: np.ndarray) -> float:
    return 20 * math.log10(float(np.abs(x).max()))


# -- measuring -----------------------------------------------------------------------------------

def test_a_997_hz_sine_on_both_speakers_measures_its_level():
    """BS.1770: a 997 Hz sine of peak A dBFS in each of two channels reads A LUFS."""
    for amplitude in (0.5, 0.1):
        stereo = np.stack([sine(amplitude), sine(amplitude)])
        assert measure_lufs(stereo, SR) == pytest.approx(20 * math.log10(amplitude), abs=0.1)


def test_mono_is_measured_as_played_on_both_speakers():
    mono = sine(0.25)
    assert measure_lufs(mono, SR) == pytest.approx(measure_lufs(np.stack([mono, mono]), SR), abs=1e-9)
    assert measure_lufs(mono[None], SR) == pytest.approx(measure_lufs(mono, SR), abs=1e-9)


def test_silence_and_nothing_measure_as_none():
    assert measure_lufs(np.zeros(SR, np.float32), SR) is None
    assert measure_lufs(np.zeros((2, 0), np.float32), SR) is None
    assert measure_lufs(np.full(SR, 1e-6, np.float32), SR) is None  # under the -70 LUFS gate


def test_audio_shorter_than_a_gating_block_is_measured_looped():
    """100 ms of a sine is as loud as 3 s of it (pyloudnorm alone refuses under 400 ms)."""
    long = measure_lufs(sine(0.3), SR)
    for seconds in (0.1, 0.399, 0.01):
        short = measure_lufs(sine(0.3, seconds), SR)
        assert short is not None and math.isfinite(short)
        assert short == pytest.approx(long, abs=0.5)
    assert measure_lufs(np.array([0.5], np.float32), SR) is not None  # one sample is still a level


# -- matching ------------------------------------------------------------------------------------

@pytest.mark.parametrize("offset", [DEFAULT_OFFSET_LU, 0.0, 12.0])
def test_a_take_lands_offset_under_the_context(offset):
    context_lufs = measure_lufs(np.stack([sine(0.1), sine(0.1)]), SR)  # about -20 LUFS
    take = pink(level=0.02)
    out, m = match_loudness(take, SR, context_lufs, offset)
    assert measure_lufs(out, SR) == pytest.approx(context_lufs - offset, abs=0.5)
    assert m.lufs == pytest.approx(measure_lufs(out, SR), abs=1e-9) and m.context_lufs == context_lufs
    assert m.gain_db == pytest.approx(20 * math.log10(float(np.abs(out).max() / np.abs(take).max())), abs=1e-3)
    assert not m.limited and out.dtype == np.float32 and out.shape == take.shape


def test_a_quieter_take_is_raised_and_a_louder_one_lowered():
    context_lufs = -20.0
    _, up = match_loudness(pink(level=0.01), SR, context_lufs, 6.0)
    _, down = match_loudness(pink(level=0.8), SR, context_lufs, 6.0)
    assert up.gain_db > 0 > down.gain_db
    assert up.lufs == pytest.approx(-26.0, abs=0.5) and down.lufs == pytest.approx(-26.0, abs=0.5)


def test_a_spiky_take_is_capped_at_the_peak_ceiling_never_clipping():
    """Quiet noise with a few loud clicks: reaching the target would push the clicks far over 0 dBFS,
    so the gain stops where the peak meets the ceiling, and says so."""
    take = pink(level=0.01)
    take[::SR // 2] = 0.5
    out, m = match_loudness(take, SR, -6.0, 0.0)
    assert m.limited and m.gain_db == pytest.approx(PEAK_CEILING_DBFS - peak_dbfs(take), abs=1e-6)
    assert peak_dbfs(out) <= PEAK_CEILING_DBFS + 1e-5
    assert m.lufs < -6.0 - 0.5  # quieter than asked: the report is what was done, not what was wanted


def test_a_take_already_over_the_ceiling_comes_down_under_it():
    take = pink(level=1.0)  # peak at 0 dBFS, loud
    out, m = match_loudness(take, SR, -3.0, 0.0)  # asks for no more than the context
    assert peak_dbfs(out) <= PEAK_CEILING_DBFS + 1e-5 and m.gain_db < 0


def test_a_silent_take_is_left_alone():
    take = np.zeros(SR, np.float32)
    out, m = match_loudness(take, SR, -14.0, 6.0)
    assert np.array_equal(out, take) and m == LoudnessMatch(None, -14.0, 0.0)


def test_a_very_short_take_is_matched():
    out, m = match_loudness(sine(0.05, 0.05, freq=220.0), SR, -10.0, 6.0)
    assert m.lufs == pytest.approx(-16.0, abs=0.5) and math.isfinite(m.gain_db)


def test_without_context_loudness_takes_match_the_reference():
    _, m = match_loudness(pink(level=0.3), SR, None, DEFAULT_OFFSET_LU)
    assert m.context_lufs is None and m.lufs == pytest.approx(REFERENCE_LUFS - DEFAULT_OFFSET_LU, abs=0.5)


def test_off_keeps_the_take_as_generated_and_still_measures_it():
    take = pink(level=0.9)
    out, m = match_loudness(take, SR, -30.0, None)
    assert out is take and m.gain_db == 0.0 and m.lufs == measure_lufs(take, SR) and m.context_lufs == -30.0


@pytest.mark.parametrize("bad", [-1.0, MAX_OFFSET_LU + 1, float("nan"), float("inf"), True, "6"])
def test_bad_offsets_are_refused_with_what_to_do(bad):
    with pytest.raises(BadArgument, match="loudness offset must be from 0 to .*off"):
        validate_loudness_offset(bad)


@pytest.mark.parametrize("good", [None, 0.0, 6, MAX_OFFSET_LU])
def test_good_offsets_pass(good):
    validate_loudness_offset(good)


# -- in the engine -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    from stage_bridge.engine.model import load_model

    return load_model("tiny-random", "cpu")


def test_render_stem_matches_every_take_to_the_mix_over_the_takes_bars(tiny):
    """The context is quiet for the take's 2 bars (2 s at 120 bpm) and loud after them: the take
    follows the bars it covers, not the whole file."""
    quiet, loud = pink(2.0, level=0.05), pink(4.0, level=0.9, seed=1)
    mix = np.concatenate([quiet, loud])
    res = render_stem(tiny, StemRequest(bpm=120, bars=1, beats_per_bar=4, context=Audio(np.stack([mix, mix]), SR),
                                        takes=2, seed=1, loudness_offset_lu=4.0))
    context_lufs = measure_lufs(np.stack([quiet, quiet]), SR)
    assert len(res.loudness) == len(res.takes) == 2
    for take, m in zip(res.takes, res.loudness):
        assert m.context_lufs == pytest.approx(context_lufs, abs=1e-6)
        assert measure_lufs(take, SR) == pytest.approx(context_lufs - 4.0, abs=0.5)
        assert m.lufs == pytest.approx(measure_lufs(take, SR), abs=1e-6)
        assert peak_dbfs(take) <= PEAK_CEILING_DBFS + 1e-5


def test_render_stem_per_take_gain_is_applied_to_that_take(tiny):
    """The same seed with matching off gives the raw takes: each matched take is its raw take times
    its own reported gain (the tiny model's takes differ in loudness by a few thousandths of a dB,
    so a gain given to the wrong take is still well over the tolerance)."""
    mix = pink(3.0, level=0.3)
    req = dict(bpm=120, bars=1, context=Audio(mix[None], SR), takes=2, seed=7)
    raw = render_stem(tiny, StemRequest(**req, loudness_offset_lu=None))
    matched = render_stem(tiny, StemRequest(**req))
    assert [m.gain_db for m in raw.loudness] == [0.0, 0.0]
    for r, t, m in zip(raw.takes, matched.takes, matched.loudness):
        np.testing.assert_allclose(t, r * 10 ** (m.gain_db / 20), rtol=1e-5, atol=0)


def test_click_mode_has_no_context_loudness(tiny):
    res = render_stem(tiny, StemRequest(bpm=100, bars=1, context_mode="click", sample_rate=SR, seed=2))
    (m,) = res.loudness
    assert m.context_lufs is None and m.lufs == pytest.approx(REFERENCE_LUFS - DEFAULT_OFFSET_LU, abs=0.5)


def test_a_silent_mix_with_the_click_matches_the_reference(tiny):
    silent = Audio(np.zeros((1, 3 * SR), np.float32), SR)
    res = render_stem(tiny, StemRequest(bpm=100, bars=1, context=silent, context_mode="mix+click", seed=2))
    (m,) = res.loudness
    assert m.context_lufs is None and m.lufs == pytest.approx(REFERENCE_LUFS - DEFAULT_OFFSET_LU, abs=0.5)


# -- in the sidecar ------------------------------------------------------------------------------

def test_each_take_gets_its_own_loudness_in_json_without_infinities(tmp_path):
    """A silent take and a matched one from one job: each sidecar has its own numbers, and what
    could not be measured is null (JSON has no inf/NaN)."""
    context_lufs = measure_lufs(pink(level=0.2), SR)
    silent = np.zeros(SR, np.float32)
    matched = [match_loudness(silent, SR, None, 6.0), match_loudness(pink(level=0.01), SR, context_lufs, 6.0)]
    result = StemResult([a for a, _ in matched], SR, SR, seed=0, loudness=[m for _, m in matched])
    paths = publish_takes(tmp_path, "song", "drums", 120.0, result.takes, SR, {"job_id": "j"}, take_loudness(result))
    texts = [p.with_suffix(".json").read_text() for p in paths]
    assert not any(word in text for text in texts for word in ("Infinity", "NaN"))
    first, second = (json.loads(t) for t in texts)
    assert (first["lufs"], first["context_lufs"], first["gain_db"]) == (None, None, 0.0)
    assert second["context_lufs"] == pytest.approx(context_lufs, abs=0.01)
    assert second["lufs"] == pytest.approx(context_lufs - 6.0, abs=0.5) and second["gain_db"] > 0
    assert (first["take"], second["take"]) == (1, 2)
