"""A user's runs as rows of a published table.

A run's record (``result.json``, or a re-evaluation under another protocol in
``evaluations/``) fills the cells whose column asks for a metric the record has, on the
column's dataset (or the synthetic stand-in of it), for the column's class, IoU, backbone
family and supervision. Everything else stays empty: a cell is never guessed.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from statistics import mean

from harness.errors import HarnessError
from harness.leaderboard.tables import Column, Table, all_tables
from harness.results import RESULT_FILE, read_record

log = logging.getLogger("harness")

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
        """The method as rows name it: the plugin, plus the CAM source when the run swapped in
        another one (``cam+eigencam``)."""
        return self.record.get("method_label") or self.record.get("plugin", "?")

    @property
    def dataset(self) -> str:
        return self.record["dataset"]["name"]

    @property
    def backbone(self) -> str:
        """``method.backbone`` for a method whose maps do not come from the shared classifier
        (CLIP-ES: ``clip``), else the classifier's."""
        config = self.record.get("config") or {}
        method = config.get("method")
        if isinstance(method, dict) and method.get("backbone"):
            b = method["backbone"]  # a name, or a section with one (TrCAM-V, DiPS: arch)
            return str(b.get("arch") or "?") if isinstance(b, dict) else str(b)
        classifier = config.get("classifier")
        return (classifier.get("backbone") if isinstance(classifier, dict) else None) or "?"

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

    @cached_property
    def seeds(self) -> list[RunRecord]:
        """A seed group's members as records of their own (``harness run --seeds``): the group's
        record with each seed's metrics in place of the mean, so :func:`cell_value` reads a seed's
        cell as it reads the group's; empty for a single run. (read_record has checked that a
        group's ``seeds`` each hold their metrics.)"""
        if self.record.get("kind") != "seed-group":
            return []
        return [RunRecord(self.run_dir, {**self.record, "metrics": m["metrics"]}, self.source)
                for m in self.record["seeds"]]

    @property
    def interval(self) -> dict | None:
        """The bootstrap interval of test CorLoc (``low``, ``high``, ``level``, ``n_boot``,
        ``resampled``), None where the record has none (runs made before intervals were recorded)."""
        ci = ((self.record.get("uncertainty") or {}).get("test") or {}).get("corloc")
        ok = isinstance(ci, dict) and all(_number(ci.get(k)) is not None for k in ("low", "high"))
        return ci if ok else None

    def stands_for(self, dataset: str | None) -> bool:
        return dataset is not None and (dataset == self.dataset or dataset in STAND_INS.get(self.dataset, ()))


def run_dirs(paths: list[str | Path]) -> list[Path]:
    """Run directories from arguments that are run directories or run roots; plain files
    are passed over, so ``--runs runs/*`` may match a root's leaderboard.md."""
    found: list[Path] = []
    unfinished: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise HarnessError(f"--runs {p}: no such directory")
        if p.is_file():
            continue
        if (p / RESULT_FILE).is_file():
            found.append(p)
            continue
        if (p / "config.py").is_file() and len(paths) > 1:  # a run in progress, or killed, among others
            unfinished.append(p)
            continue
        children = sorted(c for c in p.iterdir() if (c / RESULT_FILE).is_file()) if p.is_dir() else []
        if not children:
            raise HarnessError(f"--runs {p}: neither a finished run (no {RESULT_FILE}) nor a folder of runs; "
                               f"finish it with `harness run --resume {p}` or pass the run directory")
        found += children
    if paths and not found:
        raise HarnessError(f"--runs {' '.join(map(str, paths))}: no finished run directory among them"
                           + (f" ({len(unfinished)} unfinished: `harness run --resume DIR` finishes one)"
                              if unfinished else ""))
    for p in unfinished:
        log.warning("left out %s: the run has not finished (no %s); `harness run --resume %s` finishes it",
                    p, RESULT_FILE, p)
    return list(dict.fromkeys(found))


def load_record(run_dir: Path, protocol: str | None = None, skipped: list[str] | None = None) -> RunRecord:
    """The run's own result, or its re-evaluation under ``protocol``; ``skipped`` collects
    the damaged re-evaluations passed over (see :func:`evaluations`)."""
    own = read_record(run_dir / RESULT_FILE)
    if protocol is None or own["protocol"]["name"] == protocol or protocol in own["protocol"].get("aliases", []):
        return RunRecord(run_dir, own, RESULT_FILE)
    damaged: list[str] = []
    for path, rec in evaluations(run_dir, damaged):
        if rec["protocol"]["name"] == protocol or protocol in rec["protocol"].get("aliases", []):
            _pass_on(damaged, skipped)
            return _reevaluation(run_dir, path, rec, own)
    _pass_on(damaged, skipped)
    unreadable = f" (left out as damaged: {'; '.join(damaged)})" if damaged else ""
    which = "--group" if own.get("kind") == "seed-group" else "--run"
    raise HarnessError(f"{run_dir} has no evaluation under protocol {protocol!r}{unreadable}: run "
                       f"`harness eval {which} {run_dir} --protocol all` first")


