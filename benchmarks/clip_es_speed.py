"""CLIP-ES maps per second: the plugin's batched path against the authors' per-image loop.

Both run in this process on the same random CLIP ViT-B/16 at 224x224 (no weights needed), on
the same images and classes, and their maps are asserted equal before any time is printed.

The per-image loop is written out below the way the authors' generate_cams_voc12.py runs it
(shared/reference/refcode_eval_cam_clipes.md §3.5): batch 1; blocks 0..L-2 under no_grad with
``nn.MultiheadAttention(need_weights=True)``; the last block with grad; pytorch-grad-cam's
hooks and ``loss.backward()`` (the authors never turn off the parameters' gradients, so the
backward also fills the last block's weight gradients, and ``zero_grad`` clears them each
time); explicit Sinkhorn matrices, ``S @ S`` and the masked product; contour boxes.

    python benchmarks/clip_es_speed.py                 # 16 images, batches of 16, CPU
    python benchmarks/clip_es_speed.py --device cuda   # adds the Triton CAA kernel vs torch

Goal (issue 15): at least 3x the per-image loop's maps/s on the 2-core CPU.
"""
from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tabulate import tabulate

from harness.annotators.clip_maps import class_text_features, load_clip
from harness.plugins.clip_es.caa import caa_refine
from harness.plugins.clip_es.model import clip_es_maps
from harness.plugins.clip_es.text import background_words

VOC10 = ["aeroplane", "bird avian", "boat", "car", "cat", "cow", "dog", "horse", "motorbike", "train"]


def authors_loop(model, images, classes, class_text, background_text, attn_layers=8, tau=0.4, iters=3):
    """One image at a time, one class each, as the authors' code does it."""
    v = model.visual
    blocks = list(v.transformer.resblocks)
    out = []
    for img, cls in zip(images, classes):
        with torch.no_grad():
            x = v.conv1(img[None])
            gh, gw = x.shape[-2:]
            x = x.flatten(2).transpose(1, 2)
            x = torch.cat([v.class_embedding[None, None].to(x.dtype), x], 1) + v.positional_embedding
            x = v.ln_pre(x)
            maps = []
            for blk in blocks[:-1]:
                h = blk.ln_1(x)
                att, w = blk.attn(h, h, h, need_weights=True)
                maps.append(w)
                x = x + att
                x = x + blk.mlp(blk.ln_2(x))
        last = blocks[-1]
        store = {}
        handle_f = last.ln_1.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
        handle_b = last.ln_1.register_full_backward_hook(lambda m, gi, go: store.__setitem__("g", go[0]))
        try:
            tokens = x.detach().requires_grad_(True)
            h = last.ln_1(tokens)
            att, w = last.attn(h, h, h, need_weights=True)
            y = tokens + att
            y = y + last.mlp(last.ln_2(y))
            y = v.ln_post(y)
            emb = F.normalize(y[:, 1:].mean(1) @ v.proj, dim=-1)
            texts = torch.cat([class_text[int(cls)][None], background_text])
            prob = torch.softmax(model.logit_scale.exp() * emb @ texts.T, dim=-1)[0, 0]
            model.zero_grad()
            prob.backward()
        finally:
            handle_f.remove()
            handle_b.remove()
        maps.append(w.detach())
        a, g = store["a"][0, 1:].detach(), store["g"][0, 1:]
        cam = torch.relu((a * g.mean(0)).sum(-1)).reshape(gh, gw).cpu().numpy()
        cam = cam - cam.min()
        cam = cam / (1e-7 + cam.max())
        attn = torch.stack(maps[-attn_layers:]).mean(0)[0, 1:, 1:]
        q = (cam * 255).astype(np.uint8)
        _, binary = cv2.threshold(q, int(tau * np.max(q)), 255, cv2.THRESH_BINARY)
        mask = np.zeros((gh, gw), dtype=np.float32)
        for c in cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]:
            bx, by, bw, bh = cv2.boundingRect(c)
            mask[by:by + bh, bx:bx + bw] = 1
        d = attn / attn.sum(dim=0, keepdim=True)
        d = d / d.sum(dim=1, keepdim=True)
        for _ in range(iters - 1):
            d = d / d.sum(dim=0, keepdim=True)
            d = d / d.sum(dim=1, keepdim=True)
        s = (d + d.T) / 2
        s = s @ s
        s = s * torch.from_numpy(mask.reshape(1, -1)).to(s.device)
        refined = (s @ torch.from_numpy(cam.reshape(-1)).to(s.device)).reshape(gh, gw)
        refined = refined - refined.min()
        out.append(refined / (1e-7 + refined.max()))
    return torch.stack(out)


