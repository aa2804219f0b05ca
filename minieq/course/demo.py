"""``make demo``: the whole minieq pipeline in fast CPU mode, writing pictures to ``--out``.

Two sets of models are shown side by side, labelled in every figure: the **pretrained course
models** shipped with minieq (hours of CPU training, :mod:`minieq.pretrained`), and the FAST
models trained **from scratch** here in a few CPU minutes.

1. data: a SynthScapes class grid (32×128, one row per class) and an 8×-wide ground-truth strip;
2. tokenizers: held-out PSNR/SSIM against three no-training baselines, reconstructions and the
   token-by-token reconstruction (paper Fig. 2/8) as PNG + GIF;
3. latents and generator: the FAST tokenizer's training set encoded once (with flips), then
   the tiny windowed-causal generator trained on it (or loaded);
4. samples: every class at the training width, long images 8× and 64× the training width (paper
   Fig. 5), sampled with the sliding-window KV cache (and the midpoint ODE solver, 5 steps:
   ``--solver``/``--steps``) and decoded in bounded memory, and the
   regeneration of chosen tokens (paper Fig. 6);
5. an offline Fréchet distance (EfficientNet-Lite0 features; not comparable with published FID)
   of each model's reconstructions and samples, next to its floor and the PCA codec.

FAST models land in ``<out>/models/fast`` and are reused by the next run; ``summary.json``
holds the measured numbers. Usage: ``python -m minieq.course.demo --out runs/demo``.
Under ``MINIEQ_SMOKE=1`` (:mod:`minieq.course`) every training, image count and strip is capped
(the CI runs ``--full`` that way, in about a minute); its models go to ``<out>/models/*-smoke``.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from minieq import pretrained as shipped  # module attributes: a test points them elsewhere
from minieq.analysis import seam_score
from minieq.checkpoint import CheckpointError, read_checkpoint
from minieq.course import (cap, course_dir, scratch_generator, scratch_latents, scratch_tokenizer,
                           smoke_sampling)
from minieq.data import SynthScapes
from minieq.evaluation import PCACodec, evaluate_tokenizer, heldout_images
from minieq.flow import SOLVERS
from minieq.generator_data import TRAIN_TOKENS
from minieq.metrics import baseline_reconstructions, frechet_distance, image_features, kid, psnr
from minieq.pipeline import Pipeline
from minieq.synthscapes import SYNTHSCAPES_CLASSES, render_synthscapes
from minieq.utils import pick_device, seed_everything
from minieq.viz import (labelled_stack, panorama, reconstruction_grid, regeneration_picture,
                        save_gif, save_image_grid, token_by_token_figure, token_by_token_frames)


def run_data_demo(out_dir: str | Path, per_class: int = 4, seed: int = 0) -> dict[str, Path]:
    """Render the class grid and the 8×-wide strip into ``out_dir``; returns the PNG paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = torch.arange(len(SYNTHSCAPES_CLASSES)).repeat_interleave(per_class)
    grid = render_synthscapes(labels, 32, 128, seed=seed)                # (8 * per_class, 3, 32, 128)
    strip = render_synthscapes(torch.tensor([0]), 32, 1024, seed=seed, indices=torch.tensor([10**6]))
    paths = {"class_grid": save_image_grid(out_dir / "synthscapes_classes.png", grid, nrow=per_class),
             "wide_strip": out_dir / "synthscapes_strip_32x1024.png"}
    Image.fromarray(panorama(strip, rows=1)).save(paths["wide_strip"])
    return paths


def _heldout(tokenizer, num_images: int, seed: int) -> torch.Tensor:
    """The held-out renders at the tokenizer's height and training width, on its device."""
    cfg = tokenizer.config
    device = next(tokenizer.parameters()).device
    return heldout_images(cfg.image_height, TRAIN_TOKENS * cfg.column_width, num_images,
                          seed).to(device)  # (B, 3, H, W)


