"""GFLOPs per 256 x 256 image (paper Tables 2-3), counted by running the models on the meta device.

    python -m minieq.experiments efficiency

Each generator (Ours S/B/L/H: 16 column tokens; the AR-MAR-2D baselines: a 16 x 16 or 4 x 4
grid in raster order, full causal attention) runs once on the ``meta`` device under
``torch.utils.flop_counter`` (:func:`minieq.estimate.count_flops`): shapes only, so even H is
counted in seconds and nothing is trained. Multiply-adds count 2. Counted per image:

* ``transformer``: one pass of ``Generator.condition`` over the image's tokens (the 16 class
  tokens included). Sampling with the KV cache does the same work token by token.
* ``head_once``: one flow-head call for every token; sampling calls it once per Euler step
  (100 in the paper) and twice per step with classifier-free guidance.
* ``dense_attention``: the part of ``transformer`` spent in attention score/value products.
  The counter sees attention as dense matrices (a masked entry costs as much as a kept one),
  so the causal or windowed mask changes nothing here; :func:`attention_pairs` counts the pairs
  a mask keeps (the analysis of Table 4).

* ``loss_forward_gmacs``: one forward of ``Generator.loss``, the training step's forward (the
  transformer once, the head on ``diffusion_batch_mul`` = 4 noise draws per token), in
  multiply-adds (fvcore's convention: one multiply-add = one "FLOP"). This reading matches the
  paper's Tables 2-3 (see docs/results_07.md): their GFLOPs count the training forward in MACs.
Scale does not matter here (no training, the paper sizes always); ``--scale`` is accepted for
a uniform command line.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from minieq.estimate import count_flops
from minieq.experiments import experiment_parser, write_result
from minieq.generator import Generator, GeneratorConfig
from minieq.utils import count_parameters

NAME = "efficiency"
PAPER_GFLOPS = {"Ours-S": 5.41, "Ours-B": 9.78, "Ours-L": 19.66, "Ours-H": 34.91,
                "AR-MAR-2D-B (256 tokens)": 130.46, "AR-MAR-2D-B (16 tokens)": 9.79,
                "AR-MAR-2D-L (16 tokens)": 19.68}
PAPER_PARAMS_M = {"Ours-S": 151, "Ours-B": 294, "Ours-L": 644, "Ours-H": 1200}
GRID = dict(layout="grid", attention="full", shift_num=1)
# name -> (GeneratorConfig preset, tokens per 256 x 256 image, overrides)
MODELS = {
    "Ours-S": ("S", 16, {}), "Ours-B": ("B", 16, {}), "Ours-L": ("L", 16, {}), "Ours-H": ("H", 16, {}),
    "AR-MAR-2D-B (256 tokens)": ("B", 256, GRID), "AR-MAR-2D-B (16 tokens)": ("B", 16, GRID),
    "AR-MAR-2D-L (16 tokens)": ("L", 16, GRID),
}
SAMPLING_STEPS = 100  # the Euler steps of the flow head (Table 8; docs/official_code.md#flow-head)


def attention_pairs(num_tokens: int, attention: str, cond_length: int = 3) -> int:
    """Query-key pairs one self-attention layer evaluates for ``num_tokens`` tokens.

    ``"full"``: every causal pair, N(N+1)/2. ``"window"``: token i sees i - cond_length .. i.
    ``"strict"``: minieq's strictly equivariant variant re-runs the stack on each window of
    K = cond_length + 1 tokens (N - K windows of K(K+1)/2 causal pairs; N <= K is one window).
    """
    n, k = num_tokens, cond_length + 1
    if attention == "full":
        return n * (n + 1) // 2
    if attention == "window":
        return sum(min(i + 1, k) for i in range(n))
    if attention == "strict":
        return max(n - k, 1) * (min(n, k) * (min(n, k) + 1) // 2)
    raise ValueError(f"attention must be 'full', 'window' or 'strict', got {attention!r}")


def attention_flops(num_tokens: int, attention: str, width: int, depth: int, cond_length: int = 3) -> float:
    """Self-attention FLOPs of the whole stack: per kept pair and layer, q·k and the weighted
    value each cost ``width`` multiply-adds (2 FLOPs each)."""
    return attention_pairs(num_tokens, attention, cond_length) * 4 * width * depth


def count_generator(preset: str, num_tokens: int, overrides: dict, num_classes: int = 1000) -> dict:
    """FLOPs of one image's transformer pass and of one flow-head call per token, on ``meta``."""
    with torch.device("meta"):
        gen = Generator(GeneratorConfig.preset(preset, num_classes=num_classes, **overrides)).eval()
        C, D = gen.config.token_dim, gen.config.embed_dim
        tokens = torch.zeros(1, num_tokens, C)  # (1, N, C)
        x, t, cond = torch.zeros(num_tokens, C), torch.zeros(num_tokens), torch.zeros(num_tokens, D)
    with torch.no_grad():
        # Labels None (the null class): checking label values needs data; a lookup costs no FLOPs.
        transformer = count_flops(lambda: gen.condition(tokens, None))
        head = count_flops(lambda: gen.head.velocity(x, t, cond))
        loss_forward = count_flops(lambda: gen.loss(tokens, None))
    n, s = num_tokens, gen.config.buffer_size
    # Dense attention the counter sees: self (N x N) and cross (N x S) score + value products.
    dense = (n * n + n * s) * 4 * D * gen.config.depth
    return {"params_M": count_parameters(gen) / 1e6, "transformer": transformer, "head_once": head,
            "dense_attention": dense, "loss_forward": loss_forward, "num_tokens": n}


