"""Pictures for the course and the README: image grids, panoramas, loss curves, the
token-by-token reconstruction of the paper's Fig. 2/8 (docs/official_code.md#token-by-token-demo)
and the token regenerations of its Fig. 6.

Images are float tensors in [-1, 1], shape (B, 3, H, W) or (3, H, W). Every function that
returns a picture returns a uint8 numpy array (H, W, 3), which PIL, imageio and matplotlib
all accept; ``show_images`` draws one in a notebook.
Shape legend: B batch, N tokens, C token channels, H/W pixels.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import imageio.v2 as imageio
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from matplotlib.figure import Figure
from PIL import Image

from minieq.utils import eval_mode


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) or (3, H, W) in [-1, 1] → uint8 (B, H, W, 3) or (H, W, 3), clamped."""
    if images.dim() not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(f"expected (B, 3, H, W) or (3, H, W) images, got {tuple(images.shape)}")
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).numpy()  # (..., 3, H, W) -> (..., H, W, 3)


def image_grid(images, nrow: int = 8, padding: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile images into one uint8 (H, W, 3) picture, ``nrow`` images per row.

    :param images: a (B, 3, H, W) tensor, or a sequence of (3, H, W) tensors of equal size.
    :param padding: pixels of ``pad_value`` (white by default) between and around tiles.
    """
    if isinstance(images, (list, tuple)):
        images = torch.stack(list(images))
    if images.dim() == 3:
        images = images[None]
    tiles = to_uint8(images)  # (B, H, W, 3)
    b, h, w, _ = tiles.shape
    ncol = max(1, min(nrow, b))
    nrows = -(-b // ncol)  # ceil division
    grid = np.full((nrows * (h + padding) + padding, ncol * (w + padding) + padding, 3),
                   pad_value, dtype=np.uint8)
    for i in range(b):
        top = padding + (i // ncol) * (h + padding)
        left = padding + (i % ncol) * (w + padding)
        grid[top:top + h, left:left + w] = tiles[i]
    return grid


def save_image_grid(path: str | Path, images, nrow: int = 8, padding: int = 2) -> Path:
    """Write :func:`image_grid` of ``images`` to ``path`` (PNG/JPEG by extension)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(images, nrow=nrow, padding=padding)).save(path)
    return path