@torch.no_grad()
def token_by_token(tokenizer, num_images: int = 64, seed: int = 0) -> list[torch.Tensor]:
    """The N + 1 token-by-token frames (paper Fig. 2/8) of the first held-out image.

    The random tokens take the per-channel statistics of all ``num_images`` held-out images'
    tokens, as in notebook 02, rather than those of the one image being revealed.
    """
    x = _heldout(tokenizer, num_images, seed)
    return token_by_token_frames(tokenizer, x[0], generator=torch.Generator().manual_seed(seed),
                                 reference=tokenizer.encode(x))


def save_token_by_token(frames: dict[str, list[torch.Tensor]], path: Path) -> Path:
    """``path``: :func:`minieq.viz.token_by_token_figure` of label → frames, side by side."""
    token_by_token_figure(frames).savefig(path)
    return path


@torch.no_grad()
def run_tokenizer_demo(tokenizer, out_dir: Path, num_images: int = 64, seed: int = 0, tag: str = "",
                       pca=None, label: str = "token-by-token reconstruction") -> dict:
    """Held-out reconstruction metrics, a reconstruction grid and the token-by-token figure.

    Files are named ``reconstructions{tag}.png`` and ``token_by_token{tag}.png/.gif`` (the PNG
    titled ``label``); ``pca`` (a fitted column :class:`minieq.evaluation.PCACodec`) adds the
    no-training references (row/column means, the PCA column codec).
    """
    cfg = tokenizer.config
    x = _heldout(tokenizer, num_images, seed)
    tokens = tokenizer.encode(x)  # (B, N, C) posterior means
    recon = tokenizer.decode(tokens[:8]).clamp(-1, 1)
    Image.fromarray(reconstruction_grid(x[:8].cpu(), recon.cpu())).save(out_dir / f"reconstructions{tag}.png")
    frames = token_by_token(tokenizer, num_images, seed)
    save_gif(frames, out_dir / f"token_by_token{tag}.gif")
    save_token_by_token({label: frames}, out_dir / f"token_by_token{tag}.png")
    # The same numbers as the shipped models' recorded ones (evaluated on a CPU copy).
    heldout = evaluate_tokenizer(copy.deepcopy(tokenizer), num_images, seed)
    summary = {"heldout_psnr_db": heldout["psnr_db"], "heldout_ssim": heldout["ssim"],
               "heldout_images": num_images}
    if pca is not None:
        summary.update({f"baseline_{name}_psnr_db": float(psnr(x, b).mean())
                        for name, b in baseline_reconstructions(x, cfg.column_width).items()})
        # The best linear codec with the same token budget, fitted on training images.
        summary["baseline_column_pca_psnr_db"] = float(psnr(x.cpu(), pca.reconstruct(x.cpu())).mean())
    return summary


def fit_column_pca(cfg, width: int, seed: int = 0, num_images: int = 1024):
    """A column :class:`minieq.evaluation.PCACodec` with the tokenizer's budget (its token
    channels per column), fitted on training renders."""
    train = SynthScapes(num_images, height=cfg.image_height, width=width, seed=seed, split="train")
    images = torch.stack([train[i][0] for i in range(len(train))])  # (num_images, 3, H, width)
    return PCACodec(images, "column", cfg.column_width, cfg.embed_dim)


