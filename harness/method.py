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
    trains: bool = True  # False: see NoTrainingStage

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


class NoTrainingStage(Stage):
    """The one stage of a training-free method (CLIP-ES): its single "epoch" trains nothing.

    The runner writes that epoch's checkpoint (the method's state as built, which may be empty)
    and evaluates it like a trained epoch, so the protocol still chooses the CAM threshold and
    ``eval``, ``sweep``, the reports and the leaderboards treat the method like any other. The
    epoch is numbered 1, the only candidate of the epoch selection."""

    trains = False
    epochs = 1
    batch_size = 1

    def __init__(self, name: str = "zero-shot"):
        self.name = name

    def parameters(self) -> Iterable[nn.Parameter]:
        return iter(())

    def optimizer(self):  # pragma: no cover - the runner never asks a stage that trains nothing
        raise NotImplementedError(f"stage {self.name!r} trains nothing")

    def loss(self, batch: dict):  # pragma: no cover - idem
        raise NotImplementedError(f"stage {self.name!r} trains nothing")


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

    def provenance(self) -> dict:
        """Facts about how this method was built that its results should carry, as plain JSON
        data (e.g. which weights were loaded, or that an encoder was fine-tuned for want of
        them): the run's result.json keeps them under ``method_provenance``."""
        return {}

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


# ----------------------------------------------------------------------------- the contract, checked


def checked_optimizer(stage: Stage, who: str):
    """``stage.optimizer()`` as the runner needs it: ``(optimizer, scheduler or None)``."""
    from harness.errors import HarnessError, plugin_code

    with plugin_code(who, f"stage {stage.name!r} optimizer()"):
        out = stage.optimizer()
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], torch.optim.Optimizer)
            and (out[1] is None or hasattr(out[1], "step") and hasattr(out[1], "state_dict"))):
        raise HarnessError(f"{who}: stage {stage.name!r} optimizer() returned {type(out).__name__}; it returns "
                           f"(torch.optim.Optimizer, per-epoch scheduler or None)")
    return out


def checked_loss(stage: Stage, batch: dict, who: str) -> tuple[torch.Tensor, dict]:
    """``stage.loss(batch)`` as the runner needs it: ``(scalar tensor with a graph, dict of
    floats)``."""
    from harness.errors import HarnessError, plugin_code

    with plugin_code(who, f"stage {stage.name!r} loss()"):
        out = stage.loss(batch)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], torch.Tensor) and out[0].numel() == 1
            and isinstance(out[1], dict)):
        raise HarnessError(f"{who}: stage {stage.name!r} loss() returned {type(out).__name__}; it returns "
                           f"(loss, scalars): a one-element tensor and a dict of floats to log, e.g. (loss, {{}})")
    loss, scalars = out
    if not loss.requires_grad:
        raise HarnessError(f"{who}: stage {stage.name!r} loss() returned a tensor without a gradient: it must be "
                           f"computed from the stage's trainable parameters")
    bad = [k for k, v in scalars.items() if not isinstance(v, (int, float)) or isinstance(v, bool)]
    if bad:
        raise HarnessError(f"{who}: stage {stage.name!r} loss() logs {bad[0]!r} as {type(scalars[bad[0]]).__name__}; "
                           f"the scalars to log are plain floats (e.g. value.item())")
    return loss.reshape(()), scalars


def checked_prediction(method: Method, images: torch.Tensor, classes: torch.Tensor, who: str) -> Prediction:
    """``method.predict(...)`` as the evaluation needs it: maps (B, h, w), logits (B, C)."""
    from harness.errors import HarnessError, plugin_code

    with plugin_code(who, "predict()"):
        pred = method.predict(images, classes)
    b = images.shape[0]
    if not (isinstance(pred, Prediction) and isinstance(pred.maps, torch.Tensor)
            and isinstance(pred.logits, torch.Tensor)):
        raise HarnessError(f"{who}: predict() returned {type(pred).__name__}; it returns "
                           f"harness.method.Prediction(maps=(B, h, w) tensor, logits=(B, C) tensor)")
    if pred.maps.dim() != 3 or pred.maps.shape[0] != b or pred.logits.dim() != 2 or pred.logits.shape[0] != b:
        raise HarnessError(f"{who}: predict() returned maps {tuple(pred.maps.shape)} and logits "
                           f"{tuple(pred.logits.shape)} for {b} images; expected maps (B, h, w) and logits (B, C)")
    return pred
