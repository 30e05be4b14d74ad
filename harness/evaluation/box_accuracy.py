"""Box metrics of a split, all read from one set of per-threshold counts.

CorLoc (WSVOL), MaxBoxAcc and MaxBoxAccV2 (Choe et al.), GT-known / Top-1 / Top-5 Loc, mean
raw IoU, classification accuracy, the pointing game and Otsu boxes. :class:`BoxAccumulator`
streams frames and keeps only counts, never maps:

- ``correct[c, k, t]``: frames of class ``c`` whose best IoU at ``thresholds[t]`` is
  ``>= iou_thresholds[k]`` (``>=`` as wsolevaluation's code; papers write ``>``);
- ``top1[k, t]`` / ``top5[k, t]``: the same, pooled, for frames whose class is also right;
- ``iou_sum[c, t]``: sum of the best IoUs (mean raw IoU, which the realistic-protocol chapter
  recommends reporting);
- per map, the Otsu threshold's box (the OT setting) and the pointing game (map peak in a GT
  box).

A frame's *best IoU* at ``tau`` is the max over (predicted boxes at ``tau``) x (GT boxes), the
boxes following the reference exactly (``docs/metrics.md``). All 256 distinct binarizations of a
map come from one component-tree pass (:mod:`harness.evaluation.component_tree`).

Threshold selection is kept apart from accumulation so that a protocol can pick thresholds on
one split and apply them to another: ``select_threshold(val_curves, scope)`` returns per-class
threshold indices, ``corloc_at(test_curves, indices)`` reads the accuracy at those indices. The
oracle metrics of the papers (MaxBoxAcc: best threshold on the evaluated split itself) are the
special case of selecting and reading on the same curves.
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from harness.errors import HarnessError
from harness.evaluation.boxes import _boxes_of_binary, _check_thresholds, _quantize, check_boxes, check_map
from harness.evaluation.component_tree import best_iou_at_thresholds, level_best_iou

__all__ = ["best_iou_per_threshold", "BoxAccumulator", "select_threshold", "corloc_at"]

_STATE_KIND = "BoxAccumulator"
_STATE_VERSION = 1
DEFAULT_IOUS = (0.3, 0.5, 0.7)


def _prepare(score_map: Any, gt_boxes: Any, frame_id: Any) -> tuple[np.ndarray, np.ndarray]:
    s = check_map(score_map, frame_id)
    return s, check_boxes(gt_boxes, s.shape[1], s.shape[0], frame_id)


def best_iou_per_threshold(
    score_map: np.ndarray,
    gt_boxes: Any,
    thresholds: Any,
    multi_contour: bool = False,
    *,
    frame_id: Any = None,
) -> np.ndarray:
    """For each threshold, the max IoU over (predicted boxes x GT boxes); shape ``(T,)``.

    ``score_map`` is validated with :func:`check_map`, ``gt_boxes`` with :func:`check_boxes`
    against the map's size (clipping with a warning if they extend past it).
    """
    s, gt = _prepare(score_map, gt_boxes, frame_id)
    q = _quantize(s)
    levels = level_best_iou(q, gt, bool(multi_contour))
    return best_iou_at_thresholds(levels, q, gt, _check_thresholds(thresholds))


def otsu_level(q: np.ndarray) -> int:
    """Otsu's threshold of a quantized map: the binarization is ``q > level`` (OpenCV's)."""
    level, _ = cv2.threshold(q, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return int(level)


def otsu_boxes(score_map: np.ndarray, multi_contour: bool = False) -> np.ndarray:
    """The boxes of Otsu's binarization ``q > otsu_level(q)`` of the quantized map: what the
    Otsu (OT) metrics score, as boxes (the accumulator itself reads only their IoU)."""
    q = _quantize(check_map(score_map))
    _, binary = cv2.threshold(q, otsu_level(q), 255, cv2.THRESH_BINARY)
    return _boxes_of_binary(binary, bool(multi_contour))


def pointing_hit(score_map: np.ndarray, gt: np.ndarray) -> bool:
    """The map's peak (first maximum in row-major order) lies inside a GT box (inclusive)."""
    y, x = np.unravel_index(int(np.argmax(score_map)), score_map.shape)
    return bool(((gt[:, 0] <= x) & (x <= gt[:, 2]) & (gt[:, 1] <= y) & (y <= gt[:, 3])).any())


