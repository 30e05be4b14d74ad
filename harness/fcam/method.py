"""The F-CAM family as one method: the shared classifier stage (the CAM baselines' cached
classifier), then a U-Net decoder trained over the frozen classifier with pixel pseudo-labels
and the loss terms. A plugin (F-CAM, TCAM, CoLo-CAM) is a configuration of this class; what
differs between them is data: the CAM window of the pseudo-labels (TCAM's CAM-TMP), the
multi-frame colour term and the clip sampling (CoLo-CAM).

Config (``method.*``, see each plugin's defaults): ``cam_source``, ``pseudo_labels``
(harness/fcam/pseudo_labels.py, plus ``roi`` and ``temporal``), ``losses`` (pce, crf, size,
coloc; harness/fcam/losses.py), ``clips`` (harness/fcam/clips.py; ``n = 1`` is single frames)
and ``decoder`` (the stage's optimization and the decoder's channels).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from harness.errors import HarnessError
from harness.fcam.cam_bank import CamBank
from harness.fcam.clips import ClipBatchSampler
from harness.fcam.losses import ColorCoLoc, DenseCRF, PartialCE, SizeBarrier, check_terms, frames_255
from harness.fcam.pseudo_labels import SamplerConfig
from harness.method import Prediction, Stage
from harness.models.classifier import ClassifierMethod, ClassifierStage
from harness.models.decoder import decoder_for
from harness.cam import build_source


def section(cfg, key: str) -> dict:
    """A config section as a plain dict (empty when absent)."""
    value = cfg.get(key, {})
    return dict(value.to_dict() if hasattr(value, "to_dict") else value)


def sgd_step_lr(params, d: dict):
    """SGD and a per-epoch StepLR from a stage's section (lr, momentum, nesterov, weight_decay,
    lr_decay_epochs, lr_decay): the optimizer of the decoder stages of the family and TrCAM-V."""
    momentum = d.get("momentum", 0.9)
    opt = torch.optim.SGD(params, lr=d["lr"], momentum=momentum, nesterov=bool(d.get("nesterov", False)) and momentum > 0,
                          weight_decay=d.get("weight_decay", 1e-4))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=d.get("lr_decay_epochs", 1000), gamma=d.get("lr_decay", 0.1))
    return opt, sched


class DecoderStage(Stage):
    name = "decoder"

    def __init__(self, method: "FcamFamily", cfg):
        m = cfg.method
        d = section(m, "decoder")
        self.method = method
        self.epochs = int(d["epochs"])
        self.batch_size = int(d["batch_size"])
        self.hflip = bool(d.get("hflip", True))
        self.opt_cfg = d
        pl = section(m, "pseudo_labels")
        self.roi = pl.pop("roi", "none")
        self.temporal = int(pl.pop("temporal", 0))
        try:
            self.sampler = SamplerConfig(**pl)
        except TypeError as exc:
            raise HarnessError(f"method.pseudo_labels: {exc}") from exc
        losses = section(m, "losses")
        check_terms(losses)
        self.pce = PartialCE(**losses.get("pce", {}))
        self.crf = DenseCRF(**losses.get("crf", {}))
        self.size = SizeBarrier(**losses.get("size", {}))
        self.coloc = ColorCoLoc(**losses.get("coloc", {"weight": 0.0}))
        self.clips = section(m, "clips") or {"n": 1}
        self.source = build_source(m.cam_source)  # the source's defaults
        self.bank: CamBank | None = None
        self.epoch = 1
        self._groups_of = None

    def parameters(self) -> Iterable[nn.Parameter]:
        return self.method.decoder.parameters()

    def optimizer(self):
        return sgd_step_lr(self.method.decoder.parameters(), self.opt_cfg)

    def train_mode(self) -> None:
        self.method.classifier.eval()  # frozen: BatchNorm statistics stay the classifier's
        self.method.decoder.train()

    def prepare(self, split, device, progress: bool = True) -> None:
        self.bank = CamBank.build(self.method.classifier, self.source, split, device, temporal=self.temporal,
                                  roi=self.roi, normalization=self.method.normalization, progress=progress)
        shot_ids = {}
        self._shot = torch.tensor([shot_ids.setdefault((f.video, f.shot), len(shot_ids)) for f in split.frames],
                                  device=device)

    def batch_sampler(self, split, seed: int):
        n = int(self.clips.get("n", 1))
        if n <= 1 and self.clips.get("style", "adjacent") == "adjacent" and not self.clips.get("one_per_shot"):
            return None  # single frames, shuffled
        return ClipBatchSampler(split, n, self.clips.get("style", "adjacent"), self.batch_size, seed,
                                self.clips.get("central_fraction", 1.0))

    def loss(self, batch: dict):
        images = batch["image"]
        m = self.method
        with torch.no_grad():
            feats = [f.detach() for f in m.classifier.features(images)]
        logits = m.decoder(feats, tuple(images.shape[-2:]))
        probs = logits.softmax(1)
        labels = self.bank.sample(batch["index"], batch.get("flipped"), self.sampler)
        scalars, total = {}, logits.sum() * 0.0
        e = self.epoch
        if self.pce.active(e):
            v = self.pce(logits, labels)
            total, scalars["pce"] = total + v, v.item()
        need_frames = self.crf.active(e) or self.coloc.active(e)
        frames = m.unnormalize(images) if need_frames else None
        if self.crf.active(e):
            v = self.crf(probs, frames)
            total, scalars["crf"] = total + v, v.item()
        if self.size.active(e):
            v = self.size(probs, e)
            total, scalars["size"] = total + v, v.item()
        if self.coloc.active(e):
            v = self.coloc(probs, frames, self._groups(batch["index"]))
            total, scalars["coloc"] = total + v, v.item()
        return total, scalars

    def _groups(self, indices: torch.Tensor) -> list[torch.Tensor]:
        shots = self._shot[indices.to(self._shot.device)]
        return [torch.nonzero(shots == s).flatten() for s in torch.unique(shots)]


class FcamFamily(ClassifierMethod):
    def __init__(self, cfg, num_classes: int):
        super().__init__(cfg, num_classes)
        d = section(cfg.method, "decoder")
        self.decoder = decoder_for(self.model, d.get("channels"))
        self.classifier = self.model
        self._stages = [ClassifierStage(self.model, cfg.classifier), DecoderStage(self, cfg)]

    def modules(self):
        return {"classifier": self.model, "decoder": self.decoder}

    def unnormalize(self, images: torch.Tensor) -> torch.Tensor:
        return frames_255(images, self.normalization)

    def predict(self, images, classes):
        feats = self.model.features(images)
        logits = self.model.head(feats[-1].mean(dim=(2, 3)))
        fg = self.decoder(feats, tuple(images.shape[-2:])).softmax(1)[:, 1]
        return Prediction(maps=fg, logits=logits)
