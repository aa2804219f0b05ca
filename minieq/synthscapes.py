"""SynthScapes: procedurally rendered, class-conditional landscapes (the default data set).

The paper's premise (Sec. 3.1) is that natural images are roughly translation-invariant along
the horizontal axis. SynthScapes makes that property exact, so the course can study it without
downloading anything:

- every random quantity is a pure function of ``(seed, index, absolute position)``: ridge lines
  are sums of sinusoids with random frequencies and phases (a stationary process), objects
  (trees, rocks) come from a Poisson process laid out on cells of absolute x, and pixel grain,
  stars and flowers are hashes of absolute pixel coordinates;
- nothing refers to the image centre, so a crop of a wide render has the same distribution as a
  narrow render, and a render at column offset ``x_offset`` equals the same columns of a wider
  render (the ground truth for the long-image metrics);
- ``centered=True`` adds a salient object (sun or moon and a large tree or rock) at the
  horizontal centre: the ImageNet-like, non-stationary counterpart (paper Fig. 4).

Lengths are in units of the image height, so a scene looks the same at any resolution.
Rendering is vectorised over the batch; each class is one short recipe of shared layers.
Shape legend: B images, S object slots, H rows, W columns.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

SYNTHSCAPES_CLASSES = ["mountains", "dunes", "sea_horizon", "forest", "snowfield",
                       "night_sky", "canyon", "meadow"]

_MASK = 0x7FFFFFFF  # hashes live in [0, 2^31) so that products with 31-bit constants fit int64


def _hash(*keys: Tensor | int) -> Tensor:
    """Integer hash of broadcastable int64 keys to [0, 2^31) (xorshift-multiply rounds)."""
    h = torch.tensor(0x2545F491, dtype=torch.int64)
    for k in keys:
        h = (h ^ (torch.as_tensor(k, dtype=torch.int64) & _MASK)) * 0x2C1B3C6D & _MASK
        h = ((h ^ (h >> 15)) * 0x297A2D39) & _MASK
        h = h ^ (h >> 13)
    return h


def _uniform(*keys: Tensor | int) -> Tensor:
    """Uniform [0, 1) float32 noise, a deterministic function of the keys."""
    return _hash(*keys).to(torch.float32) / 2.0**31


class _Scene:
    """The canvas and coordinates of one class's images, plus their random draws.

    ``u`` (1, 1, 1, W) and ``v`` (1, 1, H, 1) are pixel centres in units of the height,
    ``u`` in absolute coordinates (shifted by ``x_offset``).
    """

    def __init__(self, keys: Tensor, height: int, width: int, x_offset: int, centered: bool):
        self.keys, self.h, self.centered = keys, height, centered
        self.cols = torch.arange(width, dtype=torch.int64) + x_offset     # absolute columns
        self.u = ((self.cols.to(torch.float32) + 0.5) / height).view(1, 1, 1, width)  # (1, 1, 1, W)
        self.v = ((torch.arange(height, dtype=torch.float32) + 0.5) / height).view(1, 1, height, 1)  # (1, 1, H, 1)
        self.center_u = (x_offset + width / 2) / height
        self.rows = torch.arange(height, dtype=torch.int64).view(1, 1, height, 1)  # (1, 1, H, 1)
        self.img = torch.empty(len(keys), 3, height, width)  # painted over by the sky first
        self.draw = 0

    def rand(self, n: int = 1) -> Tensor:
        """(B, n) fresh per-image uniforms (the k-th call always gives the same numbers)."""
        j = torch.arange(self.draw, self.draw + n)
        self.draw += n
        return _uniform(self.keys[:, None], j[None, :])

    def color(self, rgb: tuple[float, float, float], jitter: float = 0.06) -> Tensor:
        """(B, 3, 1, 1) a class colour with per-image brightness and hue jitter."""
        r = self.rand(4)
        base = torch.tensor(rgb) * (1 + jitter * (2 * r[:, :1] - 1))
        return (base + 0.5 * jitter * (2 * r[:, 1:] - 1)).clamp(0, 1).view(-1, 3, 1, 1)  # (B, 3, 1, 1)

    def grain(self, salt: int) -> Tensor:
        """(B, 1, H, W) per-pixel noise in [-1, 1] from absolute pixel coordinates.

        Hashing every (image, pixel) pair is the expensive part of rendering, so the pixel
        field is hashed once per salt and each image takes it with its own random offset
        (mod 1): within an image the values stay uniform and independent across pixels;
        across images the grain is shared up to that offset (invisible at its amplitude).
        """
        pixel = _uniform(self.cols.view(1, 1, 1, -1) * 65537 + self.rows, salt)   # (1, 1, H, W)
        offset = _uniform(self.keys, salt).view(-1, 1, 1, 1)                      # (B, 1, 1, 1)
        return 2 * torch.frac(pixel + offset) - 1

    def paint(self, alpha: Tensor, color: Tensor, rows: slice = slice(None)) -> None:
        """Alpha-composite ``color`` over the canvas (or a band of its rows), one fused lerp."""
        img = self.img[:, :, rows]
        self.img[:, :, rows] = torch.lerp(img, color.expand_as(img), alpha.expand_as(img))


class _Ridge:
    """A random stationary height profile: sum of octaves of (sharpened) sinusoids.

    ``sharp`` blends sin(x) with the ridged 1 - 2|sin(x/2)| (sharp peaks, round valleys).
    """

    def __init__(self, s: _Scene, level: float, amp: float, f0: float, beta: float = 1.0,
                 sharp: float = 0.0, octaves: int = 5, flat_top: float | None = None):
        k = torch.arange(octaves, dtype=torch.float32)
        r = s.rand(3 * octaves + 2)
        self.freq = f0 * 2.0**k * (0.75 + 0.5 * r[:, :octaves])                     # (B, K)
        self.phase = 2 * math.pi * r[:, octaves:2 * octaves]                          # (B, K)
        weights = 2.0 ** (-beta * k) * (0.6 + 0.8 * r[:, 2 * octaves:3 * octaves])   # (B, K)
        self.weights = weights / weights.sum(1, keepdim=True)
        self.level = level + 0.08 * (r[:, -2] - 0.5)                                  # (B,)
        self.amp = amp * (0.75 + 0.5 * r[:, -1])                                      # (B,)
        self.sharp, self.flat_top = sharp, flat_top

    def __call__(self, u: Tensor) -> Tensor:
        """Heights above the bottom edge (fraction of H) at positions ``u`` (B or 1, *rest)."""
        extra = (1,) * (u.dim() - 1)
        x = 2 * math.pi * self.freq.view(*self.freq.shape, *extra) * u.unsqueeze(1) \
            + self.phase.view(*self.phase.shape, *extra)                              # (B, K, *rest)
        wave = (1 - self.sharp) * torch.sin(x) + self.sharp * (1 - 2 * torch.sin(x / 2).abs())
        g = (self.weights.view(*self.weights.shape, *extra) * wave).sum(1)            # (B, *rest)
        if self.flat_top is not None:  # mesas: clip the peaks to flat tops (canyon)
            g = g.clamp(max=self.flat_top)
        return self.level.view(-1, *extra) + self.amp.view(-1, *extra) * g  # (B, *rest)


def _layer(s: _Scene, ridge: _Ridge, color: Tensor) -> tuple[Tensor, Tensor]:
    """Fill below a ridge line; returns the (B, 1, H, W) coverage and the (B, 1, 1, W) line."""
    line = 1 - ridge(s.u.view(1, -1)).view(-1, 1, 1, s.u.shape[-1])  # (B, 1, 1, W) row of the line
    alpha = ((s.v - line) * s.h + 0.5).clamp(0, 1)                   # anti-aliased edge, 1 px
    s.paint(alpha, color)
    return alpha, line


def _wobble(s: _Scene, freq: float) -> Tensor:
    """(B, 1, 1, W) sin(2π·freq·u + φ) with a random phase per image, so textures stay stationary."""
    return torch.sin(2 * math.pi * (freq * s.u + s.rand().view(-1, 1, 1, 1)))


def _slope(s: _Scene, ridge: _Ridge) -> Tensor:
    """(B, 1, 1, W) tanh of the profile's slope: +1 on sun-facing (left-rising) sides."""
    eps = 0.5 / s.h
    u = s.u.view(1, -1)  # (1, W)
    d = (ridge(u - eps) - ridge(u + eps)) / (2 * eps)                # (B, W)
    return torch.tanh(2 * d).view(-1, 1, 1, u.shape[-1])  # (B, W) -> (B, 1, 1, W)


