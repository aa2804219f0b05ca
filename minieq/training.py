"""Pieces shared by the tokenizer and generator training loops.

- :class:`ResumableSampler` gives every (seed, epoch) one fixed order, sharded over DDP ranks,
  and can start mid-epoch, so a resumed run replays exactly the batches a straight run sees.
- :class:`TrainState` bundles what a checkpoint must hold for an exact resume: optimizers,
  EMA, step and every RNG state (the LR schedules below have no state).
- :func:`resume_source` is the rerun rule of both trainers: continue from ``--resume``, else
  from the run folder's own checkpoint; start at step 0 only without one or with ``fresh``.
- :func:`step_seed` makes every step's randomness a pure function of (seed, step, ...).
- :func:`check_finite` stops a run on a NaN/inf loss with a clear message.
- :func:`metrics_log` and :func:`is_due` are the one convention of both trainers' logs and saves:
  a row or checkpoint is labelled by the number of steps done.
- LR schedules are pure functions of the step, so they need no state of their own (unlike the
  official tokenizer's stateful scheduler, which resumes at LR 0:
  docs/official_code.md#tokenizer-quirks).
"""
from __future__ import annotations

import hashlib
import math
import os
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from minieq import dist
from minieq.checkpoint import CheckpointError, load_state_strict, read_checkpoint, save_checkpoint
from minieq.ema import EMA
from minieq.logger import JsonlLogger
from minieq.utils import get_rng_state, set_rng_state


def step_seed(*parts) -> int:
    """A 63-bit seed from e.g. (seed, step, rank): every step's randomness is reproducible, and a
    run resumed on any rank draws what the straight run drew there (no RNG state to restore)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class NonFiniteLossError(RuntimeError):
    """Raised when a loss becomes NaN or infinite; the last good checkpoint is kept."""


def check_finite(losses: dict[str, torch.Tensor], step: int, checkpoint: str | os.PathLike | None = None) -> None:
    """Raise :class:`NonFiniteLossError` naming the offending terms if any loss is not finite."""
    bad = {k: float(v) for k, v in losses.items() if not torch.isfinite(torch.as_tensor(v)).all()}
    if bad:
        where = f"; the last good checkpoint is {checkpoint}" if checkpoint else ""
        raise NonFiniteLossError(
            f"non-finite loss at step {step}: {bad}. Training stopped{where}. "
            "Try a lower learning rate, fp32 (no autocast), or a smaller gradient-clip value.")


def resume_source(own: str | os.PathLike, resume: str | os.PathLike | None = None,
                  fresh: bool = False) -> str | None:
    """The checkpoint a run continues from, or None to start at step 0.

    :param own: the run folder's checkpoint (``<out>/checkpoint.pt`` or ``<out>/generator.pt``).
    :param resume: an explicit checkpoint to continue from (e.g. a copy of another run).
    :param fresh: start at step 0 even if ``own`` exists (it is overwritten at the first save).
    """
    if resume is not None:
        if fresh:
            raise ValueError("--resume and --fresh exclude each other")
        if not os.path.isfile(resume):
            raise CheckpointError(f"{resume}: no such checkpoint file to resume from")
        return str(resume)
    return None if fresh or not os.path.isfile(own) else str(own)


def announce_start(name: str, source: str | None, step: int, own: str | os.PathLike) -> None:
    """One line (main rank) saying whether the run resumed, from which file and step, or starts anew."""
    if not dist.is_main():
        return
    if source is not None:
        print(f"{name}: resuming from {source} at step {step}", flush=True)
    elif os.path.isfile(own):
        print(f"{name}: fresh start at step 0 (--fresh); {own} will be overwritten", flush=True)
    else:
        print(f"{name}: new run at step 0, saving to {own}", flush=True)


def metrics_log(out: str | os.PathLike, step: int) -> JsonlLogger:
    """``<out>/metrics.jsonl`` of a run that stands at ``step`` steps done.

    Both trainers log a row by steps done (step k + 1 after update k), so rows up to ``step``
    belong to the resumed checkpoint's past and are kept; later ones (written after that save by
    a killed run) go, and the resumed run writes them again. A fresh start (``step`` 0) begins
    an empty file.
    """
    return JsonlLogger(os.path.join(out, "metrics.jsonl"), drop_from=step + 1 if step else 0)


def is_due(step: int, every: int, total: int) -> bool:
    """True every ``every`` steps done and at the last one (``total``): when to log and save."""
    return step % every == 0 or step == total


class ResumableSampler(Sampler[int]):
    """Seeded shuffling (one permutation per epoch), DDP sharding and a mid-epoch start offset."""

    def __init__(self, dataset_len: int, shuffle: bool = True, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None):
        self.n = dataset_len
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas or dist.world_size()
        self.rank = dist.rank() if rank is None else rank
        self.per_rank = math.ceil(self.n / self.num_replicas)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation and skip its first ``start`` samples (of this rank)."""
        self.epoch = epoch
        self.start = start

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        # Pad by wrapping around so every rank gets the same number of samples.
        total = self.per_rank * self.num_replicas
        order = torch.cat([order, order[: total - self.n]]) if total > self.n else order
        mine = order[self.rank:total:self.num_replicas]
        return iter(mine[self.start:].tolist())

    def __len__(self) -> int:
        return self.per_rank - self.start


