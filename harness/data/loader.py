"""Torch views of a :class:`harness.data.base.Split`: tensors, augmentation, loaders."""
from __future__ import annotations

import cv2
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from harness.data.base import Split
from harness.errors import HarnessError

# ImageNet statistics, what most backbones the papers use were pretrained with; a method
# whose weights expect other ones says so (Method.normalization).
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
Normalization = tuple[tuple[float, ...], tuple[float, ...]]


def make_loader(dataset: Dataset, num_workers: int = 0, **kwargs) -> DataLoader:
    """A DataLoader whose worker processes can use OpenCV.

    OpenCV's thread pool does not survive fork: a worker forked while the parent's pool
    threads exist deadlocks on its first parallel cv2 call (a resize, a blur). With workers,
    the workers are the parallelism, so the parent's pool is shrunk to one thread before they
    fork, and each worker runs OpenCV on one thread."""
    if num_workers > 0:
        cv2.setNumThreads(1)
        kwargs["worker_init_fn"] = _single_threaded_worker
    return DataLoader(dataset, num_workers=num_workers, **kwargs)


def _single_threaded_worker(_: int) -> None:
    cv2.setNumThreads(1)


def to_tensor(image: np.ndarray, normalization: Normalization = IMAGENET) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> normalized float (3, H, W)."""
    mean, std = (np.asarray(v, dtype=np.float32) for v in normalization)
    x = (np.asarray(image, dtype=np.float32) / 255.0 - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


class FrameDataset(Dataset):
    def __init__(self, split: Split, hflip: bool = False, normalization: Normalization = IMAGENET):
        self.split = split
        self.hflip = hflip
        self.normalization = normalization

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict:
        image = to_tensor(self.split.image(i), self.normalization)
        flipped = bool(self.hflip and torch.rand(()) < 0.5)  # torch RNG: seeded per epoch by the runner
        if flipped:
            image = image.flip(-1)
        # `flipped` lets a stage flip per-frame maps it keeps (e.g. stored CAMs) the same way
        return {"image": image, "label": self.split.frames[i].label, "index": i, "flipped": flipped}


def train_loader(split: Split, batch_size: int, seed: int, num_workers: int = 0, hflip: bool = False,
                 normalization: Normalization = IMAGENET, batch_sampler=None) -> DataLoader:
    """Shuffled loader whose order depends only on ``seed`` (resumed runs see the same batches).
    ``batch_sampler`` (e.g. whole groups of frames of a shot) replaces the shuffled batches."""
    gen = torch.Generator().manual_seed(seed)
    if batch_sampler is not None:
        return make_loader(FrameDataset(split, hflip=hflip, normalization=normalization), num_workers,
                           batch_sampler=batch_sampler, generator=gen)
    return make_loader(
        FrameDataset(split, hflip=hflip, normalization=normalization),
        num_workers,
        batch_size=batch_size,
        shuffle=True,
        drop_last=len(split) > batch_size,  # a 1-frame last batch breaks BatchNorm
        generator=gen,
    )


def shuffled_batches(split: Split, batch_size: int, seed: int) -> list[list[int]]:
    """The batches of frame indices :func:`train_loader` shuffles for ``seed``, drawn the same
    way: the loader's iterator takes its workers' base seed from the generator first, then the
    sampler its permutation (tests/test_distributed.py checks the two against each other)."""
    gen = torch.Generator().manual_seed(seed)
    torch.empty((), dtype=torch.int64).random_(generator=gen)
    return list(BatchSampler(RandomSampler(range(len(split)), generator=gen), batch_size,
                             drop_last=len(split) > batch_size))


class RankBatches:
    """Under torchrun, this rank's contiguous block of each of the epoch's ``batches`` (every rank
    draws the same batches from the epoch seed). A batch with fewer frames than ranks is
    dropped on every rank, so that all ranks take the same number of steps."""

    def __init__(self, batches):
        from harness import distributed

        self.batches, self.rank, self.world = batches, distributed.rank(), distributed.world_size()

    def __iter__(self):
        for b in self.batches:
            b = list(b)
            if len(b) >= self.world:
                yield b[self.rank * len(b) // self.world:(self.rank + 1) * len(b) // self.world]

    def __len__(self) -> int:
        return len(self.batches)


def eval_loader(split: Split, batch_size: int, num_workers: int = 0,
                normalization: Normalization = IMAGENET) -> DataLoader:
    return make_loader(FrameDataset(split, normalization=normalization), num_workers, batch_size=batch_size,
                       shuffle=False)


def check_finite_images(batch: dict, split: Split, normalization=None) -> None:
    """A batch with a NaN/inf pixel is the input's fault, named by frame, before a model turns
    it into an all-NaN map or loss that would be blamed on the model (or the learning rate)."""
    bad = ~torch.isfinite(batch["image"]).flatten(1).all(1)
    if not bad.any():
        return
    ids = [split.frames[int(i)].id for i in torch.as_tensor(batch["index"]).cpu()[bad.cpu()]]
    shown = ", ".join(map(repr, ids[:5])) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
    norm = f" (mean/std {normalization})" if normalization is not None else ""
    raise HarnessError(
        f"split {split.name!r}: the input image of frame(s) {shown} holds NaN/inf pixels after normalization"
        f"{norm}; the input is bad, not the model: check the dataset's images (e.g. `harness data prepare`, or "
        f"its plugin's reader) and the method's normalization (a zero std divides by zero)"
    )
