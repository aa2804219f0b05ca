"""Token-by-token sampling for :class:`minieq.generator.Generator`: condition streams + one loop.

Shape legend: B batch (2B with classifier-free guidance: conditional half, then null half),
N tokens, C token channels, D width, K keys kept per layer.

A *stream* hands out the condition row k of the token being sampled and is then told the token:
* :class:`CachedStream`: sliding-window KV cache (docs/official_code.md#kv-cache).
  Each new token runs through the stack once; each layer keeps only the cond_length + 1 keys/values
  its window needs, and the class tokens' cross-attention K/V are computed once per sample.
  Per-token cost and memory do not grow with the length (except for full causal attention, whose
  window is everything).
* :class:`StrictStream`: the "strict" variant re-runs its K-token window (constant cost).
* :class:`RecomputeStream`: re-runs the whole sequence for every token and keeps row k, like the
  official ``sample_tokens``; future positions hold zeros, which causality hides.
All three give the same rows (tests/test_generator.py checks it).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from minieq.flow import check_solver
from minieq.logger import progress as progress_bar
from minieq.utils import eval_mode

if TYPE_CHECKING:  # generator.py imports this module; the name is for annotations only
    from minieq.generator import Generator


class CachedStream:
    """Incremental stack with a per-layer sliding KV cache (window and full-causal variants)."""

    def __init__(self, gen: Generator, class_vec: torch.Tensor):
        self.gen = gen
        self.kvs, self.next_row = gen.buffer_path(class_vec)  # per-layer cross K/V, row 0 (B, D)
        self.caches = gen.new_caches()

    def row(self, k: int) -> torch.Tensor:
        return self.next_row

    def push(self, k: int, token: torch.Tensor) -> None:
        """Feed token k (B, C) at RoPE position k; computes row k + 1."""
        self.next_row = self.gen.step(token[:, None], self.kvs, k, self.caches)[:, 0]  # (B, 1, D) -> (B, D)

    def state_bytes(self) -> int:
        """Bytes of transformer state: self-attention K/V caches + the class tokens' cross K/V."""
        cross = sum(t.numel() * t.element_size() for kv in self.kvs for t in kv)
        return cross + sum(cache.nbytes() for cache in self.caches)


class StrictStream:
    """"Real Equ.": row k comes from the stack run on tokens max(0, k-K) .. k-1 only."""

    def __init__(self, gen: Generator, class_vec: torch.Tensor, window: int):
        self.gen, self.class_vec, self.window = gen, class_vec, window
        self.row0 = gen.buffer_path(class_vec)[1]  # (B, D)
        self.recent: list[torch.Tensor] = []

    def row(self, k: int) -> torch.Tensor:
        if not self.recent:
            return self.row0
        tokens = torch.stack(self.recent, dim=1)  # (B, <=K, C)
        return self.gen.hidden(tokens, self.class_vec, 0)[:, -1]

    def push(self, k: int, token: torch.Tensor) -> None:
        self.recent = (self.recent + [token])[-self.window:]

    def state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.recent)


class RecomputeStream:
    """The official way: the whole (zero-padded) sequence through the stack for every token."""

    def __init__(self, gen: Generator, class_vec: torch.Tensor, num_tokens: int):
        self.gen, self.class_vec = gen, class_vec
        self.tokens = torch.zeros(class_vec.shape[0], num_tokens, gen.config.token_dim,
                                  device=class_vec.device)  # (B, N, C)

    def row(self, k: int) -> torch.Tensor:
        return self.gen.condition_rows(self.tokens, self.class_vec, 0)[:, k]

    def push(self, k: int, token: torch.Tensor) -> None:
        self.tokens[:, k] = token

    def state_bytes(self) -> int:
        return self.tokens.numel() * self.tokens.element_size()


def cfg_scale(cfg: float, schedule: str, k: int, num_tokens: int) -> float:
    """Guidance scale of token k: "linear" 1 + (cfg − 1)·(k + 1)/N (official) or "constant" cfg."""
    if schedule == "linear":
        return 1 + (cfg - 1) * (k + 1) / num_tokens
    if schedule == "constant":
        return cfg
    raise ValueError(f"cfg_schedule must be 'linear' or 'constant', got {schedule!r}")


def sampling_loop(gen: Generator, labels, given: torch.Tensor, keep: torch.Tensor, cfg: float = 1.0,
                  cfg_schedule: str = "linear", temperature: float = 1.0, noise=None,
                  use_cache: bool = True, progress: bool = False, generator=None,
                  solver: str = "euler", steps: int | None = None) -> torch.Tensor:
    """The one sampling loop: tokens where ``keep`` (B, N) is True are copied from ``given``
    (B, N, C) (prefix continuation, regeneration), the others are sampled left to right, each
    by the flow head's ``solver`` with ``steps`` steps (None: the config's count)."""
    B, N, C = given.shape
    if noise is not None and noise.shape != (B, N, C):
        raise ValueError(f"noise must have shape {(B, N, C)}, got {tuple(noise.shape)}")
    if not cfg >= 0:
        raise ValueError(f"cfg must be >= 0 (1.0 = no guidance), got {cfg}")
    cfg_scale(cfg, cfg_schedule, 0, N)  # validates the schedule name
    check_solver(solver)
    if steps is not None and not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be an integer >= 1 or None (the config's count), got {steps!r}")
    guided = cfg != 1.0 and labels is not None
    with eval_mode(gen):  # sampling is eval behaviour: no dropout, no position shift
        class_vec = gen.class_vectors(labels, B)  # (B, D)
        if guided:
            class_vec = torch.cat([class_vec, gen.class_vectors(None, B)])  # (2B, D): then the null class
        stream = gen.stream(class_vec, N, use_cache)
        tokens = given.clone()
        for k in progress_bar(range(N), disable=not progress, desc="tokens"):
            row = stream.row(k)  # (B or 2B, D)
            if not keep[:, k].all():
                c, u = row.chunk(2) if guided else (row, None)
                z = gen.head.sample(c, u, cfg_scale(cfg, cfg_schedule, k, N),
                                    noise=None if noise is None else noise[:, k],
                                    temperature=temperature, generator=generator,
                                    solver=solver, steps=steps)  # (B, C)
                tokens[:, k] = torch.where(keep[:, k, None], tokens[:, k], z)
            if k < N - 1:
                stream.push(k, tokens[:, k].repeat(2, 1) if guided else tokens[:, k])
        return tokens
