"""Benchmark: sliding-window KV-cache sampling vs the official full recompute, per token.

    python -m minieq.bench.sampling                       # S width, 4 blocks, CPU, a few minutes
    python -m minieq.bench.sampling --preset tiny --depth 4
    python -m minieq.bench.sampling --preset L --device cuda

What is measured, for each sequence length N (both modes in the same run):
* transformer time per token: only the stack (``Generator.stream``: ``row`` + ``push``), not the
  flow head. Cached: the mean over all N steps of one sample. Full recompute: every official AR
  step re-runs the whole N-token sequence, so its per-token cost is the mean time of one such
  pass (``--repeats`` passes are timed, not extrapolated).
* peak memory of that loop: CUDA peak allocated bytes on a GPU; on CPU the growth of the
  process's peak RSS (coarse: the allocator's page reuse hides small amounts). Each measurement
  runs in a fresh process so peaks do not mix.
* transformer state: the bytes of the tensors the stream keeps between tokens (K/V caches and
  the class tokens' cross-attention K/V; for recompute, the token buffer).
The flow head's cost (num_sampling_steps network calls per token, the same in both modes) is
printed separately: with the cache it dominates sampling.
"""
from __future__ import annotations

import argparse
import multiprocessing
import resource
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from minieq.generator import Generator, GeneratorConfig


def config(preset: str, depth: int | None) -> GeneratorConfig:
    return GeneratorConfig.preset(preset, **({"depth": depth} if depth else {}))


def build(preset: str, depth: int | None, device: str) -> Generator:
    torch.manual_seed(0)
    return Generator(config(preset, depth)).to(device).eval()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


@torch.no_grad()
def measure(preset: str, depth: int | None, device: str, length: int, use_cache: bool,
            batch: int, repeats: int) -> dict:
    """Per-token transformer seconds, peak memory growth and state bytes of one (mode, length)."""
    gen = build(preset, depth, device)
    C = gen.config.token_dim
    class_vec = gen.class_vectors(torch.arange(batch, device=device) % gen.config.num_classes, batch)
    tokens = torch.randn(batch, length, C, device=device)
    # Warm-up on a short sequence (kernels, RoPE table), so the peak below is this length's own.
    warm = gen.stream(class_vec, 4, use_cache)
    for k in range(3):
        warm.row(k)
        warm.push(k, tokens[:, k])
    del warm
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    base = _peak_bytes(device)
    stream = gen.stream(class_vec, length, use_cache)
    if use_cache:
        start = time.perf_counter()
        for k in range(length):
            stream.row(k)
            if k < length - 1:
                stream.push(k, tokens[:, k])
        _sync(device)
        seconds = (time.perf_counter() - start) / length
    else:
        for k in range(length - 1):  # fill the buffer: its content does not change the cost
            stream.push(k, tokens[:, k])
        start = time.perf_counter()
        for _ in range(repeats):
            stream.row(length - 1)
        _sync(device)
        seconds = (time.perf_counter() - start) / repeats
    return dict(seconds=seconds, peak=_peak_bytes(device) - base, state=stream.state_bytes())


@torch.no_grad()
def head_seconds(preset: str, depth: int | None, device: str, batch: int, repeats: int = 2) -> float:
    gen = build(preset, depth, device)
    c = torch.randn(batch, gen.config.embed_dim, device=device)
    gen.head.sample(c, steps=2)
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        gen.head.sample(c)
    _sync(device)
    return (time.perf_counter() - start) / repeats


def _mib(n: float) -> str:
    return f"{n / 2**20:8.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Default: the paper's S width with 4 of its 16 blocks, so a CPU run takes minutes; per-token
    # costs of both modes scale linearly with the depth, so the ratios carry over.
    parser.add_argument("--preset", default="S", choices=sorted(GeneratorConfig.PRESETS))
    parser.add_argument("--depth", type=int, default=4, help="override the number of blocks (0 = preset's)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed full-recompute passes per length")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    cfg = config(args.preset, args.depth)
    print(f"preset {args.preset}: D {cfg.embed_dim}, {cfg.depth} blocks, {cfg.num_heads} heads, "
          f"attention {cfg.attention} (cond_length {cfg.cond_length}), batch {args.batch}, "
          f"device {args.device}, torch threads {torch.get_num_threads()}")
    # A fresh process per measurement, so peak-memory readings do not carry over.
    context = multiprocessing.get_context("spawn")
    rows = []
    for length in args.lengths:
        result = {}
        for use_cache in (True, False):
            with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                result[use_cache] = pool.submit(measure, args.preset, args.depth, args.device, length,
                                                use_cache, args.batch, args.repeats).result()
        rows.append((length, result[True], result[False]))

    memory = "CUDA peak allocated" if args.device.startswith("cuda") else "peak RSS growth"
    print(f"\ntransformer only, per token; memory = {memory} (MiB); state = tensors kept between tokens")
    print(f"{'N':>6} | {'cached ms':>10} {'recompute ms':>13} {'speed-up':>9} | "
          f"{'cached mem':>10} {'recomp mem':>10} | {'cached state':>12} {'recomp state':>12}")
    for length, cached, full in rows:
        print(f"{length:>6} | {cached['seconds'] * 1e3:10.3f} {full['seconds'] * 1e3:13.3f} "
              f"{full['seconds'] / cached['seconds']:8.1f}x | {_mib(cached['peak']):>10} {_mib(full['peak']):>10} | "
              f"{_mib(cached['state']):>12} {_mib(full['state']):>12}")
    first, last = rows[0][1]["seconds"], rows[-1][1]["seconds"]
    print(f"cached per-token time, N={rows[-1][0]} vs N={rows[0][0]}: {last / first:.2f}x")
    head = head_seconds(args.preset, args.depth, args.device, args.batch)
    print(f"flow head, per token ({cfg.num_sampling_steps} Euler steps, same in both modes): {head * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
