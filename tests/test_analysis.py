"""Tests for minieq.analysis on tiny random models and synthetic images (CPU, seconds)."""
import pytest
import torch

from minieq import analysis
from minieq.attention import CrossAttention, RotaryTable, SelfAttention, windowed_causal_mask
from minieq.generator import Generator, GeneratorConfig
from minieq.synthscapes import render_synthscapes


def tiny_generator(depth: int, variant: str = "window", cond_length: int = 3) -> Generator:
    torch.manual_seed(0)
    cfg = GeneratorConfig.preset("tiny", depth=depth, attention=variant, cond_length=cond_length)
    return Generator(cfg).eval()


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_receptive_field_grows_by_cond_length_per_layer(depth):
    n, c = 16, 3
    dep = analysis.receptive_field(tiny_generator(depth), n)
    assert dep.shape == (n, n) and dep.dtype == torch.bool
    for k in range(n):
        # Row k conditions token k: it sees tokens max(0, k - c·depth - 1) .. k - 1 and nothing else
        # (row 0 is the class alone; docs/official_code.md#windowed-causal-mask).
        expected = torch.zeros(n, dtype=torch.bool)
        expected[max(0, k - 1 - c * depth):k] = True
        assert torch.equal(dep[k], expected), (k, dep[k])


def test_receptive_field_is_causal_for_full_attention():
    dep = analysis.receptive_field(tiny_generator(2, variant="full"), 12)
    assert torch.equal(dep, torch.ones(12, 12, dtype=torch.bool).tril(-1))


def test_receptive_field_of_strict_variant_stays_bounded():
    window = analysis.receptive_field(tiny_generator(4), 20).sum(1)
    strict = analysis.receptive_field(tiny_generator(4, variant="strict"), 20).sum(1)
    assert strict.max() <= 3 + 1 and strict[-1] < window[-1]


def test_receptive_field_restores_training_mode():
    gen = tiny_generator(1).train()
    analysis.receptive_field(gen, 4)
    assert gen.training


