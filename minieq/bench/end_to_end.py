"""Benchmark: end-to-end sampling speed, transformer + flow head, latency and throughput.

    python -m minieq.bench.end_to_end                   # S preset, batch 1, random weights: ~3 CPU minutes
    python -m minieq.bench.end_to_end --batch 8 32 --image_tokens 2 --strip_tokens 2   # throughput
    python -m minieq.bench.end_to_end --fast midpoint:5 distilled:1 distilled:2 --forms fp32 bf16

Ways to sample, timed in one run (cfg 3, linear schedule, as the course samples):
(a) official: full recompute of the sequence for every token + Euler with 100 steps, the flow head
    run as its modules (``sampling_form="plain"``: one full network call per step, as the
    official code);
(b) minieq default: sliding-window KV cache + Euler with 100 steps + the packed head
    (``sampling_form="fp32"``, :mod:`minieq.head_inference`; same tokens as (a) to round-off);
(c), (d), ...: KV cache + each ``--fast`` setting, ``SOLVER:STEPS[:LATE]``: an ODE solver
    (``midpoint:5``: the setting ``python -m minieq.bench.solvers`` picks, Euler-100's error at a
    tenth of the calls) or the few-step head (``distilled:N``: N calls per token; an untrained
    student of the head, ``minieq.few_step.student_of``: timing does not depend on its weights);
    LATE anneals the steps along the sequence (``SamplingOptions.late_steps``); each in every
    head form of ``--forms`` (``bf16``: opt-in, docs/sampling_speed.md).
Each batch of ``--batch`` is a table: seconds per batch (latency at batch 1) and images or
strips per second (throughput), with the speed-up over (a).

16-token images: the tokens ``--image_tokens`` before the end are timed (16 = the whole image);
256-token strips: ``--strip_tokens`` consecutive tokens at the end of the strip (positions
256 − R .. 255). A batch's time is its setup (the class tokens' pass) + the tokens × the mean
time per timed token (+ the earlier tokens' extra steps when steps are annealed, see
:func:`sample_seconds`). This is exact: with the window cache a token's cost does not depend on
its position once its window is full (the cache keeps cond_length + 1 keys, so it is pre-filled
with the tokens just before the timed range, all it holds), the official recompute runs all
positions for every token whatever its index, and the head's cost is the same for every token
with the same steps. Weights are random: timing does not depend on them.
On the CPU the clock is the process's CPU time (run with ``OMP_NUM_THREADS=1``), so time spent
waiting for a shared core is not counted; on a GPU it is wall time after a synchronize.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch

from minieq.few_step import student_of
from minieq.flow import DISTILLED, SAMPLERS, head_calls
from minieq.generator import Generator, GeneratorConfig
from minieq.generator_sampling import annealed_steps, cfg_scale
from minieq.head_inference import FORMS
from minieq.utils import pick_device

CFG = 3.0
IMAGE = 16  # tokens of an image (the training width)


@dataclass(frozen=True)
class Mode:
    """One way to sample: the stream, the head's solver and steps (annealed to ``late``), its form."""

    name: str
    use_cache: bool
    solver: str
    steps: int
    late: int | None = None
    form: str = "fp32"

    def steps_of(self, k: int, full_context: int) -> int:
        return annealed_steps(self.steps, self.late, k, full_context)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _clock(device: torch.device):
    return time.process_time if device.type == "cpu" else time.perf_counter


