"""A seed group's self-contained page: the seeds' spread per epoch, the band of their threshold
curves, the group's tables, and links to the members' own reports.

``write_group_report(group_dir)`` writes ``<group>/figures/seed_*.png`` and ``<group>/report.html``
from the group record (``result.json``, see :mod:`harness.groups`) and its members' run
directories. A band is the mean ± sample std over the seeds (as the record's ``metrics_std``);
:func:`epoch_bands` and :func:`threshold_bands` compute the numbers, the figures only draw them.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from harness import __version__, groups, io, results
from harness.errors import HarnessError
from harness.evaluation.uncertainty import mean_std
from harness.protocol import Protocol
from harness.report import figures
from harness.report.html import FIGURES_DIR, REPORT_FILE, figure_html, format_taus, html_page, html_table, save_figures
from harness.report.rundir import Run, load_run

SEED_EPOCHS, SEED_THRESHOLDS = "seed_epochs", "seed_thresholds"
PICK = "#d62728"  # each seed's own choice (epoch, tau)


@dataclass(frozen=True)
class Band:
    """The seeds' curves over a shared x axis and, at each x, their mean and sample std."""
    x: np.ndarray
    seeds: np.ndarray  # (seeds, len(x)), in the group's seed order
    mean: np.ndarray
    std: np.ndarray


def band(x, rows) -> Band:
    rows = np.asarray(rows, dtype=np.float64)
    stats = np.array([mean_std(col) for col in rows.T]).reshape(-1, 2)
    return Band(np.asarray(x), rows, stats[:, 0], stats[:, 1])


def epoch_bands(runs: list[Run]) -> dict[str, Band]:
    """Per epoch, over the seeds: the selection score (``score``) and val CorLoc against GT at
    its best tau (``val_corloc``), as each member's own report draws them."""
    series = [figures.epoch_series(run) for run in runs]
    epochs = sorted(series[0].score)
    for run, s in zip(runs, series):
        if sorted(s.score) != epochs:
            raise HarnessError(f"{run.dir.name} has epochs {sorted(s.score)} and {runs[0].dir.name} {epochs}: a "
                               f"seed group's members differ by their seed only")
        # a mean over the seeds that happen to have a record would change meaning from epoch to epoch
        missing = [e for e in epochs if e not in s.val_corloc]
        if missing:
            raise HarnessError(figures.no_evals(run, "val", missing))
    return {"score": band(epochs, [[s.score[e] for e in epochs] for s in series]),
            "val_corloc": band(epochs, [[s.val_corloc[e] for e in epochs] for s in series])}


def threshold_bands(runs: list[Run]) -> dict[str, Band]:
    """Per split (val, test), over the seeds: the class-mean curve of the selection metric vs
    tau against GT, each seed at its own selected epoch."""
    out = {}
    for split in ("val", "test"):
        accs = [run.boxes(split, run.epoch) for run in runs]
        for run, acc in zip(runs, accs):
            if acc is None:
                raise HarnessError(figures.no_evals(run, split))
            if not np.array_equal(acc.thresholds, accs[0].thresholds):
                raise HarnessError(f"{run.dir.name} was evaluated at other thresholds than {runs[0].dir.name}: "
                                   f"their curves cannot be averaged")
        out[split] = band(accs[0].thresholds, [figures.selection_curve(r, a) for r, a in zip(runs, accs)])
    return out


# ---------------------------------------------------------------- figures


def _draw_band(ax, b: Band, color: str, label: str, style: str = "-") -> None:
    for row in b.seeds:
        ax.plot(b.x, row, color=color, linewidth=0.7, alpha=0.35)
    ax.fill_between(b.x, b.mean - b.std, b.mean + b.std, color=color, alpha=0.18, linewidth=0)
    ax.plot(b.x, b.mean, style, color=color, linewidth=1.8, markersize=4,
            label=f"{label}: mean ± std over {len(b.seeds)} seeds")


def _seed(run: Run):
    return run.record["config"].get("seed", "?")


