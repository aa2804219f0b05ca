"""Load the official tokenizer checkpoint (a PyTorch-Lightning file) into a ColumnTokenizer.

See docs/official_code.md#tokenizer-checkpoint. ``ckpt['state_dict']`` holds the live weights
under plain names (``encoder.down.0.block.0.norm1.weight``) and the EMA weights — the ones the
official inference uses — under dot-less names inside their module
(``ema_encoder.down0block0norm1weight``). Our module names equal the official ones, so the
mapping is only "remove the dots".
"""
from __future__ import annotations

import os
from typing import Any

import torch

from minieq.checkpoint import CheckpointError, load_state_strict, safe_torch_load
from minieq.tokenizer import ColumnTokenizer, TokenizerConfig

# The five top-level modules that have EMA copies in the official checkpoint.
_EMA_MODULES = ("encoder", "decoder", "semantic_decoder", "quant_layer", "post_quant_layer")


def _ema_key(name: str) -> str:
    """``encoder.down.0.block.0.norm1.weight`` → ``ema_encoder.down0block0norm1weight``."""
    module, _, path = name.partition(".")
    return f"ema_{module}.{path.replace('.', '')}"


def _is_ignorable(key: str) -> bool:
    """Training-only extras: the loss module (LPIPS, discriminator, teacher) and EMA counters."""
    return key.startswith("loss.") or key.endswith((".decay", ".num_updates"))


def official_state_dict(state: dict[str, torch.Tensor], model: ColumnTokenizer,
                        where: str = "checkpoint", use_ema: bool = True) -> dict[str, torch.Tensor]:
    """Pick, for every parameter of ``model``, the EMA value (or the live one as a fallback).

    :raises CheckpointError: listing missing keys, and keys that are neither used nor ignorable.
    """
    out, used, missing = {}, set(), []
    for name in model.state_dict():
        candidates = [_ema_key(name), name] if use_ema else [name, _ema_key(name)]
        key = next((k for k in candidates[:1 + use_ema] if k in state), None)
        if key is None:
            missing.append(name)
            continue
        out[name] = state[key]
        used.update(k for k in candidates if k in state)  # the unused twin is not "unexpected"
    unexpected = sorted(k for k in state if k not in used and not _is_ignorable(k))
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: not an official tokenizer checkpoint for this config.\n"
            f"  missing ({len(missing)}): {missing[:20]}\n"
            f"  unexpected ({len(unexpected)}): {unexpected[:20]}")
    return out


def load_official_tokenizer(path_or_ckpt: str | os.PathLike | dict[str, Any],
                            official_config: dict[str, Any] | None = None,
                            use_ema: bool = True) -> ColumnTokenizer:
    """Build a ColumnTokenizer from an official tokenizer checkpoint, with its EMA weights.

    :param path_or_ckpt: path to ``tokenizer.ckpt`` or the already-loaded dict (either the
        Lightning dict with ``'state_dict'`` or the state dict itself).
    :param official_config: the official YAML's ``model.params`` dict (embed_dim, post_channels,
        std, ddconfig, sematicconfig); None = the released tokenizer (the ``paper`` preset).
    :param use_ema: use the EMA weights (official inference does); False = the live weights.
    :return: the model in eval mode, on the CPU.
    """
    where = "checkpoint dict"
    if isinstance(path_or_ckpt, (str, os.PathLike)):
        where = str(path_or_ckpt)
        # Lightning's training extras (callbacks, hyper-parameters) load as inert placeholders.
        path_or_ckpt = safe_torch_load(path_or_ckpt, placeholders=True)
    if not isinstance(path_or_ckpt, dict):
        raise CheckpointError(f"{where}: expected a dict, got {type(path_or_ckpt).__name__}")
    state = path_or_ckpt.get("state_dict", path_or_ckpt)
    config = (TokenizerConfig.preset("paper") if official_config is None
              else TokenizerConfig.from_official(official_config))
    model = ColumnTokenizer(config)
    load_state_strict(model, official_state_dict(state, model, where, use_ema), where)
    return model.eval()
