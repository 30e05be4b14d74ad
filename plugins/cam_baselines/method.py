"""A CAM baseline: train the classifier stage, then read maps from a CAM source by name."""
from __future__ import annotations

import contextlib

import torch

from harness.method import Method, Prediction
from harness.models.classifier import Classifier, ClassifierStage
from harness.registry import registry


class CamMethod(Method):
    def __init__(self, cfg, num_classes: int):
        super().__init__(cfg, num_classes)
        c = cfg.classifier
        self.model = Classifier(c.backbone, num_classes, c.feature_index, c.pretrained)
        self.source = registry().get("cam_source", cfg.method.cam_source).factory()
        self._stages = [ClassifierStage(self.model, c)]

    @property
    def stages(self):
        return self._stages

    def modules(self):
        return {"classifier": self.model}

    def predict(self, images, classes):
        grad = torch.enable_grad() if self.source.needs_grad else contextlib.nullcontext()
        with grad:
            maps, logits = self.source(self.model, images, classes)
        return Prediction(maps=maps.detach(), logits=logits.detach())
