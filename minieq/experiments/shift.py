"""Position-shift ablation (paper Sec. 3.3, Fig. 7).

The image tokens' queries carry RoPE at their absolute positions, also in the cross-attention
to the class tokens, whose keys carry none; so the generator is *not* blind to absolute
positions. Trained on 16-token images it sees the queries of positions 0..15 only, unless every
batch is shifted by a random offset in [0, shift_num) (the paper: 16, positions 0..30 seen).
Fig. 7 shows images sampled far beyond the training length with and without the shift.

Here two generators are trained the same way (same data, seed and steps) with ``shift_num`` 16
and 1 (no shift), then compared with two numbers:

* the held-out flow loss of 16-token sequences placed at RoPE offset s (positions s..s+15), for
  s from 0 to far beyond training: a paired measurement (same tokens, same flow noise), which
  shows directly what the model does with positions it never saw;
* the long-image fidelity of :mod:`minieq.experiments.long_fidelity` (offline FD of
  training-width crops vs offset, and their seam score) on strips ``multiple`` times the
  training width, with the same real reference for both models.

    python -m minieq.experiments shift                       # CPU: the FAST model, minutes
    python -m minieq.experiments shift --latents runs/pretrained/generator/latents.pt
    python -m minieq.experiments shift --scale paper --latents LAT.pt --tokenizer TOK.pt

Legend: B batch, N tokens, C channels, D width.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch.utils.data import Dataset

from minieq.cache_latents import cache_latents
from minieq.checkpoint import load_checkpoint, read_checkpoint
from minieq.cli import user_errors
from minieq.config import ConfigBase
from minieq.data import DATASETS, SynthScapes, dataset_names
from minieq.experiments import experiment_parser, write_result
from minieq.experiments.long_fidelity import (FidelityConfig, class_matched_images, crop_offsets,
                                              decode_strips, measure, reference_dataset, sample_strips,
                                              summarize)
from minieq.generator_data import TRAIN_TOKENS
from minieq.pipeline import Pipeline
from minieq.pretrained import pretrained_tokenizer
from minieq.tokenizer import sigma_vae_sample
from minieq.train_generator import GeneratorTrainConfig, train
from minieq.utils import eval_mode, pick_device
from minieq.viz import panorama


@dataclass
class ShiftConfig(ConfigBase):
    """Training and evaluation of the two runs (presets: ``cpu``, ``paper``)."""

    train_preset: str = "fast"       # GeneratorTrainConfig preset of both runs
    steps: int | None = 300          # training steps of each run (None: the preset's length)
    shift_nums: list[int] = field(default_factory=lambda: [16, 1])
    latent_images: int = 1024        # SynthScapes images encoded (+ flips) when no latent file is given
    heldout: int = 256               # held-out sequences for the loss at each offset
    loss_offsets: list[int] = field(default_factory=lambda: [0, 8, 16, 32, 64, 128, 240])
    multiple: int = 16               # sampled strips are this many training widths long
    strips_per_class: int = 4
    crops: int = 8                   # x-offsets of the FD curve
    cfg: float = 2.0
    batch_size: int = 16

    PRESETS = {
        # CPU: two 0.53 M-parameter FAST generators, 300 steps of batch 32 each (~1-2 min each on
        # one thread), 32 strips of 256 tokens per model.
        "cpu": {},
        # GPUs: two Large generators with the paper's recipe (Table 8), on cached Places latents.
        "paper": dict(train_preset="paper", steps=None, latent_images=0, heldout=2048,
                      loss_offsets=[0, 16, 32, 64, 256, 1008], strips_per_class=50, crops=16,
                      cfg=7.0, batch_size=64),
    }


def train_configs(config: ShiftConfig, latents: str, out: str | Path, seed: int = 0) -> dict:
    """``{shift_num: (GeneratorTrainConfig, run folder)}``: one recipe, only ``shift_num`` differs."""
    base = GeneratorTrainConfig.preset(config.train_preset)
    steps = {"steps": config.steps} if config.steps is not None else {}
    return {n: (base.replace(latents=str(latents), seed=seed,
                             model_overrides={**base.model_overrides, "shift_num": n}, **steps),
                Path(out) / f"shift{n}")
            for n in config.shift_nums}


@torch.no_grad()
def loss_at_offset(generator, tokens: torch.Tensor, labels: torch.Tensor, offset: int, seed: int = 0,
                   batch_size: int = 64) -> float:
    """Mean flow loss of ``tokens`` (B, N, C) (already scaled) placed at RoPE positions
    ``offset .. offset + N - 1`` (eval mode: no dropout). The flow time and noise come from a
    generator seeded with ``seed``, so two offsets see exactly the same draws."""
    device = generator.fake_latent.device
    rng = torch.Generator(device=device).manual_seed(seed)
    total, count = 0.0, 0
    with eval_mode(generator):
        for z, y in zip(tokens.split(batch_size), labels.split(batch_size)):
            z, y = z.to(device), y.to(device)
            h = generator.condition(z, y, shift=offset)  # (b, N, D)
            rows = generator.head.loss(z.flatten(0, 1), h.flatten(0, 1), generator=rng)  # (b·N,)
            total += float(rows.sum())
            count += rows.numel()
    return total / count


def _encoded_latents(tokenizer, images: int, path: Path, split: str, seed: int) -> Path:
    """Posterior means of ``images`` SynthScapes renders of the training size (with flips for the
    training split, as the course latents), cached at ``path``."""
    if path.exists():
        return path
    width = TRAIN_TOKENS * tokenizer.config.column_width
    data = SynthScapes(images, height=tokenizer.config.image_height, width=width, seed=seed, split=split)
    return cache_latents(tokenizer, data, path, flips=split == "train", show_progress=False)


def run(tokenizer, config: ShiftConfig | None = None, out: str | Path = "runs/experiments/shift",
        latents: str | Path | None = None, heldout_latents: str | Path | None = None, seed: int = 0,
        device: torch.device | str | None = None, reference: Dataset | None = None,
        keep_strips: bool = False) -> dict:
    """Train one generator per ``shift_num`` (or reuse a finished run in ``out``) and compare them.

    :param tokenizer: the tokenizer whose latents the generators model (decodes the strips).
    :param latents: cached latent file (:mod:`minieq.cache_latents`); None encodes
        ``config.latent_images`` SynthScapes training images into ``out/latents.pt``.
    :param heldout_latents: latents for the loss at each offset; None encodes ``config.heldout``
        SynthScapes val images (needs a SynthScapes-sized tokenizer).
    :param reference: ground truth of the training size with a ``labels`` sequence (default:
        SynthScapes val renders).
    :return: per run: the loss at each RoPE offset and the FD curve with its summary.
    """
    config = config or ShiftConfig.preset("cpu")
    out, device = Path(out), torch.device(device) if device is not None else pick_device()
    out.mkdir(parents=True, exist_ok=True)
    latents = latents or _encoded_latents(tokenizer, config.latent_images, out / "latents.pt", "train", seed)
    heldout_latents = heldout_latents or _encoded_latents(tokenizer, config.heldout, out / "heldout.pt",
                                                          "val", seed)
    held = torch.load(heldout_latents, weights_only=True)
    means, held_labels = held["latents"][:config.heldout], held["labels"][:config.heldout].long()  # (B, N, C)
    noisy = sigma_vae_sample(means, held.get("noise_std", 2.5), torch.Generator().manual_seed(seed))

    runs, strips_kept, fid = {}, {}, FidelityConfig(strips_per_class=config.strips_per_class, cfg=config.cfg,
                                                     batch_size=config.batch_size)
    recipes = train_configs(config, latents, out, seed)
    for n, (cfg, run_dir) in recipes.items():
        start = time.perf_counter()
        ckpt_path = train(cfg, run_dir, device=device)
        ckpt = read_checkpoint(ckpt_path)
        trained = time.perf_counter()
        gen = load_checkpoint(ckpt_path, map_location=device)  # EMA weights
        pipe = Pipeline(tokenizer.to(device), gen, ckpt["latent_scale"], train_tokens=ckpt["train_tokens"])
        tokens = noisy * pipe.latent_scale  # (B, N, C) as in training
        losses = {str(s): loss_at_offset(gen, tokens, held_labels, s, seed) for s in config.loss_offsets}
        labels = torch.arange(gen.config.num_classes).repeat_interleave(config.strips_per_class)  # (B,)
        strip_tokens = sample_strips(pipe, labels, config.multiple * pipe.train_tokens, fid, seed)
        strips_kept[n] = decode_strips(pipe, strip_tokens, config.batch_size)  # (B, 3, H, W)
        runs[str(n)] = {"loss_at_offset": losses, "final_step": int(ckpt["train_state"]["step"]),
                        "seconds": {"train": trained - start, "evaluate": time.perf_counter() - trained}}

    # One real reference (and noise sets) for both runs: their FD curves are paired.
    col, crop = pipe.column_width, pipe.train_tokens
    height = strips_kept[config.shift_nums[0]].shape[-2]
    if reference is None:
        reference = SynthScapes(2 * len(labels) * (fid.noise_sets + 1), height=height, width=crop * col,
                                seed=seed, split="val")
    real = class_matched_images(reference, labels, fid.noise_sets + 1, seed)
    offsets = crop_offsets(config.multiple * crop, crop, config.crops)
    for n in config.shift_nums:
        curve = measure(strips_kept[n], real, crop * col, [o * col for o in offsets], col)
        runs[str(n)].update(curve=curve, summary=summarize(curve, offsets, crop, [config.multiple]))
    result = {"experiment": "shift", "seed": seed, "settings": config.to_dict(),
              "train_config": {str(n): c.to_dict() for n, (c, _) in recipes.items()},
              "latents": str(latents), "train_tokens": crop, "offsets_tokens": offsets, "runs": runs,
              "metric": "flow loss (held-out, paired noise); offline FD on EfficientNet-Lite0 features"}
    if keep_strips:
        result["strips"] = strips_kept
    return result


def plot(result: dict, strips: dict | None = None):
    """Loss vs RoPE offset and FD vs crop offset for each ``shift_num``, above one strip of each."""
    runs, n = result["runs"], result["train_tokens"]
    rows = len(strips) if strips else 0
    fig = Figure(figsize=(11, 3.2 + 1.3 * rows), dpi=100)
    grid = fig.add_gridspec(rows + 1, 2, height_ratios=[1] * rows + [2.2])
    for i, (shift, strip) in enumerate((strips or {}).items()):
        ax = fig.add_subplot(grid[i, :])
        ax.imshow(panorama(strip[0], rows=2), interpolation="nearest")
        ax.set_title(f"shift_num {shift}: a strip {result['settings']['multiple']}x the training width",
                     fontsize=9, loc="left")
        ax.axis("off")
    ax_loss, ax_fd = fig.add_subplot(grid[rows, 0]), fig.add_subplot(grid[rows, 1])
    for shift, r in runs.items():
        offsets = [int(s) for s in r["loss_at_offset"]]
        ax_loss.plot(offsets, list(r["loss_at_offset"].values()), "o-", ms=3, label=f"shift_num {shift}")
        ax_fd.plot(result["offsets_tokens"], r["curve"]["fd"], "o-", ms=3, label=f"shift_num {shift}")
    noise = torch.tensor(next(iter(runs.values()))["curve"]["noise_fds"])
    ax_fd.axhspan(float(noise.mean() - 2 * noise.std()), float(noise.mean() + 2 * noise.std()),
                  color="gray", alpha=0.3, label="real vs real (mean ± 2 std)")
    ax_loss.axvspan(0, n, color="tab:orange", alpha=0.15, label="positions of training (no shift)")
    ax_loss.set(xlabel="RoPE offset of a 16-token sequence", ylabel="held-out flow loss",
                title="loss at positions never / rarely seen", xscale="symlog")
    ax_fd.set(xlabel="crop offset (tokens)", ylabel="offline FD", title="FD of crops vs offset", ylim=(0, None))
    ax_loss.legend(fontsize=7)
    ax_fd.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> dict:
    """CLI: ``python -m minieq.experiments shift [--scale paper ...]``; writes JSON + PNG."""
    parser = experiment_parser("shift", __doc__)
    parser.add_argument("--latents", default=None, help="cached latent file (default at cpu scale: "
                        "encode SynthScapes with the tokenizer; required at paper scale)")
    parser.add_argument("--heldout_latents", default=None, help="latent file for the held-out loss "
                        "(default at cpu scale: encoded SynthScapes val images)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer checkpoint (default at cpu scale: "
                        "the pretrained course tokenizer)")
    parser.add_argument("--data", default="synthscapes", choices=DATASETS,
                        help=f"ground truth of the FD: {dataset_names()} (synthscapes at cpu "
                             "scale; the others: val split, needs --data_path)")
    parser.add_argument("--data_path", default=None,
                        help="root folder of a real data set, or of your own images for --data folder")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (preset's)")
    parser.add_argument("--strips_per_class", type=int, default=None, help="strips per class (preset's)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k in ("steps", "strips_per_class") and v is not None}
    with user_errors(parser):
        config = ShiftConfig.preset(args.scale, **overrides)
        device = pick_device(args.device)
        if args.scale == "paper" and not (args.latents and args.tokenizer and args.heldout_latents):
            raise ValueError("--scale paper needs --latents, --heldout_latents and --tokenizer (the "
                             "paper's tokenizer and its cached latents)")
        if args.tokenizer:
            tokenizer = load_checkpoint(args.tokenizer, map_location=device, expect="ColumnTokenizer")
        else:
            tokenizer = pretrained_tokenizer(device)
        height, width = tokenizer.config.image_height, TRAIN_TOKENS * tokenizer.config.column_width
        # SynthScapes (None) is rendered inside run(), sized to the strips it needs.
        reference = None if args.data == "synthscapes" else reference_dataset(args, height, width, 0)
        result = run(tokenizer, config, Path(args.out) / "shift", args.latents, args.heldout_latents,
                     args.seed, device, reference, keep_strips=True)
    strips = result.pop("strips")
    paths = write_result(args.out, "shift", result, plot(result, strips))
    for shift, r in result["runs"].items():
        losses = ", ".join(f"{s}: {v:.4f}" for s, v in r["loss_at_offset"].items())
        print(f"shift_num {shift}: loss at RoPE offset {{{losses}}}; FD first crop "
              f"{r['summary']['fd_first_crop']:.1f}, mean {r['summary']['fd_mean']:.1f}")
    print(f"wrote {paths['json']} and {paths['png']}")
    return result
