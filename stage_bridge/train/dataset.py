"""Training data for STAGE fine-tuning: multitrack songs -> (context codes, target codes) pairs.

Layouts (`discover_songs`):
- MoisesDB: one folder per song (found up to three levels below the root, e.g.
  ``moisesdb/moisesdb_v0.1/<uuid>``) holding ``data.json``::

      {"song": ..., "artist": ..., "genre": "pop",
       "stems": [{"id": ..., "stemName": "drums",
                  "tracks": [{"id": TRACK_ID, "trackType": "kick_drum", "extension": "wav",
                              "type": "audio/x-wav", "has_bleed": false}, ...]}, ...]}

  with the audio of each track at ``<song>/<stemName>/<TRACK_ID>.<extension>``; ``artist`` is
  read for the artist-aware split. Optional extra keys we read: ``genres``, ``moods``/``mood``,
  ``bpm``, ``beats``, ``downbeats`` (seconds).
- Plain: the root's sub-folders are songs; each audio file ``SONG/STEM.wav`` is a stem named by
  the file name, each folder ``SONG/STEM/*.wav`` a stem whose tracks are summed. Files named
  mix/mixture/master are not stems. Optional ``SONG/meta.json`` with ``artist``, ``genres``,
  ``moods``, ``bpm``, ``beats``, ``downbeats``.
In both, a ``beats.json`` next to the audio (``{"beats": [...], "downbeats": [...]}``) also
provides beats. Stem names are lower-cased with spaces/hyphens as underscores ("other keys" ->
"other_keys").

A ``labels.json`` at the dataset's root, ``{"SONG": {"genres": [...], "moods": [...]}}`` (SONG: the
song folder's name), adds labels the data lacks (MoisesDB gives only a genre; STAGE's prompts have
genres and moods).

Pairs (`StemPairDataset`) are drawn as STAGE's reference code draws them; see the class. Song
analysis (`analyse_song`, `prepare`: activity per codec frame, beats) is cached per song.
Everything is mono at the codec rate (32 kHz). Context and text dropout belong to the trainer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from stage_bridge.atomic import write_atomic
from stage_bridge.audio import fit_length, load_audio, resample, to_mono
from stage_bridge.audio.tracking import TRACKERS, beat_accents, beat_this_ready, estimate_downbeats, track_beats
from stage_bridge.errors import BadArgument, StageError
from stage_bridge.train.augment import PITCH_RANGE, SPEED_RANGE, Augmentation, resolve_backend, stretch, window_times
from stage_bridge.train.clicks import click_at

log = logging.getLogger("stage_bridge.train")

AUDIO_SUFFIXES = (".wav", ".flac", ".aif", ".aiff", ".ogg")
MIX_NAMES = frozenset({"mix", "mixture", "master", "full_mix"})
LENGTH_TOLERANCE_S = 0.1
WINDOW_S = 10.0  # STAGE's training examples: 10 s target windows
MIN_CONTEXT_S = 5.0  # shortest context prefix of a window
SILENCE_PEAK = 0.01  # a stem is silent in a window whose peak stays below this (stemmed_dataset.py `is_silent`)
EPOCH_EXAMPLES = 10_000  # the reference's n_samples_per_epoch (train_stage_drums.py)
VALID_PER_SONG = 4  # validation windows per song
ANALYSIS_VERSION = 2
TOKENS_VERSION = 2
SPLIT_FILE = "split.json"
SPLITS = ("train", "valid", "test")
SPLIT_MODES = ("hash", "artist", "reference")
REFERENCE_VALID_SONGS = 24  # stemmed_dataset.py N_VALID_SAMPLES: the last 24 songs by name validate
LAYOUTS = ("auto", "moisesdb", "plain")
LABELS_FILE = "labels.json"


class DatasetError(StageError):
    """The training data cannot be used (no songs, no usable windows, unreadable split file)."""

    code = "bad_dataset"


# -- songs -------------------------------------------------------------------------------------

@dataclass
class SongSource:
    """One multitrack song: stem type -> its track files (summed into one stem)."""

    name: str
    folder: Path
    stems: dict[str, list[Path]]
    artist: str | None = None
    genres: list[str] = field(default_factory=list)
    moods: list[str] = field(default_factory=list)
    beats: list[float] | None = None
    downbeats: list[float] | None = None
    bpm: float | None = None  # tempo hint from metadata (used by the beat tracker)
    duration_s: float | None = None  # shortest track, filled in by discover_songs


def normalize_stem(name: str) -> str:
    return "_".join(name.strip().lower().replace("-", " ").split())


def discover_songs(root: Path, layout: str = "auto") -> tuple[list[SongSource], list[str]]:
    """Find the songs under ``root``; returns (usable songs sorted by name, warnings).

    Every song's track files are checked (readable, non-empty, lengths within 0.1 s of each
    other; sample rates may differ, they are resampled). A song with a problem is skipped and a
    warning names the file. Raises `DatasetError` when no usable song is left.
    """
    root = Path(root).expanduser()
    if layout not in LAYOUTS:
        raise BadArgument(f"Unknown dataset layout {layout!r}; choose one of: {', '.join(LAYOUTS)}.")
    if not root.is_dir():
        raise DatasetError(f"The dataset folder {root} does not exist or is not a folder.")
    warnings: list[str] = []
    songs: list[SongSource] = []
    moises = _find_data_json(root) if layout in ("auto", "moisesdb") else []
    if moises:
        candidates = [(folder, _parse_moisesdb) for folder in moises]
    elif layout == "moisesdb":
        raise DatasetError(f"No data.json found under {root}: this is not a MoisesDB-layout dataset.")
    else:
        candidates = [(d, _parse_plain) for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    for folder, parse in candidates:
        try:
            song = parse(folder, root)
            if song is None:
                warnings.append(f"skipped folder {folder}: no audio files in it")
                continue
            _read_sidecar_beats(song)
            song.duration_s = _check_tracks(song)
        except _SkipSong as exc:
            warnings.append(f"skipped song {folder.name}: {exc}")
            continue
        songs.append(song)
    _unique_names(songs)
    songs.sort(key=lambda s: s.name)
    _apply_labels(root, songs, warnings)
    for w in warnings:
        log.warning(w)
    if not songs:
        detail = ("; ".join(warnings[:5]) + (f" (and {len(warnings) - 5} more)" if len(warnings) > 5 else "")
                  if warnings else "no song folders with audio files were found")
        raise DatasetError(f"No usable songs in {root}: {detail}. Expected the MoisesDB layout (folders with "
                           "data.json) or SONG/STEM.wav folders.")
    return songs, warnings


class _SkipSong(Exception):
    pass


def _find_data_json(root: Path, depth: int = 3) -> list[Path]:
    found, level = [], [root]
    for _ in range(depth + 1):
        nxt = []
        for d in level:
            if (d / "data.json").is_file():
                found.append(d)
                continue
            try:
                nxt += [c for c in sorted(d.iterdir()) if c.is_dir() and not c.name.startswith(".")]
            except OSError:
                continue
        level = nxt
    return found


def _parse_moisesdb(folder: Path, root: Path) -> SongSource:
    meta_file = folder / "data.json"
    try:
        data = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _SkipSong(f"{meta_file} is not readable JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("stems"), list):
        raise _SkipSong(f"{meta_file} has no 'stems' list")
    stems: dict[str, list[Path]] = {}
    for stem in data["stems"]:
        if not isinstance(stem, dict) or not isinstance(stem.get("stemName"), str):
            raise _SkipSong(f"{meta_file}: a stem entry has no 'stemName'")
        raw = stem["stemName"]
        name = normalize_stem(raw)
        for track in stem.get("tracks") or []:
            if not isinstance(track, dict) or "id" not in track:
                raise _SkipSong(f"{meta_file}: a track of stem '{raw}' has no 'id'")
            stems.setdefault(name, []).append(_moises_track_path(folder, raw, name, track))
    if not stems:
        raise _SkipSong(f"{meta_file} lists no tracks")
    song = SongSource(name=folder.name, folder=folder, stems=stems)
    _apply_meta(song, data, meta_file)
    return song


def _moises_track_path(folder: Path, raw: str, name: str, track: dict) -> Path:
    ext = str(track.get("extension") or "wav").lstrip(".")
    tid = str(track["id"])
    candidates = [folder / d / f"{tid}.{ext}" for d in dict.fromkeys([raw, name, raw.replace("_", " ")])]
    for path in candidates:
        if path.is_file():
            return path
    matches = sorted(folder.glob(f"*/{tid}.*"))
    if matches:
        return matches[0]
    raise _SkipSong(f"track file {candidates[0]} listed in data.json does not exist")


def _parse_plain(folder: Path, root: Path) -> SongSource | None:
    stems: dict[str, list[Path]] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix.lower() in AUDIO_SUFFIXES:
            name = normalize_stem(entry.stem)
            if name not in MIX_NAMES:
                stems.setdefault(name, []).append(entry)
        elif entry.is_dir():
            files = [f for f in sorted(entry.iterdir()) if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES
                     and not f.name.startswith(".")]
            if files:
                stems.setdefault(normalize_stem(entry.name), []).extend(files)
    if not stems:
        return None  # not a song folder
    song = SongSource(name=folder.name, folder=folder, stems=stems)
    meta_file = folder / "meta.json"
    if meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _SkipSong(f"{meta_file} is not readable JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise _SkipSong(f"{meta_file} must hold a JSON object")
        _apply_meta(song, meta, meta_file)
    return song


def _words(value) -> list[str]:
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else []
    return [str(v).strip() for v in items if str(v).strip()]


def _times(value, source: Path, key: str) -> list[float] | None:
    if value is None:
        return None
    try:
        t = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise _SkipSong(f"{source}: '{key}' must be a list of times in seconds") from None
    if not np.isfinite(t).all() or (t < 0).any() or (np.diff(t) <= 0).any():
        raise _SkipSong(f"{source}: '{key}' must be increasing, finite, non-negative times in seconds")
    return [float(v) for v in t]


def _apply_labels(root: Path, songs: list[SongSource], warnings: list[str]) -> None:
    """Genres and moods from ``root/labels.json`` (keyed by song folder name) where present."""
    path = root / LABELS_FILE
    if not path.is_file():
        return
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(labels, dict):
            raise ValueError("it must hold an object of song name -> labels")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        warnings.append(f"ignored {path}: not readable labels ({exc})")
        log.warning(warnings[-1])
        return
    for song in songs:
        entry = labels.get(song.name, labels.get(song.folder.name))
        if isinstance(entry, dict):
            song.genres = _words(entry.get("genres", entry.get("genre"))) or song.genres
            song.moods = _words(entry.get("moods", entry.get("mood"))) or song.moods


def _apply_meta(song: SongSource, meta: dict, source: Path) -> None:
    artist = meta.get("artist")
    song.artist = str(artist).strip() or None if artist is not None else None
    song.genres = _words(meta.get("genres", meta.get("genre")))
    song.moods = _words(meta.get("moods", meta.get("mood")))
    bpm = meta.get("bpm")
    if bpm is not None:
        if not isinstance(bpm, (int, float)) or isinstance(bpm, bool) or not 20 <= bpm <= 400:
            raise _SkipSong(f"{source}: 'bpm' must be a number between 20 and 400, got {bpm!r}")
        song.bpm = float(bpm)
    song.beats = _times(meta.get("beats"), source, "beats")
    song.downbeats = _times(meta.get("downbeats"), source, "downbeats")


def _read_sidecar_beats(song: SongSource) -> None:
    sidecar = song.folder / "beats.json"
    if song.beats is None and sidecar.is_file():
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _SkipSong(f"{sidecar} is not readable JSON ({exc})") from None
        song.beats = _times(data.get("beats") if isinstance(data, dict) else None, sidecar, "beats")
        song.downbeats = _times(data.get("downbeats") if isinstance(data, dict) else None, sidecar, "downbeats")
    if song.downbeats is not None and song.beats is None:
        song.downbeats = None


def _check_tracks(song: SongSource) -> float:
    """Read every track's header; skip the song on unreadable, empty or mismatched files."""
    lengths: list[tuple[float, Path]] = []
    for files in song.stems.values():
        for path in files:
            try:
                info = sf.info(str(path))
            except (sf.LibsndfileError, RuntimeError, OSError) as exc:
                raise _SkipSong(f"cannot read {path} ({exc})") from None
            if info.frames <= 0 or info.samplerate <= 0:
                raise _SkipSong(f"{path} contains no audio")
            lengths.append((info.frames / info.samplerate, path))
    shortest, longest = min(lengths), max(lengths)
    if longest[0] - shortest[0] >= LENGTH_TOLERANCE_S:
        raise _SkipSong(f"tracks differ in length by {longest[0] - shortest[0]:.2f} s: {longest[1]} is "
                        f"{longest[0]:.2f} s but {shortest[1]} is {shortest[0]:.2f} s")
    return shortest[0]