def seed_epochs(runs: list[Run]) -> Figure:
    bands = epoch_bands(runs)
    first = runs[0]
    fig = Figure(figsize=(7.0, 4.6), layout="constrained")
    ax = fig.subplots()
    score = bands["score"]
    # markers as the run report's, so that curves which coincide (gt-val selects on val CorLoc) both show
    _draw_band(ax, score, figures.SELECTED, f"selection score ({first.selection['epoch_chosen_by']})", "o-")
    _draw_band(ax, bands["val_corloc"], figures.VAL, f"val CorLoc@{first.iou:g} vs GT, best tau", "s-")
    for k, run in enumerate(runs):  # on the seed's own score curve, where its choice was made
        y = score.seeds[k, list(score.x).index(run.epoch)]
        ax.plot(run.epoch, y, "v", color=PICK, markersize=6, label=None if k else "each seed's selected epoch")
        ax.annotate(f"seed {_seed(run)}", (run.epoch, y), textcoords="offset points", xytext=(4, 4 + 7 * k),
                    fontsize=6, color=PICK)
    figures.epoch_axes(ax, first.selection.get("stage", ""), "validation per epoch, over the seeds",
                       legend_columns=1)  # the labels say what each band is: too long for two columns
    return fig


def seed_thresholds(runs: list[Run]) -> Figure:
    bands = threshold_bands(runs)
    first = runs[0]
    fig = Figure(figsize=(7.0, 4.4), layout="constrained")
    ax = fig.subplots()
    marked = False
    for split, color in (("val", figures.VAL), ("test", figures.TEST)):
        b = bands[split]
        _draw_band(ax, b, color, f"{split} vs GT")
        for k, run in enumerate(runs):
            t = run.tau_indices(b.x)
            if t is None:  # Otsu's threshold of each map: no tau on this axis
                continue
            t = np.unique(t)
            ax.plot(b.x[t], b.seeds[k, t], "o", color=color, markeredgecolor=PICK, markersize=4,
                    label=None if marked else "each seed's chosen tau, on its curve")
            marked = True
    otsu = [str(_seed(r)) for r in runs if r.taus is None]
    note = f" (Otsu per map, no tau: seed {', '.join(otsu)})" if otsu else ""
    figures.threshold_axes(ax, first.protocol.select_metric, first.iou,
                           f"localization vs threshold, each seed at its selected epoch{note}")
    return fig


# ---------------------------------------------------------------- the page


def write_group_report(group_dir: str | Path, progress: bool = True) -> Path:
    """Write ``<group>/figures/seed_*.png`` and ``<group>/report.html``; return the page's path.

    A figure whose inputs are missing (a member's evaluation records) is left out and the page
    says why. The page draws no frames: each member's report does. A directory that is not a
    finished seed group raises :class:`HarnessError` naming it.
    """
    group_dir = Path(group_dir)
    dirs = groups.member_dirs(group_dir)
    record = _group_record(group_dir)
    # Loaded once for both figures; when a member cannot be loaded, each figure says why.
    members = functools.cache(lambda: [load_run(d) for d in dirs])
    made = save_figures(group_dir / FIGURES_DIR, [(SEED_EPOCHS, lambda: seed_epochs(members())),
                                                  (SEED_THRESHOLDS, lambda: seed_thresholds(members()))],
                        f"report {group_dir.name}", progress)
    page = group_dir / REPORT_FILE
    io.write_text(page, _group_page(group_dir, record, dirs, made))
    return page


def _group_record(group_dir: Path) -> dict:
    path = group_dir / results.RESULT_FILE
    if not path.is_file():
        raise HarnessError(f"{group_dir} has no {results.RESULT_FILE}: not every seed's run has finished; finish "
                           f"them with `harness run --resume {group_dir}`")
    record = results.read_record(path)
    if record.get("kind") != groups.KIND:
        raise HarnessError(f"{path} is not a seed group's record (its kind is {record.get('kind')!r})")
    return record


