"""A CAM baseline: train (or reuse) the classifier stage, then read maps from a CAM source."""
from __future__ import annotations

import torch

from harness.errors import HarnessError
from harness.method import Method, Prediction
from harness.models.classifier import Classifier, ClassifierStage
from harness.registry import registry


class CamMethod(Method):
    def __init__(self, cfg, num_classes: int):
        super().__init__(cfg, num_classes)
        c = cfg.classifier
        self.model = Classifier(c.backbone, num_classes, c.feature_index, c.pretrained)
        options = dict(cfg.method.get("options", {}))
        factory = registry().get("cam_source", cfg.method.cam_source).factory
        try:
            self.source = factory(**options)
        except TypeError as exc:
            raise HarnessError(f"method.options {options} do not fit CAM source {cfg.method.cam_source!r}: {exc}") from exc
        self._stages = [ClassifierStage(self.model, c)]

    @property
    def stages(self):
        return self._stages

    def modules(self):
        return {"classifier": self.model}

    @property
    def normalization(self):
        return self.model.normalization

    def predict(self, images, classes):
        # Evaluation runs under no_grad; gradient-based sources need autograd back on.
        with torch.set_grad_enabled(self.source.needs_grad):
            maps, logits = self.source(self.model, images, classes)
        return Prediction(maps=maps.detach(), logits=logits.detach())
