"""Golden tests for harness.evaluation.boxes: every expected box and IoU here is worked out by hand.

Box convention reminder (docs/metrics.md): predicted boxes are [x, y, min(x+w, W-1), min(y+h, H-1)]
where (x, y, w, h) is cv2.boundingRect of the contour, i.e. x1 is one past the last pixel.
"""
from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest

from harness.errors import HarnessError
from harness.evaluation import (
    boxes_at_thresholds,
    check_boxes,
    check_map,
    iou_matrix,
    normalize_map,
    threshold_list,
)


def _sorted(boxes: np.ndarray) -> list[list[int]]:
    return sorted(np.asarray(boxes).tolist())


# --------------------------------------------------------------------------- thresholds


def test_threshold_list_is_reference_arange():
    t = threshold_list()
    assert np.array_equal(t, np.arange(0, 1, 0.001))
    assert len(t) == 1000 and t[0] == 0.0 and abs(t[-1] - 0.999) < 1e-12
    assert np.array_equal(threshold_list(0.01), np.arange(0, 1, 0.01))
    assert len(threshold_list(0.01)) == 100


@pytest.mark.parametrize("step", [0, -0.1, 1.5, float("nan")])
def test_threshold_list_rejects_bad_step(step):
    with pytest.raises(HarnessError):
        threshold_list(step)


def test_only_255_distinct_cutoffs_at_default_step():
    # int(tau * 255) for tau in 0, 0.001, ..., 0.999 takes the values 0..254.
    cut = {int(t * 255) for t in threshold_list()}
    assert cut == set(range(255))


# --------------------------------------------------------------------------- normalize / check_map


def test_normalize_map_min_max():
    out = normalize_map(np.array([[1, 3], [5, 9]]))
    assert out.dtype == np.float64
    assert np.array_equal(out, [[0.0, 0.25], [0.5, 1.0]])


def test_normalize_map_does_not_modify_input_and_hits_0_and_1():
    m = np.array([[-2.0, 0.5], [7.0, 3.0]], dtype=np.float32)
    before = m.copy()
    out = normalize_map(m)
    assert np.array_equal(m, before)
    assert out.min() == 0.0 and out.max() == 1.0


def test_normalize_map_constant_gives_zeros():
    out = normalize_map(np.full((3, 4), 0.7))
    assert out.shape == (3, 4) and not out.any()


def test_normalize_map_huge_range_stays_finite():
    out = normalize_map(np.array([[-1e308, 0.0], [1e308, 1e308]]))
    assert np.array_equal(out, [[0.0, 0.5], [1.0, 1.0]])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_normalize_map_rejects_non_finite(bad):
    m = np.zeros((4, 4))
    m[1, 2] = bad
    with pytest.raises(HarnessError, match="vid7/000012"):
        normalize_map(m, frame_id="vid7/000012")
    with pytest.raises(HarnessError):
        normalize_map(m)


def test_check_map_nan_names_frame():
    m = np.full((5, 6), 0.5)
    m[0, 0] = np.nan
    with pytest.raises(HarnessError, match=r"'aeroplane/0003\.jpg'.*1 NaN"):
        check_map(m, "aeroplane/0003.jpg")


def test_check_map_inf_names_frame():
    m = np.full((5, 6), 0.5)
    m[2, 3] = np.inf
    with pytest.raises(HarnessError, match=r"frame 'f1'.*infinite"):
        check_map(m, "f1")


def test_check_map_not_2d():
    with pytest.raises(HarnessError, match=r"'f2'.*2-D"):
        check_map(np.zeros((1, 5, 6)), "f2")


def test_check_map_out_of_range():
    m = np.zeros((5, 6))
    m[1, 1] = 1.5
    with pytest.raises(HarnessError, match=r"'f3'.*\[0, 1\]"):
        check_map(m, "f3")
    with pytest.raises(HarnessError, match=r"'f3'"):
        check_map(-m, "f3")


