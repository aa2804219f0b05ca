"""Per-position loss (paper Sec. 4.3, Fig. 4): how even are the 16 subtasks, and do they improve together?

    python -m minieq.experiments per_position [--steps 500]

The paper plots the converged loss of each token position: on ImageNet (objects in the centre)
some positions are much harder than others; on LHQ (landscapes, stationary along x) the loss is
nearly flat. Fig. 3 adds the relative improvement from an early to a late checkpoint: for an
equivariant model all positions improve alike. Here the two data sets are SynthScapes, as
rendered (stationary) and with ``centered=True`` (one object in the middle of every image),
each for the column model (column tokens, window-causal attention) and the 2D baseline (grid
tokens in raster order, full causal attention); 4 runs.

Reported per run: the held-out loss per position at the early and the final step, its spread
across positions (coefficient of variation, also without position 0, which has no context),
and the relative improvement (early - final) / early per position with its spread.

CPU scale: PCA codecs for both layouts (:class:`minieq.evaluation.PCACodec`), the FAST
generator. Paper scale: ``--column_latents STATIONARY CENTRED`` and ``--grid_latents ...``
(e.g. LHQ and ImageNet latent files) and the Small model.
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

NAME = "per_position"
MODELS = {"column": {}, "grid": GRID_MODEL}
DATASETS = ("stationary", "centred")


def spread(values: list[float]) -> float:
    """Coefficient of variation across positions: std / mean (0 = every position alike)."""
    v = torch.tensor(values, dtype=torch.float64)
    return float(v.std(correction=0) / v.mean())


def summarize(early: list[float], final: list[float]) -> dict:
    """Spread of the final loss and the per-position relative improvement from early to final."""
    e, f = torch.tensor(early), torch.tensor(final)
    improvement = ((e - f) / e).tolist()  # (N,) higher = better, as in Fig. 3 (right)
    return {"final_mean": float(f.mean()), "spread": spread(final), "spread_without_0": spread(final[1:]),
            "max_over_min": float(f.max() / f.min()), "improvement": [round(x, 5) for x in improvement],
            "improvement_mean": float(torch.tensor(improvement).mean()),
            "improvement_spread": float(torch.tensor(improvement).std(correction=0))}


def run(out: str | Path = "runs/experiments", scale: str = "cpu", seed: int = 0, device=None,
        steps: int | None = None, num_images: int = 4096, column_latents: list[str] | None = None,
        grid_latents: list[str] | None = None, layouts: tuple[str, ...] = ("column", "grid"),
        datasets: tuple[str, ...] = DATASETS) -> dict:
    """Train one generator per (layout, data set) and measure its per-position loss early and late.

    :param steps: training steps per run (default: the scale's); the early checkpoint is at
        a tenth of them (the paper: 10 and 100 epochs).
    :param column_latents, grid_latents: paper scale: [stationary file, centred file].
    :param layouts, datasets: a subset of the runs (the notebook trains fewer).
    """
    settings = SCALES[scale]
    steps = steps or settings.steps
    early = max(1, steps // 10)
    device = pick_device(device)
    files = {"column": column_latents, "grid": grid_latents}
    if scale == "paper" and any(files[k] is None or len(files[k]) != 2 for k in layouts):
        raise ValueError("--scale paper needs --column_latents and --grid_latents, each STATIONARY CENTRED")
    result = {"experiment": NAME, "scale": scale, "seed": seed, "steps": steps, "early_step": early, "runs": {}}
    for layout in layouts:
        for data in datasets:
            if files[layout]:
                latents = file_latents(files[layout][DATASETS.index(data)])
            else:
                latents = pca_latents(layout, centered=data == "centred", num_images=num_images, seed=seed)
            r = train_on_latents(latents, Path(out) / NAME / f"{layout}_{data}", settings, steps=steps,
                                 model_overrides=MODELS[layout], eval_steps=(early,), seed=seed, device=device)
            row = {"latents": latents.description, "seconds": round(r.seconds, 1),
                   "early_loss": r.val_loss[early], "final_loss": r.val_loss[steps]}
            row.update(summarize(row["early_loss"], row["final_loss"]))
            result["runs"][f"{layout}/{data}"] = row
    return result


def figure(result: dict):
    """Final loss per position (left) and relative improvement per position (right), one line per run."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    styles = {"column": "C0", "grid": "C3"}
    for key, row in result["runs"].items():
        layout, data = key.split("/")
        ls = "-" if data == "stationary" else "--"
        label = f"{'column' if layout == 'column' else '2D grid'}, {data} (spread {row['spread']:.3f})"
        axes[0].plot(row["final_loss"], color=styles[layout], ls=ls, marker="o", ms=3, label=label)
        axes[1].plot(row["improvement"], color=styles[layout], ls=ls, marker="o", ms=3, label=key)
    axes[0].set(xlabel="token position", ylabel="held-out flow loss", title=f"step {result['steps']}")
    axes[1].set(xlabel="token position", ylabel="(early - final) / early",
                title=f"relative improvement, step {result['early_step']} -> {result['steps']}")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> dict:
    parser = experiment_parser(NAME, __doc__)
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default: the scale's)")
    parser.add_argument("--num_images", type=int, default=4096, help="SynthScapes images for the PCA codecs (cpu)")
    parser.add_argument("--column_latents", nargs=2, default=None, metavar=("STATIONARY", "CENTRED"),
                        help="column-tokenizer latent files (paper scale)")
    parser.add_argument("--grid_latents", nargs=2, default=None, metavar=("STATIONARY", "CENTRED"),
                        help="grid-tokenizer latent files (paper scale)")
    args = parser.parse_args(argv)
    with user_errors(parser):
        result = run(args.out, args.scale, args.seed, args.device, args.steps, args.num_images,
                     args.column_latents, args.grid_latents)
    write_result(args.out, NAME, result, figure(result))
    for key, row in result["runs"].items():
        print(f"{key:18s} final loss {row['final_mean']:.4f}, spread {row['spread']:.4f} "
              f"(without position 0: {row['spread_without_0']:.4f}), improvement "
              f"{row['improvement_mean']:+.3f} ± {row['improvement_spread']:.3f}")
    return result
