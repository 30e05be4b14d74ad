"""The F-CAM family's loss terms, each a small module with its own weight and active epochs
(``start_epoch`` <= epoch <= ``end_epoch``; ``end_epoch`` None: to the end):

- :class:`PartialCE`: cross-entropy on the sampled pseudo-label pixels (mean over them, as the
  authors' code; the papers write a sum);
- :class:`DenseCRF`: Tang et al.'s dense CRF loss ``sum_r S_r^T W (1 - S_r)`` with the 5-D
  colour + position Gaussian kernel (sigma_rgb 15 on 0-255, sigma_xy 100 px, weight 2e-9); the
  constant part is dropped as in the reference, leaving ``-sum_r S_r^T W S_r``;
- :class:`SizeBarrier`: the absolute size constraint on both regions (``sum_p S_r >= 0``)
  through the extended log-barrier, ``t`` from ``t0`` times ``mult`` per epoch up to ``tmax``;
- :class:`ColorCoLoc`: CoLo-CAM's colour-only CRF over the frames of a shot concatenated, with
  the adaptive weight ``lambda_c / |R_c|`` (no gradient through the magnitude).

Both CRFs take ``scale``: ``"exact"`` (default) computes W.P within 2% of the Gaussian sum the
papers write; ``"lattice"`` runs the permutohedral lattice the authors' code uses, whose W.P is
about 0.55x (5-D) and 0.75x (colour-only) of that (docs/fcam-family.md), so that a weight taken
from their code means what it meant there. The ``*_code`` paper configs use ``"lattice"``.

All terms take the decoder's softmax ``probs`` (B, 2, H, W); the CRFs take the frames in
[0, 255] (B, 3, H, W), as the reference code feeds its lattice.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.fcam.pseudo_labels import IGNORE
from harness.kernels.crf import crf_features, dense_crf_loss


@dataclass
class Term:
    weight: float = 1.0
    start_epoch: int = 1
    end_epoch: int | None = None

    def active(self, epoch: int) -> bool:
        return self.weight != 0 and self.start_epoch <= epoch and (self.end_epoch is None or epoch <= self.end_epoch)


@dataclass
class PartialCE(Term):
    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not (labels != IGNORE).any():
            return logits.sum() * 0.0  # no seed in this batch (constant CAMs)
        return self.weight * F.cross_entropy(logits, labels, ignore_index=IGNORE)


def crf_method(method: str, scale: str) -> str:
    """The filter method for a CRF term's ``method`` and ``scale`` settings."""
    if scale not in ("exact", "lattice"):
        raise HarnessError(f"CRF scale={scale!r}: use 'exact' (W.P within 2% of the Gaussian sum) or 'lattice' "
                           f"(the authors' permutohedral lattice, as their weights assume)")
    if scale == "lattice":
        if method not in ("auto", "lattice"):
            raise HarnessError(f"CRF scale='lattice' runs the lattice, but method={method!r} asks for another filter: "
                               f"leave method='auto' or use scale='exact'")
        return "lattice"
    if method == "lattice":
        raise HarnessError("CRF method='lattice' with scale='exact': the lattice is 0.5-0.9x exact; set "
                           "scale='lattice' to use it on purpose, or leave method='auto'")
    return method


def frames_255(images: torch.Tensor, normalization) -> torch.Tensor:
    """Normalized frames back to [0, 255] RGB, what the CRF kernels are defined on
    (``normalization`` = the method's (mean, std) on [0, 1])."""
    mean, std = (torch.tensor(v, device=images.device, dtype=images.dtype)[:, None, None] for v in normalization)
    return ((images * std + mean) * 255.0).clamp(0, 255)


@dataclass
class DenseCRF(Term):
    weight: float = 2e-9
    sigma_rgb: float = 15.0
    sigma_xy: float = 100.0
    method: str = "auto"  # "exact", "grid", "lattice" or "auto" (harness/kernels/crf.py)
    scale: str = "exact"  # "exact" or "lattice" (the authors' operator; see the module docstring)
    # The weight is the papers' for 224x224 frames. The quadratic form grows as the square of
    # the pixel count (sigma_xy = 100 px spans most of a frame), so at another size the weight
    # is multiplied by (reference_pixels / (H * W))^2 to keep the term's strength; None: as given.
    reference_pixels: int | None = 224 * 224

    def __post_init__(self):
        crf_method(self.method, self.scale)  # bad settings fail when the method is built, not mid-training

    def effective_weight(self, h: int, w: int) -> float:
        if self.reference_pixels is None:
            return self.weight
        return self.weight * (self.reference_pixels / (h * w)) ** 2

    def __call__(self, probs: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        b, k, h, w = probs.shape
        features = crf_features(frames, self.sigma_rgb, self.sigma_xy)
        values = probs.permute(0, 2, 3, 1).reshape(b, h * w, k)
        return dense_crf_loss(values, features, self.effective_weight(h, w), method=crf_method(self.method, self.scale))


def extended_log_barrier(z: torch.Tensor, t: float) -> torch.Tensor:
    """Kervadec et al.'s extension of the log-barrier of ``z <= 0``: ``-log(-z) / t`` where
    ``z <= -1/t^2``, continued linearly above (finite and differentiable everywhere)."""
    lin = t * z - math.log(1 / t ** 2) / t + 1 / t
    return torch.where(z <= -1 / t ** 2, -torch.log(-z.clamp_max(-1 / t ** 2)) / t, lin)


@dataclass
class SizeBarrier(Term):
    t0: float = 1.0
    mult: float = 1.01
    tmax: float = 10.0

    def t(self, epoch: int) -> float:
        return min(self.t0 * self.mult ** (epoch - 1), self.tmax)

    def __call__(self, probs: torch.Tensor, epoch: int) -> torch.Tensor:
        areas = probs.sum(dim=(2, 3))  # (B, 2)
        return self.weight * 0.5 * extended_log_barrier(-areas, self.t(epoch)).mean(0).sum()


@dataclass
class ColorCoLoc(Term):
    weight: float = 5.0  # lambda_c; the paper's best range is 3-7
    sigma_rgb: float = 15.0
    adaptive: bool = True  # lambda_c / |R_c|: the value is constant, the gradient normalized
    method: str = "auto"
    scale: str = "exact"

    def __post_init__(self):
        crf_method(self.method, self.scale)

    def __call__(self, probs: torch.Tensor, frames: torch.Tensor, groups: list[torch.Tensor]) -> torch.Tensor:
        """``groups``: batch positions of the frames of each shot (groups of one are skipped)."""
        losses = []
        for g in groups:
            if len(g) < 2:
                continue
            p = probs[g].permute(0, 2, 3, 1).reshape(1, -1, probs.shape[1])  # the shot's pixels, all frames
            f = crf_features(frames[g], self.sigma_rgb, None).reshape(1, -1, 3)
            value = dense_crf_loss(p, f, 1.0, method=crf_method(self.method, self.scale))
            losses.append(value / value.detach().abs().clamp_min(1e-12) if self.adaptive else value)
        if not losses:
            return probs.sum() * 0.0
        return self.weight * torch.stack(losses).mean()


def check_terms(terms: dict) -> None:
    unknown = set(terms) - {"pce", "crf", "size", "coloc"}
    if unknown:
        raise HarnessError(f"unknown loss term(s) {sorted(unknown)}: the terms are pce, crf, size, coloc")
