"""DiPS's networks around a timm ViT (DINO ViT-S/16 by default, harness/models/vit.py).

``AttentionEncoder`` gives, besides the tokens, the attention of the class token to the patch
tokens in the last block, one map per head: the "class-token maps" of DiPS (Fig. 2.1a: Map#0 to
Map#5 and their mean). They are computed from the block's own ``qkv`` projection on the input
the block's attention receives (a forward pre-hook), so fused attention kernels stay in use for
the forward pass itself and no timm code is copied:

    a_h = softmax(q_h[cls] . k_h^T * scale)[patches]      for each head h

``heads`` picks which maps are used (``"all"``: every head; ``"first4"``: the WACV-W variant's
first four; or a list of indices), always followed by the mean over *all* heads.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import HarnessError
from harness.fcam.cam_bank import minmax


def head_indices(heads, num_heads: int) -> list[int]:
    """``method.heads`` as head indices (the mean map is added after them)."""
    if heads == "all":
        return list(range(num_heads))
    if heads == "first4":
        return list(range(min(4, num_heads)))
    if isinstance(heads, (list, tuple)) and heads and all(isinstance(h, int) and not isinstance(h, bool)
                                                         for h in heads):
        bad = [h for h in heads if not 0 <= h < num_heads]
        if bad:
            raise HarnessError(f"method.heads={list(heads)}: the ViT has {num_heads} heads (0 to {num_heads - 1})")
        return list(heads)
    raise HarnessError(f"method.heads={heads!r}: use 'all', 'first4' (the WACV-W variant) or a list of head indices")


class AttentionEncoder(nn.Module):
    """A timm ViT with a classification head f_c on its (final-normalized) class token.

    ``forward(x) -> (tokens (B, T, D), class logits (B, C))``; ``maps(x) -> (B, M, gh, gw)``
    the selected heads' class-token attention and their mean, each min-max normalized to [0, 1]."""

    def __init__(self, vit: nn.Module, num_classes: int, heads="all"):
        super().__init__()
        self.vit = vit
        self.head = nn.Linear(vit.embed_dim, num_classes)
        attn = vit.blocks[-1].attn
        self.num_heads = int(attn.num_heads)
        self.heads = head_indices(heads, self.num_heads)
        self.patch = int(vit.patch_embed.patch_size[0])

    @property
    def num_maps(self) -> int:
        return len(self.heads) + 1

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.vit.forward_features(x)
        return tokens, self.head(tokens[:, 0])

    def attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens, a)``: the tokens and the last block's class-token attention to the patch
        tokens, (B, num_heads, gh * gw), rows summing to at most 1 (the rest goes to the prefix)."""
        seen: list[torch.Tensor] = []
        attn = self.vit.blocks[-1].attn
        hook = attn.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
        try:
            tokens = self.vit.forward_features(x)
        finally:
            hook.remove()
        y = seen[0]  # (B, T, D): the last block's input to its attention, after norm1
        b, t, d = y.shape
        qkv = attn.qkv(y).reshape(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        weights = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)).softmax(-1)[:, :, 0]  # (B, heads, T)
        return tokens, weights[:, :, self.vit.num_prefix_tokens:]

    def maps(self, x: torch.Tensor) -> torch.Tensor:
        _, a = self.attention(x)
        b = a.shape[0]
        gh, gw = -(-x.shape[-2] // self.patch), -(-x.shape[-1] // self.patch)
        m = torch.cat([a[:, self.heads], a.mean(1, keepdim=True)], 1).reshape(b, -1, gh, gw)
        return minmax(m)


def upsample(maps: torch.Tensor, size: Sequence[int], patch: int) -> torch.Tensor:
    """Token-grid maps (B, M, gh, gw) at the frame size (bilinear, ``patch`` pixels per token),
    cropped where the ViT padded the frame to whole patches, then min-max normalized again."""
    h, w = int(size[0]), int(size[1])
    up = F.interpolate(maps.float(), scale_factor=patch, mode="bilinear", align_corners=False)
    return minmax(up[..., :h, :w])
