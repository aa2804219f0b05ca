"""Load the official generator checkpoints (e.g. the released ``places_large.ckpt``) into minieq.

The official file is ``{'model': state_dict, 'model_ema': state_dict, ...}``
(docs/official_code.md#generator-checkpoint), optionally with ``'args'`` (an
``argparse.Namespace``). Our module names equal the official ones except the flow head, which the
official code wraps as ``diffloss.net.*`` and we call ``head.net.*``.
"""
from __future__ import annotations

import argparse
import os
from typing import Any

import torch

from minieq.checkpoint import CheckpointError, load_state_strict, safe_torch_load
from minieq.generator import Generator, GeneratorConfig

# The released Places model: large_model with 30 classes (docs/official_code.md#generator-checkpoint).
PLACES_LARGE_ARGS = dict(encoder_embed_dim=1024, encoder_depth=16, decoder_depth=16, encoder_num_heads=16,
                         vae_embed_dim=256, class_num=30, buffer_size=16, diffloss_d=12, diffloss_w=1280,
                         num_sampling_steps="100", cond_length=3, shift_num=16)


def config_from_official_args(official_args: dict[str, Any] | None = None) -> GeneratorConfig:
    """Translate the official ``EquivariantGenerativeModel`` kwargs into a :class:`GeneratorConfig`.

    Total blocks = encoder_depth + decoder_depth (one stack; the split is a MAR leftover).
    ``cond_length`` 0 means full causal attention. Unknown keys are ignored.
    """
    args = {**PLACES_LARGE_ARGS, **(official_args or {})}
    cond_length = int(args["cond_length"])
    return GeneratorConfig(
        token_dim=int(args["vae_embed_dim"]), num_classes=int(args["class_num"]),
        embed_dim=int(args["encoder_embed_dim"]),
        depth=int(args["encoder_depth"]) + int(args["decoder_depth"]),
        num_heads=int(args["encoder_num_heads"]), buffer_size=int(args["buffer_size"]),
        head_width=int(args["diffloss_w"]), head_depth=int(args["diffloss_d"]),
        attention="window" if cond_length > 0 else "full", cond_length=cond_length,
        shift_num=int(args["shift_num"]),
        # The official CLI passes the step count as a string ("100").
        num_sampling_steps=int(args["num_sampling_steps"]))


def official_state_to_minieq(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename official keys to minieq keys: only ``diffloss.net.`` -> ``head.net.`` changes."""
    return {("head.net." + k[len("diffloss.net."):]) if k.startswith("diffloss.net.") else k: v
            for k, v in state.items()}


def load_official_generator(path_or_ckpt: str | os.PathLike | dict, official_args: dict[str, Any] | None = None,
                            use_ema: bool = True) -> Generator:
    """Build a :class:`Generator` from an official checkpoint (file path or loaded dict), in eval mode.

    :param official_args: the official model kwargs (encoder_embed_dim, encoder_depth,
        decoder_depth, encoder_num_heads, vae_embed_dim, class_num, buffer_size, diffloss_d,
        diffloss_w, num_sampling_steps, cond_length, shift_num); None = the released
        places_large model. Unknown keys are ignored.
    :param use_ema: take ``model_ema`` (what the official eval script samples with), falling back
        to ``model`` when the file has no EMA weights.
    :raises CheckpointError: unreadable file, or any missing / unexpected / mis-shaped key.
    """
    where = "official generator checkpoint" if isinstance(path_or_ckpt, dict) else str(path_or_ckpt)
    ckpt = path_or_ckpt if isinstance(path_or_ckpt, dict) else \
        safe_torch_load(path_or_ckpt, extra_globals=(argparse.Namespace,), placeholders=True)
    if not isinstance(ckpt, dict) or not ({"model", "model_ema"} & set(ckpt)):
        keys = sorted(ckpt)[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{where}: expected an official generator checkpoint with 'model' / "
                              f"'model_ema', found {keys}")
    state = ckpt.get("model_ema") if use_ema and ckpt.get("model_ema") else ckpt.get("model")
    if not state:
        raise CheckpointError(f"{where}: no 'model' weights in the file")
    gen = Generator(config_from_official_args(official_args))
    load_state_strict(gen, official_state_to_minieq(state), where=where)
    return gen.eval()
