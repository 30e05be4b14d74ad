"""Throughput of the harness's CAM sources vs the pytorch-grad-cam package (``grad-cam``).

Usage: python benchmarks/cam_speed.py [--backbones resnet18,resnet50] [--feature-index 2]
       [--size 224] [--batch 16] [--repeat 5] [--device cpu] [--lib-channels-last]
       [--scorecam-backbones resnet18] [--scorecam-size 112] [--scorecam-batch 2]

Both sides explain the same random-init harness ``Classifier`` (eval mode), on the same batch
of random images with one random target class per image, on the same device and thread count,
and produce the same thing: one map per image, at input resolution, min-max normalized.

- harness: ``source(model, images, classes)`` (as the harness calls it, under ``no_grad``),
  then the harness's own post-processing, ``harness.inference.normalized_maps`` (bilinear
  upsampling + min-max). Included in the timing. The gradient sources forward the encoder
  once without a graph and backpropagate through the head only; on CPU the sources forward
  channels-last images (their default).
- grad-cam: ``cam(input_tensor=images, targets=[ClassifierOutputTarget(c), ...])`` on a wrapper
  module returning the logits, with ``target_layers`` = the classifier's last feature stage. Its
  object (hooks) is built once, outside the timing; its resize and normalization are included.
  It gets the images as given (NCHW), or channels-last with ``--lib-channels-last`` (to
  separate the layout's share of the speed-up from the method's).

Maps are compared in the same run: our maps go through grad-cam's post-processing (ReLU'd
feature-resolution map -> min-max with /(max + 1e-7) -> cv2 bilinear resize -> min-max again)
and the max abs difference with grad-cam's output must be <= 1e-4 (asserted). ``cam`` is
compared with grad-cam's GradCAM (on a GAP->linear head Grad-CAM = ReLU(CAM) / Z) and
``smoothgradcampp`` (not in grad-cam) with its GradCAM++ (the head's gradient does not depend on
the input, so the noise cannot change it); neither gets a speed-up ratio.

Each call is timed ``--repeat`` times, the methods interleaved, after one warm-up call (which is
the one compared); the best time is reported (other jobs on the machine only ever add time).
Score-CAM costs K masked forwards per image on both sides (K = 128 channels at resnet18's
stride-8 stage), so it runs on its own, smaller setting.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import types

import cv2
import numpy as np
import torch
from tabulate import tabulate
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import pytorch_grad_cam as pgc  # noqa: E402
import pytorch_grad_cam.score_cam  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from harness.inference import normalized_maps  # noqa: E402
from harness.models.classifier import Classifier  # noqa: E402
from harness.plugins.cam_baselines.cam import CAM  # noqa: E402
from harness.plugins.cam_baselines.gradcam import GradCAM  # noqa: E402
from harness.plugins.cam_baselines.gradcampp import GradCAMPlusPlus  # noqa: E402
from harness.plugins.cam_baselines.layercam import LayerCAM  # noqa: E402
from harness.plugins.cam_baselines.scorecam import ScoreCAM  # noqa: E402
from harness.plugins.cam_baselines.smoothgradcampp import SmoothGradCAMPlusPlus  # noqa: E402
from harness.plugins.cam_baselines.xgradcam import XGradCAM  # noqa: E402

# (harness source, grad-cam class, whether the ratio is a like-for-like speed-up)
GRADIENT_ROWS = [
    (CAM(), pgc.GradCAM, False),
    (GradCAM(), pgc.GradCAM, True),
    (GradCAMPlusPlus(), pgc.GradCAMPlusPlus, True),
    (XGradCAM(), pgc.XGradCAM, True),
    (LayerCAM(), pgc.LayerCAM, True),
    (SmoothGradCAMPlusPlus(n=4, sigma=0.3), pgc.GradCAMPlusPlus, False),
]
TOLERANCE = 1e-4

# grad-cam's ScoreCAM draws a tqdm bar per image; silence it (in that module only).
pytorch_grad_cam.score_cam.tqdm = types.SimpleNamespace(tqdm=lambda iterable, *a, **k: iterable)


class Logits(nn.Module):
    def __init__(self, clf: Classifier):
        super().__init__()
        self.clf = clf

    def forward(self, x):
        return self.clf(x)[0]


def grad_cam_postprocess(maps: torch.Tensor, size) -> np.ndarray:
    def minmax(m):
        m = m - m.min()
        return m / (1e-7 + m.max())

    maps = torch.relu(maps).float().cpu().numpy()
    return np.float32([minmax(cv2.resize(minmax(m), (size[1], size[0]))) for m in maps])


def timed(fn, repeat_log: list[float]) -> None:
    t0 = time.perf_counter()
    fn()
    repeat_log.append(time.perf_counter() - t0)


def bench(backbone: str, rows, args, size: int, batch: int, device) -> list[list]:
    torch.manual_seed(0)
    model = Classifier(backbone, args.num_classes, args.feature_index).to(device).eval()
    images = torch.randn(batch, 3, size, size, device=device)
    classes = torch.randint(0, args.num_classes, (batch,), device=device)
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    lib_images = images.contiguous(memory_format=torch.channels_last) if args.lib_channels_last else images
    layer = model.encoder.get_submodule(model.encoder.feature_info.module_name()[-1])
    with torch.no_grad():
        feat_shape = tuple(model(images[:1])[1].shape[1:])

    def ours_fn(source):
        def run():
            with torch.no_grad():
                maps, _ = source(model, images, classes)
                return maps, normalized_maps(maps, (size, size), "bilinear")
        return run

    # grad-cam objects (hooks) built once; each grad-cam class is run (and timed) once, and rows
    # that compare with the same class (cam and gradcam, gradcampp and smoothgradcampp) share it
    libs, lib_out, lib_times = {}, {}, {}
    for _, lib_cls, _ in rows:
        if lib_cls not in libs:
            lib = libs[lib_cls] = lib_cls(model=Logits(model), target_layers=[layer])
            if lib_cls is pgc.ScoreCAM:
                lib.batch_size = 16  # grad-cam's default for ScoreCAM, made explicit
            lib_out[lib_cls] = lib(input_tensor=lib_images, targets=targets)  # warm-up = compared
            lib_times[lib_cls] = []

    prepared = []
    for source, lib_cls, like_for_like in rows:
        run = ours_fn(source)
        maps, _ = run()  # warm-up = compared
        diff = float(np.abs(grad_cam_postprocess(maps, (size, size)) - lib_out[lib_cls]).max())
        assert diff <= TOLERANCE, f"{source.name} vs grad-cam {lib_cls.__name__}: max |diff| {diff:.2e} > {TOLERANCE}"
        prepared.append((source, lib_cls, like_for_like, run, diff, []))

    for _ in range(args.repeat):  # interleaved
        for source, lib_cls, like, run, diff, t_ours in prepared:
            timed(run, t_ours)
        for lib_cls, lib in libs.items():
            timed(lambda: lib(input_tensor=lib_images, targets=targets), lib_times[lib_cls])
    for lib in libs.values():
        lib.activations_and_grads.release()
    model.zero_grad(set_to_none=True)

    table = []
    for source, lib_cls, like, run, diff, t_ours in prepared:
        ours_rate, lib_rate = batch / min(t_ours), batch / min(lib_times[lib_cls])
        table.append([
            backbone, f"{tuple(feat_shape)}", f"{batch}x{size}²", source.name, lib_cls.__name__,
            f"{ours_rate:.1f}", f"{lib_rate:.1f}",
            f"{ours_rate / lib_rate:.1f}x" if like else "(n/a)", f"{diff:.1e}",
        ])
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbones", default="resnet18,resnet50")
    p.add_argument("--feature-index", type=int, default=2, help="classifier.feature_index (harness default 2)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--scorecam-backbones", default="resnet18", help="'' to skip Score-CAM")
    p.add_argument("--scorecam-size", type=int, default=112)
    p.add_argument("--scorecam-batch", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--lib-channels-last", action="store_true",
                   help="give grad-cam the images in channels-last layout too (the harness sources "
                        "use it on CPU by default)")
    args = p.parse_args()
    device = torch.device(args.device)

    t0 = time.perf_counter()
    table = []
    for backbone in filter(None, args.backbones.split(",")):
        table += bench(backbone, GRADIENT_ROWS, args, args.size, args.batch, device)
    for backbone in filter(None, args.scorecam_backbones.split(",")):
        rows = [(ScoreCAM(), pgc.ScoreCAM, True)]  # chunks of 32 masked inputs (grad-cam: 16)
        table += bench(backbone, rows, args, args.scorecam_size, args.scorecam_batch, device)

    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"feature_index {args.feature_index}, best of {args.repeat}, maps at input resolution, normalized, "
          f"grad-cam input {'channels-last' if args.lib_channels_last else 'as given (NCHW)'}; "
          f"{time.perf_counter() - t0:.0f} s in all")
    print(tabulate(table, headers=["backbone", "features (K,h,w)", "batch", "source", "grad-cam class",
                                   "harness maps/s", "grad-cam maps/s", "speed-up", "max |Δ|"],
                   tablefmt="github"))


if __name__ == "__main__":
    main()
