"""Torch views of a :class:`harness.data.base.Split`: tensors, augmentation, loaders."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from harness.data.base import Split

# ImageNet statistics: every timm backbone the papers use was pretrained with them.
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> normalized float (3, H, W)."""
    x = (np.asarray(image, dtype=np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


class FrameDataset(Dataset):
    def __init__(self, split: Split, hflip: bool = False):
        self.split = split
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict:
        image = to_tensor(self.split.image(i))
        if self.hflip and torch.rand(()) < 0.5:  # torch RNG: seeded per epoch by the runner
            image = image.flip(-1)
        return {"image": image, "label": self.split.frames[i].label, "index": i}


def train_loader(split: Split, batch_size: int, seed: int, num_workers: int = 0, hflip: bool = False) -> DataLoader:
    """Shuffled loader whose order depends only on ``seed`` (resumed runs see the same batches)."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        FrameDataset(split, hflip=hflip),
        batch_size=batch_size,
        shuffle=True,
        drop_last=len(split) > batch_size,  # a 1-frame last batch breaks BatchNorm
        num_workers=num_workers,
        generator=gen,
    )


def eval_loader(split: Split, batch_size: int, num_workers: int = 0) -> DataLoader:
    return DataLoader(FrameDataset(split), batch_size=batch_size, shuffle=False, num_workers=num_workers)