class BoxAccumulator:
    """Streaming box-metric counts over a split; memory ``O(C * K * T)``, independent of N."""

    def __init__(
        self,
        num_classes: int,
        thresholds: Any,
        iou_thresholds: Any = DEFAULT_IOUS,
        multi_contour: bool = False,
    ):
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise HarnessError(f"num_classes must be a positive integer, got {num_classes!r}")
        ious = np.atleast_1d(np.asarray(iou_thresholds, dtype=np.float64))
        if ious.ndim != 1 or ious.size == 0 or not ((ious >= 0) & (ious <= 1)).all():
            raise HarnessError(f"iou_thresholds must be values in [0, 1], got {iou_thresholds!r}")
        self.num_classes = int(num_classes)
        self.thresholds = _check_thresholds(thresholds).copy()
        self.thresholds.setflags(write=False)
        self.iou_thresholds = tuple(float(v) for v in ious)
        self.multi_contour = bool(multi_contour)
        C, K, T = self.num_classes, len(self.iou_thresholds), len(self.thresholds)
        self.correct = np.zeros((C, K, T), dtype=np.int64)
        self.top1 = np.zeros((K, T), dtype=np.int64)
        self.top5 = np.zeros((K, T), dtype=np.int64)
        self.iou_sum = np.zeros((C, T), dtype=np.float64)
        self.otsu_correct = np.zeros((C, K), dtype=np.int64)
        self.otsu_iou_sum = np.zeros(C, dtype=np.float64)
        self.pointing_hits = np.zeros(C, dtype=np.int64)
        self.count = np.zeros(C, dtype=np.int64)
        self.cls_count = np.zeros(C, dtype=np.int64)  # frames that came with class scores
        self.cls_top1 = np.zeros(C, dtype=np.int64)
        self.cls_top5 = np.zeros(C, dtype=np.int64)
        self.last_floats = None

    # ------------------------------------------------------------------ accumulation

    @property
    def num_frames(self) -> int:
        return int(self.count.sum())

    def add(self, score_map: np.ndarray, gt_boxes: Any, label: int, frame_id: Any, logits: Any = None) -> np.ndarray:
        """Add one frame (GT-class map, its GT boxes, its label, optional class scores);
        return its best IoU per threshold, shape ``(T,)``.

        Everything is validated before any count changes, so a frame that raises leaves the
        accumulator as it was.
        """
        s, gt = _prepare(score_map, gt_boxes, frame_id)
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < self.num_classes:
            raise HarnessError(
                f"frame {frame_id!r}: class label {label!r} is not an integer in [0, {self.num_classes - 1}]"
            )
        rank = None
        if logits is not None:
            scores = np.asarray(logits, dtype=np.float64).reshape(-1)
            if scores.shape != (self.num_classes,) or not np.isfinite(scores).all():
                raise HarnessError(
                    f"frame {frame_id!r}: class scores must be {self.num_classes} finite values, got shape {scores.shape}"
                )
            rank = int((scores > scores[label]).sum())  # classes scored strictly above the true one
        q = _quantize(s)
        levels = level_best_iou(q, gt, self.multi_contour)
        best = best_iou_at_thresholds(levels, q, gt, self.thresholds)
        c = int(label)
        ok = best[None, :] >= np.asarray(self.iou_thresholds)[:, None]  # (K, T)
        self.correct[c] += ok
        self.iou_sum[c] += best
        otsu_best = levels[otsu_level(q)]
        self.otsu_correct[c] += otsu_best >= np.asarray(self.iou_thresholds)
        self.otsu_iou_sum[c] += otsu_best
        self.last_floats = (c, best, float(otsu_best))  # what a sharded evaluation replays in frame order
        self.pointing_hits[c] += pointing_hit(s, gt)
        self.count[c] += 1
        if rank is not None:
            self.cls_count[c] += 1
            self.cls_top1[c] += rank == 0
            self.cls_top5[c] += rank < 5
            if rank == 0:
                self.top1 += ok
            if rank < 5:
                self.top5 += ok
        return best

    def replay_floats(self, frames) -> None:
        """Set the float sums (IoU and Otsu IoU) from ``(class, best IoU per threshold, Otsu
        IoU)`` per frame (``last_floats`` of each :meth:`add`), added in the order given: merged
        shards then hold the bits a single pass over the frames in that order gives, which a sum
        of per-shard sums does not (float addition is not associative)."""
        self.iou_sum[...] = 0.0
        self.otsu_iou_sum[...] = 0.0
        for c, best, otsu in frames:
            self.iou_sum[c] += best
            self.otsu_iou_sum[c] += otsu

    def merge(self, other: "BoxAccumulator") -> "BoxAccumulator":
        """Add ``other``'s counts into this accumulator (in place) and return ``self``."""
        if not isinstance(other, BoxAccumulator):
            raise TypeError(f"cannot merge a {type(other).__name__} into a BoxAccumulator")
        self._check_compatible(other)
        for name in _COUNTS:
            getattr(self, name)[...] += getattr(other, name)
        return self

    def _check_compatible(self, other: "BoxAccumulator") -> None:
        diffs = []
        if other.num_classes != self.num_classes:
            diffs.append(f"num_classes {self.num_classes} vs {other.num_classes}")
        if not np.array_equal(other.thresholds, self.thresholds):
            diffs.append(f"thresholds ({len(self.thresholds)} vs {len(other.thresholds)} values, or different values)")
        if other.iou_thresholds != self.iou_thresholds:
            diffs.append(f"iou_thresholds {self.iou_thresholds} vs {other.iou_thresholds}")
        if other.multi_contour != self.multi_contour:
            diffs.append(f"multi_contour {self.multi_contour} vs {other.multi_contour}")
        if diffs:
            raise HarnessError("cannot merge box accumulators with different settings: " + "; ".join(diffs))

    # ------------------------------------------------------------------ read-outs

    def level_index(self, iou: float) -> int:
        """Index of IoU level ``iou`` among the accumulated ones (error if it was not)."""
        for k, v in enumerate(self.iou_thresholds):
            if abs(v - iou) < 1e-9:
                return k
        raise HarnessError(f"IoU level {iou} was not accumulated; levels: {list(self.iou_thresholds)}")

    def curves(self, iou: float = 0.5) -> np.ndarray:
        """Per-class accuracy in percent at IoU ``iou``, shape ``(C, T)``; an all-NaN row for a
        class without frames. CorLoc is the class mean of these."""
        return _per_class_percent(self.correct[:, self.level_index(iou)], self.count)

    def pooled_curve(self, iou: float = 0.5) -> np.ndarray:
        """Accuracy in percent over all frames pooled (no class mean), shape ``(T,)``: the
        ``BoxEvaluator`` curve of wsolevaluation (GT-known Loc per threshold)."""
        return self.correct[:, self.level_index(iou)].sum(axis=0) * 100.0 / self._n()

    def top_k_curve(self, k: int, iou: float = 0.5) -> np.ndarray:
        """Top-1 / Top-5 Loc per threshold in percent (box right and class in the top k), pooled."""
        counts = {1: self.top1, 5: self.top5}[k]
        n = int(self.cls_count.sum())
        if n == 0:
            raise HarnessError("Top-k Loc needs class scores: no frame was added with logits")
        return counts[self.level_index(iou)] * 100.0 / n

    def mean_iou_curve(self) -> np.ndarray:
        """Mean best IoU per threshold over all frames (not a percentage)."""
        return self.iou_sum.sum(axis=0) / self._n()

    def max_box_acc(self) -> dict[float, float]:
        """Choe et al.'s MaxBoxAcc at each IoU level: max over thresholds of the pooled curve
        (the threshold chosen separately for each level, on this split)."""
        return {iou: float(self.pooled_curve(iou).max()) for iou in self.iou_thresholds}

    def max_box_acc_v2(self) -> float:
        """MaxBoxAccV2: all contours, mean over IoU 0.3/0.5/0.7 of MaxBoxAcc."""
        if not self.multi_contour:
            raise HarnessError("MaxBoxAccV2 is defined with every contour: accumulate with multi_contour=True")
        per = self.max_box_acc()
        return float(np.mean([per[self.iou_thresholds[self.level_index(v)]] for v in DEFAULT_IOUS]))

    def otsu_curves(self) -> np.ndarray:
        """Per-class accuracy in percent with each map's Otsu box, shape ``(C, K)`` (NaN rows
        for classes without frames)."""
        return _per_class_percent(self.otsu_correct, self.count)

    def otsu_mean_iou(self) -> float:
        return float(self.otsu_iou_sum.sum() / self._n())

    def pointing_game(self) -> float:
        """Percentage of frames whose map peak falls inside a GT box."""
        return float(self.pointing_hits.sum() * 100.0 / self._n())

    def cls_accuracy(self, k: int = 1) -> float:
        n = int(self.cls_count.sum())
        if n == 0:
            raise HarnessError("classification accuracy needs class scores: no frame was added with logits")
        return float({1: self.cls_top1, 5: self.cls_top5}[k].sum() * 100.0 / n)

    def _n(self) -> int:
        n = self.num_frames
        if n == 0:
            raise HarnessError("box metrics: no frame was evaluated (empty split)")
        return n

    # ------------------------------------------------------------------ serialization

    def state_dict(self) -> dict:
        """A JSON-able dict (lists and scalars) of the settings and counts."""
        state = {
            "kind": _STATE_KIND,
            "version": _STATE_VERSION,
            "num_classes": self.num_classes,
            "thresholds": [float(t) for t in self.thresholds],
            "iou_thresholds": list(self.iou_thresholds),
            "multi_contour": self.multi_contour,
        }
        state.update({name: getattr(self, name).tolist() for name in _COUNTS})
        return state

    @classmethod
    def from_state_dict(cls, state: dict) -> "BoxAccumulator":
        """Rebuild an accumulator from :meth:`state_dict` (e.g. after a JSON round trip)."""
        if not isinstance(state, dict) or state.get("kind") != _STATE_KIND:
            raise HarnessError("not a box accumulator state (missing or wrong 'kind')")
        if state.get("version") != _STATE_VERSION:
            raise HarnessError(f"box accumulator state version {state.get('version')!r} is not supported")
        settings = ("num_classes", "thresholds", "iou_thresholds", "multi_contour")
        missing = [k for k in settings + _COUNTS if k not in state]
        if missing:
            raise HarnessError(f"box accumulator state lacks {missing}")
        acc = cls(state["num_classes"], state["thresholds"], state["iou_thresholds"], state["multi_contour"])
        for name in _COUNTS:
            target = getattr(acc, name)
            value = np.asarray(state[name])
            if value.shape != target.shape:
                raise HarnessError(f"box accumulator state: {name} has shape {value.shape}, expected {target.shape}")
            if target.dtype.kind == "i" and value.size and value.dtype.kind not in "iu":
                raise HarnessError(f"box accumulator state: {name} must hold integers")
            if value.size and (value < 0).any():
                raise HarnessError(f"box accumulator state: {name} must not be negative")
            target[...] = value
        if (acc.correct > acc.count[:, None, None]).any() or (acc.cls_count > acc.count).any():
            raise HarnessError("box accumulator state: counts must satisfy 0 <= correct <= count")
        return acc


