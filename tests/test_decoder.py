"""The F-CAM U-Net decoder (harness/models/decoder.py) over the harness's encoders.

Random-init encoders only (pretrained=None); everything runs on CPU in a few seconds.
"""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.models.classifier import Classifier
from harness.models.decoder import (
    CenterBlock,
    DecoderBlock,
    UNetDecoder,
    adapt_decoder_channels,
    decoder_for,
)


@functools.lru_cache(maxsize=None)
def _classifier(backbone: str, feature_index) -> Classifier:
    torch.manual_seed(0)
    return Classifier(backbone, 3, feature_index, None).eval()


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _plan(dec: UNetDecoder) -> list[tuple[int, int, int]]:
    return [(b.in_channels, b.skip_channels, b.out_channels) for b in dec.blocks]


# (backbone, feature_index, input sizes). The heavy WSOL encoders get one 224x224 case each
# at most; InceptionV3's 110x110 / 54x54 maps exercise the final resize of the logits.
SHAPE_CASES = [
    ("resnet18", 1, [(224, 224), (72, 88), (32, 32)]),
    ("resnet18", 2, [(224, 224), (72, 88), (32, 32)]),
    ("resnet18", None, [(224, 224), (72, 88), (32, 32), (33, 47)]),
    ("efficientnet_lite0", None, [(224, 224), (72, 88), (32, 32)]),
    ("resnet50-wsol", None, [(224, 224), (72, 88)]),
    ("vgg16-wsol", None, [(64, 64), (72, 88)]),
    ("inception_v3-wsol", None, [(224, 224), (72, 88)]),
]


@pytest.mark.parametrize("backbone,feature_index,sizes", SHAPE_CASES, ids=lambda v: str(v))
def test_logits_at_input_size(backbone, feature_index, sizes):
    clf = _classifier(backbone, feature_index)
    torch.manual_seed(0)
    dec = decoder_for(clf).eval()
    assert isinstance(dec.center, CenterBlock) == (backbone == "vgg16-wsol")  # the authors' choice
    for h, w in sizes:
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            feats = clf.features(x)
            out = dec(feats, (h, w))
            assert out.shape == (2, 2, h, w), (backbone, feature_index, (h, w))
            assert torch.isfinite(out).all()
            if (h, w) == (224, 224) and backbone != "inception_v3-wsol":
                # strides are powers of two: the blocks alone reach the input resolution,
                # the head's bilinear resize is not needed
                assert dec.decode(feats).shape[2:] == (224, 224)


def test_authors_layouts_and_parameter_counts():
    """ResNet50 / VGG16 (+center) / InceptionV3 plans and #params against the authors' decoder
    and F-CAM Table A.2 (#PDEC ~9, ~23.1, ~5.7 M)."""
    r50 = decoder_for(_classifier("resnet50-wsol", None))
    assert _plan(r50) == [(2048, 1024, 256), (256, 512, 128), (128, 256, 64), (64, 64, 32), (32, 0, 16)]
    assert isinstance(r50.center, nn.Identity)
    n = _n_params(r50)
    print(f"resnet50-wsol decoder: {n:,} parameters")
    assert n == 9_013_218
    assert abs(n - 9.0e6) / 9.0e6 < 0.01
    # the authors' encoder lists the 3-channel input first (stride 1): dropped, same decoder
    authors = UNetDecoder([3, 64, 256, 512, 1024, 2048], [1, 2, 4, 8, 8, 8])
    assert _plan(authors) == _plan(r50) and _n_params(authors) == n
    assert r50.state_dict().keys() == authors.state_dict().keys()

    vgg = decoder_for(_classifier("vgg16-wsol", None))
    assert _plan(vgg) == [(1024, 256, 256), (256, 128, 128), (128, 0, 64)]
    assert isinstance(vgg.center, CenterBlock) and vgg.decoder_channels == (256, 128, 64)
    assert _n_params(vgg) == 23_120_770 and abs(_n_params(vgg) - 23.1e6) / 23.1e6 < 0.01
    keys = vgg.state_dict().keys()
    assert {"center.0.0.weight", "center.1.1.running_mean", "blocks.0.conv1.0.weight",
            "blocks.2.conv2.1.bias", "segmentation_head.0.weight", "segmentation_head.0.bias"} <= keys
    assert "blocks.0.conv1.0.bias" not in keys  # convs before BN have no bias (smp)
    assert _n_params(decoder_for(_classifier("vgg16-wsol", None), center=False)) == 23_120_770 - 18_878_464

    inc = decoder_for(_classifier("inception_v3-wsol", None))
    assert _plan(inc) == [(1024, 768, 256), (256, 288, 128), (128, 192, 64), (64, 64, 32), (32, 0, 16)]
    assert _n_params(inc) == 5_769_186
    # the authors' InceptionV3 encoder has an 80-channel stride-4 map instead of our 192
    assert _n_params(UNetDecoder([3, 64, 80, 288, 768, 1024], [1, 2, 4, 8, 8, 8])) == 5_704_674
    assert abs(_n_params(inc) - 5.7e6) / 5.7e6 < 0.02


