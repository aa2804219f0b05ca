"""The course's models: the pretrained ones shipped with minieq, and load-or-train helpers for
training them from scratch (artifacts in ``runs/course/fast/`` or ``runs/course/full/``).

:func:`pretrained_tokenizer` and :func:`pretrained_generator` (from :mod:`minieq.pretrained`) are
what the demo shows by default, beside the from-scratch models. The ``tiny_*`` helpers load their artifact if
it exists and train (or compute) it otherwise, so the notebooks can run in any order and a second
run costs nothing (the uvadlc pattern, style.md).

FAST mode (``fast=None`` reads ``$MINIEQ_FAST``; unset means FAST, as in the notebooks) is a few
CPU minutes; ``MINIEQ_FAST=0`` trains longer (meant for a GPU, also fine on a CPU overnight).
The two modes never share files: each has its own run folder (:func:`course_dir`), and a model
trained with the other mode's recipe is refused with a clear error instead of being reused.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from minieq.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from minieq.pipeline import TRAIN_TOKENS
from minieq.pretrained import pretrained_generator, pretrained_tokenizer  # noqa: F401 (public API)
from minieq.train_tokenizer import HALF_WIDTH, TokenizerTrainConfig
from minieq.train_tokenizer import train as train_tokenizer
from minieq.utils import pick_device

# FAST mode (CPU minutes): the "fast" TokenizerTrainConfig preset, the "tiny" tokenizer (32 px
# high, 8 px columns, 16 channels) at half its width (ch 16 instead of 32): 4x fewer FLOPs, so
# a few hundred CPU steps fit in minutes.
# Measured (64 held-out images, posterior means; 500 steps, 162 s on 2 cores, deterministic, so
# make demo and notebook 02 agree): PSNR 24.4 dB / SSIM 0.70, colours and horizon right, nearly
# constant along x, below the row-mean baseline (26.8 dB) and the PCA column codec (29.1 dB)
# (docs/results.md, "Known limits"). What hours of CPU training give is the pretrained course tokenizer.
COURSE_TOKENIZER = HALF_WIDTH

# Each mode's run: (preset, overrides); the recipes themselves are the trainers' presets, so
# `python -m minieq.train_tokenizer --preset fast` trains exactly the FAST model. Full mode is
# one GPU: the "course_gpu" presets, 128-px SynthScapes with the paper's 16:1 columns, each
# ~1 A100-hour by a FLOP count (an estimate: python -m minieq.estimate). Offline the tokenizer
# objective is L1 + KL on σ-VAE samples (reduction "mean"): LPIPS, the DINO discriminator and
# the DINOv2 teacher need weight files.
TOKENIZER_RECIPES = {
    True: ("fast", {}),
    False: ("course_gpu", {}),
}
LATENT_IMAGES = {True: 2048, False: 32768}  # SynthScapes training images (×2 rows with flips)


def is_fast(fast: bool | None = None) -> bool:
    """``fast`` if given, else ``$MINIEQ_FAST`` ("0" means full mode; unset means FAST)."""
    if fast is not None:
        return fast
    return os.environ.get("MINIEQ_FAST", "1").strip().lower() not in ("0", "false", "no", "off")


def course_dir(fast: bool | None = None, root: str | os.PathLike = "runs/course") -> Path:
    """``root/fast`` or ``root/full``: FAST and full-mode artifacts never share a folder."""
    return Path(root) / ("fast" if is_fast(fast) else "full")


# Where a run's files live, not what it learns: left out when two recipes are compared.
_LOCATION_FIELDS = {"out", "latents", "tokenizer", "data_path", "init", "num_workers", "resume"}


def _check_recipe(path: Path, expected: dict, fast: bool | None) -> None:
    """Refuse a checkpoint whose stored recipe is not this mode's (e.g. FAST weights in full mode).

    A file without a stored recipe (saved by hand) cannot be checked and is used as it is.
    """
    stored = read_checkpoint(path).get("train_config")
    if stored is None:
        return
    differ = sorted(k for k, v in expected.items()
                    if k not in _LOCATION_FIELDS and stored.get(k) != v)
    if differ:
        mode = "FAST" if is_fast(fast) else "full"
        raise CheckpointError(
            f"{path} was trained with another recipe than {mode} mode's (fields {differ} differ), "
            f"e.g. the other mode's; use that mode, another run folder, or retrain=True.")


def tiny_tokenizer_config(fast: bool | None = None) -> TokenizerTrainConfig:
    """The course's tokenizer run in FAST or full mode (:data:`TOKENIZER_RECIPES`)."""
    preset, overrides = TOKENIZER_RECIPES[is_fast(fast)]
    return TokenizerTrainConfig.preset(preset, **copy.deepcopy(overrides))


def generator_config(fast: bool | None = None, **paths):
    """The course's generator run in FAST or full mode (:data:`GENERATOR_RECIPES`); ``paths``
    sets ``latents``, ``out`` and ``tokenizer``."""
    from minieq.train_generator import GeneratorTrainConfig

    preset, overrides = GENERATOR_RECIPES[is_fast(fast)]
    return GeneratorTrainConfig.preset(preset, **copy.deepcopy(overrides), **paths)


