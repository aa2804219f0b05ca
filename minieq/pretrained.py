"""The pretrained course models shipped inside the package (``minieq/weights/*.pt``).

The from-scratch FAST course models are what three CPU minutes give; their pictures are colour
bands. These are the same tiny architectures trained ~30× longer with minieq's own trainers, so
learners see column tokens, token-by-token reconstructions and long images of real structure.
One command trains (or resumes) a model and exports it into the package:

    python -m minieq.pretrained tokenizer --out runs/pretrained/tokenizer    # hours on a CPU
    python -m minieq.pretrained textured --out runs/pretrained/textured      # its decoder, textured
    python -m minieq.pretrained generator --out runs/pretrained/generator    # on its latents

The tokenizer comes in two files with ONE encoder: ``course_tokenizer.pt`` (stage 1: L1 + KL)
and ``course_tokenizer_textured.pt``, whose decoder alone was fine-tuned with the adversarial and
perceptual objective (paper Table 5, "+ decoder finetune"; the trainer's ``pretrained_texture``
preset). Their latents are bit-identical, so the one shipped generator serves both, and
:func:`pretrained_tokenizer` returns the textured one unless asked for ``decoder="stage1"``.

Rerunning a command resumes its run from ``<out>/checkpoint.pt`` (exactly: the trainers store
every RNG and optimizer state), so an interrupted run costs only the steps since its last save.
A shipped file holds the EMA weights in half precision (the package stays small), the full
training recipe (``train_config``: preset, data seed, step count), the command that made it,
and the held-out numbers measured on exactly the shipped weights (``heldout``), which a test
recomputes.
"""
from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

from minieq.cache_latents import cache_latents
from minieq.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, read_checkpoint, save_checkpoint
from minieq.cli import parser_for, user_errors
from minieq.data import SynthScapes
from minieq.evaluation import evaluate_tokenizer
from minieq.few_step import attach
from minieq.generator_data import TRAIN_TOKENS
from minieq.pipeline import Pipeline
from minieq.synthscapes import SYNTHSCAPES_CLASSES
from minieq.train_generator import GeneratorTrainConfig
from minieq.train_generator import train as train_generator
from minieq.train_tokenizer import TokenizerTrainConfig
from minieq.train_tokenizer import train as train_tokenizer
from minieq.utils import pick_device

PACKAGE_DIR = Path(__file__).resolve().parent / "weights"
TOKENIZER_FILE = PACKAGE_DIR / "course_tokenizer.pt"
TEXTURED_FILE = PACKAGE_DIR / "course_tokenizer_textured.pt"
GENERATOR_FILE = PACKAGE_DIR / "course_generator.pt"
# The generator's few-step head (solver="distilled"): a low-rank update of its flow head,
# distilled by `python -m minieq.distill` (minieq.few_step).
FEW_STEP_FILE = PACKAGE_DIR / "course_few_step_head.pt"
DECODERS = ("textured", "stage1")
MODELS = ("tokenizer", "textured", "generator")


def _shipped(path: Path) -> Path:
    if not path.is_file():
        model = {TOKENIZER_FILE: "tokenizer", TEXTURED_FILE: "textured"}.get(path, "generator")
        command = (f"python -m minieq.pretrained {model} --out DIR" if path != FEW_STEP_FILE else
                   f"python -m minieq.distill --out DIR --export {path}")
        raise CheckpointError(
            f"{path.name}: the pretrained course model is not in this installation of minieq. Make "
            f"it with `{command}` (docs/pretrained_models.md), or train the FAST one with minieq.course.")
    return path


