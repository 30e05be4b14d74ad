"""Frames per second of the real-dataset loader, against a naive PIL loader.

Usage: python benchmarks/loader_speed.py [--frames 10000] [--size 1280x720] [--timed 2000]
                                         [--workers 2] [--dir /tmp/harness-loader-bench]

Writes (once; reused from --dir) a YouTube-Objects v1.0 tree in the public layout with about
--frames JPEG frames at --size, textured like photographs (smooth shapes plus fine grain, about
the entropy of real 720p frames, so decoding costs what it costs on the real data). Then serves
the same --timed training frames (of the 30% of the tree in train videos outside val: val and
test keep only their annotated frames), in a shuffled order as training reads them, as
normalized 224x224 tensors in batches of 64, five ways:

(a) naive: PIL open + convert + resize((224, 224), BILINEAR) (torchvision's Resize on a PIL
    image, as the authors' loaders do) + to_tensor, one process;
(b) harness, full JPEG decode + area resize (data.fast_decode=False), one process;
(c) harness, reduced JPEG decode (data.fast_decode=True, the default), one process;
(d) (c) through the DataLoader with --workers processes (loader.num_workers, the real datasets'
    default 2);
(e) the resized cache (data.resized_cache=True): frames read from a uint8 memmap, --workers
    processes; the one-time build of the cache is timed separately.

Prints frames/s and the ratio to (a) measured in the same run.

Measured on the 2-core CPU machine (10,050 frames at 1280x720, mean JPEG 158 kB, 2,000 timed):
naive 113 frames/s; full decode 143 (1.27x); reduced decode 205 (1.83x); reduced decode with 2
workers 365 (3.24x); resized cache 1,123 (9.99x), its one-time build 422 frames/s.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from tabulate import tabulate

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from harness.data.base import Split  # noqa: E402
from harness.data.loader import eval_loader, to_tensor  # noqa: E402
from harness.data.youtube_objects_fixture import make_ytov1_tree  # noqa: E402


def make_tree(root: Path, frames: int, size: tuple[int, int]) -> Path:
    done = root / "DONE"
    if done.is_file():
        return root
    per_video = max(1, frames // (10 * 10))  # 10 classes x 10 videos
    shots = max(1, per_video // 25)
    make_ytov1_tree(root, train_videos=8, labeled_train_videos=6, test_videos=2, shots_per_video=shots,
                    frames_per_shot=max(2, per_video // shots), size=size)
    rng = np.random.default_rng(0)
    paths = sorted(root.rglob("*.jpg"))
    for i, path in enumerate(paths):  # photograph-like entropy: the fixture's frames are too smooth
        img = cv2.imread(str(path))
        grain = cv2.GaussianBlur(rng.normal(0, 28, img.shape).astype(np.float32), (0, 0), 1.2)
        cv2.imwrite(str(path), np.clip(img + grain, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
        if i % 2000 == 0:
            print(f"  textured {i}/{len(paths)} frames", flush=True)
    done.write_text(str(len(paths)))
    return root


def dataset(root: Path, **extra):
    from harness.cli import _dataset_config

    entry, cfg = _dataset_config("ytov1", {"data.root": str(root), "data.train_frames_per_shot": 0, **extra})
    return entry.factory(cfg.data, progress=False)


def subset(split: Split, order: list[int]) -> Split:
    return Split(split.name, [split.frames[i] for i in order], lambda j: split.read(order[j]))


def time_loader(loader) -> float:
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch["image"])
    return n / (time.perf_counter() - start)


def time_naive(paths: list[Path], batch: int = 64) -> float:
    start = time.perf_counter()
    for k in range(0, len(paths), batch):
        tensors = []
        for p in paths[k:k + batch]:
            with Image.open(p) as im:
                rgb = np.asarray(im.convert("RGB").resize((224, 224), Image.BILINEAR))
            tensors.append(to_tensor(rgb))
        torch.stack(tensors)
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=10000)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--timed", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dir", default="/tmp/harness-loader-bench")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    root = Path(args.dir) / f"ytov1-{args.frames}-{args.size}"
    os.environ.setdefault("HARNESS_HOME", str(Path(args.dir) / "home"))
    t0 = time.perf_counter()
    make_tree(root, args.frames, size)
    print(f"tree: {root} ({time.perf_counter() - t0:.0f} s)")

    full, fast = dataset(root, **{"data.fast_decode": False}), dataset(root)
    train = fast.split("train")
    order = np.random.default_rng(0).permutation(len(train))[: args.timed].tolist()
    jpeg_sizes = [os.path.getsize(root / train.frames[i].id) for i in order]
    print(f"{len(train)} train frames; timing {len(order)} of them, mean JPEG {np.mean(jpeg_sizes) / 1e3:.0f} kB, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")

    rows = []
    naive = time_naive([root / train.frames[i].id for i in order])
    rows.append(["(a) naive: PIL decode + bilinear resize, 1 process", naive])
    rows.append(["(b) harness, full decode, 1 process", time_loader(eval_loader(subset(full.split("train"), order), 64))])
    rows.append(["(c) harness, reduced JPEG decode, 1 process", time_loader(eval_loader(subset(train, order), 64))])
    rows.append([f"(d) harness, reduced decode, {args.workers} workers",
                 time_loader(eval_loader(subset(train, order), 64, args.workers))])
    t0 = time.perf_counter()
    cached = dataset(root, **{"data.resized_cache": True})
    build = time.perf_counter() - t0
    rows.append([f"(e) resized cache (memmap), {args.workers} workers",
                 time_loader(eval_loader(subset(cached.split("train"), order), 64, args.workers))])
    rows.append(["(e) resized cache (memmap), 1 process", time_loader(eval_loader(subset(cached.split("train"), order), 64))])
    table = [[name, f"{fps:.0f}", f"{fps / naive:.2f}x"] for name, fps in rows]
    print(tabulate(table, headers=["path", "frames/s", "vs naive"], tablefmt="github"))
    n_all = sum(len(s) for s in cached.splits.values())
    print(f"\nresized cache: built once for all {n_all} frames in {build:.0f} s ({n_all / build:.0f} frames/s, "
          f"{args.workers} workers)")


if __name__ == "__main__":
    main()
