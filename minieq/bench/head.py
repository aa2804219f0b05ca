"""Benchmark: the flow head's sampling loop, per token: cheap wins and a roofline.

    python -m minieq.bench.head                    # S head (12 x 960) and the course head, CPU
    python -m minieq.bench.head --presets S --batch 4

Cheap wins: one token's Euler loop (``--steps``, default 25, the course's; the per-step work is
the same at 100) with guidance, in four versions measured side by side in one process:
* "before": the loop as it was: every step builds t with ``torch.full``, concatenates z, t and
  the conditions, and the network embeds the conditions again (``cond_embed``);
* "two calls": the conditional and the null rows as two network calls per step;
* "+ embed once": ``cond_embed`` once per token, still ``torch.full``/``torch.cat`` per step;
* "now": :meth:`minieq.flow.FlowHead.sample` (embedding once per token, one batched call,
  preallocated t and input buffers, in-place updates) with the plain modules
  (``sampling_form="plain"``; the packed head, the default since: ``python -m minieq.bench.head_profile``).
Roofline: FLOPs of one head call counted by ``torch.utils.flop_counter`` at the exact shapes,
divided by the measured time per call, next to a chain of plain ``F.linear`` calls (matmul +
bias, what each ``nn.Linear`` computes) with the head's layer shapes at the same rows (and at 512
rows, this CPU's compute peak) and the weight bytes streamed, for the plain modules' call too.

Clock: on the CPU the benchmarks read the process's CPU time (``time.process_time``; run them with
one thread, ``OMP_NUM_THREADS=1``), so time spent waiting for a shared core is not counted.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from minieq.flow import FlowHead
from minieq.generator import GeneratorConfig

clock = time.process_time  # CPU seconds of this process: a busy shared core does not inflate them


def build_head(preset: str) -> FlowHead:
    """The preset's flow head with random weights (timing does not depend on their values)."""
    torch.manual_seed(0)
    cfg = GeneratorConfig.preset(preset)
    return FlowHead(cfg.token_dim, cfg.head_width, cfg.embed_dim, cfg.head_depth, cfg.num_sampling_steps).eval()


def _before(head, z, c, u, cfg, steps):
    for i in range(steps, 0, -1):
        t = torch.full((z.shape[0],), i / steps)
        v_c, v_u = head.velocity(torch.cat([z, z]), torch.cat([t, t]), torch.cat([c, u])).chunk(2)
        z = z - (v_u + cfg * (v_c - v_u)) / steps
    return z


def _two_calls(head, z, c, u, cfg, steps):
    for i in range(steps, 0, -1):
        t = torch.full((z.shape[0],), i / steps)
        v_c, v_u = head.velocity(z, t, c), head.velocity(z, t, u)
        z = z - (v_u + cfg * (v_c - v_u)) / steps
    return z


def _embed_once(head, z, c, u, cfg, steps):
    net = head.net
    y_cond = net.cond_embed(torch.cat([c, u]))  # (2M, W), once per token
    for i in range(steps, 0, -1):
        t = torch.full((2 * z.shape[0],), i / steps)
        v_c, v_u = net.forward_embedded(torch.cat([z, z]), net.time_embed(t), y_cond).chunk(2)
        z = z - (v_u + cfg * (v_c - v_u)) / steps
    return z


def _now(head, z, c, u, cfg, steps):
    return head.sample(c, u, cfg, noise=z, steps=steps)


VERSIONS = {"before": _before, "two calls": _two_calls, "+ embed once": _embed_once, "now": _now}


@torch.no_grad()
def cheap_wins(head: FlowHead, batch: int, steps: int, repeats: int, cfg: float = 3.0) -> dict[str, float]:
    """Seconds per token of each loop version (interleaved repeats, the minimum kept)."""
    head.sampling_form = "plain"  # the loop's own wins; the packed head: minieq.bench.head_profile
    c, u, z = _inputs(head, batch)
    outputs = {name: fn(head, z, c, u, cfg, 2) for name, fn in VERSIONS.items()}  # warm-up
    for name, out in outputs.items():  # all versions compute the same thing
        torch.testing.assert_close(out, outputs["before"], rtol=1e-4, atol=1e-5, msg=name)
    best = {name: float("inf") for name in VERSIONS}
    for _ in range(repeats):  # interleaved, so a busy moment of the machine hits every version
        for name, fn in VERSIONS.items():
            start = clock()
            fn(head, z, c, u, cfg, steps)
            best[name] = min(best[name], clock() - start)
    return best


def _inputs(head: FlowHead, batch: int):
    """Conditions, null conditions (batch, D) and noise (batch, C), seeded."""
    g = torch.Generator().manual_seed(0)
    D = head.net.cond_embed.in_features
    return torch.randn(batch, D, generator=g), torch.randn(batch, D, generator=g), torch.randn(batch, head.channels, generator=g)


def _linear_shapes(head: FlowHead, rows: int) -> list[tuple[int, int, int]]:
    """(rows, in, out) of every Linear one head call runs; ``cond_embed`` runs once per token."""
    return [(rows, m.in_features, m.out_features) for name, m in head.net.named_modules()
            if isinstance(m, torch.nn.Linear) and name != "cond_embed"]


def _matmul_seconds(shapes, repeats: int = 20) -> float:
    """Seconds of one chain of plain ``F.linear`` (x @ W.T + b) with these (rows, in, out) shapes."""
    layers = [(torch.randn(m, k), torch.randn(n, k), torch.randn(n)) for m, k, n in shapes]
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        for x, w, b in layers:
            F.linear(x, w, b)
        best = min(best, clock() - start)
    return best


