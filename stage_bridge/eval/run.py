"""`stage-bridge eval`: generate a stem for every test song, context mode and seed, and score it.

The loop, as the STAGE paper evaluates a model:
1. Songs: the dataset's loader (`train.dataset.discover_songs`: MoisesDB or SONG/STEM.wav), all
   of them, or the `test` list of the split a training run wrote (``--split RUN_DIR``).
2. One excerpt per song: ``--bars`` bars from the first downbeat after which the target stem is
   audible in every bar (the song's annotated downbeats, else the tracker's), at its tempo. Its
   context is the sum of the other stems (vocals excluded by default, as in training).
3. Generation through the engine's public `render_stem` (the same path as `generate`), one
   take per (song, mode, seed), kept at the level the model made it. Each take is cached under
   ``OUT/generated/<model tag>/<song>/<mode>/seed<N>.wav``; the tag hashes everything that
   changes the audio, so a rerun (after a crash, or with more seeds) only generates what is
   missing, and a different model or setting never reuses a stale take.
4. Scores: the beat F1 (70 ms, `audio.tracking.beat_f1`) of the take's tracked beats against
   the beats tracked in the context mix, and against the click grid (the beats STAGE's click
   plays at the song's tempo); FAD and KAD (`metrics`) of each mode's takes against the real
   stems, per embedder; COCOLA coherence (`eval.cocola`) of each take with its context, when
   COCOLA's checkpoint is local. The real stems get the same beat and COCOLA scores: the
   ceiling to compare with.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stage_bridge.audio import Audio, CONTEXT_MODES, bars_to_samples, click_onsets, fit_length, load_audio, resample, to_mono
from stage_bridge.audio.io import write_audio_atomic
from stage_bridge.audio.tracking import TRACKERS, TrackerUnavailable, beat_f1, track_beats
from stage_bridge.errors import BadArgument, EmptyAudio, OutputNotWritable, StageError
from stage_bridge.limits import MAX_BARS, MAX_SEED
from stage_bridge.eval.cocola import Cocola, find_cocola
from stage_bridge.eval.embedders import EMBEDDERS, Embedder, embed_clip, load_embedder
from stage_bridge.eval.metrics import fad, kad
from stage_bridge.train.dataset import SongSource, discover_songs, normalize_stem, read_split

SILENCE_DB = -50.0  # each bar of an excerpt's target stem must be louder than this (RMS, dBFS)
REAL = "real"  # the row of the real stems in every table
EVAL_SR = 32000  # STAGE's codec rate: excerpts, takes and the cache share it (no resampling on the way)
CACHE_VERSION = 1  # bump when the excerpt choice or generation path changes what a cached take holds


@dataclass(frozen=True)
class EvalSettings:
    """Everything a run depends on; saved as the report's settings JSON."""

    data: Path
    model: str
    instrument: str
    out: Path
    modes: tuple[str, ...] = CONTEXT_MODES
    seeds: tuple[int, ...] = (0,)
    bars: int = 4
    embedders: tuple[str, ...] = ("vggish",)
    embedder_weights: dict[str, str] = field(default_factory=dict)
    tracker: str = "librosa"
    split: Path | None = None
    layout: str = "auto"
    exclude: tuple[str, ...] = ("vocals",)
    device: str = "auto"
    precision: str = "fp32"
    weights_dir: Path | None = None
    guidance: float = 3.0
    top_k: int = 250
    top_p: float = 0.0
    temperature: float = 1.0
    click_gain_db: float = -6.0
    cocola: Path | None = None  # COCOLA's checkpoint; None: WEIGHTS_DIR/eval/cocola/ if it has one

    def validate(self) -> None:
        if not self.modes or any(m not in CONTEXT_MODES for m in self.modes):
            raise BadArgument(f"--modes must be some of {', '.join(CONTEXT_MODES)} (got {', '.join(self.modes)}).")
        if not self.embedders or any(e not in EMBEDDERS for e in self.embedders):
            raise BadArgument(f"--embedders must be some of {', '.join(EMBEDDERS)} (got {', '.join(self.embedders)}).")
        if self.tracker not in TRACKERS:
            raise BadArgument(f"--tracker must be one of {', '.join(TRACKERS)} (got {self.tracker}).")
        if not self.seeds or any(not 0 <= seed <= MAX_SEED for seed in self.seeds):
            raise BadArgument(f"--seeds must be whole numbers from 0 to {MAX_SEED} (got {list(self.seeds)}).")
        if not 1 <= self.bars <= MAX_BARS:
            raise BadArgument(f"--bars must be from 1 to {MAX_BARS} (got {self.bars}).")
        unknown = set(self.embedder_weights) - set(EMBEDDERS)
        if unknown:
            raise BadArgument(f"--embedder-weights names an unknown embedder '{sorted(unknown)[0]}'; use NAME=PATH "
                              f"with NAME one of {', '.join(EMBEDDERS)}.")

    def as_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in asdict(self).items()}


