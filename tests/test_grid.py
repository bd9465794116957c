"""The grid: planning, skip-when-done, launchers, mean ± 95% CI aggregation and its outputs.

The fast tests run the grid's own machinery on stand-in commands (small Python scripts that write what
`fit` and `evaluate` write); the slow test runs the real 2-variant x 2-seed grid on a miniature corpus.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_most.grid import (
    EvaluationSpec,
    RunSpec,
    aggregate,
    apply_sweeps,
    launch,
    main,
    markdown_table,
    mean_ci95,
    parse_variants,
    plan_runs,
    run_one,
    write_outputs,
)

ROOT = Path(__file__).resolve().parents[1]
ABLATIONS = ["conf/ablation/most.yaml", "conf/ablation/dense.yaml"]


def test_variants_sweeps_and_commands(tmp_path: Path) -> None:
    variants = parse_variants([*ABLATIONS, "most_ratio=conf/ablation/most.yaml+conf/ablation/no_shared.yaml"])
    assert [v.name for v in variants] == ["most", "dense", "most_ratio"]
    assert variants[2].configs == ["conf/ablation/most.yaml", "conf/ablation/no_shared.yaml"]
    swept = apply_sweeps(variants[:1], ["model.init_args.backbone_overrides.moe.num_shared_experts=1,2"])
    assert [v.name for v in swept] == ["most+num_shared_experts=1", "most+num_shared_experts=2"]
    runs = plan_runs("conf/quickstart.yaml", swept, [0, 1], tmp_path, ["--trainer.max_steps", "5"],
                     EvaluationSpec(suites="asr,text", corpus_dir="data/c"), threads=1)
    assert [(r.variant, r.seed) for r in runs][:2] == [("most+num_shared_experts=1", 0), ("most+num_shared_experts=1", 1)]
    fit = runs[3].fit
    assert fit[fit.index("--seed_everything") + 1] == "1" and fit[-2:] == ["--trainer.max_steps", "5"]
    assert fit[fit.index("--model.init_args.backbone_overrides.moe.num_shared_experts") + 1] == "2"
    assert set(runs[0].evaluations) == {"", "asr_model_alone"}
    assert "--no_word_lm" in runs[0].evaluations["asr_model_alone"]
    assert runs[0].evaluations[""][-4:] == ["--suites", "asr,text", "--out_dir", str(Path(runs[0].run_dir) / "eval")]
    with pytest.raises(ValueError, match="does not exist"):
        parse_variants(["conf/ablation/nope.yaml"])
    with pytest.raises(ValueError, match="names must differ"):
        parse_variants(["conf/ablation/most.yaml", "conf/ablation/most.yaml"])


def test_mean_and_t_interval() -> None:
    stat = mean_ci95([1.0, 2.0, 3.0])  # sd 1, t(0.975, 2) = 4.3027
    assert stat["mean"] == 2.0 and stat["n"] == 3
    assert abs(stat["ci95"] - 4.302653 / math.sqrt(3)) < 1e-5
    assert math.isnan(mean_ci95([5.0])["ci95"])


def _stand_in(run_dir: Path, wer: float) -> RunSpec:
    """A run whose fit writes a val/ scalar and whose evaluate writes an evaluation.json (fast stand-ins)."""
    tb = run_dir / "tensorboard" / "version_0"
    write_events = ("from torch.utils.tensorboard import SummaryWriter; import pathlib, sys; w = SummaryWriter(sys.argv[1]); "
                    "w.add_scalar('val/loss', 2.5, 1); w.add_scalar('train/loss', 3.0, 1); w.close(); "
                    "c = pathlib.Path(sys.argv[1], 'checkpoints'); c.mkdir(); (c / 'last.ckpt').write_text('')")
    fit = [sys.executable, "-c", write_events, str(tb)]
    report = {"metrics": {"asr/embedded_cuts_test": {"wer": wer, "num_utterances": 3.0}}}
    write_report = ("import pathlib, sys; p = pathlib.Path(sys.argv[1]); p.mkdir(parents=True); "
                    "(p / 'evaluation.json').write_text(sys.argv[2])")
    evaluate = [sys.executable, "-c", write_report, str(run_dir / "eval"), json.dumps(report), "--ckpt", "{checkpoint}",
                "--out_dir", str(run_dir / "eval")]
    return RunSpec("v", 0, str(run_dir), fit, {"": evaluate})


def test_run_one_records_metrics_and_skips_a_finished_run(tmp_path: Path) -> None:
    spec = _stand_in(tmp_path / "run", 0.25)
    result = run_one(spec)
    assert not result["skipped"]
    assert result["metrics"] == {"asr/embedded_cuts_test/wer": 0.25, "asr/embedded_cuts_test/num_utterances": 3.0,
                                 "val/loss": 2.5}
    assert f"--ckpt {tmp_path / 'run' / 'tensorboard' / 'version_0' / 'checkpoints' / 'last.ckpt'}" in (
        tmp_path / "run" / "run.log").read_text()  # the placeholder became the checkpoint the fit wrote
    spec.fit = [sys.executable, "-c", "raise SystemExit(3)"]  # would fail if it ran again
    again = run_one(spec)
    assert again["skipped"] and again["metrics"] == result["metrics"]


def test_failed_runs_are_counted_and_named(tmp_path: Path) -> None:
    spec = _stand_in(tmp_path / "run", 0.25)
    spec.fit = [sys.executable, "-c", "raise SystemExit(3)"]
    [result] = launch([spec], "local", 1, tmp_path, {})
    assert "exited with 3" in result["error"] and str(tmp_path / "run" / "run.log") in result["error"]
    write_outputs([result, {"variant": "v", "seed": 1, "metrics": {"asr/x/wer": 0.5}}], tmp_path)
    assert "1 of 2 runs failed" in (tmp_path / "grid.md").read_text()
    spec = _stand_in(tmp_path / "no_checkpoint", 0.25)
    spec.fit = [sys.executable, "-c", "pass"]
    [result] = launch([spec], "local", 1, tmp_path, {})
    assert "wrote no last.ckpt" in result["error"]


@pytest.mark.parametrize("launcher", ["local", "debug", "submitit_local"])
def test_launchers_run_every_spec(tmp_path: Path, launcher: str) -> None:
    specs = [_stand_in(tmp_path / f"run{i}", wer) for i, wer in enumerate((0.2, 0.4))]
    for i, spec in enumerate(specs):
        spec.seed = i
    slurm = {"timeout_min": 5} if launcher == "submitit_local" else {}
    results = launch(specs, launcher, 2, tmp_path, slurm)
    assert [r.get("error") for r in results] == [None, None]
    assert sorted(r["metrics"]["asr/embedded_cuts_test/wer"] for r in results) == [0.2, 0.4]


def test_outputs_hold_mean_and_interval_per_variant(tmp_path: Path) -> None:
    results = [{"variant": v, "seed": s, "metrics": {"asr/t/wer": w, "asr/t/num_utterances": 3.0, "val/loss": 1.0}}
               for v, s, w in [("most", 0, 0.2), ("most", 1, 0.4), ("dense", 0, 0.5), ("dense", 1, 0.5)]]
    summary = aggregate(results)
    assert summary["most"]["asr/t/wer"]["mean"] == pytest.approx(0.3)
    assert summary["most"]["asr/t/wer"]["ci95"] == pytest.approx(12.7062 * 0.141421 / math.sqrt(2), rel=1e-4)
    assert "asr/t/num_utterances" not in summary["most"]
    table = markdown_table(summary)
    assert table.splitlines()[0] == "| metric | most | dense |"
    assert "| asr/t/wer | 0.3 ± 1.27 (n=2) | 0.5 ± 0 (n=2) |" in table and "val/loss" not in table
    write_outputs(results, tmp_path)
    saved = json.loads((tmp_path / "grid.json").read_text())
    assert saved["summary"]["dense"]["asr/t/wer"]["n"] == 2 and len(saved["runs"]) == 4
    assert (tmp_path / "grid.png").stat().st_size > 1000
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert "grid/summary" in events.Tags()["images"] and "grid/asr/t/wer/most" in events.Tags()["scalars"]


def test_dry_run_prints_commands_and_missing_config_fails(tmp_path: Path, capsys) -> None:
    main(["--config", "conf/quickstart.yaml", "--variants", "conf/ablation/most.yaml", "--out_dir", str(tmp_path),
          "--dry_run"])
    out = capsys.readouterr().out
    assert "conf/ablation/most.yaml" in out and "evaluate --ckpt" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", "conf/nope.yaml", "--variants", "conf/ablation/most.yaml"])
    assert exit_info.value.code == 2
    assert "conf/nope.yaml does not exist" in capsys.readouterr().err


TINY_CORPUS = [
    "--data.init_args.corpus.num_train", "24", "--data.init_args.corpus.num_dev", "6",
    "--data.init_args.corpus.num_test", "6", "--data.init_args.corpus.num_text_train", "50",
    "--data.init_args.corpus.num_text_dev", "10", "--data.init_args.corpus.units.num_units", "16",
    "--data.init_args.corpus.units.iterations", "5",
]


@pytest.mark.slow
def test_two_variants_two_seeds_end_to_end(tmp_path: Path) -> None:
    """The real grid on a miniature corpus: 2 variants x 2 seeds of 3 steps, evaluated on ASR and text."""
    corpus = tmp_path / "corpus"
    args = [
        "grid", "--config", "conf/quickstart.yaml", "--variants", *ABLATIONS, "--seeds", "0", "1",
        "--jobs", "2", "--out_dir", str(tmp_path / "grid"), "--suites", "asr,text", "--corpus_dir", str(corpus),
        "--max_utterances", "2", "--batch_size", "2",
        "--", "--trainer.max_steps", "3", "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1",
        "--data.init_args.corpus_dir", str(corpus), "--model.init_args.asr_decoding.max_new_tokens", "8",
        "--model.init_args.asr_decoding.beam_size", "1", *TINY_CORPUS,
    ]
    # The corpus is built once before the parallel runs (both would build it otherwise).
    from datamodules.embedded import EmbeddedCorpusConfig, prepare_embedded_corpus

    prepare_embedded_corpus(corpus, EmbeddedCorpusConfig(num_train=24, num_dev=6, num_test=6, num_text_train=50,
                                                         num_text_dev=10, units={"num_units": 16, "iterations": 5}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "lightning_most", *args], cwd=ROOT, capture_output=True, text=True,
                         env=env, timeout=1800, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "grid" / "grid.json").read_text())["summary"]
    for variant in ("most", "dense"):
        stats = summary[variant]
        assert stats["asr/embedded_cuts_test/wer"]["n"] == 2 and stats["asr_model_alone/embedded_cuts_test/wer"]["n"] == 2
        assert stats["text/text_dev/perplexity"]["mean"] > 1
    assert "4 runs finished (0 skipped as done), 0 failed" in run.stdout
    again = subprocess.run([sys.executable, "-m", "lightning_most", *args], cwd=ROOT, capture_output=True, text=True,
                           env=env, timeout=600, check=False)
    assert "4 runs finished (4 skipped as done), 0 failed" in again.stdout, again.stderr[-2000:]