def _scatter(s: _Scene, salt: int, rate: float, radius: float, slots: int = 3):
    """Poisson process along absolute x (``rate`` objects per unit of height).

    x is cut into cells of width ``2 * radius`` (the widest object); each cell holds a Poisson
    number of objects (truncated at ``slots``) at uniform positions. A pixel can only be covered
    by objects of its own cell and of the nearer neighbour, so 2 * slots candidates per column.
    Returns centres (B, S, 1, W), per-object uniforms (B, S, 1, W, 3) and presence (B, S, 1, W).
    """
    cell_w = 2 * radius
    # A random offset of the cell grid per image: no x is special, even at the cell scale.
    shift = s.rand()                                                                # (B, 1)
    x = s.u.view(1, -1) / cell_w + shift                                            # (B, W)
    cell = torch.floor(x).to(torch.int64)                                           # (B, W)
    side = torch.where(x - cell < 0.5, -1, 1)
    cells = torch.stack([cell, cell + side], 1).unsqueeze(2)                        # (B, 2, 1, W)
    keys = s.keys.view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    slot = torch.arange(slots).view(1, 1, slots, 1)  # (1, 1, slots, 1)
    # Poisson count per cell by inverse CDF: count = #{k : U > P(N <= k)}.
    lam = rate * cell_w
    cdf = torch.tensor([sum(math.exp(-lam) * lam**i / math.factorial(i) for i in range(k + 1))
                        for k in range(slots)])
    count = (_uniform(keys, salt, cells, 997) > cdf.view(1, 1, -1, 1)).sum(2)       # (B, 2, W)
    present = slot < count.unsqueeze(2)                                             # (B, 2, slots, W)
    r = torch.stack([_uniform(keys, salt, cells, slot, m) for m in range(4)], -1)   # (B, 2, slots, W, 4)
    centre = (cells + r[..., 0] - shift.view(-1, 1, 1, 1)) * cell_w                 # (B, 2, slots, W)
    b, w = cell.shape
    return (centre.reshape(b, 2 * slots, 1, w), r[..., 1:].reshape(b, 2 * slots, 1, w, 3),
            present.reshape(b, 2 * slots, 1, w))                                    # (B, S, 1, W)