def _unique_names(songs: list[SongSource]) -> None:
    seen: dict[str, int] = {}
    for s in songs:
        seen[s.name] = seen.get(s.name, 0) + 1
    for s in songs:
        if seen[s.name] > 1:
            s.name = f"{s.folder.parent.name}/{s.folder.name}"


def describe(genres: Sequence[str], moods: Sequence[str], max_items: int = 3) -> str:
    """The text prompt, as STAGE's descriptions: "Genres: Rock, Pop. Moods: happy." ("" if none)."""
    parts = []
    for label, items in (("Genre", genres), ("Mood", moods)):
        items = [i for i in items if i][:max_items]
        if items:
            parts.append(f"{label}{'s' if len(items) > 1 else ''}: {', '.join(items)}.")
    return " ".join(parts)


# -- split -------------------------------------------------------------------------------------

def split_songs(songs: Iterable[SongSource | str], seed: int = 0, valid: float = 0.1,
                test: float = 0.1, mode: str = "hash") -> dict[str, list[str]]:
    """Deterministic song-level train/valid/test split.

    ``hash``: each song goes by a hash of (seed, name) to a bucket in [0, 1): test below
    ``test``, valid below ``test + valid``, train above; a song keeps its split when others are
    added. With 3 or more songs every split with a non-zero share gets at least one song (the
    songs whose hash is nearest are moved).
    ``artist``: the same, by a hash of the artist (songs without one count as their own artist),
    so no artist is in two splits and validation measures generalisation to unheard artists.
    ``reference``: as STAGE's code (data/stemmed_dataset.py): songs sorted by name, the last 24
    validate (at most all but one), the others train, no test songs; results compare with the
    paper's. Pass only songs that have the target stem, as the reference filters first.
    """
    if mode not in SPLIT_MODES:
        raise BadArgument(f"Unknown split {mode!r}; choose one of: {', '.join(SPLIT_MODES)}.")
    if not (0 <= valid < 1 and 0 <= test < 1 and valid + test < 1):
        raise BadArgument(f"valid ({valid}) and test ({test}) shares must be in [0, 1) and sum below 1.")
    group = {(s if isinstance(s, str) else s.name):
             (s if isinstance(s, str) else (s.artist or s.name) if mode == "artist" else s.name) for s in songs}
    names = sorted(group)
    if mode == "reference":
        n_valid = min(REFERENCE_VALID_SONGS, max(0, len(names) - 1))
        return {"train": names[: len(names) - n_valid], "valid": names[len(names) - n_valid:], "test": []}
    units = sorted(set(group.values()))
    bucket = {u: int(hashlib.sha256(f"{seed}\0{u}".encode()).hexdigest()[:16], 16) / 2.0**64 for u in units}
    bounds = {"test": (0.0, test), "valid": (test, test + valid), "train": (test + valid, 1.0)}
    split = {k: [u for u in units if bounds[k][0] <= bucket[u] < bounds[k][1]] for k in SPLITS}
    if len(units) >= 3:
        wanted = [k for k in SPLITS if k == "train" or (valid if k == "valid" else test) > 0]
        for k in wanted:
            if split[k]:
                continue
            donor = max((d for d in SPLITS if d != k and len(split[d]) >= 2), key=lambda d: len(split[d]))
            lo, hi = bounds[k]
            unit = min(split[donor], key=lambda u: (max(lo - bucket[u], bucket[u] - hi, 0.0), u))
            split[donor].remove(unit)
            split[k].append(unit)
    return {k: sorted(n for n in names if group[n] in set(v)) for k, v in split.items()}


