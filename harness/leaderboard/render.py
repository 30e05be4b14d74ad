"""A published table with the user's runs inserted, as Markdown, LaTeX (booktabs), CSV or HTML.

Published cells are shown as printed; run cells with the table's decimals. Bold marks
(``BOLD``): the paper's own marks (default), the best value of each column among the ranked
rows on the table's real dataset (a synthetic stand-in row is never ranked), or none;
reference rows (baselines, bounds, aggregates of other rows) are never bold. Every
difference of protocol, dataset or backbone between the rows is said in a footnote.

``UNCERTAINTY`` adds to a run cell its spread: ``std``, the sample standard deviation over a
seed group's seeds (``46.0 ± 1.2``); ``ci``, the bootstrap interval of test CorLoc
(``46.0 [44.8, 47.1]``). Values, and so bold marks, are unchanged; CSV keeps the values and
adds the spread as columns of its own.
"""
from __future__ import annotations

import csv
import html
import io
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from statistics import stdev

from tabulate import tabulate

from harness.errors import HarnessError
from harness.leaderboard.runs import STAND_INS, RunRecord, all_records, cell_value, load_record, run_dirs, target_dataset
from harness.leaderboard.tables import PAPERS, THRESHOLDS, Table

FORMATS = ("md", "latex", "csv", "html")
BOLD = ("paper", "max", "none")
UNCERTAINTY = ("none", "std", "ci")


@dataclass
class Row:
    cells: list[str]
    values: list[float | None]
    kind: str = "published"      # or "run"
    synth: bool = False
    ranked: bool = True          # False: doubtful in the source, never marked best
    reference: bool = False      # a baseline, bound or aggregate of other rows: never bold
    protocol: str = ""
    source: str = ""
    paper_bold: tuple[int, ...] = ()  # the columns the paper printed in bold
    spread: list[tuple[float, ...] | None] = field(default_factory=list)  # per cell: (std,), (low, high) or None


@dataclass
class Rendered:
    table: Table
    rows: list[Row]
    bold: set[tuple[int, int]] = field(default_factory=set)  # (row, column) cells shown in bold
    footnotes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # runs that fill no cell, with why
    damaged: list[str] = field(default_factory=list)  # re-evaluation records left out, each naming its file

    @property
    def headers(self) -> list[str]:
        return [c.header for c in self.table.columns]


def build(table: Table, runs: list[str | Path] = (), protocol: str | None = None, bold: str = "paper",
          uncertainty: str = "none") -> Rendered:
    """``runs``: run directories or run roots (a seed group's directory is a run); ``protocol``:
    use each run's re-evaluation under that preset instead of its own result; ``bold``: one of
    :data:`BOLD`; ``uncertainty``: one of :data:`UNCERTAINTY`."""
    if bold not in BOLD:
        raise HarnessError(f"--bold {bold!r}: use one of {', '.join(BOLD)}")
    if uncertainty not in UNCERTAINTY:
        raise HarnessError(f"--uncertainty {uncertainty!r}: use one of {', '.join(UNCERTAINTY)}")
    source = f"{PAPERS()[table.paper]['short']} {table.table}"
    rows = [Row([c.text for c in r], [c.value for c in r], "published", protocol=table.protocol, source=source,
                ranked=table.row_key(r) not in table.unranked_rows,
                reference=table.row_key(r) in table.reference_rows,
                paper_bold=tuple(j for j, c in enumerate(r) if c.bold)) for r in table.rows]
    out = Rendered(table, rows)
    run_rows: list[tuple[Row, RunRecord]] = []
    for run_dir in run_dirs(runs):
        made = _select_rows(table, run_dir, out.damaged, uncertainty) if _select_col(table) is not None else \
            _plain_row(table, load_record(Path(run_dir), protocol, out.damaged), uncertainty)
        if not made:
            rec = load_record(Path(run_dir))
            out.skipped.append(f"{run_dir}: {rec.dataset} run has no cell of {table.id} "
                               f"({', '.join(sorted(table.datasets))}; {table.metric})")
        run_rows += made
    _label_runs(table, run_rows)
    out.rows += [row for row, _ in run_rows]
    out.bold = {"paper": _paper_marks, "max": _best, "none": lambda _: set()}[bold](out)
    out.footnotes = _footnotes(table, [r for _, r in run_rows], bold, bool(_paper_marks(out)))
    if run_rows and uncertainty != "none":
        out.footnotes.append(_uncertainty_note(table, run_rows, uncertainty))
    return out


