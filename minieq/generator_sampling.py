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

from dataclasses import replace
from typing import Any, Protocol

import torch

from minieq.attention import LayerCache
from minieq.flow import DISTILLED, FlowHead, SamplingOptions
from minieq.logger import progress as progress_bar
from minieq.utils import eval_mode


class StepModel(Protocol):
    """What the streams and the loop use of :class:`minieq.generator.Generator` (an nn.Module):
    its step interface. Typed by structure, so this module needs nothing from generator.py,
    which imports it (the dependency goes one way)."""

    config: Any
    head: FlowHead

    def class_vectors(self, labels: torch.Tensor | None, batch: int) -> torch.Tensor: ...
    def buffer_path(self, class_vec: torch.Tensor) -> tuple[list, torch.Tensor]: ...
    def new_caches(self) -> list[LayerCache]: ...
    def step(self, tokens: torch.Tensor, kvs, start: int, caches: list[LayerCache] | None = None) -> torch.Tensor: ...
    def hidden(self, tokens: torch.Tensor, class_vec: torch.Tensor, shift: int) -> torch.Tensor: ...
    def condition_rows(self, tokens: torch.Tensor, class_vec: torch.Tensor, shift: int) -> torch.Tensor: ...
    def stream(self, class_vec: torch.Tensor, num_tokens: int, use_cache: bool = True): ...


class CachedStream:
    """Incremental stack with a per-layer sliding KV cache (window and full-causal variants)."""

    def __init__(self, gen: StepModel, class_vec: torch.Tensor):
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

    def __init__(self, gen: StepModel, class_vec: torch.Tensor, window: int):
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

    def __init__(self, gen: StepModel, class_vec: torch.Tensor, num_tokens: int):
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


def annealed_steps(steps: int, late_steps: int | None, k: int, full_context: int) -> int:
    """Solver steps of token k: ``steps`` at token 0 (no context), then a linear ramp to
    ``late_steps`` at token ``full_context``, the first whose attention window is full (the
    first tokens are the freest draws; later ones are pinned down by their neighbours, so a
    coarser solve costs them less, docs/sampling_speed.md)."""
    if late_steps is None or k >= full_context:
        return steps if late_steps is None else late_steps
    return round(steps + (late_steps - steps) * k / full_context)


def token_options(options: SamplingOptions, k: int, num_tokens: int, full_context: int = 1) -> SamplingOptions:
    """The options of token k alone: its guidance scale from the schedule held constant, and
    its steps from the annealing (:func:`annealed_steps`)."""
    steps = options.steps if options.steps is None else annealed_steps(options.steps, options.late_steps, k,
                                                                       full_context)
    return replace(options, cfg=cfg_scale(options.cfg, options.cfg_schedule, k, num_tokens),
                   cfg_schedule="constant", steps=steps, late_steps=None)


def sampling_loop(gen: StepModel, labels: torch.Tensor | None, given: torch.Tensor, keep: torch.Tensor,
                  options: SamplingOptions, *, noise: torch.Tensor | None = None, use_cache: bool = True,
                  progress: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """The one sampling loop: tokens where ``keep`` (B, N) is True are copied from ``given``
    (B, N, C) (prefix continuation, regeneration), the others are sampled left to right, each
    by the flow head with ``options`` (token k at its scheduled guidance, :func:`token_options`)."""
    B, N, C = given.shape
    if noise is not None and noise.shape != (B, N, C):
        raise ValueError(f"noise must have shape {(B, N, C)}, got {tuple(noise.shape)}")
    guided = options.cfg != 1.0 and labels is not None
    if options.solver == DISTILLED and gen.head.few_step is not None:  # refuse before the first token
        gen.head.few_step.check_call(options.steps, options.cfg if guided else 1.0)
        gen.head.few_step.check_call(options.late_steps, 1.0)
    # Annealed steps ramp over the tokens whose window is not yet full: token cond_length is the
    # first to see cond_length previous tokens (full attention: its window never fills, ramp over N).
    full_context = gen.config.window or N
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
                z = gen.head.sample(c, u, noise=None if noise is None else noise[:, k], generator=generator,
                                    options=token_options(options, k, N, full_context))  # (B, C)
                tokens[:, k] = torch.where(keep[:, k, None], tokens[:, k], z)
            if k < N - 1:
                stream.push(k, tokens[:, k].repeat(2, 1) if guided else tokens[:, k])
        return tokens