def write_split(run_dir: Path, split: dict[str, list[str]]) -> Path:
    """Write ``run_dir/split.json`` atomically (replacing an older one)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {k: sorted(split.get(k, [])) for k in SPLITS}
    path = run_dir / SPLIT_FILE
    write_atomic(path, lambda f: f.write(json.dumps(payload, indent=2).encode()), replace=True)
    return path


def read_split(run_dir: Path) -> dict[str, list[str]]:
    path = Path(run_dir) / SPLIT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path} does not exist: this run has no song split yet.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path} is not a readable split file ({exc}). Delete it to make a new split.") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in SPLITS):
        raise DatasetError(f"{path} must hold 'train', 'valid' and 'test' lists of song names.")
    return {k: [str(n) for n in data[k]] for k in SPLITS}


# -- song analysis (`stage-bridge train prepare`) -----------------------------------------------

@dataclass
class SongAnalysis:
    """What pairs need of a song besides its audio: each stem's loudest sample per codec frame
    (to tell silent windows at frame resolution) and the song's beats and downbeats."""

    key: str  # fingerprint: name, file sizes and mtimes, rate, tracker
    length: int  # samples at the codec rate (the shortest track)
    stems: list[str]  # rows of `peaks`, sorted
    peaks: np.ndarray  # (len(stems), frames) float32: max |sample| of the summed tracks per frame
    beats: np.ndarray  # seconds
    downbeats: np.ndarray
    tracker: str  # "metadata" when the beats came with the data
    tracks: dict[str, list[tuple[Path, int]]]  # stem -> (file, sample rate)


