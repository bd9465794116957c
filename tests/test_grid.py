"""The ablation grid builds one fit per (ablation, seed) and tabulates val/ metrics."""

from __future__ import annotations

from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from lightning_most.grid import final_metrics, main, markdown_table, run_commands


def test_run_commands_cover_every_ablation_and_seed(tmp_path: Path) -> None:
    runs = run_commands("conf/quickstart.yaml", ["conf/ablation/most.yaml", "conf/ablation/dense.yaml"], [0, 1],
                        tmp_path, ["--trainer.max_steps", "5"])
    assert sorted(runs) == ["dense-seed0", "dense-seed1", "most-seed0", "most-seed1"]
    cmd = runs["dense-seed1"]
    assert cmd[cmd.index("--seed_everything") + 1] == "1"
    assert "conf/ablation/dense.yaml" in cmd and cmd[-2:] == ["--trainer.max_steps", "5"]


def test_final_metrics_reads_last_val_scalars(tmp_path: Path) -> None:
    writer = SummaryWriter(str(tmp_path))
    for step, wer in enumerate([0.9, 0.5, 0.3]):
        writer.add_scalar("val/asr_wer", wer, step)
        writer.add_scalar("train/loss", 1.0, step)
    writer.close()
    metrics = final_metrics(tmp_path)
    assert metrics.keys() == {"val/asr_wer"} and abs(metrics["val/asr_wer"] - 0.3) < 1e-6
    assert "| most-seed0 | 0.3000 |" in markdown_table({"most-seed0": metrics})


def test_dry_run_prints_commands_and_missing_config_fails(tmp_path: Path, capsys) -> None:
    main(["--config", "conf/quickstart.yaml", "--ablations", "conf/ablation/most.yaml", "--out_dir", str(tmp_path),
          "--dry_run"])
    assert "conf/ablation/most.yaml" in capsys.readouterr().out
    try:
        main(["--config", "conf/nope.yaml", "--ablations", "conf/ablation/most.yaml"])
    except SystemExit as e:
        assert e.code == 2
    assert "conf/nope.yaml does not exist" in capsys.readouterr().err