def _row_band(s: _Scene, top: Tensor, bottom: Tensor, present: Tensor) -> slice:
    """The rows that objects spanning [top, bottom] (fractions of H) can touch: skip the rest."""
    if not present.any():
        return slice(0, 0)
    r0 = int(torch.floor(top[present.expand_as(top)].min() * s.h).clamp(0, s.h))
    r1 = int(torch.ceil(bottom[present.expand_as(bottom)].max() * s.h + 1).clamp(0, s.h))
    return slice(r0, max(r0, r1))


def _conifers(s: _Scene, ground: _Ridge, centre: Tensor, size: Tensor, present: Tensor,
              color: Tensor, height: float, width: float) -> None:
    """Triangular trees standing on ``ground``; centre/size/present are (B, S, 1, W)."""
    base = 1 - ground(centre) + 0.02                     # row of each tree's foot
    top = base - height * (0.6 + 0.8 * size)
    rows = _row_band(s, top, base, present)
    v = s.v[:, :, rows]
    depth = ((v - top) / (base - top)).clamp(min=0)      # 0 at the tip, 1 at the foot
    half = width * (0.6 + 0.8 * size) * depth
    alpha = ((half - (s.u - centre).abs()) * s.h).clamp(0, 1) * ((base - v) * s.h).clamp(0, 1)
    alpha = (alpha * present).amax(1, keepdim=True)      # (B, 1, rows, W) union of the slots
    s.paint(alpha, color * (1 + 0.15 * s.grain(71)[:, :, rows]), rows)


