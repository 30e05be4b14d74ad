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
batch is labelled without leaving the device. What fixes the regions of a map (its
:func:`region_levels`) can be computed once for a bank of fixed maps.
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
    fg_otsu: bool = True  # foreground candidates lie above the map's Otsu level (False: DiPS, the
    # top fg_top_p of the region of interest alone)
    balanced: bool = False  # as many background as foreground seeds in each frame (DiPS)

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
    # one bincount over row-offset levels: a float64 scatter_add_ per row was 4x slower on CPU
    q += torch.arange(b, device=maps.device)[:, None] * bins
    hist = torch.bincount(q.reshape(-1), minlength=b * bins).reshape(b, bins).double()
    levels = torch.arange(bins, device=maps.device, dtype=torch.float64)
    w0 = hist.cumsum(1)  # pixels at or below each level
    m0 = (hist * levels).cumsum(1)
    total_w, total_m = w0[:, -1:], m0[:, -1:]
    w1 = total_w - w0
    between = (m0 * total_w - total_m * w0) ** 2 / (w0 * w1).clamp_min(1e-12)
    between = torch.where((w0 > 0) & (w1 > 0), between, torch.full_like(between, -1.0))
    t = between.argmax(1)
    return torch.where(between.amax(1) < 0, torch.full_like(t, bins - 1), t)


