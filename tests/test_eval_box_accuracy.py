"""Tests for harness.evaluation.box_accuracy: hand-computed CorLoc cases, threshold selection, state,
and a comparison with a straightforward per-threshold port of wsolevaluation on random maps."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from harness.errors import HarnessError
from harness.evaluation import (
    BoxAccumulator,
    best_iou_per_threshold,
    boxes_at_thresholds,
    corloc_at,
    normalize_map,
    select_threshold,
    threshold_list,
)

# --------------------------------------------------------------------------- naive reference


def naive_boxes(score_map, thresholds, multi_contour):
    """wsolevaluation's compute_bboxes_from_scoremaps, written out: every tau, no sharing."""
    height, width = score_map.shape
    img = np.expand_dims((score_map * 255).astype(np.uint8), 2)
    out = []
    for tau in thresholds:
        _, binary = cv2.threshold(img, int(tau * np.max(img)), 255, cv2.THRESH_BINARY)
        contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
        if len(contours) == 0:
            out.append(np.asarray([[0, 0, 0, 0]]))
            continue
        if not multi_contour:
            contours = [max(contours, key=cv2.contourArea)]
        boxes = []
        for c in contours:
            x, y, w, h = cv2.boundingRect(c)
            boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
        out.append(np.asarray(boxes))
    return out


def naive_iou(p, g):
    iw = max(0, min(p[2], g[2]) - max(p[0], g[0]) + 1)
    ih = max(0, min(p[3], g[3]) - max(p[1], g[1]) + 1)
    inter = iw * ih
    union = (p[2] - p[0] + 1) * (p[3] - p[1] + 1) + (g[2] - g[0] + 1) * (g[3] - g[1] + 1) - inter
    return inter / union if union > 0 else 0.0


def naive_best_iou(score_map, gt_boxes, thresholds, multi_contour):
    return np.array(
        [
            max(naive_iou(p.tolist(), list(g)) for p in boxes for g in gt_boxes)
            for boxes in naive_boxes(score_map, thresholds, multi_contour)
        ]
    )


_SIZES = [(8, 8), (10, 12), (17, 9), (24, 40), (40, 24), (33, 33), (48, 64)]


def random_case(seed):
    """A smooth-blobs-plus-noise map in [0, 1] and 1-3 GT boxes, with some variety of edge cases."""
    rng = np.random.default_rng(seed)
    h, w = _SIZES[seed % len(_SIZES)]
    yy, xx = np.mgrid[0:h, 0:w]
    m = np.zeros((h, w))
    for _ in range(rng.integers(1, 5)):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        sy, sx = rng.uniform(0.5, h / 3), rng.uniform(0.5, w / 3)
        m += rng.uniform(0.2, 1.0) * np.exp(-((yy - cy) ** 2 / (2 * sy**2) + (xx - cx) ** 2 / (2 * sx**2)))
    m += rng.choice([0.0, 0.05, 0.3]) * rng.random((h, w))
    m = normalize_map(m)
    variant = seed % 5
    if variant == 1:
        m = m * rng.uniform(0.2, 1.0)  # max below 1: the cut-off is relative to a smaller max
    elif variant == 2:
        m = np.round(m * 4) / 4  # few distinct levels, large flat regions, ties
    elif variant == 3:
        m = np.where(m > 0.5, m, 0.0)  # sparse support
    gt = []
    for _ in range(rng.integers(1, 4)):
        x0, x1 = sorted(rng.integers(0, w, size=2))
        y0, y1 = sorted(rng.integers(0, h, size=2))
        gt.append((int(x0), int(y0), int(x1), int(y1)))
    return m, gt


# Step 0.001 on a quarter of the cases (the deduplication matters most there), 0.01 elsewhere,
# plus arbitrary unsorted thresholds, including out-of-range ones, on a few.
def _thresholds_for(seed):
    if seed % 4 == 0:
        return threshold_list(0.001)
    if seed % 17 == 0:
        return np.random.default_rng(seed).uniform(-0.2, 1.2, size=60)
    return threshold_list(0.01)


@pytest.mark.parametrize("chunk", range(4))
def test_matches_naive_reference_on_random_maps(chunk):
    # 200 maps in 4 chunks of 50, both contour modes each.
    for seed in range(chunk * 50, chunk * 50 + 50):
        m, gt = random_case(seed)
        thresholds = _thresholds_for(seed)
        for multi in (False, True):
            fast = boxes_at_thresholds(m, thresholds, multi)
            slow = naive_boxes(m, thresholds, multi)
            assert len(fast) == len(slow) == len(thresholds)
            for t, (a, b) in enumerate(zip(fast, slow)):
                assert np.array_equal(a, b), (seed, multi, t, a.tolist(), b.tolist())
            got = best_iou_per_threshold(m, gt, thresholds, multi)
            want = naive_best_iou(m, gt, thresholds, multi)
            assert got.shape == want.shape
            assert np.array_equal(got, want), (seed, multi)


