"""Texture measures that use no network: how much fine detail images carry, against real ones.

A decoder trained on L1 alone draws the conditional mean of what a token could hold: silhouettes
survive, grain, trunks and stars average out to flat colour. Two measures see that directly, on
the pixels, so no pretrained network (and no metric a loss could have been trained on) is
involved:

* :func:`horizontal_detail`: mean |∂x| (the mean absolute difference of horizontal neighbours);
  ``detail ratio`` = detail(images) / detail(real). Blur lowers it; noise and stripes raise it, so
  a ratio near 1 is necessary, not sufficient: look at the spectrum and the pictures too.
* :func:`radial_power_spectrum`: the power of the grayscale 2D spectrum averaged over rings of
  equal frequency; :func:`high_frequency_ratio` compares the energy above a cutoff with that of
  real images. A ring-average hides a grid artifact less than |∂x| does: it shows as a spike.

Shape legend: B batch, H×W image size, F frequency bins.
"""
from __future__ import annotations

import torch


def _gray(images: torch.Tensor) -> torch.Tensor:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    weights = torch.tensor([0.299, 0.587, 0.114], device=images.device)  # ITU-R 601 luma
    return torch.einsum("bchw,c->bhw", images.float(), weights)  # (B, H, W)


def horizontal_detail(images: torch.Tensor) -> torch.Tensor:
    """(B,) mean |x[..., w+1] − x[..., w]| per image, over colour channels, rows and columns."""
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    return (images[..., 1:] - images[..., :-1]).float().abs().mean(dim=(1, 2, 3))


def radial_power_spectrum(images: torch.Tensor, bins: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """``(freqs, power)``: (F,) ring centres in cycles per pixel (0 .. 0.5) and (F,) the mean power
    of the grayscale spectrum in each ring, averaged over images.

    Each image's mean is removed first (the DC term says nothing about texture) and frequencies
    are measured in cycles per pixel along each axis, so a 32×128 image's rings are round in
    frequency, not in FFT bins.
    """
    gray = _gray(images)
    gray = gray - gray.mean(dim=(-2, -1), keepdim=True)
    h, w = gray.shape[-2:]
    power = torch.fft.fft2(gray).abs().pow(2).mean(0) / (h * w)  # (H, W) mean over images
    fy = torch.fft.fftfreq(h, device=images.device).abs()  # cycles per pixel, 0 .. 0.5
    fx = torch.fft.fftfreq(w, device=images.device).abs()
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)  # (H, W)
    edges = torch.linspace(0, 0.5, bins + 1, device=images.device)
    index = torch.bucketize(radius.flatten(), edges[1:-1])  # ring of every frequency, 0 .. F-1
    keep = radius.flatten() <= 0.5  # the corners beyond the Nyquist circle are left out
    total = torch.zeros(bins, device=images.device).index_add_(0, index[keep], power.flatten()[keep])
    count = torch.zeros(bins, device=images.device).index_add_(0, index[keep], torch.ones_like(power.flatten()[keep]))
    return (edges[:-1] + edges[1:]) / 2, total / count.clamp(min=1)


def high_frequency_ratio(images: torch.Tensor, real: torch.Tensor, cutoff: float = 0.25,
                         bins: int = 16) -> float:
    """Energy of ``images`` above ``cutoff`` cycles per pixel over that of ``real`` (1 = real's)."""
    freqs, p = radial_power_spectrum(images, bins)
    _, p_real = radial_power_spectrum(real, bins)
    band = freqs > cutoff
    return float(p[band].sum() / p_real[band].sum())


def texture_report(images: torch.Tensor, real: torch.Tensor, cutoff: float = 0.25) -> dict[str, float]:
    """The detail ratio and the high-frequency energy ratio of ``images`` against ``real``."""
    return {"detail_ratio": float(horizontal_detail(images).mean() / horizontal_detail(real).mean()),
            "hf_energy_ratio": high_frequency_ratio(images, real, cutoff)}
