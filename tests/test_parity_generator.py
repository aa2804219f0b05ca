"""Number-for-number parity with the official generator (fixtures: see ``parity_dir`` in conftest.py)."""
import argparse
import json
import os
from pathlib import Path

import pytest
import torch

from minieq import CheckpointError, load_official_generator
from minieq.official_generator import config_from_official_args

GOLDEN = Path(os.environ.get("MINIEQ_PARITY_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "golden"))
CKPT = GOLDEN / "public_generator.pth"
IO = GOLDEN / "public_generator_io.pt"

pytestmark = pytest.mark.skipif(
    not (CKPT.is_file() and IO.is_file()),
    reason=f"official generator fixtures not found in {GOLDEN} (set MINIEQ_PARITY_DIR)")

TOL = dict(rtol=1e-4, atol=1e-5)  # float32 round-off between two implementations


@pytest.fixture(scope="module")
def official():
    args = json.loads((GOLDEN / "public_config.json").read_text())["generator"]
    gen = load_official_generator(CKPT, args)
    io = torch.load(IO, map_location="cpu", weights_only=True)
    return gen, io, args


def test_config_translation(official):
    gen, _, args = official
    cfg = gen.config
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.token_dim) == (64, 3, 4, 8)
    assert (cfg.num_classes, cfg.head_width, cfg.head_depth, cfg.num_sampling_steps) == (10, 48, 2, 10)
    assert cfg.attention == "window" and cfg.cond_length == 3 and not gen.training
    released = config_from_official_args(None)
    assert (released.embed_dim, released.depth, released.num_classes, released.head_width) == (1024, 32, 30, 1280)
    assert config_from_official_args({**args, "cond_length": 0}).window == 0  # full causal


def test_condition_matches(official):
    gen, io, _ = official
    with torch.no_grad():
        assert torch.allclose(gen.condition(io["tokens"], io["labels"]), io["condition"], **TOL)
        assert torch.allclose(gen.condition(io["tokens"], None), io["condition_null"], **TOL)


def test_head_velocity_matches(official):
    gen, io, _ = official
    with torch.no_grad():
        v = gen.head.velocity(io["head_x"], io["head_t"], io["head_c"])
    assert torch.allclose(v, io["head_velocity"], **TOL)


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("which", ["sample_cfg1", "sample_cfg"])
def test_sample_matches(official, use_cache, which):
    gen, io, _ = official
    cfg = 1.0 if which == "sample_cfg1" else float(io["cfg_scale"])
    out = gen.sample(io["labels"], 12, cfg=cfg, cfg_schedule="linear", noise=io["sample_noise"],
                     use_cache=use_cache)
    assert torch.allclose(out, io[which], **TOL)


def test_uses_ema_weights_and_falls_back_to_model(official):
    gen, io, args = official
    ckpt = torch.load(CKPT, map_location="cpu", weights_only=True)
    live = load_official_generator({"model": ckpt["model"]}, args)
    with torch.no_grad():
        assert not torch.allclose(live.condition(io["tokens"], io["labels"]), io["condition"], **TOL)


def test_training_checkpoint_with_namespace_args_loads_safely(official, tmp_path):
    """Official training checkpoints carry ``args`` (an argparse.Namespace): allow-listed, not pickled code."""
    gen, io, args = official
    ckpt = torch.load(CKPT, map_location="cpu", weights_only=True)
    path = tmp_path / "checkpoint-last.pth"
    torch.save({**ckpt, "args": argparse.Namespace(model="tiny", cond_length=3)}, path)
    again = load_official_generator(path, args)
    with torch.no_grad():
        assert torch.allclose(again.condition(io["tokens"], io["labels"]), io["condition"], **TOL)


def test_mismatches_raise_checkpoint_error(official, tmp_path):
    _, _, args = official
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_official_generator(CKPT, {**args, "diffloss_w": 64})
    with pytest.raises(CheckpointError, match="missing"):
        load_official_generator(CKPT, {**args, "decoder_depth": 2})
    with pytest.raises(CheckpointError, match="no such"):
        load_official_generator(tmp_path / "absent.pth", args)
    with pytest.raises(CheckpointError, match="model_ema"):
        load_official_generator({"state_dict": {}}, args)
