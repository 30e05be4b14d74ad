"""DiPS's proposal stage (Algorithm 2.1 of the DiPS paper), batched.

For a training image X of class y and each class-token attention map e of the frozen DINO
ViT (one per head of the last layer, plus their mean), the paper binarizes e with Otsu's
method, takes the bounding box of each connected component, blurs X outside each box (the
inside untouched) and scores the box with the external classifier f_r: s = softmax(f_r(X_bx))[y].
All (box, head, s) of the image are sorted by s, and the top K with s >= a minimum score are
the image's proposals; the localization head is then trained on pixels sampled from them.

Here every step is batched: one Gaussian blur per image (not one per box), the Otsu regions
of all maps of a batch at once, their connected components at once on a GPU
(:mod:`harness.fcam.components`; on CPU OpenCV's labelling, map by map, is ~100x faster and
gives the same components), all boxes of the batch composited (:func:`composite`, one Triton
launch per chunk on CUDA) and scored in chunks of ``batch_size``.

Choices the harness makes where the paper leaves them open:

* Otsu on ``uint8(map * 255)`` with OpenCV's rule (``harness.fcam.cam_bank.otsu_region``): the
  quantization the evaluation uses, so a proposal and the evaluation see the same region. A
  constant map has OpenCV's level 0: all zeros (what min-max normalization makes of a
  constant map) is no region, a constant nonzero map is the whole image.
* 8-connectivity (``connectivity``), as OpenCV's default for ``connectedComponents``.
* ``min_area`` is a fraction of the image's pixels: a component is kept when its own area
  (not its box's) is at least ``ceil(min_area * H * W)`` pixels. The paper drops "small"
  components without a number; specks of a noisy head are not objects, and a fraction keeps
  the rule the same at every image size.
* The blur is Gaussian with sigma ``blur_sigma * min(H, W)`` (OpenCV's kernel size for float
  images and its default reflect-101 border, :func:`gaussian_blur`): ~10 px at 224, strong
  enough to remove the object's texture outside the box at any image size.
* Identical boxes of one image (heads often agree) are scored once; the score is shared.
* Ties in score keep the (head, component) order: a stable sort, so results are reproducible.
* Fallbacks (the paper is silent): when no box of an image reaches ``min_score``, its single
  best box is kept, so every image has a proposal to sample pixels from; when an image has no
  component at all (every map constant zero, or every component below ``min_area``), its
  proposal is the whole image ``[0, 0, W-1, H-1]`` with head ``M - 1`` (the mean map, by
  convention the last one) and the classifier's probability of the label on the unblurred
  image (the composite of a whole-image box is the image itself).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from harness.errors import HarnessError
from harness.fcam.cam_bank import otsu_region
from harness.fcam.components import component_stats, label_components
from harness.kernels._backends import TritonUnavailableError, import_kernels, resolve_backend

__all__ = ["BACKENDS", "COMPONENTS", "ProposalConfig", "Proposals", "TritonUnavailableError", "composite",
           "composite_masks", "box_mask", "gaussian_blur", "map_boxes", "min_pixels", "propose", "score_composites"]

BACKENDS = ("auto", "torch", "triton")


def _import_triton():
    return import_kernels("harness.plugins.dips._composite_triton")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class ProposalConfig:
    top_k: int = 3  # K: proposals kept per image
    min_area: float = 0.01  # a component must cover at least this fraction of the image's pixels
    min_score: float = 0.1  # proposals scoring below are dropped (but see the fallbacks)
    blur_sigma: float = 0.045  # Gaussian sigma as a fraction of the image's shorter side (~10 px at 224)
    connectivity: int = 8
    batch_size: int = 64  # composites per classifier forward

    def __post_init__(self):
        if not _is_int(self.top_k) or self.top_k < 1:
            raise HarnessError(f"dips proposals.top_k={self.top_k!r} must be >= 1 (an int)")
        if not _is_real(self.min_area) or not 0 <= self.min_area <= 1:
            raise HarnessError(f"dips proposals.min_area={self.min_area!r} must be in [0, 1] (a fraction of the "
                               f"image's pixels)")
        if not _is_real(self.min_score) or not 0 <= self.min_score <= 1:
            raise HarnessError(f"dips proposals.min_score={self.min_score!r} must be in [0, 1] (a probability)")
        if not _is_real(self.blur_sigma) or not 0 < self.blur_sigma <= 1:
            raise HarnessError(f"dips proposals.blur_sigma={self.blur_sigma!r} must be in (0, 1] (a fraction of "
                               f"the image's shorter side; 0.045 is ~10 px at 224)")
        if self.connectivity not in (4, 8) or not _is_int(self.connectivity):
            raise HarnessError(f"dips proposals.connectivity={self.connectivity!r}: use 4 or 8")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise HarnessError(f"dips proposals.batch_size={self.batch_size!r} must be >= 1 (an int)")


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def min_pixels(cfg: ProposalConfig, h: int, w: int) -> int:
    """The smallest component area kept in an h x w image: ``ceil(min_area * h * w)``
    (rounded first: 0.07 * 10 * 10 is 7.000000000000001 in floating point, and 7 pixels)."""
    return math.ceil(round(cfg.min_area * h * w, 6))


# ----------------------------------------------------------------------------- checks


def _check_cfg(cfg) -> None:
    if not isinstance(cfg, ProposalConfig):
        raise HarnessError(f"dips: cfg must be a ProposalConfig, got {type(cfg).__name__}")


def _check_maps(maps) -> None:
    if not isinstance(maps, Tensor) or maps.dim() != 4 or not maps.is_floating_point():
        got = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise HarnessError(f"dips: the attention maps must be a float tensor (B, M, H, W), one map per head "
                           f"(and their mean) upsampled to the image size, got {got}")
    if maps.numel() == 0:
        return
    # one device-to-host copy for both checks
    finite, lo, hi = torch.stack([torch.isfinite(maps).all().to(maps.dtype), maps.amin(), maps.amax()]).tolist()
    if not finite:
        raise HarnessError("dips: the attention maps hold NaN/inf: check the attention the backbone returned "
                           "(a min-max normalization of a constant map without a guard divides 0 by 0)")
    if lo < 0 or hi > 1:
        raise HarnessError(f"dips: the attention maps must be min-max normalized to [0, 1], got values in "
                           f"[{lo:.4g}, {hi:.4g}]")


def _check_images(images, what: str = "images") -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise HarnessError(f"dips: {what} must be a float tensor (B, C, H, W), got {got}")


def _check_batch(images: Tensor, labels, maps: Tensor) -> None:
    _check_images(images)
    _check_maps(maps)
    B, _, H, W = images.shape
    if maps.shape[0] != B or tuple(maps.shape[2:]) != (H, W):
        raise HarnessError(f"dips: maps {tuple(maps.shape)} do not match images {tuple(images.shape)}: one "
                           f"(M, H, W) stack of maps per image, upsampled to the image size")
    if maps.shape[1] == 0:
        raise HarnessError("dips: no attention maps (M = 0): pass one map per head and their mean")
    if H * W == 0:
        raise HarnessError(f"dips: the images have no pixels ({H} x {W})")
    if not isinstance(labels, Tensor) or labels.shape != (B,) or labels.is_floating_point():
        got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise HarnessError(f"dips: labels must be an integer tensor (B,) = ({B},), got {got}")
    if maps.device != images.device or labels.device != images.device:
        raise HarnessError(f"dips: images ({images.device}), labels ({labels.device}) and maps ({maps.device}) "
                           f"must be on one device")
    if images.numel() and not torch.isfinite(images).all():
        raise HarnessError("dips: the images hold NaN/inf")


def _check_backend(backend) -> None:
    if backend not in BACKENDS:
        raise HarnessError(f"dips: backend={backend!r}: use one of {BACKENDS}")


# ----------------------------------------------------------------------------- boxes of the maps


COMPONENTS = ("auto", "torch", "opencv")


def map_boxes(maps: Tensor, cfg: ProposalConfig, components: str = "auto") -> list[Tensor]:
    """Per image, a long tensor (P_b, 5): head index m, x0, y0, x1, y1 (inclusive pixel
    coordinates) of each kept connected component of each map's Otsu region, in (head,
    component) order, components numbered in raster order of their first pixel (OpenCV's).

    ``components``: ``"torch"`` labels all maps at once on their device
    (:func:`harness.fcam.components.label_components`); ``"opencv"`` runs
    ``cv2.connectedComponentsWithStats`` map by map on the host; ``"auto"``: torch on a GPU,
    OpenCV for CPU tensors, where the batched labelling costs ~100x more (about 60 ms per 224 x
    224 map on 2 cores, more than a ResNet-18 forward; OpenCV: 0.5 ms). Both give the same boxes."""
    _check_cfg(cfg)
    _check_maps(maps)
    if components not in COMPONENTS:
        raise HarnessError(f"dips: components={components!r}: use one of {COMPONENTS}")
    B, M, H, W = maps.shape
    dev = maps.device
    if B * M * H * W == 0:
        return [torch.zeros((0, 5), dtype=torch.long, device=dev) for _ in range(B)]
    region = otsu_region(maps.reshape(B * M, H, W).float())  # float16 would round map * 255 otherwise
    min_px = max(1, min_pixels(cfg, H, W))  # a component has >= 1 pixel; the background never counts
    if components == "opencv" or (components == "auto" and dev.type == "cpu"):
        boxes, which = _boxes_opencv(region, min_px, cfg.connectivity)
        boxes, which = boxes.to(dev), which.to(dev)
    else:
        boxes, which = _boxes_torch(region, min_px, cfg.connectivity)
    counts = torch.bincount(which // M, minlength=B).tolist()
    return list(torch.cat([(which % M)[:, None], boxes], dim=1).split(counts))


def _boxes_torch(region: Tensor, min_px: int, connectivity: int) -> tuple[Tensor, Tensor]:
    """Boxes (P, 4) of the kept components of masks (N, H, W) and the mask of each (P,), in
    (mask, label) order, batched on the masks' device."""
    N, H, W = region.shape
    n = H * W
    dev = region.device
    labels = label_components(region, connectivity)
    area, _ = component_stats(labels)  # (N, n + 1): index = label
    keep = area >= min_px
    keep[:, 0] = False
    # Number the kept (mask, label) pairs densely in row-major order and reduce each pixel's
    # coordinates into its component's slot: no (N, n + 1) box tables.
    slot = keep.reshape(-1).cumsum(0) - 1
    key = (torch.arange(N, device=dev)[:, None] * (n + 1) + labels.reshape(N, n)).reshape(-1)
    on = keep.reshape(-1)[key]
    ids = slot[key[on]]
    pix = on.nonzero()[:, 0] % n
    ys, xs = pix // W, pix % W
    P = int(keep.sum())

    def reduce(v: Tensor, how: str, init: int) -> Tensor:
        return torch.full((P,), init, dtype=torch.long, device=dev).scatter_reduce(0, ids, v, how)

    boxes = torch.stack([reduce(xs, "amin", W), reduce(ys, "amin", H), reduce(xs, "amax", -1),
                         reduce(ys, "amax", -1)], dim=1)
    return boxes, keep.nonzero()[:, 0]


def _boxes_opencv(region: Tensor, min_px: int, connectivity: int) -> tuple[Tensor, Tensor]:
    """As ``_boxes_torch``, one mask at a time with OpenCV on the host (same label order)."""
    import cv2

    boxes, which = [], []
    for i, mask in enumerate(region.cpu().numpy().view(np.uint8)):
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=connectivity)
        stats = stats[1:n]
        stats = stats[stats[:, cv2.CC_STAT_AREA] >= min_px]
        x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
        boxes.append(np.stack([x, y, x + stats[:, cv2.CC_STAT_WIDTH] - 1, y + stats[:, cv2.CC_STAT_HEIGHT] - 1], 1))
        which.append(np.full(len(stats), i))
    return torch.from_numpy(np.concatenate(boxes)).long(), torch.from_numpy(np.concatenate(which)).long()


