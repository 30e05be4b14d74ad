"""A CAM baseline: train (or reuse) the classifier stage, then read maps from a CAM source."""
from __future__ import annotations

from harness.cam import build_source, run_source
from harness.method import Prediction
from harness.models.classifier import ClassifierMethod


class CamMethod(ClassifierMethod):
    """The shared classifier read through the CAM source ``method.cam_source`` built with
    ``method.options``; any registered source works, a third party's included."""

    def __init__(self, cfg, num_classes: int):
        super().__init__(cfg, num_classes)
        self.source = build_source(cfg.method.cam_source, cfg.method.get("options", {}))

    def predict(self, images, classes):
        maps, logits = run_source(self.source, self.model, images, classes)
        return Prediction(maps=maps, logits=logits)
