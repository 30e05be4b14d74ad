"""Fused CAM post-processing: weighted channel sum, bilinear upsampling, per-map min-max.

CAM-style methods end with ``M = sum_k w_k A_k`` over activations ``A`` (B, K, h, w), with
per-image channel weights ``w`` (B, K) (CAM, Grad-CAM, Grad-CAM++, XGradCAM) or elementwise
weights (B, K, h, w) (LayerCAM: ``ReLU(G) * A``), optionally a ReLU, then the map is upsampled
to the frame size (bilinear, ``align_corners=False``) and min-max normalized per map.

Each step has two implementations with the same numbers (up to float32 rounding):

* ``"torch"``: plain PyTorch, the readable reference (any device);
* ``"triton"``: Triton kernels that read ``A`` (and elementwise weights) once, with no
  (B, K, h, w) temporary, and upsample + normalize without an intermediate (B, H, W) map.
  They need CUDA tensors, or ``TRITON_INTERPRET=1`` in the environment (Triton's CPU
  interpreter, slow, for tests) to run on CPU tensors. The flag is read at every call (the
  kernels are jitted once per mode), so setting it any time before a call is enough. Caveat
  (Triton 3.9): once the interpreter has run these kernels, compiling Triton kernels in the
  same process fails, since the interpreter leaves ``triton.language.core`` patched.

``backend="auto"`` (the default) picks Triton when every tensor is on a CUDA device and Triton
imports, and torch otherwise (also when autograd would need a graph: the Triton path's results
are not differentiable). Triton is imported only when the Triton path runs, so this module
works without it; ``backend="triton"`` without Triton raises :class:`TritonUnavailableError`.

Conventions shared by both paths:

* results are float32 (float16/bfloat16/float64 inputs are read and accumulated as float32);
* a map whose raw (h, w) values are constant becomes all zeros. (Upsampling a constant map
  does not give an exactly constant map in floating point, since bilinear weights sum to 1
  only up to rounding; min-max would then stretch that rounding noise to [0, 1].) A map
  whose upsampled values are exactly constant also becomes zeros;
* inputs must be finite (the harness checks maps for NaN/inf before normalizing).
"""
from __future__ import annotations

import functools
import os
from typing import Literal

import torch
import torch.nn.functional as F

Backend = Literal["auto", "torch", "triton"]
_BACKENDS = ("auto", "torch", "triton")


class TritonUnavailableError(RuntimeError):
    """``backend="triton"`` was asked for but cannot run here."""


# ----------------------------------------------------------------------------- torch path


# Elementwise weights: the torch path sums one image and a few channels at a time, about this
# many elements per (chunk, h, w) product, so it stays in cache instead of materializing
# (B, K, h, w) (5x faster on CPU for ResNet-50 sizes).
_CHUNK_ELEMENTS = 1 << 17


