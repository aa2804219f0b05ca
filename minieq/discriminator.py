"""Discriminators of the tokenizer GAN and their differentiable augmentation
(docs/official_code.md#discriminator-and-augmentation).

* :class:`DinoDiscriminator`: a frozen DINO ViT-S/16 reads the image; five small trainable 1D conv
  heads (one per tapped layer) turn its patch tokens into logits. The paper's Table 5 calls this
  the "stronger discriminator".
* :class:`PatchGAN`: the pix2pix/taming NLayerDiscriminator, Table 5's baseline; its BatchNorm
  (:class:`GlobalBatchNorm2d`) normalises over the global batch of all DDP ranks.
* :func:`diff_augment`: translation + colour + cutout, applied to real and fake images alike.

Shape legend: B batch, D backbone width, P patches (196 for a 224 input), L logits per image.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.distributed.nn.functional as dist_fn
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from minieq import dist
from minieq.backbones import ViT, imagenet_normalize


# ----- DiffAug: prob 1, all three transforms, randomness per sample --------------------------------
# (docs/official_code.md#discriminator-and-augmentation)
def diff_augment(x: torch.Tensor, translation: float = 0.125, cutout: float = 0.2) -> torch.Tensor:
    """Random colour, translation (zero fill) and cutout, each drawn per sample."""
    return _cutout(_translate(_colour(x), translation), cutout)


def _colour(x: torch.Tensor) -> torch.Tensor:
    b = x.shape[0]
    x = x + (torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype) - 0.5)  # brightness ±0.5
    m = x.mean(dim=1, keepdim=True)
    x = (x - m) * (torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype) * 2) + m  # saturation
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * (torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype) + 0.5) + m  # contrast


def _translate(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """Shift each image by integers in [-ratio·side, ratio·side] px per axis; zeros come in."""
    b, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sy, sy + 1, (b, 1, 1), device=x.device)
    tx = torch.randint(-sx, sx + 1, (b, 1, 1), device=x.device)
    gb, gy, gx = torch.meshgrid(torch.arange(b, device=x.device), torch.arange(h, device=x.device),
                                torch.arange(w, device=x.device), indexing="ij")  # each (B, H, W)
    # Reading from a 1-px zero border: every index pushed off the image lands on a zero.
    gy = (gy + ty + 1).clamp(0, h + 1)
    gx = (gx + tx + 1).clamp(0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)  # (B, H+2, W+2, 3)
    return padded[gb, gy, gx].permute(0, 3, 1, 2)  # (B, H, W, 3) -> (B, 3, H, W)


def _cutout(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """Zero one (ratio·H) × (ratio·W) rectangle per image, centred uniformly, clipped at borders."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=x.device)
    gb, gy, gx = torch.meshgrid(torch.arange(b, device=x.device), torch.arange(ch, device=x.device),
                                torch.arange(cw, device=x.device), indexing="ij")  # (B, ch, cw)
    gy = (gy + cy - ch // 2).clamp(0, h - 1)
    gx = (gx + cx - cw // 2).clamp(0, w - 1)
    mask = torch.ones(b, h, w, device=x.device, dtype=x.dtype)
    mask[gb, gy, gx] = 0
    return x * mask.unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)


# ----- DINO discriminator (docs/official_code.md#discriminator-and-augmentation) ------------------
class BatchNormLocal(nn.Module):
    """BatchNorm over groups of ``virtual_bs`` samples and the sequence axis; no running stats."""

    def __init__(self, channels: int, virtual_bs: int = 8, eps: float = 1e-6):
        super().__init__()
        self.virtual_bs = virtual_bs
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, L)
        groups = math.ceil(x.shape[0] / self.virtual_bs)
        chunks = x.float().split(math.ceil(x.shape[0] / groups))  # `groups` chunks of ≈ equal size
        normed = [(c - c.mean(dim=(0, 2), keepdim=True))
                  / (c.var(dim=(0, 2), unbiased=False, keepdim=True) + self.eps).sqrt() for c in chunks]
        x = torch.cat(normed).to(x.dtype)
        return x * self.weight.view(1, -1, 1) + self.bias.view(1, -1, 1)


def _sn_conv(c_in: int, c_out: int, kernel: int) -> nn.Module:
    return spectral_norm(nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2, padding_mode="circular"))


class DiscHead(nn.Module):
    """SN-conv k1 → BNLocal → LReLU → residual(SN-conv k9 → BNLocal → LReLU) → SN-conv k1 to 1."""

    def __init__(self, dim: int, kernel: int = 9, virtual_bs: int = 8):
        super().__init__()
        self.inp = nn.Sequential(_sn_conv(dim, dim, 1), BatchNormLocal(dim, virtual_bs), nn.LeakyReLU(0.2))
        self.res = nn.Sequential(_sn_conv(dim, dim, kernel), BatchNormLocal(dim, virtual_bs),
                                 nn.LeakyReLU(0.2))
        self.out = _sn_conv(dim, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D, P) -> (B, P)
        h = self.inp(x)
        h = (self.res(h) + h) / math.sqrt(2)
        return self.out(h).squeeze(1)


