"""Train the AR generator on column tokens (paper Sec. 4, Table 8;
docs/official_code.md#generator-hyper-parameters, #generator-training-script).

One process (CPU, one GPU, a notebook)::

    python -m minieq.train_generator --preset fast --latents runs/course/latents.pt --out runs/gen

One node with 8 GPUs (global batch 2048 = 8 ranks × 256; bf16 autocast on CUDA)::

    torchrun --standalone --nproc_per_node 8 -m minieq.train_generator --preset paper \\
        --model L --latents /data/places30_latents.pt --tokenizer runs/tok/checkpoint.pt --out runs/gen_L

Several nodes (the same line on every node, NODE_RANK = 0 .. NNODES-1, MASTER = node 0's host)::

    torchrun --nnodes 4 --nproc_per_node 8 --node_rank $NODE_RANK --master_addr $MASTER \\
        --master_port 29500 -m minieq.train_generator --preset paper --model L \\
        --latents /data/places30_latents.pt --out /shared/runs/gen_L

Without cached latents the tokenizer encodes every batch on the fly, as the official script does
(``--tokenizer runs/tok/checkpoint.pt --data places30 --data_path /data/places30``; your own
images: ``--data folder --data_path DIR``, cropped to 16 columns of the tokenizer).
Rerunning a command resumes exactly from ``<out>/generator.pt`` when it exists; ``--fresh``
starts over at step 0 instead, ``--resume FILE`` continues from another checkpoint. The first
line printed says which.

Randomness is a pure function of (seed, step, rank), like the LR schedule: the σ-VAE noise, the
label drop, the RoPE shift and the flow noise and times are drawn for the *global* batch and
sliced by rank, so they do not depend on how the batch is split over GPUs (with ``--dropout 0``
a torchrun run equals one process at the same global batch up to float summation order);
dropout comes from a global RNG reseeded every step per rank.
"""
from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from minieq import dist
from minieq.cli import trainer_parser, user_errors
from minieq.config import ConfigBase, add_dataclass_args, overrides_from_args
from minieq.data import dataset_names
from minieq.ema import EMA
from minieq.generator import FAST_SIZES, Generator, GeneratorConfig
from minieq.generator_data import TrainingData, compute_latent_scale, global_sigma_noise, step_seed
from minieq.logger import progress as progress_bar
from minieq.pipeline import Pipeline
from minieq.training import (TrainState, announce_start, batches_from, check_finite,
                             check_loss_positions, is_due, masked_position_mean, metrics_log,
                             resume_source, warmup_constant, warmup_cosine)
from minieq.utils import autocast, pick_device, seed_everything
from minieq.viz import save_image_grid

# The flow-matching head: the official code exempts every parameter whose name contains
# "diffloss" from weight decay (docs/official_code.md#generator-training-script); in minieq that
# module is `Generator.head`.
HEAD_PREFIX = "head."