def _group_page(group_dir: Path, record: dict, dirs: list[Path], made: dict[str, str]) -> str:
    protocol = Protocol.from_config(record["protocol"])
    sel, n = record["selection"], len(record["seeds"])
    iou = float(record["config"]["eval"]["iou_threshold"])
    title = record["run_id"]
    sub = (f"{record['plugin']} on {record['dataset']['name']} ({record['dataset'].get('kind', '')}), protocol "
           f"{protocol.name} ({protocol.code}: {protocol.axes}), backbone "
           f"{record['config'].get('classifier', {}).get('backbone', '-')}; {n} seeds, each an ordinary run")
    captions = {
        SEED_EPOCHS: (f"Per epoch of the {sel.get('stage') or 'last'} stage: the protocol's selection score "
                      f"({sel.get('epoch_chosen_by')}) and val CorLoc@{iou:g} against GT at its best threshold. "
                      f"Thick line: the mean over the {n} seeds; band: mean ± std; thin lines: each seed; "
                      "triangles: each seed's selected epoch."),
        SEED_THRESHOLDS: (f"{figures.metric_label(protocol.select_metric, iou)} averaged over classes vs the CAM "
                          "threshold, each seed at its own selected epoch, on val and test against GT. Thick line: "
                          f"the mean over the {n} seeds; band: mean ± std; thin lines: each seed; dots: each seed's "
                          f"chosen threshold ({sel.get('tau_chosen_by')})."),
    }
    body = [f"<h1>{escape(title)}</h1>", f'<p class="sub">{escape(sub)}</p>',
            "<h2>Seeds</h2>", _members_table(group_dir, record, dirs, iou)]
    unreported = [d for d in dirs if not (d / REPORT_FILE).is_file()]
    if unreported:
        commands = "; ".join(f"<code>harness report --run {escape(str(d))}</code>" for d in unreported)
        body.append(f"<p>A seed's run is linked once it has a report of its own; to write the missing ones: "
                    f"{commands}.</p>")
    body += [_intervals(record, iou), "<h2>Metrics</h2>", _metrics_table(record), "<h2>Figures</h2>"]
    body += [figure_html(group_dir / FIGURES_DIR, name, captions[name], made[name]) for name in captions]
    footer = f"wsol-harness {__version__}; group created {record.get('created', '-')}"
    return html_page(f"{title}: WSOL seed group report", "\n".join(body), footer)


def _members_table(group_dir: Path, record: dict, dirs: list[Path], iou: float) -> str:
    """:func:`harness.groups.members_rows`, with each seed's report linked where it exists."""
    head, rows = groups.members_rows(record)
    cells = [[escape(str(c)) for c in row] for row in rows]
    for row, d in zip(cells, dirs):  # the seeds' rows; the last, the mean, has no run
        if (d / REPORT_FILE).is_file():
            row[1] = f'<a href="{escape(Path(os.path.relpath(d / REPORT_FILE, group_dir)).as_posix())}">{row[1]}</a>'
    head[4] += f"@{iou:g}"
    return html_table(head, [(' class="mean"' if n == len(dirs) else "", row) for n, row in enumerate(cells)],
                      numeric={2, 4, 5}, raw=range(len(head)))


def _intervals(record: dict, iou: float) -> str:
    """What the group's interval is an interval of, and what it resamples."""
    parts = []
    for split, u in (record.get("uncertainty") or {}).items():
        ci = u.get("corloc")
        if ci:
            parts.append(f"{split} CorLoc@{iou:g} of {ci.get('of', 'the mean over the seeds')}: {ci['estimate']:.1f}, "
                         f"{100 * ci['level']:g}% interval [{ci['low']:.1f}, {ci['high']:.1f}] from {ci['n_boot']} "
                         f"bootstrap resamples of the {ci['clusters']} {ci['resampled']}")
    if not parts:
        return "<p>No bootstrap interval: a member's run predates per-frame outcomes.</p>"
    return (f"<p>{escape('; '.join(parts))}. Each frame's outcome is the fraction of seeds whose box was right, "
            "so the interval reflects which test videos were drawn, not which seeds; the ± std is the seeds' "
            "spread.</p>")


def _metrics_table(record: dict) -> str:
    head, rows = groups.metrics_rows(record)
    return html_table(head, [("", row) for row in rows], numeric=range(1, len(head)))
