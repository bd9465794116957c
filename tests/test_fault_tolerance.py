"""Preemption and torn checkpoints: `lightning_most.fault_tolerance`.

The preemption test runs the tiny fit of `tests/tiny_fit.py` as a real process, sends it SIGTERM
mid-run, and runs the same command again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lightning_most.fault_tolerance import RunCheckpoint, is_whole_checkpoint, publish
from lightning_most.safe_loading import load_checkpoint
from tests.tiny_fit import fit_command, read_steps, subprocess_env, write_config

MAX_STEPS = 8


def _save(path: Path, step: int) -> Path:
    torch.save({"global_step": step, "weights": torch.full((256,), float(step))}, path)
    return path


def test_a_torn_or_bit_flipped_file_is_not_whole(tmp_path: Path) -> None:
    whole = _save(tmp_path / "whole.ckpt", 1)
    data = whole.read_bytes()
    (tmp_path / "torn.ckpt").write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[data.index(b"\x00\x00\x80?") + 1] ^= 0xFF  # inside the tensor's bytes (1.0 as float32)
    (tmp_path / "flipped.ckpt").write_bytes(bytes(flipped))
    assert is_whole_checkpoint(whole)
    assert not is_whole_checkpoint(tmp_path / "torn.ckpt")
    assert not is_whole_checkpoint(tmp_path / "flipped.ckpt")
    folder = tmp_path / "sharded.ckpt"
    folder.mkdir()
    assert not is_whole_checkpoint(folder)
    (folder / ".metadata").write_bytes(b"x")
    _save(folder / "meta.pt", 1)
    assert is_whole_checkpoint(folder)


def test_publish_replaces_a_file_and_a_folder_in_one_step(tmp_path: Path) -> None:
    final = _save(tmp_path / "last.ckpt", 1)
    publish(_save(tmp_path / "last.ckpt.partial", 2), final)
    assert load_checkpoint(final)["global_step"] == 2 and not (tmp_path / "last.ckpt.partial").exists()
    for step in (1, 2):
        staging = tmp_path / "sharded.ckpt.partial"
        staging.mkdir()
        _save(staging / "meta.pt", step)
        publish(staging, tmp_path / "sharded.ckpt")
    assert load_checkpoint(tmp_path / "sharded.ckpt" / "meta.pt")["global_step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "sharded.ckpt"]


def test_last_resolves_to_the_newest_whole_checkpoint_with_a_warning(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    older = _save(folder / "step=3.ckpt", 3)
    time.sleep(0.01)
    last = _save(folder / "last.ckpt", 6)
    (folder / "last.ckpt.partial").write_bytes(b"torn")  # a write that was killed: never a candidate
    trainer = SimpleNamespace(default_root_dir=str(tmp_path))
    callback = RunCheckpoint()
    assert callback._find_last_checkpoints(trainer) == {str(last)}
    last.write_bytes(last.read_bytes()[:100])  # corrupted after the fact (disk, copy)
    with pytest.warns(UserWarning, match=f"{last} is torn or corrupt.*resuming from {older}"):
        assert callback._find_last_checkpoints(trainer) == {str(older)}
    assert RunCheckpoint()._find_last_checkpoints(SimpleNamespace(default_root_dir=str(tmp_path / "new"))) == set()


def _wait_for_step(root: Path, step: int, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not any(r["step"] >= step for r in read_steps(root)):
        assert process.poll() is None, f"the run ended before step {step}: {process.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"no step {step} after {timeout} s"
        time.sleep(0.2)


def test_sigterm_saves_at_the_step_exits_143_and_the_same_command_resumes(tiny_fit_corpus: Path, tmp_path: Path) -> None:
    root = tmp_path / "run"
    command = fit_command(write_config(tiny_fit_corpus, root, MAX_STEPS, checkpoint_every=100, step_seconds=0.5))
    process = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_step(root, 3, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
    first = read_steps(root)
    stopped_at = first[-1]["step"]
    assert 3 <= stopped_at < MAX_STEPS and [r["step"] for r in first] == list(range(1, stopped_at + 1))
    assert f"SIGTERM: saved {root / 'checkpoints' / 'last.ckpt'} after step {stopped_at}" in err
    assert load_checkpoint(root / "checkpoints" / "last.ckpt")["global_step"] == stopped_at

    again = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = read_steps(root)[len(first):]
    assert [r["step"] for r in resumed] == list(range(stopped_at + 1, MAX_STEPS + 1))
    assert load_checkpoint(root / "checkpoints" / "last.ckpt")["global_step"] == MAX_STEPS


def test_last_ckpt_holds_the_final_step_after_a_kill_between_the_two_writes(tiny_fit_corpus: Path, tmp_path: Path) -> None:
    """The 20-kill run's finding: killed after `epoch=0-step=4.ckpt` was published and before `last.ckpt`, the run
    resumed at its final step from the former, trained nothing, and left `last.ckpt` at step 2. (The runs are in
    this process: the kill is staged on disk, and the SIGTERM test above runs the command as a process.)"""
    from lightning_most.main import main

    root = tmp_path / "run"
    folder = root / "checkpoints"
    command = ["fit", "--config", str(write_config(tiny_fit_corpus, root, 4, checkpoint_every=2))]
    main(command)
    final = load_checkpoint(folder / "epoch=0-step=4.ckpt")
    stale = {**final, "global_step": 2}  # what last.ckpt held when the kill came
    torch.save(stale, folder / "last.ckpt")
    newer = (folder / "epoch=0-step=4.ckpt").stat().st_mtime
    os.utime(folder / "last.ckpt", (newer - 60, newer - 60))

    main(command)
    assert [r["step"] for r in read_steps(root)] == [1, 2, 3, 4]  # nothing trained again
    last = load_checkpoint(folder / "last.ckpt")
    assert last["global_step"] == 4
    assert all(torch.equal(last["state_dict"][k], final["state_dict"][k]) for k in final["state_dict"])

    main(["fit", "--config", str(write_config(tiny_fit_corpus, root, 5, checkpoint_every=2))])  # ends between checkpoints
    assert load_checkpoint(folder / "last.ckpt")["global_step"] == 5


def _divergence_run(corpus: Path, root: Path, policy: str, nan_at: int) -> list[str]:
    guard = {"class_path": "lightning_most.fault_tolerance.DivergenceGuard", "init_args": {"policy": policy}}
    extra = ({"class_path": "tests.tiny_fit.NaNAtStep", "init_args": {"step": nan_at}},
             {"class_path": "tests.tiny_fit.SaveWeights", "init_args": {"folder": str(root)}}, guard)
    logger = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": str(root), "name": "tb"}}
    return ["fit", "--config", str(write_config(corpus, root, 5, checkpoint_every=100, extra_callbacks=extra, logger=logger))]


def test_a_nan_step_is_skipped_counted_and_logged(tiny_fit_corpus: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_most.main import main

    with pytest.warns(UserWarning, match=r"non-finite loss at step 3: tasks in the batch .*; cut ids: "):
        cli = main(_divergence_run(tiny_fit_corpus, tmp_path, "skip", nan_at=3))
    assert cli.trainer.global_step == 5
    weights = {step: torch.load(tmp_path / f"weights-{step}.pt") for step in (2, 3, 4)}
    for name, before in weights[2].items():  # step 3 changed nothing; steps 2 and 4 trained
        assert torch.equal(weights[3][name], before), name
    assert any(not torch.equal(weights[4][n], weights[3][n]) for n in weights[3])
    assert all(torch.isfinite(w).all() for w in weights[4].values())
    events = EventAccumulator(str(next((tmp_path / "tb").glob("version_*")))).Reload()
    logged = {e.step: e.value for e in events.Scalars("train/nonfinite_steps")}
    assert logged[max(logged)] == 1.0 and logged[min(logged)] == 0.0


def test_a_nan_step_stops_with_a_checkpoint_when_told(tiny_fit_corpus: Path, tmp_path: Path) -> None:
    from lightning_most.fault_tolerance import DivergenceError
    from lightning_most.main import main

    with pytest.raises(DivergenceError, match=r"non-finite loss at step 3: .*cut ids: .*Stopped with the weights") as info:
        main(_divergence_run(tiny_fit_corpus, tmp_path, "stop", nan_at=3))
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert str(tmp_path / "checkpoints" / "last.ckpt") in str(info.value)
    assert checkpoint["global_step"] == 3
    before = torch.load(tmp_path / "weights-2.pt")
    for name, weight in before.items():
        assert torch.equal(checkpoint["state_dict"][f"backbone.{name}"], weight), name


@pytest.mark.slow  # about 10 minutes on 2 busy cores: 4 runs of 8 steps, each started as a process
def test_kill_test_script_passes_with_three_kills(tiny_fit_corpus: Path, tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "bench" / "kill_test.py"
    result = subprocess.run(
        [sys.executable, str(script), "--kills", "3", "--seed", "1", "--max_steps", "8",
         "--checkpoint_every", "2", "--out", str(tmp_path / "out"), "--corpus_dir", str(tiny_fit_corpus)],
        env=subprocess_env(), capture_output=True, text=True, timeout=3000, check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "kill_test.json").read_text())
    assert summary["kills"] == 3 and all(summary["checks"].values())
