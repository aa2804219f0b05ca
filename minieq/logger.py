"""Metrics as JSON lines and tqdm progress bars."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Iterable

from tqdm.std import tqdm

from minieq import dist


def progress(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    """A plain-text tqdm bar that stays silent on non-main ranks and when ``disable=True`` is passed.

    Text, not ``tqdm.auto``'s Jupyter widget: Jupyter draws the text bar live just as well, and
    an executed notebook stores it as text, which static viewers show, instead of a widget
    reference that they render frozen at 0 %.
    """
    kwargs["disable"] = kwargs.get("disable", False) or not dist.is_main()
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


class JsonlLogger:
    """Append one JSON object per ``log`` call to ``path``.

    Only the main rank writes. Values that are tensors are converted with ``float``.
    ``drop_from``: rows of an existing file with ``step >= drop_from`` are removed first, so a
    resumed run that logs those steps again leaves no duplicate (0 empties the file).
    """

    def __init__(self, path: str | Path | None, drop_from: int | None = None):
        self.path = Path(path) if path is not None and dist.is_main() else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if drop_from is not None and self.path.is_file():
                kept = [line for line in self.path.read_text().splitlines(keepends=True)
                        if _step(line) is not None and _step(line) < drop_from]
                self.path.write_text("".join(kept))

    def log(self, step: int, **metrics: Any) -> None:
        if self.path is None:
            return
        row = {"step": step, "time": round(time.time(), 3)}
        for key, value in metrics.items():
            row[key] = _plain(value)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def _step(line: str) -> int | None:
    """The step of one metrics line; None for a blank line or one cut short by a killed run."""
    try:
        return json.loads(line)["step"] if line.strip() else None
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a metrics file written by :class:`JsonlLogger` (for plots in the notebooks)."""
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]
