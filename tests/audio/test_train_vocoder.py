import json
from dataclasses import asdict

import pytest
import torch
from lhotse import CutSet, Recording, RecordingSet

from lightning_most.audio import FbankEncoder, UnitHifiganVocoder, UnitHifiganVocoderConfig, attach_units, train_kmeans
from lightning_most.audio.train_vocoder import main
from tests.audio.test_vocoder import TINY_HIFIGAN


@pytest.fixture
def cuts_with_units(speech_files, tmp_path):
    cuts = CutSet.from_manifests(recordings=RecordingSet.from_recordings(Recording.from_file(p) for p in speech_files))
    encoder = FbankEncoder()
    quantizer = train_kmeans([encoder(torch.from_numpy(c.load_audio()[0])) for c in cuts], num_units=16, seed=0)
    path = tmp_path / "cuts.jsonl.gz"
    attach_units(cuts, encoder, quantizer, tmp_path / "units").to_file(path)
    return path


# With the discriminators two steps take about a minute on 2 CPU cores (their width is fixed by speechbrain).
@pytest.mark.parametrize("adversarial", [pytest.param(True, marks=pytest.mark.slow), False])
def test_two_training_steps_write_a_loadable_vocoder(cuts_with_units, tmp_path, adversarial):
    generator_config = tmp_path / "generator.json"
    generator_config.write_text(json.dumps(asdict(TINY_HIFIGAN)))
    out = tmp_path / "vocoder"
    argv = ["--cuts", str(cuts_with_units), "--output-dir", str(out), "--generator-config", str(generator_config)]
    argv += ["--steps", "2", "--batch-size", "2", "--segment-units", "8"]
    main(argv + ([] if adversarial else ["--no-adversarial"]))
    vocoder = UnitHifiganVocoder(UnitHifiganVocoderConfig(path=str(out)))
    assert vocoder.generator_config == TINY_HIFIGAN
    untrained = TINY_HIFIGAN.build().state_dict()
    trained = torch.load(out / "generator.ckpt", weights_only=True)
    assert any(not torch.equal(trained[k], untrained[k]) for k in untrained)  # the optimiser stepped
    assert vocoder(torch.tensor([1, 2, 3, 4, 5])).shape == (5 * 320,)


def test_cuts_without_units_are_named(speech_files, tmp_path):
    cuts = CutSet.from_manifests(recordings=RecordingSet.from_recordings([Recording.from_file(speech_files[0])]))
    cuts.to_file(tmp_path / "cuts.jsonl.gz")
    with pytest.raises(ValueError, match=f"cut {cuts[0].id} has no 'units': run attach_units"):
        main(["--cuts", str(tmp_path / "cuts.jsonl.gz"), "--output-dir", str(tmp_path / "out"), "--steps", "1"])
