"""The course's models: the pretrained ones shipped with minieq, and load-or-train helpers for
training them from scratch (artifacts in ``runs/course/fast/`` or ``runs/course/full/``).

:func:`pretrained_tokenizer` and :func:`pretrained_generator` (from :mod:`minieq.pretrained`) are
what the demo shows by default, beside the from-scratch models. The ``scratch_*`` helpers load
their artifact if it exists and train (or compute) it otherwise, so the notebooks can run in any
order and a second run costs nothing (the uvadlc pattern, style.md).

FAST mode (``fast=None`` reads ``$MINIEQ_FAST``; unset means FAST, as in the notebooks) is a few
CPU minutes: the trainers' ``fast`` presets. ``MINIEQ_FAST=0`` is full mode, their
``course_gpu`` presets (meant for a GPU, also fine on a CPU overnight). The two modes never share
files: each has its own run folder (:func:`course_dir`), and a model trained with the other
mode's recipe is refused with a clear error instead of being reused.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from minieq.cache_latents import cache_latents
from minieq.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from minieq.data import SynthScapes
from minieq.generator_data import TRAIN_TOKENS
from minieq.pretrained import pretrained_generator, pretrained_pipeline, pretrained_tokenizer  # noqa: F401 (public API)
from minieq.train_generator import GeneratorTrainConfig
from minieq.train_generator import train as train_generator
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

# Each mode's trainer preset, the same name in both trainers: `python -m minieq.train_tokenizer
# --preset fast` trains exactly the FAST model. Full mode is one GPU: the "course_gpu" presets,
# 128-px SynthScapes with the paper's 16:1 columns, each ~1 A100-hour by a FLOP count (an
# estimate: python -m minieq.estimate). Offline the tokenizer objective is L1 + KL on σ-VAE
# samples (reduction "mean"): LPIPS, the DINO discriminator and the DINOv2 teacher need weight
# files. The FAST generator (a 0.53M-parameter model sized for a CPU) takes 400 steps of batch
# 32, measured 2 min 40 s on one shared CPU thread (final loss ≈ 0.75; samples show each class's
# palette and horizon).
MODE_PRESETS = {True: "fast", False: "course_gpu"}


def is_fast(fast: bool | None = None) -> bool:
    """``fast`` if given, else ``$MINIEQ_FAST`` ("0" means full mode; unset means FAST)."""
    if fast is not None:
        return fast
    return os.environ.get("MINIEQ_FAST", "1").strip().lower() not in ("0", "false", "no", "off")


def course_dir(fast: bool | None = None, root: str | os.PathLike = "runs/course") -> Path:
    """``root/fast`` or ``root/full``: FAST and full-mode artifacts never share a folder."""
    return Path(root) / ("fast" if is_fast(fast) else "full")


# Where a run's files live, not what it learns: left out when two recipes are compared.
_LOCATION_FIELDS = {"latents", "tokenizer", "data_path", "init", "num_workers"}


def _check_recipe(path: Path, expected, fast: bool | None) -> None:
    """Refuse a checkpoint whose stored recipe is not this mode's (e.g. FAST weights in full mode).

    A file without a stored recipe (saved by hand) cannot be checked and is used as it is.
    """
    stored = read_checkpoint(path).get("train_config")
    if stored is None:
        return
    stored = type(expected).upgrade(stored)  # a run saved before a field rename compares equal
    differ = sorted(k for k, v in expected.to_dict().items()
                    if k not in _LOCATION_FIELDS and stored.get(k) != v)
    if differ:
        mode = "FAST" if is_fast(fast) else "full"
        raise CheckpointError(
            f"{path} was trained with another recipe than {mode} mode's (fields {differ} differ), "
            f"e.g. the other mode's; use that mode, another run folder, or retrain=True.")


def scratch_tokenizer_config(fast: bool | None = None) -> TokenizerTrainConfig:
    """The recipe of the course's from-scratch tokenizer: the mode's preset (:data:`MODE_PRESETS`)."""
    return TokenizerTrainConfig.preset(MODE_PRESETS[is_fast(fast)])


def scratch_generator_config(fast: bool | None = None, **paths) -> GeneratorTrainConfig:
    """The recipe of the course's from-scratch generator: the mode's preset
    (:data:`MODE_PRESETS`); ``paths`` sets ``latents`` and ``tokenizer``."""
    return GeneratorTrainConfig.preset(MODE_PRESETS[is_fast(fast)], **paths)


def scratch_tokenizer(run_dir: str | os.PathLike | None = None, fast: bool | None = None,
                      device: str | torch.device | None = None, retrain: bool = False):
    """Load ``run_dir/tokenizer.pt`` or train it; returns the EMA ColumnTokenizer in eval mode.

    ``run_dir`` defaults to :func:`course_dir` of the mode; the recipe is
    :func:`scratch_tokenizer_config` (FAST: 1.3 M parameters, CPU minutes; full: the 24.7 M
    ``course_gpu`` model, a GPU). ``device`` defaults to :func:`minieq.utils.pick_device`.

    Training writes its checkpoint, metrics and reconstruction grids to ``run_dir/tokenizer_run``
    and resumes from there if interrupted (``retrain=True`` starts over); ``tokenizer.pt`` holds
    only the EMA weights.
    """
    run_dir = Path(run_dir) if run_dir is not None else course_dir(fast)
    path = run_dir / "tokenizer.pt"
    device = torch.device(device) if device is not None else pick_device()
    cfg = scratch_tokenizer_config(fast)
    if path.exists() and not retrain:
        _check_recipe(path, cfg, fast)
        return load_checkpoint(path, map_location=device)
    ckpt = train_tokenizer(cfg, run_dir / "tokenizer_run", fresh=retrain, device=device)
    tok = load_checkpoint(ckpt)  # EMA weights
    save_checkpoint(path, tok, train_config=cfg.to_dict())
    return tok.to(device).eval()


def scratch_latents(tokenizer, run_dir: str | os.PathLike | None = None, fast: bool | None = None,
                    recompute: bool = False) -> Path:
    """``run_dir/latents.pt``: posterior means of the tokenizer's SynthScapes training set, with
    flips. Computed with :func:`minieq.cache_latents.cache_latents` unless the file exists."""
    path = (Path(run_dir) if run_dir is not None else course_dir(fast)) / "latents.pt"
    if path.exists() and not recompute:
        return path
    cfg = scratch_tokenizer_config(fast)
    data = SynthScapes(cfg.num_images, height=tokenizer.config.image_height,
                       width=cfg.image_width, seed=cfg.seed, split="train")
    return cache_latents(tokenizer, data, path, flips=True, batch_size=64)


def scratch_generator(tokenizer=None, latents_path: str | os.PathLike | None = None,
                      run_dir: str | os.PathLike | None = None, fast: bool | None = None,
                      device: str | torch.device | None = None, retrain: bool = False):
    """Load ``run_dir/generator.pt`` or train it; returns ``(generator, latent_scale)``.

    The generator (EMA weights, eval mode) models tokens × ``latent_scale``; decode its samples
    with ``minieq.Pipeline(tokenizer, generator, latent_scale)``. Training reads the course
    latents (:func:`scratch_latents`, made with :func:`scratch_tokenizer` if needed), writes its
    checkpoint, metrics and sample grids to ``run_dir/generator_run`` and resumes from there
    if interrupted (``retrain=True`` starts over); ``generator.pt`` holds only the EMA weights
    and the latent scale.
    """
    run_dir = Path(run_dir) if run_dir is not None else course_dir(fast)
    path = run_dir / "generator.pt"
    device = torch.device(device) if device is not None else pick_device()
    if path.exists() and not retrain:
        _check_recipe(path, scratch_generator_config(fast), fast)
    else:
        tok_path = run_dir / "tokenizer.pt"
        if latents_path is None:
            tokenizer = tokenizer if tokenizer is not None else scratch_tokenizer(run_dir, fast=fast)
            latents_path = scratch_latents(tokenizer, run_dir, fast=fast)
        cfg = scratch_generator_config(fast, latents=str(latents_path),
                                       tokenizer=str(tok_path) if tok_path.exists() else None)
        work = run_dir / "generator_run"
        ckpt = read_checkpoint(train_generator(cfg, work, fresh=retrain, device=device))
        gen = load_checkpoint(work / "generator.pt")  # EMA weights
        save_checkpoint(path, gen, latent_scale=ckpt["latent_scale"], train_config=cfg.to_dict(),
                        train_tokens=ckpt.get("train_tokens", TRAIN_TOKENS))
    scale = float(read_checkpoint(path)["latent_scale"])
    return load_checkpoint(path, map_location=device), scale
