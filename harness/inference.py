"""Maps of a split through a method, and the split's evaluation record.

Every method's raw maps go through the same post-processing (upsampling to the frame
size, per-map min-max normalization), so the protocol compares like with like.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from harness.data.base import Split
from harness.data.loader import eval_loader
from harness.errors import HarnessError
from harness.evaluation import CorLocAccumulator, threshold_list
from harness.method import Method


def normalized_maps(maps: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """(B, h, w) raw maps -> (B, H, W) float64 in [0, 1]; a constant map becomes zeros."""
    if mode not in ("bilinear", "bicubic"):
        raise HarnessError(f"eval.interpolation={mode!r}: use 'bilinear' or 'bicubic'")
    up = F.interpolate(maps[:, None].double(), size=size, mode=mode, align_corners=False)[:, 0]
    lo = up.amin(dim=(1, 2), keepdim=True)
    span = up.amax(dim=(1, 2), keepdim=True) - lo
    return torch.where(span > 0, (up - lo) / span.clamp_min(1e-300), torch.zeros_like(up))


def iterate_maps(method: Method, split: Split, cfg, device, progress: bool = True) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(frame index, normalized map (H, W), logits (C,))`` for every frame of ``split``."""
    method.eval_mode()
    loader = eval_loader(split, cfg.loader.eval_batch_size, cfg.loader.num_workers)
    for batch in tqdm(loader, desc=f"eval {split.name}", leave=False, disable=not progress):
        images = batch["image"].to(device)
        labels = batch["label"].to(device)
        with torch.no_grad():
            pred = method.predict(images, labels)
        bad = ~torch.isfinite(pred.maps).flatten(1).all(1)
        if bad.any():
            first = split.frames[int(batch["index"][bad.nonzero()[0, 0]])].id
            raise HarnessError(
                f"method {cfg.method.name!r} produced a map with NaN/inf for frame {first!r} "
                f"({int(bad.sum())} such maps in this batch); the model has diverged, lower the lr"
            )
        maps = normalized_maps(pred.maps, tuple(images.shape[-2:]), cfg.eval.interpolation).cpu().numpy()
        logits = pred.logits.float().cpu().numpy()
        for j, i in enumerate(batch["index"].tolist()):
            yield i, maps[j], logits[j]


def evaluate_split(method: Method, split: Split, num_classes: int, cfg, device, progress: bool = True) -> dict:
    """CorLoc counts at every threshold per class, and classification accuracy."""
    if len(split) == 0:
        raise HarnessError(f"split {split.name!r} is empty: nothing to evaluate")
    acc = CorLocAccumulator(
        num_classes,
        threshold_list(cfg.eval.threshold_step),
        iou_threshold=cfg.eval.iou_threshold,
        multi_contour=cfg.eval.multi_contour,
    )
    correct = 0
    for i, score_map, logits in iterate_maps(method, split, cfg, device, progress):
        frame = split.frames[i]
        correct += int(int(np.argmax(logits)) == frame.label)
        if frame.has_boxes:
            acc.add(score_map, np.asarray(frame.boxes), frame.label, frame.id)
    return {"corloc": acc.state_dict(), "cls_accuracy": 100.0 * correct / len(split), "frames": len(split)}
