"""The flow head's packed sampling form: the same velocity as the modules (fp32), a bounded bf16
error, a cache that follows the weights, and what the solvers evaluate."""
import math

import pytest
import torch

from minieq import head_inference
from minieq.few_step import FewStepNet
from minieq.flow import SOLVERS, FlowHead, integrate
from minieq.head_inference import PackedHead, PackedVelocity, evaluation_times, packed


def _head(seed=0) -> FlowHead:
    torch.manual_seed(seed)
    head = FlowHead(channels=6, width=32, cond_dim=16, depth=2, num_sampling_steps=8)
    with torch.no_grad():  # the zero init makes v = 0; perturb so the tests see a real network
        for p in head.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return head


def _few_step(head: FlowHead) -> FewStepNet:
    net = FewStepNet.from_head(head).requires_grad_(False)
    with torch.no_grad():  # a step embedding that is not zero, so y_cond carries it
        for p in net.step_embed.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return net


@pytest.fixture(params=["F.linear", "oneDNN"])
def kernel(request, monkeypatch):
    """Both matmul paths of the packed head: oneDNN prepacked weights (forced at these tiny sizes)
    where PyTorch has them, and F.linear."""
    if request.param == "oneDNN" and head_inference.prepack(torch.zeros(2**17, 1)).is_mkldnn is False:
        pytest.skip("this PyTorch build has no oneDNN")
    monkeypatch.setattr(head_inference, "ONEDNN_MIN_ELEMENTS", 0 if request.param == "oneDNN" else math.inf)
    return request.param


@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("which", ["teacher", "few_step"])
def test_packed_velocity_is_the_modules_velocity(kernel, rows, which):
    head = _head()
    net = head.net if which == "teacher" else _few_step(head)
    c = torch.randn(rows, 16)
    y_cond = net.cond_embed(c) if which == "teacher" else net.condition(c, 0.25, 2.0)  # (R, W)
    x, times = torch.randn(rows, 6), [1.0, 0.55, 1e-5]
    packed_head = PackedHead(net)
    mods = packed_head.modulations(times, y_cond)  # (T, R, K, W)
    with torch.no_grad():
        for j, t in enumerate(times):
            expected = net.forward_embedded(x, net.time_embed(torch.full((rows,), t)), y_cond)
            torch.testing.assert_close(packed_head(x, mods[j]), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("guided", [False, True])
def test_packed_samples_match_the_plain_samples(kernel, solver, guided, monkeypatch):
    head = _head()
    c, u, noise = torch.randn(4, 16), torch.randn(4, 16), torch.randn(4, 6)
    monkeypatch.setattr(head_inference, "BLOCK_ROWS", 8)  # several modulation blocks per solve

    def draw(form, **kw):
        head.sampling_form = form
        return head.sample(c, u if guided else None, 2.5, noise=noise, solver=solver, **kw)

    torch.testing.assert_close(draw("fp32", steps=7), draw("plain", steps=7), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(draw("fp32"), draw("plain"), rtol=1e-5, atol=1e-5)


def test_the_few_step_head_samples_packed_too(kernel):
    head = _head()
    head.few_step = _few_step(head)
    c, u, noise = torch.randn(3, 16), torch.randn(3, 16), torch.randn(3, 6)
    out = {}
    for form in ("plain", "fp32"):
        head.sampling_form = form
        out[form] = head.sample(c, u, 2.0, noise=noise, solver="distilled", steps=2)
    torch.testing.assert_close(out["fp32"], out["plain"], rtol=1e-5, atol=1e-5)


def test_bf16_error_is_small_but_real(kernel):
    head = _head()
    c, u, noise = torch.randn(64, 16), torch.randn(64, 16), torch.randn(64, 6)
    out = {}
    for form in ("plain", "bf16"):
        head.sampling_form = form
        out[form] = head.sample(c, u, 3.0, noise=noise, solver="midpoint", steps=4)
    relative = float((out["bf16"] - out["plain"]).norm() / out["plain"].norm())
    assert 1e-5 < relative < 2e-2  # bf16 really ran; its error stays at bf16's few parts per thousand


def test_solver_times_are_the_times_integrate_evaluates():
    for solver in SOLVERS:
        for steps in (1, 3, 10):
            seen = []
            integrate(lambda z, t: seen.append(t) or torch.zeros_like(z), torch.zeros(1, 2), solver, steps)
            assert seen == evaluation_times(solver, steps)  # the same floats, bit for bit


def test_a_time_outside_the_solve_still_gets_its_modulations():
    head = _head()
    y_cond = head.net.cond_embed(torch.randn(2, 16))
    velocity = PackedVelocity(packed(head.net, "fp32"), y_cond, False, 1.0, [1.0, 0.5])
    z = torch.randn(2, 6)
    expected = head.net.forward_embedded(z, head.net.time_embed(torch.full((2,), 0.3)), y_cond)
    torch.testing.assert_close(velocity(z, 0.3), expected, rtol=1e-5, atol=1e-5)


def test_the_cache_follows_the_weights():
    head = _head()
    c, noise = torch.randn(3, 16), torch.randn(3, 6)
    first = packed(head.net, "fp32")
    assert packed(head.net, "fp32") is first  # unchanged weights: built once
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
    head.loss(torch.randn(3, 6), c).mean().backward()  # training calls the modules, not the packed form
    optimizer.step()  # in-place update: the version counters move
    assert packed(head.net, "fp32") is not first

    def agree():
        head.sampling_form = "plain"
        plain = head.sample(c, noise=noise)
        head.sampling_form = "fp32"
        torch.testing.assert_close(head.sample(c, noise=noise), plain, rtol=1e-5, atol=1e-5)

    agree()
    head.load_state_dict(_head(seed=1).state_dict())  # copies into the same tensors
    agree()
    head.double().float()  # new storage for every parameter
    agree()
    keys = set(head.state_dict())
    assert all(k.startswith("net.") for k in keys)  # nothing of the packed form in the checkpoint
    with torch.no_grad():
        head.net.input_proj.weight.data.mul_(2)  # .data bypasses the version counter ...
    head_inference.forget(head.net)  # ... so it needs forget()
    agree()


def test_unknown_sampling_form_is_refused():
    head = _head()
    head.sampling_form = "fp16"
    with pytest.raises(ValueError, match="sampling_form must be one of"):
        head.sample(torch.randn(1, 16))
