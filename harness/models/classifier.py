"""The classifier every CAM-based method starts from: a timm encoder cut at a feature
stage, global average pooling and a linear head (the CAM architecture of Zhou et al.)."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from harness.method import Method, Prediction, Stage
from harness.models.backbones import create_encoder


class Classifier(nn.Module):
    """``features(x)`` returns the encoder's maps from stride 2 up to ``feature_index``
    (the last one gives the CAM); ``forward(x)`` returns ``(logits, last_features)``."""

    def __init__(self, backbone: str, num_classes: int, feature_index: int | None = 2, pretrained=None):
        super().__init__()
        self.encoder = create_encoder(backbone, feature_index, pretrained)
        channels = self.encoder.feature_info.channels()[-1]
        self.head = nn.Linear(channels, num_classes)

    @property
    def normalization(self):
        """(mean, std) the encoder's weights expect (ImageNet's unless the weights say otherwise)."""
        return self.encoder.normalization

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)[-1]
        return self.head(feats.mean(dim=(2, 3))), feats


class ClassifierStage(Stage):
    """Trains the classifier with cross-entropy on frame-level (video) labels, SGD + step lr."""

    name = "classifier"

    def __init__(self, model: Classifier, cfg):
        self.model = model
        self.cfg = cfg
        self.epochs = int(cfg.epochs)
        self.batch_size = int(cfg.batch_size)
        self.hflip = bool(cfg.augment.hflip)

    def parameters(self) -> Iterable[nn.Parameter]:
        return self.model.parameters()

    def optimizer(self):
        opt = torch.optim.SGD(
            self.model.parameters(),
            lr=self.cfg.lr,
            momentum=self.cfg.momentum,
            weight_decay=self.cfg.weight_decay,
        )
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=self.cfg.lr_decay_epochs, gamma=self.cfg.lr_decay)
        return opt, sched

    def loss(self, batch: dict):
        logits, _ = self.model(batch["image"])
        loss = F.cross_entropy(logits, batch["label"])
        acc = (logits.argmax(1) == batch["label"]).float().mean()
        return loss, {"acc": acc.item()}

    def train_mode(self) -> None:
        self.model.train()

    def cache_key(self) -> dict | None:
        if not self.cfg.get("cache", True):
            return None
        return {k: v for k, v in self.cfg.to_dict().items() if k != "cache"}


def shared_classifier(cfg, num_classes: int) -> tuple[Classifier, ClassifierStage]:
    """The classifier of ``cfg.classifier`` and the stage that trains it (shared through the
    stage cache by every method with the same settings)."""
    c = cfg.classifier
    model = Classifier(c.backbone, num_classes, c.feature_index, c.pretrained)
    return model, ClassifierStage(model, c)


class ClassifierMethod(Method):
    """The classifier stage alone, its maps plain CAM; the CAM baselines change the map source,
    a CAM-based annotator uses it as is. Checkpoints hold ``{"classifier": ...}``."""

    def __init__(self, cfg, num_classes: int):
        super().__init__(cfg, num_classes)
        self.model, stage = shared_classifier(cfg, num_classes)
        self._stages = [stage]

    @property
    def stages(self):
        return self._stages

    def modules(self):
        return {"classifier": self.model}

    @property
    def normalization(self):
        return self.model.normalization

    def predict(self, images, classes):
        logits, feats = self.model(images)
        w = self.model.head.weight[classes]
        return Prediction(maps=torch.einsum("bc,bchw->bhw", w, feats), logits=logits)
