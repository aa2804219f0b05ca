"""What the experiments that train generators share: their latents, their sizes, one run.

Shape legend: B batch, M rows, N tokens, C token channels.

* :class:`Latents`: posterior means of a training and a held-out split, with their decoder.
  :func:`pca_latents` (column or 2D-grid PCA codec, stationary or centred SynthScapes, seconds),
  :func:`course_latents` (the shipped course tokenizer: the course latent file, or SynthScapes
  encoded on the spot) and :func:`file_latents` (any ``minieq.cache_latents`` file, paper scale).
* :data:`SCALES`: how long and how big the runs are at ``--scale cpu`` and ``--scale paper``.
* :func:`train_on_latents`: one run of ``minieq.train_generator.train`` (the trainer itself, so
  the experiments test the code users train with) with the held-out per-position loss measured
  at chosen steps, and its EMA generator.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from minieq.analysis import per_position_loss
from minieq.checkpoint import atomic_torch_save, load_checkpoint, read_checkpoint
from minieq.data import LatentDataset, SynthScapes
from minieq.evaluation import PCACodec
from minieq.generator import FAST_SIZES
from minieq.generator_data import num_classes_of
from minieq.pretrained import pretrained_tokenizer
from minieq.tokenizer import sigma_vae_sample
from minieq.train_generator import GeneratorTrainConfig, train

# SynthScapes at the course size: 32 x 128 images, 16 tokens (column 8 px, or 2 x 8 patches of 16).
HEIGHT, WIDTH = 32, 128
PCA_BLOCK = {"column": 8, "grid": 16}
PCA_DIMS = 16  # the course tokenizer's token channels: 48:1 compression in both layouts
# σ-VAE noise bound of the PCA tokens (unit std): a tenth of their spread. The course tokenizer
# was trained under its noise (2.5 on latents of std 3.8); PCA coefficients were not, so a small
# bound keeps the decoded samples readable while the generator still sees noisy tokens.
PCA_NOISE_STD = 0.1
# The paper's 2D baseline ignores the column model's random RoPE shift: a raster position is a
# place in the image (row, column), which the model must know; full causal attention (MAR's AR).
GRID_MODEL = dict(layout="grid", attention="full", shift_num=1)


@dataclass
class Latents:
    """Posterior means (M, N, C) + labels of a training and a held-out split, and a decoder."""

    train: torch.Tensor
    train_labels: torch.Tensor
    val: torch.Tensor
    val_labels: torch.Tensor
    noise_std: float  # σ-VAE noise bound the generator trains under
    num_classes: int
    decode: Callable[[torch.Tensor], torch.Tensor] | None  # means (B, N, C) -> images; None: no decoder
    description: str
    train_file: str | None = None  # an existing latent file of ``train`` (read in place, not copied)

    def val_tokens(self, latent_scale: float, seed: int = 0) -> torch.Tensor:
        """Held-out tokens as the generator sees them in training: σ-VAE samples x latent scale."""
        g = torch.Generator().manual_seed(seed)
        return sigma_vae_sample(self.val.float(), std=self.noise_std, generator=g) * latent_scale


def synthscapes(num_images: int, centered: bool, split: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(num_images, 3, 32, 128) SynthScapes images in [-1, 1] (8-bit rounded) and their labels."""
    data = SynthScapes(num_images, height=HEIGHT, width=WIDTH, seed=seed, centered=centered, split=split)
    return torch.stack([data[i][0] for i in range(num_images)]), data.labels.clone()


def pca_latents(layout: str, centered: bool = False, num_images: int = 4096, val_images: int = 512,
                seed: int = 0) -> Latents:
    """PCA tokens of SynthScapes (stationary, or ``centered``: one object in the middle) with
    their horizontal flips as extra rows, as ``minieq.cache_latents`` stores them."""
    images, labels = synthscapes(num_images, centered, "train", seed)
    codec = PCACodec(images, layout, PCA_BLOCK[layout], PCA_DIMS)
    val, val_labels = synthscapes(val_images, centered, "val", seed)
    train = torch.cat([codec.encode(images), codec.encode(images.flip(-1))])  # (2M, N, C)
    kind = "centred" if centered else "stationary"
    return Latents(train, torch.cat([labels, labels]), codec.encode(val), val_labels, PCA_NOISE_STD,
                   8, codec.decode, f"PCA {layout} tokens of {kind} SynthScapes ({num_images} images + flips)")


