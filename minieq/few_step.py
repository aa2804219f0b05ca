"""A few-step flow head: 1-4 head calls per token instead of Euler-100's 100 (issue 24).

Shape legend: M rows (tokens), R = M or 2M rows with guidance, C token channels, D transformer
width, W head width.

The flow head (:mod:`minieq.flow`) gives a velocity; sampling integrates its ODE, and a coarse
solve drifts off the teacher's path. A :class:`FewStepNet` instead learns the *jump*: for a grid
of N steps it predicts u(z, t, d = 1/N, s), the average velocity over [t − d, t] of the teacher's
*guided* ODE at guidance s, so z <- z − d·u lands where the teacher's solve lands
(``minieq.distill`` trains it on the teacher's trajectories). Two inputs are new:
* the step size d: one network serves N = 1..4 (a large step must average the curvature a small
  step sees), as the step-size-conditioned "shortcut" heads do;
* the guidance scale s: a guided jump is not a mix of an unguided and a conditional jump (the
  guided ODE bends between them), so the head learns each row's share at this s
  (guided distillation). Sampling still combines the rows as classifier-free guidance does,
  u = u_null + s·(u_cond − u_null), so s = 1 needs no null rows and the API is unchanged.

It starts as a copy of the teacher (the step embedding's last layer is zero, so at the start it
*is* the teacher's velocity, i.e. Euler), and training changes the copy by a low-rank update of
each weight (LoRA): the shipped file holds only the update (0.6 MB at rank 32 for the course
head), and :func:`attach` adds it to the teacher's weights once, so a call costs what a teacher
call costs.
"""
from __future__ import annotations

import hashlib
import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from minieq.checkpoint import CheckpointError, atomic_torch_save, safe_torch_load
from minieq.flow import AdaLNMLP, FlowHead, timestep_embedding


FORMAT = "minieq-few-step-1"


class StepEmbed(nn.Module):
    """(d, s) -> (M, W): sinusoidal features of the step size and the guidance scale, an MLP.

    d and s are scaled so that their ranges ((0, 1] and [1, s_max]) span the embedding's
    frequencies (the official t embedding does not, docs/official_code.md#generator-design-details).
    The last layer starts at zero: a fresh FewStepNet is its teacher."""

    def __init__(self, width: int, freq_dim: int = 64):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(2 * freq_dim, width), nn.SiLU(), nn.Linear(width, width))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, d: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        feats = torch.cat([timestep_embedding(1000 * d, self.freq_dim),
                           timestep_embedding(100 * (s - 1), self.freq_dim)], dim=-1)  # (M, 2F)
        return self.mlp(feats)


class FewStepNet(AdaLNMLP):
    """The teacher's AdaLN MLP plus :class:`StepEmbed`; conditioning y = t_emb + cond_embed(c) +
    step_embed(d, s), so the per-token part (:meth:`condition`) is made once per token."""

    def __init__(self, channels: int, width: int, cond_dim: int, depth: int, step_counts=(1, 2, 3, 4),
                 cfg_max: float = 4.0):
        super().__init__(channels, width, cond_dim, depth)
        self.step_embed = StepEmbed(width)
        self.step_counts = tuple(int(n) for n in step_counts)
        self.cfg_max = float(cfg_max)

    @classmethod
    def from_head(cls, head: FlowHead, step_counts=(1, 2, 3, 4), cfg_max: float = 4.0) -> FewStepNet:
        """A student that starts as ``head``'s velocity network (same weights, zero step embedding)."""
        net = head.net
        student = cls(head.channels, net.input_proj.out_features, net.cond_embed.in_features, len(net.res_blocks),
                      step_counts, cfg_max).to(next(net.parameters()).device)
        missing, _ = student.load_state_dict(net.state_dict(), strict=False)
        assert all(k.startswith("step_embed.") for k in missing), missing
        return student

    def condition(self, c: torch.Tensor, d: float | torch.Tensor, s: float | torch.Tensor) -> torch.Tensor:
        """The per-token half of AdaLN's y: cond_embed(c) + step_embed(d, s), (R, D) -> (R, W)."""
        rows = c.shape[0]
        d = torch.as_tensor(d, dtype=torch.float32, device=c.device).expand(rows)  # (R,)
        s = torch.as_tensor(s, dtype=torch.float32, device=c.device).expand(rows)  # (R,)
        return self.cond_embed(c) + self.step_embed(d, s)

    def forward(self, x, t, c, d, s):
        return self.forward_embedded(x, self.time_embed(t), self.condition(c, d, s))

    def check_call(self, steps: int | None, cfg: float) -> int:
        """The step count of a sampling call (None: the fewest trained), refused with a one-line
        message outside what the head was trained for."""
        steps = min(self.step_counts) if steps is None else steps
        if steps not in self.step_counts:
            raise ValueError(f"the few-step head was trained for steps in {self.step_counts}, got {steps}")
        if not 1.0 <= cfg <= self.cfg_max + 1e-6:
            raise ValueError(f"the few-step head was trained for guidance 1..{self.cfg_max:g}, got cfg {cfg:g}")
        return steps