@dataclass
class Excerpt:
    """One song's evaluated span, mono at `EVAL_SR`."""

    song: str
    sample_rate: int
    start_s: float
    bpm: float
    target: np.ndarray
    context: np.ndarray  # the other stems, summed
    click_beats: np.ndarray  # seconds from the excerpt's start: where the click plays


@dataclass
class EvalResult:
    settings: dict[str, Any]
    rows: list[dict[str, Any]]  # one per scored clip: song, mode (or "real"), seed, beat scores
    table: list[dict[str, Any]]  # one per mode, then the real stems: means, FAD and KAD per embedder
    tracker: str
    embedders: list[str]
    warnings: list[str]
    timings: dict[str, float]
    cocola: dict[str, Any]  # ran (bool), checkpoint (its path or None), why (it did not run)


# -- songs and excerpts ----------------------------------------------------------------------------

def choose_songs(settings: EvalSettings) -> tuple[list[SongSource], list[str]]:
    """The songs to evaluate: the split's test list, or all; only those with the target stem."""
    songs, warnings = discover_songs(Path(settings.data), settings.layout)
    instrument = normalize_stem(settings.instrument)
    if settings.split is not None:
        wanted = read_split(Path(settings.split))["test"]
        by_name = {s.name: s for s in songs}
        missing = [n for n in wanted if n not in by_name]
        if missing:
            warnings.append(f"{len(missing)} test song(s) of the split are not usable in {settings.data} "
                            f"(e.g. {missing[0]})")
        songs = [by_name[n] for n in wanted if n in by_name]
    chosen = [s for s in songs if instrument in s.stems]
    for s in songs:
        if instrument not in s.stems:
            warnings.append(f"skipped song {s.name}: it has no '{instrument}' stem")
    if not chosen:
        raise BadArgument(f"no song to evaluate: none of the {len(songs)} song(s) has a '{instrument}' stem"
                          + (" in the split's test list" if settings.split is not None else "") + ".")
    return chosen, warnings


def load_stem(song: SongSource, stem: str, sr: int) -> np.ndarray:
    """One stem (its tracks summed), mono at ``sr``, as long as the song's shortest track."""
    parts = [resample(to_mono(w.samples), w.sample_rate, sr) for w in (load_audio(p) for p in song.stems[stem])]
    n = min(p.shape[-1] for p in parts)
    return np.sum([fit_length(p, n) for p in parts], axis=0, dtype=np.float64).astype(np.float32)


def _rms_db(y: np.ndarray) -> float:
    ms = float(np.mean(np.square(y, dtype=np.float64))) if y.size else 0.0
    return 10.0 * np.log10(ms) if ms > 0 else -np.inf


def _audible_in_every_bar(y: np.ndarray, bars: int) -> bool:
    """Every bar of ``y`` louder than `SILENCE_DB` (a stem that enters mid-excerpt is no fair target)."""
    return all(_rms_db(part) > SILENCE_DB for part in np.array_split(y, bars))


