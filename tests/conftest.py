"""Shared pytest fixtures: fixed seeds, the repository root, the parity-fixture folder, a micro
pipeline for sampling tests."""
import os
from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")  # tests never open windows

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same global RNG state."""
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _no_smoke(monkeypatch):
    """The unit tests see the real recipes even where MINIEQ_SMOKE is set (tests that need it set it)."""
    monkeypatch.delenv("MINIEQ_SMOKE", raising=False)


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture
def parity_dir() -> Path:
    """The golden fixtures (MINIEQ_PARITY_DIR; by default a `shared/golden` folder beside the
    repository, made by running the official code and not shipped with minieq); skips when absent."""
    path = Path(os.environ.get("MINIEQ_PARITY_DIR", REPO.parent / "shared" / "golden"))
    if not path.is_dir():
        pytest.skip(f"parity fixtures not found at {path} (set MINIEQ_PARITY_DIR)")
    return path


@pytest.fixture
def head_call_rows(monkeypatch) -> list[int]:
    """Records the rows of every velocity-network call of the flow head, in either sampling form
    (``FlowHead.sampling_form``: the plain modules or the packed head)."""
    from minieq.flow import AdaLNMLP
    from minieq.head_inference import PackedHead

    rows = []
    for cls, name in ((AdaLNMLP, "forward_embedded"), (PackedHead, "__call__")):
        real = getattr(cls, name)
        monkeypatch.setattr(cls, name, lambda self, x, *a, real=real: rows.append(x.shape[0]) or real(self, x, *a))
    return rows


MICRO_SCALE = 0.3  # latent scale of the micro pipeline


@pytest.fixture(scope="module")
def micro_pipe():
    """An untrained tiny tokenizer + a 2-block generator whose flow head gives a real velocity
    field (a fresh head outputs 0), for sampling and editing tests that need no trained model."""
    from torch import nn

    from minieq.generator import Generator, GeneratorConfig
    from minieq.pipeline import Pipeline
    from minieq.tokenizer import ColumnTokenizer, TokenizerConfig

    torch.manual_seed(0)
    gen = Generator(GeneratorConfig.preset("tiny", embed_dim=32, depth=2, num_heads=2, head_width=32,
                                           head_depth=1, num_sampling_steps=2))
    for p in gen.head.parameters():
        nn.init.normal_(p, std=0.2)
    return Pipeline(ColumnTokenizer(TokenizerConfig.preset("tiny")), gen.eval(), MICRO_SCALE)
