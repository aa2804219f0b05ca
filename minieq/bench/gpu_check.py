"""One command that checks a GPU end to end and prints one table (designed for < 8 min on one GPU).

    python -m minieq.bench.gpu_check                         # the GPU, full sizes
    python -m minieq.bench.gpu_check --steps 5 --tokens 32   # shorter
    python -m minieq.bench.gpu_check --tiny --device cpu     # tiny models, seconds (CI runs this)

Rows:
* parity: the official-format fixtures (``--parity_dir``, as tests/conftest.py finds them) on
  the device, fp32 and under bf16 autocast: max |ours − golden| / max |golden| for the
  tokenizer, max |ours − golden| for the generator (the tests' fp32 bounds: 1e-4 and 1e-5).
* train: the ``course_gpu`` tokenizer and generator steps (forward, backward, optimizer) at the
  presets' batch, random inputs of the training shapes; seconds per step (median of ``--steps``
  after one untimed step), CUDA peak memory, and the whole run's hours extrapolated from the
  step time beside ``python -m minieq.estimate``'s A100 estimate.
* sample: seconds per image of ``--tokens`` tokens for the S and B generators (random weights:
  the cost does not depend on them): Euler-100 with the KV cache, with the official full
  recompute, and midpoint-5 (10 head calls per token) with the cache.
bf16 is ``torch.autocast(bfloat16)``, what the trainers use on CUDA. ``--tiny`` swaps in the
FAST models, tiny batches and the tiny generator, so the command itself is tested on a CPU.
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from minieq.cli import parser_for, user_errors
from minieq.estimate import estimate_generator, estimate_tokenizer
from minieq.generator import Generator, GeneratorConfig
from minieq.losses import TokenizerLoss
from minieq.official_generator import load_official_generator
from minieq.official_tokenizer import load_official_tokenizer
from minieq.tokenizer import ColumnTokenizer, TokenizerConfig
from minieq.train_generator import GeneratorTrainConfig, build_generator, param_groups
from minieq.train_tokenizer import TokenizerTrainConfig, set_trainable
from minieq.utils import pick_device

PARTS = ("parity", "train", "sample")
# Where the tests look for the fixtures (tests/conftest.py: a shared/golden folder beside the repository).
DEFAULT_PARITY_DIR = Path(__file__).resolve().parents[3] / "shared" / "golden"
# --tiny: the course's FAST models at CPU batches, and the tiny generator for both sampling rows.
TINY = dict(tok_preset="fast", tok_batch=2, tok_width=64, gen_preset="fast", gen_batch=4,
            sample_models=("tiny",), sample_steps=5)
FULL = dict(tok_preset="course_gpu", tok_batch=None, tok_width=None, gen_preset="course_gpu",
            gen_batch=None, sample_models=("S", "B"), sample_steps=None)
Row = tuple[str, str, str, str]  # check, fp32, bf16, note


def precision(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ----- parity ---------------------------------------------------------------------------------------
def parity_rows(folder: Path, device: torch.device) -> list[Row]:
    names = ("public_tokenizer.ckpt", "public_tokenizer_io.pt", "public_generator.pth",
             "public_generator_io.pt", "public_config.json")
    if not all((folder / n).is_file() for n in names):
        return [("parity", "-", "-", f"fixtures not found in {folder} (--parity_dir)")]
    config = json.loads((folder / "public_config.json").read_text())
    tok = load_official_tokenizer(folder / "public_tokenizer.ckpt", config["tokenizer"]).to(device)
    gen = load_official_generator(folder / "public_generator.pth", config["generator"]).to(device)
    t_io = {k: v.to(device) if torch.is_tensor(v) else v
            for k, v in torch.load(folder / "public_tokenizer_io.pt", map_location="cpu", weights_only=True).items()}
    g_io = {k: v.to(device) if torch.is_tensor(v) else v
            for k, v in torch.load(folder / "public_generator_io.pt", map_location="cpu", weights_only=True).items()}

    def rel(ours, ref):
        return float((ours.float() - ref).abs().max() / ref.abs().max())

    def err(ours, ref):
        return float((ours.float() - ref).abs().max())

    def sample(use_cache):
        return gen.sample(g_io["labels"], 12, cfg=float(g_io["cfg_scale"]), noise=g_io["sample_noise"],
                          use_cache=use_cache)

    checks = {  # name -> (error of one call, note)
        "parity tokenizer encode": (lambda: rel(tok.encode(t_io["images_w64"]), t_io["tokens_w64"]), "rel, fp32 bound 1e-4"),
        "parity tokenizer decode": (lambda: rel(tok.decode(t_io["tokens_w64"]), t_io["recon_w64"]), "rel, fp32 bound 1e-4"),
        "parity generator condition": (lambda: err(gen.condition(g_io["tokens"], g_io["labels"]), g_io["condition"]), "abs, fp32 bound ~1e-5"),
        "parity head velocity": (lambda: err(gen.head.velocity(g_io["head_x"], g_io["head_t"], g_io["head_c"]), g_io["head_velocity"]), "abs"),
        "parity sample, KV cache, cfg": (lambda: err(sample(True), g_io["sample_cfg"]), "abs, 12 tokens"),
        "parity sample, recompute, cfg": (lambda: err(sample(False), g_io["sample_cfg"]), "abs, 12 tokens"),
    }
    rows = []
    with torch.no_grad():
        for name, (check, note) in checks.items():
            errors = []
            for bf16 in (False, True):
                with precision(device, bf16):
                    errors.append(f"{check():.2e}")
            rows.append((name, *errors, note))
    return rows


# ----- training steps -------------------------------------------------------------------------------
def _peak(device: torch.device) -> str:
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" if device.type == "cuda" else "-"


def _train_row(name: str, make_step: Callable[[], Callable[[], None]], steps: int, total_steps: int,
               estimate_hours: float, device: torch.device, scale: float) -> Row:
    """Seconds per step and the whole run's hours, fp32 and bf16; ``scale`` = preset / measured batch."""
    cells, peaks = [], []
    for bf16 in (False, True):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        step = make_step()
        seconds = timed(lambda: _in_precision(step, device, bf16), device, steps)
        hours = seconds * scale * total_steps / 3600
        cells.append(f"{seconds * 1e3:.1f} ms/step, {hours:.2f} h")
        peaks.append(_peak(device))
    note = f"peak {peaks[0]} / {peaks[1]}; estimate {estimate_hours:.3g} A100-h (minieq.estimate)"
    if scale != 1:
        note += f"; batch 1/{scale:g} of the preset's, hours scaled"
    return (name, *cells, note)


