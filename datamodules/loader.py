"""A DataLoader over a lhotse sampler that knows how far its consumer got, for exact resumption.

The sampler runs in the main process and hands CutSets to the workers, which load audio and lay out
the batch (`dataset.py`). Workers prefetch, so the sampler's own position runs ahead of the training
loop; `ResumableLoader` counts the batches it actually yields and its `state_dict` is the sampler's
with the batch count of the current epoch set to that number. Restoring it replays the sampler
(metadata only, no audio) up to the first batch the interrupted run never consumed. A consumer that
itself holds batches ahead (Lightning's training loop fetches one batch ahead of the step it runs)
sets `count_used` and calls `mark_used` per batch it trains on: the position is then the first
batch not trained on (`MostDataModule` does this from its `on_before_batch_transfer` hook).

It also adds up the skip counts of every batch (`quality.py`): `skipped` = the sampler filter's
counts (bad manifest entries) + the workers' counts (unloadable cuts).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterator

from lhotse.dataset.dataloading import make_worker_init_fn
from lhotse.dataset.sampling.base import CutSampler
from torch.utils.data import DataLoader

from datamodules.dataset import MostDataset
from datamodules.quality import SkipLog


class ResumableLoader:
    """Iterable of collated batches with `state_dict` / `load_state_dict` and a `skipped` Counter."""

    def __init__(
        self,
        dataset: MostDataset,
        sampler: CutSampler,
        filter_skips: SkipLog,
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: bool = False,
    ) -> None:
        self.sampler = sampler  # Lightning calls `sampler.set_epoch` through this attribute
        self.batch_sampler = None  # Lightning inspects it (as on a DataLoader): the sampler yields whole batches
        self.filter_skips = filter_skips
        self.load_skips: Counter = Counter()
        self.consumed = 0  # batches yielded in the sampler's current epoch
        self.used = 0  # of those, batches the consumer reported as used (`mark_used`)
        self.count_used = False  # the resume position counts used batches, not yielded ones
        self._restored = False
        worker_init_fn = (
            make_worker_init_fn(rank=sampler.rank, world_size=sampler.world_size, seed=seed) if num_workers else None
        )
        self.dataloader = DataLoader(
            dataset,
            sampler=sampler,
            batch_size=None,
            num_workers=num_workers,
            worker_init_fn=worker_init_fn,
            pin_memory=pin_memory,
            persistent_workers=False,
        )

    @property
    def skipped(self) -> Counter:
        """Cuts skipped so far, per reason of `quality.SKIP_REASONS`."""
        return self.filter_skips.counts + self.load_skips

    def __iter__(self) -> Iterator[dict]:
        if not self._restored:
            self.consumed = self.used = 0
        self._restored = False
        for batch, skipped in self.dataloader:
            self.consumed += 1
            self.load_skips.update(skipped)
            if batch is not None:
                yield batch

    def mark_used(self) -> None:
        """Record that the consumer trained on one more of the yielded batches."""
        self.used += 1

    def state_dict(self) -> dict:
        """The sampler state at the first batch not yet yielded (or used, with `count_used`), plus the skip counts."""
        position = self.used if self.count_used else self.consumed
        sd = copy.deepcopy(self.sampler.state_dict())
        diagnostics = sd["diagnostics"]
        epoch = diagnostics["current_epoch"]
        stats = diagnostics["stats_per_epoch"].setdefault(epoch, {"epoch": epoch, "kept_cuts": 0, "discarded_cuts": 0})
        stats.update(kept_batches=position, discarded_batches=0)
        return {
            "sampler": sd,
            "consumed": position,
            "filter_skips": dict(self.filter_skips.counts),
            "load_skips": dict(self.load_skips),
        }

    def load_state_dict(self, state: dict) -> None:
        """Fast-forward the sampler to where `state` was taken; the next iteration continues from there."""
        self.sampler.load_state_dict(copy.deepcopy(state["sampler"]))
        self.consumed = self.used = state["consumed"]
        # Replaying the sampler re-ran its filter: the counts are the saved ones, not the sum.
        self.filter_skips.counts = Counter(state["filter_skips"])
        self.load_skips = Counter(state["load_skips"])
        self._restored = True
