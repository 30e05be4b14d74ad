"""Pixel pseudo-labels from a classifier CAM, resampled at every step, on the device.

The F-CAM family's sampling regions (F-CAM Eq. 1-2, TCAM Eq. 2-3, CoLo-CAM Eq. 7-8):

- foreground candidates: the pixels above the map's Otsu threshold, optionally inside a
  region of interest (the authors' code: the largest Otsu component, or its box), optionally
  only the top ``fg_top_p`` of them by activation (code: ``max_p``);
- background candidates: either the complement of the Otsu region (CoLo-CAM/TCAM papers) or
  the lowest ``bg_p`` fraction of all pixels (F-CAM paper's n-, and every code base's
  ``min_p``);
- ``k`` foreground pixels drawn by ``fg_draw`` (``"multinomial"``: weighted by activation, the
  video papers; ``"uniform"``: F-CAM) and ``k`` background pixels drawn uniformly, without
  replacement (fewer when a region is smaller);
- seeds optionally dilated by a ``dilation`` x ``dilation`` square (code: 3); a pixel that is
  both is unknown.

Everything is batched tensor work (Otsu from per-image histograms, Gumbel-top-k draws), so a
batch is labelled without leaving the device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.errors import HarnessError

IGNORE = -100  # F.cross_entropy's default ignore_index

_BG_MODES = ("bottom", "complement")
_DRAWS = ("multinomial", "uniform")


@dataclass(frozen=True)
class SamplerConfig:
    k: int = 1  # pixels drawn per region, per frame, per step
    fg_draw: str = "multinomial"
    fg_top_p: float = 1.0  # keep the top fraction of the foreground candidates by activation
    bg: str = "bottom"  # "bottom": lowest bg_p of all pixels; "complement": outside the Otsu region
    bg_p: float = 0.1
    dilation: int = 1  # 1: single pixels; 3: 3x3 patches (authors' code)

    def __post_init__(self):
        if self.k < 1:
            raise HarnessError(f"pseudo_labels.k={self.k} must be >= 1")
        if self.fg_draw not in _DRAWS:
            raise HarnessError(f"pseudo_labels.fg_draw={self.fg_draw!r}: use one of {', '.join(_DRAWS)}")
        if self.bg not in _BG_MODES:
            raise HarnessError(f"pseudo_labels.bg={self.bg!r}: use one of {', '.join(_BG_MODES)}")
        if not 0 < self.bg_p <= 1 or not 0 < self.fg_top_p <= 1:
            raise HarnessError("pseudo_labels.bg_p and fg_top_p must be in (0, 1]")
        if self.dilation < 1 or self.dilation % 2 == 0:
            raise HarnessError(f"pseudo_labels.dilation={self.dilation} must be an odd number >= 1")


def otsu_threshold(maps: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Per-map Otsu threshold of ``maps`` (B, H, W) in [0, 1] on ``bins`` levels, as the
    quantized level ``t`` with the foreground ``q > t`` (OpenCV's convention); (B,) long.
    A constant map gets ``bins - 1`` (empty foreground)."""
    b = maps.shape[0]
    q = (maps.clamp(0, 1) * (bins - 1)).floor().long().reshape(b, -1)
    hist = torch.zeros(b, bins, device=maps.device, dtype=torch.float64)
    hist.scatter_add_(1, q, torch.ones_like(q, dtype=torch.float64))
    levels = torch.arange(bins, device=maps.device, dtype=torch.float64)
    w0 = hist.cumsum(1)  # pixels at or below each level
    m0 = (hist * levels).cumsum(1)
    total_w, total_m = w0[:, -1:], m0[:, -1:]
    w1 = total_w - w0
    between = (m0 * total_w - total_m * w0) ** 2 / (w0 * w1).clamp_min(1e-12)
    between = torch.where((w0 > 0) & (w1 > 0), between, torch.full_like(between, -1.0))
    t = between.argmax(1)
    return torch.where(between.amax(1) < 0, torch.full_like(t, bins - 1), t)