class LowRankDelta(nn.Module):
    """A weight parametrization W -> W + B·A·(alpha / rank): the trainable update of a frozen
    (out, in) weight (LoRA). B starts at zero, so the parametrized weight starts as W."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float):
        super().__init__()
        self.A = nn.Parameter(torch.randn(rank, in_features) / math.sqrt(in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        self.scale = alpha / rank

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.scale * (self.B @ self.A)  # (out, r) @ (r, in) -> (out, in)


def add_low_rank(net: FewStepNet, rank: int, alpha: float | None = None) -> list[nn.Parameter]:
    """Freeze the teacher's weights of ``net`` and give each Linear a :class:`LowRankDelta`; biases
    and the step embedding stay fully trainable. Returns the trainable parameters."""
    alpha = float(rank) if alpha is None else alpha
    for p in net.parameters():
        p.requires_grad_(False)
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear) and not name.startswith("step_embed"):
            out_f, in_f = module.weight.shape
            parametrize.register_parametrization(module, "weight", LowRankDelta(out_f, in_f, rank, alpha))
            module.parametrizations.weight.original.requires_grad_(False)
            module.parametrizations.weight[0].A.requires_grad_(True)
            module.parametrizations.weight[0].B.requires_grad_(True)
            module.bias.requires_grad_(True)
    for p in net.step_embed.parameters():
        p.requires_grad_(True)
    return [p for p in net.parameters() if p.requires_grad]


def merge_low_rank(net: FewStepNet) -> FewStepNet:
    """Fold every low-rank update into its weight (plain Linears again: a call costs a teacher call)."""
    for module in net.modules():
        if isinstance(module, nn.Linear) and parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return net


def teacher_fingerprint(head: FlowHead) -> str:
    """sha256 of the teacher's velocity weights (float32): a few-step file fits one teacher only."""
    digest = hashlib.sha256()
    for name, tensor in sorted(head.net.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def trainable_state(net: FewStepNet) -> dict[str, torch.Tensor]:
    """What a few-step file stores: the low-rank factors, the biases and the step embedding
    (not the teacher's frozen weights, which the teacher's own file holds)."""
    return {k: v.detach().half().cpu() for k, v in net.state_dict().items() if not k.endswith(".original")}


def export(net: FewStepNet, teacher: FlowHead, path, rank: int, alpha: float, **meta) -> None:
    """Write the few-step update of ``net`` (still parametrized) with its recipe, atomically."""
    atomic_torch_save({"format": FORMAT, "teacher_sha256": teacher_fingerprint(teacher),
                       "rank": rank, "alpha": alpha, "step_counts": list(net.step_counts),
                       "cfg_max": net.cfg_max, "state": trainable_state(net), **meta}, path)


def load(path, head: FlowHead) -> FewStepNet:
    """The few-step head of file ``path`` for teacher ``head`` (refused for another teacher),
    merged and in eval mode, on the teacher's device."""
    blob = safe_torch_load(path)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a minieq few-step head file (python -m minieq.distill writes them)")
    if blob["teacher_sha256"] != teacher_fingerprint(head):
        raise CheckpointError(f"{path}: distilled from another generator's flow head (weights differ); "
                              "a few-step head only fits the teacher it was trained from")
    net = FewStepNet.from_head(head, blob["step_counts"], blob["cfg_max"])
    add_low_rank(net, int(blob["rank"]), float(blob["alpha"]))
    expected = set(trainable_state(net))
    if set(blob["state"]) != expected:
        raise CheckpointError(f"{path}: its tensors do not match a rank-{blob['rank']} few-step head")
    device = next(head.parameters()).device
    net.load_state_dict({k: v.float().to(device) for k, v in blob["state"].items()}, strict=False)
    return merge_low_rank(net).requires_grad_(False).eval()


def attach(generator: nn.Module, path) -> nn.Module:
    """Give ``generator``'s flow head the few-step head of ``path``: afterwards
    ``generator.sample(..., solver="distilled", steps=1..4)``. Returns the generator."""
    generator.head.few_step = load(path, generator.head)
    return generator


def student_of(head: FlowHead) -> FewStepNet:
    """An untrained few-step head for ``head`` (a copy; what the S-preset speed benchmark times)."""
    return FewStepNet.from_head(head).requires_grad_(False).eval()
