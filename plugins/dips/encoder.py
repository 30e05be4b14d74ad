"""What ``dips`` and ``dino-attn`` share: the DINO ViT with its classification head f_c, the stage
that trains f_c (and fine-tunes the ViT when there are no DINO weights), and the shared
classifier stage as the external scorer f_r (``EncoderMethod``)."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import HarnessError
from harness.fcam.method import section, sgd_step_lr
from harness.method import Method, Stage
from harness.models.classifier import shared_classifier
from harness.models.vit import create_vit, vit_normalization

from .model import AttentionEncoder


def build_encoder(cfg, num_classes: int) -> tuple[AttentionEncoder, bool]:
    """The encoder of ``method.backbone`` and whether its ViT is fine-tuned (``finetune``: None
    fine-tunes only when no DINO weights were loaded)."""
    b = section(cfg.method, "backbone")
    sizes = {k: b[k] for k in ("depth", "embed_dim", "num_heads") if b.get(k) is not None}
    vit = create_vit(b.get("arch", "vit_small_patch16_224.dino"), b.get("pretrained"), sizes,
                     who=f"the {cfg.method.name} encoder")
    finetune = b.get("finetune")
    if finetune is None:
        finetune = vit.loaded_weights is None
    elif not isinstance(finetune, bool):
        raise HarnessError(f"method.backbone.finetune={finetune!r}: use None (only without DINO weights), True or False")
    return AttentionEncoder(vit, num_classes, cfg.method.get("heads", "all")), finetune


def encoder_provenance(encoder: AttentionEncoder, finetune: bool) -> dict:
    weights = encoder.vit.loaded_weights
    return {"encoder_weights": weights or "random initialization",
            "encoder_finetuned": finetune,
            "encoder": ("fine-tuned on the class labels from " + ("its weights" if weights else "random initialization")
                        if finetune else "frozen"),
            "heads": encoder.heads}


def frozen(module: nn.Module) -> None:
    module.eval()
    module.requires_grad_(False)


class EncoderStage(Stage):
    """Cross-entropy on the class token: f_c alone over the frozen ViT, or f_c and the ViT."""

    name = "encoder"

    def __init__(self, encoder: AttentionEncoder, finetune: bool, cfg):
        t = section(cfg.method, "encoder_train")
        self.encoder = encoder
        self.finetune = finetune
        self.epochs = int(t["epochs"])
        self.batch_size = int(t["batch_size"])
        self.hflip = bool(t.get("hflip", True))
        self.opt_cfg = t

    def parameters(self) -> Iterable[nn.Parameter]:
        return self.encoder.parameters() if self.finetune else self.encoder.head.parameters()

    def optimizer(self):
        return sgd_step_lr(list(self.parameters()), self.opt_cfg)

    def train_mode(self) -> None:
        if self.finetune:
            self.encoder.train()
            self.encoder.requires_grad_(True)
        else:
            frozen(self.encoder.vit)
            self.encoder.head.train()
            self.encoder.head.requires_grad_(True)

    def loss(self, batch: dict):
        if self.finetune:
            _, logits = self.encoder(batch["image"])
        else:
            with torch.no_grad():
                tokens = self.encoder.vit.forward_features(batch["image"])
            logits = self.encoder.head(tokens[:, 0])
        loss = F.cross_entropy(logits, batch["label"])
        return loss, {"acc": (logits.argmax(1) == batch["label"]).float().mean().item()}


class EncoderMethod(Method):
    """Base of both methods: ``self.classifier`` (f_r) with its stage ``self.f_r_stage``,
    ``self.encoder`` and ``self.finetune``; frames are normalized for the ViT."""

    def __init__(self, cfg, num_classes: int):
        super().__init__(cfg, num_classes)
        self.classifier, self.f_r_stage = shared_classifier(cfg, num_classes)
        self.encoder, self.finetune = build_encoder(cfg, num_classes)
        self._normalization = vit_normalization(self.encoder.vit)
        self._stages: list[Stage] = []

    @property
    def normalization(self):
        return self._normalization

    @property
    def stages(self):
        return self._stages

    def provenance(self) -> dict:
        return encoder_provenance(self.encoder, self.finetune)
