"""``make demo``: the whole minieq pipeline in fast CPU mode, writing pictures to ``--out``.

1. data: a SynthScapes class grid (32×128, one row per class) and an 8×-wide ground-truth strip;
2. tokenizer: train the tiny column tokenizer (or load it), report held-out PSNR/SSIM, save
   reconstructions and the token-by-token reconstruction (paper Fig. 2/8) as PNG + GIF;
3. latents: encode the training set once, with horizontal flips;
4. generator: train the tiny windowed-causal generator on those latents (or load it);
5. samples: every class at the training width, and long images 8× and 64× the training width
   (paper Fig. 5), sampled with the sliding-window KV cache and decoded in bounded memory.

Every trained model lands in ``<out>/models`` and is reused by the next run; ``summary.json``
holds the measured numbers. Usage: ``python -m minieq.demo --out runs/demo``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image

from minieq.synthscapes import SYNTHSCAPES_CLASSES, render_synthscapes
from minieq.viz import panorama, save_image_grid


def run_data_demo(out_dir: str | Path, per_class: int = 4, seed: int = 0) -> dict[str, Path]:
    """Render the class grid and the 8×-wide strip into ``out_dir``; returns the PNG paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = torch.arange(len(SYNTHSCAPES_CLASSES)).repeat_interleave(per_class)
    grid = render_synthscapes(labels, 32, 128, seed=seed)                # (8 * per_class, 3, 32, 128)
    strip = render_synthscapes(torch.tensor([0]), 32, 1024, seed=seed, indices=torch.tensor([10**6]))
    paths = {"class_grid": save_image_grid(out_dir / "synthscapes_classes.png", grid, nrow=per_class),
             "wide_strip": out_dir / "synthscapes_strip_32x1024.png"}
    Image.fromarray(panorama(strip, rows=1)).save(paths["wide_strip"])
    return paths


@torch.no_grad()
def run_tokenizer_demo(tokenizer, out_dir: Path, num_images: int = 64, seed: int = 0) -> dict:
    """Held-out reconstruction metrics, a reconstruction grid and the token-by-token figure."""
    from minieq.data import SynthScapes
    from minieq.metrics import ColumnPCA, baseline_reconstructions, psnr, ssim
    from minieq.viz import frames_strip, reconstruction_grid, save_gif, token_by_token_frames

    cfg = tokenizer.config
    device = next(tokenizer.parameters()).device
    val = SynthScapes(num_images, height=cfg.image_height, width=16 * cfg.column_width,
                      seed=seed, split="val")
    x = torch.stack([val[i][0] for i in range(len(val))]).to(device)  # (B, 3, H, W)
    tokens = tokenizer.encode(x)  # (B, N, C) posterior means
    recon = tokenizer.decode(tokens).clamp(-1, 1)
    Image.fromarray(reconstruction_grid(x[:8].cpu(), recon[:8].cpu())).save(out_dir / "reconstructions.png")
    # The random tokens take the per-channel statistics of the whole held-out batch, as in
    # notebook 02, rather than those of the one image being revealed.
    frames = token_by_token_frames(tokenizer, x[0], generator=torch.Generator().manual_seed(seed),
                                   reference=tokens)
    save_gif(frames, out_dir / "token_by_token.gif")
    Image.fromarray(frames_strip(frames)).save(out_dir / "token_by_token.png")
    baselines = {f"baseline_{name}_psnr_db": float(psnr(x, b).mean())
                 for name, b in baseline_reconstructions(x, cfg.column_width).items()}
    # The best linear codec with the same token budget, fitted on training images.
    train = SynthScapes(1024, height=cfg.image_height, width=x.shape[-1], seed=seed, split="train")
    pca = ColumnPCA(torch.stack([train[i][0] for i in range(len(train))]), cfg.column_width, cfg.embed_dim)
    baselines["baseline_column_pca_psnr_db"] = float(psnr(x.cpu(), pca(x.cpu())).mean())
    return {"heldout_psnr_db": float(psnr(x, recon).mean()), "heldout_ssim": float(ssim(x, recon).mean()),
            "heldout_images": num_images, **baselines}