@torch.no_grad()
def run_sampling_demo(pipe, out_dir: Path, cfg: float = 3.0, per_class: int = 4, seed: int = 0,
                      tag: str = "", long_factors: tuple[int, ...] = (8, 64), **sampler) -> dict:
    """Class samples at the training width (``samples_by_class{tag}.png``), long panoramas
    ``long_{factor}x{tag}_<class>.png`` and the regeneration figure ``regeneration{tag}.png``.
    ``sampler`` (``solver``, ``steps``) picks the flow head's ODE solver."""
    num_classes = pipe.generator.config.num_classes
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    samples = pipe.generate(labels, cfg=cfg, seed=seed, **sampler)  # (C·per_class, 3, H, pipe.train_width)
    save_image_grid(out_dir / f"samples_by_class{tag}.png", samples.cpu(), nrow=per_class)
    train_width = pipe.train_width
    stats = {"cfg": cfg}
    for factor in long_factors:
        # 64×: mountains and forest; the two strips are sampled as one batch, token by token,
        # so the second costs almost nothing (41.5 s for one strip or two, measured).
        classes = range(num_classes) if factor <= 8 else (0, 3)
        start = time.perf_counter()
        long = pipe.generate(list(classes), width=factor * train_width, cfg=cfg, seed=seed, **sampler)
        stats[f"long_{factor}x_seconds"] = round(time.perf_counter() - start, 1)
        stats[f"long_{factor}x_seam_score"] = seam_score(long, pipe.column_width)
        rows = 1 if factor <= 8 else 8  # wrap the 64× strips so the PNG stays viewable
        for label, image in zip(classes, long):
            Image.fromarray(panorama(image.cpu(), rows=rows)).save(
                out_dir / f"long_{factor}x{tag}_{SYNTHSCAPES_CLASSES[label]}.png")
    run_regeneration_demo(pipe, out_dir / f"regeneration{tag}.png", cfg=cfg, seed=seed, **sampler)
    return stats


