"""The classifier every CAM-based method starts from: a timm encoder cut at a feature
stage, global average pooling and a linear head (the CAM architecture of Zhou et al.)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import timm
import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import HarnessError
from harness.method import Stage


class Classifier(nn.Module):
    """``features(x)`` returns the encoder's maps from stride 2 up to ``feature_index``
    (the last one gives the CAM); ``forward(x)`` returns ``(logits, last_features)``."""

    def __init__(self, backbone: str, num_classes: int, feature_index: int = 2, pretrained=False):
        super().__init__()
        self.encoder = _create_encoder(backbone, feature_index, pretrained)
        channels = self.encoder.feature_info.channels()[-1]
        self.head = nn.Linear(channels, num_classes)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)[-1]
        return self.head(feats.mean(dim=(2, 3))), feats


def _create_encoder(backbone: str, feature_index: int, pretrained) -> nn.Module:
    if not timm.is_model(backbone.split(".")[0]):  # allow pretrained tags: resnet18.a1_in1k
        raise HarnessError(
            f"unknown backbone {backbone!r}: not a timm model name. See timm.list_models(), "
            f"e.g. resnet18, resnet50, vgg16, inception_v3, efficientnet_lite0"
        )
    from_tag = pretrained is True
    try:
        encoder = timm.create_model(
            backbone,
            pretrained=from_tag,
            features_only=True,
            out_indices=tuple(range(feature_index + 1)),
        )
    except (IndexError, AssertionError) as exc:
        raise HarnessError(
            f"backbone {backbone!r} has no feature stage {feature_index}: set "
            f"classifier.feature_index to a smaller value ({exc})"
        ) from exc
    except Exception as exc:
        if from_tag:
            raise HarnessError(
                f"could not load the pretrained weights of {backbone!r} ({type(exc).__name__}: {exc}). "
                f"Offline, put them in the Hugging Face cache or pass "
                f"classifier.pretrained=/path/to/checkpoint.pth"
            ) from exc
        raise
    if isinstance(pretrained, str):
        _load_checkpoint(encoder, Path(pretrained))
    return encoder


def _load_checkpoint(encoder: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise HarnessError(f"classifier.pretrained={str(path)!r}: no such checkpoint file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    # A full-model checkpoint carries the classifier head too; the encoder takes the rest.
    missing, _ = encoder.load_state_dict(state, strict=False)
    if len(missing) == len(list(encoder.state_dict())):
        raise HarnessError(f"{path} shares no parameter names with the {type(encoder).__name__} encoder")


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
