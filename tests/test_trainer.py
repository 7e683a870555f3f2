"""The fine-tuning trainer on the tiny-random model (CPU, synthetic codes).

- the loss: target codes only, MusicGen's shift and per-codebook mean, left-padded contexts
- the schedule: phase 1 changes only the context-token rows (all else bit-identical), phase 2 all
- a fixed batch is overfitted; save/resume continues bit-exactly; Ctrl-C never corrupts a checkpoint
- the run folder is a model that `resolve` + `build_model` load and `render_stem` generates with
- `run_training` end to end on songs the test synthesises (the real dataset module), and DDP
  under torchrun (gloo, 2 processes)
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stage_bridge.engine.checkpoints import load_state_file, resolve
from stage_bridge.engine.generate import StemRequest, render_stem
from stage_bridge.engine.model import build_model
from stage_bridge.engine.pattern import StageLayout, build_sequence, step_positions
from stage_bridge.train import checkpoint as ckpt_io
from stage_bridge.train.schedule import ScheduleConfig
from stage_bridge.train.trainer import (ResumableSampler, SepTokenLM, TrainConfig, Trainer,
                                        codebook_cross_entropy, make_batch, read_metrics, stage_loss, target_mask)

from train_fixtures import make_plain

CPU = torch.device("cpu")
K, CARD, TT = 4, 64, 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matrices: threads only contend (10x slower on a loaded 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@dataclass
class Example:  # the fields of dataset.TrainExample
    context: torch.Tensor
    target: torch.Tensor
    prompt: str
    song: str = "song"
    start_s: float = 0.0


class Synthetic(torch.utils.data.Dataset):
    """Random codes; contexts of varying length (some empty), prompts some empty."""

    def __init__(self, n: int, seed: int = 0, tt: int = TT, max_tc: int = 10):
        g = torch.Generator().manual_seed(seed)
        prompts = ["rock drums", "funky", "", "Genres: Jazz."]
        self.items = []
        for i in range(n):
            tc = int(torch.randint(0, max_tc + 1, (1,), generator=g))
            self.items.append(Example(torch.randint(0, CARD, (K, tc), generator=g),
                                      torch.randint(0, CARD, (K, tt), generator=g), prompts[i % 4], song=f"s{i}"))
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Example:
        return self.items[i]


@functools.lru_cache(maxsize=1)
def _tiny_ckpt():
    return resolve("tiny-random")  # read-only below: every model is built afresh from it


def tiny():
    ckpt = _tiny_ckpt()
    return ckpt, build_model(ckpt, CPU, inference=False)


def config(**kw) -> TrainConfig:
    sched = kw.pop("schedule", ScheduleConfig(phase1_steps=2, warmup_steps=2, sep_lr=1e-2, lr=1e-2, sep_final_lr=1e-2))
    base = dict(steps=4, batch=2, grad_accum=1, schedule=sched, context_dropout=0.0, text_dropout=0.0, word_dropout=0.0,
                valid_every=1000, save_every=1000, log_every=1, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def lm_tensors(path: Path) -> dict[str, torch.Tensor]:
    state = load_state_file(Path(path) / "model.safetensors")
    return {k: v for k, v in state.items() if k.startswith("lm.")}


def all_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_state_file(Path(path) / "model.safetensors")


# -- the loss --------------------------------------------------------------------------------------

def test_loss_equals_a_hand_computation_with_left_padded_contexts():
    """Each example alone, no padding, logits picked one by one: the batched loss must match."""
    _, model = tiny()
    lm = model.lm
    g = torch.Generator().manual_seed(3)
    exs = [Example(torch.randint(0, CARD, (K, tc), generator=g), torch.randint(0, CARD, (K, 6), generator=g), "")
           for tc in (5, 2, 0)]
    batch = make_batch(exs, lm.cfg)
    net = SepTokenLM(lm)
    for valid_only in (False, True):
        with torch.no_grad():
            loss, per_cb = stage_loss(net, batch, valid_steps_only=valid_only)

        nll = torch.zeros(K)
        with torch.no_grad():
            for ex in exs:
                layout = StageLayout(ex.context.shape[-1], 6, K)
                tokens, valid = build_sequence(ex.context[None], ex.target[None], layout, CARD)
                sv = valid.any(1)
                logits = lm(tokens, step_positions(sv), sv)  # (1, K, S, card)
                for q in range(K):
                    for f in range(6 - q if valid_only else 6):  # valid steps: not the last q frames
                        s = layout.target_offset + f + 1 + q  # where codebook q of target frame f sits
                        assert tokens[0, q, s] == ex.target[q, f]
                        nll[q] -= F.log_softmax(logits[0, q, s - 1], -1)[ex.target[q, f]]
        want = nll / (len(exs) * torch.tensor([6 - q if valid_only else 6 for q in range(K)]))
        assert torch.allclose(per_cb, want, atol=1e-5), (per_cb, want)
        assert abs(loss.item() - want.mean().item()) < 1e-5


def _reference_scored(tc: int, tt: int, k: int) -> set[tuple[int, int]]:
    """(codebook, target frame) pairs STAGE scores, derived the way its code does: MusicGen's delay
    pattern over the T = tc + 1 + tt frames of `[context][context token][target]` has the steps
    [] then, for s = 0 .. T + k - 2, the codes (q, s - q) that exist; `keep_only_valid_steps`
    keeps the first len - max_delay steps (audiocraft's `valid_layout`), and the target's codes
    among them are the ones scored (prompt_processor.py's decode_logits_closure)."""
    t_all = tc + 1 + tt
    layout = [[]] + [[(q, s - q) for q in range(k) if 0 <= s - q < t_all] for s in range(t_all + k - 1)]
    valid = layout[: len(layout) - (k - 1)]
    return {(q, t - (tc + 1)) for step in valid for q, t in step if t >= tc + 1}


def test_loss_mask_is_the_references_rule_on_a_hand_worked_example():
    """2 context frames, 3 target frames, 4 codebooks: T = 6 frames, 7 valid steps (0..6). Codebook
    q of frame t sits at step t + 1 + q, so frame t counts when t + 1 + q <= 6, i.e. t <= 5 - q:
    target frames (t - 3) 0, 1, 2 of codebook 0; 0, 1 of codebook 1; 0 of codebook 2; none of 3."""
    hand = {(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0)}
    assert _reference_scored(2, 3, 4) == hand
    layout = StageLayout(2, 3, 4)
    mask = target_mask(layout)
    frame = layout.frame_of()
    ours = {(q, int(frame[q, s]) - layout.target_offset) for q, s in mask.nonzero().tolist()}
    assert ours == hand
    for tc, tt in ((0, 5), (7, 16), (3, 1)):
        lay = StageLayout(tc, tt, K)
        fr = lay.frame_of()
        got = {(q, int(fr[q, s]) - lay.target_offset) for q, s in target_mask(lay).nonzero().tolist()}
        assert got == _reference_scored(tc, tt, K), (tc, tt)

    # the loss: hand-picked logits of exactly those codes; codebook 3 scores nothing and counts 0
    g = torch.Generator().manual_seed(0)
    ex = Example(torch.randint(0, CARD, (K, 2), generator=g), torch.randint(0, CARD, (K, 3), generator=g), "")
    batch = make_batch([ex], tiny()[1].lm.cfg)
    logits = torch.randn(1, K, batch.tokens.shape[-1] - 1, CARD, generator=g)
    loss, per_cb = codebook_cross_entropy(logits, batch.tokens, batch.layout)
    want = torch.zeros(K)
    for q, f in hand:
        want[q] -= F.log_softmax(logits[0, q, layout.target_offset + f + q], -1)[ex.target[q, f]]
    want /= torch.tensor([3, 2, 1, 1])
    assert torch.allclose(per_cb, want, atol=1e-6) and per_cb[3] == 0
    assert torch.isclose(loss, want.sum() / K)


def test_word_dropout_drops_words_of_kept_prompts():
    _, model = tiny()
    words = [f"w{i}" for i in range(40)]
    exs = [Example(torch.zeros(K, 0, dtype=torch.long), torch.zeros(K, 2, dtype=torch.long), " ".join(words))
           for _ in range(50)]
    b = make_batch(exs, model.lm.cfg, generator=torch.Generator().manual_seed(0), word_dropout=0.3)
    kept = [p.split(" ") for p in b.prompts if p]
    share = 1 - sum(len(k) for k in kept) / (len(kept) * len(words))
    assert 0.25 < share < 0.35, share
    assert all(k == [w for w in words if w in set(k)] for k in kept)  # order kept, nothing invented
    same = make_batch(exs, model.lm.cfg, generator=torch.Generator().manual_seed(0), word_dropout=0.3)
    assert same.prompts == b.prompts
    none = make_batch(exs, model.lm.cfg, generator=torch.Generator().manual_seed(0), word_dropout=0.0)
    assert none.prompts == [e.prompt for e in exs]
    assert make_batch(exs, model.lm.cfg, word_dropout=0.3).prompts == none.prompts  # validation: no draws


def test_loss_sees_target_codes_only():
    """Input-independent logits: context, context token and holes never enter the loss; targets do."""
    _, model = tiny()
    g = torch.Generator().manual_seed(1)
    exs = [Example(torch.randint(0, CARD, (K, 7), generator=g), torch.randint(0, CARD, (K, 5), generator=g), "")
           for _ in range(2)]
    batch = make_batch(exs, model.lm.cfg)
    fixed = torch.randn(2, K, batch.tokens.shape[-1] - 1, CARD, generator=g)
    forward = lambda tokens, *a: fixed[..., : tokens.shape[-1], :]  # noqa: E731
    ref, _ = stage_loss(forward, batch)

    other = [replace(e, context=torch.randint(0, CARD, (K, 7), generator=g)) for e in exs]
    assert torch.equal(stage_loss(forward, make_batch(other, model.lm.cfg))[0], ref)
    tokens = batch.tokens.clone()
    outside = ~target_mask(batch.layout, valid_steps_only=False)  # (K, S): context, SEP, holes
    tokens[:, outside] = torch.randint(0, CARD, (int(outside.sum()),), generator=g)
    assert torch.equal(codebook_cross_entropy(fixed, tokens, batch.layout)[0], ref)
    assert int(target_mask(batch.layout, valid_steps_only=False).sum()) == K * 5
    assert int(target_mask(batch.layout).sum()) == 5 + 4 + 3 + 2
    changed = [replace(exs[0], target=(exs[0].target + 1) % CARD), exs[1]]
    assert not torch.equal(stage_loss(forward, make_batch(changed, model.lm.cfg))[0], ref)


def test_conditioning_dropout_pads_the_context_and_empties_the_prompt():
    _, model = tiny()
    exs = Synthetic(64, max_tc=6).items
    for e in exs:
        e.prompt = "x"
    b = make_batch(exs, model.lm.cfg, context_dropout=0.5, text_dropout=0.5, generator=torch.Generator().manual_seed(0))
    assert 10 < int(b.context_dropped.sum()) < 54 and 10 < int(b.text_dropped.sum()) < 54
    frame = b.layout.frame_of()  # (K, S)
    in_context = (frame >= 0) & (frame < b.layout.context_frames)
    for i, e in enumerate(exs):
        assert (b.prompts[i] == "") == bool(b.text_dropped[i])
        if b.context_dropped[i]:  # the unconditional branch: all padding, none of it attended to
            assert (b.tokens[i][in_context] == CARD).all() and not b.valid[i][in_context].any()
        else:  # left-padded: the real context ends right before the context token
            tc = e.context.shape[-1]
            assert torch.equal(b.tokens[i, 0, b.layout.context_frames - tc + 1: b.layout.context_frames + 1], e.context[0])


# -- the schedule ----------------------------------------------------------------------------------

def test_schedule_follows_the_paper():
    s = ScheduleConfig()  # 200 steps phase 1 at 1e-4; then 500 warm-up steps
    assert s.lrs(0) == (0.0, 1e-4) and s.lrs(199) == (0.0, 1e-4) and s.phase(199) == 1 and s.phase(200) == 2
    main, sep = s.lrs(200)
    assert math.isclose(main, 1e-5 / 500) and math.isclose(sep, 1e-4 - 9e-5 / 500)
    main, sep = s.lrs(449)
    assert math.isclose(main, 0.5e-5) and math.isclose(sep, 5.5e-5)
    assert s.lrs(699) == (1e-5, 1e-5) and s.lrs(10_000) == (1e-5, 1e-5)


def test_a_model_packed_for_inference_is_refused(tmp_path):
    ckpt = _tiny_ckpt()
    model = build_model(ckpt, CPU)  # inference: packed where the CPU allows
    if not any(p.is_mkldnn for p in model.lm.parameters()):
        pytest.skip("this torch build cannot pack weights for oneDNN")
    with pytest.raises(ValueError, match="inference=False"):
        Trainer(model, ckpt, Synthetic(4), None, tmp_path / "run", config())


def test_phase1_changes_only_the_context_token_rows(tmp_path):
    ckpt, model = tiny()
    before = {k: v.clone() for k, v in model.lm.state_dict().items()}
    frozen = {k: v.clone() for k, v in model.text.model.state_dict().items()}
    cfg = config(steps=4, schedule=ScheduleConfig(phase1_steps=100, sep_lr=1e-2), text_dropout=0.3,
                 context_dropout=0.3)
    trainer = Trainer(model, ckpt, Synthetic(6), None, tmp_path / "run", cfg)
    trainer.fit()
    sep = model.lm.cfg.sep_id
    for k, v in model.lm.state_dict().items():  # the live LM: untouched, bit for bit
        assert torch.equal(v, before[k]), k
    for k, v in model.text.model.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    saved = lm_tensors(tmp_path / "run")
    for k, v in saved.items():
        name = k[3:]
        if name.startswith("emb."):
            rows = torch.ones(v.shape[0], dtype=torch.bool)
            rows[sep] = False
            assert torch.equal(v[rows], before[name][rows]), k
            assert not torch.equal(v[sep], before[name][sep]), f"{k}: context-token row did not learn"
        else:
            assert torch.equal(v, before[name]), k
    assert torch.equal(saved["lm.emb.0.weight"][sep], trainer.net.sep_rows[0].detach())


def test_phase2_changes_every_lm_weight(tmp_path):
    ckpt, model = tiny()
    before = {k: v.clone() for k, v in model.lm.state_dict().items()}
    trainer = Trainer(model, ckpt, Synthetic(4), None, tmp_path / "run", config(steps=3, batch=4))
    trainer.fit()
    saved = lm_tensors(tmp_path / "run")
    assert set(saved) == {f"lm.{k}" for k in before}
    unchanged = [k for k, v in saved.items() if torch.equal(v, before[k[3:]])]
    assert not unchanged, unchanged
    for q in range(K):
        assert (saved[f"lm.emb.{q}.weight"][CARD] == 0).all()  # the pad row stays exactly zero
    assert trainer.phase == 2


def test_a_fixed_batch_is_overfitted(tmp_path):
    ckpt, model = tiny()
    cfg = config(steps=40, batch=4, schedule=ScheduleConfig(phase1_steps=5, warmup_steps=5, sep_lr=1e-2, lr=1e-2,
                                                            sep_final_lr=1e-2))
    records = Trainer(model, ckpt, Synthetic(4), None, tmp_path / "run", cfg).fit()
    losses = [r.loss for r in records]
    print(f"overfit: first {losses[0]:.3f}, after phase 1 {losses[5]:.3f}, last {losses[-1]:.3f}")
    assert losses[-1] < 0.5 * losses[0], losses
    assert losses[-1] < min(losses[:5]) - 1.0


# -- data order ------------------------------------------------------------------------------------

def test_sampler_matches_distributed_sampler_and_resumes_mid_epoch():
    data = list(range(11))
    for world in (1, 2, 3):
        for rank in range(world):
            ref = torch.utils.data.DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=5)
            ours = ResumableSampler(len(data), seed=5, rank=rank, world=world)
            for epoch in (0, 3):
                ref.set_epoch(epoch)
                ours.set_epoch(epoch)
                ours.set_start(0)
                assert list(ours) == list(ref) and len(ours) == len(ref)
                ours.set_start(2)
                assert list(ours) == list(ref)[2:] and len(ours) == len(ref) - 2


# -- checkpoints: resume, generate, interruption ---------------------------------------------------

RESUME_CFG = dict(batch=2, grad_accum=2, context_dropout=0.5, text_dropout=0.5, valid_every=3,
                  save_every=1000, schedule=ScheduleConfig(phase1_steps=3, warmup_steps=2, sep_lr=1e-2, lr=5e-3,
                                                           sep_final_lr=5e-3))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """8 steps in one go: 6 examples, 2 per micro-batch, 2 micro-batches per step (epochs end mid-step)."""
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    ckpt, model = tiny()
    train = Synthetic(6)
    records = Trainer(model, ckpt, train, Synthetic(3, seed=9), run, config(steps=8, **RESUME_CFG)).fit()
    return run, records, train.epochs


def test_resume_continues_exactly(uninterrupted, tmp_path):
    run_a, records_a, _ = uninterrupted
    run = tmp_path / "run"
    ckpt, model = tiny()
    first = Trainer(model, ckpt, Synthetic(6), Synthetic(3, seed=9), run, config(steps=4, **RESUME_CFG)).fit()
    assert [r.loss for r in first] == [r.loss for r in records_a[:4]]
    del model

    step_dir = ckpt_io.latest_checkpoint(run)
    assert step_dir.name == "step-00000004"
    ckpt2 = resolve(str(step_dir))  # what run_training does: the checkpoint is a whole model
    trainer = Trainer(build_model(ckpt2, CPU, inference=False), ckpt2, Synthetic(6), Synthetic(3, seed=9), run,
                      config(steps=8, **RESUME_CFG))
    trainer.restore(step_dir)
    assert (trainer.step, trainer.epoch, trainer.micro_in_epoch) == (4, 2, 2)
    second = trainer.fit()
    assert [r.step for r in second] == [5, 6, 7, 8]
    for a, b in zip(records_a[4:], second):
        assert a.loss == b.loss and a.valid_loss == b.valid_loss and (a.lr_main, a.lr_sep) == (b.lr_main, b.lr_sep)
    want, got = all_tensors(run_a), all_tensors(run)
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    rows = read_metrics(run / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    assert [r["valid_loss"] != "" for r in rows] == [s in (3, 4, 6, 8) for s in range(1, 9)]  # 4: end of part 1


def test_the_run_folder_is_a_model_that_generates(uninterrupted):
    run, records, epochs = uninterrupted
    assert epochs == [0, 1, 2, 3, 4, 5]  # 32 examples seen over 6-example epochs
    assert (run / "loss_curve.png").stat().st_size > 1000
    assert (run / "tensorboard").is_dir() or "tensorboard" not in sys.modules
    ckpt = resolve(str(run))
    assert ckpt.format == "native" and ckpt.meta["trained_step"] == 8 and ckpt.is_random
    model = build_model(ckpt, CPU)
    res = render_stem(model, StemRequest(bpm=120, bars=1, context_mode="click", sample_rate=32000, seed=1))
    assert res.num_samples == 64000 and len(res.takes) == 1 and np.isfinite(res.takes[0]).all()
    assert np.abs(res.takes[0]).max() > 0
    files = sorted(p.name for p in run.iterdir())
    assert {"model.safetensors", "stage_bridge.json", "metrics.csv", "checkpoints"} <= set(files)
    assert oct((run / "model.safetensors").stat().st_mode & 0o777) == "0o644"


def test_ctrl_c_during_a_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    run = tmp_path / "run"
    ckpt, model = tiny()
    real = ckpt_io.save_native
    calls = []

    def save_then_interrupt(ck, folder):
        calls.append(folder)
        if len(calls) == 1:
            return real(ck, folder)
        (folder / "model.safetensors").write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_io, "save_native", save_then_interrupt)
    trainer = Trainer(model, ckpt, Synthetic(4), None, run, config(steps=4, save_every=2))
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert len(calls) == 2
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000002"]
    good = ckpt_io.latest_checkpoint(run)
    assert good.name == "step-00000002"
    top, kept = all_tensors(run), all_tensors(good)
    assert top.keys() == kept.keys() and all(torch.equal(top[k], kept[k]) for k in top)
    build_model(resolve(str(run)), CPU)

    # and the run resumes from it
    monkeypatch.setattr(ckpt_io, "save_native", real)
    ck = resolve(str(good))
    again = Trainer(build_model(ck, CPU, inference=False), ck, Synthetic(4), None, run, config(steps=4, save_every=2))
    again.restore(good)
    assert [r.step for r in again.fit()] == [3, 4]
    assert ckpt_io.latest_checkpoint(run).name == "step-00000004"


def test_ctrl_c_during_training_writes_nothing(tmp_path, monkeypatch):
    run = tmp_path / "run"
    ckpt, model = tiny()
    trainer = Trainer(model, ckpt, Synthetic(4), None, run, config(steps=6, save_every=2))
    real = Trainer._optimizer_step

    def step(self):
        if self.step == 2:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(Trainer, "_optimizer_step", step)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000002"]
    assert not list(run.glob(".*.part"))


def test_sigterm_mid_step_saves_the_last_step_and_resume_is_exact(uninterrupted, tmp_path, monkeypatch):
    """SIGTERM after the first micro-batch of step 3: step 2 is saved (the half step dropped, data
    position and random states rewound), and resuming reproduces the uninterrupted run."""
    import signal

    run_a, records_a, _ = uninterrupted
    run = tmp_path / "run"
    ckpt, model = tiny()
    real = Trainer._micro_step
    sent = []

    def micro(self, examples, sync):
        loss = real(self, examples, sync)
        if self.step == 2 and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(Trainer, "_micro_step", micro)
    trainer = Trainer(model, ckpt, Synthetic(6), Synthetic(3, seed=9), run, config(steps=8, **RESUME_CFG))
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt) as info:
        trainer.fit()
    assert info.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == previous  # the handler is put back
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000002"]
    monkeypatch.setattr(Trainer, "_micro_step", real)

    step_dir = ckpt_io.latest_checkpoint(run)
    ck = resolve(str(step_dir))
    again = Trainer(build_model(ck, CPU, inference=False), ck, Synthetic(6), Synthetic(3, seed=9), run,
                    config(steps=8, **RESUME_CFG))
    again.restore(step_dir)
    rest = again.fit()
    assert [r.step for r in rest] == list(range(3, 9))
    assert [r.loss for r in rest] == [r.loss for r in records_a[2:]]
    want, got = all_tensors(run_a), all_tensors(run)
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_best_validation_model_is_kept(tmp_path):
    ckpt, model = tiny()
    cfg = config(steps=6, valid_every=1, save_every=1000,
                 schedule=ScheduleConfig(phase1_steps=1, warmup_steps=1, sep_lr=3e-2, lr=3e-2, sep_final_lr=3e-2))
    records = Trainer(model, ckpt, Synthetic(4), Synthetic(2, seed=9), tmp_path / "run", cfg).fit()
    losses = [r.valid_loss for r in records]
    best = min(range(len(losses)), key=lambda i: losses[i])
    info = json.loads((tmp_path / "run" / "best" / "best.json").read_text())
    assert info["step"] == records[best].step and info["valid_loss"] == losses[best]
    assert resolve(str(tmp_path / "run" / "best")).meta["trained_step"] == records[best].step
    assert not list((tmp_path / "run").glob(".*.part"))


