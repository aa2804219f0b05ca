"""Long-image fidelity, a metric the paper does not have.

Equivariance (Sec. 3.3) makes every position of a strip the same task, so a crop of the training
width cut at any x-offset of a strip 8x-64x the training width should look like a training image.
This module measures it: the offline Fréchet distance (EfficientNet-Lite0 features,
:mod:`minieq.metrics`) between the generated crops at each offset and ground-truth images of the
same classes, with the seam score (:func:`minieq.analysis.seam_score`) of the same crops beside
it. An equivariant generator gives a flat curve.

Yardsticks, all at the same sample size (FD is biased upward by small samples): the FD between
the reference set and other disjoint sets of real images of the same classes (the noise level,
mean and spread over several sets); the FD of tokenizer reconstructions of real images (the
generator cannot beat its tokenizer); and, where ground truth exists at any width (SynthScapes),
the same curve for ground-truth strips: crops of one strip share its scene, so even a perfect
generator's curve wanders from offset to offset by about as much as that one.

One sampling run serves every length: with a constant guidance scale the sampler is causal and
draws its noise token by token, so the strips 8x, 16x and 32x the training width are exact
prefixes (in tokens) of the 64x ones; only the longest strips are sampled and decoded, and the
curve is read up to each length (``per_length`` in the result).

    python -m minieq.experiments long_fidelity                      # CPU: the course models
    python -m minieq.experiments long_fidelity --scale paper --tokenizer TOK.pt \\
        --generator GEN.pt --data places30 --data_path /data/places30

Legend: B strips, N tokens, C channels, H/W height/width in pixels.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from matplotlib.figure import Figure
from torch.utils.data import Dataset

from minieq.analysis import seam_score
from minieq.cli import user_errors
from minieq.config import ConfigBase
from minieq.data import DATASETS, SynthScapes, build_dataset, dataset_names
from minieq.experiments import experiment_parser, write_result
from minieq.metrics import frechet_distance, image_features
from minieq.pipeline import Pipeline
from minieq.pretrained import pretrained_generator, pretrained_tokenizer
from minieq.synthscapes import render_synthscapes
from minieq.utils import pick_device
from minieq.viz import panorama


@dataclass
class FidelityConfig(ConfigBase):
    """What one long-fidelity measurement samples and compares (presets: ``cpu``, ``paper``)."""

    multiples: list[int] = field(default_factory=lambda: [8, 16, 32, 64])  # strip lengths / training width
    strips_per_class: int = 6        # strips of each class = crops per offset / number of classes
    classes: list[int] | None = None  # default: every class of the generator
    crops: int = 16                  # x-offsets measured, evenly spaced, first and last included
    cfg: float = 2.0                 # guidance scale (the course notebooks' value)
    cfg_schedule: str = "constant"   # the same guidance at every position: stationary, and prefixes
    temperature: float = 1.0
    noise_sets: int = 4              # disjoint real sets compared with the reference (noise level)
    batch_size: int = 16             # strips sampled and decoded at once

    PRESETS = {
        # CPU, ~5 min on one thread: 48 strips of 1024 tokens, 16 offsets, 768 generated crops.
        "cpu": {},
        # A GPU: 30 Places classes x 50 strips of 64 x 16 tokens (256 x 16384 px), every offset;
        # cfg 7.0 is the value minieq's API notes use for the official model (tune it per model).
        "paper": dict(strips_per_class=50, crops=64, cfg=7.0, batch_size=64),
    }


def crop_offsets(num_tokens: int, crop_tokens: int, count: int) -> list[int]:
    """Token offsets of ``count`` non-overlapping crops ``crop_tokens`` wide, evenly spread over a
    strip of ``num_tokens`` (the first and the last crop always included; all of them if fewer)."""
    slots = num_tokens // crop_tokens
    if slots < 1 or count < 1:
        raise ValueError(f"a strip of {num_tokens} tokens holds no {crop_tokens}-token crop (count {count})")
    index = torch.linspace(0, slots - 1, min(count, slots)).round().long().unique()
    return [int(i) * crop_tokens for i in index]


def class_matched_images(dataset: Dataset, labels: torch.Tensor, sets: int, seed: int = 0) -> list[torch.Tensor]:
    """``sets`` disjoint sets of real images, each holding one image of class ``labels[i]`` per i.

    :param dataset: yields ``(image, label)`` and has a ``labels`` sequence (SynthScapes,
        ImageFiles).
    :return: ``sets`` tensors (len(labels), 3, H, W); images drawn in a seeded random order.
    """
    pool = torch.as_tensor(dataset.labels)
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))
    queues = {int(c): order[pool[order] == c].tolist() for c in labels.unique()}
    need = {c: int((labels == c).sum()) * sets for c in queues}
    short = {c: (len(queues[c]), n) for c, n in need.items() if len(queues[c]) < n}
    if short:
        raise ValueError(f"the reference data set has too few images of some classes "
                         f"(class: (have, need)) {short}")
    out = []
    for _ in range(sets):
        out.append(torch.stack([dataset[queues[int(c)].pop()][0] for c in labels]))  # (B, 3, H, W)
    return out


@torch.no_grad()
def sample_strips(pipe: Pipeline, labels: torch.Tensor, num_tokens: int, config: FidelityConfig,
                  seed: int = 0) -> torch.Tensor:
    """(B, num_tokens, C) tokens on the CPU, sampled ``config.batch_size`` strips at a time."""
    parts = []
    for i, chunk in enumerate(labels.split(config.batch_size)):
        parts.append(pipe.sample_tokens(chunk, num_tokens, cfg=config.cfg, cfg_schedule=config.cfg_schedule,
                                        temperature=config.temperature, seed=seed + i).cpu())
    return torch.cat(parts)


@torch.no_grad()
def decode_strips(pipe: Pipeline, tokens: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(B, 3, H, N · column width) images on the CPU, decoded ``batch_size`` strips at a time."""
    return torch.cat([pipe.decode(t.to(pipe.device)).cpu() for t in tokens.split(batch_size)])


