"""Audio plumbing: files, resampling, musical time, the STAGE click, the model context and loudness.

Pure numpy/soundfile/soxr/pyloudnorm code with no model or torch dependency, so it can be tested and used
(for example by the DAW daemon) without loading anything heavy.
"""

from stage_bridge.audio.click import click_onsets, click_track, click_waveform
from stage_bridge.audio.context import CONTEXT_MODES, build_context
from stage_bridge.audio.io import (
    SUPPORTED_FORMATS,
    Audio,
    is_silent,
    load_audio,
    to_mono,
    write_audio_atomic,
)
from stage_bridge.audio.length import fit_length
from stage_bridge.audio.loudness import (
    DEFAULT_OFFSET_LU,
    LoudnessMatch,
    match_loudness,
    measure_lufs,
    validate_loudness_offset,
)
from stage_bridge.audio.resample import resample
from stage_bridge.audio.timing import (
    bar_seconds,
    bars_to_samples,
    bars_to_seconds,
    beat_samples,
    beat_seconds,
    beat_times,
    seconds_to_samples,
    validate_tempo,
)

__all__ = [
    "CONTEXT_MODES",
    "DEFAULT_OFFSET_LU",
    "LoudnessMatch",
    "SUPPORTED_FORMATS",
    "Audio",
    "bar_seconds",
    "bars_to_samples",
    "bars_to_seconds",
    "beat_samples",
    "beat_seconds",
    "beat_times",
    "build_context",
    "click_onsets",
    "click_track",
    "click_waveform",
    "fit_length",
    "is_silent",
    "load_audio",
    "match_loudness",
    "measure_lufs",
    "resample",
    "seconds_to_samples",
    "to_mono",
    "validate_loudness_offset",
    "validate_tempo",
    "write_audio_atomic",
]
