"""`EmbeddedDataModule`: `MostDataModule` over the embedded corpus, built on first use.

The sources follow from the corpus folder (`embedded.corpus_paths`): train ASR and TTS on
`embedded_cuts_train`, text LM on `text_train`; validation ASR + TTS on dev; test ASR + TTS on the
test split (held-out speakers). `prepare_data` builds the corpus with `corpus` (an
`EmbeddedCorpusConfig`) when the folder does not hold one built with that config.
"""

from __future__ import annotations

from datamodules.datamodule import MostDataModule
from datamodules.dataset import FeatureConfig
from datamodules.embedded import EmbeddedCorpusConfig, corpus_paths, prepare_embedded_corpus
from datamodules.mixing import SourceConfig


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
        max_duration: float = 120.0,
        num_buckets: int = 10,
        buffer_size: int = 500,
        shuffle: bool = True,
        infinite: bool = True,
        max_cut_duration: float = 30.0,
        text_tokens_per_second: float = 50.0,
        eval_max_duration: float | None = None,
        num_workers: int = 2,
        pin_memory: bool = False,
        seed: int = 0,
    ) -> None:
        """Args are those of `MostDataModule`, plus `corpus_dir` and the `corpus` config to build it with."""
        paths = corpus_paths(corpus_dir)
        self.corpus_dir = corpus_dir
        self.corpus = corpus or EmbeddedCorpusConfig()
        super().__init__(
            train_sources=[
                *_speech_sources(str(paths.cuts["train"])),
                SourceConfig("fortunes", "text_lm", str(paths.text["train"])),
            ],
            task_weights=task_weights,
            val_sources=_speech_sources(str(paths.cuts["dev"])),
            test_sources=_speech_sources(str(paths.cuts["test"])),
            tokenizer=tokenizer,
            features=features,
            max_duration=max_duration,
            num_buckets=num_buckets,
            buffer_size=buffer_size,
            shuffle=shuffle,
            infinite=infinite,
            max_cut_duration=max_cut_duration,
            text_tokens_per_second=text_tokens_per_second,
            eval_max_duration=eval_max_duration,
            num_workers=num_workers,
            pin_memory=pin_memory,
            seed=seed,
            unit_quantizer=str(paths.unit_quantizer),
        )

    def prepare_data(self) -> None:
        """Lightning hook (one process per node): build the corpus unless it is already there."""
        prepare_embedded_corpus(self.corpus_dir, self.corpus)
