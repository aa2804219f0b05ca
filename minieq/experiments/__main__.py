"""``python -m minieq.experiments NAME [flags]``: run one of the paper's analyses (``--help`` of
a NAME lists its flags)."""
from __future__ import annotations

import importlib
import sys

from minieq.experiments import EXPERIMENTS


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in EXPERIMENTS:
        names = ", ".join(EXPERIMENTS)
        print(f"usage: python -m minieq.experiments NAME [flags]; NAME is one of: {names}",
              file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    module = importlib.import_module(f"minieq.experiments.{argv[0]}")
    module.main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
