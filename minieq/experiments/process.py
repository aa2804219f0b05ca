"""The generation process (paper Fig. 9) and long images (Fig. 5).

Fig. 9 shows an image appearing column by column as its tokens are sampled: frame k is the
decoding of the first k tokens, which is all the generator has after k steps (a causal sampler
never revisits a token). Fig. 5 shows strips many times the training width from a model trained
on one width only (Sec. 3.3). This experiment draws both with one model and records what they
cost (seconds per token) and whether the long strips show column seams
(:func:`minieq.analysis.seam_score`, 1 = none).

    python -m minieq.experiments process                    # CPU: the pretrained course models
    python -m minieq.experiments process --scale paper --tokenizer TOK.pt --generator GEN.pt

Legend: B strips, N tokens, C channels, H/W height/width in pixels.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from matplotlib.figure import Figure

from minieq.analysis import seam_score
from minieq.cli import user_errors
from minieq.config import ConfigBase
from minieq.experiments import experiment_parser, write_result
from minieq.experiments.long_fidelity import add_model_flags, load_pipeline
from minieq.pipeline import Pipeline
from minieq.synthscapes import SYNTHSCAPES_CLASSES
from minieq.utils import pick_device
from minieq.viz import image_grid, panorama


@dataclass
class ProcessConfig(ConfigBase):
    """What the two figures show (presets: ``cpu``, ``paper``)."""

    classes: list[int] | None = None  # default: every class of the generator
    frames: int = 8                   # frames of the generation process per class
    cfg: float = 2.0
    cfg_schedule: str = "constant"
    long_multiple: int = 8            # Fig. 5: one strip per class this many training widths long
    panorama_multiple: int = 32       # and one strip of the first class this long

    PRESETS = {"cpu": {}, "paper": dict(cfg=7.0, panorama_multiple=64)}


def frame_steps(num_tokens: int, frames: int) -> list[int]:
    """Token counts of ``frames`` evenly spaced frames from 2 (the tokenizer's minimum) to ``num_tokens``."""
    if num_tokens < 2 or frames < 1:
        raise ValueError(f"need num_tokens >= 2 and frames >= 1, got {num_tokens} and {frames}")
    return torch.linspace(2, num_tokens, min(frames, num_tokens - 1)).round().long().unique().tolist()


@torch.no_grad()
def generation_frames(pipe: Pipeline, tokens: torch.Tensor, steps: list[int]) -> list[torch.Tensor]:
    """Paper Fig. 9: frame k decodes the first k of ``tokens`` (1, N, C) or (N, C), drawn at the left
    of a grey canvas of the full width; returns one (3, H, N · column width) CPU image per step."""
    tokens = tokens.reshape(1, -1, tokens.shape[-1]).to(pipe.device)  # (N, C) or (1, N, C) -> (1, N, C)
    n, col = tokens.shape[1], pipe.column_width
    if min(steps) < 2 or max(steps) > n:
        raise ValueError(f"frame steps must lie in [2, {n}] (the tokenizer decodes >= 2 tokens), got {steps}")
    frames = []
    for k in steps:
        part = pipe.decode(tokens[:, :k])[0].cpu()  # (3, H, k · col)
        canvas = torch.zeros(3, part.shape[1], n * col)  # mid grey: not generated yet
        canvas[..., :k * col] = part
        frames.append(canvas)
    return frames


def run(pipe: Pipeline, config: ProcessConfig | None = None, seed: int = 0, keep_pictures: bool = False) -> dict:
    """Sample the process frames (training width, one per class) and the long strips.

    :param keep_pictures: also return ``"frames"`` (per class, a list of (3, H, W)),
        ``"long"`` (B, 3, H, W) and ``"panorama"`` (3, H, W') under those keys (tensors, not JSON).
    :return: settings, frame steps, seconds per token and seam scores.
    """
    config = config or ProcessConfig.preset("cpu")
    classes = config.classes if config.classes is not None else list(range(pipe.generator.config.num_classes))
    labels = torch.tensor(classes)
    kwargs = dict(cfg=config.cfg, cfg_schedule=config.cfg_schedule)
    n = pipe.train_tokens

    tokens = pipe.sample_tokens(labels, n, seed=seed, **kwargs)  # (B, n, C)
    steps = frame_steps(n, config.frames)
    frames = [generation_frames(pipe, t, steps) for t in tokens]
    timings, pictures = {}, {}
    for name, label, multiple in [("long", labels, config.long_multiple),
                                  ("panorama", labels[:1], config.panorama_multiple)]:
        start = time.perf_counter()
        strip_tokens = pipe.sample_tokens(label, multiple * n, seed=seed + 1, **kwargs)  # (b, N, C)
        sampled = time.perf_counter()
        pictures[name] = pipe.decode(strip_tokens).cpu()  # (b, 3, H, N · col)
        timings[name] = {"tokens": multiple * n, "strips": len(label),
                         "sample_s_per_token": (sampled - start) / (multiple * n),
                         "decode_s": time.perf_counter() - sampled}
    col = pipe.column_width
    result = {
        "experiment": "process", "seed": seed, "settings": config.to_dict(), "classes": classes,
        "train_tokens": n, "frame_steps": steps, "seconds": timings,
        "seam_score": {"long_per_class": [seam_score(x, col) for x in pictures["long"]],
                       "panorama": seam_score(pictures["panorama"], col),
                       "process_final_frames": seam_score(torch.stack([f[-1] for f in frames]), col)},
    }
    if keep_pictures:
        result.update(frames=frames, long=pictures["long"], panorama=pictures["panorama"][0])
    return result


def plot(result: dict, frames: list, long: torch.Tensor, panorama_image: torch.Tensor, class_names=None):
    """The process frames (a row per class), the long strips and the panorama, in one Figure."""
    names = class_names or [str(c) for c in result["classes"]]
    process = image_grid([f for per_class in frames for f in per_class], nrow=len(frames[0]))
    strips = image_grid(list(long), nrow=1)
    wide = panorama(panorama_image, rows=4)
    pictures = [(f"Fig. 9: generation process, frames after {result['frame_steps']} tokens; rows: "
                 f"{', '.join(names)}", process),
                (f"Fig. 5: one strip per class, {result['settings']['long_multiple']}x the training width",
                 strips),
                (f"{names[0]}, {result['settings']['panorama_multiple']}x the training width (in 4 lines)", wide)]
    heights = [p.shape[0] / p.shape[1] for _, p in pictures]
    fig = Figure(figsize=(11, 11 * sum(heights) + 0.9), dpi=100)
    axes = fig.subplots(3, 1, gridspec_kw={"height_ratios": heights})
    for ax, (title, picture) in zip(axes, pictures):
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(title, fontsize=9, loc="left")
        ax.axis("off")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> dict:
    """CLI: ``python -m minieq.experiments process [--scale paper ...]``; writes JSON + PNG."""
    parser = experiment_parser("process", __doc__)
    add_model_flags(parser)
    parser.add_argument("--cfg", type=float, default=None, help="guidance scale (preset's)")
    args = parser.parse_args(argv)
    with user_errors(parser):
        config = ProcessConfig.preset(args.scale, **({"cfg": args.cfg} if args.cfg is not None else {}))
        result = run(load_pipeline(args, pick_device(args.device)), config, args.seed, keep_pictures=True)
    pictures = [result.pop(k) for k in ("frames", "long", "panorama")]
    names = None
    if args.scale == "cpu" and not args.generator:  # the course models draw SynthScapes classes
        names = [SYNTHSCAPES_CLASSES[c] for c in result["classes"]]
    paths = write_result(args.out, "process", result, plot(result, *pictures, class_names=names))
    seconds = result["seconds"]
    print(f"seconds per token: long strips {seconds['long']['sample_s_per_token']:.4f} (batch "
          f"{seconds['long']['strips']}), panorama {seconds['panorama']['sample_s_per_token']:.4f}; "
          f"seam score of the panorama {result['seam_score']['panorama']:.3f}")
    print(f"wrote {paths['json']} and {paths['png']}")
    return result
