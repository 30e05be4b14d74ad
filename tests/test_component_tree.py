"""Tests for harness.evaluation.component_tree: the 256-level best IoU must equal, exactly, what
the reference (wsolevaluation's per-threshold findContours loop) gives at every level.

- the facts about OpenCV's RETR_TREE contours the kernels rely on, checked directly;
- hand-computed cases (a ring's hole box, nested components, border objects, empty maps...);
- a seeded comparison on several hundred random maps of many kinds, every level 0..255 and
  both contour modes, against a per-level reference written out here with OpenCV;
- best_iou_per_threshold against the reference per-threshold path on 1000 thresholds.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from collections import Counter

import cv2
import numpy as np
import pytest

from harness.evaluation.box_accuracy import best_iou_per_threshold
from harness.evaluation.boxes import boxes_at_thresholds, iou_matrix, normalize_map, threshold_list
from harness.evaluation.component_tree import (
    best_iou_at_thresholds,
    count_fallback_levels,
    level_best_iou,
    threshold_cuts,
)

MODULE_PATH = os.path.join(os.path.dirname(__file__), "..", "harness", "evaluation", "component_tree.py")

# --------------------------------------------------------------------------- reference


def ref_boxes(binary: np.ndarray, multi: bool) -> np.ndarray:
    """The reference's boxes of one 0/255 binarization, written out from wsolevaluation:
    RETR_TREE contours, the largest cv2.contourArea in single mode (first of equals),
    [x, y, min(x + w, W - 1), min(y + h, H - 1)] from boundingRect, [0, 0, 0, 0] if none."""
    h, w = binary.shape
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    if len(contours) == 0:
        return np.zeros((1, 4), np.int64)
    if not multi:
        areas = [cv2.contourArea(c) for c in contours]
        contours = [contours[int(np.argmax(areas))]]
    out = []
    for c in contours:
        x, y, bw, bh = cv2.boundingRect(c)
        out.append([x, y, min(x + bw, w - 1), min(y + bh, h - 1)])
    return np.asarray(out, np.int64)


def ref_levels(q: np.ndarray, gt: np.ndarray, multi: bool) -> np.ndarray:
    """Best IoU at every level t = 0..255 (binarization q > t), one findContours per distinct
    binarization (found by comparing the binary images themselves)."""
    out = np.empty(256)
    seen: dict[bytes, float] = {}
    for t in range(256):
        _, binary = cv2.threshold(q, t, 255, cv2.THRESH_BINARY)
        key = binary.tobytes()
        if key not in seen:
            seen[key] = float(iou_matrix(ref_boxes(binary, multi), gt).max())
        out[t] = seen[key]
    return out


def ref_best_iou(score_map, gt, thresholds, multi):
    """Best IoU per threshold from the reference box extraction (harness.evaluation.boxes)."""
    return np.array([iou_matrix(b, gt).max() for b in boxes_at_thresholds(score_map, thresholds, multi)])


# --------------------------------------------------------------------------- random maps


def _smooth(rng, h, w, noise):
    yy, xx = np.mgrid[0:h, 0:w]
    m = np.zeros((h, w))
    for _ in range(rng.integers(1, 5)):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        sy, sx = rng.uniform(0.5, h / 3 + 1), rng.uniform(0.5, w / 3 + 1)
        m += rng.uniform(0.2, 1.0) * np.exp(-((yy - cy) ** 2 / (2 * sy**2) + (xx - cx) ** 2 / (2 * sx**2)))
    m += noise * rng.random((h, w))
    return normalize_map(m)


def _rings(rng, h, w):
    # Concentric rings around random centres: nested components and holes at many levels.
    yy, xx = np.mgrid[0:h, 0:w]
    m = np.zeros((h, w))
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = np.hypot(yy - cy, xx - cx)
        m += np.cos(r / rng.uniform(0.7, 3.0)) * rng.uniform(0.3, 1.0)
    return normalize_map(m)


KINDS = ("smooth", "smooth_noise", "noise", "few_values", "flat_regions", "binary", "rings", "sparse", "low_max")


def random_q(seed: int) -> tuple[np.ndarray, str]:
    rng = np.random.default_rng(seed)
    kind = KINDS[seed % len(KINDS)]
    if seed % 23 == 0:
        h, w = 1, int(rng.integers(1, 30))  # a single row (or pixel)
    elif seed % 29 == 0:
        h, w = int(rng.integers(1, 30)), 1
    elif kind == "noise":
        h, w = int(rng.integers(2, 26)), int(rng.integers(2, 26))
    else:
        h, w = int(rng.integers(2, 49)), int(rng.integers(2, 49))
    if kind == "smooth":
        s = _smooth(rng, h, w, 0.0)
    elif kind == "smooth_noise":
        s = _smooth(rng, h, w, rng.choice([0.05, 0.3]))
    elif kind == "noise":
        s = rng.random((h, w))
    elif kind == "few_values":
        s = rng.integers(0, 4, (h, w)) / 3.0
    elif kind == "flat_regions":
        s = np.round(_smooth(rng, h, w, 0.02) * 4) / 4
    elif kind == "binary":
        s = (rng.random((h, w)) < rng.uniform(0.2, 0.8)).astype(np.float64)
    elif kind == "rings":
        s = _rings(rng, h, w)
    elif kind == "sparse":
        s = _smooth(rng, h, w, 0.05)
        s = np.where(s > 0.5, s, 0.0)
    else:  # low_max: the cut-off is relative to a maximum below 255
        s = _smooth(rng, h, w, 0.05) * rng.uniform(0.05, 0.9)
    return (s * 255).astype(np.uint8), kind


def random_gt(rng, h, w):
    gt = []
    for _ in range(rng.integers(1, 4)):
        x0, x1 = sorted(rng.integers(0, w, size=2))
        y0, y1 = sorted(rng.integers(0, h, size=2))
        gt.append((x0, y0, x1, y1))
    return np.asarray(gt, np.int64)


# --------------------------------------------------------------------------- OpenCV facts


def _component_facts(binary):
    """Outer-contour and hole-contour boundingRects predicted from connected components."""
    h, w = binary.shape
    n, _, st, _ = cv2.connectedComponentsWithStats((binary > 0).astype(np.uint8), connectivity=8)
    outer = Counter(tuple(int(v) for v in st[i, :4]) for i in range(1, n))
    n, _, st, _ = cv2.connectedComponentsWithStats((binary == 0).astype(np.uint8), connectivity=4)
    holes = Counter()
    for i in range(1, n):
        x, y, bw, bh = (int(v) for v in st[i, :4])
        if x > 0 and y > 0 and x + bw < w and y + bh < h:  # not touching the image border
            holes[(x - 1, y - 1, bw + 2, bh + 2)] += 1
    return outer, holes


def _contour_facts(binary):
    contours, hier = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2:]
    outer, holes, kinds, areas = Counter(), Counter(), [], []
    for i, c in enumerate(contours):
        depth, parent = 0, hier[0][i][3]
        while parent >= 0:
            depth, parent = depth + 1, hier[0][parent][3]
        is_hole = depth % 2 == 1
        (holes if is_hole else outer)[cv2.boundingRect(c)] += 1
        kinds.append(is_hole)
        areas.append(cv2.contourArea(c))
    return outer, holes, kinds, areas


def _filled_area2(binary, x, y):
    """Twice the area of the unit squares between pixel centres covered by the 8-connected
    component at (x, y) with its holes filled: 2 per square with 4 such corners, 1 with 3."""
    from scipy import ndimage

    lab, _ = ndimage.label(binary > 0, structure=np.ones((3, 3)))
    filled = np.pad(ndimage.binary_fill_holes(lab == lab[y, x]), 1).astype(int)
    corners = filled[:-1, :-1] + filled[1:, :-1] + filled[:-1, 1:] + filled[1:, 1:]
    return 2 * int((corners == 4).sum()) + int((corners == 3).sum())


def test_outer_contour_area_is_the_filled_component_polygon():
    # cv2.contourArea of an outer contour = unit squares with 4 corners in the filled component
    # + half of those with 3 (what the single-contour pass accumulates).
    rng = np.random.default_rng(1)
    n = 0
    for it in range(300):
        h, w = (int(v) for v in rng.integers(1, 24, 2))
        binary = (rng.random((h, w)) < rng.uniform(0.3, 0.9)).astype(np.uint8) * 255
        contours, hier = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2:]
        for i, c in enumerate(contours):
            if hier[0][i][3] < 0:  # an outermost contour
                x, y = (int(v) for v in c[0, 0])
                assert _filled_area2(binary, x, y) == 2 * cv2.contourArea(c), (it, i)
                n += 1
    assert n > 1000


def test_retr_tree_contours_are_components_and_holes():
    # Outer contours <-> 8-connected foreground components (boundingRect = pixel bbox, also at
    # the border); hole contours <-> 4-connected background components not touching the
    # border (boundingRect = pixel bbox grown by 1). With one component, the first contour is
    # its outer contour and it has the largest area (strictly larger than any hole's).
    checked = single = 0
    for seed in range(90):
        q, _ = random_q(seed)
        levels = np.unique(np.concatenate([[0], q.ravel()]))
        for t in levels[:: max(1, len(levels) // 12)]:
            _, binary = cv2.threshold(q, int(t), 255, cv2.THRESH_BINARY)
            outer, holes, kinds, areas = _contour_facts(binary)
            assert (outer, holes) == _component_facts(binary), (seed, int(t))
            checked += 1
            if len(outer) == 1 and sum(outer.values()) == 1:
                single += 1
                assert not kinds[0]
                assert all(a < areas[0] for a in areas[1:]), (seed, int(t), areas)
    assert checked > 500 and single > 100


@pytest.mark.parametrize(
    "rows",
    [
        ["#####", "#.#.#", "#####"],  # two holes side by side
        ["######", "#.####", "##.###", "######"],  # holes touching diagonally: two holes
        ["#.#.", ".#.#", "#.#.", ".#.#"],  # checkerboard: one component, isolated 1-px holes
        ["##..", "##..", "..##", "..##"],  # diagonal-touching blobs: one component
        ["#######", "#.....#", "#.###.#", "#.#.#.#", "#.###.#", "#.....#", "#######"],  # nested
        ["...", ".#.", "..."],
        ["#"],
        ["#.#..##"],
        ["#", ".", "#"],
    ],
)
def test_retr_tree_facts_on_crafted_binaries(rows):
    binary = np.array([[255 if ch == "#" else 0 for ch in row] for row in rows], np.uint8)
    outer, holes, _, _ = _contour_facts(binary)
    assert (outer, holes) == _component_facts(binary)


# --------------------------------------------------------------------------- hand-computed cases


def _iou(a, b):
    return float(iou_matrix(np.asarray([a]), np.asarray([b]))[0, 0])


def test_ring_hole_box_multi_and_single():
    # 9 wide, 8 high. Ring: pixels x 1..6, y 1..5; hole x 2..3, y 2..3.
    q = np.zeros((8, 9), np.uint8)
    q[1:6, 1:7] = 200
    q[2:4, 2:4] = 0
    gt = np.array([[1, 1, 4, 4]])
    outer = [1, 1, 7, 6]  # pixel box [1, 1, 6, 5], one past the end
    hole = [1, 1, 5, 5]  # hole pixels 2..3 grown by one -> 1..4, one past the end -> 5
    assert _iou(hole, gt[0]) == 16 / 25
    assert _iou(outer, gt[0]) == 16 / 42
    multi = level_best_iou(q, gt, True)
    single = level_best_iou(q, gt, False)
    assert np.all(multi[:200] == 16 / 25) and np.all(single[:200] == 16 / 42)
    # Nothing survives from level 200 on: the [0, 0, 0, 0] box, IoU 0 with this GT.
    assert np.all(multi[200:] == 0.0) and np.all(single[200:] == 0.0)


def test_nested_components_and_levels():
    # An outer ring (value 100) around a hole that holds a blob (value 220):
    #   ring x 1..9, y 1..9 (hole x 3..7, y 3..7); blob x 5..6, y 5..6.
    q = np.zeros((12, 12), np.uint8)
    q[1:10, 1:10] = 100
    q[3:8, 3:8] = 0
    q[5:7, 5:7] = 220
    gt_blob = np.array([[5, 5, 7, 7]])  # exactly the blob's box with the one-past end
    multi = level_best_iou(q, gt_blob, True)
    single = level_best_iou(q, gt_blob, False)
    # Levels 100..219: only the blob survives, its box is the GT: IoU 1 in both modes.
    assert np.all(multi[100:220] == 1.0) and np.all(single[100:220] == 1.0)
    # Levels 0..99: ring + hole + blob. Multi keeps the blob's box; single the ring (largest).
    assert np.all(multi[:100] == 1.0)
    assert np.all(single[:100] == _iou([1, 1, 10, 10], gt_blob[0]))
    # The hole's box: pixels 3..7 grown by one -> 2..8, one past the end -> [2, 2, 9, 9].
    gt_hole = np.array([[2, 2, 9, 9]])
    assert np.all(level_best_iou(q, gt_hole, True)[:100] == 1.0)
    assert np.all(multi[220:] == _iou([0, 0, 0, 0], gt_blob[0]))


def test_border_objects_are_clamped():
    # 6 high, 10 wide. Block at the top-left corner: x 0..3, y 0..2 -> [0, 0, 4, 3].
    # Block at the bottom-right corner: x 7..9, y 4..5 -> [7, 4, min(10, 9), min(6, 5)].
    q = np.zeros((6, 10), np.uint8)
    q[0:3, 0:4] = 255
    q[4:6, 7:10] = 128
    for gt_box, lo_levels, hi_levels in (([0, 0, 4, 3], 1.0, 1.0), ([7, 4, 9, 5], 1.0, 0.0)):
        got = level_best_iou(q, np.array([gt_box]), True)
        assert np.all(got[:128] == lo_levels) and np.all(got[128:255] == hi_levels)
    # Single-contour: the top-left block has the larger polygon area (3 x 2 = 6 vs 2 x 1 = 2).
    single = level_best_iou(q, np.array([[7, 4, 9, 5]]), False)
    assert np.all(single[:255] == 0.0)


def test_empty_map_gives_the_zero_box_everywhere():
    q = np.zeros((5, 7), np.uint8)
    for multi in (True, False):
        assert np.all(level_best_iou(q, np.array([[0, 0, 0, 0]]), multi) == 1.0)
        assert np.all(level_best_iou(q, np.array([[0, 0, 1, 1]]), multi) == 0.25)


def test_full_map_and_tiny_maps():
    q = np.full((4, 7), 255, np.uint8)
    for multi in (True, False):
        got = level_best_iou(q, np.array([[0, 0, 6, 3]]), multi)
        assert np.all(got[:255] == 1.0) and got[255] == _iou([0, 0, 0, 0], [0, 0, 6, 3])
        one = level_best_iou(np.full((1, 1), 9, np.uint8), np.array([[0, 0, 0, 0]]), multi)
        assert np.all(one == 1.0)  # [0, 0, min(1, 0), min(1, 0)] at every level
    # A single row: below level 5, components x 1..2 -> [1, 0, 3, 0] and x 4 -> [4, 0, 5, 0].
    # Both are lines of polygon area 0; single-contour mode keeps the first in OpenCV's order,
    # which is the right-hand one here.
    row = np.array([[0, 5, 5, 0, 5, 0]], np.uint8)
    gt = np.array([[1, 0, 3, 0]])
    multi = level_best_iou(row, gt, True)
    single = level_best_iou(row, gt, False)
    assert np.all(multi[:5] == 1.0) and np.all(multi[5:] == _iou([0, 0, 0, 0], [1, 0, 3, 0]))
    assert np.all(single[:5] == 0.0) and np.all(single[5:] == _iou([0, 0, 0, 0], [1, 0, 3, 0]))


def test_two_blobs_single_mode_follows_area_and_levels():
    # Blob A (value 250) x 1..2, y 1..3; blob B (value 120) x 6..10, y 5..8 in 12 x 12.
    q = np.zeros((12, 12), np.uint8)
    q[1:4, 1:3] = 250
    q[5:9, 6:11] = 120
    gt_a = np.array([[1, 1, 3, 4]])
    single = level_best_iou(q, gt_a, False)
    assert np.all(single[120:250] == 1.0)  # A alone
    assert np.all(single[:120] == _iou([6, 5, 11, 9], gt_a[0]))  # B has the larger area
    assert np.all(level_best_iou(q, gt_a, True)[:250] == 1.0)


def test_thresholds_map_to_levels_like_int_truncation():
    # Block x 2..4, y 1..2 of value 200 in a 6 x 8 map: box [2, 1, 5, 3].
    q = np.zeros((6, 8), np.uint8)
    q[1:3, 2:5] = 200
    gt = np.array([[2, 1, 5, 3]])
    taus = np.array([-1.0, -0.004, 0.0, 0.999, 1.0, 5.0])
    # int(tau * 200): -200 (every pixel kept), int(-0.8) = 0, 0, 199, 200 and 1000 (nothing kept).
    assert threshold_cuts(taus, 200).tolist() == [-1, 0, 0, 199, 200, 255]
    whole, block, none = _iou([0, 0, 7, 5], gt[0]), 1.0, _iou([0, 0, 0, 0], gt[0])
    for multi in (True, False):
        got = best_iou_at_thresholds(level_best_iou(q, gt, multi), q, gt, taus)
        assert got.tolist() == [whole, block, block, block, none, none]
        s = q / 255.0
        assert np.array_equal(best_iou_per_threshold(s, gt, taus, multi), ref_best_iou(s, gt, taus, multi))


def test_non_contiguous_input_and_repeat_calls():
    rng = np.random.default_rng(5)
    q = rng.integers(0, 256, (30, 40)).astype(np.uint8)
    gt = np.array([[3, 4, 20, 25]])
    for multi in (True, False):
        a = level_best_iou(q[:, ::2], gt, multi)
        b = level_best_iou(np.ascontiguousarray(q[:, ::2]), gt, multi)
        c = level_best_iou(q[:, ::2], gt, multi)
        assert np.array_equal(a, b) and np.array_equal(a, c)
        assert np.array_equal(a, ref_levels(np.ascontiguousarray(q[:, ::2]), gt, multi))


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        level_best_iou(np.zeros((3, 3)), np.array([[0, 0, 1, 1]]), True)  # not uint8
    with pytest.raises(ValueError):
        level_best_iou(np.zeros((3, 3), np.uint8), np.zeros((0, 4), np.int64), True)
    with pytest.raises(ValueError):
        level_best_iou(np.zeros((3, 3), np.uint8), np.array([0, 0, 1, 1]), True)


# --------------------------------------------------------------------------- random comparison

N_RANDOM = 720


@pytest.mark.parametrize("chunk", range(4))
def test_every_level_matches_reference_on_random_maps(chunk):
    for seed in range(chunk, N_RANDOM, 4):
        q, kind = random_q(seed)
        gt = random_gt(np.random.default_rng(10_000 + seed), *q.shape)
        for multi in (True, False):
            got = level_best_iou(q, gt, multi)
            want = ref_levels(q, gt, multi)
            assert got.dtype == np.float64 and got.shape == (256,)
            bad = np.flatnonzero(got != want)
            assert bad.size == 0, (seed, kind, q.shape, multi, bad[:5].tolist(), got[bad[:5]], want[bad[:5]])


@pytest.mark.parametrize("chunk", range(2))
def test_fast_best_iou_matches_reference_on_1000_thresholds(chunk):
    thresholds = threshold_list(0.001)
    odd = np.random.default_rng(3).uniform(-0.2, 1.3, size=300)  # negative and > 1 as well
    for seed in range(chunk, 80, 2):
        q, kind = random_q(seed)
        rng = np.random.default_rng(20_000 + seed)
        s = q / 255.0 * rng.uniform(0.999, 1.0) if kind != "low_max" else q / 300.0
        s = np.where(rng.random(s.shape) < 0.05, np.nextafter(s, 1.0), s).clip(0, 1)  # off-grid values
        gt = random_gt(rng, *s.shape)
        for multi in (True, False):
            for th in (thresholds, odd):
                got = best_iou_per_threshold(s, gt, th, multi)
                assert np.array_equal(got, ref_best_iou(s, gt, th, multi)), (seed, kind, multi, len(th))


def test_fast_best_iou_on_a_full_size_smooth_map():
    rng = np.random.default_rng(11)
    s = _smooth(rng, 224, 224, 0.05)
    gt = np.array([[40, 50, 150, 170], [0, 0, 30, 30]])
    for multi in (True, False):
        got = best_iou_per_threshold(s, gt, threshold_list(0.001), multi)
        assert np.array_equal(got, ref_best_iou(s, gt, threshold_list(0.001), multi))


def test_noise_map_with_thousands_of_components():
    rng = np.random.default_rng(12)
    q = rng.integers(0, 256, (96, 96)).astype(np.uint8)
    gt = np.array([[10, 10, 60, 70]])
    for multi in (True, False):
        got = level_best_iou(q, gt, multi)
        for t in (0, 3, 60, 127, 128, 200, 250, 254, 255):
            _, binary = cv2.threshold(q, t, 255, cv2.THRESH_BINARY)
            assert got[t] == iou_matrix(ref_boxes(binary, multi), gt).max(), (multi, t)


def test_threads_get_their_own_work_arrays():
    from concurrent.futures import ThreadPoolExecutor

    cases = []
    for seed in range(24):
        q, _ = random_q(seed)
        gt = random_gt(np.random.default_rng(seed), *q.shape)
        cases.append((q, gt, seed % 2 == 0))
    want = [level_best_iou(q, gt, multi) for q, gt, multi in cases]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            got = list(pool.map(lambda c: level_best_iou(*c), cases))
            assert all(np.array_equal(a, b) for a, b in zip(got, want))


def test_fallback_counter():
    # Distinct binarizations with foreground: q > 199 (A alone) and q > 99 (A and B; the same
    # as q > 0 .. q > 98, counted once). Only the latter has two contours of the largest area.
    q = np.zeros((10, 10), np.uint8)
    q[1:3, 1:3] = 200  # A: 2 x 2 pixels, polygon area 1
    q[6:8, 6:8] = 100  # B: the same
    assert count_fallback_levels(q) == (1, 2)
    q[6:9, 6:9] = 100  # B: 3 x 3 pixels, area 4: no tie
    assert count_fallback_levels(q) == (0, 2)
    gt = np.array([[6, 6, 9, 9]])  # B's box with the one-past end
    assert np.all(level_best_iou(q, gt, False)[:100] == 1.0)


def test_single_contour_area_is_the_polygon_around_holes():
    # Ring R: pixels x 1..5, y 1..5, 1 px wide: 16 pixels, polygon area 4 x 4 = 16 (the hole
    # counts). Block B: x 8..13, y 1..4: 24 pixels, polygon area 5 x 3 = 15. R is kept.
    q = np.zeros((8, 16), np.uint8)
    q[1:6, 1:6] = 90
    q[2:5, 2:5] = 0
    q[1:5, 8:14] = 90
    gt_ring = np.array([[1, 1, 6, 6]])
    assert np.all(level_best_iou(q, gt_ring, False)[:90] == 1.0)
    q[1:5, 8:15] = 90  # B: x 8..14, area 6 x 3 = 18 > 16
    assert np.all(level_best_iou(q, gt_ring, False)[:90] == _iou([8, 1, 15, 5], gt_ring[0]))


# --------------------------------------------------------------------------- import behaviour


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def test_module_import_does_not_import_numba():
    r = _run(
        f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("ct_probe", {MODULE_PATH!r})
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        assert "numba" not in sys.modules, "numba imported at module import"
        print("ok")
        """
    )
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_missing_numba_raises_import_error_with_install_hint():
    r = _run(
        f"""
        import importlib.util, sys
        import numpy as np
        sys.modules["numba"] = None  # as if numba were not installed
        spec = importlib.util.spec_from_file_location("ct_probe", {MODULE_PATH!r})
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        try:
            mod.level_best_iou(np.zeros((3, 3), np.uint8), np.array([[0, 0, 1, 1]]), True)
        except ImportError as e:
            print("IMPORTERROR", e)
        """
    )
    assert "IMPORTERROR" in r.stdout and "pip install numba" in r.stdout, (r.stdout, r.stderr)

