"""Per-run figures and a self-contained HTML report, and an index page across runs.

``write_report(run_dir)`` writes ``<run_dir>/figures/*.png`` and ``<run_dir>/report.html`` (with
the figures embedded) from the run's ``result.json``, its cached evaluation records
(``evals/``), its saved maps (else the selected checkpoint) and its re-selections under other
protocols (``evaluations/``). ``write_index(path, run_dirs)`` links the runs' reports from one page.
``write_group_report(group_dir)`` writes a seed group's page (``harness run --seeds``): the
seeds' spread per epoch and over the threshold, the group's tables, the members' reports linked.
"""
from harness.report.frames import DrawnFrame, choose_frames, drawn_frames, predicted_boxes
from harness.report.group import write_group_report
from harness.report.html import REPORT_FILE, report_summary, write_index, write_report
from harness.report.rundir import Run, load_run

__all__ = [
    "write_report",
    "write_index",
    "write_group_report",
    "report_summary",
    "REPORT_FILE",
    "load_run",
    "Run",
    "drawn_frames",
    "DrawnFrame",
    "choose_frames",
    "predicted_boxes",
]
