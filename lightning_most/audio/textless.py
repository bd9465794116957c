"""Read k-means quantizers published with textless-lib, fairseq GSLM and SpiritLM, without running their code.

Layouts met in public releases:

- SpiritLM k-means (`spiritlm/speech_tokenizer/hubert/quantizer_model.py`, `KmeansModel`): a `torch.save`
  of `{"cluster_centers": numpy (K, F), "n_clusters": K}`. `load_textless_quantizer` reads it with
  `torch.load(weights_only=True)`, allowing only numpy's array-rebuilding functions.
- SpiritLM's shipped `hubert_25hz/L11_quantizer_500.pt` is *not* k-means: it is a CTC-trained MLP
  (`{"model_cfg": ..., "model_weight": ...}`, `LinearQuantizerModel`). Its units are not nearest
  centroids, so `load_textless_quantizer` refuses it with that explanation.
- textless-lib / fairseq GSLM `km.bin`: `joblib.dump` of a scikit-learn (MiniBatch)KMeans, i.e. a
  pickle. `convert_sklearn_kmeans` reads it with an unpickler that resolves only numpy array/dtype
  constructors and the two scikit-learn estimator classes (mapped to an inert record), so no
  scikit-learn and no code from the file runs, then writes our safetensors file.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path

import numpy as np
import torch

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
            "centroids; its units cannot be reproduced by nearest-centroid quantization."
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
