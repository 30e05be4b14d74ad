"""Golden tests of the metrics beyond CorLoc: Top-k Loc, mean IoU, MaxBoxAccV2, Otsu boxes,
pointing game, classification accuracy, PxAP (against a direct precision-recall computation)."""
import numpy as np
import pytest

from harness.errors import HarnessError
from harness.evaluation import BoxAccumulator, MaskAccumulator, otsu_level, pointing_hit, pxap, threshold_list
from harness.evaluation.boxes import _quantize


def _block(h=8, w=8, rows=(2, 5), cols=(3, 7), value=1.0):
    m = np.zeros((h, w))
    m[rows[0]:rows[1], cols[0]:cols[1]] = value
    return m


def test_top_k_loc_needs_box_and_class():
    # The block's prediction [3,2,7,5] vs GT [3,2,6,4]: IoU 12/20 = 0.6 (right at 0.5).
    t = [0.0, 0.5]
    acc = BoxAccumulator(3, t, iou_thresholds=[0.5])
    gt_hit, gt_miss = [(3, 2, 6, 4)], [(0, 0, 0, 0)]
    acc.add(_block(), gt_hit, 0, "a", logits=[3.0, 1.0, 0.0])  # box right, top-1 right
    acc.add(_block(), gt_hit, 1, "b", logits=[3.0, 1.0, 0.0])  # box right, class 2nd: top-5 only
    acc.add(_block(), gt_miss, 2, "c", logits=[0.0, 0.0, 9.0])  # class right, box wrong
    assert acc.top_k_curve(1).tolist() == [100 / 3, 100 / 3]
    assert acc.top_k_curve(5).tolist() == [200 / 3, 200 / 3]
    assert acc.pooled_curve().tolist() == [200 / 3, 200 / 3]  # GT-known Loc ignores the class
    assert acc.cls_accuracy(1) == pytest.approx(200 / 3)
    assert acc.cls_accuracy(5) == 100.0


def test_ties_in_class_scores_count_as_right():
    acc = BoxAccumulator(2, [0.0], iou_thresholds=[0.5])
    acc.add(_block(), [(3, 2, 6, 4)], 1, "tie", logits=[2.0, 2.0])
    assert acc.cls_accuracy(1) == 100.0


def test_bad_logits_name_the_frame():
    acc = BoxAccumulator(3, [0.0])
    with pytest.raises(HarnessError, match="'f9'"):
        acc.add(_block(), [(3, 2, 6, 4)], 0, "f9", logits=[1.0, np.nan, 0.0])
    with pytest.raises(HarnessError, match="'f9'"):
        acc.add(_block(), [(3, 2, 6, 4)], 0, "f9", logits=[1.0, 0.0])
    assert acc.num_frames == 0
    with pytest.raises(HarnessError, match="logits"):
        acc.cls_accuracy()


def test_mean_iou_curve():
    acc = BoxAccumulator(1, [0.0, 0.5], iou_thresholds=[0.5])
    acc.add(_block(), [(3, 2, 6, 4)], 0, "a")  # 0.6
    acc.add(_block(), [(3, 2, 7, 5)], 0, "b")  # the exact predicted box: 1.0
    assert acc.mean_iou_curve().tolist() == [0.8, 0.8]


def _two_blobs():
    # A (1.0): rows 1..3, cols 1..2 -> box [1,1,3,4]. B (0.5): rows 5..8, cols 6..10 -> [6,5,11,9].
    m = np.zeros((10, 12))
    m[1:4, 1:3] = 1.0
    m[5:9, 6:11] = 0.5
    return m


def test_max_box_acc_v2_picks_a_threshold_per_iou_level():
    # Thresholds 0.0 (A and B survive) and 0.6 (A only). Frame 1's GT is B's exact box: right at
    # every level at tau 0.0 only. Frame 2's GT is A's pixel extent [1,1,2,3]: IoU 6/12 = 0.5 at
    # both taus (A's box is the same), right at 0.3 and 0.5.
    acc = BoxAccumulator(1, [0.0, 0.6], multi_contour=True)
    acc.add(_two_blobs(), [(6, 5, 11, 9)], 0, "1")
    acc.add(_two_blobs(), [(1, 1, 2, 3)], 0, "2")
    assert acc.pooled_curve(0.3).tolist() == [100.0, 50.0]
    assert acc.pooled_curve(0.7).tolist() == [50.0, 0.0]
    assert acc.max_box_acc() == {0.3: 100.0, 0.5: 100.0, 0.7: 50.0}
    assert acc.max_box_acc_v2() == pytest.approx(250 / 3)
    with pytest.raises(HarnessError, match="multi_contour=True"):
        BoxAccumulator(1, [0.0]).max_box_acc_v2()


