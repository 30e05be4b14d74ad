"""Selective Search region proposals (Uijlings et al., IJCV 2013), unsupervised and offline.

A compact reimplementation on top of ``skimage.segmentation.felzenszwalb``: OpenCV's
``ximgproc`` needs opencv-contrib (which conflicts with opencv-python-headless) and the PyPI
``selective-search`` package no longer works with current numpy/scipy. One strategy per colour
space: all four similarities (colour + texture + size + fill), a single Felzenszwalb ``scale``.

Texture variant: the paper's 8-orientation Gaussian-derivative histograms. First derivatives of a
Gaussian are steerable, so the 8 directional responses are exact linear combinations of the x/y
derivatives (cheap); each is half-wave rectified (the opposite orientation covers the negative
side) and binned into 10 bins over [0, channel max]. That is 8 x 10 bins per channel.
"""
from __future__ import annotations

import heapq

import numpy as np
from scipy import ndimage
from skimage import color
from skimage.segmentation import felzenszwalb

from harness.errors import HarnessError

COLOUR_BINS, TEXTURE_BINS, ORIENTATIONS = 25, 10, 8
_SPACES = ("hsv", "lab", "rgb")


def _to_colour_space(image: np.ndarray, space: str) -> np.ndarray:
    # Every channel is mapped to [0, 1]: felzenszwalb's `scale` is calibrated for that range
    # (skimage divides it by 255) and the histograms bin over [0, 1].
    rgb = image.astype(np.float64) / 255.0
    if space == "rgb":
        return rgb
    if space == "hsv":
        return color.rgb2hsv(rgb)
    lab = color.rgb2lab(rgb)
    return np.clip((lab + [0.0, 128.0, 128.0]) / [100.0, 255.0, 255.0], 0.0, 1.0)


def _l1_rows(hist: np.ndarray) -> np.ndarray:
    return hist / np.maximum(hist.sum(axis=1, keepdims=True), 1e-12)


def _binned_histograms(labels: np.ndarray, values: np.ndarray, n_regions: int, bins: int) -> np.ndarray:
    """values (H, W, K) in [0, 1] -> (n_regions, K * bins) L1-normalised per region."""
    k = values.shape[2]
    b = np.minimum((values * bins).astype(np.int64), bins - 1)  # value 1.0 falls in the last bin
    # One bincount over (region, feature, bin) codes instead of a loop over regions.
    codes = (labels.ravel()[:, None] * k + np.arange(k)) * bins + b.reshape(-1, k)
    counts = np.bincount(codes.ravel(), minlength=n_regions * k * bins)
    return _l1_rows(counts.reshape(n_regions, k * bins).astype(np.float64))


def colour_histograms(labels: np.ndarray, img: np.ndarray, n_regions: int) -> np.ndarray:
    return _binned_histograms(labels, img, n_regions, COLOUR_BINS)


def texture_histograms(labels: np.ndarray, img: np.ndarray, n_regions: int) -> np.ndarray:
    angles = np.arange(ORIENTATIONS) * (2 * np.pi / ORIENTATIONS)
    responses = []
    for c in range(img.shape[2]):
        gy = ndimage.gaussian_filter(img[..., c], 1.0, order=(1, 0))
        gx = ndimage.gaussian_filter(img[..., c], 1.0, order=(0, 1))
        r = np.maximum(np.cos(angles) * gx[..., None] + np.sin(angles) * gy[..., None], 0.0)
        # Per-channel range so a low-contrast channel still spreads over the 10 bins.
        responses.append(r / r.max() if r.max() > 0 else r)
    return _binned_histograms(labels, np.concatenate(responses, axis=2), n_regions, TEXTURE_BINS)