def show_images(images, nrow: int = 8, title: str | None = None, zoom: float = 2.0,
                dpi: int = 60):
    """Draw images (a tensor batch, a single image, or a uint8 (H, W, 3) array) with matplotlib.

    The figure is sized so that one image pixel is ``zoom`` screen pixels at ``dpi``; the
    default keeps notebook outputs small. Returns the matplotlib Figure.
    """
    picture = images if isinstance(images, np.ndarray) else image_grid(images, nrow=nrow)
    h, w = picture.shape[:2]
    fig, ax = plt.subplots(figsize=(w * zoom / dpi, h * zoom / dpi + (0.4 if title else 0)),
                           dpi=dpi)
    ax.imshow(picture, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    fig.tight_layout(pad=0.1)
    return fig


def reconstruction_grid(originals: torch.Tensor, recons: torch.Tensor,
                        padding: int = 2) -> np.ndarray:
    """One row per image: the original on the left, its reconstruction on the right."""
    if originals.shape != recons.shape:
        raise ValueError(f"originals {tuple(originals.shape)} and reconstructions "
                         f"{tuple(recons.shape)} must have the same shape")
    pairs = torch.stack([originals.cpu(), recons.detach().cpu()], dim=1)  # (B, 2, 3, H, W)
    return image_grid(pairs.flatten(0, 1), nrow=2, padding=padding)  # (2B, 3, H, W) tiles


def panorama(image: torch.Tensor, rows: int = 1, padding: int = 2) -> np.ndarray:
    """A very wide image cut into ``rows`` consecutive pieces stacked top to bottom.

    A 32×1024 strip is unreadable on one line; ``rows=4`` wraps it like text into four
    32×256 lines (the last one is padded white if the width does not divide evenly).
    """
    if image.dim() == 4:
        if image.shape[0] != 1:
            raise ValueError(f"panorama takes one image, got a batch of {image.shape[0]}")
        image = image[0]
    width = image.shape[-1]
    piece = -(-width // rows)  # ceil division
    padded = F.pad(image.cpu(), (0, rows * piece - width), value=1.0)  # white on the right: (3, H, rows·piece)
    lines = rearrange(padded, "c h (r w) -> r c h w", r=rows)  # (rows, 3, H, piece), left to right
    return image_grid(lines, nrow=1, padding=padding)


def _latent_scale_noise(z: torch.Tensor, generator: torch.Generator | None,
                        reference: torch.Tensor | None = None) -> torch.Tensor:
    """Random tokens shaped like ``z`` at the scale of real ones: the per-channel mean and std
    of ``reference`` tokens (B, N, C), or of ``z`` itself when no reference is given.

    The official demo draws N(0, 1) tokens although real latents have std ≈ 18
    (docs/official_code.md#token-by-token-demo), so its "random" columns are far off the
    latent distribution; matching the per-channel statistics makes them look like plausible content.
    """
    ref = (z if reference is None else reference).to(z.device, z.dtype).flatten(0, 1)  # (B·N, C)
    mean, std = ref.mean(dim=0), ref.std(dim=0)  # (C,) each
    eps = torch.randn(z.shape, generator=generator, device="cpu").to(z.device, z.dtype)
    return mean + std * eps


@torch.no_grad()
def token_by_token_frames(tokenizer, image: torch.Tensor, noise: torch.Tensor | None = None,
                          sample: bool = False, generator: torch.Generator | None = None,
                          reference: torch.Tensor | None = None,
                          batch_size: int = 8) -> list[torch.Tensor]:
    """Paper Fig. 2/8: replace random tokens by the image's tokens one column at a time.

    Encode ``image`` to N tokens, then for k = 0..N decode the sequence whose first k tokens
    are the true ones and whose last N − k are ``noise``. Frame 0 is decode(noise) and frame
    N is decode(encode(image)). Because each token mostly describes its own column
    (docs/official_code.md#what-a-column-token-sees), the image appears left to right, strip by strip.

    :param tokenizer: a ColumnTokenizer (its device is used; it is run in eval mode).
    :param image: (3, H, W) or (1, 3, H, W) in [-1, 1].
    :param noise: (1, N, C) or (N, C) random tokens; None draws them with the per-channel
        mean/std of ``reference`` (not N(0, 1) as in the official demo; ``_latent_scale_noise``).
    :param sample: use the σ-VAE noisy sample of the posterior instead of its mean.
    :param generator: CPU torch.Generator for the random tokens (and σ-VAE noise).
    :param reference: tokens (B, N, C) of many images, e.g. ``encode`` of a validation batch,
        whose statistics set the scale of the random tokens; None = this image's own tokens.
    :param batch_size: frames decoded per forward pass (bounds memory at paper size).
    :return: N + 1 frames, each (3, H, W) on the CPU, clamped to [-1, 1].
    """
    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"token_by_token_frames takes one image, got {tuple(image.shape)}")
    device = next(tokenizer.parameters()).device
    with eval_mode(tokenizer):
        # (1, N, C): the posterior mean, or the σ-VAE draw the official demo uses
        # (docs/official_code.md#token-by-token-demo).
        z = tokenizer.encode(image.to(device), sample=sample, generator=generator)
        if noise is None:
            noise = _latent_scale_noise(z, generator, reference)
        noise = noise.reshape(z.shape).to(device, z.dtype)  # (N, C) or (1, N, C) -> (1, N, C)
        n = z.shape[1]
        # Row k keeps the first k true tokens: (N + 1, N, C).
        keep = torch.arange(n, device=device)[None, :] < torch.arange(n + 1, device=device)[:, None]
        mixed = torch.where(keep[..., None], z, noise)
        frames = [tokenizer.decode(chunk).clamp(-1, 1).cpu()
                  for chunk in mixed.split(batch_size)]
    return list(torch.cat(frames))


def frames_strip(frames: Sequence[torch.Tensor], padding: int = 2) -> np.ndarray:
    """All frames stacked top to bottom in one tall uint8 picture (the paper's Fig. 2 layout)."""
    return image_grid(list(frames), nrow=1, padding=padding)


def token_by_token_figure(frames: dict[str, Sequence[torch.Tensor]], every: int = 2,
                          scale: float = 3.0, dpi: int = 100, fontsize: float = 10.0):
    """Paper Fig. 2/8 for one or more tokenizers, side by side, sized to its content.

    One column per tokenizer with its label above it (wrapped to the column's width, never cut),
    one row per frame k = 0, every, 2·every, …, N (frame k decodes the image's first k tokens and
    N − k random ones; :func:`token_by_token_frames`), labelled on the left. A red line marks
    where the true tokens end. The figure is exactly as large as its panels, labels and a few
    pixels of padding: no empty margins.

    :param frames: label → the N + 1 frames of one tokenizer, each (3, H, W); the columns may
        differ in size (each is scaled to the height of the smallest).
    :param every: show every ``every``-th frame (the last one, all true tokens, always).
    :param scale: screen pixels per image pixel for the smallest frames.
    :return: a matplotlib Figure, not registered with pyplot: ``fig.savefig(path)``, or
        ``display(fig)`` in a notebook.
    """
    import textwrap

    from matplotlib.figure import Figure

    if not frames:
        raise ValueError("token_by_token_figure needs at least one label → frames entry")
    counts = {len(f) for f in frames.values()}
    if len(counts) != 1 or counts.pop() < 2:
        raise ValueError("every tokenizer needs the same number (≥ 2) of frames, one per k = 0..N")
    n = len(next(iter(frames.values()))) - 1  # tokens per image
    rows = list(range(0, n + 1, every)) + ([n] if n % every else [])
    heights = {label: f[0].shape[-2] for label, f in frames.items()}
    frame_h = min(heights.values()) * scale  # display height of every frame, in pixels
    widths = {label: f[0].shape[-1] * frame_h / heights[label] for label, f in frames.items()}
    pad, gap_x, gap_y, line_h = 8, 16, 5, fontsize * 1.45
    char_w = fontsize * 0.62  # a generous average glyph width: wrapped lines always fit
    titles = {label: textwrap.wrap(label, max(8, int(widths[label] / char_w))) for label in frames}
    title_h = max(len(t) for t in titles.values()) * line_h + 6
    label_w = fontsize * 0.62 * len(f"k = {n} of {n}") + 10
    fig_w = pad + label_w + sum(widths.values()) + gap_x * (len(frames) - 1) + pad
    fig_h = pad + title_h + len(rows) * frame_h + (len(rows) - 1) * gap_y + pad
    fig = Figure(figsize=(fig_w / dpi, fig_h / dpi), dpi=dpi)

    def place(left, top, width, height):  # pixel box (from the top left) → figure fractions
        return [left / fig_w, 1 - (top + height) / fig_h, width / fig_w, height / fig_h]

    left = pad + label_w
    for label, column in frames.items():
        fig.text((left + widths[label] / 2) / fig_w, 1 - pad / fig_h, "\n".join(titles[label]),
                 ha="center", va="top", fontsize=fontsize, linespacing=1.2)
        column_width = column[0].shape[-1] / n  # pixels per token
        for r, k in enumerate(rows):
            top = pad + title_h + r * (frame_h + gap_y)
            ax = fig.add_axes(place(left, top, widths[label], frame_h))
            ax.imshow(to_uint8(column[k]), interpolation="nearest", aspect="auto")
            if 0 < k < n:  # the border between the true tokens (left) and the random ones
                ax.axvline(k * column_width - 0.5, color="red", lw=1.2)
            ax.set_axis_off()
        left += widths[label] + gap_x
    for r, k in enumerate(rows):
        top = pad + title_h + r * (frame_h + gap_y) + frame_h / 2
        fig.text((pad + label_w - 8) / fig_w, 1 - top / fig_h, f"k = {k} of {n}", ha="right",
                 va="center", fontsize=fontsize * 0.9)
    return fig


def save_gif(frames: Sequence[torch.Tensor], path: str | Path, fps: float = 6,
             hold_last: float = 1.0) -> Path:
    """Write frames as a looping GIF at ``fps``; the last frame stays on screen ``hold_last``
    extra seconds so that the finished reconstruction can be looked at."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    step_ms = 1000 / fps
    durations = [step_ms] * (len(frames) - 1) + [step_ms + 1000 * hold_last]  # ms per frame
    imageio.mimsave(path, [to_uint8(f) for f in frames], duration=durations, loop=0)
    return path


def regeneration_picture(original: torch.Tensor, versions: Sequence[torch.Tensor],
                         keep_masks: Sequence[torch.Tensor], column_width: int,
                         gain: float | None = 4.0, bar: int = 3, padding: int = 2) -> np.ndarray:
    """Paper Fig. 6 made readable: versions of a strip with their redrawn tokens marked.

    Top to bottom: the original; then for each version a red bar over the token columns it
    redrew (``keep_mask`` False), the version, and its change |version − original| (mean over
    RGB; black = unchanged). The change is shown times ``gain`` (white = a change of 2 / gain
    or more), or, with ``gain=None``, scaled so that each version's largest change is white.

    :param original: (3, H, W) in [-1, 1].
    :param versions: (3, H, W) images of the same size.
    :param keep_masks: one (N,) bool mask per version, N = W / column_width.
    :return: uint8 (H', W + 2·padding, 3).
    """
    if len(versions) != len(keep_masks):
        raise ValueError(f"{len(versions)} versions but {len(keep_masks)} keep masks")
    original = original.detach().float().cpu()
    c, h, w = original.shape
    white = torch.ones(c, padding, w)
    rows = [white, original]
    for version, keep in zip(versions, keep_masks):
        version = version.detach().float().cpu()
        if version.shape != original.shape or keep.shape != (w // column_width,):
            raise ValueError(f"version {tuple(version.shape)} / keep mask {tuple(keep.shape)} do not fit "
                             f"the original {tuple(original.shape)} with {column_width}-px columns")
        redrawn = (~keep.cpu().bool()).repeat_interleave(column_width)  # (W,)
        marker = torch.ones(c, bar, w)
        marker[1:, :, redrawn] = -1  # red: R stays 1, G and B go to -1
        change = (version - original).abs().mean(0)  # (H, W)
        change = change / change.max().clamp_min(1e-12) if gain is None else change / 2 * gain
        change = change.clamp(0, 1) * 2 - 1  # black (unchanged) .. white
        rows += [white, marker, version, change.expand(c, h, w)]
    picture = torch.cat(rows + [white], dim=1)  # (3, H', W)
    side = torch.ones(c, picture.shape[1], padding)
    return to_uint8(torch.cat([side, picture, side], dim=2))


def labelled_stack(panels: Sequence[tuple[str, np.ndarray]], path: str | Path, scale: float = 2.0,
                   dpi: int = 100) -> Path:
    """Save pictures one under the other, each with its label above it, as one PNG.

    Used to show the same figure for several models (e.g. pretrained vs from scratch) so that a
    learner never has to guess which model made which picture.

    :param panels: ``(label, uint8 (H, W, 3) picture)`` pairs, drawn top to bottom.
    :param scale: screen pixels per picture pixel (small course images need enlarging).
    """
    if not panels:
        raise ValueError("labelled_stack needs at least one (label, picture) pair")
    width = max(p.shape[1] for _, p in panels) * scale / dpi
    heights = [p.shape[0] * scale / dpi + 0.3 for _, p in panels]  # + room for the label
    # A bare Figure, not plt.figure: it is never shown and stays out of pyplot's figure list.
    fig = Figure(figsize=(width, sum(heights)), dpi=dpi)
    axes = fig.subplots(len(panels), 1, gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (label, picture) in zip(axes[:, 0], panels):
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(label, loc="left", fontsize=9)
        ax.axis("off")
    fig.tight_layout(pad=0.2)
    path = Path(path)
    fig.savefig(path)
    return path


def plot_loss_curves(rows: Sequence[dict], keys: Sequence[str], smooth: float = 0.0,
                     logy: bool = False, ax=None, dpi: int = 60):
    """Plot ``keys`` from metric rows (``minieq.logger.read_jsonl``) against their ``step``.

    Rows that lack a key (or hold a non-finite value) are skipped for that key.
    :param smooth: exponential-moving-average factor in [0, 1) applied to each curve.
    :return: the matplotlib Figure.
    """
    if not 0.0 <= smooth < 1.0:
        raise ValueError(f"smooth must be in [0, 1), got {smooth}")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3), dpi=dpi)
    for key in keys:
        points = [(r["step"], r[key]) for r in rows
                  if isinstance(r.get(key), (int, float)) and np.isfinite(r[key])]
        if not points:
            continue
        steps, values = map(np.asarray, zip(*points))
        if smooth > 0:
            ema = values.astype(float).copy()
            for i in range(1, len(ema)):
                ema[i] = smooth * ema[i - 1] + (1 - smooth) * values[i]
            values = ema
        ax.plot(steps, values, label=key)
    ax.set_xlabel("step")
    if logy:
        ax.set_yscale("log")
    ax.legend()
    ax.figure.tight_layout()
    return ax.figure
