"""The procedural "shapes" dataset: solid shapes on a plain background, with captions.

Every image is described by five attributes (shape, color, size, position, background). Because we
know them exactly, we can later check whether a generated image shows what its caption asked for.
Shapes are defined by inside-tests in a normalized frame, so any image size draws the same picture;
edges are anti-aliased by supersampling (draw at 4x resolution, then average each 4x4 block).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

SHAPES = ("circle", "square", "triangle", "star", "heart", "diamond")
# Hues far apart so that even a small classifier can tell every pair apart.
COLORS = {
    "red": (0.90, 0.12, 0.12),
    "orange": (1.00, 0.55, 0.00),
    "yellow": (0.95, 0.85, 0.05),
    "green": (0.10, 0.70, 0.20),
    "cyan": (0.00, 0.78, 0.85),
    "blue": (0.15, 0.30, 0.95),
    "purple": (0.60, 0.20, 0.80),
}
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "center")
# Not pure black/white: every shape color then still contrasts with both backgrounds.
BACKGROUND_RGB = {"black": (0.08, 0.08, 0.08), "white": (0.95, 0.95, 0.95)}
BACKGROUNDS = tuple(BACKGROUND_RGB)

# Geometry, in fractions of the image side. (u, v) = (x to the right, y downwards), (0.5, 0.5) = center.
POSITION_CENTERS = {"left": (0.3, 0.5), "right": (0.7, 0.5), "top": (0.5, 0.3),
                    "bottom": (0.5, 0.7), "center": (0.5, 0.5)}
SIZE_RADIUS = {"small": 0.14, "large": 0.22}  # large covers ~2.5x the area of small
SUPERSAMPLE = 4  # samples per pixel along each axis (16 per pixel) for smooth edges
# Jitter limits: small enough that position and size classes can never be confused.
MAX_SHIFT, MAX_SCALE, MAX_ANGLE = 0.04, 0.08, 15.0
_REACH = 1.2  # every shape fits in a circle of this radius (local units) around its center


@dataclass(frozen=True)
class Attributes:
    """What one object in a shapes image looks like; unknown values raise ValueError."""
    shape: str  # one of SHAPES
    color: str  # one of COLORS
    size: str = "large"  # one of SIZES
    position: str = "center"  # one of POSITIONS
    background: str = "black"  # one of BACKGROUNDS (for multi-object scenes the first one's is used)

    def __post_init__(self):
        for name, valid in VOCAB.items():
            value = getattr(self, name)
            if not isinstance(value, str) or value not in valid:
                raise ValueError(f"unknown {name} {value!r}; valid {name}s: {', '.join(valid)}")

    def as_dict(self) -> dict:
        """The attributes as a plain dict (e.g. for JSON)."""
        return asdict(self)


# Every attribute's possible values, in Attributes' field order (the shapes classifier has one head per key).
VOCAB = {"shape": SHAPES, "color": tuple(COLORS), "size": SIZES, "position": POSITIONS, "background": BACKGROUNDS}


def attribute_indices(attrs) -> dict[str, torch.Tensor]:
    """Class index of each attribute for a list of Attributes: dict key -> LongTensor (B,) indexing VOCAB[key]."""
    return {key: torch.tensor([values.index(getattr(a, key)) for a in attrs]) for key, values in VOCAB.items()}


@dataclass(frozen=True)
class Jitter:
    """Small per-item variation so that no two dataset images are pixel-identical."""
    dx: float = 0.0  # horizontal shift in fractions of the image side (+ = right), |dx| <= MAX_SHIFT
    dy: float = 0.0  # vertical shift in fractions of the image side (+ = down), |dy| <= MAX_SHIFT
    scale: float = 1.0  # size multiplier, within 1 +- MAX_SCALE
    angle: float = 0.0  # rotation in degrees, counter-clockwise, |angle| <= MAX_ANGLE

    def __post_init__(self):
        eps = 1e-9  # tolerate float round-off at the limits
        if abs(self.dx) > MAX_SHIFT + eps or abs(self.dy) > MAX_SHIFT + eps:
            raise ValueError(f"jitter shift must be within +-{MAX_SHIFT} (got dx={self.dx}, dy={self.dy})")
        if abs(self.scale - 1.0) > MAX_SCALE + eps:
            raise ValueError(f"jitter scale must be within 1 +- {MAX_SCALE} (got {self.scale})")
        if abs(self.angle) > MAX_ANGLE + eps:
            raise ValueError(f"jitter angle must be within +-{MAX_ANGLE} degrees (got {self.angle})")

    @classmethod
    def random(cls, rng: np.random.Generator) -> "Jitter":
        """Draw a jitter uniformly within the limits (always 4 draws, so datasets stay reproducible)."""
        dx, dy = rng.uniform(-MAX_SHIFT, MAX_SHIFT, size=2)
        scale = 1.0 + rng.uniform(-MAX_SCALE, MAX_SCALE)
        angle = rng.uniform(-MAX_ANGLE, MAX_ANGLE)
        return cls(float(dx), float(dy), float(scale), float(angle))


# ---- shapes as inside-tests in a local frame: centered, y up, radius ~1 ----------------------------

def _circle(x, y):
    return x * x + y * y <= 1.0


def _square(x, y):
    return np.maximum(np.abs(x), np.abs(y)) <= 0.8  # half-side 0.8 looks as big as the unit circle


def _diamond(x, y):
    return np.abs(x) / 0.8 + np.abs(y) / 1.15 <= 1.0  # taller than wide, so never a rotated square


def _triangle(x, y, radius=1.15):
    # Equilateral, tip up: inside all three edges. The edges sit at distance radius/2 from the
    # center, with outward normals pointing at -90, 30 and 150 degrees.
    c, s, h = math.cos(math.pi / 6), 0.5, radius / 2
    return (y >= -h) & (c * x + s * y <= h) & (-c * x + s * y <= h)


def _star(x, y, tips=5, outer=1.15, inner=0.5):
    # Fold every point into one half-sector (angle 0 = a tip, half = a notch) by symmetry; there the
    # boundary is a single straight edge from the tip to the notch.
    half = math.pi / tips
    a = np.abs((np.arctan2(y, x) - math.pi / 2 + half) % (2 * half) - half)
    r = np.hypot(x, y)
    px, py = r * np.cos(a), r * np.sin(a)
    ex, ey = inner * math.cos(half) - outer, inner * math.sin(half)  # edge vector tip -> notch
    return ex * py - ey * (px - outer) >= 0  # same side of the edge as the center


def _heart(x, y, k=0.85, lift=0.29):
    # The classic implicit heart (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, scaled by k and shifted by its
    # centroid height (lift) so the heart's center of mass is the object's position.
    X, Y = x / k, y / k + lift
    return (X * X + Y * Y - 1.0) ** 3 - X * X * Y ** 3 <= 0.0


_INSIDE = {"circle": _circle, "square": _square, "triangle": _triangle, "star": _star,
           "heart": _heart, "diamond": _diamond}


# ---- rendering --------------------------------------------------------------------------------------

def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"size must be an int >= 8, e.g. 32, 64 or 128 (got {size!r})")
    return int(size)


def _as_attributes(obj) -> Attributes:
    if isinstance(obj, Attributes):
        return obj
    if isinstance(obj, Mapping):
        unknown = set(obj) - set(VOCAB)
        if unknown:
            raise ValueError(f"unknown attribute keys {sorted(unknown)}; valid keys: {', '.join(VOCAB)}")
        return Attributes(**obj)
    raise ValueError(f"expected Attributes, a dict with keys {', '.join(VOCAB)}, or a list of them; "
                     f"got {type(obj).__name__}")


def _as_objects(attrs) -> list[Attributes]:
    objects = list(attrs) if isinstance(attrs, (list, tuple)) else [attrs]
    if not objects:
        raise ValueError("empty scene: pass at least one Attributes / dict")
    return [_as_attributes(o) for o in objects]


def _as_jitters(jitter, count: int) -> list[Jitter]:
    if jitter is None or isinstance(jitter, (Jitter, Mapping)):
        jitter = [jitter] * count  # one jitter (or none) shared by all objects
    if len(jitter) != count:
        raise ValueError(f"got {len(jitter)} jitters for {count} objects; pass one per object or a single one")
    return [Jitter(**j) if isinstance(j, Mapping) else (j or Jitter()) for j in jitter]


def coverage(attrs, size: int = 32, *, jitter=None) -> np.ndarray:
    """Fraction of each pixel covered by one object: float64 (size, size) in [0, 1]."""
    a, j, size = _as_attributes(attrs), _as_jitters(jitter, 1)[0], _check_size(size)
    cx, cy = POSITION_CENTERS[a.position]
    cx, cy = cx + j.dx, cy + j.dy
    radius = SIZE_RADIUS[a.size] * j.scale
    # Only pixels near the object can be covered; working on that window is much faster.
    reach = _REACH * radius
    c0, c1 = max(math.floor((cx - reach) * size), 0), min(math.ceil((cx + reach) * size), size)
    r0, r1 = max(math.floor((cy - reach) * size), 0), min(math.ceil((cy + reach) * size), size)
    s = SUPERSAMPLE
    u = (np.arange(c0 * s, c1 * s) + 0.5) / (size * s)  # sample centers, fractions of the image
    v = (np.arange(r0 * s, r1 * s) + 0.5) / (size * s)
    dx = ((u - cx) / radius)[None, :]  # (1, W*s): local frame, unit radius
    dy = (-(v - cy) / radius)[:, None]  # (H*s, 1): minus because image rows go down, local y goes up
    # Rotating the shape by +angle = looking it up at the point rotated by -angle.
    cos, sin = math.cos(math.radians(j.angle)), math.sin(math.radians(j.angle))
    inside = _INSIDE[a.shape](cos * dx + sin * dy, -sin * dx + cos * dy)  # (H*s, W*s) bool
    h, w = r1 - r0, c1 - c0
    out = np.zeros((size, size))
    out[r0:r1, c0:c1] = inside.reshape(h, s, w, s).mean(axis=(1, 3))  # box-average each s x s block
    return out


def render(attrs, size: int = 32, *, jitter=None) -> torch.Tensor:
    """Draw one object (Attributes or dict) or a list of them: float32 (3, size, size) in [-1, 1]."""
    objects = _as_objects(attrs)
    jitters = _as_jitters(jitter, len(objects))
    size = _check_size(size)
    bg = np.asarray(BACKGROUND_RGB[objects[0].background])
    image = np.broadcast_to(bg[:, None, None], (3, size, size)).copy()  # (3, H, W)
    for obj, jit in zip(objects, jitters):  # later objects are painted over earlier ones
        m = coverage(obj, size, jitter=jit)[None]  # (1, H, W) so it broadcasts over RGB
        color = np.asarray(COLORS[obj.color])[:, None, None]  # (3, 1, 1)
        image = image * (1.0 - m) + color * m  # alpha blending with the coverage as alpha
    return torch.from_numpy((image * 2.0 - 1.0).astype(np.float32))  # [0, 1] -> [-1, 1], as diffusion uses


# ---- captions ---------------------------------------------------------------------------------------

_BG_SUFFIX = " on a {background} background"
# Different word orders and formats so a text encoder must learn the words, not one sentence pattern.
# Templates that mention the background end with _BG_SUFFIX (multi-object captions say it once).
TEMPLATES = (
    "a {size} {color} {shape} {where}",
    "{color} {shape}, {size}, {side}",
    "a {big} {color} {shape} {where} of the image",
    "a {color} {shape} ({size}) {where}" + _BG_SUFFIX,
    "{where}, a {big} {color} {shape}",
    "{size} {shape} in {color}, {side}" + _BG_SUFFIX,
    "a picture of a {big} {color} {shape} {where}",
)
_WHERE = {"left": "on the left", "right": "on the right", "top": "at the top",
          "bottom": "at the bottom", "center": "in the center"}
_SIDE = {"left": "left side", "right": "right side", "top": "top", "bottom": "bottom", "center": "center"}
_BIG = {"small": "tiny", "large": "big"}  # synonyms; each still maps back to exactly one size


def _describe(fmt: str, a: Attributes) -> str:
    return fmt.format(size=a.size, big=_BIG[a.size], color=a.color, shape=a.shape,
                      where=_WHERE[a.position], side=_SIDE[a.position], background=a.background)


def caption(attrs, template=None, *, rng=None) -> str:
    """Describe a scene in words; template = index into TEMPLATES, None = pick one with rng (or 0)."""
    objects = _as_objects(attrs)
    if template is None:
        template = 0 if rng is None else int(_check_rng(rng).integers(len(TEMPLATES)))
    if isinstance(template, bool) or not isinstance(template, (int, np.integer)) \
            or not 0 <= template < len(TEMPLATES):
        raise ValueError(f"template must be an int in 0..{len(TEMPLATES) - 1} or None (got {template!r})")
    fmt = TEMPLATES[template]
    has_bg = fmt.endswith(_BG_SUFFIX)
    body = fmt[: -len(_BG_SUFFIX)] if has_bg else fmt
    text = " and ".join(_describe(body, a) for a in objects)
    return text + _BG_SUFFIX.format(background=objects[0].background) if has_bg else text


def _check_rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, e.g. numpy.random.default_rng(0) "
                         f"(got {type(rng).__name__})")
    return rng


def random_attributes(rng: np.random.Generator) -> Attributes:
    """Draw every attribute uniformly, always in the same order (shape, color, size, position, background)."""
    _check_rng(rng)
    return Attributes(**{name: valid[int(rng.integers(len(valid)))] for name, valid in VOCAB.items()})


# ---- the dataset ------------------------------------------------------------------------------------

# (shape, color) pairs that the text-conditioned models never see in training, one per shape: prompts
# naming them test whether a model composes words it learned separately ("unseen combinations").
HELD_OUT_PAIRS = (("circle", "purple"), ("square", "cyan"), ("triangle", "orange"),
                  ("star", "green"), ("heart", "blue"), ("diamond", "red"))


class ShapesDataset(Dataset):
    """Captioned shapes images; ds[i] -> (image (3, H, W) in [-1, 1], caption, Attributes).

    exclude: (shape, color) pairs to leave out (e.g. HELD_OUT_PAIRS); such items are redrawn.
    """

    def __init__(self, size: int = 32, n: int = 1000, seed: int = 0, exclude=()):
        self.size = _check_size(size)
        exclude = {(Attributes(shape, color).shape, color) for shape, color in exclude}  # ValueError if unknown
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be an int >= 1 (got {n!r})")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an int, e.g. 0 (got {seed!r})")
        self.n, self.seed = int(n), int(seed)
        # Draw everything up front in a fixed order (attributes, jitter, template per item): item i is
        # then the same whatever order items are read in, and a larger n only appends new items.
        rng = np.random.default_rng(self.seed)
        self._attrs, self._jitters, self._captions = [], [], []
        for _ in range(self.n):
            attrs = random_attributes(rng)
            while (attrs.shape, attrs.color) in exclude:  # only consumes extra draws when exclude is non-empty
                attrs = random_attributes(rng)
            self._attrs.append(attrs)
            self._jitters.append(Jitter.random(rng))
            self._captions.append(caption(self._attrs[-1], rng=rng))
        self._images = None  # (n, 3, H, W) float32, filled by images()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not -self.n <= i < self.n:
            raise IndexError(f"index {i} out of range for a dataset of {self.n} items")
        i = i % self.n
        image = self._images[i] if self._images is not None else self._render(i)
        return image, self._captions[i], self._attrs[i]

    def _render(self, i: int) -> torch.Tensor:
        return render(self._attrs[i], self.size, jitter=self._jitters[i])

    def images(self) -> torch.Tensor:
        """All images as one (n, 3, H, W) float32 tensor, rendered on the first call and cached."""
        if self._images is None:
            self._images = torch.stack([self._render(i) for i in range(self.n)])  # (n, 3, H, W)
        return self._images

    def captions(self) -> list[str]:
        """The caption of every item, in order."""
        return list(self._captions)

    def attributes(self) -> list[Attributes]:
        """The Attributes of every item, in order."""
        return list(self._attrs)

    def jitters(self) -> list[Jitter]:
        """The Jitter of every item, in order (to re-render an item at another size)."""
        return list(self._jitters)
