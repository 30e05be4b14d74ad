"""A finished run directory as the report reads it: the result record and the cached
evaluation records it was selected from."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness import io
from harness.errors import HarnessError
from harness.evaluation import BoxAccumulator
from harness.groups import KIND as GROUP_KIND
from harness.leaderboard.runs import evaluations
from harness.protocol import Protocol
from harness.results import RESULT_FILE, read_record

# read_record checks protocol, dataset, selection and metrics; the report reads these too.
_ALSO_REQUIRED = ("run_id", "plugin", "config")


@dataclass
class Run:
    dir: Path
    record: dict
    _evals: dict = field(default_factory=dict, repr=False)

    @property
    def protocol(self) -> Protocol:
        return Protocol.from_config(self.record["protocol"])

    @property
    def selection(self) -> dict:
        return self.record["selection"]

    @property
    def epoch(self) -> int:
        return int(self.selection["epoch"])

    @property
    def taus(self) -> list[float] | None:
        """The chosen threshold of each class; None: Otsu's threshold of each map."""
        return self.selection["tau"]

    @property
    def iou(self) -> float:
        return float(self.record["config"]["eval"]["iou_threshold"])

    @property
    def multi_contour(self) -> bool:
        return bool(self.record["config"]["eval"]["multi_contour"])

    @property
    def classes(self) -> list[str]:
        return list(self.record["dataset"]["classes"])

    @property
    def pseudo_target(self) -> str | None:
        """The annotator whose pseudo-boxes the protocol selected with, if any."""
        sup = self.protocol.supervision
        return sup.split(":", 1)[1] if sup.startswith("pseudo:") else None

    def epochs(self) -> list[int]:
        return sorted(int(e) for e in self.selection["epoch_scores"])

    def eval_record(self, split: str, epoch: int) -> dict | None:
        """``evals/<split>-epoch<NNN>.json``, or None when it is missing, unreadable, or was
        rebuilt since under other evaluation settings (its numbers would not be the run's)."""
        key = (split, epoch)
        if key not in self._evals:
            self._evals[key] = self._read_eval(self.dir / "evals" / f"{split}-epoch{epoch:03d}.json")
        return self._evals[key]

    def _read_eval(self, path: Path) -> dict | None:
        try:
            rec = io.read_json(path, "evaluation record")
        except HarnessError:
            return None
        if not isinstance(rec, dict):
            return None
        settings = rec.get("settings") or {}
        same = (settings.get("eval") == self.record["config"]["eval"]
                and settings.get("dataset") == self.record["dataset"].get("identity"))
        return rec if same else None

    def boxes(self, split: str, epoch: int, target: str = "gt") -> BoxAccumulator | None:
        """Box counts of a (split, epoch) against GT or an annotator's pseudo-boxes, if recorded."""
        rec = self.eval_record(split, epoch)
        if rec is None:
            return None
        if target == "gt":
            return BoxAccumulator.from_state_dict(rec["boxes"])
        state = ((rec.get("targets") or {}).get(target) or {}).get("boxes")
        return None if state is None else BoxAccumulator.from_state_dict(state)

    def tau_indices(self, thresholds: np.ndarray) -> np.ndarray | None:
        """The chosen taus as indices into ``thresholds`` (the record stores the values)."""
        if self.taus is None:
            return None
        return np.array([int(np.argmin(np.abs(thresholds - t))) for t in self.taus])

    def other_evaluations(self, damaged: list[str] | None = None) -> list[dict]:
        """Re-selections of this run under other protocols or evaluation settings (``harness eval
        --protocol all|grid``, ``--cfg-options eval.*``); a damaged record is left out and
        described in ``damaged``."""
        return [rec for _, rec in evaluations(self.dir, damaged if damaged is not None else [], other_settings=True)]


def load_run(run_dir: str | Path) -> Run:
    """The finished run in ``run_dir``; a :class:`HarnessError` naming the path otherwise."""
    run_dir = Path(run_dir)
    path = run_dir / RESULT_FILE
    if not run_dir.is_dir():
        raise HarnessError(f"{run_dir} does not exist: pass a run directory written by `harness run`")
    if not path.is_file():
        raise HarnessError(
            f"{run_dir} is not a finished run directory (no {RESULT_FILE} in it): pass a directory "
            f"written by `harness run`, or finish this one with `harness run --resume {run_dir}`"
        )
    record = read_record(path)
    if record.get("kind") == GROUP_KIND:  # its selection is per seed: not one run's to draw
        raise HarnessError(f"{run_dir} is a seed group (`harness run --seeds`), not a run: its page is written by "
                           f"`harness report --group {run_dir}`; each seed's run is under {run_dir / 'runs'}")
    missing = [k for k in _ALSO_REQUIRED if k not in record]
    if missing:
        raise HarnessError(f"{path} is not a run result (it lacks {', '.join(missing)}); it is written by "
                           f"`harness run`, which `harness run --resume {run_dir}` completes")
    settings = record["config"].get("eval")
    if not (isinstance(settings, dict) and {"iou_threshold", "multi_contour"} <= set(settings)):
        raise HarnessError(f"{path} is not a run result: its config has no eval.iou_threshold and "
                           "eval.multi_contour (the evaluation settings the report draws with)")
    return Run(run_dir, record)
