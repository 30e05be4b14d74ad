"""A user's runs as rows of a published table.

A run's record (``result.json``, or a re-evaluation under another protocol in
``evaluations/``) fills the cells whose column asks for a metric the record has, on the
column's dataset (or the synthetic stand-in of it), for the column's class, IoU, backbone
family and supervision. Everything else stays empty: a cell is never guessed.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

from harness.errors import HarnessError
from harness.leaderboard.tables import Column, Table, all_tables
from harness.results import RESULT_FILE

# The synthetic datasets exercise the same pipeline as the real ones; their rows are
# shown beside a real table, marked, never ranked.
STAND_INS = {"synth-yto": ("ytov1", "ytov2.2"), "synth-cub": ("cub", "ilsvrc", "openimages")}

# How the chapter names what chose epoch and threshold, from a protocol's supervision.
_SUPERVISION = {"gt": "gt", "cls": "cls", "pseudo:cam-pg": "ss", "pseudo:rpn": "rpn", "pseudo:clip": "clip"}
_ANNOTATOR = {"ss": "cam-pg", "rpn": "rpn", "clip": "clip"}


@dataclass
class RunRecord:
    run_dir: Path
    record: dict
    source: str  # "result.json" or "evaluations/<name>.json"

    @property
    def run_id(self) -> str:
        return self.record.get("run_id", self.run_dir.name)

    @property
    def plugin(self) -> str:
        return self.record.get("plugin", "?")

    @property
    def dataset(self) -> str:
        return self.record["dataset"]["name"]

    @property
    def backbone(self) -> str:
        cfg = self.record.get("config") or {}
        return (cfg.get("classifier") or {}).get("backbone") or "?"

    @property
    def protocol(self) -> str:
        return self.record["protocol"]["name"]

    @property
    def code(self) -> str:
        from harness.protocol import Protocol

        return Protocol.from_config(self.record["protocol"]).code

    @property
    def supervision(self) -> str:
        sup = self.record["protocol"]["supervision"]
        return _SUPERVISION.get(sup, sup.removeprefix("pseudo:"))

    @property
    def synth(self) -> bool:
        return self.dataset in STAND_INS

    def stands_for(self, dataset: str | None) -> bool:
        return dataset is not None and (dataset == self.dataset or dataset in STAND_INS.get(self.dataset, ()))


def run_dirs(paths: list[str | Path]) -> list[Path]:
    """Run directories from arguments that are run directories or run roots; plain files
    are passed over, so ``--runs runs/*`` may match a root's leaderboard.md."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise HarnessError(f"--runs {p}: no such directory")
        if p.is_file():
            continue
        if (p / RESULT_FILE).is_file():
            found.append(p)
            continue
        children = sorted(c for c in p.iterdir() if (c / RESULT_FILE).is_file()) if p.is_dir() else []
        if not children:
            raise HarnessError(f"--runs {p}: neither a finished run (no {RESULT_FILE}) nor a folder of runs; "
                               f"finish it with `harness run --resume {p}` or pass the run directory")
        found += children
    if paths and not found:
        raise HarnessError(f"--runs {' '.join(map(str, paths))}: no run directory among them")
    return list(dict.fromkeys(found))


def load_record(run_dir: Path, protocol: str | None = None) -> RunRecord:
    """The run's own result, or its re-evaluation under ``protocol``."""
    if protocol is None:
        return RunRecord(run_dir, _read(run_dir / RESULT_FILE), RESULT_FILE)
    own = _read(run_dir / RESULT_FILE)
    if own["protocol"]["name"] == protocol or protocol in own["protocol"].get("aliases", []):
        return RunRecord(run_dir, own, RESULT_FILE)
    path = _evaluation_path(run_dir, protocol)
    if path is None:
        raise HarnessError(f"{run_dir} has no evaluation under protocol {protocol!r}: run "
                           f"`harness eval --run {run_dir} --protocol all` first")
    return _reevaluation(run_dir, path, own)


def all_records(run_dir: Path) -> list[RunRecord]:
    """The run's result and every re-evaluation of it (presets and the grid), one per
    (setting code, supervision); the run's own result wins a tie."""
    own = load_record(run_dir)
    out: dict[tuple[str, str], RunRecord] = {(own.code, own.supervision): own}
    for path in [*sorted((run_dir / "evaluations").glob("*.json")),
                 *sorted((run_dir / "evaluations" / "grid").glob("*.json"))]:
        r = _reevaluation(run_dir, path, own.record)
        out.setdefault((r.code, r.supervision), r)
    return list(out.values())


def _reevaluation(run_dir: Path, path: Path, own: dict) -> RunRecord:
    """A record of ``harness eval``; it leaves the config out, which is the run's own."""
    record = _read(path)
    record.setdefault("config", own.get("config", {}))
    return RunRecord(run_dir, record, str(path.relative_to(run_dir)))


def fitting_tables(runs: list[RunRecord]) -> list[str]:
    """Ids of the published tables at least one of ``runs`` fills a cell of."""
    return [t.id for t in all_tables().values() if any(fits(t, r) for r in runs)]


def target_dataset(table: Table, run: RunRecord) -> str | None:
    """The table dataset a run's row speaks for: its own, else the first the synthetic stand-in
    covers, in column order (a synth-cub run fills the CUB columns of a CUB + ILSVRC table, not both)."""
    order = list(dict.fromkeys(c.dataset for c in table.columns if c.role == "value"))
    return next((d for d in order if d == run.dataset), None) or next((d for d in order if run.stands_for(d)), None)


def cell_value(column: Column, run: RunRecord, dataset: str | None = None) -> float | None:
    """The value of ``column`` from the run's test metrics, or None when the run has no such cell;
    ``dataset``: the table dataset the run speaks for (:func:`target_dataset`)."""
    if column.role != "value" or column.dataset != (dataset or run.dataset):
        return None
    if column.backbone and _family(column.backbone) != _family(run.backbone):
        return None
    if column.supervision and column.metric != "pseudo_box_iou" and column.supervision != run.supervision:
        return None
    m = run.record["metrics"].get("test", {})
    iou = f"{column.iou if column.iou is not None else 0.5:g}"
    metric = column.metric
    if metric == "corloc_class":
        classes = run.record["dataset"]["classes"]
        return m["corloc_per_class"][classes.index(column.cls)] if column.cls in classes else None
    if metric in ("max_box_acc", "box_acc"):
        return (m.get(metric) or {}).get(iou)
    if metric in ("max_box_acc_v2", "box_acc_v2"):
        per_iou = m.get(metric.removesuffix("_v2")) or {}
        values = [per_iou.get(k) for k in ("0.3", "0.5", "0.7")]
        return mean(values) if None not in values else None
    if metric == "mean_iou":
        return None if m.get("mean_iou") is None else 100 * m["mean_iou"]
    if metric == "pseudo_box_iou":
        annotator = _ANNOTATOR.get(column.supervision or "", column.supervision)
        quality = ((run.record.get("pseudo_boxes") or {}).get(annotator) or {}).get("quality", {})
        return (quality.get("val") or {}).get("mean_iou")
    if metric in ("corloc", "cls_accuracy", "pxap", "top1_loc", "top5_loc"):
        return m.get(metric)
    return None  # time, other: nothing the harness measures


def fits(table: Table, run: RunRecord) -> bool:
    target = target_dataset(table, run)
    return target is not None and any(cell_value(c, run, target) is not None for c in table.columns)


def _family(backbone: str) -> str:
    """resnet18/resnet50 -> resnet, vgg16 -> vgg, inceptionv3 -> inception, deit-s -> deit."""
    m = re.match(r"[a-z]+", backbone.lower().replace("-", "").replace("_", ""))
    return m.group(0) if m else backbone


def _evaluation_path(run_dir: Path, protocol: str) -> Path | None:
    for path in sorted((run_dir / "evaluations").glob("*.json")):
        rec = _read(path)
        if rec["protocol"]["name"] == protocol or protocol in rec["protocol"].get("aliases", []):
            return path
    return None


def _read(path: Path) -> dict:
    try:
        rec = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise HarnessError(f"{path} does not exist") from None
    except (OSError, json.JSONDecodeError) as e:
        raise HarnessError(f"{path} is not a readable result record ({e}); re-run `harness eval` on the run") from e
    for key in ("protocol", "dataset", "metrics"):
        if key not in rec:
            raise HarnessError(f"{path} is not a result record (no {key!r})")
    return rec
