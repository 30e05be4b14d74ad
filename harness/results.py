"""Result records (one ``result.json`` per run, full provenance) and the run-root leaderboard."""
from __future__ import annotations

import importlib.metadata as md
import json
import platform
import subprocess
from pathlib import Path

from tabulate import tabulate

from harness import io

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


def git_revision() -> str | None:
    """Revision of the harness source tree (``+dirty`` with local changes), if it is a checkout."""
    here = Path(__file__).resolve().parent
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


def write_result(run_dir: Path, record: dict) -> Path:
    path = Path(run_dir) / RESULT_FILE
    io.write_json(path, record)
    return path


def load_results(root: Path) -> list[dict]:
    """Every readable ``result.json`` one level under ``root``, oldest first."""
    records = []
    for path in sorted(Path(root).glob(f"*/{RESULT_FILE}")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue  # a foreign or damaged file must not hide the other runs
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
            r["run_id"],
            r["plugin"],
            r["protocol"]["name"],
            r["dataset"]["name"],
            r["config"]["classifier"]["backbone"],
            r["selection"]["epoch"],
            _fmt_taus(r["selection"]["tau"]),
            _fmt(test.get("corloc")),
            _fmt(test.get("cls_accuracy")),
        ])
    return rows


def write_leaderboard(root: Path) -> Path:
    """Regenerate ``leaderboard.md`` from every result under ``root`` (never loses a row)."""
    headers = ["run", "plugin", "protocol", "dataset", "backbone", "epoch", "tau", "test CorLoc", "test cls acc"]
    table = tabulate(leaderboard_rows(load_results(root)), headers=headers, tablefmt="github")
    path = Path(root) / LEADERBOARD_FILE
    io.write_text(path, "# Runs under this folder\n\n" + table + "\n")
    return path


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def _fmt_taus(taus) -> str:
    if taus is None:
        return "Otsu"
    if isinstance(taus, list):
        return f"{taus[0]:.3f}" if len(set(taus)) == 1 else "per-class"
    return f"{taus:.3f}"