# --------------------------------------------------------------------------- hand-computed cases


def _block_map():
    # 8x8, ones on rows 2..4, cols 3..6 -> predicted box [3, 2, 7, 5] at every threshold (20 px).
    m = np.zeros((8, 8))
    m[2:5, 3:7] = 1.0
    return m


def test_best_gt_box_counts():
    # GT [0,0,1,1] does not touch the prediction (IoU 0). GT [3,2,6,4] is the block's exact
    # pixel extent (12 px) inside the one-past prediction (20 px): IoU 12/20 = 0.6.
    t = threshold_list(0.01)
    best = best_iou_per_threshold(_block_map(), [(0, 0, 1, 1), (3, 2, 6, 4)], t)
    assert np.array_equal(best, np.full(100, 0.6))
    acc = BoxAccumulator(1, t, iou_thresholds=[0.5])
    acc.add(_block_map(), [(0, 0, 1, 1), (3, 2, 6, 4)], 0, "f0")
    assert np.array_equal(acc.curves(), np.full((1, 100), 100.0))
    strict = BoxAccumulator(1, t, iou_thresholds=[0.7])
    strict.add(_block_map(), [(0, 0, 1, 1), (3, 2, 6, 4)], 0, "f0")
    assert np.array_equal(strict.curves(0.7), np.zeros((1, 100)))


def test_iou_exactly_at_threshold_counts_as_correct():
    # Block cols 0..2, rows 0..3 -> prediction [0, 0, 3, 4] (4x5 = 20 px). GT [0, 0, 1, 4]
    # (2x5 = 10 px) lies inside: IoU = 10/20 = 0.5 exactly, correct because the test is >=.
    m = np.zeros((8, 8))
    m[0:4, 0:3] = 1.0
    acc = BoxAccumulator(1, [0.5], iou_thresholds=[0.5])
    best = acc.add(m, [(0, 0, 1, 4)], 0, "half")
    assert best.tolist() == [0.5]
    assert acc.correct.tolist() == [[[1]]]


def test_multi_contour_finds_the_small_blob():
    # The two-blob map of test_eval_boxes: A (1.0) rows 1..3 cols 1..2 -> [1,1,3,4];
    # B (0.5) rows 5..8 cols 6..10 -> [6,5,11,9], present for tau index <= 498.
    # GT = A's pixels [1,1,2,3] (6 px) vs prediction [1,1,3,4] (12 px): IoU 0.5; vs B: 0.
    m = np.zeros((10, 12))
    m[1:4, 1:3] = 1.0
    m[5:9, 6:11] = 0.5
    t = threshold_list()
    single = best_iou_per_threshold(m, [(1, 1, 2, 3)], t, multi_contour=False)
    multi = best_iou_per_threshold(m, [(1, 1, 2, 3)], t, multi_contour=True)
    assert np.array_equal(single, np.r_[np.zeros(499), np.full(501, 0.5)])
    assert np.array_equal(multi, np.full(1000, 0.5))


def _two_level_map():
    # 10x12: S = rows 1..7, cols 2..8 at 0.5 (quantized 127), with R = rows 3..5, cols 4..6 at 1.0.
    # tau = 0   -> S's outline: x=2,y=1,w=7,h=7 -> [2, 1, 9, 8] (64 px).
    # tau = 0.6 -> cut-off int(153) drops 127: R only -> [4, 3, 7, 6] (16 px).
    m = np.zeros((10, 12))
    m[1:8, 2:9] = 0.5
    m[3:6, 4:7] = 1.0
    return m


def _three_class_accumulator():
    # Class 0, GT = R's pixels [4,3,6,5] (9 px): tau0 IoU 9/64 (wrong), tau1 IoU 9/16 (right).
    # Class 1, GT = S's pixels [2,1,8,7] (49 px): tau0 IoU 49/64 (right), tau1 16/49 (wrong);
    #          a second class-1 frame has its GT far away: wrong at both.
    # Class 2: no frame.
    acc = BoxAccumulator(3, [0.0, 0.6])
    assert acc.add(_two_level_map(), [(4, 3, 6, 5)], 0, "c0/a").tolist() == [9 / 64, 9 / 16]
    assert acc.add(_two_level_map(), [(2, 1, 8, 7)], 1, "c1/a").tolist() == [49 / 64, 16 / 49]
    assert acc.add(_two_level_map(), [(10, 8, 11, 9)], 1, "c1/b").tolist() == [0.0, 0.0]
    return acc


