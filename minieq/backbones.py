"""A small Vision Transformer that loads the DINO ViT-S/16 and DINOv2 ViT-B/14 checkpoints.

The tokenizer objective uses two frozen, pretrained ViTs (docs/official_code.md#semantic-head,
#discriminator-and-augmentation) and LPIPS:

* DINO ViT-S/16 (``dino_deitsmall16_pretrain.pth``) is the backbone of the DINO discriminator;
* DINOv2 ViT-B/14 (``dinov2_vitb14_pretrain.pth``) is the teacher of the semantic alignment loss;
* LPIPS(VGG16) (:func:`build_lpips`, the ``lpips`` package on torchvision's VGG16 trunk) is the
  perceptual term of the reconstruction loss, and a metric in :mod:`minieq.metrics`.

Both are plain pre-norm ViTs; DINOv2 adds LayerScale (``ls1.gamma``/``ls2.gamma``). This module
re-implements that ViT with the original parameter names, so the released state dicts load
1:1 with no key mapping. Nothing here downloads: :func:`find_pretrained` looks for the files
on disk (an explicit path, ``$MINIEQ_WEIGHTS_DIR``, the torch hub cache) and callers disable the
feature with a printed line when they are missing.

Shape legend: B batch, P patches, T = 1 + P tokens (cls first), D width, G grid (gh, gw).
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from minieq.checkpoint import CheckpointError, safe_torch_load

VGG16_FILE = "vgg16-397923af.pth"  # the file torchvision (and hence lpips) would download

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViTSpec:
    """Sizes of one pretrained ViT and the file its weights come in."""

    filename: str
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    pos_grid: int  # the pos-embed grid side the checkpoint was trained with
    layerscale: bool = False
    # The DINO discriminator's backbone uses tanh-GELU
    # (docs/official_code.md#discriminator-and-augmentation).
    gelu_tanh: bool = False


VIT_SPECS = {
    "dino_vits16": ViTSpec("dino_deitsmall16_pretrain.pth", 16, 384, 12, 6, 14, gelu_tanh=True),
    "dinov2_vitb14": ViTSpec("dinov2_vitb14_pretrain.pth", 14, 768, 12, 12, 37, layerscale=True),
}


def search_locations(filename: str, explicit_path: str | os.PathLike | None = None) -> list[Path]:
    """Where :func:`find_pretrained` looks for ``filename``, in order."""
    places = []
    if explicit_path:
        explicit = Path(explicit_path).expanduser()
        places.append(explicit / filename if explicit.is_dir() else explicit)
    if os.environ.get("MINIEQ_WEIGHTS_DIR"):
        places.append(Path(os.environ["MINIEQ_WEIGHTS_DIR"]).expanduser() / filename)
    places.append(Path(torch.hub.get_dir()) / "checkpoints" / filename)
    return places


def find_pretrained(filename: str, explicit_path: str | os.PathLike | None = None) -> Path | None:
    """The first existing file among :func:`search_locations`, or None (never downloads)."""
    for place in search_locations(filename, explicit_path):
        if place.is_file():
            return place
    return None


def missing_message(what: str, filename: str, explicit_path=None, flag: str | None = None) -> str:
    """One line saying that ``what`` is off because ``filename`` was not found, and where we looked."""
    where = ", ".join(str(p) for p in search_locations(filename, explicit_path))
    hint = f"; pass {flag} or" if flag else "; put it in"
    return (f"{what} off: {filename} not found (looked in {where}){hint} set $MINIEQ_WEIGHTS_DIR "
            "to a folder that holds it")


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (timm/DINO names)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.num_heads, d // self.num_heads)  # (B, T, 3, heads, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, T, hd)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))  # (B, heads, T, hd) -> (B, T, D)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, gelu_tanh: bool):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh" if gelu_tanh else "none")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel learned residual scale (DINOv2: ``ls1.gamma``, ``ls2.gamma``)."""

    def __init__(self, dim: int, init: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, layerscale: bool, gelu_tanh: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim) if layerscale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim, gelu_tanh)
        self.ls2 = LayerScale(dim) if layerscale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, gh, gw) -> (B, P, D)


