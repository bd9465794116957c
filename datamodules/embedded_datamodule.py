"""`EmbeddedDataModule`: `MostDataModule` over the embedded corpus, built on first use.

The sources follow from the corpus folder (`embedded.corpus_paths`): train ASR and TTS on
`embedded_cuts_train`, text LM on `text_train`; validation ASR + TTS on dev; test ASR + TTS on the
test split (held-out speakers). `prepare_data` builds the corpus with `corpus` (an
`EmbeddedCorpusConfig`) when the folder does not hold one built with that config.

With `features.kind == "whisper"` the speech sources are the corpus's cuts with stored Whisper
encoder states (`whisper_features/` under the corpus, written by `prepare_data` through
`encoder_features.prepare_encoder_features`, about 45 s for the default corpus on 2 cores), so
training reads the states instead of running the encoder for every batch.

With `whisper_units` (a `WhisperUnitsConfig`) the TTS targets are units of those states (k-means, or learnt with
the vocoder: `quantizer: vq`) instead of the corpus's log-mel units, and their unit-to-mel vocoder speaks them
(`datamodules.whisper_units`, written by `prepare_data` under `corpus_dir/whisper_units/`, or `whisper_vq_units/`,
when missing; the checkpoint's `audio_io` names the vocoder).
"""

from __future__ import annotations

from pathlib import Path

from datamodules.datamodule import LoaderConfig, MostDataModule
from datamodules.embedded import SPLITS, EmbeddedCorpusConfig, corpus_paths, prepare_embedded_corpus
from datamodules.encoder_features import prepare_encoder_features
from datamodules.mixing import SourceConfig
from datamodules.whisper_units import WhisperUnitsConfig, default_units_dir, prepare_whisper_units, whisper_units_paths
from lightning_most.audio.features import FeatureConfig

WHISPER_FEATURES_DIR = "whisper_features"


def _speech_sources(path: str) -> list[SourceConfig]:
    return [SourceConfig("embedded", "asr", path), SourceConfig("embedded", "tts", path)]


class EmbeddedDataModule(MostDataModule):
    """Stage-1 batches from the embedded corpus in `corpus_dir` (see the module docstring)."""

    def __init__(
        self,
        corpus_dir: str = "data/embedded",
        corpus: EmbeddedCorpusConfig | None = None,
        task_weights: dict[str, float] | None = None,
        tokenizer: str = "byte",
        features: FeatureConfig | None = None,
        loader: LoaderConfig | None = None,
        whisper_units: WhisperUnitsConfig | None = None,
    ) -> None:
        """Args are those of `MostDataModule` (the sources follow from `corpus_dir`), plus the `corpus` config to build it
        with and `whisper_units`: None = the corpus's log-mel units, else units of the Whisper states (needs
        `features.kind == 'whisper'`) and their unit-to-mel vocoder."""
        paths = corpus_paths(corpus_dir)
        self.corpus_dir = corpus_dir
        self.corpus = corpus or EmbeddedCorpusConfig()
        self.whisper_units = whisper_units
        self.speech_cuts = dict(paths.cuts)
        unit_quantizer = paths.unit_quantizer
        if features is not None and features.kind == "whisper":
            self.speech_cuts = {split: self._whisper_cuts(split) for split in SPLITS}
        if whisper_units is not None:
            if features is None or features.kind != "whisper":
                raise ValueError(
                    "EmbeddedDataModule: whisper_units clusters the stored Whisper states, so set features.kind: whisper "
                    f"(got {features.kind if features else 'fbank'!r}), or drop whisper_units"
                )
            units = whisper_units_paths(default_units_dir(corpus_dir, whisper_units))
            self.speech_cuts, unit_quantizer = dict(units.cuts), units.unit_quantizer
        super().__init__(
            train_sources=[
                *_speech_sources(str(self.speech_cuts["train"])),
                SourceConfig("fortunes", "text_lm", str(paths.text["train"])),
            ],
            task_weights=task_weights,
            val_sources=_speech_sources(str(self.speech_cuts["dev"])),
            test_sources=_speech_sources(str(self.speech_cuts["test"])),
            tokenizer=tokenizer,
            features=features,
            loader=loader,
            unit_quantizer=str(unit_quantizer),
        )

    @property
    def num_units(self) -> int:
        """K of the corpus's units: its config's, known before the corpus is built (the model is sized by it)."""
        return self.corpus.units.num_units if self.whisper_units is None else self.whisper_units.num_units

    def audio_io(self) -> dict:
        """`MostDataModule.audio_io`, plus the unit-to-mel `vocoder` folder of Whisper-state units."""
        audio_io = super().audio_io()
        if self.whisper_units is not None:
            audio_io["vocoder"] = str(whisper_units_paths(default_units_dir(self.corpus_dir, self.whisper_units)).vocoder.resolve())
        return audio_io

    def _whisper_cuts(self, split: str) -> Path:
        return Path(self.corpus_dir) / WHISPER_FEATURES_DIR / f"embedded_cuts_{split}.jsonl.gz"

    def prepare_data(self) -> None:
        """Lightning hook (one process per node): build the corpus (and stored Whisper states) unless already there."""
        paths = prepare_embedded_corpus(self.corpus_dir, self.corpus)
        if self.features.kind == "whisper":
            for split in SPLITS:
                out = self._whisper_cuts(split)
                prepare_encoder_features(paths.cuts[split], out, out.parent / split, self.features)
        if self.whisper_units is not None:
            prepare_whisper_units(self.corpus_dir, self.whisper_units, features=self.features)
