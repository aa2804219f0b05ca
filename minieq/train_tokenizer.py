"""Two-stage tokenizer training (paper Sec. 4.1, Table 6;
docs/official_code.md#tokenizer-optimisation, #tokenizer-stage-2).

    python -m minieq.train_tokenizer --preset fast --out runs/tok                      # CPU, minutes
    torchrun --nproc_per_node 8 -m minieq.train_tokenizer --preset paper \\
        --data imagenet --data_path /data/imagenet --out runs/tok_stage1                 # stage 1
    torchrun ... -m minieq.train_tokenizer --preset paper --stage 2 \\
        --init runs/tok_stage1/checkpoint.pt --out runs/tok_stage2                      # stage 2

Rerunning a command resumes from ``<out>/checkpoint.pt`` when it exists, exactly where its last
save left off (``--save_every``); ``--fresh`` starts over at step 0 instead, ``--resume FILE``
continues from another checkpoint. The first line printed says which. ``<out>/checkpoint.pt``
is what ``--tokenizer`` of the other tools takes.

Stage 1 trains encoder, decoder, quant layers and semantic head. Stage 2 copies the stage-1 EMA
into the live weights and fine-tunes only the decoder and post_quant_layer, with the semantic
weight 0 (Table 5 "+ decoder finetune"); its step counter restarts at 0, as in the official code.
One loop step = one autoencoder update, then one discriminator update on the same
reconstruction (the official Lightning loop runs the whole forward twice,
docs/official_code.md#tokenizer-optimisation). A resume is bit-exact (optimizers, EMA,
discriminator, data position and RNG are all in the checkpoint; the LR is a pure function of the
step; every step reseeds the RNG from (seed, step, rank)). With ``num_workers > 0`` the
workers' augmentation seeds after a resume differ from a straight run (SynthScapes has none).

Under torchrun the result equals one process at the same global batch up to float summation
order: the batch is sharded, the PatchGAN's BatchNorm and the adaptive GAN weight see the global
batch. Only the σ-VAE draws and DiffAug are drawn per rank (statistically the same).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torchvision.utils import save_image

from minieq import dist
from minieq.checkpoint import build_model, load_state_strict, read_checkpoint
from minieq.cli import trainer_parser, user_errors
from minieq.config import ConfigBase, add_dataclass_args, overrides_from_args, token_columns
from minieq.data import build_dataset as build_image_dataset
from minieq.data import dataset_names
from minieq.ema import EMA
from minieq.logger import progress as progress_bar
from minieq.losses import TokenizerLoss, TokenizerLossConfig
from minieq.tokenizer import ColumnTokenizer, TokenizerConfig
from minieq.training import (TrainState, announce_start, batches_from, check_finite, is_due,
                             metrics_log, resume_source, step_seed, warmup_step_decay)
from minieq.utils import autocast, pick_device, seed_everything


# The course's tokenizers (FAST and pretrained): the "tiny" TokenizerConfig at half its channels.
HALF_WIDTH = dict(ch=16, semantic_ch=16)


@dataclass
class TokenizerTrainConfig(ConfigBase):
    """One tokenizer run. Defaults are the paper's Table 6; where the official code differs the
    comment says so (docs/official_code.md#tokenizer-paper-vs-code)."""

    tokenizer: str = "paper"  # TokenizerConfig preset
    tokenizer_overrides: dict[str, Any] = field(default_factory=dict)
    loss: TokenizerLossConfig = field(default_factory=TokenizerLossConfig)
    data: str = "imagenet"  # a name in minieq.data.DATASETS
    data_path: Optional[str] = None
    num_images: int = 8192  # SynthScapes only: training-set size
    image_width: int = 256  # SynthScapes and folder (ImageNet, Places, LHQ: square crops of the height)
    batch_size: int = 192  # global, over all ranks
    steps: int = 330_000  # ≈ 50 epochs of ImageNet at batch 192
    lr: float = 1.92e-4
    beta1: float = 0.5
    beta2: float = 0.9
    warmup: int = 5000  # official: 3000
    lr_decay_every: int = 30_000
    lr_decay: float = 0.2
    ema_decay: float = 0.9999  # official: 0.99 (LitEma default, never overridden)
    ema_warmup: bool = True  # decay min(ema_decay, (1+n)/(10+n)), as LitEma
    grad_clip: float = 1.0  # official: not configured; 0 = off
    stage: int = 1
    sample: bool = True  # decode σ-VAE draws (paper, official); False: the posterior mean
    init: Optional[str] = None  # stage 2: the stage-1 checkpoint
    seed: int = 23
    bf16: bool = True  # bf16 autocast on CUDA (the DINO disc / DiffAug / losses stay fp32)
    num_workers: int = 8
    log_every: int = 50
    image_every: int = 750
    save_every: int = 5000

    # Names of files written before the two trainers shared their field names.
    RENAMED = {"amp": "bf16", "ckpt_every": "save_every"}

    PRESETS = {
        "paper": {},
        # Every preset name means the same in both trainers: "tiny" is the tiny model at its full
    # size, "fast" the course's FAST model, "pretrained" the model shipped in minieq/weights,
    # "course_gpu" the course's full mode on one GPU, "paper" the paper's recipe.
    # tiny: CPU recipe for SynthScapes 32×128 (16 tokens). Offline only L1 + KL (+ PatchGAN) work;
        # LPIPS / DINO / DINOv2 would need their weight files and are too slow on a CPU anyway.
        "tiny": dict(tokenizer="tiny", data="synthscapes", num_images=4096, image_width=128,
                     batch_size=16, steps=1500, lr=1e-3, warmup=50, lr_decay_every=600,
                     lr_decay=0.5, ema_decay=0.99, grad_clip=1.0, seed=0, num_workers=0,
                     log_every=25, image_every=250, save_every=500,
                     loss=dict(lpips_weight=0.0, disc_type="none", semantic_weight=0.0,
                               reduction="mean")),
    }
    # The course's FAST tokenizer (notebook 02, `make demo`, minieq.course in FAST mode): the tiny
    # preset at half width (ch 16: 4x fewer FLOPs), 500 steps of 8 images. Measured 162 s on 2
    # cores (docs/training_at_scale.md); PSNR 24.4 dB on held-out images.
    PRESETS["fast"] = {**PRESETS["tiny"], **dict(
        tokenizer_overrides=HALF_WIDTH, steps=500, batch_size=8, lr=1e-3, warmup=20,
        lr_decay_every=400, lr_decay=0.3, ema_decay=0.99, num_images=2048, log_every=10,
        image_every=100, save_every=100)}
    # The pretrained course tokenizer shipped with the package (minieq.course.pretrained_tokenizer):
    # the tiny preset at half width (as "fast") trained 32x longer. The LR
    # halves every 4000 steps, a schedule that can be extended without changing its past.
    PRESETS["pretrained"] = {**PRESETS["tiny"], **dict(
        tokenizer_overrides=HALF_WIDTH, num_images=16384, steps=16000,
        warmup=100, lr_decay_every=4000, lr_decay=0.5, ema_decay=0.999, log_every=50,
        image_every=1000, save_every=250)}
    # The course's full mode on one GPU: the "course_gpu" tokenizer (24.7 M parameters) on
    # 128×128 SynthScapes, 16 tokens per image as in the paper's 256×256. 90 GFLOPs per image
    # and step, so 50k steps of batch 64 come to ~0.85 A100-hours at 30 % of the bf16 peak
    # (`python -m minieq.estimate`: an estimate, not a measurement; activations, counted: ≤ 25 GB in fp32, less under bf16,
    # so a 40 GB A100 fits). 32768 images take 1.6 GB as 8-bit and are seen ~100 times (the
    # paper: 50 ImageNet epochs). The LR lies between the paper's (1.92e-4, 214 M
    # parameters) and tiny's (1e-3) and halves every quarter, as "pretrained" does. Still L1 + KL
    # only, so it runs offline; with a local VGG16 file LPIPS switches on (--lpips_weight 1
    # --lpips_vgg_path vgg16-397923af.pth), for a third more FLOPs per step.
    # num_workers stays 0: each worker would render and keep its own copy of the images.
    PRESETS["course_gpu"] = {**PRESETS["tiny"], **dict(
        tokenizer="course_gpu", num_images=32768, image_width=128, batch_size=64, steps=50_000,
        lr=4e-4, warmup=1000, lr_decay_every=12_500, lr_decay=0.5, ema_decay=0.999,
        log_every=100, image_every=2500, save_every=2500)}

    # Texture for the course tokenizer (paper Table 5 "+ decoder finetune", Sec. 4.1): stage 2 from
    # the shipped stage-1 tokenizer, encoder frozen, so its latents and the course generator
    # stay valid. L1 + the offline perceptual stand-in (minieq.perceptual, Lite1 features at the
    # images' own scale) + a PatchGAN whose two stride-2 layers see 34 px, about the image
    # height: a deeper one looks at whole images and learns layout, not texture.
    PRESETS["pretrained_texture"] = {**PRESETS["pretrained"], **dict(
        stage=2, init="minieq/weights/course_tokenizer.pt", steps=3000, lr=1e-4, warmup=100,
        lr_decay_every=10_000, lr_decay=0.5, image_every=250, save_every=250,
        loss=dict(lpips_weight=0.1, perceptual="lite1", perceptual_upsample=1, disc_type="patchgan",
                  patchgan_layers=2, disc_weight=1.0, disc_start=0, semantic_weight=0.0,
                  reduction="mean"))}

    HELP = {
        "tokenizer": "TokenizerConfig preset: tiny (CPU), course_gpu (one GPU) or paper",
        "data": dataset_names() + " (synthscapes is rendered, offline)",
        "data_path": "root folder of a real data set, or of your own images for --data folder",
        "num_images": "SynthScapes training-set size",
        "image_width": "image width in px for synthscapes and folder, a multiple of the column width "
                       "(imagenet, places30, lhq: square crops)",
        "batch_size": "global batch, summed over ranks",
        "steps": "training steps (a resumed run stops here too, so raising it extends a run)",
        "lr": "peak learning rate (both optimizers)",
        "beta1": "Adam beta1", "beta2": "Adam beta2",
        "warmup": "linear LR warmup steps",
        "lr_decay_every": "multiply the LR by lr_decay every this many steps after warmup",
        "lr_decay": "LR factor per decay interval",
        "ema_decay": "EMA decay of the weights that inference uses",
        "ema_warmup": "EMA decay min(ema_decay, (1+n)/(10+n)) early on, as LitEma",
        "grad_clip": "gradient-norm clip (0 = off)",
        "stage": "1: whole tokenizer; 2: decoder fine-tuning from --init (Table 5)",
        "sample": "decode sigma-VAE draws in training (paper); false: the posterior mean, as at inference",
        "init": "stage 2: the stage-1 checkpoint.pt",
        "seed": "seed of data order, augmentation and initialisation",
        "bf16": "bf16 autocast on CUDA (ignored on CPU)",
        "num_workers": "DataLoader worker processes",
        "log_every": "metrics.jsonl row every this many steps",
        "image_every": "reconstruction PNG every this many steps (0 = never)",
        "save_every": "save OUT/checkpoint.pt every this many steps (the resume points)",
    }

    def __post_init__(self):
        if isinstance(self.loss, dict):
            self.loss = TokenizerLossConfig.from_dict(self.loss)
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        if self.stage == 2 and not self.init:
            raise ValueError("stage 2 needs --init <stage-1 checkpoint.pt>")


DEFAULT_PRESET = "fast"
# CPU times ("here"): measured on this project's 2-core CPU machine with nothing else running
# (make demo's stage timer; the course run's own progress bar); GPU presets: FLOP estimates.
PRESET_HELP = {
    "fast": "the course's FAST tokenizer (notebook 02, make demo): 1.3 M params, 500 steps x 8 "
            "images, ~3 min on 2 CPU cores (162-220 s measured)",
    "tiny": "the tiny model at full width: ch 32 (5.1 M params), 1500 steps x 16 images, ~1.3 h "
            "on 2 CPU cores (estimate: 4x the FLOPs of pretrained's 0.78 s/step)",
    "pretrained": "the pretrained course tokenizer shipped with minieq (minieq.pretrained): "
                  "fast's model, 16000 steps x 16 images, ~3.5 h on 2 CPU cores (0.78 s/step "
                  "measured)",
    "pretrained_texture": "the shipped textured decoder: stage 2 from the pretrained tokenizer, "
                          "decoder only, + adversarial + perceptual (Table 5), 3000 steps x 16 "
                          "images, 35-50 min on one CPU core (0.7-0.9 s/step measured)",
    "course_gpu": "the course's full mode: 24.7 M params, 128 px, ~0.85 A100-hours (estimate)",
    "paper": "the paper's Table 6 (214 M params, ImageNet, 8 GPUs)",
}


def build_dataset(cfg: TokenizerTrainConfig, tok_config: TokenizerConfig):
    """The training images: SynthScapes (rendered), a real data set or your own folder, via minieq.data."""
    if cfg.data in ("synthscapes", "folder"):  # a rendered or cropped width must split into columns
        token_columns(cfg.image_width, tok_config.column_width)
    # Real data: square crops of the tokenizer height (folder: height x image_width), random crop
    # + flip (docs/official_code.md#tokenizer-optimisation).
    return build_image_dataset(cfg.data, cfg.data_path, height=tok_config.image_height, width=cfg.image_width,
                 num_images=cfg.num_images, seed=cfg.seed)


def set_trainable(tok: ColumnTokenizer, stage: int, semantic: bool) -> list[nn.Parameter]:
    """Stage 1: everything (the semantic head only if its loss is on); stage 2: decoder +
    post_quant_layer only (docs/official_code.md#tokenizer-stage-2). Frozen parameters get
    requires_grad=False, so neither the optimizer nor the EMA nor DDP sees them."""
    tok.requires_grad_(stage == 1)
    if stage == 2:
        tok.decoder.requires_grad_(True)
        tok.post_quant_layer.requires_grad_(True)
    tok.semantic_decoder.requires_grad_(stage == 1 and semantic)
    return [p for p in tok.parameters() if p.requires_grad]


def _source_config(cfg: TokenizerTrainConfig, resume: str | None) -> tuple[dict | None, dict | None]:
    """(tokenizer config dict, stage-1 checkpoint) from the resume file or the stage-2 init file."""
    if resume:
        return read_checkpoint(resume, expect="ColumnTokenizer")["config"], None
    if cfg.stage == 2:
        init = read_checkpoint(cfg.init, expect="ColumnTokenizer")
        return init["config"], init
    return None, None


def save_recon_grid(x: torch.Tensor, recon: torch.Tensor, path: Path) -> None:
    """Rows: up to 8 originals, then their reconstructions."""
    k = min(8, x.shape[0])
    grid = torch.cat([x[:k], recon[:k]]).float().clamp(-1, 1) * 0.5 + 0.5
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid.cpu(), path, nrow=k, padding=1)