def _plain_row(table: Table, run: RunRecord, uncertainty: str) -> list[tuple[Row, RunRecord]]:
    target = target_dataset(table, run)
    values = [cell_value(c, run, target) for c in table.columns] if target else []
    if all(v is None for v in values):
        return []
    return [(_run_row(table, run, values, uncertainty), run)]


def _select_rows(table: Table, run_dir: Path, damaged: list[str], uncertainty: str) -> list[tuple[Row, RunRecord]]:
    """Select-coded tables: one row per setting code the run was evaluated under, each cell
    from the record of that code (or of the column's own threshold source) and the
    column's supervision."""
    sel = _select_col(table)
    codes = list(dict.fromkeys(r[sel].text for r in table.rows if r[sel].text))
    # the paper's layout: a setting whose column the paper leaves empty (class labels cannot
    # choose a threshold on val) stays empty for a run too
    printed = {(r[sel].text, j) for r in table.rows for j, cell in enumerate(r) if cell.text not in ("", "—")}
    records = all_records(Path(run_dir), damaged)
    made = []
    for code in codes:
        values, sources = [], []
        for j, c in enumerate(table.columns):
            want = code if c.threshold is None else code.split("-")[0] + "-" + THRESHOLDS[c.threshold]
            found = [(v, r) for r in records if r.code.removeprefix("CL-") == want
                     for v in [cell_value(c, r, target_dataset(table, r))] if v is not None] \
                if (code, j) in printed else []
            value, source = found[0] if found else (None, None)
            values.append(value)
            sources.append(source)
        used = [r for r in sources if r is not None]
        if used:
            row = _run_row(table, used[0], values, uncertainty, sources)
            row.cells[sel] = code
            row.protocol = code + " (" + ", ".join(sorted({f"{r.code} {r.supervision}" for r in used})) + ")"
            made.append((row, used[0]))
    return made


def _run_row(table: Table, run: RunRecord, values: list[float | None], uncertainty: str = "none",
             sources: list[RunRecord | None] | None = None) -> Row:
    """``sources``: the record of each cell where a row mixes records (select-coded tables); a
    derived cell of such a row gets no uncertainty, its operands having come from several."""
    values = _derived(table, values)
    if sources is None:
        sources, derive = [run] * len(values), True
    else:
        sources, derive = [None if j in _means(table) else r for j, r in enumerate(sources)], False
    if uncertainty == "std":
        spread = [None if s is None else (s,) for s in _seed_std(table, sources, derive)]
    elif uncertainty == "ci":
        spread = [(r.interval["low"], r.interval["high"]) if r and r.interval and c.metric == "corloc" else None
                  for c, r in zip(table.columns, sources)]
    else:
        spread = [None] * len(values)
    spread = [None if v is None else s for v, s in zip(values, spread)]
    cells = []
    for c, v, s in zip(table.columns, values, spread):
        decimals = c.decimals if c.decimals is not None else table.decimals
        text = "" if v is None else f"{v:.{decimals}f}"
        if s is not None:
            text += f" ± {s[0]:.{decimals}f}" if len(s) == 1 else f" [{s[0]:.{decimals}f}, {s[1]:.{decimals}f}]"
        cells.append(text)
    return Row(cells, values, "run", run.synth, protocol=f"{run.protocol} ({run.code})",
               source=f"{run.run_dir} ({run.source})", spread=spread)


