"""End to end: `stage-bridge generate` with the tiny-random model, and every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from stage_bridge.cli import main
from stage_bridge.engine import generate as gen_mod
from stage_bridge.engine.generate import StemRequest, render_stem
from stage_bridge.engine.model import StageModel, load_model
from stage_bridge.audio import Audio


def _song(path: Path, seconds: float = 5.0, sr: int = 44100, channels: int = 2) -> Path:
    rng = np.random.default_rng(0)
    sf.write(path, (rng.standard_normal((int(seconds * sr), channels)) * 0.1).astype(np.float32), sr)
    return path


def _gen(tmp_path: Path, *extra: str, context: Path | None = None) -> int:
    args = ["generate", "--instrument", "drums", "--bpm", "120", "--bars", "4", "--model", "tiny-random",
            "--out", str(tmp_path / "out"), "--quiet", "--seed", "3"]
    if context is not None:
        args += ["--context", str(context)]
    return main(args + list(extra))


@pytest.mark.parametrize("sr", [44100, 48000])
def test_wav_in_wav_out_exact_length_rate_and_sidecar(tmp_path, capsys, sr):
    ctx = _song(tmp_path / "verse.wav", sr=sr)
    assert _gen(tmp_path, "--takes", "2", "--prompt", "Genres: Rock. Moods: happy.", context=ctx) == 0
    printed = capsys.readouterr().out.split()
    out = tmp_path / "out"
    assert [Path(p).name for p in printed] == ["verse.drums.120bpm.take1.wav", "verse.drums.120bpm.take2.wav"]
    for k, p in enumerate(printed, start=1):
        data, rate = sf.read(p, always_2d=True)
        assert rate == sr
        assert data.shape[0] == 4 * 4 * 60 * sr // 120  # exactly 4 bars at 120 bpm, to the sample
        meta = json.loads(Path(p).with_suffix(".json").read_text())
        assert meta["model"] == "tiny-random" and meta["random_weights"] is True
        assert meta["seed"] == 3 and meta["take"] == k and meta["bpm"] == 120 and meta["bars"] == 4
        assert meta["prompt"] == "Genres: Rock. Moods: happy." and meta["num_samples"] == data.shape[0]
        assert {"encode_s", "generate_s", "decode_s", "total_s"} <= set(meta["timings"])
    assert not list(out.glob(".*"))  # no temp files left


def test_same_seed_same_audio_and_never_overwrites(tmp_path, capsys):
    ctx = _song(tmp_path / "a.wav")
    assert _gen(tmp_path, context=ctx) == 0
    assert _gen(tmp_path, context=ctx) == 0
    first, second = capsys.readouterr().out.split()
    assert Path(second).name == "a.drums.120bpm.take1-2.wav"
    assert np.array_equal(sf.read(first)[0], sf.read(second)[0])


def test_click_mode_needs_no_context(tmp_path, capsys):
    assert _gen(tmp_path, "--context-mode", "click", "--sample-rate", "48000", "--bpm", "90") == 0
    (path,) = capsys.readouterr().out.split()
    data, rate = sf.read(path)
    assert Path(path).name == "click.drums.90bpm.take1.wav"
    assert rate == 48000 and len(data) == round(4 * 4 * 60 / 90 * 48000)


def test_six_eight_meter_length(tmp_path, capsys):
    ctx = _song(tmp_path / "waltz.wav", sr=48000)
    assert _gen(tmp_path, "--beats-per-bar", "6", "--beat-unit", "8", "--bpm", "90", "--bars", "2",
                "--context-mode", "mix+click", context=ctx) == 0
    (path,) = capsys.readouterr().out.split()
    assert len(sf.read(path)[0]) == 2 * 3 * 60 * 48000 // 90


def _bad(tmp_path, capsys, *args, context=None) -> str:
    assert _gen(tmp_path, *args, context=context) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0]
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())
    return err[0]


def test_bad_inputs_one_line_exit_2_no_files(tmp_path, capsys):
    song = _song(tmp_path / "song.wav")
    assert "does not exist" in _bad(tmp_path, capsys, context=tmp_path / "missing.wav")
    (tmp_path / "notes.wav").write_text("this is not audio")
    assert "notes.wav" in _bad(tmp_path, capsys, context=tmp_path / "notes.wav")
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1), np.float32), 44100)
    _bad(tmp_path, capsys, context=tmp_path / "empty.wav")
    sf.write(tmp_path / "silent.wav", np.zeros((44100, 1), np.float32), 44100)
    assert "silent" in _bad(tmp_path, capsys, context=tmp_path / "silent.wav")
    nan = np.zeros((44100, 1), np.float32)
    nan[100] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 44100, subtype="FLOAT")
    _bad(tmp_path, capsys, context=tmp_path / "nan.wav")
    assert "bpm" in _bad(tmp_path, capsys, "--bpm", "29", context=song)
    assert "bpm" in _bad(tmp_path, capsys, "--bpm", "301", context=song)
    assert "bars" in _bad(tmp_path, capsys, "--bars", "0", context=song)
    assert "'fast' is not a number" in _bad(tmp_path, capsys, "--bpm", "fast", context=song)
    assert "--context" in _bad(tmp_path, capsys)  # mix mode without a context file
    assert "fp32" in _bad(tmp_path, capsys, "--compile", "--precision", "bf16", "--device", "cpu", context=song)


def test_unknown_instrument_without_model(tmp_path, capsys):
    song = _song(tmp_path / "song.wav")
    code = main(["generate", "--instrument", "flute", "--bpm", "120", "--bars", "1", "--context", str(song),
                 "--out", str(tmp_path / "out")])
    assert code == 2 and "unknown instrument" in capsys.readouterr().err


def test_output_dir_not_writable(tmp_path, capsys):
    song = _song(tmp_path / "song.wav")
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    code = main(["generate", "--instrument", "bass", "--bpm", "120", "--bars", "1", "--context", str(song),
                 "--model", "tiny-random", "--out", str(blocker / "sub")])
    err = capsys.readouterr().err
    assert code == 2 and "output folder" in err


def test_weights_missing_says_what_to_get(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("STAGE_BRIDGE_WEIGHTS", str(tmp_path / "weights"))
    song = _song(tmp_path / "song.wav")
    code = main(["generate", "--instrument", "drums", "--bpm", "120", "--bars", "1", "--context", str(song),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "stage-drums.safetensors" in err and str(tmp_path / "weights") in err
    assert not any((tmp_path / "out").iterdir())


def test_console_script_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "stage_bridge.cli", "generate", "--instrument", "drums",
                           "--bpm", "500", "--bars", "2", "--context-mode", "click", "--model", "tiny-random",
                           "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


class _LosslessCodec:
    """Codes are frame indices; decoding looks the frames up again: an identity pipeline that
    exposes any shift or length error in the audio plumbing around the model."""

    sample_rate, hop_length, num_codebooks = 32000, 640, 4

    def __init__(self):
        self.frames = {}

    def frames_for(self, n):
        return -(-n // self.hop_length)

    def encode(self, wav):
        n = wav.shape[-1]
        t = self.frames_for(n)
        padded = torch.nn.functional.pad(wav, (0, t * self.hop_length - n))
        self.frames = {i: padded[0, i * self.hop_length:(i + 1) * self.hop_length] for i in range(t)}
        return torch.arange(t).expand(1, 4, t).clone()

    def decode(self, codes):
        return torch.stack([torch.cat([self.frames[int(i)] for i in row[0]]) for row in codes])


def test_output_is_sample_aligned_with_the_context(monkeypatch):
    """Identity model: the stem must reproduce the context at the same samples."""
    base = load_model("tiny-random", "cpu")
    model = StageModel("identity", base.lm, _LosslessCodec(), None, base.device, True)
    monkeypatch.setattr(gen_mod, "generate_codes",
                        lambda lm, ctx, frames, takes, *a, **k: ctx[None, :, :frames].expand(takes, -1, -1))
    sr = 44100
    t = np.arange(int(8.5 * sr)) / sr
    mix = (0.5 * np.sin(2 * np.pi * 220 * t) * (t % 0.5 < 0.05)).astype(np.float32)  # bursts
    res = render_stem(model, StemRequest(bpm=120, bars=4, context=Audio(mix[None], sr), seed=0,
                                         loudness_offset_lu=None))  # the level as generated
    out = res.takes[0]
    assert len(out) == 4 * 2 * sr
    ref = mix[: len(out)]
    lags = range(-20, 21)
    corr = [float(np.dot(ref[50:-50], np.roll(out, lag)[50:-50])) for lag in lags]
    assert list(lags)[int(np.argmax(corr))] == 0
    assert np.abs(out[1000:-1000] - ref[1000:-1000]).max() < 0.02


def test_real_context_from_shared_folder(tmp_path, capsys, shared_dir):
    """A real MoisesDB mix (32 kHz stereo, 16-bit) through the whole command."""
    ctx = sorted((shared_dir / "contexts").glob("drums_sample*.wav"))[0]
    prompt = ctx.with_name(ctx.stem + "-desc.txt").read_text().strip()
    assert _gen(tmp_path, "--bars", "2", "--bpm", "100", "--prompt", prompt, context=ctx) == 0
    (path,) = capsys.readouterr().out.split()
    data, rate = sf.read(path)
    assert rate == sf.info(str(ctx)).samplerate == 32000
    assert len(data) == 2 * 4 * 60 * 32000 // 100


@pytest.mark.parametrize("preset, want", [(None, "1"), ("0", "0")])
def test_cli_asks_for_huge_pages_before_torch_loads(preset, want):
    """The entry point sets PyTorch's THP switch before torch is imported; a user's value wins."""
    code = ("import os, sys\n"
            "from stage_bridge.cli import prefer_huge_pages\n"
            "prefer_huge_pages()\n"
            "import torch\n"
            "print(os.environ.get('THP_MEM_ALLOC_ENABLE'))\n")
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if preset is not None:
        env["THP_MEM_ALLOC_ENABLE"] = preset
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == want


def test_loudness_offset_and_no_loudness_match(tmp_path, capsys):
    """--loudness-offset sets how far under the context the take lands; --no-loudness-match keeps
    it as generated (the same seed, so the same raw take); both together is a mistake."""
    from stage_bridge.audio.loudness import measure_lufs

    ctx = _song(tmp_path / "song.wav")
    assert _gen(tmp_path, "--bars", "1", "--loudness-offset", "3", context=ctx) == 0
    assert _gen(tmp_path, "--bars", "1", "--no-loudness-match", context=ctx) == 0
    matched, raw = capsys.readouterr().out.split()
    m, r = (json.loads(Path(p).with_suffix(".json").read_text()) for p in (matched, raw))
    (m_audio, rate), r_audio = sf.read(matched, dtype="float32"), sf.read(raw, dtype="float32")[0]
    assert m["loudness_offset_lu"] == 3.0 and m["lufs"] == pytest.approx(m["context_lufs"] - 3.0, abs=0.5)
    assert measure_lufs(m_audio, rate) == pytest.approx(m["lufs"], abs=0.01)
    assert r["loudness_offset_lu"] is None and r["gain_db"] == 0.0 and r["context_lufs"] == m["context_lufs"]
    np.testing.assert_allclose(m_audio, r_audio * 10 ** (m["gain_db"] / 20), rtol=1e-3)  # gain_db: 2 decimals

    assert "not allowed with" in _bad(tmp_path / "x", capsys, "--loudness-offset", "3", "--no-loudness-match",
                                      context=ctx)
    assert "loudness offset must be from 0 to" in _bad(tmp_path / "x", capsys, "--loudness-offset", "99", context=ctx)
    assert "loudness offset" in _bad(tmp_path / "x", capsys, "--loudness-offset", "-2", context=ctx)