def make_excerpt(song: SongSource, instrument: str, exclude: Sequence[str], bars: int, sr: int,
                 tracker: str) -> Excerpt:
    """``bars`` bars of ``song`` from its first downbeat after which ``instrument`` is audible in every bar."""
    instrument = normalize_stem(instrument)
    target_full = load_stem(song, instrument, sr)
    others = [s for s in sorted(song.stems) if s != instrument and s not in {normalize_stem(e) for e in exclude}]
    n_song = target_full.shape[-1]
    context_full = np.zeros(n_song, dtype=np.float64)
    for stem in others:
        context_full += fit_length(load_stem(song, stem, sr), n_song)
    if song.beats is not None and len(song.beats) >= 2:
        beats = np.asarray(song.beats, dtype=np.float64)
        downbeats = np.asarray(song.downbeats if song.downbeats is not None else beats[::4], dtype=np.float64)
    else:
        tracked = track_beats((context_full + target_full).astype(np.float32), sr, tracker=tracker, bpm=song.bpm)
        beats, downbeats = tracked.beats, tracked.downbeats
    if len(beats) < 2:
        raise BadArgument(f"song {song.name}: no beats found, so it has no tempo to generate at")
    bpm = song.bpm or 60.0 / float(np.median(np.diff(beats)))
    n = bars_to_samples(bars, bpm, sr)
    for t in downbeats:
        a = int(round(t * sr))
        if a + n <= n_song and _audible_in_every_bar(target_full[a:a + n], bars):
            break
    else:
        raise BadArgument(f"song {song.name}: no {bars}-bar span from a downbeat where '{instrument}' plays "
                          f"(song {n_song / sr:.1f} s at {bpm:.1f} bpm); use fewer --bars")
    clicks = click_onsets(n, sr, bpm) / sr
    return Excerpt(song.name, sr, a / sr, float(bpm), target_full[a:a + n].copy(),
                   context_full[a:a + n].astype(np.float32), clicks)


# -- generation, cached ----------------------------------------------------------------------------

def model_tag(settings: EvalSettings) -> str:
    """The cache folder of one model and generation setting: readable name + a hash of all that
    changes the audio (model, precision, bars, sampling, click level, excerpt choice)."""
    model_path = Path(settings.model).expanduser()
    identity = _files_identity(model_path) if model_path.exists() else settings.model
    keys = {"model": identity, "precision": settings.precision, "bars": settings.bars, "guidance": settings.guidance,
            "top_k": settings.top_k, "top_p": settings.top_p, "temperature": settings.temperature,
            "click_gain_db": settings.click_gain_db, "exclude": sorted(settings.exclude),
            "instrument": normalize_stem(settings.instrument), "tracker": settings.tracker, "v": CACHE_VERSION}
    digest = hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:10]
    return f"{_slug(model_path.name or settings.model)}-{digest}"


def _files_identity(path: Path) -> str:
    """A model on disk by where it is and what is there now (sizes, modification times): a
    retrained run folder or a replaced file gets new takes, not the old model's."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stats = [(str(p.relative_to(path)) if path.is_dir() else p.name, p.stat().st_size, p.stat().st_mtime_ns)
             for p in files]
    return f"{path.resolve()}:{hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]}"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("._") or "x"


def take_path(settings: EvalSettings, song: str, mode: str, seed: int) -> Path:
    return settings.out / "generated" / model_tag(settings) / _slug(song) / mode.replace("+", "_") / f"seed{seed}.wav"


class _LazyModel:
    """Loads the model at the first take that is not cached (a fully cached rerun loads none)."""

    def __init__(self, settings: EvalSettings) -> None:
        self.settings, self.model = settings, None

    def get(self):
        if self.model is None:
            from stage_bridge.engine.model import load_model

            s = self.settings
            self.model = load_model(s.model, s.device, s.weights_dir, s.precision)
            if self.model.is_random:
                print(f"warning: model '{self.model.name}' has random weights and produces noise (for tests only)",
                      file=sys.stderr)
        return self.model


def generate_take(model, excerpt: Excerpt, mode: str, seed: int, settings: EvalSettings) -> np.ndarray:
    """One take for ``excerpt`` in context ``mode``, mono at the excerpt's rate, as generated."""
    from stage_bridge.engine.generate import StemRequest, render_stem
    from stage_bridge.engine.sampling import SamplingParams

    request = StemRequest(bpm=excerpt.bpm, bars=settings.bars, context=Audio(excerpt.context[None], excerpt.sample_rate),
                          context_mode=mode, seed=seed, sample_rate=excerpt.sample_rate,
                          click_gain_db=settings.click_gain_db, loudness_offset_lu=None,
                          sampling=SamplingParams(settings.guidance, settings.top_k, settings.top_p, settings.temperature))
    return render_stem(model, request).takes[0]


