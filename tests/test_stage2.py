"""Stage 2: answer-only loss, learning a fixed instruction batch, starting from stage 1, the fit smoke, chat."""

from __future__ import annotations

import dataclasses
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml

from lightning_most.batch import IGNORE_INDEX
from lightning_most.decoding import ASRDecodingConfig
from lightning_most.layouts import collate, speech_instruct_example, text_instruct_example
from lightning_most.main import main
from lightning_most.stages import OptimizerConfig, Stage2Module
from lightning_most.stages.losses import task_losses
from tests.fixtures_checkpoint import TrainedRun
from tests.tiny_fit import CORPUS

pytest_plugins = ["tests.fixtures_checkpoint"]
ROOT = Path(__file__).resolve().parents[1]
FEATURE_DIM = 16


def _module(**kwargs) -> Stage2Module:
    module = Stage2Module(backbone="tiny", backbone_overrides={"audio_feature_dim": FEATURE_DIM}, **kwargs)
    module.configure_model()
    return module


def _instruction_batch(module: Stage2Module) -> dict:
    torch.manual_seed(0)
    s, encode, V = module.specials, module.tokenizer.encode, module.config.text_vocab_size
    examples = [
        text_instruct_example(encode("What is 7 plus 5?"), encode("12"), s, text="12"),
        text_instruct_example(encode("Which month comes after May?"), encode("June"), s, text="June"),
        speech_instruct_example(encode("Paris"), s, V, features=torch.randn(20, FEATURE_DIM), text="Paris"),
    ]
    return collate(examples, s.pad)


def test_loss_falls_on_answer_tokens_only():
    module = _module()
    batch = _instruction_batch(module)
    logits = torch.randn(*batch["labels"].shape, module.config.vocab_size)
    loss, per_task = task_losses(logits, batch["labels"], batch["task_ids"])
    is_answer = batch["labels"] != IGNORE_INDEX
    first = int(is_answer[0].nonzero()[0])  # the position predicting the first answer token
    assert first == batch["prompt_lengths"][0] - 1
    prompt_changed = logits.clone()
    prompt_changed[0, : first] += 5 * torch.randn_like(prompt_changed[0, : first])  # every prompt position of row 0
    assert torch.equal(task_losses(prompt_changed, batch["labels"], batch["task_ids"])[0], loss)
    s, encode = module.specials, module.tokenizer.encode
    other_prompt = text_instruct_example(encode("What is 8 plus 5?"), encode("12"), s)  # one prompt token changed
    assert torch.equal(other_prompt.labels, batch["labels"][0, : len(other_prompt)])  # the same targets
    answer_changed = logits.clone()
    answer_changed[0, first] += 5 * torch.randn_like(answer_changed[0, first])
    assert not torch.equal(task_losses(answer_changed, batch["labels"], batch["task_ids"])[0], loss)
    assert set(per_task) == {"text_instruct", "speech_instruct"}


def test_a_few_steps_drive_a_fixed_instruction_batch_loss_down():
    import lightning.pytorch as pl

    module = _module(optimizer=OptimizerConfig(lr=3e-3, warmup_steps=1, weight_decay=0.0))
    batch = _instruction_batch(module)

    def loss_now() -> float:
        with torch.no_grad():
            return float(task_losses(module(batch).logits, batch["labels"], batch["task_ids"])[0])

    before = loss_now()
    trainer = pl.Trainer(max_steps=30, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch] * 30, batch_size=None))
    after = loss_now()
    assert after < 0.5 * before, (before, after)


def test_a_stage1_checkpoint_loads_into_stage2(trained_run: TrainedRun):
    hparams = torch.load(trained_run.checkpoint, map_location="cpu", weights_only=False)["hyper_parameters"]
    shape = {k: hparams[k] for k in ("backbone", "backbone_overrides", "audio_feature_dim", "num_audio_units")}
    module = Stage2Module(**shape, init_from=str(trained_run.checkpoint))
    module.configure_model()
    stage1 = torch.load(trained_run.checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    for name, value in module.backbone.state_dict().items():
        assert torch.equal(value, stage1[f"backbone.{name}"]), name


def test_a_stage1_checkpoint_that_does_not_fit_is_refused(trained_run: TrainedRun):
    module = Stage2Module(backbone="tiny", backbone_overrides={"audio_feature_dim": 8},
                          init_from=str(trained_run.checkpoint))
    with pytest.raises(Exception, match="does not fit backbone 'tiny'|size mismatch"):
        module.configure_model()


def test_stage2_configs_parse(capsys):
    for config in ("conf/stage2_quickstart.yaml", "conf/stage2_most.yaml"):
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", str(ROOT / config), "--print_config"])
        assert exit_info.value.code in (0, None)
        parsed = yaml.safe_load(capsys.readouterr().out)
        assert parsed["model"]["class_path"] == "lightning_most.stages.Stage2Module"
        assert parsed["data"]["init_args"]["task_weights"] == {
            "speech_instruct": 0.4, "text_instruct": 0.4, "asr": 0.1, "tts": 0.1}
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / "conf/stage2_most.yaml"), "--config",
              str(ROOT / "conf/strategy/fsdp.yaml"), "--print_config"])
    assert "ModelParallelStrategy" in capsys.readouterr().out


