"""What ``harness leaderboard`` prints: the table list, the tables a run fits, a table with
runs inserted, and the consistency report of the transcriptions."""
from __future__ import annotations

from tabulate import tabulate

from harness.leaderboard import checks, render
from harness.leaderboard.runs import fitting_tables, load_record, run_dirs
from harness.leaderboard.tables import PAPERS, all_tables, get


def list_tables() -> str:
    rows = []
    for t in all_tables().values():
        metrics = sorted({c.metric for c in t.columns if c.role == "value" and c.metric not in ("time", "other")})
        rows.append([t.id, PAPERS()[t.paper]["short"], t.table + (f" ({t.block})" if t.block else ""),
                     ", ".join(sorted(t.datasets)), ", ".join(metrics) or "-", t.protocol, len(t.rows)])
    return tabulate(rows, headers=["id", "paper", "table", "dataset", "metrics", "protocol", "rows"],
                    tablefmt="github")


def match(runs: list[str]) -> str:
    """For each run, the tables it would fill at least one cell of."""
    lines = []
    for run_dir in run_dirs(runs):
        run = load_record(run_dir)
        fitting = fitting_tables([run])
        lines.append(f"{run_dir} ({run.plugin}, {run.dataset}, {run.protocol}): "
                     + (", ".join(fitting) if fitting else "no table (no published table on this dataset)"))
    return "\n".join(lines)


def table(table_id: str, runs: list[str] = (), fmt: str = "md", protocol: str | None = None) -> tuple[str, list[str]]:
    """The rendered table and the runs left out (with why)."""
    out = render.build(get(table_id), runs, protocol)
    return render.render(out, fmt), out.skipped


def check_report() -> tuple[str, bool]:
    """Every re-derived identity; True when the only failures are the known mismatches."""
    tables = all_tables()
    known, unexpected, stale = checks.report(tables)
    total = sum(checks.count_identities(t, tables) for t in tables.values())
    lines = [f"{len(tables)} tables, {total} printed aggregates and repeated cells re-derived.",
             f"Known mismatches of the sources ({len(known)}):"]
    notes = {(t.id, m["row"], m["column"]): m["note"] for t in tables.values() for m in t.known_mismatches}
    lines += [f"  {f}\n      {notes[f.table, f.row, f.column]}" for f in known]
    if unexpected:
        lines.append(f"UNEXPECTED mismatches ({len(unexpected)}): a transcription error, or a source flaw to "
                     "record as [[known_mismatches]]:")
        lines += [f"  {f}" for f in unexpected]
    if stale:
        lines.append("Known mismatches that no longer fail (remove them): "
                     + "; ".join(f"{t}: [{r}] x [{c}]" for t, r, c in stale))
    return "\n".join(lines), not unexpected and not stale