def pretrained_tokenizer(device: str | torch.device | None = None, decoder: str = "textured") -> nn.Module:
    """The shipped course ColumnTokenizer (EMA weights, float32, eval mode) on ``device``.

    ``decoder="textured"`` (default): the decoder fine-tuned with the adversarial and perceptual
    objective; ``"stage1"``: the L1 + KL decoder it started from. The encoders are identical.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    device = torch.device(device) if device is not None else pick_device()
    path = TEXTURED_FILE if decoder == "textured" else TOKENIZER_FILE
    return load_checkpoint(_shipped(path), map_location=device).float().eval()


def pretrained_generator(device: str | torch.device | None = None, few_step: bool = True
                         ) -> tuple[nn.Module, float]:
    """``(generator, latent_scale)``: the shipped course Generator, trained on the latents of
    :func:`pretrained_tokenizer` (EMA weights, float32, eval mode).

    ``few_step=True`` attaches its shipped few-step head, so ``solver="distilled"`` samples in
    1-4 head calls per token (``minieq.few_step``); it changes nothing else.
    """
    device = torch.device(device) if device is not None else pick_device()
    path = _shipped(GENERATOR_FILE)
    ckpt = read_checkpoint(path)
    scale = float(ckpt["latent_scale"])
    generator = model_from_checkpoint(ckpt, str(path), map_location=device).float().eval()
    if few_step:
        attach(generator, _shipped(FEW_STEP_FILE))
    return generator, scale


def pretrained_pipeline(device: str | torch.device | None = None, decoder: str = "textured") -> Pipeline:
    """The shipped course models as one :class:`Pipeline` that knows the SynthScapes class names."""
    generator, scale = pretrained_generator(device)
    tokenizer = pretrained_tokenizer(next(generator.parameters()).device, decoder)
    return Pipeline(tokenizer, generator, scale, class_names=SYNTHSCAPES_CLASSES)


def export(run_checkpoint: str | Path, out: str | Path, command: str, **extra) -> dict:
    """Write the EMA weights of a finished run in half precision to ``out`` with its recipe.

    The tokenizer's held-out numbers are measured on the half-precision weights, i.e. on exactly
    what is shipped. Returns the stored metadata.
    """
    ckpt = read_checkpoint(run_checkpoint)
    train_config = ckpt.get("train_config")
    if train_config is None or "train_state" not in ckpt:
        raise CheckpointError(f"{run_checkpoint}: not a training checkpoint (no train_config/train_state)")
    model = model_from_checkpoint(ckpt, str(run_checkpoint)).half()  # EMA weights, rounded as they will be shipped
    config_class = TokenizerTrainConfig if ckpt["model_class"] == "ColumnTokenizer" else GeneratorTrainConfig
    train_config = config_class.from_dict(train_config).to_dict()  # today's field names
    meta = {"train_config": train_config, "step": int(ckpt["train_state"]["step"]), "command": command, **extra}
    if ckpt["model_class"] == "ColumnTokenizer":
        meta["heldout"] = evaluate_tokenizer(copy.deepcopy(model).float())
    elif "latent_scale" in ckpt:
        meta["latent_scale"] = float(ckpt["latent_scale"])
        meta["train_tokens"] = int(ckpt.get("train_tokens", TRAIN_TOKENS))
    save_checkpoint(out, model, **meta)
    return meta


def _train_tokenizer(out: Path, steps: int | None) -> Path:
    overrides = {"steps": steps} if steps else {}
    cfg = TokenizerTrainConfig.preset("pretrained", **overrides)
    return train_tokenizer(cfg, out, device=pick_device())  # resumes from out/checkpoint.pt if it exists


def textured_config(steps: int | None = None, **loss_overrides) -> TokenizerTrainConfig:
    """The ``pretrained_texture`` recipe: stage 2 from the shipped stage-1 file (a relative path,
    since the recipe is stored in what it trains), only the decoder trains; ``loss_overrides``
    change its loss terms (the rows of ``minieq.experiments.tokenizer_ablation``)."""
    cfg = TokenizerTrainConfig.preset("pretrained_texture", init=os.path.relpath(_shipped(TOKENIZER_FILE)),
                                      **({"steps": steps} if steps else {}))
    cfg.loss = cfg.loss.replace(**loss_overrides)
    return cfg


def _train_textured(out: Path, steps: int | None) -> Path:
    return train_tokenizer(textured_config(steps), out, device=pick_device())


def _train_generator(out: Path, tokenizer_file: Path, steps: int | None) -> tuple[Path, dict]:
    """Cache the latents of the tokenizer's own training images (with flips), then train."""
    # Relative paths: the recipe is stored in the shipped file, which must not name this machine.
    cfg = GeneratorTrainConfig.preset("pretrained", tokenizer=os.path.relpath(tokenizer_file),
                                      latents=str(out / "latents.pt"),
                                      **({"steps": steps} if steps else {}))
    tok_ckpt = read_checkpoint(tokenizer_file)
    data_recipe = {key: tok_ckpt["train_config"][key] for key in ("num_images", "image_width", "seed")}
    if not Path(cfg.latents).exists():
        tok = model_from_checkpoint(tok_ckpt, str(tokenizer_file)).float()
        data = SynthScapes(data_recipe["num_images"], height=tok.config.image_height,
                           width=data_recipe["image_width"], seed=data_recipe["seed"], split="train")
        cache_latents(tok, data, cfg.latents, flips=True, batch_size=64)
    latents = {**data_recipe, "flips": True, "tokenizer_step": int(tok_ckpt["step"])}
    return train_generator(cfg, out, device=pick_device()), latents


def main(argv: list[str] | None = None) -> dict:
    parser = parser_for("pretrained", "Train (or resume) a pretrained course model (the trainers' "
                                      "`pretrained` preset) and export it into minieq/weights/.")
    parser.add_argument("model", choices=list(MODELS), help="which course model (textured: the "
                        "shipped tokenizer's decoder fine-tuned with the adversarial and perceptual loss)")
    parser.add_argument("--out", type=Path, required=True, help="run folder (resumed if it holds a checkpoint)")
    parser.add_argument("--steps", type=int, default=None, help="override the preset's step count")
    parser.add_argument("--export", type=Path, default=None, help="file to write (default: the package's)")
    args = parser.parse_args(argv)
    command = "python -m minieq.pretrained " + " ".join(sys.argv[1:] if argv is None else argv)
    with user_errors(parser):
        if args.model == "tokenizer":
            ckpt = _train_tokenizer(args.out, args.steps)
            meta = export(ckpt, args.export or TOKENIZER_FILE, command)
        elif args.model == "textured":
            meta = export(_train_textured(args.out, args.steps), args.export or TEXTURED_FILE, command)
        else:
            ckpt, latents = _train_generator(args.out, _shipped(TOKENIZER_FILE), args.steps)
            meta = export(ckpt, args.export or GENERATOR_FILE, command, latents=latents)
    print(json.dumps({k: v for k, v in meta.items() if k != "train_config"}, indent=2))
    return meta


if __name__ == "__main__":
    main()