def adjacent_pairs(labels: np.ndarray) -> np.ndarray:
    """(E, 2) sorted unique label pairs (a < b) that touch through a 4-neighbour edge."""
    a = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel()])
    b = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel()])
    lo, hi = np.minimum(a, b)[a != b], np.maximum(a, b)[a != b]
    n = int(labels.max()) + 1
    codes = np.unique(lo.astype(np.int64) * n + hi)
    return np.stack([codes // n, codes % n], axis=1)


def region_boxes(labels: np.ndarray, n_regions: int) -> np.ndarray:
    slices = ndimage.find_objects(labels + 1, max_label=n_regions)  # label 0 would be ignored
    return np.array([(x.start, y.start, x.stop - 1, y.stop - 1) for y, x in slices], np.int64).reshape(-1, 4)


def hierarchy_boxes(labels: np.ndarray, img: np.ndarray) -> np.ndarray:
    """Boxes of every region of the greedy hierarchy, in creation order: the N initial regions
    (by label) then the N-1 merged ones (id N + t is the region made by merge t)."""
    _, labels = np.unique(labels, return_inverse=True)  # labels must be 0..N-1 for bincount
    labels = labels.reshape(img.shape[:2])
    n = int(labels.max()) + 1
    total, im_size = 2 * n - 1, float(labels.size)
    size = np.zeros(total); size[:n] = np.bincount(labels.ravel(), minlength=n)
    box = np.zeros((total, 4), np.int64); box[:n] = region_boxes(labels, n)
    col = np.zeros((total, 3 * COLOUR_BINS)); col[:n] = colour_histograms(labels, img, n)
    tex = np.zeros((total, 3 * ORIENTATIONS * TEXTURE_BINS)); tex[:n] = texture_histograms(labels, img, n)
    neighbours: dict[int, set[int]] = {i: set() for i in range(n)}

    def similarity(i: int, js: np.ndarray) -> np.ndarray:
        bx0 = np.minimum(box[i, :2], box[js, :2]); bx1 = np.maximum(box[i, 2:], box[js, 2:])
        bbox = np.prod(bx1 - bx0 + 1, axis=1)
        s = size[i] + size[js]
        return (np.minimum(col[i], col[js]).sum(1) + np.minimum(tex[i], tex[js]).sum(1)
                + (1 - s / im_size) + (1 - (bbox - s) / im_size))

    heap: list[tuple[float, int, int]] = []
    for i, j in adjacent_pairs(labels).tolist():
        neighbours[i].add(j); neighbours[j].add(i)
    for i in range(n):
        js = np.array(sorted(j for j in neighbours[i] if j > i), dtype=np.int64)
        if js.size:
            heap.extend((-s, i, j) for s, j in zip(similarity(i, js).tolist(), js.tolist()))
    heapq.heapify(heap)

    alive, k = set(range(n)), n
    # Pairs never change similarity while both ends live, so stale heap entries (a dead end)
    # are simply skipped: lazy deletion gives exactly the greedy order of the paper.
    while heap and k < total:
        _, i, j = heapq.heappop(heap)
        if i not in alive or j not in alive:
            continue
        size[k] = size[i] + size[j]
        box[k, :2] = np.minimum(box[i, :2], box[j, :2]); box[k, 2:] = np.maximum(box[i, 2:], box[j, 2:])
        col[k] = (size[i] * col[i] + size[j] * col[j]) / size[k]
        tex[k] = (size[i] * tex[i] + size[j] * tex[j]) / size[k]
        nb = (neighbours.pop(i) | neighbours.pop(j)) - {i, j}
        for m in nb:
            neighbours[m] -= {i, j}; neighbours[m].add(k)
        neighbours[k] = nb
        alive -= {i, j}; alive.add(k)
        if nb:
            js = np.array(sorted(nb), dtype=np.int64)
            for s, m in zip(similarity(k, js).tolist(), js.tolist()):
                heapq.heappush(heap, (-s, m, k))
        k += 1
    return box[:k]  # k < total only if the adjacency graph were disconnected


def selective_search(image: np.ndarray, *, scale: float = 100.0, sigma: float = 0.8, min_size: int = 20,
                     color_spaces: tuple[str, ...] = ("hsv",), max_proposals: int | None = None,
                     min_box_side: int = 2) -> np.ndarray:
    """image: RGB uint8 (H, W, 3). Returns (P, 4) int64 boxes x0, y0, x1, y1, INCLUSIVE pixel
    coordinates (0 <= x0 <= x1 <= W-1), deduplicated, in hierarchy order: per colour space (in
    the order given) the merged regions from the last merge (the full image) back to the first,
    then the initial Felzenszwalb regions by descending label; spaces are concatenated and
    duplicates dropped keeping the first occurrence. Boxes narrower or shorter than
    ``min_box_side`` pixels are dropped, then the list is cut to ``max_proposals``."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise HarnessError(f"selective_search needs a uint8 numpy RGB image, got "
                           f"{getattr(image, 'dtype', type(image).__name__)}; convert with .astype(np.uint8)")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise HarnessError(f"selective_search needs an (H, W, 3) RGB image, got shape {image.shape}")
    bad = [s for s in color_spaces if s not in _SPACES]
    if not color_spaces or bad:
        raise HarnessError(f"selective_search color_spaces must be a non-empty subset of {_SPACES}, "
                           f"got {color_spaces!r}")
    if min_box_side < 1 or (max_proposals is not None and max_proposals < 0):
        raise HarnessError("selective_search needs min_box_side >= 1 and max_proposals >= 0 (or None)")
    per_space = []
    for space in color_spaces:
        img = _to_colour_space(image, space)
        labels = felzenszwalb(img, scale=scale, sigma=sigma, min_size=min_size)
        per_space.append(hierarchy_boxes(labels, img)[::-1])
    boxes = np.concatenate(per_space)
    _, first = np.unique(boxes, axis=0, return_index=True)
    boxes = boxes[np.sort(first)]
    keep = (boxes[:, 2] - boxes[:, 0] + 1 >= min_box_side) & (boxes[:, 3] - boxes[:, 1] + 1 >= min_box_side)
    return boxes[keep][:max_proposals].astype(np.int64)
