"""TrCAM-V training step, frames per second: the plugin's batched pixel selection against a
per-frame reference loop, in the same process, on the same network, maps and frames.

The reference is written out below as a per-frame implementation of the paper's selection
would do it at every step: for each frame, OpenCV's Otsu and connected components on the host,
the densest component by mean activation, the top n% of it and the bottom n% of the map by
sorting, NumPy draws (weighted for the foreground, uniform for the background), then the labels
back to the device. The plugin's path finds each frame's densest region, Otsu level and top and
bottom thresholds once, batched on the device, when the map bank is built (the maps are fixed).
At every step it draws with batched Gumbel-top-k.

Both label batches are checked for consistency before timing: every foreground draw lies in
the reference's candidate set, every background draw in its bottom n%.

    python benchmarks/trcamv_speed.py                       # DeiT-S (random) at 224, batch 16
    python benchmarks/trcamv_speed.py --size 64 --tiny      # the synthetic setting

Goal (issue 16): at least 3x the reference's frames/s on the 2-core CPU.
"""
from __future__ import annotations

import argparse
import math
import time

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tabulate import tabulate

from harness.fcam.cam_bank import CamBank, previous_frames
from harness.fcam.losses import DenseCRF, PartialCE, SizeBarrier, frames_255
from harness.fcam.pseudo_labels import IGNORE, SamplerConfig
from harness.models.vit import create_vit
from harness.plugins.trcamv.model import TrcamvNet

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def reference_labels(cams: np.ndarray, k: int, top_p: float, bottom_p: float, rng: np.random.Generator):
    """(B, H, W) long labels, one frame at a time on the host."""
    out = np.full(cams.shape, IGNORE, dtype=np.int64)
    for i, cam in enumerate(cams):
        q = (cam * 255).astype(np.uint8)
        level, _ = cv2.threshold(q, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        n, comp, _, _ = cv2.connectedComponentsWithStats((q > level).astype(np.uint8), connectivity=8)
        if n > 1:
            means = [cam[comp == c].mean() for c in range(1, n)]
            region = comp == 1 + int(np.argmax(means))
            vals = np.sort(cam[region])[::-1]
            keep = max(1, math.ceil(top_p * len(vals)))
            fg = np.flatnonzero(region & (cam >= vals[keep - 1]))
            w = cam.ravel()[fg].clip(1e-6)
            pick = rng.choice(fg, size=min(k, len(fg)), replace=False, p=w / w.sum())
            out[i].ravel()[pick] = 1
        flat = cam.ravel()
        nb = max(1, int(bottom_p * flat.size))
        bg = np.flatnonzero(flat <= np.sort(flat)[nb - 1])
        pick = rng.choice(bg, size=min(k, len(bg)), replace=False)
        lab = out[i].ravel()
        lab[pick] = np.where(lab[pick] == 1, IGNORE, 0)
    return out


def smooth_maps(n, size, seed=0):
    """CAM-like maps: a few Gaussian blobs of different heights on a low field."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    maps = np.zeros((n, size, size), dtype=np.float32)
    for i in range(n):
        for _ in range(3):
            cy, cx, s, h = g.uniform(0.2, 0.8), g.uniform(0.2, 0.8), g.uniform(0.05, 0.2), g.uniform(0.3, 1.0)
            maps[i] += h * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
        maps[i] = (maps[i] - maps[i].min()) / (maps[i].max() - maps[i].min())
    return torch.from_numpy(maps)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--frames", type=int, default=64, help="frames in the map bank")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="a 2-block, 64-wide ViT instead of DeiT-S")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--top", type=float, default=0.1)
    ap.add_argument("--bottom", type=float, default=0.1)
    args = ap.parse_args()
    torch.manual_seed(0)
    sizes = {"depth": 2, "embed_dim": 64, "num_heads": 2} if args.tiny else {}
    net = TrcamvNet(create_vit("vit_small_patch16_224", False, sizes), 10)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    pce, size_term, crf = PartialCE(), SizeBarrier(), DenseCRF(weight=2e-9)
    cfg = SamplerConfig(k=args.k, fg_top_p=args.top, bg="bottom", bg_p=args.bottom, fg_draw="multinomial")

    maps = smooth_maps(args.frames, args.size)
    t0 = time.perf_counter()
    bank = CamBank(maps.half(), torch.arange(args.frames)[:, None], (args.size, args.size), None)
    bank.roi = bank._rois("densest", 64)
    bank.sample(torch.arange(1), None, cfg)  # each frame's region levels, once
    t_bank = time.perf_counter() - t0
    frames = torch.rand(args.frames, 3, args.size, args.size)
    images = (frames - torch.tensor(IMAGENET[0])[:, None, None]) / torch.tensor(IMAGENET[1])[:, None, None]
    labels = torch.randint(0, 10, (args.frames,))
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)

    def batched(idx):
        return bank.sample(idx, None, cfg, generator=gen)

    def per_frame(idx):
        return torch.from_numpy(reference_labels(bank.get(idx).numpy(), args.k, args.top, args.bottom, rng))

    # the two selections agree on what may be drawn
    idx = torch.arange(min(args.batch, args.frames))
    ours, ref = batched(idx), per_frame(idx)
    ref_again = reference_labels(bank.get(idx).numpy(), 10 ** 9, args.top, args.bottom, rng)  # every candidate
    assert ((ours == 1) <= torch.from_numpy(ref_again == 1)).all() and ((ours == 0) <= torch.from_numpy(ref_again == 0)).all()
    assert ((ours == 1).sum((1, 2)) == (ref == 1).sum((1, 2))).all()

    def step(select, idx):
        pixels = select(idx)
        x = images[idx]
        class_logits, seg = net(x)
        probs = seg.softmax(1)
        loss = (F.cross_entropy(class_logits, labels[idx]) + pce(seg, pixels) + size_term(probs, 1)
                + crf(probs, frames_255(x, IMAGENET)))
        opt.zero_grad()
        loss.backward()
        opt.step()

    def timed(fn):
        batches = [torch.arange(i, i + args.batch) % args.frames for i in range(0, args.steps * args.batch, args.batch)]
        fn(batches[0])  # warm-up
        t = time.perf_counter()
        for b in batches:
            fn(b)
        return args.steps * args.batch / (time.perf_counter() - t)

    rows = []
    sel_ref, sel_ours = timed(per_frame), timed(batched)
    rows.append(["pixel selection alone", f"{sel_ref:,.0f}", f"{sel_ours:,.0f}", f"{sel_ours / sel_ref:.2f}x"])
    step_ref, step_ours = timed(lambda b: step(per_frame, b)), timed(lambda b: step(batched, b))
    rows.append(["training step", f"{step_ref:,.1f}", f"{step_ours:,.1f}", f"{step_ours / step_ref:.2f}x"])
    net_name = "tiny ViT" if args.tiny else "DeiT-S/16"
    print(f"TrCAM-V frames/s, {net_name} (random), {args.size}x{args.size}, batch {args.batch}, k={args.k}, "
          f"n={args.top:g}/{args.bottom:g}, {torch.get_num_threads()} threads; densest regions and levels of the "
          f"{args.frames}-frame bank found once in {t_bank * 1e3:.0f} ms (batched, on the device)")
    print(tabulate(rows, headers=["", "per-frame reference", "plugin (batched)", "ratio"], tablefmt="github"))


if __name__ == "__main__":
    main()