def _seed_std(table: Table, sources: list[RunRecord | None], derive: bool) -> list[float | None]:
    """Each cell's sample std over the seeds of its seed group, the cell read from each seed's own
    metrics as it was from their mean (a class, an IoU, a mean of IoUs, IoU x100 alike); with
    ``derive``, a derived cell's from each seed's own derived value. None for a single run."""
    seeds = min((len(r.seeds) for r in sources if r is not None), default=0)
    if seeds < 2:
        return [None] * len(sources)
    per_seed = []
    for k in range(seeds):
        values = [cell_value(c, r.seeds[k], target_dataset(table, r)) if r is not None else None
                  for c, r in zip(table.columns, sources)]
        per_seed.append(_derived(table, values) if derive else values)
    return [None if None in col else stdev(col) for col in zip(*per_seed)]


def _means(table: Table) -> dict[int, list[int]]:
    """The columns the table defines as a mean of others: {result column: operand columns}."""
    return {table.col(spec["result"]): [table.col(c) for c in spec["columns"]]
            for spec in table.checks if spec.get("rule") == "mean" and "result" in spec}


def _derived(table: Table, values: list[float | None]) -> list[float | None]:
    """A column the table defines as a mean of others (a Mean over backbones, an Avg over
    classes) holds the run's mean of those cells when it has them all, else stays empty: a
    one-backbone run has no mean over three backbones."""
    values = list(values)
    for result, columns in _means(table).items():
        operands = [values[j] for j in columns]
        values[result] = None if None in operands else sum(operands) / len(operands)
    return values


def _label_runs(table: Table, run_rows: list[tuple[Row, RunRecord]]) -> None:
    """Label column: plugin (backbone, dataset, protocol: the row carries what it was evaluated
    under; in select-coded tables the Select column says it); the run id where labels would
    repeat; [synth] for a stand-in dataset; how many seeds a seed group's row is over."""
    coded = _select_col(table) is not None
    base = [f"{r.plugin} ({r.backbone}, {r.dataset}" + ("" if coded else f", {r.protocol}")
            + (f", {len(r.seeds)} seeds" if r.seeds else "") + ")" for _, r in run_rows]
    for (row, run), label in zip(run_rows, base):
        text = label
        if base.count(label) > 1 and sum(1 for _, r in run_rows if r.run_dir == run.run_dir) < base.count(label):
            text += f" {run.run_id}"
        row.cells[0] = text + (" [synth]" if run.synth else "")


def _footnotes(table: Table, runs: list[RunRecord], bold: str, paper_marks: bool) -> list[str]:
    paper = PAPERS()[table.paper]
    code = f", authors' code {paper['code'].split('://')[-1]}" if paper.get("code") else ""
    where = f"Published rows: {paper['short']} {table.table}" + (f" ({table.block})" if table.block else "") \
        + f", {paper['citation']}{code}; "
    if _select_col(table) is not None:
        notes = [where + "each row's selection setting is in its Select column and each column's supervision in "
                 f"its header: {table.protocol_note}"]
    else:
        notes = [where + f"protocol `{table.protocol}` as the authors evaluated: {table.protocol_note}"]
    if bold == "paper":
        notes.append("Bold: the paper's own marks, as printed (`--bold max` marks each column's best instead)."
                     if paper_marks else "Bold: none, the transcription of this table keeps no bold marks of the "
                     "paper (`--bold max` marks each column's best).")
    elif bold == "max":
        notes.append("Bold: the best value of each column among the ranked rows on the real dataset "
                     "(`--bold paper` shows the paper's own marks).")
    if table.reference_rows:
        notes.append("Reference rows, never bold: " + _names(table.reference_rows)
                     + " (baselines, bounds or aggregates of other rows, not methods under comparison).")
    if table.unranked_rows:
        notes.append("Doubtful in the source, never ranked best: " + _names(table.unranked_rows) + ".")
    if not runs:
        return notes
    if _select_col(table) is None:
        others = sorted({f"`{r.protocol}` ({r.code}, {r.record['protocol']['supervision']})"
                         for r in runs if r.protocol != table.protocol})
        if others:
            notes.append("Mixed protocols: the run rows were evaluated under " + ", ".join(others)
                         + f", the published rows under `{table.protocol}`; compare with care, or pass "
                         f"`--protocol {table.protocol}` (after `harness eval --run DIR --protocol all`"
                         + (", or `harness eval --group DIR` for a seed group" if any(r.seeds for r in runs) else "")
                         + ").")
    synth = sorted({r.dataset for r in runs if r.synth})
    if synth:
        notes.append("[synth]: " + ", ".join(f"{d} stands in for {'/'.join(STAND_INS[d])}" for d in synth)
                     + ": the row shows the pipeline at work, not a number comparable with the paper's; "
                     "it is never marked best.")
    if table.backbone:
        other = sorted({r.backbone for r in runs if r.backbone != table.backbone})
        if other:
            notes.append(f"Backbone: the published rows use {table.backbone}; the runs use {', '.join(other)}.")
    return notes


