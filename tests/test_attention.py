"""Windowed causal mask, RoPE table, attention layers and the Block's incremental (cached) path."""
import math

import pytest
import torch

from minieq.attention import Block, LayerCache, RotaryTable, SelfAttention, apply_rotary, windowed_causal_mask


def test_mask_no_future_and_exact_window():
    n, c = 9, 3
    mask = windowed_causal_mask(n, c)
    assert mask.dtype == torch.bool and mask.shape == (n, n)
    for i in range(n):
        allowed = mask[i].nonzero().flatten().tolist()
        # docs/official_code.md#windowed-causal-mask: row 0 sees {0}, row 3 {0..3}, row 4 {1..4}:
        # itself + the c previous tokens.
        assert allowed == list(range(max(0, i - c), i + 1))
    assert not mask.triu(1).any()  # nothing in the future


def test_mask_cond_zero_is_full_causal():
    n = 7
    assert torch.equal(windowed_causal_mask(n, 0), torch.ones(n, n).tril().bool())
    with pytest.raises(ValueError):
        windowed_causal_mask(n, -1)


def test_rotary_table_values_and_growth():
    table = RotaryTable(head_dim=8)
    cos_small, sin_small = table(3, 2, "cpu")
    cos_big, sin_big = table(100, 300, "cpu")  # grows the table
    cos_again, _ = table(3, 2, "cpu")
    assert cos_big.shape == (300, 4) and torch.equal(cos_small, cos_again)
    # θ_j = 10000^(-2j/E): position 4, pair j = 1 -> angle 4 · 10000^(-2/8).
    assert math.isclose(float(sin_small[1, 1]), math.sin(4 * 10000 ** (-2 / 8)), rel_tol=1e-5)
    assert cos_small.dtype == torch.float32


def test_rope_dot_product_depends_only_on_offset():
    torch.manual_seed(0)
    table = RotaryTable(head_dim=16)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(pq, pk):
        return float((apply_rotary(q, *table(pq, 1, "cpu")) * apply_rotary(k, *table(pk, 1, "cpu"))).sum())

    assert math.isclose(score(5, 2), score(25, 22), rel_tol=1e-4)
    assert math.isclose(score(3, 3), float((q * k).sum()), rel_tol=1e-4)
    assert not math.isclose(score(5, 2), score(5, 4), rel_tol=1e-3)
    # Rotations keep the norm.
    assert torch.allclose(apply_rotary(q, *table(7, 1, "cpu")).norm(), q.norm())


def test_self_attention_is_shift_invariant():
    torch.manual_seed(0)
    attn = SelfAttention(32, 4, attn_drop=0.0, proj_drop=0.0).eval()
    table = RotaryTable(8)
    x = torch.randn(2, 6, 32)
    mask = windowed_causal_mask(6, 2)
    out0 = attn(x, *table(0, 6, "cpu"), mask)
    out9 = attn(x, *table(9, 6, "cpu"), mask)  # every position + 9: same relative offsets
    assert torch.allclose(out0, out9, atol=1e-5)


def test_layer_cache_keeps_the_window():
    cache = LayerCache(keep=4)
    for step in range(10):
        k, v = cache.extend(torch.full((1, 2, 1, 3), float(step)), torch.zeros(1, 2, 1, 3))
    assert k.shape == (1, 2, 4, 3) and k[0, 0, :, 0].tolist() == [6, 7, 8, 9]
    grow = LayerCache(keep=None)
    for step in range(10):
        grow.extend(torch.zeros(1, 2, 1, 3), torch.zeros(1, 2, 1, 3))
    assert grow.k.shape[2] == 10 and grow.nbytes() == 2 * 10 * 2 * 3 * 4


@pytest.mark.parametrize("cond_length", [2, 0])
def test_block_incremental_equals_full(cond_length):
    """Feeding tokens one at a time through the KV cache equals the masked full-sequence block."""
    torch.manual_seed(0)
    block = Block(32, 4, attn_drop=0.1, proj_drop=0.1).eval()
    table = RotaryTable(8)
    x, cond = torch.randn(2, 7, 32), torch.randn(2, 5, 32)
    kv = block.cross_kv(cond)
    full = block(x, kv, *table(0, 7, "cpu"), windowed_causal_mask(7, cond_length))
    cache = LayerCache(cond_length + 1 if cond_length else None)
    rows = [block(x[:, i:i + 1], kv, *table(i, 1, "cpu"), cache=cache) for i in range(7)]
    assert torch.allclose(torch.cat(rows, dim=1), full, atol=1e-5)
