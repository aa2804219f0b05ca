"""Interactive generation (paper Fig. 6) as plain, tested logic: :class:`StripEditor`.

Fig. 6 of the paper edits a generated image by dropping some of its token columns and
regenerating only those, left to right, each conditioned on everything before it (a causal
model can redraw any span: the tokens before it are its prefix). The editor holds that state:
the class, guidance, temperature and length; the tokens generated so far (a strip grows column
by column); the span chosen for dropping; the span last redrawn, marked when rendered. The
ipywidgets tool (:mod:`minieq.widgets`) only forwards its buttons and sliders to these methods,
so everything it does is tested here without a browser.

Sampling draws from one ``torch.Generator`` owned by the editor. The sampler draws noise only
for the tokens it samples, and the guidance is the same at every position
(``cfg_schedule="constant"``), so growing a strip one column at a time gives exactly the tokens
of sampling it in one call with the same seed.

Legend: N tokens (= columns), C token channels, H/W height/width in pixels.
"""
from __future__ import annotations

import numpy as np
import torch

from minieq.flow import SamplingOptions
from minieq.pipeline import Pipeline
from minieq.viz import to_uint8

# Marker bar colours above the strip (RGB in [-1, 1]).
DROP_COLOUR = (1.0, -1.0, -1.0)     # red: columns chosen for dropping
REDRAWN_COLOUR = (-1.0, -0.2, 1.0)  # blue: columns redrawn by the last regeneration
PENDING = 0.0                       # mid grey: columns not generated yet


