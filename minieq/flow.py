"""The per-token flow-matching head: an AdaLN MLP, the rectified-flow loss and its ODE solvers.

Shape legend: M rows (one row = one token to model), C token channels, D transformer width,
W head width.

The transformer gives each token a condition vector c (M, D); this head models p(token | c) with
rectified flow (docs/official_code.md#flow-head): z_t = t·ε + (1 − t)·x0 for t in (0, 1], the
network predicts the velocity v = ε − x0, and sampling integrates dz/dt = v from t = 1 (noise) to t
= 0 (data). The network is MAR's SimpleMLPAdaLN; its module names match the official
``diffloss.net.*`` keys.

Solvers (:data:`SOLVERS`): the official sampler is Euler with the preset's step count
(100 in the paper). Sampling calls the head that many times per token, twice with guidance, so
with the KV cache the head dominates; second-order solvers reach Euler-100's error with a fraction
of the calls (error-vs-cost curve: ``python -m minieq.bench.solvers``), and the head runs packed
for the ODE loop (:attr:`FlowHead.sampling_form`, :mod:`minieq.head_inference`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from minieq.head_inference import FORMS, PackedVelocity, evaluation_times, packed

# The sampling settings live in minieq.sampling_options; imported here, where most callers look.
from minieq.sampling_options import (  # noqa: F401 (re-exported)
    CFG_SCHEDULES, DISTILLED, SAMPLERS, SOLVERS, SamplingOptions, check_solver, head_calls)


@torch.no_grad()
def integrate(velocity, z: torch.Tensor, solver: str = "euler", steps: int = 100) -> torch.Tensor:
    """Integrate dz/dt = velocity(z, t) from t = 1 (noise) to t = 0 (data) on t_i = i/steps.

    :param velocity: callable (z (M, C), t float) -> (M, C).
    :param z: the state at t = 1 (M, C); not modified.
    :return: the state at t = 0 (M, C).
    """
    if solver not in SOLVERS:
        raise ValueError(f"integrate solves the ODE with one of {SOLVERS}, got {solver!r}")
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    z = z.clone()  # updated in place below (no autograd here), so the caller's tensor stays
    h = 1.0 / steps
    for i in range(steps, 0, -1):
        v = velocity(z, i / steps)
        if solver == "euler":
            z.sub_(v / steps)  # the official update z - v/N, rounded the same way
        elif solver == "heun":
            # The last corrector evaluates at t = 0 exactly; training draws t from [1e-5, 1] and
            # the network is smooth in t, so v(·, 0) is as good as v(·, 1e-5).
            v_end = velocity(z - h * v, (i - 1) / steps)
            z.sub_(0.5 * h * (v + v_end))
        else:  # midpoint
            z.sub_(h * velocity(z - 0.5 * h * v, (i - 0.5) / steps))
    return z


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of t (M,) -> (M, dim), ordered [cos, sin] as in the official head.

    The official code feeds t in (0, 1] as is, although the frequencies were designed for
    t in [0, 1000]: most of them then barely change with t
    (docs/official_code.md#generator-design-details). We keep it so that official checkpoints load
    and compute the same numbers; scaling by 1000 would be the conventional choice for a model
    trained from scratch.
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
        # initial loss is E|ε - x0|² ≈ 2 per channel for unit-variance data
        # (docs/official_code.md#flow-head).
        for block in self.res_blocks:
            nn.init.zeros_(block.adaLN_modulation[1].weight)
            nn.init.zeros_(block.adaLN_modulation[1].bias)
        for layer in (self.final_layer.adaLN_modulation[1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x, t, c):
        return self.forward_embedded(x, self.time_embed(t), self.cond_embed(c))

    def forward_embedded(self, x, t_emb, y_cond):
        """:meth:`forward` given the time embedding (M, W) and the condition embedding
        ``cond_embed(c)`` (M, W); the sampler computes the latter once per token, not per step."""
        x = self.input_proj(x)  # (M, W)
        y = t_emb + y_cond  # (M, W): AdaLN's conditioning vector
        for block in self.res_blocks:
            x = block(x, y)
        return self.final_layer(x, y)  # (M, C)


def stack_rows(c: torch.Tensor, uncond: torch.Tensor | None) -> torch.Tensor:
    """The rows one guided head call sees: (M, D) conditional, then (M, D) null -> (R, D)."""
    return c if uncond is None else torch.cat([c, uncond])  # (R, D), R = M or 2M


class GuidedVelocity:
    """One token's velocity v(z, t) with classifier-free guidance, for :func:`integrate`.

    What does not change across the ODE steps is made once per token: the condition half of
    AdaLN's y (``y_cond``: ``cond_embed`` of :func:`stack_rows`; a few-step head adds its step
    size and guidance there) and the input and time buffers, so each step is one batched network
    call on 2M rows (M without guidance).
    """

    def __init__(self, net: AdaLNMLP, y_cond: torch.Tensor, guided: bool, cfg: float):
        self.net, self.cfg, self.guided, self.y_cond = net, cfg, guided, y_cond  # y_cond (R, W)
        self.t = torch.empty(y_cond.shape[0], device=y_cond.device)  # (R,) every row at the same t
        self.x = torch.empty(y_cond.shape[0], net.input_proj.in_features, device=y_cond.device)  # (R, C)

    def __call__(self, z: torch.Tensor, t: float) -> torch.Tensor:
        self.t.fill_(t)
        if not self.guided:
            return self.net.forward_embedded(z, self.net.time_embed(self.t), self.y_cond)
        torch.cat([z, z], out=self.x)  # both halves integrate the same z (shared noise, as official)
        v_c, v_u = self.net.forward_embedded(self.x, self.net.time_embed(self.t), self.y_cond).chunk(2)
        return v_u + self.cfg * (v_c - v_u)


def _drop_few_step_keys(module, state_dict, prefix, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "few_step.")]:
        del state_dict[key]


def _few_step_keys_not_missing(module, incompatible_keys) -> None:
    missing = incompatible_keys.missing_keys
    missing[:] = [k for k in missing if ".few_step." not in f".{k}"]


class FlowHead(nn.Module):
    """Rectified-flow head: ``velocity``, ``loss`` and ``sample`` (ODE solvers, CFG)."""

    def __init__(self, channels: int, width: int, cond_dim: int, depth: int, num_sampling_steps: int = 100):
        super().__init__()
        self.channels = channels
        self.num_sampling_steps = num_sampling_steps
        self.net = AdaLNMLP(channels, width, cond_dim, depth)
        # solver="distilled" samples with this (a minieq.few_step.FewStepNet, attached by
        # minieq.few_step.attach); None for every trained or official head. It lives in its own
        # file, so it is no part of the head's state dict: saving or loading a generator with one
        # attached reads and writes exactly the keys of one without (official parity included).
        self.few_step: nn.Module | None = None
        self.register_state_dict_post_hook(_drop_few_step_keys)
        self.register_load_state_dict_post_hook(_few_step_keys_not_missing)
        # How sample() runs the networks, minieq.head_inference.FORMS: "fp32" packed for the ODE
        # loop (same velocity to round-off), "plain" the modules (official), "bf16" opt-in.
        self.sampling_form = "fp32"

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Predicted velocity ε − x0 for x_t (M, C) at times t (M,) given conditions c (M, D)."""
        return self.net(x_t, t, c)

    def loss(self, x0: torch.Tensor, c: torch.Tensor, generator: torch.Generator | None = None,
             draws: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Rectified-flow loss per row: x0 (M, C), c (M, D) -> (M,) mean squared velocity error.

        t ~ U(0, 1) mapped to [1e-5, 1] (never exactly 0), one value per row; z_t = t·ε + (1 − t)·x0.
        Rows are returned separately so callers can average per position (paper Figs. 3/4).
        ``draws`` = (u (M,), ε (M, C)) given instead of drawn (u is the U(0, 1) draw of t).
        """
        if draws is None:
            draws = (torch.rand(x0.shape[0], device=x0.device, generator=generator),  # (M,)
                     torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator))
        u, eps = draws
        t = u * (1 - 1e-5) + 1e-5  # (M,)
        z_t = t[:, None] * eps + (1 - t[:, None]) * x0
        v = self.velocity(z_t, t, c)
        return F.mse_loss(v.float(), (eps - x0).float(), reduction="none").mean(dim=-1)

    @torch.no_grad()
    def sample(self, c: torch.Tensor, uncond: torch.Tensor | None = None, cfg: float = 1.0, *,
               noise: torch.Tensor | None = None, temperature: float = 1.0, solver: str = "euler",
               steps: int | None = None, generator: torch.Generator | None = None,
               options: SamplingOptions | None = None) -> torch.Tensor:
        """Integrate the flow from t = 1 (noise) to t = 0 with ``solver`` (official: Euler,
        z <- z − v(z, t)/N for t = N/N, ..., 1/N).

        :param c: conditions (M, D).
        :param uncond: null-class conditions (M, D) for classifier-free guidance, or None.
        :param cfg: guidance scale s; v = v_u + s·(v_c − v_u). The conditional and unconditional
            branches integrate the same z, i.e. share the noise (as the official code).
        :param noise: initial noise ε (M, C); drawn from ``generator`` when None.
        :param temperature: multiplies the initial noise (1.0 = the official sampler, which
            accepts a temperature but ignores it; < 1 trades diversity for fidelity).
        :param solver: one of :data:`SAMPLERS`; ``"euler"`` is the official sampler,
            ``"distilled"`` the attached few-step head (:attr:`few_step`).
        :param steps: solver steps (default: ``self.num_sampling_steps``, for ``"distilled"`` its
            fewest trained steps); the head runs :func:`head_calls` (solver, steps) times.
        :param options: a :class:`SamplingOptions` instead of ``cfg``, ``temperature``,
            ``solver`` and ``steps`` (its ``cfg_schedule`` is the token loop's business).
        :return: samples x0 (M, C).
        """
        options = SamplingOptions.from_call(options, cfg=cfg, temperature=temperature, solver=solver,
                                            steps=steps)
        if noise is None:
            noise = torch.randn(c.shape[0], self.channels, device=c.device, generator=generator)
        z = noise.to(c.device, torch.float32) * options.temperature  # (M, C)
        rows, guided = stack_rows(c, uncond), uncond is not None
        if options.solver != DISTILLED:
            steps = self.num_sampling_steps if options.steps is None else options.steps
            velocity = self._velocity(self.net, self.net.cond_embed(rows), guided, options.cfg, options.solver, steps)
            return integrate(velocity, z, options.solver, steps)
        if self.few_step is None:
            raise ValueError("solver='distilled' needs a few-step head: minieq.few_step.attach(generator, "
                             "path), or pretrained_generator(few_step=True) for the course generator")
        # Guidance is an input of the few-step head (it learned the guided jump); unguided rows see 1.
        steps = self.few_step.check_call(options.steps, options.cfg if guided else 1.0)
        y_cond = self.few_step.condition(rows, 1.0 / steps, options.cfg if guided else 1.0)
        return integrate(self._velocity(self.few_step, y_cond, guided, options.cfg, "euler", steps), z, "euler", steps)

    def _velocity(self, net: AdaLNMLP, y_cond, guided: bool, cfg: float, solver: str, steps: int):
        """One token's velocity for :func:`integrate`, in :attr:`sampling_form`."""
        if self.sampling_form not in FORMS:
            raise ValueError(f"sampling_form must be one of {FORMS}, got {self.sampling_form!r}")
        if self.sampling_form == "plain":
            return GuidedVelocity(net, y_cond, guided, cfg)
        return PackedVelocity(packed(net, self.sampling_form), y_cond, guided, cfg, evaluation_times(solver, steps))
