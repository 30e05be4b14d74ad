"""Boxes from score maps, and box IoU, exactly as Choe et al.'s wsolevaluation computes them.

Pure functions over NumPy arrays (OpenCV for contours; no torch). The conventions, including
the surprising ones kept for comparability with published numbers (uint8 quantization, strict
threshold relative to the map maximum, ``RETR_TREE`` hole contours, the one-past-the-end box
end, the inclusive ``+1`` IoU), are documented once, in ``docs/metrics.md``.

Boxes are ``int64`` arrays of shape ``(n, 4)`` holding ``x0, y0, x1, y1`` pixel coordinates.
"""
from __future__ import annotations

import warnings
from typing import Any

import cv2
import numpy as np

from harness.errors import HarnessError

__all__ = [
    "normalize_map",
    "check_map",
    "threshold_list",
    "boxes_at_thresholds",
    "iou_matrix",
    "check_boxes",
]

_NO_BOX = np.zeros((1, 4), dtype=np.int64)  # what wsolevaluation returns when nothing survives


def _who(frame_id: Any) -> str:
    return "score map" if frame_id is None else f"frame {frame_id!r}"


def _as_real_array(m: Any, frame_id: Any, what: str) -> np.ndarray:
    arr = np.asarray(m)
    kind = arr.dtype.kind
    if kind not in "buif":
        raise HarnessError(f"{_who(frame_id)}: {what} has dtype {arr.dtype}; expected a real-valued array")
    if arr.size == 0:
        raise HarnessError(f"{_who(frame_id)}: {what} is empty (shape {arr.shape})")
    return arr.astype(np.float64, copy=False)


def _check_finite(arr: np.ndarray, frame_id: Any, what: str) -> None:
    if not np.isfinite(arr).all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(np.isinf(arr).sum())
        raise HarnessError(
            f"{_who(frame_id)}: {what} contains {n_nan} NaN and {n_inf} infinite value(s); "
            "the method produced an invalid map"
        )


def normalize_map(m: np.ndarray, frame_id: Any = None) -> np.ndarray:
    """Min-max normalize a map to ``[0, 1]`` as ``float64`` (a new array; ``m`` is not modified).

    Same as wsolevaluation's ``normalize_scoremap`` (``m -= min; m /= max``) except that NaN or
    infinite values raise :class:`HarnessError` (naming ``frame_id`` when given) instead of
    silently giving an all-zero map. A constant map gives all zeros. The maximum maps to exactly
    ``1.0`` and the minimum to ``0.0``.
    """
    arr = _as_real_array(m, frame_id, "score map")
    _check_finite(arr, frame_id, "score map")
    lo = arr.min()
    hi = arr.max()
    if lo == hi:
        return np.zeros(arr.shape, dtype=np.float64)
    with np.errstate(over="ignore"):
        span = hi - lo
    if not np.isfinite(span):  # e.g. -1e308 .. 1e308: halving is exact and keeps the ratios
        arr, lo, hi = arr * 0.5, lo * 0.5, hi * 0.5
    out = arr - lo
    out /= hi - lo
    return out