def test_curves_per_class_with_empty_class():
    acc = _three_class_accumulator()
    c = acc.curves()
    assert c.shape == (3, 2)
    assert np.array_equal(c[:2], [[0.0, 100.0], [50.0, 0.0]])
    assert np.isnan(c[2]).all()
    assert acc.count.tolist() == [1, 2, 0] and acc.num_frames == 3
    # Pooled over frames (MaxBoxAcc style): 1 of 3 correct at either threshold.
    assert np.array_equal(acc.pooled_curve(), [100.0 / 3, 100.0 / 3])


def test_global_and_per_class_thresholds_differ():
    c = _three_class_accumulator().curves()
    # Global: class mean over classes 0 and 1 (class 2 has no frame) = [25, 50] -> index 1.
    g = select_threshold(c, "global")
    assert g.tolist() == [1, 1, 1]
    assert corloc_at(c, g) == {"per_class": [100.0, 0.0, None], "mean": 50.0}
    # Per class: class 0 -> 1, class 1 -> 0; class 2 has none of its own.
    with pytest.raises(HarnessError, match=r"\[2\]"):
        select_threshold(c, "per-class")
    p = select_threshold(c, "per-class", empty_class="global")
    assert p.tolist() == [1, 0, 1]
    assert corloc_at(c, p) == {"per_class": [100.0, 50.0, None], "mean": 75.0}


def test_class_mean_excludes_empty_classes():
    c = np.array([[np.nan, np.nan], [20.0, 40.0], [np.nan, np.nan], [60.0, 10.0]])
    assert corloc_at(c, 0) == {"per_class": [None, 20.0, None, 60.0], "mean": 40.0}
    assert select_threshold(c, "global").tolist() == [0, 0, 0, 0]  # means [40, 25]


def test_ties_go_to_the_smallest_index():
    c = np.array([[50.0, 50.0, 50.0], [10.0, 30.0, 30.0]])
    assert select_threshold(c, "global").tolist() == [1, 1]  # means [30, 40, 40]
    assert select_threshold(c, "per-class").tolist() == [0, 1]
    assert select_threshold(np.zeros((2, 4)), "global").tolist() == [0, 0]


def test_thresholds_selected_on_one_split_apply_to_another():
    val = np.array([[0.0, 100.0], [50.0, 0.0]])
    test = np.array([[100.0, 0.0], [100.0, 100.0]])
    idx = select_threshold(val, "per-class")
    assert idx.tolist() == [1, 0]
    assert corloc_at(test, idx) == {"per_class": [0.0, 100.0], "mean": 50.0}
    # A class with frames on the test split but not on val has no per-class threshold.
    val_missing = np.array([[0.0, 100.0], [np.nan, np.nan]])
    with pytest.raises(HarnessError, match="class"):
        select_threshold(val_missing, "per-class")
    assert corloc_at(test, select_threshold(val_missing, "global")) == {"per_class": [0.0, 100.0], "mean": 50.0}


def test_empty_split_is_an_error():
    acc = BoxAccumulator(2, threshold_list(0.1))
    assert np.isnan(acc.curves()).all()
    with pytest.raises(HarnessError, match="empty split"):
        select_threshold(acc.curves())
    with pytest.raises(HarnessError, match="empty split"):
        corloc_at(acc.curves(), 0)
    with pytest.raises(HarnessError, match="empty split"):
        acc.pooled_curve()


def test_corloc_at_rejects_bad_indices_and_curves():
    c = np.array([[10.0, 20.0]])
    with pytest.raises(HarnessError):
        corloc_at(c, [2])
    with pytest.raises(HarnessError):
        corloc_at(c, [0, 1])
    with pytest.raises(HarnessError):
        corloc_at(c, [0.5])
    with pytest.raises(HarnessError):
        corloc_at(np.array([[10.0, np.nan]]), 0)
    with pytest.raises(HarnessError):
        corloc_at(np.array([[10.0, 120.0]]), 0)
    with pytest.raises(HarnessError):
        select_threshold(c, "per-frame")


# --------------------------------------------------------------------------- errors in add()


def test_nan_map_names_frame_and_leaves_counts_unchanged():
    acc = BoxAccumulator(2, [0.0, 0.5])
    m = _block_map()
    m[0, 0] = np.nan
    with pytest.raises(HarnessError, match=r"'bird/0031\.jpg'.*NaN"):
        acc.add(m, [(3, 2, 6, 4)], 1, "bird/0031.jpg")
    assert acc.num_frames == 0 and not acc.correct.any()


