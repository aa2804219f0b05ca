"""The flow-matching head: embedding, init, loss, ODE solvers, CFG, temperature."""
import math

import pytest
import torch

from minieq.flow import SOLVERS, FlowHead, SamplingOptions, head_calls, integrate, timestep_embedding
from minieq.head_inference import FORMS


def _head(seed=0, randomize=True):
    torch.manual_seed(seed)
    head = FlowHead(channels=6, width=32, cond_dim=16, depth=2, num_sampling_steps=8)
    if randomize:  # the zero init makes v = 0; perturb so the tests see a real network
        with torch.no_grad():
            for p in head.parameters():
                p.add_(0.2 * torch.randn_like(p))
    return head


def test_timestep_embedding_is_cos_then_sin():
    emb = timestep_embedding(torch.tensor([0.0, 0.5]), dim=8)
    assert emb.shape == (2, 8)
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert torch.allclose(emb[1, 0], torch.cos(torch.tensor(0.5)))  # frequency 1 first


def test_zero_init_predicts_zero_and_loss_is_about_two():
    head = _head(randomize=False)
    x0, c = torch.randn(4096, 6), torch.randn(4096, 16)
    assert torch.equal(head.velocity(x0, torch.rand(4096), c), torch.zeros(4096, 6))
    rows = head.loss(x0, c)
    assert rows.shape == (4096,) and torch.isfinite(rows).all()
    # v̂ = 0, target ε − x0 has variance 2 per channel (docs/official_code.md#flow-head).
    assert abs(rows.mean().item() - 2.0) < 0.1


