"""The documented data chain of `conf/stage1_most.yaml` (docs/hubert_path.md), run on miniature LibriHeavy,
Common Voice and VoxPopuli layouts with a tiny random 12-layer HuBERT, a 2-step fit of the shipped config, then
`transcribe` / `synthesize` from that checkpoint through the command functions.

Every command is the one the doc gives, with the shipped configs and their relative `data/...` paths (the
chain runs once per module in a scratch folder); only the corpus folders, the HuBERT folder, K, the model size
and the vocoder (a tiny random unit HiFi-GAN of the K units) differ.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from lhotse import CutSet

from datamodules.encoder_features import main as encoder_features_main
from datamodules.encoder_features import stamp_path
from datamodules.recipes import main as recipes_main
from datamodules.shards import main as shards_main
from datamodules.shards import read_shar, write_text_shards
from datamodules.units import main as units_main
from lightning_most.audio import (
    HubertEncoder,
    UnitHifiganConfig,
    UnitHifiganVocoder,
    load_cut_waveform,
    save_unit_hifigan,
)
from lightning_most.audio.waveforms import write_wav
from lightning_most.commands.synthesize import main as synthesize_main
from lightning_most.commands.transcribe import main as transcribe_main
from lightning_most.inference import InferenceError, MostInference, read_checkpoint_header
from lightning_most.main import main as most_main
from tests.datamodules.miniature_corpora import write_commonvoice, write_libriheavy, write_voxpopuli

pytest_plugins = ["tests.fixtures_hubert"]
ROOT = Path(__file__).resolve().parents[2]
SENTENCES = [
    "A penny saved is a penny earned.",
    "The early bird catches the worm.",
    "Time flies like an arrow.",
    "Fortune favours the bold.",
]
NUM_UNITS = 8
LIBRIHEAVY = {"train": "data/libriheavy/libriheavy_cuts_large.jsonl.gz", "dev": "data/libriheavy/libriheavy_cuts_dev.jsonl.gz"}
TRAIN_MANIFESTS = {  # Shar folder of conf/data/stage1_shar.yaml -> manifest under data/units
    "libriheavy_large": "libriheavy_cuts_large.jsonl.gz",
    "cv-en_train": "cv-en_cuts_train.jsonl.gz",
    "voxpopuli-asr-en_train": "voxpopuli-asr-en_cuts_train.jsonl.gz",
}
TINY_HIFIGAN = UnitHifiganConfig(  # the vocoder of the K units (random: the test checks the plumbing, not the voice)
    vocab_size=NUM_UNITS, embedding_dim=8, upsample_initial_channel=32, resblock_kernel_sizes=(3,),
    resblock_dilation_sizes=((1, 3, 5),),
)  # fmt: skip


@dataclass
class Chain:
    """What the chain left in its scratch folder (the working directory while this module's tests run)."""

    manifests: list[Path]  # step 1's cut manifests
    ckpt: Path  # step 5's checkpoint
    vocoder: Path  # the unit HiFi-GAN folder the data module names
    units_summary: dict  # what step 3 returned
    units_encoder_calls: int  # HuBERT encodes during step 3
    cli: object  # step 5's LightningCLI


def _prepare_corpora(corpora: Path) -> list[Path]:
    """Step 1, `python -m datamodules.recipes --config conf/data/prepare/{corpus}.yaml` per corpus."""
    libriheavy = write_libriheavy(corpora / "libriheavy", {"large": SENTENCES[:2], "dev": SENTENCES[2:3]}, corpora)
    commonvoice = write_commonvoice(corpora / "cv-corpus-17.0", {"train": SENTENCES[1:3]})
    segments = [(SENTENCES[0], "train"), (SENTENCES[3], "train"), (SENTENCES[2], "dev"), (SENTENCES[1], "test")]
    voxpopuli, annotations, _ = write_voxpopuli(corpora / "voxpopuli", segments, corpora)
    prepare = ROOT / "conf" / "data" / "prepare"
    recipes_main(["--config", str(prepare / "libriheavy.yaml"), "--corpus_dir", str(libriheavy),
                  "--librilight_dir", str(libriheavy / "download" / "librilight"), "--parts", "[large, dev]"])
    one_job = ["--num_jobs", "1"]  # a few files: worker processes would cost more than they save
    recipes_main(["--config", str(prepare / "commonvoice.yaml"), "--corpus_dir", str(commonvoice), "--parts", "[train]",
                  *one_job])  # fmt: skip
    recipes_main(["--config", str(prepare / "voxpopuli.yaml"), "--corpus_dir", str(voxpopuli),
                  "--annotations", str(annotations), *one_job])  # fmt: skip
    return [
        Path(LIBRIHEAVY["train"]),
        Path(LIBRIHEAVY["dev"]),
        Path("data/commonvoice/cv-en_cuts_train.jsonl.gz"),
        Path("data/voxpopuli/voxpopuli-asr-en_cuts_train.jsonl.gz"),
    ]


def _units_args(hubert: Path, train: str, splits: dict[str, str], out_dir: str) -> list[str]:
    """Step 3's command line: K k-means units of HuBERT layer 11."""
    return ["--train", train, "--splits", yaml.safe_dump(splits, default_flow_style=True), "--out_dir", out_dir,
            "--units.num_units", str(NUM_UNITS), "--units.iterations", "5",
            "--units.hubert.path", str(hubert), "--units.hubert.layer", "11"]  # fmt: skip


def _counting_encoder(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count `HubertEncoder` calls from now on; returns the one-element counter."""
    calls, encode = [0], HubertEncoder.__call__

    def counted(self, waveform):
        calls[0] += 1
        return encode(self, waveform)

    monkeypatch.setattr(HubertEncoder, "__call__", counted)
    return calls


@pytest.fixture(scope="module")
def chain(tiny_hubert: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    """Steps 1-5 of docs/hubert_path.md in a scratch folder, once for the module's tests."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("hubert_chain"))
        manifests = _prepare_corpora(Path("corpora").resolve())
        # Step 2: HuBERT layer-11 states stored once per manifest.
        for manifest in manifests:
            encoder_features_main(["--cuts", str(manifest), "--out", f"data/hubert/{manifest.name}",
                "--features.kind", "hubert", "--features.hubert_path", str(tiny_hubert), "--features.hubert_layer", "11"])  # fmt: skip
        # Step 3: k-means units of HuBERT layer 11, fit on LibriHeavy, attached to every manifest (stored states read).
        others = {m.name.removesuffix(".jsonl.gz"): f"data/hubert/{m.name}" for m in manifests[1:]}
        with pytest.MonkeyPatch.context() as counting:
            calls = _counting_encoder(counting)
            summary = units_main(_units_args(tiny_hubert, f"data/hubert/{manifests[0].name}", others, "data/units"))
        # Step 4: Shar shards of the train manifests, and the text-LM shards.
        for folder, name in TRAIN_MANIFESTS.items():
            shards_main(["--cuts", f"data/units/{name}", "--out_dir", f"data/shar/{folder}"])
        write_text_shards(({"id": f"t{i}", "text": s} for i, s in enumerate(SENTENCES * 4)), "data/text/train")
        # Step 5: the shipped configs, made tiny; the data names the unit HiFi-GAN of its units.
        vocoder = Path("checkpoints/unit_hifigan").resolve()
        save_unit_hifigan(TINY_HIFIGAN.build(), TINY_HIFIGAN, vocoder)
        tiny = {
            "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32-true", "max_steps": 2,
                        "num_sanity_val_steps": 0, "log_every_n_steps": 1},
            "model": {"init_args": {"backbone": "tiny", "activation_checkpointing": False}},
            "data": {"init_args": {"tokenizer": "byte", "features": {"hubert_path": str(tiny_hubert)},
                     "vocoder": "checkpoints/unit_hifigan",
                     "loader": {"max_duration": 20.0, "max_cut_duration": 20.0, "num_buckets": 2, "buffer_size": 20,
                                "num_cuts_for_bins_estimate": 20, "num_workers": 0, "pin_memory": False}}},
        }  # fmt: skip
        Path("tiny.yaml").write_text(yaml.safe_dump(tiny))
        cli = most_main(["fit", "--config", str(ROOT / "conf/stage1_most.yaml"),
                         "--config", str(ROOT / "conf/data/stage1_shar.yaml"), "--config", "tiny.yaml"])  # fmt: skip
        yield Chain(manifests, Path("runs/stage1_most/checkpoints/last.ckpt").resolve(), vocoder, summary, calls[0], cli)


def test_the_documented_chain_feeds_stage1_most(chain: Chain, tiny_hubert: Path) -> None:
    for manifest in chain.manifests:
        cuts = CutSet.from_file(Path("data/units") / manifest.name).to_eager()
        assert len(cuts) == len(CutSet.from_file(manifest))
        assert all(c.features.type == "hubert_encoder_layer11" and c.has_custom("units") for c in cuts)
    stored = {c.id: c for c in CutSet.from_file("data/units/libriheavy_cuts_large.jsonl.gz")}
    for cut in read_shar("data/shar/libriheavy_large", shuffle_shards=False):
        assert cut.features.type == "hubert_encoder_layer11"
        np.testing.assert_allclose(cut.load_features(), stored[cut.id].load_features(), atol=0.02)  # lilcom
        np.testing.assert_array_equal(cut.load_units(), stored[cut.id].load_units())
    cli = chain.cli
    assert cli.trainer.global_step == 2
    assert cli.model.config.audio_feature_dim == 32 and cli.model.config.num_audio_units == NUM_UNITS  # linked
    assert cli.datamodule.skipped == {}
    batch = next(iter(cli.datamodule.make_train_loader()))
    assert batch["audio_features"].shape[1] == 32
    assert torch.isfinite(batch["audio_features"]).all()
    audio_io = read_checkpoint_header(chain.ckpt)["audio_io"]  # what inference needs, local paths made absolute
    assert audio_io["features"]["kind"] == "hubert" and audio_io["features"]["hubert_layer"] == 11
    assert audio_io["features"]["hubert_path"] == str(tiny_hubert.resolve())
    assert audio_io["unit_encoder"]["encoder"] == "hubert" and audio_io["vocoder"] == str(chain.vocoder)


def test_units_read_the_stored_states_and_equal_encoding_the_audio(chain: Chain, tiny_hubert: Path, monkeypatch) -> None:
    splits = {"train": chain.manifests[0], **{m.name.removesuffix(".jsonl.gz"): m for m in chain.manifests[1:]}}
    counts = {split: len(CutSet.from_file(manifest)) for split, manifest in splits.items()}
    assert chain.units_encoder_calls == 0 and chain.units_summary["stored_states_read"] == counts
    # Encoding instead: the train manifest without stored states, and the dev manifest whose stamp names another layer.
    relayered = Path("relayered") / chain.manifests[1].name
    relayered.parent.mkdir()
    shutil.copy(Path("data/hubert") / relayered.name, relayered)
    record = json.loads(stamp_path(Path("data/hubert") / relayered.name).read_text())
    record["stamp"]["hubert_layer"] = 9
    stamp_path(relayered).write_text(json.dumps(record))
    calls = _counting_encoder(monkeypatch)
    summary = units_main(_units_args(tiny_hubert, LIBRIHEAVY["train"], {"dev": str(relayered)}, "encoded"))
    assert "stored_states_read" not in summary and calls[0] == 2 * counts["train"] + counts["libriheavy_cuts_dev"]
    for manifest in chain.manifests[:2]:  # the same units either way
        encoded = {c.id: c.load_units() for c in CutSet.from_file(Path("encoded") / manifest.name)}
        reused = {c.id: c.load_units() for c in CutSet.from_file(Path("data/units") / manifest.name)}
        assert encoded.keys() == reused.keys()
        for cut_id, units in reused.items():
            np.testing.assert_array_equal(units, encoded[cut_id])


def _dev_wav(path: Path) -> Path:
    """The LibriHeavy dev utterance as a 16 kHz WAV file."""
    write_wav(path, load_cut_waveform(CutSet.from_file(LIBRIHEAVY["dev"])[0]))
    return path


def test_transcribe_and_synthesize_from_the_hubert_checkpoint(chain: Chain, tiny_hubert: Path, capsys) -> None:
    wav = _dev_wav(Path("question.wav"))
    transcribe_main(["--ckpt", str(chain.ckpt), str(wav), "--max_new_tokens", "6"])
    assert capsys.readouterr().out.startswith(f"{wav}\t")
    synthesize_main(["--ckpt", str(chain.ckpt), "--text", "Time flies.", "--out", "speech.wav", "--max_units", "12",
                     "--temperature", "1.0"])  # fmt: skip
    units = int(capsys.readouterr().out.split(": ")[1].split(" units")[0])
    assert sf.info("speech.wav").frames == units * TINY_HIFIGAN.samples_per_unit  # spoken by the unit HiFi-GAN
    # The input features are the HuBERT layer training read (stored float16), from the audio; one HuBERT for both.
    inference = MostInference.from_checkpoint(chain.ckpt)
    assert isinstance(inference.vocoder, UnitHifiganVocoder) and inference.vocoder.config.path == str(chain.vocoder)
    cut = CutSet.from_file("data/units/libriheavy_cuts_dev.jsonl.gz")[0]
    features = inference.input_features(load_cut_waveform(cut))
    np.testing.assert_allclose(features.numpy(), cut.load_features()[: features.shape[0]], atol=0.01)
    assert inference.unit_encoder.encoder is inference.input_extractor.hubert
    units = inference.units([load_cut_waveform(cut)])[0]
    np.testing.assert_array_equal(units.numpy(), cut.load_units())  # the training targets, from the audio
    assert inference.resynthesize([load_cut_waveform(cut)])[0].numel() == units.numel() * TINY_HIFIGAN.samples_per_unit


def _expect_one_line_error(command, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        command(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ")
    return err


def test_a_moved_hubert_or_vocoder_fails_in_one_line_naming_the_fix(chain: Chain, tiny_hubert: Path, capsys) -> None:
    audio_io = read_checkpoint_header(chain.ckpt)["audio_io"]
    moved = {
        **audio_io,
        "features": {**audio_io["features"], "hubert_path": "/moved/hubert"},
        "unit_encoder": {**audio_io["unit_encoder"], "encoder_config": {**audio_io["unit_encoder"]["encoder_config"],
                                                                        "path": "/moved/hubert"}},
        "vocoder": "/moved/unit_hifigan",
    }  # fmt: skip
    Path("moved.json").write_text(json.dumps(moved))
    wav = str(_dev_wav(Path("moved.wav")))
    err = _expect_one_line_error(transcribe_main, ["--ckpt", str(chain.ckpt), "--audio_io", "moved.json", wav], capsys)
    assert "audio_io.features.hubert_path=/moved/hubert" in err and "--hubert_path" in err
    # The overrides fix them: --hubert_path moves the units' HuBERT too (the same folder), --vocoder the vocoder.
    inference = MostInference.from_checkpoint(chain.ckpt, audio_io=moved, hubert_path=tiny_hubert, vocoder=chain.vocoder)
    assert inference.audio_io.unit_encoder.path == str(tiny_hubert)
    assert inference.unit_encoder.encoder is inference.input_extractor.hubert
    assert inference.vocode([torch.tensor([1, 2, 3])])[0].numel() == 3 * TINY_HIFIGAN.samples_per_unit
    # Without them, speaking names the vocoder's field and flag, and a checkpoint that names no vocoder asks for one.
    for vocoder, expected in (("/moved/unit_hifigan", "audio_io.vocoder=/moved/unit_hifigan"), (None, "HuBERT states")):
        unspoken = MostInference(inference.module, dataclasses.replace(inference.audio_io, vocoder=vocoder and Path(vocoder)))
        with pytest.raises(InferenceError, match=f"{expected}.*--vocoder"):
            unspoken.vocode([torch.tensor([1])])
