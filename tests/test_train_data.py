"""Training data: song discovery, splits, pair construction, augmentation, token cache."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from stage_bridge.audio import resample, to_mono
from stage_bridge.errors import StageError
from stage_bridge.train import dataset as ds_mod
from stage_bridge.train.augment import rubberband_available, stretch
from stage_bridge.train.dataset import (
    DatasetError,
    StemPairDataset,
    describe,
    discover_songs,
    read_split,
    split_songs,
    write_split,
)

from train_fixtures import make_moisesdb, make_plain, require_fluidsynth

SR = 32000
WINDOW = 10 * SR
MS = SR // 1000


class FakeCodec:
    """Codec stand-in: 4 codebooks of per-frame levels at 50 Hz; counts its calls."""

    sample_rate, hop_length, num_codebooks = SR, 640, 4

    def __init__(self):
        self.calls = 0

    def frames_for(self, n: int) -> int:
        return -(-n // self.hop_length)

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        b, n = wav.shape
        t = self.frames_for(n)
        x = torch.nn.functional.pad(wav.float(), (0, t * self.hop_length - n)).reshape(b, t, self.hop_length)
        level = (x.square().mean(-1).sqrt() * 4000).long().clamp(0, 2047)
        return torch.stack([(level + k) % 2048 for k in range(4)], dim=1)


class CountingCodec:
    """Wraps a real codec and counts `encode` calls."""

    def __init__(self, codec):
        self.inner, self.calls = codec, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, wav):
        self.calls += 1
        return self.inner.encode(wav)


# -- fixtures (rendered once per session) --------------------------------------------------------

@pytest.fixture(scope="session")
def moises(tmp_path_factory):
    require_fluidsynth()
    root = tmp_path_factory.mktemp("moisesdb")
    return root, make_moisesdb(root)


@pytest.fixture(scope="session")
def moises_nobeats(moises, tmp_path_factory):
    src, truth = moises
    root = tmp_path_factory.mktemp("moisesdb_nobeats")
    for t in truth:
        shutil.copytree(t["folder"], root / t["name"])
        meta = json.loads((root / t["name"] / "data.json").read_text())
        meta.pop("beats"), meta.pop("downbeats")
        (root / t["name"] / "data.json").write_text(json.dumps(meta))
    return root, truth


@pytest.fixture(scope="session")
def plain(tmp_path_factory):
    root = tmp_path_factory.mktemp("plain")
    return root, make_plain(root)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_codec():
    from stage_bridge.engine.checkpoints import tiny_random
    from stage_bridge.engine.model import build_model

    return build_model(tiny_random(), torch.device("cpu")).codec


def read_stem(files, start, length):
    """Independent reference: a stem's tracks read whole with soundfile, mono, 32 kHz, summed."""
    out = np.zeros(length)
    for f in files:
        data, sr = sf.read(str(f), dtype="float32", always_2d=True)
        mono = resample(to_mono(data.T), sr, SR)[start : start + length]
        out[: mono.shape[0]] += mono
    return out


def click_starts(context):
    """Sample where each click starts (a click's first sample is sin(0) = 0)."""
    nz = context != 0
    return np.flatnonzero(nz[1:] & ~nz[:-1])  # index k where k+1 is the first non-zero sample


def onsets_near(audio, times_s, reach_s=0.04):
    """For each expected time, where the amplitude envelope first reaches half its local peak."""
    env = np.sqrt(np.convolve(audio.astype(np.float64) ** 2, np.ones(32) / 32, mode="same"))
    out = []
    for t in times_s:
        c = int(t * SR)
        a, b = max(0, c - int(reach_s * SR)), min(len(audio), c + int(reach_s * SR))
        seg = env[a:b]
        out.append(a + int(np.argmax(seg >= 0.5 * seg.max())))
    return np.array(out)


# -- discovery ------------------------------------------------------------------------------------

