"""Choose the epoch and the CAM threshold as a protocol says, from per-threshold curves.

``curves(split, epoch)`` returns the (classes x thresholds) CorLoc curves of a checkpoint on
a split; the runner evaluates and caches them on demand, so only what a protocol needs is
ever computed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from harness.errors import HarnessError
from harness.evaluation import corloc_at, select_threshold
from harness.protocol import Protocol

Curves = Callable[[str, int], np.ndarray]

# Axes values the engine can run today; the rest of the chapter's axes arrive with their
# annotators (pseudo-boxes) and per-map thresholds (Otsu).
_SUPPORTED = {"supervision": {"gt"}, "threshold_source": {"val", "test"}}


@dataclass
class Selection:
    epoch: int
    tau_index: np.ndarray  # (C,) threshold index per class (all equal for a global tau)
    epoch_scores: dict[int, float]  # selection metric of every candidate epoch

    def taus(self, thresholds: np.ndarray) -> list[float]:
        return [float(thresholds[i]) for i in self.tau_index]


def check_supported(protocol: Protocol) -> None:
    for axis, values in _SUPPORTED.items():
        value = getattr(protocol, axis)
        if value not in values:
            raise HarnessError(
                f"protocol {protocol.name!r}: {axis}={value!r} is not supported by this version of "
                f"the selection engine (supported: {', '.join(sorted(values))})"
            )


def best_score(curves: np.ndarray, scope: str) -> float:
    """Class-mean CorLoc at the best threshold(s) of these curves."""
    return corloc_at(curves, select_threshold(curves, scope))["mean"]


def select(protocol: Protocol, epochs: list[int], curves: Curves) -> Selection:
    check_supported(protocol)
    if not epochs:
        raise HarnessError("no trained epoch to select from: the run has no checkpoint")
    scores = {e: best_score(curves(protocol.selection_split, e), protocol.threshold_scope) for e in epochs}
    # Ties go to the earliest epoch: the cheapest model that reaches the score.
    epoch = max(epochs, key=lambda e: (scores[e], -e))
    tau_index = select_threshold(curves(protocol.threshold_source, epoch), protocol.threshold_scope)
    return Selection(epoch=epoch, tau_index=np.asarray(tau_index), epoch_scores=scores)
