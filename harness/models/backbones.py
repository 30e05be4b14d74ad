"""Classifier encoders: any timm model cut at a feature stage, and the WSOL variants of
ResNet, VGG and InceptionV3 whose last map is 28x28 for a 224x224 input (Choe et al.,
"Evaluating Weakly Supervised Object Localization Methods Right", CVPR 2020,
``wsol/{resnet,vgg,inception}.py`` with ``large_feature_map=True``; the encoders of F-CAM,
TCAM and CoLo-CAM).

``create_encoder(backbone, feature_index, pretrained)`` returns a module whose ``forward(x)``
gives the list of feature maps of stages ``0..feature_index`` (shallow to deep; the last is the
CAM layer) and whose ``feature_info.channels()`` / ``feature_info.reduction()`` give each map's
channels and nominal stride. ``encoder.normalization`` is the ``(mean, std)`` the weights expect.
See docs/backbones.md.
"""
from __future__ import annotations

import difflib
import operator
import os
from collections import OrderedDict

import timm
import torch
from timm.models import FeatureInfo
from torch import nn

from harness.errors import HarnessError
from harness.models.pretrained import NAMED_WEIGHTS, load_checkpoint, load_state_dict_checked

WSOL_SUFFIX = "-wsol"
IMAGENET_NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# The three architectures of the WSOL papers; any timm ResNet / VGG works the same way
# (resnet18-wsol, resnet101-wsol, vgg16_bn-wsol, ...).
WSOL_VARIANTS = {
    "resnet50-wsol": "layer3 and layer4 first-block strides 2 -> 1 (no dilation); 2048 ch at stride 8",
    "vgg16-wsol": "pool4 and pool5 removed, conv6 3x3 512->1024 + ReLU added; 1024 ch at stride 8",
    "inception_v3-wsol": "Choe et al.'s InceptionCam trunk, Mixed_6a at stride 1, SPG_A3 convs to 1024 ch at stride 8",
}


class FeatureEncoder(nn.Module):
    """Runs named submodules stage by stage and returns each stage's output.

    The submodules keep the names they have in the timm model, so timm / torchvision
    state_dicts (and timm pretrained tags) load into it unchanged.
    """

    def __init__(self, modules: "OrderedDict[str, nn.Module]", stages: list[list[str]], info: list[dict],
                 new_layers: tuple[str, ...] = ()):
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)
        self.stages = [list(s) for s in stages]  # dotted submodule names, per stage
        self.feature_info = FeatureInfo(info, out_indices=tuple(range(len(info))))
        self.new_layers = tuple(n for n in new_layers if n in modules)  # absent from ImageNet weights

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for names in self.stages:
            for name in names:
                x = self.get_submodule(name)(x)
            feats.append(x)
        return feats


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def create_encoder(backbone: str, feature_index: int | None = None, pretrained=None) -> nn.Module:
    """Build the encoder of ``backbone`` returning the maps of stages ``0..feature_index``.

    backbone: a timm model name, optionally with a pretrained tag (``resnet18``,
        ``resnet50.tv_in1k``), or a WSOL variant ``<timm ResNet/VGG/InceptionV3 name>-wsol``
        (``resnet50-wsol``, ``vgg16-wsol``, ``inception_v3-wsol``, ``resnet50.tv_in1k-wsol``).
    feature_index: the last stage returned (its map gives the CAM). None: the deepest stage
        (for the WSOL variants, their 28x28 CAM layer).
    pretrained: None/False: random init. True: the timm pretrained tag, from the local cache
        only (offline, a missing cache gives a HarnessError saying how to supply the weights).
        A path: a state_dict checkpoint. A name in ``NAMED_WEIGHTS`` (``"efficientnet-lite0-pkg"``).
    """
    if not isinstance(backbone, str) or not backbone.strip():
        raise HarnessError(f"classifier.backbone must be a model name, got {backbone!r}")
    if feature_index is not None:
        given = feature_index
        try:
            feature_index = -1 if isinstance(given, bool) else operator.index(given)
        except TypeError:
            feature_index = -1
        if feature_index < 0:
            raise HarnessError(f"classifier.feature_index must be None or an int >= 0, got {given!r}")
    kind, value = _pretrained_kind(pretrained)
    if backbone.endswith(WSOL_SUFFIX):
        encoder = _create_wsol_encoder(backbone, feature_index, kind, value)
    else:
        encoder = _create_timm_encoder(backbone, feature_index, kind, value)
    encoder.normalization = expected_normalization(backbone, pretrained)
    return encoder


