import os
import pickle

import numpy as np
import pytest
import torch

from lightning_most.audio import (
    FbankEncoder,
    convert_sklearn_kmeans,
    load_spiritlm_linear_quantizer,
    load_textless_quantizer,
    train_kmeans,
)


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


def _spiritlm_reference_units(mlp: torch.nn.Sequential, features: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """SpiritLM's LinearQuantizerModel.forward, restated: argmax, then blanks take their left neighbour (cyclic roll)."""
    code = torch.log_softmax(mlp(features), dim=-1).argmax(dim=-1)
    for _ in range(code.numel()):  # SpiritLM loops until no blank is left (at most T passes when one unit remains)
        if not (code == vocab_size).any():
            break
        blank = code == vocab_size
        code[blank] = torch.roll(code, 1)[blank]
    return code


def test_spiritlm_linear_quantizer_gives_spiritlms_units(tmp_path):
    K, dim, upstream = 6, 32, 40  # mid = 40 - 7 = 33: widths 32 -> 24 -> 16 -> 7
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(32, 24), torch.nn.LeakyReLU(), torch.nn.Linear(24, 16), torch.nn.LeakyReLU(), torch.nn.Linear(16, 7)
    )
    with torch.no_grad():  # CTC blank wins wherever unit 4 would (frequent, frame 0 too: the cyclic fill is used)
        mlp[4].weight.mul_(20)
        mlp[4].weight[K] = mlp[4].weight[4]
        mlp[4].bias[K] = mlp[4].bias[4] + 1e-3
    path = tmp_path / "L11_quantizer_6.pt"
    torch.save({"model_cfg": {"vocab_size": K, "dim": dim, "upstream_dim": upstream}, "model_weight": mlp.state_dict()}, path)
    quantizer = load_spiritlm_linear_quantizer(path)
    features = torch.randn(200, dim)
    with torch.no_grad():
        raw = mlp(features).argmax(-1)
        expected = _spiritlm_reference_units(mlp, features, K)
    assert 20 < (raw == K).sum() < 180 and raw[0] == K  # blanks to fill, and units to fill them from
    units = quantizer.quantize(features)
    assert torch.equal(units, expected) and int(units.max()) < K
    assert quantizer.num_units == K and quantizer.feature_dim == dim
    with pytest.raises(ValueError, match="does not describe"):
        torch.save({"model_cfg": {"vocab_size": 7, "dim": dim, "upstream_dim": upstream}, "model_weight": mlp.state_dict()}, path)
        load_spiritlm_linear_quantizer(path)


def test_spiritlm_linear_quantizer_on_all_blank_frames_keeps_the_best_unit(tmp_path):
    # vocab 2, dim 4, upstream 7: mid = 7 - 3 = 4, widths 4 -> 3 -> 2 -> 3
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LeakyReLU(), torch.nn.Linear(3, 2), torch.nn.LeakyReLU(), torch.nn.Linear(2, 3))
    with torch.no_grad():
        mlp[4].bias.copy_(torch.tensor([0.0, 1.0, 100.0]))  # blank (id 2) always wins, unit 1 is second
        mlp[4].weight.zero_()
    path = tmp_path / "q.pt"
    torch.save({"model_cfg": {"vocab_size": 2, "dim": 4, "upstream_dim": 7}, "model_weight": mlp.state_dict()}, path)
    assert load_spiritlm_linear_quantizer(path).quantize(torch.randn(5, 4)).tolist() == [1] * 5


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