# ----------------------------------------------------------------------------- blur


def _reflect101(n: int, r: int, device) -> Tensor:
    """Indices of positions -r .. n-1+r of a length-n axis under OpenCV's BORDER_REFLECT_101
    (``gfedcb|abcdefgh|gfedcba``), reflected as often as needed: OpenCV's borderInterpolate
    does so when the kernel's radius exceeds the image (F.pad refuses pad >= size)."""
    p = torch.arange(-r, n + r, device=device)
    if n == 1:
        return torch.zeros_like(p)
    period = 2 * (n - 1)
    p = p.remainder(period)
    return torch.where(p < n, p, period - p)


def gaussian_taps(sigma_px: float) -> Tensor:
    """OpenCV's kernel for float images: size ``round(sigma * 8 + 1) | 1`` (cvRound rounds half
    to even, as Python's round), taps ``exp(-d^2 / (2 sigma^2))`` normalized to sum 1, float64."""
    ksize = int(round(sigma_px * 4 * 2 + 1)) | 1
    d = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2
    taps = torch.exp(-d * d / (2 * sigma_px * sigma_px))
    return taps / taps.sum()


def gaussian_blur(images: Tensor, sigma_px: float) -> Tensor:
    """(B, C, H, W) float -> the same, each channel blurred as ``cv2.GaussianBlur(img, (0, 0),
    sigma_px)`` on float32 (OpenCV's kernel size, reflect-101 border); separable depthwise
    convolutions. Computed in float32 (float64 for float64 images), returned in the input dtype."""
    _check_images(images)
    if not _is_real(sigma_px) or sigma_px <= 0:
        raise HarnessError(f"dips: blur sigma must be > 0 pixels, got {sigma_px!r}")
    B, C, H, W = images.shape
    if images.numel() == 0:
        return images.clone()
    work = torch.float64 if images.dtype == torch.float64 else torch.float32
    taps = gaussian_taps(sigma_px).to(device=images.device, dtype=work)
    k = taps.numel()
    r = k // 2
    x = images.to(work)
    # rows, then columns (OpenCV's order); the padding is gathered, so any radius works
    x = x.index_select(2, _reflect101(H, r, images.device))
    x = F.conv2d(x, taps.view(1, 1, k, 1).expand(C, 1, k, 1), groups=C)
    x = x.index_select(3, _reflect101(W, r, images.device))
    x = F.conv2d(x, taps.view(1, 1, 1, k).expand(C, 1, 1, k), groups=C)
    return x.to(images.dtype)


