"""Attention ablation (paper Sec. 4.4, Table 4): window causal vs full causal vs strictly equivariant.

    python -m minieq.experiments attention [--latents runs/pretrained/generator/latents.pt]

Three generators, identical but for ``GeneratorConfig.attention``, are trained the same way
(same data, steps, seed) on the course tokenizer's latents:

* ``window`` (the paper): each layer sees the 3 previous tokens; the receptive field grows with
  depth, so long-range context is kept (Equ. + L-Ctx. in Table 4);
* ``full``: plain causal attention, every previous token (L-Ctx. only);
* ``strict`` ("Real Equ.", Sec. 3.2): prediction k depends on the 4 previous tokens at most,
  whatever the depth (Equ. only).

Measured for each: the held-out flow loss, the offline FD (EfficientNet-Lite0 features, NOT
comparable with published FID) of 16-token samples against held-out images, long-image
fidelity of 8x strips (128 tokens: :func:`minieq.analysis.strip_statistics` against
ground-truth strips, and the seam score), and attention FLOPs: the pairs each mask keeps, in
the paper's units for its Small model (:func:`minieq.experiments.efficiency.attention_flops`),
plus what the counter measures for the whole transformer (the strict variant runs the stack
on every window: 3x the token passes).

Without ``--latents`` the training latents are SynthScapes images encoded here with the shipped
course tokenizer (slower, ~1 min more). Paper scale: ``--latents`` is required (a paper-size
column tokenizer's latents, read in place) and samples, FD and strips are skipped (no
paper-size decoder offline); the loss is measured on the file's first 10 000 rows.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import torch

from minieq.analysis import seam_score, strip_statistics
from minieq.cli import user_errors
from minieq.data import SynthScapes
from minieq.experiments import experiment_parser, write_result
from minieq.experiments.efficiency import attention_flops, attention_pairs, count_generator
from minieq.experiments.training_runs import (SCALES, course_latents, file_latents, synthscapes,
                                              train_on_latents)
from minieq.generator import GeneratorConfig
from minieq.metrics import fd_kid
from minieq.utils import pick_device
from minieq.viz import image_grid

NAME = "attention"
VARIANTS = ("window", "full", "strict")
PAPER = {"full": {"gfid": 7.35, "attn_flops": "4.2M"}, "strict": {"gfid": 8.87, "attn_flops": "0.26M"},
         "window": {"gfid": 7.21, "attn_flops": "1.8M"}}
MEGA = 2 ** 20  # the paper's "M": its numbers match binary millions (see attention_table)


def attention_table(num_tokens: int = 16, cond_length: int = 3, preset: str = "S") -> dict:
    """Attention FLOPs of each variant for the paper's ablation model (Table 4 is Ours-S).

    ``paper_units``: self-attention FLOPs / 2^20 over the stack (full 4.25, window 1.81 against
    the paper's 4.2M and 1.8M). ``transformer_gflops``: the whole transformer per image as
    ``torch.utils.flop_counter`` measures it (dense attention; strict re-runs the stack per window).
    """
    cfg = GeneratorConfig.preset(preset)
    rows = {}
    for v in VARIANTS:
        measured = count_generator(preset, num_tokens, {"attention": v, "cond_length": cond_length})
        rows[v] = {"pairs_per_layer": attention_pairs(num_tokens, v, cond_length),
                   "paper_units": round(attention_flops(num_tokens, v, cfg.embed_dim, cfg.depth,
                                                        cond_length) / MEGA, 3),
                   "paper": PAPER[v]["attn_flops"],
                   "transformer_gflops": round(measured["transformer"] / 1e9, 3)}
    return rows


@torch.no_grad()
def sample_images(run, latents, num: int, num_tokens: int, seed: int, device) -> torch.Tensor:
    """``num`` decoded samples (class-balanced, no guidance) of ``num_tokens`` tokens each."""
    labels = torch.arange(num, device=device) % latents.num_classes
    g = torch.Generator(device).manual_seed(seed)
    out = []
    for chunk in labels.split(64):
        tokens = run.generator.sample(chunk, num_tokens=num_tokens, generator=g)  # (b, N, C)
        out.append(latents.decode(tokens / run.latent_scale))
    return torch.cat(out)


def run(out: str | Path = "runs/experiments", scale: str = "cpu", seed: int = 0, device=None,
        steps: int | None = None, latents_path: str | None = None, num_images: int = 1024,
        fd_samples: int = 256, long_strips: int = 8, long_factor: int = 8,
        variants: tuple[str, ...] = VARIANTS, val_images: int = 256) -> dict:
    """Train one generator per attention variant and measure it (see the module docstring).

    :param latents_path: a ``minieq.cache_latents`` file (the course latents at CPU scale).
    :param num_images: SynthScapes images to encode when ``latents_path`` is None.
    :param fd_samples: samples (and held-out images) per offline FD; 0 skips the FD.
    :param long_strips: strips of ``long_factor`` x 16 tokens per model; 0 skips them.
    :param variants: the attention variants to train (the notebook trains fewer).
    :param val_images: held-out images of the loss (CPU scale).
    """
    settings = SCALES[scale]
    device = pick_device(device)
    if scale == "paper" and latents_path is None:
        raise ValueError("--scale paper needs --latents (a minieq.cache_latents file)")
    if scale == "paper":
        latents = file_latents(latents_path)
    else:
        latents = course_latents(latents_path, num_images, val_images, seed, device)
    n = latents.train.shape[1]
    result = {"experiment": NAME, "scale": scale, "seed": seed, "steps": steps or settings.steps,
              "latents": latents.description, "fd_samples": fd_samples, "long_strips": long_strips,
              "long_tokens": long_factor * n, "variants": {}, "attention_flops": attention_table(n)}
    pictures = {}
    if latents.decode is not None and fd_samples:
        real, _ = synthscapes(fd_samples, False, "val", seed + 1)
        other, _ = synthscapes(fd_samples, False, "train", seed + 1)
        result["fd_floor"] = fd_kid(real, other)["fd_lite0"]  # two real sets: the best reachable
    ref = None  # ground-truth strips, rendered once the strip width is known
    for v in variants:
        r = train_on_latents(latents, Path(out) / NAME / v, settings, steps=steps,
                             model_overrides={"attention": v}, seed=seed, device=device)
        loss = torch.tensor(r.val_loss[max(r.val_loss)])
        row = {"heldout_loss": float(loss.mean()), "heldout_loss_per_position": loss.tolist(),
               "seconds": round(r.seconds, 1), "paper_gfid": PAPER[v]["gfid"]}
        if latents.decode is not None and fd_samples:
            row["fd_lite0"] = fd_kid(real, sample_images(r, latents, fd_samples, n, seed, device))["fd_lite0"]
        if latents.decode is not None and long_strips:
            strips = sample_images(r, latents, long_strips, long_factor * n, seed, device)
            cw = strips.shape[-1] // (long_factor * n)
            if ref is None:
                ref = torch.stack([s for s, _ in _strips(2 * long_strips, strips.shape[-1], seed)])
                result["reference_seam_score"] = seam_score(ref[:long_strips], cw)
            stats = strip_statistics(strips, ref, cw, trained_tokens=n)["summary"]
            row["long"] = {k: round(val, 5) for k, val in stats.items()}
            row["long"]["seam_score"] = seam_score(strips, cw)
            pictures[v] = strips[:2]
        result["variants"][v] = row
    result["pictures"] = pictures
    return result


def _strips(num: int, width: int, seed: int):
    """Ground-truth SynthScapes strips (val split) ``width`` pixels wide, class-balanced."""
    data = SynthScapes(num, height=32, width=width, seed=seed + 2, split="val")
    return [data[i] for i in range(num)]


def figure(result: dict):
    """Held-out loss and FD per variant (bars), and two 8x strips of each variant."""
    names = list(result["variants"])
    pics = result.get("pictures", {})
    fig = plt.figure(figsize=(12, 2.6 + 1.1 * len(pics)))
    grid = fig.add_gridspec(1 + len(pics), 2, height_ratios=[2.2] + [1] * len(pics))
    ax = fig.add_subplot(grid[0, 0])
    ax.bar(names, [result["variants"][k]["heldout_loss"] for k in names], color="C0")
    ax.set(ylabel="held-out flow loss", ylim=(min(result["variants"][k]["heldout_loss"] for k in names) * 0.97, None))
    ax = fig.add_subplot(grid[0, 1])
    if all("fd_lite0" in result["variants"][k] for k in names):
        ax.bar(names, [result["variants"][k]["fd_lite0"] for k in names], color="C1")
        ax.axhline(result.get("fd_floor", 0), color="k", ls=":", label="two real sets")
        ax.set(ylabel="offline FD (Lite0)")
        ax.legend(fontsize=7)
    for i, v in enumerate(pics):
        ax = fig.add_subplot(grid[1 + i, :])
        ax.imshow(image_grid(pics[v], nrow=1))
        ax.set_title(f"{v}: {result['long_tokens']}-token strips", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> dict:
    parser = experiment_parser(NAME, __doc__)
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default: the scale's)")
    parser.add_argument("--latents", default=None, help="latent file (default: encode SynthScapes here)")
    parser.add_argument("--num_images", type=int, default=1024, help="SynthScapes images to encode without --latents")
    parser.add_argument("--fd_samples", type=int, default=256, help="samples per offline FD (0: skip)")
    parser.add_argument("--long_strips", type=int, default=8, help="8x strips per variant (0: skip)")
    args = parser.parse_args(argv)
    with user_errors(parser):
        result = run(args.out, args.scale, args.seed, args.device, args.steps, args.latents, args.num_images,
                     args.fd_samples, args.long_strips)
    fig = figure(result)
    result.pop("pictures")
    write_result(args.out, NAME, result, fig)
    for v, row in result["variants"].items():
        extra = f", FD {row['fd_lite0']:.2f}" if "fd_lite0" in row else ""
        flops = result["attention_flops"][v]
        print(f"{v:7s} held-out loss {row['heldout_loss']:.4f}{extra}; attention {flops['paper_units']:.2f}M "
              f"(paper {flops['paper']}), transformer {flops['transformer_gflops']:.2f} GFLOPs")
    return result