def tiny_tokenizer(run_dir: str | os.PathLike | None = None, fast: bool | None = None,
                   device: str | torch.device | None = None, retrain: bool = False):
    """Load ``run_dir/tokenizer.pt`` or train it; returns the EMA ColumnTokenizer in eval mode.

    ``run_dir`` defaults to :func:`course_dir` of the mode.

    ``device`` defaults to :func:`minieq.utils.pick_device` (CUDA, MPS, else CPU).

    Training writes its checkpoint, metrics and reconstruction grids to ``run_dir/tokenizer_run``
    and resumes from there if interrupted; ``tokenizer.pt`` holds only the EMA weights.
    """
    run_dir = Path(run_dir) if run_dir is not None else course_dir(fast)
    path = run_dir / "tokenizer.pt"
    device = torch.device(device) if device is not None else pick_device()
    cfg = tiny_tokenizer_config(fast)
    if path.exists() and not retrain:
        _check_recipe(path, cfg.to_dict(), fast)
        return load_checkpoint(path, map_location=device)
    work = run_dir / "tokenizer_run"
    partial = work / "checkpoint.pt"
    if retrain and work.exists():
        for old in [partial, work / "metrics.jsonl"]:
            old.unlink(missing_ok=True)
    ckpt = train_tokenizer(cfg, work, device=device)  # resumes from work/checkpoint.pt if it exists
    tok = load_checkpoint(ckpt)  # EMA weights
    save_checkpoint(path, tok, train_config=cfg.to_dict())
    return tok.to(device).eval()


def tiny_latents(tokenizer, run_dir: str | os.PathLike | None = None, fast: bool | None = None,
                 recompute: bool = False) -> Path:
    """``run_dir/latents.pt``: posterior means of the SynthScapes training set, with flips.

    Computed with :func:`minieq.cache_latents.cache_latents` unless the file already exists.
    """
    from minieq.cache_latents import cache_latents
    from minieq.data import SynthScapes

    path = (Path(run_dir) if run_dir is not None else course_dir(fast)) / "latents.pt"
    if path.exists() and not recompute:
        return path
    cfg = tiny_tokenizer_config(fast)
    data = SynthScapes(LATENT_IMAGES[is_fast(fast)], height=tokenizer.config.image_height,
                       width=cfg.image_width, seed=cfg.seed, split="train")
    return cache_latents(tokenizer, data, path, flips=True, batch_size=64)


# The course generator. FAST: the "fast" GeneratorTrainConfig preset (a 0.53M-parameter model
# sized for a CPU), 400 steps of batch 32, measured 2 min 40 s on one shared CPU thread (final
# loss ≈ 0.75; samples show each class's palette and horizon). Full: "course_gpu" (one GPU).
GENERATOR_RECIPES = {
    True: ("fast", {}),
    False: ("course_gpu", {}),
}


def tiny_generator(tokenizer=None, latents_path: str | os.PathLike | None = None,
                   run_dir: str | os.PathLike | None = None, fast: bool | None = None,
                   device: str | torch.device | None = None, retrain: bool = False):
    """Load ``run_dir/generator.pt`` or train it; returns ``(generator, latent_scale)``.

    The generator (EMA weights, eval mode) models tokens × ``latent_scale``; decode its samples
    with ``minieq.Pipeline(tokenizer, generator, latent_scale)``. Training reads the course
    latents (:func:`tiny_latents`, made with :func:`tiny_tokenizer` if needed), writes its
    checkpoint, metrics and sample grids to ``run_dir/generator_run`` and resumes from there
    if interrupted; ``generator.pt`` holds only the EMA weights and the latent scale.
    """
    from minieq.train_generator import train as train_generator

    run_dir = Path(run_dir) if run_dir is not None else course_dir(fast)
    path = run_dir / "generator.pt"
    device = torch.device(device) if device is not None else pick_device()
    if path.exists() and not retrain:
        _check_recipe(path, generator_config(fast).to_dict(), fast)
    else:
        work = run_dir / "generator_run"
        if retrain:
            for old in [work / "generator.pt", work / "metrics.jsonl"]:
                old.unlink(missing_ok=True)
        tok_path = run_dir / "tokenizer.pt"
        if latents_path is None:
            tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer(run_dir, fast=fast)
            latents_path = tiny_latents(tokenizer, run_dir, fast=fast)
        cfg = generator_config(fast, latents=str(latents_path), out=str(work),
                               tokenizer=str(tok_path) if tok_path.exists() else None)
        ckpt = read_checkpoint(train_generator(cfg, device=device))
        gen = load_checkpoint(work / "generator.pt")  # EMA weights
        save_checkpoint(path, gen, latent_scale=ckpt["latent_scale"], train_config=cfg.to_dict(),
                        train_tokens=ckpt.get("train_tokens", TRAIN_TOKENS))
    scale = float(read_checkpoint(path)["latent_scale"])
    return load_checkpoint(path, map_location=device), scale
