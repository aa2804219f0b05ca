"""Benchmark: where one flow-head call's time goes, per operation, in each sampling form.

    python -m minieq.bench.head_profile                   # S head (12 x 960), rows 2 / 16 / 64, CPU
    python -m minieq.bench.head_profile --preset tiny --rows 2 --error   # + bf16 error, course generator

For each form of ``FlowHead.sampling_form`` (``plain``: the modules, one full network call per
step as the official code; ``fp32`` / ``bf16``: :class:`minieq.head_inference.PackedHead`) one
token's guided solve (``--solver``, default midpoint-5, cfg 3) runs on R rows (2 x batch), and:
* time per head call: the solve's CPU time / its head calls, so what runs once per token (the
  condition embedding, a packed head's modulations) is counted, shared over the calls;
* per operation: every aten op of the solve timed under a ``TorchDispatchMode`` and grouped by
  layer (the matmuls, recognised by their bias tensor) or by op (LayerNorm, SiLU, elementwise,
  layout conversions); "outside the ops" is the solve's unprofiled time minus the ops' time
  (Python and dispatch; a few percent either way is the timer's noise: each op time is less the
  timer's measured cost, and the machine's load moves both);
* weight bytes read per call (each matmul's weight, summed over the solve / calls) and the
  GB/s they make, beside this machine's large-copy and read-only bandwidths.
``--error`` measures the forms' token error on the pretrained course generator (real conditions,
:func:`minieq.bench.solvers.heldout_conditions`): RMS distance to a 1000-step Heun solution of
the plain head, and to the plain head's own solve with the same setting.
Clock: CPU time of the process (``time.process_time``); run with ``OMP_NUM_THREADS=1``.
"""
from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from minieq.bench.head import _copy_bandwidth, _inputs, _read_bandwidth, build_head, clock
from minieq.flow import FlowHead, SOLVERS, head_calls
from minieq.generator import GeneratorConfig
from minieq.head_inference import FORMS, packed

CFG = 3.0
_OPS = {  # aten op name -> group, for the ops that are not a layer's matmul
    "native_layer_norm": "LayerNorm", "silu": "SiLU", "silu_": "SiLU",
    "to_mkldnn": "layout / dtype conversions", "to_dense": "layout / dtype conversions",
    "_to_copy": "layout / dtype conversions", "clone": "layout / dtype conversions", "copy_": "layout / dtype conversions",
    "_to_dense": "layout / dtype conversions",
    "cos": "time embedding (sinusoid)", "sin": "time embedding (sinusoid)", "exp": "time embedding (sinusoid)",
    "arange": "time embedding (sinusoid)",
}
_VIEWS = {"view", "t", "transpose", "unbind", "split", "chunk", "slice", "select", "expand", "unsqueeze",
          "_unsafe_view", "alias", "split_with_sizes", "detach"}


def layer_groups(head: FlowHead, forms=FORMS) -> dict[int, tuple[str, int]]:
    """id(bias tensor) -> (layer group, weight bytes) for every matmul a solve can run: the
    modules' Linears and each packed form's (every matmul op receives its layer's bias as is)."""
    def group(name: str) -> str:
        for key, label in (("adaLN", "matmul: adaLN modulations"), ("res_blocks", "matmul: block MLPs"),
                           ("time_embed", "matmul: time MLP"), ("cond_embed", "matmul: cond_embed")):
            if key in name:
                return label
        return "matmul: input / output projections"

    groups = {}
    for name, m in head.net.named_modules():
        if isinstance(m, torch.nn.Linear):
            groups[id(m.bias)] = (group(name), m.weight.numel() * m.weight.element_size())
    for form in forms:
        if form == "plain":
            continue
        p = packed(head.net, form)
        layers = [("adaLN", p.mod_weight, p.mod_bias), ("input", *p.input_proj), ("output", *p.output)]
        layers += [("res_blocks", w, b) for block in p.blocks for w, b in (block[2:4], block[4:6])]
        for name, weight, bias in layers:
            groups[id(bias)] = (group(name), weight.numel() * weight.dtype.itemsize)
    return groups


