"""`MostDataModule`: the mixed-task LightningDataModule of stage 1 (and, with more tasks, stage 2).

Train: the sources are mixed by task and corpus weight (`mixing.py`), filtered for bad manifest
entries (`quality.py`), bucketed by duration with lhotse's `DynamicBucketingSampler` (text examples
by their duration-equivalent, `text.py`), split across ranks by the sampler, and laid out and
collated in `num_workers` seeded worker processes (`dataset.py`). With `infinite=True` (default) the
stream never ends: train with `trainer.max_steps` and an integer `val_check_interval`.

Val / test: the dev / test sources interleaved in a seeded, fixed order (lhotse mux; each source in
manifest order; `SimpleCutSampler`, no shuffling), so that a limited number of eval batches
(`trainer.limit_val_batches`) holds every source; each cut is laid out for the task of its source
(list a corpus twice, once with task asr and once with tts, to evaluate both).

Every batch is a `lightning_most.batch.Batch` (F = `feature_dim`).

Resuming: Lightning saves `state_dict()` in the checkpoint and calls `load_state_dict` before it
asks for the train loader; the loader then continues at the first batch the interrupted run did not
train on (`loader.py`; `on_before_batch_transfer` counts the batches the training loop used, since
it fetches one batch ahead of the step). Cuts skipped as bad data are counted in `skipped` (a Counter per reason).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch.distributed as dist
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler, SimpleCutSampler

from datamodules.dataset import MostDataset
from datamodules.loader import ResumableLoader
from datamodules.mixing import STAGE1_TASK_WEIGHTS, SourceConfig, mix_sources, open_source, validate_mix
from datamodules.quality import CutChecker, SkipLog
from datamodules.text import resolve_text_shards
from datamodules.webdataset_shards import is_webdataset_path
from lightning_most.audio.features import FeatureConfig
from lightning_most.batch import TEXT_ONLY_TASKS


@dataclass
class LoaderConfig:
    """How cuts become batches: duration buckets, shuffling, workers (YAML: `data.init_args.loader`)."""

    max_duration: float = 120.0
    """Seconds of audio (text: duration-equivalent) per batch."""
    num_buckets: int = 10
    """Duration buckets of the train sampler."""
    num_cuts_for_bins_estimate: int = 10000
    """Cuts read from the mix to place the bucket boundaries, at every (re)start: from shards (Shar, webdataset)
    that means reading their audio too, a few ms per cut."""
    buffer_size: int = 500
    """Cuts held by the bucketing sampler: more shuffles better but lets the task mix of the first thousands of
    samples drift from `task_weights` (buckets drain unevenly at the start); keep it about num_buckets x cuts per
    batch (500: within 3 points over 2,000 samples)."""
    shuffle: bool = True
    """Shuffle the train stream (within the sampler's buffer)."""
    infinite: bool = True
    """Repeat every train source forever (ratios hold for the whole run)."""
    max_cut_duration: float = 30.0
    """Longer cuts are skipped and counted as `too_long`."""
    text_tokens_per_second: float = 50.0
    """Text duration-equivalent = tokens / this."""
    eval_max_duration: float | None = None
    """Seconds per val/test batch (None: max_duration)."""
    num_workers: int = 2
    """Dataloading worker processes."""
    pin_memory: bool = False
    """Pin batches in page-locked memory (GPU training)."""
    seed: int = 0
    """Seeds the mix, the sampler and the workers."""

    def __post_init__(self) -> None:
        if not 0 < self.max_cut_duration <= self.max_duration:
            raise ValueError(
                f"loader.max_cut_duration={self.max_cut_duration} must lie in (0, loader.max_duration="
                f"{self.max_duration}]: a batch must be able to hold the longest cut."
            )


class MostDataModule(pl.LightningDataModule):
    """Mixed ASR / TTS / text-LM batches from weighted sources (see the module docstring)."""

    def __init__(
        self,
        train_sources: list[SourceConfig],
        task_weights: dict[str, float] | None = None,
        val_sources: list[SourceConfig] | None = None,
        test_sources: list[SourceConfig] | None = None,
        tokenizer: str = "byte",
        features: FeatureConfig | None = None,
        loader: LoaderConfig | None = None,
        unit_quantizer: str | None = None,
        vocoder: str | None = None,
    ) -> None:
        """Build the data pipeline.

        Args:
            train_sources: corpora and the task each feeds (`SourceConfig`: name, task, path, weight).
            task_weights: probability of each task (normalised); default asr 0.4, tts 0.4, text_lm 0.2.
            val_sources: dev corpora, one entry per (corpus, task) to evaluate.
            test_sources: test corpora, likewise.
            tokenizer: "byte" or a local transformers tokenizer folder (`lightning_most.tokenizer`).
            features: ASR input features (on-the-fly fbank by default, frozen Whisper encoder states, or
                precomputed; frame stacking).
            loader: batching, shuffling and workers (`LoaderConfig`).
            unit_quantizer: the safetensors k-means the TTS units came from (its `.json` description beside
                it, written by `datamodules.units`); recorded in checkpoints through `audio_io()`.
            vocoder: the folder of the vocoder trained on these units (a unit HiFi-GAN of
                `lightning_most.audio.train_vocoder`, or a speechbrain unit HiFi-GAN); recorded in checkpoints, so
                inference speaks through it. None = the one the quantizer's description names, if any.
        """
        super().__init__()
        self.train_sources = list(train_sources)
        self.task_weights = dict(STAGE1_TASK_WEIGHTS if task_weights is None else task_weights)
        validate_mix(self.train_sources, self.task_weights, "train_sources")
        self.val_sources = list(val_sources or [])
        self.test_sources = list(test_sources or [])
        for field, sources in (("val_sources", self.val_sources), ("test_sources", self.test_sources)):
            if sources:
                validate_mix(sources, {s.task: 1.0 for s in sources}, field)
        self.features = features or FeatureConfig()
        self.tokenizer = tokenizer
        self.loader = loader or LoaderConfig()
        self.unit_quantizer = unit_quantizer
        self.vocoder = vocoder
        self.dataset = MostDataset(tokenizer, self.features)
        self._train_loader: ResumableLoader | None = None
        self._pending_state: dict | None = None

    @property
    def specials(self):
        """Special token ids of the tokenizer (`lightning_most.tokenizer.SpecialTokens`)."""
        return self.dataset.specials

    @property
    def feature_dim(self) -> int:
        """F of `audio_features`: frame width (fbank bins, Whisper d_model) x frame_stack."""
        if self.features.kind == "precomputed":
            raise ValueError("feature_dim is not known in advance for kind='precomputed': the stored features set it")
        return self.dataset.extractor.num_features * self.features.frame_stack

    def _unit_description(self) -> dict:
        if self.unit_quantizer is None:
            return {}
        description = Path(self.unit_quantizer).with_suffix(".json")
        if not description.is_file():
            raise FileNotFoundError(
                f"unit_quantizer={self.unit_quantizer}: its description {description} is missing "
                "(datamodules.units writes both; point unit_quantizer at a quantizer it built)."
            )
        return json.loads(description.read_text())

    @property
    def num_units(self) -> int | None:
        """K of the unit quantizer (None without `unit_quantizer`)."""
        description = self._unit_description()
        return description.get("num_units")

    def audio_io(self) -> dict:
        """How audio became inputs (features) and targets (units), and the vocoder of the units: saved in checkpoints
        for inference, local paths made absolute."""
        features = asdict(self.features)
        for key in ("hubert_path", "whisper_path"):
            if features[key]:
                features[key] = str(Path(features[key]).resolve())
        description = self._unit_description()
        vocoder = self.vocoder or description.get("vocoder")
        return {
            "features": features,
            "unit_quantizer": str(Path(self.unit_quantizer).resolve()) if self.unit_quantizer else None,
            "unit_encoder": description,
            "num_units": self.num_units,
            "vocoder": str(Path(vocoder).resolve()) if vocoder else None,
        }

    def word_lm_text_files(self) -> list[str]:
        """The local files of the training text: the speech sources' cut manifests (their transcripts) and the
        text-LM shards, each once. A word LM (`lightning_most.decoding.word_lm`) with no `text_files` is counted on them."""
        files: list[str] = []
        for source in self.train_sources:
            paths = resolve_text_shards(source.path) if source.task in TEXT_ONLY_TASKS else [source.path]
            for path in paths:
                if not Path(path).is_file() or is_webdataset_path(path):
                    raise ValueError(
                        f"train source {source.name!r} ({source.task}) is {path!r}, not a local file the word LM can "
                        "read (a URL, Shar folder or webdataset shards): list the LM's text in asr_decoding.word_lm.text_files"
                    )
                if path not in files:
                    files.append(path)
        return files

    @property
    def skipped(self) -> Counter:
        """Train cuts skipped so far, per reason (log it from the training module)."""
        return self._train_loader.skipped if self._train_loader is not None else Counter()

    def _distributed_position(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def make_train_loader(self, rank: int = 0, world_size: int = 1) -> ResumableLoader:
        """The train loader of one rank (the `train_dataloader` hook passes the trainer's rank)."""
        cuts = mix_sources(
            self.train_sources,
            self.task_weights,
            tokenizer=self.tokenizer,
            tokens_per_second=self.loader.text_tokens_per_second,
            seed=self.loader.seed,
            infinite=self.loader.infinite,
        )
        sampler = DynamicBucketingSampler(
            cuts,
            max_duration=self.loader.max_duration,
            num_buckets=self.loader.num_buckets,
            num_cuts_for_bins_estimate=self.loader.num_cuts_for_bins_estimate,
            buffer_size=self.loader.buffer_size,
            shuffle=self.loader.shuffle,
            seed=self.loader.seed,
            rank=rank,
            world_size=world_size,
        )
        skips = SkipLog()
        sampler.filter(CutChecker(self.loader.max_cut_duration, skips))
        loader = self.loader
        return ResumableLoader(self.dataset, sampler, skips, loader.num_workers, loader.seed, loader.pin_memory)

    def make_eval_loader(self, sources: list[SourceConfig], rank: int = 0, world_size: int = 1) -> ResumableLoader:
        """A deterministic one-pass loader over `sources`, interleaved in a seeded fixed order (see the module docstring)."""
        if not sources:
            raise ValueError("no evaluation sources: set `val_sources` / `test_sources` of the data module.")
        per_second, seed = self.loader.text_tokens_per_second, self.loader.seed
        cutsets = [open_source(s, self.tokenizer, per_second, seed, False) for s in sources]
        # Interleaved, not concatenated: the first batches then hold every task and corpus, not only the first source's.
        cuts: CutSet = cutsets[0] if len(cutsets) == 1 else CutSet.mux(*cutsets, seed=self.loader.seed)
        sampler = SimpleCutSampler(
            cuts, max_duration=self.loader.eval_max_duration or self.loader.max_duration, shuffle=False, rank=rank, world_size=world_size
        )
        skips = SkipLog()
        sampler.filter(CutChecker(self.loader.max_cut_duration, skips))
        loader = self.loader
        return ResumableLoader(self.dataset, sampler, skips, loader.num_workers, loader.seed, loader.pin_memory)

    def train_dataloader(self) -> ResumableLoader:
        """Lightning hook: the infinite (or one-pass) mixed train loader of this rank."""
        self._train_loader = self.make_train_loader(*self._distributed_position())
        # Under a Trainer the loop fetches ahead of the step: resume at the first batch not trained on.
        self._train_loader.count_used = self.trainer is not None
        if self._pending_state is not None:
            self._train_loader.load_state_dict(self._pending_state)
            self._pending_state = None
        return self._train_loader

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Lightning hook, run for the batch a step is about to train on: count it in the resume position."""
        if self.trainer is not None and self.trainer.training and self._train_loader is not None:
            self._train_loader.mark_used()
        return batch

    def val_dataloader(self) -> ResumableLoader:
        """Lightning hook: the dev sources, in order."""
        return self.make_eval_loader(self.val_sources, *self._distributed_position())

    def test_dataloader(self) -> ResumableLoader:
        """Lightning hook: the test sources, in order."""
        return self.make_eval_loader(self.test_sources, *self._distributed_position())

    def predict_dataloader(self) -> ResumableLoader:
        """Lightning hook: `predict` transcribes the test sources' ASR cuts, in order."""
        return self.make_eval_loader(self.test_sources, *self._distributed_position())

    def state_dict(self) -> dict:
        """Lightning hook: the train loader's position (saved in the checkpoint)."""
        if self._train_loader is not None:
            return {"train_loader": self._train_loader.state_dict()}
        return {"train_loader": self._pending_state} if self._pending_state is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        """Lightning hook: restore the train loader's position (applied when the loader is built)."""
        state = state_dict.get("train_loader")
        if state is None:
            return
        if self._train_loader is not None:
            self._train_loader.load_state_dict(state)
        else:
            self._pending_state = state
