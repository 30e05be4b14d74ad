"""Published result tables as data: ``leaderboards/<paper>/<table id>.toml``.

A table file holds its provenance (paper, table number, caption, where in the reference
digests it was transcribed from, dataset, metric, backbone, the protocol the authors used)
and its cells as the Markdown table printed in the digest, pasted verbatim: the printed
strings are kept (``67.03`` stays ``67.03``, ``**82.1**`` records the source's bold mark),
so a transcription can be diffed against its source line by line. The file format is
documented in docs/leaderboards.md. What points into the digests (``source``,
``protocol_source``, ``notes``, a mismatch's ``source``) is for maintainers and never rendered:
published output cites the papers, their tables and the authors' code.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from harness.errors import HarnessError

import harness.leaderboards as _data

ROOT = Path(_data.__file__).resolve().parent  # the repository's leaderboards/, shipped as harness.leaderboards

# Metrics a value column can hold; a user's run fills a cell when its record has the metric.
METRICS = {
    "corloc": "CorLoc (%) at the protocol's threshold, mean over classes",
    "corloc_class": "CorLoc (%) of one class (the column's `class`)",
    "cls_accuracy": "top-1 classification accuracy (%)",
    "max_box_acc": "MaxBoxAcc (%) at the column's `iou` (default 0.5): best threshold on the split",
    "max_box_acc_v2": "MaxBoxAccV2 (%): mean over IoU 0.3/0.5/0.7 of the best-threshold accuracy",
    "box_acc": "box accuracy (%) at the protocol's threshold, at the column's `iou`",
    "box_acc_v2": "mean over IoU 0.3/0.5/0.7 of the box accuracy at the protocol's threshold",
    "mean_iou": "mean IoU (x100) of the predicted boxes at the protocol's threshold",
    "pxap": "PxAP (%), pixel average precision",
    "top1_loc": "Top-1 Loc (%)",
    "top5_loc": "Top-5 Loc (%)",
    "pseudo_box_iou": "mean IoU (x100) of an annotator's pseudo-boxes with GT on val",
    "time": "inference time as printed (text)",
    "other": "a number the harness does not measure (kept for the reader)",
}
ROLES = ("label", "select", "value", "text")
MISSING = {"", "—", "-", "–", "N/A", "n/a", "?"}
_NUMBER = re.compile(r"^(\*\*)?([+-]?\d+(?:\.\d+)?)(\*\*)?(%)?$")


@dataclass(frozen=True)
class Cell:
    text: str                 # as printed, bold marks removed
    value: float | None       # the number, None for a missing or text cell
    bold: bool = False        # bold in the source

    @property
    def decimals(self) -> int:
        m = re.search(r"\.(\d+)", self.text)
        return len(m.group(1)) if m else 0


def parse_cell(raw: str) -> Cell:
    s = raw.strip()
    if s in MISSING:
        return Cell("—" if s else "", None)
    m = _NUMBER.match(s.replace("−", "-"))
    if m and bool(m.group(1)) == bool(m.group(3)):
        return Cell(m.group(2), float(m.group(2)), bold=bool(m.group(1)))
    bold = s.startswith("**") and s.endswith("**") and len(s) > 4
    return Cell(s[2:-2] if bold else s, None, bold)


@dataclass(frozen=True)
class Column:
    header: str
    role: str = "value"
    metric: str | None = None
    dataset: str | None = None
    backbone: str | None = None
    cls: str | None = None            # the class of a per-class column
    iou: float | None = None
    supervision: str | None = None    # select-coded tables: cls, gt, ss, rpn, clip
    threshold: str | None = None      # select-coded tables: the cell's threshold source, if not the row's
    decimals: int | None = None
    best: str = "max"                 # max | min | none

    def describe(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None and k != "header"}


@dataclass
class Table:
    id: str
    paper: str
    table: str
    caption: str
    source: str               # where in the (non-public) digests it was transcribed from: never rendered
    dataset: str
    metric: str
    backbone: str | None
    protocol: str
    protocol_note: str
    decimals: int
    columns: list[Column]
    rows: list[list[Cell]]
    block: str | None = None
    notes: list[str] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)
    known_mismatches: list[dict] = field(default_factory=list)
    unranked_rows: list[str] = field(default_factory=list)  # doubtful in the source: never marked best
    reference_rows: list[str] = field(default_factory=list)  # baselines, bounds, aggregates: never bold
    # For maintainers only, never rendered: where the protocol note's statements were read
    # (the digests are not public, so published output cites the papers and code instead).
    protocol_source: str = ""
    path: Path | None = None

    @property
    def title(self) -> str:
        return f"{PAPERS()[self.paper]['short']} {self.table}" + (f" ({self.block})" if self.block else "")

    def col(self, header: str) -> int:
        for j, c in enumerate(self.columns):
            if c.header == header:
                return j
        raise HarnessError(f"{self.path}: no column {header!r}; the columns are "
                           + ", ".join(repr(c.header) for c in self.columns))

    def row_key(self, row: list[Cell]) -> str:
        """A row's name: its label cells (and select code) joined by ' | '."""
        return " | ".join(row[j].text for j, c in enumerate(self.columns) if c.role in ("label", "select"))

    def row(self, key: str) -> list[Cell]:
        for r in self.rows:
            if self.row_key(r) == key:
                return r
        raise HarnessError(f"{self.path}: no row {key!r}; the rows are "
                           + "; ".join(repr(self.row_key(r)) for r in self.rows))

    @property
    def value_columns(self) -> list[int]:
        return [j for j, c in enumerate(self.columns) if c.role == "value"]

    @property
    def datasets(self) -> set[str]:
        return {c.dataset for c in self.columns if c.role == "value"}