@pytest.mark.parametrize("mode", ["value", "norm"])
def test_gradient_clipping_modes(tmp_path, mode, monkeypatch):
    ckpt, model = tiny()
    trainer = Trainer(model, ckpt, Synthetic(4), None, tmp_path / "run", config(clip=0.5, clip_mode=mode))
    g = torch.Generator().manual_seed(0)
    trainer.net.sep_rows.grad = torch.randn(trainer.net.sep_rows.shape, generator=g) * 10
    seen = {}
    monkeypatch.setattr(trainer.optimizer, "step", lambda: seen.update(grad=trainer.net.sep_rows.grad.clone()))
    trainer._optimizer_step()
    grad = seen["grad"]
    if mode == "value":  # the reference's: every element into [-0.5, 0.5]
        assert grad.abs().max() == 0.5 and (grad.abs() < 0.5).any()
    else:
        assert torch.isclose(grad.norm(), torch.tensor(0.5), atol=1e-5)


# -- run_training ----------------------------------------------------------------------------------

def _train_cli(*extra: str) -> int:
    import argparse
    from stage_bridge.train.run import add_train_arguments, run_training

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return run_training(parser.parse_args(list(extra)))


def test_prepare_warns_without_pedalboard(tmp_path, capsys, monkeypatch):
    from stage_bridge.train import augment

    data = tmp_path / "songs"
    make_plain(data, songs=1, seconds=11)
    monkeypatch.setattr(augment, "rubberband_available", lambda: False)
    assert _train_cli("prepare", "--data", str(data), "--cache", str(tmp_path / "cache"), "--quiet") == 0
    err = capsys.readouterr().err
    assert "pedalboard is not installed" in err and "[train]" in err and "GPL" in err
    monkeypatch.setattr(augment, "rubberband_available", lambda: True)
    assert _train_cli("prepare", "--data", str(data), "--cache", str(tmp_path / "cache"), "--quiet") == 0
    assert "pedalboard" not in capsys.readouterr().err


