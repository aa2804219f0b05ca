"""The solver benchmark: the error curve and the pick (values, not timings)."""
import torch

from minieq.bench.solvers import balanced_samples, error_curve, fd_check, pick_setting
from minieq.flow import FlowHead, SamplingOptions, head_calls


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


def test_balanced_samples_cycle_the_classes_with_one_seed_per_batch(micro_pipe):
    euler = SamplingOptions(solver="euler", steps=2, cfg=2.0)
    images = balanced_samples(micro_pipe, 5, seed=3, options=euler, batch=2)
    assert images.shape[0] == 5 and torch.equal(images, balanced_samples(micro_pipe, 5, 3, euler, batch=2))
    # Labels cycle 0, 1, ...; batches [0, 1], [2, 3], [4] draw with seeds 3000, 3001, 3002: the
    # fourth image is the second of the middle batch.
    assert torch.equal(images[3:4], micro_pipe.generate([2, 3], options=euler, seed=3001)[1:])
    assert not torch.equal(images, balanced_samples(micro_pipe, 5, 4, euler, batch=2))


def test_fd_check_scores_each_setting(micro_pipe):
    rows = fd_check(micro_pipe, [("euler", 2, 0), ("midpoint", 1, 0)], num_images=8, batch=4)
    assert [(r["solver"], r["steps"], r["seed"]) for r in rows] == [("euler", 2, 0), ("midpoint", 1, 0)]
    assert all(r["fd_lite0"] > 0 and r["sampling_seconds"] > 0 for r in rows)