def _uncertainty_note(table: Table, run_rows: list[tuple[Row, RunRecord]], uncertainty: str) -> str:
    """What the run cells' spread is, over what; or why no cell has one, so that a table that
    looks unchanged is not taken for one with nothing to show."""
    runs = [r for _, r in run_rows]
    if uncertainty == "std":
        groups = {r.run_dir: r for r in runs if r.seeds}
        if not groups:
            return ("Run rows: `--uncertainty std` shows the spread over the seeds of a seed group, but no run row "
                    "is one (`harness run --seeds 0,1,2` makes one): each value is shown alone.")
        members = "; ".join(f"{r.run_id}: {len(r.seeds)} seeds ("
                            + ", ".join(str(m.get("seed", "?")) for m in r.record["seeds"]) + ")"
                            for r in groups.values())
        return ("Run rows: mean ± sample standard deviation over the seeds of each seed group (`harness run "
                f"--seeds`): {members}; a single run's row shows its value alone. Published rows as printed "
                "(the papers give no spread).")
    if not any(s is not None for row, _ in run_rows for s in row.spread):
        why = "the table has no CorLoc column (the class mean), the one metric with an interval" \
            if not any(c.metric == "corloc" for c in table.columns) else \
            "no run row records one (runs made before the harness recorded intervals)"
        return f"Run rows: `--uncertainty ci` shows the bootstrap interval of test CorLoc, but {why}: each value " \
               "is shown alone."
    kinds = sorted({(ci.get("level", 0.95), ci.get("resampled", "videos"), ci.get("n_boot", "?"))
                    for r in runs for ci in [r.interval] if ci}, key=str)
    group = "; a seed group's interval is of its mean over seeds" if any(r.seeds and r.interval for r in runs) else ""
    return ("Run rows: [low, high] is the " + ") or the ".join(
        f"{100 * level:g}% bootstrap interval of test CorLoc over the test frames, resampling whole {resampled} "
        f"({n_boot} resamples" for level, resampled, n_boot in kinds) + f"{group}); other columns have none. "
        "Published rows as printed.")


def _names(row_keys: list[str]) -> str:
    return "; ".join(k.strip(" |") for k in row_keys)  # "Improvement | " has an empty second label


def _select_col(table: Table) -> int | None:
    return next((j for j, c in enumerate(table.columns) if c.role == "select"), None)


def _paper_marks(out: Rendered) -> set[tuple[int, int]]:
    return {(i, j) for i, r in enumerate(out.rows) if not r.reference for j in r.paper_bold}


def _best(out: Rendered) -> set[tuple[int, int]]:
    marks = set()
    for j in out.table.value_columns:
        rule = out.table.columns[j].best
        if rule not in ("max", "min"):
            continue
        ranked = [(i, r.values[j]) for i, r in enumerate(out.rows)
                  if r.values[j] is not None and r.ranked and not r.reference and not r.synth]
        if not ranked:
            continue
        top = (max if rule == "max" else min)(v for _, v in ranked)
        marks |= {(i, j) for i, v in ranked if abs(v - top) < 1e-9}
    return marks


# ------------------------------------------------------------------------------- formats


def to_markdown(out: Rendered) -> str:
    rows = [[f"**{c}**" if (i, j) in out.bold and c else c for j, c in enumerate(r.cells)]
            for i, r in enumerate(out.rows)]
    body = tabulate(rows, headers=out.headers, tablefmt="github", disable_numparse=True)
    head = f"**{out.table.title}**: {out.table.caption}\n\n"
    return head + body + "\n\n" + "\n".join(f"{n + 1}. {f}" for n, f in enumerate(out.footnotes)) + "\n"


