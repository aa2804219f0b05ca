"""Distil a few-step head from a trained generator's flow head (transformer frozen, issue 24).

    python -m minieq.distill --out runs/distill      # the course generator: ~30 CPU minutes
    python -m minieq.distill --out runs/distill --export minieq/weights/course_few_step_head.pt
    python -m minieq.distill --out runs/distill_s --generator S_RUN/generator.pt --device cuda   # any preset

Shape legend: M rows (tokens x noise draws), C token channels, D transformer width, G grid steps.

Why distillation and not the shortcut objective's self-consistency: the teacher exists, and the
quality we must keep is the teacher's (Euler-100's samples), so the student is trained on the
teacher's own guided ODE solutions; self-consistency bootstraps from the student's small steps
and only approaches the teacher through them. Recipe:
1. **Trajectories, on policy.** The frozen generator samples images token by token (random class,
   guidance top s in [1, s_max], linear or constant schedule, some unconditional); for every
   token and ``draws`` noises the teacher solves the guided ODE with midpoint on a G = 12 grid
   (24 calls; finer than midpoint-5, which already matches Euler-100's error) and keeps z at
   t = j/12. Contexts are the model's own samples, as at sampling time.
2. **Jumps.** For N in ``step_counts`` (G is a multiple of each) and a step i, the target of
   u(z_{i/N}, t = i/N, d = 1/N, s) is the chord (z_{i/N} − z_{(i−1)/N})·N of the teacher's path;
   the student's guided output u_null + s·(u_cond − u_null) regresses it (MSE).
3. **Low-rank.** Only LoRA factors, biases and the step embedding train (minieq.few_step).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from minieq.checkpoint import atomic_torch_save, load_checkpoint
from minieq.config import ConfigBase
from minieq.few_step import FewStepNet, add_low_rank, export
from minieq.flow import FlowHead, GuidedVelocity, stack_rows
from minieq.pretrained import GENERATOR_FILE, pretrained_generator
from minieq.utils import eval_mode, pick_device


@dataclass
class DistillConfig(ConfigBase):
    images: int = 4096              # images sampled by the teacher for trajectories
    draws: int = 2                  # noise draws per token (one continues the image)
    grid: int = 12                  # teacher midpoint steps; a multiple of every step count
    step_counts: tuple = (1, 2, 3, 4)
    cfg_max: float = 4.0            # guidance tops drawn in [1, cfg_max]
    uncond_frac: float = 0.1        # images sampled without a class (null condition, s = 1)
    num_tokens: int = 16
    rank: int = 32
    steps: int = 4000
    batch_size: int = 512
    lr: float = 1e-3
    warmup: int = 100
    val_rows: int = 8192             # held out: the first 256 images (16 tokens x 2 draws each)
    seed: int = 0

    def __post_init__(self):
        self.step_counts = tuple(int(n) for n in self.step_counts)  # a checkpoint stores a list
        if any(n < 1 or self.grid % n for n in self.step_counts):
            raise ValueError(f"every step count must divide grid {self.grid}, got {self.step_counts}")


def teacher_path(head: FlowHead, c: torch.Tensor, u: torch.Tensor, s: torch.Tensor, noise: torch.Tensor,
                 grid: int) -> torch.Tensor:
    """The teacher's guided ODE from ``noise`` (M, C) at t = 1 to t = 0, midpoint on t = j/grid;
    returns z at every grid point (M, grid + 1, C), index j = t·grid."""
    velocity = GuidedVelocity(head.net, head.net.cond_embed(stack_rows(c, u)), True, s[:, None])
    path = noise.new_empty(noise.shape[0], grid + 1, noise.shape[1])  # (M, G+1, C)
    z, h = noise.clone(), 1.0 / grid
    path[:, grid] = z
    for j in range(grid, 0, -1):
        v = velocity(z, j * h)
        z = z - h * velocity(z - 0.5 * h * v, (j - 0.5) * h)
        path[:, j - 1] = z
    return path


@torch.no_grad()
def trajectories(gen, cfg: DistillConfig, batch: int = 256, log=print) -> dict[str, torch.Tensor]:
    """Sample ``cfg.images`` images with the teacher and keep every token's conditions, guidance
    and grid path for ``cfg.draws`` noises: c, u (M, D), s (M,), path (M, G + 1, C)."""
    g = torch.Generator().manual_seed(cfg.seed)
    device = gen.fake_latent.device
    N, out = cfg.num_tokens, {"c": [], "u": [], "s": [], "path": []}
    start = time.time()
    with eval_mode(gen):
        for first in range(0, cfg.images, batch):
            B = min(batch, cfg.images - first)
            labels = torch.randint(gen.config.num_classes, (B,), generator=g).to(device)
            top = 1 + (cfg.cfg_max - 1) * torch.rand(B, generator=g)  # (B,) guidance top per image
            linear = torch.rand(B, generator=g) < 0.5
            uncond = (torch.rand(B, generator=g) < cfg.uncond_frac).to(device)
            null = gen.class_vectors(None, B)  # (B, D)
            cond = torch.where(uncond[:, None], null, gen.class_vectors(labels, B))
            stream = gen.stream(torch.cat([cond, null]), N)  # (2B, D) class vectors
            for k in range(N):
                s = torch.where(linear, 1 + (top - 1) * (k + 1) / N, top)  # (B,) the schedules' scale
                s = torch.where(uncond.cpu(), torch.ones_like(s), s).to(device)
                c, u = stream.row(k).chunk(2)  # (B, D) each
                c, u, s = c.repeat(cfg.draws, 1), u.repeat(cfg.draws, 1), s.repeat(cfg.draws)  # (draws·B, ...)
                noise = torch.randn(c.shape[0], gen.config.token_dim, generator=g).to(device)
                path = teacher_path(gen.head, c, u, s, noise, cfg.grid)
                for key, value in zip(out, (c, u, s, path)):
                    out[key].append(value.cpu())
                if k < N - 1:
                    stream.push(k, path[:B, 0].repeat(2, 1))  # draw 0 continues the image
            log(f"trajectories: {first + B}/{cfg.images} images, {time.time() - start:.0f} s")
    return {key: torch.cat(value) for key, value in out.items()}


def guided_jump(student: FewStepNet, z, t, d, c, u, s) -> torch.Tensor:
    """u_null + s·(u_cond − u_null) of the student at rows z (M, C), times t, steps d (M,)."""
    rows = torch.cat([z, z])  # (2M, C): both branches jump from the same z
    y = student.condition(torch.cat([c, u]), torch.cat([d, d]), torch.cat([s, s]))  # (2M, W)
    u_c, u_u = student.forward_embedded(rows, student.time_embed(torch.cat([t, t])), y).chunk(2)
    return u_u + s[:, None] * (u_c - u_u)


def jump_batch(data: dict, idx: torch.Tensor, cfg: DistillConfig, g: torch.Generator):
    """Rows ``idx``: a random step count N and step i per row -> (z, t, d, target chord)."""
    counts = torch.tensor(cfg.step_counts)[torch.randint(len(cfg.step_counts), (idx.numel(),), generator=g)]
    i = 1 + (torch.rand(idx.numel(), generator=g) * counts).long()  # (M,) in 1..N
    start, end = cfg.grid * i // counts, cfg.grid * (i - 1) // counts  # grid indices of t_i, t_{i-1}
    path = data["path"][idx]  # (M, G+1, C)
    rows = torch.arange(idx.numel())
    z, z_end = path[rows, start], path[rows, end]
    return z, start / cfg.grid, 1.0 / counts, (z - z_end) * counts[:, None]


@torch.no_grad()
def jump_errors(student: FewStepNet, data: dict, rows: slice, cfg: DistillConfig) -> dict[int, float]:
    """Relative RMS error of the student's N-step samples against the teacher's end points,
    per N: |x_student − x_teacher| / |x_teacher| over ``rows``."""
    device = next(student.parameters()).device
    path, c, u, s = (data[k][rows].to(device) for k in ("path", "c", "u", "s"))
    errors = {}
    for n in cfg.step_counts:
        z = path[:, cfg.grid].clone()
        for i in range(n, 0, -1):
            t = torch.full((z.shape[0],), i / n)
            z -= guided_jump(student, z, t, torch.full_like(t, 1 / n), c, u, s) / n
        errors[n] = float((z - path[:, 0]).norm() / path[:, 0].norm())
    return errors


def train(teacher: FlowHead, data: dict, cfg: DistillConfig, log=print) -> tuple[FewStepNet, list[dict]]:
    """Fit a (still parametrized) few-step student to the jumps of ``data``; returns it and the log."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    student = FewStepNet.from_head(teacher, cfg.step_counts, cfg.cfg_max).float().train()
    device = next(student.parameters()).device
    params = add_low_rank(student, cfg.rank)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    schedule = lambda step: min(1.0, (step + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * step / max(1, cfg.steps)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    val = slice(0, cfg.val_rows)  # held out; never drawn below
    n_rows = data["s"].shape[0]
    history, start, running = [], time.time(), 0.0
    history.append({"step": 0, "val": jump_errors(student, data, val, cfg)})
    log(f"step 0: student = teacher Euler-N, relative error vs the teacher {history[-1]['val']}")
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(cfg.val_rows, n_rows, (cfg.batch_size,), generator=g)
        z, t, d, target = (x.to(device) for x in jump_batch(data, idx, cfg, g))  # the data stay on the CPU
        c, u, s = (data[key][idx].to(device) for key in ("c", "u", "s"))
        pred = guided_jump(student, z, t.float(), d.float(), c, u, s)
        loss = F.mse_loss(pred, target)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"distillation loss is {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        running += loss.item()
        if step % 250 == 0 or step == cfg.steps:
            with eval_mode(student):
                errors = jump_errors(student, data, val, cfg)
            history.append({"step": step, "loss": running / 250, "val": errors})
            log(f"step {step}: loss {running / 250:.4f}, relative error vs the teacher "
                + ", ".join(f"{n} steps {e:.3f}" for n, e in errors.items()) + f" ({time.time() - start:.0f} s)")
            running = 0.0
    return student.eval(), history


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="run folder (trajectories cache, student, log)")
    parser.add_argument("--export", default=None, help="also write the shipped few-step file here")
    parser.add_argument("--generator", type=Path, default=None,
                        help="generator checkpoint to distil (default: the shipped course generator); any "
                             "preset, e.g. a paper-size S generator on a GPU")
    parser.add_argument("--device", default=None)
    for field, value in DistillConfig().to_dict().items():
        if not isinstance(value, (list, tuple)):
            parser.add_argument(f"--{field}", type=type(value), default=value)
    args = parser.parse_args(argv)
    cfg = DistillConfig(**{k: getattr(args, k) for k in DistillConfig().to_dict() if hasattr(args, k)})
    device = pick_device(args.device)
    if args.generator is None or args.generator == GENERATOR_FILE:
        gen, _ = pretrained_generator(device, few_step=False)
    else:
        gen = load_checkpoint(args.generator, map_location=device).float().eval()
    gen.requires_grad_(False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / f"trajectories_{cfg.images}x{cfg.draws}_s{cfg.seed}.pt"
    if cache.exists():
        data = torch.load(cache, weights_only=True)
    else:
        data = trajectories(gen, cfg)
        atomic_torch_save(data, cache)
    student, history = train(gen.head, data, cfg)
    recipe = {"distill_config": cfg.to_dict(), "history": history,
              "command": "python -m minieq.distill " + " ".join(argv if argv is not None else sys.argv[1:])}
    export(student, gen.head, out / "few_step_head.pt", cfg.rank, float(cfg.rank), **recipe)
    if args.export:
        export(student, gen.head, args.export, cfg.rank, float(cfg.rank), **recipe)
    return recipe


if __name__ == "__main__":
    main()
