"""Benchmark: SynthScapes rendering speed (images per second) for a few sizes.

Usage: python -m minieq.bench.data [--images 2048] [--batch 256] [--threads N]
"""
from __future__ import annotations

import argparse
import time

import torch

from minieq.synthscapes import SYNTHSCAPES_CLASSES, render_synthscapes

SIZES = [(32, 128), (32, 1024), (64, 256), (256, 256)]


def bench(height: int, width: int, images: int, batch: int, centered: bool = False) -> float:
    """Images per second rendering ``images`` balanced images of ``height`` x ``width``."""
    render_synthscapes(torch.arange(8), height, width)  # warm-up
    start = time.perf_counter()
    for first in range(0, images, batch):
        idx = torch.arange(first, min(first + batch, images))
        render_synthscapes(idx % len(SYNTHSCAPES_CLASSES), height, width, indices=idx, centered=centered)
    return images / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048, help="images per size (scaled down for big sizes)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"SynthScapes rendering on CPU, {torch.get_num_threads()} thread(s), batch {args.batch}")
    print(f"{'size (HxW)':>12} {'images':>7} {'img/s':>9} {'s per 10k':>10}")
    for h, w in SIZES:
        n = max(args.batch, args.images * 32 * 128 // (h * w) // 4 * 4) if h * w > 64 * 256 else args.images
        n = min(n, args.images)
        rate = bench(h, w, n, args.batch)
        print(f"{f'{h}x{w}':>12} {n:>7} {rate:>9.0f} {10_000 / rate:>10.1f}")


if __name__ == "__main__":
    main()
