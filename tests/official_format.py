"""Small files in the official release's formats, for tests and CI, where the real release (0.86 B
parameters, a download) and the parity fixtures (not in a clean clone) are absent.

The layouts are docs/official_code.md#tokenizer-checkpoint and #generator-checkpoint: a Lightning
dict whose ``state_dict`` holds the live weights under dotted names and the EMA weights under
``ema_<module>.<dot-less name>``; a generator dict with ``model``, ``model_ema`` and ``args`` (an
``argparse.Namespace``), the flow head under ``diffloss.net.*``. Live and EMA weights differ, so a
loader that took the live ones is caught. The models are random: these files test the plumbing
(converter, checkpoints, notebooks); what the official code computes is checked against the
parity fixtures (tests/test_parity_*.py).

    python tests/official_format.py DIR   # DIR/raw/{tokenizer.ckpt, places_large.pth, config.json},
                                          # converted into DIR/{tokenizer.pt, generator.pt}
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from minieq import convert_official
from minieq.generator import Generator
from minieq.official_generator import config_from_official_args
from minieq.official_tokenizer import _ema_key
from minieq.tokenizer import ColumnTokenizer, TokenizerConfig

# The official YAML's model.params and model kwargs of a pair small enough for a CPU test:
# 256-px images, 16-px columns, 8-channel tokens, a 2-block generator with a 2-block head.
TOKENIZER_PARAMS = dict(
    embed_dim=8, post_channels=128, std=2.5,
    ddconfig=dict(double_enc=False, z_channels=8, resolution=256, in_channels=3, out_ch=3, ch=32,
                  ch_mult=[1, 1, 2, 2, 2], num_res_blocks=1, dropout=0.0, attn_resolutions=[16],
                  len_down_scale=4, semantic_map="res"),
    sematicconfig=dict(z_channels=8, resolution=256, in_channels=3, out_ch=96, ch=32, ch_mult=[2, 3],
                       num_res_blocks=1, dropout=0.0, attn_resolutions=[], downsample_scale=0))
GENERATOR_ARGS = dict(encoder_embed_dim=64, encoder_depth=1, decoder_depth=1, encoder_num_heads=4,
                      vae_embed_dim=8, class_num=30, buffer_size=16, diffloss_d=2, diffloss_w=48,
                      num_sampling_steps="10", cond_length=3, shift_num=16, token_num=16)


def _live_twin(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Other values of the same shapes: the "live" weights beside the EMA ones."""
    return {k: v + 1.0 if v.is_floating_point() else v for k, v in state.items()}


def write_official_tokenizer(tokenizer: ColumnTokenizer, path: Path, **extras) -> Path:
    """``tokenizer``'s weights as the EMA weights of an official Lightning checkpoint; ``extras``
    are further top-level entries (a real Lightning file has callbacks, loops, ...)."""
    ema = tokenizer.state_dict()
    state = dict(_live_twin(ema))
    state.update({_ema_key(name): value for name, value in ema.items()})  # ema_encoder.down0block...
    torch.save({"state_dict": state, "epoch": 0, "global_step": 0, **extras}, path)
    return path


def write_official_generator(generator: Generator, path: Path, args: dict) -> Path:
    """``generator``'s weights as the ``model_ema`` of an official generator checkpoint."""
    def official(state):  # our head.net.* is the official diffloss.net.*
        return {("diffloss.net." + k[len("head.net."):]) if k.startswith("head.net.") else k: v
                for k, v in state.items()}
    ema = generator.state_dict()
    torch.save({"model": official(_live_twin(ema)), "model_ema": official(ema), "epoch": 0,
                "args": argparse.Namespace(**args)}, path)
    return path


def write_release(folder: str | Path, seed: int = 0) -> dict[str, Path]:
    """A random tokenizer + generator pair in the official formats under ``folder/raw``, and the
    JSON of their settings (``{"tokenizer": ..., "generator": ...}``, what the converter takes)."""
    raw = Path(folder) / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = ColumnTokenizer(TokenizerConfig.from_official(TOKENIZER_PARAMS))
    generator = Generator(config_from_official_args(GENERATOR_ARGS))
    config = raw / "config.json"
    config.write_text(json.dumps({"tokenizer": TOKENIZER_PARAMS, "generator": GENERATOR_ARGS}, indent=1))
    return {"tokenizer": write_official_tokenizer(tokenizer, raw / "tokenizer.ckpt"),
            "generator": write_official_generator(generator, raw / "places_large.pth", GENERATOR_ARGS),
            "config": config}


def main(argv: list[str] | None = None) -> int:
    """Write the files under ``DIR/raw`` and convert them into ``DIR`` with the converter's CLI."""
    folder = Path((argv if argv is not None else sys.argv[1:])[0])
    files = write_release(folder)
    return convert_official.main(["--tokenizer", str(files["tokenizer"]), "--generator", str(files["generator"]),
                                  "--tokenizer_config", str(files["config"]),
                                  "--generator_args", str(files["config"]), "--out", str(folder)])


if __name__ == "__main__":
    sys.exit(main())
