"""torchrun helpers. Every function is a no-op in a single process (a notebook, a test, the demo)."""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as td

from minieq.utils import pick_device


def init_distributed(backend: str | None = None) -> torch.device:
    """Join the process group if launched by torchrun (RANK is set) and return this rank's device.

    NCCL on CUDA, gloo otherwise. Without torchrun this just returns ``pick_device()``.
    """
    if "RANK" not in os.environ or td.is_initialized():
        return _local_device(pick_device())
    device = _local_device(pick_device())
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    td.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return device


def _local_device(device: torch.device) -> torch.device:
    if device.type == "cuda":
        index = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return device


def is_distributed() -> bool:
    return td.is_available() and td.is_initialized()


def rank() -> int:
    return td.get_rank() if is_distributed() else 0


def world_size() -> int:
    return td.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        td.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Average a tensor over ranks (returns a new tensor; identity in one process)."""
    if not is_distributed():
        return value
    value = value.detach().clone()
    td.all_reduce(value, op=td.ReduceOp.SUM)
    return value / world_size()


def cleanup() -> None:
    if is_distributed():
        td.destroy_process_group()
