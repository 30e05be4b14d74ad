"""Decoder-stage training throughput (frames/s) of F-CAM, TCAM and CoLo-CAM on synth-yto,
same machine, same classifier, same batches of the same size; printed with CoLo-CAM's cost
relative to F-CAM (its extra multi-frame colour CRF) and the CRF terms' share of a step. The CAM
bank is built before timing.

The CRF share: wall time inside the CRF terms' forward (features, the filter and the loss
value) over the whole step (loss, backward, optimizer step). Their backward is not included:
it is one scaling of the forward's W P (``dense_crf_loss``), about a millionth of a step's work.

    python benchmarks/fcam_throughput.py [--steps 20] [--batch 32] [--device cpu] [--plugins fcam,tcam,colocam]
"""
from __future__ import annotations

import argparse
import time

import torch
from mmengine.config import Config
from tabulate import tabulate

from harness import config as config_mod
from harness.data.loader import train_loader
from harness.registry import registry
from harness.runner import annotator_defaults, seed_everything


def build(plugin: str, batch: int, device):
    reg = registry()
    cfg = config_mod.compose(reg.get("method", plugin).config, None, reg.get("dataset", "synth-yto").config,
                             defaults=annotator_defaults())
    cfg.method.decoder.batch_size = batch
    ds = reg.get("dataset", "synth-yto").factory(cfg.data, progress=False)
    seed_everything(0)
    method = reg.get("method", plugin).factory(cfg, ds.num_classes).to(device)
    return cfg, ds, method


class Timed:
    """A loss term whose calls add their wall time to ``total[0]``."""

    def __init__(self, term, total: list, device):
        self.term, self.total, self.device = term, total, device

    def __getattr__(self, name):
        return getattr(self.term, name)

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = self.term(*args, **kwargs)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.total[0] += time.perf_counter() - t0
        return out


def measure(plugin: str, steps: int, batch: int, device) -> dict:
    cfg, ds, method = build(plugin, batch, device)
    stage = method.stages[1]
    split = ds.split("train")
    stage.prepare(split, device, progress=False)
    stage.begin_epoch(1)
    opt, _ = stage.optimizer()
    stage.train_mode()
    loader = train_loader(split, stage.batch_size, 0, 0, hflip=True, normalization=method.normalization,
                          batch_sampler=stage.batch_sampler(split, 0))
    crf_time = [0.0]
    stage.crf, stage.coloc = Timed(stage.crf, crf_time, device), Timed(stage.coloc, crf_time, device)
    frames, elapsed, done, crf_s = 0, 0.0, 0, 0.0
    while done < steps + 2:
        for batch in loader:
            batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
            t = time.perf_counter()
            crf_time[0] = 0.0
            loss, _ = stage.loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if done >= 2:  # warm-up: numba compilation, allocator
                elapsed += time.perf_counter() - t
                crf_s += crf_time[0]
                frames += batch["image"].shape[0]
            done += 1
            if done >= steps + 2:
                break
    return {"plugin": plugin, "frames": frames, "s": elapsed, "fps": frames / elapsed, "crf_s": crf_s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--plugins", default="fcam,tcam,colocam")
    args = ap.parse_args()
    device = torch.device(args.device)
    rows = [measure(p, args.steps, args.batch, device) for p in args.plugins.split(",")]
    base = rows[0]["fps"]
    print(f"decoder-stage training on synth-yto 64x64, batch {args.batch}, {args.steps} steps, {device}, "
          f"{torch.get_num_threads()} threads")
    print(tabulate([[r["plugin"], r["frames"], f"{r['s']:.2f}", f"{r['fps']:.1f}", f"{r['fps'] / base:.2f}x",
                     f"{1e3 * r['s'] / args.steps:.0f}", f"{1e3 * r['crf_s'] / args.steps:.1f}",
                     f"{100 * r['crf_s'] / r['s']:.1f}%"] for r in rows],
                   headers=["plugin", "frames", "seconds", "frames/s", "vs first", "ms/step", "CRF ms/step",
                            "CRF share"], tablefmt="github"))


if __name__ == "__main__":
    main()
