"""Table 5 at course scale: what each term of the tokenizer objective adds to a frozen encoder.

The paper (Table 5) fine-tunes the decoder of its stage-1 tokenizer and reports rFID 1.11
(baseline) → 0.62 (DINO discriminator) → 0.58 (+ decoder fine-tuning) → 0.56 (+ semantic
alignment). Here every row starts from the shipped stage-1 course tokenizer, freezes its encoder
(so every row decodes the SAME latents, and the shipped course generator serves every row) and
fine-tunes the decoder for the same number of steps with one more term each:

* ``stage1``: the shipped tokenizer (L1 + KL, 16 000 steps), no fine-tuning;
* ``l1_kl``: the control, L1 + KL for as many steps as the others (objective, or just more steps?);
* ``adversarial``: + the PatchGAN hinge loss with its adaptive weight;
* ``perceptual``: + the offline LPIPS stand-in (:mod:`minieq.perceptual`): the shipped decoder;
* ``semantic``: not run. Semantic alignment regresses DINOv2 features from the ENCODER's latents;
  with the encoder frozen it cannot change anything here, and offline there is no DINOv2.

Columns: PSNR / SSIM of held-out reconstructions, the offline FD (EfficientNet-Lite0) of those
reconstructions (the rFID analogue) and of the course generator's samples decoded by each
decoder (the gFID analogue: the same sampled tokens for every row), and the network-free texture
measures of :mod:`minieq.texture` (detail ratio, high-frequency energy ratio against real images).

    python -m minieq.experiments tokenizer_ablation                 # trains the rows (or resumes)
    python -m minieq.experiments tokenizer_ablation --steps 20      # a smoke run

Legend: B images, N tokens, H/W height/width in pixels.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from minieq.checkpoint import load_checkpoint
from minieq.cli import user_errors
from minieq.experiments import experiment_parser, write_result
from minieq.evaluation import PCACodec, heldout_images
from minieq.generator_data import TRAIN_TOKENS
from minieq.metrics import frechet_distance, image_features, psnr, ssim
from minieq.pipeline import Pipeline
from minieq.pretrained import TOKENIZER_FILE, pretrained_generator, textured_config
from minieq.synthscapes import SYNTHSCAPES_CLASSES, render_synthscapes
from minieq.texture import radial_power_spectrum, texture_report
from minieq.train_tokenizer import TokenizerTrainConfig, train
from minieq.utils import pick_device

# row -> (label, loss overrides of the "pretrained_texture" preset; None: the stage-1 file itself)
ROWS = {
    "stage1": ("stage 1 (shipped, L1 + KL)", None),
    "l1_kl": ("decoder FT: L1 + KL (control)", dict(lpips_weight=0.0, disc_type="none")),
    "adversarial": ("decoder FT: + adversarial", dict(lpips_weight=0.0)),
    "perceptual": ("decoder FT: + adversarial + perceptual", {}),
}
SEMANTIC_NOTE = ("not run: semantic alignment trains the encoder to predict DINOv2 features; the "
                 "encoder is frozen here (the course generator depends on its latents) and no "
                 "DINOv2 weights are available offline")
PAPER_TABLE5_RFID = {"baseline": 1.11, "+ DINO discriminator": 0.62, "+ decoder finetune": 0.58,
                     "+ semantic alignment": 0.56}


def train_row(name: str, runs: Path, steps: int | None, device: torch.device) -> torch.nn.Module:
    """The row's tokenizer (EMA weights, eval mode): trained, resumed or read from its run."""
    _, loss = ROWS[name]
    if loss is None:
        return load_checkpoint(TOKENIZER_FILE).float().eval()
    path = train(textured_config(steps, **loss), runs / name, device=device, progress=False)
    return load_checkpoint(path).float().eval()


@torch.no_grad()
def evaluate(decoders: dict, real: torch.Tensor, heldout: torch.Tensor, latents: torch.Tensor,
             sample_latents: torch.Tensor, pca: PCACodec) -> tuple[dict, dict]:
    """Per row: the numbers and the images (reconstructions, samples) the figure shows."""
    real_feats = image_features(real)
    rows, images = {}, {}
    pca_recon = pca.decode(pca.encode(heldout))
    rows["pca"] = {"psnr_db": float(psnr(heldout, pca_recon).mean()),
                   "ssim": float(ssim(heldout, pca_recon).mean()),
                   "rfd": frechet_distance(real_feats, image_features(pca_recon)),
                   **{f"recon_{k}": v for k, v in texture_report(pca_recon, real).items()}}
    rows["heldout_real"] = {"rfd": frechet_distance(real_feats, image_features(heldout))}  # the floor
    for name, tok in decoders.items():
        recon = torch.cat([tok.decode(z).clamp(-1, 1) for z in latents.split(64)])
        samples = torch.cat([tok.decode(z).clamp(-1, 1) for z in sample_latents.split(64)])
        rows[name] = {"psnr_db": float(psnr(heldout, recon).mean()), "ssim": float(ssim(heldout, recon).mean()),
                      "rfd": frechet_distance(real_feats, image_features(recon)),
                      "gfd": frechet_distance(real_feats, image_features(samples)),
                      **{f"recon_{k}": v for k, v in texture_report(recon, real).items()},
                      **{f"sample_{k}": v for k, v in texture_report(samples, real).items()}}
        images[name] = (recon, samples)
    return rows, images