def _copy_bandwidth(nbytes: int = 256 * 2**20) -> float:
    """Bytes per second of a large tensor copy (read + write counted), this machine's DRAM."""
    # Filled, not torch.empty: untouched pages all map the one zero page, which the cache serves.
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(5))
    return 2 * nbytes / best


def _read_bandwidth(nbytes: int = 256 * 2**20) -> float:
    """Bytes per second of reading a large tensor (a sum), what a call's weight stream can reach."""
    src = torch.ones(nbytes // 4)
    return nbytes / min(_timed(src.sum) for _ in range(5))


def _timed(fn) -> float:
    start = clock()
    fn()
    return clock() - start


@torch.no_grad()
def roofline(head: FlowHead, batch: int, steps: int = 20, peak_rows: int = 512, cfg: float = 3.0) -> dict:
    """GFLOP/s of the guided head loop vs a plain matmul chain at the same shapes (2·batch rows)."""
    rows = 2 * batch  # conditional + null rows in one call
    head.sampling_form = "plain"  # every call streams all weights (the packed form: bench.head_profile)
    c, u, z = _inputs(head, batch)
    counted = []
    for n in (1, 2):  # the difference of two step counts is one call (cond_embed is per token)
        with FlopCounterMode(display=False) as counter:
            head.sample(c, u, cfg, noise=z, steps=n)
        counted.append(counter.get_total_flops())
    flops_per_call = counted[1] - counted[0]
    head.sample(c, u, cfg, noise=z, steps=2)  # warm-up
    per_call = min(_timed(lambda: head.sample(c, u, cfg, noise=z, steps=steps)) for _ in range(3)) / steps
    shapes = _linear_shapes(head, rows)
    matmul_flops = sum(2 * m * k * n for m, k, n in shapes)
    same = _matmul_seconds(shapes)
    big = [(peak_rows, k, n) for _, k, n in shapes]
    peak = max(sum(2 * m * k * n for m, k, n in big) / _matmul_seconds(big, repeats=5), matmul_flops / same)
    weight_bytes = sum(4 * (k * n + n) for _, k, n in shapes)  # fp32 weights + biases read per call
    return dict(rows=rows, flops_per_call=flops_per_call, seconds_per_call=per_call,
                gflops=flops_per_call / per_call / 1e9, matmul_seconds=same,
                matmul_same_shapes_gflops=matmul_flops / same / 1e9, matmul_peak_gflops=peak / 1e9,
                peak_rows=peak_rows, weight_mib=weight_bytes / 2**20,
                weight_gbps=weight_bytes / per_call / 1e9, copy_gbps=_copy_bandwidth() / 1e9)


def limit(r: dict) -> str:
    """One line on what bounds the head call, read off the measurements."""
    share = r["matmul_seconds"] / r["seconds_per_call"]
    if share < 0.5:
        return (f"per-call overhead: the matmuls alone take {share:.0%} of a call; the rest is the "
                f"small LayerNorm/SiLU/modulate ops and their dispatch at {r['rows']} rows, so fewer calls (solver steps) is the lever, not faster GEMMs")
    if r["matmul_same_shapes_gflops"] < 0.5 * r["matmul_peak_gflops"]:
        return (f"memory bandwidth: {r['rows']} rows use each weight ~{r['rows'] / 2:.0f}x per byte read, "
                f"so a call streams {r['weight_mib']:.0f} MiB at {r['weight_gbps']:.1f} GB/s (a large copy: "
                f"{r['copy_gbps']:.1f} GB/s); more rows per call (a larger batch) raises GFLOP/s")
    return f"compute: the matmuls run near this CPU's peak ({r['matmul_same_shapes_gflops']:.1f} GFLOP/s)"


def print_roofline(r: dict) -> None:
    print(f"head call at {r['rows']} rows: {r['flops_per_call'] / 1e6:.1f} MFLOP (torch.utils.flop_counter), "
          f"{r['seconds_per_call'] * 1e3:.2f} ms -> {r['gflops']:.2f} GFLOP/s; its linear layers alone "
          f"(F.linear chain, same shapes) {r['matmul_same_shapes_gflops']:.2f} GFLOP/s; at {r['peak_rows']} rows "
          f"{r['matmul_peak_gflops']:.1f} GFLOP/s (this CPU's peak); roofline fraction "
          f"{r['gflops'] / r['matmul_peak_gflops']:.1%}")
    print(f"limit: {limit(r)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["S", "tiny"], choices=sorted(GeneratorConfig.PRESETS),
                        help="generator presets whose flow head is measured ('tiny' = the course head)")
    parser.add_argument("--batch", type=int, default=1, help="images sampled together (rows = 2 x batch with cfg)")
    parser.add_argument("--steps", type=int, default=25, help="Euler steps per token")
    parser.add_argument("--repeats", type=int, default=10, help="timed tokens per version (minimum kept)")
    args = parser.parse_args(argv)
    print(f"flow-head loop per token, Euler {args.steps} steps, cfg 3, batch {args.batch}, "
          f"torch threads {torch.get_num_threads()}, CPU seconds of this process")
    print(f"{'head':>14} | " + " ".join(f"{name:>14}" for name in VERSIONS) + " | now vs before")
    for preset in args.presets:
        head = build_head(preset)
        cfg = GeneratorConfig.preset(preset)
        best = cheap_wins(head, args.batch, args.steps, args.repeats)
        print(f"{preset + f' {cfg.head_depth}x{cfg.head_width}':>14} | "
              + " ".join(f"{best[name] * 1e3:11.1f} ms" for name in VERSIONS)
              + f" | {best['before'] / best['now']:.2f}x")
    for preset in args.presets:
        print(f"\nroofline, {preset} head, batch {args.batch}:")
        print_roofline(roofline(build_head(preset), args.batch))


if __name__ == "__main__":
    main()