def all_records(run_dir: Path, skipped: list[str] | None = None) -> list[RunRecord]:
    """The run's result and every re-evaluation of it (presets and the grid), one per
    (setting code, supervision); the run's own result wins a tie."""
    own = load_record(run_dir)
    out: dict[tuple[str, str], RunRecord] = {(own.code, own.supervision): own}
    damaged: list[str] = []
    for path, rec in evaluations(run_dir, damaged):
        r = _reevaluation(run_dir, path, rec, own.record)
        out.setdefault((r.code, r.supervision), r)
    _pass_on(damaged, skipped)
    return list(out.values())


def evaluations(run_dir: Path, damaged: list[str], other_settings: bool = False) -> list[tuple[Path, dict]]:
    """The run's re-evaluation records (``evaluations/*.json``, then ``evaluations/grid/``); with
    ``other_settings``, also those under evaluation settings unlike the run's own
    (``settings-<key>/`` folders), whose numbers a table must not mix with the run's. A damaged
    record is left out and described in ``damaged``: one bad file must not hide the others."""
    folders = [run_dir / "evaluations", run_dir / "evaluations" / "grid"]
    if other_settings:
        folders += [d for f in folders[:2] for d in sorted(f.glob("settings-*")) if d.is_dir()]
    out = []
    for path in (p for folder in folders for p in sorted(folder.glob("*.json")) if p.name != "settings.json"):
        try:
            out.append((path, read_record(path)))
        except HarnessError as exc:
            damaged.append(str(exc))
    return out


def _pass_on(damaged: list[str], skipped: list[str] | None) -> None:
    if skipped is None:
        for why in damaged:
            log.warning("left out: %s", why)
    else:
        skipped += damaged


def _reevaluation(run_dir: Path, path: Path, record: dict, own: dict) -> RunRecord:
    """A record of ``harness eval``; it leaves the config out, which is the run's own."""
    record.setdefault("config", own.get("config", {}))
    return RunRecord(run_dir, record, str(path.relative_to(run_dir)))


def fitting_tables(runs: list[RunRecord]) -> list[str]:
    """Ids of the published tables at least one of ``runs`` fills a cell of."""
    return [t.id for t in all_tables().values() if any(fits(t, r) for r in runs)]


def target_dataset(table: Table, run: RunRecord) -> str | None:
    """The table dataset a run's row speaks for: its own, else the first the synthetic stand-in
    covers, in the stand-in's order (a synth-cub run fills the CUB columns of a CUB + ILSVRC
    table, whichever comes first, and not both)."""
    present = {c.dataset for c in table.columns if c.role == "value"}
    if run.dataset in present:
        return run.dataset
    # the stand-in's own order: synth-cub is CUB first, even where a table puts ILSVRC first
    return next((d for d in STAND_INS.get(run.dataset, ()) if d in present), None)


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
        classes, per_class = run.record["dataset"]["classes"], m.get("corloc_per_class")
        if column.cls not in classes or not isinstance(per_class, list) or len(per_class) != len(classes):
            return None
        return _number(per_class[classes.index(column.cls)])
    if metric in ("max_box_acc", "box_acc"):
        return _number(_per_iou(m, metric).get(iou))
    if metric in ("max_box_acc_v2", "box_acc_v2"):
        values = [_number(_per_iou(m, metric.removesuffix("_v2")).get(k)) for k in ("0.3", "0.5", "0.7")]
        return mean(values) if None not in values else None
    if metric == "mean_iou":
        v = _number(m.get("mean_iou"))
        return None if v is None else 100 * v
    if metric == "pseudo_box_iou":
        annotator = _ANNOTATOR.get(column.supervision or "", column.supervision)
        quality = ((run.record.get("pseudo_boxes") or {}).get(annotator) or {}).get("quality", {})
        return _number((quality.get("val") or {}).get("mean_iou"))
    if metric in ("corloc", "cls_accuracy", "pxap", "top1_loc", "top5_loc"):
        return _number(m.get(metric))
    return None  # time, other: nothing the harness measures


def fits(table: Table, run: RunRecord) -> bool:
    target = target_dataset(table, run)
    return target is not None and any(cell_value(c, run, target) is not None for c in table.columns)


def _family(backbone: str) -> str:
    """resnet18/resnet50 -> resnet, vgg16 -> vgg, inceptionv3 -> inception, deit-s -> deit."""
    m = re.match(r"[a-z]+", backbone.lower().replace("-", "").replace("_", ""))
    return m.group(0) if m else backbone


# A record's metrics passed harness.results.record_problems, which allows a metric of another
# shape (a list where a table expects a number): such a cell stays empty rather than failing.
def _number(v) -> float | None:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _per_iou(metrics: dict, name: str) -> dict:
    v = metrics.get(name)
    return v if isinstance(v, dict) else {}