def _in_precision(step: Callable[[], None], device: torch.device, bf16: bool) -> None:
    with precision(device, bf16):
        step()


def tokenizer_row(preset: str, batch: int | None, width: int | None, device: torch.device, steps: int) -> Row:
    cfg = TokenizerTrainConfig.preset(preset, **({"image_width": width} if width else {}))
    batch = batch or cfg.batch_size
    tok_cfg = TokenizerConfig.preset(cfg.tokenizer, **cfg.tokenizer_overrides)

    def make_step():
        torch.manual_seed(0)
        tok = ColumnTokenizer(tok_cfg).to(device).train()
        loss_fn = TokenizerLoss(cfg.loss, tok_cfg.semantic_out_channels).to(device)
        params = set_trainable(tok, cfg.stage, semantic=False)
        opt = torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        x = torch.rand(batch, 3, tok_cfg.image_height, cfg.image_width, device=device) * 2 - 1

        def step():
            out = tok(x, sample=cfg.sample)
            with torch.autocast(device.type, enabled=False):  # the trainer takes the loss outside autocast
                loss = loss_fn.generator_loss(x, out, 0, tok.last_layer_weight)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    estimate = estimate_tokenizer(cfg.replace(batch_size=batch)).a100_hours() * cfg.batch_size / batch
    return _train_row(f"train tokenizer {preset} (batch {batch})", make_step, steps, cfg.steps,
                      estimate, device, cfg.batch_size / batch)


