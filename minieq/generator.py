"""The equivariant autoregressive generator (paper Sec. 3.2-3.3, docs/official_code.md#generator-block).

Shape legend: B batch, N tokens (columns), C token channels, D width, S buffer (class) tokens.

A stack of windowed-causal transformer blocks reads the (teacher-forced) tokens and gives one
condition vector per token; a flow-matching MLP head models each token given its condition.
Row k of ``condition`` conditions token k: row 0 is the last class ("buffer") token, row k >= 1 is
the hidden state of token k - 1 (the official output slice x[:, S-1 : S-1+N],
docs/official_code.md#generator-training-forward).

Variants (``GeneratorConfig.attention``; paper Table 4):
* ``"window"`` (the paper): token i attends to tokens i - cond_length .. i in every layer, so the
  receptive field grows by cond_length per layer (long-range context through depth).
* ``"full"``: plain causal attention (cond_length is ignored; the official ``--cond_length 0``).
* ``"strict"`` ("Real Equ.", Sec. 3.2): prediction k depends on at most the K = cond_length + 1
  previous tokens whatever the depth. The stack runs on every length-K window of previous tokens
  independently, always at positions 0..K-1, and keeps the window's last row.
``layout="grid"`` is the AR-MAR-2D baseline (Tables 1/3): the grid tokenizer's tokens in raster
order (row by row), token i at 1D RoPE position i (its raster index), with full causal attention,
like MAR's AR mode. A 1D window over raster order would not be a 2D neighbourhood, so "grid"
requires ``attention="full"``; ``shift_num=1`` turns the random position shift off.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from minieq.attention import Block, LayerCache, RotaryTable, windowed_causal_mask
from minieq.checkpoint import register_model
from minieq.config import ConfigBase
from minieq.flow import FlowHead, SamplingOptions
from minieq.generator_sampling import CachedStream, RecomputeStream, StrictStream, sampling_loop


# The course's FAST generator (0.53 M params, minutes on a CPU): "tiny" at half its width with a
# smaller flow head. The trainers' "tiny"/"fast" presets store it as model="tiny" + these overrides.
FAST_SIZES = dict(embed_dim=64, depth=4, num_heads=2, head_width=128, head_depth=2)


@dataclass
class GeneratorConfig(ConfigBase):
    """Generator hyper-parameters (paper Tables 7/8, docs/official_code.md#generator-sizes).
    Presets: tiny fast course_gpu S B L H."""

    token_dim: int = 256             # C, the tokenizer's channels
    num_classes: int = 1000
    embed_dim: int = 1024            # D
    depth: int = 32                  # transformer blocks (official encoder_depth + decoder_depth)
    num_heads: int = 16
    mlp_ratio: float = 4.0
    buffer_size: int = 16            # S class tokens
    head_width: int = 1280           # flow head MLP width (official diffloss_w)
    head_depth: int = 12             # flow head residual blocks (official diffloss_d)
    attn_dropout: float = 0.1
    proj_dropout: float = 0.1        # also inside the MLP, as timm's Block does
    attention: str = "window"        # "window" | "full" | "strict" (see module docstring)
    cond_length: int = 3             # previous tokens seen per layer; 0 with "window" = full causal
    layout: str = "column"           # "column" (paper) | "grid" (AR-MAR-2D baseline, raster order)
    shift_num: int = 16              # training RoPE position shift drawn from [0, shift_num)
    num_sampling_steps: int = 100    # Euler steps of the flow head
    label_drop: float = 0.1          # class dropout for classifier-free guidance
    diffusion_batch_mul: int = 4     # each token's flow loss is drawn this many times per step
    grad_checkpointing: bool = False

    PRESETS = {
        "tiny": dict(token_dim=16, num_classes=8, embed_dim=128, depth=4, num_heads=4,
                     head_width=256, head_depth=3, num_sampling_steps=25),
        "S": dict(embed_dim=512, depth=16, num_heads=8, head_width=960),
        "B": dict(embed_dim=768, depth=24, num_heads=12, head_width=1024),
        "L": dict(embed_dim=1024, depth=32, num_heads=16, head_width=1280),
        "H": dict(embed_dim=1280, depth=40, num_heads=16, head_width=1536),
        # One GPU (the course's full mode), for the "course_gpu" tokenizer's 64-channel tokens:
        # 12 blocks of width 384 (ViT-S) and a 6 × 768 flow head, 48.5 M parameters (tiny 0.5 M,
        # S 127 M). 50 Euler steps, half the paper's: a 1024-token strip of notebook 06 calls
        # the head 50 times per token, one token after the other.
        "course_gpu": dict(token_dim=64, num_classes=8, embed_dim=384, depth=12, num_heads=6,
                           head_width=768, head_depth=6, num_sampling_steps=50),
    }
    PRESETS["fast"] = {**PRESETS["tiny"], **FAST_SIZES}

    def __post_init__(self):
        if self.attention not in ("window", "full", "strict"):
            raise ValueError(f"attention must be 'window', 'full' or 'strict', got {self.attention!r}")
        if self.layout not in ("column", "grid"):
            raise ValueError(f"layout must be 'column' or 'grid', got {self.layout!r}")
        if self.embed_dim % self.num_heads or (self.embed_dim // self.num_heads) % 2:
            raise ValueError(f"embed_dim {self.embed_dim} must split into {self.num_heads} heads of even size")
        if self.cond_length < 0 or (self.attention == "strict" and self.cond_length < 1):
            raise ValueError(f"cond_length {self.cond_length} invalid for attention {self.attention!r}")
        if self.layout == "grid" and self.window != 0:
            raise ValueError("layout 'grid' (raster-order AR-MAR-2D) uses full causal attention: "
                             "set attention='full'; a 1D window over raster order is not a 2D window")
        if self.shift_num < 1 or self.diffusion_batch_mul < 1 or self.num_sampling_steps < 1:
            raise ValueError("shift_num, diffusion_batch_mul and num_sampling_steps must be >= 1")

    @property
    def window(self) -> int:
        """cond_length of the self-attention mask (0 = full causal)."""
        return 0 if self.attention == "full" else self.cond_length


@register_model
class Generator(nn.Module):
    """Class-conditional AR transformer + flow head (public API: ``condition``, ``loss``, ``sample``)."""

    config_class = GeneratorConfig

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        D = config.embed_dim
        self.class_emb = nn.Embedding(config.num_classes, D)
        self.fake_latent = nn.Parameter(torch.zeros(1, D))  # the null class for CFG
        self.z_proj = nn.Linear(config.token_dim, D)
        self.z_proj_ln = nn.LayerNorm(D, eps=1e-6)
        # Position embedding of the buffer tokens only; image tokens get RoPE
        # (docs/official_code.md#generator-training-forward).
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, config.buffer_size, D))
        self.encoder_blocks = nn.ModuleList(
            Block(D, config.num_heads, config.mlp_ratio, config.attn_dropout, config.proj_dropout)
            for _ in range(config.depth))
        self.encoder_norm = nn.LayerNorm(D, eps=1e-6)
        self.initialize_weights()
        # Built after the init above, so it keeps its own init
        # (docs/official_code.md#generator-parameters-and-init).
        self.head = FlowHead(config.token_dim, config.head_width, D, config.head_depth, config.num_sampling_steps)
        self.rope = RotaryTable(D // config.num_heads)

    def initialize_weights(self) -> None:
        for p in (self.class_emb.weight, self.fake_latent, self.encoder_pos_embed_learned):
            nn.init.normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ---- the transformer -------------------------------------------------------------------------

    def class_vectors(self, labels: torch.Tensor | None, batch: int, drop: bool = False) -> torch.Tensor:
        """Class embeddings (B, D); labels None -> the null class; ``drop`` = training label dropout."""
        null = self.fake_latent.expand(batch, -1)  # (B, D)
        if labels is None:
            return null
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integer class ids (e.g. torch.tensor([3, 5]) or "
                             f"labels.long()), got dtype {labels.dtype}")
        labels = labels.to(self.fake_latent.device, torch.long)  # int32/uint8 ids index the table too
        if labels.shape != (batch,):
            raise ValueError(f"labels must have shape ({batch},), got {tuple(labels.shape)}")
        if labels.min() < 0 or labels.max() >= self.config.num_classes:
            raise ValueError(f"labels must lie in [0, {self.config.num_classes}), got {labels.tolist()}")
        vec = self.class_emb(labels)
        if drop:
            keep = torch.rand(batch, device=vec.device) >= self.config.label_drop
            vec = torch.where(keep[:, None], vec, null)
        return vec

    def buffer_path(self, class_vec: torch.Tensor):
        """Run the class tokens through every block once.

        :return: per-layer cross-attention K/V (list of pairs) and row 0, the condition of the
            first token (B, D). The buffer never attends, so it depends on the class only.
        """
        cond = self.z_proj_ln(class_vec[:, None] + self.encoder_pos_embed_learned)  # (B, S, D)
        kvs = []
        for block in self.encoder_blocks:
            kvs.append(block.cross_kv(cond))
            cond = block.buffer_step(cond)
        return kvs, self.encoder_norm(cond[:, -1])

    def new_caches(self) -> list[LayerCache]:
        """One empty sliding-window K/V cache per block, each keeping the cond_length + 1 keys
        its window needs (everything for full causal attention)."""
        keep = self.config.window + 1 if self.config.window > 0 else None
        return [LayerCache(keep) for _ in self.encoder_blocks]

    def step(self, tokens: torch.Tensor, kvs, start: int,
             caches: list[LayerCache] | None = None) -> torch.Tensor:
        """Embed tokens (B, T, C) at RoPE positions start .. start+T-1 and run the stack on them.

        Row t of the result (B, T, D) conditions the token after token t. Without ``caches`` the
        chunk is a whole sequence under the windowed causal mask (training, recompute); with
        ``caches`` (from :meth:`new_caches`) T is 1 and the caches supply the earlier keys
        (sliding-window sampling). ``kvs`` is :meth:`buffer_path`'s cross-attention K/V.
        """
        x = self.z_proj_ln(self.z_proj(tokens))  # (B, T, D)
        cos, sin = self.rope(start, tokens.shape[1], tokens.device)
        mask = None if caches is not None else windowed_causal_mask(
            tokens.shape[1], self.config.window, tokens.device)  # (T, T)
        for i, (block, kv) in enumerate(zip(self.encoder_blocks, kvs)):
            if caches is not None:
                x = block(x, kv, cos, sin, cache=caches[i])
            elif self.config.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, kv, cos, sin, mask, use_reentrant=False)
            else:
                x = block(x, kv, cos, sin, mask)
        return self.encoder_norm(x)

    def hidden(self, tokens: torch.Tensor, class_vec: torch.Tensor, shift: int) -> torch.Tensor:
        """Rows 0..T of the stack for tokens (B, T, C): (B, T+1, D); row k conditions token k."""
        kvs, row0 = self.buffer_path(class_vec)
        return torch.cat([row0[:, None], self.step(tokens, kvs, shift)], dim=1)  # (B, T+1, D)

    def condition_rows(self, tokens: torch.Tensor, class_vec: torch.Tensor, shift: int) -> torch.Tensor:
        """:meth:`condition` given class vectors (B, D) and an explicit RoPE ``shift`` instead of
        labels: (B, N, C) tokens -> (B, N, D) conditions, for any ``attention`` variant."""
        K = self.config.cond_length + 1
        B, N, C = tokens.shape
        if self.config.attention != "strict" or N <= K:
            return self.hidden(tokens, class_vec, shift)[:, :N]
        # Strict: window s holds tokens s .. s+K-1; window 0 gives rows 0..K, window s >= 1 row s+K.
        windows = tokens[:, :N - 1].unfold(1, K, 1)  # (B, N-K, C, K)
        windows = windows.permute(0, 1, 3, 2).reshape(-1, K, C)  # (B·(N-K), K, C)
        rows = self.hidden(windows, class_vec.repeat_interleave(N - K, dim=0), shift)
        rows = rows.reshape(B, N - K, K + 1, -1)  # (B, N-K, K+1, D)
        return torch.cat([rows[:, 0], rows[:, 1:, -1]], dim=1)  # (B, N, D)

    def _draw_shift(self, generator: torch.Generator | None = None) -> int:
        # Sec. 3.3 / Fig. 7: one random RoPE offset per batch in training, none in eval.
        if not self.training:
            return 0
        device = generator.device if generator is not None else "cpu"
        return int(torch.randint(self.config.shift_num, (1,), generator=generator, device=device))

    def condition(self, tokens: torch.Tensor, labels: torch.Tensor | None, shift: int | None = None) -> torch.Tensor:
        """Transformer output (B, N, D) for tokens (B, N, C); row k conditions token k.

        labels None -> the null class. ``shift`` (RoPE offset) defaults to 0 in eval mode and to
        a random draw in [0, shift_num) in training mode.
        """
        self._check_tokens(tokens, "tokens")
        shift = self._draw_shift() if shift is None else shift
        return self.condition_rows(tokens, self.class_vectors(labels, tokens.shape[0]), shift)

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor | None, per_position: bool = False, *,
             generator: torch.Generator | None = None, split: tuple[int, int] = (0, 1)) -> torch.Tensor:
        """Flow-matching loss of teacher-forced tokens (B, N, C)
        (docs/official_code.md#generator-training-forward).

        In training mode the labels are dropped with probability ``label_drop`` and positions are
        shifted. Each (token, condition) pair is repeated ``diffusion_batch_mul`` times with
        independent noise and time. Returns a scalar, or the (N,) per-position losses.

        :param generator: draws the label drop, the shift and the flow noise and times
            (default: the global RNG; dropout always uses the global RNG).
        :param split: ``(rank, world)``: these tokens are rows ``rank::world`` of a global batch
            of world·B. Every draw is made for the global batch and sliced, so DDP ranks together
            draw what one process draws for the whole batch.
        """
        self._check_tokens(tokens, "tokens")
        B, N, C = tokens.shape
        rank, world = split
        device = tokens.device
        class_vec = self.class_vectors(labels, B)
        if self.training and labels is not None:
            u = torch.rand(world * B, device=device, generator=generator)[rank::world]  # (B,)
            class_vec = torch.where((u >= self.config.label_drop)[:, None], class_vec,
                                    self.fake_latent.expand(B, -1))
        h = self.condition_rows(tokens, class_vec, self._draw_shift(generator))  # (B, N, D)
        mul = self.config.diffusion_batch_mul
        x0 = tokens.detach().reshape(B * N, C).repeat(mul, 1)  # (mul·B·N, C)
        c = h.reshape(B * N, -1).repeat(mul, 1)  # (mul·B·N, D)
        # Rows are ordered (mul, B, N); the global draws (mul, world·B, N[, C]) keep this rank's B.
        u = torch.rand(mul, world * B, N, device=device, generator=generator)[:, rank::world]
        eps = torch.randn(mul, world * B, N, C, device=device, dtype=x0.dtype,
                          generator=generator)[:, rank::world]
        rows = self.head.loss(x0, c, draws=(u.reshape(-1), eps.reshape(-1, C)))  # (mul·B·N,)
        rows = rows.reshape(mul, B, N)
        return rows.mean(dim=(0, 1)) if per_position else rows.mean()

    def _check_tokens(self, tokens: torch.Tensor, name: str) -> None:
        if tokens.dim() != 3 or tokens.shape[-1] != self.config.token_dim or tokens.shape[1] < 1:
            raise ValueError(f"{name} must be (B, N, {self.config.token_dim}) with N >= 1, "
                             f"got {tuple(tokens.shape)}")

    # ---- sampling ----------------------------------------------------------------------------------

    def stream(self, class_vec: torch.Tensor, num_tokens: int, use_cache: bool = True):
        """A token-by-token condition provider: ``row(k)`` (B, D), ``push(k, token)``, ``state_bytes()``.

        use_cache=True: sliding-window KV cache (``"strict"``: the K-token window is re-run);
        use_cache=False: re-run the whole sequence at every step, as the official sampler does.
        """
        if not use_cache:
            return RecomputeStream(self, class_vec, num_tokens)
        if self.config.attention == "strict":
            return StrictStream(self, class_vec, self.config.cond_length + 1)
        return CachedStream(self, class_vec)

    @torch.no_grad()
    def sample(self, labels: torch.Tensor | None, num_tokens: int, *, cfg: float = 1.0,
               cfg_schedule: str = "linear", temperature: float = 1.0, solver: str = "euler",
               steps: int | None = None, noise: torch.Tensor | None = None,
               prefix: torch.Tensor | None = None, use_cache: bool = True, progress: bool = False,
               generator: torch.Generator | None = None, batch_size: int | None = None,
               options: SamplingOptions | None = None) -> torch.Tensor:
        """Sample (B, num_tokens, C) tokens left to right in the generator's latent space.

        :param labels: (B,) integer class ids, or None for unconditional samples (then give
            ``batch_size``, ``noise`` or ``prefix`` to fix B).
        :param cfg: classifier-free guidance scale on the flow velocity (1.0 = none).
        :param cfg_schedule: ``"linear"``: token k uses 1 + (cfg − 1)·(k + 1)/num_tokens (official);
            the ramp is normalised by the whole length, so long images get weak guidance on
            their first tokens (e.g. 128 tokens, cfg 7: <= 1.75 for tokens 0..15).
            ``"constant"``: cfg everywhere.
        :param temperature: scales the initial flow noise (1.0 = official).
        :param solver: the flow head's ODE solver, one of :data:`minieq.flow.SOLVERS`
            (``"euler"`` = official; ``python -m minieq.bench.solvers`` measures the others), or
            ``"distilled"``: the attached few-step head (:mod:`minieq.few_step`), 1-4 calls.
        :param steps: solver steps per token (None: ``config.num_sampling_steps``).
        :param noise: (B, num_tokens, C) initial flow noise per token, for reproducible runs.
        :param prefix: (B, P, C) given first tokens; the rest is sampled (continuation).
        :param use_cache: sliding-window KV cache (fast) or full recompute (official); same result.
        :param generator: torch.Generator for the noise when ``noise`` is None.
        :param options: a :class:`minieq.flow.SamplingOptions` holding the five settings above
            (cfg .. steps) instead of the keywords.
        """
        options = SamplingOptions.from_call(options, cfg=cfg, cfg_schedule=cfg_schedule,
                                            temperature=temperature, solver=solver, steps=steps)
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        B = _batch_size(labels, noise, prefix, batch_size)
        given = torch.zeros(B, num_tokens, self.config.token_dim, device=self.fake_latent.device)
        keep = torch.zeros(B, num_tokens, dtype=torch.bool, device=given.device)
        if prefix is not None:
            if prefix.dim() != 3 or prefix.shape[0] != B or prefix.shape[1] > num_tokens \
                    or prefix.shape[2] != self.config.token_dim:
                raise ValueError(f"prefix must be ({B}, P <= {num_tokens}, {self.config.token_dim}), "
                                 f"got {tuple(prefix.shape)}")
            given[:, :prefix.shape[1]] = prefix
            keep[:, :prefix.shape[1]] = True
        return sampling_loop(self, labels, given, keep, options, noise=noise, use_cache=use_cache,
                             progress=progress, generator=generator)

    @torch.no_grad()
    def regenerate(self, tokens: torch.Tensor, labels: torch.Tensor | None, keep_mask: torch.Tensor, *,
                   cfg: float = 1.0, cfg_schedule: str = "linear", temperature: float = 1.0,
                   solver: str = "euler", steps: int | None = None, noise: torch.Tensor | None = None,
                   use_cache: bool = True, progress: bool = False,
                   generator: torch.Generator | None = None,
                   options: SamplingOptions | None = None) -> torch.Tensor:
        """Keep the tokens where ``keep_mask`` (B, N) or (N,) is True, resample the others left to
        right, each conditioned on everything before it (paper Fig. 6, interactive generation).

        The keyword arguments are those of :meth:`sample`.
        """
        options = SamplingOptions.from_call(options, cfg=cfg, cfg_schedule=cfg_schedule,
                                            temperature=temperature, solver=solver, steps=steps)
        self._check_tokens(tokens, "tokens")
        tokens = tokens.to(self.fake_latent.device)
        keep = keep_mask.to(tokens.device, torch.bool).expand(tokens.shape[:2])  # (B, N)
        return sampling_loop(self, labels, tokens.clone(), keep.clone(), options, noise=noise,
                             use_cache=use_cache, progress=progress, generator=generator)


def _batch_size(labels, noise, prefix, batch_size) -> int:
    for value in (labels, noise, prefix):
        if value is not None:
            return value.shape[0]
    if batch_size is None:
        raise ValueError("unconditional sampling (labels=None) needs batch_size, noise or prefix")
    return batch_size
