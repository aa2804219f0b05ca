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

SMOKE (``MINIEQ_SMOKE=1``, read by :func:`is_smoke` and nowhere else) is the course's smoke test,
for CI: every training the notebooks and the demo run is capped to a few steps at a small batch
(:func:`smoke_recipe`), and every sample, FD or evaluation count and every long strip to a few
images or tokens (:func:`cap`), so that the notebooks run in full mode on a CPU in minutes and
every path that only full mode takes is executed. Each cap prints a ``SMOKE: capped ...`` line.
What SMOKE trains is not a result: it lives in its own folders (``full-smoke``, ``fast-smoke``:
:func:`course_dir`), its recorded recipe is not the mode's (so :func:`_check_recipe` refuses it
anywhere else), and the notebooks' claims about trained models are not checked (:func:`claim`).

The paper's released models (the 256-px tokenizer and the Places-30 large generator), converted by
``python -m minieq.convert_official --out runs/official``, come in through :func:`official_dir`
(``$MINIEQ_OFFICIAL``) and :func:`official_pipeline`: notebook 08 draws a panorama with them.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from minieq import pretrained
from minieq.cache_latents import cache_latents
from minieq.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, read_checkpoint, save_checkpoint
from minieq.data import SynthScapes
from minieq.generator_data import TRAIN_TOKENS
from minieq.pipeline import Pipeline
from minieq.pretrained import pretrained_tokenizer  # noqa: F401 (public API)
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


# SMOKE's caps: a few optimizer steps of a few images, enough to run every line of a training run.
SMOKE_STEPS = 3
SMOKE_BATCH = 2
SMOKE_IMAGES = 16
SMOKE_SAMPLING_STEPS = 2  # Euler steps per token of a SMOKE generator (the course_gpu model: 50)
_ANNOUNCED: set[str] = set()  # SMOKE lines printed once per process


def _announce(line: str) -> None:
    """Print a SMOKE line the first time only: the course helpers ask for a recipe or a model often."""
    if line not in _ANNOUNCED:
        _ANNOUNCED.add(line)
        print(line)


def is_fast(fast: bool | None = None) -> bool:
    """``fast`` if given, else ``$MINIEQ_FAST`` ("0" means full mode; unset means FAST)."""
    if fast is not None:
        return fast
    return os.environ.get("MINIEQ_FAST", "1").strip().lower() not in ("0", "false", "no", "off")


def is_smoke() -> bool:
    """``$MINIEQ_SMOKE`` is set (to anything but "", "0", "false", "no", "off"): the smoke test.

    The one place that reads the switch; see the module docstring for what it changes.
    """
    return os.environ.get("MINIEQ_SMOKE", "").strip().lower() not in ("", "0", "false", "no", "off")


def cap(value, smoke_value, what: str):
    """``value``; under SMOKE ``smoke_value`` instead (the smaller one where both are numbers),
    announced as ``SMOKE: capped <what>: <value> -> <smoke_value>``.

    For counts of images, samples, strips, steps and lengths, e.g.
    ``fd_images = course.cap(64 if FAST else 512, 8, "FD images")``.
    """
    if not is_smoke():
        return value
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (value, smoke_value))
    capped = min(value, smoke_value) if numbers else smoke_value
    if capped != value:
        print(f"SMOKE: capped {what}: {value} -> {capped}")
    return capped


def claim(condition, message="") -> None:
    """``assert condition, message`` for a claim about trained models or measured statistics.

    Under SMOKE the models trained a few steps and the counts are a few images, so such a claim
    means nothing: a failing one prints ``SMOKE: claim not checked: <message>`` instead of
    failing. Contract, shape and parity checks stay plain ``assert``s.
    """
    if condition:
        return
    if is_smoke():
        print(f"SMOKE: claim not checked: {message}")
        return
    raise AssertionError(message)


def smoke_recipe(cfg):
    """A :class:`TokenizerTrainConfig` or :class:`GeneratorTrainConfig` capped for SMOKE
    (``cfg`` itself otherwise): :data:`SMOKE_STEPS` steps of :data:`SMOKE_BATCH` on at most
    :data:`SMOKE_IMAGES` images, logged every step and saved at the end, a sample grid only at
    the end, and the generator's flow head sampling with :data:`SMOKE_SAMPLING_STEPS` Euler
    steps. The model sizes stay the mode's, so SMOKE runs the full-mode models' code.
    """
    if not is_smoke():
        return cfg
    steps = min(cfg.steps or SMOKE_STEPS, SMOKE_STEPS)
    changes = dict(steps=steps, batch_size=min(cfg.batch_size, SMOKE_BATCH), log_every=1,
                   save_every=steps, num_workers=0)
    if isinstance(cfg, TokenizerTrainConfig):
        changes.update(num_images=min(cfg.num_images, SMOKE_IMAGES), image_every=0)
    else:
        changes.update(synth_images=min(cfg.synth_images, SMOKE_IMAGES), sample_every=0,
                       model_overrides={**cfg.model_overrides, "num_sampling_steps": SMOKE_SAMPLING_STEPS})
    line = f"SMOKE: capped the {type(cfg).__name__} recipe: " + ", ".join(
        f"{k} {getattr(cfg, k)} -> {v}" for k, v in changes.items()
        if k in ("steps", "batch_size", "num_images", "synth_images") and getattr(cfg, k) != v)
    if "sample_every" in changes:
        line += f", sampling with {SMOKE_SAMPLING_STEPS} Euler steps per token"
    _announce(line)
    return dataclasses.replace(cfg, **changes)


