"""One process of tests/test_compiled.py's cross-process cache test: compiles (or loads) the
decode step of a small random decoder, compares its logits with the eager step's, and prints
Inductor's FX graph cache counters and where the cache folder is, as one JSON line."""

import json
import os
import sys

import torch
from torch._dynamo.utils import counters

from stage_bridge.engine.compiled import CACHE_ENV, CompiledDecoder
from stage_bridge.engine.lm import LMConfig, StageLM
from stage_bridge.engine.pattern import StageLayout, build_sequence, step_positions

CFG = LMConfig(dim=32, num_layers=2, num_heads=4, ffn_dim=64, num_codebooks=4, card=50, text_dim=12)


def lm() -> StageLM:
    torch.manual_seed(int(sys.argv[1]))
    return StageLM(CFG).eval().requires_grad_(False)


@torch.no_grad()
def main() -> None:
    eager, plain = lm(), lm()
    decoder = CompiledDecoder(plain, window_frames=12)
    layout = StageLayout(6, 5, 4)
    ctx = torch.randint(0, CFG.card, (2, 4, 6))
    ctx[1:] = CFG.pad_id
    tokens, valid = build_sequence(ctx, torch.randint(0, CFG.card, (2, 4, 5)), layout, CFG.card)
    step_valid = valid.any(1)
    positions = step_positions(step_valid)
    split, n = layout.first_generated_step, tokens.shape[-1]
    eager.setup_cache(2, n)
    decoder.prepare(2, n)
    for m in (eager, plain):
        m(tokens[..., :split], positions[:, :split], step_valid[:, :split], 0, None)
    diff = 0.0
    for s in range(split, n):
        want = eager(tokens[..., s:s + 1], positions[:, s:s + 1], step_valid[:, :s + 1], s, None)[:, :, -1]
        got = decoder(tokens[..., s:s + 1], positions[:, s:s + 1], step_valid[:, :s + 1], None)
        diff = max(diff, float((got - want).abs().max()))
    fx = {k: v for k, v in counters["inductor"].items() if k.startswith("fxgraph")}
    print(json.dumps({"fx": fx, "max_diff": diff, "cache_dir": os.environ[CACHE_ENV], "failed": decoder.failed}))


if __name__ == "__main__":
    main()