def test_check_map_shape_mismatch():
    with pytest.raises(HarnessError, match=r"'f4'.*\(5, 6\).*\(6, 5\)"):
        check_map(np.zeros((5, 6)), "f4", shape=(6, 5))
    assert check_map(np.zeros((5, 6)), "f4", shape=(5, 6)).shape == (5, 6)


def test_check_map_rejects_empty_and_non_numeric():
    with pytest.raises(HarnessError, match="'f5'"):
        check_map(np.zeros((0, 3)), "f5")
    with pytest.raises(HarnessError, match="'f5'"):
        check_map(np.array([["a", "b"]]), "f5")


def test_check_map_accepts_float32_and_bool_as_float64():
    assert check_map(np.ones((2, 2), np.float32), "x").dtype == np.float64
    assert check_map(np.eye(3, dtype=bool), "x").dtype == np.float64


# --------------------------------------------------------------------------- boxes: hand-built maps


def test_single_block_one_past_the_end():
    # 8x8, ones on rows 2..4 and columns 3..6: boundingRect x=3, y=2, w=4, h=3.
    # The reference stores x1 = x + w = 7 and y1 = y + h = 5: one past the last pixel (6, 4).
    m = np.zeros((8, 8))
    m[2:5, 3:7] = 1.0
    for multi in (False, True):
        out = boxes_at_thresholds(m, threshold_list(), multi)
        assert len(out) == 1000
        for b in out:
            assert b.dtype == np.int64
            assert b.tolist() == [[3, 2, 7, 5]]


def test_block_at_border_is_clamped_to_w_minus_1():
    # Columns 5..7 (x=5, w=3 -> x+w = 8) and all rows (y=0, h=8 -> 8): clamped to W-1 = 7, H-1 = 7.
    m = np.zeros((8, 8))
    m[:, 5:] = 1.0
    assert boxes_at_thresholds(m, [0.0, 0.5], False)[1].tolist() == [[5, 0, 7, 7]]


def test_constant_one_map_gives_whole_image_box_non_square():
    # H=10, W=12: x+w = 12 -> 11, y+h = 10 -> 9.
    out = boxes_at_thresholds(np.ones((10, 12)), [0.0, 0.3, 0.999], True)
    assert [b.tolist() for b in out] == [[[0, 0, 11, 9]]] * 3


def test_two_blobs_multi_and_single_contour():
    # H=10, W=12.
    # Blob A = 1.0 on rows 1..3, cols 1..2   -> x=1,y=1,w=2,h=3 -> [1, 1, 3, 4]; contourArea (1*2) = 2.
    # Blob B = 0.5 on rows 5..8, cols 6..10  -> x=6,y=5,w=5,h=4 -> [6, 5, 11, 9]; contourArea (4*3) = 12.
    # B quantizes to floor(127.5) = 127; it survives while int(tau*255) < 127, i.e. tau <= 0.498
    # (0.498*255 = 126.99) and disappears from tau = 0.499 (127.245 -> 127, and 127 > 127 is false).
    m = np.zeros((10, 12))
    m[1:4, 1:3] = 1.0
    m[5:9, 6:11] = 0.5
    a, b = [1, 1, 3, 4], [6, 5, 11, 9]
    t = threshold_list()
    multi = boxes_at_thresholds(m, t, True)
    single = boxes_at_thresholds(m, t, False)
    for i in (0, 250, 498):
        assert _sorted(multi[i]) == [a, b]
        assert single[i].tolist() == [b]  # the larger contour
    for i in (499, 700, 999):
        assert multi[i].tolist() == [a]
        assert single[i].tolist() == [a]


