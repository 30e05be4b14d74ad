"""``dino-attn``: the self-supervised attention baseline of DiPS's Table 2.4 (thesis L2162-2176).

For each image, each class-token map of the last block (the selected heads and their mean) is
binarized with Otsu's threshold; the image is blurred outside the binary region, as DiPS's
proposals are blurred outside their boxes (the same blur, composite and batched scoring of
proposals.py), and scored by f_r for the class asked. The map whose image scores highest is
the localization map. Without DINO weights the ViT is first fine-tuned on the class labels
(encoder.py), and every fine-tuning epoch is evaluated; with them, nothing is trained besides
the shared f_r, and the single untrained "epoch" is evaluated.
"""
from __future__ import annotations

import torch

from harness.fcam.cam_bank import otsu_region
from harness.method import NoTrainingStage, Prediction

from .bank import renormalize
from .encoder import EncoderMethod, EncoderStage
from .model import upsample
from .proposals import ProposalConfig, gaussian_blur, score_composites


class DinoAttnMethod(EncoderMethod):
    def __init__(self, cfg, num_classes: int):
        super().__init__(cfg, num_classes)
        m = cfg.method
        self.scoring = ProposalConfig(blur_sigma=float(m.get("blur_sigma", 0.045)),
                                      batch_size=int(m.get("batch_size", 64)))
        last = EncoderStage(self.encoder, True, cfg) if self.finetune else NoTrainingStage("dino-attn")
        self._stages = [self.f_r_stage, last]

    def modules(self):
        return {"classifier": self.classifier, "encoder": self.encoder}

    @torch.no_grad()
    def predict(self, images, classes):
        b, _, h, w = images.shape
        maps = upsample(self.encoder.maps(images), (h, w), self.encoder.patch)  # (B, M, H, W)
        n = maps.shape[1]
        regions = otsu_region(maps.reshape(b * n, h, w))
        x = renormalize(images, self.normalization, self.classifier.normalization)
        blurred = gaussian_blur(x, self.scoring.blur_sigma * min(h, w))
        owner = torch.arange(b, device=images.device).repeat_interleave(n)
        scores = score_composites(self.classifier, x, classes, blurred, owner, masks=regions, cfg=self.scoring)
        best = scores.reshape(b, n).argmax(1)
        logits, _ = self.classifier(x)
        return Prediction(maps=maps[torch.arange(b, device=images.device), best], logits=logits)