# ----------------------------------------------------------------------------- composites


def _check_composite(images: Tensor, blurred: Tensor, owner) -> None:
    _check_images(images)
    _check_images(blurred, "blurred")
    if blurred.shape != images.shape or blurred.device != images.device:
        raise HarnessError(f"dips: blurred {tuple(blurred.shape)} on {blurred.device} must match images "
                           f"{tuple(images.shape)} on {images.device}: one blurred copy per image")
    if not isinstance(owner, Tensor) or owner.dim() != 1 or owner.is_floating_point():
        raise HarnessError("dips: owner must be an integer tensor (P,), the image of each composite")
    if owner.device != images.device:
        raise HarnessError(f"dips: owner is on {owner.device} but images on {images.device}")
    if owner.numel() and (int(owner.min()) < 0 or int(owner.max()) >= images.shape[0]):
        raise HarnessError(f"dips: owner indices must lie in [0, {images.shape[0]}), got "
                           f"[{int(owner.min())}, {int(owner.max())}]")


def _check_boxes(boxes, owner: Tensor) -> None:
    if (not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4
            or boxes.is_floating_point() or boxes.shape[0] != owner.shape[0]):
        got = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise HarnessError(f"dips: boxes must be an integer tensor (P, 4) = ({owner.shape[0]}, 4), x0, y0, x1, y1 "
                           f"inclusive, one per owner entry, got {got}")
    if boxes.device != owner.device:
        raise HarnessError(f"dips: boxes are on {boxes.device} but owner on {owner.device}")


