"""One process of tests/test_compiled.py's cross-process cache test: compiles (or loads from the
cache) the decode step of a small random decoder, compares its logits with the eager step's, and
prints Inductor's FX graph cache counters and the cache folder as one JSON line."""

import json
import os
import sys

from torch._dynamo.utils import counters

from stage_bridge.engine.compiled import CACHE_ENV, CompiledDecoder
from test_compiled import WINDOW, _lm, max_step_logit_diff

if __name__ == "__main__":
    seed = int(sys.argv[1])
    decoder = CompiledDecoder(_lm(seed), window_frames=WINDOW)
    diff = max_step_logit_diff(_lm(seed), decoder)
    fx = {k: v for k, v in counters["inductor"].items() if k.startswith("fxgraph")}
    print(json.dumps({"fx": fx, "max_diff": diff, "cache_dir": os.environ[CACHE_ENV], "failed": decoder.failed}))
