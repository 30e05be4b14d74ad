"""DiPS as a composition of shared parts: the frozen DINO encoder and its f_c (encoder.py), the
shared classifier stage as the external scorer f_r, Algorithm 2.1's proposals (proposals.py,
bank.py), and the F-CAM family's sampler, loss terms and decoders.

Stages: ``classifier`` (f_r, the harness's cached ResNet stage), ``encoder`` (f_c, and the ViT
when fine-tuned), ``dips`` (f_l). The ``dips`` stage computes every training frame's proposals
once (cached on disk), then at every step samples pixels from one proposal per frame and trains
f_l with

    lambda_1 * partial CE on the sampled pixels + lambda_2 * CRF          (thesis Eq. 2.4)
    + lambda_CLS * CE(f_c(ViT(x * S^1)), y)                               (wacvw only, Eq. A I-5)

``variant=ivc``: f_l is a CNN decoder over the frozen encoder's tokens (TokenDecoder);
``wacvw``: the F-CAM U-Net decoder over f_r's frozen features (the authors train a ResNet50 U-Net
from ImageNet weights; here f_r is the U-Net's encoder, as in the F-CAM family). Inference is
one forward pass: f_c's class scores and f_l's foreground map.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import HarnessError
from harness.fcam.losses import DenseCRF, PartialCE, check_terms, frames_255
from harness.fcam.method import section, sgd_step_lr
from harness.fcam.pseudo_labels import SamplerConfig
from harness.method import Prediction, Stage
from harness.models.decoder import TokenDecoder, decoder_for

from .bank import ProposalBank, renormalize
from .encoder import EncoderMethod, EncoderStage, frozen
from .proposals import ProposalConfig

VARIANTS = ("ivc", "wacvw")


def proposal_config(d: dict) -> ProposalConfig:
    try:
        return ProposalConfig(**d)
    except TypeError as exc:
        raise HarnessError(f"method.proposals: {exc}") from exc


class LocalizerStage(Stage):
    name = "dips"

    def __init__(self, method: "DipsMethod", cfg):
        m = cfg.method
        t = section(m, "train")
        self.method = method
        self.epochs = int(t["epochs"])
        self.batch_size = int(t["batch_size"])
        self.hflip = bool(t.get("hflip", True))
        self.opt_cfg = t
        self.proposals = proposal_config(section(m, "proposals"))
        pl = section(m, "pseudo_labels")
        try:
            # the thesis' rules: no Otsu condition on the box's top pixels; the background among
            # the lowest of the pixels outside every box; as many of each
            self.sampler = SamplerConfig(**pl, fg_otsu=False, bg="bottom", balanced=True)
        except TypeError as exc:
            raise HarnessError(f"method.pseudo_labels: {exc} (fg_otsu, bg and balanced are DiPS's own rules)") from exc
        losses = section(m, "losses")
        cls = dict(losses.pop("cls", {}))
        weight = float(cls.pop("weight", 0.0))
        self.cls_weight = weight if method.variant == "wacvw" else 0.0  # an IVC f_l has no L_CLS
        if cls:
            raise HarnessError(f"method.losses.cls: unknown settings {sorted(cls)} (it has only weight)")
        check_terms(losses)
        self.pce = PartialCE(**losses.get("pce", {}))
        self.crf = DenseCRF(**losses.get("crf", {}))
        self.bank = None
        self.epoch = 1

    def parameters(self) -> Iterable[nn.Parameter]:
        return self.method.localizer.parameters()

    def optimizer(self):
        return sgd_step_lr(self.method.localizer.parameters(), self.opt_cfg)

    def train_mode(self) -> None:
        m = self.method
        frozen(m.encoder)
        frozen(m.classifier)
        m.localizer.train()

    def prepare(self, split, device, progress: bool = True) -> None:
        m = self.method
        self.bank = ProposalBank.build(m.encoder, m.classifier, split, device, self.proposals,
                                       normalization=m.normalization, classifier_normalization=m.classifier.normalization,
                                       progress=progress)

    def loss(self, batch: dict):
        images, labels = batch["image"], batch["label"]
        m = self.method
        logits = m.localize(images)
        probs = logits.softmax(1)
        pixels = self.bank.sample(batch["index"], batch.get("flipped"), self.sampler)
        e = self.epoch
        total, scalars = logits.sum() * 0.0, {}
        if self.pce.active(e):
            v = self.pce(logits, pixels)
            total, scalars["pce"] = total + v, v.item()
        if self.crf.active(e):
            v = self.crf(probs, frames_255(images, m.normalization))
            total, scalars["crf"] = total + v, v.item()
        if self.cls_weight:
            # the foreground-masked frame (background at the normalization's mean, i.e. 0) through
            # the frozen encoder and f_c: the gradient reaches f_l through the mask only
            _, cls_logits = m.encoder(images * probs[:, 1:2])
            v = F.cross_entropy(cls_logits, labels)
            total, scalars["cls"] = total + self.cls_weight * v, v.item()
        return total, scalars


class DipsMethod(EncoderMethod):
    def __init__(self, cfg, num_classes: int):
        super().__init__(cfg, num_classes)
        m = cfg.method
        self.variant = m.get("variant", "ivc")
        if self.variant not in VARIANTS:
            raise HarnessError(f"method.variant={self.variant!r}: use one of {', '.join(VARIANTS)}")
        if self.variant == "ivc":
            self.localizer = TokenDecoder(self.encoder.vit.embed_dim, self.encoder.patch,
                                          tuple(m.get("decoder_channels") or (256, 128, 64, 32)))
        else:
            self.localizer = decoder_for(self.classifier, m.get("unet_channels"))
        self._stages = [self.f_r_stage, EncoderStage(self.encoder, self.finetune, cfg), LocalizerStage(self, cfg)]

    def modules(self):
        return {"classifier": self.classifier, "encoder": self.encoder, "localizer": self.localizer}

    def provenance(self) -> dict:
        return {**super().provenance(), "variant": self.variant}

    def localize(self, images: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """f_l's logits (B, 2, H, W) over the frozen encoder's ``tokens`` (ivc; computed when not
        given) or f_r's features (wacvw)."""
        size = tuple(images.shape[-2:])
        if self.variant == "ivc":
            if tokens is None:
                with torch.no_grad():
                    tokens = self.encoder.vit.forward_features(images)
            return self.localizer(tokens.detach(), self.encoder.vit.num_prefix_tokens, size)
        with torch.no_grad():
            feats = self.classifier.features(renormalize(images, self.normalization, self.classifier.normalization))
        return self.localizer([f.detach() for f in feats], size)

    def predict(self, images, classes):
        tokens, logits = self.encoder(images)
        return Prediction(maps=self.localize(images, tokens).softmax(1)[:, 1], logits=logits)
