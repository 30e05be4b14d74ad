"""The F-CAM U-Net decoder, shared by the F-CAM, TCAM and CoLo-CAM plugins.

It is the authors' decoder (``UnetFCAMDecoder`` + ``SegmentationHead`` of sbelharbi/fcam-wsol,
tcam-wsol-video and colo-cam, a segmentation_models_pytorch U-Net), built from the feature list
of any harness encoder (``harness/models/backbones.py``) instead of smp's fixed depth-5 lists.

Blocks, exactly as the authors' code:

- ``DecoderBlock(in, skip, out)``: nearest x2 upsampling; if the result's size differs from the
  skip's, a bilinear resize (``align_corners=True``) to the skip's size; ``cat([x, skip])``
  (upsampled input first); then ``Conv3x3-BN-ReLU`` twice (convs without bias). A block
  without a skip only upsamples (no resize, no concat).
- ``CenterBlock``: two ``Conv3x3-BN-ReLU`` at the head's channels, applied to the head before
  the blocks (the authors use it with VGG16 only).
- Segmentation head: ``Conv3x3`` (last decoder channels -> ``out_channels``, with bias); the
  logits are bilinearly resized (``align_corners=True``) to the input size when not already at it.
- Initialization as smp: decoder convs Kaiming-uniform (fan-in, ReLU), BN weight 1 / bias 0;
  head conv Xavier-uniform, bias 0.

Which features feed which block. ``features`` are the encoder's maps, shallow to deep. The
deepest is the decoder input ("head"); the others, deepest first, are the skips, except
those at the input resolution (nominal reduction 1, e.g. ``vgg16-wsol``'s stage 0), which are
not used (smp drops its stride-1 feature the same way). One block per skip; then blocks
without a skip, each doubling the resolution, until the nominal stride reaches 1 (stride s
after the last skip gives ceil(log2 s) of them, 1 for the usual s = 2). The head resize only
corrects rounding (odd sizes, InceptionV3's unpadded convs).

This is smp's rule: smp's depth-5 encoders list a stride-1 feature (the 3-channel input) plus
5 maps, drop the first, and build 5 blocks for the 4 skips + 1 block whose skip is missing.
Hence, with the default ``decoder_channels=(256, 128, 64, 32, 16)``:

- ``resnet50-wsol``: 2048+1024->256 (stride 8 after the block), 256+512->128 (8),
  128+256->64 (4), 64+64->32 (2), 32->16 (1). 9,013,218 parameters (conv weights, BN
  affine, head), exactly the authors' decoder: F-CAM Table A.2 gives ~9 M.
- ``vgg16-wsol`` with a center (``decoder_for``'s default for it): center 1024->1024 (8),
  1024+256->256 (4), 256+128->128 (2), 128->64 (1). 23,120,770, exactly the authors' (~23.1 M).
- ``inception_v3-wsol``: 1024+768->256 (8), 256+288->128 (8), 128+192->64 (4), 64+64->32 (2),
  32->16 (1). 5,769,186; the authors' is 5,704,674 (~5.7 M), see below.
- ``resnet18`` / ``resnet18-wsol`` (all stages): 512+256->256, 256+128->128, 128+64->64,
  64+64->32, 32->16. 3,151,842.
- ``resnet18``, ``feature_index=2``: 128+64->256 (4), 256+64->128 (2), 128->64 (1). 1,661,826.
- ``resnet18``, ``feature_index=1``: 64+64->256 (2), 256->128 (1). 1,330,946.
- ``efficientnet_lite0``: 320+112->256, 256+40->128, 128+24->64, 64+16->32, 32->16. 2,239,458.

The inception difference is the encoder's: the authors' InceptionV3 encoder (out_channels
(3, 64, 80, 288, 768, 1024)) gives an 80-channel stride-4 map (its stage ends at
Conv2d_3b_1x1), the harness's ``inception_v3-wsol`` a 192-channel one (Conv2d_4a_3x3, 54x54 at
224), so the third block's first conv has 128+192 instead of 128+80 inputs (+64,512 weights).
State_dict keys follow the authors' model: their ``decoder.center.*`` / ``decoder.blocks.*``
are this module's ``center.*`` / ``blocks.*`` and their ``segmentation_head.0.*`` is
``segmentation_head.0.*``, so a ResNet50 or VGG16 checkpoint of theirs loads after stripping
the ``decoder.`` prefix.

``decoder_channels``: one entry per block. With fewer entries than blocks the list is extended
by halving the last one (not below 16): (64,) for 5 blocks -> (64, 32, 16, 16, 16). With more,
it is truncated: the first ones are kept, so 3 blocks get (256, 128, 64), the authors' VGG16
setting. (Truncating keeps the wide early blocks; a shallow encoder such as ``resnet18`` with
``feature_index=2`` thus ends with a 64-channel block at full resolution.)

The decoder is meant to sit on a FROZEN classifier: callers pass detached features (and keep
the classifier in eval mode); the decoder itself does not detach, so gradients would reach an
encoder whose features are not detached.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32, 16)
MIN_DECODER_CHANNELS = 16


class Conv2dReLU(nn.Sequential):
    """smp's ``Conv2dReLU`` with batch norm: Conv (no bias) -> BN -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DecoderBlock(nn.Module):
    """Nearest x2 up; bilinear resize to the skip's size if it differs; ``cat([x, skip])``;
    ``conv1``, ``conv2`` (each Conv3x3-BN-ReLU). ``skip_channels=0``: no skip, no resize."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.in_channels, self.skip_channels, self.out_channels = in_channels, skip_channels, out_channels
        self.conv1 = Conv2dReLU(in_channels + skip_channels, out_channels)
        self.conv2 = Conv2dReLU(out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        if skip is not None:
            if x.shape[2:] != skip.shape[2:]:
                x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=True)
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class CenterBlock(nn.Sequential):
    """Two Conv3x3-BN-ReLU on the head feature (the authors' VGG16 decoder)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(Conv2dReLU(in_channels, out_channels), Conv2dReLU(out_channels, out_channels))


def adapt_decoder_channels(decoder_channels: Sequence[int], n_blocks: int) -> tuple[int, ...]:
    """One width per block: truncate, or extend by halving the last width (not below 16)."""
    chans = [int(c) for c in decoder_channels]
    if not chans and n_blocks:
        raise ValueError("decoder_channels must not be empty")
    if any(c < 1 for c in chans):
        raise ValueError(f"decoder_channels must be positive, got {tuple(decoder_channels)}")
    chans = chans[:n_blocks]
    while len(chans) < n_blocks:
        chans.append(max(min(MIN_DECODER_CHANNELS, chans[-1]), chans[-1] // 2))
    return tuple(chans)


class UNetDecoder(nn.Module):
    """The F-CAM U-Net decoder over an encoder's feature list (module docstring for the plan).

    encoder_channels / encoder_reductions: channels and nominal stride of each encoder map,
        shallow to deep (``encoder.feature_info.channels()`` / ``.reduction()``).
    decoder_channels: width of each block, adapted to the number of blocks (truncated, or
        extended by halving down to 16).
    center: a CenterBlock on the head (the authors' VGG16 decoder).
    out_channels: channels of the logits (2: background, foreground; channel 1 is the foreground).

    Attributes: ``skip_indices`` (indices into ``features`` of the skips, in block order),
    ``n_extra_blocks`` (blocks without skip), ``decoder_channels`` (as used), ``blocks``,
    ``center``, ``segmentation_head``.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        encoder_reductions: Sequence[int],
        decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
        center: bool = False,
        out_channels: int = 2,
    ):
        super().__init__()
        encoder_channels = [int(c) for c in encoder_channels]
        encoder_reductions = [int(r) for r in encoder_reductions]
        if not encoder_channels or len(encoder_channels) != len(encoder_reductions):
            raise ValueError(
                f"encoder_channels {encoder_channels} and encoder_reductions {encoder_reductions} "
                f"must be non-empty lists of the same length (one entry per encoder map)"
            )
        if any(r < 1 for r in encoder_reductions):
            raise ValueError(f"encoder_reductions must be >= 1, got {encoder_reductions}")
        self.encoder_channels = tuple(encoder_channels)
        self.encoder_reductions = tuple(encoder_reductions)
        n = len(encoder_channels)
        head_channels = encoder_channels[-1]
        # Skips: every map but the deepest, deepest first, without the input-resolution ones.
        self.skip_indices = tuple(i for i in reversed(range(n - 1)) if encoder_reductions[i] > 1)
        stride = encoder_reductions[self.skip_indices[-1]] if self.skip_indices else encoder_reductions[-1]
        self.n_extra_blocks = math.ceil(math.log2(stride)) if stride > 1 else 0
        n_blocks = len(self.skip_indices) + self.n_extra_blocks
        self.decoder_channels = adapt_decoder_channels(decoder_channels, n_blocks)

        self.center = CenterBlock(head_channels, head_channels) if center else nn.Identity()
        in_chs = [head_channels] + list(self.decoder_channels[:-1])
        skip_chs = [encoder_channels[i] for i in self.skip_indices] + [0] * self.n_extra_blocks
        self.blocks = nn.ModuleList(
            DecoderBlock(i, s, o) for i, s, o in zip(in_chs, skip_chs, self.decoder_channels)
        )
        last = self.decoder_channels[-1] if n_blocks else head_channels
        self.segmentation_head = nn.Sequential(nn.Conv2d(last, out_channels, kernel_size=3, padding=1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """smp's ``initialize_decoder`` (center, blocks) and ``initialize_head`` (head)."""
        for m in list(self.center.modules()) + list(self.blocks.modules()):
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.segmentation_head.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def decode(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """The last block's output (before the segmentation head), e.g. (B, 16, H, W)."""
        if len(features) != len(self.encoder_channels):
            raise ValueError(
                f"UNetDecoder was built for {len(self.encoder_channels)} encoder maps "
                f"(channels {list(self.encoder_channels)}), got {len(features)}"
            )
        x = self.center(features[-1])
        for k, block in enumerate(self.blocks):
            x = block(x, features[self.skip_indices[k]] if k < len(self.skip_indices) else None)
        return x

    def forward(self, features: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        """Logits (B, out_channels, H, W) at ``size`` = (H, W), the input image's size."""
        logits = self.segmentation_head(self.decode(features))
        size = (int(size[0]), int(size[1]))
        if tuple(logits.shape[2:]) != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=True)
        return logits


def decoder_for(classifier, decoder_channels: Sequence[int] | None = None, center: bool | None = None,
                out_channels: int = 2) -> UNetDecoder:
    """The decoder for ``classifier`` (a ``Classifier``, or anything with ``.encoder``), sized
    from ``classifier.encoder.feature_info``.

    decoder_channels: None -> (256, 128, 64, 32, 16), adapted to the number of blocks.
    center: None -> the authors' choice: a CenterBlock for the VGG WSOL encoder (recognized by
        its ``conv6`` layer), none otherwise.
    """
    encoder = getattr(classifier, "encoder", classifier)
    info = encoder.feature_info
    if center is None:
        center = isinstance(getattr(encoder, "conv6", None), nn.Conv2d)
    return UNetDecoder(
        info.channels(),
        info.reduction(),
        DEFAULT_DECODER_CHANNELS if decoder_channels is None else decoder_channels,
        center=center,
        out_channels=out_channels,
    )


class TokenDecoder(UNetDecoder):
    """The U-Net decoder over a ViT's last tokens, the localization head of TrCAM-V (G) and DiPS
    (f_l, ``variant=ivc``): the patch tokens laid out on their token grid, concatenated with the
    class token broadcast over it, decoded with no skip connections (one x2 block per halving
    of the patch size, e.g. four for 16-pixel patches) to ``out_channels`` at the frame size.
    The papers give no design; this one is documented in docs/trcamv.md and docs/dips.md."""

    def __init__(self, embed_dim: int, patch: int, decoder_channels=(256, 128, 64, 32), out_channels: int = 2):
        super().__init__([2 * embed_dim], [int(patch)], decoder_channels, out_channels=out_channels)
        self.patch = int(patch)

    def forward(self, tokens: torch.Tensor, num_prefix: int, size: Sequence[int]) -> torch.Tensor:
        """``tokens`` (B, num_prefix + gh * gw, D) with the class token first -> logits (B, out, H, W)."""
        b = tokens.shape[0]
        h, w = size
        gh, gw = -(-h // self.patch), -(-w // self.patch)  # timm's dynamic_img_pad rounds up
        cls = tokens[:, 0]
        patches = tokens[:, num_prefix:].transpose(1, 2).reshape(b, -1, gh, gw)
        grid = torch.cat([patches, cls[:, :, None, None].expand(-1, -1, gh, gw)], dim=1)
        return super().forward([grid], (h, w))
