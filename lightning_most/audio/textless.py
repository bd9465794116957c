"""Read k-means quantizers published with textless-lib, fairseq GSLM and SpiritLM, without running their code.

Layouts met in public releases:

- SpiritLM k-means (`spiritlm/speech_tokenizer/hubert/quantizer_model.py`, `KmeansModel`): a `torch.save`
  of `{"cluster_centers": numpy (K, F), "n_clusters": K}`. `load_textless_quantizer` reads it with
  `torch.load(weights_only=True)`, allowing only numpy's array-rebuilding functions.
- SpiritLM's shipped `hubert_25hz/L11_quantizer_500.pt` is *not* k-means: it is a CTC-trained MLP
  (`{"model_cfg": {vocab_size, dim, upstream_dim}, "model_weight": ...}`, `LinearQuantizerModel`): three
  linear layers with LeakyReLU to K + 1 logits (the last is CTC blank), a frame's unit is the argmax,
  and a blank frame takes the nearest non-blank unit to its left (cyclically, as SpiritLM's repeated
  `roll` does). `load_spiritlm_linear_quantizer` reads it (weights only) as a `SpiritLMLinearQuantizer`,
  which quantizes like a `UnitQuantizer` (`attach_units` takes either) but has no centroids to invert.
  It reads layer 11 of SpiritLM's 25 Hz mHuBERT, a fairseq checkpoint that `HubertEncoder` reads only
  once converted to a transformers folder.
- textless-lib / fairseq GSLM `km.bin`: `joblib.dump` of a scikit-learn (MiniBatch)KMeans, i.e. a
  pickle. `convert_sklearn_kmeans` reads it with an unpickler that resolves only numpy array/dtype
  constructors and the two scikit-learn estimator classes (mapped to an inert record), so no
  scikit-learn and no code from the file runs, then writes our safetensors file.
"""

from __future__ import annotations

import importlib
import itertools
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lightning_most.audio.quantizer import UnitQuantizer
from lightning_most.safe_loading import UnreadableCheckpointError, UnsafeCheckpointError, load_checkpoint


def _numpy_core_multiarray():
    try:
        return importlib.import_module("numpy._core.multiarray")  # numpy >= 2
    except ImportError:
        return importlib.import_module("numpy.core.multiarray")