def box_mask(boxes: Tensor, h: int, w: int) -> Tensor:
    """(P, H, W) bool: inside each inclusive box."""
    ys = torch.arange(h, device=boxes.device)
    xs = torch.arange(w, device=boxes.device)
    rows = (ys >= boxes[:, 1:2]) & (ys <= boxes[:, 3:4])
    cols = (xs >= boxes[:, 0:1]) & (xs <= boxes[:, 2:3])
    return rows[:, :, None] & cols[:, None, :]


def composite(images: Tensor, blurred: Tensor, boxes: Tensor, owner: Tensor, backend: str = "auto") -> Tensor:
    """(P, C, H, W): ``images[owner]`` inside each box (x0, y0, x1, y1, inclusive), ``blurred[owner]``
    outside, in the images' dtype (a selection: both paths give the same bits).

    ``backend="auto"``: the Triton kernel (:mod:`._composite_triton`, all P composites in one
    launch) for CUDA tensors when Triton imports, the torch path otherwise; ``"triton"`` also
    runs on CPU tensors under ``TRITON_INTERPRET=1``."""
    _check_backend(backend)
    _check_composite(images, blurred, owner)
    _check_boxes(boxes, owner)
    try:
        chosen = resolve_backend(backend, images.device, _import_triton, lambda: False)
    except TritonUnavailableError as exc:
        raise TritonUnavailableError(f"dips composite: {exc} (backend='torch' runs anywhere)") from None
    blurred = blurred.to(images.dtype)
    if chosen == "triton":
        return _import_triton()[0].composite(images, blurred, boxes, owner)
    inside = box_mask(boxes, *images.shape[2:])
    return torch.where(inside[:, None], images[owner], blurred[owner])