def batches_from(dataset: Dataset, batch_size: int, start_step: int = 0, seed: int = 0,
                 num_workers: int = 0, shuffle: bool = True, **loader_kwargs: Any) -> Iterator[tuple[int, Any]]:
    """Yield ``(step, batch)`` forever from ``start_step``, epoch after epoch (drop_last).

    ``batch_size`` is per rank. Step k always gets the same samples, whether the run was
    resumed or not.
    """
    sampler = ResumableSampler(len(dataset), shuffle=shuffle, seed=seed)
    per_epoch = sampler.per_rank // batch_size
    if per_epoch == 0:
        raise ValueError(
            f"data set of {len(dataset)} samples is smaller than one batch of {batch_size} per rank")
    step = start_step
    while True:
        epoch, offset = divmod(step, per_epoch)
        sampler.set_epoch(epoch, start=offset * batch_size)
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True,
                            num_workers=num_workers, **loader_kwargs)
        for batch in loader:
            yield step, batch
            step += 1


class TrainState:
    """Everything besides the model weights that an exact resume needs."""

    def __init__(self, model: nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                 ema: EMA | None = None, step: int = 0):
        self.model = model
        self.optimizers = optimizers
        self.ema = ema
        self.step = step

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"])

    def save(self, path: str | os.PathLike, **extra: Any) -> None:
        """Atomically write model + EMA weights + training state (main rank only)."""
        if dist.is_main():
            ema_state = self.ema.state_dict_for(self.model) if self.ema is not None else None
            save_checkpoint(path, self.model, ema_state_dict=ema_state,
                            train_state=self.state_dict(), **extra)
        dist.barrier()

    def resume(self, path: str | os.PathLike, extra_modules: dict[str, nn.Module] | None = None) -> dict:
        """Restore weights and state from ``path``; returns the checkpoint dict for the caller's extras.

        ``extra_modules`` (e.g. a discriminator) are restored from entries of the same name.
        """
        ckpt = read_checkpoint(path, expect=type(self.model).__name__)
        if "train_state" not in ckpt:
            raise CheckpointError(f"{path}: holds no training state (was it saved for inference only?)")
        load_state_strict(self.model, ckpt["state_dict"], where=str(path))
        for name, module in (extra_modules or {}).items():
            if name not in ckpt:
                raise CheckpointError(f"{path}: no {name!r} weights to resume")
            load_state_strict(module, ckpt[name], where=f"{path} [{name}]")
        self.load_state_dict(ckpt["train_state"])
        return ckpt


def warmup_step_decay(step: int, warmup: int, interval: int, factor: float) -> float:
    """LR multiplier: linear warmup to 1, then ×``factor`` every ``interval`` steps (Table 6)."""
    if step < warmup:
        return step / warmup
    return factor ** ((step - warmup) // interval)


def warmup_constant(step: float, warmup: float) -> float:
    """LR multiplier: linear warmup to 1, then constant (the generator's schedule, Table 8)."""
    return min(1.0, step / warmup) if warmup > 0 else 1.0


def warmup_cosine(step: float, warmup: float, total: float, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warmup, then half-cosine down to ``min_ratio`` at ``total``."""
    if step < warmup:
        return step / warmup
    progress = min(1.0, (step - warmup) / max(1.0, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def check_loss_positions(positions: list[int] | None, num_tokens: int) -> None:
    """Raise ``ValueError`` unless ``positions`` (None = all) are distinct indices in [0, num_tokens)."""
    if positions is None:
        return
    if not positions or len(set(positions)) != len(positions) \
            or min(positions) < 0 or max(positions) >= num_tokens:
        raise ValueError(f"loss_positions must be distinct token indices in [0, {num_tokens}), "
                         f"got {list(positions)}")


def masked_position_mean(per_position: torch.Tensor, positions: list[int] | None) -> torch.Tensor:
    """The training loss from the (N,) per-position losses, kept to ``positions`` (None = all).

    Zero-shot subtasks (paper Sec. 4.3, Fig. 3 / Table 1): the other positions still run forward
    as context, but their flow loss is left out, so they get no gradient through the loss. Every
    position holds the same number of loss rows (diffusion_batch_mul x batch), so the mean over
    the kept positions is the mean over the kept rows.
    """
    if positions is None:
        return per_position.mean()
    return per_position[torch.as_tensor(positions, device=per_position.device)].mean()