def batched(model, images, classes, class_text, background_text, batch):
    return torch.cat([clip_es_maps(model, images[i:i + batch], classes[i:i + batch], class_text, background_text).maps
                      for i in range(0, len(images), batch)])


def timed(fn, repeat):
    fn()  # warm-up (allocator, kernels)
    best = float("inf")
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best, out


def caa_rows(device, repeat):
    """The CAA step alone at 224 (196 tokens): the authors' explicit matrices per image, the
    batched torch path, and (CUDA) the Triton kernel."""
    b, n = 64, 196
    g = torch.Generator().manual_seed(1)
    attn = torch.softmax(torch.randn(b, n + 1, n + 1, generator=g) * 3, -1)[:, 1:, 1:].to(device)
    cam = torch.rand(b, n, generator=g).to(device)
    mask = (torch.rand(b, n, generator=g) > 0.5).to(device)

    def explicit():
        out = []
        for a, c, m in zip(attn, cam, mask):
            d = a / a.sum(0, keepdim=True)
            d = d / d.sum(1, keepdim=True)
            for _ in range(2):
                d = d / d.sum(0, keepdim=True)
                d = d / d.sum(1, keepdim=True)
            s = (d + d.T) / 2
            s = s @ s
            out.append((s * m[None].float()) @ c)
        return torch.stack(out)

    t_ref, ref = timed(explicit, repeat)
    rows = [["per image, explicit S @ S", f"{b / t_ref:,.0f}", "1.00x"]]
    backends = ["torch"] + (["triton"] if device.type == "cuda" else [])
    for backend in backends:
        t, out = timed(lambda: caa_refine(attn, cam, mask, backend=backend), repeat)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-6)
        rows.append([f"batched, {backend}", f"{b / t:,.0f}", f"{t_ref / t:.2f}x"])
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--check", type=int, default=2, help="images compared in float64")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model, _, tokenizer = load_clip("ViT-B-16", None, random_init=True, device=device)
    model.logit_scale.data.fill_(float(np.log(100.0)))  # trained CLIP's scale (the random init's is 1/0.07)
    class_text = class_text_features(model, tokenizer, VOC10, ["a clean origami {}."], device=device)
    background_text = class_text_features(model, tokenizer, background_words("voc"), ["a clean origami {}."],
                                          device=device)
    images = torch.randn(args.images, 3, args.size, args.size, device=device)
    classes = torch.randint(0, len(VOC10), (args.images,), device=device)

    # Equal maps first, in float64: in float32 the Grad-CAM sum over 768 channels cancels enough
    # that the two orders of operations differ by ~1e-2 on random weights.
    k = min(args.check, args.images)
    model.double()
    ref = authors_loop(model, images[:k].double(), classes[:k], class_text.double(), background_text.double())
    ours = batched(model, images[:k].double(), classes[:k], class_text.double(), background_text.double(), args.batch)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6)
    model.float()
    model.zero_grad(set_to_none=True)

    t_loop, ref = timed(lambda: authors_loop(model, images, classes, class_text, background_text), args.repeat)
    model.zero_grad(set_to_none=True)
    t_ours, ours = timed(lambda: batched(model, images, classes, class_text, background_text, args.batch), args.repeat)
    diff = float((ours - ref).abs().max())
    print(f"CLIP-ES maps/s, random ViT-B/16 at {args.size}x{args.size}, {args.images} images, device {device}, "
          f"{torch.get_num_threads()} threads (best of {args.repeat}); maps equal in float64 on {k} images "
          f"(rtol 1e-5), float32 timed runs differ by at most {diff:.2g}")
    print(tabulate([["authors' per-image loop (batch 1)", f"{args.images / t_loop:.2f}", "1.00x"],
                    [f"plugin, batches of {args.batch}", f"{args.images / t_ours:.2f}", f"{t_loop / t_ours:.2f}x"]],
                   headers=["path", "maps/s", "ratio"], tablefmt="github"))
    print()
    print("CAA refinement alone, 64 maps of 196 tokens:")
    print(tabulate(caa_rows(device, max(args.repeat, 3)), headers=["path", "maps/s", "ratio"], tablefmt="github"))


if __name__ == "__main__":
    main()