def test_otsu_level_splits_a_bimodal_map_and_scores_its_box():
    m = np.full((12, 12), 0.2)
    m[3:7, 4:9] = 0.9  # object: rows 3..6, cols 4..8 -> box [4,3,9,7]
    q = _quantize(m)
    level = otsu_level(q)
    assert int(0.2 * 255) <= level < int(0.9 * 255)
    acc = BoxAccumulator(1, [0.0], iou_thresholds=[0.5])
    acc.add(m, [(4, 3, 9, 7)], 0, "bimodal")
    assert acc.otsu_curves().tolist() == [[100.0]]
    assert acc.otsu_mean_iou() == 1.0
    # tau 0 keeps everything above 0.2's level: the whole image, IoU 30/144 < 0.5.
    assert acc.curves().tolist() == [[0.0]]


def test_pointing_game():
    m = _block(value=0.5)
    m[3, 5] = 1.0  # peak at x=5, y=3
    gt_in, gt_out = np.array([[5, 3, 5, 3]]), np.array([[0, 0, 4, 2], [6, 4, 7, 7]])
    assert pointing_hit(m, gt_in)
    assert not pointing_hit(m, gt_out)
    flat = np.ones((4, 4))  # ties: the first maximum, (0, 0)
    assert pointing_hit(flat, np.array([[0, 0, 0, 0]])) and not pointing_hit(flat, np.array([[1, 1, 3, 3]]))
    acc = BoxAccumulator(1, [0.0])
    acc.add(m, gt_in, 0, "in")
    acc.add(m, gt_out, 0, "out")
    assert acc.pointing_game() == 50.0


# --------------------------------------------------------------------------- PxAP


def direct_pxap(maps, masks, ignores, thresholds):
    """Precision and recall counted directly at each threshold (score >= tau), highest first."""
    pos = np.concatenate([m[k] for m, k in zip(maps, masks)])
    neg = np.concatenate([m[~k & ~i] for m, k, i in zip(maps, masks, ignores)])
    taus = np.concatenate([[2.0, 1.0], thresholds[::-1]])  # bins [2,3] and [1,2) come first
    tp = np.array([(pos >= t).sum() for t in taus])
    fp = np.array([(neg >= t).sum() for t in taus])
    with np.errstate(invalid="ignore"):
        precision = tp / (tp + fp)
    recall = tp / len(pos)
    ap = 0.0
    for l in range(1, len(taus)):
        if tp[l] + fp[l] > 0:
            ap += precision[l] * (recall[l] - recall[l - 1])
    return 100 * ap


def test_pxap_matches_a_direct_precision_recall_computation():
    rng = np.random.default_rng(0)
    t = threshold_list(0.01)
    acc = MaskAccumulator(t)
    maps, masks, ignores = [], [], []
    for k in range(20):
        h, w = rng.integers(5, 30, size=2)
        m = rng.random((h, w))
        if k % 4 == 0:
            m[rng.random((h, w)) < 0.2] = 1.0  # exact 1.0 lands in the [1, 2) bin
        mask = rng.random((h, w)) < 0.3
        ignore = rng.random((h, w)) < 0.1
        acc.add(m, mask, f"img{k}", ignore=ignore)
        maps.append(m), masks.append(mask), ignores.append(ignore)
    assert acc.pxap() == pytest.approx(direct_pxap(maps, masks, ignores, t), abs=1e-9)


def test_pxap_golden_values():
    t = threshold_list(0.001)
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:6, 3:8] = True  # 20 positives of 100
    perfect = MaskAccumulator(t)
    perfect.add(mask.astype(float), mask, "p")
    assert perfect.pxap() == 100.0
    constant = MaskAccumulator(t)
    constant.add(np.full((10, 10), 0.5), mask, "c")
    assert constant.pxap() == pytest.approx(20.0)  # the positive fraction
    ignored = MaskAccumulator(t)
    ignore = np.zeros_like(mask)
    ignore[8:, :] = True  # 20 negatives left out: 20 / 80
    ignored.add(np.full((10, 10), 0.5), mask, "i", ignore=ignore)
    assert ignored.pxap() == pytest.approx(25.0)


def test_pxap_errors():
    acc = MaskAccumulator(threshold_list(0.1))
    with pytest.raises(HarnessError, match="'m1'.*shape"):
        acc.add(np.zeros((4, 4)), np.zeros((4, 5), dtype=bool), "m1")
    with pytest.raises(HarnessError, match="'m2'.*boolean"):
        acc.add(np.zeros((4, 4)), np.full((4, 4), 7), "m2")
    acc.add(np.zeros((4, 4)), np.zeros((4, 4), dtype=bool), "m3")
    with pytest.raises(HarnessError, match="no foreground pixel"):
        acc.pxap()
    state = MaskAccumulator.from_state_dict(acc.state_dict())
    assert state.pos.tolist() == acc.pos.tolist() and state.frames == 1


def test_accumulator_memory_does_not_grow_with_the_split():
    rng = np.random.default_rng(1)
    acc = BoxAccumulator(3, threshold_list(0.001), multi_contour=True)
    sizes = None
    for i in range(150):
        m = rng.random((32, 32))
        acc.add(m, [(4, 4, 20, 20)], i % 3, f"f{i}", logits=rng.random(3))
        now = {k: np.asarray(v).nbytes for k, v in vars(acc).items() if isinstance(v, np.ndarray)}
        assert sizes is None or now == sizes
        sizes = now
    assert acc.num_frames == 150
