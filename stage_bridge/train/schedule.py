"""The two-phase fine-tuning schedule of STAGE (paper, section 4.3).

Phase 1 (steps [0, phase1_steps)): only the context token's embedding rows (row `sep_id` of each
codebook table) learn, at `sep_lr`; every other weight is frozen (no gradient, so AdamW neither
updates nor decays it: it stays bit-identical).

Phase 2 (from `phase1_steps` on): every LM weight learns (T5 and EnCodec stay frozen). Their
learning rate ramps linearly from 0 to `lr` over `warmup_steps` while the context token's anneals
linearly from `sep_lr` to `sep_final_lr`; both then stay constant.

The schedule is a pure function of the optimizer-step index, so resuming needs only the step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

MAIN, SEP = "main", "sep"


@dataclass(frozen=True)
class ScheduleConfig:
    phase1_steps: int = 200
    warmup_steps: int = 500
    sep_lr: float = 1e-4
    lr: float = 1e-5
    sep_final_lr: float = 1e-5

    def validate(self) -> None:
        if self.phase1_steps < 0 or self.warmup_steps < 0:
            raise ValueError("phase-1 and warm-up steps must be >= 0")
        if min(self.sep_lr, self.lr, self.sep_final_lr) < 0:
            raise ValueError("learning rates must be >= 0")

    def phase(self, step: int) -> int:
        """1 or 2 for the optimizer step with 0-based index `step`."""
        return 1 if step < self.phase1_steps else 2

    def lrs(self, step: int) -> tuple[float, float]:
        """(lr of the LM weights, lr of the context-token rows) for optimizer step `step`."""
        if step < self.phase1_steps:
            return 0.0, self.sep_lr
        t = step - self.phase1_steps
        if t + 1 >= self.warmup_steps:
            return self.lr, self.sep_final_lr
        frac = (t + 1) / self.warmup_steps
        return self.lr * frac, self.sep_lr + (self.sep_final_lr - self.sep_lr) * frac


class Schedule:
    """Sets the learning rate of the optimizer's `main` and `sep` parameter groups."""

    def __init__(self, config: ScheduleConfig):
        config.validate()
        self.config = config

    def phase(self, step: int) -> int:
        return self.config.phase(step)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> tuple[float, float]:
        lr_main, lr_sep = self.config.lrs(step)
        for group in optimizer.param_groups:
            group["lr"] = lr_sep if group.get("name") == SEP else lr_main
        return lr_main, lr_sep

    def state_dict(self) -> dict:
        return {"config": asdict(self.config)}

    def load_state_dict(self, state: dict) -> None:
        """Checks that a resumed run keeps its schedule (older checkpoints also hold a
        "last_step", which nothing needs: the step comes from the trainer state)."""
        saved = ScheduleConfig(**state["config"])
        if saved != self.config:
            raise ValueError(f"the checkpoint was trained with schedule {saved}, not {self.config}")


def build_optimizer(sep_params: list[torch.nn.Parameter], main_params: list[torch.nn.Parameter],
                    betas: tuple[float, float] = (0.9, 0.95), weight_decay: float = 1e-3,
                    eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW as STAGE configures it, with the context-token rows in a group of their own.

    Frozen parameters (requires_grad False) never receive a gradient, and AdamW skips
    parameters without one: neither update nor weight decay touches them.
    """
    return torch.optim.AdamW([{"params": sep_params, "name": SEP}, {"params": main_params, "name": MAIN}],
                             lr=0.0, betas=betas, weight_decay=weight_decay, eps=eps)