def generator_row(preset: str, batch: int | None, device: torch.device, steps: int,
                  token_dim: int, num_tokens: int = 16) -> Row:
    cfg = GeneratorTrainConfig.preset(preset)
    batch = batch or cfg.batch_size
    num_classes = 8

    def make_step():
        torch.manual_seed(0)
        gen = build_generator(cfg, num_classes, token_dim).to(device).train()
        opt = torch.optim.AdamW(param_groups(gen, cfg.weight_decay), lr=1e-4, betas=tuple(cfg.betas))
        tokens = torch.randn(batch, num_tokens, token_dim, device=device)
        labels = torch.arange(batch, device=device) % num_classes

        def step():
            loss = gen.loss(tokens, labels).float()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    total = cfg.steps or 1
    estimate = estimate_generator(cfg.replace(batch_size=batch), token_dim, num_classes, batch * total,
                                  num_tokens).a100_hours() * cfg.batch_size / batch
    return _train_row(f"train generator {preset} (batch {batch})", make_step, steps, total, estimate,
                      device, cfg.batch_size / batch)


# ----- sampling -------------------------------------------------------------------------------------
def sample_rows(model: str, device: torch.device, num_tokens: int, repeats: int,
                euler_steps: int | None) -> list[Row]:
    torch.manual_seed(0)
    gen = Generator(GeneratorConfig.preset(model, num_classes=8)).to(device).eval()
    euler = euler_steps or gen.config.num_sampling_steps
    labels = torch.zeros(1, dtype=torch.long, device=device)
    modes = {f"Euler-{euler}, KV cache": dict(use_cache=True, solver="euler", steps=euler),
             f"Euler-{euler}, recompute": dict(use_cache=False, solver="euler", steps=euler),
             "midpoint-5, KV cache": dict(use_cache=True, solver="midpoint", steps=5)}
    rows = []
    with torch.no_grad():
        for name, kwargs in modes.items():
            cells = []
            for bf16 in (False, True):
                with precision(device, bf16):
                    seconds = timed(lambda: gen.sample(labels, num_tokens, **kwargs), device, repeats)
                cells.append(f"{seconds:.3f} s/image")
            rows.append((f"sample {model}, {name}", *cells, f"{num_tokens} tokens, batch 1"))
    return rows


# ----- the command ----------------------------------------------------------------------------------
def format_table(rows: list[Row], device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    lines = [f"device: {name}, torch {torch.__version__}", "",
             "| check | fp32 | bf16 | note |", "|---|---:|---:|---|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines)


def run_checks(device: torch.device, *, tiny: bool = False, parts=PARTS, steps: int = 10,
               tokens: int = 64, parity_dir: Path = DEFAULT_PARITY_DIR, progress: bool = True) -> list[Row]:
    """Every row of the table (the selected ``parts``), in order."""
    sizes = TINY if tiny else FULL
    rows: list[Row] = []

    def add(new: list[Row]) -> None:
        rows.extend(new)
        if progress:
            for row in new:
                print(" | ".join(row), file=sys.stderr, flush=True)

    if "parity" in parts:
        add(parity_rows(Path(parity_dir), device))
    if "train" in parts:
        tok = tokenizer_row(sizes["tok_preset"], sizes["tok_batch"], sizes["tok_width"], device, steps)
        add([tok])
        gen_cfg = GeneratorTrainConfig.preset(sizes["gen_preset"])
        token_dim = GeneratorConfig.preset(gen_cfg.model, **gen_cfg.model_overrides).token_dim
        add([generator_row(sizes["gen_preset"], sizes["gen_batch"], device, steps, token_dim)])
    if "sample" in parts:
        for model in sizes["sample_models"]:
            add(sample_rows(model, device, tokens, max(1, steps // 5), sizes["sample_steps"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = parser_for("bench.gpu_check", __doc__)
    parser.add_argument("--device", default=None, help="cuda, cuda:N, mps or cpu (default: the best there is)")
    parser.add_argument("--tiny", action="store_true", help="tiny models and batches (CPU, CI)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="rows to run")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per precision")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per sampled image")
    parser.add_argument("--parity_dir", default=os.environ.get("MINIEQ_PARITY_DIR", str(DEFAULT_PARITY_DIR)),
                        help="folder of the official-format parity fixtures (env MINIEQ_PARITY_DIR)")
    args = parser.parse_args(argv)
    with user_errors(parser):
        if args.steps < 1 or args.tokens < 2:
            raise ValueError("--steps must be >= 1 and --tokens >= 2")
        device = pick_device(args.device)
        rows = run_checks(device, tiny=args.tiny, parts=args.parts, steps=args.steps, tokens=args.tokens,
                          parity_dir=Path(args.parity_dir))
    print(format_table(rows, device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
