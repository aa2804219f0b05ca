"""Benchmark: error vs cost of the flow head's ODE solvers.

    python -m minieq.bench.solvers                          # the pretrained course generator, CPU
    python -m minieq.bench.solvers --generator runs/gen/generator.pt --fd_images 0

What is measured (all on the CPU, one fixed seed):
* conditions: the generator's rows for held-out SynthScapes renders encoded by the course
  tokenizer (σ-VAE samples × latent scale, i.e. what the generator was trained on), with the
  class and with the null class, so the head integrates realistic inputs.
* error: the token-space RMS distance of each (solver, steps) to a 1000-step Heun reference from
  the same noise, at cfg 1 and at cfg 3 (constant, the course's guidance at its strongest), against
  head evaluations per token (:func:`minieq.flow.head_calls`). The setting picked is the cheapest
  whose error is at most the official 100-step Euler's at both scales.
* FD check: decoded samples (16 tokens, cfg 3 linear, as the course samples) of the picked setting
  and of Euler-100 vs held-out renders (offline FD on EfficientNet-Lite0); two seeds of Euler-100
  give the FD noise level.
Writes ``OUT/solvers.json`` and ``OUT/solvers.png`` (log-log curve).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

from minieq.checkpoint import model_from_checkpoint, read_checkpoint
from minieq.evaluation import heldout_images
from minieq.experiments import write_result
from minieq.flow import SOLVERS, SamplingOptions, head_calls
from minieq.generator_data import TRAIN_TOKENS
from minieq.metrics import fd_kid
from minieq.pipeline import Pipeline
from minieq.pretrained import GENERATOR_FILE, pretrained_tokenizer
from minieq.tokenizer import sigma_vae_sample

# Step counts tried per solver: from visibly wrong to well past Euler-100's accuracy.
SETTINGS = {
    "euler": (5, 10, 15, 25, 50, 100),
    "heun": (2, 3, 4, 5, 6, 8, 10, 15, 25),
    "midpoint": (2, 3, 4, 5, 6, 8, 10, 15, 25),
}
REFERENCE = ("heun", 1000)
BUDGET = ("euler", 100)  # the official sampler the picked setting must match


@torch.no_grad()
def heldout_conditions(gen, tokenizer, latent_scale: float, num_images: int, noise_std: float = 2.5,
                       seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Condition rows (M, D) with the class and with the null class, M = num_images · 16 tokens.

    Tokens are σ-VAE samples of held-out renders (balanced classes: image i has class i mod 8)
    × ``latent_scale``; row k of each image conditions its token k (teacher forcing).
    """
    cfg = tokenizer.config
    images = heldout_images(cfg.image_height, TRAIN_TOKENS * cfg.column_width, num_images, seed)
    means = tokenizer.encode(images)  # (B, 16, C)
    tokens = sigma_vae_sample(means, noise_std, torch.Generator().manual_seed(seed)) * latent_scale
    labels = torch.arange(num_images) % gen.config.num_classes  # (B,)
    D = gen.config.embed_dim
    c = gen.condition(tokens, labels).reshape(-1, D)  # (B, 16, D) -> (M, D)
    u = gen.condition(tokens, None).reshape(-1, D)  # (M, D)
    return c, u


