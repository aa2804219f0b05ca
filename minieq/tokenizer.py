"""The column tokenizer (paper Sec. 3.1; docs/official_code.md#tokenizer-encoder): an image → one
token per pixel column strip.

An H×W image becomes W / column_width continuous tokens of ``embed_dim`` channels. The 2D
encoder shrinks the height to ``final_height`` rows and the width by ``column_width``; each
column of that map (z_channels × final_height numbers) is flattened into one vector, mixed
with its neighbours by a 1D conv, and projected to a token. Decoding mirrors this, so any number
of tokens N ≥ 2 decodes to an H × N·column_width image (docs/official_code.md#sequence-length).

``layout="grid"`` is the AR-MAR-2D baseline of the paper's ablation: the same network, but every
position of the final 2D map is a token (raster order), so a 256×256 image with 4 downsamplings
gives 16×16 = 256 tokens.

Shape legend: B batch, N tokens, C token channels, H/W image height/width, Hf final height.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from einops import rearrange
from torch import nn

from minieq.checkpoint import register_model
from minieq.config import ConfigBase, token_columns
from minieq.tokenizer_blocks import Decoder, Encoder, SemanticDecoder, conv1d, conv2d

# Larger pixel magnitudes mean [0, 255] images, not [-1, 1] ones (see ColumnTokenizer._check_pixels).
_MAX_ABS_PIXEL = 4.0


@dataclass
class TokenizerConfig(ConfigBase):
    """Every size of the tokenizer. Derived sizes are properties (see below).

    ``image_height`` is a field (the official ``resolution``); ``column_width`` (= 2^len_down_scale
    pixels per token), ``final_height`` and ``post_channels`` are properties computed from it.
    """

    image_height: int = 256
    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 4, 4])
    num_res_blocks: int = 2
    attn_resolutions: list[int] = field(default_factory=lambda: [16])  # heights with attention
    z_channels: int = 256
    embed_dim: int = 256  # token channels C
    # How many downsamplings also halve the width (docs/official_code.md#tokenizer-configuration).
    len_down_scale: int = 4
    dropout: float = 0.0
    num_groups: int = 32  # GroupNorm groups; must divide every normalised channel count
    noise_std: float = 2.5  # σ-VAE noise bound (docs/official_code.md#sigma-vae-posterior)
    semantic_map: str = "res"  # decoder feature the semantic head reads: "res", "base" or "mid"
    semantic_ch: int = 64
    semantic_ch_mult: list[int] = field(default_factory=lambda: [8, 12])
    semantic_num_res_blocks: int = 2
    semantic_out_channels: int = 768  # DINOv2 ViT-B/14 feature size
    layout: str = "column"  # "column" (the paper) or "grid" (the 2D raster baseline)

    PRESETS = {
        "paper": {},
        # CPU: 32 px high, 3 downsamplings → 8 px columns and 4 rows; 16 token channels.
        "tiny": dict(image_height=32, ch=32, ch_mult=[1, 2, 2, 4], num_res_blocks=1,
                     attn_resolutions=[4], z_channels=8, embed_dim=16, len_down_scale=3,
                     num_groups=8, semantic_ch=32, semantic_ch_mult=[4, 4],
                     semantic_num_res_blocks=1, semantic_out_channels=64),
        # One GPU (the course's full mode): the paper's 16:1 column at half its height, 128 px
        # high with 8 px columns (tiny 32, paper 256: 128 is one doubling short of the paper, so
        # its cost fits an A100-hour). It is the paper's network with its last level dropped
        # and half the channels: three downsamplings leave the paper's 16 rows. 64 token
        # channels keep the compression of the paper and of tiny, 48:1 (128·8·3 = 3072 numbers).
        # semantic_ch: 32·8 must equal the decoder's 64·4 channels (the head is off offline).
        "course_gpu": dict(image_height=128, ch=64, ch_mult=[1, 1, 2, 4], z_channels=64,
                           embed_dim=64, len_down_scale=3, semantic_ch=32),
    }
    # The size of the official parity fixture (python -m minieq.bench.decode): the paper's shape
    # (256 px high, 16 px columns), about 30x fewer channels. Fits a laptop CPU.
    PRESETS["golden"] = {**PRESETS["tiny"], **dict(
        image_height=256, ch=32, ch_mult=[1, 1, 2, 2, 2], num_res_blocks=1, attn_resolutions=[16],
        z_channels=8, embed_dim=8, len_down_scale=4, num_groups=32, semantic_ch=32,
        semantic_ch_mult=[2, 3], semantic_num_res_blocks=1, semantic_out_channels=96)}

    @property
    def num_downsamples(self) -> int:
        return len(self.ch_mult) - 1

    @property
    def column_width(self) -> int:
        """Image pixels per token along the width (paper: 16)."""
        return 2 ** self.len_down_scale

    @property
    def final_height(self) -> int:
        """Rows of the lowest-resolution map (paper: 256 / 2^4 = 16)."""
        return self.image_height // 2 ** self.num_downsamples

    @property
    def post_channels(self) -> int:
        """Channels the 1D layers see: z_channels × final_height per column (grid: z_channels)."""
        return self.z_channels * self.final_height if self.layout == "column" else self.z_channels

    def resample_stride(self, i: int) -> tuple[int, int]:
        """Stride of the resampler between level i and i+1: (2,2), or (2,1) = height only
        (docs/official_code.md#tokenizer-configuration)."""
        return (2, 2) if i < self.len_down_scale else (2, 1)

    def __post_init__(self):
        def bad(msg: str):
            raise ValueError(f"TokenizerConfig: {msg}")

        if self.layout not in ("column", "grid"):
            bad(f"layout must be 'column' or 'grid', got {self.layout!r}")
        if self.semantic_map not in ("res", "base", "mid"):
            bad(f"semantic_map must be 'res', 'base' or 'mid', got {self.semantic_map!r}")
        if not self.ch_mult or not self.semantic_ch_mult:
            bad("ch_mult and semantic_ch_mult must not be empty")
        if not 0 <= self.len_down_scale <= self.num_downsamples:
            bad(f"len_down_scale={self.len_down_scale} must be in [0, len(ch_mult)-1 = "
                f"{self.num_downsamples}]")
        if self.layout == "grid" and self.len_down_scale != self.num_downsamples:
            bad("the grid layout downsamples both axes at every level: set "
                f"len_down_scale = len(ch_mult) - 1 = {self.num_downsamples}")
        if self.image_height % 2 ** self.num_downsamples or self.final_height < 2:
            bad(f"image_height={self.image_height} must be a multiple of 2^{self.num_downsamples} "
                "with at least 2 rows left after downsampling (reflect padding)")
        channels = [self.ch * m for m in self.ch_mult]
        channels += [self.semantic_ch * m for m in self.semantic_ch_mult]
        if any(c % self.num_groups for c in channels):
            bad(f"num_groups={self.num_groups} must divide every level's channels {channels}")
        if any(c % 4 for c in channels[: len(self.ch_mult)]):
            bad(f"the pixel-shuffle resamplers need channels divisible by 4, got {channels}")
        if self.semantic_ch * self.semantic_ch_mult[0] != self.ch * self.ch_mult[-1]:
            bad(f"semantic_ch * semantic_ch_mult[0] = {self.semantic_ch * self.semantic_ch_mult[0]} "
                f"must equal the decoder's lowest-resolution channels ch * ch_mult[-1] = "
                f"{self.ch * self.ch_mult[-1]}")
        if self.noise_std <= 0:
            bad(f"noise_std must be positive, got {self.noise_std}")

    @classmethod
    def from_official(cls, params: dict[str, Any]) -> "TokenizerConfig":
        """Build from the official YAML's ``model.params`` (embed_dim, post_channels, std,
        ddconfig, sematicconfig — the misspelt key is accepted, and so is ``semanticconfig``)."""
        dd = params["ddconfig"]
        sem = params.get("sematicconfig", params.get("semanticconfig"))
        if sem is None:
            raise ValueError("official tokenizer params need 'sematicconfig'")
        if dd.get("double_enc", False):
            raise ValueError("ddconfig.double_enc=True is not used by any official model")
        if sem.get("attn_resolutions") or sem.get("downsample_scale", 0):
            raise ValueError("sematicconfig with attention or downsampling is not supported")
        cfg = cls(
            image_height=dd["resolution"], in_channels=dd["in_channels"], out_channels=dd["out_ch"],
            ch=dd["ch"], ch_mult=list(dd["ch_mult"]), num_res_blocks=dd["num_res_blocks"],
            attn_resolutions=list(dd["attn_resolutions"]), z_channels=dd["z_channels"],
            embed_dim=params["embed_dim"], len_down_scale=dd["len_down_scale"],
            dropout=dd.get("dropout", 0.0), noise_std=params.get("std", 2.5),
            semantic_map=dd.get("semantic_map", "res"), semantic_ch=sem["ch"],
            semantic_ch_mult=list(sem["ch_mult"]), semantic_num_res_blocks=sem["num_res_blocks"],
            semantic_out_channels=sem["out_ch"])
        if params.get("post_channels", cfg.post_channels) != cfg.post_channels:
            raise ValueError(f"official post_channels={params['post_channels']} does not match "
                             f"z_channels × final height = {cfg.post_channels}")
        return cfg


class TokenizerOutput(NamedTuple):
    """What :meth:`ColumnTokenizer.reconstruct` returns."""

    recon: torch.Tensor  # (B, 3, H, W) decoded image
    mean: torch.Tensor  # (B, N, C) posterior mean
    tokens: torch.Tensor  # (B, N, C) the tokens that were decoded (a σ-VAE draw or the mean)
    semantic: torch.Tensor | None  # (B, semantic_out_channels, Hf, W / column_width) or None


def sigma_vae_sample(mean: torch.Tensor, std: float = 2.5,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """The σ-VAE draw of docs/official_code.md#sigma-vae-posterior: ``mean + s·ε`` with ONE noise
    scale s per sample.

    s = clamp(N(0,1) · std/0.8, −std, +std), so about 42 % of samples get |s| = std exactly.

    :param mean: (B, ...) posterior means.
    :param std: the noise bound (paper: 2.5).
    :param generator: optional torch.Generator for reproducible draws.
    :return: a tensor shaped like ``mean``.
    """
    scale_shape = (mean.shape[0],) + (1,) * (mean.dim() - 1)  # (B, 1, 1): one scalar per sample
    s = torch.randn(scale_shape, generator=generator, device=mean.device, dtype=mean.dtype)
    s = (s * (std / 0.8)).clamp(-std, std)
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + s * eps


def _ramp(x: torch.Tensor, centre: float, half_width: float) -> torch.Tensor:
    """0 left of ``centre − half_width``, 1 right of ``centre + half_width``, linear between."""
    if half_width == 0:
        return (x >= centre).to(x.dtype)
    return ((x - centre) / (2 * half_width) + 0.5).clamp(0, 1)


@register_model
class ColumnTokenizer(nn.Module):
    """Encoder → quant_layer → tokens → post_quant_layer → decoder (+ training-only semantic head).

    Module names match the official state dict 1:1 (docs/official_code.md#tokenizer-checkpoint).
    """

    config_class = TokenizerConfig

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        post, c = config.post_channels, config.embed_dim
        self.encoder = Encoder(config)
        # Official: Conv1d k=3 reflect over tokens (docs/official_code.md#tokenizer-encoder); the
        # grid baseline uses the 2D analogue.
        self.quant_layer = conv1d(post, c) if config.layout == "column" else conv2d(post, c)
        self.post_quant_layer = conv1d(c, post) if config.layout == "column" else conv2d(c, post)
        self.decoder = Decoder(config)
        self.semantic_decoder = SemanticDecoder(config)

    # ----- input checks -------------------------------------------------------------------
    def _check_images(self, x: torch.Tensor) -> None:
        cfg = self.config
        if x.dim() != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"encode expects images (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h != cfg.image_height:
            raise ValueError(f"image height {h} != the tokenizer's image_height {cfg.image_height}")
        token_columns(w, cfg.column_width)

    def _check_pixels(self, x: torch.Tensor) -> None:
        """Catch the common input mistakes (uint8, [0, 255], NaN/inf) with one clear error each.

        A [0, 1] image cannot be told from a bright [-1, 1] one, so it passes. The bound is loose
        because unclamped decoder outputs (up to about ±2.5) may be encoded again. The value
        checks read the images back to the host, a device sync, so they run in eval mode (every
        user-facing call) but not in training mode: the trainers' data pipelines make [-1, 1]
        floats by construction and their NaN guard watches the loss.
        """
        if not x.is_floating_point():
            raise ValueError(f"images must be a float tensor in [-1, 1], got dtype {x.dtype}; "
                             "for uint8 images use x.float() / 127.5 - 1")
        if self.training or x.device.type == "meta":  # meta: FLOP counting, no values to check
            return
        peak = float(x.detach().abs().amax())
        if not math.isfinite(peak):
            raise ValueError("images contain NaN or inf values")
        if peak > _MAX_ABS_PIXEL:
            raise ValueError(f"images must be in [-1, 1], got values up to {peak:g}; "
                             "for [0, 255] images use x / 127.5 - 1")

    def _check_tokens(self, z: torch.Tensor) -> None:
        """Shape and, in eval mode only (a device sync, as for pixels), finite values."""
        cfg = self.config
        if z.dim() != 3 or z.shape[-1] != cfg.embed_dim:
            raise ValueError(f"decode expects tokens (B, N, {cfg.embed_dim}), got {tuple(z.shape)}")
        rows = cfg.final_height if cfg.layout == "grid" else 1
        n = z.shape[1]
        if n % rows or n // rows < 2:
            raise ValueError(f"cannot decode {n} tokens: need at least 2 token columns"
                             + (f" of {rows} raster-order rows each" if rows > 1 else "")
                             + " (reflect padding needs length ≥ 2)")
        if not self.training and z.device.type != "meta" and not bool(torch.isfinite(z).all()):
            raise ValueError("tokens contain NaN or inf values (a diverged generator or a bad latent "
                             "scale?); decode finite tokens only")

    # ----- encode ---------------------------------------------------------------------------
    def posterior_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) → posterior mean tokens (B, N, C)."""
        self._check_images(x)
        self._check_pixels(x)
        x = x.to(self.quant_layer.weight.dtype)  # e.g. float16 images, float32 weights; else a no-op
        moments = self.quant_layer(self.encoder(x))  # column (B, C, N); grid (B, C, Hf, Wf)
        return rearrange(moments, "b c ... -> b (...) c")  # -> (B, N, C); grid: raster order (row by row)

    def encode(self, x: torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Images → tokens (B, N, C): the posterior mean, or a σ-VAE draw if ``sample``.

        Images of another float dtype (float16, bfloat16) are cast to the weights' dtype, and so
        are tokens in :meth:`decode`; mixed precision is ``torch.autocast``'s job.
        """
        mean = self.posterior_mean(x)
        return sigma_vae_sample(mean, self.config.noise_std, generator) if sample else mean

    @staticmethod
    def kl(mean: torch.Tensor) -> torch.Tensor:
        """(B,) the official 'KL': 0.5·Σ mean² per sample, an L2 penalty
        (docs/official_code.md#sigma-vae-posterior)."""
        return 0.5 * mean.pow(2).flatten(1).sum(dim=1)

    # ----- decode ---------------------------------------------------------------------------
    def tokens_to_map(self, z: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, C) → the decoder's input map (B, z_channels, Hf, N / rows)."""
        self._check_tokens(z)
        z = z.to(self.post_quant_layer.weight.dtype)  # as in posterior_mean
        if self.config.layout == "grid":
            h = rearrange(z, "b (hf wf) c -> b c hf wf", hf=self.config.final_height)  # raster order
        else:
            h = rearrange(z, "b n c -> b c n")
        return self.decoder.to_map(self.post_quant_layer(h))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, C) → images (B, 3, H, (N / rows) · column_width), for any N ≥ 2 columns.

        Exact but memory and time grow with N² in the global attention; see :meth:`decode_long`.
        The semantic head never runs here (it is a training-only target,
        docs/official_code.md#tokenizer-quirks).
        """
        return self.decoder(self.tokens_to_map(z))

    def decode_long(self, z: torch.Tensor, tile: int = 32, overlap: int = 16) -> torch.Tensor:
        """Decode a long sequence in overlapping windows, with memory bounded by the window size.

        The 1D layers (post_quant_layer, decoder1d) run on the whole sequence — they are cheap
        and exact. The 2D decoder then runs on windows of ``tile + 2·overlap`` token columns,
        one every ``tile`` columns (shifted inwards at the two ends so every window has the same
        size). Neighbouring windows share the ``2·overlap`` columns around their common
        boundary, and there the image cross-fades linearly from one window to the next.

        Not exact: GroupNorm statistics and attention are global in the 2D decoder, so a window
        sees different statistics than the full map, and each window's colours are off by a
        slightly different amount. Cutting the windows at the boundaries would turn that
        difference into a step; the cross-fade spreads it over ``2·overlap`` columns, so no
        boundary shows (tests/test_tokenizer.py checks it). At the paper's shape the
        convolutions reach ~13 token columns, so ``overlap`` should be ≥ 16 there. Measured
        max|tiled − full| / max|full|: random tiny weights, 40 tokens, tile 8 / overlap 8:
        3.9e-2 (asserted < 5e-2); the FAST course tokenizer on SynthScapes strips: 9.4e-3 at
        40 tokens (8/8), 1.1e-2 and 1.3e-2 at 128 and 256 tokens (defaults), 60-62 dB PSNR
        between the two decodes.

        :param z: tokens (B, N, C), column layout.
        :param tile: distance between window starts, in token columns.
        :param overlap: context columns decoded on each side of a window's tile; also half the
            width of the cross-fade.
        :return: images (B, 3, H, N · column_width); identical to :meth:`decode` if N fits one window.
        """
        if self.config.layout != "column":
            raise ValueError("decode_long supports the column layout only")
        if tile < 1 or overlap < 0 or tile + 2 * overlap < 2:
            raise ValueError(f"decode_long needs tile ≥ 1, overlap ≥ 0 and a window "
                             f"tile + 2·overlap ≥ 2, got tile={tile}, overlap={overlap}")
        m = self.tokens_to_map(z)  # (B, z, Hf, N), exact over the whole sequence
        n, window, cw = m.shape[-1], tile + 2 * overlap, self.config.column_width
        if n <= window:
            return self.decoder(m)
        x = torch.arange(n * cw, device=m.device, dtype=m.dtype) + 0.5  # pixel centres
        out, total = None, torch.zeros_like(x)
        for start in range(0, n, tile):
            lo = min(max(start - overlap, 0), n - window)  # same window size everywhere
            image = self.decoder(m[..., lo:lo + window])  # (B, 3, H, window · cw)
            # This window's weight ramps up across the boundary at `start` and down across the
            # one at start + tile, each over ±overlap columns (a hard cut when overlap is 0).
            weight = torch.ones_like(x)
            if start > 0:
                weight = weight.minimum(_ramp(x, start * cw, overlap * cw))
            if start + tile < n:
                weight = weight.minimum(1 - _ramp(x, (start + tile) * cw, overlap * cw))
            weight = weight[lo * cw:(lo + window) * cw]  # (window · cw,)
            if out is None:
                out = image.new_zeros(*image.shape[:-1], n * cw)
            out[..., lo * cw:(lo + window) * cw] += image * weight
            total[lo * cw:(lo + window) * cw] += weight
        return out / total  # the weights sum to 1 unless tile < 2·overlap

    # ----- together -------------------------------------------------------------------------
    def reconstruct(self, x: torch.Tensor, sample: bool = True, semantic: bool = False,
                    generator: torch.Generator | None = None) -> TokenizerOutput:
        """Encode, draw (σ-VAE if ``sample``), decode; the semantic head runs only if asked."""
        mean = self.posterior_mean(x)
        tokens = sigma_vae_sample(mean, self.config.noise_std, generator) if sample else mean
        recon, tap = self.decoder(self.tokens_to_map(tokens), return_tap=True)
        sem = self.semantic_decoder(tap) if semantic else None
        return TokenizerOutput(recon, mean, tokens, sem)

    forward = reconstruct  # so DDP-wrapped training can call model(x, ...)

    @property
    def last_layer_weight(self) -> torch.Tensor:
        """decoder.conv_out.weight, the layer the adaptive GAN weight differentiates
        (docs/official_code.md#tokenizer-loss)."""
        return self.decoder.conv_out.weight

