"""`TextCorpusDataModule`: text-LM batches from the fortunes' train split (`lightning_most.text_corpus`).

The dev split is the validation text (its loss is the held-out perplexity's log); the files are built
on first use. conf/pretrain_text.yaml trains the tiny text LMs on it.
"""

from __future__ import annotations

from datamodules.datamodule import LoaderConfig, MostDataModule
from datamodules.mixing import SourceConfig
from lightning_most.text_corpus import prepare_text_corpus, text_corpus_paths


class TextCorpusDataModule(MostDataModule):
    """Text-LM batches from the fortunes' train split; the dev split for validation (perplexity)."""

    def __init__(self, corpus_dir: str = "data/text", tokenizer: str = "byte", loader: LoaderConfig | None = None) -> None:
        """Args are those of `MostDataModule` (text: duration = tokens / loader.text_tokens_per_second), plus
        `corpus_dir`; `loader` defaults to 60 s (3,000 tokens) per batch in 4 buckets, one worker."""
        self.corpus_dir = corpus_dir
        paths = text_corpus_paths(corpus_dir)
        super().__init__(
            train_sources=[SourceConfig("fortunes", "text_lm", str(paths["train"]))],
            task_weights={"text_lm": 1.0},
            val_sources=[SourceConfig("fortunes", "text_lm", str(paths["dev"]))],
            tokenizer=tokenizer,
            loader=loader or LoaderConfig(max_duration=60.0, num_buckets=4, max_cut_duration=60.0, num_workers=1),
        )

    def prepare_data(self) -> None:
        """Lightning hook: build the text files unless they are there."""
        prepare_text_corpus(self.corpus_dir)

    @property
    def feature_dim(self) -> None:
        """Text only: no audio features for the backbone to fit."""
        return None