def composite_masks(images: Tensor, blurred: Tensor, masks: Tensor, owner: Tensor) -> Tensor:
    """(P, C, H, W): ``images[owner]`` where ``masks`` (P, H, W) is true, ``blurred[owner]``
    elsewhere (torch; the dino-attn baseline keeps each head's binarized map sharp)."""
    _check_composite(images, blurred, owner)
    if not isinstance(masks, Tensor) or tuple(masks.shape) != (owner.shape[0], *images.shape[2:]):
        got = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise HarnessError(f"dips: masks must be (P, H, W) = ({owner.shape[0]}, {images.shape[2]}, "
                           f"{images.shape[3]}), one per owner entry, got {got}")
    return torch.where(masks.to(images.device).bool()[:, None], images[owner], blurred.to(images.dtype)[owner])


# ----------------------------------------------------------------------------- scoring


def _logits(classifier, x: Tensor) -> Tensor:
    out = classifier(x)
    logits = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise HarnessError(f"dips: the classifier must return logits (N, classes) (or a tuple whose first element "
                           f"they are) for N = {x.shape[0]} images, got {got}")
    return logits


def score_composites(classifier, images: Tensor, labels: Tensor, blurred: Tensor, owner: Tensor, *,
                     boxes: Tensor | None = None, masks: Tensor | None = None, cfg: ProposalConfig,
                     backend: str = "auto") -> Tensor:
    """(P,) float32: the classifier's softmax probability of ``labels[owner]`` on each composite
    (``boxes`` (P, 4) or ``masks`` (P, H, W)), built and scored ``cfg.batch_size`` at a time.

    With boxes, identical (owner, box) pairs are scored once and share the score. The
    classifier runs in eval mode (its mode is restored after): BatchNorm in train mode would
    make a box's score depend on the other composites of its chunk."""
    _check_cfg(cfg)
    _check_backend(backend)
    _check_composite(images, blurred, owner)
    if (boxes is None) == (masks is None):
        raise HarnessError("dips: score_composites needs exactly one of boxes= (P, 4) or masks= (P, H, W)")
    if boxes is not None:
        _check_boxes(boxes, owner)
    if not isinstance(labels, Tensor) or labels.shape != (images.shape[0],) or labels.is_floating_point():
        raise HarnessError(f"dips: labels must be an integer tensor (B,) = ({images.shape[0]},)")
    P = owner.shape[0]
    if P == 0:
        return torch.zeros(0, dtype=torch.float32, device=images.device)
    if boxes is not None:
        key = torch.cat([owner[:, None], boxes], dim=1).long()
        unique, inverse = torch.unique(key, dim=0, return_inverse=True)
        u_owner, u_what = unique[:, 0], unique[:, 1:]
    else:
        u_owner, u_what, inverse = owner, masks, None

    def build(s: slice) -> Tensor:
        if boxes is not None:
            return composite(images, blurred, u_what[s], u_owner[s], backend)
        return composite_masks(images, blurred, u_what[s], u_owner[s])

    module = classifier if isinstance(classifier, torch.nn.Module) else None
    was_training = module is not None and module.training
    if module is not None:
        module.eval()
    try:
        with torch.inference_mode():
            scores = _score(classifier, build, labels[u_owner], u_owner.shape[0], cfg.batch_size, images.device)
    finally:
        if was_training:
            module.train()
    scores = scores.clone()  # a plain tensor, not an inference tensor (callers may use it anywhere)
    return scores if inverse is None else scores[inverse]


def _score(classifier, build, labels: Tensor, n: int, batch_size: int, device) -> Tensor:
    out = []
    for s in range(0, n, batch_size):
        part = slice(s, min(s + batch_size, n))
        x = build(part)
        if x.device.type == "cpu":
            # oneDNN's convolutions run faster on NHWC input (about 1.3x for ResNets on 2 cores)
            x = x.contiguous(memory_format=torch.channels_last)
        logits = _logits(classifier, x).float()
        lab = labels[part].long()
        if not torch.isfinite(logits).all():
            raise HarnessError("dips: the classifier's logits hold NaN/inf: check the classifier stage and the "
                               "images' normalization")
        if int(lab.min()) < 0 or int(lab.max()) >= logits.shape[1]:
            raise HarnessError(f"dips: labels must lie in [0, {logits.shape[1]}) (the classifier's classes), got "
                               f"[{int(lab.min())}, {int(lab.max())}]")
        out.append(logits.softmax(1).gather(1, lab[:, None])[:, 0])
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float32, device=device)


