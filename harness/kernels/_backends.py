"""How the CRF filters (bilateral grid, permutohedral lattice) choose between their three
implementations: Triton on CUDA, numba on CPU, plain torch anywhere. Imports neither Triton nor
numba itself: the callers pass how to import theirs."""
from __future__ import annotations

import functools
import importlib
from typing import Callable

import torch

from harness.errors import HarnessError

BACKENDS = ("auto", "torch", "triton", "cpu")


@functools.lru_cache(maxsize=None)
def import_kernels(module: str) -> tuple:
    """``(module, None)``, or ``(None, why)`` when it cannot be imported: ImportError, or a broken
    Triton install failing at import. Cached: a filter asks on every call."""
    try:
        return importlib.import_module(module), None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


class TritonUnavailableError(HarnessError):
    """``backend="triton"`` was asked for but cannot run here."""


def resolve_backend(backend: str, device: torch.device, import_triton: Callable[[], tuple],
                    numba_ok: Callable[[], bool]) -> str:
    """``"auto"``: triton on CUDA when Triton imports, cpu on CPU when numba imports, torch
    otherwise; an explicit backend that cannot run here raises, saying what to use instead.
    ``import_triton()`` returns ``(module or None, why not)``; the module has ``interpreting()``."""
    if backend not in BACKENDS:
        raise HarnessError(f"backend={backend!r}: use one of {BACKENDS}")
    if backend == "auto":
        if device.type == "cuda" and import_triton()[0] is not None:
            return "triton"
        if device.type == "cpu" and numba_ok():
            return "cpu"
        return "torch"
    if backend == "cpu":
        if device.type != "cpu":
            raise HarnessError(f"backend='cpu' needs CPU tensors (got {device}); use 'auto', 'torch' or 'triton'")
        if not numba_ok():
            raise HarnessError("backend='cpu' needs numba (pip install numba); use backend='torch'")
    if backend == "triton":
        mod, why = import_triton()
        if mod is None:
            raise TritonUnavailableError(f"backend='triton' but Triton cannot be imported ({why}); install it "
                                         f"(pip install 'wsol-harness[gpu]') or use backend='torch'")
        if device.type != "cuda" and not mod.interpreting():
            raise TritonUnavailableError(f"backend='triton' needs CUDA tensors (got {device}); set TRITON_INTERPRET=1 "
                                         f"before the first Triton call to run the kernels on CPU with Triton's "
                                         f"interpreter")
    return backend