def test_discover_moisesdb_layout(moises, tmp_path):
    root, truth = moises
    songs, warnings = discover_songs(root)
    assert warnings == []
    assert [s.name for s in songs] == sorted(t["name"] for t in truth)
    by_name = {t["name"]: t for t in truth}
    for song in songs:
        t = by_name[song.name]
        assert set(song.stems) == {"drums", "bass", "piano", "guitar"}
        assert len(song.stems["drums"]) == 2  # kick+snare and hats: summed into one stem later
        assert sorted(song.stems["drums"]) == sorted(t["stems"]["drums"])
        assert song.genres == t["genres"] and song.moods == t["moods"]
        assert song.beats == pytest.approx(t["beats"]) and song.downbeats == pytest.approx(t["downbeats"])
        assert song.duration_s == pytest.approx(24.0)
    # the real dataset nests songs below moisesdb/moisesdb_v0.1/
    nested = tmp_path / "moisesdb"
    nested.mkdir()
    (nested / "moisesdb_v0.1").symlink_to(root, target_is_directory=True)
    assert [s.name for s in discover_songs(nested, layout="moisesdb")[0]] == [s.name for s in songs]


def test_discover_plain_layout(plain):
    root, truth = plain
    songs, warnings = discover_songs(root)
    assert warnings == []
    assert [s.name for s in songs] == ["song00", "song01"]
    assert set(songs[0].stems) == {"drums", "bass", "keys", "vocals"}  # mixture.wav is not a stem
    assert [p.name for p in songs[0].stems["drums"]] == ["kick.wav", "top.wav"]
    assert songs[1].stems["drums"] == [root / "song01" / "drums.wav"]
    assert songs[0].bpm == 120 and songs[0].beats == pytest.approx(truth[0]["beats"])
    assert describe(songs[0].genres, songs[0].moods) == "Genre: electronic. Mood: driving."


def test_prompt_format():
    assert describe(["Rock", "Pop"], ["happy", "sad"]) == "Genres: Rock, Pop. Moods: happy, sad."
    assert describe(["a", "b", "c", "d"], []) == "Genres: a, b, c."
    assert describe([], []) == ""


def test_stems_summed_and_vocals_excluded(plain, shared_cache):
    root, truth = plain
    songs, _ = discover_songs(root)
    ds = StemPairDataset(songs, "drums", FakeCodec(), shared_cache, augment=False, p_click=0.0, examples_per_epoch=8)
    seen = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            plan = ds.plan(i)
            assert plan.stems and set(plan.stems) <= {"bass", "keys"}
            seen.update(plan.stems)
    assert seen == {"bass", "keys"}
    r = ds.render(0)  # song00: drums are two files in drums/, summed
    ref = read_stem(truth[0]["stems"]["drums"], r.plan.start, WINDOW)
    np.testing.assert_allclose(r.target, ref, atol=1e-6)
    with_vocals = StemPairDataset(songs, "drums", FakeCodec(), shared_cache, augment=False, p_click=0.0, exclude=(),
                                  examples_per_epoch=20)
    assert any("vocals" in with_vocals.plan(i).stems for i in range(len(with_vocals)))


# -- bad data -------------------------------------------------------------------------------------

def _write(path, audio, sr=SR):
    sf.write(str(path), audio, sr, subtype="FLOAT")


