"""A run's self-contained HTML report, and an index page across runs.

Self-contained: inline CSS, no script, no remote resource, the figures embedded as PNG data
URIs (also written to ``figures/*.png``, for use elsewhere), so the page alone can be mailed,
copied or served. The index links each run's report by a relative path. Every piece of text
from a record is HTML-escaped. The public helpers (figures, tables, the page) also build a seed
group's page (group.py).
"""
from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Callable, Container, Iterable, Sequence

from matplotlib.figure import Figure
from tqdm import tqdm

from harness import __version__, io
from harness.errors import HarnessError
from harness.protocol import Protocol
from harness.report import figures
from harness.report.frames import drawn_frames
from harness.report.rundir import Run, load_run
from harness.results import RESULT_FILE, read_record

REPORT_FILE = "report.html"
FIGURES_DIR = "figures"

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; word-break: break-all; }
h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.own td, tr.mean td { font-weight: bold; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.9em; margin-top: 0.3em; }
.missing { color: #8a4b00; background: #fff6e5; padding: 0.5em 0.8em; border-left: 3px solid #e0a000; }
footer { margin-top: 3em; color: #888; font-size: 0.8em; }
"""


@dataclass(frozen=True)
class _Figure:
    name: str
    build: Callable[..., Figure]  # (run, frames, device, progress) -> the figure
    caption: Callable[[Run], str]


_FIGURES = (
    _Figure(
        "test_frames",
        lambda run, frames, device, progress: figures.frame_grid(run, drawn_frames(run, frames, "test", device,
                                                                                   progress)),
        lambda run: ("Test frames (spread over classes) with the selected epoch's localization map, GT boxes "
                     f"(green) and the predicted box (red) at {_tau_phrase(run)}; the title gives the frame's "
                     "best IoU.")),
    _Figure(
        "threshold_curves",
        lambda run, *_: figures.threshold_curves(run),
        lambda run: (f"{figures.metric_label(run.protocol.select_metric, run.iou)} averaged over classes vs the CAM "
                     f"threshold at epoch {run.epoch}, on val and test against GT{_pseudo_phrase(run)}. Threshold "
                     f"chosen by {run.selection['tau_chosen_by']}.")),
    _Figure(
        "epoch_curves",
        lambda run, *_: figures.epoch_curves(run),
        lambda run: (f"Per epoch of the {run.selection.get('stage', 'last')} stage: the protocol's selection score, "
                     "val CorLoc against GT at its best threshold, and val classification accuracy; the dashed "
                     "line is the selected epoch.")),
    _Figure(
        "class_corloc",
        lambda run, *_: figures.class_corloc(run),
        lambda run: (f"Test CorLoc@{run.iou:g} per class at the chosen threshold; the dashed line is the class "
                     "mean (the reported CorLoc).")),
)


def _tau_phrase(run: Run) -> str:
    return "Otsu's threshold of each map" if run.taus is None else "the chosen threshold of the frame's class"


def _pseudo_phrase(run: Run) -> str:
    return f" (dashed: against {run.pseudo_target} pseudo-boxes)" if run.pseudo_target else ""


# ---------------------------------------------------------------- the run report


def write_report(run_dir: str | Path, frames: int = 16, progress: bool = False, device: str | None = None) -> Path:
    """Write ``<run_dir>/figures/*.png`` and ``<run_dir>/report.html``; return the page's path.

    A figure whose inputs are missing (no evaluation records, no saved maps and no checkpoint)
    is left out, and the page says why. ``device`` runs the checkpoint when the frames' maps
    were not saved (default: CUDA if available). A directory that is not a finished run raises
    :class:`HarnessError` naming it.
    """
    run = load_run(run_dir)
    builders = [(spec.name, lambda spec=spec: spec.build(run, frames, device, progress)) for spec in _FIGURES]
    made = save_figures(run.dir / FIGURES_DIR, builders, f"report {run.dir.name}", progress)
    page = run.dir / REPORT_FILE
    io.write_text(page, _report_page(run, made))
    return page


def save_figures(fig_dir: Path, builders: Sequence[tuple[str, Callable[[], Figure]]], desc: str,
                 progress: bool) -> dict[str, str]:
    """Build and write ``fig_dir/<name>.png`` of each ``(name, build)``; return name -> why it
    is missing ("" when written). A builder lacking its inputs raises :class:`HarnessError`."""
    made = {}
    for name, build in tqdm(builders, desc=desc, leave=False, disable=not progress):
        path = fig_dir / f"{name}.png"
        try:
            figures.save_png(build(), path)
            made[name] = ""
        except HarnessError as exc:
            path.unlink(missing_ok=True)  # a stale figure must not outlive the data it showed
            made[name] = str(exc)
    return made


def report_summary(page: str | Path) -> tuple[str, list[str]]:
    """What a written report holds, for the line ``harness report`` prints, and the damaged
    re-evaluation records it left out (each naming its file and problem)."""
    run_dir = Path(page).parent
    fig_dir = run_dir / FIGURES_DIR
    missing = [spec.name for spec in _FIGURES if not (fig_dir / f"{spec.name}.png").is_file()]
    text = f"{len(_FIGURES) - len(missing)} of {len(_FIGURES)} figures embedded, also written to {fig_dir}"
    damaged: list[str] = []
    load_run(run_dir).other_evaluations(damaged)
    return text + (f"; left out, the page says why: {', '.join(missing)}" if missing else ""), damaged


def _report_page(run: Run, made: dict[str, str]) -> str:
    rec = run.record
    title = rec["run_id"]
    sub = (f"{rec['plugin']} on {rec['dataset']['name']} ({rec['dataset'].get('kind', '')}), "
           f"protocol {rec['protocol']['name']} ({run.protocol.code}: {run.protocol.axes}), "
           f"backbone {rec['config'].get('classifier', {}).get('backbone', '-')}")
    body = [f"<h1>{escape(title)}</h1>", f'<p class="sub">{escape(sub)}</p>', _summary_table(run)]
    body.append("<h2>Figures</h2>")
    for spec in _FIGURES:
        body.append(figure_html(run.dir / FIGURES_DIR, spec.name, spec.caption(run), made[spec.name]))
    damaged: list[str] = []
    others = run.other_evaluations(damaged)
    if others or damaged:
        body += ["<h2>Other protocols</h2>",
                 "<p>The same checkpoints re-selected under other protocols "
                 "(<code>harness eval --protocol all|grid</code>); the run's own protocol in bold.</p>"]
    if others:
        body.append(_protocols_table(others, rec["protocol"]["name"], run.iou, rec["config"]["eval"]))
    body += [f'<p class="missing">Left out: {escape(why)}</p>' for why in damaged]
    footer = f"wsol-harness {__version__}; run created {rec.get('created', '-')}"
    return html_page(f"{title}: WSOL run report", "\n".join(body), footer)


def _summary_table(run: Run) -> str:
    rec, sel = run.record, run.selection
    test, val = rec["metrics"].get("test", {}), rec["metrics"].get("val", {})
    iou = f"{run.iou:g}"
    rows = [
        ("selected epoch", "epoch", f"{sel['epoch']} ({sel.get('stage', '-')} stage)", sel.get("epoch_chosen_by")),
        ("tau", "tau", format_taus(run.taus, run.classes), sel.get("tau_chosen_by")),
        (f"test CorLoc@{iou}", "test-corloc", _pct(test.get("corloc")), "class mean at the chosen tau"),
        (f"val CorLoc@{iou}", "val-corloc", _pct(val.get("corloc")), "class mean at the chosen tau"),
        (f"test MaxBoxAcc@{iou}", "test-maxboxacc", _pct((test.get("max_box_acc") or {}).get(iou)),
         "oracle threshold on test, frames pooled"),
        ("test mean IoU (x100)", "test-mean-iou", _pct(_x100(test.get("mean_iou"))), "at the chosen tau"),
        ("test classification accuracy", "test-cls", _pct(test.get("cls_accuracy")), "top-1"),
        ("wall time", "wall-time", _duration(rec.get("wall_time_s")), f"device {rec.get('device', '-')}"),
    ]
    cells = "\n".join(
        f'<tr><th>{escape(label)}</th><td id="{key}" class="num">{escape(value)}</td><td>{escape(note or "")}</td></tr>'
        for label, key, value, note in rows)
    return f'<table class="summary">\n{cells}\n</table>'


def figure_html(fig_dir: Path, name: str, caption: str, missing: str) -> str:
    """``fig_dir/<name>.png`` embedded with its caption, or why it is missing."""
    if missing:
        return f'<p class="missing">Figure <code>{escape(name)}</code> left out: {escape(missing)}</p>'
    src = "data:image/png;base64," + base64.b64encode((fig_dir / f"{name}.png").read_bytes()).decode("ascii")
    return f'<figure><img src="{src}" alt="{escape(name)}"><figcaption>{escape(caption)}</figcaption></figure>'


def _protocols_table(records: list[dict], own: str, iou: float, run_eval: dict) -> str:
    head = ["protocol", "setting", "supervision", "epoch", "tau", f"val CorLoc@{iou:g}", f"test CorLoc@{iou:g}",
            f"test MaxBoxAcc@{iou:g}", "test cls acc", "eval settings unlike the run's"]
    rows = []
    for r in records:
        p, sel, m = r["protocol"], r["selection"], r["metrics"]
        test = m.get("test", {})
        cells = [p["name"], Protocol.from_config(p).code, p["supervision"], str(sel["epoch"]),
                 format_taus(sel["tau"]), _pct(m.get("val", {}).get("corloc")), _pct(test.get("corloc")),
                 _pct((test.get("max_box_acc") or {}).get(f"{iou:g}")), _pct(test.get("cls_accuracy")),
                 _eval_changes(r.get("eval") or run_eval, run_eval)]
        rows.append((' class="own"' if p["name"] == own else "", cells))
    return html_table(head, rows, numeric=range(3, 9))


def _eval_changes(settings: dict, run_eval: dict) -> str:
    """What a re-evaluation changed (``harness eval --cfg-options eval.*``): its numbers are
    not comparable to the run's without it. Keeping maps or not changes no number."""
    return ", ".join(f"{k}={settings[k]}" for k in sorted(settings)
                     if k != "save_maps" and settings[k] != run_eval.get(k))


# ---------------------------------------------------------------- the index


def write_index(out_path: str | Path, run_dirs: Iterable[str | Path], tables: Sequence[tuple[str, str]] = (),
                progress: bool = False, frames: int = 16) -> Path:
    """An index page at ``out_path``: one row per run, linking its report by a path relative
    to the page, then each ``(title, HTML fragment)`` of ``tables`` (already rendered; not
    escaped). A finished run without ``report.html`` gets one written first, so no link
    dangles; a directory without a result is listed as unfinished, without a link."""
    out_path = Path(out_path)
    head = ["run", "plugin", "dataset", "protocol", "setting", "epoch", "tau", "IoU", "test CorLoc",
            "test MaxBoxAcc", "test cls acc"]
    rows = []
    for run_dir in tqdm(list(run_dirs), desc="index", leave=False, disable=not progress):
        rows.append(("", _index_row(Path(run_dir), out_path.parent, progress, frames)))
    body = ["<h1>WSOL runs</h1>", html_table(head, rows, numeric=range(5, 11), raw={0})]
    for title, fragment in tables:
        body += [f"<h2>{escape(title)}</h2>", fragment]
    io.write_text(out_path, html_page("WSOL runs", "\n".join(body), f"wsol-harness {__version__}"))
    return out_path


def _index_row(run_dir: Path, index_dir: Path, progress: bool, frames: int) -> list[str]:
    from harness import groups

    if groups.is_group(run_dir) and (run_dir / RESULT_FILE).is_file():
        return _group_index_row(run_dir, index_dir, progress)
    try:
        run = load_run(run_dir)
    except HarnessError:
        return [escape(run_dir.name), "not a finished run (no readable result.json)"] + [""] * 9
    page = run.dir / REPORT_FILE
    if not page.is_file():
        write_report(run.dir, frames, progress)
    href = Path(os.path.relpath(page, index_dir)).as_posix()
    rec, test = run.record, run.record["metrics"].get("test", {})
    iou = f"{run.iou:g}"
    return [f'<a href="{escape(href)}">{escape(rec["run_id"])}</a>', rec["plugin"], rec["dataset"]["name"],
            rec["protocol"]["name"], run.protocol.code, str(run.epoch), format_taus(run.taus), iou,
            _pct(test.get("corloc")), _pct((test.get("max_box_acc") or {}).get(iou)), _pct(test.get("cls_accuracy"))]


def _group_index_row(group_dir: Path, index_dir: Path, progress: bool) -> list[str]:
    """A seed group's row: its page linked (written first when missing), the seeds' epochs,
    test numbers as mean ± std over the seeds."""
    from harness.groups import fmt_mean_std
    from harness.report.group import write_group_report

    page = group_dir / REPORT_FILE
    if not page.is_file():
        write_group_report(group_dir, progress)
    rec = read_record(group_dir / RESULT_FILE)
    iou = f"{rec['config']['eval']['iou_threshold']:g}"
    test, std = rec["metrics"].get("test", {}), rec["metrics_std"].get("test", {})
    href = Path(os.path.relpath(page, index_dir)).as_posix()
    return [f'<a href="{escape(href)}">{escape(rec["run_id"])}</a> ({len(rec["seeds"])} seeds)', rec["plugin"],
            rec["dataset"]["name"], rec["protocol"]["name"], Protocol.from_config(rec["protocol"]).code,
            ", ".join(map(str, rec["selection"]["epoch"])), "per seed", iou,
            fmt_mean_std(test.get("corloc"), std.get("corloc")),
            fmt_mean_std((test.get("max_box_acc") or {}).get(iou), (std.get("max_box_acc") or {}).get(iou)),
            fmt_mean_std(test.get("cls_accuracy"), std.get("cls_accuracy"))]


# ---------------------------------------------------------------- HTML pieces


def format_taus(taus: list[float] | None, classes: Sequence[str] = ()) -> str:
    """``0.879`` for one threshold, ``Otsu per map`` for none, per class otherwise."""
    if taus is None:
        return "Otsu per map"
    if len(set(taus)) == 1:
        return f"{taus[0]:.6g}"
    if not classes:
        return "per class"
    return "per class: " + ", ".join(f"{c} {t:.6g}" for c, t in zip(classes, taus))


def _pct(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _x100(v):
    return None if v is None else 100 * v


def _duration(seconds) -> str:
    if seconds is None:
        return "-"
    minutes, s = divmod(int(round(seconds)), 60)
    h, m = divmod(minutes, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def html_table(head: list[str], rows: list[tuple[str, list[str]]], numeric: Container[int],
               raw: Container[int] = ()) -> str:
    """``rows``: (tr attributes, cells); cells are text, escaped here, except the columns in
    ``raw`` (links built and escaped by the caller)."""
    out = ["<table>", "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"]
    for attrs, cells in rows:
        tds = []
        for i, cell in enumerate(cells):
            text = cell if i in raw else escape(cell)
            tds.append(f'<td class="num">{text}</td>' if i in numeric else f"<td>{text}</td>")
        out.append(f"<tr{attrs}>" + "".join(tds) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def html_page(title: str, body: str, footer: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n"
            f"<footer>{escape(footer)}</footer>\n</body>\n</html>\n")