def test_block_count_follows_strides():
    r18_2 = decoder_for(_classifier("resnet18", 2))  # strides 2, 4, 8
    assert r18_2.skip_indices == (1, 0) and r18_2.n_extra_blocks == 1
    assert _plan(r18_2) == [(128, 64, 256), (256, 64, 128), (128, 0, 64)]
    r18_1 = decoder_for(_classifier("resnet18", 1), decoder_channels=(32,))  # extended by halving
    assert _plan(r18_1) == [(64, 64, 32), (32, 0, 16)]
    # first map at stride 4 (ConvNeXt/Swin-like): 3 skips + 2 blocks without skip
    dec = UNetDecoder([8, 8, 8, 8], [4, 8, 16, 32])
    assert dec.skip_indices == (2, 1, 0) and dec.n_extra_blocks == 2 and len(dec.blocks) == 5
    feats = [torch.randn(1, 8, 64 // r, 64 // r) for r in (4, 8, 16, 32)]
    assert dec.decode(feats).shape == (1, 16, 64, 64)
    # a lone stride-1 map is the head: no block, the segmentation head reads it directly
    lone = UNetDecoder([5], [1]).eval()
    assert len(lone.blocks) == 0
    assert lone([torch.randn(1, 5, 9, 7)], (9, 7)).shape == (1, 2, 9, 7)
    with pytest.raises(ValueError, match="built for 4 encoder maps"):
        dec(feats[1:], (64, 64))


def test_decoder_channels_adaptation():
    assert adapt_decoder_channels((256, 128, 64, 32, 16), 3) == (256, 128, 64)
    assert adapt_decoder_channels((256, 128, 64, 32, 16), 5) == (256, 128, 64, 32, 16)
    assert adapt_decoder_channels((64,), 5) == (64, 32, 16, 16, 16)
    assert adapt_decoder_channels((256, 128, 64, 32, 16), 7) == (256, 128, 64, 32, 16, 16, 16)
    assert adapt_decoder_channels((8,), 3) == (8, 8, 8)  # already under the minimum: kept
    assert adapt_decoder_channels((), 0) == ()
    with pytest.raises(ValueError):
        adapt_decoder_channels((), 2)


def _manual_block(block: DecoderBlock, x, skip):
    """The authors' DecoderBlock written out with torch ops and the block's own convs."""
    up = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest x2
    if skip is not None:
        if up.shape[2:] != skip.shape[2:]:
            up = F.interpolate(up, size=skip.shape[2:], mode="bilinear", align_corners=True)
        up = torch.cat([up, skip], dim=1)
    conv1, bn1, relu1 = block.conv1
    conv2, bn2, relu2 = block.conv2
    assert conv1.kernel_size == conv2.kernel_size == (3, 3) and conv1.bias is None
    assert isinstance(bn1, nn.BatchNorm2d) and isinstance(relu2, nn.ReLU)
    y = F.relu(bn1(F.conv2d(up, conv1.weight, padding=1)))
    return F.relu(bn2(F.conv2d(y, conv2.weight, padding=1)))


def test_decoder_block_semantics():
    torch.manual_seed(0)
    block = DecoderBlock(3, 2, 4).eval()
    for m in block.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 2), m.bias.data.uniform_(-1, 1)
    x = torch.randn(2, 3, 3, 4)
    with torch.no_grad():
        for skip_hw in [(5, 7), (6, 8)]:  # resized after the x2 / already at the skip's size
            skip = torch.randn(2, 2, *skip_hw)
            out = block(x, skip)
            assert out.shape == (2, 4, *skip_hw)
            torch.testing.assert_close(out, _manual_block(block, x, skip))
        # concat order matters: the upsampled input first, then the skip
        swapped = torch.cat([skip, F.interpolate(x, scale_factor=2, mode="nearest")], 1)
        assert not torch.allclose(block.conv2(block.conv1(swapped)), out)
        # no skip: nearest x2 only, no resize
        lone = DecoderBlock(3, 0, 4).eval()
        assert lone(x).shape == (2, 4, 6, 8)
        torch.testing.assert_close(lone(x), _manual_block(lone, x, None))


def test_decoder_forward_composition_and_unused_stride1_map():
    torch.manual_seed(0)
    dec = UNetDecoder([3, 4, 5, 6, 7], [1, 2, 4, 8, 8], decoder_channels=(8, 8, 8, 8)).eval()
    assert dec.skip_indices == (3, 2, 1) and dec.n_extra_blocks == 1
    h, w = 21, 29
    feats = [
        torch.full((1, 3, h, w), float("nan")),  # the input-resolution map: never read
        torch.randn(1, 4, 11, 15),
        torch.randn(1, 5, 6, 8),
        torch.randn(1, 6, 3, 4),
        torch.randn(1, 7, 3, 4),
    ]
    with torch.no_grad():
        out = dec(feats, (h, w))
        assert out.shape == (1, 2, h, w) and torch.isfinite(out).all()
        y = feats[4]
        for block, skip in zip(dec.blocks, [feats[3], feats[2], feats[1], None]):
            y = _manual_block(block, y, skip)
        assert y.shape[2:] == (22, 30)
        y = dec.segmentation_head[0](y)
        expected = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=True)
        torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("backbone,feature_index", [("resnet18", 2), ("vgg16-wsol", None)])
def test_gradients_reach_decoder_only(backbone, feature_index):
    torch.manual_seed(0)
    clf = Classifier(backbone, 3, feature_index, None).eval()  # its params still require grad
    dec = decoder_for(clf).train()
    x = torch.randn(2, 3, 32, 32)
    feats = [f.detach() for f in clf.features(x)]
    out = dec(feats, (32, 32))
    (out * torch.randn_like(out)).sum().backward()
    for name, p in dec.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in clf.parameters())
    # the decoder does not detach by itself: undetached features would train the encoder
    dec.zero_grad()
    out = dec(clf.features(x), (32, 32))
    out.sum().backward()
    assert any(p.grad is not None for p in clf.encoder.parameters())


def test_initialization_as_smp():
    dec = UNetDecoder([16, 24], [2, 4])
    head = dec.segmentation_head[0]
    assert head.kernel_size == (3, 3) and torch.all(head.bias == 0)
    for m in dec.blocks.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
