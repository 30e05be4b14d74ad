"""What every Triton kernel module of the harness needs besides its kernels: the interpreter
flag, jitting for the current mode, and launching on the tensors' GPU. Imports Triton."""
from __future__ import annotations

import contextlib
import functools

import torch
import triton


def interpreting() -> bool:
    """Triton's ``TRITON_INTERPRET`` flag, as ``triton.jit`` reads it (on every call)."""
    return bool(triton.knobs.runtime.interpret)


def jitted(*fns):
    """``triton.jit`` of each plain kernel function, for the current mode (compiled or interpreted)."""
    return _jitted(fns, interpreting())


@functools.lru_cache(maxsize=None)
def _jitted(fns: tuple, interpret: bool):
    # `interpret` is only the cache key: triton.jit reads the same flag itself, just now.
    return tuple(triton.jit(fn) for fn in fns)


def launch_on(device: torch.device):
    """Launch on the tensors' GPU (Triton launches on the current device otherwise)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
