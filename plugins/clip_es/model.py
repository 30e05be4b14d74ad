"""CLIP-ES (Lin et al., CVPR 2023) on an open_clip ViT, batched over images, one class each.

What CLIP-ES changes in CLIP, done here from the open_clip modules' own weights instead of a
modified copy of CLIP:

- the positional embedding is interpolated (bilinear, the class token's kept) to the token grid
  of the input, so any multiple of the patch size works;
- every block's attention is computed from its ``nn.MultiheadAttention`` projection weights,
  which gives the head-averaged attention weights CAA needs (open_clip asks its attention for
  no weights);
- the first L-1 blocks run without a graph; the last block runs with one, from its first
  LayerNorm's output on (the Grad-CAM layer ``resblocks[-1].ln_1``);
- the image embedding is the mean of the patch tokens after ``ln_post`` (not the class token),
  projected;
- the Grad-CAM target is the softmax probability of the image's class over {its class} plus the
  background prompts, so regions that a background word explains better are suppressed.

Then CAA: the mean of the last ``attn_layers`` attention maps (patch tokens), Sinkhorn
normalization, symmetrization and squaring, restricted to the boxes of the CAM at ``tau_caa``,
refines the CAM (:mod:`harness.plugins.clip_es.caa`).

The box mask is the union of the bounding rectangles of the 8-connected regions of the
quantized CAM above ``int(tau * max)``, as Choe et al.'s box extraction finds them. The authors
fill ``mask[y0:y1, x0:x1]`` from boxes whose end was already clamped to the last row/column,
which drops that row or column when a region touches the border; here every pixel of each
rectangle is inside.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.errors import HarnessError

from .caa import caa_refine


@dataclass
class ClipEsOutput:
    maps: Tensor  # (B, h, w) CAA-refined maps, min-max normalized
    cams: Tensor  # (B, h, w) softmax Grad-CAM, min-max normalized
    attention: Tensor  # (B, N, N) mean attention of the last blocks, patch tokens only (N = h * w)
    mask: Tensor  # (B, N) bool: tokens inside the CAM's boxes at tau_caa
    logits: Tensor  # (B, C) zero-shot logits over the class prompts (class-token embedding)
    classes: Tensor  # (B,) the class each map localizes


def check_visual(model: nn.Module) -> nn.Module:
    """The open_clip ViT image tower CLIP-ES can run, or an error saying what is not supported."""
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    visual = getattr(model, "visual", None)
    if not isinstance(visual, VisionTransformer):
        raise HarnessError(f"CLIP-ES needs an open_clip CLIP model with a ViT image tower (e.g. ViT-B-16), "
                           f"not {type(visual).__name__}")
    if getattr(visual, "attn_pool", None) is not None:
        raise HarnessError("CLIP-ES: ViT towers with attentional pooling (CoCa) are not supported")
    for i, block in enumerate(visual.transformer.resblocks):
        attn = getattr(block, "attn", None)
        if not isinstance(block, ResidualAttentionBlock) or not isinstance(attn, nn.MultiheadAttention) \
                or not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.add_zero_attn \
                or hasattr(block, "ln_1_kv"):
            raise HarnessError(f"CLIP-ES: block {i} of the image tower is a {type(block).__name__}; only open_clip's "
                               f"ResidualAttentionBlock with a plain nn.MultiheadAttention is supported")
    if visual.patch_size[0] != visual.patch_size[1]:
        raise HarnessError(f"CLIP-ES: square patches only, got {visual.patch_size}")
    return visual


def positional_embedding(visual: nn.Module, grid: tuple[int, int]) -> Tensor:
    """``(1 + gh * gw, D)``: the class token's embedding, then the patch grid's bilinearly
    resized to ``grid`` (unchanged at the native grid)."""
    pos = visual.positional_embedding
    native = tuple(visual.grid_size)
    if tuple(grid) == native:
        return pos
    d = pos.shape[-1]
    patches = pos[1:].reshape(1, native[0], native[1], d).permute(0, 3, 1, 2)
    patches = F.interpolate(patches.float(), size=tuple(grid), mode="bilinear", align_corners=False)
    return torch.cat([pos[:1], patches.to(pos.dtype)[0].permute(1, 2, 0).reshape(-1, d)])


def embed(visual: nn.Module, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """Input tokens of the first block, ``(B, 1 + gh * gw, D)``, and the token grid."""
    p = visual.patch_size[0]
    h, w = images.shape[-2:]
    if h % p or w % p:
        raise HarnessError(f"CLIP-ES: the input is {h}x{w}; both sides must be multiples of the patch size {p}")
    x = visual.conv1(images)
    grid = (x.shape[-2], x.shape[-1])
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + positional_embedding(visual, grid).to(x.dtype)
    return visual.ln_pre(x), grid


def attention(block: nn.Module, x: Tensor, need_weights: bool) -> tuple[Tensor, Tensor | None]:
    """The block's self-attention of ``x`` (its first LayerNorm's output, ``(B, L, D)``) from its
    own projection weights; with ``need_weights`` also the head-averaged weights ``(B, L, L)``."""
    mha = block.attn
    b, n, d = x.shape
    heads = mha.num_heads
    q, k, v = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    if need_weights:
        weights = torch.softmax((q * (d // heads) ** -0.5) @ k.transpose(-2, -1), dim=-1)
        out = weights @ v
        mean = weights.mean(dim=1)
    else:
        out, mean = F.scaled_dot_product_attention(q, k, v), None
    return mha.out_proj(out.transpose(1, 2).reshape(b, n, d)), mean


def block_rest(block: nn.Module, x: Tensor, attended: Tensor) -> Tensor:
    """The block's output from its input ``x`` and its attention output."""
    x = x + block.ls_1(attended)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def minmax(cam: Tensor) -> Tensor:
    """pytorch-grad-cam's ``scale_cam_image`` per map: ``(c - min) / (1e-7 + max(c - min))``."""
    flat = cam.flatten(1)
    flat = flat - flat.amin(dim=1, keepdim=True)
    return (flat / (1e-7 + flat.amax(dim=1, keepdim=True))).reshape(cam.shape)