def pick_tracker(name: str = "auto") -> str:
    """"auto": Beat This (what the STAGE paper used) when its package and local checkpoint are
    here, else librosa; a named tracker is used as is."""
    if name == "auto":
        return "beat_this" if beat_this_ready() else "librosa"
    if name not in TRACKERS:
        raise BadArgument(f"Unknown beat tracker {name!r}; choose one of: auto, {', '.join(TRACKERS)}.")
    return name


def analyse_song(src: SongSource, sr: int, hop: int, cache_dir: Path, tracker: str = "librosa") -> SongAnalysis:
    """A song's `SongAnalysis`, from ``cache_dir/analysis`` when it is there (keyed by the files'
    sizes and mtimes, so an edited song is analysed again), else decoded, tracked and cached."""
    tracks: dict[str, list[tuple[Path, int]]] = {}
    stats = []
    for stem in sorted(src.stems):
        for path in src.stems[stem]:
            try:
                info = sf.info(str(path))
                st = path.stat()
            except (sf.LibsndfileError, RuntimeError, OSError) as exc:
                raise DatasetError(f"cannot read {path} ({exc})") from None
            tracks.setdefault(stem, []).append((path, int(info.samplerate)))
            stats.append([stem, path.name, st.st_size, st.st_mtime_ns])
    known = src.beats is not None
    key = _hash({"name": src.name, "files": stats, "sr": sr, "hop": hop, "v": ANALYSIS_VERSION, "bpm": src.bpm,
                 "beats": known, "downbeats": src.downbeats is not None, "tracker": None if known else tracker})
    cached = Path(cache_dir) / "analysis" / f"{key}.npz"
    try:
        with np.load(cached, allow_pickle=False) as z:
            stems, peaks, length = [str(s) for s in z["stems"]], z["peaks"], int(z["length"])
            beats, downbeats, used = z["beats"], z["downbeats"], str(z["tracker"])
    except (FileNotFoundError, OSError, ValueError, KeyError):
        stems, peaks, length, beats, downbeats, used = _analyse_audio(src, tracks, sr, hop, tracker)
        payload = {"stems": np.array(stems), "peaks": peaks, "length": np.array(length), "beats": beats,
                   "downbeats": downbeats, "tracker": np.array(used)}
        cached.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cached, lambda f: np.savez(f, **payload), replace=True)
    if known:  # the data's own beats win; downbeats estimated from the audio when it gives none
        beats = np.asarray(src.beats, dtype=np.float64)
        if src.downbeats is not None:
            downbeats = np.asarray(src.downbeats, dtype=np.float64)
    return SongAnalysis(key, length, stems, peaks, beats, downbeats, used, tracks)


