"""Measurements shown in the generator notebooks (03-06), as small tested functions.

- :func:`receptive_field`: which input tokens each generator output row depends on (Sec. 3.2,
  docs/official_code.md#windowed-causal-mask): the window grows by ``cond_length`` tokens per layer.
- :func:`shift_invariance_error`: RoPE self-attention depends only on relative positions.
- :func:`per_position_loss`: the flow loss of every token position (paper Figs. 3/4).
- :func:`column_statistics`, :func:`strip_statistics`, :func:`seam_score`: is a long generated
  strip as stationary as the SynthScapes ground truth, and does it show column seams?
- :func:`time_sampling`: wall-clock time of sampling with and without the sliding KV cache.

Legend: B batch, N tokens (= columns), C token channels, D width, H/W image height/width.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
from torch import nn

from minieq.utils import eval_mode


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _labels(labels, batch: int, device: torch.device) -> torch.Tensor:
    if labels is None:
        return torch.zeros(batch, dtype=torch.long, device=device)
    return torch.as_tensor(labels, dtype=torch.long, device=device).reshape(batch)


def receptive_field(generator: nn.Module, num_tokens: int, labels=None, seed: int = 0) -> torch.Tensor:
    """The dependency matrix of ``generator.condition``: ``dep[k, j]`` is True when row k depends on token j.

    Row k conditions the prediction of token k, so a causal generator has ``dep[k, j] = False``
    for every ``j >= k`` (docs/official_code.md#sampling-loop). With windowed attention each layer adds
    ``cond_length`` tokens of left context; the "strict" variant stops the growth.
    Computed exactly with one backward pass per row, in eval mode (no random shift, no dropout).

    :param generator: a :class:`minieq.Generator` (anything with ``config.token_dim`` and
        ``condition(tokens, labels)``).
    :param num_tokens: sequence length N.
    :param labels: one class label (default class 0).
    :return: (N, N) bool tensor on the CPU.
    """
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    device = _device_of(generator)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    tokens = torch.randn(1, num_tokens, generator.config.token_dim, generator=gen)  # (1, N, C)
    tokens = tokens.to(device).requires_grad_(True)
    with eval_mode(generator):
        h = generator.condition(tokens, _labels(labels, 1, device))  # (1, N, D)
        # A random direction, not h.sum(): at initialisation (weight 1, bias 0) the final
        # LayerNorm makes the plain sum of each row a constant, whose gradient is zero everywhere.
        direction = torch.randn(h.shape[-1], generator=gen).to(device=device, dtype=h.dtype)
        rows = []
        for k in range(num_tokens):
            (grad,) = torch.autograd.grad(h[0, k] @ direction, tokens, retain_graph=True)
            rows.append(grad[0].abs().sum(-1) > 0)  # (N,)
    return torch.stack(rows).cpu()


def shift_invariance_error(attend: Callable[[torch.Tensor, int], torch.Tensor], x: torch.Tensor,
                           shifts: Sequence[int] = (1, 7, 100)) -> float:
    """Largest change of ``attend(x, offset)`` when every position is shifted by the same offset.

    ``attend(x, offset)`` must run attention on ``x`` (B, N, D) with token i at position
    ``i + offset``. With RoPE on both queries and keys, q_i·k_j depends only on i - j, so the
    result should not change (error ≈ float rounding). RoPE on the query alone (the class
    cross-attention, docs/official_code.md#generator-block) does depend on the offset.

    :return: max over ``shifts`` of the max absolute difference to ``attend(x, 0)``.
    """
    with torch.no_grad():
        base = attend(x, 0)
        return max(float((attend(x, s) - base).abs().max()) for s in shifts)


@torch.no_grad()
def per_position_loss(generator: nn.Module, latents: torch.Tensor, labels: torch.Tensor,
                      repeats: int = 4, batch_size: int = 256, seed: int = 0) -> torch.Tensor:
    """The flow-matching loss of each token position, averaged over a data set (paper Figs. 3/4).

    Each position is one "subtask" of the paper: predict token k from tokens < k. The loss is
    random (flow time and noise), so it is averaged over ``repeats`` passes; the global RNG is
    left untouched (the passes use a forked, seeded RNG).

    :param latents: (B, N, C) tokens already multiplied by the latent scale.
    :param labels: (B,) class labels.
    :return: (N,) float tensor on the CPU.
    """
    if latents.dim() != 3 or latents.shape[0] != len(labels):
        raise ValueError(f"latents must be (B, N, C) with B = len(labels); got {tuple(latents.shape)}"
                         f" and {len(labels)} labels")
    device = _device_of(generator)
    forked = [device] if device.type == "cuda" else []
    total, count = torch.zeros(latents.shape[1], dtype=torch.float64), 0
    with eval_mode(generator), torch.random.fork_rng(devices=forked):
        torch.manual_seed(seed)
        for _ in range(repeats):
            for start in range(0, len(latents), batch_size):
                z = latents[start:start + batch_size].to(device)  # (b, N, C)
                y = torch.as_tensor(labels[start:start + batch_size]).to(device)
                loss = generator.loss(z, y, per_position=True)  # (N,)
                total += loss.double().cpu() * len(z)
                count += len(z)
    return (total / count).float()


def column_statistics(images: torch.Tensor, column_width: int | None = None) -> dict[str, torch.Tensor]:
    """Colour mean and variance at every horizontal position, over the batch and the height.

    A stationary image distribution (SynthScapes, and ideally an equivariant generator) has the
    same statistics at every x. With ``column_width`` the pixels of each token column are pooled.

    :param images: (B, 3, H, W) in [-1, 1].
    :return: ``{"mean": (3, X), "var": (3, X)}`` with X = W, or W // column_width.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, 3, H, W); got {tuple(images.shape)}")
    x = images.detach().float().cpu()
    b, c, h, w = x.shape
    if column_width is not None:
        if w % column_width:
            raise ValueError(f"image width {w} is not a multiple of column_width {column_width}")
        x = x.reshape(b, c, h, w // column_width, column_width)  # (B, 3, H, N, cw)
        x = x.permute(0, 1, 2, 4, 3).reshape(b, c, h * column_width, w // column_width)  # (B, 3, H*cw, N)
    flat = x.permute(1, 3, 0, 2).reshape(c, x.shape[-1], -1)  # (3, X, B*H')
    return {"mean": flat.mean(-1), "var": flat.var(-1, unbiased=False)}


def _column_features(images: torch.Tensor, column_width: int) -> dict[str, torch.Tensor]:
    # Per token column: colour mean and std (3 each) and the mean absolute horizontal gradient
    # inside the column (a crude texture-energy feature), all pooled over batch and height.
    stats = column_statistics(images, column_width)
    x = images.detach().float().cpu()
    b, c, h, w = x.shape
    grad = (x[..., 1:] - x[..., :-1]).abs()  # (B, 3, H, W-1); entry j is between pixels j and j+1
    grad = torch.cat([grad, grad.new_zeros(b, c, h, 1)], dim=-1)  # (B, 3, H, W), last entry unused
    grad = grad.reshape(b, c, h, w // column_width, column_width)  # (B, 3, H, N, cw)
    # Entries 0..cw-2 of a column are the pairs inside it; entry cw-1 crosses into the next one.
    energy = grad[..., :-1].mean(dim=(0, 1, 2, 4))  # (N,)
    return {"mean": stats["mean"], "std": stats["var"].sqrt(), "energy": energy}


def _feature_distance(a: dict, b: dict) -> dict[str, torch.Tensor]:
    return {
        "mean_dist": (a["mean"] - b["mean"]).abs().mean(0),  # (N,) averaged over RGB
        "std_dist": (a["std"] - b["std"]).abs().mean(0),  # (N,)
        "energy_dist": (a["energy"] - b["energy"]).abs(),  # (N,)
    }


def strip_statistics(generated: torch.Tensor, reference: torch.Tensor, column_width: int,
                     trained_tokens: int | None = None) -> dict:
    """Compare generated strips with ground-truth strips, one token column at a time.

    For each column position k = 0..N-1 the pixels of that column (over batch and height) give
    a colour mean, a colour std and a texture energy (mean |horizontal gradient|). With B
    generated strips, ``reference`` holds 2B ground-truth strips in two halves: the function
    returns the per-position absolute distances between ``generated`` and the second half and,
    as an honest yardstick, between the first half and the second half (the sampling noise of
    the statistics themselves). Both compare B strips with the same B strips, so a perfect
    generator scores the yardstick on average. These are low-order statistics; they catch drift,
    colour collapse and blurring along x, not object-level realism.

    :param generated: (B, 3, H, W) generated images in [-1, 1].
    :param reference: (2B, 3, H, W) ground truth at the same positions (extra images are unused).
    :param trained_tokens: if given, the summary also splits positions into the trained range
        [0, trained_tokens) and the extrapolated rest.
    :return: dict with (N,) tensors ``mean_dist``, ``std_dist``, ``energy_dist`` and their
        ``floor_*`` twins, plus a ``summary`` dict of floats: their averages over positions and
        the texture energy of the generated and the reference strips (``energy_generated``,
        ``energy_reference``).
    """
    if generated.shape[1:] != reference.shape[1:]:
        raise ValueError(f"generated {tuple(generated.shape)} and reference {tuple(reference.shape)} "
                         "must have the same channels, height and width")
    b = len(generated)
    if b < 1 or len(reference) < 2 * b:
        raise ValueError(f"reference needs 2 × {b} images (two samples the size of generated), "
                         f"got {len(reference)}")
    gen = _column_features(generated, column_width)
    first = _column_features(reference[:b], column_width)
    second = _column_features(reference[b:2 * b], column_width)
    out = _feature_distance(gen, second)
    out.update({f"floor_{k}": v for k, v in _feature_distance(first, second).items()})
    summary = {"energy_generated": float(gen["energy"].mean()),
               "energy_reference": float(second["energy"].mean())}
    for key in ("mean_dist", "std_dist", "energy_dist"):
        summary[key] = float(out[key].mean())
        summary[f"floor_{key}"] = float(out[f"floor_{key}"].mean())
        if trained_tokens is not None and trained_tokens < len(out[key]):
            summary[f"{key}_trained"] = float(out[key][:trained_tokens].mean())
            summary[f"{key}_beyond"] = float(out[key][trained_tokens:].mean())
    out["summary"] = summary
    return out


def seam_score(image: torch.Tensor, column_width: int) -> float:
    """Mean |difference| of neighbouring pixels across column boundaries / within columns.

    A decoder that renders every column on its own leaves visible vertical seams (score > 1);
    a strip without seams scores ≈ 1, as does ground truth that is stationary along x.

    :param image: (3, H, W) or (B, 3, H, W), W a multiple of ``column_width`` (>= 2 columns).
    """
    x = image.detach().float().cpu()
    if x.dim() == 3:
        x = x[None]
    w = x.shape[-1]
    if w % column_width or w // column_width < 2 or column_width < 2:
        raise ValueError(f"image width {w} must be a multiple of column_width {column_width} with "
                         "at least 2 columns, and column_width >= 2")
    diff = (x[..., 1:] - x[..., :-1]).abs()  # (B, 3, H, W-1); entry j is between pixels j and j+1
    boundary = torch.arange(w - 1) % column_width == column_width - 1
    return float(diff[..., boundary].mean() / diff[..., ~boundary].mean().clamp_min(1e-12))


def time_sampling(generator: nn.Module, lengths: Sequence[int], batch_size: int = 1,
                  repeats: int = 1, **sample_kwargs) -> list[dict]:
    """Seconds per ``generator.sample`` call with the sliding KV cache and with full recompute.

    Without a cache every step re-runs the whole prefix (O(N²) token passes for N tokens); with
    it each step processes one new token against a window of cached keys/values (O(N)). The
    flow head costs the same in both, so the speed-up grows with N. Both runs use the same
    noise, so their outputs also agree (reported as ``max_diff``).

    :param lengths: numbers of tokens to time.
    :param sample_kwargs: passed on to ``generator.sample`` (e.g. ``cfg``).
    :return: one dict per length: ``num_tokens``, ``cached_s``, ``full_s``, ``speedup``, ``max_diff``.
    """
    device = _device_of(generator)
    labels = torch.arange(batch_size, device=device) % generator.config.num_classes
    rows = []
    with eval_mode(generator), torch.no_grad():
        # One short warm-up call so that one-time costs (allocations, kernel choice) are not timed.
        generator.sample(labels, num_tokens=2, **sample_kwargs)
        for n in lengths:
            noise = torch.randn(batch_size, n, generator.config.token_dim,
                                generator=torch.Generator().manual_seed(n)).to(device)
            seconds, outputs = {}, {}
            for cache in (True, False):
                best = float("inf")
                for _ in range(repeats):
                    _sync(device)
                    start = time.perf_counter()
                    outputs[cache] = generator.sample(labels, num_tokens=n, noise=noise, use_cache=cache,
                                                      **sample_kwargs)
                    _sync(device)
                    best = min(best, time.perf_counter() - start)
                seconds[cache] = best
            rows.append({"num_tokens": n, "cached_s": seconds[True], "full_s": seconds[False],
                         "speedup": seconds[False] / seconds[True],
                         "max_diff": float((outputs[True] - outputs[False]).abs().max())})
    return rows


def _sync(device: torch.device) -> None:
    # CUDA runs asynchronously: wait for the queued kernels so the clock measures the work.
    if device.type == "cuda":
        torch.cuda.synchronize(device)