def expected_normalization(backbone: str, pretrained=None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` on [0, 1] RGB that the weights chosen by ``pretrained`` expect.

    Named weights: their own (``efficientnet-lite0-pkg``: 0.5/0.5). True: the timm tag's
    pretrained_cfg. Random init or a checkpoint: ImageNet mean/std (the harness default; a
    checkpoint is assumed to have been trained with it).
    """
    kind, value = _pretrained_kind(pretrained)
    if kind == "named":
        spec = NAMED_WEIGHTS[value]
        return tuple(spec.mean), tuple(spec.std)
    if kind == "tag":
        name = backbone[: -len(WSOL_SUFFIX)] if backbone.endswith(WSOL_SUFFIX) else backbone
        try:
            cfg = timm.models.get_pretrained_cfg(name)
        except Exception:
            cfg = None
        if cfg is not None and cfg.mean and cfg.std:
            return tuple(cfg.mean), tuple(cfg.std)
    return IMAGENET_NORMALIZATION


# ---------------------------------------------------------------------------------------------
# Helpers shared by both kinds of encoder
# ---------------------------------------------------------------------------------------------


def _pretrained_kind(pretrained):
    """-> ("none", None) | ("tag", None) | ("named", name) | ("path", path)."""
    if pretrained is None or pretrained is False:
        return "none", None
    if pretrained is True:
        return "tag", None
    if isinstance(pretrained, os.PathLike):
        pretrained = os.fspath(pretrained)
    if isinstance(pretrained, str) and pretrained.strip():
        if pretrained in NAMED_WEIGHTS:
            return "named", pretrained
        return "path", pretrained
    raise HarnessError(
        f"classifier.pretrained={pretrained!r}: use None/False (random init), True (timm "
        f"pretrained tag), a checkpoint path, or one of {sorted(NAMED_WEIGHTS)}"
    )


def _check_timm_name(name: str, full: str) -> str:
    """The architecture part of a timm name (tag stripped), or a HarnessError with suggestions."""
    arch = name.split(".")[0]
    if timm.is_model(arch):
        return arch
    candidates = timm.list_models() + list(WSOL_VARIANTS)
    close = difflib.get_close_matches(full, candidates, n=4, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    where = f" before {WSOL_SUFFIX!r}" if full.endswith(WSOL_SUFFIX) else ""
    raise HarnessError(
        f"unknown backbone {full!r}: not a timm model name{where}.{hint} "
        f"Use a timm name (timm.list_models(), e.g. resnet18, resnet50, vgg16, inception_v3, "
        f"efficientnet_lite0) or a WSOL variant ({', '.join(WSOL_VARIANTS)})"
    )


def _pretrained_cfg(name: str, full: str):
    """timm's pretrained config of ``name`` (its tag or the default one)."""
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError as exc:  # "Invalid pretrained tag (x) for arch."
        arch = name.split(".")[0]
        raise HarnessError(
            f"backbone {full!r}: unknown pretrained tag {name.partition('.')[2]!r}; timm knows "
            f"{timm.list_pretrained(arch + '.*') or 'no tags for ' + arch}"
        ) from exc
    if cfg is None or not (cfg.file or cfg.hf_hub_id or cfg.url or cfg.state_dict):
        raise HarnessError(
            f"backbone {full!r}: timm has no pretrained weights for {name}; use "
            f"classifier.pretrained=None or a checkpoint path"
        )
    return cfg


def cached_weight_file(name: str, full: str, option: str = "classifier.pretrained") -> str:
    """The local file holding the weights of timm tag ``name``: never touches the network.

    Looked up where timm itself would put them: the Hugging Face hub cache ($HF_HOME/hub,
    or $HF_HUB_CACHE) for tags hosted there, else torch.hub's $TORCH_HOME/hub/checkpoints.
    """
    cfg = _pretrained_cfg(name, full)
    tag = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else name
    if cfg.file and os.path.isfile(cfg.file):
        return cfg.file
    searched = []
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.constants import HF_HUB_CACHE

        repo, _, revision = cfg.hf_hub_id.partition("@")
        filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in filenames:
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str) and os.path.isfile(found):
                return found
        searched.append(
            f"the Hugging Face cache {HF_HUB_CACHE}/models--{repo.replace('/', '--')} ({' or '.join(filenames)}; "
            f"set HF_HOME or HF_HUB_CACHE to use another cache)"
        )
    if cfg.url:
        from urllib.parse import urlparse

        path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(cfg.url).path))
        if os.path.isfile(path):
            return path
        searched.append(f"{path} (set TORCH_HOME to use another folder)")
    raise HarnessError(
        f"the pretrained weights of backbone {full!r} (timm tag {tag}) are not cached on this machine; "
        f"{option}=True never downloads. Looked in " + " and ".join(searched) + ". "
        f"Supply them: on a machine with internet run python -c \"import timm; "
        f"timm.create_model('{tag}', pretrained=True)\" and copy its cache folder over "
        f"(~/.cache/huggingface/hub/models--{(cfg.hf_hub_id or 'timm/' + tag).partition('@')[0].replace('/', '--')}), "
        f"or torch.save that model's state_dict and pass {option}=/path/to/checkpoint.pth. "
        f"See docs/backbones.md"
    )


def _timm_create(name: str, full: str, from_tag: bool, **kwargs) -> nn.Module:
    """timm.create_model with harness errors; ``from_tag`` loads the tag's cached weights only."""
    weights = None
    if from_tag:
        weights = cached_weight_file(name, full)
        kwargs["pretrained_cfg_overlay"] = dict(file=weights)
    try:
        return timm.create_model(name, pretrained=from_tag, **kwargs)
    except (IndexError, AssertionError) as exc:
        if "out_indices" in kwargs:
            n = len(timm.create_model(name.split(".")[0], features_only=True).feature_info.channels())
            raise HarnessError(
                f"backbone {full!r} has no feature stage {max(kwargs['out_indices'])}: it has stages "
                f"0..{n - 1}; set classifier.feature_index to at most {n - 1}"
            ) from exc
        raise
    except Exception as exc:
        if isinstance(exc, RuntimeError) and "Invalid pretrained tag" in str(exc):
            _pretrained_cfg(name, full)  # raises the HarnessError listing the known tags
        if from_tag:
            raise HarnessError(
                f"the cached weights of backbone {full!r} at {weights} could not be loaded "
                f"({type(exc).__name__}: {str(exc)[:300]}); delete that file and supply it again "
                f"(docs/backbones.md)"
            ) from exc
        raise


# ---------------------------------------------------------------------------------------------
# Plain timm encoders
# ---------------------------------------------------------------------------------------------


def _create_timm_encoder(backbone: str, feature_index, kind: str, value) -> nn.Module:
    arch = _check_timm_name(backbone, backbone)
    kwargs: dict = {"features_only": True}
    if feature_index is not None:
        kwargs["out_indices"] = tuple(range(feature_index + 1))
    if kind == "named":
        spec = NAMED_WEIGHTS[value]
        if arch not in spec.backbones:
            raise HarnessError(
                f"classifier.pretrained={value!r} holds weights for {list(spec.backbones)}, not for "
                f"backbone {backbone!r}: set classifier.backbone={spec.backbones[0]} or choose other weights"
            )
        kwargs.update(spec.model_kwargs)
    encoder = _timm_create(backbone, backbone, kind == "tag", **kwargs)
    if kind == "named":
        load_state_dict_checked(encoder, NAMED_WEIGHTS[value].state_dict(), f"weights {value!r}")
    elif kind == "path":
        load_checkpoint(encoder, value)
    return encoder


# ---------------------------------------------------------------------------------------------
# WSOL variants
# ---------------------------------------------------------------------------------------------


# Index of the CAM layer (the last stage) of each WSOL family.
_WSOL_LAST_STAGE = {"timm.models.resnet": 4, "timm.models.vgg": 3, "timm.models.inception_v3": 4}


def _create_wsol_encoder(backbone: str, feature_index, kind: str, value) -> nn.Module:
    from timm.models.inception_v3 import InceptionV3
    from timm.models.resnet import ResNet
    from timm.models.vgg import VGG

    base = backbone[: -len(WSOL_SUFFIX)]
    arch = _check_timm_name(base, backbone)
    module = timm.models.model_entrypoint(arch).__module__
    builders = {
        "timm.models.resnet": _resnet_wsol,
        "timm.models.vgg": _vgg_wsol,
        "timm.models.inception_v3": _inception_wsol,
    }
    if module not in builders:
        raise HarnessError(
            f"backbone {backbone!r}: there is no WSOL variant of {arch} ({module}). WSOL variants "
            f"exist for timm ResNets (resnet18/34/50/101/152[d]), VGGs (vgg11..vgg19[_bn]) and "
            f"inception_v3: {', '.join(WSOL_VARIANTS)}; or drop {WSOL_SUFFIX!r} to use {arch} as is"
        )
    if kind == "named":
        raise HarnessError(
            f"classifier.pretrained={value!r} holds weights for {list(NAMED_WEIGHTS[value].backbones)}, "
            f"not for the WSOL variant {backbone!r}"
        )
    last = _WSOL_LAST_STAGE[module]
    if feature_index is None:
        feature_index = last
    if feature_index > last:
        raise HarnessError(
            f"backbone {backbone!r} has no feature stage {feature_index}: it has stages 0..{last} "
            f"(the CAM layer is {last}); set classifier.feature_index to at most {last} or leave it unset"
        )
    extra = {}
    if module == "timm.models.vgg" and kind != "tag":
        # The encoder drops VGG's 120M-parameter fc6/fc7/fc8 head; without pretrained weights to
        # load into it, build it 1 unit wide instead of initializing it for nothing.
        extra = dict(mlp_ratio=1 / 4096, num_classes=0)
    model = _timm_create(base, backbone, kind == "tag", **extra)
    expected = {"timm.models.resnet": ResNet, "timm.models.vgg": VGG, "timm.models.inception_v3": InceptionV3}[module]
    if not isinstance(model, expected):
        raise HarnessError(f"backbone {backbone!r}: {arch} is not a timm {expected.__name__}; no WSOL variant")
    stages, modules, info, new_layers = builders[module](model, backbone)
    assert len(stages) == last + 1
    stages, info = stages[: feature_index + 1], info[: feature_index + 1]
    used = {name.split(".")[0] for stage in stages for name in stage}
    kept = OrderedDict()
    for name, mod in modules.items():
        if name not in used:
            continue
        if name == "features":  # VGG: keep only the layers of the kept stages, under their timm indices
            wanted = {n.split(".")[1] for stage in stages for n in stage if n.startswith("features.")}
            mod = nn.Sequential(OrderedDict((k, m) for k, m in mod._modules.items() if k in wanted))
        kept[name] = mod
    encoder = FeatureEncoder(kept, stages, info, new_layers)
    if kind == "path":
        load_checkpoint(encoder, value, allowed_missing=encoder.new_layers)
    return encoder


def _no_stride(module: nn.Module, where: str, backbone: str) -> None:
    """Make a residual block keep its input resolution: strided convs -> stride 1, strided
    poolings (anti-aliasing, ResNet-D avg-pool shortcut) -> identity. No dilation, as Choe et al."""
    for name, child in list(module.named_children()):
        stride = getattr(child, "stride", 1)
        strided = any(s > 1 for s in (stride if isinstance(stride, (tuple, list)) else (stride,)))
        if isinstance(child, nn.Conv2d):
            if strided:
                child.stride = (1, 1)
        elif strided and isinstance(child, (nn.AvgPool2d, nn.MaxPool2d)):
            setattr(module, name, nn.Identity())
        elif strided and not any(True for _ in child.parameters()):
            setattr(module, name, nn.Identity())  # e.g. BlurPool2d (no learned weights)
        elif strided:
            raise HarnessError(
                f"backbone {backbone!r}: cannot remove the stride of {where}.{name} ({type(child).__name__})"
            )
        else:
            _no_stride(child, f"{where}.{name}", backbone)


def _resnet_wsol(model: nn.Module, backbone: str):
    """Choe et al. ``ResNetCam(large_feature_map=True)``: layer3 and layer4 at stride 1."""
    for layer in ("layer3", "layer4"):
        _no_stride(getattr(model, layer)[0], f"{layer}.0", backbone)
    names = ["conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    modules = OrderedDict((n, getattr(model, n)) for n in names)
    stages = [["conv1", "bn1", "act1"], ["maxpool", "layer1"], ["layer2"], ["layer3"], ["layer4"]]
    chs = [fi["num_chs"] for fi in model.feature_info]
    taps = ("act1", "layer1", "layer2", "layer3", "layer4")
    info = [dict(num_chs=c, reduction=r, module=m) for c, r, m in zip(chs, (2, 4, 8, 8, 8), taps)]
    return stages, modules, info, ()


def _vgg_wsol(model: nn.Module, backbone: str):
    """Choe et al. ``vgg16(large_feature_map=True)`` ("28x28" config): the first three max-pools
    only, then ``conv6`` (3x3, 512 -> 1024) + ReLU, He-initialized as in their code."""
    features = model.features
    pools = [int(k) for k, m in features._modules.items() if isinstance(m, nn.MaxPool2d)]
    if len(pools) != 5:
        raise HarnessError(f"backbone {backbone!r}: expected 5 max-pools in the VGG trunk, found {len(pools)}")
    features[pools[3]] = nn.Identity()  # pool4: conv5 runs at stride 8
    convs = [m for m in features if isinstance(m, nn.Conv2d)]
    conv6 = nn.Conv2d(convs[-1].out_channels, 1024, kernel_size=3, padding=1)
    nn.init.kaiming_normal_(conv6.weight, mode="fan_out", nonlinearity="relu")
    nn.init.zeros_(conv6.bias)
    modules = OrderedDict(features=features, conv6=conv6, act6=nn.ReLU(inplace=True))

    def idx(a, b):
        return [f"features.{i}" for i in range(a, b)]

    stages = [
        idx(0, pools[0]),
        idx(pools[0], pools[1]),
        idx(pools[1], pools[2]),
        idx(pools[2], pools[4]) + ["conv6", "act6"],
    ]

    def chs(end):
        return [m for m in list(features)[:end] if isinstance(m, nn.Conv2d)][-1].out_channels

    info = [
        dict(num_chs=chs(pools[0]), reduction=1, module=f"features.{pools[0] - 1}"),
        dict(num_chs=chs(pools[1]), reduction=2, module=f"features.{pools[1] - 1}"),
        dict(num_chs=chs(pools[2]), reduction=4, module=f"features.{pools[2] - 1}"),
        dict(num_chs=1024, reduction=8, module="act6"),
    ]
    return stages, modules, info, ("conv6",)


class _InceptionBStride1(nn.Module):
    """Mixed_6a of Choe et al.'s InceptionCam: InceptionB with stride 1 and padding 1 (its
    max-pool branch too), so the 28x28 map of Mixed_5d is kept. Same tensor names as timm's."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.branch3x3 = block.branch3x3
        self.branch3x3dbl_1 = block.branch3x3dbl_1
        self.branch3x3dbl_2 = block.branch3x3dbl_2
        self.branch3x3dbl_3 = block.branch3x3dbl_3
        for conv in (self.branch3x3.conv, self.branch3x3dbl_3.conv):
            conv.stride, conv.padding = (1, 1), (1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = nn.functional.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([b3, bd, bp], 1)


def _inception_wsol(model: nn.Module, backbone: str):
    """Choe et al. ``InceptionCam(large_feature_map=True)``: Conv2d_1a padded, ceil-mode padded
    max-pools, no pool before Mixed_6a, Mixed_6a at stride 1, Mixed_7* dropped, then
    ``SPG_A3_1b`` / ``SPG_A3_2b`` (3x3 convs 768 -> 1024 -> 1024 + ReLU, dropout 0.5 before each,
    Xavier-initialized). Their 1x1 ``SPG_A4`` class conv + GAP equals the harness's GAP + linear head."""
    model.Conv2d_1a_3x3.conv.padding = (1, 1)
    model.Pool1 = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    model.Pool2 = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    model.Mixed_6a = _InceptionBStride1(model.Mixed_6a)
    spg = []
    for c_in in (768, 1024):
        conv = nn.Conv2d(c_in, 1024, kernel_size=3, padding=1)
        nn.init.xavier_uniform_(conv.weight)
        nn.init.zeros_(conv.bias)
        spg.append(nn.Sequential(conv, nn.ReLU(inplace=True)))
    trunk = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Pool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "Pool2",
             "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"]
    modules = OrderedDict((n, getattr(model, n)) for n in trunk)
    modules.update(SPG_A3_drop1=nn.Dropout(0.5), SPG_A3_1b=spg[0], SPG_A3_drop2=nn.Dropout(0.5), SPG_A3_2b=spg[1])
    head = ["SPG_A3_drop1", "SPG_A3_1b", "SPG_A3_drop2", "SPG_A3_2b"]
    stages = [trunk[0:3], trunk[3:6], trunk[6:10], trunk[10:15], head]
    info = [
        dict(num_chs=64, reduction=2, module="Conv2d_2b_3x3"),
        dict(num_chs=192, reduction=4, module="Conv2d_4a_3x3"),
        dict(num_chs=288, reduction=8, module="Mixed_5d"),
        dict(num_chs=768, reduction=8, module="Mixed_6e"),
        dict(num_chs=1024, reduction=8, module="SPG_A3_2b"),
    ]
    return stages, modules, info, ("SPG_A3_1b", "SPG_A3_2b")
