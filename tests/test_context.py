"""Building the model's conditioning signal (stage_bridge.audio.context)."""

from __future__ import annotations

import numpy as np
import pytest

from stage_bridge.audio import CONTEXT_MODES, build_context, click_track
from stage_bridge.errors import BadArgument

SR = 32000


def _mix(n: int, level: float = 0.5) -> np.ndarray:
    return (level * np.sin(2 * np.pi * 110 * np.arange(n) / SR)).astype(np.float32)


@pytest.mark.parametrize("mode", CONTEXT_MODES)
@pytest.mark.parametrize("mix_len", [SR, 4 * SR, 10 * SR])
def test_every_mode_has_exact_length(mode, mix_len):
    ctx = build_context(mode, 4 * SR, SR, mix=_mix(mix_len), bpm=120)
    assert ctx.dtype == np.float32
    assert ctx.shape == (4 * SR,)


def test_mix_mode_crops_and_pads():
    mix = _mix(3 * SR)
    np.testing.assert_array_equal(build_context("mix", 2 * SR, SR, mix=mix), mix[: 2 * SR])
    padded = build_context("mix", 4 * SR, SR, mix=mix)
    np.testing.assert_array_equal(padded[: 3 * SR], mix)
    assert not padded[3 * SR :].any()


def test_click_mode_is_the_full_level_click_track():
    ctx = build_context("click", 4 * SR, SR, mix=_mix(SR), bpm=100, beats_per_bar=3, offset_s=0.1)
    np.testing.assert_array_equal(ctx, click_track(4 * SR, SR, 100, 3, 4, 0.1))


def test_mix_plus_click_adds_click_at_gain():
    mix = _mix(4 * SR, level=0.1)
    ctx = build_context("mix+click", 4 * SR, SR, mix=mix, bpm=120, click_gain_db=-20.0)
    expected = mix + 0.1 * click_track(4 * SR, SR, 120)
    np.testing.assert_allclose(ctx, expected, atol=1e-6)


def test_mix_plus_click_never_exceeds_full_scale_and_keeps_shape():
    mix = _mix(4 * SR, level=0.95)
    ctx = build_context("mix+click", 4 * SR, SR, mix=mix, bpm=120)
    assert np.max(np.abs(ctx)) == pytest.approx(0.999, abs=1e-6)
    unscaled = mix + 10 ** (-6 / 20) * click_track(4 * SR, SR, 120)
    np.testing.assert_allclose(ctx, unscaled * (0.999 / np.max(np.abs(unscaled))), atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "drums"}, "mix, click, mix\\+click"),
        ({"mode": "mix"}, "needs the song"),
        ({"mode": "mix+click", "bpm": 120}, "needs the song"),
        ({"mode": "click"}, "tempo"),
        ({"mode": "mix+click", "mix": np.zeros(10, np.float32)}, "tempo"),
        ({"mode": "click", "bpm": 400}, "between 30 and 300"),
        (
            {"mode": "mix+click", "mix": np.zeros(10), "bpm": 120, "click_gain_db": float("nan")},
            "Click level",
        ),
    ],
)
def test_errors(kwargs, match):
    with pytest.raises(BadArgument, match=match):
        build_context(num_samples=SR, sample_rate=SR, **kwargs)