LATEX_PACKAGES = ("booktabs", "amssymb")  # \toprule etc.; \checkmark
_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  # OT1, pdflatex's default font encoding, typesets these three as other glyphs
                  "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
                  "—": "---", "–": "--", "−": "$-$", "×": r"$\times$", "✓": r"$\checkmark$",
                  "✗": r"$\times$", "²": r"$^2$", "³": r"$^3$", "°": r"$^\circ$", "§": r"\S{}",
                  "≈": r"$\approx$", "≥": r"$\geq$", "≤": r"$\leq$", "±": r"$\pm$", "·": r"$\cdot$",
                  "∀": r"$\forall$", "∈": r"$\in$", "→": r"$\rightarrow$", "←": r"$\leftarrow$",
                  "↓": r"$\downarrow$", "↑": r"$\uparrow$", "⟨": r"$\langle$", "⟩": r"$\rangle$",
                  "…": r"\ldots{}", "’": "'", "‘": "`", "“": "``", "”": "''", "\u00a0": "~",
                  "ß": r"\ss{}", "æ": r"\ae{}", "Æ": r"\AE{}", "ø": r"\o{}", "Ø": r"\O{}", "œ": r"\oe{}",
                  "ı": r"\i{}"}
# Accented Latin letters are built from their Unicode decomposition: é = e + U+0301 -> \'{e}.
_LATEX_ACCENTS = {"\u0300": "`", "\u0301": "'", "\u0302": "^", "\u0303": "~", "\u0304": "=", "\u0306": "u",
                  "\u0307": ".", "\u0308": '"', "\u030a": "r", "\u030b": "H", "\u030c": "v", "\u0327": "c",
                  "\u0328": "k"}
_GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu", "nu",
          "xi", "pi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega"}  # those with a math command
_GREEK_CAPITALS = {"Gamma", "Delta", "Theta", "Lambda", "Xi", "Pi", "Sigma", "Upsilon", "Phi", "Psi", "Omega"}
LATEX_UNMAPPED = r"\texttt{[U+"  # what an unmapped character becomes: visible in the PDF, found by the tests


def latex_escape(text: str) -> str:
    out = []
    for n, ch in enumerate(text):
        if ch == "-" and text[n + 1:n + 2] == "-":
            out.append("-{}")  # '--' would print an en dash: keep `--protocol` as typed
        elif ch.isascii() and ch not in _LATEX_ESCAPES:
            out.append(ch)
        else:
            out.append(_latex_char(ch))
    return "".join(out)


def _latex_char(ch: str) -> str:
    if ch in _LATEX_ESCAPES:
        return _LATEX_ESCAPES[ch]
    base, *marks = unicodedata.normalize("NFD", ch)
    if base.isascii() and marks and all(m in _LATEX_ACCENTS for m in marks):
        for m in marks:
            base = "\\" + _LATEX_ACCENTS[m] + "{" + base + "}"
        return base
    words = unicodedata.name(ch, "").split()
    if words[:1] == ["GREEK"] and words[2:3] == ["LETTER"] and len(words) == 4:
        letter = words[3].capitalize().replace("Lamda", "Lambda")
        if words[1] == "SMALL" and letter.lower() in _GREEK:
            return f"$\\{letter.lower()}$"
        if words[1] == "CAPITAL" and letter in _GREEK_CAPITALS:
            return f"$\\{letter}$"
    # Correct LaTeX that shows the code point, so nothing is dropped unseen; the tests
    # require that no table data reaches this.
    return f"{LATEX_UNMAPPED}{ord(ch):04X}]}}"


