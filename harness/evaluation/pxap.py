"""PxAP: pixel average precision of localization maps against GT masks (Choe et al., the
OpenImages protocol), accumulated over the whole split as score histograms.

Semantics of wsolevaluation's ``MaskEvaluator``: bin edges are the threshold list plus
``{1, 2, 3}`` (a score of exactly 1.0 falls in ``[1, 2)``); a pixel is predicted positive at
``tau`` when ``score >= tau``; ignore pixels (inside the ignore mask and not foreground) count
neither as positive nor as negative; PxAP is the step-wise area under the precision-recall
curve, ``100 * sum_l P_l (R_l - R_{l-1})`` over the thresholds where something is predicted.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from harness.errors import HarnessError
from harness.evaluation.boxes import _check_thresholds, check_map

__all__ = ["MaskAccumulator", "pxap", "pr_curve"]


class MaskAccumulator:
    """Histograms of scores on GT-foreground and GT-background pixels; memory ``O(T)``."""

    def __init__(self, thresholds: Any):
        self.thresholds = _check_thresholds(thresholds).copy()
        self.edges = np.concatenate([self.thresholds, [1.0, 2.0, 3.0]])
        self.pos = np.zeros(len(self.edges) - 1, dtype=np.int64)
        self.neg = np.zeros(len(self.edges) - 1, dtype=np.int64)
        self.frames = 0

    def add(self, score_map: np.ndarray, mask: Any, frame_id: Any, ignore: Any = None) -> None:
        """``mask``: bool (H, W) foreground; ``ignore``: optional bool (H, W) region to leave out
        (foreground wins where both are set)."""
        s = check_map(score_map, frame_id)
        fg = _check_mask(mask, s.shape, frame_id, "mask")
        keep_bg = ~fg
        if ignore is not None:
            keep_bg &= ~_check_mask(ignore, s.shape, frame_id, "ignore mask")
        self.pos += np.histogram(s[fg], bins=self.edges)[0]
        self.neg += np.histogram(s[keep_bg], bins=self.edges)[0]
        self.frames += 1

    def merge(self, other: "MaskAccumulator") -> "MaskAccumulator":
        """Add ``other``'s histograms into this accumulator (in place) and return ``self``."""
        if not isinstance(other, MaskAccumulator):
            raise TypeError(f"cannot merge a {type(other).__name__} into a MaskAccumulator")
        if not np.array_equal(other.thresholds, self.thresholds):
            raise HarnessError("cannot merge mask accumulators with different thresholds")
        self.pos += other.pos
        self.neg += other.neg
        self.frames += other.frames
        return self

    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(precision, recall) at each threshold, highest first; see :func:`pr_curve`."""
        return pr_curve(self.pos, self.neg)

    def pxap(self) -> float:
        return pxap(self.pos, self.neg)

    def state_dict(self) -> dict:
        return {"kind": "MaskAccumulator", "thresholds": self.thresholds.tolist(),
                "pos": self.pos.tolist(), "neg": self.neg.tolist(), "frames": self.frames}

    @classmethod
    def from_state_dict(cls, state: dict) -> "MaskAccumulator":
        if not isinstance(state, dict) or state.get("kind") != "MaskAccumulator":
            raise HarnessError("not a mask accumulator state (missing or wrong 'kind')")
        acc = cls(state["thresholds"])
        pos, neg = np.asarray(state["pos"]), np.asarray(state["neg"])
        if pos.shape != acc.pos.shape or neg.shape != acc.neg.shape:
            raise HarnessError("mask accumulator state: histograms do not match the thresholds")
        acc.pos[...], acc.neg[...], acc.frames = pos, neg, int(state["frames"])
        return acc


def pr_curve(pos_hist: np.ndarray, neg_hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall from the highest threshold down (pixels with ``score >= tau``).
    Precision is NaN where nothing is predicted positive."""
    tp = np.cumsum(pos_hist[::-1])
    fp = np.cumsum(neg_hist[::-1])
    n_pos = tp[-1] if tp.size else 0
    if n_pos <= 0:
        raise HarnessError("PxAP: no foreground pixel in the GT masks of this split")
    if not (tp + fp > 0).any():
        raise HarnessError("PxAP: no pixel is predicted positive at any threshold")
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
    return precision, tp / n_pos


def pxap(pos_hist: np.ndarray, neg_hist: np.ndarray) -> float:
    """Step-wise area under the PR curve, in percent (wsolevaluation's ``MaskEvaluator``)."""
    precision, recall = pr_curve(np.asarray(pos_hist), np.asarray(neg_hist))
    predicted = ~np.isnan(precision)
    steps = np.diff(recall)
    return float(100.0 * (precision[1:] * steps)[predicted[1:]].sum())


def _check_mask(mask: Any, shape: tuple[int, int], frame_id: Any, what: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.shape != shape:
        raise HarnessError(f"frame {frame_id!r}: {what} has shape {m.shape}, the map {shape}")
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise HarnessError(f"frame {frame_id!r}: {what} must be boolean (0/1), found other values")
        m = m.astype(bool)
    return m