class DinoDiscriminator(nn.Module):
    """Frozen DINO ViT + 5 trainable heads; returns (B, 5·P) logits (980 for a 224 input).

    The backbone lives outside the state dict and stays in eval mode, exactly like the official
    ``dino_proxy`` tuple: checkpoints hold only the heads.
    """

    def __init__(self, backbone: ViT, input_size: int = 224, kernel: int = 9, virtual_bs: int = 8):
        super().__init__()
        backbone.eval().requires_grad_(False)
        with torch.no_grad():
            # docs/official_code.md#discriminator-and-augmentation: the k-part of every qkv bias is
            # zeroed (it cannot change the softmax anyway).
            for block in backbone.blocks:
                d = block.attn.qkv.bias.shape[0] // 3
                block.attn.qkv.bias[d:2 * d] = 0
        self._backbone = [backbone]  # a list hides it from parameters(), state_dict() and train()
        self.input_size = input_size
        depth = backbone.spec.depth
        # After blocks 2, 5, 8, 11 for depth 12: the end of each quarter of the network.
        self.layers = tuple(depth * k // 4 - 1 for k in range(1, 5))
        self.heads = nn.ModuleList(
            DiscHead(backbone.spec.embed_dim, kernel, virtual_bs) for _ in range(len(self.layers) + 1))

    @property
    def backbone(self) -> ViT:
        return self._backbone[0]

    def _apply(self, fn, recurse=True):
        self.backbone._apply(fn, recurse)  # move/cast the hidden backbone along with the heads
        return super()._apply(fn, recurse)

    def _to_backbone_input(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images → ImageNet-normalised 224×224 (random crop or area resize if larger)."""
        x = imagenet_normalize(x)
        s = self.input_size
        h, w = x.shape[-2:]
        if h > s and w > s:
            if self.training and torch.rand(()) < 0.5:
                top = int(torch.randint(0, h - s + 1, ()))  # one crop position for the whole batch
                left = int(torch.randint(0, w - s + 1, ()))
                return x[..., top:top + s, left:left + s]
            return F.interpolate(x, size=(s, s), mode="area")
        return F.interpolate(x, size=(s, s), mode="bicubic", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 throughout, as the official code forces (docs/official_code.md#devices-and-precision).
        with torch.autocast(device_type=x.device.type, enabled=False):
            feats = self.backbone.intermediate_tokens(self._to_backbone_input(x.float()), self.layers)
            logits = []
            for head, f in zip(self.heads, feats):
                f = f[:, 1:] + f[:, :1]  # patch tokens + cls token (broadcast): (B, P, D)
                logits.append(head(f.transpose(1, 2)))  # (B, P, D) -> (B, D, P) -> (B, P)
            return torch.cat(logits, dim=1)  # (B, 5·P)


# ----- PatchGAN (Table 5 baseline; NLayerDiscriminator layout) ------------------------------------
class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch of every DDP rank.

    Per-rank BatchNorm would make 2 ranks × 4 images train a different discriminator from one
    process × 8. ``nn.SyncBatchNorm`` fixes that on GPUs only (it refuses CPU tensors); this
    all-reduces through autograd on any backend (gloo too). One process or eval mode: plain
    BatchNorm2d, with the same parameters and buffers (old checkpoints load unchanged).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.world_size() > 1):
            return super().forward(x)
        # Two passes (mean, then centred squares) as BatchNorm itself: no E[x²] − E[x]² cancellation.
        local = torch.cat([x.sum(dim=(0, 2, 3)), x.new_full((1,), x.numel() / x.shape[1])])  # (C+1,)
        total = dist_fn.all_reduce(local)
        count = total[-1]
        mean = total[:-1] / count  # (C,)
        centred = x - mean.view(1, -1, 1, 1)
        var = dist_fn.all_reduce(centred.pow(2).sum(dim=(0, 2, 3))) / count  # (C,) biased, as BN normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * count / (count - 1), momentum)  # unbiased, as BN
        out = centred / (var.view(1, -1, 1, 1) + self.eps).sqrt()
        return out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class PatchGAN(nn.Module):
    """Conv 4×4 stride-2 stack with BatchNorm and LeakyReLU 0.2; one logit per image patch."""

    def __init__(self, channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = channels
        for n in range(1, num_layers + 1):
            c_out = channels * min(2 ** n, 8)
            stride = 2 if n < num_layers else 1  # the last hidden conv keeps the resolution
            layers += [nn.Conv2d(c, c_out, 4, stride, 1, bias=False), GlobalBatchNorm2d(c_out),
                       nn.LeakyReLU(0.2)]
            c = c_out
        layers.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():  # DCGAN init, as the original NLayerDiscriminator
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)  # (B, 1, h, w) -> (B, L)
