"""Speed of the CAM post-processing: weighted channel sum + bilinear upsampling + min-max.

Usage: python benchmarks/cam_kernel_speed.py [--batch 16] [--channels 2048] [--feat 28]
                                             [--size 224] [--repeat 7] [--seed 0]

Inputs as a ResNet-50 gives them at 224x224: post-ReLU activations A (B, K, h, w), and either
per-channel weights (B, K) (CAM, Grad-CAM, Grad-CAM++, XGradCAM) or raw gradients G
(B, K, h, w) used elementwise as ReLU(G) * A (LayerCAM). Each pipeline goes from (A, weights) to
(B, H, W) maps in [0, 1]:

(a) naive: the unfused ops as a method would write them: ``torch.einsum("bk,bkhw->bhw")`` or
    ``(torch.relu(G) * A).sum(1)``, then ``F.interpolate(..., align_corners=False)``, ``amin``,
    ``amax`` and ``torch.where`` for the per-map min-max;
(b) torch: ``harness.kernels.cam_maps(..., backend="torch")``, the plain-torch path (elementwise
    weights summed a few channels at a time, so no (B, K, h, w) product; ``aminmax``);
(c) triton: ``cam_maps(..., backend="triton")``, on CUDA only (reported as not run otherwise).

(a) and (b) run on CPU, and again on CUDA with (c) when a GPU is present. It checks that the
pipelines agree (max abs difference <= 1e-5, constant maps aside: there are none here) and
prints the median and the best of --repeat timed calls after one warm-up call, with the
ratios to (a) (the best is the steadier figure on a shared machine).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from harness.kernels import cam_maps, triton_available  # noqa: E402


def naive_cam(A, w, size):
    maps = torch.einsum("bk,bkhw->bhw", w, A)
    return naive_normalize(maps, size)


def naive_layercam(A, G, size):
    maps = (torch.relu(G) * A).sum(1)
    return naive_normalize(maps, size)


def naive_normalize(maps, size):
    up = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    lo = up.amin(dim=(1, 2), keepdim=True)
    hi = up.amax(dim=(1, 2), keepdim=True)
    return torch.where(hi > lo, (up - lo) / (hi - lo), torch.zeros_like(up))


def timed(fns: dict, repeat: int, cuda: bool) -> dict:
    """{name: (median s, best s, result)} for `repeat` timed calls of each function after a warm-up
    call. The calls are interleaved (one of each per round), so a load change on a shared machine
    hits every implementation alike."""
    results = {name: fn() for name, fn in fns.items()}
    times: dict = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(times[name]), min(times[name]), results[name]) for name in fns}


def run_device(device: str, args, rows: list) -> None:
    cuda = device.startswith("cuda")
    g = torch.Generator().manual_seed(args.seed)
    B, K, f = args.batch, args.channels, args.feat
    A = torch.randn(B, K, f, f, generator=g).relu_().to(device)
    w = torch.randn(B, K, generator=g).div_(K ** 0.5).to(device)
    G = torch.randn(B, K, f, f, generator=g).to(device)
    size = (args.size, args.size)
    gib = A.numel() * A.element_size() / 2**30
    backends = ["torch"] + (["triton"] if cuda and triton_available() else [])

    pipelines = {
        "CAM (B,K) weights": (
            lambda: naive_cam(A, w, size),
            lambda backend: (lambda: cam_maps(A, w, False, size, backend=backend)),
        ),
        "LayerCAM ReLU(G)*A": (
            lambda: naive_layercam(A, G, size),
            lambda backend: (lambda: cam_maps(A, G, False, size, relu_weights=True, backend=backend)),
        ),
    }
    for name, (naive, ours) in pipelines.items():
        fns = {"naive unfused": naive} | {f"harness.kernels {b}": ours(b) for b in backends}
        res = timed(fns, args.repeat, cuda)
        t_naive, best_naive, ref = res["naive unfused"]
        for impl, (t, best, out) in res.items():
            diff = (out - ref).abs().max().item()
            if diff > 1e-5:
                raise SystemExit(f"{device} {name} {impl}: differs from the naive pipeline by {diff:.2e}")
            rows.append((device, name, impl, t, t_naive / t, best, best_naive / best, diff))
    print(f"[{device}] A: {B}x{K}x{f}x{f} float32 ({gib:.2f} GiB), maps upsampled to {size[0]}x{size[1]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--channels", type=int, default=2048)
    ap.add_argument("--feat", type=int, default=28)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    rows: list = []
    run_device("cpu", args, rows)
    if torch.cuda.is_available():
        run_device("cuda", args, rows)
        if not triton_available():
            print("Triton path not run: CUDA is available but Triton does not import")
    else:
        print("Triton path not run: no CUDA device (the kernels need one; TRITON_INTERPRET=1 only "
              "checks them for correctness, see tests/test_kernel_cam.py)")

    print()
    print(f"{'device':6}  {'pipeline':20}  {'implementation':24}  {'median ms':>10}  {'speedup':>8}  "
          f"{'best ms':>8}  {'speedup':>8}  {'max |diff|':>10}")
    for device, name, impl, t, ratio, best, best_ratio, diff in rows:
        print(f"{device:6}  {name:20}  {impl:24}  {t * 1e3:10.2f}  {ratio:7.2f}x  {best * 1e3:8.2f}  "
              f"{best_ratio:7.2f}x  {diff:10.1e}")


if __name__ == "__main__":
    main()