@torch.no_grad()
def token_seconds(gen: Generator, mode: Mode, batch: int, num_tokens: int, first: int) -> tuple[float, float]:
    """Seconds per token of sampling tokens first .. num_tokens-1 of a guided batch, with the
    stream in the state it has at ``first`` (what ``sampling_loop`` does per token), and the
    seconds of the once-per-sample setup (the cache's class-token pass)."""
    device = gen.fake_latent.device
    clock = _clock(device)
    labels = torch.arange(batch, device=device) % gen.config.num_classes
    class_vec = torch.cat([gen.class_vectors(labels, batch), gen.class_vectors(None, batch)])  # (2B, D)
    gen.head.sampling_form = mode.form
    _sync(device)
    t0 = clock()
    stream = gen.stream(class_vec, num_tokens, mode.use_cache)
    _sync(device)
    setup = clock() - t0
    window = gen.config.window
    # Pre-fill: the cache keeps only the last window + 1 keys (everything for full causal).
    start = max(0, first - (window + 1)) if mode.use_cache and window > 0 else 0
    tokens = torch.randn(batch, num_tokens, gen.config.token_dim, device=device)  # (B, N, C)
    for k in range(start, first):
        stream.push(k, tokens[:, k].repeat(2, 1))
    _sync(device)
    t0 = clock()
    for k in range(first, num_tokens):
        c, u = stream.row(k).chunk(2)  # (B, D) each
        z = gen.head.sample(c, u, cfg_scale(CFG, "linear", k, num_tokens), solver=mode.solver,
                            steps=mode.steps_of(k, _full_context(gen, num_tokens)))
        if k < num_tokens - 1:
            stream.push(k, z.repeat(2, 1))
    _sync(device)
    return (clock() - t0) / (num_tokens - first), setup


def _full_context(gen: Generator, num_tokens: int) -> int:
    return max(1, gen.config.window) if gen.config.window else num_tokens  # as sampling_loop


def sample_seconds(gen: Generator, mode: Mode, batch: int, num_tokens: int, timed: int) -> float:
    """Seconds to sample a batch of ``num_tokens``-token sequences, from its last ``timed`` tokens.

    With annealed steps the first tokens run more head calls than the timed ones (whose window is
    full): they are charged the timed tokens' head time per call for their extra calls."""
    per_token, setup = token_seconds(gen, mode, batch, num_tokens, num_tokens - timed)
    steps = [mode.steps_of(k, _full_context(gen, num_tokens)) for k in range(num_tokens)]
    calls = [head_calls(mode.solver, s) for s in steps]
    if mode.late is None or calls[0] == calls[-1]:
        return setup + num_tokens * per_token
    head_per_call = _head_seconds(gen, mode, batch, steps[-1]) / calls[-1]
    return setup + num_tokens * per_token + head_per_call * sum(n - calls[-1] for n in calls)


@torch.no_grad()
def _head_seconds(gen: Generator, mode: Mode, batch: int, steps: int, repeats: int = 3) -> float:
    """Seconds of one token's guided head solve alone (the transformer's rows: random)."""
    device = gen.fake_latent.device
    c, u = torch.randn(2, batch, gen.config.embed_dim, device=device)
    gen.head.sampling_form = mode.form
    clock, best = _clock(device), float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = clock()
        gen.head.sample(c, u, CFG, solver=mode.solver, steps=steps)
        _sync(device)
        best = min(best, clock() - t0)
    return best


def modes(fast: list[tuple[str, int, int | None]], forms: list[str]) -> list[Mode]:
    """(a) official, (b) cache + Euler-100, then every ``fast`` setting in every form."""
    out = [Mode("official: recompute + euler-100", False, "euler", 100, form="plain"),
           Mode("default: cache + euler-100", True, "euler", 100)]
    for solver, steps, late in fast:
        for form in forms:
            setting = f"{solver}-{steps}" + (f"->{late}" if late is not None else "")
            out.append(Mode(f"cache + {setting}" + (f", {form} head" if form != "fp32" else ""),
                            True, solver, steps, late, form))
    return [Mode(f"({chr(ord('a') + i)}) {m.name}", m.use_cache, m.solver, m.steps, m.late, m.form)
            for i, m in enumerate(out)]


def _setting(text: str) -> tuple[str, int, int | None]:
    parts = text.split(":")
    if not (2 <= len(parts) <= 3 and parts[0] in SAMPLERS and all(p.isdigit() and int(p) >= 1 for p in parts[1:])):
        raise argparse.ArgumentTypeError(f"expected SOLVER:STEPS or SOLVER:STEPS:LATE with SOLVER in {SAMPLERS}, "
                                         f"got {text!r}")
    return parts[0], int(parts[1]), int(parts[2]) if len(parts) == 3 else None