def box_mask(cams: Tensor, tau: float) -> Tensor:
    """``(B, h * w)`` bool: inside a bounding rectangle of an 8-connected region of
    ``uint8(cam * 255) > int(tau * max)`` (see the module docstring). Runs on the host: the maps
    are token grids (14x14 at 224)."""
    q = (cams.detach().float().cpu().numpy() * 255).astype(np.uint8)
    out = np.zeros(q.shape, dtype=bool)
    for i, m in enumerate(q):
        binary = (m > int(tau * int(m.max()))).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        for x, y, w, h in stats[1:n, :4]:
            out[i, y:y + h, x:x + w] = True
    return torch.from_numpy(out.reshape(len(q), -1)).to(cams.device)


def clip_es_maps(
    model: nn.Module,
    images: Tensor,
    classes: Tensor | None,
    class_text: Tensor,
    background_text: Tensor,
    *,
    attn_layers: int = 8,
    tau_caa: float = 0.4,
    sinkhorn_iters: int = 3,
    target: str = "softmax",
    backend: str = "auto",
) -> ClipEsOutput:
    """CLIP-ES maps of a batch, one class per image.

    ``images``: ``(B, 3, H, W)`` normalized with CLIP's mean/std, H and W multiples of the patch
    size. ``class_text``: ``(C, D)`` L2-normalized class prompt embeddings; ``classes``: ``(B,)``
    indices into it, or None to localize CLIP's zero-shot top-1 class. ``background_text``:
    ``(K, D)`` background prompt embeddings. ``target``: ``softmax`` (CLIP-ES) or ``logit``, the
    plain logit of the class prompt (the background plays no part), for comparison. Nothing
    accumulates into parameters' ``.grad``.
    """
    visual = check_visual(model)
    blocks = list(visual.transformer.resblocks)
    if not 1 <= int(attn_layers) <= len(blocks):
        raise HarnessError(f"method.attn_layers={attn_layers}: the tower has {len(blocks)} blocks; use 1..{len(blocks)}")
    if target not in ("softmax", "logit"):
        raise HarnessError(f"method.gradcam_target={target!r}: use 'softmax' (CLIP-ES) or 'logit'")
    if not 0.0 <= float(tau_caa) < 1.0:
        raise HarnessError(f"method.tau_caa={tau_caa}: a threshold relative to the map's maximum, in [0, 1)")
    first_attn = len(blocks) - int(attn_layers)
    param = next(model.parameters())
    images = images.to(param.device, param.dtype)
    # scores and maps at least in float32 (fp16 weights), in float64 for a float64 model
    work = torch.promote_types(param.dtype, torch.float32)
    class_text = F.normalize(class_text.to(param.device, work), dim=-1)
    background_text = F.normalize(background_text.to(param.device, work), dim=-1)
    b = images.shape[0]

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(False), torch.no_grad():
            x, grid = embed(visual, images.clone())
            attn_sum = None
            for i, block in enumerate(blocks[:-1]):
                attended, w = attention(block, block.ln_1(x), need_weights=i >= first_attn)
                if w is not None:
                    attn_sum = w[:, 1:, 1:].to(work) if attn_sum is None else attn_sum + w[:, 1:, 1:].to(work)
                x = block_rest(block, x, attended)
        with torch.inference_mode(False), torch.enable_grad():
            last = blocks[-1]
            act = last.ln_1(x).detach().requires_grad_(True)  # Grad-CAM's layer: resblocks[-1].ln_1
            attended, w = attention(last, act, need_weights=True)
            y = visual.ln_post(block_rest(last, x, attended))
            proj = visual.proj
            image_emb = y[:, 1:].mean(dim=1)
            cls_emb = y[:, 0]
            if proj is not None:
                image_emb, cls_emb = image_emb @ proj, cls_emb @ proj
            scale = model.logit_scale.exp().to(work) if hasattr(model, "logit_scale") else torch.tensor(100.0)
            logits = scale * F.normalize(cls_emb.detach().to(work), dim=-1) @ class_text.T
            if classes is None:
                classes = logits.argmax(dim=1)
            classes = torch.as_tensor(classes, device=param.device).long().reshape(-1).clone()
            if classes.numel() != b or (b and (int(classes.min()) < 0 or int(classes.max()) >= class_text.shape[0])):
                raise HarnessError(f"CLIP-ES: {classes.numel()} classes for {b} images, each in [0, {class_text.shape[0]})")
            img = F.normalize(image_emb.to(work), dim=-1)
            fg = (img * class_text[classes]).sum(dim=-1, keepdim=True)
            if target == "softmax":
                score = torch.softmax(scale * torch.cat([fg, img @ background_text.T], dim=1), dim=1)[:, 0]
            else:
                score = scale * fg[:, 0]
            (grad,) = torch.autograd.grad(score.sum(), act)
    finally:
        model.train(was_training)

    w_last = w.detach()[:, 1:, 1:].to(work)
    attn_sum = w_last if attn_sum is None else attn_sum + w_last
    attn = attn_sum / int(attn_layers)
    a, g = act.detach()[:, 1:].to(work), grad[:, 1:].to(work)
    cam = F.relu((a * g.mean(dim=1, keepdim=True)).sum(dim=-1)).reshape(b, *grid)
    cams = minmax(cam)
    mask = box_mask(cams, float(tau_caa))
    refined = caa_refine(attn, cams.flatten(1), mask, sinkhorn_iters=int(sinkhorn_iters), backend=backend)
    maps = minmax(refined.reshape(b, *grid))
    return ClipEsOutput(maps=maps, cams=cams, attention=attn, mask=mask, logits=logits.detach(), classes=classes)
