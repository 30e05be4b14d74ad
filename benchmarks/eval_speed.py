"""Speed of the box metrics: MaxBoxAccV2 and MaxBoxAcc (V1) on realistic score maps.

Usage: python benchmarks/eval_speed.py [--n 200] [--size 224] [--step 0.001] [--seed 0] [--repeat 3]

Generates N smooth score maps (1-3 Gaussian blobs plus noise, min-max normalized) with 1-3 GT
boxes each, and computes every map's best IoU per threshold three ways:

(a) naive: the reference algorithm written out per threshold, as wsolevaluation's
    compute_bboxes_from_scoremaps + calculate_multiple_iou do it: for each of the T thresholds
    cv2.threshold, cv2.findContours, cv2.boundingRect for every contour (the largest
    cv2.contourArea only, in single-contour mode), then the IoU of every box with every GT box
    and the best box per threshold. No deduplication, no shortcut.
(b) harness: harness.evaluation.best_iou_per_threshold (one
    component-tree pass per map for all 256 binarization levels).
(c) OpenCV dedup: findContours once per distinct binarization (at most 256 per map), the
    implementation the harness used before the component tree (boxes._distinct_boxes).
(d) evaluator: the harness's streaming BoxAccumulator as runs use it (b, plus the Otsu box,
    the pointing game and the per-class counts of every metric), read out as MaxBoxAcc(V2).

It asserts that (a)-(c) give identical per-map best-IoU arrays (==) and that all four give the
same metric, then prints the timings. Numba compilation is excluded (one warm-up call before timing; with
the on-disk cache a warm-up only loads the compiled code). The harness and dedup paths are
timed --repeat times (median reported), the naive loop once (it takes minutes).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import cv2
import numpy as np
from tabulate import tabulate

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from harness.evaluation.box_accuracy import BoxAccumulator  # noqa: E402
from harness.evaluation.boxes import iou_matrix, normalize_map, threshold_list  # noqa: E402
from harness.evaluation.box_accuracy import best_iou_per_threshold  # noqa: E402
from harness.evaluation.component_tree import count_fallback_levels  # noqa: E402

IOU_LEVELS = (0.3, 0.5, 0.7)


# ----------------------------------------------------------------------------- data


def make_maps(n: int, size: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Smooth CAM-like maps: 1-3 Gaussian blobs (sigma 4-25% of the size), a weak
    low-frequency background and uniform noise (0-8% of the peak), min-max normalized; GT boxes
    around 1-3 of the blobs (about +-1.5 sigma, jittered, clipped to the image)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for _ in range(n):
        m = np.zeros((size, size))
        blobs = []
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0.1, 0.9, 2) * size
            sy, sx = rng.uniform(0.04, 0.25, 2) * size
            m += rng.uniform(0.4, 1.0) * np.exp(-((yy - cy) ** 2 / (2 * sy**2) + (xx - cx) ** 2 / (2 * sx**2)))
            blobs.append((cx, cy, sx, sy))
        fy, fx = rng.uniform(0.5, 2.0, 2) * np.pi / size
        m += 0.1 * rng.random() * (1 + np.sin(fy * yy + rng.uniform(0, 6)) * np.cos(fx * xx))
        m += rng.uniform(0.0, 0.08) * rng.random((size, size))
        s = normalize_map(m)
        gt = []
        for cx, cy, sx, sy in blobs[: rng.integers(1, len(blobs) + 1)]:
            k = rng.uniform(1.0, 2.0)
            box = [cx - k * sx, cy - k * sy, cx + k * sx, cy + k * sy] + rng.normal(0, 0.02 * size, 4)
            x0, y0, x1, y1 = np.clip(np.round(box), 0, size - 1).astype(int)
            gt.append([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)])
        out.append((s, np.asarray(gt, np.int64)))
    return out


# ----------------------------------------------------------------------------- (a) naive


def naive_best_iou(score_map: np.ndarray, gt: np.ndarray, thresholds: np.ndarray, multi_contour: bool) -> np.ndarray:
    """wsolevaluation, written out: every threshold traced, every contour boxed."""
    height, width = score_map.shape
    img = np.expand_dims((score_map * 255).astype(np.uint8), 2)
    boxes, counts = [], []
    for tau in thresholds:
        _, binary = cv2.threshold(img, int(tau * np.max(img)), 255, cv2.THRESH_BINARY)
        contours = cv2.findContours(binary, mode=cv2.RETR_TREE, method=cv2.CHAIN_APPROX_SIMPLE)[-2]
        if len(contours) == 0:
            boxes.append([0, 0, 0, 0])
            counts.append(1)
            continue
        if not multi_contour:
            contours = [max(contours, key=cv2.contourArea)]
        for c in contours:
            x, y, w, h = cv2.boundingRect(c)
            boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
        counts.append(len(contours))
    # calculate_multiple_iou: every box against every GT box, inclusive (+1) convention.
    a = np.asarray(boxes, dtype=np.int64)[:, None, :]
    b = gt[None, :, :]
    inter_w = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    inter_h = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    inter = inter_w * inter_h
    union = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1) + (b[..., 2] - b[..., 0] + 1) * (
        b[..., 3] - b[..., 1] + 1
    ) - inter
    ious = np.zeros(union.shape)
    ok = union > 0
    ious[ok] = inter[ok] / union[ok]
    per_box = ious.max(axis=1)
    best, i = [], 0
    for n in counts:
        best.append(per_box[i : i + n].max())
        i += n
    return np.asarray(best)


# ----------------------------------------------------------------------------- (c) dedup


def dedup_path():
    """The OpenCV-per-distinct-binarization path the harness used before the component tree."""
    from harness.evaluation.boxes import _check_thresholds, _distinct_boxes, _quantize, check_boxes, check_map

    def dedup_best_iou(score_map, gt_boxes, thresholds, multi_contour=False):
        s = check_map(score_map)
        gt = check_boxes(gt_boxes, s.shape[1], s.shape[0], None)
        groups, index = _distinct_boxes(_quantize(s), _check_thresholds(thresholds), bool(multi_contour))
        starts = np.cumsum([0] + [len(g) for g in groups[:-1]])
        best_per_box = iou_matrix(np.concatenate(groups), gt).max(axis=1)
        return np.maximum.reduceat(best_per_box, starts)[index]

    return dedup_best_iou, "boxes._distinct_boxes + iou_matrix (the harness's first implementation)"


def run_evaluator(maps, thresholds, multi, repeat) -> tuple[dict[float, float], float, list[float]]:
    """(d): stream the maps through BoxAccumulator; MaxBoxAcc per IoU level, median seconds."""
    times, metric = [], None
    for _ in range(repeat):
        acc = BoxAccumulator(1, thresholds, IOU_LEVELS, multi_contour=multi)
        t0 = time.perf_counter()
        for i, (s, gt) in enumerate(maps):
            acc.add(s, gt, 0, f"map{i}")
        times.append(time.perf_counter() - t0)
        metric = acc.max_box_acc()
    return metric, statistics.median(times), times


# ----------------------------------------------------------------------------- metric


def max_box_acc(best: np.ndarray, deltas) -> dict[float, float]:
    """best: (N, T) best IoU per map and threshold -> {delta: max over thresholds of % correct}."""
    return {d: float((100.0 * (best >= d).mean(axis=0)).max()) for d in deltas}


def run_path(fn, maps, thresholds, multi, repeat):
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = np.stack([fn(s, gt, thresholds, multi) for s, gt in maps])
        times.append(time.perf_counter() - t0)
        if result is not None:
            assert np.array_equal(out, result)
        result = out
    return result, statistics.median(times), times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="number of maps")
    ap.add_argument("--size", type=int, default=224, help="map side in pixels")
    ap.add_argument("--step", type=float, default=0.001, help="CAM threshold step (0.001: 1000 thresholds)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of the harness and dedup paths (median)")
    args = ap.parse_args(argv)

    maps = make_maps(args.n, args.size, args.seed)
    thresholds = threshold_list(args.step)
    dedup, dedup_name = dedup_path()

    # Warm-up: compiles the numba kernels, or loads them from the on-disk cache. Not timed.
    t0 = time.perf_counter()
    for multi in (True, False):
        best_iou_per_threshold(maps[0][0], maps[0][1], thresholds, multi)
    warm = time.perf_counter() - t0

    rows, checks = [], []
    for multi, metric_name, deltas in ((True, "MaxBoxAccV2", IOU_LEVELS), (False, "MaxBoxAcc (V1)", (0.5,))):
        mode = "multi-contour" if multi else "single-contour"
        results = {}
        t0 = time.perf_counter()
        results["naive"] = (np.stack([naive_best_iou(s, gt, thresholds, multi) for s, gt in maps]), time.perf_counter() - t0, None)
        results["harness"] = run_path(best_iou_per_threshold, maps, thresholds, multi, args.repeat)
        results["opencv dedup"] = run_path(dedup, maps, thresholds, multi, args.repeat)
        ref = results["naive"][0]
        metric = {}
        for name, (best, _, _) in results.items():
            assert best.shape == ref.shape
            assert np.array_equal(best, ref), f"{name} differs from the naive loop ({mode})"
            per = max_box_acc(best, deltas)
            metric[name] = float(np.mean(list(per.values())))
        per, sec, times = run_evaluator(maps, thresholds, multi, args.repeat)
        metric["evaluator"] = float(np.mean([per[d] for d in deltas]))
        results["evaluator"] = (None, sec, times)
        assert len(set(metric.values())) == 1, metric
        checks.append(f"{metric_name} = {metric['naive']:.4f} from all four paths; per-map best IoU arrays identical")
        naive_s = results["naive"][1]
        for name, (_, sec, times) in results.items():
            rows.append([
                metric_name,
                name,
                args.n,
                len(thresholds),
                f"{sec:.3f}",
                f"{1e3 * sec / args.n:.3f}",
                f"{naive_s / sec:.1f}x",
                "1 run" if times is None else f"median of {len(times)}: " + ", ".join(f"{t:.3f}" for t in times),
            ])

    fb = np.array([count_fallback_levels((s * 255).astype(np.uint8)) for s, _ in maps])
    multi_comp = 0  # distinct levels with >= 2 foreground components (8-connected)
    for s, _ in maps:
        q = (s * 255).astype(np.uint8)
        for v in np.unique(q):
            if v > 0:  # level v - 1: q > v - 1, i.e. q >= v
                multi_comp += cv2.connectedComponents((q >= v).astype(np.uint8), connectivity=8)[0] - 1 >= 2
    print(
        f"{args.n} maps {args.size}x{args.size}, {len(thresholds)} thresholds (step {args.step}), seed {args.seed}; "
        f"numba compile/cache load excluded (warm-up {warm:.2f} s, not timed)"
    )
    print(f"(c) = {dedup_name}")
    print(
        tabulate(
            rows,
            headers=["metric", "path", "N", "thresholds", "total s", "ms/map", "naive / path", "runs (s)"],
            tablefmt="github",
        )
    )
    for line in checks:
        print("check:", line)
    total = max(1, int(fb[:, 1].sum()))
    print(
        f"single-contour: {fb[:, 0].sum()} of {total} distinct levels with foreground "
        f"({100.0 * fb[:, 0].sum() / total:.1f}%) have two or more contours sharing the largest area and are "
        f"traced with OpenCV; {multi_comp} ({100.0 * multi_comp / total:.1f}%) have two or more components"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
