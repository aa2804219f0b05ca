"""Device, precision, seeding and RNG-state helpers shared by every entry point."""
from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch
from torch import nn


def pick_device(prefer: str | None = None) -> torch.device:
    """The best available device: CUDA, then Apple MPS, then CPU.

    ``prefer`` (or the ``MINIEQ_DEVICE`` environment variable) forces one, e.g. ``"cpu"``.
    """
    prefer = prefer or os.environ.get("MINIEQ_DEVICE")
    if prefer:
        return _checked_device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _checked_device(name: str | torch.device) -> torch.device:
    """``torch.device(name)``, refusing a device this machine lacks with one clear ValueError
    (torch itself fails only at the first tensor moved there, deep inside a traceback)."""
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}: use cpu, cuda, cuda:N or mps") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested, but PyTorch sees no CUDA GPU here; use cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} requested, but only {torch.cuda.device_count()} CUDA GPU(s) exist")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {name!r} requested, but Apple MPS is not available here; use cpu")
    return device


# Test switch: "1" makes autocast() run bf16 autocast on the CPU too, so the GPU-only bf16 paths
# (both trainers, sampling) execute in CPU-only CI and their dtype mismatches surface there.
CPU_BF16_ENV = "MINIEQ_CPU_BF16"


def autocast(device: torch.device | str, enabled: bool = True):
    """bf16 autocast on CUDA; a no-op elsewhere (CPU autocast only slows small models down),
    unless the environment sets ``MINIEQ_CPU_BF16=1`` (tests: CPU bf16 autocast)."""
    device = torch.device(device)
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if enabled and device.type == "cpu" and os.environ.get(CPU_BF16_ENV) == "1":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    """Every global RNG state, in a form that loads under ``torch.load(weights_only=True)``."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`get_rng_state`."""
    version, *rest = state["python"]
    random.setstate((version, tuple(rest[0]), rest[1]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # A run resumed on a machine with fewer (or more) GPUs restores the devices both have.
        for index, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """Eval mode (no dropout, no random position shift) for a ``with`` block; the previous mode is restored after."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
