"""Choose the epoch and the CAM threshold as a protocol says.

``boxes(split, epoch, target)`` returns the box counts of a checkpoint on a split, scored
against GT (``target="gt"``) or an annotator's pseudo-boxes; the evaluation store computes
and caches them on demand, so only what a protocol needs is ever computed.

- The epoch maximizes the selection score on the selection split: CorLoc at the best
  threshold(s) against the protocol's boxes (or with each map's Otsu box when the threshold
  source is Otsu), or classification accuracy under ``cls`` supervision.
- The threshold is chosen at that epoch on the threshold split: against the protocol's boxes
  on val (VT), against GT on test (TT: the oracle threshold MaxBoxAcc takes), or none (OT).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from harness.errors import HarnessError
from harness.evaluation import BoxAccumulator, corloc_at, select_threshold
from harness.protocol import Protocol

Boxes = Callable[[str, int, str], BoxAccumulator]


@dataclass
class Selection:
    epoch: int
    tau_index: np.ndarray | None  # (C,) threshold index per class (all equal when global); None: Otsu
    epoch_scores: dict[int, float]  # selection score of every candidate epoch
    score: float  # the selected epoch's score: what a sweep compares configurations by
    epoch_target: str  # boxes the epoch was scored against: "gt", an annotator, or "cls"
    tau_target: str | None  # boxes the threshold was chosen against (None under Otsu)

    def taus(self, thresholds: np.ndarray) -> list[float] | None:
        if self.tau_index is None:
            return None
        return [float(thresholds[i]) for i in self.tau_index]


def supervision_target(protocol: Protocol) -> str:
    """``gt``, ``cls``, or the annotator name of ``pseudo:<annotator>``."""
    s = protocol.supervision
    return s.split(":", 1)[1] if s.startswith("pseudo:") else s


def tau_target(protocol: Protocol) -> str | None:
    """Boxes the threshold is chosen against: none under Otsu; test GT under TT (the oracle
    threshold of MaxBoxAcc, whatever selected the epoch); the protocol's boxes under VT."""
    if protocol.threshold_source == "otsu":
        return None
    if protocol.threshold_source == "test":
        return "gt"
    return supervision_target(protocol)


def needs(protocol: Protocol) -> list[tuple[str, str]]:
    """(split, target) pairs a protocol reads, the pseudo-box ones to prepare before training."""
    out = []
    target = supervision_target(protocol)
    out.append((protocol.selection_split, "gt" if target == "cls" else target))
    if tau_target(protocol) is not None:
        out.append((protocol.threshold_source, tau_target(protocol)))
    return out


def metric_curves(acc: BoxAccumulator, metric: str, iou: float) -> np.ndarray:
    """Per-class (C, T) curves of the selection metric, in percent: CorLoc at IoU ``iou``, or
    the mean IoU (the chapter's recommended non-thresholded measure)."""
    if metric == "corloc":
        return acc.curves(iou)
    out = np.full(acc.iou_sum.shape, np.nan)
    has = acc.count > 0
    out[has] = acc.iou_sum[has] * 100.0 / acc.count[has, None]
    return out


def otsu_score(acc: BoxAccumulator, metric: str, iou: float) -> float:
    has = acc.count > 0
    if metric == "corloc":
        return float(np.nanmean(acc.otsu_curves()[:, acc.level_index(iou)]))
    return float(np.mean(acc.otsu_iou_sum[has] * 100.0 / acc.count[has]))


def epoch_score(protocol: Protocol, acc: BoxAccumulator, iou: float) -> float:
    if protocol.supervision == "cls":
        return acc.cls_accuracy(1)
    if protocol.threshold_source == "otsu":
        return otsu_score(acc, protocol.select_metric, iou)
    curves = metric_curves(acc, protocol.select_metric, iou)
    return corloc_at(curves, select_threshold(curves, protocol.threshold_scope))["mean"]


def select(protocol: Protocol, epochs: list[int], boxes: Boxes, iou: float) -> Selection:
    if not epochs:
        raise HarnessError("no trained epoch to select from: the run has no checkpoint")
    target = supervision_target(protocol)
    read = "gt" if target == "cls" else target  # cls accuracy is counted in every record
    scores = {e: epoch_score(protocol, boxes(protocol.selection_split, e, read), iou) for e in epochs}
    # Ties go to the earliest epoch: the cheapest model that reaches the score.
    epoch = max(epochs, key=lambda e: (scores[e], -e))
    t_target = tau_target(protocol)
    tau_index = None
    if t_target is not None:
        curves = metric_curves(boxes(protocol.threshold_source, epoch, t_target), protocol.select_metric, iou)
        tau_index = np.asarray(select_threshold(curves, protocol.threshold_scope))
    return Selection(epoch, tau_index, scores, scores[epoch], target, t_target)
