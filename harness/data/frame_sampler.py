"""Training frames drawn anew each epoch: ``k`` frames of each shot (``loader.train_frames_per_shot``).

The TrCAM-V paper "randomly selected a few frames for each shot for each gradient descent
step"; the CoLo-CAM / TCAM authors' code draws one random frame of each shot per epoch. With
``loader.train_frames_per_shot = k > 0`` every epoch draws, from each shot of the train split
(a shot = the frames with the same ``(video, shot)``), ``k`` distinct frames uniformly (all of
them when the shot has fewer), shuffles the drawn frames together and cuts them into batches
of the stage's batch size. The draw depends only on the epoch seed
(:func:`harness.runner.epoch_seed`), so a resumed run draws what an uninterrupted one does,
and another epoch draws another subset. ``k = 0`` (the harness default) trains on every frame
of the train split every epoch.

The last batch is treated as the plain shuffled loader treats it
(:func:`harness.data.loader.train_loader`): when more frames are drawn than one batch holds,
an incomplete last batch is dropped (a 1-frame batch breaks BatchNorm), so up to
``batch_size - 1`` drawn frames are not seen that epoch; the next epoch draws afresh.

Image datasets (``kind == "image"``): every image is its own shot, so the setting would draw
every image every epoch, only in another order than the plain loader; it is not applied
there (:func:`effective_frames_per_shot` is 0) and the record says so. A stage that brings its
own batches (``Stage.batch_sampler``, e.g. CoLo-CAM's clips of a shot) keeps them: its sampler
already decides which frames of a shot an epoch sees.
"""
from __future__ import annotations

import numpy as np

from harness.data.base import Split
from harness.errors import HarnessError

KEY = "loader.train_frames_per_shot"


def frames_per_shot(cfg) -> int:
    """The checked ``loader.train_frames_per_shot`` of a config (0 where the config has none,
    e.g. a run made before the setting existed, or an annotator's classifier)."""
    loader = cfg.get("loader") if hasattr(cfg, "get") else None
    value = loader.get("train_frames_per_shot", 0) if hasattr(loader, "get") else 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise HarnessError(
            f"config key {KEY!r} = {value!r}: it must be a whole number >= 0 (0: every train frame every "
            f"epoch; k: k frames of each shot drawn anew each epoch)"
        )
    return value


def effective_frames_per_shot(cfg, dataset) -> int:
    """What the runner applies: the setting on a video dataset, 0 on an image dataset (each image
    is its own shot: drawing would only reorder the plain loader's epoch)."""
    k = frames_per_shot(cfg)
    return 0 if getattr(dataset, "kind", "video") == "image" else k


def shot_groups(split: Split) -> list[list[int]]:
    """Frame indices of each shot of ``split``, shots in order of first appearance, frames in
    split order."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, f in enumerate(split.frames):
        groups.setdefault((f.video, f.shot), []).append(i)
    return list(groups.values())


class FramesPerShotSampler:
    """Batches of frame indices for one epoch: ``k`` frames of each shot drawn without
    replacement (all of a shorter shot), shuffled, cut into ``batch_size`` batches. A
    ``batch_sampler`` for :class:`torch.utils.data.DataLoader`, as :class:`harness.fcam.clips.ClipBatchSampler`."""

    def __init__(self, split: Split, k: int, batch_size: int, seed: int):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise HarnessError(f"{KEY}={k!r}: the sampler draws a whole number >= 1 of frames per shot")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise HarnessError(f"batch_size={batch_size!r} must be a whole number >= 1")
        self.shots = [np.asarray(g, dtype=np.int64) for g in shot_groups(split)]
        self.k, self.batch_size, self.seed = k, batch_size, int(seed)
        self.drawn_per_epoch = sum(min(k, len(g)) for g in self.shots)

    def draw(self) -> np.ndarray:
        """The epoch's frames, in the order they are trained."""
        rng = np.random.default_rng(self.seed)
        parts = [g if len(g) <= self.k else rng.choice(g, size=self.k, replace=False) for g in self.shots]
        drawn = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return rng.permutation(drawn)

    def _drop_last(self) -> bool:
        return self.drawn_per_epoch > self.batch_size  # as train_loader: a 1-frame batch breaks BatchNorm

    def __iter__(self):
        order = self.draw().tolist()
        n = len(order)
        stop = n - n % self.batch_size if self._drop_last() else n
        for start in range(0, stop, self.batch_size):
            yield order[start:start + self.batch_size]

    def __len__(self) -> int:
        n = self.drawn_per_epoch
        if self._drop_last():
            return n // self.batch_size
        return 1 if n else 0