class OpTimer(TorchDispatchMode):
    """Times every aten op (CPU seconds) and adds it to its group, less ``overhead`` (the clock's
    and the redispatch's own cost, :func:`timer_overhead`); counts the weight bytes read."""

    def __init__(self, groups: dict[int, tuple[str, int]], overhead: float = 0.0):
        super().__init__()
        self.groups, self.overhead = groups, overhead
        self.seconds, self.weight_bytes = defaultdict(float), 0

    def _group(self, func, args) -> str:
        name = func.overloadpacket.__name__
        if name in _VIEWS:
            return "views (free)"
        for a in args:
            if isinstance(a, torch.Tensor) and id(a) in self.groups:
                label, nbytes = self.groups[id(a)]
                self.weight_bytes += nbytes
                return label
        return _OPS.get(name, "elementwise (modulate, gate, residual, guidance)"
                        if name.rstrip("_") in ("add", "mul", "addcmul", "sub", "rsub", "div", "cat", "fill")
                        else "other")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = clock()
        out = func(*args, **(kwargs or {}))
        elapsed = clock() - start
        self.seconds[self._group(func, args)] += elapsed - self.overhead
        return out


def timer_overhead(n: int = 2000) -> float:
    """Seconds :class:`OpTimer` adds to one op: what it measures for an op that does nothing."""
    x = torch.zeros(1)
    timer = OpTimer({})
    with timer:
        for _ in range(n):
            torch.ops.aten.alias(x)
    return sum(timer.seconds.values()) / n


def _solve(head: FlowHead, batch: int, solver: str, steps: int):
    c, u, z = _inputs(head, batch)
    return lambda: head.sample(c, u, CFG, noise=z, solver=solver, steps=steps)


@torch.no_grad()
def profile(head: FlowHead, batch: int, solver: str = "midpoint", steps: int = 5, repeats: int = 3) -> dict:
    """Per form: seconds per head call, per-op-group seconds per call, weight bytes read per call.

    Each repeat times every form once, plainly and under the op timer (interleaved, so a busy
    moment of the machine hits every form); each time and each op group keeps its minimum."""
    calls = head_calls(solver, steps)
    groups, overhead = layer_groups(head), timer_overhead()
    solves = {}
    for form in FORMS:
        head.sampling_form = form
        solves[form] = _solve(head, batch, solver, steps)
        solves[form]()  # warm-up: allocations
    seconds = {form: float("inf") for form in FORMS}
    ops = {form: defaultdict(lambda: float("inf")) for form in FORMS}
    weight_bytes = {}
    for _ in range(repeats):
        for form, solve in solves.items():
            head.sampling_form = form
            seconds[form] = min(seconds[form], _timed(solve) / calls)
            timer = OpTimer(groups, overhead)
            with timer:
                solve()
            for name, value in timer.seconds.items():
                ops[form][name] = min(ops[form][name], value / calls)
            weight_bytes[form] = timer.weight_bytes / calls
    head.sampling_form = "fp32"
    out = {}
    for form in FORMS:
        groups_ms = dict(ops[form])
        groups_ms["outside the ops (Python, dispatch)"] = seconds[form] - sum(groups_ms.values())
        out[form] = dict(seconds=seconds[form], ops=groups_ms, weight_bytes=weight_bytes[form])
    return out


def _timed(fn) -> float:
    start = clock()
    fn()
    return clock() - start


def print_profile(result: dict, rows: int, copy_gbps: float, read_gbps: float) -> None:
    plain = result["plain"]["seconds"]
    print(f"\n{rows} rows per call: {'form':>5} | {'ms / call':>9} | {'vs plain':>8} | "
          f"{'weights read / call':>19} | {'GB/s':>5} (large copy {copy_gbps:.1f} GB/s r+w, read-only {read_gbps:.1f})")
    for form, r in result.items():
        print(f"{'':>19}{form:>5} | {r['seconds'] * 1e3:9.2f} | {plain / r['seconds']:7.2f}x | "
              f"{r['weight_bytes'] / 2**20:15.1f} MiB | {r['weight_bytes'] / r['seconds'] / 1e9:5.1f}")
    names = sorted({k for r in result.values() for k in r["ops"]},
                   key=lambda k: -max(r["ops"].get(k, 0) for r in result.values()))
    print(f"  {'per call, ms (share)':<52}" + "".join(f"{form:>16}" for form in result))
    for name in names:
        cells = [(r["ops"].get(name), r["seconds"]) for r in result.values()]
        print(f"  {name:<52}" + "".join(f"{v * 1e3:8.2f} ({v / s:4.0%})" if v is not None else f"{'-':>16}"
                                         for v, s in cells))


