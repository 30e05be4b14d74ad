"""Speed and accuracy of the dense-CRF Gaussian filter (harness.kernels.crf).

Usage: python benchmarks/crf_speed.py [--size 224] [--frames 1,4,16] [--repeat 5] [--threads N]
                                      [--exact-rows 1024] [--no-5d] [--gpu-frames 64]

What it measures, on natural images (skimage samples resized with INTER_AREA; frames of a group
cycle through them, flipped) and realistic soft maps P (2 channels, sigmoid of smoothed noise):

* colour-only kernel (CoLo-CAM: r, g, b / 15 over all pixels of a group of n frames), one group
  of n = 1, 4, 16 frames of 224x224: ``dense_crf_loss`` forward + backward (one filter
  application: the backward reuses W P) and ``gaussian_filter`` forward + backward (two:
  the backward filters the incoming gradient), per backend;
* the 5-D kernel (x, y / 100, r, g, b / 15) on a batch of 8 images (8 groups), per image;
* ms per frame, the speed-up over the exact path measured in the same run, and over the
  reference figure of 16 ms per frame (the authors' CPU permutohedral lattice, colour-only,
  224x224, K = 2, measured on this kind of 2-core machine; see
  /work/shared/reference/refcode_sbelharbi.md section 2.3);
* the relative Frobenius error of each setting vs the exact path on a 128x128 image
  (colour-only rows: astronaut, the hardest of the test images; 5-D rows: the same image).

The exact path at 224 is O(N^2): it is timed on ``--exact-rows`` rows of W P (every row sums
over all N pixels of the group) and scaled to N rows; the output says so. Its loss
forward + backward costs one application, the filter's two.

Timings are the best of ``--repeat`` calls after a warm-up (the best is the steadier figure
on a shared machine; the median is printed too). The load average is printed: other
processes on the machine inflate every number, the multi-threaded ones most.

With CUDA, the same rows run on the GPU (Triton grid, torch grid, exact), plus 64 frames of
224x224 colour-only as 64 groups of 1, 16 of 4 and 4 of 16 (target: <= 8 ms per 64 frames on an
H100 for the loss forward + backward).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from harness.kernels import crf  # noqa: E402
from harness.kernels.crf import crf_features, dense_crf_loss, gaussian_filter  # noqa: E402

REFERENCE_MS_PER_FRAME = 16.0  # authors' permutohedral lattice, colour-only 224x224, K = 2, CPU
IMAGES = ["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field"]


def natural_frames(n: int, size: int) -> torch.Tensor:
    """(n, 3, size, size) float32 in [0, 255]."""
    import cv2
    from skimage import data

    out = []
    for i in range(n):
        img = getattr(data, IMAGES[i % len(IMAGES)])()
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        if (i // len(IMAGES)) % 2:
            img = img[:, ::-1]
        out.append(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float())
    return torch.stack(out)


def soft_maps(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """(n, size*size, 2): P1 = sigmoid of smoothed noise, P0 = 1 - P1."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 1, size, size, generator=g)
    k = max(3, size // 8) | 1
    for _ in range(2):
        z = torch.nn.functional.avg_pool2d(z, k, 1, k // 2, count_include_pad=False)
    p1 = torch.sigmoid(2 * z / z.std())
    return torch.cat([1 - p1, p1], 1).permute(0, 2, 3, 1).reshape(n, size * size, 2).contiguous()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fns: dict, repeat: int, device) -> dict:
    """{name: (best wall s, median wall s, best CPU s)}; calls interleaved, one warm-up each.
    CPU = process CPU time (all threads) of a call: unlike wall time, other processes on the
    machine barely change it, so it shows the work done; the wall time of a call on idle
    cores is about CPU / threads when the work splits evenly."""
    for fn in fns.values():
        fn()
    times: dict = {name: [] for name in fns}
    cpu: dict = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            sync(device)
            c0 = time.process_time()
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {name: (min(t), statistics.median(t), min(cpu[name])) for name, t in times.items()}


def loss_fb(features, P, **kw):
    def fn():
        p = P.detach().requires_grad_(True)
        dense_crf_loss(p, features, 1.0, **kw).backward()
    return fn


def filter_fb(features, P, **kw):
    def fn():
        p = P.detach().requires_grad_(True)
        out = gaussian_filter(features, p, **kw)
        out.backward(torch.ones_like(out))
    return fn


def exact_estimate(features, P, rows: int, repeat: int, device) -> tuple[float, float, float]:
    """Seconds for one exact application on all rows of every group, timed on `rows` rows of
    the first group (scaled down for large groups: each row sums over all N points)."""
    plan = crf._ExactPlan(features[:1])
    B, N = features.shape[:2]
    rows = max(16, min(N, rows * 50176 // N))
    res = timed({"exact": lambda: plan.apply(P[:1], rows=slice(0, rows))}, max(1, repeat // 2), device)["exact"]
    scale = B * N / rows
    return tuple(x * scale for x in res)


def rel_err(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def backends_for(device) -> list[str]:
    if device.type == "cuda":
        return (["triton"] if crf.triton_available() else []) + ["torch"]
    return (["cpu"] if crf.numba_available() else []) + ["torch"]


def run_device(device, args, rows: list, errors: dict) -> None:
    size = args.size
    backends = backends_for(device)
    n_max = max(args.frames)
    frames = natural_frames(n_max, size).to(device)
    P_all = soft_maps(n_max, size).to(device)

    # accuracy on a 128x128 image, each setting
    img = natural_frames(1, 128).to(device)
    P128 = soft_maps(1, 128, seed=1).to(device)
    for kernel, sxy in (("colour", None), ("5-D", 100.0)):
        f = crf_features(img, 15.0, sxy)
        E = gaussian_filter(f, P128, method="exact")
        for backend in backends:
            settings = [("default", {})] + ([("plain grid", {"smooth_axes": ()})] if kernel == "5-D" else [])
            for label, kw in settings:
                G = gaussian_filter(f, P128, method="grid", backend=backend, **kw)
                errors[(device.type, kernel, backend, label)] = rel_err(G, E)

    # colour-only groups of n frames
    for n in args.frames:
        f = crf_features(frames[:n], 15.0, None).reshape(1, -1, 3)
        P = P_all[:n].reshape(1, -1, 2)
        fns = {}
        for backend in backends:
            fns[(backend, "loss")] = loss_fb(f, P, method="grid", backend=backend)
            fns[(backend, "filter")] = filter_fb(f, P, method="grid", backend=backend)
        res = timed(fns, args.repeat, device)
        ex = exact_estimate(f, P, args.exact_rows, args.repeat, device)
        rows.append((device.type, "colour", n, "exact*", "loss", ex, ex[0]))
        rows.append((device.type, "colour", n, "exact*", "filter", tuple(2 * x for x in ex), 2 * ex[0]))
        for (backend, what), t in res.items():
            rows.append((device.type, "colour", n, backend, what, t, ex[0] * (1 if what == "loss" else 2)))

    # 5-D kernel, a batch of 8 images
    if not args.no_5d:
        B = 8
        f = crf_features(frames[:B] if n_max >= B else natural_frames(B, size).to(device), 15.0, 100.0)
        P = soft_maps(B, size, seed=2).to(device)
        fns = {}
        for backend in backends:
            fns[(backend, "loss")] = loss_fb(f, P, method="grid", backend=backend)
            fns[(backend + " plain grid", "loss")] = loss_fb(f, P, method="grid", backend=backend, smooth_axes=())
        res = timed(fns, max(2, args.repeat // 2), device)
        ex = exact_estimate(f, P, args.exact_rows // 4, args.repeat, device)
        rows.append((device.type, "5-D", B, "exact*", "loss", ex, ex[0]))
        for (backend, what), t in res.items():
            rows.append((device.type, "5-D", B, backend, what, t, ex[0]))


def run_gpu_64(device, args, rows: list) -> None:
    """64 frames of 224x224, colour-only, as groups of 1, 4 and 16 frames."""
    total = args.gpu_frames
    frames = natural_frames(total, args.size).to(device)
    P_all = soft_maps(total, args.size).to(device)
    for n in (1, 4, 16):
        if total % n:
            continue
        f = crf_features(frames, 15.0, None).reshape(total // n, -1, 3)
        P = P_all.reshape(total // n, -1, 2)
        fns = {}
        for backend in backends_for(device):
            fns[(backend, "loss")] = loss_fb(f, P, method="grid", backend=backend)
            fns[(backend, "filter")] = filter_fb(f, P, method="grid", backend=backend)
        for (backend, what), t in timed(fns, args.repeat, device).items():
            rows.append((device.type, f"colour {total} fr", n, backend, what, t, None))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--frames", default="1,4,16", help="group sizes (frames per group), comma-separated")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (the numba path uses as many)")
    ap.add_argument("--exact-rows", type=int, default=1024, help="rows of W P timed for the exact estimate")
    ap.add_argument("--no-5d", action="store_true")
    ap.add_argument("--gpu-frames", type=int, default=64)
    args = ap.parse_args()
    args.frames = [int(x) for x in args.frames.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)

    load0 = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"numba path: {crf.numba_available()}, triton: {crf.triton_available()}, "
          f"load average at start {load0[0]:.2f}")
    t_start = time.perf_counter()
    rows: list = []
    errors: dict = {}
    run_device(torch.device("cpu"), args, rows, errors)
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        print(f"GPU: {torch.cuda.get_device_name(dev)}")
        run_device(dev, args, rows, errors)
        run_gpu_64(dev, args, rows)
    else:
        print("no CUDA device: GPU rows (Triton grid, 64 frames) not run")

    print()
    print(f"exact* = the exact path timed on a subset of rows and scaled to all N rows ({args.exact_rows} rows "
          f"of a 224x224 frame's worth of pairs for colour, a quarter of that for 5-D); not run in full.")
    print("loss = dense_crf_loss forward + backward (one filter application); "
          "filter = gaussian_filter forward + backward (two).")
    print(f"vs ref = speed-up over the authors' lattice, {REFERENCE_MS_PER_FRAME:g} ms/frame (colour-only rows only).")
    print()
    hdr = (f"{'dev':4}  {'kernel':13} {'frames':>6}  {'backend':17} {'what':6}  {'best ms':>9}  {'median ms':>9}  "
           f"{'ms/frame':>8}  {'CPU ms/fr':>9}  {'vs exact':>8}  {'vs ref':>7}  {'err@128':>7}")
    print(hdr)
    print("-" * len(hdr))
    for dev, kernel, n, backend, what, (best, med, cpu), exact_s in rows:
        frames = int(kernel.split()[1]) if kernel.startswith("colour ") else n
        per = best * 1e3 / frames
        vs_exact = f"{exact_s / best:7.0f}x" if exact_s and not backend.startswith("exact") else f"{'':8}"
        colour_loss = kernel.startswith("colour") and what == "loss"
        vs_ref = f"{REFERENCE_MS_PER_FRAME / per:6.1f}x" if colour_loss else f"{'':7}"
        label = "plain grid" if backend.endswith("plain grid") else "default"
        err = errors.get((dev, "5-D" if kernel == "5-D" else "colour", backend.replace(" plain grid", ""), label))
        err_s = f"{100 * err:6.2f}%" if err is not None else f"{'':7}"
        print(f"{dev:4}  {kernel:13} {n:6d}  {backend:17} {what:6}  {best * 1e3:9.2f}  {med * 1e3:9.2f}  "
              f"{per:8.2f}  {cpu * 1e3 / frames:9.2f}  {vs_exact}  {vs_ref}  {err_s}")
    load1 = os.getloadavg()
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s; load average at end {load1[0]:.2f} "
          f"(above {os.cpu_count()} means other processes shared the CPUs)")


if __name__ == "__main__":
    main()
