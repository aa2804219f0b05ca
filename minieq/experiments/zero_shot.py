"""Zero-shot subtasks (paper Sec. 4.3, Fig. 3, Table 1): train on 8 of 16 positions, test all 16.

    python -m minieq.experiments zero_shot [--steps 300] [--trained 0 1 2 3 4 5 6 7]

Each token position is a subtask: predict token k from the tokens before it. The generator is
trained with the flow loss on 8 positions only (``GeneratorTrainConfig.loss_positions``); the
other 8 still run forward as context, but are never a target. Equivariance predicts that the
column model (column tokens, window-causal attention) solves the untrained subtasks anyway,
since they are the same task at other places, while the 2D baseline (grid tokens in raster
order, full causal attention) does not: its positions 0-7 are the top row of the image, 8-15
the bottom row, different tasks. Each model is compared position by position with the same
model trained on all 16 (the reference the paper's "16 tasks" rows give).

CPU scale: both layouts use the PCA codec (:class:`minieq.evaluation.PCACodec`), so they differ
only in layout and attention; 4 runs of the FAST generator, a few minutes on one thread. Paper
scale: ``--column_latents`` and ``--grid_latents`` name latent files of a column and a grid
tokenizer (``minieq.cache_latents``), and the runs use the Small model.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import torch

from minieq.cli import user_errors
from minieq.experiments import experiment_parser, write_result
from minieq.experiments.training_runs import (GRID_MODEL, SCALES, file_latents, pca_latents,
                                              train_on_latents)
from minieq.utils import pick_device
from minieq.viz import image_grid

NAME = "zero_shot"
FIRST_HALF = list(range(8))  # column model: the left half; raster grid: the top row
MODELS = {"column": {}, "grid": GRID_MODEL}
LABELS = {"column": "column + window causal", "grid": "AR-MAR-2D (grid, raster)"}


def summarize(all_loss: list[float], subset_loss: list[float], trained: list[int]) -> dict:
    """Losses on trained / untrained positions of the subset model, next to the all-16 model.

    ``excess`` is (subset model − all-16 model) / all-16 model, averaged over the positions:
    ≈ 0 means the subset model solves those subtasks as well as a model trained on them.
    """
    a, s = torch.tensor(all_loss), torch.tensor(subset_loss)
    mask = torch.zeros(len(a), dtype=torch.bool)
    mask[trained] = True
    excess = (s - a) / a  # (N,)
    return {"trained_loss": float(s[mask].mean()), "untrained_loss": float(s[~mask].mean()),
            "all16_trained_loss": float(a[mask].mean()), "all16_untrained_loss": float(a[~mask].mean()),
            "excess_trained": float(excess[mask].mean()), "excess_untrained": float(excess[~mask].mean())}


def run(out: str | Path = "runs/experiments", scale: str = "cpu", seed: int = 0, device=None,
        steps: int | None = None, trained: list[int] | None = None, num_images: int = 4096,
        column_latents: str | None = None, grid_latents: str | None = None, num_samples: int = 4) -> dict:
    """Train column and grid generators on all 16 and on ``trained`` positions; return the numbers.

    :param steps: training steps per run (default: the scale's).
    :param trained: the trained positions (default: 0-7).
    :param num_images: SynthScapes images of the PCA codec runs (CPU scale).
    :return: the JSON-ready result; ``result["samples"]`` holds (num_samples, 3, H, W) tensors
        of the subset models (not written to the JSON).
    """
    settings = SCALES[scale]
    trained = list(trained or FIRST_HALF)
    device = pick_device(device)
    files = {"column": column_latents, "grid": grid_latents}
    if scale == "paper" and None in files.values():
        raise ValueError("--scale paper needs --column_latents and --grid_latents (minieq.cache_latents files)")
    result = {"experiment": NAME, "scale": scale, "seed": seed, "trained_positions": trained,
              "steps": steps or settings.steps, "models": {}}
    samples = {}
    for layout, overrides in MODELS.items():
        if files[layout]:
            latents = file_latents(files[layout])
        else:
            latents = pca_latents(layout, num_images=num_images, seed=seed)
        row = {"latents": latents.description}
        runs = {}
        for kind, positions in (("all16", None), ("subset", trained)):
            runs[kind] = train_on_latents(latents, Path(out) / NAME / f"{layout}_{kind}", settings, steps=steps,
                                          model_overrides=overrides, loss_positions=positions, seed=seed,
                                          device=device)
            row[f"{kind}_loss"] = runs[kind].val_loss[max(runs[kind].val_loss)]
            row[f"{kind}_seconds"] = round(runs[kind].seconds, 1)
        row.update(summarize(row["all16_loss"], row["subset_loss"], trained))
        result["models"][layout] = row
        if latents.decode is not None:
            gen, latent_scale = runs["subset"].generator, runs["subset"].latent_scale
            labels = torch.arange(num_samples, device=device) % latents.num_classes
            g = torch.Generator(device).manual_seed(seed)
            tokens = gen.sample(labels, num_tokens=latents.train.shape[1], generator=g)  # (B, N, C)
            samples[layout] = latents.decode(tokens / latent_scale)
    result["samples"] = samples
    return result


def figure(result: dict):
    """Left: held-out loss per position (subset model solid, all-16 dashed), trained positions
    shaded; right: samples of the two subset models."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.4), gridspec_kw={"width_ratios": [1.3, 1, 1]})
    ax = axes[0]
    for (layout, row), color in zip(result["models"].items(), ("C0", "C3")):
        ax.plot(row["subset_loss"], color=color, marker="o", label=f"{LABELS[layout]}, 8 trained")
        ax.plot(row["all16_loss"], color=color, ls="--", label=f"{LABELS[layout]}, 16 trained")
    for k in result["trained_positions"]:
        ax.axvspan(k - 0.5, k + 0.5, color="0.9", zorder=0)
    ax.set(xlabel="token position (grey: trained)", ylabel="held-out flow loss", title="zero-shot subtasks")
    ax.legend(fontsize=7)
    for ax, layout in zip(axes[1:], ("column", "grid")):
        ax.axis("off")
        if layout in result.get("samples", {}):
            ax.imshow(image_grid(result["samples"][layout], nrow=1))
            ax.set_title(f"{LABELS[layout]}: samples, 8 trained", fontsize=9)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> dict:
    parser = experiment_parser(NAME, __doc__)
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default: the scale's)")
    parser.add_argument("--trained", type=int, nargs="+", default=None,
                        help="trained token positions (default: 0-7, the first half)")
    parser.add_argument("--num_images", type=int, default=4096, help="SynthScapes images for the PCA codecs (cpu)")
    parser.add_argument("--column_latents", default=None, help="column-tokenizer latent file (paper scale)")
    parser.add_argument("--grid_latents", default=None, help="grid-tokenizer latent file (paper scale)")
    args = parser.parse_args(argv)
    with user_errors(parser):
        result = run(args.out, args.scale, args.seed, args.device, args.steps, args.trained,
                     args.num_images, args.column_latents, args.grid_latents)
    fig = figure(result)
    result.pop("samples")
    write_result(args.out, NAME, result, fig)
    for layout, row in result["models"].items():
        print(f"{LABELS[layout]:28s} untrained {row['untrained_loss']:.4f} (all-16 model "
              f"{row['all16_untrained_loss']:.4f}, excess {row['excess_untrained']:+.1%}); trained "
              f"{row['trained_loss']:.4f} (excess {row['excess_trained']:+.1%})")
    return result
