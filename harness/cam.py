"""The CAM-source interface: ``maps = source(model, images, classes)``.

A source turns a trained :class:`harness.models.classifier.Classifier` into raw
localization maps (B, h, w) at feature resolution, before upsampling and normalization
(which the evaluation does the same way for every source).
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from harness.models.classifier import Classifier


class CamSource(ABC):
    name: str = ""
    needs_grad: bool = False  # gradient-based sources run with autograd enabled

    @abstractmethod
    def __call__(self, model: Classifier, images: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(maps (B, h, w), logits (B, C))`` for one class per image."""