@pytest.fixture(scope="module")
def stage2_run(trained_run: TrainedRun, tmp_path_factory) -> Path:
    """3 steps of `fit --config conf/stage2_quickstart.yaml` from the tiny stage-1 checkpoint on miniature data."""
    root = tmp_path_factory.mktemp("stage2_run")
    main([
        "fit", "--config", str(ROOT / "conf/stage2_quickstart.yaml"),
        "--model.init_args.init_from", str(trained_run.checkpoint),
        # (jsonargparse cannot set a nested optional dataclass to null by dot key: the group is given as a dict)
        "--model.init_args.asr_decoding", '{"max_new_tokens": 24, "beam_size": 1, "word_lm": null}',
        "--model.init_args.tts_max_new_tokens", "40", "--model.init_args.answer_max_new_tokens", "8",
        "--trainer.max_steps", "3", "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1.0",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root),
        "--data.init_args.corpus_dir", str(trained_run.corpus_dir),
        "--data.init_args.corpus", json.dumps(dataclasses.asdict(CORPUS)),  # the stage-1 run's corpus: reused
        "--data.init_args.instructions_dir", str(root / "instructions"),
        "--data.init_args.instructions.instructions.relations", "[addition, capital_of]",
        "--data.init_args.instructions.instructions.train_per_relation", "6",
        "--data.init_args.instructions.instructions.eval_per_relation", "3",
        "--data.init_args.instructions.num_spoken_train", "6",
        "--data.init_args.instructions.voices", "[flite_rms, flite_slt]",
        "--data.init_args.instructions.variants", "[[1.0, 0], [1.1, 150]]",
        "--data.init_args.instructions.num_test_speakers", "1",
    ])  # fmt: skip
    checkpoint = root / "checkpoints" / "last.ckpt"  # RunCheckpoint: default_root_dir/checkpoints
    assert checkpoint.is_file(), f"the stage-2 fit wrote no {checkpoint}"
    return checkpoint


def test_fit_stage2_quickstart_smoke_logs_task_losses_qa_accuracy_and_wer(stage2_run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    checkpoint = torch.load(stage2_run, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 3
    assert checkpoint["hyper_parameters"]["_class_path"] == "lightning_most.stages.Stage2Module"
    root = stage2_run.parent.parent  # default_root_dir: checkpoints/ and tensorboard/version_0/
    events = EventAccumulator(str(root / "tensorboard" / "version_0")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"val/spoken_qa_accuracy", "val/text_qa_accuracy", "val/asr_wer", "val/loss_speech_instruct",
            "val/loss_text_instruct", "val/loss_asr", "val/loss_tts"} <= tags, tags
    assert 0.0 <= events.Scalars("val/spoken_qa_accuracy")[-1].value <= 1.0


def _chat(args: list[str], capsys, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    """Run `python -m lightning_most chat ARGS` in this process: (exit code, stdout, stderr)."""
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = 0
    try:
        main(["chat", *args])
    except SystemExit as exit_info:
        code = exit_info.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_chat_answers_text_and_speech_from_another_folder(
    stage2_run: Path, trained_run: TrainedRun, tmp_path: Path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # the checkpoint's init_from and corpus paths are relative to the repository
    wav = trained_run.test_wavs[0]
    code, out, err = _chat(["--ckpt", str(stage2_run), "What is 2 plus 3?", "--speak", "a.wav",
                            "--max_new_tokens", "8", "--max_units", "20"], capsys)
    assert code == 0, err
    assert len(out.splitlines()) == 1 and "wrote a.wav" in err
    audio, rate = soundfile.read(tmp_path / "a.wav")
    assert rate == 16000 and audio.size > 0
    code, out, err = _chat(["--ckpt", str(stage2_run), "--max_new_tokens", "8"], capsys,
                           stdin=f"What is 2 plus 3?\n\n{wav}\n/nowhere/q.wav\nquit\nnot read\n", monkeypatch=monkeypatch)
    assert code == 0, err
    assert len(out.splitlines()) == 2
    assert "audio file /nowhere/q.wav does not exist" in err


def test_chat_bad_inputs_exit_2(stage2_run: Path, tmp_path: Path, capsys):
    soundfile.write(tmp_path / "8k.wav", np.zeros(8000, dtype=np.float32), 8000)
    soundfile.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    cases = [
        (["--ckpt", str(tmp_path / "missing.ckpt"), "hi"], "missing.ckpt does not exist"),
        (["--ckpt", str(stage2_run), str(tmp_path / "8k.wav")], "8000 Hz"),
        (["--ckpt", str(stage2_run), str(tmp_path / "empty.wav")], "holds no samples"),
        (["--ckpt", str(stage2_run), str(tmp_path / "nothing.wav")], "nothing.wav does not exist"),
        (["--ckpt", str(stage2_run), "  "], "the question is empty"),
    ]
    for args, message in cases:
        code, _, err = _chat(args, capsys)
        assert code == 2, (args, err)
        assert message in err and err.startswith("error: "), err


def test_answers_are_not_cut_by_the_transcripts_per_frame_cap():
    """A written question has no audio frames: the ASR cap of `max_tokens_per_frame` must not cut its answer."""
    module = _module(asr_decoding=ASRDecodingConfig(max_tokens_per_frame=1.0))
    s, encode = module.specials, module.tokenizer.encode
    batch = collate([text_instruct_example(encode("What is 7 plus 5?"), [], s)], s.pad)
    answers = module.decoder.answer(batch, max_new_tokens=6)  # a random model (seed 0) does not say <eos> at once
    assert len(answers) == 1 and len(encode(answers[0])) > 1
