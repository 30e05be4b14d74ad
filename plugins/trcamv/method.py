"""TrCAM-V as a composition of the F-CAM family's parts: the pixel sampler
(harness/fcam/pseudo_labels.py), the map bank with the densest-region ROI
(harness/fcam/cam_bank.py), the loss terms (harness/fcam/losses.py) and the U-Net decoder
blocks (harness/models/decoder.py), over a DeiT-S trained end to end (plugins/trcamv/model.py).

Stages: the shared classifier (only when the pseudo-label maps come from a CAM source over it),
then ``trcamv``: the whole network, cross-entropy on the video label plus the pixel alignment
(partial cross-entropy on the sampled pixels), absolute size (log barrier) and CRF terms.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from harness.cam import build_source
from harness.errors import HarnessError
from harness.fcam.losses import DenseCRF, PartialCE, SizeBarrier, check_terms, frames_255
from harness.fcam.method import section, sgd_step_lr
from harness.fcam.pseudo_labels import SamplerConfig
from harness.method import Method, Prediction, Stage
from harness.models.classifier import shared_classifier
from harness.models.vit import create_vit, vit_normalization

from .maps import build_bank, clip_es_settings
from .model import TrcamvNet


class TrcamvStage(Stage):
    name = "trcamv"

    def __init__(self, method: "TrcamvMethod", cfg):
        m = cfg.method
        t = section(m, "train")
        self.method = method
        self.cfg = cfg
        self.epochs = int(t["epochs"])
        self.batch_size = int(t["batch_size"])
        self.hflip = bool(t.get("hflip", True))
        self.opt_cfg = t
        pl = section(m, "pseudo_labels")
        self.roi = pl.pop("roi", "densest")
        try:
            self.sampler = SamplerConfig(**pl)
        except TypeError as exc:
            raise HarnessError(f"method.pseudo_labels: {exc}") from exc
        losses = section(m, "losses")
        self.cls_weight = float(losses.pop("cls", {}).get("weight", 1.0))
        check_terms(losses)
        self.pal = PartialCE(**losses.get("pce", {}))
        self.crf = DenseCRF(**losses.get("crf", {}))
        self.size = SizeBarrier(**losses.get("size", {}))
        self.source = None if m.map_source == "clip-es" else build_source(m.map_source)
        self.bank = None
        self.epoch = 1

    def parameters(self) -> Iterable[nn.Parameter]:
        return self.method.net.parameters()

    def optimizer(self):
        return sgd_step_lr(self.method.net.parameters(), self.opt_cfg)

    def train_mode(self) -> None:
        self.method.net.train()
        if self.method.classifier is not None:
            self.method.classifier.eval()

    def prepare(self, split, device, progress: bool = True) -> None:
        m = self.method
        self.bank = build_bank(self.cfg, split, device, m.num_classes, classifier=m.classifier, source=self.source,
                               roi=self.roi, normalization=m.classifier.normalization if m.classifier else None,
                               progress=progress)

    def loss(self, batch: dict):
        images, labels = batch["image"], batch["label"]
        m = self.method
        class_logits, seg_logits = m.net(images)
        probs = seg_logits.softmax(1)
        pixels = self.bank.sample(batch["index"], batch.get("flipped"), self.sampler)
        e = self.epoch
        ce = F.cross_entropy(class_logits, labels)
        total, scalars = self.cls_weight * ce, {"cls": ce.item()}
        if self.pal.active(e):
            v = self.pal(seg_logits, pixels)
            total, scalars["pal"] = total + v, v.item()
        if self.crf.active(e):
            v = self.crf(probs, frames_255(images, m.normalization))
            total, scalars["crf"] = total + v, v.item()
        if self.size.active(e):
            v = self.size(probs, e)
            total, scalars["size"] = total + v, v.item()
        scalars["acc"] = (class_logits.argmax(1) == labels).float().mean().item()
        return total, scalars


class TrcamvMethod(Method):
    """``method.map_source``: ``clip-es`` or a CAM source over the shared classifier stage."""

    def __init__(self, cfg, num_classes: int):
        super().__init__(cfg, num_classes)
        m = cfg.method
        b = section(m, "backbone")
        sizes = {k: b[k] for k in ("depth", "embed_dim", "num_heads") if b.get(k) is not None}
        vit = create_vit(b.get("arch", "vit_small_patch16_224.dino"), b.get("pretrained"), sizes, who="the TrCAM-V backbone")
        self.net = TrcamvNet(vit, num_classes, tuple(m.get("decoder_channels") or (256, 128, 64, 32)))
        self._normalization = vit_normalization(vit)
        self.classifier = None
        stages: list[Stage] = []
        if m.map_source == "clip-es":
            clip_es_settings(dict(m.get("clip_es") or {}))  # bad keys fail now, not after other stages
        else:
            self.classifier, stage = shared_classifier(cfg, num_classes)
            stages.append(stage)
        stages.append(TrcamvStage(self, cfg))
        self._stages = stages

    @property
    def normalization(self):
        return self._normalization

    @property
    def stages(self):
        return self._stages

    def modules(self):
        mods = {"trcamv": self.net}
        if self.classifier is not None:
            mods["classifier"] = self.classifier
        return mods

    def predict(self, images, classes):
        class_logits, seg_logits = self.net(images)
        return Prediction(maps=seg_logits.softmax(1)[:, 1], logits=class_logits)
