"""TrCAM-V's pseudo-label maps: one per training frame, computed once before its stage, kept on
the device in a :class:`harness.fcam.cam_bank.CamBank` (the F-CAM family's bank: upsampling,
flips, the region of interest).

``method.map_source=clip-es``: the CLIP-ES map of the video's class (harness/plugins/clip_es;
its settings are the clip-es plugin's defaults, overridden by ``method.clip_es``). Any other
name is a registered CAM source read over the shared classifier stage, e.g. ``layercam``.
"""
from __future__ import annotations

import torch
from mmengine.config import ConfigDict
from tqdm import tqdm

from harness.data.base import Split
from harness.data.loader import check_finite_images, eval_loader
from harness.errors import HarnessError
from harness.fcam.cam_bank import CamBank


def clip_es_settings(overrides: dict) -> dict:
    """The clip-es plugin's method defaults with ``method.clip_es`` on top (unknown keys refused)."""
    from harness.registry import registry

    defaults = dict(registry().get("method", "clip-es").layer()["method"])
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise HarnessError(f"method.clip_es has unknown key(s) {unknown}; the CLIP-ES settings are {sorted(defaults)}")
    return {**defaults, **overrides}


def clip_es_maps(cfg, split: Split, device, num_classes: int, progress: bool = True) -> torch.Tensor:
    """(N, h, w) float16 CLIP-ES maps of the split's frames for their (video) labels, in [0, 1]."""
    from harness.plugins.clip_es.method import ClipEsMethod

    settings = clip_es_settings(dict(cfg.method.get("clip_es") or {}))
    settings["class_input"] = "gt"  # the video's class: TrCAM-V's pseudo-labels use the label
    settings["predictor"] = "clip"
    clip_cfg = ConfigDict(method=settings, data=cfg.data)
    clip = ClipEsMethod(clip_cfg, num_classes).to(device)
    clip.eval_mode()
    out = []
    loader = eval_loader(split, int(cfg.loader.eval_batch_size), 0, clip.normalization)
    for batch in tqdm(loader, desc="CLIP-ES maps of the train frames", leave=False, disable=not progress):
        check_finite_images(batch, split, clip.normalization)
        with torch.no_grad():
            maps = clip.predict(batch["image"].to(device), batch["label"].to(device)).maps
        if not torch.isfinite(maps).all():
            raise HarnessError("CLIP-ES maps hold NaN/inf for a training frame; check method.clip_es")
        out.append(maps.half())
    return torch.cat(out)


def build_bank(cfg, split: Split, device, num_classes: int, *, classifier=None, source=None, roi: str = "densest",
               normalization=None, progress: bool = True) -> CamBank:
    """The bank of the run's map source (see the module docstring)."""
    if cfg.method.map_source == "clip-es":
        return CamBank.from_maps(clip_es_maps(cfg, split, device, num_classes, progress), split, roi=roi)
    return CamBank.build(classifier, source, split, device, roi=roi, normalization=normalization, progress=progress)
