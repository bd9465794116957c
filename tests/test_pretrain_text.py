"""The pretraining and pretrained-start configs parse; the text corpus splits fortunes once and for all."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import yaml

from lightning_most.evaluation.text_perplexity import evaluate_text_perplexity, read_texts
from lightning_most.main import main
from lightning_most.text_corpus import fortune_split, prepare_text_corpus

ROOT = Path(__file__).resolve().parents[1]


def _print_config(capsys, *configs: str) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *[a for c in configs for a in ("--config", str(ROOT / c))], "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("configs", [
    ("conf/pretrain_text.yaml",),
    ("conf/pretrain_text.yaml", "conf/pretrain/dense.yaml"),
    ("conf/quickstart.yaml", "conf/ablation/most.yaml", "conf/grid/pretrained_moe.yaml"),
    ("conf/quickstart.yaml", "conf/grid/pretrained_moe_noshared.yaml"),
    ("conf/quickstart.yaml", "conf/grid/pretrained_dense.yaml"),
])
def test_configs_parse(capsys, configs: tuple[str, ...]) -> None:
    cfg = _print_config(capsys, *configs)
    if configs[0] == "conf/pretrain_text.yaml":
        assert cfg["data"]["class_path"] == "datamodules.text_corpus.TextCorpusDataModule"
        dense = len(configs) == 2
        assert cfg["model"]["init_args"]["backbone_overrides"]["moe"]["variant"] == ("dense" if dense else "vanilla")
        assert cfg["trainer"]["default_root_dir"] == f"runs/pretrain_text/{'dense' if dense else 'moe'}"
    else:
        assert cfg["model"]["init_args"]["init_from"].startswith("runs/pretrain_text/")


def test_text_corpus_splits_are_disjoint_and_stable(tmp_path: Path) -> None:
    paths = prepare_text_corpus(tmp_path)
    texts = {}
    for split, path in paths.items():
        with gzip.open(path, "rt") as f:
            texts[split] = [json.loads(line)["text"] for line in f]
        assert all(fortune_split(t) == split for t in texts[split][:200])
    assert not set(texts["train"]) & set(texts["dev"]) and not set(texts["train"]) & set(texts["held_out"])
    total = sum(map(len, texts.values()))
    assert 0.03 < len(texts["dev"]) / total < 0.07 and 0.25 < len(texts["held_out"]) / total < 0.35
    assert fortune_split('"Hello there," she said.') == fortune_split("Hello there, she said")  # copies agree


def test_text_perplexity_is_the_exp_of_the_mean_token_loss(tmp_path: Path) -> None:
    import math

    import torch

    from lightning_most.backbone import next_token_loss
    from lightning_most.layouts import collate, text_lm_example
    from lightning_most.stages import Stage1Module

    torch.manual_seed(0)
    module = Stage1Module(backbone="tiny", backbone_overrides={"num_layers": 2})
    module.configure_model()
    file = tmp_path / "dev.jsonl"
    file.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["a cat", "the dog runs home", "hi"]))
    texts = read_texts(file)
    result = evaluate_text_perplexity(module, texts, "dev", config=None)
    batch = collate([text_lm_example(module.tokenizer.encode(t), module.specials) for t in texts], module.specials.pad)
    with torch.no_grad():
        loss = next_token_loss(module(batch).logits, batch["labels"])
    assert result.num_tokens == sum(len(t) + 1 for t in texts)  # bytes + eos
    assert result.perplexity == pytest.approx(math.exp(float(loss)), rel=1e-5)
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(ValueError, match="line 1 of .* has no"):
        read_texts(tmp_path / "bad.jsonl")