def _blobs(s: _Scene, ground: _Ridge, centre: Tensor, size: Tensor, present: Tensor,
           color: Tensor, rx: float, ry: float, lift: float) -> None:
    """Ellipses sitting on ``ground`` (rocks; tree crowns when ``lift`` > 0) shaded from the top."""
    scale = 0.6 + 0.8 * size
    foot = 1 - ground(centre) + 0.02
    cy = foot - 0.02 - lift * scale
    rows = _row_band(s, cy - ry * scale, foot, present)
    v = s.v[:, :, rows]
    d = ((s.u - centre) / (rx * scale)) ** 2 + ((v - cy) / (ry * scale)) ** 2
    alpha = ((1 - d) * s.h * ry * scale).clamp(0, 1)
    if lift > 0:  # a trunk under the crown
        trunk = ((0.012 * scale - (s.u - centre).abs()) * s.h).clamp(0, 1)
        alpha = torch.maximum(alpha, trunk * (v > cy) * (v < foot))
    alpha = (alpha * present).amax(1, keepdim=True)      # (B, 1, rows, W) union of the slots
    s.paint(alpha, color * (1.1 - 0.3 * v + 0.1 * s.grain(72)[:, :, rows]), rows)


def _objects(s: _Scene, ground: _Ridge, kind: str, rate: float, color: Tensor, size: float) -> None:
    """Scatter trees or rocks on ``ground``; in the centred variant add one large one at the centre."""
    radius = {"conifer": 0.5, "tree": 0.7, "rock": 1.0}[kind] * size
    centre, r, present = _scatter(s, 100, rate, radius)
    shapes = [(centre, r[..., 0], present, 1.0)]
    if s.centered:
        hero = torch.full((len(s.keys), 1, 1, 1), s.center_u)
        shapes.append((hero, torch.ones_like(hero), torch.ones_like(hero, dtype=torch.bool), 3.0))
    for c, sz, p, scale in shapes:
        if kind == "conifer":
            _conifers(s, ground, c, sz, p, color, 2.6 * size * scale, 0.5 * size * scale)
        elif kind == "tree":
            _blobs(s, ground, c, sz, p, color, 0.45 * size * scale, 0.4 * size * scale, 0.8 * size * scale)
        else:
            _blobs(s, ground, c, sz, p, color, 0.6 * size * scale, 0.35 * size * scale, 0.0)


def _sky(s: _Scene, top, bottom, sun=(1.0, 0.92, 0.6)) -> None:
    """Vertical gradient; in the centred variant a sun (or moon) disc with a halo at the centre."""
    top = s.color(top)
    s.img = (top + (s.color(bottom) - top) * s.v.sqrt()).expand_as(s.img).contiguous()  # (B, 3, H, W)
    r = 0.2 + 0.08 * s.rand().view(-1, 1, 1, 1)  # drawn in both variants: same scene otherwise
    if s.centered:
        d = ((s.u - s.center_u) ** 2 + (s.v - 0.3) ** 2).sqrt()
        s.paint(0.35 * torch.exp(-((d / r) - 1).clamp(min=0) * 2), s.color(sun))
        s.paint(((r - d) * s.h).clamp(0, 1), s.color(sun, 0.02))


def _clouds(s: _Scene, amount: float, color=(0.97, 0.97, 0.98)) -> None:
    """A band of lens-shaped clouds where a smooth random profile is high."""
    cover = _Ridge(s, 0.0, 1.0, 0.5, beta=0.7, octaves=4)(s.u.view(1, -1))       # (B, W)
    centre = 0.18 + 0.12 * s.rand()                                              # (B, 1)
    thick = 0.05 + 0.04 * s.rand()
    width = (cover - (1 - amount)).clamp(min=0).view(-1, 1, 1, cover.shape[-1])  # (B, 1, 1, W)
    d = ((s.v - centre.view(-1, 1, 1, 1)) / thick.view(-1, 1, 1, 1)) ** 2  # (B, 1, H, 1)
    s.paint((3 * width - d).clamp(0, 0.9) * (1 + 0.1 * s.grain(73)), s.color(color, 0.02))


def _speckles(s: _Scene, salt: int, density: float, mask: Tensor, colors: list) -> None:
    """Single-pixel points (stars, flowers): a Bernoulli field on absolute pixel coordinates."""
    u = (1 + s.grain(salt)) / 2
    pick = (1 + s.grain(salt + 1)) / 2
    for i, rgb in enumerate(colors):
        hit = (u < density) & (pick * len(colors) >= i) & (pick * len(colors) < i + 1)
        s.paint(hit * mask * (0.5 + 0.5 * (density - u).clamp(min=0) / density), s.color(rgb, 0.1))


