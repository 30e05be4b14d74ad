"""Grad-CAM++ (Chattopadhay et al., WACV 2018)."""
from __future__ import annotations

import torch

from harness.cam import GradientCam, weighted_sum

EPS = 1e-6  # pytorch-grad-cam's guard in the alpha denominator


def gradcampp_alpha(G2, G3, A, eps: float = EPS):
    """Closed form of the paper's Eq. 19 (exp-score trick), as pytorch-grad-cam:
    alpha = G^2 / (2 G^2 + (sum_ab A_ab) G^3 + eps), and 0 where G^2 = 0."""
    sum_a = A.sum(dim=(2, 3), keepdim=True)
    alpha = G2 / (2 * G2 + sum_a * G3 + eps)
    return torch.where(G2 != 0, alpha, torch.zeros_like(alpha))


class GradCAMPlusPlus(GradientCam):
    """Grad-CAM++: ReLU(sum_k w_k A_k), w_k = sum_ij alpha_kij ReLU(G_kij), alpha = G^2/(2G^2 + sum_ab A_kab G^3) (Chattopadhay et al., "Grad-CAM++: Improved Visual Explanations for Deep Convolutional Networks", WACV 2018)."""

    # variant="torchcam" reproduces the F-CAM family's vendored torchcam, whose
    # `alpha[nan_mask].div_(denom[nan_mask])` divides a copy (boolean indexing), so its alpha
    # stays G^2 and w_k = sum_ij G_kij^2 ReLU(G_kij).

    name = "gradcampp"

    def combine(self, A, G):
        G2 = G * G
        if self.variant == "torchcam":
            return weighted_sum((G2 * torch.relu(G)).sum(dim=(2, 3)), A, nan_skip=True)
        alpha = gradcampp_alpha(G2, G2 * G, A)
        return weighted_sum((alpha * torch.relu(G)).sum(dim=(2, 3)), A)