# ------------------------------------------------------------------------------- loading


@lru_cache(maxsize=1)
def PAPERS() -> dict[str, dict]:
    papers = {}
    for path in sorted(ROOT.glob("*/paper.toml")):
        papers[path.parent.name] = _read_toml(path)
        for key in ("short", "title", "citation", "digest"):
            if key not in papers[path.parent.name]:
                raise HarnessError(f"{path}: missing key {key!r}")
    return papers


@lru_cache(maxsize=1)
def all_tables() -> dict[str, Table]:
    tables: dict[str, Table] = {}
    for path in sorted(ROOT.glob("*/*.toml")):
        if path.name == "paper.toml":
            continue
        t = load_table(path)
        if t.id in tables:
            raise HarnessError(f"table id {t.id!r} is defined twice: {tables[t.id].path} and {path}")
        tables[t.id] = t
    return tables


def get(table_id: str) -> Table:
    tables = all_tables()
    if table_id not in tables:
        close = [t for t in tables if table_id.lower() in t]
        hint = f"; did you mean {', '.join(close[:5])}?" if close else "; `harness leaderboard --list` shows them"
        raise HarnessError(f"unknown leaderboard table {table_id!r}{hint}")
    return tables[table_id]


_REQUIRED = ("id", "table", "caption", "source", "dataset", "metric", "protocol", "protocol_note", "cells")
_TABLE_KEYS = set(_REQUIRED) | {"block", "backbone", "decimals", "notes", "columns", "checks", "known_mismatches",
                                "best", "unranked_rows", "reference_rows", "protocol_source"}
_CHECK_KEYS = {"rule", "columns", "result", "rows", "except_rows", "result_row", "row", "minus", "other", "row_map",
               "column_map", "tolerance", "note"}
_COLUMN_KEYS = {"role", "metric", "dataset", "backbone", "class", "iou", "supervision", "threshold", "decimals",
                "best"}
THRESHOLDS = {"test": "TT", "val": "VT", "otsu": "OT"}


