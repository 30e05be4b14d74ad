"""TrCAM-V's network: a DeiT-S/16 (timm ViT) with a classification head on the class token and a
localization head G on the last layer's tokens.

G is the F-CAM family's U-Net decoder (harness/models/decoder.py) fed one map: the patch tokens
laid out on their (H/16, W/16) grid, concatenated with the class token broadcast over that grid
(the paper says G takes "the patch embeddings and class token(s)" and gives no design). With no
skip connections the decoder is four x2 upsampling blocks, Conv3x3-BN-ReLU twice each, widths
``decoder_channels`` (256, 128, 64, 32), then a 3x3 conv to the two channels (background,
foreground) at the input resolution.

The ViT takes any frame size: timm's ``dynamic_img_size`` interpolates the positional
embedding to the frame's token grid (and ``dynamic_img_pad`` pads to a multiple of the patch).
"""
from __future__ import annotations

import logging
import os

import timm
import torch
from torch import nn

from harness.errors import HarnessError
from harness.models.decoder import UNetDecoder

log = logging.getLogger(__name__)


def create_vit(arch: str, pretrained, overrides: dict | None = None) -> nn.Module:
    """The timm ViT without its head. ``pretrained``: True (the tag's weights from the local
    timm/Hugging Face cache, never downloaded; an error says where to put them), None (those
    weights when cached, else random initialization with a warning), a checkpoint path, or
    False (random). ``overrides``: timm model kwargs (tests build tiny ViTs: depth, embed_dim,
    num_heads)."""
    from harness.models.backbones import cached_weight_file
    from harness.models.pretrained import load_checkpoint

    kwargs = dict(num_classes=0, dynamic_img_size=True, dynamic_img_pad=True, **(overrides or {}))
    option = "method.backbone.pretrained"
    weights = None
    if pretrained is True or pretrained is None:
        try:
            weights = cached_weight_file(arch, arch, option=option)
        except HarnessError as exc:
            if pretrained is True:
                raise
            log.warning("TrCAM-V backbone: %s. Training from random initialization instead "
                        "(method.backbone.pretrained=None; False says random on purpose)", str(exc).split(". Supply them")[0])
    elif isinstance(pretrained, (str, os.PathLike)) and pretrained:
        if not os.path.isfile(pretrained):
            raise HarnessError(f"{option}={pretrained!r}: no such checkpoint file; pass a state_dict of {arch!r} "
                               f"(torch.save(model.state_dict(), path)), True for the cached timm weights, or None")
    elif pretrained is not False:
        raise HarnessError(f"{option}={pretrained!r}: use None (cached if present), True, False or a checkpoint path")
    try:
        if weights is not None:
            net = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=weights), **kwargs)
        else:
            net = timm.create_model(arch, pretrained=False, **kwargs)
    except Exception as exc:
        raise HarnessError(f"could not build the TrCAM-V backbone {arch!r} ({type(exc).__name__}: {str(exc)[:300]}); "
                           f"method.backbone.arch must be a timm ViT name") from exc
    if isinstance(pretrained, (str, os.PathLike)):
        load_checkpoint(net, pretrained)
    if not hasattr(net, "patch_embed") or not hasattr(net, "num_prefix_tokens"):
        raise HarnessError(f"method.backbone.arch={arch!r} is not a timm VisionTransformer")
    net.loaded_weights = weights or (str(pretrained) if isinstance(pretrained, (str, os.PathLike)) else None)
    return net


class TrcamvNet(nn.Module):
    """``forward(x) -> (class logits (B, C), localization logits (B, 2, H, W))``."""

    def __init__(self, backbone: nn.Module, num_classes: int, decoder_channels=(256, 128, 64, 32)):
        super().__init__()
        self.backbone = backbone
        d = backbone.embed_dim
        self.patch = int(backbone.patch_embed.patch_size[0])
        self.head = nn.Linear(d, num_classes)
        self.decoder = UNetDecoder([2 * d], [self.patch], decoder_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.backbone.forward_features(x)
        b, _, h, w = x.shape
        gh, gw = -(-h // self.patch), -(-w // self.patch)  # dynamic_img_pad rounds up
        cls = tokens[:, 0]
        patches = tokens[:, self.backbone.num_prefix_tokens:].transpose(1, 2).reshape(b, -1, gh, gw)
        grid = torch.cat([patches, cls[:, :, None, None].expand(-1, -1, gh, gw)], dim=1)
        return self.head(cls), self.decoder([grid], (h, w))
