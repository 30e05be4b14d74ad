"""Evaluation: boxes from score maps, IoU, CorLoc / MaxBoxAcc curves and threshold selection.

Semantics follow Choe et al.'s wsolevaluation; the conventions are documented in docs/metrics.md.
"""
from harness.evaluation.boxes import (
    boxes_at_thresholds,
    check_boxes,
    check_map,
    iou_matrix,
    normalize_map,
    threshold_list,
)
from harness.evaluation.corloc import (
    CorLocAccumulator,
    best_iou_per_threshold,
    corloc_at,
    select_threshold,
)

__all__ = [
    "normalize_map",
    "check_map",
    "threshold_list",
    "boxes_at_thresholds",
    "iou_matrix",
    "check_boxes",
    "best_iou_per_threshold",
    "CorLocAccumulator",
    "select_threshold",
    "corloc_at",
]
