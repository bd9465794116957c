import os
import pickle

import numpy as np
import pytest
import torch

from lightning_most.audio import FbankEncoder, convert_sklearn_kmeans, load_textless_quantizer, train_kmeans


@pytest.fixture(scope="module")
def frames(waveform):
    return FbankEncoder()(waveform)  # (T, 160)


def test_spiritlm_kmeans_layout_gives_our_units(tmp_path, frames):
    ours = train_kmeans(frames, num_units=16, seed=0)
    path = tmp_path / "L11_km_16.pt"
    # SpiritLM's KmeansModel reads torch.load(...)["cluster_centers"] (numpy (K, F)) and ["n_clusters"].
    torch.save({"cluster_centers": ours.centroids.numpy().astype(np.float64), "n_clusters": 16}, path)
    theirs = load_textless_quantizer(path)
    assert torch.equal(theirs.quantize(frames), ours.quantize(frames))


def test_spiritlm_linear_quantizer_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "L11_quantizer_500.pt"
    torch.save({"model_cfg": {"vocab_size": 500, "dim": 768, "upstream_dim": 768}, "model_weight": {}}, path)
    with pytest.raises(ValueError, match="L11_quantizer_500.pt is SpiritLM's CTC-trained linear quantizer"):
        load_textless_quantizer(path)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickles_that_run_code_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"cluster_centers": _RunsCode()}, protocol=2))
    with pytest.raises(ValueError, match="evil.pt is not a plain torch file"):
        load_textless_quantizer(path)
    with pytest.raises(ValueError, match="evil.pt refers to .*system, which is not a numpy array"):
        convert_sklearn_kmeans(path, tmp_path / "out.safetensors")


@pytest.mark.parametrize("estimator", ["KMeans", "MiniBatchKMeans"])
def test_textless_sklearn_pickle_converts_to_the_same_units(tmp_path, frames, estimator):
    cluster = pytest.importorskip("sklearn.cluster", reason="scikit-learn writes the reference km.bin")
    import joblib

    x = frames.double().numpy()
    model = getattr(cluster, estimator)(n_clusters=16, random_state=0, n_init=1).fit(x)
    joblib.dump(model, tmp_path / "km.bin")  # how textless-lib / fairseq GSLM ship their k-means
    converted = convert_sklearn_kmeans(tmp_path / "km.bin", tmp_path / "km.safetensors")
    assert converted.quantize(frames).tolist() == model.predict(x).tolist()
    assert (tmp_path / "km.safetensors").is_file()
