"""A third-party CAM source: Eigen-CAM (Muhammad and Yeasin, IJCNN 2020), the projection of the
last feature map on its first principal component. Its maps do not depend on the class, but
the class indices are still checked, as every source's are.

The contract: the entry's factory is called as ``factory(**options)`` (the options are
``method.options`` of a run, defaults taken from the factory's keyword arguments) and returns
a callable ``source(model, images, classes) -> (maps (B, h, w), logits (B, C))``. Subclassing
``harness.cam.CamSource`` gives the class checks and the ReLU switch for free.
"""
from __future__ import annotations

import torch

from harness.cam import CamSource, as_classes, forward_features


class EigenCAM(CamSource):
    """Eigen-CAM: projection of the features on their first principal component."""

    name = "eigencam"
    needs_grad = False
    relu = True

    def __init__(self, center: bool = True, variant: str = "gradcam", channels_last: bool | None = None):
        super().__init__(variant, channels_last)
        self.center = center  # subtract each map's channel mean before the SVD (as pytorch-grad-cam)

    def raw(self, model, images, classes):
        logits, feats = forward_features(model, self.model_input(images))
        as_classes(classes, images.shape[0], logits.device, logits.shape[1])  # the contract: one valid class each
        b, k, h, w = feats.shape
        a = feats.float().flatten(2).transpose(1, 2)  # (B, hw, K)
        if self.center:
            a = a - a.mean(dim=1, keepdim=True)
        _, _, vh = torch.linalg.svd(a, full_matrices=False)
        maps = (a @ vh[:, 0, :, None]).reshape(b, h, w)
        # the component's sign is arbitrary: orient it so that the map agrees with the activations
        sign = torch.sign((maps * feats.float().mean(1)).sum(dim=(1, 2), keepdim=True))
        return maps * torch.where(sign == 0, torch.ones_like(sign), sign), logits
