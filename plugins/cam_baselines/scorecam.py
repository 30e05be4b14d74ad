"""Score-CAM (Wang et al., CVPRW 2020): channel weights from the scores of masked inputs."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.cam import CamSource, as_classes, weighted_sum


class ScoreCAM(CamSource):
    """Score-CAM: ReLU(sum_k w_k A_k), w = softmax_k(y_c(X * M_k)), M_k = minmax(upsample(A_k)) (Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural Networks", CVPR Workshops 2020)."""

    # gradcam variant (pytorch-grad-cam): M_k = minmax(bilinear_up(A_k)) with align_corners=True
    #   and (max - min + 1e-8); s_k = raw logit of c on X * M_k; w = softmax over the K channels.
    # torchcam variant (F-CAM family's vendored torchcam): N_k = minmax(A_k) at feature
    #   resolution (no guard: a constant channel is NaN and nansum drops it), M_k =
    #   bilinear_up(N_k) with align_corners=False, w_k = softmax over classes of
    #   model(X * M_k), taken at c; and, because torchcam normalizes its hooked activations in
    #   place, the map is sum_k w_k N_k (the normalized channels, not A_k).
    #
    # All B*K masked inputs are built lazily and forwarded `batch_size` at a time (chunks may mix
    # images), so memory is bounded by one chunk. Sources never switch the model's mode: in train
    # mode, batch norm would make the scores depend on the chunking.

    name = "scorecam"
    needs_grad = False
    relu = True

    def __init__(self, batch_size: int = 32, variant: str = "gradcam", channels_last: bool | None = None):
        super().__init__(variant, channels_last)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size={batch_size}: at least one masked input per forward")
        self.batch_size = int(batch_size)

    def raw(self, model, images, classes):
        with torch.no_grad():
            logits, A = model(self.model_input(images))
            classes = as_classes(classes, images.shape[0], logits.device, logits.shape[1])
            B, K = A.shape[:2]
            size = tuple(images.shape[-2:])
            torchcam = self.variant == "torchcam"
            if torchcam:
                lo = A.amin(dim=(2, 3), keepdim=True)
                span = A.amax(dim=(2, 3), keepdim=True) - lo
                live = span > 0
                normed = torch.where(live, (A - lo) / span.clamp_min(torch.finfo(A.dtype).tiny), 0.0)
                pairs = live.flatten().nonzero()[:, 0]
            else:
                pairs = torch.arange(B * K, device=A.device)
            scores = torch.zeros(B * K, dtype=logits.dtype, device=logits.device)
            for chunk in pairs.split(self.batch_size):
                b, k = chunk // K, chunk % K
                if torchcam:
                    masks = F.interpolate(normed[b, k][:, None], size=size, mode="bilinear", align_corners=False)
                else:
                    up = F.interpolate(A[b, k][:, None], size=size, mode="bilinear", align_corners=True)
                    lo_up = up.amin(dim=(2, 3), keepdim=True)
                    masks = (up - lo_up) / (up.amax(dim=(2, 3), keepdim=True) - lo_up + 1e-8)
                out, _ = model(self.model_input(images[b] * masks.to(images.dtype)))
                if torchcam:
                    out = F.softmax(out, dim=1)
                scores[chunk] = out.gather(1, classes[b][:, None])[:, 0]
            scores = scores.view(B, K)
            if torchcam:
                return weighted_sum(scores.to(normed.dtype), normed), logits
            return weighted_sum(F.softmax(scores, dim=1).to(A.dtype), A), logits
