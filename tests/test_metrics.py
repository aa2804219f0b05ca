"""PSNR / SSIM properties and the offline behaviour of LPIPS and rFID."""
import math

import pytest
import torch

from minieq import metrics
from minieq.evaluation import PCACodec


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv("MINIEQ_WEIGHTS_DIR", raising=False)
    monkeypatch.setattr(metrics, "_LPIPS_CACHE", {})
    return tmp_path


def images(b=3, h=32, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g) * 2 - 1


def test_psnr_identical_is_inf_and_known_noise_level():
    x = images()
    assert torch.isinf(metrics.psnr(x, x)).all()
    # An offset of 0.1 in [-1, 1] is 0.05 in [0, 1]: MSE 0.0025 -> 10·log10(400) dB.
    value = metrics.psnr(x, x + 0.1)
    assert value.shape == (3,)
    torch.testing.assert_close(value, torch.full((3,), 10 * math.log10(400)))
    noisy = metrics.psnr(x, x + 0.2 * torch.randn_like(x))
    assert torch.all(noisy < value)


def test_baseline_reconstructions():
    x = images(w=64)
    base = metrics.baseline_reconstructions(x, column_width=8)
    row, col = base["row_mean"], base["column_mean"]
    assert row.shape == col.shape == x.shape
    # Row mean: constant along x with the image's row means; column mean: constant inside each
    # 8-px column, with that column's row means.
    torch.testing.assert_close(row[..., 5], x.mean(-1))
    torch.testing.assert_close(col[..., 8:16].mean(-1), x[..., 8:16].mean(-1))
    assert torch.all(col[..., 8:16] == col[..., 8:9])
    # An image constant along x is its own row mean; finer columns always fit at least as well.
    flat = x[..., :1].expand_as(x)
    assert torch.all(metrics.psnr(flat, metrics.baseline_reconstructions(flat, 8)["row_mean"]) > 100)
    assert torch.all(metrics.psnr(x, col) >= metrics.psnr(x, row))
    with pytest.raises(ValueError, match="multiple of column_width"):
        metrics.baseline_reconstructions(x, column_width=7)


def test_column_pca():
    g = torch.Generator().manual_seed(0)
    train = torch.rand(16, 3, 4, 8, generator=g) * 2 - 1  # 64 strips of 3·4·2 = 24 values
    # With every dimension kept the codec is the identity: the strip layout round-trips exactly.
    full = PCACodec(train, "column", 2, dims=24)
    torch.testing.assert_close(full.reconstruct(train), train, atol=1e-5, rtol=0)
    # Strips drawn from a 3-dimensional affine subspace are reproduced by 3 components, and on
    # random images the error shrinks as components are added.
    basis, offset = torch.randn(3, 24, generator=g), torch.randn(24, generator=g)
    strips = torch.randn(64, 3, generator=g) @ basis + offset  # (M, 24)
    low = strips.reshape(16, 4, 3, 4, 2).permute(0, 2, 3, 1, 4).reshape(16, 3, 4, 8)
    assert torch.all(metrics.psnr(low, PCACodec(low, "column", 2, dims=3).reconstruct(low)) > 80)
    errors = [(PCACodec(train, "column", 2, dims=k).reconstruct(train) - train).pow(2).mean()
              for k in (2, 6, 12)]
    assert errors[0] > errors[1] > errors[2]
    # reconstruct is decode(encode(x)) without the float32 tokens and the final clamp.
    codec = PCACodec(train, "column", 2, dims=6)
    torch.testing.assert_close(codec.decode(codec.encode(train)), codec.reconstruct(train).clamp(-1, 1),
                               atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="does not split into column blocks"):
        PCACodec(train, "column", 3, dims=2)
    with pytest.raises(ValueError, match="dims=25"):
        PCACodec(train, "column", 2, dims=25)


def test_ssim_properties():
    x = images()
    torch.testing.assert_close(metrics.ssim(x, x), torch.ones(3))
    slightly = metrics.ssim(x, (x + 0.05 * torch.randn_like(x)).clamp(-1, 1))
    heavily = metrics.ssim(x, (x + 0.5 * torch.randn_like(x)).clamp(-1, 1))
    assert slightly.shape == (3,) and torch.all(heavily < slightly) and torch.all(slightly < 1)
    assert torch.all(metrics.ssim(x, -x) < 0.1)  # inverted contrast is structurally dissimilar
    # Per image: changing image 0 only changes its own score.
    y = x.clone()
    y[0] = -y[0]
    s = metrics.ssim(x, y)
    assert s[0] < 0.1 and torch.allclose(s[1:], torch.ones(2))
    # A brightness shift keeps structure: SSIM stays high (unlike PSNR, which drops).
    assert torch.all(metrics.ssim(x, x * 0.5 + 0.2) > 0.5)


def test_lpips_and_rfid_say_why_they_are_off(offline, capsys, tmp_path):
    x = images()
    assert metrics.lpips_distance(x, x) is None
    assert "LPIPS metric off: vgg16-397923af.pth not found" in capsys.readouterr().out
    out = metrics.reconstruction_metrics(x, x)
    assert out["psnr"] == math.inf and out["ssim"] == pytest.approx(1.0) and "lpips" not in out
    assert metrics.rfid(tmp_path, tmp_path) is None
    assert "rFID off" in capsys.readouterr().out