def to_latex(out: Rendered) -> str:
    """A booktabs table for pdflatex; the first line names the packages it needs."""
    t = out.table
    spec = "".join("r" if c.role == "value" else "l" for c in t.columns)
    lines = ["% wsol-harness table " + t.id + "; needs "
             + " ".join(f"\\usepackage{{{p}}}" for p in LATEX_PACKAGES) + " (pdflatex)",
             r"\begin{table}[htbp]", r"\centering", r"\caption{" + latex_escape(f"{t.title}: {t.caption}") + "}",
             r"\label{tab:" + t.id.replace(".", "-") + "}", r"\begin{tabular}{" + spec + "}", r"\toprule",
             " & ".join(latex_escape(h) for h in out.headers) + r" \\", r"\midrule"]
    previous = "published"
    for i, r in enumerate(out.rows):
        if r.kind != previous:
            lines.append(r"\midrule")
            previous = r.kind
        cells = [r"\textbf{" + latex_escape(c) + "}" if (i, j) in out.bold and c else latex_escape(c)
                 for j, c in enumerate(r.cells)]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if out.footnotes:
        lines.append(r"\par\smallskip{\footnotesize " + r" \par ".join(
            f"{n + 1}. " + latex_escape(f.replace("`", "")) for n, f in enumerate(out.footnotes)) + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_csv(out: Rendered) -> str:
    """Run cells as numbers; a spread (``--uncertainty``) in columns of its own at the end, for
    each column that has one: ``<header> std``, or ``<header> low`` and ``<header> high``."""
    def number(v):
        return "" if v is None else repr(round(v, 6))

    spread = {j: len(s) for r in out.rows for j, s in enumerate(r.spread) if s is not None}
    names = {1: ("std",), 2: ("low", "high")}
    extra = [f"{out.headers[j]} {name}" for j in sorted(spread) for name in names[spread[j]]]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["kind", "protocol", "source", *out.headers, *extra])
    for r in out.rows:
        cells = [c if r.kind == "published" else number(v) for c, v in zip(r.cells, r.values)]
        more = [number(r.spread[j][k] if r.spread and r.spread[j] else None)
                for j in sorted(spread) for k in range(spread[j])]
        w.writerow([r.kind + (" (synth)" if r.synth else ""), r.protocol, r.source, *cells, *more])
    return buf.getvalue()


HTML_STYLE = ("table.leaderboard{border-collapse:collapse;font:13px sans-serif;margin:1em 0}"
              "table.leaderboard td,table.leaderboard th{padding:2px 6px;border-bottom:1px solid #ddd}"
              "table.leaderboard td.num{text-align:right}table.leaderboard caption{text-align:left;"
              "padding:4px 0}tr.run{background:#eef6ff}tr.synth td{color:#555;font-style:italic}"
              "ol.footnotes{font:12px sans-serif;color:#444}")


def to_html(out: Rendered) -> str:
    """A whole page, no network: inline style only."""
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(out.table.title)}</title>"
            f"<style>{HTML_STYLE}</style></head><body>{html_fragment(out)}</body></html>\n")


def html_fragment(out: Rendered) -> str:
    """The <table> and its footnotes, for pages that embed it (the run index); style: HTML_STYLE."""
    e = html.escape
    t = out.table
    head = "".join(f"<th>{e(h)}</th>" for h in out.headers)
    body = []
    for i, r in enumerate(out.rows):
        cls = r.kind + (" synth" if r.synth else "")
        tds = "".join(
            f"<td class='{'num' if t.columns[j].role == 'value' else 'txt'}'>"
            + (f"<b>{e(c)}</b>" if (i, j) in out.bold and c else e(c)) + "</td>"
            for j, c in enumerate(r.cells))
        body.append(f"<tr class='{cls}' title='{e(r.protocol)}'>{tds}</tr>")
    notes = "".join(f"<li>{e(f)}</li>" for f in out.footnotes)
    return (f"<table class='leaderboard' id='{e(t.id)}'><caption><b>{e(t.title)}</b>: {e(t.caption)}</caption>"
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"<ol class='footnotes'>{notes}</ol>")


def render(out: Rendered, fmt: str) -> str:
    if fmt not in FORMATS:
        raise HarnessError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    return {"md": to_markdown, "latex": to_latex, "csv": to_csv, "html": to_html}[fmt](out)
