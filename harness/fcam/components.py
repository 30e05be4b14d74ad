"""Connected components of a batch of masks, and their statistics, in torch on the masks' device.

``label_components`` numbers each component by the row-major linear index of its first pixel
(its minimum linear index within its image) plus one; 0 is the background. That is the order
in which OpenCV's ``connectedComponents`` numbers them (raster order of the first pixel), so
"the first label wins a tie" picks the same component in both.

Algorithm: FastSV (Zhang, Azad, Hu, "FastSV: a distributed-memory connected component
algorithm with fast convergence", SIAM PP 2020), a Shiloach-Vishkin variant, with the graph's
edges given implicitly by the pixel grid (shifted slices, no edge list). Every pixel keeps a
parent ``f`` in its own component with ``f[u] <= u``; each iteration hooks, with a min, both the
parent's parent and the pixel itself onto the smallest grandparent among its neighbours, and
shortcuts to its own grandparent. Plain min-propagation needs as many iterations as the longest
path inside a component (tens of thousands for a serpentine at 224 x 224); pointer jumping makes
it roughly logarithmic (``last_iterations`` records the count of the last call).

Termination and correctness need no iteration cap: ``f`` only decreases and is bounded, so it
stops changing; and when an iteration changes nothing, the shortcut gives ``f[f[u]] = f[u]``
(every tree a star) and the hooking gives ``f[u] <= f[v]`` for both ends of every edge, so each
component carries one label, its root, which is its minimum pixel (the minimum's parent can be
neither smaller nor outside the component).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.errors import HarnessError

# Neighbour offsets (dy, dx); each undirected edge appears from both ends.
_OFFSETS = {
    4: ((-1, 0), (1, 0), (0, -1), (0, 1)),
    8: ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)),
}

last_iterations = 0  # iterations of the last label_components call (for tests and tuning)


def _neighbour_min(x: torch.Tensor, connectivity: int, fill: int) -> torch.Tensor:
    """Per pixel, the minimum of ``x`` (B, H, W) over itself and its neighbours (outside: ``fill``)."""
    h, w = x.shape[1:]
    p = F.pad(x, (1, 1, 1, 1), value=fill)
    out = x
    for dy, dx in _OFFSETS[connectivity]:
        out = torch.minimum(out, p[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w])
    return out


def label_components(mask: torch.Tensor, connectivity: int = 8) -> torch.Tensor:
    """Labels (B, H, W) int64 of the ``connectivity``-connected components of ``mask`` (B, H, W)
    bool: 0 off the mask, else 1 + the row-major index (within its image) of the component's
    first pixel."""
    global last_iterations
    if connectivity not in _OFFSETS:
        raise HarnessError(f"connectivity={connectivity}: use 4 or 8")
    if mask.dim() != 3:
        raise HarnessError(f"label_components needs masks (B, H, W), got shape {tuple(mask.shape)}")
    mask = mask.bool()
    b, h, w = mask.shape
    n = h * w
    big = n  # larger than any pixel index: "no neighbour here"
    flat_mask = mask.reshape(b, n)
    f = torch.arange(n, device=mask.device).expand(b, n).contiguous()  # parents, image-local
    iterations = 0
    while True:
        iterations += 1
        gf = f.gather(1, f)
        # smallest grandparent among the on-mask neighbours (and itself); off-mask pixels
        # neither give nor take a value
        g = torch.where(flat_mask, gf, big).reshape(b, h, w)
        mngf = torch.where(flat_mask, _neighbour_min(g, connectivity, big).reshape(b, n), big)
        new = f.scatter_reduce(1, f, mngf, reduce="amin")  # stochastic hooking: f[f[u]] <- mngf[u]
        new = torch.minimum(new, mngf)  # aggressive hooking: f[u] <- mngf[u]
        new = torch.minimum(new, gf)  # shortcutting: f[u] <- f[f[u]]
        if torch.equal(new, f):
            break
        f = new
    last_iterations = iterations
    return torch.where(flat_mask, f + 1, 0).reshape(b, h, w)


def component_stats(labels: torch.Tensor, values: torch.Tensor | None = None):
    """Per image and label (index 0: the background), the area (B, H*W + 1) int64 and, given
    ``values`` (B, H, W), their sum (B, H*W + 1) float64. The sums are float64 so that the
    order of the device's atomic additions hardly matters (equal values sum exactly)."""
    b = labels.shape[0]
    n = labels[0].numel()
    lab = labels.reshape(b, -1)
    area = torch.zeros(b, n + 1, dtype=torch.int64, device=labels.device)
    area.scatter_add_(1, lab, torch.ones_like(lab))
    if values is None:
        return area, None
    total = torch.zeros(b, n + 1, dtype=torch.float64, device=labels.device)
    total.scatter_add_(1, lab, values.reshape(b, -1).to(torch.float64))
    return area, total


def component_means(labels: torch.Tensor, values: torch.Tensor):
    """(area, mean) per image and label, as ``component_stats``; the mean is NaN where the area is 0."""
    area, total = component_stats(labels, values)
    return area, total / area.to(torch.float64)


def _pick(labels: torch.Tensor, mask: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Each image's component with the highest ``score`` (B, H*W + 1) (-inf: not a component;
    ties: the lowest label), as a mask; an empty mask gives an empty result."""
    best = score.argmax(1)  # the first maximum: the lowest label (documented for torch.argmax)
    found = torch.isfinite(score.amax(1))
    return mask & (labels == best[:, None, None]) & found[:, None, None]


def largest_component(mask: torch.Tensor, connectivity: int = 4) -> torch.Tensor:
    """The largest component of each mask (B, H, W) bool; ties: the first in raster order of its
    first pixel (OpenCV's label order, as ``cam_bank.largest_component``)."""
    labels = label_components(mask, connectivity)
    area, _ = component_stats(labels)
    area = area.to(torch.float64)
    area[:, 0] = 0
    return _pick(labels, mask.bool(), torch.where(area > 0, area, -torch.inf))


def densest_component(maps: torch.Tensor, mask: torch.Tensor, connectivity: int = 8) -> torch.Tensor:
    """The densest component of each mask (B, H, W) bool over maps (B, H, W) in [0, 1].

    TrCAM-V (thesis App. II, Eq. A II-1) selects foreground from "the densest" connected Otsu
    region without defining density; the harness defines it as the mean of the map over the
    component's pixels. Ties: the larger component, then the lowest label (the first in raster
    order). An empty mask gives an empty result."""
    if maps.shape != mask.shape:
        raise HarnessError(f"densest_component: maps {tuple(maps.shape)} and mask {tuple(mask.shape)} differ")
    mask = mask.bool()
    labels = label_components(mask, connectivity)
    area, mean = component_means(labels, maps)
    valid = area > 0
    valid[:, 0] = False
    mean = torch.where(valid, mean, -torch.inf)
    top = mean == mean.amax(1, keepdim=True)
    # among the equally dense, the largest; argmax then takes the lowest label
    size = torch.where(top & valid, area.to(torch.float64), -torch.inf)
    return _pick(labels, mask, size)
