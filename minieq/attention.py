"""Windowed causal self-attention, class cross-attention, RoPE and the transformer Block.

Shape legend: B batch, T image tokens (columns) in this call, S buffer (class) tokens,
D width, H heads, E head dim (D / H), K keys kept by the sliding KV cache.

The generator's Block (docs/official_code.md#generator-block) updates the image tokens with
1. windowed causal self-attention (Sec. 3.2: token i sees tokens i - cond_length .. i),
2. cross-attention from the image tokens to the 16 class ("buffer") tokens,
3. an MLP applied to image and buffer tokens alike.
Module names (``norm1``, ``attn.qkv``, ``attn2.k`` ...) equal the official checkpoint keys, so
official weights load 1:1 (docs/official_code.md#generator-checkpoint).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def windowed_causal_mask(n: int, cond_length: int, device=None) -> torch.Tensor:
    """Boolean (n, n) attention mask, True = query i may attend to key j.

    allowed(i, j) <=> i - cond_length <= j <= i (docs/official_code.md#windowed-causal-mask). Each
    token sees itself and the ``cond_length`` previous tokens; ``cond_length = 0`` means plain
    (full) causal attention.

    :param n: number of image tokens.
    :param cond_length: how many previous tokens a token sees (0 = all of them).
    :return: bool tensor (n, n).
    """
    if cond_length < 0:
        raise ValueError(f"cond_length must be >= 0, got {cond_length}")
    i = torch.arange(n, device=device)[:, None]  # (n, 1) query index
    j = torch.arange(n, device=device)[None, :]  # (1, n) key index
    allowed = j <= i
    if cond_length > 0:
        allowed &= j >= i - cond_length
    return allowed


class RotaryTable:
    """Cached RoPE angles (docs/official_code.md#rope-and-random-shift), grown on demand, one table
    per device.

    Pairs are interleaved, (x_{2j}, x_{2j+1}), rotated by p·θ_j with θ_j = base^(-2j/E).
    The table is plain state, not a buffer, so it never enters a state dict (the official
    checkpoints have no buffers) and it is computed once instead of in every forward.
    """

    def __init__(self, head_dim: int, base: float = 10000.0):
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
        self.head_dim = head_dim
        self.base = base
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, start: int, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for positions start .. start+length-1, each (length, E/2) in fp32."""
        device = torch.device(device)
        cos, sin = self._tables.get(device, (None, None))
        if cos is None or cos.shape[0] < start + length:
            size = max(2 * (start + length), 64)
            even = torch.arange(0, self.head_dim, 2, device=device).float()  # 2j for j < E/2
            freqs = 1.0 / (self.base ** (even / self.head_dim))  # θ_j
            angles = torch.outer(torch.arange(size, device=device).float(), freqs)  # (size, E/2)
            cos, sin = torch.cos(angles), torch.sin(angles)
            self._tables[device] = (cos, sin)
        return cos[start:start + length], sin[start:start + length]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of ``x`` (B, H, T, E) by the angles in cos/sin (T, E/2), in fp32."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)  # (B, H, T, E/2, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1)  # (B, H, T, E/2, 2)
    return rotated.flatten(-2).type_as(x)  # (B, H, T, E)


class LayerCache:
    """Sliding-window K/V of one self-attention layer for incremental (token by token) sampling.

    Keys are stored already rotated, so a new query only needs its own rotation. ``keep`` is the
    number of keys the window needs (cond_length + 1); ``None`` keeps everything (full causal).
    """

    def __init__(self, keep: int | None):
        self.keep = keep
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new (B, H, 1, E) key/value, drop those outside the window, return all kept."""
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)  # (B, H, K+1, E)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        if self.keep is not None and self.k.shape[2] > self.keep:
            self.k, self.v = self.k[:, :, -self.keep:], self.v[:, :, -self.keep:]  # (B, H, K, E)
        return self.k, self.v

    def nbytes(self) -> int:
        """Bytes held by the cached keys and values."""
        return sum(t.numel() * t.element_size() for t in (self.k, self.v) if t is not None)


class SelfAttention(nn.Module):
    """Multi-head self-attention with RoPE on q and k; fused ``qkv`` laid out as (3, H, E)."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float, proj_drop: float):
        super().__init__()
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x, cos, sin, mask=None, cache: LayerCache | None = None):
        T = x.shape[1]
        # (B, T, 3·D) -> 3 × (B, H, T, E); the official fused layout is (3, H, E) per token.
        q, k, v = rearrange(self.qkv(x), "b t (three h e) -> three b h t e", three=3, h=self.num_heads)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            # Sampling: the cache holds exactly the keys the window allows, so no mask.
            if T != 1:
                raise ValueError(f"the KV-cache path takes one new token at a time, got {T}")
            k, v = cache.extend(k, v)  # (B, H, K, E)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(rearrange(out, "b h t e -> b t (h e)")))  # (B, H, T, E) -> (B, T, D)


class CrossAttention(nn.Module):
    """Image tokens (queries) attend to all buffer tokens; RoPE on the query only
    (docs/official_code.md#generator-block).

    The query Linear is called ``qkv`` only because the official checkpoint calls it so.
    """

    def __init__(self, dim: int, num_heads: int, attn_drop: float, proj_drop: float):
        super().__init__()
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, "b t (h e) -> b h t e", h=self.num_heads)  # (B, T, D) -> (B, H, T, E)

    def keys_values(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of the (already normalised) buffer tokens, each (B, H, S, E)."""
        return self._heads(self.k(cond)), self._heads(self.v(cond))

    def forward(self, x, kv, cos, sin):
        q = apply_rotary(self._heads(self.qkv(x)), cos, sin)  # (B, H, T, E)
        out = F.scaled_dot_product_attention(
            q, *kv, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(rearrange(out, "b h t e -> b t (h e)")))  # (B, H, T, E) -> (B, T, D)


class Mlp(nn.Module):
    """fc1 -> exact GELU -> dropout -> fc2 -> dropout (timm's Mlp with proj_drop,
    docs/official_code.md#generator-sizes)."""

    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """One generator block (docs/official_code.md#generator-block), split into the image path and
    the buffer path.

    The buffer tokens are never mixed by attention: they change only through the MLP, so they
    depend only on the class. Splitting the block (``buffer_step`` for them, ``forward`` for the
    image tokens) lets the sampler run the buffer path and the cross-attention K/V once per
    sample instead of once per token. Applying the MLP to the two groups separately equals the
    official MLP on their concatenation (it is per token).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0,
                 attn_drop: float = 0.1, proj_drop: float = 0.1):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads, attn_drop, proj_drop)
        # The official block uses nn.LayerNorm's default eps here (1e-5), unlike the others.
        self.cross_norm = nn.LayerNorm(dim, eps=1e-5)
        self.cross_cond_norm = nn.LayerNorm(dim, eps=1e-5)
        self.attn2 = CrossAttention(dim, num_heads, attn_drop, proj_drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), proj_drop)

    def cross_kv(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention K/V of this layer's buffer tokens cond (B, S, D)."""
        return self.attn2.keys_values(self.cross_cond_norm(cond))

    def buffer_step(self, cond: torch.Tensor) -> torch.Tensor:
        """The buffer tokens' update: the MLP only (B, S, D) -> (B, S, D)."""
        return cond + self.mlp(self.norm2(cond))

    def forward(self, x, kv, cos, sin, mask=None, cache: LayerCache | None = None):
        """The image tokens' update (B, T, D) -> (B, T, D), given this layer's cross K/V.

        ``mask`` (T, T) is the windowed causal mask of a full sequence; when sampling with a
        ``cache``, x is the one new token and the cache supplies the keys its window allows.
        """
        x = x + self.attn(self.norm1(x), cos, sin, mask, cache)
        x = x + self.attn2(self.cross_norm(x), kv, cos, sin)
        return x + self.mlp(self.norm2(x))