def load_table(path: Path) -> Table:
    d = _read_toml(path)
    where = str(path)
    missing = [k for k in _REQUIRED if k not in d]
    if missing:
        raise HarnessError(f"{where}: missing key(s) {', '.join(missing)} (see docs/leaderboards.md)")
    unknown = sorted(set(d) - _TABLE_KEYS)
    if unknown:
        raise HarnessError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_TABLE_KEYS))}")
    paper = path.parent.name
    if paper not in PAPERS():
        raise HarnessError(f"{where}: folder {paper!r} has no paper.toml")
    if d["metric"] not in METRICS:
        raise HarnessError(f"{where}: metric {d['metric']!r} unknown; use one of {', '.join(METRICS)}")
    headers, rows = parse_markdown(d["cells"], where)
    spec = d.get("columns", {})
    for h in spec:
        if h not in headers:
            raise HarnessError(f"{where}: [columns.{h!r}] names no column of the cells; headers: {headers}")
    columns = []
    for j, h in enumerate(headers):
        s = dict(spec.get(h, {}))
        bad = sorted(set(s) - _COLUMN_KEYS)
        if bad:
            raise HarnessError(f"{where}: column {h!r}: unknown key(s) {', '.join(bad)}")
        role = s.get("role", "label" if j == 0 else "value")
        if role not in ROLES:
            raise HarnessError(f"{where}: column {h!r}: role {role!r}; use one of {', '.join(ROLES)}")
        metric = s.get("metric", d["metric"] if role == "value" else None)
        if role == "value" and "class" in s and "metric" not in s:
            metric = "corloc_class"
        if s.get("threshold") is not None and s["threshold"] not in THRESHOLDS:
            raise HarnessError(f"{where}: column {h!r}: threshold {s['threshold']!r}; use one of "
                               f"{', '.join(THRESHOLDS)}")
        if metric is not None and metric not in METRICS:
            raise HarnessError(f"{where}: column {h!r}: metric {metric!r} unknown; use one of {', '.join(METRICS)}")
        columns.append(Column(
            header=h, role=role, metric=metric,
            dataset=s.get("dataset", d["dataset"]) if role == "value" else None,
            backbone=s.get("backbone"), cls=s.get("class"), iou=s.get("iou"), supervision=s.get("supervision"),
            threshold=s.get("threshold"),
            decimals=s.get("decimals"), best=s.get("best", d.get("best", "max") if metric not in ("time", "other")
                                                 else "none"),
        ))
    table = Table(
        id=d["id"], paper=paper, table=d["table"], caption=d["caption"].strip(), source=d["source"],
        dataset=d["dataset"], metric=d["metric"], backbone=d.get("backbone"), protocol=d["protocol"],
        protocol_note=d["protocol_note"].strip(), decimals=int(d.get("decimals", 1)), columns=columns,
        rows=[[parse_cell(c) for c in r] for r in rows], block=d.get("block"), notes=list(d.get("notes", [])),
        checks=list(d.get("checks", [])), known_mismatches=list(d.get("known_mismatches", [])),
        unranked_rows=list(d.get("unranked_rows", [])), reference_rows=list(d.get("reference_rows", [])),
        protocol_source=d.get("protocol_source", ""), path=path,
    )
    for m in table.known_mismatches:
        if not {"row", "column", "note"} <= set(m) <= {"row", "column", "note", "source"}:
            raise HarnessError(f"{where}: each [[known_mismatches]] has row, column and note (and optionally "
                               f"source); got {sorted(m)}")
    for n, c in enumerate(table.checks):
        bad = sorted(set(c) - _CHECK_KEYS)
        if bad:
            raise HarnessError(f"{where}: checks[{n}]: unknown key(s) {', '.join(bad)}; allowed: "
                               f"{', '.join(sorted(_CHECK_KEYS))}")
    if table.id != path.stem:
        raise HarnessError(f"{where}: id {table.id!r} must equal the file name {path.stem!r}")
    keys = [table.row_key(r) for r in table.rows]
    for key in ("unranked_rows", "reference_rows"):
        unknown_rows = [k for k in getattr(table, key) if k not in keys]
        if unknown_rows:
            raise HarnessError(f"{where}: {key} names no row: {unknown_rows}; the rows are {keys}")
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise HarnessError(f"{where}: row names must be unique (add a select or label column); repeated: {dup}")
    return table


def parse_markdown(text: str, where: str) -> tuple[list[str], list[list[str]]]:
    """Header and body rows of a pipe table; a row with the wrong number of cells names its line."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if len(lines) < 3 or not re.fullmatch(r"\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?", lines[1]):
        raise HarnessError(f"{where}: `cells` must be a Markdown pipe table: header, |---| line, rows")

    def split(line: str) -> list[str]:
        if not (line.startswith("|") and line.endswith("|")):
            raise HarnessError(f"{where}: cells line {line!r} must start and end with '|'")
        return [c.strip() for c in line[1:-1].split("|")]

    headers = split(lines[0])
    if len(set(headers)) != len(headers):
        raise HarnessError(f"{where}: column headers must be unique (prefix a block name): {headers}")
    rows = []
    for n, line in enumerate(lines[2:], start=3):
        cells = split(line)
        if len(cells) != len(headers):
            raise HarnessError(f"{where}: cells line {n} has {len(cells)} cells, the header {len(headers)}: {line}")
        rows.append(cells)
    return headers, rows


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise HarnessError(f"cannot read {path}: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise HarnessError(f"{path}: not valid TOML: {e}") from e
