"""Tokenizer + generator = images: class labels in, (B, 3, H, W) images out, any width.

The generator works in a normalised latent space, ``tokens = σ-VAE sample × latent_scale``
(docs/official_code.md#latent-scale). The official code passes the scale as a magic CLI number
(``--vae_norm 0.05493``); here :func:`minieq.generator_data.compute_latent_scale` derives it
from data and every generator checkpoint stores it, so a :class:`Pipeline` never needs it from the user.

Legend: B batch, N tokens (= columns), C token channels, H/W image height/width.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import nn

from minieq.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, read_checkpoint
from minieq.config import token_columns
from minieq.flow import SamplingOptions
from minieq.generator_data import TRAIN_TOKENS

class Pipeline:
    """Class-conditional image generation with a column tokenizer and an AR generator.

    ``latent_scale`` maps tokenizer latents into the generator's space (tokens × scale); it
    comes from :func:`minieq.generator_data.compute_latent_scale` or from the generator
    checkpoint. ``train_tokens`` is the generator's training length, the default width of
    :meth:`generate` (from the checkpoint too; :data:`minieq.generator_data.TRAIN_TOKENS` if
    unknown). ``class_names`` (label order, optional) lets :meth:`class_ids` take names.
    """

    def __init__(self, tokenizer: nn.Module, generator: nn.Module, latent_scale: float,
                 long_decode_from: int = 64, train_tokens: int = TRAIN_TOKENS,
                 class_names: Sequence[str] | None = None):
        if tokenizer.config.embed_dim != generator.config.token_dim:
            raise ValueError(
                f"tokenizer makes {tokenizer.config.embed_dim}-channel tokens but the generator "
                f"models {generator.config.token_dim}-channel tokens")
        if not latent_scale > 0:
            raise ValueError(f"latent_scale must be positive, got {latent_scale}")
        self.tokenizer = tokenizer.eval()
        self.generator = generator.eval()
        self.latent_scale = float(latent_scale)
        self.train_tokens = int(train_tokens)
        num_classes = generator.config.num_classes
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for a generator of {num_classes} classes")
        self.class_names = list(class_names) if class_names is not None else None
        # Past this many tokens decode in bounded memory (tokenizer attention is global, O(N²)).
        self.long_decode_from = long_decode_from

    @classmethod
    def from_checkpoints(cls, tokenizer_path: str | os.PathLike, generator_path: str | os.PathLike,
                         device: torch.device | str = "cpu", use_ema: bool = True) -> "Pipeline":
        """Load a tokenizer and a generator checkpoint (EMA weights); the scale, the training
        length and the class names (if the data had them) come from the latter."""
        ckpt = read_checkpoint(generator_path, expect="Generator")
        if ckpt.get("latent_scale") is None:
            raise CheckpointError(
                f"{generator_path}: no 'latent_scale' entry (not written by minieq.train_generator?)")
        tokenizer = load_checkpoint(tokenizer_path, map_location=device, use_ema=use_ema,
                                    expect="ColumnTokenizer")
        generator = model_from_checkpoint(ckpt, str(generator_path), map_location=device, use_ema=use_ema)
        return cls(tokenizer, generator, float(ckpt["latent_scale"]),
                   train_tokens=ckpt.get("train_tokens", TRAIN_TOKENS), class_names=ckpt.get("class_names"))

    @property
    def column_width(self) -> int:
        return self.tokenizer.config.column_width

    @property
    def train_width(self) -> int:
        """The generator's training width in px (``train_tokens`` columns of the tokenizer)."""
        return self.train_tokens // self.rows * self.column_width

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    @property
    def rows(self) -> int:
        """Tokens per image column: 1 for the column layout, ``final_height`` for the 2D grid baseline."""
        cfg = self.tokenizer.config
        return cfg.final_height if cfg.layout == "grid" else 1

    def num_tokens(self, width: int) -> int:
        """Tokens for an image ``width`` px wide (a multiple of the column width, ≥ 2 columns)."""
        return token_columns(width, self.column_width) * self.rows

    def _labels(self, labels) -> torch.Tensor:
        labels = torch.as_tensor(labels, device=self.device).reshape(-1)  # (B,)
        if labels.is_floating_point() or labels.dtype == torch.bool:  # 3.5 must not become class 3
            raise ValueError(f"labels must be integer class ids (e.g. [3, 5]), got dtype {labels.dtype}")
        labels = labels.long()
        num_classes = self.generator.config.num_classes
        if labels.numel() == 0 or labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"labels must be class indices in [0, {num_classes}), got {labels.tolist()}")
        return labels

    def class_ids(self, classes: Sequence[str | int]) -> list[int]:
        """Class ids from ids or names (``["forest", "2"]`` -> ``[3, 2]``); an unknown name is one
        ``ValueError`` that lists the names this generator knows."""
        ids = []
        for c in classes:
            if isinstance(c, int) or str(c).lstrip("-").isdigit():
                ids.append(int(c))
            elif self.class_names is None:
                raise ValueError(f"this generator stores no class names; give class ids "
                                 f"0..{self.generator.config.num_classes - 1} instead of {c!r}")
            elif c not in self.class_names:
                raise ValueError(f"unknown class {c!r}; the classes are: {', '.join(self.class_names)}")
            else:
                ids.append(self.class_names.index(c))
        self._labels(ids)  # range check: one error for a bad id
        return ids

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) → generator-space tokens (B, N, C) (posterior mean × scale)."""
        return self.tokenizer.encode(images.to(self.device)) * self.latent_scale

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Generator-space tokens (B, N, C) → images (B, 3, H, N · column width) in [-1, 1]."""
        latents = tokens / self.latent_scale
        if self.rows == 1 and latents.shape[1] >= self.long_decode_from:
            images = self.tokenizer.decode_long(latents)
        else:
            images = self.tokenizer.decode(latents)
        return images.float().clamp(-1, 1)  # float32 under bf16 autocast too, as the API promises

    @torch.no_grad()
    def sample_tokens(self, labels, num_tokens: int, *, cfg: float = 1.0, cfg_schedule: str = "linear",
                      temperature: float = 1.0, solver: str = "euler", steps: int | None = None,
                      seed: int | None = None, progress: bool = False, prefix: torch.Tensor | None = None,
                      options: SamplingOptions | None = None, **sample_kwargs) -> torch.Tensor:
        """Generator-space tokens (B, num_tokens, C); ``seed`` makes the draw reproducible. The
        sampling settings (cfg .. steps, or ``options``) are those of :meth:`Generator.sample`."""
        options = SamplingOptions.from_call(options, cfg=cfg, cfg_schedule=cfg_schedule,
                                            temperature=temperature, solver=solver, steps=steps)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        return self.generator.sample(self._labels(labels), num_tokens, options=options, prefix=prefix,
                                     progress=progress, generator=generator, **sample_kwargs)

    def generate(self, labels: Sequence[int] | torch.Tensor | int, width: int | None = None, *,
                 cfg: float = 1.0, cfg_schedule: str = "linear", temperature: float = 1.0,
                 solver: str = "euler", steps: int | None = None, seed: int | None = None,
                 progress: bool = False, options: SamplingOptions | None = None,
                 **sample_kwargs) -> torch.Tensor:
        """Images (B, 3, H, width) in [-1, 1], one per label.

        ``width`` defaults to :attr:`train_width` (16 tokens in the paper) and may be any multiple of the
        column width: the generator's windowed attention makes every length the same task
        (Sec. 3.3; the long images of Fig. 5). ``solver``/``steps`` pick the flow head's ODE
        solver (default: the official Euler with the config's step count); the five sampling
        settings may come as one :class:`minieq.flow.SamplingOptions` (``options``) instead.
        """
        options = SamplingOptions.from_call(options, cfg=cfg, cfg_schedule=cfg_schedule,
                                            temperature=temperature, solver=solver, steps=steps)
        width = self.train_width if width is None else width
        tokens = self.sample_tokens(labels, self.num_tokens(width), options=options, seed=seed,
                                    progress=progress, **sample_kwargs)
        return self.decode(tokens)

    def continue_(self, images: torch.Tensor, labels, width: int, **kwargs) -> torch.Tensor:
        """Extend ``images`` (B, 3, H, w) to the right up to ``width`` px (their tokens are the prefix)."""
        prefix = self.encode(images)  # (B, P, C)
        num_tokens = self.num_tokens(width)
        if num_tokens <= prefix.shape[1]:
            raise ValueError(f"width {width} must exceed the given images' width {images.shape[-1]}")
        return self.decode(self.sample_tokens(labels, num_tokens, prefix=prefix, **kwargs))

    def regenerate(self, tokens: torch.Tensor, keep_mask: torch.Tensor, labels,
                   seed: int | None = None, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep ``tokens`` (B, N, C) where ``keep_mask`` ((N,) or (B, N)) is True, resample the rest.

        Paper Fig. 6 (interactive generation): look at a sample, drop the columns you dislike,
        regenerate them. Returns ``(images, new_tokens)`` so the user can iterate.
        """
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        new = self.generator.regenerate(tokens, self._labels(labels), keep_mask,
                                        generator=generator, **kwargs)  # (B, N, C)
        return self.decode(new), new
