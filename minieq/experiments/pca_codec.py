"""A linear tokenizer fitted by PCA, in the column layout or the 2D grid layout (AR-MAR-2D).

Shape legend: B batch, N tokens, C token channels, H/W image height/width, P patch side.

The zero-shot and per-position experiments (paper Fig. 3/4, Table 1) compare the column model
with the 2D baseline. Both need a tokenizer, and two trained tokenizers would differ in more
than their layout (training length, quality). A PCA codec has no training run: each token is
the ``dims`` leading principal components of one pixel block, so the two layouts differ in
exactly one thing, the shape of the block:

* ``"column"``: a full-height strip ``column_width`` pixels wide (paper Sec. 3.1); N = W / cw.
* ``"grid"``: a P x P patch, tokens in raster order (row by row), as the 2D baseline's tokenizer
  orders them; N = (H / P) (W / P).

At the course size (32 x 128 images) a column of 8 and a patch of 16 both hold 3·32·8 = 768 =
3·16·16 numbers and give 16 tokens (16 columns, or 2 rows of 8 patches), so with the same
``dims`` both compress 48:1, the course tokenizer's rate. The paper's 2D baseline with 16
tokens is the same idea at 256 x 256 (a 4 x 4 grid of 64-pixel patches, Table 3).
"""
from __future__ import annotations

import torch
from einops import rearrange

from minieq.metrics import pca_basis

LAYOUTS = ("column", "grid")


class PCACodec:
    """Encode images into (B, N, C) PCA tokens and decode them back.

    Coefficients are divided by one global number (their std over the fitting images), so the
    tokens have unit std whatever the layout, and a σ-VAE noise bound means the same in both.

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
        if self.layout == "column":  # (B, 3, H, N·cw) -> (B·N, 3·H·cw)
            return rearrange(x, "b c h (n cw) -> (b n) (c h cw)", cw=self.block)
        # (B, 3, rows·P, cols·P) -> (B·rows·cols, 3·P·P): row-major patches = raster order
        return rearrange(x, "b c (r p) (n q) -> (b r n) (c p q)", p=self.block, q=self.block)

    def num_tokens(self, width: int) -> int:
        """Tokens of an image ``width`` pixels wide."""
        return self.rows * (width // self.block)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, N, C) unit-std PCA tokens (raster order for the grid)."""
        if images.dim() != 4 or images.shape[2] != self.height or images.shape[3] % self.block:
            raise ValueError(f"images must be (B, 3, {self.height}, k·{self.block}), got {tuple(images.shape)}")
        coef = (self._blocks(images.double()) - self.mean) @ self.basis.T / self.coef_std  # (B·N, C)
        return coef.reshape(len(images), -1, self.basis.shape[0]).float()  # (B, N, C)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) tokens -> (B, 3, H, W) images in [-1, 1]; the grid needs N = rows·k."""
        b, n, _ = tokens.shape
        if n % self.rows:
            raise ValueError(f"{n} grid tokens do not fill {self.rows} rows")
        flat = tokens.double().reshape(b * n, -1) * self.coef_std @ self.basis + self.mean  # (B·N, D)
        if self.layout == "column":  # (B·N, 3·H·cw) -> (B, 3, H, N·cw)
            x = rearrange(flat, "(b n) (c h cw) -> b c h (n cw)", b=b, c=3, cw=self.block)
        else:  # (B·rows·cols, 3·P·P) -> (B, 3, rows·P, cols·P), raster order back to the grid
            x = rearrange(flat, "(b r n) (c p q) -> b c (r p) (n q)", b=b, r=self.rows, c=3,
                          p=self.block, q=self.block)
        return x.clamp(-1, 1).float()
