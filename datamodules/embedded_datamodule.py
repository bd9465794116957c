"""`EmbeddedDataModule`: `MostDataModule` over the embedded corpus, built on first use.

The sources are derived from the corpus folder: ASR and TTS train on the train split's cuts,
text-LM on its text shard; validation runs ASR on the dev split (held-out sentences), test runs
ASR on the test split (held-out speakers and sentences). `prepare_data` builds the corpus when it
is missing, so `fit --config conf/quickstart.yaml` works on a fresh machine.
"""

from __future__ import annotations

import json

from datamodules.datamodule import MostDataModule
from datamodules.dataset import FeatureConfig
from datamodules.embedded import EmbeddedCorpusConfig, corpus_paths, prepare_embedded_corpus
from datamodules.mixing import SourceConfig


class EmbeddedDataModule(MostDataModule):
    """Stage-1 mix over the embedded corpus in `corpus_dir` (see the module docstring)."""

    def __init__(
        self,
        corpus_dir: str = "data/embedded",
        corpus: EmbeddedCorpusConfig | None = None,
        task_weights: dict[str, float] | None = None,
        features: FeatureConfig | None = None,
        max_duration: float = 60.0,
        num_buckets: int = 8,
        buffer_size: int = 2000,
        max_cut_duration: float = 30.0,
        text_tokens_per_second: float = 50.0,
        eval_max_duration: float | None = None,
        num_workers: int = 1,
        seed: int = 0,
    ) -> None:
        """Args: `corpus_dir` and `corpus` (size, voices, seed) of the embedded corpus; the rest as `MostDataModule`."""
        self.corpus_dir = corpus_dir
        self.corpus = corpus or EmbeddedCorpusConfig()
        paths = corpus_paths(corpus_dir)
        train = str(paths.cuts["train"])
        super().__init__(
            train_sources=[
                SourceConfig(name="embedded", task="asr", path=train),
                SourceConfig(name="embedded", task="tts", path=train),
                SourceConfig(name="embedded_text", task="text_lm", path=str(paths.text["train"])),
            ],
            task_weights=task_weights,
            val_sources=[SourceConfig(name="embedded_dev", task="asr", path=str(paths.cuts["dev"]))],
            test_sources=[SourceConfig(name="embedded_test", task="asr", path=str(paths.cuts["test"]))],
            features=features,
            max_duration=max_duration,
            num_buckets=num_buckets,
            buffer_size=buffer_size,
            max_cut_duration=max_cut_duration,
            text_tokens_per_second=text_tokens_per_second,
            eval_max_duration=eval_max_duration,
            num_workers=num_workers,
            seed=seed,
        )

    def prepare_data(self) -> None:
        """Build the corpus if it is missing (or was built with another config)."""
        prepare_embedded_corpus(self.corpus_dir, self.corpus)

    @property
    def num_units(self) -> int:
        """Size of the corpus's unit vocabulary."""
        return self.corpus.units.num_units

    def audio_io(self) -> dict:
        """How audio is turned into model inputs and targets here (stored in checkpoints for synthesis)."""
        paths = corpus_paths(self.corpus_dir)
        info = (
            json.loads(paths.unit_quantizer.with_suffix(".json").read_text())
            if paths.unit_quantizer.with_suffix(".json").is_file()
            else {}
        )
        return {
            "features": {
                "kind": self.features.kind,
                "num_mel_bins": self.features.num_mel_bins,
                "frame_stack": self.features.frame_stack,
                "dither": self.features.dither,
            },
            "unit_quantizer": str(paths.unit_quantizer.resolve()),
            "unit_encoder": info,
        }
