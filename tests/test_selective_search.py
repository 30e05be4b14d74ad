"""Selective Search proposals: known boxes on a constructed image, box invariants, hierarchy size,
and the vectorised helpers (histograms, adjacency, boxes, greedy merging) against naive loops."""
import numpy as np
import pytest
from scipy import ndimage
from skimage.segmentation import felzenszwalb

from harness.annotators import selective_search as ss
from harness.errors import HarnessError

H, W = 40, 48
RED_BOX = (5, 4, 16, 13)     # x0, y0, x1, y1 inclusive
BLUE_BOX = (25, 20, 40, 35)


def _scene(noise: int = 3, seed: int = 0, two_tone: bool = False) -> np.ndarray:
    img = np.full((H, W, 3), (200, 200, 190), np.int64)
    for (x0, y0, x1, y1), rgb in ((RED_BOX, (210, 30, 30)), (BLUE_BOX, (30, 60, 200))):
        img[y0:y1 + 1, x0:x1 + 1] = rgb
    if two_tone:  # each rectangle in two shades: its box only appears once the halves merge
        img[RED_BOX[1]:RED_BOX[3] + 1, 11:RED_BOX[2] + 1] = (150, 20, 60)
        img[28:BLUE_BOX[3] + 1, BLUE_BOX[0]:BLUE_BOX[2] + 1] = (40, 120, 220)
    img += np.random.default_rng(seed).integers(-noise, noise + 1, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _texture(seed: int = 1, shape=(24, 28)) -> np.ndarray:
    # Smoothed noise: several Felzenszwalb regions of varied sizes, no exact similarity ties.
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random(shape + (3,)), (2, 2, 0))
    return (255 * (img - img.min()) / np.ptp(img)).astype(np.uint8)


def _labels(img, space="hsv", **kw):
    f = ss._to_colour_space(img, space)
    seg = felzenszwalb(f, scale=kw.get("scale", 100.0), sigma=0.8, min_size=kw.get("min_size", 20))
    _, lab = np.unique(seg, return_inverse=True)
    return lab.reshape(img.shape[:2]), f


@pytest.mark.parametrize("space", ["hsv", "lab", "rgb"])
def test_constructed_rectangles_and_full_image_are_proposed(space):
    boxes = {tuple(b) for b in ss.selective_search(_scene(), color_spaces=(space,)).tolist()}
    assert RED_BOX in boxes and BLUE_BOX in boxes
    assert (0, 0, W - 1, H - 1) in boxes


def test_two_tone_rectangles_are_recovered_by_merging():
    # Felzenszwalb's pre-blur leaves 1-px ring regions along sharp edges, so within one colour
    # space a merged rectangle may come out one pixel too large; the three spaces together hit
    # both exactly, and each space alone comes within a pixel.
    img = _scene(two_tone=True)
    for space in ("hsv", "lab", "rgb"):
        boxes = ss.selective_search(img, color_spaces=(space,))
        for rect in (RED_BOX, BLUE_BOX):
            assert np.abs(boxes - rect).max(axis=1).min() <= 1, (space, rect)
    boxes = {tuple(b) for b in ss.selective_search(img, color_spaces=("hsv", "lab", "rgb")).tolist()}
    assert RED_BOX in boxes and BLUE_BOX in boxes
    labels, f = _labels(img, "lab")
    assert BLUE_BOX not in {tuple(b) for b in ss.region_boxes(labels, labels.max() + 1).tolist()}


@pytest.mark.parametrize("img", [_scene(), _texture(), _texture(2, (17, 9))])
def test_box_invariants_and_determinism(img):
    boxes = ss.selective_search(img, color_spaces=("hsv", "lab", "rgb"), min_box_side=1)
    assert boxes.dtype == np.int64 and boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) > 0
    x0, y0, x1, y1 = boxes.T
    h, w = img.shape[:2]
    assert (0 <= x0).all() and (x0 <= x1).all() and (x1 <= w - 1).all()
    assert (0 <= y0).all() and (y0 <= y1).all() and (y1 <= h - 1).all()
    assert len(np.unique(boxes, axis=0)) == len(boxes)
    assert tuple(boxes[0]) == (0, 0, w - 1, h - 1)  # the last merge comes first
    np.testing.assert_array_equal(boxes, ss.selective_search(img.copy(), color_spaces=("hsv", "lab", "rgb"),
                                                             min_box_side=1))


def test_box_count_is_distinct_region_boxes_of_the_hierarchy():
    img = _texture()
    labels, f = _labels(img)
    n = labels.max() + 1
    assert n > 3
    hier = ss.hierarchy_boxes(labels, f)
    assert len(hier) == 2 * n - 1  # every initial region plus one per merge, down to one region
    boxes = ss.selective_search(img, min_box_side=1)
    assert len(boxes) == len(np.unique(hier, axis=0)) <= 2 * n - 1
    # Documented order: reversed creation order (last merge first), first occurrence kept.
    first = {}
    for b in hier[::-1].tolist():
        first.setdefault(tuple(b), len(first))
    assert [tuple(b) for b in boxes.tolist()] == list(first)


def test_filters_and_truncation_keep_order():
    img = _texture()
    full = ss.selective_search(img, min_box_side=1)
    side = np.minimum(full[:, 2] - full[:, 0], full[:, 3] - full[:, 1]) + 1
    np.testing.assert_array_equal(ss.selective_search(img, min_box_side=4), full[side >= 4])
    np.testing.assert_array_equal(ss.selective_search(img, min_box_side=1, max_proposals=5), full[:5])
    both = ss.selective_search(img, color_spaces=("hsv", "rgb"), min_box_side=1)
    np.testing.assert_array_equal(both[:len(full)], full)  # spaces concatenated in the order given
    assert len(both) >= len(full)


