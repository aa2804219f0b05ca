"""notebooks/ (exercises) and solutions/ are twins: same cells except the exercise code cells.

An exercise cell is a code cell of the notebooks/ version containing "# TODO" and a "..."
placeholder; every other cell must be identical in both. Exercise notebooks carry no outputs;
solution outputs stay small (each file < 1.5 MB), and what they store must render in a static
viewer: no progress-bar widgets. No cell source holds an ASCII control character.
"""
import re
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
EXERCISES, SOLUTIONS = REPO / "notebooks", REPO / "solutions"
MAX_BYTES = 1_500_000
NAMES = sorted({p.name for p in EXERCISES.glob("*.ipynb")} | {p.name for p in SOLUTIONS.glob("*.ipynb")})


def _is_exercise(cell) -> bool:
    return cell.cell_type == "code" and "# TODO" in cell.source and "..." in cell.source


def test_the_notebooks_are_the_readme_course_map():
    """Every notebook is listed in the README's course map and every listed one exists."""
    listed = re.findall(r"\]\(solutions/([^)]+\.ipynb)\)", (REPO / "README.md").read_text())
    assert len(listed) >= 7 and listed == sorted(listed)
    assert NAMES == listed


@pytest.mark.parametrize("name", NAMES)
def test_twins_exist_and_match(name):
    assert (EXERCISES / name).is_file(), f"solutions/{name} has no notebooks/ twin"
    assert (SOLUTIONS / name).is_file(), f"notebooks/{name} has no solutions/ twin"
    exercise = nbformat.read(EXERCISES / name, as_version=4)
    solution = nbformat.read(SOLUTIONS / name, as_version=4)
    ex_types = [c.cell_type for c in exercise.cells]
    sol_types = [c.cell_type for c in solution.cells]
    assert ex_types == sol_types, f"{name}: cell count/order/types differ:\n{ex_types}\n{sol_types}"
    for i, (ex, sol) in enumerate(zip(exercise.cells, solution.cells)):
        if _is_exercise(ex):
            assert ex.source != sol.source, f"{name} cell {i}: the exercise equals its solution"
        else:
            assert ex.source == sol.source, f"{name} cell {i} differs between notebooks/ and solutions/"


@pytest.mark.parametrize("name", NAMES)
def test_exercise_notebooks_have_no_outputs(name):
    if not (EXERCISES / name).is_file():
        pytest.skip(f"notebooks/{name} missing (reported by test_twins_exist_and_match)")
    notebook = nbformat.read(EXERCISES / name, as_version=4)
    with_outputs = [i for i, c in enumerate(notebook.cells) if c.cell_type == "code" and c.outputs]
    assert not with_outputs, f"notebooks/{name}: cells {with_outputs} have outputs (strip them)"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_files_are_small(name):
    for folder in (EXERCISES, SOLUTIONS):
        if (folder / name).is_file():
            size = (folder / name).stat().st_size
            assert size < MAX_BYTES, f"{folder.name}/{name} is {size / 1e6:.2f} MB (limit 1.5 MB)"


# Everything below 0x20 except tab and newline, and DEL. A LaTeX command typed into a Python
# string without the r prefix loses its backslash: \approx, \beta, \frac, \varepsilon become
# BEL, BS, FF and VT followed by the rest of the name.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@pytest.mark.parametrize("name", NAMES)
def test_cell_sources_have_no_control_characters(name):
    for folder in (EXERCISES, SOLUTIONS):
        if not (folder / name).is_file():
            continue
        for i, cell in enumerate(nbformat.read(folder / name, as_version=4).cells):
            found = CONTROL.search(cell.source)
            assert found is None, (
                f"{folder.name}/{name} cell {i}: control character {found.group()!r} in "
                f"{cell.source[max(0, found.start() - 30):found.end() + 30]!r} (a swallowed LaTeX backslash?)")


WIDGET = "application/vnd.jupyter.widget-view+json"
TQDM_TEXT = re.compile(r"\d+%\||\d+/\d+ \[")  # "  0%|" or "0/500 [" in a tqdm bar's text


@pytest.mark.parametrize("name", NAMES)
def test_solutions_store_no_progress_bar_widgets(name):
    # A widget is stored as a reference to live widget state, which static viewers (GitHub,
    # nbviewer) cannot draw: a tqdm widget shows frozen at 0 %. minieq.logger.progress draws text
    # bars. Any other widget needs a static picture in the same cell.
    if not (SOLUTIONS / name).is_file():
        pytest.skip(f"solutions/{name} missing (reported by test_twins_exist_and_match)")
    for i, cell in enumerate(nbformat.read(SOLUTIONS / name, as_version=4).cells):
        outputs = cell.get("outputs", [])
        widgets = [o["data"] for o in outputs if WIDGET in o.get("data", {})]
        for data in widgets:
            text = data.get("text/plain", "")
            assert not TQDM_TEXT.search(text), f"solutions/{name} cell {i} stores a tqdm widget: {text!r}"
        pictures = [o for o in outputs if {"image/png", "image/jpeg"} & set(o.get("data", {}))]
        assert not widgets or pictures, f"solutions/{name} cell {i}: a widget without a static picture"