def measure(strips: torch.Tensor, real_sets: list[torch.Tensor], crop_width: int, offsets_px: list[int],
            column_width: int, recon: torch.Tensor | None = None) -> dict:
    """FD and seam score of the ``crop_width``-px crops of ``strips`` at each offset.

    :param strips: (B, 3, H, W) generated strips.
    :param real_sets: disjoint real sets, each (B, 3, H, crop_width): the first is the reference
        of every FD, the others give the noise level (their FDs to the reference).
    :param recon: (B, 3, H, crop_width) tokenizer reconstructions of real images not in the
        reference set (optional).
    :return: lists ``fd`` and ``seam`` (one per offset), ``noise_fds``, ``real_seam``,
        ``recon_fd`` (None without ``recon``).
    """
    if len(real_sets) < 2:
        raise ValueError("measure needs a reference set and at least one more real set (the noise level)")
    if any(s.shape[0] != strips.shape[0] or s.shape[-1] != crop_width for s in real_sets):
        raise ValueError(f"every real set must hold {strips.shape[0]} images {crop_width} px wide")
    reference = image_features(real_sets[0])  # (B, F)
    fds, seams = [], []
    for x in offsets_px:
        crops = strips[..., x:x + crop_width]  # (B, 3, H, crop_width)
        fds.append(frechet_distance(reference, image_features(crops)))
        seams.append(seam_score(crops, column_width))
    return {
        "fd": fds, "seam": seams,
        "noise_fds": [frechet_distance(reference, image_features(s)) for s in real_sets[1:]],
        "real_seam": seam_score(real_sets[0], column_width),
        "recon_fd": None if recon is None else frechet_distance(reference, image_features(recon)),
    }