class StripEditor:
    """A strip generated column by column, with spans dropped and regenerated (paper Fig. 6).

    :param pipe: tokenizer + generator.
    :param label: class index; ``cfg``, ``temperature``: sampling settings (read at every call,
        so they may change between calls, e.g. to redraw a span as another class).
    :param num_tokens: the strip's length in tokens (columns), >= 2.
    :param seed: seed of the editor's random generator (:meth:`reset` restarts it).
    """

    def __init__(self, pipe: Pipeline, label: int = 0, cfg: float = 2.0, temperature: float = 1.0,
                 num_tokens: int = 32, seed: int = 0, bar: int = 3):
        self.pipe, self.label, self.cfg, self.temperature = pipe, label, cfg, temperature
        self.bar = bar
        self.num_tokens = self._checked_length(num_tokens)
        self.seed = seed
        self.reset()

    # ---- state ---------------------------------------------------------------------------------

    def reset(self) -> None:
        """An empty strip: no tokens, no spans, the random generator back at ``seed``."""
        self.tokens = torch.zeros(1, 0, self.pipe.generator.config.token_dim)  # (1, 0, C)
        self.dropped: tuple[int, int] | None = None   # [start, stop) chosen for dropping
        self.redrawn: tuple[int, int] | None = None   # [start, stop) of the last regeneration
        self.rng = torch.Generator(device=self.pipe.device).manual_seed(self.seed)

    @property
    def generated(self) -> int:
        """Columns generated so far."""
        return self.tokens.shape[1]

    @property
    def done(self) -> bool:
        return self.generated >= self.num_tokens

    def set_length(self, num_tokens: int) -> None:
        """Change the strip's length; a shorter one cuts the generated columns (and spans) there."""
        self.num_tokens = self._checked_length(num_tokens)
        self.tokens = self.tokens[:, :num_tokens]
        for name in ("dropped", "redrawn"):
            span = getattr(self, name)
            if span is not None and span[1] > self.generated:
                setattr(self, name, None)

    def _checked_length(self, num_tokens: int) -> int:
        if num_tokens < 2:
            raise ValueError(f"a strip needs at least 2 token columns (the tokenizer's minimum), "
                             f"got {num_tokens}")
        return int(num_tokens)

    def _sample_kwargs(self) -> dict:  # constant guidance: see the module docstring
        options = SamplingOptions(cfg=self.cfg, cfg_schedule="constant", temperature=self.temperature)
        return dict(options=options, generator=self.rng)

    def _labels(self) -> torch.Tensor:
        num_classes = self.pipe.generator.config.num_classes
        if not 0 <= self.label < num_classes:
            raise ValueError(f"label must be a class index in [0, {num_classes}), got {self.label}")
        return torch.tensor([self.label], device=self.pipe.device)  # (1,)

    # ---- actions ---------------------------------------------------------------------------------

    def generate_columns(self, count: int = 1) -> int:
        """Sample the next ``count`` columns (fewer at the end of the strip); returns how many."""
        count = min(count, self.num_tokens - self.generated)
        if count <= 0:
            return 0
        prefix = self.tokens.to(self.pipe.device) if self.generated else None
        new = self.pipe.generator.sample(self._labels(), self.generated + count, prefix=prefix,
                                         **self._sample_kwargs())  # (1, generated + count, C)
        self.tokens = new.cpu()
        return count

    def generate(self) -> None:
        """A new strip from the start, all ``num_tokens`` columns (the editor's seed restarts)."""
        self.reset()
        self.generate_columns(self.num_tokens)

    def drop(self, start: int, stop: int) -> None:
        """Choose columns ``start .. stop - 1`` of the generated strip for regeneration."""
        if not 0 <= start < stop <= self.generated:
            raise ValueError(f"a span to drop must satisfy 0 <= start < stop <= {self.generated} "
                             f"(the generated columns), got [{start}, {stop})")
        self.dropped = (int(start), int(stop))

    def column_at(self, x: float) -> int:
        """The token column under pixel ``x`` of the rendered strip (for clicks)."""
        column = int(x // self.pipe.column_width)
        if not 0 <= column < self.num_tokens:
            last = self.num_tokens * self.pipe.column_width - 1
            raise ValueError(f"pixel x={x} lies outside the strip (0 .. {last})")
        return column

    def click(self, x: float) -> tuple[int, int]:
        """Add the column under pixel ``x`` to the dropped span (a first click starts one; later
        clicks extend it to include their column); returns the span."""
        column = min(self.column_at(x), self.generated - 1)
        if column < 0:
            raise ValueError("generate some columns before choosing any to drop")
        start, stop = self.dropped if self.dropped is not None else (column, column + 1)
        self.drop(min(start, column), max(stop, column + 1))
        return self.dropped

    def keep_mask(self) -> torch.Tensor:
        """(generated,) bool: False on the dropped span."""
        keep = torch.ones(self.generated, dtype=torch.bool)
        if self.dropped is not None:
            keep[self.dropped[0]:self.dropped[1]] = False
        return keep

    def regenerate(self) -> tuple[int, int]:
        """Resample the dropped columns (left to right, the others kept); returns the redrawn span."""
        if self.dropped is None:
            raise ValueError("choose columns to drop first (drop(start, stop) or click(x))")
        new = self.pipe.generator.regenerate(self.tokens.to(self.pipe.device), self._labels(),
                                             self.keep_mask(), **self._sample_kwargs())  # (1, N, C)
        self.tokens = new.cpu()
        self.redrawn, self.dropped = self.dropped, None
        return self.redrawn

    # ---- picture ---------------------------------------------------------------------------------

    def image(self) -> torch.Tensor:
        """(3, H, num_tokens · column width) in [-1, 1]: the generated columns, grey after them."""
        col, height = self.pipe.column_width, self.pipe.tokenizer.config.image_height
        canvas = torch.full((3, height, self.num_tokens * col), PENDING)
        if self.generated >= 2:  # the tokenizer decodes at least 2 columns (one stays grey)
            canvas[..., :self.generated * col] = self.pipe.decode(self.tokens.to(self.pipe.device))[0].cpu()
        return canvas

    def render(self) -> np.ndarray:
        """uint8 (bar + H, W, 3): the strip under a marker bar, red over the columns chosen for
        dropping, blue over the columns the last regeneration redrew (grey elsewhere)."""
        strip = self.image()  # (3, H, W)
        col = self.pipe.column_width
        marker = torch.full((3, self.bar, strip.shape[-1]), PENDING)
        for span, colour in ((self.redrawn, REDRAWN_COLOUR), (self.dropped, DROP_COLOUR)):
            if span is not None:
                marker[:, :, span[0] * col:span[1] * col] = torch.tensor(colour)[:, None, None]
        return to_uint8(torch.cat([marker, strip], dim=1))  # (bar + H, W, 3)

    def status(self) -> str:
        """One line describing the state (the widget shows it under the picture)."""
        parts = [f"{self.generated}/{self.num_tokens} columns"]
        if self.dropped is not None:
            parts.append(f"drop {self.dropped[0]}-{self.dropped[1] - 1}")
        if self.redrawn is not None:
            parts.append(f"last redrawn {self.redrawn[0]}-{self.redrawn[1] - 1}")
        return "; ".join(parts)