def test_loss_backward_and_reproducible_with_generator():
    head = _head()
    x0, c = torch.randn(10, 6), torch.randn(10, 16)
    a = head.loss(x0, c, generator=torch.Generator().manual_seed(1))
    b = head.loss(x0, c, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    a.mean().backward()
    assert head.net.final_layer.linear.weight.grad.abs().sum() > 0


def test_euler_sampler_shape_noise_and_temperature():
    head = _head()
    c, noise = torch.randn(3, 16), torch.randn(3, 6)
    out = head.sample(c, noise=noise)
    assert out.shape == (3, 6) and torch.isfinite(out).all()
    assert torch.equal(out, head.sample(c, noise=noise))
    # With the zero-init network (v = 0) the sampler returns its initial noise: temperature · ε.
    zero = _head(randomize=False)
    assert torch.allclose(zero.sample(c, noise=noise, temperature=0.5), 0.5 * noise)
    assert not torch.allclose(head.sample(c, noise=noise, temperature=0.5), out)


def test_euler_steps_follow_the_velocity():
    """One Euler step from t = 1 is z − v(z, 1, c)."""
    head = _head()
    c, noise = torch.randn(3, 16), torch.randn(3, 6)
    expected = noise - head.velocity(noise, torch.ones(3), c)
    assert torch.allclose(head.sample(c, noise=noise, steps=1), expected, atol=1e-6)


def test_cfg_combines_velocities():
    head = _head()
    c, u, noise = torch.randn(3, 16), torch.randn(3, 16), torch.randn(3, 6)
    # Scale 1 keeps the conditional velocity, 0 the unconditional one.
    assert torch.allclose(head.sample(c, u, cfg=1.0, noise=noise), head.sample(c, noise=noise), atol=1e-5)
    assert torch.allclose(head.sample(c, u, cfg=0.0, noise=noise), head.sample(u, noise=noise), atol=1e-5)
    one = head.sample(c, u, cfg=3.0, noise=noise, steps=1)
    v_c, v_u = head.velocity(noise, torch.ones(3), c), head.velocity(noise, torch.ones(3), u)
    assert torch.allclose(one, noise - (v_u + 3.0 * (v_c - v_u)), atol=1e-5)


# ---- solvers ---------------------------------------------------------------------------------------

def _official_euler(head, c, uncond, cfg, noise, steps):
    """The sampler as it was before the solvers (and as the official code): one head.velocity
    call per step on freshly concatenated guided/unguided rows."""
    z = noise.clone()
    for i in range(steps, 0, -1):
        t = torch.full((z.shape[0],), i / steps)
        if uncond is None:
            v = head.velocity(z, t, c)
        else:
            v_c, v_u = head.velocity(torch.cat([z, z]), torch.cat([t, t]), torch.cat([c, uncond])).chunk(2)
            v = v_u + cfg * (v_c - v_u)
        z = z - v / steps
    return z


def test_default_sampler_is_the_official_euler_bit_for_bit():
    """With the modules ("plain") bit for bit; the default packed form agrees to round-off."""
    head = _head()
    c, u, noise = torch.randn(5, 16), torch.randn(5, 16), torch.randn(5, 6)
    with torch.no_grad():
        for form, check in (("plain", _assert_equal), ("fp32", torch.testing.assert_close)):
            head.sampling_form = form
            check(head.sample(c, noise=noise), _official_euler(head, c, None, 1.0, noise, 8))
            check(head.sample(c, u, cfg=3.0, noise=noise), _official_euler(head, c, u, 3.0, noise, 8))
            check(head.sample(c, u, cfg=3.0, noise=noise, solver="euler", steps=5),
                  _official_euler(head, c, u, 3.0, noise, 5))


def _assert_equal(a, b):
    assert torch.equal(a, b)


@pytest.mark.parametrize("solver, order", [("euler", 1), ("heun", 2), ("midpoint", 2)])
def test_solver_order_of_convergence_on_an_analytic_ode(solver, order):
    """dz/dt = 2 cos(t) z has z(0) = z(1) exp(-2 sin 1): halving the step divides the error by 2^order."""
    z1 = torch.tensor([[1.0, -0.5, 2.0]], dtype=torch.float64)
    exact = z1 * math.exp(-2 * math.sin(1.0))
    errors = [(integrate(lambda z, t: 2 * math.cos(t) * z, z1, solver, n) - exact).abs().max().item()
              for n in (128, 256)]
    assert errors[0] / errors[1] == pytest.approx(2 ** order, rel=0.1)
    assert errors[1] < (1e-2 if order == 1 else 1e-5)


@pytest.mark.parametrize("solver", SOLVERS)
def test_cfg_is_the_same_velocity_combination_for_every_solver(solver):
    head = _head()
    c, u, noise = torch.randn(3, 16), torch.randn(3, 16), torch.randn(3, 6)

    def guided(z, t):  # v_u + s (v_c - v_u) from two separate head.velocity calls
        tt = torch.full((z.shape[0],), t)
        v_c, v_u = head.velocity(z, tt, c), head.velocity(z, tt, u)
        return v_u + 3.0 * (v_c - v_u)

    expected = integrate(guided, noise, solver, 4)
    torch.testing.assert_close(head.sample(c, u, cfg=3.0, noise=noise, solver=solver, steps=4), expected)
    # cfg 1 with the null rows is the conditional flow alone.
    torch.testing.assert_close(head.sample(c, u, cfg=1.0, noise=noise, solver=solver, steps=4),
                               head.sample(c, noise=noise, solver=solver, steps=4))


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("guided", [False, True])
@pytest.mark.parametrize("form", FORMS)
def test_head_calls_are_counted_per_token(solver, guided, form, head_call_rows):
    head = _head()
    head.sampling_form = form
    rows = head_call_rows
    c, u = torch.randn(3, 16), torch.randn(3, 16)
    head.sample(c, u if guided else None, cfg=2.0, solver=solver, steps=5)
    # One call per evaluation: guidance doubles its rows, not the number of calls.
    assert len(rows) == head_calls(solver, 5) == (5 if solver == "euler" else 10)
    assert set(rows) == {6 if guided else 3}
    rows.clear()
    head.sample(c, solver=solver)  # steps=None: the config's num_sampling_steps (8)
    assert len(rows) == head_calls(solver, 8)


def test_bad_solver_arguments():
    head = _head()
    c, noise = torch.randn(3, 16), torch.randn(3, 6)
    with pytest.raises(ValueError, match=r"unknown solver 'rk4'; choose one of \('euler', 'heun'"):
        head.sample(c, noise=noise, solver="rk4")
    with pytest.raises(ValueError, match="unknown solver"):
        head_calls("rk4", 3)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        head.sample(c, noise=noise, steps=0)


# ---- sampling options ------------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    (dict(solver="rk4"), r"unknown solver 'rk4'; choose one of \('euler', 'heun'"),
    (dict(steps=0), "steps must be an integer >= 1 or None"),
    (dict(steps=2.5), "steps must be an integer >= 1 or None"),
    (dict(steps=True), "steps must be an integer >= 1 or None"),
    (dict(cfg_schedule="cosine"), "cfg_schedule must be 'linear' or 'constant'"),
    (dict(cfg=-1.0), r"cfg must be a finite number >= 0 \(1.0 = no guidance\), got -1.0"),
    (dict(cfg=float("inf")), "cfg must be a finite number >= 0"),
    (dict(temperature=float("nan")), r"temperature must be a finite number >= 0 \(1.0 = the official"),
    (dict(temperature=-0.5), "temperature must be a finite number >= 0"),
    (dict(temperature="warm"), "temperature must be a finite number >= 0"),
])
def test_sampling_options_are_checked_once_with_one_clear_error(change, message):
    with pytest.raises(ValueError, match=message):
        SamplingOptions(**change)


def test_sampling_options_defaults_are_the_official_sampler_and_frozen():
    options = SamplingOptions()
    assert (options.solver, options.steps, options.cfg, options.cfg_schedule, options.temperature) == \
        ("euler", None, 1.0, "linear", 1.0)
    with pytest.raises(AttributeError):
        options.cfg = 3.0  # frozen: one object can be shared by many calls


def test_head_takes_options_or_keywords_not_both():
    head = _head()
    c, u, noise = torch.randn(3, 16), torch.randn(3, 16), torch.randn(3, 6)
    options = SamplingOptions(solver="heun", steps=3, cfg=2.5, temperature=0.7)
    assert torch.equal(head.sample(c, u, noise=noise, options=options),
                       head.sample(c, u, cfg=2.5, noise=noise, temperature=0.7, solver="heun", steps=3))
    with pytest.raises(ValueError, match="got options= and cfg=; put every setting in the options"):
        head.sample(c, u, cfg=2.0, noise=noise, options=options)
    with pytest.raises(TypeError, match="SamplingOptions"):
        head.sample(c, noise=noise, options={"solver": "heun"})
