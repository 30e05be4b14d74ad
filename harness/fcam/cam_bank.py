"""The frozen classifier's CAM of every training frame, computed once before the decoder
stage and kept on the device (the classifier does not change while the decoder trains, so
recomputing it every step would only cost time; the authors store them on disk, ``std_cams``).

A training step reads its frames' maps from here: min-max normalized at the CAM's own
resolution, optionally max-pooled over the ``temporal`` previous frames of the same shot
(TCAM's CAM-TMP), upsampled (bilinear) to the frame size and flipped as the frame was.
An optional region of interest per frame is computed here too, once, batched on the device
(harness/fcam/components.py): ``roi="largest"``, the largest 4-connected component of the
map's Otsu region, or ``"largest-box"``, its box (the authors' code); ``"densest"``, the
8-connected Otsu component with the highest mean activation (TrCAM-V's "densest region", the
harness's reading: see ``components.densest_component``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from harness.data.base import Split
from harness.cam import run_source
from harness.data.loader import check_finite_images, eval_loader
from harness.errors import HarnessError
from harness.fcam import components
from harness.fcam.pseudo_labels import SamplerConfig, otsu_threshold, region_levels, sample_labels

ROI_MODES = ("none", "largest", "largest-box", "densest")


def previous_frames(split: Split, n: int) -> torch.Tensor:
    """(N, n + 1) indices: each frame, then its n previous frames in its shot (the first frame
    of a shot repeats itself: CAM-TMP over what exists)."""
    order: dict[tuple[str, str], list[int]] = {}
    for i, f in enumerate(split.frames):
        order.setdefault((f.video, f.shot), []).append(i)
    table = np.zeros((len(split.frames), n + 1), dtype=np.int64)
    for members in order.values():
        members.sort(key=lambda i: split.frames[i].index)
        for pos, i in enumerate(members):
            table[i] = [members[max(pos - j, 0)] for j in range(n + 1)]
    return torch.from_numpy(table)


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Each map of (..., h, w) scaled to [0, 1] (a constant map becomes 0)."""
    lo = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - lo
    return torch.where(span > 0, (maps - lo) / span.clamp_min(1e-12), torch.zeros_like(maps))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (empty stays empty), with OpenCV, one
    frame on the host: the reference the batched ``roi="largest"`` is tested against."""
    import cv2

    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    if n <= 1:
        return mask.copy()
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == best


class CamBank:
    def __init__(self, maps: torch.Tensor, previous: torch.Tensor, size: tuple[int, int], roi: torch.Tensor | None):
        self.maps = maps  # (N, h, w) in [0, 1], float16
        self.previous = previous.to(maps.device)  # (N, temporal + 1)
        self.size = size
        self.roi = roi  # (N, H, W) bool or None
        self._levels: dict[SamplerConfig, torch.Tensor] = {}  # per sampler: each frame's region_levels

    @classmethod
    @torch.no_grad()
    def build(cls, classifier, source, split: Split, device, *, temporal: int = 0, roi: str = "none",
              batch_size: int = 64, normalization=None, progress: bool = True) -> "CamBank":
        if roi not in ROI_MODES:
            raise HarnessError(f"pseudo_labels.roi={roi!r}: use one of {', '.join(ROI_MODES)}")
        classifier.eval()
        maps = []
        loader = eval_loader(split, batch_size, 0, normalization) if normalization else eval_loader(split, batch_size)
        for batch in tqdm(loader, desc="classifier CAMs of the train frames", leave=False, disable=not progress):
            check_finite_images(batch, split, normalization)
            images = batch["image"].to(device)
            labels = batch["label"].to(device)
            m, _ = run_source(source, classifier, images, labels)
            m = m.float()
            if not torch.isfinite(m).all():
                raise HarnessError("the classifier's CAMs hold NaN/inf: the classifier stage diverged")
            maps.append(minmax(m).half())
        return cls.from_maps(torch.cat(maps), split, temporal=temporal, roi=roi, batch_size=batch_size)

    @classmethod
    @torch.no_grad()
    def from_maps(cls, maps: torch.Tensor, split: Split, *, temporal: int = 0, roi: str = "none",
                  batch_size: int = 64) -> "CamBank":
        """The bank of ready maps (N, h, w) in [0, 1], one per frame of ``split`` (any source:
        a CAM, CLIP-ES), with its temporal window and region of interest."""
        if roi not in ROI_MODES:
            raise HarnessError(f"pseudo_labels.roi={roi!r}: use one of {', '.join(ROI_MODES)}")
        bank = cls(maps, previous_frames(split, temporal), tuple(split.image(0).shape[:2]), None)
        if roi != "none":
            bank.roi = bank._rois(roi, batch_size)
        return bank

    def get(self, indices: torch.Tensor, flipped: torch.Tensor | None = None) -> torch.Tensor:
        """(B, H, W) maps in [0, 1] of frames ``indices`` (max over the temporal window)."""
        idx = self.previous[indices.to(self.previous.device)]  # (B, n + 1)
        b, k = idx.shape
        m = self.maps[idx.reshape(-1)].float()
        if tuple(m.shape[-2:]) != tuple(self.size):  # (bilinear at the same size is the identity)
            m = F.interpolate(m[:, None], size=self.size, mode="bilinear", align_corners=False)[:, 0]
        out = m.reshape(b, k, *self.size).amax(1)
        if flipped is not None:
            out = torch.where(flipped.to(out.device).bool()[:, None, None], out.flip(-1), out)
        return out

    def sample(self, indices: torch.Tensor, flipped: torch.Tensor | None, cfg: SamplerConfig,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Pseudo-labels (B, H, W) of frames ``indices`` drawn anew (``sample_labels``). The maps
        are fixed, so what fixes each frame's regions (Otsu level, top and bottom thresholds) is
        computed once for all frames, on first use, instead of at every step."""
        levels = self._levels.get(cfg)
        if levels is None:
            levels = self._levels[cfg] = self._each_frame(lambda i: region_levels(self.get(i), cfg, self.get_roi(i)))
        return sample_labels(self.get(indices, flipped), cfg, self.get_roi(indices, flipped), generator,
                             levels[indices.to(levels.device)])

    def get_roi(self, indices: torch.Tensor, flipped: torch.Tensor | None = None) -> torch.Tensor | None:
        if self.roi is None:
            return None
        r = self.roi[indices.to(self.roi.device)]
        if flipped is not None:
            r = torch.where(flipped.to(r.device).bool()[:, None, None], r.flip(-1), r)
        return r

    def _rois(self, mode: str, batch_size: int) -> torch.Tensor:
        return self._each_frame(lambda i: roi_of(self.get(i), mode), batch_size)

    @torch.no_grad()
    def _each_frame(self, fn, batch_size: int = 64) -> torch.Tensor:
        """``fn(indices)`` over all frames in batches, concatenated."""
        n = len(self.maps)
        return torch.cat([fn(torch.arange(s, min(s + batch_size, n), device=self.maps.device))
                          for s in range(0, n, batch_size)])


