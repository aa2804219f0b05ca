"""Benchmark: end-to-end sampling speed, transformer + flow head.

    python -m minieq.bench.end_to_end                   # S preset, random weights: ~3 CPU minutes
    python -m minieq.bench.end_to_end --fast heun:6 --batch 2 --device cuda

Three ways to sample, timed in one run (cfg 3, linear schedule, as the course samples):
(a) official: full recompute of the sequence for every token + Euler with 100 steps;
(b) minieq default: sliding-window KV cache + Euler with 100 steps (same result as (a));
(c) minieq fast: KV cache + ``--fast`` (the setting ``python -m minieq.bench.solvers`` picks:
    the cheapest with at most Euler-100's error).
16-token images are sampled whole. A 256-token strip is too slow to sample whole in (a) and (b)
on a CPU, so its per-token time is measured on ``--strip_tokens`` consecutive tokens at the end of
the strip (positions 256 − R .. 255), and the strip's time is 256 × that. This is exact for all
three: with the window cache a token's cost does not depend on its position (the cache keeps
cond_length + 1 keys, so it is pre-filled with the tokens just before the timed range, all it
holds), and the official recompute runs all 256 positions for every token whatever its index;
the head's cost is the same for every token. Weights are random: timing does not depend on them.
On the CPU the clock is the process's CPU time (run with ``OMP_NUM_THREADS=1``), so time spent
waiting for a shared core is not counted; on a GPU it is wall time after a synchronize.
"""
from __future__ import annotations

import argparse
import time

import torch

from minieq.bench.head import print_roofline, roofline
from minieq.flow import SOLVERS, head_calls
from minieq.generator import Generator, GeneratorConfig
from minieq.generator_sampling import cfg_scale
from minieq.utils import pick_device

CFG = 3.0
OFFICIAL = ("euler", 100)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _clock(device: torch.device):
    return time.process_time if device.type == "cpu" else time.perf_counter


@torch.no_grad()
def token_seconds(gen: Generator, batch: int, num_tokens: int, first: int, use_cache: bool,
                  solver: str, steps: int) -> tuple[float, float]:
    """Seconds per token of sampling tokens first .. num_tokens-1 of a guided batch, with the
    stream in the state it has at ``first`` (what ``sampling_loop`` does per token), and the
    seconds of the once-per-sample setup (the cache's class-token pass)."""
    device = gen.fake_latent.device
    clock = _clock(device)
    labels = torch.arange(batch, device=device) % gen.config.num_classes
    class_vec = torch.cat([gen.class_vectors(labels, batch), gen.class_vectors(None, batch)])  # (2B, D)
    _sync(device)
    t0 = clock()
    stream = gen.stream(class_vec, num_tokens, use_cache)
    _sync(device)
    setup = clock() - t0
    window = gen.config.window
    # Pre-fill: the cache keeps only the last window + 1 keys (everything for full causal).
    start = max(0, first - (window + 1)) if use_cache and window > 0 else 0
    tokens = torch.randn(batch, num_tokens, gen.config.token_dim, device=device)  # (B, N, C)
    for k in range(start, first):
        stream.push(k, tokens[:, k].repeat(2, 1))
    _sync(device)
    t0 = clock()
    for k in range(first, num_tokens):
        c, u = stream.row(k).chunk(2)  # (B, D) each
        z = gen.head.sample(c, u, cfg_scale(CFG, "linear", k, num_tokens), solver=solver, steps=steps)
        if k < num_tokens - 1:
            stream.push(k, z.repeat(2, 1))
    _sync(device)
    return (clock() - t0) / (num_tokens - first), setup


def modes(fast: tuple[str, int]) -> dict[str, tuple[bool, str, int]]:
    return {"(a) official: recompute + euler-100": (False, *OFFICIAL),
            "(b) default: cache + euler-100": (True, *OFFICIAL),
            f"(c) fast: cache + {fast[0]}-{fast[1]}": (True, *fast)}


def _setting(text: str) -> tuple[str, int]:
    solver, _, steps = text.partition(":")
    if solver not in SOLVERS or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(f"expected SOLVER:STEPS with SOLVER in {SOLVERS}, got {text!r}")
    return solver, int(steps)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="S", choices=sorted(GeneratorConfig.PRESETS))
    parser.add_argument("--fast", type=_setting, default=("midpoint", 5),
                        help="solver:steps of mode (c) (default: bench.solvers' pick on the course generator)")
    parser.add_argument("--batch", type=int, default=1, help="images sampled together")
    parser.add_argument("--strip", type=int, default=256, help="tokens of the long strip")
    parser.add_argument("--strip_tokens", type=int, default=4, help="timed tokens at the end of the strip")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    torch.manual_seed(0)
    gen = Generator(GeneratorConfig.preset(args.preset)).to(device).eval()
    cfg = gen.config
    print(f"preset {args.preset}: D {cfg.embed_dim}, {cfg.depth} blocks, head {cfg.head_depth}x{cfg.head_width}, "
          f"window {cfg.window}; batch {args.batch}, cfg {CFG:g} linear, device {device}, "
          f"torch threads {torch.get_num_threads()}; clock: "
          f"{'CPU time of this process' if device.type == 'cpu' else 'wall'}")
    token_seconds(gen, args.batch, 2, 0, True, "euler", 2)  # warm-up (kernels, RoPE table)
    rows = {}
    for name, (use_cache, solver, steps) in modes(args.fast).items():
        per_token, setup = token_seconds(gen, args.batch, 16, 0, use_cache, solver, steps)
        image = setup + 16 * per_token
        per_token, setup = token_seconds(gen, args.batch, args.strip, args.strip - args.strip_tokens,
                                         use_cache, solver, steps)
        strip = setup + args.strip * per_token
        rows[name] = dict(head_calls=head_calls(solver, steps), image_seconds=image, strip_seconds=strip,
                          images_per_s=args.batch / image, strips_per_s=args.batch / strip)
        print(f"  measured {name}: {image:.1f} s per 16-token batch, {strip:.0f} s per {args.strip}-token batch")

    print(f"\n{'mode':<40} {'head calls':>10} | {'16-token img/s':>14} {'vs (a)':>7} | "
          f"{f'{args.strip}-token strips/s':>18} {'vs (a)':>7}")
    base = rows[next(iter(rows))]
    for name, r in rows.items():
        print(f"{name:<40} {r['head_calls']:>10} | {r['images_per_s']:14.4f} "
              f"{r['images_per_s'] / base['images_per_s']:6.1f}x | {r['strips_per_s']:18.5f} "
              f"{r['strips_per_s'] / base['strips_per_s']:6.1f}x")
    print(f"(strip times: {args.strip_tokens} timed tokens at positions {args.strip - args.strip_tokens}.."
          f"{args.strip - 1}, x {args.strip}; see the module docstring)")
    print(f"\nroofline of the head loop ({cfg.head_depth}x{cfg.head_width}, batch {args.batch}, guided):")
    if device.type == "cpu":
        print_roofline(roofline(gen.head.cpu(), args.batch))
    else:
        print("  (CPU only: run python -m minieq.bench.head)")
    return rows


if __name__ == "__main__":
    main()
