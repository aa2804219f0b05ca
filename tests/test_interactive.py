"""The interactive generation tool (paper Fig. 6): StripEditor logic and its headless widget."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from minieq.interactive import DROP_COLOUR, REDRAWN_COLOUR, StripEditor


@pytest.fixture(scope="module")
def pipe(micro_pipe):
    return micro_pipe


def test_growing_column_by_column_equals_one_call(pipe):
    editor = StripEditor(pipe, label=3, cfg=2.0, num_tokens=10, seed=7)
    counts = [editor.generate_columns(4) for _ in range(4)]
    assert counts == [4, 4, 2, 0] and editor.done
    grown = editor.tokens.clone()
    editor.generate()
    torch.testing.assert_close(editor.tokens, grown)
    one_call = pipe.generator.sample(torch.tensor([3]), 10, cfg=2.0, cfg_schedule="constant",
                                     generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(grown, one_call)


def test_regenerate_redraws_only_the_dropped_span(pipe):
    editor = StripEditor(pipe, label=1, num_tokens=12, seed=0)
    editor.generate()
    before = editor.tokens.clone()
    editor.drop(4, 7)
    assert editor.keep_mask().tolist() == [True] * 4 + [False] * 3 + [True] * 5
    assert editor.regenerate() == (4, 7) and editor.dropped is None and editor.redrawn == (4, 7)
    torch.testing.assert_close(editor.tokens[:, :4], before[:, :4])
    torch.testing.assert_close(editor.tokens[:, 7:], before[:, 7:])
    assert (editor.tokens[:, 4:7] - before[:, 4:7]).abs().min() > 0  # every redrawn value changed
    editor.label = 6  # settings are read at every call: redraw a span as another class
    middle = editor.tokens.clone()
    editor.drop(0, 2)
    editor.regenerate()
    torch.testing.assert_close(editor.tokens[:, 2:], middle[:, 2:])
    assert (editor.tokens[:, :2] - middle[:, :2]).abs().min() > 0


def test_clicks_choose_columns_and_bad_requests_are_clear(pipe):
    editor = StripEditor(pipe, num_tokens=8)
    with pytest.raises(ValueError, match="generate some columns"):
        editor.click(3)
    with pytest.raises(ValueError, match="choose columns to drop"):
        editor.regenerate()
    editor.generate_columns(6)
    col = pipe.column_width
    assert editor.click(2 * col + 1) == (2, 3)
    assert editor.click(4 * col) == (2, 5)  # extends the span to include column 4
    assert editor.click(7 * col) == (2, 6)  # a click beyond the generated part takes its last column
    with pytest.raises(ValueError, match="outside the strip"):
        editor.column_at(8 * col)
    with pytest.raises(ValueError, match="0 <= start < stop <= 6"):
        editor.drop(3, 9)
    with pytest.raises(ValueError, match="at least 2 token columns"):
        StripEditor(pipe, num_tokens=1)
    editor.label = 99
    with pytest.raises(ValueError, match="class index"):
        editor.generate_columns(1)


def test_render_marks_the_spans_and_greys_what_is_not_generated(pipe):
    editor = StripEditor(pipe, num_tokens=6, bar=2)
    editor.generate_columns(4)
    editor.drop(0, 2)
    editor.regenerate()
    editor.drop(3, 4)
    picture = editor.render()
    col, h = pipe.column_width, pipe.tokenizer.config.image_height
    assert picture.shape == (2 + h, 6 * col, 3) and picture.dtype == np.uint8
    colour = lambda rgb: ((np.array(rgb) + 1) * 127.5).round()  # noqa: E731
    assert (picture[0, :2 * col] == colour(REDRAWN_COLOUR)).all()
    assert (picture[0, 3 * col:4 * col] == colour(DROP_COLOUR)).all()
    assert (picture[0, 2 * col:3 * col] == 128).all()  # nothing marked: grey
    assert (picture[2:, 4 * col:] == 128).all()  # columns 4, 5 are not generated yet
    assert picture[2:, :4 * col].std() > 0
    assert editor.status() == "4/6 columns; drop 3-3; last redrawn 0-1"
    editor.set_length(3)  # a shorter strip cuts the tokens and forgets spans beyond it
    assert editor.generated == 3 and editor.dropped is None and editor.redrawn == (0, 2)


def test_widget_builds_headless_and_its_callbacks_drive_the_editor(pipe):
    pytest.importorskip("ipywidgets")
    from minieq.widgets import StripWidget, png_bytes

    editor = StripEditor(pipe, num_tokens=8)
    widget = StripWidget(editor, [f"class {i}" for i in range(8)], max_tokens=16, zoom=2)
    widget.step.value = 3
    widget.on_new()
    assert editor.generated == 3 and widget.message.value == "3/8 columns"
    widget.on_finish()
    assert editor.done and widget.span.max == 8
    widget.span.value = (2, 5)
    widget.on_drop()
    before = editor.tokens.clone()
    widget.on_regenerate()
    assert editor.redrawn == (2, 5)
    torch.testing.assert_close(editor.tokens[:, 5:], before[:, 5:])
    widget.click(2 * 7 * pipe.column_width)  # zoomed pixels: column 7
    assert editor.dropped == (7, 8)
    widget.span.value = (0, 0)
    widget.on_drop()  # an empty span is a message, not an exception
    assert widget.message.value.startswith("cannot do that")
    widget.label.value, widget.cfg.value, widget.length.value = 5, 3.0, 12
    assert (editor.label, editor.cfg, editor.num_tokens) == (5, 3.0, 12)
    picture = Image.open(io.BytesIO(widget.picture.value))
    assert picture.size == (2 * 12 * pipe.column_width, 2 * (3 + 32))
    assert png_bytes(np.zeros((2, 3, 3), np.uint8), zoom=1)[:4] == b"\x89PNG"


def test_widget_labels_are_not_cut(pipe):
    """Every described control gets a description width that fits its label (no "temperat…")."""
    pytest.importorskip("ipywidgets")
    from minieq.widgets import LABEL_WIDTH, StripWidget

    widget = StripWidget(StripEditor(pipe, num_tokens=8), [f"class {i}" for i in range(8)])
    controls = [widget.label, widget.cfg, widget.temperature, widget.length, widget.step, widget.span]
    room = int(LABEL_WIDTH.removesuffix("px"))
    for control in controls:
        assert control.style.description_width == LABEL_WIDTH
        assert 7 * len(control.description) <= room, f"{control.description!r} needs more than {room} px"