def _analyse_audio(src: SongSource, tracks, sr: int, hop: int, tracker: str):
    lengths = {p: round(sf.info(str(p)).frames * sr / r) for ts in tracks.values() for p, r in ts}
    length = min(lengths.values())
    stems = sorted(tracks)
    frames = -(-length // hop)
    peaks = np.zeros((len(stems), frames), dtype=np.float32)
    mix = np.zeros(length, dtype=np.float64)
    for r, stem in enumerate(stems):
        audio = np.zeros(length, dtype=np.float64)
        for path, rate in tracks[stem]:
            wav = load_audio(path)
            audio += fit_length(resample(to_mono(wav.samples), wav.sample_rate, sr), length)
        mix += audio
        peaks[r] = np.abs(fit_length(audio, frames * hop)).reshape(frames, hop).max(axis=1)
    mix32 = mix.astype(np.float32)
    if src.beats is None:
        found = track_beats(mix32, sr, tracker=tracker, beats_per_bar=None, bpm=src.bpm)
        return stems, peaks, length, found.beats, found.downbeats, found.tracker
    beats = np.asarray(src.beats, dtype=np.float64)
    if src.downbeats is None and len(beats):  # beats given without downbeats: the bar phase from the audio
        meter, phase = estimate_downbeats(beat_accents(mix32, sr, beats))
        return stems, peaks, length, beats, beats[phase::meter], "metadata"
    return stems, peaks, length, beats, np.asarray(src.downbeats or [], dtype=np.float64), "metadata"


def prepare(songs: Sequence[SongSource], sr: int, hop: int, cache_dir: Path, tracker: str = "auto",
            progress: bool = True, rank: int = 0, world: int = 1) -> tuple[list[str], list[str]]:
    """Analyse every song once (decode, activity, beats) into the cache; resumable: songs already
    analysed are only read. With several processes each takes every world-th song.
    Returns (names analysed or found, warnings about songs that could not be)."""
    tracker = pick_tracker(tracker)
    mine = list(songs)[rank::world]
    done, warnings = [], []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(mine), unit="song", desc="preparing songs", dynamic_ncols=True)
    try:
        for src in mine:
            try:
                analyse_song(src, sr, hop, cache_dir, tracker)
                done.append(src.name)
            except (StageError, OSError, ValueError, RuntimeError) as exc:
                warnings.append(f"skipped song {src.name}: {exc}")
                log.warning(warnings[-1])
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return done, warnings


# -- pairs -------------------------------------------------------------------------------------

@dataclass
class TrainExample:
    """One training pair. ``context`` (K, Tc) codes cover the first Tc frames of the window
    that ``target`` (K, Tt) codes cover; frame t of both is the same instant. Tc = 0: no
    context (the padding STAGE's unconditional branch sees)."""

    context: Tensor
    target: Tensor
    prompt: str
    song: str
    start_s: float  # window start in the (unstretched) song; `StemPairDataset.plan` has the rest


@dataclass(frozen=True)
class PairPlan:
    """Every random choice behind one example (a function of seed, epoch and index)."""

    song: int
    start: int  # window start, samples at the codec rate (a whole number of codec frames)
    aug: Augmentation
    kind: str  # "stems", "click" or "none" (no stem audible and no beat in the context: padding)
    stems: tuple[str, ...]  # the summed context stems ('stems' kind)
    context_samples: int


@dataclass
class RenderedPair:
    """The audio of a pair before encoding (mono, codec rate)."""

    plan: PairPlan
    target: np.ndarray  # (window,) float32
    context: np.ndarray  # (window,) float32: the whole window; the example keeps the first context_samples
    beats: np.ndarray  # click times in the window (seconds), after stretching
    downbeats: np.ndarray


@dataclass
class _Song:
    src: SongSource
    analysis: SongAnalysis
    stems: list[str]  # stem names usable in pairs (target first)
    active: np.ndarray  # (len(stems), frames) bool: the stem is audible in that codec frame

    @property
    def key(self) -> str:
        return self.analysis.key

    @property
    def length(self) -> int:
        return self.analysis.length

    @property
    def beats(self) -> np.ndarray:
        return self.analysis.beats

    @property
    def downbeats(self) -> np.ndarray:
        return self.analysis.downbeats


