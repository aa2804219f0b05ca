"""What every ``prepare_*.py`` here shares: the command line, the unreadable-image check and
the index file that :func:`minieq.data.read_index` reads (the scripts run with this folder first
on ``sys.path``, so they import this module by name).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from PIL import Image

from minieq.data import load_rgb
from minieq.logger import progress


def write_index(path: str | os.PathLike, files: list[str], labels: list[int], classes: list[str]) -> Path:
    """Write an index file: a JSON header line with the class names, then ``file<TAB>label`` lines."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps({"minieq_index": 1, "classes": classes}) + "\n")
        f.writelines(f"{name}\t{label}\n" for name, label in zip(files, labels))
    os.replace(tmp, path)
    return path


def verify_images(root: str | os.PathLike, files: list[str],
                  labels: list[int]) -> tuple[list[str], list[int], list[str]]:
    """Decode every file once; returns the readable ``(files, labels)`` and the unreadable files."""
    good_files, good_labels, bad = [], [], []
    for name, label in progress(zip(files, labels), total=len(files), desc="verify"):
        try:
            load_rgb(Path(root) / name)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            bad.append(name)
            continue
        good_files.append(name)
        good_labels.append(label)
    return good_files, good_labels, bad


def prepare_args(doc: str, argv: list[str] | None = None) -> argparse.Namespace:
    """The command line every ``data_scripts/prepare_*.py`` shares: ``--root DIR [--verify]``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--verify", action="store_true", help="decode every image and drop unreadable ones")
    return parser.parse_args(argv)


def run_prepare(main) -> None:
    """Run a prepare script's ``main``: a problem with the user's folders (a wrong root, missing
    class folders) ends as one line on stderr and exit status 2, not a traceback."""
    try:
        main()
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def write_split(root: Path, dataset: str, split: str, files: list[str], labels: list[int],
                classes: list[str], verify: bool = False) -> tuple[Path, list[str], list[int]]:
    """Optionally drop unreadable images, then write ``root/minieq_<dataset>_<split>.tsv``.

    :return: the index path and the ``(files, labels)`` it holds.
    """
    if verify:
        files, labels, bad = verify_images(root, files, labels)
        print(f"{split}: dropped {len(bad)} unreadable images {bad[:5]}")
    return write_index(root / f"minieq_{dataset}_{split}.tsv", files, labels, classes), files, labels