def train(cfg: TokenizerTrainConfig, out: str | Path, *, resume: str | None = None,
          fresh: bool = False, device: str | torch.device | None = None,
          progress: bool = True) -> Path:
    """Train a tokenizer; returns the path of ``out/checkpoint.pt`` (EMA weights included).

    Continues from ``resume`` if given, else from ``out/checkpoint.pt`` if it exists
    (:func:`minieq.training.resume_source`); ``fresh=True`` starts at step 0 regardless.
    ``device`` overrides the automatic choice (CUDA → MPS → CPU; one GPU per rank under
    torchrun); ``progress=False`` hides the progress bar. The same signature as
    :func:`minieq.train_generator.train`.
    """
    auto_device = dist.init_distributed()  # joins the process group under torchrun
    device = auto_device if device is None else pick_device(device)
    world = dist.world_size()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {world} ranks")
    out = Path(out)
    ckpt_path = out / "checkpoint.pt"
    resume = resume_source(ckpt_path, resume, fresh)
    seed_everything(cfg.seed)  # one initialisation on every rank (DDP keeps rank 0's; the EMA copies it)

    config_dict, init = _source_config(cfg, resume)
    if config_dict is None:
        tok = ColumnTokenizer(TokenizerConfig.preset(cfg.tokenizer, **cfg.tokenizer_overrides))
    else:
        tok = build_model("ColumnTokenizer", config_dict)
    if init is not None:  # stage 2 starts from the stage-1 EMA weights, as official
        load_state_strict(tok, init.get("ema_state_dict") or init["state_dict"], where=cfg.init)
    loss_cfg = cfg.loss if cfg.stage == 1 else cfg.loss.replace(semantic_weight=0.0)
    loss_fn = TokenizerLoss(loss_cfg, tok.config.semantic_out_channels)
    params = set_trainable(tok, cfg.stage, semantic=loss_fn.semantic_active(10 ** 12))
    tok.to(device)
    loss_fn.to(device)
    disc = loss_fn.discriminator
    if init is not None and disc is not None and "discriminator" in init:
        load_state_strict(disc, init["discriminator"], where=f"{cfg.init} [discriminator]")

    optimizers = {"ae": torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))}
    if disc is not None:
        optimizers["disc"] = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    ema = EMA(tok, cfg.ema_decay, warmup=cfg.ema_warmup)
    # The LR is a pure function of the step (set below), so there is no scheduler state to resume.
    state = TrainState(tok, optimizers, ema=ema)
    extras = {"discriminator": disc} if disc is not None else {}
    if resume:
        state.resume(resume, extra_modules=extras)
    announce_start(f"tokenizer stage {cfg.stage}", resume, state.step, ckpt_path)

    model, disc_ddp = tok, disc
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        # The semantic head is trainable but idle before semantic_start: unused parameters.
        model = DDP(tok, device_ids=ids, find_unused_parameters=True)
        disc_ddp = DDP(disc, device_ids=ids) if disc is not None else None

    dataset = build_dataset(cfg, tok.config)
    # A private generator for the DataLoader keeps its seed draw off the global RNG (exact resume).
    batches = batches_from(dataset, cfg.batch_size // world, start_step=state.step, seed=cfg.seed,
                           num_workers=cfg.num_workers, generator=torch.Generator(),
                           pin_memory=device.type == "cuda")
    logger = metrics_log(out, state.step)
    bar = progress_bar(total=cfg.steps, initial=state.step, desc=f"tokenizer stage {cfg.stage}",
                       disable=not progress)
    tok.train()
    loss_fn.train()
    while state.step < cfg.steps:
        step, (x, _) = next(batches)
        x = x.to(device, non_blocking=True)
        torch.manual_seed(step_seed(cfg.seed, step, dist.rank()))  # σ-VAE draws, DiffAug: per rank
        # Both optimizers follow the warmup + step-decay schedule (Table 6). The official
        # discriminator LR is constant; with disc_start ≥ warmup they agree until the first decay.
        lr = cfg.lr * warmup_step_decay(step, cfg.warmup, cfg.lr_decay_every, cfg.lr_decay)
        for opt in optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr
        with autocast(device, enabled=cfg.bf16):
            out_ = model(x, sample=cfg.sample, semantic=loss_fn.semantic_active(step))
        logs = loss_fn.generator_loss(x, out_, step, tok.last_layer_weight)
        check_finite({"ae_loss": logs["loss"].detach()}, step, ckpt_path if ckpt_path.exists() else None)
        optimizers["ae"].zero_grad(set_to_none=True)
        logs["loss"].backward()
        if cfg.grad_clip > 0:
            logs["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizers["ae"].step()
        ema.update(tok)

        if loss_fn.disc_active(step):
            d_logs = loss_fn.discriminator_loss(x, out_.recon, step, disc=disc_ddp)
            check_finite({"disc_loss": d_logs["disc_loss"].detach()}, step, ckpt_path if ckpt_path.exists() else None)
            optimizers["disc"].zero_grad(set_to_none=True)
            d_logs["disc_loss"].backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(disc.parameters(), cfg.grad_clip)
            optimizers["disc"].step()
            logs.update(d_logs)
        state.step = step + 1
        bar.update(1)

        if is_due(state.step, cfg.log_every, cfg.steps):
            row = {k: dist.all_reduce_mean(v.detach().float()).item() for k, v in logs.items()}
            row["lr"] = lr
            logger.log(state.step, **row)
            bar.set_postfix(loss=f"{row['loss']:.4g}", l1=f"{row['l1']:.3f}")
        if cfg.image_every and step % cfg.image_every == 0 and dist.is_main():
            save_recon_grid(x, out_.recon.detach(), out / "images" / f"recon_{step:07d}.png")
        if is_due(state.step, cfg.save_every, cfg.steps):
            state.save(ckpt_path, train_config=cfg.to_dict(), **_disc_state(disc))
    bar.close()
    if not ckpt_path.exists():  # steps already reached (e.g. resuming a finished run)
        state.save(ckpt_path, train_config=cfg.to_dict(), **_disc_state(disc))
    return ckpt_path


def _disc_state(disc: nn.Module | None) -> dict:
    return {"discriminator": {k: v.detach().cpu() for k, v in disc.state_dict().items()}} if disc else {}


def main(argv: list[str] | None = None) -> int:
    """CLI: ``--preset`` + ``--out`` + one flag per config field (see ``--help``); returns 0."""
    parser, shown, preset = trainer_parser("train_tokenizer", __doc__, TokenizerTrainConfig, PRESET_HELP,
                                           DEFAULT_PRESET, "checkpoint.pt", argv)
    train_flags = parser.add_argument_group(f"training (defaults of preset {preset!r})")
    add_dataclass_args(train_flags, TokenizerTrainConfig, shown=shown)
    loss_flags = parser.add_argument_group(f"loss (defaults of preset {preset!r})")
    add_dataclass_args(loss_flags, TokenizerLossConfig, shown=shown.loss)
    args = parser.parse_args(argv)
    with user_errors(parser):
        cfg = TokenizerTrainConfig.preset(args.preset, **overrides_from_args(args, TokenizerTrainConfig))
        cfg.loss = cfg.loss.replace(**overrides_from_args(args, TokenizerLossConfig))
        try:
            path = train(cfg, args.out, resume=args.resume, device=args.device, fresh=args.fresh)
        finally:
            dist.cleanup()
    if dist.is_main():
        print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
