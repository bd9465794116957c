import shutil

import numpy as np
import pytest
import torch
from lhotse import CutSet, Recording, RecordingSet

from lightning_most.audio import FbankEncoder, attach_units, fit_unit_quantizer, load_cut_waveform, train_kmeans


@pytest.fixture
def cuts(speech_files, tmp_path) -> CutSet:
    """Two readable cuts and one whose audio file was corrupted after the manifest was made."""
    broken = tmp_path / "broken.wav"
    shutil.copy(speech_files[1], broken)
    recordings = [Recording.from_file(p, recording_id=f"utt{i}") for i, p in enumerate(speech_files)]
    recordings.append(Recording.from_file(broken, recording_id="broken"))
    broken.write_bytes(b"RIFF garbage")
    return CutSet.from_manifests(recordings=RecordingSet.from_recordings(recordings))


def test_fit_unit_quantizer_skips_and_names_bad_cuts(cuts):
    encoder = FbankEncoder()
    with pytest.warns(UserWarning, match="broken") as record:
        quantizer = fit_unit_quantizer(cuts, encoder, num_units=16, seed=0, max_frames=10_000)
    messages = [str(w.message) for w in record]
    assert any(m.startswith("skipping cut broken") for m in messages)
    assert any("skipped 1 of 3 cuts: broken" in m for m in messages)
    assert quantizer.num_units == 16 and quantizer.feature_dim == encoder.feature_dim


def test_fit_unit_quantizer_stops_at_max_frames(cuts):
    encoder = FbankEncoder()
    capped = fit_unit_quantizer(cuts, encoder, num_units=4, seed=0, max_frames=40)
    first_40 = encoder(load_cut_waveform(cuts[0]))[:40]
    assert torch.equal(capped.centroids, train_kmeans(first_40, num_units=4, seed=0).centroids)


def test_attach_units_round_trips_through_a_saved_manifest(cuts, tmp_path):
    encoder = FbankEncoder()
    with pytest.warns(UserWarning, match="broken"):
        quantizer = fit_unit_quantizer(cuts, encoder, num_units=16, seed=0)
    with pytest.warns(UserWarning, match="broken"):
        with_units = attach_units(cuts, encoder, quantizer, tmp_path / "units")
    assert [c.id for c in with_units] == [c.id for c in cuts][:2]
    with_units.to_file(tmp_path / "cuts.jsonl.gz")
    reloaded = CutSet.from_file(tmp_path / "cuts.jsonl.gz")
    for cut in reloaded:
        expected = quantizer.quantize(encoder(load_cut_waveform(cut)))
        units = cut.load_units()
        assert units.dtype == np.int32
        assert torch.equal(torch.from_numpy(units).long(), expected)
        assert torch.equal(torch.from_numpy(cut.load_custom("units")).long(), expected)
    half = reloaded[0].truncate(duration=1.0)
    assert half.load_units().shape == (50,)  # the units are cut with the audio (50 Hz)


def test_unit_training_and_quantizing_show_progress_when_asked(cuts, tmp_path, capsys):
    encoder = FbankEncoder()
    quantizer = fit_unit_quantizer(cuts, encoder, num_units=4, seed=0, max_frames=100, progress=True)  # 1st cut
    with pytest.warns(UserWarning, match="broken"):
        attach_units(cuts, encoder, quantizer, tmp_path / "units", progress=True)
    err = capsys.readouterr().err
    assert "k-means frames" in err and "100/100" in err
    assert "k-means on 100 frames" in err
    assert f"units -> {tmp_path / 'units'}" in err and "2cut" in err.replace(" ", "")
