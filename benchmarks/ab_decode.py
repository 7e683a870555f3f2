"""Old vs new decode loop, side by side in one process: did a refactor change decode speed?

Takes the `stage_bridge` package of an earlier git revision (`--old`, default HEAD), renames it
to `stage_bridge_old` in a temporary folder and imports it next to the working tree's package.
Both build a musicgen-small-sized decoder with the SAME random weights (CPU, fp32, oneDNN-packed
as `build_model` does), then generate alternately, `--pairs` times, the benchmark's workload (one
window: 500 context frames, `--gen-frames` generated, CFG, 8 text tokens). Each pair gives a ratio
old/new, so a drift in the shared machine's speed hits both sides of a pair alike. Prints ms/step
per run and the median ratio (1.0: unchanged; > 1: new is faster).

Usage: python benchmarks/ab_decode.py [--old REV] [--pairs 4] [--gen-frames 120] [--layers 24]
"""

from __future__ import annotations

import argparse
import importlib
import io
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from stage_bridge.cli import prefer_huge_pages

prefer_huge_pages()  # as the CLI does; it must run before torch is imported

import torch  # noqa: E402

from stage_bridge.engine.decoder import Decoder  # noqa: E402
from stage_bridge.engine.generate import Windows, generate_codes  # noqa: E402
from stage_bridge.engine.lm import LMConfig, StageLM  # noqa: E402
from stage_bridge.engine.sampling import SamplingParams  # noqa: E402
from stage_bridge.errors import Cancelled  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def import_old(rev: str, folder: Path):
    """`stage_bridge` at `rev`, importable as `stage_bridge_old` (absolute imports rewritten)."""
    data = subprocess.run(["git", "-C", str(REPO), "archive", rev, "stage_bridge"], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(folder, filter="data")
    old = folder / "stage_bridge_old"
    (folder / "stage_bridge").rename(old)
    for py in old.rglob("*.py"):
        py.write_text(re.sub(r"\bstage_bridge\.", "stage_bridge_old.", py.read_text()))
    sys.path.insert(0, str(folder))
    return importlib.import_module("stage_bridge_old.engine.generate"), importlib.import_module("stage_bridge_old.engine.lm")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--old", default="HEAD", help="git revision of the old decode loop")
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--context-frames", type=int, default=500)
    p.add_argument("--gen-frames", type=int, default=120)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--text-tokens", type=int, default=8)
    args = p.parse_args()
    tmp = tempfile.TemporaryDirectory()
    old_gen, old_lm = import_old(args.old, Path(tmp.name))

    torch.manual_seed(0)
    cfg = LMConfig(num_layers=args.layers, text_dim=1024)
    new = StageLM(cfg).eval().requires_grad_(False)
    old = old_lm.StageLM(old_lm.LMConfig(num_layers=args.layers, text_dim=1024)).eval().requires_grad_(False)
    old.load_state_dict(new.state_dict())
    packed = new.pack_for_cpu(), old.pack_for_cpu()
    decoder = Decoder(new)
    context = torch.randint(0, cfg.card, (cfg.num_codebooks, args.context_frames))
    sampling, old_sampling = SamplingParams(), old_gen.SamplingParams()
    steps = args.gen_frames + cfg.num_codebooks - 1
    crosses = {"new": None, "old": None}
    if args.text_tokens:
        with torch.inference_mode():
            text = torch.randn(2, args.text_tokens, cfg.text_dim)
            mask = torch.ones(2, args.text_tokens, dtype=torch.bool)
            crosses = {"new": new.cross_context(text, mask), "old": old.cross_context(text, mask)}

    def timed(side: str) -> float:
        stamps: list[float] = []
        progress = lambda done, total: stamps.append(time.perf_counter())  # noqa: E731
        stop = lambda: len(stamps) >= steps  # noqa: E731
        total = context.shape[-1]
        try:
            if side == "new":
                generate_codes(decoder, context, total, sampling=sampling, cross=crosses["new"],
                               windows=Windows(total, 0), progress=progress, should_cancel=stop)
            else:
                old_gen.generate_codes(old, context, total, sampling=old_sampling, cross=crosses["old"],
                                       window_frames=total, overlap_frames=0, progress=progress, should_cancel=stop)
        except (Cancelled, old_gen.Cancelled):
            pass
        return 1000.0 * (stamps[-1] - stamps[0]) / (len(stamps) - 1)

    print(f"old = {args.old}, new = working tree; {args.layers} layers, {torch.get_num_threads()} threads, "
          f"weights packed (new, old): {packed}")
    timed("old"), timed("new")  # warm-up
    ratios = []
    for i in range(args.pairs):
        first, second = ("old", "new") if i % 2 == 0 else ("new", "old")  # alternate who goes first
        t = {first: timed(first), second: timed(second)}
        ratios.append(t["old"] / t["new"])
        print(f"[{i + 1}/{args.pairs}] old {t['old']:.2f} ms/step, new {t['new']:.2f} ms/step, old/new {ratios[-1]:.3f}")
    print(f"median old/new: {statistics.median(ratios):.3f} (1.0: unchanged; > 1: new is faster)")


if __name__ == "__main__":
    main()
