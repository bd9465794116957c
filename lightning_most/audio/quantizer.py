"""Discrete audio units: nearest-centroid quantization of encoder frames, and k-means to fit it.

A `UnitQuantizer` holds K centroids (K, F) and maps frames (T, F) to unit ids (T,) in [0, K).
`train_kmeans` fits one (k-means++ init, then Lloyd iterations; deterministic for a seed).
Written here rather than taken from scikit-learn or faiss: neither is a dependency, and the job is
a few batched matmuls in torch. Files are safetensors holding `centroids` and, for a standardized
quantizer, `feature_mean` and `feature_std`.

Standardizing (`train_kmeans(..., standardize=True)`) z-scores every feature dimension with the
training frames' mean and standard deviation before clustering, and every frame the same way before
its nearest centroid is found. A transformer encoder's states have a few dimensions of outsized
variance (Whisper tiny.en: 5 of 384 hold 27% of the variance) that would otherwise decide the
clusters; on those states it takes the resynthesis judge WER from 116% to 49% (bench/RESULTS.md).

Quantizers trained elsewhere (SpiritLM, textless-lib, fairseq) are read in `textless.py`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

ASSIGN_CHUNK = 16384  # frames per distance matrix (ASSIGN_CHUNK, K): bounds memory, not a loop over frames


def _nearest(features: Tensor, centroids: Tensor, chunk: int = ASSIGN_CHUNK) -> tuple[Tensor, Tensor]:
    """Nearest centroid of every row: features (N, F), centroids (K, F) -> ids (N,) long, squared distances (N,)."""
    centroid_sq = centroids.pow(2).sum(1)  # (K,)
    ids, dists = [], []
    for block in features.split(chunk):
        d = block.pow(2).sum(1, keepdim=True) - 2 * block @ centroids.T + centroid_sq  # (n, K)
        dist, idx = d.min(dim=1)
        ids.append(idx)
        dists.append(dist.clamp_min(0))
    return torch.cat(ids), torch.cat(dists)


class UnitQuantizer:
    """K centroids (K, F); `quantize` maps frames (T, F) to unit ids (T,).

    With `feature_mean` and `feature_std` (F,) the centroids live in standardized space: a frame x is
    compared as (x - feature_mean) / feature_std.
    """

    def __init__(self, centroids: Tensor, feature_mean: Tensor | None = None, feature_std: Tensor | None = None) -> None:
        if centroids.dim() != 2 or centroids.shape[0] < 1:
            raise ValueError(f"centroids must have shape (K, F) with K >= 1, got {tuple(centroids.shape)}")
        if (feature_mean is None) != (feature_std is None):
            raise ValueError("a standardized quantizer needs both feature_mean and feature_std (or neither)")
        self.centroids = centroids.float().contiguous()  # (K, F)
        self.feature_mean = self.feature_std = None
        if feature_mean is not None:
            for name, stat in (("feature_mean", feature_mean), ("feature_std", feature_std)):
                if tuple(stat.shape) != (centroids.shape[1],):
                    raise ValueError(f"{name} must have shape ({centroids.shape[1]},), got {tuple(stat.shape)}")
            if not bool((feature_std > 0).all()):
                raise ValueError("feature_std must be positive in every dimension")
            self.feature_mean, self.feature_std = feature_mean.float().contiguous(), feature_std.float().contiguous()

    @property
    def standardized(self) -> bool:
        """Whether frames are z-scored (`feature_mean`, `feature_std`) before the nearest centroid is found."""
        return self.feature_mean is not None

    @property
    def num_units(self) -> int:
        """K, the size of the unit vocabulary."""
        return self.centroids.shape[0]

    @property
    def feature_dim(self) -> int:
        """F, the dimension of the frames this quantizer reads."""
        return self.centroids.shape[1]

    def _comparable(self, features: Tensor) -> Tensor:
        """Frames (T, F) checked, as float on the centroids' device, standardized if the quantizer is."""
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(
                f"expected features (T, {self.feature_dim}) for a quantizer of {self.num_units} x {self.feature_dim} "
                f"centroids, got {tuple(features.shape)}: were the units fit on a different encoder?"
            )
        features = features.float().to(self.centroids.device)
        if self.standardized:
            features = (features - self.feature_mean) / self.feature_std
        return features

    def quantize(self, features: Tensor) -> Tensor:
        """Nearest-centroid unit of each frame: (T, F) float -> (T,) long."""
        return _nearest(self._comparable(features), self.centroids)[0]

    def distortion(self, features: Tensor) -> float:
        """Mean squared distance of frames (T, F) to their nearest centroid (in standardized space if standardized)."""
        return float(_nearest(self._comparable(features), self.centroids)[1].mean())

    def centroid_features(self, units: Tensor) -> Tensor:
        """The centroid of each unit in the frames' own space: (T,) long -> (T, F) float."""
        if units.numel() and (int(units.min()) < 0 or int(units.max()) >= self.num_units):
            raise ValueError(
                f"unit ids must lie in [0, {self.num_units}), got [{int(units.min())}, {int(units.max())}]"
            )
        centroids = self.centroids[units.long()]
        if self.standardized:
            centroids = centroids * self.feature_std + self.feature_mean
        return centroids

    def save(self, path: str | Path) -> None:
        """Write the centroids (and the standardization, if any) to a safetensors file."""
        from safetensors.torch import save_file

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tensors = {"centroids": self.centroids.cpu()}
        if self.standardized:
            tensors |= {"feature_mean": self.feature_mean.cpu(), "feature_std": self.feature_std.cpu()}
        save_file(tensors, str(path))

    @classmethod
    def load(cls, path: str | Path, num_units: int | None = None, feature_dim: int | None = None) -> UnitQuantizer:
        """Read a file written by `save`; `num_units` / `feature_dim`, when given, are checked against it."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"unit quantizer file {path} does not exist (write one with UnitQuantizer.save).")
        try:
            tensors = load_file(str(path))
        except SafetensorError as e:
            raise ValueError(
                f"{path} is not a safetensors file ({e}); for SpiritLM/textless quantizers use load_textless_quantizer."
            ) from e
        if "centroids" not in tensors:
            raise ValueError(f"{path} holds {sorted(tensors)} but no 'centroids' tensor.")
        centroids = tensors["centroids"]
        if centroids.dim() != 2:
            raise ValueError(f"{path}: 'centroids' must have shape (K, F), got {tuple(centroids.shape)}.")
        K, F = centroids.shape
        if num_units is not None and K != num_units:
            raise ValueError(f"{path} has {K} centroids but {num_units} units were expected.")
        if feature_dim is not None and F != feature_dim:
            raise ValueError(
                f"{path} has centroids of dimension {F} but the encoder gives {feature_dim}-dimensional features."
            )
        try:
            return cls(centroids, tensors.get("feature_mean"), tensors.get("feature_std"))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e


def dedup_units(units: Tensor) -> tuple[Tensor, Tensor]:
    """Collapse runs of a repeated unit: (T,) -> units (T',), durations in frames (T',)."""
    deduped, durations = torch.unique_consecutive(units, return_counts=True)
    return deduped, durations


def _gather(features: Tensor | Iterable[Tensor]) -> Tensor:
    if isinstance(features, Tensor):
        blocks = [features]
    else:
        blocks = list(features)
    if not blocks:
        raise ValueError("train_kmeans got no features")
    for block in blocks:
        if block.dim() != 2 or block.shape[1] != blocks[0].shape[1]:
            raise ValueError(f"every feature block must be (T, {blocks[0].shape[1]}), got {tuple(block.shape)}")
    return torch.cat([b.float() for b in blocks])  # (N, F)


def _kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator, progress: bool = False) -> Tensor:
    """k-means++ seeding: each next centroid drawn with probability proportional to D(x)^2."""
    N = x.shape[0]
    first = int(torch.randint(N, (1,), generator=generator))
    centroids = [x[first]]
    closest = (x - x[first]).pow(2).sum(1)  # (N,)
    for _ in tqdm(range(1, k), desc="k-means++ seeding", unit="centroid", disable=not progress, file=sys.stderr):
        weights = closest if float(closest.sum()) > 0 else torch.ones_like(closest)
        pick = int(torch.multinomial(weights.double(), 1, generator=generator))
        centroids.append(x[pick])
        closest = torch.minimum(closest, (x - x[pick]).pow(2).sum(1))
    return torch.stack(centroids)  # (k, F)


def train_kmeans(
    features: Tensor | Iterable[Tensor],
    num_units: int = 500,
    seed: int = 0,
    iterations: int = 50,
    batch_size: int = ASSIGN_CHUNK,
    tolerance: float = 1e-4,
    progress: bool = False,
    standardize: bool = False,
) -> UnitQuantizer:
    """Fit `num_units` centroids to frames with k-means++ seeding and full-batch Lloyd iterations.

    Args:
        features: one (N, F) tensor, or an iterable of (T, F) tensors (e.g. one per utterance).
        num_units: K, the number of centroids.
        seed: seeds the k-means++ draws; the same seed and data give the same centroids.
        iterations: maximum Lloyd iterations (0 returns the k-means++ seeding itself).
        batch_size: frames per distance computation (memory bound only; every iteration sees all frames).
        tolerance: stop once an iteration lowers the distortion by less than this fraction.
        progress: show progress bars on stderr (seeding: per centroid; Lloyd: per iteration, with the distortion).
        standardize: z-score each dimension with these frames' mean and standard deviation before clustering
            (kept in the quantizer, which standardizes every frame it quantizes the same way).
    """
    x = _gather(features)  # (N, F)
    N, F = x.shape
    if N < num_units:
        raise ValueError(f"k-means needs at least num_units={num_units} frames, got {N}")
    mean = std = None
    if standardize:
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)  # (F,), (F,): a constant dimension stays finite
        x = (x - mean) / std
    generator = torch.Generator().manual_seed(seed)
    centroids = _kmeans_plus_plus(x, num_units, generator, progress)  # (K, F)
    previous = float("inf")
    bar = tqdm(range(iterations), desc=f"k-means on {N} frames", unit="iteration", disable=not progress, file=sys.stderr)
    for _ in bar:
        ids, dists = _nearest(x, centroids, batch_size)  # (N,), (N,)
        distortion = float(dists.mean())
        bar.set_postfix(distortion=f"{distortion:.4g}")
        sums = torch.zeros(num_units, F, dtype=torch.float64).index_add_(0, ids, x.double())  # (K, F)
        counts = torch.bincount(ids, minlength=num_units)  # (K,)
        empty = (counts == 0).nonzero().flatten()
        new = (sums / counts.clamp_min(1)[:, None]).float()
        if empty.numel():
            # An empty cluster restarts at the frames worst served by the current centroids.
            new[empty] = x[dists.topk(empty.numel()).indices]
        centroids = new
        if previous - distortion <= tolerance * previous:
            break
        previous = distortion
    bar.close()
    return UnitQuantizer(centroids, mean, std)
