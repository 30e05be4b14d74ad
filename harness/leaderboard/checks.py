"""Re-derive every printed aggregate of a transcribed table from its cells.

Each table file lists the identities its source claims (``[[checks]]``): a row's mean over
columns (class means, MaxBoxAccV2 = mean of IoU-30/50/70), a row that is the mean, max or
difference of other rows ("Mean", "Best WSOL", "Improvement"), cells equal to another
table's cells (the same rows printed twice). A failing identity is either a transcription
error or a flaw of the source; the latter are listed in the file as ``[[known_mismatches]]``,
so the test can demand that the failures are exactly the known ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from statistics import mean

from harness.errors import HarnessError
from harness.leaderboard.tables import Table, all_tables

RULES = ("mean", "mean_rows", "max_rows", "difference", "equal")


@dataclass(frozen=True)
class Finding:
    table: str
    rule: str
    row: str
    column: str
    printed: float
    computed: float
    tolerance: float

    def __str__(self) -> str:
        return (f"{self.table}: [{self.row}] x [{self.column}] printed {self.printed:g}, "
                f"{self.rule} gives {self.computed:.4g} (tolerance {self.tolerance:g})")


def check_table(table: Table, tables: dict[str, Table] | None = None) -> list[Finding]:
    """Every failing identity of ``table``; cells that are missing are not checked."""
    tables = tables if tables is not None else all_tables()
    findings = []
    for n, spec in enumerate(table.checks):
        rule = spec.get("rule")
        if rule not in RULES:
            raise HarnessError(f"{table.path}: checks[{n}]: rule {rule!r}; use one of {', '.join(RULES)}")
        for row, column, printed, computed, tol in _evaluate(table, spec, tables):
            if abs(printed - computed) > tol + 1e-9:
                findings.append(Finding(table.id, rule, row, column, printed, computed, tol))
    return findings


def count_identities(table: Table, tables: dict[str, Table] | None = None) -> int:
    """How many cells the checks of ``table`` verify (the test reports it)."""
    tables = tables if tables is not None else all_tables()
    return sum(1 for spec in table.checks for _ in _evaluate(table, spec, tables))


def known(table: Table) -> set[tuple[str, str]]:
    return {(m["row"], m["column"]) for m in table.known_mismatches}


def _evaluate(table: Table, spec: dict, tables: dict[str, Table]):
    """Yield (row, column, printed, computed, tolerance) for each cell an identity covers."""
    rule = spec["rule"]
    if rule == "mean":
        result = table.col(spec["result"])
        operands = [table.col(c) for c in spec["columns"]]
        for row in _rows(table, spec):
            values = [row[j].value for j in operands]
            if row[result].value is None or None in values:
                continue
            yield (table.row_key(row), spec["result"], row[result].value, mean(values),
                   _tolerance(spec, row[result]))
        return
    if rule == "equal":
        yield from _equal(table, spec, tables)
        return
    target = table.row(spec["result_row"])
    for j in _columns(table, spec):
        if target[j].value is None:
            continue
        if rule == "difference":
            a, b = table.row(spec["row"])[j].value, table.row(spec["minus"])[j].value
            if a is None or b is None:
                continue
            computed = a - b
        else:
            values = [table.row(k)[j].value for k in spec["rows"]]
            values = [v for v in values if v is not None]
            if not values:
                continue
            computed = mean(values) if rule == "mean_rows" else max(values)
        yield spec["result_row"], table.columns[j].header, target[j].value, computed, _tolerance(spec, target[j])


def _equal(table: Table, spec: dict, tables: dict[str, Table]):
    other = tables.get(spec["other"])
    if other is None:
        raise HarnessError(f"{table.path}: an `equal` check names table {spec['other']!r}, which does not exist")
    row_map = spec.get("row_map", {})
    column_map = spec.get("column_map", {})
    columns = spec.get("columns") or list(column_map) or [table.columns[j].header for j in table.value_columns]
    for row in _rows(table, spec):
        key = table.row_key(row)
        theirs = other.row(row_map.get(key, key))
        for header in columns:
            mine = row[table.col(header)]
            cell = theirs[other.col(column_map.get(header, header))]
            if mine.value is None or cell.value is None:
                continue
            yield key, header, mine.value, cell.value, spec.get("tolerance", 0.0)


def _rows(table: Table, spec: dict):
    if "rows" in spec:
        return [table.row(k) for k in spec["rows"]]
    skip = set(spec.get("except_rows", []))
    return [r for r in table.rows if table.row_key(r) not in skip]


def _columns(table: Table, spec: dict) -> list[int]:
    if "columns" in spec:
        return [table.col(c) for c in spec["columns"]]
    return table.value_columns


def _tolerance(spec: dict, printed) -> float:
    """One unit of the printed value's last decimal: the printed operands are rounded too."""
    return spec.get("tolerance", 10.0 ** -printed.decimals)


def report(tables: dict[str, Table] | None = None) -> tuple[list[Finding], list[Finding], list[tuple[str, str, str]]]:
    """(known mismatches found, unexpected failures, known mismatches that no longer fail)."""
    tables = tables if tables is not None else all_tables()
    found_known, unexpected, stale = [], [], []
    for t in tables.values():
        findings = check_table(t, tables)
        hits = {(f.row, f.column) for f in findings}
        for f in findings:
            (found_known if (f.row, f.column) in known(t) else unexpected).append(f)
        stale += [(t.id, r, c) for r, c in sorted(known(t) - hits)]
    return found_known, unexpected, stale