_COUNTS = (
    "correct", "top1", "top5", "iou_sum", "otsu_correct", "otsu_iou_sum", "pointing_hits",
    "count", "cls_count", "cls_top1", "cls_top5",
)


def _per_class_percent(counts: np.ndarray, count: np.ndarray) -> np.ndarray:
    out = np.full(counts.shape, np.nan)
    has = count > 0
    out[has] = counts[has] * 100.0 / count[has, None]
    return out


def _check_curves(curves: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (C, T) curve array; return it and the mask of classes that have frames."""
    c = np.asarray(curves, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] < 1 or c.shape[1] < 1:
        raise HarnessError(f"CorLoc curves must have shape (num_classes, num_thresholds), got {c.shape}")
    nan = np.isnan(c)
    has = ~nan.all(axis=1)
    partial = np.flatnonzero(has & nan.any(axis=1))
    if partial.size:
        raise HarnessError(f"CorLoc curves: class {int(partial[0])} has NaN at some thresholds only")
    vals = c[has]
    if not np.isfinite(vals).all() or (vals < 0).any() or (vals > 100).any():
        raise HarnessError("CorLoc curves must hold percentages in [0, 100] (NaN rows for classes without frames)")
    if not has.any():
        raise HarnessError("CorLoc: no class has any frame (empty split)")
    return c, has


def select_threshold(curves: Any, scope: str = "global", *, empty_class: str = "error") -> np.ndarray:
    """Threshold index per class, shape ``(C,)``, chosen on ``curves`` (percent, ``(C, T)``).

    - ``scope="global"``: one index for every class, the one maximizing the class-mean
      accuracy (mean over the classes that have frames).
    - ``scope="per-class"``: each class's own argmax.

    Ties go to the smallest index (``np.argmax``). In per-class scope a class without frames has
    no threshold of its own: ``empty_class="error"`` (default) raises :class:`HarnessError`,
    ``empty_class="global"`` gives it the global index. An empty split always raises.
    """
    if scope not in ("global", "per-class"):
        raise HarnessError(f"threshold scope must be 'global' or 'per-class', got {scope!r}")
    if empty_class not in ("error", "global"):
        raise HarnessError(f"empty_class must be 'error' or 'global', got {empty_class!r}")
    c, has = _check_curves(curves)
    global_idx = int(np.argmax(c[has].mean(axis=0)))
    idx = np.full(c.shape[0], global_idx, dtype=np.int64)
    if scope == "per-class":
        empty = np.flatnonzero(~has)
        if empty.size and empty_class == "error":
            raise HarnessError(
                f"per-class threshold selection: class(es) {empty.tolist()} have no frame in the selection "
                "split; use scope 'global' or empty_class='global'"
            )
        idx[has] = np.argmax(c[has], axis=1)
    return idx


def corloc_at(curves: Any, tau_idx: Any) -> dict:
    """Per-class CorLoc at the given threshold indices (one per class, or one for all).

    Returns ``{"per_class": [float | None] * C, "mean": float}``: ``None`` for a class without
    frames in ``curves``; ``mean`` over the classes that have frames. An empty split raises
    :class:`HarnessError`. ``curves`` may come from another split than the one the indices were
    selected on, provided both used the same threshold list.
    """
    c, has = _check_curves(curves)
    num_classes, num_thr = c.shape
    idx = np.asarray(tau_idx)
    if idx.dtype.kind not in "iu":
        raise HarnessError(f"threshold indices must be integers, got dtype {idx.dtype}")
    if idx.ndim == 0:
        idx = np.full(num_classes, int(idx), dtype=np.int64)
    if idx.shape != (num_classes,):
        raise HarnessError(f"expected {num_classes} threshold indices (one per class), got shape {idx.shape}")
    bad = np.flatnonzero((idx < 0) | (idx >= num_thr))
    if bad.size:
        k = int(bad[0])
        raise HarnessError(f"threshold index {int(idx[k])} of class {k} is outside [0, {num_thr - 1}]")
    per_class = [float(c[k, idx[k]]) if has[k] else None for k in range(num_classes)]
    mean = float(np.mean([v for v in per_class if v is not None]))
    return {"per_class": per_class, "mean": mean}