class ViT(nn.Module):
    """cls token + absolute pos-embed + pre-norm blocks + final LayerNorm.

    Inputs are ImageNet-normalised images whose sides are multiples of ``patch_size``; the
    pos-embed is resampled bicubically when the patch grid differs from the trained one.
    """

    def __init__(self, spec: ViTSpec):
        super().__init__()
        self.spec = spec
        d = spec.embed_dim
        self.patch_embed = PatchEmbed(spec.patch_size, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + spec.pos_grid ** 2, d) * 0.02)
        self.blocks = nn.ModuleList(
            Block(d, spec.num_heads, spec.layerscale, spec.gelu_tanh) for _ in range(spec.depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)

    def pos_embed_for(self, gh: int, gw: int) -> torch.Tensor:
        """(1, 1 + gh·gw, D) pos-embed for a gh × gw patch grid (bicubic + antialias, cls kept)."""
        cls_pos, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        side = int(math.isqrt(grid.shape[1]))
        if (gh, gw) == (side, side):
            return self.pos_embed
        grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, P, D) -> (1, D, s, s)
        grid = F.interpolate(grid.float(), size=(gh, gw), mode="bicubic", antialias=True,
                             align_corners=False).to(cls_pos.dtype)
        return torch.cat([cls_pos, grid.flatten(2).transpose(1, 2)], dim=1)  # (1, 1 + gh·gw, D)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) → tokens (B, T, D) after the cls token and pos-embed."""
        p = self.spec.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"ViT input sides {tuple(x.shape[-2:])} must be multiples of {p}")
        tokens = self.patch_embed(x)  # (B, P, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        tokens = torch.cat([cls, tokens], dim=1)  # (B, T, D)
        return tokens + self.pos_embed_for(x.shape[-2] // p, x.shape[-1] // p)

    def intermediate_tokens(self, x: torch.Tensor, layers: tuple[int, ...],
                            include_embed: bool = True) -> list[torch.Tensor]:
        """Token maps (B, T, D) after the embedding (if asked) and after each block in ``layers``.

        The final norm is not applied (the DINO discriminator reads raw block outputs,
        docs/official_code.md#discriminator-and-augmentation).
        """
        h = self.embed(x)
        feats = [h] if include_embed else []
        for i, block in enumerate(self.blocks[: max(layers) + 1]):
            h = block(h)
            if i in layers:
                feats.append(h)
        return feats

    def patch_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final-normed patch tokens (B, P, D): DINOv2's ``x_norm_patchtokens``
        (docs/official_code.md#semantic-head)."""
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.norm(h)[:, 1:]


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] → (x+1)/2 normalised with the ImageNet mean/std (the ViTs' input)."""
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x + 1) / 2 - mean) / std


def load_vit(kind: str, path: str | os.PathLike | None = None, random_init: bool = False,
             **size_overrides) -> ViT | None:
    """Build a pretrained ViT (``"dino_vits16"`` or ``"dinov2_vitb14"``), frozen and in eval mode.

    :param path: an explicit file or folder; otherwise ``$MINIEQ_WEIGHTS_DIR`` and the torch hub
        cache are searched (:func:`find_pretrained`).
    :param random_init: FOR TESTS ONLY: skip loading and keep random weights. ``size_overrides``
        (embed_dim, depth, num_heads, ...) then make the network small.
    :return: the model, or None when the weights file was not found.
    """
    if kind not in VIT_SPECS:
        raise ValueError(f"unknown ViT {kind!r}; choose one of {sorted(VIT_SPECS)}")
    spec = VIT_SPECS[kind]
    if size_overrides and not random_init:
        raise ValueError("size overrides change the architecture: only allowed with random_init")
    spec = ViTSpec(**{**spec.__dict__, **size_overrides})
    model = ViT(spec)
    if not random_init:
        found = find_pretrained(spec.filename, path)
        if found is None:
            return None
        state = safe_torch_load(found)
        state = state.get("model", state) if isinstance(state, dict) else state
        # DINOv2 keeps an unused mask_token; DINO releases may carry an empty head.
        state = {k: v for k, v in state.items() if k != "mask_token" and not k.startswith("head.")}
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise CheckpointError(f"{found}: not a {kind} state dict: {err}") from err
    return model.eval().requires_grad_(False)


def build_lpips(vgg_path: str | os.PathLike | None = None, random_vgg: bool = False) -> nn.Module | None:
    """The LPIPS(VGG16) network, frozen and in eval mode, or None if the VGG16 weights are missing.

    The lpips package ships its own linear-layer weights; the VGG16 trunk comes from
    ``vgg16-397923af.pth`` found by :func:`minieq.backbones.find_pretrained` (``vgg_path``,
    ``$MINIEQ_WEIGHTS_DIR``, the torch hub cache). The package is told not to download
    (``pnet_rand=True``) and the trunk is loaded here. ``random_vgg=True`` is FOR TESTS ONLY.
    Eval mode also turns off the Dropout(0.5) before each linear layer, which the official
    training left on (docs/official_code.md#tokenizer-quirks).
    """
    try:  # an optional dependency (minieq[metrics]): without it LPIPS is off, not an error
        import lpips
    except ImportError:
        print("LPIPS off: the 'lpips' package is not installed (pip install lpips)")
        return None
    found = None if random_vgg else find_pretrained(VGG16_FILE, vgg_path)
    if found is None and not random_vgg:
        return None
    with warnings.catch_warnings():  # torchvision's "pretrained is deprecated" notices
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    if found is not None:
        features = {k[len("features."):]: v for k, v in safe_torch_load(found).items()
                    if k.startswith("features.")}
        trunk = {}
        for name in model.net.state_dict():  # e.g. "slice2.5.weight" <- torchvision "features.5.weight"
            index_and_param = name.split(".", 1)[1]
            if index_and_param not in features:
                raise CheckpointError(f"{found}: no VGG16 'features.{index_and_param}'")
            trunk[name] = features[index_and_param]
        model.net.load_state_dict(trunk)
    return model.eval().requires_grad_(False)