@pytest.mark.slow
def test_run_training_end_to_end(tmp_path, capsys):
    """`stage-bridge train` on songs made here: discovery, split, pairs, token cache, checkpoints."""
    data = tmp_path / "songs"
    make_plain(data, songs=4, seconds=11)  # one 10 s window per song
    (data / "broken").mkdir()
    (data / "broken" / "drums.wav").write_bytes(b"not audio")  # skipped with a warning
    out = tmp_path / "run"
    common = ["--data", str(data), "--instrument", "drums", "--base", "tiny-random", "--out", str(out),
              "--device", "cpu", "--batch", "2", "--grad-accum", "1", "--phase1-steps", "1", "--warmup-steps", "1",
              "--lr", "1e-3", "--valid-every", "2", "--save-every", "2", "--log-every", "1", "--quiet",
              "--cache", str(tmp_path / "cache")]
    assert _train_cli("prepare", "--data", str(data), "--cache", str(tmp_path / "cache"), "--quiet") == 0
    assert len(list((tmp_path / "cache" / "analysis").glob("*.npz"))) == 4  # the broken song is skipped
    assert "prepared 4 songs" in capsys.readouterr().out
    assert _train_cli(*common, "--steps", "3") == 0
    assert len(list((tmp_path / "cache" / "analysis").glob("*.npz"))) == 4  # training reused the analysis
    split = json.loads((out / "split.json").read_text())
    assert sorted(n for part in split.values() for n in part) == [f"song{i:02d}" for i in range(4)]
    assert split["train"] and split["valid"]
    stored = json.loads((out / "train_config.json").read_text())
    assert stored["settings"]["instrument"] == "drums" and stored["train_config"]["precision"] == "fp32"
    assert ckpt_io.latest_checkpoint(out).name == "step-00000003"
    assert list((tmp_path / "cache" / "tokens").rglob("*.npy"))  # the validation pairs' codes were cached
    assert (out / "best" / "best.json").is_file()
    err = capsys.readouterr().err
    assert "4 songs found, 1 skipped" in err and "random weights" in err
    assert any(r["valid_loss"] for r in read_metrics(out / "metrics.csv"))  # the valid song gave examples

    assert _train_cli(*common, "--steps", "3") == 2  # refuses to overwrite a run
    assert "--resume" in capsys.readouterr().err
    assert _train_cli(*common, "--steps", "5", "--resume", "--batch", "3") == 0
    err = capsys.readouterr().err
    assert "resuming" in err and "--batch 2" in err  # the run's own settings win
    rows = read_metrics(out / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]
    assert resolve(str(out)).meta["trained_step"] == 5
    assert _train_cli("--out", str(out), "--resume", "--steps", "6", "--device", "cpu", "--quiet",
                      "--cache", str(tmp_path / "cache")) == 0  # the run remembers its data and instrument
    assert resolve(str(out)).meta["trained_step"] == 6
    # a run made before the reference-faithful options existed resumes with what it did then
    stored = json.loads((out / "train_config.json").read_text())
    for key in ("word_dropout", "clip_mode", "loss_mask", "split", "valid_per_song", "tracker"):
        del stored["settings"][key]
    (out / "train_config.json").write_text(json.dumps(stored))
    assert _train_cli("--out", str(out), "--resume", "--steps", "7", "--device", "cpu", "--quiet",
                      "--cache", str(tmp_path / "cache")) == 0
    assert resolve(str(out)).meta["trained_step"] == 7
    assert _train_cli("--out", str(tmp_path / "new"), "--base", "tiny-random") == 2
    assert "--data and --instrument are required" in capsys.readouterr().err
    assert _train_cli("--data", str(tmp_path), "--instrument", "drums", "--out", str(tmp_path / "none"),
                      "--resume") == 2


