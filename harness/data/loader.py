"""Torch views of a :class:`harness.data.base.Split`: tensors, augmentation, loaders."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from harness.data.base import Split

# ImageNet statistics, what most backbones the papers use were pretrained with; a method
# whose weights expect other ones says so (Method.normalization).
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
Normalization = tuple[tuple[float, ...], tuple[float, ...]]


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
        return DataLoader(FrameDataset(split, hflip=hflip, normalization=normalization), batch_sampler=batch_sampler,
                          num_workers=num_workers, generator=gen)
    return DataLoader(
        FrameDataset(split, hflip=hflip, normalization=normalization),
        batch_size=batch_size,
        shuffle=True,
        drop_last=len(split) > batch_size,  # a 1-frame last batch breaks BatchNorm
        num_workers=num_workers,
        generator=gen,
    )


def eval_loader(split: Split, batch_size: int, num_workers: int = 0,
                normalization: Normalization = IMAGENET) -> DataLoader:
    return DataLoader(FrameDataset(split, normalization=normalization), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers)
