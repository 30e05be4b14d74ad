"""Speed and accuracy of the dense-CRF filter (harness.kernels.crf) beside our permutohedral
lattice (harness.kernels.lattice), measured in the same process on the same inputs.

Usage: python benchmarks/crf_speed.py [--sizes 64,224] [--frames 1,4,16] [--repeat 5] [--threads N]
                                      [--crossover] [--exact-rows 1024]

Inputs: natural images (skimage samples resized with INTER_AREA, cycling through six of them,
flipped on the second pass) and soft maps P with 2 channels (sigmoid of smoothed noise).

Cases (``dense_crf_loss`` forward + backward: one filter application, the backward reuses W P):

* colour-only kernel (CoLo-CAM: r, g, b / 15 over all pixels of the n frames of a shot, one
  group), n = 1, 4, 16 frames, at each size;
* the 5-D kernel (x, y / 100, r, g, b / 15), a batch of n = 1, 4, 16 images (n groups).

Columns: ms per frame for ``method="auto"`` (what the losses run: the harness), the grid and the
lattice; ``lattice/auto``: how many times faster the harness is than the lattice; ``err`` and
``lat err``: relative Frobenius error of auto's and the lattice's W P against the float64 exact
sum on the first frame (all rows at 64 px; above, an evenly spread subset of about
``--exact-rows`` rows, each summing over all N points).

``--crossover`` times the exact path, the grid and the lattice on groups of 64 to 2048 points
(colour and 5-D, 1 and 8 groups) and prints where the grid overtakes exact: the measured
crossover behind ``crf.AUTO_EXACT_POINTS``.

Timings are the best of ``--repeat`` calls after a warm-up, interleaved (the best is the steadier
figure on a shared machine); the load average is printed because other processes inflate every
number. With CUDA the same rows run on the GPU (Triton grid and lattice).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from harness.kernels import crf  # noqa: E402
from harness.kernels.crf import crf_features, dense_crf_loss  # noqa: E402

# Footnote only: the authors' compiled lattice as once measured on this kind of machine
# (colour-only, one 224x224 frame, K = 2); the table compares against our lattice run here.
FOOTNOTE_REFERENCE_MS_PER_FRAME = 16.0
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
    """{name: best wall seconds}; calls interleaved after one warm-up each."""
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def loss_fb(features, P, **kw):
    def fn():
        p = P.detach().requires_grad_(True)
        dense_crf_loss(p, features, 1.0, **kw).backward()
    return fn


def rel_err(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def accuracy(features, P, rows_every: int, device) -> tuple[float, float]:
    """(auto's, the lattice's) relative Frobenius error vs float64 exact on rows 0, k, 2k, ..."""
    f64, p64 = features.double().cpu(), P.double().cpu()
    rows = torch.arange(0, features.shape[1], rows_every)
    exact = crf._ExactPlan(f64).apply(p64, rows=rows)
    auto = crf.gaussian_filter(features, P, method="auto").cpu()[:, rows]
    lat = crf.gaussian_filter(features, P, method="lattice", budget=4 << 30).cpu()[:, rows]
    return rel_err(auto, exact), rel_err(lat, exact)


def backends_for(device) -> str:
    return "triton" if device.type == "cuda" else ("cpu" if crf.numba_available() else "torch")


def run_cases(device, args) -> list:
    rows = []
    backend = backends_for(device)
    for size in args.sizes:
        frames = natural_frames(max(args.frames), size).to(device)
        maps = soft_maps(max(args.frames), size).to(device)
        for kernel in ("colour", "5-D"):
            for n in args.frames:
                if kernel == "colour":
                    f = crf_features(frames[:n], 15.0, None).reshape(1, -1, 3)
                    P = maps[:n].reshape(1, -1, 2)
                else:
                    f = crf_features(frames[:n], 15.0, 100.0)
                    P = maps[:n]
                # the lattice's memory bound for 16 frames of 224^2 is above the default budget
                fns = {"auto": loss_fb(f, P, method="auto", backend=backend),
                       "grid": loss_fb(f, P, method="grid", backend=backend),
                       "lattice": loss_fb(f, P, method="lattice", backend=backend, budget=4 << 30)}
                t = timed(fns, args.repeat, device)
                every = 1 if size <= 64 else max(1, f.shape[1] // args.exact_rows)
                err, lat_err = accuracy(f[:1], P[:1], every, device)
                rows.append((device.type, kernel, size, n, t, err, lat_err))
                print(f"  {device.type} {kernel} {size}px x{n}: auto {1e3 * t['auto'] / n:.2f} ms/frame, "
                      f"lattice {1e3 * t['lattice'] / n:.2f}", flush=True)
    return rows


def crossover(device, args) -> None:
    backend = backends_for(device)
    print("\ncrossover: loss forward + backward, ms per call (exact / grid / lattice)")
    print(f"{'kernel':7} {'groups':>6} {'points':>7}  {'exact':>8} {'grid':>8} {'lattice':>8}  fastest")
    for kernel in ("colour", "5-D"):
        for B in (1, 8):
            for side in (8, 12, 16, 20, 24, 32, 45):
                frames = natural_frames(B, side).to(device)
                f = crf_features(frames, 15.0, None if kernel == "colour" else 100.0)
                P = soft_maps(B, side).to(device)
                t = timed({m: loss_fb(f, P, method=m, backend=backend if m != "exact" else "auto")
                           for m in ("exact", "grid", "lattice")},
                          args.repeat, device)
                best = min(t, key=t.get)
                print(f"{kernel:7} {B:6d} {side * side:7d}  {1e3 * t['exact']:8.3f} {1e3 * t['grid']:8.3f} "
                      f"{1e3 * t['lattice']:8.3f}  {best}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="64,224")
    ap.add_argument("--frames", default="1,4,16", help="frames per group (colour) / images per batch (5-D)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (the numba paths use as many)")
    ap.add_argument("--exact-rows", type=int, default=1024, help="rows of W P compared with exact above 64 px")
    ap.add_argument("--crossover", action="store_true", help="also time exact / grid / lattice on small groups")
    args = ap.parse_args()
    args.sizes = [int(x) for x in args.sizes.split(",")]
    args.frames = [int(x) for x in args.frames.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"numba: {crf.numba_available()}, triton: {crf.triton_available()}, "
          f"load average at start {os.getloadavg()[0]:.2f}")
    t_start = time.perf_counter()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for dev in devices:
        rows += run_cases(dev, args)
        if args.crossover:
            crossover(dev, args)

    print("\nloss forward + backward (one filter application), best of", args.repeat)
    hdr = (f"{'dev':4}  {'kernel':6} {'size':>4} {'frames':>6}  {'auto ms/fr':>10} {'grid ms/fr':>10} "
           f"{'lattice ms/fr':>13}  {'lattice/auto':>12}  {'err':>6}  {'lat err':>7}")
    print(hdr)
    print("-" * len(hdr))
    for dev, kernel, size, n, t, err, lat_err in rows:
        print(f"{dev:4}  {kernel:6} {size:4d} {n:6d}  {1e3 * t['auto'] / n:10.2f} {1e3 * t['grid'] / n:10.2f} "
              f"{1e3 * t['lattice'] / n:13.2f}  {t['lattice'] / t['auto']:11.1f}x  {100 * err:5.2f}%  "
              f"{100 * lat_err:6.1f}%")
    print("\nerr: auto's W P vs float64 exact (all rows at 64 px, an evenly spread subset of about "
          f"{args.exact_rows} rows above); lat err: the lattice's (its scale is not exact's, by design).")
    print(f"Footnote: the constant once used as the reference, the authors' compiled lattice at "
          f"{FOOTNOTE_REFERENCE_MS_PER_FRAME:g} ms per 224x224 colour frame, is not part of the comparison.")
    print(f"total {time.perf_counter() - t_start:.0f} s; load average at end {os.getloadavg()[0]:.2f} "
          f"(above {os.cpu_count()} means other processes shared the CPUs)")


if __name__ == "__main__":
    main()
