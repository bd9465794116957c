"""Exact resume: a stage-1 run killed mid-epoch and resumed with `--ckpt_path` logs the same losses.

The real pipeline runs end to end: `python -m lightning_most fit` (in-process `main`) of the tiny run of
`tests/tiny_fit.py`: the tiny backbone, `EmbeddedDataModule` over a tiny embedded corpus (built once per
session in tmp) with a prefetching worker, AdamW with warmup + cosine, gradient clipping, `RunCheckpoint`;
`StepLog` records each step's loss, learning rate and cut ids. The stream is infinite, so the
whole run is one epoch and the kill lands mid-epoch: the loader position saved with the checkpoint
is part of what is tested (without it the resumed run would replay the first batches).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from lightning_most.main import main
from tests.tiny_fit import KilledRun, read_steps, write_config

MAX_STEPS = 8
CHECKPOINT_EVERY = 3  # checkpoints at steps 3 and 6
KILL_AT_STEP = 5  # dies while running step 6: steps 4-5 are lost, the resumed run redoes them


def kill_at(step: int) -> dict:
    """The `KillAtStep` callback of a run that crashes after optimizer step `step`."""
    return {"class_path": "tests.tiny_fit.KillAtStep", "init_args": {"step": step}}


def test_killed_run_resumes_with_identical_losses(tiny_fit_corpus: Path, tmp_path: Path) -> None:
    main(["fit", "--config", str(write_config(tiny_fit_corpus, tmp_path / "full", MAX_STEPS, CHECKPOINT_EVERY))])
    reference = {r["step"]: r for r in read_steps(tmp_path / "full")}
    assert sorted(reference) == list(range(1, MAX_STEPS + 1))

    killed_root = tmp_path / "killed"
    config = write_config(tiny_fit_corpus, killed_root, MAX_STEPS, CHECKPOINT_EVERY, extra_callbacks=(kill_at(KILL_AT_STEP),))
    with pytest.raises(KilledRun):
        main(["fit", "--config", str(config)])
    last = killed_root / "checkpoints" / "last.ckpt"
    assert last.is_file()

    config = write_config(tiny_fit_corpus, tmp_path / "resumed", MAX_STEPS, CHECKPOINT_EVERY)
    main(["fit", "--config", str(config), "--ckpt_path", str(last)])
    resumed = {r["step"]: r for r in read_steps(tmp_path / "resumed")}
    steps = list(range(CHECKPOINT_EVERY + 1, MAX_STEPS + 1))
    assert sorted(resumed) == steps
    # The same batches (loader position restored, not replayed from the start of the stream) ...
    assert [resumed[s]["cut_ids"] for s in steps] == [reference[s]["cut_ids"] for s in steps]
    assert reference[CHECKPOINT_EVERY + 1]["cut_ids"] != reference[1]["cut_ids"]
    # ... the same schedule (the LambdaLR state) and the same losses (weights + AdamW moments).
    assert [resumed[s]["lr"] for s in steps] == pytest.approx([reference[s]["lr"] for s in steps], rel=1e-12)
    assert [resumed[s]["loss"] for s in steps] == pytest.approx([reference[s]["loss"] for s in steps], rel=1e-6, abs=1e-7)
    # The losses move, so equal numbers mean something.
    assert abs(reference[MAX_STEPS]["loss"] - reference[CHECKPOINT_EVERY + 1]["loss"]) > 1e-3


def test_filling_missing_adamw_state_leaves_training_unchanged() -> None:
    from lightning_most.stages.optimizer import fill_missing_adamw_state

    torch.manual_seed(0)
    used, late = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)  # `late` gets its first gradient at step 3
    copies = [torch.nn.ModuleList([used, late]), copy.deepcopy(torch.nn.ModuleList([used, late]))]
    optimizers = [torch.optim.AdamW(m.parameters(), lr=0.1, weight_decay=0.1) for m in copies]
    x = torch.randn(8, 4)
    for step in range(4):
        for filled, (model, opt) in enumerate(zip(copies, optimizers)):
            loss = model[0](x).square().mean() + (model[1](x).square().mean() if step >= 3 else 0.0)
            loss.backward()
            opt.step()
            opt.zero_grad()
            if filled:
                fill_missing_adamw_state(opt)
                assert len(opt.state) == 4  # the late layer's weight and bias have a (zero) state
    assert len(optimizers[0].state) == 4  # by now the plain optimizer has them too
    for a, b in zip(copies[0].parameters(), copies[1].parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
