#!/usr/bin/env python
"""Decode benchmark: ours vs transformers' MusicGen vs the memory floor (see benchmarks/README.md).

Same as `stage-bridge bench`; all options: `python benchmarks/decode.py --help`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout without `pip install -e .`

from stage_bridge.cli import main  # noqa: E402  (the CLI entry: same process set-up as `stage-bridge bench`)

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:]]))