def test_vectorised_helpers_match_naive_loops():
    img = _texture(3, (9, 11))
    labels, f = _labels(img, scale=20.0, min_size=3)
    n, (h, w) = labels.max() + 1, labels.shape
    col, box = np.zeros((n, 75)), np.full((n, 4), -1)
    pairs = set()
    for y in range(h):
        for x in range(w):
            r = labels[y, x]
            for c in range(3):
                col[r, c * 25 + min(int(f[y, x, c] * 25), 24)] += 1
            box[r] = (x, y, x, y) if box[r, 0] < 0 else (min(box[r, 0], x), min(box[r, 1], y),
                                                         max(box[r, 2], x), max(box[r, 3], y))
            for yy, xx in ((y, x + 1), (y + 1, x)):
                if yy < h and xx < w and labels[yy, xx] != r:
                    pairs.add((min(r, labels[yy, xx]), max(r, labels[yy, xx])))
    np.testing.assert_allclose(ss.colour_histograms(labels, f, n), col / col.sum(1, keepdims=True))
    np.testing.assert_array_equal(ss.region_boxes(labels, n), box)
    assert [tuple(p) for p in ss.adjacent_pairs(labels).tolist()] == sorted(pairs)

    tex = np.zeros((n, 240))
    for c in range(3):
        gy = ndimage.gaussian_filter(f[..., c], 1.0, order=(1, 0))
        gx = ndimage.gaussian_filter(f[..., c], 1.0, order=(0, 1))
        resp = [[[max(np.cos(t * np.pi / 4) * gx[y, x] + np.sin(t * np.pi / 4) * gy[y, x], 0.0)
                  for t in range(8)] for x in range(w)] for y in range(h)]
        top = max(v for row in resp for px in row for v in px)
        for y in range(h):
            for x in range(w):
                for t in range(8):
                    tex[labels[y, x], (c * 8 + t) * 10 + min(int(resp[y][x][t] / top * 10), 9)] += 1
    np.testing.assert_allclose(ss.texture_histograms(labels, f, n), tex / tex.sum(1, keepdims=True))


def test_greedy_merging_matches_naive_recompute_everything():
    img = _texture(4, (20, 22))
    labels, f = _labels(img, scale=30.0, min_size=5)
    n, im = labels.max() + 1, float(labels.size)
    assert n > 5
    regions = {}
    for r in range(n):
        m = labels == r
        ys, xs = np.nonzero(m)
        regions[r] = dict(mask=m, box=(xs.min(), ys.min(), xs.max(), ys.max()))
    col, tex = ss.colour_histograms(labels, f, n), ss.texture_histograms(labels, f, n)
    for r in range(n):
        regions[r].update(col=col[r], tex=tex[r], size=float(regions[r]["mask"].sum()))
    order = [regions[r]["box"] for r in range(n)]
    while len(regions) > 1:
        best = None
        for i in sorted(regions):
            for j in sorted(regions):
                a, b = regions[i], regions[j]
                grown = ndimage.binary_dilation(a["mask"], structure=ndimage.generate_binary_structure(2, 1))
                if j <= i or not (grown & b["mask"]).any():
                    continue
                bb = (max(a["box"][2], b["box"][2]) - min(a["box"][0], b["box"][0]) + 1) * \
                     (max(a["box"][3], b["box"][3]) - min(a["box"][1], b["box"][1]) + 1)
                s = (np.minimum(a["col"], b["col"]).sum() + np.minimum(a["tex"], b["tex"]).sum()
                     + 1 - (a["size"] + b["size"]) / im + 1 - (bb - a["size"] - b["size"]) / im)
                if best is None or s > best[0] + 1e-12:
                    best = (s, i, j)
        _, i, j = best
        a, b = regions.pop(i), regions.pop(j)
        size = a["size"] + b["size"]
        box = (min(a["box"][0], b["box"][0]), min(a["box"][1], b["box"][1]),
               max(a["box"][2], b["box"][2]), max(a["box"][3], b["box"][3]))
        regions[len(order)] = dict(mask=a["mask"] | b["mask"], box=box, size=size,
                                           col=(a["size"] * a["col"] + b["size"] * b["col"]) / size,
                                           tex=(a["size"] * a["tex"] + b["size"] * b["tex"]) / size)
        order.append(box)
    np.testing.assert_array_equal(ss.hierarchy_boxes(labels, f), np.array(order))


@pytest.mark.parametrize("bad, match", [
    (np.zeros((8, 8, 3), np.float32), "uint8"),
    (np.zeros((8, 8, 3), np.int64), "uint8"),
    ([[[0, 0, 0]]], "uint8"),
    (np.zeros((8, 8), np.uint8), "shape"),
    (np.zeros((8, 8, 4), np.uint8), "shape"),
    (np.zeros((0, 8, 3), np.uint8), "shape"),
])
def test_bad_images_raise_harness_error(bad, match):
    with pytest.raises(HarnessError, match=match):
        ss.selective_search(bad)


@pytest.mark.parametrize("kw", [dict(color_spaces=("xyz",)), dict(color_spaces=()),
                                dict(min_box_side=0), dict(max_proposals=-1)])
def test_bad_options_raise_harness_error(kw):
    with pytest.raises(HarnessError):
        ss.selective_search(_texture(), **kw)
