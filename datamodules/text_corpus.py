"""`TextCorpusDataModule`: text-LM batches from the fortunes' train split (`lightning_most.text_corpus`).

The dev split is the validation text (its loss is the held-out perplexity's log); the files are built
on first use. conf/pretrain_text.yaml trains the tiny text LMs on it.
"""

from __future__ import annotations

from datamodules.datamodule import MostDataModule
from datamodules.mixing import SourceConfig
from lightning_most.text_corpus import prepare_text_corpus, text_corpus_paths


class TextCorpusDataModule(MostDataModule):
    """Text-LM batches from the fortunes' train split; the dev split for validation (perplexity)."""

    def __init__(
        self,
        corpus_dir: str = "data/text",
        tokenizer: str = "byte",
        max_duration: float = 60.0,
        num_buckets: int = 4,
        buffer_size: int = 500,
        text_tokens_per_second: float = 50.0,
        num_workers: int = 1,
        seed: int = 0,
    ) -> None:
        """Args are those of `MostDataModule` (text: duration = tokens / text_tokens_per_second), plus `corpus_dir`."""
        self.corpus_dir = corpus_dir
        paths = text_corpus_paths(corpus_dir)
        super().__init__(
            train_sources=[SourceConfig("fortunes", "text_lm", str(paths["train"]))],
            task_weights={"text_lm": 1.0},
            val_sources=[SourceConfig("fortunes", "text_lm", str(paths["dev"]))],
            tokenizer=tokenizer,
            max_duration=max_duration,
            num_buckets=num_buckets,
            buffer_size=buffer_size,
            max_cut_duration=max_duration,
            text_tokens_per_second=text_tokens_per_second,
            num_workers=num_workers,
            seed=seed,
        )

    def prepare_data(self) -> None:
        """Lightning hook: build the text files unless they are there."""
        prepare_text_corpus(self.corpus_dir)

    @property
    def feature_dim(self) -> None:
        """Text only: no audio features for the backbone to fit."""
        return None

