"""timm Vision Transformers as the harness builds them for TrCAM-V and DiPS: any frame size (the
positional embedding interpolated to the frame's token grid, frames padded to a multiple of
the patch), weights from the local cache or a checkpoint file, never downloaded."""
from __future__ import annotations

import logging
import os

import timm
from torch import nn

from harness.errors import HarnessError

log = logging.getLogger(__name__)


def create_vit(arch: str, pretrained, overrides: dict | None = None, *, option: str = "method.backbone.pretrained",
               who: str = "the ViT backbone") -> nn.Module:
    """The timm ViT without its head. ``pretrained``: True (the tag's weights from the local
    timm/Hugging Face cache, never downloaded; an error says where to put them), None (those
    weights when cached, else random initialization with a warning), a checkpoint path, or
    False (random). ``overrides``: timm model kwargs (tests build tiny ViTs: depth, embed_dim,
    num_heads)."""
    from harness.models.backbones import cached_weight_file
    from harness.models.pretrained import load_checkpoint

    kwargs = dict(num_classes=0, dynamic_img_size=True, dynamic_img_pad=True, **(overrides or {}))
    weights = None
    if pretrained is True or pretrained is None:
        try:
            weights = cached_weight_file(arch, arch, option=option)
        except HarnessError as exc:
            if pretrained is True:
                raise
            log.warning("%s: %s. Training from random initialization instead (%s=None; False says random on "
                        "purpose)", who, str(exc).split(". Supply them")[0], option)
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
        raise HarnessError(f"could not build {who} {arch!r} ({type(exc).__name__}: {str(exc)[:300]}); "
                           f"{option.rsplit('.', 1)[0]}.arch must be a timm ViT name") from exc
    if isinstance(pretrained, (str, os.PathLike)):
        load_checkpoint(net, pretrained)
    if not hasattr(net, "patch_embed") or not hasattr(net, "num_prefix_tokens"):
        raise HarnessError(f"{option.rsplit('.', 1)[0]}.arch={arch!r} is not a timm VisionTransformer")
    net.loaded_weights = weights or (str(pretrained) if isinstance(pretrained, (str, os.PathLike)) else None)
    return net


def vit_normalization(vit: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) a timm ViT's weights expect (ImageNet's when its config says nothing)."""
    cfg = getattr(vit, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))