def smoke_sampling(generator):
    """``generator``; under SMOKE its flow head samples with :data:`SMOKE_SAMPLING_STEPS` solver
    steps per token (its config's ``num_sampling_steps`` too), the sampling cost of a few images."""
    steps = generator.config.num_sampling_steps
    if is_smoke() and steps > SMOKE_SAMPLING_STEPS:
        _announce(f"SMOKE: capped the flow head's steps per sampled token: {steps} -> {SMOKE_SAMPLING_STEPS}")
        generator.config.num_sampling_steps = generator.head.num_sampling_steps = SMOKE_SAMPLING_STEPS
    return generator


def pretrained_generator(device: str | torch.device | None = None):
    """:func:`minieq.pretrained.pretrained_generator` (``(generator, latent_scale)``), sampling
    with fewer steps under SMOKE (:func:`smoke_sampling`)."""
    generator, scale = pretrained.pretrained_generator(device)
    return smoke_sampling(generator), scale


def pretrained_pipeline(device: str | torch.device | None = None, decoder: str = "textured"):
    """:func:`minieq.pretrained.pretrained_pipeline`, sampling with fewer steps under SMOKE."""
    pipe = pretrained.pretrained_pipeline(device, decoder)
    smoke_sampling(pipe.generator)
    return pipe


# The folder of the converted official release; relative paths are taken from the repository root.
OFFICIAL_ENV = "MINIEQ_OFFICIAL"
CONVERT_HINT = ("python -m minieq.convert_official --tokenizer tokenizer.ckpt --generator places_large.ckpt "
                "--out runs/official (README: \"The paper's released weights\")")


def official_dir(root: str | os.PathLike = ".") -> Path | None:
    """The folder ``$MINIEQ_OFFICIAL`` names (relative to ``root``), or None when it is unset.

    Opt-in by design: the released models are 0.86 B parameters at 256 px, and a notebook's FAST
    run must not change because a converted folder happens to exist.
    """
    value = os.environ.get(OFFICIAL_ENV, "").strip()
    return Path(root) / value if value else None


def official_pipeline(folder: str | os.PathLike, device: str | torch.device | None = None) -> Pipeline:
    """``Pipeline.from_checkpoints(folder/tokenizer.pt, folder/generator.pt)``: the paper's released
    models as :mod:`minieq.convert_official` writes them (official latent scale, 16 training
    tokens, class ids 0-29), sampling with fewer steps under SMOKE (:func:`smoke_sampling`).

    :raises FileNotFoundError: one line naming the missing file and the command that writes it.
    """
    folder = Path(folder)
    for name in ("tokenizer.pt", "generator.pt"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} not found: convert the release first, {CONVERT_HINT}")
    device = torch.device(device) if device is not None else pick_device()
    pipe = Pipeline.from_checkpoints(folder / "tokenizer.pt", folder / "generator.pt", device=device)
    smoke_sampling(pipe.generator)
    return pipe


def course_dir(fast: bool | None = None, root: str | os.PathLike = "runs/course") -> Path:
    """``root/fast`` or ``root/full``: FAST and full-mode artifacts never share a folder; under
    SMOKE ``root/fast-smoke`` or ``root/full-smoke``, so no real run ever finds a SMOKE model."""
    return Path(root) / (("fast" if is_fast(fast) else "full") + ("-smoke" if is_smoke() else ""))


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
        mode = ("FAST" if is_fast(fast) else "full") + (" SMOKE" if is_smoke() else "")
        raise CheckpointError(
            f"{path} was trained with another recipe than {mode} mode's (fields {differ} differ), "
            f"e.g. the other mode's; use that mode, another run folder, or retrain=True.")


def scratch_tokenizer_config(fast: bool | None = None) -> TokenizerTrainConfig:
    """The recipe of the course's from-scratch tokenizer: the mode's preset (:data:`MODE_PRESETS`),
    capped under SMOKE (:func:`smoke_recipe`)."""
    return smoke_recipe(TokenizerTrainConfig.preset(MODE_PRESETS[is_fast(fast)]))


def scratch_generator_config(fast: bool | None = None, **paths) -> GeneratorTrainConfig:
    """The recipe of the course's from-scratch generator: the mode's preset
    (:data:`MODE_PRESETS`), capped under SMOKE; ``paths`` sets ``latents`` and ``tokenizer``."""
    return smoke_recipe(GeneratorTrainConfig.preset(MODE_PRESETS[is_fast(fast)], **paths))


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
    ckpt = read_checkpoint(path)
    return smoke_sampling(model_from_checkpoint(ckpt, str(path), map_location=device)), float(ckpt["latent_scale"])