def test_ring_hole_contour_gives_extra_box_in_multi_mode():
    # 8x8 ring: ones on rows/cols 1..6 except a 2x2 hole at rows/cols 3..4.
    # Outer contour: x=1,y=1,w=6,h=6 -> [1, 1, 7, 7] (7 = W-1 anyway).
    # RETR_TREE also returns the hole's border: the ring pixels around the hole, rows/cols 2..5
    # -> x=2,y=2,w=4,h=4 -> [2, 2, 6, 6]. Single-contour keeps the outer one (area 25 > 7).
    m = np.ones((8, 8))
    m[0, :] = m[7, :] = m[:, 0] = m[:, 7] = 0.0
    m[3:5, 3:5] = 0.0
    assert _sorted(boxes_at_thresholds(m, [0.0], True)[0]) == [[1, 1, 7, 7], [2, 2, 6, 6]]
    assert boxes_at_thresholds(m, [0.0], False)[0].tolist() == [[1, 1, 7, 7]]


def test_single_contour_uses_polygon_area_not_pixels_or_box():
    # 10x10. A one-pixel-wide L (row 0 and column 0, cols/rows 0..7): 15 pixels, box [0,0,8,8],
    # but its contour is a degenerate polygon of contourArea 0. A 3x3 blob at rows/cols 6..8:
    # 9 pixels, contourArea 2*2 = 4, box [6,6,9,9]. Single-contour keeps the blob.
    m = np.zeros((10, 10))
    m[0, 0:8] = 1.0
    m[0:8, 0] = 1.0
    m[6:9, 6:9] = 1.0
    assert boxes_at_thresholds(m, [0.0], False)[0].tolist() == [[6, 6, 9, 9]]
    assert _sorted(boxes_at_thresholds(m, [0.0], True)[0]) == [[0, 0, 8, 8], [6, 6, 9, 9]]


