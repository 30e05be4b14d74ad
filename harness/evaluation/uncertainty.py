"""Uncertainty of a localization metric from per-frame outcomes: bootstrap intervals, paired
comparisons of two runs on the same frames, and a permutation test. Pure functions on arrays,
as the other metric modules.

A frame's outcome is whether its box was right (``correct``, bool) at the selected threshold, with
its class (``labels``) and its cluster (``clusters``: the video, for video datasets, whose frames
are not independent; the frame itself for images). CorLoc is the mean over the classes of the
per-class accuracy (:func:`class_mean_accuracy`), the metric of the video papers; a class absent
from a resample is left out of that mean.

Resampling is by cluster: a bootstrap sample draws whole clusters with replacement, as many as
there are, and keeps every frame of a drawn cluster, so that the within-video correlation of
frames widens the interval as it should (a frame-level bootstrap of a video dataset would be
too narrow). The permutation test swaps the two runs' outcomes cluster by cluster (paired: the
same frames), which is exact under the null hypothesis that the two runs are exchangeable.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.errors import HarnessError


def class_mean_accuracy(correct: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean over the classes present (weight > 0) of the weighted per-class accuracy, in percent."""
    correct = np.asarray(correct, dtype=np.float64)
    labels = np.asarray(labels)
    w = np.ones_like(correct) if weights is None else np.asarray(weights, dtype=np.float64)
    n = np.bincount(labels, weights=w)
    hits = np.bincount(labels, weights=w * correct, minlength=len(n))
    present = n > 0
    return float((hits[present] / n[present]).mean() * 100.0)


def _check(correct, labels, clusters) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    correct = np.asarray(correct)
    labels = np.asarray(labels)
    clusters = np.arange(len(correct)) if clusters is None else np.asarray(clusters)
    if correct.ndim != 1 or labels.shape != correct.shape or clusters.shape != correct.shape:
        raise HarnessError(f"per-frame outcomes, labels and clusters must be 1-D and of one length, got "
                           f"{correct.shape}, {labels.shape}, {clusters.shape}")
    if len(correct) == 0:
        raise HarnessError("no frame: nothing to resample")
    if labels.dtype.kind not in "iu" or (labels < 0).any():
        raise HarnessError("labels must be non-negative integers")
    _, clusters = np.unique(clusters, return_inverse=True)
    return correct.astype(np.float64), labels, clusters


def _cluster_weights(clusters: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """(n_boot, frames): how many times each frame's cluster was drawn in each resample."""
    k = int(clusters.max()) + 1
    draws = rng.integers(0, k, size=(n_boot, k))
    counts = np.zeros((n_boot, k))
    np.add.at(counts, (np.arange(n_boot)[:, None], draws), 1.0)
    return counts[:, clusters]


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    level: float  # e.g. 0.95
    n_boot: int
    clusters: int

    def to_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "level": self.level,
                "n_boot": self.n_boot, "clusters": self.clusters}


def bootstrap_ci(correct, labels, clusters=None, *, level: float = 0.95, n_boot: int = 2000,
                 seed: int = 0) -> Interval:
    """Percentile bootstrap interval of the class-mean accuracy, resampling whole clusters."""
    correct, labels, clusters = _check(correct, labels, clusters)
    if not 0 < level < 1 or n_boot < 10:
        raise HarnessError(f"bootstrap: level={level} must be in (0, 1) and n_boot={n_boot} at least 10")
    rng = np.random.default_rng(seed)
    w = _cluster_weights(clusters, rng, n_boot)
    stats = np.array([class_mean_accuracy(correct, labels, row) for row in w])
    a = (1 - level) / 2
    low, high = np.quantile(stats, [a, 1 - a])
    return Interval(class_mean_accuracy(correct, labels), float(low), float(high), level, n_boot,
                    int(clusters.max()) + 1)


@dataclass(frozen=True)
class Comparison:
    difference: float  # metric of A minus metric of B
    low: float
    high: float
    p_value: float
    level: float
    n_boot: int
    n_perm: int

    def to_dict(self) -> dict:
        return {"difference": self.difference, "low": self.low, "high": self.high, "p_value": self.p_value,
                "level": self.level, "n_boot": self.n_boot, "n_perm": self.n_perm}


def paired_comparison(correct_a, correct_b, labels, clusters=None, *, level: float = 0.95, n_boot: int = 2000,
                      n_perm: int = 2000, seed: int = 0) -> Comparison:
    """Run A against run B on the same frames: a paired cluster bootstrap interval of the
    difference of their class-mean accuracies, and a two-sided permutation p-value (each
    cluster's outcomes of A and B swapped with probability 1/2; the observed difference
    counted among the permuted ones, so p is never 0)."""
    a, labels, clusters = _check(correct_a, labels, clusters)
    b, _, _ = _check(correct_b, labels, clusters)
    rng = np.random.default_rng(seed)
    observed = class_mean_accuracy(a, labels) - class_mean_accuracy(b, labels)
    w = _cluster_weights(clusters, rng, n_boot)
    diffs = np.array([class_mean_accuracy(a, labels, row) - class_mean_accuracy(b, labels, row) for row in w])
    q = (1 - level) / 2
    low, high = np.quantile(diffs, [q, 1 - q])
    k = int(clusters.max()) + 1
    swap = rng.random((n_perm, k)) < 0.5
    extreme = 1  # the observed assignment is one of the permutations
    for row in swap[:, clusters]:
        pa, pb = np.where(row, b, a), np.where(row, a, b)
        extreme += abs(class_mean_accuracy(pa, labels) - class_mean_accuracy(pb, labels)) >= abs(observed) - 1e-12
    return Comparison(observed, float(low), float(high), extreme / (n_perm + 1), level, n_boot, n_perm)


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value) over seeds."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) == 0 or not np.isfinite(v).all():
        raise HarnessError(f"mean ± std needs finite values, got {values!r}")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
