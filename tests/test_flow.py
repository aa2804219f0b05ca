"""The flow-matching head: embedding, init, loss, Euler sampler, CFG, temperature."""
import torch

from minieq.flow import FlowHead, timestep_embedding


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
    # v̂ = 0, target ε − x0 has variance 2 per channel (spec §3.6).
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
    assert torch.allclose(head.sample(c, noise=noise, num_steps=1), expected, atol=1e-6)


def test_cfg_combines_velocities():
    head = _head()
    c, u, noise = torch.randn(3, 16), torch.randn(3, 16), torch.randn(3, 6)
    # Scale 1 keeps the conditional velocity, 0 the unconditional one.
    assert torch.allclose(head.sample(c, u, cfg=1.0, noise=noise), head.sample(c, noise=noise), atol=1e-5)
    assert torch.allclose(head.sample(c, u, cfg=0.0, noise=noise), head.sample(u, noise=noise), atol=1e-5)
    one = head.sample(c, u, cfg=3.0, noise=noise, num_steps=1)
    v_c, v_u = head.velocity(noise, torch.ones(3), c), head.velocity(noise, torch.ones(3), u)
    assert torch.allclose(one, noise - (v_u + 3.0 * (v_c - v_u)), atol=1e-5)