def _draw(mask: torch.Tensor, weights: torch.Tensor | None, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """Indices (B, k) of k draws without replacement among each row's candidates ``mask`` (B, N),
    with probabilities proportional to ``weights`` (B, N) there, floored at 1e-6 (None: uniform);
    -1 where a row has fewer than k candidates.

    Gumbel-top-k (the k largest ``log w_i + G_i``, ``G = -log(-log u)``), ordered by the monotone
    ``w_i / (-log u_i)``: the same draws with one log instead of three; uniform draws order by
    ``u`` itself. Random numbers are drawn for the candidates only (a few percent of the pixels:
    drawing them for every pixel was most of a step's sampling time at 224x224 on CPU); they
    are packed into a (B, widest row) matrix for one top-k."""
    b = mask.shape[0]
    rows, cols = mask.nonzero(as_tuple=True)  # row-major, so each row's candidates are contiguous
    u = torch.rand(rows.shape, device=mask.device, generator=generator)
    keys = u if weights is None else weights[rows, cols].clamp_min(1e-6) / -u.clamp_(min=1e-20).log()
    counts = torch.bincount(rows, minlength=b)
    pos = torch.arange(len(rows), device=mask.device) - (counts.cumsum(0) - counts)[rows]
    width = max(k, int(counts.max())) if len(rows) else k
    packed = torch.full((b, width), -1.0, dtype=keys.dtype, device=mask.device)
    packed[rows, pos] = keys
    where = torch.full((b, width), -1, dtype=torch.long, device=mask.device)
    where[rows, pos] = cols
    vals, j = packed.topk(k, dim=1)
    return torch.where(vals >= 0, where.gather(1, j), torch.full_like(j, -1))


def _otsu_floor(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The smallest map value ``x`` of ``dtype`` with ``floor(255 clamp(x, 0, 1)) > t``, per level
    ``t`` (B,) (+inf for ``t >= 255``): Otsu's region becomes the one comparison ``map >= x``.
    ``(t + 1) / 255`` is within an ulp of it; the predicate is monotone in x, so the first of
    the neighbours around it that passes is the one."""
    x0 = ((t + 1).to(torch.float64) / 255).to(dtype)
    cands = [x0]
    for _ in range(3):
        cands = [torch.nextafter(cands[0], torch.full_like(x0, -1.0))] + cands + \
                [torch.nextafter(cands[-1], torch.full_like(x0, 2.0))]
    c = torch.stack(cands, 1)  # ascending
    passes = (c.clamp(0, 1) * 255).floor() > t[:, None].to(dtype)
    first = c.gather(1, passes.long().argmax(1, keepdim=True))[:, 0]
    return torch.where(t >= 255, torch.full_like(first, float("inf")), first)


def _kth(values: torch.Tensor, candidates: torch.Tensor, k: torch.Tensor, largest: bool) -> torch.Tensor:
    """Per row of ``values`` (B, N), the ``k``-th (B,) >= 1 largest (or smallest) value among the
    ``candidates``; -inf (+inf) where a row has fewer. One topk as deep as the deepest row: a full
    sort of every row was the slowest part of a step at 224x224."""
    fill = -float("inf") if largest else float("inf")
    v = torch.where(candidates, values, torch.full_like(values, fill))
    k = k.clamp(1, v.shape[1])
    return v.topk(int(k.max()), dim=1, largest=largest).values.gather(1, (k - 1)[:, None])[:, 0]


def region_levels(cams: torch.Tensor, cfg: SamplerConfig, roi: torch.Tensor | None = None,
                  bg_roi: torch.Tensor | None = None) -> torch.Tensor:
    """What fixes the sampling regions of maps (B, H, W) in [0, 1]: (B, 2) in the maps' dtype, a
    lower bound on the foreground (``map >= fg_lo``: above Otsu's level unless not
    ``cfg.fg_otsu``, and in the top ``fg_top_p`` of the candidates in ``roi``) and an upper bound
    on the background (``map <= bg_hi``: the bottom ``bg_p`` of the pixels, of those in
    ``bg_roi`` when given, or below Otsu's level). A constant map has no information: no seeds
    (``+inf``, ``-inf``). They depend on the map and the two regions only, not on a flip, so a
    bank of fixed maps computes them once (``CamBank.sample``), not at every step."""
    b, h, w = cams.shape
    flat = cams.reshape(b, -1)
    otsu_lo = _otsu_floor(otsu_threshold(cams), cams.dtype)
    fg_lo = otsu_lo if cfg.fg_otsu else torch.full_like(otsu_lo, -float("inf"))
    if cfg.fg_top_p < 1:
        candidates = flat >= fg_lo[:, None]
        if roi is not None:
            candidates &= roi.reshape(b, -1)
        keep = (candidates.sum(1).double() * cfg.fg_top_p).ceil().long()
        fg_lo = torch.maximum(fg_lo, _kth(flat, candidates, keep, largest=True))
    if cfg.bg == "complement":
        bg_hi = torch.nextafter(otsu_lo, torch.full_like(otsu_lo, -float("inf")))
    elif bg_roi is None:
        bg_hi = flat.kthvalue(max(1, int(cfg.bg_p * h * w)), dim=1).values  # the n-th lowest, as sort()[n - 1]
    else:
        allowed = bg_roi.reshape(b, -1)
        bg_hi = _kth(flat, allowed, (allowed.sum(1).double() * cfg.bg_p).long(), largest=False)
    constant = flat.amax(1) == flat.amin(1)
    fg_lo = torch.where(constant, torch.full_like(fg_lo, float("inf")), fg_lo)
    bg_hi = torch.where(constant, torch.full_like(bg_hi, -float("inf")), bg_hi)
    return torch.stack([fg_lo, bg_hi], 1)


def regions(cams: torch.Tensor, cfg: SamplerConfig, roi: torch.Tensor | None = None,
            levels: torch.Tensor | None = None, bg_roi: torch.Tensor | None = None):
    """Foreground and background candidate masks (B, H, W) of maps in [0, 1], from their
    ``levels`` (:func:`region_levels`, computed here when not given)."""
    if levels is None:
        levels = region_levels(cams, cfg, roi, bg_roi)
    fg = cams >= levels[:, 0, None, None]
    if roi is not None:
        fg &= roi
    bg = cams <= levels[:, 1, None, None]
    if bg_roi is not None:
        bg &= bg_roi
    return fg, bg


def sample_labels(cams: torch.Tensor, cfg: SamplerConfig, roi: torch.Tensor | None = None,
                  generator: torch.Generator | None = None, levels: torch.Tensor | None = None,
                  bg_roi: torch.Tensor | None = None) -> torch.Tensor:
    """Pseudo-label maps (B, H, W) long: 1 foreground seed, 0 background seed, IGNORE elsewhere.
    ``roi`` / ``bg_roi`` (B, H, W) bool: where foreground / background seeds may fall (None:
    anywhere); ``levels``: the maps' :func:`region_levels`, when already known."""
    if cams.dim() != 3:
        raise HarnessError(f"pseudo-labels need maps (B, H, W), got shape {tuple(cams.shape)}")
    if not torch.isfinite(cams.sum(dtype=torch.float64)):  # (finite float32 maps cannot overflow it)
        raise HarnessError("pseudo-labels: the CAMs hold NaN/inf; the classifier stage diverged")
    b, h, w = cams.shape
    fg, bg = regions(cams, cfg, roi, levels, bg_roi)
    flat = cams.reshape(b, -1)
    fg_idx = _draw(fg.reshape(b, -1), None if cfg.fg_draw == "uniform" else flat, cfg.k, generator)
    bg_idx = _draw(bg.reshape(b, -1), None, cfg.k, generator)
    if cfg.balanced:  # keep the first n of each draw (a draw without replacement of n), n the smaller count
        n = torch.minimum((fg_idx >= 0).sum(1), (bg_idx >= 0).sum(1))[:, None]
        cut = torch.arange(fg_idx.shape[1], device=cams.device)[None] >= n
        fg_idx, bg_idx = fg_idx.masked_fill(cut, -1), bg_idx.masked_fill(cut, -1)
    # the extra column takes the -1s (no draw); a pixel drawn as both is unknown
    no = h * w
    labels = torch.full((b, no + 1), IGNORE, dtype=torch.long, device=cams.device)
    if cfg.dilation == 1:
        fg_pos, bg_pos = (torch.where(i >= 0, i, no) for i in (fg_idx, bg_idx))
        both = (fg_pos[:, :, None] == bg_pos[:, None, :]).any(2)
        labels.scatter_(1, bg_pos, 0).scatter_(1, fg_pos, 1).scatter_(1, torch.where(both, fg_pos, no), IGNORE)
        return labels[:, :no].reshape(b, h, w)
    seeds = torch.zeros(2, b, no + 1, device=cams.device)
    for c, idx in ((0, bg_idx), (1, fg_idx)):
        seeds[c].scatter_(1, torch.where(idx >= 0, idx, no), 1.0)
    r = cfg.dilation // 2
    seeds = F.max_pool2d(seeds[:, :, :no].reshape(2 * b, 1, h, w), cfg.dilation, stride=1, padding=r) > 0
    bg_s, fg_s = seeds.reshape(2, b, no)
    labels = labels[:, :no]
    labels[bg_s & ~fg_s] = 0
    labels[fg_s & ~bg_s] = 1
    return labels.reshape(b, h, w)