@torch.no_grad()
def run_regeneration_demo(pipe, path: Path, cfg: float = 3.0, seed: int = 0, num_tokens: int = 48,
                          **sampler) -> Path:
    """Paper Fig. 6: a 3×-wide mountain strip, its right half redrawn twice and a middle span
    redrawn once, each redrawn span marked in red above its version and its change below."""
    tokens = pipe.sample_tokens([0], num_tokens, cfg=cfg, seed=seed, **sampler)  # (1, N, C)
    idx = torch.arange(num_tokens)
    masks = [idx < num_tokens // 2, idx < num_tokens // 2,
             (idx < num_tokens // 2 - 4) | (idx >= num_tokens // 2 + 4)]
    versions = [pipe.regenerate(tokens, keep, [0], cfg=cfg, seed=seed + 1 + i, **sampler)[0][0]
                for i, keep in enumerate(masks)]
    picture = regeneration_picture(pipe.decode(tokens)[0], versions, masks, pipe.column_width)
    Image.fromarray(picture).save(path)
    return path


@torch.no_grad()
def run_fd_demo(tokenizers: dict, pipes: dict, pca, num_images: int = 128, cfg: float = 3.0,
                seed: int = 0, **sampler) -> dict[str, dict[str, float]]:
    """Offline FD / KID to training renders of held-out renders (the floor), the PCA codec
    ``pca``, each tokenizer's reconstructions and each generator's class samples (equal class
    mix and size).

    EfficientNet-Lite0 features: NOT comparable with published FID numbers (Inception-v3).
    """
    first = next(iter(tokenizers.values())).config
    h, w = first.image_height, TRAIN_TOKENS * first.column_width
    labels = torch.arange(num_images) % len(SYNTHSCAPES_CLASSES)
    train = render_synthscapes(labels, h, w, seed=seed)  # (num_images, 3, H, W) training renders
    real = image_features(train)
    heldout = heldout_images(h, w, num_images, seed)  # the same class mix (image i: class i mod 8)
    sets = {"held-out renders (floor)": heldout,
            "PCA column codec": pca.reconstruct(heldout)}
    for name, tok in tokenizers.items():
        device = next(tok.parameters()).device
        sets[f"{name} tokenizer reconstructions"] = torch.cat(
            [tok.decode(tok.encode(b.to(device))).clamp(-1, 1).cpu() for b in heldout.split(64)])
    for name, pipe in pipes.items():
        sets[f"{name} samples (cfg {cfg:g})"] = torch.cat(
            [pipe.generate(b, cfg=cfg, seed=seed + i, **sampler).cpu() for i, b in enumerate(labels.split(64))])
    scores = {}
    for name, images in sets.items():
        fake = image_features(images)
        # Subsets of half the set, so that their spread says how stable the KID estimate is.
        kid_mean, kid_std = kid(real, fake, subsets=100, subset_size=max(2, num_images // 2))
        scores[name] = {"fd_lite0": frechet_distance(real, fake), "kid_lite0": kid_mean, "kid_lite0_std": kid_std}
    return scores


def load_pretrained(device) -> tuple | None:
    """``(tokenizer, generator, latent_scale)`` shipped with minieq, or None (reason printed)."""
    try:
        tok = shipped.pretrained_tokenizer(device)
        gen, scale = shipped.pretrained_generator(device, few_step=False)  # the demo samples with --solver
    except CheckpointError as err:
        print(f"[pretrained] not available, showing the from-scratch models only: {err}")
        return None
    return tok, smoke_sampling(gen), scale


def compare_figure(out_dir: Path, name: str, labels: dict[str, str]) -> Path:
    """``<name>.png``: the per-model pictures ``<name>_<model>.png`` stacked, each under its label."""
    panels = [(label, np.asarray(Image.open(out_dir / f"{name}_{model}.png").convert("RGB")))
              for model, label in labels.items()]
    return labelled_stack(panels, out_dir / f"{name}.png")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale")
    parser.add_argument("--full", action="store_true", help="train the full-mode (GPU) recipes, not FAST")
    parser.add_argument("--data_only", action="store_true", help="only render the SynthScapes pictures")
    parser.add_argument("--solver", default="midpoint", choices=SOLVERS,
                        help="flow-head ODE solver for every sample (euler = the official sampler)")
    parser.add_argument("--steps", type=int, default=5,
                        help="solver steps per token; midpoint-5 (10 head calls) is more accurate than "
                             "the course models' Euler-25 (python -m minieq.bench.solvers) and 2.5x cheaper")
    parser.add_argument("--fd_images", type=int, default=64,
                        help="images per set for the offline FD (compare values at equal sizes only)")
    args = parser.parse_args(argv)
    seed_everything(args.seed)
    out, fast = args.out, not args.full
    # MINIEQ_SMOKE=1 (minieq.course): a few images and short strips; its models in models/*-smoke.
    sampler = {"solver": args.solver, "steps": cap(args.steps, 1, "solver steps per token")}
    fd_images, num_images = cap(args.fd_images, 8, "FD images"), cap(64, 8, "held-out images")
    per_class, long_factors = cap(4, 1, "samples per class"), cap((8, 64), (2, 16), "long-strip widths")
    models = course_dir(fast, out / "models")
    device = pick_device()
    timings = {}

    def stage(name: str, fn):
        start = time.perf_counter()
        result = fn()
        timings[name] = round(time.perf_counter() - start, 1)
        print(f"[{name}] done in {timings[name]} s")
        return result

    print(f"[data] rendering SynthScapes ({len(SYNTHSCAPES_CLASSES)} classes: {', '.join(SYNTHSCAPES_CLASSES)})")
    for name, path in stage("data", lambda: run_data_demo(out, seed=args.seed)).items():
        print(f"[data] {name}: {path}")
    if args.data_only:
        return {}
    pretrained = stage("pretrained", lambda: load_pretrained(device))
    labels, tokenizers, pipes = {}, {}, {}
    if pretrained is not None:
        steps = read_checkpoint(shipped.TOKENIZER_FILE)["step"]
        labels["pretrained"] = (f"pretrained course model (shipped; tokenizer trained {steps} steps, hours on a "
                                "CPU; textured decoder: + adversarial + perceptual fine-tuning)")
        tokenizers["pretrained"] = pretrained[0]
        pipes["pretrained"] = Pipeline(*pretrained)
    labels["scratch"] = "from scratch here (FAST: a few CPU minutes)" if fast else "from scratch here (full mode)"
    print(f"[tokenizer] device {device}; loading or training the from-scratch tokenizer in {models}")
    tokenizers["scratch"] = stage("tokenizer", lambda: scratch_tokenizer(models, fast=fast, device=device))

    summary = {"sampler": sampler, "models": {name: {"label": label} for name, label in labels.items()}}
    cfg = tokenizers["scratch"].config
    pca = stage("pca", lambda: fit_column_pca(cfg, 16 * cfg.column_width, args.seed,  # fitted once, used twice
                                              num_images=cap(1024, 16, "PCA images")))
    for name, tok in tokenizers.items():
        rec = stage(f"reconstruction {name}", lambda: run_tokenizer_demo(
            tok, out, num_images, seed=args.seed, tag=f"_{name}", pca=pca if name == "scratch" else None,
            label=labels[name]))
        if name == "scratch":
            summary["baselines"] = {k: rec.pop(k) for k in list(rec) if k.startswith("baseline_")}
        summary["models"][name].update(rec)
        print(f"[reconstruction] {labels[name]}: held-out PSNR {rec['heldout_psnr_db']:.2f} dB, "
              f"SSIM {rec['heldout_ssim']:.3f}")
    b = summary["baselines"]
    print(f"[reconstruction] no-training baselines: row mean {b['baseline_row_mean_psnr_db']:.2f} dB, "
          f"column mean {b['baseline_column_mean_psnr_db']:.2f} dB; a linear codec with the same "
          f"{tokenizers['scratch'].config.embed_dim} numbers per column, fitted by PCA: "
          f"{b['baseline_column_pca_psnr_db']:.2f} dB")

    latents = stage("latents", lambda: scratch_latents(tokenizers["scratch"], models, fast=fast))
    gen, scale = stage("generator", lambda: scratch_generator(tokenizers["scratch"], latents, models,
                                                          fast=fast, device=device))
    pipes["scratch"] = Pipeline(tokenizers["scratch"], gen, scale)
    for name, pipe in pipes.items():
        # Long strips from the default model only (the pretrained one when shipped): the 64×
        # strips cost 40+ s on a CPU, and make demo has to stay within minutes.
        factors = long_factors if name == next(iter(pipes)) else ()
        summary["models"][name].update(stage(f"sampling {name}", lambda: run_sampling_demo(
            pipe, out, cfg=args.cfg, per_class=per_class, seed=args.seed, tag=f"_{name}",
            long_factors=factors, **sampler)))
        summary["models"][name]["latent_scale"] = pipe.latent_scale
    for figure in ("reconstructions", "samples_by_class", "regeneration"):
        compare_figure(out, figure, labels)
    # The token-by-token frames side by side, one column per model (a few decodes each).
    save_token_by_token({labels[name]: token_by_token(tok, num_images, seed=args.seed)
                         for name, tok in tokenizers.items()}, out / "token_by_token.png")

    def fd_tables() -> dict:
        # One table per image size, each with its own floor and PCA codec: in full mode the
        # from-scratch models make 128-px images, the pretrained ones 32-px images.
        heights = {name: tok.config.image_height for name, tok in tokenizers.items()}
        scores = {}
        for height in dict.fromkeys(heights.values()):
            names = [name for name in tokenizers if heights[name] == height]
            own = tokenizers[names[0]].config
            family_pca = pca if height == cfg.image_height else fit_column_pca(
                own, 16 * own.column_width, args.seed, num_images=cap(1024, 16, "PCA images"))
            table = run_fd_demo({n: tokenizers[n] for n in names}, {n: pipes[n] for n in names}, family_pca,
                                fd_images, cfg=args.cfg, seed=args.seed, **sampler)
            size = "" if len(set(heights.values())) == 1 else f", {height} px"
            scores.update({name + size: v for name, v in table.items()})
        return scores

    fd = stage("fd", fd_tables)
    summary["fd_lite0"] = fd
    print(f"[fd] offline Fréchet distance / KID to {fd_images} training renders, {fd_images} "
          "images per set, on EfficientNet-Lite0 features (NOT comparable with published FID numbers):")
    for name, v in fd.items():
        print(f"[fd]   {name:<40} FD {v['fd_lite0']:8.2f}   KID {v['kid_lite0']:.4f} ± {v['kid_lite0_std']:.4f}")
    summary["seconds"] = timings
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"[done] pictures in {out}/ (each comparing the models, labelled): reconstructions.png, "
          f"token_by_token.png, samples_by_class.png, regeneration.png; per model: *_pretrained.png / "
          f"*_scratch.png, token_by_token_*.gif, long_8x_*.png, long_64x_*.png; numbers in {out}/summary.json")
    return summary


if __name__ == "__main__":
    main()
