"""``make demo``: the minieq pipeline in fast CPU mode, writing pictures to ``--out``.

Stage 1 (data): a SynthScapes class grid (32×128 images, one row per class) and one 8×-wide
strip (32×1024), i.e. the data the tiny tokenizer and generator are trained on, and the width
a long-image sample should reach.
Usage: python -m minieq.demo --out runs/demo
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from minieq.synthscapes import SYNTHSCAPES_CLASSES, render_synthscapes
from minieq.viz import panorama, save_image_grid


def run_data_demo(out_dir: str | Path, per_class: int = 4, seed: int = 0) -> dict[str, Path]:
    """Render the class grid and the 8×-wide strip into ``out_dir``; returns the PNG paths."""
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = torch.arange(len(SYNTHSCAPES_CLASSES)).repeat_interleave(per_class)
    grid = render_synthscapes(labels, 32, 128, seed=seed)                # (8 * per_class, 3, 32, 128)
    strip = render_synthscapes(torch.tensor([0]), 32, 1024, seed=seed, indices=torch.tensor([10**6]))
    paths = {"class_grid": save_image_grid(out_dir / "synthscapes_classes.png", grid, nrow=per_class),
             "wide_strip": out_dir / "synthscapes_strip_32x1024.png"}
    Image.fromarray(panorama(strip, rows=1)).save(paths["wide_strip"])
    return paths


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"[data] rendering SynthScapes ({len(SYNTHSCAPES_CLASSES)} classes: {', '.join(SYNTHSCAPES_CLASSES)})")
    for name, path in run_data_demo(args.out, seed=args.seed).items():
        print(f"[data] {name}: {path}")


if __name__ == "__main__":
    main()