def course_latents(path: str | Path | None = None, num_images: int = 1024, val_images: int = 256,
                   seed: int = 0, device: torch.device | None = None) -> Latents:
    """Tokens of the shipped course tokenizer: training rows from the course latent file ``path``
    (e.g. the ``latents.pt`` of a ``python -m minieq.pretrained generator`` run) or, without it,
    ``num_images`` stationary SynthScapes images + flips encoded here; held-out rows are always
    val-split images encoded here."""
    tok = pretrained_tokenizer(device)
    dev = next(tok.parameters()).device

    def encode(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([tok.encode(x.to(dev)).float().cpu() for x in images.split(64)])  # (M, N, C)

    def decode(means: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return tok.decode(means.to(dev)).clamp(-1, 1).cpu()

    if path is not None:
        data = LatentDataset(path)
        train, labels, source = data.latents, data.labels, f"the latent file {path}"
    else:
        images, labels = synthscapes(num_images, False, "train", seed)
        train = torch.cat([encode(images), encode(images.flip(-1))])  # (2M, N, C)
        labels, source = torch.cat([labels, labels]), f"{num_images} SynthScapes images + flips"
    val, val_labels = synthscapes(val_images, False, "val", seed)
    return Latents(train, labels, encode(val), val_labels, float(tok.config.noise_std), 8, decode,
                   f"course-tokenizer tokens from {source}")


def file_latents(path: str | Path, val_rows: int = 10_000) -> Latents:
    """A ``minieq.cache_latents`` file (paper scale: ImageNet or Places latents), used in place.

    The trainer reads the file itself (memory-mapped: at ImageNet size it is ~42 GB, too big to
    copy), so nothing is held out: the loss is measured on its first ``val_rows`` rows, which
    are also trained on, like the paper's Figs. 3-4 (training loss).
    """
    data = LatentDataset(path)
    if len(data) < val_rows:
        raise ValueError(f"{path}: {len(data)} rows are fewer than the {val_rows} the loss is measured on")
    return Latents(data.latents, data.labels, data.latents[:val_rows].clone(), data.labels[:val_rows].clone(),
                   float(data.meta.get("noise_std", 2.5)), num_classes_of(data), None,
                   f"the latent file {path} (loss on its first {val_rows} rows)", train_file=str(path))


@dataclass
class Scale:
    """The size of an experiment's generator runs (``--scale``)."""

    train_preset: str  # GeneratorTrainConfig preset
    model: str  # GeneratorConfig preset
    steps: int
    early_step: int  # the "early" checkpoint of Fig. 3 (the paper: 10 of 100 epochs)
    batch_size: int
    model_overrides: dict = field(default_factory=dict)
    eval_repeats: int = 4  # passes of the random flow loss over the held-out set


SCALES = {
    # Minutes on one CPU thread: the course's FAST generator (0.53 M parameters), 500 steps of 32.
    "cpu": Scale("fast", "tiny", steps=500, early_step=50, batch_size=32, model_overrides=dict(FAST_SIZES)),
    # The paper's ablation model (Table 4 is Ours-S) at the paper's batch; 100 ImageNet epochs
    # (62 500 steps of 2048), the early checkpoint after 10 epochs, as in Fig. 3.
    "paper": Scale("paper", "S", steps=62_500, early_step=6_250, batch_size=2048),
}


@dataclass
class Run:
    """A trained generator (EMA weights, eval mode) and what was measured during its run."""

    generator: torch.nn.Module
    latent_scale: float
    val_loss: dict[int, list[float]]  # step -> held-out per-position loss (N,)
    seconds: float
    checkpoint: Path


def train_on_latents(latents: Latents, out: str | Path, scale: Scale, *, steps: int | None = None,
                     model_overrides: dict | None = None, loss_positions: list[int] | None = None,
                     eval_steps: tuple[int, ...] = (), seed: int = 0,
                     device: torch.device | str | None = None) -> Run:
    """Train a generator on ``latents`` with ``minieq.train_generator.train``, from scratch.

    The run stops at every step of ``eval_steps`` and at the end to measure the held-out
    per-position loss of its EMA weights, then continues: the trainer resumes exactly (same
    batches, noise and LR), so the result equals one straight run.

    :param out: run folder (the trainer's latents.pt, generator.pt and metrics.jsonl).
    :param model_overrides: GeneratorConfig fields on top of ``scale.model_overrides``
        (e.g. :data:`GRID_MODEL`, ``attention="strict"``).
    :param loss_positions: train only these token positions (Fig. 3, Table 1).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps = steps or scale.steps
    data_file = Path(latents.train_file) if latents.train_file else out / "latents.pt"
    if latents.train_file is None:
        atomic_torch_save({"latents": latents.train.float().contiguous(), "labels": latents.train_labels,
                           "noise_std": latents.noise_std, "num_classes": latents.num_classes}, data_file)
    cfg = GeneratorTrainConfig.preset(
        scale.train_preset, model=scale.model, latents=str(data_file), steps=steps,
        batch_size=scale.batch_size, num_workers=0, seed=seed, save_every=steps,
        loss_positions=loss_positions,
        model_overrides={**scale.model_overrides, **(model_overrides or {})})
    val_loss, start = {}, time.perf_counter()
    stops = sorted({s for s in eval_steps if 0 < s < steps} | {steps})
    for i, stop in enumerate(stops):
        # The first call starts fresh (a stale generator.pt in out must not be resumed).
        path = train(cfg.replace(steps=stop), out, fresh=i == 0, device=device)
        generator = load_checkpoint(path, map_location=device or "cpu")
        latent_scale = float(read_checkpoint(path)["latent_scale"])
        loss = per_position_loss(generator, latents.val_tokens(latent_scale, seed), latents.val_labels,
                                 repeats=scale.eval_repeats, seed=seed)
        val_loss[stop] = [round(float(v), 5) for v in loss]
    return Run(generator, latent_scale, val_loss, time.perf_counter() - start, path)