def _gumbel_topk(weights: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """Indices (B, k) of k draws without replacement with probabilities proportional to
    ``weights`` (B, N) >= 0 (Gumbel-top-k); -1 where a row has fewer than k positive weights."""
    u = torch.rand(weights.shape, device=weights.device, generator=generator).clamp_(1e-20, 1.0)
    keys = torch.where(weights > 0, weights.clamp_min(1e-30).log() - (-u.log()).log(),
                       torch.full_like(weights, -float("inf")))
    k = min(k, weights.shape[1])
    vals, idx = keys.topk(k, dim=1)
    return torch.where(torch.isfinite(vals), idx, torch.full_like(idx, -1))


def _kth_largest_mask(values: torch.Tensor, candidates: torch.Tensor, fraction: float) -> torch.Tensor:
    """Within each row's candidates, the top ``ceil(fraction * count)`` by value (ties kept)."""
    if fraction >= 1:
        return candidates
    v = torch.where(candidates, values, torch.full_like(values, -float("inf")))
    count = candidates.sum(1)
    keep = (count.float() * fraction).ceil().long().clamp_min(1).clamp_max(v.shape[1])
    # the largest `keep` of each row, from one topk as deep as the deepest row (a full sort of
    # every row is what made this the slowest part of a step at 224x224)
    top = v.topk(int(keep.max()), dim=1).values
    thr = top.gather(1, (keep - 1)[:, None])
    return candidates & (v >= thr)


def regions(cams: torch.Tensor, cfg: SamplerConfig, roi: torch.Tensor | None = None):
    """Foreground and background candidate masks (B, H, W) of maps in [0, 1]."""
    b, h, w = cams.shape
    t = otsu_threshold(cams)
    q = (cams.clamp(0, 1) * 255).floor()
    otsu = q > t[:, None, None]
    fg = otsu if roi is None else otsu & roi
    flat = cams.reshape(b, -1)
    fg = _kth_largest_mask(flat, fg.reshape(b, -1), cfg.fg_top_p).reshape(b, h, w)
    if cfg.bg == "complement":
        bg = ~otsu
    else:
        n = max(1, int(cfg.bg_p * h * w))
        thr = flat.kthvalue(n, dim=1, keepdim=True).values  # the n-th lowest, as sort()[n - 1]
        bg = (flat <= thr).reshape(b, h, w)
    constant = flat.amax(1) == flat.amin(1)  # no information: no seeds (as the reference)
    fg = fg & ~constant[:, None, None]
    bg = bg & ~constant[:, None, None]
    return fg, bg


def sample_labels(cams: torch.Tensor, cfg: SamplerConfig, roi: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Pseudo-label maps (B, H, W) long: 1 foreground seed, 0 background seed, IGNORE elsewhere."""
    if cams.dim() != 3:
        raise HarnessError(f"pseudo-labels need maps (B, H, W), got shape {tuple(cams.shape)}")
    if not torch.isfinite(cams).all():
        raise HarnessError("pseudo-labels: the CAMs hold NaN/inf; the classifier stage diverged")
    b, h, w = cams.shape
    fg, bg = regions(cams, cfg, roi)
    flat = cams.reshape(b, -1)
    fg_w = fg.reshape(b, -1).to(flat.dtype) * (flat.clamp_min(1e-6) if cfg.fg_draw == "multinomial" else 1.0)
    fg_idx = _gumbel_topk(fg_w, cfg.k, generator)
    bg_idx = _gumbel_topk(bg.reshape(b, -1).to(flat.dtype), cfg.k, generator)
    seeds = torch.zeros(2, b, h * w, device=cams.device)
    for c, idx in ((0, bg_idx), (1, fg_idx)):
        valid = idx >= 0
        rows = torch.arange(b, device=cams.device)[:, None].expand_as(idx)
        seeds[c][rows[valid], idx[valid]] = 1.0
    seeds = seeds.reshape(2, b, 1, h, w)
    if cfg.dilation > 1:
        r = cfg.dilation // 2
        seeds = torch.stack([F.max_pool2d(s, cfg.dilation, stride=1, padding=r) for s in seeds])
    bg_s, fg_s = seeds[0, :, 0] > 0, seeds[1, :, 0] > 0
    labels = torch.full((b, h, w), IGNORE, dtype=torch.long, device=cams.device)
    labels[bg_s & ~fg_s] = 0
    labels[fg_s & ~bg_s] = 1
    return labels
