"""HuBERT k-means units: `python -m datamodules.units --units.hubert.path ...` clusters a HuBERT layer's states."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from lhotse import CutSet

from datamodules.units import main as units_main
from lightning_most.audio import HubertEncoder, HubertEncoderConfig, UnitQuantizer, load_cut_waveform

pytest_plugins = ["tests.fixtures_hubert"]


def test_units_are_the_nearest_centroids_of_the_chosen_hubert_layer(tiny_corpus, tiny_hubert, tmp_path):
    out = tmp_path / "units"
    summary = units_main([
        "--train", str(tiny_corpus.cuts["train"]), "--splits", f"{{dev: {tiny_corpus.cuts['dev']}}}",
        "--out_dir", str(out), "--units.num_units", "8", "--units.iterations", "3",
        "--units.hubert.path", str(tiny_hubert), "--units.hubert.layer", "2",
    ])  # fmt: skip
    assert summary["num_units"] == 8 and summary["frame_rate"] == 50.0
    description = json.loads((out / "unit_quantizer.json").read_text())
    assert description["encoder"] == "hubert" and description["encoder_config"]["layer"] == 2
    assert description["encoder_config"]["path"] == str(tiny_hubert.resolve())
    quantizer = UnitQuantizer.load(out / "unit_quantizer.safetensors", num_units=8, feature_dim=32)
    encoder = HubertEncoder(HubertEncoderConfig(path=str(tiny_hubert), layer=2))
    dev = CutSet.from_file(out / tiny_corpus.cuts["dev"].name).to_eager()
    assert len(dev) == len(CutSet.from_file(tiny_corpus.cuts["dev"]))
    for cut in dev:
        units = torch.from_numpy(np.asarray(cut.load_units(), dtype=np.int64))
        torch.testing.assert_close(units, quantizer.quantize(encoder(load_cut_waveform(cut))))
    assert len({int(u) for cut in dev for u in cut.load_units()}) > 1


def test_a_missing_hubert_folder_is_named(tiny_corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        units_main([
            "--train", str(tiny_corpus.cuts["dev"]), "--out_dir", str(tmp_path / "units"),
            "--units.hubert.path", str(tmp_path / "nowhere"),
        ])  # fmt: skip