@torch.no_grad()
def error_curve(head, c: torch.Tensor, u: torch.Tensor, cfg: float, settings: dict = SETTINGS,
                reference: tuple[str, int] = REFERENCE, seed: int = 0) -> dict:
    """RMS token error of every (solver, steps) vs ``reference`` from the same noise.

    :return: ``{"rows": [{solver, steps, head_calls, rms, seconds}], "reference_error":
        the reference's own error, estimated as RMS(reference − same solver at a quarter of the
        steps) / 15 (second order: a quarter of the steps has 16× the error), "token_rms": RMS of
        the reference tokens (the scale errors compare with)}``.
    """
    noise = torch.randn(c.shape[0], head.channels, generator=torch.Generator().manual_seed(seed))
    uncond = None if cfg == 1.0 else u

    def solve(solver, steps):
        return head.sample(c, uncond, cfg, noise=noise, solver=solver, steps=steps)

    ref = solve(*reference)
    quarter = solve(reference[0], reference[1] // 4)
    rows = []
    for solver, step_list in settings.items():
        for steps in step_list:
            start = time.perf_counter()
            out = solve(solver, steps)
            rows.append(dict(solver=solver, steps=steps, head_calls=head_calls(solver, steps),
                             rms=_rms(out - ref), seconds=time.perf_counter() - start))
    return dict(rows=rows, reference_error=_rms(quarter - ref) / 15, token_rms=_rms(ref))


def _rms(x: torch.Tensor) -> float:
    return float(x.pow(2).mean().sqrt())


def pick_setting(curves: dict[str, dict], budget: tuple[str, int] = BUDGET) -> dict:
    """The cheapest (fewest head calls, then smallest error) setting whose error is at most
    ``budget``'s in every curve (one curve per cfg)."""
    def errors(curve):
        return {(r["solver"], r["steps"]): r["rms"] for r in curve["rows"]}

    tables = [errors(curve) for curve in curves.values()]
    ok = [key for key in tables[0] if all(t[key] <= t[budget] for t in tables)]
    solver, steps = min(ok, key=lambda key: (head_calls(*key), max(t[key] for t in tables)))
    return dict(solver=solver, steps=steps, head_calls=head_calls(solver, steps))


def plot(curves: dict[str, dict], picked: dict, budget: tuple[str, int] = BUDGET):
    """Log-log error vs head calls per token, one panel per cfg; the budget's error as a line."""
    fig = Figure(figsize=(4.2 * len(curves), 3.4))
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    for ax, (name, curve) in zip(axes, curves.items()):
        for solver in SOLVERS:
            rows = [r for r in curve["rows"] if r["solver"] == solver]
            ax.loglog([r["head_calls"] for r in rows], [r["rms"] for r in rows], "o-", ms=3, label=solver)
        line = next(r["rms"] for r in curve["rows"] if (r["solver"], r["steps"]) == budget)
        ax.axhline(line, color="gray", ls="--", lw=0.8, label=f"{budget[0]}-{budget[1]} (official)")
        pick = next(r for r in curve["rows"] if (r["solver"], r["steps"]) == (picked["solver"], picked["steps"]))
        ax.plot(pick["head_calls"], pick["rms"], "k*", ms=10, label=f"picked: {picked['solver']}-{picked['steps']}")
        ax.set(title=name, xlabel="head evaluations per token", ylabel="token RMS error vs reference")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


@torch.no_grad()
def balanced_samples(pipe: Pipeline, num_images: int, seed: int, options: SamplingOptions,
                     batch: int = 128) -> torch.Tensor:
    """``num_images`` class-balanced samples (labels 0, 1, ... cycling, like the held-out renders).

    One seed per batch, derived from ``seed``, so every sampler compared at the same ``seed``
    starts from the same noise.
    """
    labels = torch.arange(num_images) % pipe.generator.config.num_classes
    return torch.cat([pipe.generate(part, options=options, seed=seed * 1000 + i)
                      for i, part in enumerate(labels.split(batch))])


def fd_check(pipe: Pipeline, settings: list[tuple[str, int, int]], num_images: int, cfg: float = 3.0,
             batch: int = 128) -> list[dict]:
    """Offline FD / KID vs ``num_images`` held-out renders for each (solver, steps, seed)."""
    tok = pipe.tokenizer.config
    real = heldout_images(tok.image_height, TRAIN_TOKENS * tok.column_width, num_images)
    results = []
    for solver, steps, seed in settings:
        start = time.perf_counter()
        fake = balanced_samples(pipe, num_images, seed, SamplingOptions(solver=solver, steps=steps, cfg=cfg), batch)
        seconds = time.perf_counter() - start
        results.append(dict(solver=solver, steps=steps, seed=seed, sampling_seconds=seconds,
                            **fd_kid(real, fake, kid_subset_size=min(1000, num_images // 2))))
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", type=Path, default=GENERATOR_FILE,
                        help="generator checkpoint (default: the shipped course generator)")
    parser.add_argument("--images", type=int, default=8, help="held-out images for the conditions (16 rows each)")
    parser.add_argument("--fd_images", type=int, default=256, help="samples per FD set (0: skip the FD check)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/solvers"), help="folder for solvers.json/png")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    ckpt = read_checkpoint(args.generator)
    gen = model_from_checkpoint(ckpt, str(args.generator)).float().eval()
    scale, step = float(ckpt["latent_scale"]), ckpt.get("step", ckpt.get("train_state", {}).get("step"))
    tok = pretrained_tokenizer("cpu")
    print(f"generator {args.generator} (step {step}), head {gen.config.head_depth}x{gen.config.head_width}, "
          f"config steps {gen.config.num_sampling_steps}; {args.images * TRAIN_TOKENS} condition rows; "
          f"reference {REFERENCE[0]}-{REFERENCE[1]}; torch threads {torch.get_num_threads()}")
    c, u = heldout_conditions(gen, tok, scale, args.images)
    curves = {f"cfg {cfg:g}": error_curve(gen.head, c, u, cfg) for cfg in (1.0, 3.0)}
    picked = pick_setting(curves)

    print(f"\ntoken RMS error vs the reference (token RMS {curves['cfg 1']['token_rms']:.3f} / "
          f"{curves['cfg 3']['token_rms']:.3f}; the reference's own error, estimated: "
          f"{curves['cfg 1']['reference_error']:.1e} / {curves['cfg 3']['reference_error']:.1e})")
    print(f"{'solver':>9} {'steps':>5} {'calls':>5} | {'rms cfg 1':>10} {'rms cfg 3':>10}")
    for one, three in zip(curves["cfg 1"]["rows"], curves["cfg 3"]["rows"]):
        mark = "  <- picked" if (one["solver"], one["steps"]) == (picked["solver"], picked["steps"]) else ""
        mark = "  <- official" if (one["solver"], one["steps"]) == BUDGET else mark
        print(f"{one['solver']:>9} {one['steps']:>5} {one['head_calls']:>5} | "
              f"{one['rms']:10.2e} {three['rms']:10.2e}{mark}")
    print(f"picked: {picked['solver']} with {picked['steps']} steps = {picked['head_calls']} head calls per "
          f"token ({head_calls(*BUDGET) / picked['head_calls']:.1f}x fewer than {BUDGET[0]}-{BUDGET[1]})")

    result = dict(generator=str(args.generator), step=step, condition_rows=int(c.shape[0]),
                  reference=REFERENCE, budget=BUDGET, curves=curves, picked=picked)
    if args.fd_images:
        pipe = Pipeline(tok, gen, scale)
        own = gen.config.num_sampling_steps
        runs = [(*BUDGET, 0), (*BUDGET, 1), (picked["solver"], picked["steps"], 0), ("euler", own, 0)]
        result["fd"] = fd_check(pipe, runs, args.fd_images)
        print(f"\noffline FD / KID (EfficientNet-Lite0) of {args.fd_images} samples (16 tokens, cfg 3 linear) "
              f"vs {args.fd_images} held-out renders")
        for r in result["fd"]:
            print(f"{r['solver']:>9}-{r['steps']:<4} seed {r['seed']}: FD {r['fd_lite0']:7.2f}  "
                  f"KID {r['kid_lite0']:.4f} ± {r['kid_lite0_std']:.4f}  ({r['sampling_seconds']:.0f} s sampling)")
        noise = abs(result["fd"][0]["fd_lite0"] - result["fd"][1]["fd_lite0"])
        print(f"FD noise level (|Euler-100 seed 0 - seed 1|): {noise:.2f}; picked - Euler-100 seed 0: "
              f"{result['fd'][2]['fd_lite0'] - result['fd'][0]['fd_lite0']:+.2f}")
        result["fd_noise_level"] = noise
    paths = write_result(args.out, "solvers", result, plot(curves, picked))
    print(f"wrote {paths['json']} and {paths['png']}")
    return result


if __name__ == "__main__":
    main()
