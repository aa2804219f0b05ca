"""What the generator trainer feeds on: posterior means + labels, their σ-VAE noise and scale.

:data:`TRAIN_TOKENS` is the training length; :func:`compute_latent_scale` the factor that gives
the training tokens unit std (stored in every generator checkpoint). :class:`TrainingData`
reads a cached latent file or encodes images with a tokenizer on the fly (as the official
script does); :func:`global_sigma_noise` draws the σ-VAE noise of a global
batch so that it does not depend on the number of GPUs; :func:`step_seed` makes every step's
randomness a pure function of (seed, step, rank).
"""
from __future__ import annotations

import torch

from minieq import dist
from minieq.checkpoint import load_checkpoint
from minieq.data import LatentDataset, build_dataset
from minieq.tokenizer import sigma_vae_sample
from minieq.training import batches_from, step_seed

# The paper's training length (Table 8: 256 px / 16 px columns), used by the trainers when
# encoding images on the fly. A generator checkpoint stores its own (``train_tokens``); files
# written before it did fall back to this value.
TRAIN_TOKENS = 16


@torch.no_grad()
def compute_latent_scale(latents_or_dataset, noise_std: float = 2.5, max_samples: int = 4096,
                         seed: int = 0) -> float:
    """The factor that gives the generator's training tokens unit standard deviation.

    The generator is trained on σ-VAE *samples* (posterior mean + noise), not on the means
    (docs/official_code.md#latent-scale), so the scale is ``1 / std(sigma_vae_sample(mean))``, the std taken over
    every element of up to ``max_samples`` latents. The official constant 0.05493 is meant to do
    the same (its comment: "makes the latent std ≈ 1", i.e. a raw std ≈ 18.2).

    :param latents_or_dataset: posterior means, a (M, N, C) tensor, or a data set whose items are
        ``(latent, label)`` pairs (e.g. :class:`minieq.data.LatentDataset`).
    :param noise_std: the σ-VAE noise bound (2.5 in the paper's tokenizer).
    :param max_samples: use a seeded random subset of at most this many latents.
    :param seed: seed of the subset choice and of the σ-VAE noise.
    :return: the latent scale as a Python float.
    """
    g = torch.Generator().manual_seed(seed)
    if isinstance(latents_or_dataset, torch.Tensor):
        means = latents_or_dataset
        if means.dim() != 3:
            raise ValueError(f"latents must be (M, N, C) posterior means, got shape {tuple(means.shape)}")
        if len(means) > max_samples:
            means = means[torch.randperm(len(means), generator=g)[:max_samples]]
    else:
        n = len(latents_or_dataset)
        index = torch.randperm(n, generator=g)[:max_samples].tolist() if n > max_samples else range(n)
        means = torch.stack([torch.as_tensor(latents_or_dataset[i][0]) for i in index])  # (M, N, C)
    if means.numel() == 0:
        raise ValueError("cannot compute a latent scale from an empty set of latents")
    means = means.float().cpu()
    noisy = sigma_vae_sample(means, std=noise_std, generator=g)
    std = float(noisy.std())
    if not std > 0:  # also catches NaN
        raise ValueError(f"latents have standard deviation {std}; cannot normalise them")
    return 1.0 / std


class TrainingData:
    """Posterior means + labels per batch, from a latent file or a tokenizer on the fly.

    :param cfg: the run's ``GeneratorTrainConfig`` (latents, tokenizer, data, noise_std, ...).
    """

    def __init__(self, cfg, device: torch.device):
        self.device = device
        self.tokenizer = None
        if cfg.tokenizer is not None:
            self.tokenizer = load_checkpoint(cfg.tokenizer, map_location=device,
                                             expect="ColumnTokenizer").requires_grad_(False)
        if cfg.latents is not None:
            self.dataset = LatentDataset(cfg.latents)
        elif self.tokenizer is not None:
            self.dataset = image_dataset(cfg, self.tokenizer.config)
        else:
            raise ValueError("give --latents (a cached latent file) or --tokenizer (encode on the fly)")
        self.num_classes = cfg.num_classes or num_classes_of(self.dataset)
        names = getattr(self.dataset, "classes", None) or getattr(self.dataset, "meta", {}).get("classes")
        # Stored in the checkpoint so that sampling takes names; only if they name every class.
        self.class_names = list(names) if isinstance(names, list) and len(names) == self.num_classes else None
        stored = getattr(self.dataset, "meta", {}).get("noise_std")  # written by cache_latents
        if self.tokenizer is not None:
            stored = self.tokenizer.config.noise_std
        self.noise_std = cfg.noise_std or stored or 2.5

    @torch.no_grad()
    def means(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        x, labels = batch[0].to(self.device), batch[1].to(self.device)
        if x.dim() == 4:  # images (B, 3, H, W): encode in fp32, as the official script does
            x = self.tokenizer.encode(x)  # (B, N, C)
        return x.float(), labels.long()

    def token_shape(self) -> tuple[int, int]:
        """(N, C) of one training sample: the training length and the token channels."""
        with torch.random.fork_rng(devices=[]):  # a random crop here must not move the init's RNG
            x, label = self.dataset[0]
        return tuple(self.means((x[None], torch.as_tensor([label])))[0].shape[1:])

    def scale_sample(self, batch_size: int, batches: int = 8) -> torch.Tensor:
        """Posterior means for :func:`compute_latent_scale` (a few batches when encoding on the fly)."""
        if self.tokenizer is None or hasattr(self.dataset, "latents"):
            return self.dataset
        it = batches_from(self.dataset, batch_size, seed=1)
        return torch.cat([self.means(next(it)[1])[0].cpu() for _ in range(batches)])  # (M, N, C)


def image_dataset(cfg, tok_cfg):
    """The images to encode on the fly: TRAIN_TOKENS columns wide (256 × 256 at paper size)."""
    return build_dataset(cfg.data, cfg.data_path, height=tok_cfg.image_height,
                         width=TRAIN_TOKENS * tok_cfg.column_width, num_images=cfg.synth_images,
                         seed=cfg.seed)


def num_classes_of(dataset) -> int:
    """From the data set's class list, the latent file's metadata, or the largest label."""
    meta = getattr(dataset, "meta", {})
    for value in (getattr(dataset, "classes", None), meta.get("num_classes"), meta.get("classes")):
        if value is not None:
            return value if isinstance(value, int) else len(value)
    return int(torch.as_tensor(dataset.labels).max()) + 1


def global_sigma_noise(means: torch.Tensor, seed: int, step: int, noise_std: float) -> torch.Tensor:
    """σ-VAE noise for this rank's rows of the global batch (B_global = world × B, interleaved).

    ``ResumableSampler`` gives rank r the rows r, r + world, ... of each global batch, so drawing
    the whole global batch and slicing [r::world] makes every sample's noise independent of the
    number of GPUs.
    """
    world, rank = dist.world_size(), dist.rank()
    g = torch.Generator(device=means.device).manual_seed(step_seed(seed, "vae", step))
    zeros = means.new_zeros(world * means.shape[0], *means.shape[1:])  # (world·B, N, C)
    return sigma_vae_sample(zeros, std=noise_std, generator=g)[rank::world]  # (B, N, C)