def test_bad_data_reported_and_skipped(plain, tmp_path):
    src, _ = plain
    root = tmp_path / "data"
    names = ["ok", "garbage", "long_mismatch", "small_mismatch", "bad_meta", "no_drums", "rates", "nan"]
    for name in names:
        shutil.copytree(src / "song01", root / name, ignore=shutil.ignore_patterns("mixture.wav"))
    (root / "garbage" / "drums.wav").write_bytes(b"this is not audio")
    bass, _ = sf.read(str(src / "song01" / "bass.wav"), dtype="float32")
    _write(root / "long_mismatch" / "bass.wav", bass[: -SR // 2])  # 0.5 s short: reported
    _write(root / "small_mismatch" / "bass.wav", bass[: -SR // 20])  # 50 ms short: padded
    (root / "bad_meta" / "meta.json").write_text("{not json")
    (root / "no_drums" / "drums.wav").unlink()
    _write(root / "rates" / "bass.wav", resample(bass, SR, 44100), 44100)
    keys, _ = sf.read(str(src / "song01" / "keys.wav"), dtype="float32")
    keys[1000] = np.nan
    _write(root / "nan" / "keys.wav", keys)
    (root / "empty_folder").mkdir()

    songs, warnings = discover_songs(root)
    assert sorted(s.name for s in songs) == ["nan", "no_drums", "ok", "rates", "small_mismatch"]
    text = "\n".join(warnings)
    assert str(root / "garbage" / "drums.wav") in text
    assert str(root / "long_mismatch" / "bass.wav") in text and "differ in length" in text
    assert str(root / "bad_meta" / "meta.json") in text
    assert str(root / "empty_folder") in text

    ds = StemPairDataset(songs, "drums", FakeCodec(), tmp_path / "cache", augment=False)
    text = "\n".join(ds.warnings)
    assert "no_drums" in text and "no 'drums' stem" in text
    assert str(root / "nan" / "keys.wav") in text
    assert sorted(s.src.name for s in ds.songs) == ["ok", "rates", "small_mismatch"]
    # a resampled or slightly short track reads like the original
    index = {s.src.name: i for i, s in enumerate(ds.songs)}
    ok = ds.load_stem(index["ok"], "bass", WINDOW, WINDOW)
    for name in ("rates", "small_mismatch"):
        other = ds.load_stem(index[name], "bass", WINDOW, WINDOW)
        assert np.max(np.abs(other - ok)) < 2e-2 and np.corrcoef(other, ok)[0, 1] > 0.999


def test_bad_moisesdb_json(moises, tmp_path):
    _, truth = moises
    root = tmp_path / "db"
    for t in truth[:2]:
        shutil.copytree(t["folder"], root / t["name"])
    first, second = root / truth[0]["name"], root / truth[1]["name"]
    meta = json.loads((first / "data.json").read_text())
    meta["stems"][0]["tracks"][0]["id"] = "missing-track"
    (first / "data.json").write_text(json.dumps(meta))
    (second / "data.json").write_text("[]")
    with pytest.raises(DatasetError) as err:
        discover_songs(root)
    assert isinstance(err.value, StageError)
    assert str(first / meta["stems"][0]["stemName"] / "missing-track.wav") in str(err.value)
    assert str(second / "data.json") in str(err.value)


def test_empty_dataset_raises(tmp_path):
    with pytest.raises(DatasetError, match="No usable songs"):
        discover_songs(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        discover_songs(tmp_path / "nope")


# -- split ----------------------------------------------------------------------------------------

def test_split_deterministic_and_complete(tmp_path):
    three = split_songs(["a", "b", "c"], seed=0)
    assert all(len(three[k]) == 1 for k in ("train", "valid", "test"))
    names = [f"song{i:03d}" for i in range(200)]
    split = split_songs(names, seed=3)
    assert split == split_songs(list(reversed(names)), seed=3)
    assert sorted(sum(split.values(), [])) == names
    assert 0.04 < len(split["test"]) / 200 < 0.16 and 0.04 < len(split["valid"]) / 200 < 0.16
    assert split != split_songs(names, seed=4)
    grown = split_songs(names + ["new song"], seed=3)  # adding a song moves no other song
    assert all(set(split[k]) <= set(grown[k]) for k in split)
    assert split_songs(names[:2])["train"]  # two songs: training comes first
    write_split(tmp_path, split)
    assert read_split(tmp_path) == split
    with pytest.raises(DatasetError):
        read_split(tmp_path / "missing")


def test_artist_and_reference_splits():
    from stage_bridge.train.dataset import SongSource

    songs = [SongSource(f"song{i:03d}", None, {}, artist=f"artist{i % 40}") for i in range(200)]
    split = split_songs(songs, seed=1, mode="artist")
    artist_of = {s.name: s.artist for s in songs}
    parts = {k: {artist_of[n] for n in v} for k, v in split.items()}
    assert not (parts["train"] & parts["valid"]) and not (parts["train"] & parts["test"])
    assert not (parts["valid"] & parts["test"]) and all(parts.values())
    assert sorted(sum(split.values(), [])) == sorted(artist_of)
    ref = split_songs(songs, mode="reference")  # STAGE's: the last 24 by name validate
    assert ref["valid"] == [f"song{i:03d}" for i in range(176, 200)] and ref["test"] == []
    assert ref["train"] == [f"song{i:03d}" for i in range(176)]
    assert split_songs(songs[:10], mode="reference")["train"] == ["song000"]  # at least one trains
    with pytest.raises(StageError, match="choose one of"):
        split_songs(songs, mode="nope")


def test_moisesdb_artist_and_labels_file(moises, tmp_path):
    root, truth = moises
    data = tmp_path / "db"
    for t in truth:
        shutil.copytree(t["folder"], data / t["name"])
    labels = {truth[0]["name"]: {"moods": ["melancholic", "calm"], "genres": ["post-rock"]},
              truth[1]["name"]: {"moods": "uplifting"}}
    (data / "labels.json").write_text(json.dumps(labels))
    songs = {s.name: s for s in discover_songs(data)[0]}
    first, second, third = (songs[t["name"]] for t in truth)
    assert first.artist == "Test Artist 0" and second.artist == "Test Artist 1"
    assert describe(first.genres, first.moods) == "Genre: post-rock. Moods: melancholic, calm."
    assert second.moods == ["uplifting"] and second.genres == truth[1]["genres"]  # the data's genre kept
    assert third.moods == truth[2]["moods"]


# -- pairs ----------------------------------------------------------------------------------------

def test_context_is_sum_of_other_nonsilent_stems(moises, shared_cache):
    root, truth = moises
    songs, _ = discover_songs(root)
    by_name = {t["name"]: t for t in truth}
    ds = StemPairDataset(songs, "drums", FakeCodec(), shared_cache, augment=False, p_click=0.0, examples_per_epoch=9)
    sizes, checked = set(), 0
    for epoch in range(6):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            plan = ds.plan(i)
            song = ds.songs[plan.song].src.name
            assert plan.song == i % len(ds.songs)  # songs in turn: each as likely as any other
            assert plan.kind == "stems" and "drums" not in plan.stems and plan.stems
            if song == truth[0]["name"] and plan.start + WINDOW <= 10.5 * SR:
                assert "guitar" not in plan.stems  # silent in that window
            sizes.add(len(plan.stems))
            if epoch == 0:
                r = ds.render(plan)
                ref = sum(read_stem(by_name[song]["stems"][s], plan.start, WINDOW) for s in plan.stems)
                np.testing.assert_allclose(r.context, ref, atol=1e-5)
                drums = read_stem(by_name[song]["stems"]["drums"], plan.start, WINDOW)
                np.testing.assert_allclose(r.target, drums, atol=2e-3)  # one hi-hat track is 44.1 kHz
                checked += 1
    assert checked == len(ds) and sizes >= {1, 2, 3}


def test_random_offsets_cover_song_tails(moises, shared_cache):
    """Window starts are drawn at codec-frame resolution over the whole song: the last 4 s of a
    24 s song (beyond any fixed 10 s grid) are in windows, and starts are spread, not gridded."""
    root, _ = moises
    songs, _ = discover_songs(root)
    ds = StemPairDataset(songs, "bass", FakeCodec(), shared_cache, augment=False, examples_per_epoch=30)
    starts = []
    for epoch in range(10):
        ds.set_epoch(epoch)
        starts += [ds.plan(i).start for i in range(len(ds))]
    starts = np.array(starts)
    assert np.all(starts % 640 == 0) and starts.min() >= 0 and starts.max() <= 14 * SR
    assert np.mean(starts + WINDOW > 20 * SR) > 0.1  # windows reaching into the last 4 s
    assert np.any(starts > 13 * SR)
    assert len(set(starts.tolist())) > 200  # hundreds of different offsets, not 2 per song


def test_click_onsets_on_known_beats(moises, shared_cache):
    root, truth = moises
    songs, _ = discover_songs(root)
    by_name = {t["name"]: t for t in truth}
    ds = StemPairDataset(songs, "bass", FakeCodec(), shared_cache, augment=False, p_click=1.0, examples_per_epoch=6)
    for i in range(len(ds)):
        r = ds.render(i)
        assert r.plan.kind == "click" and r.context.shape == (WINDOW,)
        t = by_name[ds.songs[r.plan.song].src.name]
        start_s = r.plan.start / SR
        known = np.array([b - start_s for b in t["beats"] if start_s <= b < start_s + 10])
        starts = click_starts(r.context)
        assert len(starts) == len(known)
        assert np.max(np.abs(starts - known * SR)) <= MS  # within 1 ms
        down = {round((b - start_s) * SR) for b in t["downbeats"] if start_s <= b < start_s + 10}
        peaks = [np.abs(r.context[s : s + 3200]).max() for s in starts]
        for s, p in zip(starts, peaks):
            assert (p > 0.99) == any(abs(s - d) <= MS for d in down)  # downbeats are doubled (clipped)


def test_a_click_context_is_never_silent(plain, tmp_path):
    """Beats only in the first 8 s of a 24 s song: a click window with no beat in its context
    prefix gets the other stems, and with no other stem audible either, no context at all
    (padding) - never an encoded silent click."""
    src, truth = plain
    root = tmp_path / "data"
    shutil.copytree(src / "song00", root / "song00")
    meta = json.loads((root / "song00" / "meta.json").read_text())
    meta["beats"] = [b for b in truth[0]["beats"] if b < 8.0]
    meta["downbeats"] = [b for b in truth[0]["downbeats"] if b < 8.0]
    (root / "song00" / "meta.json").write_text(json.dumps(meta))
    songs, _ = discover_songs(root)
    ds = StemPairDataset(songs, "drums", FakeCodec(), tmp_path / "cache", augment=False, p_click=1.0,
                         examples_per_epoch=200)
    kinds = {}
    for i in range(len(ds)):
        plan = ds.plan(i)
        prefix_end = plan.start / SR + plan.context_samples / SR
        has_beat = any(plan.start / SR <= b < prefix_end for b in meta["beats"])
        kinds[plan.kind] = kinds.get(plan.kind, 0) + 1
        if plan.kind == "click":
            assert has_beat
            r = ds.render(plan)
            assert np.abs(r.context[: plan.context_samples]).max() > 0.5
        else:
            assert not has_beat and plan.kind == "stems" and plan.stems  # every stem plays throughout here
    assert kinds.get("click") and kinds.get("stems")

    # only the target and a few beats: a window whose prefix holds no beat has no context at all
    solo = tmp_path / "solo"
    (solo / "song00").mkdir(parents=True)
    sparse = [1.0, 2.0, 3.0, 18.0, 19.0]
    (solo / "song00" / "meta.json").write_text(json.dumps({"beats": sparse, "downbeats": [1.0, 18.0]}))
    drums = sum(sf.read(str(f), dtype="float32")[0] for f in truth[0]["stems"]["drums"])
    _write(solo / "song00" / "drums.wav", drums)
    songs, _ = discover_songs(solo)
    only = StemPairDataset(songs, "drums", FakeCodec(), tmp_path / "cache2", augment=False, p_click=1.0,
                           examples_per_epoch=60)
    plans = [only.plan(i) for i in range(len(only))]
    assert {p.kind for p in plans} == {"click", "none"}
    for plan in plans:  # a window must hold a beat (or another stem) to be drawn
        assert any(plan.start / SR <= t < plan.start / SR + 10 for t in sparse)
        ex = only[plans.index(plan)]
        if plan.kind == "none":
            assert ex.context.shape == (4, 0) and plan.context_samples == 0
        else:
            assert ex.context.shape[1] == math.ceil(plan.context_samples / 640)


def test_tracked_beats_cached_and_close(moises_nobeats, tmp_path, monkeypatch):
    root, truth = moises_nobeats
    songs, _ = discover_songs(root)
    assert all(s.beats is None for s in songs)
    ds = StemPairDataset(songs, "bass", FakeCodec(), tmp_path, augment=False, p_click=1.0, examples_per_epoch=3,
                         tracker="librosa")
    by_name = {t["name"]: t for t in truth}
    from stage_bridge.audio.tracking import beat_f1

    for song in ds.songs:
        t = by_name[song.src.name]
        assert beat_f1(t["beats"], song.beats) >= 0.9
        assert beat_f1(t["downbeats"], song.downbeats) >= 0.85  # a real downbeat estimate, not every 4th beat
        assert song.analysis.tracker.startswith("librosa")
    r = ds.render(0)
    assert r.plan.kind == "click" and len(click_starts(r.context)) >= 15

    def boom(*a, **k):
        raise AssertionError("beats must come from the cache")

    monkeypatch.setattr(ds_mod, "track_beats", boom)
    again = StemPairDataset(songs, "bass", FakeCodec(), tmp_path, augment=False, p_click=1.0, tracker="librosa")
    assert all(np.array_equal(a.beats, b.beats) for a, b in zip(ds.songs, again.songs))


def test_prepare_analyses_each_song_once_and_resumes(moises_nobeats, tmp_path, monkeypatch):
    root, truth = moises_nobeats
    songs, _ = discover_songs(root)
    calls = []
    real = ds_mod.track_beats

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(ds_mod, "track_beats", counting)
    done, failed = ds_mod.prepare(songs[:1], SR, 640, tmp_path, "librosa", progress=False)
    assert done == [songs[0].name] and not failed and len(calls) == 1
    # interrupted after one song, run again: only the others are analysed
    done, _ = ds_mod.prepare(songs, SR, 640, tmp_path, "librosa", progress=False)
    assert done == [s.name for s in songs] and len(calls) == len(songs)
    # two processes share the songs: each analyses every other one
    shares = [ds_mod.prepare(songs, SR, 640, tmp_path / "two", "librosa", progress=False, rank=r, world=2)[0]
              for r in (0, 1)]
    assert sorted(shares[0] + shares[1]) == sorted(s.name for s in songs) and not set(shares[0]) & set(shares[1])
    assert len(calls) == 2 * len(songs)
    assert len(list((tmp_path / "analysis").glob("*.npz"))) == len(songs)


def test_lengths_and_prefix_alignment(moises, tiny_codec, tmp_path):
    root, _ = moises
    songs, _ = discover_songs(root)
    codec = CountingCodec(tiny_codec)
    ds = StemPairDataset(songs, "drums", codec, tmp_path, augment=False, p_click=0.5, examples_per_epoch=4)
    k = tiny_codec.num_codebooks
    ex = ds[0]
    plan = ds.plan(0)
    r = ds.render(0)
    assert r.target.shape == (WINDOW,) and ex.target.shape == (k, 500)
    assert 5 * SR <= plan.context_samples <= WINDOW
    assert ex.context.shape == (k, math.ceil(plan.context_samples / 640))
    assert ex.context.dtype == torch.long and ex.target.dtype == torch.long
    assert ex.start_s == plan.start / SR and ex.song == ds.songs[plan.song].src.name
    assert torch.equal(ex.target, tiny_codec.encode(torch.from_numpy(r.target[None]))[0])
    # the context prefix is encoded alone, as STAGE encodes it
    prefix = torch.from_numpy(np.ascontiguousarray(r.context[: plan.context_samples])[None])
    assert torch.equal(ex.context, tiny_codec.encode(prefix)[0])
    assert codec.calls == 2
    full = StemPairDataset(songs, "drums", FakeCodec(), tmp_path, augment=False, p_full_context=1.0,
                           examples_per_epoch=6)
    assert all(full.plan(i).context_samples == WINDOW for i in range(len(full)))
    assert all(full[i].context.shape[1] == 500 for i in range(2))


def test_silent_target_windows_skipped(moises, shared_cache):
    root, truth = moises
    songs, _ = discover_songs(root)
    drums = StemPairDataset(songs, "drums", FakeCodec(), shared_cache, augment=False)
    bass = StemPairDataset(songs, "bass", FakeCodec(), shared_cache, augment=False)
    silent = next(i for i, s in enumerate(drums.songs) if s.src.name == truth[1]["name"])
    first_drum = 10.5 * SR  # the song's drums start here
    starts = drums._starts(drums.songs[silent], WINDOW)
    assert starts.min() + WINDOW > first_drum - 640 and starts.min() + WINDOW <= first_drum + 2 * 640
    assert 0 in bass._starts(bass.songs[silent], WINDOW)
    for epoch in range(5):
        drums.set_epoch(epoch)
        assert all(drums.plan(i).start + WINDOW > first_drum - 640 for i in range(silent, 60, 3))
    with pytest.raises(DatasetError, match="No usable"):
        StemPairDataset(songs, "drums", FakeCodec(), shared_cache, silence=2.0)


def test_validation_set_is_fixed_spread_and_cached(moises, tmp_path):
    root, _ = moises
    songs, _ = discover_songs(root)
    codec = FakeCodec()
    ds = StemPairDataset(songs, "drums", codec, tmp_path, fixed=True, p_click=0.5)
    assert len(ds) == 4 * len(ds.songs) and ds.backend == "none"
    plans = [ds.plan(i) for i in range(len(ds))]
    assert all(p.aug.identity for p in plans)
    for si in range(len(ds.songs)):  # every song, its windows spread over it
        starts = sorted(p.start for p in plans if p.song == si)
        assert len(starts) == 4 and len(set(starts)) == 4 and starts[-1] - starts[0] > 8 * SR
    first = [ds[i] for i in range(len(ds))]
    calls = codec.calls
    assert calls >= len(ds)  # target and context encoded once per example
    ds.set_epoch(1)
    assert [ds.plan(i) for i in range(len(ds))] == plans  # the epoch changes nothing
    second = [ds[i] for i in range(len(ds))]
    assert codec.calls == calls  # no codec call: everything came from the cache
    assert all(torch.equal(a.target, b.target) and torch.equal(a.context, b.context) for a, b in zip(first, second))
    fresh_codec = FakeCodec()
    fresh = StemPairDataset(songs, "drums", fresh_codec, tmp_path, fixed=True, p_click=0.5)
    assert all(torch.equal(fresh[i].target, first[i].target) for i in range(len(fresh)))
    assert fresh_codec.calls == 0
    assert list((tmp_path / "tokens").rglob("*.part")) == []


def test_file_vanishing_mid_run_falls_back_to_another_window(plain, tmp_path, caplog):
    src, _ = plain
    root = tmp_path / "data"
    shutil.copytree(src, root)
    songs, _ = discover_songs(root)
    ds = StemPairDataset(songs, "drums", FakeCodec(), tmp_path / "cache", augment=False, examples_per_epoch=4)
    (root / "song01" / "drums.wav").unlink()
    examples = [ds[i] for i in range(len(ds))]  # never raises
    assert all(ex.song == "song00" for ex in examples)
    assert str(root / "song01" / "drums.wav") in caplog.text


def test_examples_deterministic_per_seed_epoch_index(moises, shared_cache):
    root, _ = moises
    songs, _ = discover_songs(root)
    a = StemPairDataset(songs, "drums", FakeCodec(), shared_cache, seed=5, examples_per_epoch=12)
    b = StemPairDataset(songs, "drums", FakeCodec(), shared_cache, seed=5, examples_per_epoch=12)
    plans = [a.plan(i) for i in range(len(a))]
    assert plans == [b.plan(i) for i in range(len(b))]
    a.set_epoch(1)
    assert plans != [a.plan(i) for i in range(len(a))]
    a.set_epoch(0)
    assert plans == [a.plan(i) for i in range(len(a))]
    c = StemPairDataset(songs, "drums", FakeCodec(), shared_cache, seed=6, examples_per_epoch=12)
    assert plans != [c.plan(i) for i in range(len(c))]
    # augmentation draws as STAGE's: time ratio round(U(0.8, 1.2), 2), pitch randint(-4, 4), each p = 0.5
    draws = []
    for epoch in range(60):
        a.set_epoch(epoch)
        draws += [a.plan(i).aug for i in range(len(a))]
    ratios = [round(1 / d.speed, 2) for d in draws if d.speed != 1.0]
    assert all(abs(1 / d.speed - round(1 / d.speed, 2)) < 1e-9 for d in draws)
    assert min(ratios) >= 0.8 and max(ratios) <= 1.2 and len(set(ratios)) >= 30
    assert {d.semitones for d in draws} == set(range(-4, 5))
    assert 0.4 < np.mean([d.speed != 1.0 for d in draws]) < 0.6
    assert 0.35 < np.mean([d.semitones != 0 for d in draws]) < 0.55  # 0.5 x 8/9: randint(-4, 4) can give 0


# -- augmentation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("ratio, semitones, backend", [(0.8, 3, "auto"), (1.2, -4, "auto"),
                                                      (1.1, 2, "phase-vocoder")])
def test_augmentation_keeps_context_and_target_aligned(plain, shared_cache, ratio, semitones, backend):
    root, truth = plain
    songs, _ = discover_songs(root)
    ds = StemPairDataset(songs, "drums", FakeCodec(), shared_cache, p_click=0.0, p_speed=1.0, p_pitch=1.0,
                         speed_range=(ratio, ratio), pitch_range=abs(semitones), stretch_backend=backend,
                         examples_per_epoch=40)
    plan = next(p for p in (ds.plan(i) for i in range(len(ds))) if p.aug.semitones == semitones)
    speed = 1 / ratio
    assert plan.aug.speed == speed
    r = ds.render(plan)
    assert r.target.shape == r.context.shape == (WINDOW,)
    start_s = plan.start / SR
    beats = [b for b in truth[plan.song]["beats"] if start_s <= b < start_s + round(WINDOW * speed) / SR]
    expected = (np.array(beats) - start_s) / speed
    np.testing.assert_allclose(r.beats, expected)  # beat times follow the stretch
    inner = expected[(expected > 0.1) & (expected < 9.9)]
    tol = 0.012 if ds.backend == "rubberband" else 0.035
    on_target, on_context = onsets_near(r.target, inner), onsets_near(r.context, inner)
    gap = np.abs(on_target - on_context)  # the vocoder fallback smears attacks, so judge its median
    if ds.backend == "rubberband":
        assert np.max(gap) <= 5 * MS
    else:
        assert np.median(gap) <= 15 * MS
    assert np.median(np.abs(on_target - inner * SR)) <= tol * SR
    # clicks are made after stretching: sharp, at the rescaled beats
    click_plan = ds_mod.PairPlan(**{**plan.__dict__, "kind": "click", "stems": ()})
    click = ds.render(click_plan)
    np.testing.assert_allclose(click.target, r.target, atol=1e-6)
    starts = click_starts(click.context)
    assert np.max(np.abs(starts - np.floor(expected * SR))) <= 1


@pytest.mark.parametrize("backend", ["rubberband", "phase-vocoder"])
def test_stretch_backends(backend):
    if backend == "rubberband" and not rubberband_available():
        pytest.skip("pedalboard not installed")
    n = 4 * SR
    t = np.arange(n) / SR
    sine = 0.05 * np.sin(2 * np.pi * 440 * t)
    hits = np.zeros(n)
    for k in range(1, 8):
        i = k * SR // 2
        hits[i : i + 400] = np.exp(-np.arange(400) / 60.0) * np.sign(np.sin(np.arange(400)))
    x = np.stack([hits, hits + sine]).astype(np.float32)
    y = stretch(x, SR, 1.25, 2, backend)
    assert y.shape == (2, round(n / 1.25)) and y.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(y[1] - y[0]))
    peak = np.fft.rfftfreq(y.shape[1], 1 / SR)[np.argmax(spectrum)]
    assert peak == pytest.approx(440 * 2 ** (2 / 12), rel=0.01)
    expected = np.arange(1, 8) * 0.5 / 1.25
    a, b = onsets_near(y[0], expected), onsets_near(y[1], expected)
    gap = np.abs(a - b)  # same time map for every channel (the vocoder smears, so judge its median)
    assert (np.max(gap) if backend == "rubberband" else np.median(gap)) <= 5 * MS
    np.testing.assert_array_equal(stretch(x, SR, 1.0, 0, backend), x)


def test_auto_tracker_is_beat_this_only_when_ready(monkeypatch):
    monkeypatch.setattr(ds_mod, "beat_this_ready", lambda: False)
    assert ds_mod.pick_tracker("auto") == "librosa"
    monkeypatch.setattr(ds_mod, "beat_this_ready", lambda: True)
    assert ds_mod.pick_tracker("auto") == "beat_this"
    assert ds_mod.pick_tracker("librosa") == "librosa"
    with pytest.raises(StageError, match="choose one of"):
        ds_mod.pick_tracker("madmom")
