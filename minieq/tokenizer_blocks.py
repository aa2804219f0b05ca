"""Building blocks of the column tokenizer: GroupNorm, ResNet block, attention, resamplers.

Everything here follows docs/official_code.md#tokenizer-building-blocks so that the official
checkpoint loads 1:1: parameter names (``norm1``, ``conv1``, ``nin_shortcut``,
``q``/``k``/``v``/``proj_out``, ``downsample.conv.conv``) are the official ones. **Every convolution
pads by reflection** (never zeros): zero padding would tell the network where the image border is,
which hurts the translation equivariance the paper is after (docs/official_code.md#sequence-length).

Shape legend: B batch, C channels, H height, W width (pixels or feature-map columns).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def conv2d(in_ch: int, out_ch: int, kernel: int = 3) -> nn.Conv2d:
    """A stride-1 "same" Conv2d with reflect padding (padding 1 for 3×3, 0 for 1×1)."""
    return nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, padding_mode="reflect")


def conv1d(in_ch: int, out_ch: int, kernel: int = 3) -> nn.Conv1d:
    """A stride-1 "same" Conv1d over the token axis with reflect padding."""
    return nn.Conv1d(in_ch, out_ch, kernel, padding=kernel // 2, padding_mode="reflect")


def group_norm(channels: int, num_groups: int) -> nn.GroupNorm:
    """GroupNorm with the official eps 1e-6 (docs/official_code.md#tokenizer-building-blocks: 32
    groups at paper size)."""
    if channels % num_groups:
        raise ValueError(f"num_groups={num_groups} does not divide {channels} channels")
    return nn.GroupNorm(num_groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GN → swish → conv3×3 → GN → swish → dropout → conv3×3, plus a (1×1 conv) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, num_groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_ch, num_groups)
        self.conv1 = conv2d(in_ch, out_ch)
        self.norm2 = group_norm(out_ch, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv2d(out_ch, out_ch)
        # The official block has no time embedding (temb_channels = 0), so no temb_proj.
        self.nin_shortcut = conv2d(in_ch, out_ch, kernel=1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head self-attention over every position of the 2D map (global, both axes).

    Cost grows as (H·W)²: for a long image that is (final_height · N)², which is why
    ``ColumnTokenizer.decode_long`` decodes in windows.
    """

    def __init__(self, channels: int, num_groups: int):
        super().__init__()
        self.norm = group_norm(channels, num_groups)
        self.q = conv2d(channels, channels, kernel=1)
        self.k = conv2d(channels, channels, kernel=1)
        self.v = conv2d(channels, channels, kernel=1)
        self.proj_out = conv2d(channels, channels, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        # (B, C, H, W) -> (B, 1, H·W, C): one head, every pixel of the map is a position.
        q, k, v = (t.reshape(b, 1, c, h * w).transpose(2, 3) for t in (self.q(n), self.k(n), self.v(n)))
        # softmax(q kᵀ / √C) v, the official scale; SDPA avoids materialising the (H·W)² matrix
        # when a memory-efficient kernel is available.
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(2, 3).reshape(b, c, h, w)  # (B, 1, H·W, C) -> (B, C, H, W)
        return x + self.proj_out(out)


def pixel_unshuffle(x: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """Space-to-channel for stride (2,2) or (2,1); output channel = c·r + dy·sw + dx."""
    b, c, h, w = x.shape
    sh, sw = stride
    # (B, C, H, W) -> (B, C, H/sh, sh, W/sw, sw) -> (B, C, sh, sw, H/sh, W/sw)
    x = x.reshape(b, c, h // sh, sh, w // sw, sw).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * sh * sw, h // sh, w // sw)  # (B, C·sh·sw, H/sh, W/sw)


def pixel_shuffle(x: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """Channel-to-space, the exact inverse of :func:`pixel_unshuffle`."""
    b, c, h, w = x.shape
    sh, sw = stride
    out_c = c // (sh * sw)
    # (B, C, H, W) -> (B, C/r, sh, sw, H, W) -> (B, C/r, H, sh, W, sw)
    x = x.reshape(b, out_c, sh, sw, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, out_c, h * sh, w * sw)  # (B, C/r, H·sh, W·sw)


class _ShuffleConv(nn.Module):
    """The conv inside a resampler; a wrapper only so the parameter path is ``conv.conv``."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = conv2d(in_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class DownsampleShuffleResidual(nn.Module):
    """``unshuffle(conv3×3_{C→C/r}(x)) + avgpool(x)``: a residual, learned 2× downsampler.

    stride (2,2) halves both axes (r = 4); (2,1) halves only the height (r = 2), which is how
    ``len_down_scale`` keeps the token width fixed while the height keeps shrinking
    (docs/official_code.md#tokenizer-configuration).
    """

    def __init__(self, channels: int, stride: tuple[int, int]):
        super().__init__()
        self.stride = tuple(stride)
        r = self.stride[0] * self.stride[1]
        if channels % r:
            raise ValueError(f"downsampling {channels} channels needs a multiple of {r}")
        self.conv = _ShuffleConv(channels, channels // r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The official shortcut (unshuffle, then mean over each group of r channels) is exactly
        # average pooling over the stride window (docs/official_code.md#tokenizer-building-blocks).
        return pixel_unshuffle(self.conv(x), self.stride) + F.avg_pool2d(x, self.stride)


class UpsampleShuffleResidual(nn.Module):
    """``shuffle(conv3×3_{C→C·r}(x)) + nearest_upsample(x)``: the mirror of the downsampler."""

    def __init__(self, channels: int, stride: tuple[int, int]):
        super().__init__()
        self.stride = tuple(stride)
        self.conv = _ShuffleConv(channels, channels * self.stride[0] * self.stride[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The official shortcut (repeat_interleave channels r times, then shuffle) is exactly
        # nearest-neighbour upsampling (docs/official_code.md#tokenizer-building-blocks).
        nearest = F.interpolate(x, scale_factor=self.stride, mode="nearest")
        return pixel_shuffle(self.conv(x), self.stride) + nearest


def _level(blocks: list[nn.Module], attns: list[nn.Module]) -> nn.Module:
    """One resolution level with the official attribute names ``block`` and ``attn``."""
    level = nn.Module()
    level.block = nn.ModuleList(blocks)
    level.attn = nn.ModuleList(attns)
    return level


def _middle(channels: int, num_groups: int, dropout: float) -> nn.Module:
    """ResBlock → AttnBlock → ResBlock at the lowest resolution (``mid.{block_1,attn_1,block_2}``)."""
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, num_groups, dropout)
    mid.attn_1 = AttnBlock(channels, num_groups)
    mid.block_2 = ResnetBlock(channels, channels, num_groups, dropout)
    return mid


def _run_level(level: nn.Module, h: torch.Tensor) -> torch.Tensor:
    for j, block in enumerate(level.block):
        h = block(h)
        if len(level.attn):  # a level has attention after every block or after none
            h = level.attn[j](h)
    return h


def _run_middle(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


class Encoder(nn.Module):
    """Image (B, 3, H, W) → feature map (B, z_channels, H_final, W / column_width) → ``encoder1d``.

    ``cfg`` is a ``TokenizerConfig``; level i has ``num_res_blocks`` ResBlocks
    (docs/official_code.md#tokenizer-encoder).
    """

    def __init__(self, cfg):
        super().__init__()
        g, drop = cfg.num_groups, cfg.dropout
        self.conv_in = conv2d(cfg.in_channels, cfg.ch)
        block_in, res = cfg.ch, cfg.image_height
        self.down = nn.ModuleList()
        for i, mult in enumerate(cfg.ch_mult):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(block_in, cfg.ch * mult, g, drop))
                block_in = cfg.ch * mult
                if res in cfg.attn_resolutions:  # attention is chosen by the current *height*
                    attns.append(AttnBlock(block_in, g))
            level = _level(blocks, attns)
            if i < len(cfg.ch_mult) - 1:
                level.downsample = DownsampleShuffleResidual(block_in, cfg.resample_stride(i))
                res //= 2
            self.down.append(level)
        self.mid = _middle(block_in, g, drop)
        self.norm_out = group_norm(block_in, g)
        self.conv_out = conv2d(block_in, cfg.z_channels)
        # Column layout: a Conv1d over the token axis on the flattened columns
        # (docs/official_code.md#tokenizer-encoder). Grid layout: the same idea as a 3×3 Conv2d over
        # the 2D map of tokens.
        post = cfg.post_channels
        self.encoder1d = conv1d(post, post) if cfg.layout == "column" else conv2d(post, post)
        self.layout = cfg.layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = _run_level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = _run_middle(self.mid, h)
        h = self.conv_out(F.silu(self.norm_out(h)))  # (B, z, Hf, Wf)
        if self.layout == "column":
            # Columnize: one vector per column, feature index = c·Hf + h
            # (docs/official_code.md#tokenizer-encoder).
            h = rearrange(h, "b z hf w -> b (z hf) w")  # (B, z, Hf, Wf) -> (B, z·Hf, Wf)
        return self.encoder1d(h)


class Decoder(nn.Module):
    """``decoder1d`` → feature map (B, z, H_final, N) → image (B, 3, H, N · column_width).

    Level i has ``num_res_blocks + 1`` ResBlocks; ``up[i]`` is level i, run from i = n−1 down to 0
    (docs/official_code.md#tokenizer-decoder).
    """

    def __init__(self, cfg):
        super().__init__()
        g, drop, n = cfg.num_groups, cfg.dropout, len(cfg.ch_mult)
        post = cfg.post_channels
        self.decoder1d = conv1d(post, post) if cfg.layout == "column" else conv2d(post, post)
        self.layout, self.z_channels, self.semantic_map = cfg.layout, cfg.z_channels, cfg.semantic_map
        block_in, res = cfg.ch * cfg.ch_mult[-1], cfg.final_height
        self.conv_in = conv2d(cfg.z_channels, block_in)
        self.mid = _middle(block_in, g, drop)
        levels = [None] * n
        for i in reversed(range(n)):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, cfg.ch * cfg.ch_mult[i], g, drop))
                block_in = cfg.ch * cfg.ch_mult[i]
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(block_in, g))
            levels[i] = _level(blocks, attns)
            if i > 0:
                levels[i].upsample = UpsampleShuffleResidual(block_in, cfg.resample_stride(i - 1))
                res *= 2
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(block_in, g)
        self.conv_out = conv2d(block_in, cfg.out_channels)

    def to_map(self, h: torch.Tensor) -> torch.Tensor:
        """``decoder1d`` then, for columns, the inverse of the encoder's columnize."""
        h = self.decoder1d(h)
        if self.layout == "column":
            h = rearrange(h, "b (z hf) n -> b z hf n", z=self.z_channels)  # (B, z·Hf, N) -> (B, z, Hf, N)
        return h

    def forward(self, m: torch.Tensor, return_tap: bool = False):
        """Map (B, z, Hf, Wf) → image; with ``return_tap`` also the semantic feature
        (docs/official_code.md#tokenizer-decoder)."""
        h = self.conv_in(m)
        tap = h if self.semantic_map == "base" else None
        h = _run_middle(self.mid, h)
        tap = h if self.semantic_map == "mid" else tap
        for i in reversed(range(len(self.up))):
            h = _run_level(self.up[i], h)
            if i == len(self.up) - 1 and self.semantic_map == "res":
                tap = h  # the lowest-resolution feature, just before the first upsample
            if i > 0:
                h = self.up[i].upsample(h)
        image = self.conv_out(F.silu(self.norm_out(h)))
        return (image, tap) if return_tap else image


class SemanticDecoder(nn.Module):
    """Training-only head: decoder tap → features aligned with a DINOv2 teacher
    (docs/official_code.md#semantic-head).

    The official module builds ``num_res_blocks + 1`` ResBlocks per level but its forward runs
    only the first ``num_res_blocks``. We build the extra block so official files load 1:1, never
    run it, and freeze it (requires_grad False) so optimizers and DDP ignore it.
    """

    def __init__(self, cfg):
        super().__init__()
        g, drop, mults = cfg.num_groups, cfg.dropout, cfg.semantic_ch_mult
        block_in = cfg.semantic_ch * mults[0]
        self.num_res_blocks = cfg.semantic_num_res_blocks
        self.down = nn.ModuleList()
        for i in range(len(mults)):
            block_out = cfg.semantic_ch * mults[min(i + 1, len(mults) - 1)]
            blocks = []
            for _ in range(self.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, g, drop))
                block_in = block_out
            self.down.append(_level(blocks, []))
        self.norm_out = group_norm(block_in, g)
        self.conv_out = conv2d(block_in, cfg.semantic_out_channels)
        self.requires_grad_(True)

    def requires_grad_(self, requires_grad: bool = True) -> "SemanticDecoder":
        """Like ``nn.Module.requires_grad_``, but the dead blocks always stay frozen."""
        super().requires_grad_(requires_grad)
        for level in self.down:
            level.block[self.num_res_blocks].requires_grad_(False)
        return self

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for level in self.down:
            for block in level.block[: self.num_res_blocks]:
                h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))
