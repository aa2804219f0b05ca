"""The per-token flow-matching head: an AdaLN MLP, the rectified-flow loss and an Euler sampler.

Shape legend: M rows (one row = one token to model), C token channels, D transformer width,
W head width.

The transformer gives each token a condition vector c (M, D); this head models p(token | c) with
rectified flow (reference-spec §3.6): z_t = t·ε + (1 − t)·x0 for t in (0, 1], the network predicts
the velocity v = ε − x0, and sampling integrates dz/dt = v from t = 1 (noise) to t = 0 (data).
The network is MAR's SimpleMLPAdaLN; its module names match the official ``diffloss.net.*`` keys.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of t (M,) -> (M, dim), ordered [cos, sin] as in the official head.

    The official code feeds t in (0, 1] as is, although the frequencies were designed for
    t in [0, 1000]: most of them then barely change with t (reference-spec §7). We keep it so that
    official checkpoints load and compute the same numbers; scaling by 1000 would be the
    conventional choice for a model trained from scratch.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]  # (M, dim/2)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # (M, dim)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN: a normalised x scaled and shifted by condition-dependent vectors (DiT)."""
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    """t (M,) -> sinusoidal features -> Linear -> SiLU -> Linear -> (M, W)."""

    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t):
        return self.mlp(timestep_embedding(t, self.freq_dim))


class ResBlock(nn.Module):
    """x + gate·MLP(LN(x)·(1 + scale) + shift), with (shift, scale, gate) from the condition y."""

    def __init__(self, width: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x, y):
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)  # each (M, W)
        return x + gate * self.mlp(modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
    """Modulated LayerNorm (no affine) then Linear W -> C."""

    def __init__(self, width: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, eps=1e-6, elementwise_affine=False)
        self.linear = nn.Linear(width, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x, y):
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)  # each (M, W)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class AdaLNMLP(nn.Module):
    """The velocity network v(x_t, t, c): (M, C), (M,), (M, D) -> (M, C) (SimpleMLPAdaLN)."""

    def __init__(self, channels: int, width: int, cond_dim: int, depth: int):
        super().__init__()
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(cond_dim, width)
        self.input_proj = nn.Linear(channels, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.final_layer = FinalLayer(width, channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # Xavier for every Linear, zero bias (as the whole official model).
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        # The time MLP starts small (DiT convention).
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        # Zero modulation and output: every block starts as the identity and v = 0, so the
        # initial loss is E|ε - x0|² ≈ 2 per channel for unit-variance data (spec §3.6).
        for block in self.res_blocks:
            nn.init.zeros_(block.adaLN_modulation[1].weight)
            nn.init.zeros_(block.adaLN_modulation[1].bias)
        for layer in (self.final_layer.adaLN_modulation[1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x, t, c):
        x = self.input_proj(x)  # (M, W)
        y = self.time_embed(t) + self.cond_embed(c)  # (M, W)
        for block in self.res_blocks:
            x = block(x, y)
        return self.final_layer(x, y)  # (M, C)


class FlowHead(nn.Module):
    """Rectified-flow head: ``velocity``, ``loss`` and the Euler ``sample`` with CFG."""

    def __init__(self, channels: int, width: int, cond_dim: int, depth: int, num_sampling_steps: int = 100):
        super().__init__()
        self.channels = channels
        self.num_sampling_steps = num_sampling_steps
        self.net = AdaLNMLP(channels, width, cond_dim, depth)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Predicted velocity ε − x0 for x_t (M, C) at times t (M,) given conditions c (M, D)."""
        return self.net(x_t, t, c)

    def loss(self, x0: torch.Tensor, c: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Rectified-flow loss per row: x0 (M, C), c (M, D) -> (M,) mean squared velocity error.

        t ~ U(0, 1) mapped to [1e-5, 1] (never exactly 0), one value per row; z_t = t·ε + (1 − t)·x0.
        Rows are returned separately so callers can average per position (paper Figs. 3/4).
        """
        t = torch.rand(x0.shape[0], device=x0.device, generator=generator) * (1 - 1e-5) + 1e-5  # (M,)
        eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)  # (M, C)
        z_t = t[:, None] * eps + (1 - t[:, None]) * x0
        v = self.velocity(z_t, t, c)
        return F.mse_loss(v.float(), (eps - x0).float(), reduction="none").mean(dim=-1)

    @torch.no_grad()
    def sample(self, c: torch.Tensor, uncond: torch.Tensor | None = None, cfg: float = 1.0,
               noise: torch.Tensor | None = None, temperature: float = 1.0,
               num_steps: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Euler-integrate from t = 1 to 0: z <- z − v(z, t)/N for t = N/N, ..., 1/N.

        :param c: conditions (M, D).
        :param uncond: null-class conditions (M, D) for classifier-free guidance, or None.
        :param cfg: guidance scale s; v = v_u + s·(v_c − v_u). The conditional and unconditional
            branches integrate the same z, i.e. share the noise (as the official code).
        :param noise: initial noise ε (M, C); drawn from ``generator`` when None.
        :param temperature: multiplies the initial noise (1.0 = the official sampler, which
            accepts a temperature but ignores it; < 1 trades diversity for fidelity).
        :param num_steps: Euler steps (default: ``self.num_sampling_steps``).
        :return: samples x0 (M, C).
        """
        steps = num_steps or self.num_sampling_steps
        if noise is None:
            noise = torch.randn(c.shape[0], self.channels, device=c.device, generator=generator)
        z = noise.to(c.device, torch.float32) * temperature  # (M, C)
        for i in range(steps, 0, -1):
            t = torch.full((z.shape[0],), i / steps, device=z.device)  # (M,)
            if uncond is None:
                v = self.velocity(z, t, c)
            else:
                v_c, v_u = self.velocity(torch.cat([z, z]), torch.cat([t, t]), torch.cat([c, uncond])).chunk(2)
                v = v_u + cfg * (v_c - v_u)
            z = z - v / steps
        return z