class UnusableRequest(Exception):
    """This clip's request cannot be generated (e.g. a silent context in mix mode, a tempo out
    of range): the clip is skipped with a warning, the run goes on."""


def cached_take(lazy: _LazyModel, excerpt: Excerpt, mode: str, seed: int, settings: EvalSettings) -> tuple[np.ndarray, bool]:
    """(take, whether it was generated now) from the cache, generating and caching it if absent."""
    path = take_path(settings, excerpt.song, mode, seed)
    if path.is_file():
        wav = load_audio(path)
        if wav.sample_rate == excerpt.sample_rate and wav.num_samples == excerpt.target.shape[-1]:
            return to_mono(wav.samples), False
        path.unlink()  # a take of another length or rate: not this excerpt's
    model = lazy.get()  # a model that cannot load stops the run (not one clip): outside the request's errors
    try:
        take = np.asarray(generate_take(model, excerpt, mode, seed, settings), dtype=np.float32)
    except (BadArgument, EmptyAudio) as exc:
        raise UnusableRequest(str(exc)) from exc
    make_folder(path.parent)
    write_audio_atomic(path, take, excerpt.sample_rate, subtype="FLOAT")  # FLOAT: the cache reads back exactly
    return take, True


def make_folder(folder: Path) -> None:
    """``folder`` and its parents, or `OutputNotWritable` saying to choose another --out."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputNotWritable(f"cannot create {folder} ({exc.strerror or exc}); choose another --out folder.") from None


# -- scores ------------------------------------------------------------------------------------

def beat_scores(stem: np.ndarray, excerpt: Excerpt, context_beats: np.ndarray, tracker: str) -> dict[str, float]:
    """Beat F1 of ``stem`` against the context's beats and against the click; its tempo."""
    got = track_beats(stem, excerpt.sample_rate, tracker=tracker, downbeats=False)
    return {"f1_context": beat_f1(context_beats, got.beats), "f1_click": beat_f1(excerpt.click_beats, got.beats),
            "bpm": float(got.bpm), "beats": int(len(got.beats))}


def distances(real: np.ndarray, generated: np.ndarray) -> tuple[float | None, float | None, str]:
    """(FAD, KAD, why missing) of two embedding sets; None where the sets are too small."""
    try:
        return fad(real, generated), kad(real, generated), ""
    except BadArgument as exc:
        return None, None, str(exc)


def summarize(rows: list[dict[str, Any]], modes: Sequence[str], embeddings: dict[str, dict[str, list[np.ndarray]]],
              warnings: list[str], cocola: bool = False) -> list[dict[str, Any]]:
    """The table: per mode (then the real stems) the clip count, beat-F1 (and, with ``cocola``,
    COCOLA) means and standard deviations, and FAD/KAD per embedder against the real stems."""
    table = []
    for mode in (*modes, REAL):
        mine = [r for r in rows if r["mode"] == mode]
        line: dict[str, Any] = {"mode": mode, "clips": len(mine)}
        for key in ("f1_context", "f1_click", *(("cocola",) if cocola else ())):
            values = np.array([r[key] for r in mine], dtype=np.float64)
            line[f"{key}_mean"] = float(values.mean()) if values.size else None
            line[f"{key}_std"] = float(values.std()) if values.size else None
        for emb, sets in embeddings.items():
            if mode == REAL or not sets.get(mode):
                line[f"fad_{emb}"] = line[f"kad_{emb}"] = None
                continue
            real, generated = np.concatenate(sets[REAL]), np.concatenate(sets[mode])
            f, k, why = distances(real, generated)
            if why:
                warnings.append(f"no FAD/KAD for {mode} with {emb}: {why}")
            elif min(len(real), len(generated)) <= real.shape[1]:
                warnings.append(f"FAD for {mode} with {emb} rests on {min(len(real), len(generated))} vectors of "
                                f"dimension {real.shape[1]}: too few for a reliable covariance; evaluate more songs "
                                "or seeds")
            line[f"fad_{emb}"], line[f"kad_{emb}"] = f, k
        table.append(line)
    return table


