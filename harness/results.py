"""Result records (one ``result.json`` per run, full provenance) and the run-root leaderboard."""
from __future__ import annotations

import importlib.metadata as md
import logging
import platform
import subprocess
from pathlib import Path

from tabulate import tabulate

from harness import io
from harness.errors import HarnessError

log = logging.getLogger("harness")

RESULT_FILE = "result.json"
LEADERBOARD_FILE = "leaderboard.md"
_PACKAGES = ("wsol-harness", "torch", "torchvision", "timm", "numpy", "opencv-python-headless", "mmengine", "pluggy")


def package_versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def git_revision(where: str | Path | None = None) -> str | None:
    """Revision of the source tree at ``where`` (default: the harness's own), ``+dirty`` with
    local changes, if it is a git checkout."""
    here = Path(where) if where else Path(__file__).resolve().parent
    if not here.is_dir():
        return None
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict:
    return {
        "packages": package_versions(),
        "git_revision": git_revision(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def distribution_provenance(entry) -> dict:
    """The distribution (name, version) that registered a registry entry, and the git revision
    of the plugin's source when it is a checkout (an editable install of a plugin under work)."""
    name, _, version = (entry.distribution or "?").partition(" ")
    return {"plugin": entry.plugin, "distribution": name, "version": version or None,
            "git_revision": git_revision(entry.source_path) if entry.source_path else None}


def write_result(run_dir: Path, record: dict) -> Path:
    path = Path(run_dir) / RESULT_FILE
    io.write_json(path, record)
    return path


# ------------------------------------------------------------------ reading records back

_NUMBER = (int, float)


def _is_number(v) -> bool:
    return isinstance(v, _NUMBER) and not isinstance(v, bool)


def _metric_value_ok(v) -> bool:
    """A metric is a number, null, a list of those (per class) or a dict of those (per IoU)."""
    if v is None or _is_number(v) or isinstance(v, str):
        return True
    if isinstance(v, list):
        return all(x is None or _is_number(x) for x in v)
    if isinstance(v, dict):
        return all(x is None or _is_number(x) for x in v.values())
    return False


def record_problems(record) -> list[str]:
    """What keeps ``record`` from being a result record the harness can read (empty when it
    is one): a run's ``result.json``, a re-evaluation under ``evaluations/``, or a sweep's
    result. Every reader of records (leaderboards, reports, resume) checks through this, so a
    foreign or damaged file is named instead of failing deep inside a table."""
    if not isinstance(record, dict):
        return [f"it holds a {type(record).__name__}, not an object"]
    out = []

    def need(obj, key, types, where, what):
        if key not in obj:
            out.append(f"no {where}{key}")
            return None
        v = obj[key]
        if not isinstance(v, types) or isinstance(v, bool):  # JSON true is not an epoch
            out.append(f"{where}{key} is {type(v).__name__} {v!r:.40}, expected {what}")
            return None
        return v

    protocol = need(record, "protocol", dict, "", "an object")
    if protocol is not None:
        from harness.protocol import Protocol

        try:  # the same checks as a protocol file's: types, choices, a safe name
            Protocol.from_config(protocol)
        except HarnessError as exc:
            out.append(f"its protocol is not valid ({exc})")
    dataset = need(record, "dataset", dict, "", "an object")
    if dataset is not None:
        need(dataset, "name", str, "dataset.", "a string")
        classes = need(dataset, "classes", list, "dataset.", "a list of class names")
        if classes is not None and not all(isinstance(c, str) for c in classes):
            out.append("dataset.classes holds something other than strings")
    selection = need(record, "selection", dict, "", "an object")
    if selection is not None and record.get("kind") == "seed-group":  # harness/groups.py: a choice per seed
        epochs, taus = selection.get("epoch"), selection.get("tau")
        if not (isinstance(epochs, list) and epochs and all(isinstance(e, int) and not isinstance(e, bool)
                                                            for e in epochs)):
            out.append(f"selection.epoch is {epochs!r:.40}, expected the epoch of each seed")
        if not (isinstance(taus, list) and all(t is None or isinstance(t, list) and all(_is_number(x) for x in t)
                                               for t in taus)):
            out.append(f"selection.tau is {taus!r:.40}, expected the thresholds (or null) of each seed")
        seeds = record.get("seeds")
        if not (isinstance(seeds, list) and all(isinstance(m, dict) and isinstance(m.get("metrics"), dict)
                                                for m in seeds)):
            out.append("seeds is not a list of each seed's {seed, run_id, metrics}")
    elif selection is not None:
        need(selection, "epoch", int, "selection.", "an integer")
        tau = selection.get("tau")
        if not (tau is None or isinstance(tau, list) and all(_is_number(t) for t in tau)):
            out.append(f"selection.tau is {tau!r:.40}, expected a list of thresholds or null (Otsu)")
        score = selection.get("score")
        if not (score is None or _is_number(score)):
            out.append(f"selection.score is {type(score).__name__} {score!r:.40}, expected a number")
        scores = selection.get("epoch_scores", {})
        if not isinstance(scores, dict) or not all(str(e).isdigit() for e in scores):
            out.append("selection.epoch_scores is not an object of epoch numbers")
    metrics = need(record, "metrics", dict, "", "an object of splits")
    if metrics is not None:
        for split, values in metrics.items():
            if not isinstance(values, dict):
                out.append(f"metrics.{split} is {type(values).__name__}, expected an object of metrics")
                continue
            bad = [k for k, v in values.items() if not _metric_value_ok(v)]
            if bad:
                out.append(f"metrics.{split}.{bad[0]} is not a number, a list or an object of numbers")
            if "corloc" in values and not _is_number(values["corloc"]):
                out.append(f"metrics.{split}.corloc is {values['corloc']!r:.40}, expected a number")
            per_class = values.get("corloc_per_class")
            n_classes = len(dataset["classes"]) if dataset is not None and isinstance(dataset.get("classes"), list) \
                else None
            if "corloc" in values and not (isinstance(per_class, list) and len(per_class) == n_classes):
                out.append(f"metrics.{split}.corloc_per_class is not a list of one value per class")
    for key in ("run_id", "plugin"):
        if key in record and not isinstance(record[key], str):
            out.append(f"{key} is {type(record[key]).__name__}, expected a string")
    if "config" in record and not isinstance(record["config"], dict):
        out.append(f"config is {type(record['config']).__name__}, expected an object")
    elif not isinstance((record.get("config") or {}).get("classifier", {}), dict):
        out.append("config.classifier is not an object")
    return out


def read_record(path: str | Path) -> dict:
    """The result record at ``path``, or a :class:`HarnessError` naming the file and what is
    wrong with it."""
    path = Path(path)
    record = io.read_json(path, "result record")
    problems = record_problems(record)
    if problems:
        more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        raise HarnessError(f"{path} is not a result record the harness can read: {problems[0]}{more}")
    return record


def load_results(root: Path, skipped: list[str] | None = None) -> list[dict]:
    """Every valid ``result.json`` one level under ``root``, oldest first. A foreign or damaged
    file is left out: it must neither hide the other runs nor break the run that regenerates
    the leaderboard. Each one left out is appended to ``skipped`` (for the caller to report),
    or logged as a warning naming it when no list is given."""
    records = []
    for path in sorted(Path(root).glob(f"*/{RESULT_FILE}")):
        try:
            records.append(read_record(path))
        except HarnessError as exc:
            if skipped is None:
                log.warning("left out of the leaderboard: %s", exc)
            else:
                skipped.append(str(exc))
    return records


def class_table(record: dict) -> str:
    """Per-class CorLoc of each evaluated split, classes as columns (CoLo-CAM Table 1 layout)."""
    classes = record["dataset"]["classes"]
    rows = []
    for split, metrics in record["metrics"].items():
        per_class = metrics["corloc_per_class"]
        rows.append([split] + [_fmt(v) for v in per_class] + [_fmt(metrics["corloc"])])
    return tabulate(rows, headers=["CorLoc"] + classes + ["Avg"], tablefmt="github")


# (label, key in a split's metrics, sub-key)
_SUMMARY = [
    ("CorLoc @tau", "corloc", None),
    ("CorLoc, oracle tau on this split", "corloc_oracle", None),
    ("BoxAcc@0.5 @tau (GT-known Loc)", "box_acc", "0.5"),
    ("MaxBoxAcc@0.5", "max_box_acc", "0.5"),
    ("MaxBoxAccV2", "max_box_acc_v2", None),
    ("Top-1 Loc @tau", "top1_loc", None),
    ("Top-5 Loc @tau", "top5_loc", None),
    ("mean IoU @tau (x100)", "mean_iou", None),
    ("CorLoc, Otsu per map", "otsu_corloc", None),
    ("pointing game", "pointing_game", None),
    ("PxAP", "pxap", None),
    ("classification top-1", "cls_accuracy", None),
]


def metrics_table(record: dict) -> str:
    """Every metric of the record, one row each, a column per split."""
    splits = list(record["metrics"])
    rows = []
    for label, key, sub in _SUMMARY:
        values = []
        for split in splits:
            v = record["metrics"][split].get(key)
            if sub is not None and isinstance(v, dict):
                v = v.get(sub)
            if key == "mean_iou" and v is not None:
                v = 100 * v
            values.append(_fmt(v))
        if any(v != "-" for v in values):
            rows.append([label] + values)
    return tabulate(rows, headers=["metric"] + splits, tablefmt="github")


def protocol_table(records: list[dict]) -> str:
    """One row per protocol for the same run (the realistic-protocol chapter's Table 4.2 layout)."""
    from harness.protocol import Protocol

    rows = []
    for r in records:
        p, sel, test = r["protocol"], r["selection"], r["metrics"]["test"]
        rows.append([p["name"], Protocol.from_config(p).code, p["supervision"], sel["epoch"], _fmt_taus(sel["tau"]),
                     _fmt(test["corloc"]), _fmt(test["box_acc"].get("0.5")), _fmt(100 * test["mean_iou"]),
                     _fmt(test.get("cls_accuracy"))])
    headers = ["protocol", "setting", "supervision", "epoch", "tau", "test CorLoc", "test BoxAcc@0.5",
               "test mean IoU", "test cls acc"]
    return tabulate(rows, headers=headers, tablefmt="github")


def protocol_grid_table(records: list[dict], metric: str = "corloc") -> str:
    """The chapter's Table 4.2 matrix: rows BT/BV x TT/VT/OT, a column per supervision
    (class labels, GT, each annotator), test ``metric`` in each cell ("-" where undefined)."""
    from harness.protocol import GRID_CODES, Protocol

    columns, cells = [], {}
    for r in records:
        p = r["protocol"]
        sup = p["supervision"].removeprefix("pseudo:")
        if sup not in columns:
            columns.append(sup)
        code = Protocol.from_config(p).code.removeprefix("CL-")
        value = r["metrics"]["test"][metric]
        cells[code, sup] = 100 * value if metric == "mean_iou" else value
    rows = [[code, *[_fmt(cells.get((code, c))) for c in columns]] for code in GRID_CODES]
    return tabulate(rows, headers=["select", *columns], tablefmt="github")


def leaderboard_rows(records: list[dict]) -> list[list]:
    rows = []
    for r in records:
        test = r["metrics"].get("test", {})
        rows.append([
            r.get("run_id", "?"),
            r.get("method_label") or r.get("plugin", "?"),
            r["protocol"]["name"],
            r["dataset"]["name"],
            ((r.get("config") or {}).get("classifier") or {}).get("backbone", "-"),
            _fmt_epochs(r["selection"]["epoch"]),
            _fmt_taus(r["selection"]["tau"]),
            _fmt(test.get("corloc")),
            _fmt(test.get("cls_accuracy")),
        ])
    return rows


def write_leaderboard(root: Path, skipped: list[str] | None = None) -> Path:
    """Regenerate ``leaderboard.md`` from every result under ``root`` (never loses a row:
    runs that finish together regenerate it one after the other, under a lock)."""
    from filelock import FileLock, Timeout

    headers = ["run", "method", "protocol", "dataset", "backbone", "epoch", "tau", "test CorLoc", "test cls acc"]
    path = Path(root) / LEADERBOARD_FILE
    try:
        with FileLock(str(Path(root) / ".leaderboard.lock"), timeout=120):
            table = tabulate(leaderboard_rows(load_results(root, skipped)), headers=headers, tablefmt="github")
            io.write_text(path, "# Runs under this folder\n\n" + table + "\n")
    except Timeout:
        raise HarnessError(f"{path} is locked by another process for over 2 minutes; run "
                           f"`harness leaderboard --run-root {root}` when it is done") from None
    except OSError as exc:
        raise io.write_error(path, exc) from exc
    return path


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def _fmt_epochs(epoch) -> str:
    return ", ".join(map(str, epoch)) if isinstance(epoch, list) else str(epoch)


def _fmt_taus(taus) -> str:
    if taus is None:
        return "Otsu"
    if isinstance(taus, list) and taus and all(t is None or isinstance(t, list) for t in taus):
        return "per-seed"  # a seed group's record: each seed's choice
    if isinstance(taus, list):
        return f"{taus[0]:.3f}" if len(set(taus)) == 1 else "per-class"
    return f"{taus:.3f}"
