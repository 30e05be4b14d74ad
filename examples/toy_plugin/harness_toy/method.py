"""The toy method: a tiny CNN trained on the frame labels, whose class activation map is the
localization map. Imported only when a run builds the method (see __init__.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.method import Method, Prediction, Stage


class TinyCNN(nn.Module):
    def __init__(self, num_classes: int, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.BatchNorm2d(4 * width), nn.ReLU(),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        feats = self.body(x)
        return self.head(feats.mean(dim=(2, 3))), feats


class TrainStage(Stage):
    name = "tinycnn"

    def __init__(self, model: TinyCNN, cfg):
        self.model, self.cfg = model, cfg
        self.epochs, self.batch_size = cfg.epochs, cfg.batch_size

    def parameters(self):
        return self.model.parameters()

    def optimizer(self):
        return torch.optim.SGD(self.model.parameters(), lr=self.cfg.lr, momentum=0.9), None

    def loss(self, batch):
        logits, _ = self.model(batch["image"])
        return F.cross_entropy(logits, batch["label"]), {}

    def train_mode(self):
        self.model.train()


class ToyMethod(Method):
    def __init__(self, cfg, num_classes):
        super().__init__(cfg, num_classes)
        self.model = TinyCNN(num_classes, cfg.toy.width)
        self._stages = [TrainStage(self.model, cfg.toy)]

    @property
    def stages(self):
        return self._stages

    def modules(self):
        return {"tinycnn": self.model}

    def predict(self, images, classes):
        logits, feats = self.model(images)
        maps = torch.einsum("bk,bkhw->bhw", self.model.head.weight[classes], feats)
        return Prediction(maps=maps, logits=logits)