def test_degenerate_gt_names_frame():
    acc = BoxAccumulator(2, [0.0])
    with pytest.raises(HarnessError, match=r"'yto/car/12/0005'.*degenerate"):
        acc.add(_block_map(), [(6, 2, 3, 4)], 0, "yto/car/12/0005")
    assert acc.num_frames == 0


def test_bad_label_names_frame():
    acc = BoxAccumulator(2, [0.0])
    for label in (2, -1, 1.0, True):
        with pytest.raises(HarnessError, match="'f-lab'"):
            acc.add(_block_map(), [(3, 2, 6, 4)], label, "f-lab")
    assert acc.num_frames == 0


def test_gt_past_the_border_is_clipped_against_the_map_size():
    # GT [3,2,20,4] on an 8x8 map is clipped to [3,2,7,4] (15 px) with a warning; the prediction
    # [3,2,7,5] (20 px) contains it: IoU 15/20 = 0.75.
    acc = BoxAccumulator(1, [0.0])
    with pytest.warns(UserWarning, match=r"'wide'.*clipped"):
        best = acc.add(_block_map(), [(3, 2, 20, 4)], 0, "wide")
    assert best.tolist() == [0.75]


def test_constructor_validation():
    with pytest.raises(HarnessError):
        BoxAccumulator(0, [0.0])
    with pytest.raises(HarnessError):
        BoxAccumulator(2, [])
    with pytest.raises(HarnessError):
        BoxAccumulator(2, [0.0], iou_thresholds=[1.5])


# --------------------------------------------------------------------------- state and merge


def _random_frames(n, num_classes, seed):
    rng = np.random.default_rng(seed)
    for i in range(n):
        m, gt = random_case(1000 + seed * 100 + i)
        yield m, gt, int(rng.integers(0, num_classes)), f"frame{i}"


def test_state_dict_round_trip_through_json():
    t = threshold_list(0.01)
    acc = BoxAccumulator(4, t, iou_thresholds=[0.3], multi_contour=True)
    frames = list(_random_frames(12, 4, seed=1))
    for m, gt, y, fid in frames[:8]:
        acc.add(m, gt, y, fid)
    state = json.loads(json.dumps(acc.state_dict()))
    back = BoxAccumulator.from_state_dict(state)
    assert back.state_dict() == acc.state_dict()
    assert np.array_equal(back.thresholds, t)
    assert back.iou_thresholds == (0.3,) and back.multi_contour is True
    np.testing.assert_array_equal(back.curves(0.3), acc.curves(0.3))
    for m, gt, y, fid in frames[8:]:
        acc.add(m, gt, y, fid)
        back.add(m, gt, y, fid)
    assert back.state_dict() == acc.state_dict()


@pytest.mark.parametrize(
    "patch",
    [
        {"kind": "Other"},
        {"version": 99},
        {"count": [1, 2, 3]},  # wrong shape
        {"correct": [[[5] * 3] * 3, [[0] * 3] * 3]},  # more correct than frames
        {"count": [-1, 0]},
        {"correct": [[[0.5] * 3] * 3, [[0] * 3] * 3]},
    ],
)
def test_from_state_dict_rejects_bad_state(patch):
    acc = BoxAccumulator(2, [0.0, 0.1, 0.2])
    acc.count[:] = [1, 0]
    state = {**acc.state_dict(), **patch}
    with pytest.raises(HarnessError):
        BoxAccumulator.from_state_dict(state)
    with pytest.raises(HarnessError):
        BoxAccumulator.from_state_dict({k: v for k, v in acc.state_dict().items() if k != "count"})


def test_merge_equals_accumulating_everything_in_one():
    t = threshold_list(0.01)
    frames = list(_random_frames(20, 3, seed=2))
    whole = BoxAccumulator(3, t)
    a = BoxAccumulator(3, t)
    b = BoxAccumulator(3, t)
    for i, (m, gt, y, fid) in enumerate(frames):
        whole.add(m, gt, y, fid)
        (a if i % 3 else b).add(m, gt, y, fid)
    assert a.merge(b) is a
    merged, direct = a.state_dict(), whole.state_dict()
    for key in ("iou_sum", "otsu_iou_sum"):  # float sums: equal up to the order of additions
        np.testing.assert_allclose(merged.pop(key), direct.pop(key), rtol=1e-12)
    assert merged == direct
    assert whole.num_frames == 20 and whole.correct.any()


def test_merge_rejects_different_settings():
    t = threshold_list(0.01)
    base = BoxAccumulator(3, t)
    for other in (
        BoxAccumulator(2, t),
        BoxAccumulator(3, threshold_list(0.001)),
        BoxAccumulator(3, t, iou_thresholds=[0.7]),
        BoxAccumulator(3, t, multi_contour=True),
    ):
        with pytest.raises(HarnessError, match="cannot merge"):
            base.merge(other)
