"""Sample images into a PNG: a grid, or one (long) image per row.

    python -m minieq.sample --classes forest dunes --width 1024      # the shipped course models
    python -m minieq.sample --tokenizer runs/course/fast/tokenizer.pt \\
        --generator runs/course/fast/generator.pt --classes 0 3 5 --width 1024 --cfg 3 \\
        --out samples.png [--grid] [--seed 0] [--solver midpoint --steps 5]

Without checkpoint paths (or with ``pretrained``) it samples the pretrained course models shipped
in the package (SynthScapes classes: mountains, dunes, sea_horizon, forest, ...). Classes are ids
or names; a generator trained by minieq on named classes (your own folders) stores its names, a
converted official generator has ids only (the Places-30 classes were never published).

Any width that is a multiple of the tokenizer's column width (≥ 2 columns) works: the generator
is trained on 16 tokens (its checkpoint says) but its windowed attention makes every length the
same task (Fig. 5).
``--solver midpoint --steps 5`` samples with 10 flow-head calls per token instead of the official
Euler's 100, at the same token error; ``--solver distilled --steps 2`` with 2, by the few-step head
distilled from the flow head (shipped for the course generator; ``--few_step FILE`` for another
one), its samples at the edge of Euler-100's FD noise band (docs/sampling_speed.md).
Unlike the official eval script, a missing checkpoint is an error, never random weights
(docs/official_code.md#evaluation-script), and a batch of one image works.
"""
from __future__ import annotations

import math
import sys

import torch

from minieq.cli import parser_for, user_errors
from minieq.few_step import attach
from minieq.flow import SAMPLERS
from minieq import pretrained
from minieq.pipeline import Pipeline
from minieq.pretrained import pretrained_pipeline
from minieq.utils import pick_device
from minieq.viz import save_image_grid


PRETRAINED = "pretrained"


def load_pipeline(tokenizer: str | None, generator: str | None, device: torch.device) -> Pipeline:
    """Two checkpoint paths, or none (or ``pretrained``): the shipped course models. The course
    tokenizer also serves a generator trained on its latents (``--tokenizer pretrained``)."""
    if generator in (None, PRETRAINED):
        if tokenizer not in (None, PRETRAINED):  # the course generator models the course latents only
            raise ValueError(f"the pretrained course generator samples tokens of the course tokenizer "
                             f"only; give --generator too for {tokenizer}")
        return pretrained_pipeline(device)
    if tokenizer is None:
        raise ValueError("give --tokenizer with --generator (--tokenizer pretrained if the generator "
                         "was trained on the course tokenizer's latents)")
    if tokenizer == PRETRAINED:
        tokenizer = pretrained.TEXTURED_FILE
    return Pipeline.from_checkpoints(tokenizer, generator, device=device)


def main(argv: list[str] | None = None) -> int:
    """CLI (see ``--help``); writes the PNG and returns 0."""
    parser = parser_for("sample", __doc__)
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer checkpoint (train_tokenizer's OUT/checkpoint.pt, or a tokenizer.pt; "
                             "default: pretrained, the shipped course tokenizer)")
    parser.add_argument("--generator", default=None,
                        help="generator checkpoint (train_generator's OUT/generator.pt; default: "
                             "pretrained, the shipped course generator)")
    parser.add_argument("--classes", nargs="+", default=None,
                        help="one image per class, by id or name (default: every class)")
    parser.add_argument("--per_class", type=int, default=1, help="images per class (default: 1)")
    parser.add_argument("--width", type=int, default=None,
                        help="pixels (default: the generator's training width, 16 tokens)")
    parser.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale (default: 1)")
    parser.add_argument("--cfg_schedule", default="linear", choices=["linear", "constant"],
                        help="guidance over the tokens (default: linear)")
    parser.add_argument("--temperature", type=float, default=1.0, help="flow-noise temperature (default: 1)")
    parser.add_argument("--solver", default="euler", choices=SAMPLERS,
                        help="flow-head ODE solver (default: euler, the official sampler), or distilled "
                             "(the few-step head, 1-4 steps)")
    parser.add_argument("--few_step", default=None,
                        help="few-step head file for --solver distilled (python -m minieq.distill; "
                             "the pretrained course generator has its own)")
    parser.add_argument("--steps", type=int, default=None,
                        help="solver steps per token (default: the generator's num_sampling_steps)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the draw (default: random)")
    parser.add_argument("--grid", action="store_true", help="a square-ish grid instead of one image per row")
    parser.add_argument("--no_cache", action="store_true", help="full recompute instead of the KV cache")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: CUDA, then MPS, then CPU)")
    parser.add_argument("--out", default="samples.png", help="PNG to write (default: samples.png)")
    args = parser.parse_args(argv)
    if args.per_class < 1:
        parser.error("--per_class must be at least 1")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")
    with user_errors(parser):
        pipe = load_pipeline(args.tokenizer, args.generator, pick_device(args.device))
        if args.few_step:
            attach(pipe.generator, args.few_step)
        classes = args.classes or range(pipe.generator.config.num_classes)
        labels = torch.tensor(pipe.class_ids(classes)).repeat_interleave(args.per_class)  # (B,)
        images = pipe.generate(labels, width=args.width, cfg=args.cfg, cfg_schedule=args.cfg_schedule,
                               temperature=args.temperature, seed=args.seed, progress=True,
                               use_cache=not args.no_cache, solver=args.solver, steps=args.steps)
    nrow = math.ceil(math.sqrt(len(images))) if args.grid else 1
    path = save_image_grid(args.out, images, nrow=nrow)
    print(f"wrote {len(images)} image(s) of {images.shape[-2]}×{images.shape[-1]} px to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