def _mountains(s: _Scene) -> None:
    _sky(s, (0.25, 0.45, 0.80), (0.72, 0.82, 0.93))
    _clouds(s, 0.25)
    far = _Ridge(s, 0.55, 0.28, 0.5, beta=0.9, sharp=0.9)
    _layer(s, far, s.color((0.52, 0.58, 0.72)))
    line = 1 - far(s.u.view(1, -1)).view(-1, 1, 1, s.u.shape[-1])          # (B, W) -> (B, 1, 1, W)
    snow = ((1 - s.v) > far.level.view(-1, 1, 1, 1) + 0.05) & (s.v > line)  # peaks above the snowline
    s.paint(snow * 0.9, s.color((0.94, 0.96, 0.99), 0.02))
    near = _Ridge(s, 0.32, 0.22, 0.7, beta=0.8, sharp=0.8)
    _layer(s, near, s.color((0.30, 0.34, 0.30)) * (1 + 0.2 * _slope(s, near) + 0.08 * s.grain(1)))


def _dunes(s: _Scene) -> None:
    _sky(s, (0.50, 0.68, 0.90), (0.96, 0.88, 0.70))
    for i, (level, rgb) in enumerate([(0.52, (0.93, 0.76, 0.52)), (0.38, (0.88, 0.62, 0.34)),
                                      (0.22, (0.84, 0.54, 0.27))]):
        ridge = _Ridge(s, level, 0.12, 0.35, beta=1.5, sharp=0.5, octaves=3)
        ripples = 0.04 * torch.sin(2 * math.pi * (30 * s.v + 0.7 * _wobble(s, 1.3)))
        _layer(s, ridge, s.color(rgb) * (1 + 0.18 * _slope(s, ridge) + ripples * i + 0.03 * s.grain(2)))


def _sea_horizon(s: _Scene) -> None:
    _sky(s, (0.28, 0.52, 0.85), (0.85, 0.90, 0.95))
    _clouds(s, 0.35)
    sea = _Ridge(s, 0.5, 0.004, 2.0, octaves=2)
    _, line = _layer(s, sea, s.color((0.12, 0.34, 0.52)))
    depth = (s.v - line).clamp(min=0)  # perspective: waves get finer towards the horizon
    waves = torch.sin(2 * math.pi * (0.6 / (depth + 0.04) + 0.15 * _wobble(s, 3.1)))
    s.paint((depth > 0) * (0.5 * depth + 0.12 * waves.clamp(min=0)).clamp(0, 1),
            s.color((0.02, 0.12, 0.28)) + 0.6 * (waves > 0.9) * (depth < 0.15))


def _forest(s: _Scene) -> None:
    _sky(s, (0.45, 0.65, 0.88), (0.82, 0.88, 0.90))
    _layer(s, _Ridge(s, 0.46, 0.10, 0.5, beta=1.2), s.color((0.36, 0.50, 0.46)))
    ground = _Ridge(s, 0.22, 0.06, 0.4, beta=1.2)
    _layer(s, ground, s.color((0.20, 0.38, 0.15)) * (1 + 0.1 * s.grain(3)))
    _objects(s, ground, "conifer", 6.0, s.color((0.07, 0.24, 0.10)), 0.08)


def _snowfield(s: _Scene) -> None:
    _sky(s, (0.62, 0.68, 0.78), (0.88, 0.90, 0.93))
    _layer(s, _Ridge(s, 0.5, 0.14, 0.6, sharp=0.6), s.color((0.76, 0.81, 0.88)))
    ground = _Ridge(s, 0.32, 0.05, 0.4, beta=1.3)
    _layer(s, ground, s.color((0.95, 0.96, 0.99), 0.02) * (1 - 0.1 * _slope(s, ground).clamp(max=0)
                                                        + 0.02 * s.grain(4)))
    _objects(s, ground, "conifer", 1.0, s.color((0.12, 0.18, 0.15)), 0.06)


