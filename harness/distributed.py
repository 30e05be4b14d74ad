"""Several processes on one run (``torchrun``): who is who, how work is shared, how results meet.

The harness uses ``torch.distributed`` and nothing of its own for communication. A process
group exists when the harness runs under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment;
:func:`init_from_env`): gloo for CPU runs, NCCL for CUDA ones. Without one, every function here
is the single-process identity, so the rest of the code calls them unconditionally.

Sharding is by contiguous blocks (:func:`shard`): rank r of W takes items ``[r n / W, (r + 1) n
/ W)``, so the concatenation of the shards in rank order is the original order, and results that
are merged in that order equal the single-process ones bit for bit.
"""
from __future__ import annotations

import datetime as dt
import os
from typing import Any

import torch
import torch.distributed as dist

from harness.errors import HarnessError


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, the only process that writes checkpoints, records, caches and reports."""
    return rank() == 0


def rank_device(device: torch.device) -> torch.device:
    """This rank's GPU, ``cuda:LOCAL_RANK``, for a CUDA device in a process group; ``device`` otherwise."""
    if device.type == "cuda" and active():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def init_from_env(device: torch.device) -> bool:
    """Join the process group ``torchrun`` describes in the environment; False when there is
    none (a plain run). The timeout bounds how long a rank waits for one that died."""
    if active() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return active()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    minutes = float(os.environ.get("HARNESS_DIST_TIMEOUT_MIN", "30"))
    try:
        dist.init_process_group(backend, timeout=dt.timedelta(minutes=minutes))
    except Exception as exc:
        raise HarnessError(f"could not join the torchrun process group ({backend}): {type(exc).__name__}: {exc}; "
                           f"start the run with `harness run --launcher torchrun --nproc N ...`") from exc
    return True


def shard(n: int, r: int | None = None, w: int | None = None) -> range:
    """The contiguous block of ``range(n)`` that rank ``r`` of ``w`` works on."""
    r = rank() if r is None else r
    w = world_size() if w is None else w
    return range(r * n // w, (r + 1) * n // w)


def barrier() -> None:
    if active():
        dist.barrier()


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` without a group)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def average_gradients(params) -> None:
    """Average the gradients of ``params`` over the ranks, in place (one flat all-reduce per
    dtype): what DistributedDataParallel does after backward, without wrapping the modules, so
    that a plugin's stage trains unchanged. A parameter without a gradient on one rank counts
    as zero there."""
    if not active():
        return
    params = [p for p in params if p.requires_grad]
    by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    w = world_size()
    for group in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        dist.all_reduce(flat)
        flat /= w
        offset = 0
        for p in group:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n


def broadcast_state(modules) -> None:
    """Rank 0's parameters and buffers copied to every rank, in place. DDP does this when it wraps
    a model, and for the buffers (BatchNorm's running statistics) at every forward; here it is
    done when training starts and after each epoch, so every rank evaluates its share of a split
    with the weights rank 0 checkpoints."""
    if not active():
        return
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sums over the ranks (float64)."""
    if not active():
        return list(values)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
