"""Held-out evaluation of tokenizers and the no-training reference codec they are compared with.

:func:`evaluate_tokenizer` measures PSNR / SSIM on held-out SynthScapes images
(:func:`heldout_images`); the shipped course models record these numbers and a test recomputes
them. :class:`PCACodec` is the best *linear* tokenizer with a given token budget, in the column
layout or the 2D grid layout, fitted by PCA: the reference a trained tokenizer should beat,
and the tokenizer of the CPU-scale experiments (:mod:`minieq.experiments`).

Shape legend: B batch, N tokens, C token channels, H/W image height/width, P patch side,
D values per block (3·H·cw for a column, 3·P·P for a patch).
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from minieq.data import SynthScapes
from minieq.generator_data import TRAIN_TOKENS
from minieq.metrics import psnr, ssim
from minieq.texture import texture_report

# Held-out SynthScapes images for the recorded numbers: the val split (disjoint from every
# training set), TRAIN_TOKENS columns wide like the training images, a fixed seed.
HELDOUT_IMAGES = 256
HELDOUT_SEED = 0

LAYOUTS = ("column", "grid")


def heldout_images(height: int, width: int, num_images: int = HELDOUT_IMAGES,
                   seed: int = HELDOUT_SEED) -> torch.Tensor:
    """(num_images, 3, height, width) held-out SynthScapes renders, 8-bit rounded like the data."""
    val = SynthScapes(num_images, height=height, width=width, seed=seed, split="val")
    return torch.stack([val[i][0] for i in range(num_images)])


@torch.no_grad()
def evaluate_tokenizer(tokenizer: nn.Module, num_images: int = HELDOUT_IMAGES,
                       seed: int = HELDOUT_SEED, batch_size: int = 64) -> dict:
    """Held-out PSNR / SSIM and texture ratios (:func:`minieq.texture.texture_report`) of
    posterior-mean reconstructions, computed in float32 on the CPU (deterministic, so a test can
    recompute the recorded values)."""
    tokenizer = tokenizer.float().cpu().eval()
    cfg = tokenizer.config
    x = heldout_images(cfg.image_height, TRAIN_TOKENS * cfg.column_width, num_images, seed)
    recon = torch.cat([tokenizer.decode(tokenizer.encode(b)).clamp(-1, 1) for b in x.split(batch_size)])
    texture = {k: round(v, 4) for k, v in texture_report(recon, x).items()}
    return {"psnr_db": round(float(psnr(x, recon).mean()), 4), "ssim": round(float(ssim(x, recon).mean()), 4),
            **texture, "images": num_images, "seed": seed, "split": "val", "width": x.shape[-1]}


def pca_basis(rows: torch.Tensor, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and the ``dims`` leading principal directions (dims, D), leading first, of
    ``rows`` (M, D): eigenvectors of the D×D covariance (float64) instead of an SVD of M×D."""
    if dims > min(rows.shape):
        raise ValueError(f"dims={dims} needs at least {dims} blocks of at least {dims} values")
    mean = rows.mean(dim=0)  # (D,)
    centred = rows - mean
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    return mean, vectors[:, -dims:].flip(1).T


class PCACodec:
    """Encode images into (B, N, C) PCA tokens and decode them back: a linear tokenizer.

    Each token is the ``dims`` leading principal components of one pixel block, so two codecs
    differ only in the shape of their block:

    * ``"column"``: a full-height strip ``block`` pixels wide (paper Sec. 3.1); N = W / block.
    * ``"grid"``: a P x P patch (P = ``block``), tokens in raster order (row by row), as the 2D
      baseline's tokenizer orders them; N = (H / P) (W / P).

    Fitting is one eigendecomposition of a D×D covariance (course column: D = 768, < 1 s on a
    CPU; paper: 12 288, a 1.2 GB float64 matrix), no training run. Coefficients are divided by
    one global number (their std over the fitting images), so the tokens have unit std whatever
    the layout, and a σ-VAE noise bound means the same in both.

    :param images: (M, 3, H, W) fitting images in [-1, 1].
    :param layout: ``"column"`` or ``"grid"``.
    :param block: column width (column layout) or patch side (grid layout), in pixels.
    :param dims: token channels C (principal components kept).
    """

    def __init__(self, images: torch.Tensor, layout: str, block: int, dims: int):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (M, 3, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        rows = 1 if layout == "column" else h // block
        if w % block or (layout == "grid" and h % block):
            raise ValueError(f"a {h}x{w} image does not split into {layout} blocks of {block} pixels")
        self.layout, self.block, self.height, self.rows = layout, block, h, rows
        blocks = self._blocks(images.double())  # (M·N, D)
        self.mean, self.basis = pca_basis(blocks, dims)  # (D,), (C, D)
        self.coef_std = float(((blocks - self.mean) @ self.basis.T).std())

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B·N, D): one row per token block, tokens in raster order."""
        if x.dim() != 4 or x.shape[2] != self.height or x.shape[3] % self.block:
            raise ValueError(f"images must be (B, 3, {self.height}, k·{self.block}), got {tuple(x.shape)}")
        if self.layout == "column":  # (B, 3, H, N·cw) -> (B·N, 3·H·cw)
            return rearrange(x, "b c h (n cw) -> (b n) (c h cw)", cw=self.block)
        # (B, 3, rows·P, cols·P) -> (B·rows·cols, 3·P·P): row-major patches = raster order
        return rearrange(x, "b c (r p) (n q) -> (b r n) (c p q)", p=self.block, q=self.block)

    def _images(self, flat: torch.Tensor, batch: int) -> torch.Tensor:
        """(B·N, D) -> (B, 3, H, W): the inverse of :meth:`_blocks`."""
        if self.layout == "column":  # (B·N, 3·H·cw) -> (B, 3, H, N·cw)
            return rearrange(flat, "(b n) (c h cw) -> b c h (n cw)", b=batch, c=3, cw=self.block)
        # (B·rows·cols, 3·P·P) -> (B, 3, rows·P, cols·P), raster order back to the grid
        return rearrange(flat, "(b r n) (c p q) -> b c (r p) (n q)", b=batch, r=self.rows, c=3,
                         p=self.block, q=self.block)

    def num_tokens(self, width: int) -> int:
        """Tokens of an image ``width`` pixels wide."""
        return self.rows * (width // self.block)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, N, C) unit-std PCA tokens (raster order for the grid)."""
        coef = (self._blocks(images.double()) - self.mean) @ self.basis.T / self.coef_std  # (B·N, C)
        return coef.reshape(len(images), -1, self.basis.shape[0]).float()  # (B, N, C)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) tokens -> (B, 3, H, W) images in [-1, 1]; the grid needs N = rows·k."""
        b, n, _ = tokens.shape
        if n % self.rows:
            raise ValueError(f"{n} grid tokens do not fill {self.rows} rows")
        flat = tokens.double().reshape(b * n, -1) * self.coef_std @ self.basis + self.mean  # (B·N, D)
        return self._images(flat, b).clamp(-1, 1).float()

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """The exact projection of ``images`` onto the kept components, in their dtype: encode and
        decode in float64 without rounding the tokens to float32 or clamping the result, so a
        reference PSNR measures the codec, not those two roundings."""
        blocks = self._blocks(images.double()) - self.mean  # (B·N, D)
        return self._images(blocks @ self.basis.T @ self.basis + self.mean, len(images)).to(images.dtype)
