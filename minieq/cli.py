"""What every minieq command line shares: preset-aware help, user errors as one line, exit codes.

A user mistake (a wrong or missing file, a checkpoint of the wrong kind, a bad value, a device
this machine lacks) ends through ``parser.error``: one line on stderr and exit status 2, as for
a mistyped flag. minieq raises those as :class:`~minieq.checkpoint.CheckpointError`,
``ValueError`` or ``FileNotFoundError``; any other exception is an internal error and keeps
its traceback. ``main`` functions return 0, so ``sys.exit(main())`` (what an installed console
script does) exits 0 on success.
"""
from __future__ import annotations

import argparse
import contextlib
from typing import Iterator

from minieq.checkpoint import CheckpointError

USER_ERRORS = (CheckpointError, ValueError, FileNotFoundError)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the module docstring's example commands as written; wider help column."""

    def __init__(self, prog: str, **kwargs):
        super().__init__(prog, max_help_position=32, **kwargs)


def parser_for(tool: str, description: str) -> argparse.ArgumentParser:
    """An ArgumentParser whose usage line reads ``python -m minieq.<tool>``."""
    return argparse.ArgumentParser(prog=f"python -m minieq.{tool}", description=description,
                                   formatter_class=HelpFormatter)


def trainer_parser(tool: str, description: str, config_cls: type, presets_help: dict[str, str],
                   default: str, checkpoint_name: str, argv: list[str] | None):
    """The parser both trainers start from: ``--preset`` (its help describes every preset) and
    the run flags. Returns ``(parser, config of the chosen preset, its name)``, so the trainer's
    own flags can show that preset's values as their defaults."""
    preset = _chosen_preset(argv, config_cls.PRESETS, default)
    parser = parser_for(tool, description)
    parser.add_argument("--preset", default=default, choices=list(config_cls.PRESETS),
                        help="; ".join(f"{k}: {v}" for k, v in presets_help.items()))
    add_run_flags(parser, checkpoint_name)
    return parser, config_cls.preset(preset), preset


def _chosen_preset(argv: list[str] | None, presets: dict, default: str) -> str:
    """The ``--preset`` on the command line (``default`` if absent or unknown), read before the
    full parser exists so that ``--help`` can show that preset's values as the defaults."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=default)
    name = pre.parse_known_args(argv)[0].preset
    return name if name in presets else default


def add_run_flags(parser: argparse.ArgumentParser, checkpoint_name: str) -> None:
    """``--out``, ``--resume`` and ``--fresh``: the same rerun rule in both trainers."""
    parser.add_argument("--out", required=True,
                        help=f"run folder: {checkpoint_name}, metrics.jsonl and pictures. If it holds "
                             f"{checkpoint_name}, the run resumes from it exactly")
    parser.add_argument("--resume", default=None, metavar="CHECKPOINT",
                        help=f"resume from this checkpoint instead (default: OUT/{checkpoint_name} "
                             "if it exists)")
    parser.add_argument("--fresh", action="store_true",
                        help=f"start at step 0 even if OUT holds a run (its {checkpoint_name} and "
                             "metrics.jsonl are replaced)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:N or mps (default: CUDA, then MPS, then CPU; one GPU per "
                             "rank under torchrun)")


@contextlib.contextmanager
def user_errors(parser: argparse.ArgumentParser) -> Iterator[None]:
    """Turn a user mistake raised inside the block into ``parser.error`` (one line, exit 2)."""
    try:
        yield
    except USER_ERRORS as err:
        parser.error(str(err))
