"""Smooth Grad-CAM++ (Omeiza et al., 2019): Grad-CAM++ with gradients averaged over noisy inputs."""
from __future__ import annotations

import torch

from harness.cam import GradientCam, as_classes, forward_features, head_gradients, weighted_sum

from .gradcampp import gradcampp_alpha


class SmoothGradCAMPlusPlus(GradientCam):
    """Smooth Grad-CAM++: ReLU(sum_k w_k A_k), w_k = sum_ij alpha_kij ReLU(D1_kij), alpha = D2/(2 D2 + sum_ab A_kab D3), Dp = mean over n noisy inputs x + N(0, sigma^2) of G^p (Omeiza et al., "Smooth Grad-CAM++", arXiv:1908.01224, 2019)."""

    # A is the clean input's feature map; noise eps_m ~ N(0, sigma^2), m = 1..n, is drawn per
    # call from a torch.Generator seeded with `seed`, with the input's (C, H, W) shape, and is
    # shared by every image of the batch, so a map depends on its image only (batched ==
    # per-image) and a call is deterministic. The n noisy forwards run one batch at a time; one
    # head-only autograd.grad covers all of them (n + 1 forwards, 1 backward through the head).
    #
    # variant="torchcam" (F-CAM family's vendored torchcam, defaults n=4, sigma=0.3):
    #   alpha = D2 / (2 D2 + sum_ab D3_ab A_ab), no guard (0/0 -> NaN channels, dropped by nansum),
    #   w_k = sum_ij alpha_kij ReLU(G^(n)_kij) with G^(n) the LAST noisy pass's gradient, and the
    #   map is sum_k w_k A^(n)_k with A^(n) the LAST noisy pass's features (torchcam's activation
    #   hook stays on during the noisy forwards; only alpha uses the clean A).

    name = "smoothgradcampp"

    def __init__(self, n: int = 4, sigma: float = 0.3, seed: int = 0, variant: str = "gradcam",
                 channels_last: bool | None = None):
        super().__init__(variant, channels_last)
        if int(n) < 1:
            raise ValueError(f"n={n}: Smooth Grad-CAM++ needs at least one noisy sample")
        if float(sigma) < 0:
            raise ValueError(f"sigma={sigma}: the noise standard deviation must be >= 0")
        self.n = int(n)
        self.sigma = float(sigma)
        self.seed = int(seed)

    def noise(self, images: torch.Tensor) -> torch.Tensor:
        """(n, C, H, W) noise, the same for every image and every call."""
        gen = torch.Generator(device=images.device).manual_seed(self.seed)
        eps = torch.randn((self.n, *images.shape[1:]), generator=gen, device=images.device, dtype=images.dtype)
        return eps * self.sigma

    def raw(self, model, images, classes):
        logits, A = forward_features(model, self.model_input(images))
        classes = as_classes(classes, images.shape[0], logits.device, logits.shape[1])
        noisy = [forward_features(model, self.model_input(images + eps))[1] for eps in self.noise(images)]
        G = head_gradients(model, torch.cat(noisy), classes.repeat(self.n)).reshape(self.n, *A.shape)
        return self.combine(A, G, noisy[-1]), logits

    def combine(self, A, G, A_last=None):
        """``G`` (n, B, K, h, w): the gradients of the n noisy copies; ``A_last``: the features
        of the last one (the torchcam variant maps them; default ``A``)."""
        D2 = (G * G).mean(dim=0)
        D3 = (G * G * G).mean(dim=0)
        if self.variant == "torchcam":
            denom = 2 * D2 + (D3 * A).sum(dim=(2, 3), keepdim=True)
            weights = (D2 / denom * torch.relu(G[-1])).sum(dim=(2, 3))
            return weighted_sum(weights, A if A_last is None else A_last, nan_skip=True)
        alpha = gradcampp_alpha(D2, D3, A)
        return weighted_sum((alpha * torch.relu(G.mean(dim=0))).sum(dim=(2, 3)), A)
