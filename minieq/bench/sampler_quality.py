"""Benchmark: do cheap samplers keep Euler-100's samples? Offline FD against Euler-100 itself.

    python -m minieq.bench.sampler_quality --out docs/results          # ~15 CPU minutes

A few-step head no longer solves the teacher's ODE, so its token error says little; what must
hold is the *distribution* of images. For every sampler setting, 512 samples of the course
generator (16 tokens, cfg 3 linear, as the course samples; 64 per class) are decoded by the
course tokenizer, and their offline FD (EfficientNet-Lite0 features) is taken against Euler-100's
samples with seed 0. The noise band is Euler-100 itself with seeds 1 and 2: a setting whose FD at
the same seeds lies within the band's top is indistinguishable from Euler-100 at this sample size.
Every seed fixes the initial noise of every token, so a setting and Euler-100 at one seed start
from the same noise (paired samples); the FD of a setting against Euler-100 *from the same noise*
is reported too (how far the sampler moves the set, without the sampling noise of the band), and
the FD against 512 held-out renders beside it.
"Cheapest" counts head calls per token (annealed settings: the mean over a 16-token image).
Writes ``OUT/sampler_quality.json`` and ``OUT/sampler_quality.png`` (per-class samples side by side).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from matplotlib.figure import Figure

from minieq.evaluation import heldout_images
from minieq.experiments import write_result
from minieq.bench.solvers import balanced_samples
from minieq.few_step import attach
from minieq.flow import SamplingOptions, head_calls
from minieq.generator_data import TRAIN_TOKENS
from minieq.generator_sampling import annealed_steps
from minieq.metrics import frechet_distance, image_features
from minieq.pretrained import FEW_STEP_FILE, SYNTHSCAPES_CLASSES, pretrained_pipeline

REFERENCE = ("euler", 100, None)
# (solver, steps, late_steps): the official reference, the course's own setting, the ODE pick of
# bench.solvers and a cheaper one, the few-step head, and annealed variants of both.
SETTINGS = [("euler", 25, None), ("midpoint", 5, None), ("midpoint", 2, None), ("midpoint", 5, 2),
            ("distilled", 1, None), ("distilled", 2, None), ("distilled", 3, None), ("distilled", 4, None),
            ("distilled", 2, 1), ("distilled", 4, 1)]
CFG = 3.0


def name(setting) -> str:
    solver, steps, late = setting
    return f"{solver}-{steps}" + ("" if late is None else f"->{late}")


def mean_calls(setting, num_tokens: int = TRAIN_TOKENS, window: int = 3) -> float:
    """Head calls per token, averaged over an image (annealing ramps over the first ``window``)."""
    solver, steps, late = setting
    return sum(head_calls(solver, annealed_steps(steps, late, k, window)) for k in range(num_tokens)) / num_tokens


@torch.no_grad()
def samples(pipe, setting, seed: int, num_images: int, batch: int = 128) -> torch.Tensor:
    """``num_images`` class-balanced images of ``setting`` (:func:`minieq.bench.solvers.balanced_samples`)."""
    solver, steps, late = setting
    return balanced_samples(pipe, num_images, seed, SamplingOptions(solver=solver, steps=steps, late_steps=late,
                                                                    cfg=CFG), batch)


def figure(pictures: dict[str, torch.Tensor], classes=SYNTHSCAPES_CLASSES) -> Figure:
    """One row per class, one column per setting: the same noise (seed 1) in every column."""
    names = list(pictures)
    fig = Figure(figsize=(2.2 * len(names), 0.75 * len(classes) + 0.6), dpi=110)
    axes = fig.subplots(len(classes), len(names), squeeze=False)
    for j, key in enumerate(names):
        for i, cls in enumerate(classes):
            ax = axes[i, j]
            ax.imshow((pictures[key][i].permute(1, 2, 0).clamp(-1, 1) + 1) / 2)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(key, fontsize=9)
            if j == 0:
                ax.set_ylabel(cls, fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle("Same noise, same class (seed 1, cfg 3 linear): Euler-100 and the cheaper samplers", fontsize=10)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512, help="samples per setting and seed")
    parser.add_argument("--few_step", type=Path, default=FEW_STEP_FILE, help="few-step head file")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/sampler_quality"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    pipe = pretrained_pipeline("cpu")
    attach(pipe.generator, args.few_step)
    H, W = pipe.tokenizer.config.image_height, TRAIN_TOKENS * pipe.tokenizer.config.column_width
    real = image_features(heldout_images(H, W, args.images))
    ref_images = samples(pipe, REFERENCE, 0, args.images)
    reference = image_features(ref_images)
    print(f"{args.images} samples per setting, cfg {CFG:g} linear; FD vs Euler-100 seed 0 "
          f"(FD of Euler-100 seed 0 vs {args.images} held-out renders: {frechet_distance(real, reference):.2f})")
    rows, pictures, same_noise = [], {}, {}
    for setting in [REFERENCE] + SETTINGS:
        fds, real_fds, paired = [], [], []
        for seed in (1, 2):
            images = samples(pipe, setting, seed, args.images)
            feats = image_features(images)
            fds.append(frechet_distance(reference, feats))
            real_fds.append(frechet_distance(real, feats))
            if setting == REFERENCE:
                same_noise[seed] = feats
            paired.append(frechet_distance(same_noise[seed], feats))  # vs Euler-100 from the same noise
            if seed == 1:
                classes = pipe.generator.config.num_classes
                pictures[name(setting)] = images[:classes]  # images 0..7 are classes 0..7
        rows.append(dict(setting=name(setting), solver=setting[0], steps=setting[1], late_steps=setting[2],
                         head_calls=mean_calls(setting), fd_vs_euler100=fds, fd_vs_real=real_fds,
                         fd_vs_euler100_same_noise=paired))
        print(f"{name(setting):>16} {rows[-1]['head_calls']:6.2f} calls/token | FD vs Euler-100 seed 0: "
              f"{fds[0]:6.2f} {fds[1]:6.2f} | same noise: {paired[0]:5.2f} {paired[1]:5.2f} | "
              f"vs real: {real_fds[0]:6.1f} {real_fds[1]:6.1f}", flush=True)
    band = max(rows[0]["fd_vs_euler100"])
    for row in rows:
        row["within_band"] = sum(row["fd_vs_euler100"]) / 2 <= band
    ok = [r for r in rows[1:] if r["within_band"]]
    cheapest = min(ok, key=lambda r: r["head_calls"]) if ok else None
    print(f"noise band (Euler-100 seeds 1, 2 vs seed 0): {min(rows[0]['fd_vs_euler100']):.2f} .. {band:.2f}")
    print("within the band (mean of two seeds <= its top): "
          + ", ".join(f"{r['setting']} ({r['head_calls']:g} calls)" for r in ok))
    print(f"cheapest within the band: {cheapest['setting'] if cheapest else 'none'}")
    result = dict(images=args.images, cfg=CFG, cfg_schedule="linear", reference="euler-100 seed 0",
                  band=[min(rows[0]["fd_vs_euler100"]), band], rows=rows,
                  cheapest=cheapest["setting"] if cheapest else None,
                  fd_reference_vs_real=frechet_distance(real, reference))
    paths = write_result(args.out, "sampler_quality", result, figure(pictures))
    print(f"wrote {paths['json']} and {paths['png']}")
    return result


if __name__ == "__main__":
    main()