@dataclass
class GeneratorTrainConfig(ConfigBase):
    """Everything a generator run needs. ``paper`` is Table 8; ``fast`` trains on a CPU in minutes."""

    model: str = "L"                      # GeneratorConfig preset: tiny, S, B, L, H
    latents: str | None = None            # cached latent file (minieq.cache_latents)
    tokenizer: str | None = None          # tokenizer checkpoint: on-the-fly data and sample grids
    data: str = "synthscapes"             # without latents: a name in minieq.data.DATASETS
    data_path: str | None = None
    synth_images: int = 4096              # SynthScapes images when encoding on the fly
    num_classes: int | None = None        # default: from the data
    batch_size: int = 2048                # global, summed over ranks
    epochs: float = 1200.0
    steps: int | None = None              # overrides epochs
    warmup_epochs: float = 100.0
    lr_schedule: str = "constant"         # constant (paper) | cosine
    min_lr_ratio: float = 0.0             # cosine floor, as a fraction of the peak LR
    blr: float = 1e-4                     # LR = blr × batch_size / 256 (Table 8: 8e-4 at 2048)
    lr: float | None = None               # absolute LR, overrides blr
    weight_decay: float = 0.02
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 3.0
    ema_decay: float = 0.9999
    label_drop: float = 0.1               # for classifier-free guidance
    dropout: float | None = None          # attention + projection dropout (default: the model's, 0.1)
    diffusion_batch_mul: int = 4          # flow-loss rows per token (official: 4)
    grad_checkpointing: bool = False
    # σ-VAE noise bound (docs/official_code.md#sigma-vae-posterior); default: the tokenizer's (2.5).
    noise_std: float | None = None
    latent_scale: float | None = None     # default: compute_latent_scale on the data
    bf16: bool = True                     # bf16 autocast on CUDA (no-op on CPU)
    seed: int = 0
    num_workers: int = 8
    log_every: int = 20
    save_every: int = 3000                # ≈ 5 ImageNet epochs at batch 2048 (the official cadence)
    sample_every: int = 0                 # sample-grid PNG every k steps (0 = only at the end)
    loss_positions: list[int] | None = None  # train only these token positions (None = all)
    model_overrides: dict = field(default_factory=dict)  # GeneratorConfig fields (Python API only)

    # Names of files written before the two trainers shared their field names; where a run is
    # written and whether it resumes are train()'s arguments now, not part of the recipe.
    RENAMED = {"max_steps": "steps", "global_batch": "batch_size", "out": None, "resume": None}

    HELP = {
        "model": "GeneratorConfig preset: tiny, fast, course_gpu, S, B, L, H",
        "latents": "cached latent file (python -m minieq.cache_latents)",
        "tokenizer": "tokenizer checkpoint (train_tokenizer's OUT/checkpoint.pt): encodes on the "
                     "fly without --latents, and decodes the sample grids",
        "data": "without --latents: " + dataset_names(),
        "data_path": "root folder of a real data set, or of your own images for --data folder",
        "synth_images": "SynthScapes images when encoding on the fly",
        "num_classes": "number of classes (default: from the data)",
        "batch_size": "global batch, summed over ranks",
        "epochs": "training length in epochs (--steps overrides it)",
        "steps": "training steps, overrides --epochs (raising it extends a resumed run)",
        "warmup_epochs": "linear LR warmup, in epochs",
        "lr_schedule": "constant (paper) or cosine",
        "min_lr_ratio": "cosine floor as a fraction of the peak LR",
        "blr": "base LR: LR = blr x batch_size / 256",
        "lr": "absolute LR, overrides --blr",
        "weight_decay": "AdamW weight decay",
        "betas": "AdamW betas",
        "grad_clip": "gradient-norm clip",
        "ema_decay": "EMA decay of the weights that sampling uses",
        "label_drop": "class-label dropout for classifier-free guidance",
        "dropout": "attention and projection dropout of the transformer (default: the model "
                   "preset's, 0.1)",
        "diffusion_batch_mul": "flow-loss draws per token and step",
        "grad_checkpointing": "recompute activations in the backward pass (less memory)",
        "noise_std": "sigma-VAE noise bound (default: the tokenizer's, 2.5)",
        "latent_scale": "token scale (default: computed from the data)",
        "bf16": "bf16 autocast on CUDA (ignored on CPU)",
        "seed": "seed of data order, noise and initialisation",
        "num_workers": "DataLoader worker processes",
        "log_every": "metrics.jsonl row every this many steps",
        "save_every": "save OUT/generator.pt every this many steps (the resume points)",
        "sample_every": "sample-grid PNG every this many steps (0 = only at the end; needs --tokenizer)",
        "loss_positions": "flow loss on these token positions only, e.g. 0 1 2 3 4 5 6 7 (zero-shot "
                          "subtasks, paper Fig. 3 / Table 1; default: all positions)",
    }

    PRESETS = {
        # Every preset name means the same in both trainers (see TokenizerTrainConfig.PRESETS).
        # Table 8 / docs/official_code.md#generator-hyper-parameters (the field defaults): the
        # Large model, 1200 epochs at global batch 2048, LR 1e-4 × 2048/256 = 8e-4 after 100
        # warmup epochs, then constant.
        "paper": dict(sample_every=10000),
        # The course's FAST generator (notebook 05, `make demo`, minieq.course in FAST mode), CPU
        # minutes: the FAST model (GeneratorConfig "fast": 4 blocks of width 64, each token sees
        # up to 12 tokens back, docs/official_code.md#windowed-causal-mask), a short EMA and a
        # high LR for a few hundred steps. Stored as "tiny" + overrides, the form existing course
        # runs recorded.
        "fast": dict(model="tiny", batch_size=32, steps=400, warmup_epochs=0.1, blr=8e-3,
                     ema_decay=0.99, diffusion_batch_mul=2, num_workers=0, log_every=10,
                     save_every=100, model_overrides=dict(FAST_SIZES)),
        # The tiny model at its full size (2.4 M params), a short CPU run: pretrained's LR, a
        # short EMA, 1500 steps as the tokenizer's "tiny".
        "tiny": dict(model="tiny", batch_size=32, steps=1500, warmup_epochs=0.25, blr=4e-3,
                     ema_decay=0.99, diffusion_batch_mul=2, num_workers=0, log_every=25,
                     save_every=500),
        # The pretrained course generator (minieq.pretrained): the tiny model unshrunk (2.4 M params),
        # 8 epochs of the course latents: the shipped run took 29 min on one thread (0.22 s/step;
        # 0.63 s/step measured on a slower machine).
        "pretrained": dict(model="tiny", batch_size=32, steps=8000, warmup_epochs=0.25, blr=4e-3,
                           ema_decay=0.999, diffusion_batch_mul=2, num_workers=0, log_every=50,
                           save_every=250, sample_every=2000),
        # Full mode on one GPU: the "course_gpu" model (48.5 M params) on 65536 latent rows; 50k
        # steps of batch 512 ≈ 0.9 A100-hours (an estimate: python -m minieq.estimate), ~390
        # epochs; the paper's LR rule (2e-4), EMA 0.9995 (0.9999 would average 1/5 of the run).
        "course_gpu": dict(model="course_gpu", synth_images=32768, batch_size=512,
                           steps=50_000, warmup_epochs=10.0, ema_decay=0.9995, num_workers=4,
                           log_every=50, save_every=2500, sample_every=5000),
    }


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay for 1-D parameters, biases and the flow head
    (docs/official_code.md#generator-training-script).

    Class embeddings, the null class and the buffer position embedding are ≥ 2-D and *do*
    get decay, as in the official code.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = p.dim() < 2 or name.endswith(".bias") or name.startswith(HEAD_PREFIX)
        (no_decay if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class _LossModule(nn.Module):
    """Wraps ``Generator.loss`` as ``forward`` so DistributedDataParallel sees (and syncs) the call."""

    def __init__(self, generator: Generator):
        super().__init__()
        self.generator = generator

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
                split: tuple[int, int]) -> torch.Tensor:
        return self.generator.loss(tokens, labels, per_position=True, generator=generator, split=split)  # (N,)


def lr_at(cfg: GeneratorTrainConfig, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """Per-iteration LR with a fractional epoch, warmup then constant or cosine
    (docs/official_code.md#generator-training-script)."""
    peak = cfg.lr if cfg.lr is not None else cfg.blr * cfg.batch_size / 256
    epoch = step / steps_per_epoch
    if cfg.lr_schedule == "constant":
        return peak * warmup_constant(epoch, cfg.warmup_epochs)
    if cfg.lr_schedule == "cosine":
        return peak * warmup_cosine(epoch, cfg.warmup_epochs, total_steps / steps_per_epoch, cfg.min_lr_ratio)
    raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {cfg.lr_schedule!r}")


def build_generator(cfg: GeneratorTrainConfig, num_classes: int, token_dim: int) -> Generator:
    """The generator for this run: the model preset plus the training-time switches."""
    dropout = {} if cfg.dropout is None else dict(attn_dropout=cfg.dropout, proj_dropout=cfg.dropout)
    return Generator(GeneratorConfig.preset(cfg.model, **{
        "num_classes": num_classes, "token_dim": token_dim, "label_drop": cfg.label_drop,
        "diffusion_batch_mul": cfg.diffusion_batch_mul, "grad_checkpointing": cfg.grad_checkpointing,
        **dropout, **cfg.model_overrides}))


def save_samples(generator: Generator, ema: EMA, tokenizer, latent_scale: float, num_tokens: int,
                 path: Path, seed: int = 0) -> None:
    """A PNG with one EMA sample per class (up to 8, one per row), decoded by the tokenizer."""
    model = copy.deepcopy(generator)
    ema.copy_to(model)
    pipe = Pipeline(tokenizer, model, latent_scale)
    labels = torch.arange(min(8, generator.config.num_classes))
    images = pipe.generate(labels, width=num_tokens * pipe.column_width, seed=seed)
    save_image_grid(path, images, nrow=1)


def train(cfg: GeneratorTrainConfig, out: str | Path, *, resume: str | None = None,
          fresh: bool = False, device: str | torch.device | None = None,
          progress: bool = True) -> Path:
    """Train (or resume) a generator; returns the checkpoint path ``out/generator.pt``.

    The rerun rule, ``device`` and ``progress`` work exactly as in
    :func:`minieq.train_tokenizer.train` (one signature for both trainers), with
    ``out/generator.pt`` as the resume point.
    """
    auto_device = dist.init_distributed()  # joins the process group under torchrun
    device = pick_device(device) if device is not None else auto_device
    world, rank = dist.world_size(), dist.rank()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {world} ranks")
    local_batch = cfg.batch_size // world
    out = Path(out)
    ckpt_path = out / "generator.pt"
    resume = resume_source(ckpt_path, resume, fresh)
    seed_everything(cfg.seed)

    data = TrainingData(cfg, device)
    steps_per_epoch = len(data.dataset) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(data.dataset)} samples are fewer than one global batch of {cfg.batch_size}")
    total_steps = cfg.steps or math.ceil(cfg.epochs * steps_per_epoch)
    train_tokens, token_dim = data.token_shape()
    check_loss_positions(cfg.loss_positions, train_tokens)

    generator = build_generator(cfg, data.num_classes, token_dim).to(device)
    optimizer = torch.optim.AdamW(param_groups(generator, cfg.weight_decay), lr=0.0,
                                  betas=tuple(cfg.betas))
    ema = EMA(generator, cfg.ema_decay)
    state = TrainState(generator, {"generator": optimizer}, ema=ema)
    if resume:
        latent_scale = float(state.resume(resume)["latent_scale"])
    else:
        latent_scale = cfg.latent_scale or compute_latent_scale(
            data.scale_sample(local_batch), noise_std=data.noise_std, seed=cfg.seed)
        # Every rank must use the same number (on-the-fly encoding may differ in the last bits).
        latent_scale = float(dist.all_reduce_mean(torch.tensor(latent_scale, device=device)))
    model = _LossModule(generator)
    if dist.is_distributed():
        # Label dropout may leave the null-class embedding unused on a rank in some step.
        model = DistributedDataParallel(model, find_unused_parameters=True)

    announce_start("generator", resume, state.step, ckpt_path)
    logger = metrics_log(out, state.step)
    if dist.is_main():
        print(f"generator: {sum(p.numel() for p in generator.parameters()) / 1e6:.2f}M parameters, "
              f"{world} rank(s) × batch {local_batch}, {total_steps} steps "
              f"({steps_per_epoch}/epoch), latent scale {latent_scale:.5f}")
        if data.tokenizer is None:
            print("no --tokenizer given: sample grids are skipped")
    batches = batches_from(data.dataset, local_batch, start_step=state.step, seed=cfg.seed,
                           num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    bar = progress_bar(total=total_steps, initial=state.step, desc="generator", disable=not progress)
    generator.train()
    for step, batch in batches:
        if step >= total_steps:
            break
        lr = lr_at(cfg, step, steps_per_epoch, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(step_seed(cfg.seed, step, rank))  # dropout
        # Label drop, RoPE shift, flow noise and times: drawn for the global batch, then sliced.
        draws = torch.Generator(device=device).manual_seed(step_seed(cfg.seed, "loss", step))
        means, labels = data.means(batch)
        tokens = (means + global_sigma_noise(means, cfg.seed, step, data.noise_std)) * latent_scale
        with autocast(device, enabled=cfg.bf16):
            # (N,) Fig. 3/4: one loss per subtask
            per_position = model(tokens, labels, draws, (rank, world)).float()
        loss = masked_position_mean(per_position, cfg.loss_positions)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(generator.parameters(), cfg.grad_clip)
        per_position = dist.all_reduce_mean(per_position.detach())
        # Before the optimizer step, so a NaN never reaches the weights or a checkpoint.
        check_finite({"loss": per_position.mean(), "grad_norm": grad_norm}, step,
                     ckpt_path if ckpt_path.is_file() else None)
        optimizer.step()
        ema.update(generator)
        state.step = step + 1
        bar.update(1)
        if is_due(state.step, cfg.log_every, total_steps):
            bar.set_postfix(loss=f"{float(per_position.mean()):.4f}", lr=f"{lr:.2e}")
            logger.log(state.step, loss=per_position.mean(), lr=lr, grad_norm=grad_norm,
                       per_position=per_position, epoch=state.step / steps_per_epoch)
        if is_due(state.step, cfg.save_every, total_steps):
            state.save(ckpt_path, latent_scale=latent_scale, train_tokens=train_tokens,
                       train_config=cfg.to_dict(), class_names=data.class_names)
        last = state.step == total_steps
        if data.tokenizer is not None and dist.is_main() and (
                last or (cfg.sample_every and state.step % cfg.sample_every == 0)):
            save_samples(generator, ema, data.tokenizer, latent_scale, tokens.shape[1],
                         out / "samples" / f"step{state.step:07d}.png")
    bar.close()
    if not ckpt_path.is_file():
        state.save(ckpt_path, latent_scale=latent_scale, train_tokens=train_tokens,
                   train_config=cfg.to_dict(), class_names=data.class_names)
    return ckpt_path


DEFAULT_PRESET = "fast"
# CPU times ("here"): measured on this project's 2-core CPU machine with nothing else running
# (make demo's stage timer; the course run's own progress bar); GPU presets: FLOP estimates.
PRESET_HELP = {
    "fast": "the course's FAST generator (notebook 05, make demo): 0.53 M params, 400 steps x 32 "
            "latents, ~1 min on 2 CPU cores (60 s measured)",
    "tiny": "the tiny model at full size: 2.4 M params, 1500 steps x 32 latents, 6-16 min on one "
            "CPU core (estimate: pretrained's 0.22-0.63 s/step)",
    "pretrained": "the pretrained course generator shipped with minieq (minieq.pretrained): 2.4 M "
              "params, 8000 steps x 32, 0.5-1.4 h on one CPU core (0.22-0.63 s/step measured)",
    "course_gpu": "the course's full mode: 48.5 M params, ~0.9 A100-hours (estimate)",
    "paper": "the paper's Table 8 (Large, 1200 epochs at batch 2048, GPUs)",
}


def main(argv: list[str] | None = None) -> int:
    """CLI: ``--preset`` + ``--out`` + one flag per config field (see ``--help``); returns 0."""
    parser, shown, preset = trainer_parser("train_generator", __doc__, GeneratorTrainConfig, PRESET_HELP,
                                           DEFAULT_PRESET, "generator.pt", argv)
    group = parser.add_argument_group(f"training (defaults of preset {preset!r})")
    add_dataclass_args(group, GeneratorTrainConfig, shown=shown)
    args = parser.parse_args(argv)
    with user_errors(parser):
        cfg = GeneratorTrainConfig.preset(args.preset, **overrides_from_args(args, GeneratorTrainConfig))
        try:
            path = train(cfg, args.out, resume=args.resume, device=args.device, fresh=args.fresh)
        finally:
            dist.cleanup()
    if dist.is_main():
        print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
