"""Core modules: checkpoints, configs, utils (device, RNG state) and the training helpers."""
import argparse
import os
import random
from itertools import islice
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from minieq.checkpoint import (CheckpointError, atomic_torch_save, load_checkpoint, read_checkpoint,
                               register_model, safe_torch_load, save_checkpoint)
from minieq.config import ConfigBase, add_dataclass_args, overrides_from_args
from minieq.ema import EMA
from minieq.training import (NonFiniteLossError, ResumableSampler, TrainState, batches_from, check_finite,
                             warmup_constant, warmup_cosine, warmup_step_decay)
from minieq.utils import get_rng_state, pick_device, set_rng_state


@dataclass
class InnerConfig(ConfigBase):
    depth: int = 1


@dataclass
class DummyConfig(ConfigBase):
    width: int = 4
    scale: float = 1.0
    name: str = "dummy"
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    inner: InnerConfig = field(default_factory=InnerConfig)
    PRESETS = {"tiny": {"width": 3}, "big": {"width": 16, "scale": 2.0}}


@register_model
class DummyNet(nn.Module):
    config_class = DummyConfig

    def __init__(self, config: DummyConfig):
        super().__init__()
        self.config = config
        self.linear = nn.Linear(config.width, config.width)
        self.register_buffer("count", torch.zeros(()))

    def forward(self, x):
        return self.linear(x) * self.config.scale


class NotAllowed:
    """A plain Python class: pickling it makes a file that weights_only loads must refuse."""


# --- checkpoints ---------------------------------------------------------------------------------

def test_checkpoint_round_trip(tmp_path):
    model = DummyNet(DummyConfig.preset("tiny", scale=0.5))
    path = save_checkpoint(tmp_path / "sub" / "m.pt", model, step=7)
    loaded = load_checkpoint(path)
    assert isinstance(loaded, DummyNet) and not loaded.training
    assert loaded.config == model.config and loaded.config.inner == InnerConfig()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    assert read_checkpoint(path)["step"] == 7


def test_checkpoint_prefers_ema_weights(tmp_path):
    model = DummyNet(DummyConfig())
    ema_state = {k: torch.full_like(v, 3.0) for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path / "m.pt", model, ema_state_dict=ema_state)
    assert (load_checkpoint(tmp_path / "m.pt").linear.weight == 3.0).all()
    assert torch.equal(load_checkpoint(tmp_path / "m.pt", use_ema=False).linear.weight, model.linear.weight)


def test_checkpoint_loads_use_weights_only(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "m.pt", DummyNet(DummyConfig()))
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    load_checkpoint(tmp_path / "m.pt")
    assert calls and all(k.get("weights_only") is True for k in calls)


def test_atomic_save_leaves_no_temp_files_and_keeps_target_on_failure(tmp_path):
    model = DummyNet(DummyConfig())
    path = save_checkpoint(tmp_path / "m.pt", model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_checkpoint(path, model, broken=lambda: None)  # a lambda cannot be pickled
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_broken_files_raise_one_checkpoint_error_naming_file_and_problem(tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", DummyNet(DummyConfig()))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    random_bytes = tmp_path / "random.pt"
    random_bytes.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    old = tmp_path / "old.pt"
    torch.save({**torch.load(good, weights_only=True), "version": 0}, old)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"format": "minieq", "thing": NotAllowed()}, unsafe)
    cases = [(truncated, "truncated or corrupt"), (foreign, "not a minieq checkpoint"),
             (random_bytes, "not a readable PyTorch file"), (old, "version 0"),
             (unsafe, "not allowed in a safe (weights_only) load"), (tmp_path / "missing.pt", "no such checkpoint")]
    for path, problem in cases:
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value) and problem in str(info.value), str(info.value)


