"""CorLoc / MaxBoxAcc: per-threshold localization accuracy curves and threshold selection.

A frame is *correct* at CAM threshold ``tau`` when the best IoU between its predicted boxes at
``tau`` and its ground-truth boxes is ``>= iou_threshold`` (``>=`` as wsolevaluation's code;
papers write ``>``). :class:`CorLocAccumulator` streams frames and keeps only counts
(``correct[class, tau]`` and ``count[class]``), never maps, so memory is bounded whatever the
split size. Its :meth:`~CorLocAccumulator.curves` give per-class accuracy in percent.

Threshold selection is kept apart from accumulation so that a protocol can pick thresholds on
one split and apply them to another: ``select_threshold(val_curves, scope)`` returns per-class
threshold indices, ``corloc_at(test_curves, indices)`` reads the accuracy at those indices. The
oracle protocols of the papers are the special case ``corloc_at(c, select_threshold(c, ...))``
on the same split. Curves are only comparable when built with the same threshold list.
See ``docs/metrics.md``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from harness.errors import HarnessError
from harness.evaluation.boxes import (
    _check_thresholds,
    _distinct_boxes,
    _quantize,
    check_boxes,
    check_map,
    iou_matrix,
)

__all__ = ["best_iou_per_threshold", "CorLocAccumulator", "select_threshold", "corloc_at"]

_STATE_KIND = "CorLocAccumulator"
_STATE_VERSION = 1


def _best_iou(score_map: np.ndarray, gt: np.ndarray, thresholds: np.ndarray, multi_contour: bool) -> np.ndarray:
    groups, index = _distinct_boxes(_quantize(score_map), thresholds, multi_contour)
    starts = np.cumsum([0] + [len(g) for g in groups[:-1]])
    best_per_box = iou_matrix(np.concatenate(groups), gt).max(axis=1)  # best GT for each box
    best_per_group = np.maximum.reduceat(best_per_box, starts)  # best box of each binarization
    return best_per_group[index]


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
    s = check_map(score_map, frame_id)
    gt = check_boxes(gt_boxes, s.shape[1], s.shape[0], frame_id)
    return _best_iou(s, gt, _check_thresholds(thresholds), bool(multi_contour))


class CorLocAccumulator:
    """Streaming per-class CorLoc counts over a split.

    ``correct[c, t]`` counts frames of class ``c`` whose best IoU at ``thresholds[t]`` is
    ``>= iou_threshold``; ``count[c]`` counts frames of class ``c``. Memory is
    ``O(num_classes * len(thresholds))``.
    """

    def __init__(self, num_classes: int, thresholds: Any, iou_threshold: float = 0.5, multi_contour: bool = False):
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise HarnessError(f"num_classes must be a positive integer, got {num_classes!r}")
        iou_threshold = float(iou_threshold)
        if not (0.0 <= iou_threshold <= 1.0):
            raise HarnessError(f"iou_threshold must be in [0, 1], got {iou_threshold!r}")
        self.num_classes = int(num_classes)
        self.thresholds = _check_thresholds(thresholds).copy()
        self.thresholds.setflags(write=False)
        self.iou_threshold = iou_threshold
        self.multi_contour = bool(multi_contour)
        self.correct = np.zeros((self.num_classes, len(self.thresholds)), dtype=np.int64)
        self.count = np.zeros(self.num_classes, dtype=np.int64)

    @property
    def num_frames(self) -> int:
        return int(self.count.sum())

    def add(self, score_map: np.ndarray, gt_boxes: Any, label: int, frame_id: Any) -> np.ndarray:
        """Add one frame; return its best IoU per threshold, shape ``(T,)``.

        Everything is validated before any count changes, so a frame that raises leaves the
        accumulator as it was.
        """
        s = check_map(score_map, frame_id)
        gt = check_boxes(gt_boxes, s.shape[1], s.shape[0], frame_id)
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < self.num_classes:
            raise HarnessError(
                f"frame {frame_id!r}: class label {label!r} is not an integer in [0, {self.num_classes - 1}]"
            )
        best = _best_iou(s, gt, self.thresholds, self.multi_contour)
        self.correct[int(label)] += best >= self.iou_threshold
        self.count[int(label)] += 1
        return best

    def curves(self) -> np.ndarray:
        """Per-class accuracy in percent, shape ``(C, T)``; an all-NaN row for a class without frames."""
        out = np.full(self.correct.shape, np.nan)
        has = self.count > 0
        out[has] = self.correct[has] * 100.0 / self.count[has, None]
        return out

    def pooled_curve(self) -> np.ndarray:
        """Accuracy in percent over all frames pooled (no class mean), shape ``(T,)``.

        This is wsolevaluation's ``BoxEvaluator`` curve; its max is MaxBoxAcc.
        """
        n = self.num_frames
        if n == 0:
            raise HarnessError("CorLoc: no frame was evaluated (empty split)")
        return self.correct.sum(axis=0) * 100.0 / n

    def merge(self, other: "CorLocAccumulator") -> "CorLocAccumulator":
        """Add ``other``'s counts into this accumulator (in place) and return ``self``."""
        if not isinstance(other, CorLocAccumulator):
            raise TypeError(f"cannot merge a {type(other).__name__} into a CorLocAccumulator")
        self._check_compatible(other)
        self.correct += other.correct
        self.count += other.count
        return self

    def _check_compatible(self, other: "CorLocAccumulator") -> None:
        diffs = []
        if other.num_classes != self.num_classes:
            diffs.append(f"num_classes {self.num_classes} vs {other.num_classes}")
        if not np.array_equal(other.thresholds, self.thresholds):
            diffs.append(f"thresholds ({len(self.thresholds)} vs {len(other.thresholds)} values, or different values)")
        if other.iou_threshold != self.iou_threshold:
            diffs.append(f"iou_threshold {self.iou_threshold} vs {other.iou_threshold}")
        if other.multi_contour != self.multi_contour:
            diffs.append(f"multi_contour {self.multi_contour} vs {other.multi_contour}")
        if diffs:
            raise HarnessError("cannot merge CorLoc accumulators with different settings: " + "; ".join(diffs))

    def state_dict(self) -> dict:
        """A JSON-able dict (lists and scalars) of the settings and counts."""
        return {
            "kind": _STATE_KIND,
            "version": _STATE_VERSION,
            "num_classes": self.num_classes,
            "thresholds": [float(t) for t in self.thresholds],
            "iou_threshold": self.iou_threshold,
            "multi_contour": self.multi_contour,
            "correct": self.correct.tolist(),
            "count": self.count.tolist(),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> "CorLocAccumulator":
        """Rebuild an accumulator from :meth:`state_dict` (e.g. after a JSON round trip)."""
        if not isinstance(state, dict) or state.get("kind") != _STATE_KIND:
            raise HarnessError("not a CorLoc accumulator state (missing or wrong 'kind')")
        if state.get("version") != _STATE_VERSION:
            raise HarnessError(f"CorLoc accumulator state version {state.get('version')!r} is not supported")
        missing = [k for k in ("num_classes", "thresholds", "iou_threshold", "multi_contour", "correct", "count") if k not in state]
        if missing:
            raise HarnessError(f"CorLoc accumulator state lacks {missing}")
        acc = cls(state["num_classes"], state["thresholds"], state["iou_threshold"], state["multi_contour"])
        correct = np.asarray(state["correct"])
        count = np.asarray(state["count"])
        if correct.shape != acc.correct.shape or count.shape != acc.count.shape:
            raise HarnessError(
                f"CorLoc accumulator state: counts have shapes {correct.shape} and {count.shape}, "
                f"expected {acc.correct.shape} and {acc.count.shape}"
            )
        if correct.dtype.kind not in "iu" or count.dtype.kind not in "iu":
            raise HarnessError("CorLoc accumulator state: counts must be integers")
        if (count < 0).any() or (correct < 0).any() or (correct > count[:, None]).any():
            raise HarnessError("CorLoc accumulator state: counts must satisfy 0 <= correct <= count")
        acc.correct[...] = correct
        acc.count[...] = count
        return acc


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
