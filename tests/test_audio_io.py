"""Loading, writing and naming audio files (stage_bridge.audio.io, resample, fit_length)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from stage_bridge.audio import (
    Audio,
    fit_length,
    is_silent,
    load_audio,
    resample,
    to_mono,
    write_audio_atomic,
)
from stage_bridge.errors import (
    AudioFileMissing,
    BadArgument,
    EmptyAudio,
    NonFiniteAudio,
    NotAudio,
    OutputNotWritable,
)

SR = 44100


def _stereo(n: int = 4410, sr: int = SR) -> np.ndarray:
    t = np.arange(n) / sr
    return np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.25 * np.sin(2 * np.pi * 220 * t)]).astype(
        np.float32
    )


# --- load_audio ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "fmt", "subtype", "tol"),
    [
        (".wav", "WAV", "PCM_24", 1e-6),
        (".flac", "FLAC", "PCM_24", 1e-6),
        (".aiff", "AIFF", "PCM_16", 1e-4),
        (".ogg", "OGG", "VORBIS", None),  # lossy: only shape, rate and rough level
    ],
)
def test_load_round_trip_formats(tmp_path, suffix, fmt, subtype, tol):
    samples = _stereo()
    path = tmp_path / f"song{suffix}"
    sf.write(path, samples.T, SR, format=fmt, subtype=subtype)

    audio = load_audio(path)

    assert isinstance(audio, Audio)
    assert audio.samples.dtype == np.float32
    assert audio.samples.shape == samples.shape
    assert (audio.channels, audio.num_samples, audio.sample_rate) == (2, samples.shape[1], SR)
    assert audio.duration == pytest.approx(samples.shape[1] / SR)
    if tol is None:
        assert np.max(np.abs(audio.samples[0])) == pytest.approx(0.5, abs=0.1)
    else:
        np.testing.assert_allclose(audio.samples, samples, atol=tol)


def test_load_mono_file_is_two_dimensional(tmp_path):
    path = tmp_path / "mono.wav"
    sf.write(path, np.zeros(100, np.float32), SR)
    assert load_audio(path).samples.shape == (1, 100)


def test_missing_file(tmp_path):
    with pytest.raises(AudioFileMissing, match="does not exist"):
        load_audio(tmp_path / "nope.wav")


def test_directory_is_not_audio(tmp_path):
    with pytest.raises(NotAudio, match="folder"):
        load_audio(tmp_path)


def test_text_file_renamed_wav_is_not_audio(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("these are my lyrics, not audio\n")
    with pytest.raises(NotAudio) as info:
        load_audio(path)
    message = str(info.value)
    assert "notes.wav" in message
    for name in ("WAV", "FLAC", "AIFF", "OGG"):
        assert name in message


def test_empty_wav(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros((0, 2), np.float32), SR)
    with pytest.raises(EmptyAudio):
        load_audio(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_float_wav(tmp_path, bad):
    samples = np.zeros(64, np.float32)
    samples[10] = bad
    path = tmp_path / "broken.wav"
    sf.write(path, samples, SR, subtype="FLOAT")
    with pytest.raises(NonFiniteAudio):
        load_audio(path)


# --- to_mono / is_silent ------------------------------------------------------------------


def test_stereo_to_mono_is_channel_mean():
    stereo = np.array([[1.0, 0.5, -1.0], [0.0, 0.5, 1.0]], np.float32)
    mono = to_mono(stereo)
    assert mono.dtype == np.float32 and mono.shape == (3,)
    np.testing.assert_allclose(mono, [0.5, 0.5, 0.0])


def test_to_mono_of_mono_is_a_copy():
    mono = np.ones(5, np.float32)
    out = to_mono(mono)
    out[0] = 0
    assert mono[0] == 1


def test_is_silent():
    assert is_silent(np.zeros(10, np.float32))
    assert is_silent(np.zeros((2, 0), np.float32))
    assert is_silent(np.full(10, 10 ** (-61 / 20), np.float32))
    assert not is_silent(np.full(10, 10 ** (-59 / 20), np.float32))
    assert not is_silent(np.full(10, 0.01, np.float32), threshold_db=-50.0)
    assert is_silent(np.full(10, 0.01, np.float32), threshold_db=-30.0)


# --- write_audio_atomic -------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_write_then_load_round_trip(tmp_path, suffix):
    samples = _stereo()
    out = write_audio_atomic(tmp_path / f"take1{suffix}", samples, SR)
    assert out == tmp_path / f"take1{suffix}"
    audio = load_audio(out)
    assert audio.sample_rate == SR
    np.testing.assert_allclose(audio.samples, samples, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"take1{suffix}"]


def test_write_mono_1d(tmp_path):
    out = write_audio_atomic(tmp_path / "bass.wav", np.linspace(-1, 1, 50, dtype=np.float32), SR)
    assert load_audio(out).samples.shape == (1, 50)


def test_integer_subtypes_clip_float_does_not(tmp_path):
    hot = np.array([[-2.0, 0.5, 2.0]], np.float32)
    pcm = load_audio(write_audio_atomic(tmp_path / "pcm.wav", hot, SR))
    np.testing.assert_allclose(pcm.samples, [[-1.0, 0.5, 1.0]], atol=1e-6)
    flt = load_audio(write_audio_atomic(tmp_path / "float.wav", hot, SR, subtype="FLOAT"))
    np.testing.assert_array_equal(flt.samples, hot)


def test_write_never_overwrites(tmp_path):
    target = tmp_path / "take1.wav"
    target.write_bytes(b"precious original take")
    with pytest.raises(FileExistsError):
        write_audio_atomic(target, _stereo(), SR)
    assert target.read_bytes() == b"precious original take"
    assert [p.name for p in tmp_path.iterdir()] == ["take1.wav"]


def test_write_never_overwrites_when_target_appears_during_write(tmp_path, monkeypatch):
    """Another process grabs the name between our existence check and the publish."""
    target = tmp_path / "take1.wav"
    real_write = sf.write

    def racing_write(*args, **kwargs):
        real_write(*args, **kwargs)
        target.write_bytes(b"the other writer")

    monkeypatch.setattr(sf, "write", racing_write)
    with pytest.raises(FileExistsError):
        write_audio_atomic(target, _stereo(), SR)
    assert target.read_bytes() == b"the other writer"
    assert [p.name for p in tmp_path.iterdir()] == ["take1.wav"]


def test_temp_file_is_hidden_part_file_in_same_folder(tmp_path, monkeypatch):
    seen = []
    real_link = os.link

    def spy_link(src, dst, *args, **kwargs):
        seen.append((os.fspath(src), os.fspath(dst)))
        return real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "link", spy_link)
    write_audio_atomic(tmp_path / "take1.wav", _stereo(), SR)

    (src, dst), = seen
    src_name = os.path.basename(src)
    assert os.path.dirname(src) == str(tmp_path)
    assert src_name.startswith(".take1.wav") and src_name.endswith(".part")
    assert dst == str(tmp_path / "take1.wav")
    assert [p.name for p in tmp_path.iterdir()] == ["take1.wav"]


def test_falls_back_to_rename_without_hard_links(tmp_path, monkeypatch):
    def no_links(src, dst, *args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    samples = _stereo()
    out = write_audio_atomic(tmp_path / "take1.wav", samples, SR)
    np.testing.assert_allclose(load_audio(out).samples, samples, atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["take1.wav"]


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken_write(*args, **kwargs):
        raise RuntimeError("encoder crashed")

    monkeypatch.setattr(sf, "write", broken_write)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        write_audio_atomic(tmp_path / "take1.wav", _stereo(), SR)
    assert list(tmp_path.iterdir()) == []


def test_disk_full_is_output_not_writable_and_leaves_nothing(tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sf, "write", full_disk)
    with pytest.raises(OutputNotWritable, match="No space left"):
        write_audio_atomic(tmp_path / "take1.wav", _stereo(), SR)
    assert list(tmp_path.iterdir()) == []


def test_missing_output_folder(tmp_path):
    with pytest.raises(OutputNotWritable, match="does not exist"):
        write_audio_atomic(tmp_path / "nowhere" / "take1.wav", _stereo(), SR)


def test_unwritable_output_folder(tmp_path, monkeypatch):
    import tempfile

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(OutputNotWritable, match="Permission denied"):
        write_audio_atomic(tmp_path / "take1.wav", _stereo(), SR)


def test_write_rejects_nan_and_bad_names(tmp_path):
    with pytest.raises(NonFiniteAudio):
        write_audio_atomic(tmp_path / "take1.wav", np.array([0.0, np.nan], np.float32), SR)
    with pytest.raises(BadArgument, match=r"\.wav or \.flac"):
        write_audio_atomic(tmp_path / "take1.mp3", _stereo(), SR)
    with pytest.raises(BadArgument):
        write_audio_atomic(tmp_path / "take1.flac", _stereo(), SR, subtype="FLOAT")
    assert list(tmp_path.iterdir()) == []


# --- resample -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sr_in", "sr_out"), [(44100, 32000), (32000, 44100), (48000, 32000), (22050, 32000)]
)
@pytest.mark.parametrize("n", [0, 1, 999, 44101])
def test_resample_length(sr_in, sr_out, n):
    mono = np.zeros(n, np.float32)
    out = resample(mono, sr_in, sr_out)
    assert out.dtype == np.float32
    assert out.shape == (round(n * sr_out / sr_in),)
    stereo = resample(np.zeros((2, n), np.float32), sr_in, sr_out)
    assert stereo.shape == (2, round(n * sr_out / sr_in))


def test_resample_identity_copies():
    x = np.arange(10, dtype=np.float32)
    y = resample(x, 32000, 32000)
    np.testing.assert_array_equal(x, y)
    assert y is not x


@pytest.mark.parametrize(("sr_in", "sr_out"), [(44100, 32000), (48000, 32000), (22050, 32000)])
def test_resample_keeps_sine_frequency(sr_in, sr_out):
    freq = 1000.0
    t = np.arange(sr_in) / sr_in
    sine = np.stack([np.sin(2 * np.pi * freq * t)] * 2).astype(np.float32)
    out = resample(sine, sr_in, sr_out)
    for channel in out:
        spectrum = np.abs(np.fft.rfft(channel * np.hanning(channel.size)))
        peak_hz = np.argmax(spectrum) * sr_out / channel.size
        assert peak_hz == pytest.approx(freq, abs=2.0)


# --- fit_length ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_fit_length_crops_or_pads_the_end_and_keeps_the_dtype(dtype):
    x = np.arange(1, 6, dtype=dtype)
    np.testing.assert_array_equal(fit_length(x, 3), [1, 2, 3])
    np.testing.assert_array_equal(fit_length(x, 7), [1, 2, 3, 4, 5, 0, 0])
    np.testing.assert_array_equal(fit_length(x, 0), np.zeros(0))
    assert fit_length(x, 3).dtype == fit_length(x, 7).dtype == dtype


def test_fit_length_works_on_the_last_axis_of_multichannel_audio():
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(fit_length(x, 2), [[0, 1], [4, 5]])
    np.testing.assert_array_equal(fit_length(x, 5), [[0, 1, 2, 3, 0], [4, 5, 6, 7, 0]])
    assert fit_length(x.T, 1).flags.c_contiguous


def test_fit_length_never_returns_a_view():
    x = np.ones(4, np.float32)
    for n in (2, 4, 6):
        y = fit_length(x, n)
        y[:] = 5.0
        assert (x == 1.0).all()
