"""The CAM-source interface: ``maps, logits = source(model, images, classes)``.

A source turns a trained :class:`harness.models.classifier.Classifier` into localization maps
(B, h, w) at feature resolution, before upsampling and normalization (which the evaluation does
the same way for every source, `harness.inference.normalized_maps`).

Two levels:

- :meth:`CamSource.raw` gives the method's weighted sum *before* ReLU (the "raw" map);
- ``source(...)`` applies the ReLU of the method's definition (``source.relu``: off for CAM,
  on for the gradient family and Score-CAM) and is what the harness calls.

:class:`GradientCam` is the base of the gradient family (Grad-CAM, Grad-CAM++, XGrad-CAM,
LayerCAM, ...). It is torch-native, batched and hook-free: the encoder runs once under
``no_grad``, then the head (global average pooling + ``model.head``) is recomputed from the
detached last feature map ``A`` and ``dy_c/dA`` for every image's own class comes from a single
``torch.autograd.grad`` of the sum of the per-image target logits. Because the head's only input
is ``A``, this is exactly the gradient a hook on the CAM layer would see after a backward
through the whole network, at a fraction of the cost, and it works when the classifier is
frozen (``requires_grad=False``), in eval mode and under ``torch.no_grad``/``inference_mode``.
Nothing is registered on, or written to, the model (no hooks, no ``.grad``, no mode switch):
sources run the model as they get it, so put it in eval mode first (the harness does). On CPU
the images are forwarded in channels-last layout (faster, same features; ``channels_last=False``
turns it off).

The model is duck-typed: ``model(images) -> (logits (B, C), last features (B, K, h, w))`` and
``model.head`` (a module over the (B, K) global-average-pooled features).
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import Tensor

from harness.kernels import weighted_channel_sum as _kernel_sum


def weighted_channel_sum(weights: Tensor, feats: Tensor, relu_weights: bool = False) -> Tensor:
    """The kernel's argument order is (A, w); on CUDA it picks Triton, falls back to torch."""
    return _kernel_sum(feats, weights, relu=False, relu_weights=relu_weights).to(feats.dtype)

VARIANTS = ("gradcam", "torchcam")
"""``gradcam``: the common definitions, as in pytorch-grad-cam (jacobgil, grad-cam 1.5.7);
``torchcam``: torchcam as vendored by the F-CAM family (``dlib/cams``), to reproduce the
baseline numbers of F-CAM / TCAM / CoLo-CAM. See docs/cam-baselines.md."""


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}: use one of {', '.join(map(repr, VARIANTS))}")
    return variant


