"""What ``harness leaderboard`` prints: the table list, the tables a run fits, a table with
runs inserted, the consistency report of the transcriptions, the run root's leaderboard.md;
and how the leaderboard and report commands write their files and say so."""
from __future__ import annotations

from pathlib import Path

from tabulate import tabulate

from harness import io, results
from harness.errors import HarnessError
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


def table(table_id: str, runs: list[str] = (), fmt: str = "md", protocol: str | None = None,
          bold: str = "paper", uncertainty: str = "none") -> tuple[str, list[str]]:
    """The rendered table and the runs and records left out (with why)."""
    out = render.build(get(table_id), runs, protocol, bold, uncertainty)
    return render.render(out, fmt), out.skipped + out.damaged


def regenerate(root: Path) -> tuple[Path, int, list[str]]:
    """Rewrite ``root``'s leaderboard.md: its path, how many runs it lists, and the result
    records left out (foreign or damaged), each naming its file and problem."""
    skipped: list[str] = []
    path = results.write_leaderboard(root, skipped)
    listed = sum(1 for _ in Path(root).glob(f"*/{results.RESULT_FILE}")) - len(skipped)
    return path, listed, skipped


def missing_folder(path: str | Path) -> Path | None:
    """The folder that writing ``path`` will create, or None when it exists; a file in the
    way is an error."""
    if Path(path).is_dir():
        raise HarnessError(f"cannot write {path}: it is a folder; give a file name, e.g. {Path(path) / 'index.html'}")
    folder = Path(path).parent
    for above in (folder, *folder.parents):
        if above.exists() and not above.is_dir():
            raise HarnessError(f"cannot write {path}: {above} is a file, not a folder; choose another path")
    return None if folder.is_dir() else folder


def wrote(path: str | Path, created: Path | None) -> str:
    """The line a command prints after writing ``path``."""
    return (f"created folder {created}; " if created else "") + f"wrote {path}"


def write_output(path: str | Path, text: str) -> str:
    """Write ``text`` to ``path``, creating its folder; the line saying what was done."""
    created = missing_folder(path)
    io.write_text(path, text)
    return wrote(path, created)


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