def otsu_region(maps: torch.Tensor) -> torch.Tensor:
    """Otsu's region ``q > otsu_level(q)`` of maps (B, H, W) in [0, 1], q = uint8(map * 255)
    (the evaluation's quantization), batched: ``otsu_threshold`` is OpenCV's rule, except that
    OpenCV gives level 0 to a constant image (so a constant nonzero map is all region), which
    is mirrored here to keep the host path's results."""
    q = (maps.clamp(0, 1) * 255).floor()
    t = otsu_threshold(maps)
    constant = q.amax(dim=(1, 2)) == q.amin(dim=(1, 2))
    t = torch.where(constant, torch.zeros_like(t), t)
    return q > t[:, None, None]


def _box(masks: torch.Tensor) -> torch.Tensor:
    """Each mask's bounding box, filled (empty stays empty)."""
    def span(any_along: torch.Tensor) -> torch.Tensor:  # between the first and the last True
        a = any_along.long()
        return (a.cummax(1).values > 0) & (a.flip(1).cummax(1).values.flip(1) > 0)
    return span(masks.any(2))[:, :, None] & span(masks.any(1))[:, None, :]


def roi_of(maps: torch.Tensor, mode: str) -> torch.Tensor:
    """Regions of interest (B, H, W) bool of maps (B, H, W) in [0, 1] (``mode`` in ROI_MODES, not none)."""
    region = otsu_region(maps)
    if mode == "densest":
        return components.densest_component(maps, region, connectivity=8)
    comp = components.largest_component(region, connectivity=4)
    return _box(comp) if mode == "largest-box" else comp
