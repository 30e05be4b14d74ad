"""Clip-aware batches: each batch holds whole groups of ``n`` frames of one shot, as the
multi-frame CoLo-CAM term needs (CoLo-CAM Sec. 4.3e). One group per shot per epoch, shots in
a seeded random order; a batch packs ``max(1, batch_size // n)`` groups.

Frame choice within a shot (``style``):

- ``adjacent`` (default, the paper's best): a uniformly drawn frame and its ``n - 1``
  previous ones (shifted forward at the start of the shot);
- ``interval``: the shot split into ``n`` equal parts, one uniform frame from each;
- ``gaussian``: ``n`` distinct frames drawn around the middle of the shot (std = a quarter of
  its length: the paper gives no value).

``central_fraction`` < 1 restricts the choice to the middle of the shot (the authors' code:
``sample_fr_limit`` = 0.6). A shot shorter than ``n`` gives all its frames.
"""
from __future__ import annotations

import numpy as np

from harness.data.base import Split
from harness.errors import HarnessError

STYLES = ("adjacent", "interval", "gaussian")


def shots(split: Split) -> list[list[int]]:
    """Frame indices of each shot, in frame order; shots in order of first appearance."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, f in enumerate(split.frames):
        groups.setdefault((f.video, f.shot), []).append(i)
    return [sorted(g, key=lambda i: split.frames[i].index) for g in groups.values()]


def pick(members: list[int], n: int, style: str, rng: np.random.Generator, central_fraction: float = 1.0) -> list[int]:
    m = len(members)
    if central_fraction < 1 and m > 2:
        keep = max(n, int(np.floor(central_fraction * m)))
        start = (m - keep) // 2
        members = members[start:start + keep]
        m = len(members)
    if m <= n:
        return list(members)
    if style == "adjacent":
        t = int(rng.integers(0, m))
        first = max(0, t - n + 1)
        return members[first:first + n]
    if style == "interval":
        parts = np.array_split(np.arange(m), n)
        return [members[int(rng.choice(p))] for p in parts]
    mid, std = (m - 1) / 2, max(m / 4, 1.0)
    w = np.exp(-0.5 * ((np.arange(m) - mid) / std) ** 2)
    chosen = rng.choice(m, size=n, replace=False, p=w / w.sum())
    return [members[i] for i in sorted(chosen)]


class ClipBatchSampler:
    def __init__(self, split: Split, n: int, style: str, batch_size: int, seed: int, central_fraction: float = 1.0):
        if style not in STYLES:
            raise HarnessError(f"clips.style={style!r}: use one of {', '.join(STYLES)}")
        if n < 1:
            raise HarnessError(f"clips.n={n} must be >= 1")
        if not 0 < central_fraction <= 1:
            raise HarnessError(f"clips.central_fraction={central_fraction} must be in (0, 1]")
        self.shots = shots(split)
        self.n, self.style, self.seed, self.central = n, style, seed, central_fraction
        self.groups_per_batch = max(1, batch_size // n)

    def _groups(self) -> list[list[int]]:
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(self.shots))
        return [pick(self.shots[s], self.n, self.style, rng, self.central) for s in order]

    def __iter__(self):
        groups = self._groups()
        for start in range(0, len(groups), self.groups_per_batch):
            batch = [i for g in groups[start:start + self.groups_per_batch] for i in g]
            if len(batch) > 1:  # a 1-frame batch breaks BatchNorm
                yield batch

    def __len__(self) -> int:
        return sum(1 for _ in self)  # cheap: draws indices only
