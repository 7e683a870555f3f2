"""The evaluation report: what `stage-bridge eval` leaves in its output folder.

- ``table.md`` / ``table.csv``: one row per context mode and one for the real stems, shaped like
  the STAGE paper's Tables 1-2 (FAD and KAD per embedder, beat F1 against the context and the
  click as mean ± standard deviation; COCOLA coherence with the context, mean ± standard
  deviation, when COCOLA ran); the CSV keeps full precision.
- ``per_song.csv``: every scored clip (song, mode, seed, beat F1s, tracked tempo, COCOLA score).
- ``beat_f1.png`` (the beat-F1 distribution per mode) and ``per_song.png`` (per-song bars).
- ``settings.json``: the run's settings, the tracker and embedders by name and version, whether
  COCOLA ran (and with which checkpoint, or why not), the timings and the warnings, so a table
  can always be traced to how it was made.

Every file is written atomically (a rerun replaces it whole). Plots use matplotlib's Agg
backend: no display needed.
"""

from __future__ import annotations

import csv
import io
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

from stage_bridge import __version__
from stage_bridge.atomic import write_atomic
from stage_bridge.eval.run import REAL, EvalResult, make_folder

PER_SONG_FIELDS = ("song", "mode", "seed", "start_s", "song_bpm", "f1_context", "f1_click", "bpm", "beats")
_LABELS = {"mix": "mix", "click": "click", "mix+click": "mix + click", REAL: "real stems"}


def table_columns(result: EvalResult) -> list[str]:
    """The CSV table's columns: mode, clips, FAD/KAD per embedder, the beat-F1 statistics, then
    COCOLA's when it ran."""
    cols = ["mode", "clips"]
    for emb in result.settings["embedders"]:
        cols += [f"fad_{emb}", f"kad_{emb}"]
    cols += ["f1_context_mean", "f1_context_std", "f1_click_mean", "f1_click_std"]
    return cols + (["cocola_mean", "cocola_std"] if result.cocola["ran"] else [])


def per_song_columns(result: EvalResult) -> tuple[str, ...]:
    """The per-song CSV's columns: a COCOLA score only where COCOLA ran (no empty column)."""
    return PER_SONG_FIELDS + (("cocola",) if result.cocola["ran"] else ())


def _csv(rows: list[dict[str, Any]], fields: list[str] | tuple[str, ...]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else repr(row[k]) if isinstance(row[k], float) else row[k]
                         for k in fields})
    return buf.getvalue().encode()


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown_table(result: EvalResult) -> str:
    s = result.settings
    head = ["Context", "Clips"]
    for emb, label in zip(s["embedders"], result.embedders):
        head += [f"FAD ({label}) ↓", f"KAD ({label}) ↓"]
    head += ["Beat F1 vs context ↑", "Beat F1 vs click ↑"]
    stats = ("f1_context", "f1_click")
    if result.cocola["ran"]:
        head.append("COCOLA vs context ↑")
        stats += ("cocola",)
        cocola = "COCOLA: the stem's coherence with its context."
    else:
        cocola = f"COCOLA not computed ({result.cocola['why']})."
    lines = [f"# {s['instrument']}: {s['model']}", "",
             f"{len({r['song'] for r in result.rows})} songs, {s['bars']} bars each, seeds {', '.join(map(str, s['seeds']))}; "
             f"beats by {result.tracker or s['tracker']} (70 ms F-measure); FAD/KAD against the real stems. {cocola}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result.table:
        cells = [_LABELS.get(row["mode"], row["mode"]), str(row["clips"])]
        for emb in s["embedders"]:
            cells += [_fmt(row[f"fad_{emb}"]), _fmt(row[f"kad_{emb}"])]
        for key in stats:
            mean, std = row[f"{key}_mean"], row[f"{key}_std"]
            cells.append("—" if mean is None else f"{mean:.3f} ± {std:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _png(path: Path, fig) -> None:
    def write(f):
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")

    write_atomic(path, write, replace=True)


def plot_beat_f1(result: EvalResult, path: Path) -> None:
    """Box plots of each mode's beat F1 against the context and the click."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    modes = [row["mode"] for row in result.table]
    fig = Figure(figsize=(9, 3.6))
    for i, (key, title) in enumerate((("f1_context", "beat F1 vs context"), ("f1_click", "beat F1 vs click"))):
        ax = fig.add_subplot(1, 2, i + 1)
        data = [[r[key] for r in result.rows if r["mode"] == m] or [np.nan] for m in modes]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(modes) + 1), [_LABELS.get(m, m) for m in modes])
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    _png(path, fig)


def plot_per_song(result: EvalResult, path: Path) -> None:
    """Per song, one bar per mode: the mean beat F1 against the context (over seeds)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    songs = sorted({r["song"] for r in result.rows})
    modes = [row["mode"] for row in result.table]
    fig = Figure(figsize=(max(6.0, 0.9 * len(songs) * len(modes) / 2 + 2), 3.8))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(modes)
    for j, mode in enumerate(modes):
        means = [np.mean([r["f1_context"] for r in result.rows if r["song"] == s and r["mode"] == mode] or [np.nan])
                 for s in songs]
        ax.bar(np.arange(len(songs)) + (j - (len(modes) - 1) / 2) * width, means, width, label=_LABELS.get(mode, mode))
    ax.set_xticks(range(len(songs)), [s[:12] for s in songs], rotation=30, ha="right")
    ax.set_ylim(0, 1.2)  # headroom for the legend above bars at 1
    ax.set_ylabel("beat F1 vs context")
    ax.legend(fontsize="small", ncol=len(modes))
    _png(path, fig)


def settings_record(result: EvalResult) -> dict[str, Any]:
    import librosa
    import mir_eval
    import torch

    return {"settings": result.settings, "tracker": result.tracker, "embedders": result.embedders,
            "f1_tolerance_s": 0.07, "cocola": result.cocola, "timings": {k: round(v, 3) for k, v in result.timings.items()},
            "warnings": result.warnings,
            "versions": {"stage_bridge": __version__, "torch": torch.__version__, "librosa": librosa.__version__,
                         "mir_eval": mir_eval.__version__, "python": platform.python_version()}}


def write_report(result: EvalResult, out: Path) -> dict[str, Path]:
    """Write every report file into ``out``; returns them by kind."""
    out = Path(out)
    make_folder(out)
    paths = {"table_md": out / "table.md", "table_csv": out / "table.csv", "per_song_csv": out / "per_song.csv",
             "settings_json": out / "settings.json", "beat_f1_png": out / "beat_f1.png",
             "per_song_png": out / "per_song.png"}
    write_atomic(paths["table_md"], lambda f: f.write(markdown_table(result).encode()), replace=True)
    write_atomic(paths["table_csv"], lambda f: f.write(_csv(result.table, table_columns(result))), replace=True)
    write_atomic(paths["per_song_csv"], lambda f: f.write(_csv(result.rows, per_song_columns(result))), replace=True)
    record = json.dumps(settings_record(result), indent=2, default=str).encode()
    write_atomic(paths["settings_json"], lambda f: f.write(record), replace=True)
    plot_beat_f1(result, paths["beat_f1_png"])
    plot_per_song(result, paths["per_song_png"])
    return paths
