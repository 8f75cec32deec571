"""Tests for course_lib.data: the shapes renderer, captions, dataset, photo and toy 2D sets."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib.data import (BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES, TEMPLATES, TOY2D, Attributes,
                             Jitter, ShapesDataset, caption, coverage, photo, random_attributes, render,
                             toy2d)
from course_lib.data.shapes import BACKGROUND_RGB, MAX_ANGLE, MAX_SCALE, MAX_SHIFT

# The most extreme jitters allowed: if these keep the classes apart, every random jitter does.
CORNER_JITTERS = [Jitter(dx, dy, scale, angle)
                  for dx, dy, scale, angle in itertools.product((-MAX_SHIFT, MAX_SHIFT), (-MAX_SHIFT, MAX_SHIFT),
                                                                (1 - MAX_SCALE, 1 + MAX_SCALE),
                                                                (-MAX_ANGLE, MAX_ANGLE))]


def to01(img):
    return (img + 1) / 2


# ---- vocabulary -------------------------------------------------------------------------------------

def test_vocabulary_sizes_and_contrast():
    assert len(SHAPES) >= 5 and len(COLORS) >= 6 and SIZES == ("small", "large")
    assert set(POSITIONS) >= {"left", "right", "top", "bottom", "center"} and len(BACKGROUNDS) >= 2
    rgb = {k: np.array(v) for k, v in COLORS.items()}
    for a, b in itertools.combinations(rgb, 2):  # every pair of colors far apart
        assert np.linalg.norm(rgb[a] - rgb[b]) > 0.3, (a, b)
    for c in rgb:  # and every color far from every background
        for bg in BACKGROUNDS:
            assert np.linalg.norm(rgb[c] - np.array(BACKGROUND_RGB[bg])) > 0.6, (c, bg)


def test_attributes_as_dict_roundtrip():
    a = Attributes("star", "red", "small", "left", "white")
    assert a.as_dict() == {"shape": "star", "color": "red", "size": "small", "position": "left",
                           "background": "white"}
    assert Attributes(**a.as_dict()) == a
    assert torch.equal(render(a), render(a.as_dict()))


# ---- rendering --------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [32, 64, 128])
def test_render_shape_and_range(size):
    img = render(Attributes("heart", "cyan", "large", "center", "white"), size)
    assert img.shape == (3, size, size) and img.dtype == torch.float32
    assert img.min() >= -1 and img.max() <= 1
    # Corners are background, the center is the shape color.
    bg = torch.tensor(BACKGROUND_RGB["white"], dtype=torch.float32)
    assert torch.allclose(to01(img[:, 0, 0]), bg, atol=1e-6)
    assert torch.allclose(to01(img[:, size // 2, size // 2]), torch.tensor(COLORS["cyan"]).float(), atol=1e-6)


def test_any_size_draws_the_same_picture():
    a = Attributes("star", "yellow", "large", "right")
    j = Jitter(0.02, -0.03, 1.05, 10.0)
    small = render(a, 32, jitter=j)
    big_shrunk = F.avg_pool2d(render(a, 128, jitter=j)[None], 4)[0]  # (3, 32, 32)
    assert (small - big_shrunk).abs().mean() < 0.01


def test_edges_are_anti_aliased():
    m = coverage(Attributes("circle", "red"), 32)
    partial = (m > 0.02) & (m < 0.98)
    assert partial.sum() >= 20  # a whole ring of partially covered pixels
    assert m.max() == 1.0 and m.min() == 0.0


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_and_color_renders_its_color(shape):
    for color, rgb in COLORS.items():
        for bg in BACKGROUNDS:
            a = Attributes(shape, color, "large", "center", bg)
            full = coverage(a, 32) == 1.0  # pixels entirely inside the shape
            assert full.sum() > 40
            img = to01(render(a, 32)).numpy()
            mean = img[:, full].mean(axis=1)
            dists = {c: np.linalg.norm(mean - np.array(v)) for c, v in COLORS.items()}
            assert dists[color] < 1e-5 and min(dists, key=dists.get) == color


def test_shapes_have_different_silhouettes():
    masks = {s: coverage(Attributes(s, "red"), 64) > 0.5 for s in SHAPES}
    for a, b in itertools.combinations(SHAPES, 2):
        iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
        assert iou < 0.85, (a, b, iou)


def centroid(m):
    rows, cols = np.indices(m.shape)
    n = m.shape[0]
    return ((cols + 0.5) * m).sum() / m.sum() / n, ((rows + 0.5) * m).sum() / m.sum() / n  # (u, v)


def in_region(position, u, v):
    side, mid = 0.42, 0.08  # off-center along one axis, near the middle on the other
    return {"left": u < side and abs(v - 0.5) < mid, "right": u > 1 - side and abs(v - 0.5) < mid,
            "top": v < side and abs(u - 0.5) < mid, "bottom": v > 1 - side and abs(u - 0.5) < mid,
            "center": abs(u - 0.5) < mid and abs(v - 0.5) < mid}[position]


@pytest.mark.parametrize("position", POSITIONS)
def test_position_is_unambiguous_under_any_jitter(position):
    for shape, size, j in itertools.product(SHAPES, SIZES, CORNER_JITTERS[::3]):
        u, v = centroid(coverage(Attributes(shape, "red", size, position), 32, jitter=j))
        assert in_region(position, u, v), (shape, size, j, u, v)
        others = [p for p in POSITIONS if p != position and in_region(p, u, v)]
        assert not others


@pytest.mark.parametrize("shape", SHAPES)
def test_large_is_clearly_larger_than_small(shape):
    def area(size, scale):
        return coverage(Attributes(shape, "red", size), 64, jitter=Jitter(scale=scale)).sum()
    assert area("large", 1 - MAX_SCALE) > 1.5 * area("small", 1 + MAX_SCALE)


def test_multi_object_scene_draws_all_objects_in_order():
    left = Attributes("circle", "red", "large", "left", "white")
    right = {"shape": "square", "color": "blue", "size": "small", "position": "right", "background": "black"}
    img = to01(render([left, right], 64)).numpy()
    red, blue = np.array(COLORS["red"]), np.array(COLORS["blue"])
    assert np.allclose(img[:, 32, 19], red) and np.allclose(img[:, 32, 45], blue)
    assert np.allclose(img[:, 2, 2], BACKGROUND_RGB["white"])  # the first object's background
    # Later objects are painted on top: a small square inside a large circle shows its color.
    img = to01(render([Attributes("circle", "red"), Attributes("square", "green", "small")], 32)).numpy()
    assert np.allclose(img[:, 16, 16], COLORS["green"]) and np.allclose(img[:, 16, 9], COLORS["red"])
    # One jitter per object, or one shared.
    assert render([left, right], jitter=[Jitter(dx=0.01), None]).shape == (3, 32, 32)


# ---- captions ---------------------------------------------------------------------------------------

def test_all_templates_name_color_shape_size_and_position():
    size_words = {"small": ("small", "tiny"), "large": ("large", "big")}
    pos_words = {"left": "left", "right": "right", "top": "top", "bottom": "bottom", "center": "center"}
    rng = np.random.default_rng(0)
    for t in range(len(TEMPLATES)):
        for _ in range(10):
            a = random_attributes(rng)
            text = caption(a, t)
            words = text.replace(",", " ").replace("(", " ").replace(")", " ").split()
            assert a.color in words and a.shape in words, text
            assert any(w in words for w in size_words[a.size]), text
            assert pos_words[a.position] in words, text
    a = Attributes("star", "red", "small", "left", "white")
    assert caption(a) == caption(a, 0) == "a small red star on the left"
    assert len({caption(a, t) for t in range(len(TEMPLATES))}) == len(TEMPLATES) >= 5
    assert any("white background" in caption(a, t) for t in range(len(TEMPLATES)))


def test_caption_is_deterministic_given_rng_and_handles_scenes():
    a = Attributes("heart", "green")
    c1 = [caption(a, rng=np.random.default_rng(3)) for _ in range(3)]
    assert len(set(c1)) == 1
    picked = {caption(a, rng=np.random.default_rng(s)) for s in range(40)}
    assert len(picked) >= 4
    scene = [Attributes("circle", "red", "large", "left"), Attributes("square", "blue", "small", "right")]
    text = caption(scene, 3)
    assert text == "a red circle (large) on the left and a blue square (small) on the right on a black background"


# ---- dataset ----------------------------------------------------------------------------------------

def test_dataset_is_deterministic_per_seed():
    a, b, c = ShapesDataset(32, 40, seed=7), ShapesDataset(32, 40, seed=7), ShapesDataset(32, 40, seed=8)
    assert torch.equal(a.images(), b.images()) and a.captions() == b.captions()
    assert a.attributes() == b.attributes()
    assert not torch.equal(a.images(), c.images()) and a.captions() != c.captions()
    # A longer dataset with the same seed starts with the same items.
    longer = ShapesDataset(32, 60, seed=7)
    assert torch.equal(longer.images()[:40], a.images()) and longer.captions()[:40] == a.captions()


def test_dataset_items_and_cache():
    ds = ShapesDataset(32, 30, seed=1)
    assert len(ds) == 30
    img, text, attrs = ds[5]  # rendered lazily before images() is called
    assert img.shape == (3, 32, 32) and isinstance(text, str) and isinstance(attrs, Attributes)
    assert text == caption(attrs, next(t for t in range(len(TEMPLATES)) if caption(attrs, t) == text))
    imgs = ds.images()
    assert imgs.shape == (30, 3, 32, 32) and imgs.dtype == torch.float32
    assert ds.images() is imgs  # cached, not re-rendered
    assert torch.equal(imgs[5], img) and torch.equal(ds[-1][0], imgs[29])
    assert len({tuple(x.flatten().tolist()) for x in imgs}) == 30  # jitter: every image differs
    with pytest.raises(IndexError):
        ds[30]


def test_dataset_uses_many_caption_formats_and_attribute_values():
    ds = ShapesDataset(32, 300, seed=0)
    formats = set()
    for text, a in zip(ds.captions(), ds.attributes()):
        formats |= {t for t in range(len(TEMPLATES)) if caption(a, t) == text}
    assert len(formats) >= 3
    attrs = ds.attributes()
    for field, valid in [("shape", SHAPES), ("color", COLORS), ("size", SIZES), ("position", POSITIONS),
                         ("background", BACKGROUNDS)]:
        assert {getattr(a, field) for a in attrs} == set(valid)


def test_dataset_at_64_matches_its_attributes():
    ds = ShapesDataset(64, 12, seed=3)
    for img, _, a in (ds[i] for i in range(len(ds))):
        bg = np.array(BACKGROUND_RGB[a.background])
        m = np.abs(to01(img).numpy() - bg[:, None, None]).max(axis=0) > 0.05  # (H, W) shape pixels
        assert in_region(a.position, *centroid(m.astype(float)))


# ---- photo and toy 2D -------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [32, 64])
def test_photo(size):
    p = photo(size)
    assert p.shape == (3, size, size) and p.dtype == torch.float32
    assert p.min() >= -1 and p.max() <= 1 and p.std() > 0.2
    assert (p[0] - p[2]).abs().mean() > 0.02  # a color photo, not gray
    assert torch.equal(photo(size), p)


def test_photo_sizes_agree():
    small, big = photo(32), F.avg_pool2d(photo(128)[None], 4)[0]  # (3, 32, 32)
    assert (small - big).abs().mean() < 0.05


@pytest.mark.parametrize("name", TOY2D)
def test_toy2d_scale_and_determinism(name):
    x = toy2d(name, 4000, seed=0)
    assert x.shape == (4000, 2) and x.dtype == torch.float32
    assert abs(x.std().item() - 1) < 0.1 and x.mean(0).abs().max() < 0.1
    assert ((x.std(0) > 0.5) & (x.std(0) < 1.5)).all()
    assert torch.equal(x, toy2d(name, 4000, seed=0)) and not torch.equal(x, toy2d(name, 4000, seed=1))


def test_eight_gaussians_has_eight_blobs():
    x = toy2d("8gaussians", 2000, seed=0)
    angle = torch.atan2(x[:, 1], x[:, 0]) / (2 * torch.pi / 8)  # in units of 1/8 turn
    dev = (angle - angle.round()).abs()  # 0 = exactly on one of the 8 directions, 0.5 = halfway between
    assert (dev < 0.3).float().mean() > 0.99 and dev.mean() < 0.12  # uniform angles would give 0.6, 0.25
    assert len(set(angle.round().remainder(8).tolist())) == 8


# ---- bad input --------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, bad, valid", [
    ("shape", "hexagon", "circle, square"), ("color", "magenta", "red"), ("size", "medium", "small, large"),
    ("position", "corner", "left, right"), ("background", "grey", "black, white")])
def test_unknown_attribute_names_valid_values(field, bad, valid):
    good = {"shape": "circle", "color": "red", "size": "small", "position": "left", "background": "black"}
    with pytest.raises(ValueError, match=f"valid {field}s: .*{valid}"):
        Attributes(**{**good, field: bad})
    with pytest.raises(ValueError, match=valid):
        render({**good, field: bad})
    with pytest.raises(ValueError, match=valid):
        caption({**good, field: bad})


def test_bad_input_errors():
    with pytest.raises(ValueError, match="valid keys: shape, color"):
        render({"shape": "circle", "color": "red", "colour": "red"})
    for bad in (4, 32.0, "32", True):
        with pytest.raises(ValueError, match="int >= 8"):
            render(Attributes("circle", "red"), bad)
    with pytest.raises(ValueError, match="int >= 8"):
        ShapesDataset(size=7)
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        ShapesDataset(n=0)
    with pytest.raises(ValueError, match="template must be an int in 0..6"):
        caption(Attributes("circle", "red"), template=len(TEMPLATES))
    with pytest.raises(ValueError, match="numpy.random.Generator"):
        random_attributes(42)
    with pytest.raises(ValueError, match="within"):
        Jitter(dx=0.2)
    with pytest.raises(ValueError, match="one per object"):
        render([Attributes("circle", "red")] * 2, jitter=[Jitter()] * 3)
    with pytest.raises(ValueError, match="at least one"):
        render([])
    with pytest.raises(ValueError, match="valid names: moons, swiss_roll, 8gaussians"):
        toy2d("spiral")
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        toy2d("moons", n=0)
    for bad in (4, 64.0, 5000):
        with pytest.raises(ValueError, match="size must be an int in 8..1024"):
            photo(bad)


def test_exclude_leaves_out_held_out_pairs_and_keeps_default_stream():
    from course_lib.data import HELD_OUT_PAIRS

    plain = ShapesDataset(size=8, n=400, seed=3)
    held = ShapesDataset(size=8, n=400, seed=3, exclude=HELD_OUT_PAIRS)
    assert not {(a.shape, a.color) for a in held.attributes()} & set(HELD_OUT_PAIRS)
    assert {(a.shape, a.color) for a in plain.attributes()} & set(HELD_OUT_PAIRS)  # they do occur normally
    assert ShapesDataset(size=8, n=400, seed=3, exclude=()).attributes() == plain.attributes()
    with pytest.raises(ValueError, match="valid shapes"):
        ShapesDataset(size=8, n=4, exclude=[("hexagon", "red")])