# -- torchrun / DistributedDataParallel ------------------------------------------------------------

DDP_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from test_trainer import Synthetic, config, tiny
    from stage_bridge.train.run import init_distributed
    from stage_bridge.train.trainer import Trainer
    torch.set_num_threads(1)
    info, device = init_distributed("cpu")
    ckpt, model = tiny()
    cfg = config(steps=3, batch={batch}, grad_accum=2, valid_every=2)
    records = Trainer(model, ckpt, Synthetic(8), Synthetic(5, seed=9), Path({out!r}), cfg, info).fit()
    if info.rank == 0:
        print("LOSSES", [r.loss for r in records])
        print("VALID", [r.valid_loss for r in records])
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()
""")


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_ddp_under_torchrun_matches_a_single_process(tmp_path):
    """2 processes x 1 example == 1 process x 2 examples (same samples, averaged gradients), and the
    validation loss is the same mean over all 5 validation examples (an odd count: none twice)."""
    tests = str(Path(__file__).parent)
    ckpt, model = tiny()
    ref = Trainer(model, ckpt, Synthetic(8), Synthetic(5, seed=9), tmp_path / "single",
                  config(steps=3, batch=2, grad_accum=2, valid_every=2)).fit()
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT.format(tests=tests, batch=1, out=str(tmp_path / "ddp")))
    root = str(Path(__file__).resolve().parent.parent)  # the package under test, not an installed copy
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    losses = json.loads(proc.stdout.split("LOSSES", 1)[1].strip().splitlines()[0])
    assert np.allclose(losses, [r.loss for r in ref], atol=1e-5), (losses, [r.loss for r in ref])
    valid = json.loads(proc.stdout.split("VALID", 1)[1].strip().splitlines()[0].replace("None", "null"))
    assert [v is None for v in valid] == [r.valid_loss is None for r in ref]
    assert np.allclose([v for v in valid if v is not None], [r.valid_loss for r in ref if r.valid_loss is not None],
                       atol=1e-5), (valid, [r.valid_loss for r in ref])
    want, got = all_tensors(tmp_path / "single"), all_tensors(tmp_path / "ddp")
    for k in want:
        if k.startswith("lm."):
            assert torch.allclose(want[k], got[k], atol=1e-5), k
    assert not (tmp_path / "ddp" / "checkpoints" / "step-00000003" / "rank1").exists()


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_train_command_under_torchrun_shares_the_preparation(tmp_path):
    """`stage-bridge train` with 2 processes: each analyses its share of the songs, both wait for
    the other, then they train; every song is analysed once."""
    data = tmp_path / "songs"
    make_plain(data, songs=4, seconds=11)
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "stage_bridge.train.run", "--data", str(data), "--instrument", "drums", "--base",
                           "tiny-random", "--out", str(out), "--device", "cpu", "--batch", "1", "--grad-accum", "1",
                           "--phase1-steps", "1", "--warmup-steps", "1", "--steps", "3", "--valid-every", "2",
                           "--save-every", "2", "--quiet", "--cache", str(tmp_path / "cache")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(list((tmp_path / "cache" / "analysis").glob("*.npz"))) == 4
    assert ckpt_io.latest_checkpoint(out).name == "step-00000003" and (out / "best" / "best.json").is_file()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
@pytest.mark.parametrize("fails", [False, True])
def test_the_ddp_model_is_gone_before_the_process_group_ends(fails, tmp_path, monkeypatch):
    """A DDP wrapper freed after `destroy_process_group` destroys the Gloo group itself with the
    GIL held, and can deadlock with Gloo's worker threads (CI met it: a trained torchrun run that
    never exited): `run_training` lets the model go first, after a finished run and after an
    error inside training. In-process: a one-member Gloo group, the trainer told it is one of two."""
    import gc

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from stage_bridge.train import run as run_module
    from stage_bridge.train.trainer import DistInfo

    make_plain(tmp_path / "songs", songs=2, seconds=11)

    def init_distributed(device_arg):
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        return DistInfo(rank=0, world=2), torch.device("cpu")

    alive_at_destroy = []
    destroy = dist.destroy_process_group
    monkeypatch.setattr(run_module, "init_distributed", init_distributed)
    monkeypatch.setattr(dist, "destroy_process_group", lambda *a, **k: (
        alive_at_destroy.append(sum(type(o) is DDP for o in gc.get_objects())), destroy(*a, **k)))
    if fails:
        fit = Trainer.fit

        def fit_then_fail(self):
            fit(self)
            assert self.ddp is not None  # the wrapper exists when the error comes
            raise RuntimeError("a failure inside training")

        monkeypatch.setattr(Trainer, "fit", fit_then_fail)
    args = ("--data", str(tmp_path / "songs"), "--instrument", "drums", "--base", "tiny-random", "--out",
            str(tmp_path / "run"), "--device", "cpu", "--batch", "1", "--phase1-steps", "1", "--warmup-steps", "1",
            "--steps", "2", "--valid-every", "2", "--save-every", "2", "--quiet", "--cache", str(tmp_path / "cache"))
    try:
        if fails:
            with pytest.raises(RuntimeError, match="a failure inside training"):
                _train_cli(*args)
        else:
            assert _train_cli(*args) == 0
    finally:
        if dist.is_initialized():
            destroy()
    assert alive_at_destroy == [0]


def test_wrapping_twice_continues_from_the_trained_rows():
    _, model = tiny()
    first = SepTokenLM(model.lm)
    with torch.no_grad():
        first.sep_rows.add_(1.0)
    second = SepTokenLM(model.lm)  # e.g. a second Trainer on the same live model
    assert torch.equal(second.sep_rows, first.sep_rows) and not first._hooks
    assert torch.equal(model.lm.emb[2].weight[model.lm.cfg.sep_id], first.sep_rows[2])
    lm = second.merge()
    assert not lm._forward_hooks and all(not e._forward_hooks for e in lm.emb)


# -- CUDA (skipped without a GPU) ------------------------------------------------------------------

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@CUDA
@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_mixed_precision_on_cuda(tmp_path, precision):
    ckpt = _tiny_ckpt()
    model = build_model(ckpt, torch.device("cuda"), inference=False)
    cfg = config(steps=20, batch=4, precision=precision, valid_every=10,
                 schedule=ScheduleConfig(phase1_steps=3, warmup_steps=3, sep_lr=1e-2, lr=1e-2, sep_final_lr=1e-2))
    trainer = Trainer(model, ckpt, Synthetic(4), Synthetic(2, seed=3), tmp_path / "run", cfg)
    losses = [r.loss for r in trainer.fit()]
    print(precision, [round(x, 3) for x in losses[::4]])
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0] - 0.5
    assert (trainer.scaler.is_enabled()) == (precision == "fp16")
    back = build_model(resolve(str(tmp_path / "run")), torch.device("cuda"))
    res = render_stem(back, StemRequest(bpm=120, bars=1, context_mode="click", sample_rate=32000, seed=1))
    assert np.isfinite(res.takes[0]).all()


@CUDA
def test_resume_on_cuda(tmp_path):
    cfg = dict(RESUME_CFG, precision="bf16")
    ckpt = _tiny_ckpt()
    cuda = torch.device("cuda")
    whole = Trainer(build_model(ckpt, cuda, inference=False), ckpt, Synthetic(6), None, tmp_path / "a", config(steps=6, **cfg)).fit()
    Trainer(build_model(ckpt, cuda, inference=False), ckpt, Synthetic(6), None, tmp_path / "b", config(steps=3, **cfg)).fit()
    step_dir = ckpt_io.latest_checkpoint(tmp_path / "b")
    ck = resolve(str(step_dir))
    trainer = Trainer(build_model(ck, cuda, inference=False), ck, Synthetic(6), None, tmp_path / "b", config(steps=6, **cfg))
    trainer.restore(step_dir)
    rest = trainer.fit()
    print("cuda resume", [(a.loss, b.loss) for a, b in zip(whole[3:], rest)])
    assert np.allclose([a.loss for a in whole[3:]], [b.loss for b in rest], rtol=0, atol=1e-5)