class StemPairDataset(torch.utils.data.Dataset):
    """(context, target) token pairs for one target instrument, drawn as STAGE draws them
    (giorgioskij/stage data/stemmed_dataset.py, `__getitem__` and `find_good_chunk`):

    - example i is of song ``i % len(songs)`` (songs equally likely, as the reference cycles its
      song list), ``examples_per_epoch`` examples per epoch (the reference's 10,000,
      train_stage_drums.py);
    - speed with p = 0.5, a time ratio r drawn uniformly from [0.8, 1.2] and rounded to two
      decimals (Rubber Band stretches r x longer, so ``Augmentation.speed`` = 1 / r); pitch with
      p = 0.5, integer semitones uniformly in [-4, 4] (0 included), as the reference;
    - a window start, at codec-frame resolution, uniformly among every start where the target
      stem and at least one other stem are audible (peak >= 0.01, the reference's `is_silent`)
      or, for a song with beats, the target and a beat: song tails are used like any other part;
    - context: with p = 0.5 STAGE's click at the beats, else a random non-empty subset of the
      audible other stems summed; cut to a prefix of 5-10 s (the whole window with p = 0.05). A
      click is never silent: when no beat falls in its prefix the stems are used, and when no
      other stem is audible either, the example has no context (padding);
    - ``fixed``: for validation, example i's choices do not depend on the epoch, there is no
      augmentation, ``examples_per_epoch`` defaults to ``per_song`` (4) per usable song and starts are spread
      evenly over each song; its token codes are cached on disk (`cache_dir/tokens`). Training
      examples are encoded when drawn, like the reference's (a random start and a continuous
      stretch are seldom drawn twice, so caching them would only fill the disk).

    ``__getitem__(i)`` depends only on (seed, epoch, i): call `set_epoch` before each epoch.
    Songs are analysed by `analyse_song` (cached; `prepare` fills the cache ahead).
    """

    def __init__(self, songs: Sequence[SongSource], instrument: str, codec, cache_dir: Path,
                 seed: int = 0, augment: bool = True, p_click: float = 0.5, p_full_context: float = 0.05,
                 exclude: Sequence[str] = ("vocals",), p_speed: float = 0.5, p_pitch: float = 0.5,
                 speed_range: tuple[float, float] = SPEED_RANGE, pitch_range: int = PITCH_RANGE,
                 stretch_backend: str = "auto", examples_per_epoch: int | None = None, fixed: bool = False,
                 tracker: str = "auto", silence: float = SILENCE_PEAK, per_song: int = VALID_PER_SONG):
        self.instrument = normalize_stem(instrument)
        self.exclude = frozenset(normalize_stem(e) for e in exclude)
        if self.instrument in self.exclude:
            raise BadArgument(f"The target instrument '{instrument}' is in the excluded stems; remove it from "
                              "the exclusions to train on it.")
        for name, p in (("p_click", p_click), ("p_full_context", p_full_context), ("p_speed", p_speed),
                        ("p_pitch", p_pitch)):
            if not 0 <= p <= 1:
                raise BadArgument(f"{name} must be a probability in [0, 1], got {p}.")
        self.codec = codec
        self.sr = int(codec.sample_rate)
        self.hop = int(codec.hop_length)
        self.window = int(round(WINDOW_S * self.sr))
        self.min_context = int(round(MIN_CONTEXT_S * self.sr))
        self.seed, self.epoch, self.fixed = int(seed), 0, bool(fixed)
        self.augment = augment and not fixed
        self.p_click, self.p_full = p_click, p_full_context
        self.p_speed, self.p_pitch = p_speed, p_pitch
        self.speed_range, self.pitch_range = (float(speed_range[0]), float(speed_range[1])), int(pitch_range)
        self.backend = resolve_backend(stretch_backend) if self.augment else "none"
        self.tracker = pick_tracker(tracker)
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.codec_id = codec_fingerprint(codec)
        self.warnings: list[str] = []
        self.songs: list[_Song] = []
        for src in songs:
            if self.instrument not in src.stems:
                have = ", ".join(sorted(src.stems)) or "none"
                self._warn(f"skipped song {src.name}: it has no '{self.instrument}' stem (stems: {have})")
                continue
            try:
                a = analyse_song(src, self.sr, self.hop, self.cache_dir, self.tracker)
            except (StageError, OSError, ValueError, RuntimeError) as exc:
                self._warn(f"skipped song {src.name}: {exc}")
                continue
            usable = [self.instrument] + [s for s in a.stems if s != self.instrument and s not in self.exclude]
            active = a.peaks[[a.stems.index(s) for s in usable]] >= silence
            song = _Song(src, a, usable, active)
            if not self._starts(song, self.window).size:
                self._warn(f"song {src.name} has no {WINDOW_S:g} s window where '{self.instrument}' and another "
                           f"stem (or a beat) are audible (song length {a.length / self.sr:.1f} s); it adds no "
                           "examples")
                continue
            self.songs.append(song)
        if not self.songs:
            raise DatasetError(f"No usable {WINDOW_S:g} s windows with an audible '{self.instrument}' stem in "
                               f"{len(songs)} song(s)" + (f": {'; '.join(self.warnings[:5])}"
                                                          if self.warnings else "."))
        per_epoch = examples_per_epoch or (per_song * len(self.songs) if fixed else EPOCH_EXAMPLES)
        self.size = int(per_epoch)

    # -- public ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def prompt(self, song: int) -> str:
        src = self.songs[song].src
        return describe(src.genres, src.moods)

    def plan(self, i: int) -> PairPlan:
        """The random choices for example ``i`` of the current epoch (see the class docstring)."""
        si = i % len(self.songs)
        song = self.songs[si]
        rng = np.random.Generator(np.random.PCG64([self.seed, 0 if self.fixed else self.epoch, i]))
        speed, semitones = 1.0, 0
        if self.augment:
            apply_speed, apply_pitch = rng.random() < self.p_speed, rng.random() < self.p_pitch
            lo, hi = self.speed_range
            ratio = round(rng.random() * (hi - lo) + lo, 2) if apply_speed else 1.0
            semitones = int(rng.integers(-self.pitch_range, self.pitch_range + 1)) if apply_pitch else 0
            speed = 1.0 / ratio
        span = round(self.window * speed)
        starts = self._starts(song, span)
        if not starts.size:  # this stretch reaches past the song or into silence: the plain window fits
            speed, span = 1.0, self.window
            starts = self._starts(song, span)
        u = rng.random(5)
        if self.fixed:  # spread evenly over the song: the r-th of this song's examples at quantile (r + 0.5) / n
            r, n = i // len(self.songs), max(1, -(-self.size // len(self.songs)))
            start = int(starts[min(len(starts) - 1, int((r + 0.5) / n * len(starts)))])
        else:
            start = int(starts[int(u[0] * len(starts))])
        n_ctx = self.window
        if u[1] >= self.p_full:
            n_ctx = min(self.window, self.min_context + int(u[2] * (self.window - self.min_context + 1)))
        others = self._active_others(song, start, span)
        clicks = window_times(song.beats, start / self.sr, n_ctx * speed / self.sr, speed)
        kind = "click" if u[3] < self.p_click else "stems"
        if kind == "click" and not clicks.size:
            kind = "stems"  # a click with no beat in the context would be silence, not a context
        if kind == "stems" and not others:
            kind = "click" if clicks.size else "none"
        chosen: tuple[str, ...] = ()
        if kind == "stems":
            k = 1 + int(u[4] * len(others))
            chosen = tuple(sorted(others[j] for j in rng.permutation(len(others))[:k]))
        return PairPlan(si, start, Augmentation(speed, semitones), kind, chosen, n_ctx if kind != "none" else 0)

    def __getitem__(self, i: int) -> TrainExample:
        if not 0 <= i < len(self):
            raise IndexError(i)
        last: Exception | None = None
        for attempt in range(min(10, len(self))):
            j = (i + attempt * 7919) % len(self)  # on failure, fall back to another example
            try:
                return self._example(self.plan(j))
            except (StageError, OSError, sf.SoundFileError) as exc:
                last = exc
                song = self.songs[j % len(self.songs)].src.name
                log.warning("training example %d (song %s) failed, using another one: %s", j, song, exc)
        raise DatasetError(f"Could not build a training example near index {i}: {last}")

    def render(self, i: int | PairPlan) -> RenderedPair:
        """The audio of example ``i`` (or of a plan) before encoding; no cache involved."""
        plan = self.plan(i) if isinstance(i, int) else i
        song = self.songs[plan.song]
        span = round(self.window * plan.aug.speed)
        start_s, span_s = plan.start / self.sr, span / self.sr
        beats = window_times(song.beats, start_s, span_s, plan.aug.speed)
        downbeats = window_times(song.downbeats, start_s, span_s, plan.aug.speed)
        # The target and every audible other stem are the channels of one stretch: one time map,
        # so attacks stay aligned (Rubber Band keeps them within a few ms this way; stretching
        # the summed context, or each part alone as the reference does, does not), and the
        # target is the same whichever context is chosen (Rubber Band's channels interact).
        needed = (self.instrument, *self._active_others(song, plan.start, span)) if not plan.aug.identity \
            else (self.instrument, *plan.stems)
        rows = np.stack([self.load_stem(plan.song, s, plan.start, span) for s in needed])
        audio = fit_length(stretch(rows, self.sr, plan.aug.speed, plan.aug.semitones, self.backend), self.window)
        if plan.kind == "click":
            context = click_at(beats, downbeats, self.window, self.sr)
        elif plan.kind == "stems":
            context = audio[[needed.index(s) for s in plan.stems]].sum(axis=0, dtype=np.float64).astype(np.float32)
        else:
            context = np.zeros(self.window, dtype=np.float32)
        return RenderedPair(plan, audio[0], context, beats, downbeats)

    def load_stem(self, song: int, stem: str, start: int, length: int) -> np.ndarray:
        """``length`` samples of one stem (its tracks summed), mono at the codec rate, from
        sample ``start``; zeros past the end of the song."""
        out = np.zeros(length, dtype=np.float64)
        for path, rate in self.songs[song].analysis.tracks[stem]:
            out += _read_segment(path, rate, self.sr, start, length)
        return out.astype(np.float32)

    # -- internals ------------------------------------------------------------------------------

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning(message)

    def _starts(self, song: _Song, span: int) -> np.ndarray:
        """Every window start (samples, whole codec frames) of ``span`` samples inside the song
        where the target and another stem, or the target and a beat, are audible."""
        n = song.active.shape[1]
        w = -(-span // self.hop)
        last = (song.length - span) // self.hop
        if last < 0:
            return np.zeros(0, dtype=np.int64)
        target = _window_any(song.active[0], w)[: last + 1]
        others = (_window_any(song.active[1:].any(axis=0), w)[: last + 1] if song.active.shape[0] > 1
                  else np.zeros(last + 1, dtype=bool))
        beat_frames = np.zeros(n, dtype=bool)
        bf = np.floor(np.asarray(song.beats) * self.sr / self.hop).astype(np.int64)
        beat_frames[bf[(bf >= 0) & (bf < n)]] = True
        beats = _window_any(beat_frames, w)[: last + 1]
        return np.flatnonzero(target & (others | beats)).astype(np.int64) * self.hop

    def _active_others(self, song: _Song, start: int, span: int) -> list[str]:
        a, b = start // self.hop, -(-(start + span) // self.hop)
        return [s for r, s in enumerate(song.stems) if r > 0 and song.active[r, a:b].any()]

    def _example(self, plan: PairPlan) -> TrainExample:
        song = self.songs[plan.song]
        key = None
        if self.fixed:
            key = _hash({"song": song.key, "plan": [plan.start, plan.aug.speed, plan.aug.semitones, plan.kind,
                                                    list(plan.stems), plan.context_samples],
                         "window": self.window, "codec": self.codec_id, "v": TOKENS_VERSION,
                         "beats": _hash(song.beats.tolist()) if plan.kind == "click" else None,
                         "down": _hash(song.downbeats.tolist()) if plan.kind == "click" else None})
            cached = self._cache_get(key)
            if cached is not None:
                return self._to_example(plan, cached[:, :-1], cached[:, -1:])
        pair = self.render(plan)
        target = self.codec.encode(torch.from_numpy(pair.target[None])).detach().to("cpu", torch.long)[0]
        if plan.context_samples:  # the context prefix alone, as STAGE encodes it
            prefix = torch.from_numpy(np.ascontiguousarray(pair.context[: plan.context_samples])[None])
            context = self.codec.encode(prefix).detach().to("cpu", torch.long)[0]
        else:
            context = torch.zeros((target.shape[0], 0), dtype=torch.long)
        if key is not None:
            self._cache_put(key, torch.cat([context, target, torch.full_like(target[:, :1], context.shape[1])], 1))
        return TrainExample(context=context, target=target, prompt=self.prompt(plan.song), song=song.src.name,
                            start_s=plan.start / self.sr)

    def _to_example(self, plan: PairPlan, codes: Tensor, tc: Tensor) -> TrainExample:
        n = int(tc[0, 0])
        song = self.songs[plan.song]
        return TrainExample(context=codes[:, :n].clone(), target=codes[:, n:].clone(), prompt=self.prompt(plan.song),
                            song=song.src.name, start_s=plan.start / self.sr)

    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / "tokens" / key[:2] / f"{key}.npy"

    def _cache_get(self, key: str) -> Tensor | None:
        path = self._cache_path(key)
        try:
            arr = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError):
            log.warning("token cache file %s is unreadable; recomputing it", path)
            return None
        return torch.from_numpy(arr.astype(np.int64))

    def _cache_put(self, key: str, codes: Tensor) -> None:
        arr = codes.numpy()
        arr = arr.astype(np.int16) if arr.max(initial=0) < 2**15 and arr.min(initial=0) >= 0 else arr
        path = self._cache_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # replace: DataLoader workers (or ranks) may encode the same window at the same time
        write_atomic(path, lambda f: np.save(f, arr, allow_pickle=False), replace=True)