@torch.no_grad()
def run_sampling_demo(pipe, out_dir: Path, cfg: float = 3.0, per_class: int = 4, seed: int = 0) -> dict:
    """Class samples at the training width, and long panoramas 8× and 64× wider."""
    from minieq.analysis import seam_score

    num_classes = pipe.generator.config.num_classes
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    samples = pipe.generate(labels, cfg=cfg, seed=seed)  # (C·per_class, 3, H, 16 columns)
    save_image_grid(out_dir / "samples_by_class.png", samples.cpu(), nrow=per_class)
    train_width = pipe.DEFAULT_TOKENS * pipe.column_width
    stats = {"cfg": cfg}
    for factor, classes in ((8, range(num_classes)), (64, (0, 3))):
        start = time.perf_counter()
        long = pipe.generate(list(classes), width=factor * train_width, cfg=cfg, seed=seed)
        stats[f"long_{factor}x_seconds"] = round(time.perf_counter() - start, 1)
        stats[f"long_{factor}x_seam_score"] = seam_score(long, pipe.column_width)
        rows = 1 if factor == 8 else 8  # wrap the 64× strips so the PNG stays viewable
        for label, image in zip(classes, long):
            Image.fromarray(panorama(image.cpu(), rows=rows)).save(
                out_dir / f"long_{factor}x_{SYNTHSCAPES_CLASSES[label]}.png")
    return stats


def main(argv=None) -> dict:
    from minieq.course import tiny_generator, tiny_latents, tiny_tokenizer
    from minieq.pipeline import Pipeline
    from minieq.utils import pick_device, seed_everything

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale")
    parser.add_argument("--full", action="store_true", help="train the longer (GPU) recipes, not FAST")
    parser.add_argument("--data-only", action="store_true", help="only render the SynthScapes pictures")
    args = parser.parse_args(argv)
    seed_everything(args.seed)
    out, models, fast = args.out, args.out / "models", not args.full
    device = pick_device()
    timings = {}

    def stage(name: str, fn):
        start = time.perf_counter()
        result = fn()
        timings[name] = round(time.perf_counter() - start, 1)
        print(f"[{name}] done in {timings[name]} s")
        return result

    print(f"[data] rendering SynthScapes ({len(SYNTHSCAPES_CLASSES)} classes: {', '.join(SYNTHSCAPES_CLASSES)})")
    for name, path in stage("data", lambda: run_data_demo(out, seed=args.seed)).items():
        print(f"[data] {name}: {path}")
    if args.data_only:
        return {}
    print(f"[tokenizer] device {device}; loading or training the tiny tokenizer in {models}")
    tok = stage("tokenizer", lambda: tiny_tokenizer(models, fast=fast, device=device))
    summary = stage("reconstruction", lambda: run_tokenizer_demo(tok, out, seed=args.seed))
    print(f"[reconstruction] held-out PSNR {summary['heldout_psnr_db']:.2f} dB, SSIM {summary['heldout_ssim']:.3f} "
          f"(no-model baselines: row mean {summary['baseline_row_mean_psnr_db']:.2f} dB, "
          f"column mean {summary['baseline_column_mean_psnr_db']:.2f} dB; a linear codec with the "
          f"same {tok.config.embed_dim} numbers per column, fitted by PCA: "
          f"{summary['baseline_column_pca_psnr_db']:.2f} dB)")
    latents = stage("latents", lambda: tiny_latents(tok, models, fast=fast))
    gen, scale = stage("generator", lambda: tiny_generator(tok, latents, models, fast=fast, device=device))
    pipe = Pipeline(tok, gen, scale)
    summary.update(stage("sampling", lambda: run_sampling_demo(pipe, out, cfg=args.cfg, seed=args.seed)))
    summary.update(latent_scale=scale, seconds=timings)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"[done] pictures in {out}/: synthscapes_classes.png, reconstructions.png, token_by_token.gif, "
          f"samples_by_class.png, long_8x_*.png, long_64x_*.png; numbers in {out}/summary.json")
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
