import pytest
import torch

from lightning_most.audio import FbankEncoder, UnitQuantizer, dedup_units, train_kmeans


@pytest.fixture(scope="module")
def frames(waveform):
    return FbankEncoder()(waveform)  # (T, 160)


def test_quantize_is_the_nearest_centroid():
    torch.manual_seed(0)
    centroids, x = torch.randn(7, 5), torch.randn(50, 5)
    expected = torch.cdist(x, centroids).argmin(dim=1)
    units = UnitQuantizer(centroids).quantize(x)
    assert units.dtype == torch.long and units.shape == (50,)
    assert torch.equal(units, expected)
    assert torch.equal(UnitQuantizer(centroids).quantize(centroids), torch.arange(7))


def test_kmeans_is_deterministic_for_a_seed(frames):
    a = train_kmeans(frames, num_units=16, seed=3)
    b = train_kmeans([frames[:50], frames[50:]], num_units=16, seed=3)
    c = train_kmeans(frames, num_units=16, seed=4)
    assert torch.equal(a.centroids, b.centroids)
    assert not torch.equal(a.centroids, c.centroids)


def test_kmeans_reduces_distortion_below_its_initialisation(frames):
    init = train_kmeans(frames, num_units=16, seed=0, iterations=0)  # k-means++ seeding only
    trained = train_kmeans(frames, num_units=16, seed=0, iterations=30)
    assert trained.distortion(frames) < 0.9 * init.distortion(frames)
    assert set(trained.quantize(frames).tolist()) == set(range(16))  # no cluster left empty


def test_kmeans_needs_enough_frames(frames):
    with pytest.raises(ValueError, match="at least num_units=500 frames"):
        train_kmeans(frames[:100], num_units=500)


def test_save_load_round_trip(tmp_path, frames):
    quantizer = train_kmeans(frames, num_units=8, seed=0)
    quantizer.save(tmp_path / "q" / "units.safetensors")
    loaded = UnitQuantizer.load(tmp_path / "q" / "units.safetensors", num_units=8, feature_dim=160)
    assert torch.equal(loaded.centroids, quantizer.centroids)
    assert torch.equal(loaded.quantize(frames), quantizer.quantize(frames))


def test_bad_quantizer_files_are_named(tmp_path, frames):
    path = tmp_path / "units.safetensors"
    with pytest.raises(FileNotFoundError, match="units.safetensors does not exist"):
        UnitQuantizer.load(path)
    UnitQuantizer(torch.randn(8, 80)).save(path)
    with pytest.raises(ValueError, match="units.safetensors has centroids of dimension 80 .* gives 160"):
        UnitQuantizer.load(path, feature_dim=160)
    with pytest.raises(ValueError, match="units.safetensors has 8 centroids but 500"):
        UnitQuantizer.load(path, num_units=500)
    with pytest.raises(ValueError, match=r"expected features \(T, 80\)"):
        UnitQuantizer.load(path).quantize(frames)
    path.write_bytes(b"not a tensor file at all")
    with pytest.raises(ValueError, match="units.safetensors is not a safetensors file"):
        UnitQuantizer.load(path)


def test_centroid_features_rejects_out_of_range_units():
    quantizer = UnitQuantizer(torch.randn(4, 3))
    assert quantizer.centroid_features(torch.tensor([3, 0])).shape == (2, 3)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        quantizer.centroid_features(torch.tensor([4]))


def test_dedup_units():
    units, durations = dedup_units(torch.tensor([5, 5, 5, 2, 7, 7, 5]))
    assert units.tolist() == [5, 2, 7, 5]
    assert durations.tolist() == [3, 1, 2, 1]


def test_kmeans_shows_its_progress_when_asked(capsys):
    frames = torch.randn(300, 4, generator=torch.Generator().manual_seed(0))
    quiet = train_kmeans(frames, num_units=5, seed=0, iterations=3, tolerance=0.0)
    assert capsys.readouterr().err == ""
    shown = train_kmeans(frames, num_units=5, seed=0, iterations=3, tolerance=0.0, progress=True)
    err = capsys.readouterr().err
    assert "k-means++ seeding" in err and "4/4" in err  # centroids 2..5
    assert "k-means on 300 frames" in err and "distortion=" in err
    assert torch.equal(shown.centroids, quiet.centroids)  # progress changes nothing else


def _two_clusters_behind_a_loud_dimension() -> tuple[torch.Tensor, torch.Tensor]:
    """Frames (400, 5): two clusters at +-1 in dims 1-4 (spread 0.2) and noise of std 100 in dim 0; labels (400,)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(400) % 2
    x = 0.2 * torch.randn(400, 5, generator=g)
    x[:, 1:] += (2 * labels[:, None] - 1).float()
    x[:, 0] = 100 * torch.randn(400, generator=g)
    return x, labels


def _purity(units: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of frames whose unit's majority label is their own."""
    agree = sum(int(torch.bincount(labels[units == u], minlength=2).max()) for u in units.unique())
    return agree / labels.numel()


def test_standardizing_finds_the_clusters_a_loud_dimension_hides():
    x, labels = _two_clusters_behind_a_loud_dimension()
    raw = train_kmeans(x, num_units=2, seed=0)
    standardized = train_kmeans(x, num_units=2, seed=0, standardize=True)
    assert not raw.standardized and standardized.standardized
    assert _purity(raw.quantize(x), labels) < 0.7  # split along the noise
    assert _purity(standardized.quantize(x), labels) == 1.0
    # centroids come back in the frames' own space: the cluster centres at +-1
    centres = standardized.centroid_features(torch.arange(2))[:, 1:].mean(1).sort().values
    assert torch.allclose(centres, torch.tensor([-1.0, 1.0]), atol=0.05)


def test_standardized_quantizer_round_trips(tmp_path):
    x, _ = _two_clusters_behind_a_loud_dimension()
    quantizer = train_kmeans(x, num_units=4, seed=0, standardize=True)
    quantizer.save(tmp_path / "units.safetensors")
    loaded = UnitQuantizer.load(tmp_path / "units.safetensors")
    assert loaded.standardized
    assert torch.equal(loaded.feature_std, quantizer.feature_std)
    assert torch.equal(loaded.quantize(x), quantizer.quantize(x))
    with pytest.raises(ValueError, match="needs both feature_mean and feature_std"):
        UnitQuantizer(torch.randn(4, 5), feature_mean=torch.zeros(5))
    with pytest.raises(ValueError, match=r"feature_std must have shape \(5,\)"):
        UnitQuantizer(torch.randn(4, 5), torch.zeros(5), torch.ones(3))