def summarize(curve: dict, offsets: list[int], crop_tokens: int, multiples: list[int]) -> dict:
    """Is the curve flat? Its drift (mean FD of the last quarter of offsets minus the first
    quarter's) and least-squares slope, against the noise level of real-vs-real FDs."""
    fd = torch.tensor(curve["fd"], dtype=torch.float64)
    x = torch.tensor(offsets, dtype=torch.float64)
    quarter = max(1, len(fd) // 4)
    noise = torch.tensor(curve["noise_fds"], dtype=torch.float64)
    noise_std = float(noise.std()) if len(noise) > 1 else 0.0
    slope = float(((x - x.mean()) * (fd - fd.mean())).sum() / ((x - x.mean()) ** 2).sum().clamp_min(1e-12))
    drift = float(fd[-quarter:].mean() - fd[:quarter].mean())
    per_length = {}
    for m in multiples:
        inside = x < m * crop_tokens  # offsets of crops that fit in the strip m training widths long
        per_length[f"{m}x"] = {"mean_fd": float(fd[inside].mean()), "max_fd": float(fd[inside].max()),
                               "mean_seam": float(torch.tensor(curve["seam"])[inside].mean())}
    return {
        "fd_first_crop": float(fd[0]), "fd_mean": float(fd.mean()),
        "fd_std": float(fd.std()) if len(fd) > 1 else 0.0,
        "fd_drift_last_minus_first_quarter": drift, "fd_slope_per_1000_tokens": slope * 1000,
        "noise_fd_mean": float(noise.mean()), "noise_fd_std": noise_std,
        # A rough verdict, stated with its rule: the drift within two spreads of the real-vs-real FDs.
        "flat_within_2_noise_std": abs(drift) <= 2 * noise_std,
        "per_length": per_length,
    }


def synthscapes_strips(seed: int) -> Callable[[torch.Tensor, int, int], torch.Tensor]:
    """Ground-truth long strips for :func:`run`: ``(labels, height, width) -> (B, 3, H, W)``
    SynthScapes renders. SynthScapes is stationary along x, so every crop of a long render is
    distributed like a training image, and the FD curve of these strips is the yardstick for the
    generated one: it shows how much a curve wanders from offset to offset when all crops of a
    strip share the strip's scene (its palette, its ridge heights)."""
    def render(labels: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return render_synthscapes(labels, height, width, seed=seed)

    return render


def run(pipe: Pipeline, dataset: Dataset, config: FidelityConfig | None = None, seed: int = 0,
        truth: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None,
        keep_strips: bool = False) -> dict:
    """Sample strips ``max(config.multiples)`` training widths long, measure FD and seams per offset.

    :param pipe: tokenizer + generator (column layout).
    :param dataset: ground-truth images of the training size with a ``labels`` sequence, e.g.
        ``SynthScapes(..., split="val")``; class-matched disjoint sets are drawn from it.
    :param truth: ``(labels, height, width) -> strips``: ground-truth strips as long as the
        generated ones (e.g. :func:`synthscapes_strips`), measured the same way (``truth_curve``).
    :param keep_strips: also return the decoded strips under ``"strips"`` (a tensor, not JSON).
    :return: the settings, timings, the per-offset ``curve`` and its ``summary``.
    """
    config = config or FidelityConfig.preset("cpu")
    if pipe.rows != 1:
        raise ValueError("long_fidelity needs a column tokenizer (a grid tokenizer's crops are not columns)")
    classes = config.classes if config.classes is not None else list(range(pipe.generator.config.num_classes))
    labels = torch.tensor(classes).repeat_interleave(config.strips_per_class)  # (B,)
    crop_tokens = pipe.train_tokens
    num_tokens = max(config.multiples) * crop_tokens
    col = pipe.column_width

    start = time.perf_counter()
    tokens = sample_strips(pipe, labels, num_tokens, config, seed)  # (B, N, C)
    sampled = time.perf_counter()
    strips = decode_strips(pipe, tokens, config.batch_size)  # (B, 3, H, N · col)
    decoded = time.perf_counter()
    real = class_matched_images(dataset, labels, config.noise_sets + 2, seed)
    if real[0].shape[-2:] != (strips.shape[-2], crop_tokens * col):
        raise ValueError(f"reference images are {tuple(real[0].shape[-2:])} px, the crops "
                         f"{(strips.shape[-2], crop_tokens * col)}")
    recon = decode_strips(pipe, pipe.encode(real[-1]).cpu(), config.batch_size)  # (B, 3, H, crop px)
    offsets = crop_offsets(num_tokens, crop_tokens, config.crops)
    curve = measure(strips, real[:-1], crop_tokens * col, [o * col for o in offsets], col, recon)
    result = {
        "experiment": "long_fidelity", "seed": seed, "settings": config.to_dict(),
        "classes": classes, "num_strips": len(labels), "train_tokens": crop_tokens, "num_tokens": num_tokens,
        "image_size": list(strips.shape[-2:]), "offsets_tokens": offsets, "curve": curve,
        "summary": summarize(curve, offsets, crop_tokens, config.multiples),
        "seconds": {"sample": sampled - start, "decode": decoded - sampled,
                    "features": time.perf_counter() - decoded},
        "metric": "offline FD on EfficientNet-Lite0 features (not comparable with published FID)",
    }
    if truth is not None:
        truth_strips = truth(labels, strips.shape[-2], strips.shape[-1])  # (B, 3, H, W), same classes
        truth_curve = measure(truth_strips, real[:-1], crop_tokens * col, [o * col for o in offsets], col)
        result["truth_curve"] = {"fd": truth_curve["fd"], "seam": truth_curve["seam"]}
        result["truth_summary"] = summarize(truth_curve, offsets, crop_tokens, config.multiples)
    if keep_strips:
        result["strips"] = strips
    return result


def plot(result: dict, strip: torch.Tensor | None = None):
    """FD and seam score against the crop offset (the noise band and the tokenizer floor drawn),
    above them the first ``strip`` if given. Returns a matplotlib Figure (no pyplot)."""
    curve, offsets, n = result["curve"], result["offsets_tokens"], result["train_tokens"]
    fig = Figure(figsize=(11, 5.5 if strip is not None else 3.2), dpi=100)
    ratios = [1, 1.4] if strip is not None else [1]  # the strip's row, the plots' row
    grid = fig.add_gridspec(len(ratios), 2, height_ratios=ratios)
    if strip is not None:
        ax = fig.add_subplot(grid[0, :])
        ax.imshow(panorama(strip, rows=4), interpolation="nearest")
        ax.set_title(f"one generated strip, {result['num_tokens'] // n}x the training width (in 4 lines)",
                     fontsize=9, loc="left")
        ax.axis("off")
    row = 1 if strip is not None else 0
    noise = torch.tensor(curve["noise_fds"])
    ax = fig.add_subplot(grid[row, 0])
    ax.plot(offsets, curve["fd"], "o-", ms=3, label="generated crops")
    if "truth_curve" in result:
        ax.plot(offsets, result["truth_curve"]["fd"], "s-", ms=3, color="gray", label="ground-truth strips")
    spread = 2 * noise.std() if len(noise) > 1 else torch.tensor(0.0)
    band = (noise.mean() - spread, noise.mean() + spread)
    ax.axhspan(float(band[0]), float(band[1]), color="gray", alpha=0.3, label="real vs real (mean ± 2 std)")
    if curve["recon_fd"] is not None:
        ax.axhline(curve["recon_fd"], color="tab:orange", ls="--", label="tokenizer reconstructions")
    for m in result["settings"]["multiples"][:-1]:
        ax.axvline(m * n, color="k", ls=":", lw=0.8)
    top = max(curve["fd"] + [curve["recon_fd"] or 0.0] + result.get("truth_curve", {}).get("fd", []))
    ax.set(xlabel="crop offset (tokens); dotted: end of the shorter strips", ylabel="offline FD",
           title="FD of training-width crops vs ground truth", ylim=(0, 1.1 * top))
    ax.legend(fontsize=7)
    ax = fig.add_subplot(grid[row, 1])
    ax.plot(offsets, curve["seam"], "o-", ms=3, label="generated crops")
    if "truth_curve" in result:
        ax.plot(offsets, result["truth_curve"]["seam"], "s-", ms=3, color="gray", label="ground-truth strips")
    else:
        ax.axhline(curve["real_seam"], color="gray", label="ground truth")
    ax.set(xlabel="crop offset (tokens)", ylabel="seam score (1 = no seams)", title="seam score")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """``--tokenizer``/``--generator``: the models (default at CPU scale: the course models)."""
    parser.add_argument("--tokenizer", default=None, help="tokenizer checkpoint (default at cpu scale: "
                        "the pretrained course tokenizer; required at paper scale)")
    parser.add_argument("--generator", default=None, help="generator checkpoint written by "
                        "minieq.train_generator (default at cpu scale: the pretrained course generator)")


def load_pipeline(args: argparse.Namespace, device: torch.device) -> Pipeline:
    """The pipeline the flags name: the two checkpoints, or at CPU scale the course models."""
    if args.tokenizer and args.generator:
        return Pipeline.from_checkpoints(args.tokenizer, args.generator, device=device)
    if args.scale == "paper" or args.tokenizer or args.generator:
        raise ValueError("give both --tokenizer and --generator (required at --scale paper: the course "
                         "models are CPU-sized)")
    generator, latent_scale = pretrained_generator(device)
    return Pipeline(pretrained_tokenizer(device), generator, latent_scale)


def reference_dataset(args: argparse.Namespace, height: int, width: int, images: int) -> Dataset:
    """Ground truth of the training size (``height`` x ``width`` px): ``images`` SynthScapes val
    renders, or the val images of ``--data``."""
    if args.data == "synthscapes":
        return SynthScapes(images, height=height, width=width, seed=args.seed, split="val")
    if height != width and args.data != "folder":  # your own folder is cropped to any width
        raise ValueError(f"{args.data} gives square images, but the training images are {height}x{width}")
    return build_dataset(args.data, args.data_path, split="val", height=height, width=width, train=False)


def main(argv: list[str] | None = None) -> dict:
    """CLI: ``python -m minieq.experiments long_fidelity [--scale paper ...]``; writes JSON + PNG."""
    parser = experiment_parser("long_fidelity", __doc__)
    add_model_flags(parser)
    parser.add_argument("--data", default="synthscapes", choices=DATASETS,
                        help=f"ground truth: {dataset_names()} (synthscapes at cpu scale; the others: "
                             "val split, needs --data_path)")
    parser.add_argument("--data_path", default=None,
                        help="root folder of a real data set, or of your own images for --data folder")
    parser.add_argument("--strips_per_class", type=int, default=None, help="strips per class (preset's)")
    parser.add_argument("--crops", type=int, default=None, help="x-offsets measured (preset's)")
    parser.add_argument("--cfg", type=float, default=None, help="guidance scale (preset's)")
    parser.add_argument("--multiples", type=int, nargs="+", default=None,
                        help="strip lengths in training widths; the longest is sampled (8 16 32 64)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items()
                 if k in ("strips_per_class", "crops", "cfg", "multiples") and v is not None}
    with user_errors(parser):
        config = FidelityConfig.preset(args.scale, **overrides)
        pipe = load_pipeline(args, pick_device(args.device))
        classes = config.classes or range(pipe.generator.config.num_classes)
        images = len(classes) * config.strips_per_class * (config.noise_sets + 2) * 2
        reference = reference_dataset(args, pipe.tokenizer.config.image_height, pipe.train_width, images)
        # Ground-truth strips from another seed than the reference images and the training set.
        truth = synthscapes_strips(args.seed + 1) if args.data == "synthscapes" else None
        result = run(pipe, reference, config, args.seed, truth, keep_strips=True)
    strips = result.pop("strips")
    paths = write_result(args.out, "long_fidelity", result, plot(result, strips[0]))
    s = result["summary"]
    print("FD per offset (tokens): " + ", ".join(f"{o}: {fd:.1f}" for o, fd in zip(result["offsets_tokens"],
                                                                                   result["curve"]["fd"])))
    if "truth_curve" in result:
        print("FD of ground-truth strips: " + ", ".join(f"{fd:.1f}" for fd in result["truth_curve"]["fd"]))
    print(f"noise level (real vs real): {s['noise_fd_mean']:.1f} ± {s['noise_fd_std']:.1f}; tokenizer "
          f"reconstructions {result['curve']['recon_fd']:.1f}; drift "
          f"{s['fd_drift_last_minus_first_quarter']:+.1f} -> flat within 2 std: {s['flat_within_2_noise_std']}")
    print(f"wrote {paths['json']} and {paths['png']}")
    return result
