"""A CAM baseline: train (or reuse) the classifier stage, then read maps from a CAM source."""
from __future__ import annotations

import torch

from harness.errors import HarnessError
from harness.method import Prediction
from harness.models.classifier import ClassifierMethod
from harness.registry import registry


class CamMethod(ClassifierMethod):
    def __init__(self, cfg, num_classes: int):
        super().__init__(cfg, num_classes)
        options = dict(cfg.method.get("options", {}))
        factory = registry().get("cam_source", cfg.method.cam_source).factory
        try:
            self.source = factory(**options)
        except TypeError as exc:
            raise HarnessError(f"method.options {options} do not fit CAM source {cfg.method.cam_source!r}: {exc}") from exc

    def predict(self, images, classes):
        # Evaluation runs under no_grad; gradient-based sources need autograd back on.
        with torch.set_grad_enabled(self.source.needs_grad):
            maps, logits = self.source(self.model, images, classes)
        return Prediction(maps=maps.detach(), logits=logits.detach())
