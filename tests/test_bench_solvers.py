"""The solver benchmark: the error curve and the pick (values, not timings)."""
import torch

from minieq.bench.solvers import error_curve, pick_setting
from minieq.flow import FlowHead, head_calls


def test_error_curve_shrinks_with_steps_and_the_pick_is_the_cheapest_within_budget():
    torch.manual_seed(0)
    head = FlowHead(channels=4, width=32, cond_dim=8, depth=2)
    with torch.no_grad():  # the zero-init head has v = 0: every solver would be exact
        for p in head.parameters():
            p.add_(0.3 * torch.randn_like(p))
    c, u = torch.randn(16, 8), torch.randn(16, 8)
    settings = {"euler": (10, 100), "heun": (2, 5, 20), "midpoint": (3, 8)}
    curves = {s: error_curve(head, c, u, s, settings, reference=("heun", 200)) for s in (1.0, 3.0)}
    tables = [{(r["solver"], r["steps"]): r["rms"] for r in curve["rows"]} for curve in curves.values()]
    for curve, rms in zip(curves.values(), tables):
        assert rms["euler", 100] < rms["euler", 10] and rms["heun", 20] < rms["heun", 2]
        assert 0 < curve["reference_error"] < 0.1 * rms["heun", 20]
    picked = pick_setting(curves)
    key = picked["solver"], picked["steps"]
    assert all(rms[key] <= rms["euler", 100] for rms in tables)
    # Every cheaper setting misses the budget in at least one curve.
    for other in tables[0]:
        if head_calls(*other) < picked["head_calls"]:
            assert any(rms[other] > rms["euler", 100] for rms in tables)