def _attend_fns(cross: bool):
    torch.manual_seed(0)
    dim, heads, n = 32, 4, 10
    table = RotaryTable(dim // heads)
    if cross:
        attn = CrossAttention(dim, heads, 0.0, 0.0).eval()
        kv = attn.keys_values(torch.randn(2, 16, dim))
        return lambda x, o: attn(x, kv, *table(o, n, "cpu")), n, dim
    attn = SelfAttention(dim, heads, 0.0, 0.0).eval()
    mask = windowed_causal_mask(n, 3)
    return lambda x, o: attn(x, *table(o, n, "cpu"), mask), n, dim


def test_self_attention_with_rope_is_shift_invariant_and_cross_attention_is_not():
    fn, n, dim = _attend_fns(cross=False)
    x = torch.randn(2, n, dim)
    assert analysis.shift_invariance_error(fn, x) < 1e-4
    fn, n, dim = _attend_fns(cross=True)
    assert analysis.shift_invariance_error(fn, x) > 1e-2


def test_per_position_loss_matches_mean_loss_and_is_reproducible():
    gen = tiny_generator(1)
    torch.manual_seed(1)
    latents, labels = torch.randn(6, 8, gen.config.token_dim), torch.arange(6) % 8
    a = analysis.per_position_loss(gen, latents, labels, repeats=2, batch_size=4)
    b = analysis.per_position_loss(gen, latents, labels, repeats=2, batch_size=4)
    assert a.shape == (8,) and torch.equal(a, b)
    # An untrained head predicts v = 0, so each position's loss is E|ε - x0|² ≈ 2
    # (docs/official_code.md#flow-head).
    assert torch.allclose(a, torch.full((8,), 2.0), atol=0.5)
    with pytest.raises(ValueError):
        analysis.per_position_loss(gen, latents[0], labels)


def test_column_statistics_pools_columns():
    x = torch.zeros(2, 3, 4, 8)
    x[..., 4:] = 1.0
    x[:, 0, 0, :4] = 2.0  # one row of the left half differs: nonzero variance there
    stats = analysis.column_statistics(x)
    assert stats["mean"].shape == (3, 8) and torch.allclose(stats["mean"][1], torch.tensor([0.0] * 4 + [1.0] * 4))
    pooled = analysis.column_statistics(x, column_width=4)
    assert pooled["mean"].shape == (3, 2)
    assert torch.allclose(pooled["mean"][0], torch.tensor([0.5, 1.0]))
    assert pooled["var"][0, 0] > 0 and pooled["var"][0, 1] == 0
    with pytest.raises(ValueError):
        analysis.column_statistics(x, column_width=3)


def test_seam_score_detects_blocky_columns():
    torch.manual_seed(0)
    smooth = render_synthscapes(torch.arange(8), height=32, width=256, seed=3)
    assert 0.7 < analysis.seam_score(smooth, 8) < 1.3
    # Each 8-px column gets its own brightness offset: strong seams at the boundaries.
    blocky = smooth + torch.randn(8, 3, 1, 32).repeat_interleave(8, dim=-1) * 0.3
    assert analysis.seam_score(blocky, 8) > 2.0
    with pytest.raises(ValueError):
        analysis.seam_score(smooth, 7)


def test_strip_statistics_reference_vs_itself_and_vs_a_drifting_strip():
    labels = torch.zeros(16, dtype=torch.long)
    ref = render_synthscapes(torch.zeros(32, dtype=torch.long), height=32, width=256, seed=0)
    good = render_synthscapes(labels, height=32, width=256, seed=1)
    out = analysis.strip_statistics(good, ref, column_width=8, trained_tokens=16)
    assert out["mean_dist"].shape == (32,)
    # A drifting strip: the colours fade to grey from left to right.
    fade = torch.linspace(1, 0, 256)
    bad = good * fade
    worse = analysis.strip_statistics(bad, ref, column_width=8, trained_tokens=16)
    s, w = out["summary"], worse["summary"]
    assert w["mean_dist"] > 2 * s["mean_dist"] and w["energy_dist"] > s["energy_dist"]
    assert w["mean_dist_beyond"] > w["mean_dist_trained"]
    # Independent ground truth is about as far from the reference as the reference's own halves.
    assert s["mean_dist"] < 3 * s["floor_mean_dist"] + 0.05
    with pytest.raises(ValueError):
        analysis.strip_statistics(good[:, :, :, :128], ref, column_width=8)
    with pytest.raises(ValueError, match="2 × 16"):
        analysis.strip_statistics(good, ref[:31], column_width=8)


def test_strip_statistics_floor_compares_samples_of_the_generated_size():
    # "Generated" strips that are the reference's first half score exactly the floor: both
    # distances compare the same B strips with the same other B strips.
    ref = render_synthscapes(torch.zeros(12, dtype=torch.long), height=32, width=128, seed=0)
    out = analysis.strip_statistics(ref[:6], ref, column_width=8)
    for key in ("mean_dist", "std_dist", "energy_dist"):
        torch.testing.assert_close(out[key], out[f"floor_{key}"])
    # Blurring along x keeps the colour means but loses texture energy.
    blurred = torch.nn.functional.avg_pool2d(ref[:6], (1, 9), stride=1, padding=(0, 4),
                                             count_include_pad=False)
    s = analysis.strip_statistics(blurred, ref, column_width=8)["summary"]
    assert s["energy_generated"] < 0.6 * s["energy_reference"]
    assert s["energy_dist"] > 3 * s["floor_energy_dist"]


def test_time_sampling_reports_both_modes_and_identical_outputs():
    gen = tiny_generator(1)
    gen.head.num_sampling_steps = 2
    rows = analysis.time_sampling(gen, [3, 5])
    assert [r["num_tokens"] for r in rows] == [3, 5]
    for r in rows:
        assert r["cached_s"] > 0 and r["full_s"] > 0 and r["speedup"] > 0
        assert r["max_diff"] < 1e-4


def test_strip_statistics_texture_energy_counts_pairs_inside_each_column():
    # Column k is a ramp of slope a_k inside the column, with jumps at the boundaries: the
    # texture energy of column k must be |a_k|, unaffected by the boundary jumps.
    slopes = torch.tensor([0.1, 0.3, 0.0, 0.2])
    ramp = torch.arange(4.0)  # 4-px columns
    row = torch.cat([a * ramp + 5 * k for k, a in enumerate(slopes)])  # (16,)
    images = row.expand(2, 3, 2, 16)
    out = analysis.strip_statistics(images, torch.zeros(4, 3, 2, 16), column_width=4)
    assert torch.allclose(out["energy_dist"], slopes, atol=1e-6)
    assert torch.allclose(out["floor_energy_dist"], torch.zeros(4))