def _night_sky(s: _Scene) -> None:
    _sky(s, (0.01, 0.02, 0.08), (0.09, 0.11, 0.26), sun=(0.92, 0.92, 0.84))
    _speckles(s, 5, 0.02, (s.v < 0.8).float(), [(1.0, 1.0, 0.95), (0.8, 0.85, 1.0)])
    _layer(s, _Ridge(s, 0.30, 0.12, 0.5, sharp=0.4), s.color((0.05, 0.06, 0.13)))
    ground = _Ridge(s, 0.16, 0.06, 0.5)
    _layer(s, ground, s.color((0.01, 0.01, 0.03)))
    _objects(s, ground, "conifer", 1.5, s.color((0.01, 0.01, 0.03)), 0.07)


def _canyon(s: _Scene) -> None:
    _sky(s, (0.35, 0.55, 0.85), (0.88, 0.80, 0.68))
    strata = 1 + 0.12 * torch.sin(2 * math.pi * (22 * s.v + 0.4 * _wobble(s, 0.7)))
    _layer(s, _Ridge(s, 0.55, 0.25, 0.35, sharp=0.8, flat_top=0.3), s.color((0.76, 0.46, 0.31)) * strata)
    ground = _Ridge(s, 0.33, 0.2, 0.45, sharp=0.7, flat_top=0.2)
    shade = 1 + 0.15 * _slope(s, ground) + 0.05 * s.grain(6)
    _layer(s, ground, s.color((0.60, 0.28, 0.15)) * strata * shade)
    _objects(s, ground, "rock", 1.2, s.color((0.45, 0.22, 0.12)), 0.07)


def _meadow(s: _Scene) -> None:
    _sky(s, (0.30, 0.55, 0.92), (0.76, 0.87, 0.97))
    _clouds(s, 0.45)
    _layer(s, _Ridge(s, 0.42, 0.07, 0.4, beta=1.3), s.color((0.45, 0.62, 0.40)))
    ground = _Ridge(s, 0.27, 0.05, 0.35, beta=1.3)
    grass, _ = _layer(s, ground, s.color((0.36, 0.64, 0.20)) * (0.8 + 0.4 * s.v + 0.06 * s.grain(7)))
    _speckles(s, 8, 0.03, grass, [(0.98, 0.9, 0.2), (1.0, 1.0, 1.0), (0.9, 0.25, 0.3)])
    _objects(s, ground, "tree", 0.6, s.color((0.16, 0.40, 0.12)), 0.08)


_RECIPES = [_mountains, _dunes, _sea_horizon, _forest, _snowfield, _night_sky, _canyon, _meadow]


def render_synthscapes(labels: Tensor, height: int = 32, width: int = 128, seed: int = 0,
                       indices: Tensor | None = None, centered: bool = False,
                       x_offset: int = 0) -> Tensor:
    """Render SynthScapes images, a batch at once.

    :param labels: (B,) class indices into ``SYNTHSCAPES_CLASSES``.
    :param height, width: image size in pixels; any positive values.
    :param seed, indices: image i is a deterministic function of (seed, indices[i]) (default
        indices 0..B-1); its label is given separately, so the caller chooses the classes.
    :param centered: add a salient object at the horizontal centre (non-stationary variant).
    :param x_offset: absolute column of the first pixel; a render at offset o equals columns
        o.. of a wider render from 0 (stationary variant; the centred object follows the crop).
    :return: (B, 3, height, width) float32 in [-1, 1].
    """
    labels = torch.as_tensor(labels, dtype=torch.int64).view(-1)  # (B,)
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(SYNTHSCAPES_CLASSES)):
        raise ValueError(f"labels must be in [0, {len(SYNTHSCAPES_CLASSES)}), got {labels.tolist()}")
    if indices is None:
        indices = torch.arange(len(labels))
    indices = torch.as_tensor(indices, dtype=torch.int64).view(-1)  # (B,)
    if indices.shape != labels.shape:
        raise ValueError(f"indices {tuple(indices.shape)} and labels {tuple(labels.shape)} differ in length")
    out = torch.empty(len(labels), 3, height, width)
    for c, recipe in enumerate(_RECIPES):
        rows = (labels == c).nonzero().view(-1)  # images of class c
        if len(rows):
            scene = _Scene(_hash(seed, indices[rows], c), height, width, x_offset, centered)
            recipe(scene)
            out.index_copy_(0, rows, scene.img)
    return out.clamp_(0, 1).mul_(2).sub_(1)
