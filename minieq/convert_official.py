"""The paper's released weights as minieq checkpoints, one command away.

    python -m minieq.convert_official --tokenizer tokenizer.ckpt --generator places_large.ckpt \\
        --out runs/official
    python -m minieq.sample --tokenizer runs/official/tokenizer.pt \\
        --generator runs/official/generator.pt --classes 0 7 --width 2048 --cfg 7 --out places.png

The official files load through minieq's official loaders (:func:`minieq.load_official_tokenizer`,
:func:`minieq.load_official_generator`; formats in docs/official_code.md#tokenizer-checkpoint and
#generator-checkpoint), which take the EMA weights. They are written as ordinary minieq
checkpoints (config + EMA weights, atomic, ``weights_only`` loads): ``OUT/tokenizer.pt`` and
``OUT/generator.pt``, the latter with the official latent scale 0.05493 (the ``--vae_norm`` of the
official scripts; docs/official_code.md#latent-scale) and the training length, 16 tokens. Class
ids only: neither the paper nor the release lists the 30 Places classes, so no names are stored.

Files of another official configuration (e.g. the parity fixtures) convert with
``--tokenizer_config`` (the official YAML's ``model.params`` as JSON) and ``--generator_args``
(the official model kwargs as JSON); either file may also hold them under a "tokenizer" /
"generator" key.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from minieq.checkpoint import save_checkpoint
from minieq.cli import parser_for, user_errors
from minieq.generator_data import TRAIN_TOKENS
from minieq.official_generator import load_official_generator
from minieq.official_tokenizer import load_official_tokenizer

# The official scripts' --vae_norm: 1 / the std of the released tokenizer's posterior draws.
OFFICIAL_LATENT_SCALE = 0.05493


def read_json_config(path: str | os.PathLike | None, key: str) -> dict | None:
    """The dict in a JSON file, or its ``key`` entry when the file holds both configurations."""
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({err})") from err
    data = data.get(key, data) if isinstance(data, dict) else data
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with the official {key} settings")
    return data


def convert(out: str | os.PathLike, tokenizer: str | os.PathLike | None = None,
            generator: str | os.PathLike | None = None, tokenizer_config: dict | None = None,
            generator_args: dict | None = None,
            latent_scale: float = OFFICIAL_LATENT_SCALE) -> dict[str, Path]:
    """Write ``out/tokenizer.pt`` and/or ``out/generator.pt`` from official files.

    :param tokenizer_config: the official YAML's ``model.params``; None = the released tokenizer.
    :param generator_args: the official model kwargs; None = the released ``places_large`` model.
    :return: ``{"tokenizer": path, "generator": path}`` for the files written.
    """
    if tokenizer is None and generator is None:
        raise ValueError("give --tokenizer and/or --generator (official checkpoint files)")
    if not latent_scale > 0:
        raise ValueError(f"latent_scale must be positive, got {latent_scale}")
    out, written = Path(out), {}
    tok = gen = None
    if tokenizer is not None:
        tok = load_official_tokenizer(tokenizer, tokenizer_config)
    if generator is not None:
        gen = load_official_generator(generator, generator_args)
    if tok is not None and gen is not None and tok.config.embed_dim != gen.config.token_dim:
        raise ValueError(f"{generator} models {gen.config.token_dim}-channel tokens but {tokenizer} "
                         f"makes {tok.config.embed_dim}-channel ones: not a pair")
    # Only file names are stored: a checkpoint must not carry this machine's folders.
    if tok is not None:
        written["tokenizer"] = save_checkpoint(out / "tokenizer.pt", tok, converted_from=Path(tokenizer).name)
    if gen is not None:
        train_tokens = int((generator_args or {}).get("token_num", TRAIN_TOKENS))
        written["generator"] = save_checkpoint(
            out / "generator.pt", gen, latent_scale=float(latent_scale), train_tokens=train_tokens,
            class_names=None, converted_from=Path(generator).name)
    return written


def main(argv: list[str] | None = None) -> int:
    """CLI (see ``--help``); writes the checkpoints and returns 0."""
    parser = parser_for("convert_official", __doc__)
    parser.add_argument("--tokenizer", default=None, help="the official tokenizer checkpoint (Lightning .ckpt)")
    parser.add_argument("--generator", default=None,
                        help="the official generator checkpoint (places_large.ckpt: 'model' / 'model_ema')")
    parser.add_argument("--out", required=True, help="folder for tokenizer.pt and generator.pt")
    parser.add_argument("--tokenizer_config", default=None,
                        help="JSON of the official tokenizer's model.params (default: the released tokenizer)")
    parser.add_argument("--generator_args", default=None,
                        help="JSON of the official generator's kwargs (default: the released places_large)")
    parser.add_argument("--latent_scale", type=float, default=OFFICIAL_LATENT_SCALE,
                        help=f"stored latent scale (default: the official {OFFICIAL_LATENT_SCALE})")
    args = parser.parse_args(argv)
    with user_errors(parser):
        written = convert(args.out, args.tokenizer, args.generator,
                          read_json_config(args.tokenizer_config, "tokenizer"),
                          read_json_config(args.generator_args, "generator"), args.latent_scale)
    for kind, path in written.items():
        print(f"wrote {kind} {path}")
    if len(written) == 2:
        print(f"sample: python -m minieq.sample --tokenizer {written['tokenizer']} "
              f"--generator {written['generator']} --classes 0 --width 2048 --cfg 7")
    return 0


if __name__ == "__main__":
    sys.exit(main())