def run(out=None, scale: str = "cpu", seed: int = 0, device=None) -> dict:
    """Count every model of Tables 2-3; GFLOPs per 256 x 256 image. ``out``, ``scale``,
    ``seed`` and ``device`` do not change the counts (meta device, no randomness)."""
    rows = {}
    for name, (preset, n, overrides) in MODELS.items():
        c = count_generator(preset, n, overrides)
        g = {k: c[k] / 1e9 for k in ("transformer", "head_once", "dense_attention", "loss_forward")}
        rows[name] = {
            "preset": preset, "tokens": n, "params_M": round(c["params_M"], 1),
            "paper_params_M": PAPER_PARAMS_M.get(name),
            "transformer_gflops": round(g["transformer"], 3), "head_once_gflops": round(g["head_once"], 3),
            "one_pass_gflops": round(g["transformer"] + g["head_once"], 3),
            "sampling_gflops": round(g["transformer"] + SAMPLING_STEPS * g["head_once"], 2),
            "sampling_cfg_gflops": round(2 * (g["transformer"] + SAMPLING_STEPS * g["head_once"]), 2),
            "dense_attention_gflops": round(g["dense_attention"], 4),
            "loss_forward_gmacs": round(g["loss_forward"] / 2, 2),
            "paper_gflops": PAPER_GFLOPS[name],
        }
    return {"experiment": NAME, "scale": scale, "seed": seed, "sampling_steps": SAMPLING_STEPS,
            "units": "GFLOPs per 256x256 image, multiply-add = 2 FLOPs, counted on the meta device",
            "models": rows}


def figure(result: dict):
    """Counted GMACs of the training forward next to the paper's GFLOPs, log scale."""
    names = list(result["models"])
    ours = [result["models"][k]["loss_forward_gmacs"] for k in names]
    paper = [result["models"][k]["paper_gflops"] for k in names]
    fig, ax = plt.subplots(figsize=(9, 3.4))
    pos = torch.arange(len(names)).float()
    ax.bar(pos - 0.2, ours, 0.4, label="counted: training forward, multiply-adds")
    ax.bar(pos + 0.2, paper, 0.4, label="paper (Tables 2-3)")
    ax.set_xticks(pos.tolist(), [n.replace(" (", "\n(") for n in names], fontsize=7)
    ax.set(yscale="log", ylabel="G(FL)OPs per 256x256 image")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> dict:
    parser = experiment_parser(NAME, __doc__)
    args = parser.parse_args(argv)
    result = run(args.out, args.scale, args.seed, args.device)
    write_result(args.out, NAME, result, figure(result))
    print("| model | tokens | params (M) | transformer | head x1 | transformer + head x1 | "
          f"+ head x{SAMPLING_STEPS} | training forward (GMACs) | paper |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in result["models"].items():
        print(f"| {name} | {r['tokens']} | {r['params_M']} | {r['transformer_gflops']:.2f} | "
              f"{r['head_once_gflops']:.2f} | {r['one_pass_gflops']:.2f} | {r['sampling_gflops']:.1f} | "
              f"{r['loss_forward_gmacs']:.2f} | {r['paper_gflops']} |")
    return result
