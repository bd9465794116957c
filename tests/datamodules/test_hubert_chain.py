"""The documented data chain of `conf/stage1_most.yaml` (docs/hubert_path.md), run on miniature LibriHeavy,
Common Voice and VoxPopuli layouts with a tiny random 12-layer HuBERT, then a 2-step fit of the shipped config.

Every command is the one the doc gives, with the shipped configs and their relative `data/...` paths (the
test runs in a scratch folder); only the corpus folders, the HuBERT folder, K and the model size differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml
from lhotse import CutSet

from datamodules.encoder_features import main as encoder_features_main
from datamodules.recipes import main as recipes_main
from datamodules.shards import main as shards_main
from datamodules.shards import read_shar, write_text_shards
from datamodules.units import main as units_main
from lightning_most.main import main as most_main
from tests.datamodules.miniature_corpora import write_commonvoice, write_libriheavy, write_voxpopuli

pytest_plugins = ["tests.fixtures_hubert"]
ROOT = Path(__file__).resolve().parents[2]
SENTENCES = [
    "A penny saved is a penny earned.",
    "The early bird catches the worm.",
    "Time flies like an arrow.",
    "Fortune favours the bold.",
    "Actions speak louder than words.",
]
NUM_UNITS = 8
TRAIN_MANIFESTS = {  # Shar folder of conf/data/stage1_shar.yaml -> manifest under data/units
    "libriheavy_large": "libriheavy_cuts_large.jsonl.gz",
    "cv-en_train": "cv-en_cuts_train.jsonl.gz",
    "voxpopuli-asr-en_train": "voxpopuli-asr-en_cuts_train.jsonl.gz",
}


def _prepare_corpora(corpora: Path) -> list[Path]:
    """Step 1, `python -m datamodules.recipes --config conf/data/prepare/{corpus}.yaml` per corpus."""
    libriheavy = write_libriheavy(corpora / "libriheavy", {"large": SENTENCES[:3], "dev": SENTENCES[3:]}, corpora)
    commonvoice = write_commonvoice(corpora / "cv-corpus-17.0", {"train": SENTENCES[1:4]})
    segments = [(SENTENCES[0], "train"), (SENTENCES[4], "train"), (SENTENCES[2], "dev"), (SENTENCES[3], "test")]
    voxpopuli, annotations, _ = write_voxpopuli(corpora / "voxpopuli", segments, corpora)
    prepare = ROOT / "conf" / "data" / "prepare"
    recipes_main(["--config", str(prepare / "libriheavy.yaml"), "--corpus_dir", str(libriheavy),
                  "--librilight_dir", str(libriheavy / "download" / "librilight"), "--parts", "[large, dev]"])
    recipes_main(["--config", str(prepare / "commonvoice.yaml"), "--corpus_dir", str(commonvoice), "--parts", "[train]"])
    recipes_main(["--config", str(prepare / "voxpopuli.yaml"), "--corpus_dir", str(voxpopuli),
                  "--annotations", str(annotations)])  # fmt: skip
    return [
        Path("data/libriheavy/libriheavy_cuts_large.jsonl.gz"),
        Path("data/libriheavy/libriheavy_cuts_dev.jsonl.gz"),
        Path("data/commonvoice/cv-en_cuts_train.jsonl.gz"),
        Path("data/voxpopuli/voxpopuli-asr-en_cuts_train.jsonl.gz"),
    ]


def test_the_documented_chain_feeds_stage1_most(tiny_hubert, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    manifests = _prepare_corpora(tmp_path / "corpora")
    assert all(m.is_file() for m in manifests)

    # Step 2: HuBERT layer-11 states stored once per manifest.
    for manifest in manifests:
        encoder_features_main(["--cuts", str(manifest), "--out", f"data/hubert/{manifest.name}",
            "--features.kind", "hubert", "--features.hubert_path", str(tiny_hubert), "--features.hubert_layer", "11"])  # fmt: skip
    # Step 3: k-means units of HuBERT layer 11, fit on LibriHeavy, attached to every manifest.
    others = {m.name.removesuffix(".jsonl.gz"): f"data/hubert/{m.name}" for m in manifests[1:]}
    units_main(["--train", f"data/hubert/{manifests[0].name}", "--splits", yaml.safe_dump(others, default_flow_style=True),
        "--out_dir", "data/units", "--units.num_units", str(NUM_UNITS), "--units.iterations", "5",
        "--units.hubert.path", str(tiny_hubert), "--units.hubert.layer", "11"])  # fmt: skip
    for manifest in manifests:
        cuts = CutSet.from_file(Path("data/units") / manifest.name).to_eager()
        assert len(cuts) == len(CutSet.from_file(manifest))
        assert all(c.features.type == "hubert_encoder_layer11" and c.has_custom("units") for c in cuts)
    # Step 4: Shar shards of the train manifests, and the text-LM shards.
    for folder, name in TRAIN_MANIFESTS.items():
        shards_main(["--cuts", f"data/units/{name}", "--out_dir", f"data/shar/{folder}"])
    write_text_shards(({"id": f"t{i}", "text": s} for i, s in enumerate(SENTENCES * 4)), "data/text/train")
    stored = {c.id: c for c in CutSet.from_file("data/units/libriheavy_cuts_large.jsonl.gz")}
    for cut in read_shar("data/shar/libriheavy_large", shuffle_shards=False):
        assert cut.features.type == "hubert_encoder_layer11"
        np.testing.assert_allclose(cut.load_features(), stored[cut.id].load_features(), atol=0.02)  # lilcom
        np.testing.assert_array_equal(cut.load_units(), stored[cut.id].load_units())

    # Step 5: the shipped configs, made tiny.
    tiny = {
        "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32-true", "max_steps": 2,
                    "num_sanity_val_steps": 0, "log_every_n_steps": 1},
        "model": {"init_args": {"backbone": "tiny", "activation_checkpointing": False}},
        "data": {"init_args": {"tokenizer": "byte", "features": {"hubert_path": str(tiny_hubert)},
                 "loader": {"max_duration": 20.0, "max_cut_duration": 20.0, "num_buckets": 2, "buffer_size": 20,
                            "num_cuts_for_bins_estimate": 20, "num_workers": 0, "pin_memory": False}}},
    }  # fmt: skip
    Path("tiny.yaml").write_text(yaml.safe_dump(tiny))
    cli = most_main(["fit", "--config", str(ROOT / "conf/stage1_most.yaml"),
                     "--config", str(ROOT / "conf/data/stage1_shar.yaml"), "--config", "tiny.yaml"])  # fmt: skip
    assert cli.trainer.global_step == 2
    assert cli.model.config.audio_feature_dim == 32 and cli.model.config.num_audio_units == NUM_UNITS  # linked
    assert cli.datamodule.skipped == {}
    assert Path("runs/stage1_most/checkpoints/last.ckpt").exists()
    batch = next(iter(cli.datamodule.make_train_loader()))
    assert batch["audio_features"].shape[1] == 32
    assert torch.isfinite(batch["audio_features"]).all()