@torch.no_grad()
def form_errors(num_images: int = 8, settings=(("euler", 100), ("midpoint", 5)), reference=("heun", 1000)) -> dict:
    """Token RMS error of each form on the pretrained course generator's real conditions.

    :return: {cfg: {"token_rms", "reference_error", (solver, steps, form): {"vs_reference", "vs_plain"}}}.
    """
    from minieq.bench.solvers import _rms, heldout_conditions
    from minieq.pretrained import pretrained_generator, pretrained_tokenizer

    gen, scale = pretrained_generator("cpu")
    c, u = heldout_conditions(gen, pretrained_tokenizer("cpu"), scale, num_images)
    head = gen.head
    noise = torch.randn(c.shape[0], head.channels, generator=torch.Generator().manual_seed(0))
    results = {}
    for cfg in (1.0, 3.0):
        def solve(form, solver, steps):
            head.sampling_form = form
            return head.sample(c, None if cfg == 1.0 else u, cfg, noise=noise, solver=solver, steps=steps)

        ref = solve("plain", *reference)
        r = dict(token_rms=_rms(ref), reference_error=_rms(solve("plain", reference[0], reference[1] // 4) - ref) / 15)
        for solver, steps in settings:
            base = solve("plain", solver, steps)
            for form in FORMS:
                out = solve(form, solver, steps)
                r[solver, steps, form] = dict(vs_reference=_rms(out - ref), vs_plain=_rms(out - base))
        results[cfg] = r
    head.sampling_form = "fp32"
    return results


def print_errors(results: dict) -> None:
    print("\ntoken RMS error, pretrained course generator (8 held-out images x 16 tokens, cond + null rows):")
    for cfg, r in results.items():
        print(f"cfg {cfg:g}: token RMS {r['token_rms']:.3f}; reference heun-1000 (plain, its own error "
              f"~{r['reference_error']:.1e})")
        for key, e in r.items():
            if isinstance(key, tuple):
                print(f"  {key[0]}-{key[1]:<4} {key[2]:>5}: vs reference {e['vs_reference']:.2e}, "
                      f"vs plain same setting {e['vs_plain']:.2e}")


def _setting(text: str) -> tuple[str, int]:
    solver, _, steps = text.partition(":")
    if solver not in SOLVERS or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(f"expected SOLVER:STEPS with SOLVER in {SOLVERS}, got {text!r}")
    return solver, int(steps)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="S", choices=sorted(GeneratorConfig.PRESETS))
    parser.add_argument("--rows", type=int, nargs="+", default=[2, 16, 64],
                        help="rows per head call (even: batch x 2 with guidance)")
    parser.add_argument("--solver", type=_setting, default=("midpoint", 5), help="SOLVER:STEPS of the timed solve")
    parser.add_argument("--repeats", type=int, default=5, help="timed solves per form (minimum kept)")
    parser.add_argument("--error", action="store_true", help="also the forms' token error on the course generator")
    args = parser.parse_args(argv)
    head = build_head(args.preset)
    cfg = GeneratorConfig.preset(args.preset)
    copy_gbps, read_gbps = _copy_bandwidth() / 1e9, _read_bandwidth() / 1e9
    solver, steps = args.solver
    print(f"flow head {args.preset} ({cfg.head_depth} x {cfg.head_width}), one token's {solver}-{steps} solve "
          f"({head_calls(solver, steps)} calls), cfg {CFG:g}, torch threads {torch.get_num_threads()}, "
          f"CPU time of this process")
    results = {}
    for rows in args.rows:
        results[rows] = profile(head, max(1, rows // 2), solver, steps, args.repeats)
        print_profile(results[rows], 2 * max(1, rows // 2), copy_gbps, read_gbps)
    if args.error:
        results["error"] = form_errors()
        print_errors(results["error"])
    return results


if __name__ == "__main__":
    main()
