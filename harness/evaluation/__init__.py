"""Evaluation: boxes from score maps, IoU, box metrics (CorLoc, MaxBoxAcc, MaxBoxAccV2,
Top-1/Top-5 Loc, pointing game, Otsu boxes), PxAP, and threshold selection.

Semantics follow Choe et al.'s wsolevaluation; the conventions are documented in docs/metrics.md.
"""
from harness.evaluation.box_accuracy import (
    BoxAccumulator,
    best_iou_per_threshold,
    corloc_at,
    otsu_boxes,
    otsu_level,
    pointing_hit,
    select_threshold,
)
from harness.evaluation.boxes import (
    boxes_at_thresholds,
    check_boxes,
    check_map,
    iou_matrix,
    normalize_map,
    threshold_list,
)
from harness.evaluation.pxap import MaskAccumulator, pxap

__all__ = [
    "normalize_map",
    "check_map",
    "threshold_list",
    "boxes_at_thresholds",
    "iou_matrix",
    "check_boxes",
    "best_iou_per_threshold",
    "otsu_level",
    "otsu_boxes",
    "pointing_hit",
    "BoxAccumulator",
    "select_threshold",
    "corloc_at",
    "MaskAccumulator",
    "pxap",
]
