"""The method-plugin interface: models, training stages, localization maps.

A method never evaluates or selects itself; the protocol does that, so every method is
judged the same way. The runner owns the loops, checkpoints, seeding and devices.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn


@dataclass
class Prediction:
    """Output of :meth:`Method.predict` for a batch."""

    maps: torch.Tensor  # (B, h, w) raw localization maps for the requested classes
    logits: torch.Tensor  # (B, C) class scores


class Stage(ABC):
    """One training stage (e.g. the classifier, then a decoder over the frozen classifier)."""

    name: str
    epochs: int
    batch_size: int
    hflip: bool = False  # random horizontal flips of training frames

    @abstractmethod
    def parameters(self) -> Iterable[nn.Parameter]:
        """The parameters this stage trains."""

    @abstractmethod
    def optimizer(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
        """A fresh optimizer (and per-epoch scheduler) for this stage."""

    @abstractmethod
    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """Loss of a training batch and scalars to log (e.g. accuracy)."""

    def train_mode(self) -> None:
        """Put the modules of this stage in training mode (frozen parts stay in eval)."""

    def prepare(self, split, device, progress: bool = True) -> None:
        """Called once before the stage's first trained epoch (also after a resume), with the
        train split: e.g. to compute per-frame maps from an earlier, frozen stage."""

    def begin_epoch(self, epoch: int) -> None:
        """Called before each training epoch (1-based): schedules that depend on the epoch."""
        self.epoch = epoch

    def batch_sampler(self, split, seed: int):
        """Batches of frame indices for one epoch, or None for shuffled single frames."""
        return None

    def cache_key(self) -> dict | None:
        """What determines this stage's trained weights besides the dataset and the seed, when
        they can be shared across runs and methods (None: never shared)."""
        return None


class Method(ABC):
    """Base class of method plugins. ``factory(cfg, num_classes)`` builds one."""

    def __init__(self, cfg, num_classes: int):
        self.cfg = cfg
        self.num_classes = num_classes

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel (mean, std) the models expect their RGB input in [0, 1] normalized with."""
        from harness.data.loader import IMAGENET

        return IMAGENET

    @property
    @abstractmethod
    def stages(self) -> list[Stage]:
        """Training stages in order; the last one produces the evaluated maps."""

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """Named modules whose state makes a checkpoint."""

    @abstractmethod
    def predict(self, images: torch.Tensor, classes: torch.Tensor) -> Prediction:
        """Localization maps for ``classes`` (one per image) and class scores."""

    def to(self, device: torch.device) -> "Method":
        for module in self.modules().values():
            module.to(device)
        return self

    def eval_mode(self) -> None:
        for module in self.modules().values():
            module.eval()

    def state_dict(self) -> dict:
        return {name: m.state_dict() for name, m in self.modules().items()}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """``strict=False`` loads the modules present in ``state`` and leaves the others (a
        stage trained by another method carries only the modules it shares with this one)."""
        for name, module in self.modules().items():
            if name in state or strict:
                module.load_state_dict(state[name])
