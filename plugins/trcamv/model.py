"""TrCAM-V's network: a DeiT-S/16 (timm ViT) with a classification head on the class token and a
localization head G on the last layer's tokens.

G is the F-CAM family's U-Net decoder fed one map (``TokenDecoder`` of harness/models/decoder.py,
shared with DiPS): the patch tokens laid out on their (H/16, W/16) grid, concatenated with the
class token broadcast over that grid (the paper says G takes "the patch embeddings and class
token(s)" and gives no design). With no skip connections the decoder is four x2 upsampling blocks, Conv3x3-BN-ReLU twice each, widths
``decoder_channels`` (256, 128, 64, 32), then a 3x3 conv to the two channels (background,
foreground) at the input resolution.

The ViT takes any frame size: timm's ``dynamic_img_size`` interpolates the positional
embedding to the frame's token grid (and ``dynamic_img_pad`` pads to a multiple of the patch).
"""
from __future__ import annotations

import torch
from torch import nn

from harness.models.decoder import TokenDecoder


class TrcamvNet(nn.Module):
    """``forward(x) -> (class logits (B, C), localization logits (B, 2, H, W))``."""

    def __init__(self, backbone: nn.Module, num_classes: int, decoder_channels=(256, 128, 64, 32)):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.embed_dim, num_classes)
        self.decoder = TokenDecoder(backbone.embed_dim, backbone.patch_embed.patch_size[0], decoder_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.backbone.forward_features(x)
        return self.head(tokens[:, 0]), self.decoder(tokens, self.backbone.num_prefix_tokens, x.shape[-2:])