def _weighted_channel_sum_torch(A: torch.Tensor, w: torch.Tensor, relu: bool, relu_weights: bool) -> torch.Tensor:
    if w.dim() == 2:  # one weight per channel: a batched (1, K) @ (K, h*w) product
        w = w.float().relu() if relu_weights else w.float()
        maps = torch.einsum("bk,bkhw->bhw", w, A.float())
    else:  # one weight per channel and pixel: sum_k w[b, k] * A[b, k], a few channels at a time
        B, K, h, wd = A.shape
        step = max(1, _CHUNK_ELEMENTS // (h * wd))
        maps = A.new_zeros((B, h, wd), dtype=torch.float32)
        for b in range(B):
            for k0 in range(0, K, step):
                wk = w[b, k0:k0 + step].float()
                if relu_weights:
                    wk = wk.relu()
                maps[b] += (wk * A[b, k0:k0 + step].float()).sum(0)
    return maps.relu() if relu else maps


def _upsample_minmax_torch(maps: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    maps = maps.float()
    up = F.interpolate(maps[:, None], size=size, mode=mode, align_corners=False)[:, 0]
    # amin + amax: on CPU, 5x faster than torch.aminmax over dims (torch 2.15)
    lo, hi = up.amin(dim=(1, 2), keepdim=True), up.amax(dim=(1, 2), keepdim=True)
    in_lo, in_hi = maps.amin(dim=(1, 2), keepdim=True), maps.amax(dim=(1, 2), keepdim=True)
    keep = (hi > lo) & (in_hi > in_lo)  # constant maps -> zeros
    # lo <= up <= hi exactly, so (up - lo) / (hi - lo) lies in [0, 1] without clamping
    return (up - lo).div_(torch.where(keep, hi - lo, 1.0)).mul_(keep)


# ----------------------------------------------------------------------------- backend choice


@functools.lru_cache(maxsize=None)
def _import_triton():
    """The Triton kernel module, or the reason it cannot be imported (cached)."""
    try:
        from harness.kernels import _cam_triton
    except Exception as exc:  # ImportError, or a broken Triton install failing at import
        return None, f"{type(exc).__name__}: {exc}"
    return _cam_triton, None


def triton_available() -> bool:
    """Whether the Triton kernels can be imported (says nothing about a GPU being present)."""
    return _import_triton()[0] is not None


def _interpreting() -> bool:
    mod, _ = _import_triton()
    if mod is not None:
        return mod.interpreting()
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _resolve(backend: str, tensors: tuple[torch.Tensor, ...], mode: str = "bilinear"):
    """The Triton kernel module for the Triton path, or None for the torch path."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend={backend!r}: use one of {_BACKENDS}")
    if backend == "torch":
        return None
    on_cuda = all(t.is_cuda for t in tensors)
    if backend == "auto":
        needs_graph = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        return _import_triton()[0] if on_cuda and mode == "bilinear" and not needs_graph else None
    mod, why = _import_triton()
    if mod is None:
        raise TritonUnavailableError(
            f"backend='triton' but Triton cannot be imported ({why}); install it "
            f"(pip install 'wsol-harness[gpu]') or use backend='torch'"
        )
    if mode != "bilinear":
        raise NotImplementedError(f"the Triton path upsamples with mode='bilinear' only (got {mode!r}); "
                                  f"use backend='torch' or 'auto'")
    if not on_cuda and not mod.interpreting():
        devices = sorted({str(t.device) for t in tensors})
        raise TritonUnavailableError(
            f"backend='triton' needs CUDA tensors (got {', '.join(devices)}); set TRITON_INTERPRET=1 "
            f"before the first Triton call to run the kernels on CPU with Triton's interpreter"
        )
    return mod


# ----------------------------------------------------------------------------- checks


def _check_float(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")


def _check_sum_args(A: torch.Tensor, w: torch.Tensor) -> None:
    _check_float("A", A)
    _check_float("w", w)
    if A.dim() != 4:
        raise ValueError(f"A must be (B, K, h, w), got shape {tuple(A.shape)}")
    if w.dim() == 2:
        if tuple(w.shape) != tuple(A.shape[:2]):
            raise ValueError(f"w of shape {tuple(w.shape)} does not match A {tuple(A.shape)}: expected (B, K)")
    elif w.dim() == 4:
        if w.shape != A.shape:
            raise ValueError(f"w of shape {tuple(w.shape)} does not match A {tuple(A.shape)}: expected (B, K, h, w)")
    else:
        raise ValueError(f"w must be (B, K) or (B, K, h, w), got shape {tuple(w.shape)}")
    if A.device != w.device:
        raise ValueError(f"A is on {A.device} but w on {w.device}")
    if A.shape[2] == 0 or A.shape[3] == 0:
        raise ValueError(f"A has an empty spatial size: {tuple(A.shape)}")


def _check_size(size) -> tuple[int, int]:
    try:
        H, W = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (H, W), got {size!r}") from None
    if H <= 0 or W <= 0:
        raise ValueError(f"size must be positive, got {(H, W)}")
    return H, W


def _check_maps(maps: torch.Tensor) -> None:
    _check_float("maps", maps)
    if maps.dim() != 3:
        raise ValueError(f"maps must be (B, h, w), got shape {tuple(maps.shape)}")
    if maps.shape[1] == 0 or maps.shape[2] == 0:
        raise ValueError(f"maps have an empty spatial size: {tuple(maps.shape)}")


def _check_mode(mode: str) -> None:
    if mode not in ("bilinear", "bicubic"):
        raise ValueError(f"mode={mode!r}: use 'bilinear' (both backends) or 'bicubic' (torch only)")


# ----------------------------------------------------------------------------- public API


def weighted_channel_sum(A: torch.Tensor, w: torch.Tensor, relu: bool = False, *, relu_weights: bool = False,
                         backend: Backend = "auto") -> torch.Tensor:
    """``M[b] = sum_k w[b, k] * A[b, k]`` as a (B, h, w) float32 tensor.

    ``w`` is (B, K) (one weight per channel) or (B, K, h, w) (one per channel and pixel).
    ``relu`` applies ReLU to the sum; ``relu_weights`` applies it to the weights first (LayerCAM
    passes its raw gradients with ``relu_weights=True``, so ``ReLU(G)`` is never materialized on
    the Triton path).
    """
    _check_sum_args(A, w)
    kern = _resolve(backend, (A, w))
    if kern is None:
        return _weighted_channel_sum_torch(A, w, relu, relu_weights)
    if A.shape[0] == 0:
        return A.new_zeros((0, *A.shape[2:]), dtype=torch.float32)
    return kern.weighted_channel_sum(A, w, relu, relu_weights)


def upsample_minmax(maps: torch.Tensor, size: tuple[int, int], mode: str = "bilinear", *,
                    backend: Backend = "auto") -> torch.Tensor:
    """(B, h, w) maps -> (B, H, W) float32 in [0, 1].

    The same numbers (up to float32 rounding) as ``F.interpolate(maps[:, None], size, mode=mode,
    align_corners=False)[:, 0]`` followed by per-map ``(m - min) / (max - min)``; a constant map
    gives zeros (see the module docstring). ``mode="bicubic"`` runs on the torch path only.
    """
    _check_maps(maps)
    size = _check_size(size)
    _check_mode(mode)
    kern = _resolve(backend, (maps,), mode)
    if kern is None:
        return _upsample_minmax_torch(maps, size, mode)
    return kern.upsample_minmax(maps, size)


def cam_maps(A: torch.Tensor, w: torch.Tensor, relu: bool, size: tuple[int, int], mode: str = "bilinear", *,
             relu_weights: bool = False, backend: Backend = "auto") -> torch.Tensor:
    """:func:`weighted_channel_sum` then :func:`upsample_minmax`: (B, K, h, w) activations ->
    (B, H, W) float32 maps in [0, 1]. The only intermediate is the (B, h, w) raw map."""
    _check_sum_args(A, w)
    size = _check_size(size)
    _check_mode(mode)
    kern = _resolve(backend, (A, w), mode)
    if kern is None:
        return _upsample_minmax_torch(_weighted_channel_sum_torch(A, w, relu, relu_weights), size, mode)
    if A.shape[0] == 0:
        return A.new_zeros((0, *size), dtype=torch.float32)
    return kern.upsample_minmax(kern.weighted_channel_sum(A, w, relu, relu_weights), size)