# ----------------------------------------------------------------------------- proposals


@dataclass
class Proposals:
    """The top proposals of a batch of images; entries at and beyond ``count[b]`` are padding."""
    boxes: Tensor  # (B, K, 4) long x0, y0, x1, y1 inclusive, 0 padding
    heads: Tensor  # (B, K) long, the map that gave each box (-1 padding)
    scores: Tensor  # (B, K) float32, 0 padding
    count: Tensor  # (B,) long, >= 1

    _FIELDS = ("boxes", "heads", "scores", "count")

    def __len__(self) -> int:
        return self.count.shape[0]

    def to(self, device) -> "Proposals":
        return Proposals(*(getattr(self, f).to(device) for f in self._FIELDS))

    def state(self) -> dict[str, Tensor]:
        """Plain tensors for ``torch.save`` (``from_state`` reads them with weights_only=True)."""
        return {f: getattr(self, f) for f in self._FIELDS}

    @classmethod
    def from_state(cls, d: dict) -> "Proposals":
        missing = [f for f in cls._FIELDS if f not in d]
        if missing:
            raise HarnessError(f"dips: saved proposals lack {', '.join(missing)}: recompute them")
        return cls(*(d[f] for f in cls._FIELDS))

    @classmethod
    def cat(cls, parts: list["Proposals"]) -> "Proposals":
        if not parts:
            raise HarnessError("dips: Proposals.cat needs at least one batch")
        if len({p.boxes.shape[1] for p in parts}) > 1:
            raise HarnessError("dips: Proposals.cat: the batches were made with different top_k")
        return cls(*(torch.cat([getattr(p, f) for p in parts]) for f in cls._FIELDS))

    def of(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        """Image i's proposals without padding: boxes (n, 4), heads (n,), scores (n,)."""
        n = int(self.count[i])
        return self.boxes[i, :n], self.heads[i, :n], self.scores[i, :n]


def propose(classifier, images: Tensor, labels: Tensor, maps: Tensor, cfg: ProposalConfig,
            backend: str = "auto") -> Proposals:
    """Algorithm 2.1 on a batch: images (B, C, H, W) normalized as the classifier expects,
    labels (B,) long, maps (B, M, H, W) in [0, 1] (the heads' maps, their mean last) -> the
    top ``cfg.top_k`` proposals of each image (the module doc gives the rules and fallbacks)."""
    _check_cfg(cfg)
    _check_backend(backend)
    _check_batch(images, labels, maps)
    B, M, H, W = maps.shape
    K = cfg.top_k
    dev = images.device
    if B == 0:
        return Proposals(torch.zeros((0, K, 4), dtype=torch.long, device=dev),
                         torch.zeros((0, K), dtype=torch.long, device=dev),
                         torch.zeros((0, K), dtype=torch.float32, device=dev),
                         torch.zeros(0, dtype=torch.long, device=dev))
    whole = torch.tensor([[M - 1, 0, 0, W - 1, H - 1]], dtype=torch.long, device=dev)
    per_image = [b if len(b) else whole for b in map_boxes(maps, cfg)]
    counts = torch.tensor([len(b) for b in per_image], device=dev)
    cand = torch.cat(per_image)  # (P, 5): head, box
    owner = torch.repeat_interleave(torch.arange(B, device=dev), counts)
    with torch.no_grad():
        blurred = gaussian_blur(images, cfg.blur_sigma * min(H, W))
    scores = score_composites(classifier, images, labels, blurred, owner, boxes=cand[:, 1:], cfg=cfg,
                              backend=backend)

    # each image's candidates side by side, -inf padding, sorted by score (stable: ties keep order)
    start = counts.cumsum(0) - counts
    width = max(K, int(counts.max()))
    packed = torch.full((B, width), -torch.inf, device=dev)
    packed[owner, torch.arange(len(owner), device=dev) - start[owner]] = scores
    order = packed.sort(dim=1, descending=True, stable=True).indices[:, :K]
    top = packed.gather(1, order)
    count = (top >= cfg.min_score).sum(1).clamp_min(1)  # -inf padding never passes; best box kept
    valid = torch.arange(K, device=dev)[None, :] < count[:, None]
    picked = cand[(start[:, None] + order).clamp_max(len(cand) - 1)]  # (B, K, 5); padding masked below
    return Proposals(boxes=torch.where(valid[..., None], picked[..., 1:], 0),
                     heads=torch.where(valid, picked[..., 0], -1),
                     scores=torch.where(valid, top, 0.0).float(),
                     count=count.long())
