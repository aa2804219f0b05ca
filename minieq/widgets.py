"""The ipywidgets tool of paper Fig. 6: a thin layer over :class:`minieq.interactive.StripEditor`.

Sliders and a menu set the editor's class, guidance, temperature and length; buttons grow the
strip column by column, choose the columns to drop (a range slider, or :meth:`StripWidget.click`
with a pixel position) and regenerate them. Every callback is a plain method, so a notebook (or
nbval, headless) can build the widget and press its buttons programmatically; the picture is a
PNG in an ``ipywidgets.Image``.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from minieq.interactive import StripEditor


def png_bytes(picture: np.ndarray, zoom: int = 3) -> bytes:
    """uint8 (H, W, 3) -> PNG bytes, each pixel drawn ``zoom`` x ``zoom`` (small course images)."""
    big = picture.repeat(zoom, axis=0).repeat(zoom, axis=1)  # (zoom·H, zoom·W, 3)
    buffer = io.BytesIO()
    Image.fromarray(big).save(buffer, format="png")
    return buffer.getvalue()


LABEL_WIDTH = "100px"  # fits "columns/click", the longest description
CONTROL_WIDTH = "360px"


class StripWidget:
    """Controls + picture for a :class:`StripEditor`; ``display(widget.box)`` shows it.

    :param class_names: names of the generator's classes, in label order.
    :param max_tokens: the largest length the width slider offers.
    """

    def __init__(self, editor: StripEditor, class_names: list[str], max_tokens: int = 128, zoom: int = 3):
        import ipywidgets as w  # a notebook-only dependency (minieq[dev]): the editor works without it

        self.editor, self.zoom = editor, zoom
        # ipywidgets gives a description about 80 px and cuts longer ones ("temperat…"): every
        # control gets room for its longest label, and a width that leaves the slider usable.
        named = dict(style={"description_width": LABEL_WIDTH}, layout=w.Layout(width=CONTROL_WIDTH))
        self.label = w.Dropdown(options=[(name, i) for i, name in enumerate(class_names)],
                                value=editor.label, description="class", **named)
        self.cfg = w.FloatSlider(value=editor.cfg, min=1.0, max=8.0, step=0.5, description="cfg", **named)
        self.temperature = w.FloatSlider(value=editor.temperature, min=0.5, max=1.5, step=0.05,
                                         description="temperature", **named)
        self.length = w.IntSlider(value=editor.num_tokens, min=2, max=max_tokens, description="tokens",
                                  **named)
        self.step = w.IntSlider(value=4, min=1, max=32, description="columns/click", **named)
        self.span = w.IntRangeSlider(value=(0, 1), min=0, max=editor.num_tokens, description="drop span",
                                     **named)
        buttons = {"new strip": self.on_new, "next columns": self.on_next, "to the end": self.on_finish,
                   "drop span": self.on_drop, "regenerate": self.on_regenerate}
        self.buttons = {}
        for text, callback in buttons.items():
            self.buttons[text] = w.Button(description=text)
            self.buttons[text].on_click(callback)
        for slider in (self.label, self.cfg, self.temperature, self.length):
            slider.observe(self.on_settings, names="value")
        self.picture = w.Image(format="png")
        self.message = w.Label()
        self.box = w.VBox([
            w.HBox([self.label, self.cfg]), w.HBox([self.temperature, self.length]),
            w.HBox([self.step] + [self.buttons[k] for k in ("new strip", "next columns", "to the end")]),
            w.HBox([self.span, self.buttons["drop span"], self.buttons["regenerate"]]),
            self.picture, self.message])
        self.refresh()

    # Callbacks take (and ignore) the widget that fired them, as ipywidgets passes it.
    def on_settings(self, _change=None) -> None:
        """Copy the sliders into the editor (a new length cuts or extends the strip)."""
        self.editor.label, self.editor.cfg = self.label.value, self.cfg.value
        self.editor.temperature = self.temperature.value
        if self.length.value != self.editor.num_tokens:
            self.editor.set_length(self.length.value)
        self.refresh()

    def on_new(self, _button=None) -> None:
        self.editor.reset()
        self.on_next()

    def on_next(self, _button=None) -> None:
        self.editor.generate_columns(self.step.value)
        self.refresh()

    def on_finish(self, _button=None) -> None:
        self.editor.generate_columns(self.editor.num_tokens)
        self.refresh()

    def on_drop(self, _button=None) -> None:
        self._guarded(lambda: self.editor.drop(*self.span.value))

    def on_regenerate(self, _button=None) -> None:
        self._guarded(self.editor.regenerate)

    def click(self, x: float) -> None:
        """A click at pixel ``x`` of the picture (zoomed pixels) adds its column to the span."""
        self._guarded(lambda: self.editor.click(x / self.zoom))

    def _guarded(self, action) -> None:
        # A bad request (no columns yet, an empty span) is shown as a message, not a traceback.
        try:
            action()
        except ValueError as err:
            self.refresh()
            self.message.value = f"cannot do that: {err}"
            return
        self.refresh()

    def refresh(self) -> None:
        """Redraw the picture and the status line from the editor's state."""
        self.span.max = max(1, self.editor.generated)
        self.picture.value = png_bytes(self.editor.render(), self.zoom)
        self.message.value = self.editor.status()
