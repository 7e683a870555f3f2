"""The `stage-bridge eval` command line: its arguments and its entry point.

Apart from `eval.run` so that building the CLI's parser imports nothing heavy (no numpy, no
torch): names of modes, embedders and trackers are checked by `EvalSettings.validate`, against
their one definition, once the command runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from stage_bridge.argtypes import real, whole_number
from stage_bridge.errors import BadArgument


def _name_path(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"'{text}' is not NAME=PATH (e.g. vggish=~/vggish-10086976.pth)")
    return name.strip(), path.strip()


def add_eval_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--data", type=Path, required=True, help="folder of multitrack songs (MoisesDB or SONG/STEM.wav)")
    p.add_argument("--model", required=True, help="model name or path (stage-drums, a run folder, tiny-random, ...)")
    p.add_argument("--instrument", required=True, help="the stem the model generates (drums, bass, ...)")
    p.add_argument("--out", type=Path, required=True, help="report folder (generated takes are cached in it)")
    p.add_argument("--split", type=Path, default=None, metavar="RUN_DIR",
                   help="evaluate the test songs of this training run's split.json (default: all songs)")
    p.add_argument("--modes", nargs="+", default=None, metavar="MODE",
                   help="context modes to evaluate: mix, click, mix+click (default: all three)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="SEED",
                   help="one take per seed and song (default: 0)")
    p.add_argument("--bars", type=whole_number(1), default=4, help="excerpt length in bars (default 4)")
    p.add_argument("--embedders", nargs="+", default=["vggish"], metavar="NAME",
                   help="FAD/KAD embedders: vggish (default), clap, mert, or tiny (needs no weights, but is no "
                        "perceptual measure); see docs/eval.md for where their weights go")
    p.add_argument("--embedder-weights", action="append", type=_name_path, default=[], metavar="NAME=PATH",
                   help="where an embedder's weights are (default: WEIGHTS_DIR/eval/NAME/)")
    p.add_argument("--cocola", type=Path, default=None, metavar="PATH",
                   help="COCOLA's checkpoint (COCOLA_HP_v1 .ckpt, or its folder) for the coherence column; without it "
                        "COCOLA runs only when WEIGHTS_DIR/eval/cocola/ holds one")
    p.add_argument("--tracker", default="librosa", help="beat tracker: librosa (default) or beat_this")
    p.add_argument("--layout", default="auto", choices=["auto", "moisesdb", "plain"], help="dataset layout")
    p.add_argument("--exclude", nargs="*", default=["vocals"], metavar="STEM",
                   help="stems left out of the context (default: vocals)")
    p.add_argument("--device", default="auto", help="auto, cuda, cuda:N, mps or cpu")
    p.add_argument("--precision", default="fp32", help="decoder precision (see `generate --help`)")
    p.add_argument("--guidance", type=real(), default=3.0, help="classifier-free guidance scale")
    p.add_argument("--top-k", type=int, default=250)
    p.add_argument("--top-p", type=real(), default=0.0)
    p.add_argument("--temperature", type=real(), default=1.0)
    p.add_argument("--click-gain-db", type=real(), default=-6.0, help="click level in mix+click mode")
    p.add_argument("--weights-dir", type=Path, default=None, help="where named weights live")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def settings_from_args(args: argparse.Namespace):
    """The command line as `EvalSettings` (checked)."""
    from stage_bridge.audio import CONTEXT_MODES
    from stage_bridge.eval.run import EvalSettings

    settings = EvalSettings(
        data=args.data, model=args.model, instrument=args.instrument, out=args.out,
        modes=tuple(dict.fromkeys(args.modes or CONTEXT_MODES)), seeds=tuple(dict.fromkeys(args.seeds)),
        bars=args.bars, embedders=tuple(dict.fromkeys(args.embedders)), embedder_weights=dict(args.embedder_weights),
        tracker=args.tracker, split=args.split, layout=args.layout, exclude=tuple(args.exclude), device=args.device,
        precision=args.precision, weights_dir=args.weights_dir, guidance=args.guidance, top_k=args.top_k,
        top_p=args.top_p, temperature=args.temperature, click_gain_db=args.click_gain_db,
        cocola=args.cocola)
    settings.validate()
    return settings


def run_eval(args: argparse.Namespace) -> int:
    """`stage-bridge eval`: evaluate, write the report, print the table and the files."""
    from stage_bridge.eval.report import write_report
    from stage_bridge.eval.run import evaluate

    settings = settings_from_args(args)
    if importlib.util.find_spec("matplotlib") is None:  # before hours of generation, not after
        raise BadArgument("the report's plots need matplotlib: install the eval extras "
                          "(pip install -e \".[eval]\") and run again.")
    out = Path(settings.out)
    if out.exists() and not out.is_dir():
        raise BadArgument(f"--out {out} is a file; give a folder for the report.")
    result = evaluate(settings, quiet=args.quiet)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    paths = write_report(result, out)
    print(paths["table_md"].read_text(encoding="utf-8"))
    for path in paths.values():
        print(path)
    return 0