def figure(images: dict, heldout: torch.Tensor, real: torch.Tensor, per_class: int = 1):
    """Top: one held-out image per class, each row's reconstruction of it, then each row's samples;
    bottom: each row's radially averaged power spectrum divided by real images' (1 = real)."""
    n = len(SYNTHSCAPES_CLASSES) * per_class
    show = lambda x: np.concatenate(list((x[:n].clamp(-1, 1) * 0.5 + 0.5).permute(0, 2, 3, 1).numpy()), 0)
    panels = ([("held-out images", show(heldout))] + [(f"{k}\nreconstructions", show(r)) for k, (r, _) in images.items()]
              + [(f"{k}\nsamples (cfg 3)", show(s)) for k, (_, s) in images.items()])
    fig = plt.figure(figsize=(2.2 * len(panels), 4.4 + 3.2), dpi=110)
    grid = fig.add_gridspec(2, len(panels), height_ratios=[4.4, 3.2], hspace=0.25, wspace=0.05)
    for i, (name, picture) in enumerate(panels):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    ax = fig.add_subplot(grid[1, :])
    freqs, p_real = radial_power_spectrum(real)
    ax.axhline(1, color="k", lw=2, label="real images")
    for (name, (recon, samples)), colour in zip(images.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        ax.semilogy(freqs, radial_power_spectrum(recon)[1] / p_real, "-", color=colour, label=f"{name} reconstructions")
        ax.semilogy(freqs, radial_power_spectrum(samples)[1] / p_real, "--", color=colour, label=f"{name} samples")
    ax.set_xlabel("spatial frequency (cycles / px)")
    ax.set_ylabel("power / power of real images")
    ax.legend(fontsize=8, ncol=4, loc="lower left")
    return fig


def run(out: Path, runs: Path, steps: int | None = None, num_images: int = 512, seed: int = 0,
        cfg: float = 3.0, device=None) -> dict:
    device = pick_device(device)
    decoders = {name: train_row(name, runs, steps, device).cpu() for name in ROWS}
    stage1 = decoders["stage1"]
    h, w = stage1.config.image_height, TRAIN_TOKENS * stage1.config.column_width
    labels = torch.arange(num_images) % len(SYNTHSCAPES_CLASSES)
    real = render_synthscapes(labels, h, w, seed=seed)  # the reference set: training renders
    heldout = heldout_images(h, w, num_images, seed)  # image i: class i mod 8, like ``labels``
    latents = torch.cat([stage1.encode(b) for b in heldout.split(64)])  # frozen encoder: one set
    gen, scale = pretrained_generator("cpu")
    pipe = Pipeline(stage1, gen, scale)
    tokens = torch.cat([pipe.sample_tokens(b, TRAIN_TOKENS, cfg=cfg, seed=seed + i, solver="midpoint", steps=5)
                        for i, b in enumerate(labels.split(64))])
    sample_latents = tokens / scale  # generator space → the tokenizer's latent space
    pca = PCACodec(render_synthscapes(torch.arange(1024) % len(SYNTHSCAPES_CLASSES), h, w, seed=seed + 1),
                   "column", stage1.config.column_width, stage1.config.embed_dim)
    rows, images = evaluate(decoders, real, heldout, latents, sample_latents, pca)
    result = {"rows": rows, "labels": {k: v[0] for k, v in ROWS.items()}, "semantic": SEMANTIC_NOTE,
              "paper_table5_rfid": PAPER_TABLE5_RFID,
              "settings": {"images": num_images, "seed": seed, "cfg": cfg, "sampler": "midpoint-5",
                           "steps": steps or TokenizerTrainConfig.preset("pretrained_texture").steps,
                           "fd": "EfficientNet-Lite0 features, against training renders"}}
    write_result(out, "tokenizer_ablation", result, figure(images, heldout, real))
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = experiment_parser("tokenizer_ablation", __doc__.split("\n\n")[0])
    parser.set_defaults(out=Path("docs/results"))  # committed: the README and notebook 02 read it
    parser.add_argument("--runs", type=Path, default=Path("runs/tokenizer_ablation"),
                        help="training runs of the rows (resumed when present)")
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps per row (default: the preset's)")
    parser.add_argument("--images", type=int, default=512, help="held-out images and samples per row")
    args = parser.parse_args(argv)
    if args.scale != "cpu":
        parser.error("tokenizer_ablation runs at --scale cpu only: at paper scale it is the "
                     "train_tokenizer --stage 2 command per row")
    with user_errors(parser):
        result = run(args.out, args.runs, args.steps, args.images, args.seed, device=args.device)
    print(argparse.Namespace(**{k: round(v.get("rfd", float("nan")), 1) for k, v in result["rows"].items()}))
    return result