def _window_any(flags: np.ndarray, width: int) -> np.ndarray:
    """out[k] = flags[k : k + width].any(), for every k (windows running past the end are cut)."""
    c = np.concatenate([[0], np.cumsum(flags.astype(np.int64))])
    k = np.arange(len(flags))
    return (c[np.minimum(k + width, len(flags))] - c[k]) > 0


# -- helpers -----------------------------------------------------------------------------------

def codec_fingerprint(codec) -> str:
    """Identifies the codec weights so cached tokens are never reused across codecs."""
    h = hashlib.sha256(f"{type(codec).__name__}:{codec.sample_rate}:{codec.hop_length}:"
                       f"{getattr(codec, 'num_codebooks', '')}".encode())
    model = getattr(codec, "model", None)
    if isinstance(model, torch.nn.Module):
        for name, tensor in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _read_segment(path: Path, rate: int, sr: int, start: int, length: int) -> np.ndarray:
    """``length`` float32 mono samples at ``sr`` starting at ``start`` (codec-rate samples) of one
    file; zeros past its end."""
    if rate == sr:
        with sf.SoundFile(str(path)) as f:
            if start >= f.frames:
                return np.zeros(length, dtype=np.float32)
            f.seek(start)
            data = f.read(min(length, f.frames - start), dtype="float32", always_2d=True)
        return fit_length(data.mean(axis=1), length)
    # Read from a frame whose time falls exactly on an output sample, with a margin for the filter.
    g = math.gcd(rate, sr)
    step_in, step_out = rate // g, sr // g
    margin = int(math.ceil(0.05 * sr / step_out))  # in units of step_out output samples
    k0 = max(0, start // step_out - margin)
    out_offset = start - k0 * step_out
    n_out = out_offset + length + margin * step_out
    a = k0 * step_in
    b = a + int(math.ceil(n_out * rate / sr)) + 1
    with sf.SoundFile(str(path)) as f:
        if a >= f.frames:
            return np.zeros(length, dtype=np.float32)
        f.seek(a)
        data = f.read(min(b, f.frames) - a, dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    return fit_length(resample(mono, rate, sr)[out_offset:], length)
