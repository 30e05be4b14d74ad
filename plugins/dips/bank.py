"""Per training frame: the class-token maps of the frozen encoder and the proposals of Algorithm
2.1 scored by f_r; computed once, kept on the device, and cached on disk with a key.

At every step :meth:`ProposalBank.sample` draws one of a frame's proposals uniformly and samples
pixels from it (thesis Sec. 2.3.3), through the F-CAM family's sampler
(harness/fcam/pseudo_labels.py):

- foreground: the top ``fg_top_p`` of the pixels inside the proposal's box, ranked by the map of
  the head that gave the box (no Otsu condition: ``fg_otsu=False``), drawn multinomially;
- background: the lowest ``bg_p`` of the pixels outside every proposal box of the frame, by
  that map, drawn uniformly;
- as many of each (``balanced``).

The cache lives under ``$HARNESS_HOME/dips-proposals/``, one file per split and key. The key
hashes the proposal settings, the heads, the frame size, the frame ids and a few frames' pixels,
the weights of the encoder and of f_r, and the harness version: a change to any of them gives a
new file, and a rerun or a resumed run reads the old one. The file holds tensors only and is
read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import torch
from tqdm import tqdm

from harness import __version__, io, locks
from harness.data.loader import check_finite_images, eval_loader
from harness.errors import HarnessError
from harness.fcam.pseudo_labels import SamplerConfig, sample_labels
from harness.paths import harness_home
from harness.stage_cache import stage_key

from .model import upsample
from .proposals import ProposalConfig, Proposals, box_mask, propose

log = logging.getLogger("harness")


def weights_digest(module: torch.nn.Module) -> str:
    """A hash of a module's parameters and buffers (names, shapes, values)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _frames_digest(split) -> str:
    h = hashlib.sha256("\n".join(f.id for f in split.frames).encode())
    for i in sorted({0, len(split) // 2, len(split) - 1}):
        h.update(split.image(i).tobytes())
    return h.hexdigest()[:16]


def cache_path(split, description: dict) -> Path:
    return harness_home() / "dips-proposals" / f"{split.name}-{stage_key(description)}.pt"


class ProposalBank:
    def __init__(self, maps: torch.Tensor, proposals: Proposals, size: tuple[int, int], patch: int):
        self.maps = maps  # (N, M, gh, gw) float16 in [0, 1], on the device
        self.proposals = proposals  # on the device
        self.size = size
        self.patch = patch

    @classmethod
    @torch.no_grad()
    def build(cls, encoder, classifier, split, device, cfg: ProposalConfig, *, batch_size: int = 32,
              normalization=None, classifier_normalization=None, progress: bool = True) -> "ProposalBank":
        """``encoder`` (plugins/dips/model.py AttentionEncoder) and ``classifier`` (f_r) frozen;
        frames normalized for the encoder, re-normalized for f_r when the two differ."""
        size = tuple(split.image(0).shape[:2])
        description = {"proposals": dataclasses.asdict(cfg), "heads": encoder.heads, "size": size,
                       "frames": _frames_digest(split), "encoder": weights_digest(encoder),
                       "f_r": weights_digest(classifier), "normalization": [normalization, classifier_normalization],
                       "harness": __version__}
        path = cache_path(split, description)
        # one run computes a split's proposals, the others (same key) wait, then read them
        with locks.file_lock(path.with_suffix(".lock"), f"another run computing the DiPS proposals of {split.name}"):
            if path.is_file():
                try:
                    state = io.load_tensors(path, "DiPS proposal cache")
                    if state["frames"] == len(split):
                        log.info("DiPS proposals of %d %s frames read from %s", len(split), split.name, path)
                        return cls(state["maps"].to(device), Proposals.from_state(state["proposals"]).to(device), size,
                                   encoder.patch)
                    log.warning("DiPS proposal cache %s does not match the split; computing the proposals again", path)
                except (HarnessError, KeyError, TypeError, AttributeError) as exc:
                    log.warning("DiPS proposal cache %s is unreadable (%s); computing the proposals again", path, exc)
            encoder.eval()
            classifier.eval()
            maps, props = [], []
            loader = (eval_loader(split, batch_size, 0, normalization) if normalization
                      else eval_loader(split, batch_size))
            for batch in tqdm(loader, desc="DiPS proposals of the train frames", leave=False, disable=not progress):
                check_finite_images(batch, split, normalization)
                images = batch["image"].to(device)
                labels = batch["label"].to(device)
                m = encoder.maps(images)
                if not torch.isfinite(m).all():
                    raise HarnessError("dips: the encoder's attention maps hold NaN/inf: the encoder stage diverged")
                x = renormalize(images, normalization, classifier_normalization)
                props.append(propose(classifier, x, labels, upsample(m, size, encoder.patch), cfg))
                maps.append(m.half())
            bank = cls(torch.cat(maps), Proposals.cat(props), size, encoder.patch)
            io.save_tensors(path, {"frames": len(split), "maps": bank.maps.cpu(),
                                   "proposals": bank.proposals.to("cpu").state(),
                                   "description": json.dumps(description)})
            log.info("DiPS proposals cached in %s", path)
            return bank

    def sample(self, indices: torch.Tensor, flipped: torch.Tensor | None, cfg: SamplerConfig,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Pseudo-labels (B, H, W) of frames ``indices``: one proposal drawn uniformly per frame."""
        p = self.proposals
        idx = indices.to(self.maps.device)
        count = p.count[idx]
        u = torch.rand(len(idx), device=idx.device, generator=generator)
        pick = (u * count).long().clamp_max(count - 1)
        head = p.heads[idx, pick]
        cams = upsample(self.maps[idx, head][:, None], self.size, self.patch)[:, 0]
        h, w = self.size
        b, k = p.boxes[idx].shape[:2]
        roi = box_mask(p.boxes[idx, pick], h, w)
        every = box_mask(p.boxes[idx].reshape(b * k, 4), h, w).reshape(b, k, h, w)
        any_box = (every & (torch.arange(k, device=idx.device)[None] < count[:, None])[:, :, None, None]).any(1)
        bg_roi = ~any_box
        if flipped is not None:
            f = flipped.to(cams.device).bool()[:, None, None]
            cams, roi, bg_roi = (torch.where(f, t.flip(-1), t) for t in (cams, roi, bg_roi))
        return sample_labels(cams, cfg, roi, generator, bg_roi=bg_roi)


def renormalize(images: torch.Tensor, src, dst) -> torch.Tensor:
    """Frames normalized with ``src`` (mean, std) as if normalized with ``dst``."""
    if src is None or dst is None or tuple(map(tuple, src)) == tuple(map(tuple, dst)):
        return images
    t = [torch.tensor(v, device=images.device, dtype=images.dtype)[:, None, None] for v in (*src, *dst)]
    return (images * t[1] + t[0] - t[2]) / t[3]