def print_table(rows: dict[str, dict], batch: int, strip: int) -> None:
    what = "latency" if batch == 1 else "throughput"
    print(f"\nbatch {batch} ({what}):")
    print(f"{'mode':<46} {'calls/token':>11} | {f'{IMAGE}-token: s/batch':>19} {'img/s':>8} {'vs (a)':>7} | "
          f"{f'{strip}-token: s/batch':>20} {'strips/s':>9} {'vs (a)':>7}")
    base = next(iter(rows.values()))
    for name, r in rows.items():
        print(f"{name:<46} {r['head_calls']:>11} | {r['image_seconds']:19.2f} {r['images_per_s']:8.4f} "
              f"{r['images_per_s'] / base['images_per_s']:6.1f}x | {r['strip_seconds']:20.1f} "
              f"{r['strips_per_s']:9.5f} {r['strips_per_s'] / base['strips_per_s']:6.1f}x")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="S", choices=sorted(GeneratorConfig.PRESETS))
    parser.add_argument("--fast", type=_setting, nargs="+", default=[("midpoint", 5, None), (DISTILLED, 1, None)],
                        help="SOLVER:STEPS[:LATE] of the cached modes after (b) (default: midpoint:5 distilled:1)")
    parser.add_argument("--forms", nargs="+", default=["fp32"], choices=[f for f in FORMS if f != "plain"],
                        help="head forms of the --fast modes")
    parser.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes, one table each")
    parser.add_argument("--strip", type=int, default=256, help="tokens of the long strip")
    parser.add_argument("--strip_tokens", type=int, default=4, help="timed tokens at the end of the strip")
    parser.add_argument("--image_tokens", type=int, default=IMAGE, help=f"timed tokens of a {IMAGE}-token image")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    torch.manual_seed(0)
    gen = Generator(GeneratorConfig.preset(args.preset)).to(device).eval()
    gen.head.few_step = student_of(gen.head)  # for distilled:N (same cost as a trained one)
    cfg = gen.config
    print(f"preset {args.preset}: D {cfg.embed_dim}, {cfg.depth} blocks, head {cfg.head_depth}x{cfg.head_width}, "
          f"window {cfg.window}; cfg {CFG:g} linear, device {device}, torch threads {torch.get_num_threads()}; "
          f"clock: {'CPU time of this process' if device.type == 'cpu' else 'wall'}")
    all_modes = modes(args.fast, args.forms)
    # Warm-up of every (network, form): kernels, the RoPE table, and the one-time packing of the
    # head and the few-step head (sample's first call pays it; it stays out of the timed tokens).
    for solver, form in dict.fromkeys((m.solver, m.form) for m in all_modes):
        token_seconds(gen, Mode("warm-up", True, solver, 1, form=form), 1, 2, 0)
    tables = {}
    for batch in args.batch:
        rows = {}
        for mode in all_modes:
            image = sample_seconds(gen, mode, batch, IMAGE, min(args.image_tokens, IMAGE))
            strip = sample_seconds(gen, mode, batch, args.strip, args.strip_tokens)
            rows[mode.name] = dict(head_calls=head_calls(mode.solver, mode.late or mode.steps), image_seconds=image,
                                   strip_seconds=strip, images_per_s=batch / image, strips_per_s=batch / strip)
            print(f"  batch {batch}, {mode.name}: {image:.1f} s per {IMAGE}-token batch, "
                  f"{strip:.1f} s per {args.strip}-token batch", flush=True)
        tables[batch] = rows
    for batch, rows in tables.items():
        print_table(rows, batch, args.strip)
    print(f"(timed: {min(args.image_tokens, IMAGE)} tokens of each {IMAGE}-token image, {args.strip_tokens} at "
          f"positions {args.strip - args.strip_tokens}..{args.strip - 1} of the strip; calls/token: with "
          "annealing, of a token whose window is full; see the module docstring. Per-op profile of a head "
          "call: python -m minieq.bench.head_profile)")
    gen.head.sampling_form = "fp32"
    return tables


if __name__ == "__main__":
    main()