def test_checkpoint_errors_for_unknown_class_and_mismatched_weights(tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", DummyNet(DummyConfig()))
    ckpt = torch.load(good, weights_only=True)
    torch.save({**ckpt, "model_class": "NoSuchNet"}, tmp_path / "unknown.pt")
    with pytest.raises(CheckpointError, match="unknown model class 'NoSuchNet'"):
        load_checkpoint(tmp_path / "unknown.pt")
    torch.save({**ckpt, "config": {**ckpt["config"], "width": 5}}, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_checkpoint(tmp_path / "shape.pt")
    with pytest.raises(TypeError, match="not registered"):
        save_checkpoint(tmp_path / "x.pt", nn.Linear(2, 2))


def test_safe_torch_load_reads_plain_tensors(tmp_path):
    atomic_torch_save({"a": torch.arange(3)}, tmp_path / "plain.pt")
    assert torch.equal(safe_torch_load(tmp_path / "plain.pt")["a"], torch.arange(3))


# --- configs -------------------------------------------------------------------------------------

def test_config_presets_and_round_trip():
    cfg = DummyConfig.preset("big", name="x")
    assert (cfg.width, cfg.scale, cfg.name) == (16, 2.0, "x")
    assert DummyConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown DummyConfig preset 'huge'.*\['big', 'tiny'\]"):
        DummyConfig.preset("huge")
    with pytest.raises(ValueError, match="unknown fields"):
        DummyConfig.from_dict({"depthh": 3})


def test_config_cli_overrides():
    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, DummyConfig)
    args = parser.parse_args(["--width", "8", "--sizes", "3", "4"])
    assert overrides_from_args(args, DummyConfig) == {"width": 8, "sizes": [3, 4]}


# --- utils ---------------------------------------------------------------------------------------

def test_pick_device_honours_env(monkeypatch):
    monkeypatch.setenv("MINIEQ_DEVICE", "meta")
    assert pick_device() == torch.device("meta")
    assert pick_device("cpu") == torch.device("cpu")      # an explicit choice wins
    monkeypatch.delenv("MINIEQ_DEVICE")
    assert pick_device().type in ("cpu", "cuda", "mps")


def _draw():
    return random.random(), float(np.random.rand()), torch.rand(3)


def test_rng_state_round_trip_through_a_safe_file(tmp_path):
    random.seed(1)
    np.random.seed(1)
    state = get_rng_state()
    atomic_torch_save(state, tmp_path / "rng.pt")
    first = _draw()
    set_rng_state(safe_torch_load(tmp_path / "rng.pt"))
    second = _draw()
    assert first[:2] == second[:2] and torch.equal(first[2], second[2])


# --- training helpers ----------------------------------------------------------------------------

def test_resumable_sampler_determinism_and_mid_epoch_start():
    a = ResumableSampler(10, seed=3, num_replicas=1, rank=0)
    b = ResumableSampler(10, seed=3, num_replicas=1, rank=0)
    assert list(a) == list(b) and sorted(a) == list(range(10))
    a.set_epoch(1)
    assert list(a) != list(b)
    full = list(a)
    a.set_epoch(1, start=4)
    assert list(a) == full[4:] and len(a) == 6


def test_resumable_sampler_shards_over_ranks():
    shards = [list(ResumableSampler(10, seed=0, num_replicas=3, rank=r)) for r in range(3)]
    assert all(len(s) == 4 for s in shards)                  # padded to 12 by wrapping around
    assert set(sum(shards, [])) == set(range(10))


def test_batches_from_resume_equals_straight_run():
    data = TensorDataset(torch.arange(10))
    straight = [(s, b[0].tolist()) for s, b in islice(batches_from(data, 3, seed=5), 8)]
    resumed = [(s, b[0].tolist()) for s, b in islice(batches_from(data, 3, start_step=5, seed=5), 3)]
    assert resumed == straight[5:]
    assert straight[0][1] != straight[3][1]                  # a new epoch, a new order
    with pytest.raises(ValueError, match="smaller than one batch"):
        next(batches_from(data, 11))


def _train_steps(model, opt, ema, n):
    for _ in range(n):
        loss = model(torch.randn(2, 4)).pow(2).mean()       # global RNG: must be restored
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(model)


def test_train_state_resume_is_bit_identical(tmp_path):
    torch.manual_seed(0)
    model = DummyNet(DummyConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    state = TrainState(model, {"opt": opt}, EMA(model, 0.9), step=0)
    _train_steps(model, opt, state.ema, 2)
    state.step = 2
    state.save(tmp_path / "run.pt")
    _train_steps(model, opt, state.ema, 3)

    model2 = DummyNet(DummyConfig())
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    state2 = TrainState(model2, {"opt": opt2}, EMA(model2, 0.9))
    state2.resume(tmp_path / "run.pt")
    assert state2.step == 2
    _train_steps(model2, opt2, state2.ema, 3)
    for k, v in model.state_dict().items():
        assert torch.equal(model2.state_dict()[k], v), k
    assert all(torch.equal(state.ema.shadow[k], state2.ema.shadow[k]) for k in state.ema.shadow)


def test_resume_from_inference_checkpoint_is_refused(tmp_path):
    model = DummyNet(DummyConfig())
    save_checkpoint(tmp_path / "m.pt", model)
    with pytest.raises(CheckpointError, match="no training state"):
        TrainState(model, {}).resume(tmp_path / "m.pt")


def test_check_finite_and_lr_schedules():
    check_finite({"a": torch.tensor(1.0)}, step=3)
    with pytest.raises(NonFiniteLossError, match=r"step 3.*'b'.*last good checkpoint is c.pt"):
        check_finite({"a": torch.tensor(1.0), "b": torch.tensor(float("nan"))}, step=3, checkpoint="c.pt")
    assert warmup_step_decay(5, 10, 100, 0.5) == 0.5 and warmup_step_decay(210, 10, 100, 0.5) == 0.25
    assert warmup_constant(1, 4) == 0.25 and warmup_constant(9, 4) == 1.0 and warmup_constant(0, 0) == 1.0
    assert warmup_cosine(10, 10, 110) == 1.0 and abs(warmup_cosine(110, 10, 110, 0.1) - 0.1) < 1e-9


def test_pick_device_order_and_overrides(monkeypatch):
    monkeypatch.delenv("MINIEQ_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device() == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device() == torch.device("cuda")
    monkeypatch.setenv("MINIEQ_DEVICE", "meta")
    before = dict(os.environ)
    assert pick_device() == torch.device("meta")  # the environment variable beats detection
    assert pick_device("cpu") == torch.device("cpu")  # ... and the argument beats both
    assert dict(os.environ) == before
