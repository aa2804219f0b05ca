"""The paper's analyses, each one function plus one command (``python -m minieq.experiments NAME``).

Every experiment runs at two scales with the same code: ``--scale cpu`` (SynthScapes and the
course models, minutes on a laptop CPU) and ``--scale paper`` (the paper presets, a GPU). Each
writes ``OUT/NAME.json`` (the numbers, the settings and the seed) and ``OUT/NAME.png`` (its
figure), which docs/results.md and notebooks 07-08 read.

This module holds what the experiments share: the registry of names, the common flags and the
result writer.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from minieq.cli import parser_for

# One module under minieq.experiments per name; each has ``main(argv) -> dict``.
EXPERIMENTS = (
    "zero_shot",      # Fig. 3 / Table 1: loss on trained vs untrained positions
    "per_position",   # Fig. 4: per-position loss, stationary vs centred data
    "attention",      # Table 4: window vs full causal vs strictly equivariant
    "efficiency",     # Tables 2-3: GFLOPs per 256x256 image
    "shift",          # Fig. 7: RoPE random shift 16 vs 1, far beyond training
    "long_fidelity",  # FD of crops vs x-offset on 8x-64x strips (not in the paper)
    "process",        # Fig. 9 / Fig. 5: token-by-token frames and long strips
    "tokenizer_ablation",  # Table 5: decoder fine-tuning, one more loss term per row
)
SCALES = ("cpu", "paper")


def experiment_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The flags every experiment shares: ``--scale``, ``--out``, ``--seed``, ``--device``."""
    parser = parser_for(f"experiments {name}", description)
    parser.add_argument("--scale", choices=SCALES, default="cpu",
                        help="cpu: SynthScapes + course models, minutes on a CPU; paper: the paper "
                             "presets (a GPU)")
    parser.add_argument("--out", type=Path, default=Path("runs/experiments"),
                        help="folder for NAME.json and NAME.png")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, training and sampling")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: the best one)")
    return parser


def write_result(out: str | os.PathLike, name: str, result: dict[str, Any], figure=None) -> dict[str, Path]:
    """Write ``OUT/name.json`` (and ``OUT/name.png`` from a matplotlib figure), each atomically
    (a half-written file would be read by a results table or a notebook)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json"}
    tmp = paths["json"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=float) + "\n")
    os.replace(tmp, paths["json"])
    if figure is not None:
        paths["png"] = out / f"{name}.png"
        tmp = out / f"{name}.tmp.png"
        figure.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, paths["png"])
    return paths