def test_single_contour_tie_keeps_the_first_contour_like_the_reference():
    # Two 2x2 blobs, contourArea 1 each. The reference keeps max(contours, key=cv2.contourArea),
    # the first of the equals in OpenCV's contour order (which lists the lower-right blob first).
    m = np.zeros((8, 10))
    m[1:3, 1:3] = 1.0
    m[5:7, 6:8] = 1.0
    contours = cv2.findContours((m * 255).astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
    assert [x, y, x + w, y + h] in ([1, 1, 3, 3], [6, 5, 8, 7])
    assert boxes_at_thresholds(m, [0.0], False)[0].tolist() == [[x, y, x + w, y + h]]


@pytest.mark.parametrize("multi", [False, True])
def test_empty_map_gives_zero_box_at_every_threshold(multi):
    out = boxes_at_thresholds(np.zeros((8, 8)), threshold_list(), multi)
    assert len(out) == 1000
    assert all(b.tolist() == [[0, 0, 0, 0]] for b in out)


def test_constant_map_normalized_is_empty():
    out = boxes_at_thresholds(normalize_map(np.full((6, 7), 3.0)), threshold_list(0.1), True)
    assert all(b.tolist() == [[0, 0, 0, 0]] for b in out)


def test_tau_zero_covers_nonzero_support_only():
    # H=10, W=12. 1.0 at (row 2, col 3); 0.02 -> floor(5.1) = 5 on rows 5..6, cols 8..9;
    # 0.003 -> floor(0.765) = 0 at (row 9, col 0): quantized away, never part of a box.
    m = np.zeros((10, 12))
    m[2, 3] = 1.0
    m[5:7, 8:10] = 0.02
    m[9, 0] = 0.003
    pixel, block = [3, 2, 4, 3], [8, 5, 10, 7]
    out = boxes_at_thresholds(m, [0.0, 0.019, 0.02], True)
    assert _sorted(out[0]) == [pixel, block]  # strict: 0 > 0 is false, so not the whole image
    assert _sorted(out[1]) == [pixel, block]  # int(0.019*255) = int(4.845) = 4 < 5
    assert out[2].tolist() == [pixel]  # int(0.02*255) = int(5.1) = 5, and 5 > 5 is false
    # Single contour: contourArea of a one-pixel contour is 0, of the 2x2 block 1.
    assert boxes_at_thresholds(m, [0.0], False)[0].tolist() == [block]


def test_quantization_truncates():
    # 0.999 -> floor(254.745) = 254 (rounding would give 255). At tau = 0.997 the cut-off is
    # int(254.235) = 254, so the 0.999 pixel is dropped; at 0.996 (int(253.98) = 253) it stays.
    m = np.zeros((6, 6))
    m[1, 1] = 1.0
    m[4, 4] = 0.999
    out = boxes_at_thresholds(m, [0.996, 0.997], True)
    assert _sorted(out[0]) == [[1, 1, 2, 2], [4, 4, 5, 5]]
    assert out[1].tolist() == [[1, 1, 2, 2]]


def test_threshold_is_relative_to_map_max():
    # Max 0.5 -> 127. tau = 0.5 -> cut-off int(63.5) = 63: 0.25 (63) is dropped, 0.26 (66) kept.
    m = np.zeros((8, 12))
    m[0:2, 0:2] = 0.5
    m[5, 5] = 0.25
    m[5, 9] = 0.26
    out = boxes_at_thresholds(m, [0.5], True)[0]
    assert _sorted(out) == [[0, 0, 2, 2], [9, 5, 10, 6]]
    assert boxes_at_thresholds(m, [0.5], False)[0].tolist() == [[0, 0, 2, 2]]


def test_out_of_range_thresholds_follow_int_truncation():
    # tau = 1 -> cut-off 255: nothing survives. tau = -0.001 -> int(-0.255) = 0: support only.
    # tau = -1 -> -255: every pixel, the whole image.
    m = np.zeros((8, 8))
    m[2:5, 3:7] = 1.0
    out = boxes_at_thresholds(m, [1.0, -0.001, -1.0], True)
    assert [b.tolist() for b in out] == [[[0, 0, 0, 0]], [[3, 2, 7, 5]], [[0, 0, 7, 7]]]


def test_returned_arrays_are_independent():
    m = np.zeros((8, 8))
    m[2:5, 3:7] = 1.0
    out = boxes_at_thresholds(m, [0.1, 0.2], False)
    out[0][0, 0] = 99
    assert out[1].tolist() == [[3, 2, 7, 5]]


def test_boxes_at_thresholds_validates_map():
    m = np.zeros((8, 8))
    m[0, 0] = np.nan
    with pytest.raises(HarnessError, match="'cam-17'"):
        boxes_at_thresholds(m, [0.0], False, frame_id="cam-17")
    with pytest.raises(HarnessError):
        boxes_at_thresholds(np.zeros((8, 8)), [[0.1]], False)


# --------------------------------------------------------------------------- IoU


def test_iou_identical_and_disjoint():
    a = np.array([[2, 3, 6, 8]])
    assert iou_matrix(a, a).tolist() == [[1.0]]
    assert iou_matrix(a, [[7, 3, 9, 8]]).tolist() == [[0.0]]
    # One-pixel boxes: [0,0,0,0] vs itself is a full overlap (1 px / 1 px).
    assert iou_matrix([[0, 0, 0, 0]], [[0, 0, 0, 0]]).tolist() == [[1.0]]


def test_iou_partial_overlap_inclusive():
    # [0,0,3,3] and [2,2,5,5]: 4x4 = 16 px each, overlap cols/rows 2..3 = 4 px -> 4 / (16+16-4) = 1/7.
    assert iou_matrix([[0, 0, 3, 3]], [[2, 2, 5, 5]])[0, 0] == 4 / 28
    # Sharing one column (x = 3): 1x4 = 4 px overlap -> 1/7 too (an exclusive convention gives 0).
    assert iou_matrix([[0, 0, 3, 3]], [[3, 0, 6, 3]])[0, 0] == 4 / 28
    # Nested: [1,1,2,2] (4 px) inside [0,0,3,3] (16 px) -> 4/16.
    assert iou_matrix([[1, 1, 2, 2]], [[0, 0, 3, 3]])[0, 0] == 0.25


def test_iou_matrix_shape_and_order():
    a = np.array([[0, 0, 3, 3], [10, 10, 11, 11]])
    b = np.array([[0, 0, 3, 3], [2, 2, 5, 5], [10, 10, 11, 11]])
    expected = np.array([[1.0, 4 / 28, 0.0], [0.0, 0.0, 1.0]])
    out = iou_matrix(a, b)
    assert out.shape == (2, 3) and out.dtype == np.float64
    assert np.array_equal(out, expected)
    assert np.array_equal(iou_matrix(b, a), expected.T)


def test_iou_non_positive_denominator_gives_zero():
    # Malformed [5,0,3,3]: area (3-5+1)*(3-0+1) = -4; with [0,0,0,0] (area 1, no overlap) the
    # denominator is -4 + 1 - 0 = -3 <= 0 -> 0, as the reference.
    assert iou_matrix([[5, 0, 3, 3]], [[0, 0, 0, 0]]).tolist() == [[0.0]]
    # Denominator exactly 0: [0,0,1,1] (4 px) with [5,0,3,3] (-4): 0, not 0/0 = NaN.
    assert iou_matrix([[0, 0, 1, 1]], [[5, 0, 3, 3]]).tolist() == [[0.0]]


def test_iou_rejects_bad_shape():
    with pytest.raises(ValueError):
        iou_matrix([0, 0, 1, 1], [[0, 0, 1, 1]])


# --------------------------------------------------------------------------- GT box validation


def test_check_boxes_accepts_valid_and_single_pixel():
    out = check_boxes([(0, 0, 11, 9), (5, 5, 5, 5)], width=12, height=10, frame_id="a")
    assert out.dtype == np.int64 and out.tolist() == [[0, 0, 11, 9], [5, 5, 5, 5]]
    assert check_boxes([1, 2, 3, 4], 12, 10, "a").tolist() == [[1, 2, 3, 4]]
    assert check_boxes(np.array([[1.0, 2.0, 3.0, 4.0]]), 12, 10, "a").tolist() == [[1, 2, 3, 4]]


@pytest.mark.parametrize("box", [(5, 1, 4, 3), (1, 5, 3, 4)])
def test_check_boxes_degenerate_names_frame(box):
    with pytest.raises(HarnessError, match=r"'dog/0042'.*degenerate"):
        check_boxes([(0, 0, 2, 2), box], width=12, height=10, frame_id="dog/0042")


def test_check_boxes_entirely_outside_is_an_error():
    with pytest.raises(HarnessError, match=r"'f9'.*outside"):
        check_boxes([(12, 0, 15, 3)], width=12, height=10, frame_id="f9")
    with pytest.raises(HarnessError, match=r"'f9'.*outside"):
        check_boxes([(0, -5, 3, -1)], width=12, height=10, frame_id="f9")


def test_check_boxes_clips_with_warning():
    with pytest.warns(UserWarning, match=r"'car/7'.*clipped"):
        out = check_boxes([(-3, 2, 12, 10), (1, 1, 2, 2)], width=12, height=10, frame_id="car/7")
    assert out.tolist() == [[0, 2, 11, 9], [1, 1, 2, 2]]


def test_check_boxes_inside_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_boxes([(0, 0, 11, 9)], width=12, height=10, frame_id="ok")


@pytest.mark.parametrize(
    "boxes",
    [[], [[1, 2, 3]], [[0.5, 0, 3, 3]], [[np.nan, 0, 3, 3]], [["a", "b", "c", "d"]]],
)
def test_check_boxes_malformed_names_frame(boxes):
    with pytest.raises(HarnessError, match="'bad-frame'"):
        check_boxes(boxes, width=12, height=10, frame_id="bad-frame")
