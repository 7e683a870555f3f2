"""Training data for STAGE fine-tuning: multitrack songs -> (context codes, target codes) pairs.

Layouts (`discover_songs`):
- MoisesDB: one folder per song (found up to three levels below the root, e.g.
  ``moisesdb/moisesdb_v0.1/<uuid>``) holding ``data.json``::

      {"song": ..., "artist": ..., "genre": "pop",
       "stems": [{"id": ..., "stemName": "drums",
                  "tracks": [{"id": TRACK_ID, "trackType": "kick_drum", "extension": "wav",
                              "type": "audio/x-wav", "has_bleed": false}, ...]}, ...]}

  with the audio of each track at ``<song>/<stemName>/<TRACK_ID>.<extension>``. Optional extra
  keys we read: ``genres``, ``moods``/``mood``, ``bpm``, ``beats``, ``downbeats`` (seconds).
- Plain: the root's sub-folders are songs; each audio file ``SONG/STEM.wav`` is a stem named by
  the file name, each folder ``SONG/STEM/*.wav`` a stem whose tracks are summed. Files named
  mix/mixture/master are not stems. Optional ``SONG/meta.json`` with ``genres``, ``moods``,
  ``bpm``, ``beats``, ``downbeats``.
In both, a ``beats.json`` next to the audio (``{"beats": [...], "downbeats": [...]}``) also
provides beats. Stem names are lower-cased with spaces/hyphens as underscores ("other keys" ->
"other_keys").

Pairs (`StemPairDataset`), as in the STAGE paper: for each non-silent 10 s window of the target
stem, the context is a random non-empty subset of the other non-silent stems summed, or (with
probability ``p_click``) STAGE's click at the song's beats; the context is a prefix of the window
(5-10 s, the whole window with probability 0.05), sample-aligned with the target. Speed/pitch
augmentation (see `augment`) is applied to all stems of the window together. Everything is mono
at the codec rate (32 kHz). Codec tokens are cached on disk per (song, window, context variant,
augmentation) so later epochs only read small files. Context and text dropout belong to the
trainer.
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
from stage_bridge.errors import BadArgument, StageError
from stage_bridge.train.augment import PITCH_RANGE, SPEED_GRID, Augmentation, resolve_backend, stretch, window_times
from stage_bridge.train.beats import click_at, downbeats_every, track_beats

log = logging.getLogger("stage_bridge.train")

AUDIO_SUFFIXES = (".wav", ".flac", ".aif", ".aiff", ".ogg")
MIX_NAMES = frozenset({"mix", "mixture", "master", "full_mix"})
LENGTH_TOLERANCE_S = 0.1
BLOCK_S = 0.25  # resolution of the per-stem activity map used to find silent windows
WINDOW_S = 10.0  # STAGE's training examples: 10 s target windows, back to back
MIN_CONTEXT_S = 5.0  # shortest context prefix of a window
ANALYSIS_VERSION = 1
TOKENS_VERSION = 1
SPLIT_FILE = "split.json"
SPLITS = ("train", "valid", "test")
LAYOUTS = ("auto", "moisesdb", "plain")


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


def _apply_meta(song: SongSource, meta: dict, source: Path) -> None:
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
    if song.beats is not None and song.downbeats is None:
        song.downbeats = [float(t) for t in downbeats_every(song.beats)]


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
                test: float = 0.1) -> dict[str, list[str]]:
    """Deterministic song-level train/valid/test split.

    Each song goes by a hash of (seed, name) to a bucket in [0, 1): test below ``test``, valid
    below ``test + valid``, train above; a song keeps its split when others are added. With 3
    or more songs every split with a non-zero share gets at least one song (the songs whose
    hash is nearest are moved).
    """
    if not (0 <= valid < 1 and 0 <= test < 1 and valid + test < 1):
        raise BadArgument(f"valid ({valid}) and test ({test}) shares must be in [0, 1) and sum below 1.")
    names = sorted({s if isinstance(s, str) else s.name for s in songs})
    bucket = {n: int(hashlib.sha256(f"{seed}\0{n}".encode()).hexdigest()[:16], 16) / 2.0**64 for n in names}
    bounds = {"test": (0.0, test), "valid": (test, test + valid), "train": (test + valid, 1.0)}
    split = {k: [n for n in names if bounds[k][0] <= bucket[n] < bounds[k][1]] for k in SPLITS}
    if len(names) >= 3:
        wanted = [k for k in SPLITS if k == "train" or (valid if k == "valid" else test) > 0]
        for k in wanted:
            if split[k]:
                continue
            donor = max((d for d in SPLITS if d != k and len(split[d]) >= 2), key=lambda d: len(split[d]))
            lo, hi = bounds[k]
            song = min(split[donor], key=lambda n: (max(lo - bucket[n], bucket[n] - hi, 0.0), n))
            split[donor].remove(song)
            split[k].append(song)
    return {k: sorted(v) for k, v in split.items()}


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


# -- pairs -------------------------------------------------------------------------------------

@dataclass
class TrainExample:
    """One training pair. ``context`` (K, Tc) codes cover the first Tc frames of the window
    that ``target`` (K, Tt) codes cover; frame t of both is the same instant."""

    context: Tensor
    target: Tensor
    prompt: str
    song: str
    start_s: float  # window start in the (unstretched) song; `StemPairDataset.plan` has the rest


@dataclass(frozen=True)
class PairPlan:
    """Every random choice behind one example (a function of seed, epoch and index)."""

    song: int
    start: int  # window start, samples at the codec rate
    aug: Augmentation
    kind: str
    stems: tuple[str, ...]  # the summed context stems ('stems' kind)
    context_samples: int
    mix_stems: tuple[str, ...]  # target first, then every active other stem: stretched together


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
    key: str  # fingerprint: name + file sizes and mtimes
    length: int  # samples at the codec rate
    stems: list[str]  # stem names usable in pairs (target included)
    energy: np.ndarray  # (len(stems), blocks) mean square per block
    beats: np.ndarray
    downbeats: np.ndarray
    tracks: dict[str, list[tuple[Path, int]]] = field(default_factory=dict)  # stem -> (file, rate)


class StemPairDataset(torch.utils.data.Dataset):
    """(context, target) token pairs for one target instrument; see the module docstring.

    ``__getitem__(i)`` depends only on (seed, epoch, i): call `set_epoch` before each epoch (the
    choices are redrawn; windows stay). Works in DataLoader workers (keep the codec on the CPU
    there, or fill the cache first); cache files are written atomically.
    """

    def __init__(self, songs: Sequence[SongSource], instrument: str, codec, cache_dir: Path,
                 seed: int = 0, augment: bool = True, p_click: float = 0.5, p_full_context: float = 0.05,
                 exclude: Sequence[str] = ("vocals",), silence_db: float = -50.0, p_speed: float = 0.5,
                 p_pitch: float = 0.5, speeds: Sequence[float] = SPEED_GRID, pitch_range: int = PITCH_RANGE,
                 stretch_backend: str = "auto"):
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
        self.seed, self.epoch = int(seed), 0
        self.augment, self.p_click, self.p_full = augment, p_click, p_full_context
        self.p_speed, self.p_pitch = p_speed, p_pitch
        self.speeds = tuple(float(s) for s in speeds if float(s) != 1.0)
        self.pitches = tuple(p for p in range(-int(pitch_range), int(pitch_range) + 1) if p != 0)
        self.silence_db = silence_db
        self.backend = resolve_backend(stretch_backend) if augment else "none"
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.codec_id = codec_fingerprint(codec)
        self.block = int(round(BLOCK_S * self.sr))
        self.warnings: list[str] = []
        self.songs: list[_Song] = []
        for src in songs:
            if self.instrument not in src.stems:
                have = ", ".join(sorted(src.stems)) or "none"
                self._warn(f"skipped song {src.name}: it has no '{self.instrument}' stem (stems: {have})")
                continue
            try:
                self.songs.append(self._analyse(src))
            except (StageError, OSError, ValueError, RuntimeError) as exc:
                self._warn(f"skipped song {src.name}: {exc}")
        self.windows: list[tuple[int, int]] = []
        for si, song in enumerate(self.songs):
            before = len(self.windows)
            for start in range(0, song.length - self.window + 1, self.window):
                if not self._active(song, 0, start, start + self.window):
                    continue
                if not song.beats.size and not self._active_others(song, start, start + self.window):
                    continue  # neither a stems nor a click context is possible
                self.windows.append((si, start))
            if len(self.windows) == before:
                self._warn(f"song {song.src.name} has no {WINDOW_S:g} s window where '{self.instrument}' is "
                           f"audible (song length {song.length / self.sr:.1f} s); it adds no examples")
        if not self.windows:
            raise DatasetError(f"No usable {WINDOW_S:g} s windows with an audible '{self.instrument}' stem in "
                               f"{len(self.songs)} song(s)" + (f": {'; '.join(self.warnings[:5])}"
                                                                if self.warnings else "."))

    # -- public ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.windows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def prompt(self, song: int) -> str:
        src = self.songs[song].src
        return describe(src.genres, src.moods)

    def plan(self, i: int) -> PairPlan:
        """The random choices for example ``i`` of the current epoch."""
        si, start = self.windows[i]
        song = self.songs[si]
        rng = np.random.Generator(np.random.PCG64([self.seed, self.epoch, i]))
        u = rng.random(8)
        speed, semitones = 1.0, 0
        if self.augment:
            if u[0] < self.p_speed:
                fits = [s for s in self.speeds if start + round(self.window * s) <= song.length
                        and self._active(song, 0, start, start + round(self.window * s))]
                if fits:
                    speed = fits[int(u[1] * len(fits))]
            if u[2] < self.p_pitch and self.pitches:
                semitones = self.pitches[int(u[3] * len(self.pitches))]
        others = self._active_others(song, start, start + round(self.window * speed))
        if not others and not song.beats.size:  # no context possible on this span: the plain window has one
            speed = 1.0
            others = self._active_others(song, start, start + self.window)
        kind = "click" if (u[4] < self.p_click and song.beats.size) or not others else "stems"
        chosen: tuple[str, ...] = ()
        if kind == "stems":
            k = 1 + int(u[5] * len(others))
            chosen = tuple(sorted(others[j] for j in rng.permutation(len(others))[:k]))
        if u[6] < self.p_full:
            n_ctx = self.window
        else:
            n_ctx = self.min_context + int(u[7] * (self.window - self.min_context + 1))
        return PairPlan(si, start, Augmentation(speed, semitones), kind, chosen, min(n_ctx, self.window),
                        (song.stems[0], *others))

    def __getitem__(self, i: int) -> TrainExample:
        if not 0 <= i < len(self.windows):
            raise IndexError(i)
        last: Exception | None = None
        for attempt in range(min(10, len(self.windows))):
            j = (i + attempt * 7919) % len(self.windows)  # on failure, fall back to another window
            try:
                return self._example(self.plan(j))
            except (StageError, OSError, sf.SoundFileError) as exc:
                last = exc
                song = self.songs[self.windows[j][0]].src.name
                log.warning("training example %d (song %s) failed, using another window: %s", j, song, exc)
        raise DatasetError(f"Could not build a training example near index {i}: {last}")

    def render(self, i: int | PairPlan) -> RenderedPair:
        """The audio of example ``i`` (or of a plan) before encoding; no cache involved."""
        plan = self.plan(i) if isinstance(i, int) else i
        song = self.songs[plan.song]
        span = round(self.window * plan.aug.speed)
        start_s, span_s = plan.start / self.sr, span / self.sr
        beats = window_times(song.beats, start_s, span_s, plan.aug.speed)
        downbeats = window_times(song.downbeats, start_s, span_s, plan.aug.speed)
        needed = plan.mix_stems if not plan.aug.identity else (plan.mix_stems[0], *plan.stems)
        audio = np.stack([self.load_stem(plan.song, s, plan.start, span) for s in needed])
        audio = stretch(audio, self.sr, plan.aug.speed, plan.aug.semitones, self.backend)
        audio = fit_length(audio, self.window)
        target = audio[0]
        if plan.kind == "click":
            context = click_at(beats, downbeats, self.window, self.sr)
        else:
            rows = [needed.index(s) for s in plan.stems]
            context = audio[rows].sum(axis=0, dtype=np.float64).astype(np.float32)
        return RenderedPair(plan, target, context, beats, downbeats)

    def load_stem(self, song: int, stem: str, start: int, length: int) -> np.ndarray:
        """``length`` samples of one stem (its tracks summed), mono at the codec rate, from
        sample ``start``; zeros past the end of the song."""
        out = np.zeros(length, dtype=np.float64)
        for path, rate in self.songs[song].tracks[stem]:
            out += _read_segment(path, rate, self.sr, start, length)
        return out.astype(np.float32)

    # -- internals ------------------------------------------------------------------------------

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning(message)

    def _example(self, plan: PairPlan) -> TrainExample:
        song = self.songs[plan.song]
        base = {"song": song.key, "start": plan.start, "window": self.window, "speed": plan.aug.speed,
                "codec": self.codec_id, "v": TOKENS_VERSION}
        if not plan.aug.identity:
            base.update(semitones=plan.aug.semitones, backend=self.backend, mix=list(plan.mix_stems))
        t_key = _hash({**base, "target": self.instrument})
        if plan.kind == "click":
            c_key = _hash({"song": song.key, "start": plan.start, "window": self.window, "speed": plan.aug.speed,
                           "codec": self.codec_id, "v": TOKENS_VERSION, "click": _hash(song.beats.tolist()),
                           "down": _hash(song.downbeats.tolist())})
        else:
            c_key = _hash({**base, "context": list(plan.stems)})
        target, context = self._cache_get(t_key), self._cache_get(c_key)
        if target is None or context is None:
            pair = self.render(plan)
            todo = [(k, wav) for k, wav, have in ((t_key, pair.target, target), (c_key, pair.context, context))
                    if have is None]
            codes = self.codec.encode(torch.from_numpy(np.stack([w for _, w in todo])))
            codes = codes.detach().to("cpu", torch.long)
            for (k, _), c in zip(todo, codes):
                self._cache_put(k, c)
                if k == t_key:
                    target = c
                else:
                    context = c
        frames = -(-plan.context_samples // self.hop)
        return TrainExample(context=context[:, :frames].clone(), target=target, prompt=self.prompt(plan.song),
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

    def _active(self, song: _Song, row: int, a: int, b: int) -> bool:
        blocks = song.energy[row, a // self.block : max(a // self.block + 1, -(-b // self.block))]
        if blocks.size == 0:
            return False
        mean = float(blocks.mean())
        return mean > 0 and 10.0 * math.log10(mean) > self.silence_db

    def _active_others(self, song: _Song, a: int, b: int) -> list[str]:
        return [s for r, s in enumerate(song.stems) if r > 0 and self._active(song, r, a, b)]

    def _analyse(self, src: SongSource) -> _Song:
        """Per-stem activity and (if the data has none) tracked beats; cached per song."""
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
        key = _hash({"name": src.name, "files": stats, "sr": self.sr, "block": self.block, "v": ANALYSIS_VERSION,
                     "bpm": src.bpm, "beats": src.beats is not None})
        usable = [self.instrument] + sorted(s for s in src.stems if s != self.instrument and s not in self.exclude)
        cached = self.cache_dir / "analysis" / f"{key}.npz"
        try:
            with np.load(cached, allow_pickle=False) as z:
                names, energy, length = list(z["stems"]), z["energy"], int(z["length"])
                beats, downbeats = z["beats"], z["downbeats"]
        except (FileNotFoundError, OSError, ValueError, KeyError):
            names, energy, length, beats, downbeats = self._analyse_audio(src, tracks)
            payload = {"stems": np.array(names), "energy": energy, "length": np.array(length),
                       "beats": beats, "downbeats": downbeats}
            cached.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(cached, lambda f: np.savez(f, **payload), replace=True)
        rows = [names.index(s) for s in usable]
        if src.beats is not None:
            beats = np.asarray(src.beats, dtype=np.float64)
            downbeats = np.asarray(src.downbeats if src.downbeats is not None else downbeats_every(beats))
        return _Song(src, key, length, usable, energy[rows], beats, downbeats, tracks)

    def _analyse_audio(self, src: SongSource, tracks) -> tuple[list[str], np.ndarray, int, np.ndarray, np.ndarray]:
        lengths = {p: round(sf.info(str(p)).frames * self.sr / r) for ts in tracks.values() for p, r in ts}
        length = min(lengths.values())
        names = sorted(tracks)
        n_blocks = -(-length // self.block)
        energy = np.zeros((len(names), n_blocks))
        mix = np.zeros(length, dtype=np.float64)
        for r, stem in enumerate(names):
            audio = np.zeros(length, dtype=np.float64)
            for path, rate in tracks[stem]:
                wav = load_audio(path)
                audio += fit_length(resample(to_mono(wav.samples), wav.sample_rate, self.sr), length)
            mix += audio
            padded = fit_length(audio, n_blocks * self.block)
            energy[r] = (padded.reshape(n_blocks, self.block) ** 2).mean(axis=1)
        if src.beats is None:
            beats, _ = track_beats(mix.astype(np.float32), self.sr, bpm=src.bpm)
            downbeats = downbeats_every(beats)
        else:
            beats = downbeats = np.zeros(0)
        return names, energy, length, beats, downbeats


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