def check_map(m: np.ndarray, frame_id: Any = None, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Validate a score map and return it as a ``float64`` array (a copy only if needed).

    The contract (wsolevaluation's ``check_scoremap_validity``): a 2-D real array, no NaN or
    infinite value, every value in ``[0, 1]`` (normalize first with :func:`normalize_map`), and,
    when ``shape`` is given, exactly that ``(H, W)``. Anything else raises :class:`HarnessError`
    naming ``frame_id``. Integer and bool maps are accepted and converted; the values must still
    lie in ``[0, 1]``.
    """
    arr = _as_real_array(m, frame_id, "score map")
    if arr.ndim != 2:
        raise HarnessError(f"{_who(frame_id)}: score map must be 2-D (H, W), got shape {arr.shape}")
    if shape is not None and arr.shape != tuple(shape):
        raise HarnessError(
            f"{_who(frame_id)}: score map has shape {arr.shape} but {tuple(shape)} (H, W) was expected"
        )
    _check_finite(arr, frame_id, "score map")
    lo = arr.min()
    hi = arr.max()
    if lo < 0.0 or hi > 1.0:
        raise HarnessError(
            f"{_who(frame_id)}: score map values must lie in [0, 1], got [{lo:.6g}, {hi:.6g}]; "
            "normalize it (normalize_map) before evaluation"
        )
    return arr


def threshold_list(step: float = 0.001) -> np.ndarray:
    """The CAM threshold list ``np.arange(0, 1, step)``, exactly as wsolevaluation builds it.

    ``step=0.001`` (the reference default) gives 1000 thresholds ``0, 0.001, ..., 0.999``.
    """
    step = float(step)
    if not (np.isfinite(step) and 0.0 < step <= 1.0):
        raise HarnessError(f"threshold step must be in (0, 1], got {step!r}")
    return np.arange(0, 1, step)


def _check_thresholds(thresholds: Any) -> np.ndarray:
    t = np.asarray(thresholds)
    if t.ndim != 1 or t.size == 0 or t.dtype.kind not in "uif":
        raise HarnessError(f"thresholds must be a non-empty 1-D list of numbers, got shape {t.shape}, dtype {t.dtype}")
    t = t.astype(np.float64)
    if not np.isfinite(t).all():
        raise HarnessError("thresholds must be finite numbers")
    return t


def _quantize(score_map: np.ndarray) -> np.ndarray:
    """``uint8(floor(s * 255))``: the reference's ``(s * 255).astype(np.uint8)`` for ``s`` in [0, 1]."""
    return (score_map * 255).astype(np.uint8)


def _boxes_of_binary(binary: np.ndarray, multi_contour: bool) -> np.ndarray:
    """Boxes of one binarized (0/255 uint8) map; the body of the reference's ``scoremap2bbox``.

    ``cv2.boundingRect`` and ``cv2.contourArea`` are evaluated for all contours at once with
    NumPy (a noisy map has thousands of contours per threshold). Both are exact on integer
    points: boundingRect is ``(min x, min y, max x - min x + 1, max y - min y + 1)``, and
    contourArea is half the absolute shoelace sum, which OpenCV accumulates in double precision
    from integer terms and is therefore the same integer sum computed here in int64. The
    largest area is chosen with ``np.argmax`` (the first of equals, like ``max(key=...)``).
    """
    height, width = binary.shape
    # OpenCV 3 returns (image, contours, hierarchy), 4 and 5 return (contours, hierarchy).
    contours = cv2.findContours(binary, mode=cv2.RETR_TREE, method=cv2.CHAIN_APPROX_SIMPLE)[-2]
    n = len(contours)
    if n == 0:
        return _NO_BOX.copy()
    lengths = np.fromiter(map(len, contours), dtype=np.int64, count=n)
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    pts = np.concatenate(contours).reshape(-1, 2).astype(np.int64)
    if not multi_contour:
        x, y = pts[:, 0], pts[:, 1]
        prev = np.arange(-1, len(pts) - 1)
        prev[starts] = starts + lengths - 1  # each contour is closed: first point's predecessor is its last
        twice_area = np.abs(np.add.reduceat(x[prev] * y - y[prev] * x, starts))
        k = int(np.argmax(twice_area))
        pts = pts[starts[k] : starts[k] + lengths[k]]
        starts = np.zeros(1, dtype=np.int64)
    boxes = np.empty((len(starts), 4), dtype=np.int64)
    boxes[:, 0] = np.minimum.reduceat(pts[:, 0], starts)
    boxes[:, 1] = np.minimum.reduceat(pts[:, 1], starts)
    # boundingRect's x + w is one past the last pixel column; the reference clamps it to W - 1.
    boxes[:, 2] = np.minimum(np.maximum.reduceat(pts[:, 0], starts) + 1, width - 1)
    boxes[:, 3] = np.minimum(np.maximum.reduceat(pts[:, 1], starts) + 1, height - 1)
    return boxes


def _distinct_boxes(img: np.ndarray, thresholds: np.ndarray, multi_contour: bool) -> tuple[list[np.ndarray], np.ndarray]:
    """Boxes of a quantized map at every threshold, computed once per distinct binarization.

    Returns ``(groups, index)``: ``groups[index[t]]`` is the ``(n, 4)`` box array at
    ``thresholds[t]``. The reference binarizes ``img > int(tau * max(img))`` for every tau;
    two thresholds give the same binary image whenever no pixel value lies between their
    integer cut-offs, so each such class is binarized and traced once (at most 256 classes).
    """
    counts = np.bincount(img.ravel(), minlength=256)
    values = np.flatnonzero(counts)  # distinct pixel values, ascending
    peak = float(values[-1])
    # int(tau * max) as the reference (float64 product, truncation toward zero). Clipping to
    # [-1, 255] first changes no binarization and keeps the cast in range.
    cut = np.trunc(np.clip(thresholds * peak, -1.0, 255.0)).astype(np.int64)
    # Binarization class: how many distinct pixel values are <= the cut (those are background).
    key = np.searchsorted(values, cut, side="right")
    classes, index = np.unique(key, return_inverse=True)
    groups = []
    for k in classes:
        if k == len(values):  # nothing above the cut: no contour
            groups.append(_NO_BOX.copy())
            continue
        if k == 0:  # every pixel above the cut
            binary = np.full(img.shape, 255, dtype=np.uint8)
        else:
            _, binary = cv2.threshold(img, int(values[k - 1]), 255, cv2.THRESH_BINARY)
        groups.append(_boxes_of_binary(binary, multi_contour))
    return groups, index.reshape(-1)


def boxes_at_thresholds(
    score_map: np.ndarray,
    thresholds: Any,
    multi_contour: bool,
    *,
    frame_id: Any = None,
) -> list[np.ndarray]:
    """Predicted boxes at every CAM threshold: Choe et al.'s ``compute_bboxes_from_scoremaps``.

    For each ``tau`` in ``thresholds``: quantize ``img = uint8(floor(s * 255))``, keep the pixels
    with ``img > int(tau * max(img))`` (strict, relative to the map's maximum), trace
    ``cv2.findContours(RETR_TREE, CHAIN_APPROX_SIMPLE)`` and turn contours into boxes
    ``[x, y, min(x + w, W - 1), min(y + h, H - 1)]`` (one past the last pixel, clamped). With
    ``multi_contour=False`` only the contour of largest ``cv2.contourArea`` is kept (the first on
    ties); with ``True`` every contour, hole contours included, gives a box. No contour gives
    ``[[0, 0, 0, 0]]``. See ``docs/metrics.md`` for why these quirks are kept.

    The result is identical to the per-threshold reference loop, but each distinct binarization
    is traced only once (at most 255 of the 1000 thresholds of step 0.001 differ).

    Returns one ``int64`` array of shape ``(n_t, 4)`` per threshold (independent copies).
    """
    s = check_map(score_map, frame_id)
    groups, index = _distinct_boxes(_quantize(s), _check_thresholds(thresholds), bool(multi_contour))
    return [groups[i].copy() for i in index]


def iou_matrix(a: Any, b: Any) -> np.ndarray:
    """IoU of every box of ``a`` (n, 4) with every box of ``b`` (m, 4), shape ``(n, m)``, float64.

    Inclusive pixel convention of wsolevaluation's ``calculate_multiple_iou``: a box covers
    ``x1 - x0 + 1`` columns, so ``[3, 3, 3, 3]`` is one pixel and two boxes sharing an edge
    column overlap. A pair whose union (denominator) is ``<= 0`` (malformed boxes) gets 0.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    for name, x in (("a", a), ("b", b)):
        if x.ndim != 2 or x.shape[1] != 4:
            raise ValueError(f"iou_matrix: {name} must have shape (n, 4), got {x.shape}")
    a = a[:, None, :]
    b = b[None, :, :]
    inter_w = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    inter_h = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    inter = inter_w * inter_h
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    denom = area_a + area_b - inter
    out = np.zeros(denom.shape, dtype=np.float64)
    ok = denom > 0
    out[ok] = inter[ok] / denom[ok]
    return out


def check_boxes(boxes: Any, width: int, height: int, frame_id: Any) -> np.ndarray:
    """Validate ground-truth boxes of one frame; return them as an ``int64`` ``(n, 4)`` array.

    Boxes are inclusive ``x0, y0, x1, y1`` pixel coordinates (``[5, 5, 5, 5]`` is a valid
    one-pixel box). A single box may be given as a flat sequence of 4 numbers.

    Raises :class:`HarnessError` naming ``frame_id`` for: no box at all, a shape other than
    ``(n, 4)``, NaN/inf or non-integer coordinates, ``x1 < x0`` or ``y1 < y0`` (no pixel, i.e.
    zero or negative inclusive area), or a box lying entirely outside the image.

    A box that extends past the image is clipped to ``[0, W-1] x [0, H-1]`` with a
    ``UserWarning`` naming the frame (wsolevaluation would raise on negative coordinates and
    silently accept ones past the border).
    """
    who = _who(frame_id)
    width = int(width)
    height = int(height)
    if width < 1 or height < 1:
        raise HarnessError(f"{who}: image size must be positive, got W={width}, H={height}")
    arr = np.asarray(boxes)
    if arr.ndim == 1 and arr.shape[0] == 4:
        arr = arr[None, :]
    if arr.size == 0:
        raise HarnessError(f"{who}: no ground-truth box; a frame evaluated for localization needs at least one")
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise HarnessError(f"{who}: ground-truth boxes must have shape (n, 4) as x0, y0, x1, y1; got {arr.shape}")
    if arr.dtype.kind not in "uif":
        raise HarnessError(f"{who}: ground-truth boxes have dtype {arr.dtype}; expected integer coordinates")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise HarnessError(f"{who}: ground-truth boxes contain NaN or infinite coordinates: {arr.tolist()}")
        if (arr != np.floor(arr)).any():
            raise HarnessError(
                f"{who}: ground-truth boxes must have integer pixel coordinates, got {arr.tolist()}; "
                "rescale them with truncation (int) as wsolevaluation's resize_bbox does"
            )
    arr = arr.astype(np.int64)
    x0, y0, x1, y1 = arr.T
    bad = np.flatnonzero((x1 < x0) | (y1 < y0))
    if bad.size:
        i = int(bad[0])
        raise HarnessError(
            f"{who}: ground-truth box {i} {arr[i].tolist()} is degenerate (needs x0 <= x1 and y0 <= y1, "
            "inclusive x0, y0, x1, y1 coordinates)"
        )
    outside = np.flatnonzero((x0 > width - 1) | (y0 > height - 1) | (x1 < 0) | (y1 < 0))
    if outside.size:
        i = int(outside[0])
        raise HarnessError(
            f"{who}: ground-truth box {i} {arr[i].tolist()} lies entirely outside the {width}x{height} image"
        )
    clipped = arr.copy()
    np.clip(clipped[:, 0::2], 0, width - 1, out=clipped[:, 0::2])
    np.clip(clipped[:, 1::2], 0, height - 1, out=clipped[:, 1::2])
    if not np.array_equal(clipped, arr):
        changed = np.flatnonzero((clipped != arr).any(axis=1)).tolist()
        warnings.warn(
            f"{who}: ground-truth box(es) {changed} extend past the {width}x{height} image "
            f"and were clipped to [0, {width - 1}] x [0, {height - 1}]",
            UserWarning,
            stacklevel=2,
        )
    return clipped
