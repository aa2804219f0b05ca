"""Encode a data set once into a latent file, so the generator never runs the tokenizer encoder.

    python -m minieq.cache_latents --tokenizer runs/tok/checkpoint.pt --data synthscapes \\
        --num_images 4096 --out runs/course/latents.pt

The file holds posterior MEANS: ``{"latents": (M, N, C) float32, "labels": (M,) long,
"tokenizer_config": ..., "noise_std": ..., "flips": bool, "num_images": ..., "classes": names}``. With flips, rows
``num_images..2·num_images-1`` are the horizontally mirrored images, in the same order, so the
generator sees both orientations (the official training flips at random each epoch,
docs/official_code.md#tokenizer-optimisation). The σ-VAE noise is NOT baked in: the generator
trainer draws it on the fly from the means with ``minieq.tokenizer.sigma_vae_sample`` (the official
code re-encodes and samples every step, docs/official_code.md#tokenizer-quirks).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from minieq.checkpoint import atomic_torch_save, load_checkpoint
from minieq.cli import parser_for, user_errors
from minieq.data import DATASETS, build_dataset, dataset_names
from minieq.generator_data import TRAIN_TOKENS
from minieq.logger import progress
from minieq.utils import pick_device


@torch.no_grad()
def cache_latents(tokenizer, dataset: Dataset, path: str | os.PathLike, flips: bool = True,
                  batch_size: int = 64, num_workers: int = 0, show_progress: bool = True) -> Path:
    """Encode every image of ``dataset`` (posterior means, fp32) and write the latent file.

    :param tokenizer: a ColumnTokenizer (its device is used; it is put in eval mode).
    :param dataset: yields ``(image in [-1, 1], label)``; use a deterministic (no random
        crop/flip) transform.
    :param flips: also encode the horizontally flipped images, as extra rows after the originals.
    :return: ``path``.
    """
    tokenizer.eval()
    device = next(tokenizer.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    latents, flipped, labels = [], [], []
    for x, y in progress(loader, desc="caching latents", disable=not show_progress):
        x = x.to(device)
        latents.append(tokenizer.encode(x).float().cpu())  # (B, N, C)
        if flips:
            flipped.append(tokenizer.encode(x.flip(-1)).float().cpu())  # mirrored along the width
        labels.append(torch.as_tensor(y).long())
    labels = torch.cat(labels)
    payload = {
        "latents": torch.cat(latents + flipped),  # (M, N, C), M = num_images · (2 if flips else 1)
        "labels": torch.cat([labels, labels]) if flips else labels,
        "tokenizer_config": tokenizer.config.to_dict(),
        "noise_std": float(tokenizer.config.noise_std),
        "flips": flips,
        "num_images": len(labels),
    }
    if getattr(dataset, "classes", None):  # names, so the generator (and minieq.sample) knows them
        payload["classes"] = list(dataset.classes)
    return atomic_torch_save(payload, path)


def _dataset(args: argparse.Namespace, tok_config):
    # Centre crops (train=False): the flips are added explicitly as extra rows. The default width
    # is the generator's training length (128 px for the course tokenizers, 256 for the paper's).
    width = args.width or TRAIN_TOKENS * tok_config.column_width
    return build_dataset(args.data, args.data_path, split=args.split, height=tok_config.image_height,
                         width=width, num_images=args.num_images, seed=args.seed, train=False)


def main(argv: list[str] | None = None) -> int:
    """CLI (see ``--help``); writes the latent file and returns 0."""
    parser = parser_for("cache_latents", __doc__)
    parser.add_argument("--tokenizer", required=True,
                        help="tokenizer checkpoint (train_tokenizer's OUT/checkpoint.pt, or a tokenizer.pt)")
    parser.add_argument("--data", default="synthscapes", choices=DATASETS,
                        help=f"{dataset_names()} (default: synthscapes)")
    parser.add_argument("--data_path", default=None,
                        help="root folder of a real data set, or of your own images for --data folder")
    parser.add_argument("--split", default="train", help="data split (default: train)")
    parser.add_argument("--num_images", type=int, default=4096, help="SynthScapes only (default: 4096)")
    parser.add_argument("--width", type=int, default=None,
                        help=f"synthscapes and folder: image width in px (default: {TRAIN_TOKENS} columns "
                             "of the tokenizer, 128 for the course tokenizers)")
    parser.add_argument("--seed", type=int, default=0, help="SynthScapes only (default: 0)")
    parser.add_argument("--no_flips", action="store_true", help="do not add flipped copies")
    parser.add_argument("--batch_size", type=int, default=64, help="images per encoder call (default: 64)")
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader workers (default: 0)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: CUDA, then MPS, then CPU)")
    parser.add_argument("--out", required=True, help="latent file to write")
    args = parser.parse_args(argv)
    with user_errors(parser):
        tok = load_checkpoint(args.tokenizer, map_location=pick_device(args.device), expect="ColumnTokenizer")
        path = cache_latents(tok, _dataset(args, tok.config), args.out, flips=not args.no_flips,
                             batch_size=args.batch_size, num_workers=args.num_workers)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
