"""Training cost: FLOPs counted on one training step, and the A100-hours of a whole run.

    python -m minieq.estimate [--mfu 0.3]      # the course's runs and the paper's, as a table

One step (forward and backward over the global batch) runs on the ``meta`` device under
``torch.utils.flop_counter.FlopCounterMode``: shapes only, no memory and no arithmetic, so even
the paper's sizes are counted in seconds. The counter sees matrix multiplies, convolutions and
attention, where these models spend their FLOPs; normalisation, activations, the optimizer and
the EMA are left out. Hours = FLOPs / an ASSUMED sustained throughput: an estimate, not a
measurement (no GPU run has been timed).
"""
from __future__ import annotations

import argparse
import math
from operator import attrgetter
from typing import Callable, NamedTuple

import torch
from torch.utils.flop_counter import FlopCounterMode

from minieq.tokenizer import ColumnTokenizer, TokenizerConfig
from minieq.train_generator import GeneratorTrainConfig, build_generator
from minieq.train_tokenizer import TokenizerTrainConfig, set_trainable
from minieq.utils import count_parameters

A100_BF16_PEAK = 312e12  # FLOP/s: dense bf16 tensor-core peak of an A100 (NVIDIA datasheet)
# The fraction of that peak a run sustains. Large transformers reach ~40-50 %; these models
# are small (64-channel convolutions with GroupNorm and reflect padding, width-384 blocks on
# 32 positions) and partly memory-bound, so we assume 30 %. An assumption: see --mfu.
ASSUMED_MFU = 0.3
IMAGENET_TRAIN_IMAGES = 1_281_167  # the paper generator's epoch


class Estimate(NamedTuple):
    """The cost of one training run."""

    run: str
    params: int  # trainable parameters
    batch: int  # images (tokenizer) or token sequences (generator) per step
    step_flops: float  # forward + backward of one step over the whole batch
    steps: int

    @property
    def total_flops(self) -> float:
        return self.step_flops * self.steps

    def a100_hours(self, mfu: float = ASSUMED_MFU) -> float:
        return self.total_flops / (mfu * A100_BF16_PEAK) / 3600


def count_flops(step: Callable[[], None]) -> float:
    """FLOPs (multiply-adds count 2) of the matmuls, convolutions and attention in ``step()``."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def estimate_tokenizer(cfg: TokenizerTrainConfig, run: str = "tokenizer") -> Estimate:
    """One step of ``train_tokenizer.train``: a σ-VAE reconstruction (with the semantic head
    when its loss is on) and the backward of its loss. The frozen loss networks (LPIPS's VGG16,
    the DINO discriminator, the DINOv2 teacher) are not counted, so the paper rows are low."""
    tok_cfg = TokenizerConfig.preset(cfg.tokenizer, **cfg.tokenizer_overrides)
    # As minieq.data.build_dataset: SynthScapes renders image_width, real data square crops.
    width = cfg.image_width if cfg.data == "synthscapes" else tok_cfg.image_height
    semantic = cfg.loss.semantic_weight > 0
    with torch.device("meta"):
        tok = ColumnTokenizer(tok_cfg)
        x = torch.zeros(cfg.batch_size, 3, tok_cfg.image_height, width)
    set_trainable(tok, cfg.stage, semantic)

    def step() -> None:
        out = tok.reconstruct(x, sample=True, semantic=semantic)
        loss = (out.recon - x).abs().mean() + tok.kl(out.mean).mean()
        if semantic:
            loss = loss + out.semantic.mean()  # stands in for the alignment loss: same backward
        loss.backward()

    return Estimate(run, count_parameters(tok, trainable_only=True), cfg.batch_size,
                    count_flops(step), cfg.steps)


def estimate_generator(cfg: GeneratorTrainConfig, token_dim: int, num_classes: int,
                       num_samples: int, num_tokens: int = 16, run: str = "generator") -> Estimate:
    """One step of ``train_generator.train``: ``Generator.loss`` over the global batch, backward.

    :param token_dim: the tokenizer's channels.
    :param num_samples: rows of the training set; with ``steps`` unset they set the steps.
    :param num_tokens: tokens per training sequence (16 in the course and in the paper).
    """
    with torch.device("meta"):
        gen = build_generator(cfg, num_classes, token_dim).train()
        tokens = torch.zeros(cfg.batch_size, num_tokens, token_dim)
    # Outside the meta context: the RoPE shift is drawn as a CPU number. Labels None (the null
    # class), since checking their range needs values; an embedding lookup costs no FLOPs.
    flops = count_flops(lambda: gen.loss(tokens, None).backward())
    steps = cfg.steps or math.ceil(cfg.epochs * (num_samples // cfg.batch_size))  # as train()
    return Estimate(run, count_parameters(gen), cfg.batch_size, flops, steps)


def course_estimates() -> list[Estimate]:
    """Tokenizer and generator runs of every trainer preset: fast (the course's FAST CPU
    recipe), tiny, pretrained, course_gpu (full mode, one GPU) and, for scale, the paper (its 8
    GPUs' hours summed). The two trainers share their preset names."""
    tok_runs = {name: TokenizerTrainConfig.preset(name) for name in TokenizerTrainConfig.PRESETS}
    gen_runs = {name: GeneratorTrainConfig.preset(name) for name in GeneratorTrainConfig.PRESETS}
    toks = [estimate_tokenizer(cfg, f"tokenizer {name}") for name, cfg in tok_runs.items()]
    gens = []
    for name, cfg in gen_runs.items():  # each on the latents of the tokenizer run of its name
        tok_cfg = tok_runs[name]
        imagenet = tok_cfg.data == "imagenet"
        # Training rows: ImageNet, or the tokenizer's SynthScapes images and their flips.
        samples = IMAGENET_TRAIN_IMAGES if imagenet else 2 * tok_cfg.num_images
        token_dim = TokenizerConfig.preset(tok_cfg.tokenizer, **tok_cfg.tokenizer_overrides).embed_dim
        gens.append(estimate_generator(cfg, token_dim, 1000 if imagenet else 8, samples,
                                       run=f"generator {name}"))
    by_cost = attrgetter("total_flops")
    return sorted(toks, key=by_cost) + sorted(gens, key=by_cost)


def format_table(rows: list[Estimate], mfu: float = ASSUMED_MFU) -> str:
    """A markdown table: run, parameters, batch, GFLOPs per step, steps, estimated A100-hours."""
    lines = ["| run | params | batch | GFLOPs/step | steps | A100 time (est.) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.run} | {r.params / 1e6:.2f} M | {r.batch} | {r.step_flops / 1e9:,.1f} | "
                     f"{r.steps:,} | {_duration(r.a100_hours(mfu))} |")
    return "\n".join(lines)


def _duration(hours: float) -> str:
    """Hours from 0.1 h up, else minutes or seconds: the CPU recipes are seconds of an A100."""
    if hours >= 0.1:
        return f"{hours:.2f} h" if hours < 10 else f"{hours:,.0f} h"
    return f"{hours * 60:.1f} min" if hours >= 1 / 60 else f"{hours * 3600:.2g} s"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mfu", type=float, default=ASSUMED_MFU,
                        help="assumed sustained fraction of the A100's bf16 peak (default: %(default)s)")
    args = parser.parse_args(argv)
    print(f"A100-hours = FLOPs / ({args.mfu:.0%} of {A100_BF16_PEAK / 1e12:.0f} TFLOP/s bf16): an "
          "estimate. Tokenizer rows leave out LPIPS and the discriminators (not used offline).")
    print(format_table(course_estimates(), args.mfu))


if __name__ == "__main__":
    main()
