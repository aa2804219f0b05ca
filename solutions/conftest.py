"""nbval over the solution notebooks: `make test-notebooks` (FAST) and `make test-notebooks-full`.

The outputs stored in solutions/ are FAST mode's. In full mode (``MINIEQ_FAST=0``, 128-px
models, another run folder) and under SMOKE (its ``SMOKE: ...`` lines) a ``# NBVAL_CHECK_OUTPUT``
cell legitimately prints something else, so there nbval runs every cell without comparing its
output: a cell fails on an error or a failed assert, not on its printout.
"""
from minieq.course import is_fast, is_smoke


def pytest_collection_modifyitems(items):
    if is_fast() and not is_smoke():
        return
    for item in items:
        options = getattr(item, "options", None)  # nbval's cell options (a defaultdict)
        if options is not None:
            options["check"] = False