class CamSource(ABC):
    """A CAM source. Subclasses implement :meth:`raw` and set the class attributes."""

    name: str = ""
    needs_grad: bool = False  # the harness runs the source with autograd enabled
    relu: bool = False  # the method's definition applies ReLU to the weighted sum

    def __init__(self, variant: str = "gradcam", channels_last: bool | None = None):
        """``variant``: ``"gradcam"`` (common definitions) or ``"torchcam"`` (the F-CAM family's
        reference code; a no-op for the methods where both agree). ``channels_last``: the memory
        layout of the images the source forwards: channels-last convolutions are 1.4-1.6x faster
        on CPU (oneDNN) with the same features; None = channels-last on CPU, the layout as given
        on other devices; False for a backbone that cannot take channels-last tensors."""
        self.variant = check_variant(variant)
        self.channels_last = channels_last

    def model_input(self, images: Tensor) -> Tensor:
        """``images`` in the memory layout the source forwards (values unchanged)."""
        cl = self.channels_last if self.channels_last is not None else images.device.type == "cpu"
        return images.contiguous(memory_format=torch.channels_last) if cl and images.dim() == 4 else images

    @abstractmethod
    def raw(self, model, images: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
        """``(raw maps (B, h, w) before ReLU and normalization, logits (B, C))`` for one class
        per image (``classes`` (B,) long)."""

    def __call__(self, model, images: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(maps (B, h, w), logits (B, C))``: the raw maps, ReLU'd if ``self.relu``.
        Neither carries an autograd graph, whatever the grad mode and the parameters'
        ``requires_grad`` (a graph would keep the encoder's activations alive): a source is
        read, never trained through."""
        raw, logits = self.raw(model, images, classes)
        return (torch.relu(raw) if self.relu else raw), logits

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


# ----------------------------------------------------------------------------- the plugin contract


def build_source(name: str, options=None):
    """The registered CAM source ``name``, built as ``factory(**options)``. This is the one way
    the harness builds a source (a CAM method with ``method.options``, the F-CAM family's
    pseudo-labels): options the factory does not take, a factory that raises and a factory
    that returns something other than a callable are errors naming the source and its
    distribution."""
    from harness.errors import HarnessError
    from harness.registry import registry

    entry = registry().get("cam_source", name)
    who = f"CAM source {entry.name!r} ({entry.distribution})"
    options = dict(options or {})
    valid = entry.option_defaults()
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise HarnessError(f"{who} has no option {', '.join(unknown)}; its options: "
                           f"{', '.join(f'{k}={v!r}' for k, v in valid.items()) or '(none)'}")
    try:
        source = entry.factory(**options)
    except HarnessError:
        raise
    except Exception as exc:  # a third-party factory may raise anything
        raise HarnessError(f"{who} failed to build with options {options}: {type(exc).__name__}: {exc}") from exc
    if not callable(source):
        raise HarnessError(f"{who}: its factory returned a {type(source).__name__}, not a callable "
                           f"source(model, images, classes) -> (maps, logits)")
    return source


def run_source(source, model, images: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
    """``source(model, images, classes)`` with autograd on when the source needs it, and its
    result checked against the contract: ``(maps (B, h, w), logits (B, C))``, so a source that
    returns something else is named instead of failing deep in the evaluation."""
    from harness.errors import HarnessError

    with torch.set_grad_enabled(bool(getattr(source, "needs_grad", False))):
        out = source(model, images, classes)
    name = getattr(source, "name", "") or type(source).__name__
    b = images.shape[0]
    if not (isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, Tensor) for t in out)):
        raise HarnessError(f"CAM source {name!r} returned {type(out).__name__}"
                           + (f" of {len(out)}" if isinstance(out, (tuple, list)) else "")
                           + "; a source returns the tuple (maps (B, h, w), logits (B, C))")
    maps, logits = out
    if maps.dim() != 3 or maps.shape[0] != b or logits.dim() != 2 or logits.shape[0] != b:
        raise HarnessError(f"CAM source {name!r} returned maps {tuple(maps.shape)} and logits {tuple(logits.shape)} "
                           f"for {b} images; expected maps (B, h, w) and logits (B, C)")
    return maps.detach(), logits.detach()


# ----------------------------------------------------------------------------- helpers


def as_classes(classes, batch: int, device, num_classes: int) -> Tensor:
    """``classes`` as a (B,) long tensor on ``device``: one class index per image, each in
    ``[0, num_classes)`` (``num_classes``: the logits' second dimension).

    Every source checks through here because indexing hides the mistakes: a negative index
    silently explains another class (``weight[-1]`` is the last class), a float is truncated
    (281.9 -> 281) and a bool reads as 0 or 1. Raises TypeError for a non-integer index and
    ValueError for a wrong count or an index out of range."""
    if isinstance(classes, (list, tuple)):
        # torch.as_tensor([True, 1]) is an int64 tensor: a bool among ints is only seen here
        for value in _flat(classes):
            _check_integer(value, classes)
    try:
        t = torch.as_tensor(classes)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"classes={classes!r:.80}: give one integer class index per image "
            f"(a list, numpy array or tensor of ints)"
        ) from None
    _check_integer(t, classes)
    t = t.reshape(-1)
    if t.numel() != batch:
        raise ValueError(f"{t.numel()} classes for {batch} images: give one class per image")
    bad = (t < 0) | (t >= num_classes)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        more = int(bad.sum()) - 1
        raise ValueError(
            f"class index {int(t[i])} (image {i}) is out of range"
            + (f", and {more} more" if more else "")
            + f": the model has {num_classes} classes, valid indices are 0..{num_classes - 1}"
        )
    return t.to(device=device, dtype=torch.long)


def _flat(values):
    for v in values:
        if isinstance(v, (list, tuple)):
            yield from _flat(v)
        else:
            yield v


def _check_integer(value, classes) -> None:
    if isinstance(value, Tensor):
        dtype = value.dtype
        kind = "bool" if dtype == torch.bool else "float" if dtype.is_floating_point or dtype.is_complex else None
        kind_of = "numpy array" if isinstance(classes, np.ndarray) else "tensor"
        what = f"a {str(dtype).removeprefix('torch.')} {kind_of}"
    else:
        kind = "bool" if isinstance(value, (bool, np.bool_)) else \
            "float" if isinstance(value, (float, complex, np.floating, np.complexfloating)) else None
        what = f"{value!r} ({type(value).__name__})"
    if kind == "bool":
        raise TypeError(f"classes={classes!r:.80}: {what} is a bool, not a class index (True would read as "
                        f"class 1); give integer class indices")
    if kind == "float":
        raise TypeError(f"classes={classes!r:.80}: {what} is not an integer class index (a float would be "
                        f"truncated, 281.9 -> 281); give integers, e.g. labels.long() if they hold whole numbers")


def forward_features(model, images: Tensor) -> tuple[Tensor, Tensor]:
    """``(logits, last features)`` without an autograd graph (``images`` already laid out by
    :meth:`CamSource.model_input`)."""
    with torch.no_grad():
        logits, feats = model(images)
    return logits, feats


def head_gradients(model, feats: Tensor, classes: Tensor) -> Tensor:
    """``d y_c / d A`` (B, K, h, w) for every image's class ``c``, with ``y = head(GAP(A))``:
    one ``autograd.grad`` of the summed target logits w.r.t. a detached copy of the features
    (so frozen parameters are fine and no ``.grad`` is written)."""
    with torch.inference_mode(False), torch.enable_grad():
        a = feats.clone() if feats.is_inference() else feats.detach()
        a.requires_grad_(True)
        if classes.is_inference():
            classes = classes.clone()
        scores = model.head(a.mean(dim=(2, 3)))
        target = scores.gather(1, classes[:, None]).sum()
        (grad,) = torch.autograd.grad(target, a)
    return grad


def weighted_sum(weights: Tensor, feats: Tensor, nan_skip: bool = False) -> Tensor:
    """``sum_k w_k A_k``: (B, K) or (B, K, h, w) weights over (B, K, h, w) features ->
    (B, h, w). ``nan_skip`` drops NaN terms (torchcam's ``torch.nansum``)."""
    if feats.is_cuda and not nan_skip:  # the fused Triton kernel reads A once (harness/kernels)
        return weighted_channel_sum(weights, feats)
    if weights.dim() == 2:
        if not nan_skip:
            return torch.einsum("bk,bkhw->bhw", weights, feats)
        weights = weights[:, :, None, None]
    prod = weights * feats
    return torch.nansum(prod, dim=1) if nan_skip else prod.sum(dim=1)


# ----------------------------------------------------------------------------- gradient family


class GradientCam(CamSource):
    """Base of the gradient-based sources: one forward and one (head-only) backward per batch;
    subclasses implement :meth:`combine`."""

    needs_grad = True
    relu = True

    def raw(self, model, images, classes):
        logits, feats = forward_features(model, self.model_input(images))
        classes = as_classes(classes, images.shape[0], logits.device, logits.shape[1])
        grads = self.gradients(model, images, feats, classes)
        return self.combine(feats, grads), logits

    def gradients(self, model, images: Tensor, feats: Tensor, classes: Tensor) -> Tensor:
        """``G = d y_c / d A`` (B, K, h, w)."""
        return head_gradients(model, feats, classes)

    @abstractmethod
    def combine(self, A: Tensor, G: Tensor) -> Tensor:
        """Raw map (B, h, w) from activations ``A`` (B, K, h, w) and gradients ``G``."""