_MULTIARRAY = _numpy_core_multiarray()
# numpy array rebuilding, spelled the way numpy 1 and numpy 2 write it into a pickle.
_NUMPY_GLOBALS = {
    (module, name): getattr(_MULTIARRAY, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
}
_NUMPY_GLOBALS[("numpy", "ndarray")] = np.ndarray
_NUMPY_GLOBALS[("numpy", "dtype")] = np.dtype
_SKLEARN_KMEANS = ("KMeans", "MiniBatchKMeans")


def _numpy_dtype_classes() -> list:
    return [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]


def load_textless_quantizer(path: str | Path) -> UnitQuantizer:
    """Read a SpiritLM-layout k-means file (`{"cluster_centers": (K, F), "n_clusters": K}`, torch.save)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"quantizer file {path} does not exist.")
    allowed = list(_NUMPY_GLOBALS.values()) + _numpy_dtype_classes()
    allowed += [(fn, f"{module}.{name}") for (module, name), fn in _NUMPY_GLOBALS.items()]
    try:
        with torch.serialization.safe_globals(allowed):
            states = load_checkpoint(path)
    except (UnsafeCheckpointError, UnreadableCheckpointError) as e:
        raise ValueError(
            f"{path} is not a plain torch file of tensors/arrays ({e}). If it is a "
            "textless-lib / fairseq scikit-learn pickle (km.bin), convert it once with convert_sklearn_kmeans."
        ) from e
    if isinstance(states, dict) and "model_weight" in states:
        raise ValueError(
            f"{path} is SpiritLM's CTC-trained linear quantizer (model_cfg + model_weight), not k-means "
            "centroids: read it with load_spiritlm_linear_quantizer."
        )
    if not isinstance(states, dict) or "cluster_centers" not in states:
        keys = sorted(states) if isinstance(states, dict) else type(states).__name__
        raise ValueError(f"{path} holds {keys}; a SpiritLM k-means file needs 'cluster_centers' (K, F).")
    centers = torch.as_tensor(states["cluster_centers"])
    if centers.dim() != 2:
        raise ValueError(f"{path}: 'cluster_centers' must be (K, F), got shape {tuple(centers.shape)}.")
    if "n_clusters" in states and int(states["n_clusters"]) != centers.shape[0]:
        raise ValueError(
            f"{path}: n_clusters={int(states['n_clusters'])} but cluster_centers has {centers.shape[0]} rows."
        )
    return UnitQuantizer(centers)


class SpiritLMLinearQuantizer:
    """SpiritLM's CTC-trained MLP quantizer: frames (T, F) -> K + 1 logits -> units (T,), blanks filled from the left."""

    def __init__(self, vocab_size: int, dim: int, upstream_dim: int, weights: dict[str, Tensor]) -> None:
        mid = upstream_dim - (vocab_size + 1)
        widths = (dim, dim - mid // 4, dim - mid // 2, vocab_size + 1)
        layers: list[torch.nn.Module] = []
        for i, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
            layers += [torch.nn.Linear(width_in, width_out)] + ([torch.nn.LeakyReLU()] if i < 2 else [])
        self.mlp = torch.nn.Sequential(*layers).eval().requires_grad_(False)
        self.mlp.load_state_dict(weights)
        self.num_units, self.feature_dim = vocab_size, dim

    @torch.no_grad()
    def quantize(self, features: Tensor) -> Tensor:
        """Units of frames (T, F) float -> (T,) long in [0, K)."""
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"expected features (T, {self.feature_dim}), got {tuple(features.shape)}")
        logits = self.mlp(features.float())  # (T, K + 1)
        units = logits.argmax(dim=-1)  # (T,)
        kept = (units != self.num_units).nonzero().flatten()  # frames that are not CTC blank
        if kept.numel() == 0:  # nothing to copy from: the best non-blank unit of each frame
            return logits[:, : self.num_units].argmax(dim=-1)
        positions = torch.arange(units.numel())
        # index into `kept` of the last non-blank at or before each frame; -1 (before the first) wraps to the last
        source = torch.searchsorted(kept, positions, right=True) - 1  # (T,)
        return units[kept[source]]


def load_spiritlm_linear_quantizer(path: str | Path) -> SpiritLMLinearQuantizer:
    """Read SpiritLM's `L11_quantizer_500.pt` layout (`{"model_cfg", "model_weight"}`) with weights only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"quantizer file {path} does not exist.")
    try:
        states = load_checkpoint(path)
    except (UnsafeCheckpointError, UnreadableCheckpointError) as e:
        raise ValueError(f"{path} is not a plain torch file of tensors ({e}).") from e
    if not isinstance(states, dict) or not {"model_cfg", "model_weight"} <= set(states):
        keys = sorted(states) if isinstance(states, dict) else type(states).__name__
        raise ValueError(f"{path} holds {keys}; SpiritLM's linear quantizer has 'model_cfg' and 'model_weight'.")
    cfg = states["model_cfg"]
    try:
        return SpiritLMLinearQuantizer(int(cfg["vocab_size"]), int(cfg["dim"]), int(cfg["upstream_dim"]), states["model_weight"])
    except (KeyError, RuntimeError) as e:
        raise ValueError(f"{path}: model_cfg {cfg} does not describe its model_weight ({e}).") from e


class _PickledEstimator:
    """Inert stand-in for a scikit-learn KMeans: keeps the pickled attribute dict, runs nothing."""

    def __setstate__(self, state: dict) -> None:
        self.state = state


def _restricted_unpickler(path: Path, handle):
    from joblib.numpy_pickle import NumpyArrayWrapper, NumpyUnpickler

    dtype_classes = {("numpy.dtypes", cls.__name__): cls for cls in _numpy_dtype_classes()}

    class RestrictedUnpickler(NumpyUnpickler):
        def find_class(self, module: str, name: str):
            if (module, name) in _NUMPY_GLOBALS:
                return _NUMPY_GLOBALS[(module, name)]
            if (module, name) in dtype_classes:
                return dtype_classes[(module, name)]
            if (module, name) == ("joblib.numpy_pickle", "NumpyArrayWrapper"):
                return NumpyArrayWrapper
            if module.startswith("sklearn.cluster") and name in _SKLEARN_KMEANS:
                return _PickledEstimator
            raise pickle.UnpicklingError(
                f"{path} refers to {module}.{name}, which is not a numpy array or a scikit-learn KMeans: refused."
            )

    return RestrictedUnpickler(str(path), handle, ensure_native_byte_order=True)


def convert_sklearn_kmeans(src: str | Path, dst: str | Path) -> UnitQuantizer:
    """Convert a textless-lib / fairseq scikit-learn k-means pickle (`km.bin`) into our safetensors file."""
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"scikit-learn k-means file {src} does not exist.")
    with src.open("rb") as handle:
        try:
            model = _restricted_unpickler(src, handle).load()
        except pickle.UnpicklingError as e:
            raise ValueError(f"cannot read {src} as an uncompressed joblib/pickle k-means model: {e}") from e
    if not isinstance(model, _PickledEstimator) or "cluster_centers_" not in model.state:
        raise ValueError(f"{src} does not hold a fitted scikit-learn KMeans (no cluster_centers_).")
    quantizer = UnitQuantizer(torch.from_numpy(np.asarray(model.state["cluster_centers_"], dtype=np.float32)))
    quantizer.save(dst)
    return quantizer