# -- the run ---------------------------------------------------------------------------------------

def evaluate(settings: EvalSettings, quiet: bool = False) -> EvalResult:
    """Run the whole evaluation (see the module docstring); writes only generated takes."""
    from tqdm import tqdm

    from stage_bridge.engine.model import pick_device

    settings.validate()
    t0 = time.perf_counter()
    songs, warnings = choose_songs(settings)
    try:  # a tracker that cannot run here fails now, not after the generation
        track_beats(np.zeros(EVAL_SR, dtype=np.float32), EVAL_SR, tracker=settings.tracker)
    except TrackerUnavailable as exc:
        raise BadArgument(str(exc)) from None
    device = str(pick_device(settings.device))
    embedders: dict[str, Embedder] = {
        name: load_embedder(name, settings.embedder_weights.get(name), device, settings.weights_dir)
        for name in settings.embedders}  # before any generation: a missing checkpoint fails fast
    cocola_path, cocola_why = find_cocola(settings.cocola, settings.weights_dir)
    cocola = Cocola(cocola_path, device) if cocola_path is not None else None
    sr = EVAL_SR
    lazy = _LazyModel(settings)
    rows: list[dict[str, Any]] = []
    embeddings: dict[str, dict[str, list[np.ndarray]]] = {e: {} for e in embedders}
    tracker_name = ""
    timings = {"generate_s": 0.0, "score_s": 0.0}
    bar = tqdm(total=len(songs) * (1 + len(settings.modes) * len(settings.seeds)), unit="clip", desc="eval",
               file=sys.stderr, disable=quiet, dynamic_ncols=True)
    try:
        for song in songs:
            try:
                excerpt = make_excerpt(song, settings.instrument, settings.exclude, settings.bars, sr, settings.tracker)
            except (StageError, OSError, ValueError) as exc:
                warnings.append(f"skipped song {song.name}: {exc}")
                bar.update(1 + len(settings.modes) * len(settings.seeds))
                continue
            context_beats = track_beats(excerpt.context, sr, tracker=settings.tracker, downbeats=False)
            tracker_name = context_beats.tracker
            clips = [(REAL, None, excerpt.target)]
            bar.update(1)
            for mode in settings.modes:
                for seed in settings.seeds:
                    bar.set_postfix_str(f"{song.name[:16]} {mode} seed {seed}")
                    t_gen = time.perf_counter()
                    try:
                        take, fresh = cached_take(lazy, excerpt, mode, seed, settings)
                    except UnusableRequest as exc:
                        warnings.append(f"{song.name} {mode} seed {seed}: not generated ({exc})")
                        bar.update(1)
                        continue
                    if fresh:
                        timings["generate_s"] += time.perf_counter() - t_gen
                    clips.append((mode, seed, take))
                    bar.update(1)
            t = time.perf_counter()
            context_cocola = cocola.embed(excerpt.context, sr) if cocola is not None else None
            for mode, seed, audio in clips:
                rows.append({"song": song.name, "mode": mode, "seed": seed, "start_s": round(excerpt.start_s, 4),
                             "song_bpm": round(excerpt.bpm, 3),
                             **beat_scores(audio, excerpt, context_beats.beats, settings.tracker)})
                if cocola is not None:
                    rows[-1]["cocola"] = cocola.coherence(context_cocola, cocola.embed(audio, sr))
                for name, embedder in embedders.items():
                    embeddings[name].setdefault(mode, []).append(embed_clip(embedder, audio, sr))
            timings["score_s"] += time.perf_counter() - t
    finally:
        bar.close()
    if not rows:
        raise BadArgument("no song could be evaluated: " + "; ".join(warnings[:3]))
    table = summarize(rows, settings.modes, embeddings, warnings, cocola=cocola is not None)
    timings["total_s"] = time.perf_counter() - t0
    return EvalResult(settings.as_json(), rows, table, tracker_name,
                      [embedders[e].name for e in settings.embedders], warnings, timings,
                      {"ran": cocola is not None, "checkpoint": str(cocola.path) if cocola else None, "why": cocola_why})
