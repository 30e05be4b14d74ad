"""Published tables as data: loading, the re-derivation of every printed aggregate, and
rendering with a user's runs inserted (Markdown, LaTeX, CSV, HTML)."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness.leaderboard import checks, render
from harness.leaderboard.runs import STAND_INS, load_record, run_dirs
from harness.leaderboard.tables import METRICS, PAPERS, all_tables, get, load_table, parse_cell

DIGESTS = {"colocam_tcam.md", "fcam.md", "thesis_dips_tedloc.md", "thesis_protocol_trcamv.md",
           "refcode_sbelharbi.md", "refcode_eval_cam_clipes.md"}
YTO_CLASSES = ["aeroplane", "bird", "boat", "car", "cat", "cow", "dog", "horse", "motorbike", "train"]


# ------------------------------------------------------------------------- the data files


def test_every_table_loads_with_its_provenance():
    tables = all_tables()
    assert len(tables) >= 2
    for t in tables.values():
        assert t.paper in PAPERS()
        for field in ("caption", "source", "dataset", "protocol", "protocol_note"):
            assert getattr(t, field).strip(), f"{t.id}: empty {field}"
        assert t.rows and all(len(r) == len(t.columns) for r in t.rows)
        assert t.source.split()[0] in DIGESTS, f"{t.id}: source {t.source!r} names no reference digest"
        for c in t.columns:
            assert c.metric is None or c.metric in METRICS


def test_every_printed_aggregate_is_rederived_and_only_known_mismatches_fail(capsys):
    """The consistency check of the transcriptions: a wrong digit anywhere a printed mean,
    max, difference or repeated cell covers shows up as an unexpected mismatch."""
    known, unexpected, stale = checks.report()
    assert not unexpected, "transcription errors or unrecorded source flaws:\n" + "\n".join(map(str, unexpected))
    assert not stale, f"known mismatches that no longer fail: {stale}"
    tables = all_tables()
    total = sum(checks.count_identities(t, tables) for t in tables.values())
    assert total >= 40
    assert main(["leaderboard", "--check"]) == 0
    out = capsys.readouterr().out
    for f in known:  # the report names every known mismatch of the sources
        assert f"[{f.row}] x [{f.column}]" in out
    assert "FPPVOS" in out


def test_colocam_table_matches_the_digest_cell_by_cell():
    """Independent re-reading of the digest: the YTOv1 block of CoLo-CAM Table 1."""
    t = get("colocam-t1-ytov1")
    assert len(t.rows) == 26
    assert t.row("CoLo-CAM with Layer-CAM (ours)")[t.col("Avg")].value == 82.1
    assert t.row("CoLo-CAM with Layer-CAM (ours)")[t.col("Avg")].bold
    assert t.row("Papazoglou et al. [57] (iccv 2013)")[t.col("Time/Frame")].text == "4s"
    assert t.row("Prest et al. [59] (cvpr 2012)")[t.col("Time/Frame")].value is None
    assert [c.cls for c in t.columns if c.cls] == YTO_CLASSES


@pytest.mark.parametrize("raw, text, value, bold, decimals", [
    ("82.1", "82.1", 82.1, False, 1),
    ("**82.1**", "82.1", 82.1, True, 1),
    ("6.476", "6.476", 6.476, False, 3),
    ("+16.5", "+16.5", 16.5, False, 1),
    ("−0.4", "-0.4", -0.4, False, 1),
    ("—", "—", None, False, 0),
    ("N/A", "—", None, False, 0),
    ("4s", "4s", None, False, 0),
    ("**TrCAM-V (ours)**", "TrCAM-V (ours)", None, True, 0),
    ("**82.1", "**82.1", None, False, 1),  # unbalanced marks: text, never a number
])
def test_cells_parse_as_printed(raw, text, value, bold, decimals):
    c = parse_cell(raw)
    assert (c.text, c.value, c.bold, c.decimals) == (text, value, bold, decimals)


def _write_table(tmp_path: Path, body: str, extra: str = "", name: str = "colocam-tx-test") -> Path:
    folder = tmp_path / "colocam"  # the folder names the paper; colocam has a paper.toml
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(f'''id = "{name}"
table = "Table X"
caption = "test"
source = "colocam_tcam.md"
dataset = "ytov1"
metric = "corloc"
protocol = "test-threshold"
protocol_note = "test"
cells = \'\'\'
{body}
\'\'\'
{extra}''')
    return path


SMALL = """| Method | A | B | Avg |
|---|---|---|---|
| x | 10.0 | 20.0 | 15.0 |
| y | 30.0 | 41.0 | 35.4 |
| Improvement | 20.0 | 21.0 | 20.4 |"""


def test_each_check_rule_catches_a_wrong_cell(tmp_path):
    checks_toml = '''
[[checks]]
rule = "mean"
columns = ["A", "B"]
result = "Avg"
except_rows = ["Improvement"]
[[checks]]
rule = "difference"
row = "y"
minus = "x"
result_row = "Improvement"
'''
    t = load_table(_write_table(tmp_path, SMALL, checks_toml))
    # y: (30 + 41) / 2 = 35.5, printed 35.4: within one unit of the last decimal
    assert checks.check_table(t, {}) == []
    assert checks.count_identities(t, {}) == 2 + 3
    bad = load_table(_write_table(tmp_path, SMALL.replace("| 35.4 |", "| 35.2 |").replace("| 21.0 |", "| 22.0 |"),
                                  checks_toml))
    found = {(f.rule, f.row, f.column, round(f.computed, 3)) for f in checks.check_table(bad, {})}
    assert found == {("mean", "y", "Avg", 35.5), ("difference", "Improvement", "B", 21.0),
                     ("difference", "Improvement", "Avg", 20.2)}


def test_mean_max_rows_and_equal_rules(tmp_path):
    body = """| Method | A | B |
|---|---|---|
| x | 10.0 | 20.0 |
| y | 30.0 | 41.0 |
| Mean | 20.0 | 30.5 |
| Best | 30.0 | 40.0 |"""
    spec = '''
[[checks]]
rule = "mean_rows"
rows = ["x", "y"]
result_row = "Mean"
tolerance = 0.0
[[checks]]
rule = "max_rows"
rows = ["x", "y"]
result_row = "Best"
'''
    t = load_table(_write_table(tmp_path, body, spec))
    assert [(f.rule, f.row, f.column) for f in checks.check_table(t, {})] == [("max_rows", "Best", "B")]
    other = load_table(_write_table(tmp_path, body.replace("| 41.0 |", "| 42.0 |"), name="colocam-tx-other"))
    eq = load_table(_write_table(tmp_path, body, '''
[[checks]]
rule = "equal"
other = "colocam-tx-other"
rows = ["x", "y"]
''', name="colocam-tx-eq"))
    found = checks.check_table(eq, {"colocam-tx-other": other})
    assert [(f.row, f.column, f.printed, f.computed) for f in found] == [("y", "B", 41.0, 42.0)]


@pytest.mark.parametrize("body, extra, needle", [
    (SMALL.replace("| x | 10.0 |", "| x | 10.0 | 1 |"), "", "line 3 has 5 cells, the header 4"),
    (SMALL.replace("| A | B |", "| A | A |"), "", "headers must be unique"),
    (SMALL, '[columns.C]\nclass = "cat"\n', "names no column"),
    (SMALL, '[columns.A]\nmetric = "accuracy"\n', "metric 'accuracy' unknown"),
    (SMALL, '[columns.A]\nwidth = 3\n', "unknown key(s) width"),
    (SMALL, '[[checks]]\nrule = "median"\n', None),
    (SMALL.replace("| y |", "| x |"), "", "row names must be unique"),
    ("not a table", "", "must be a Markdown pipe table"),
])
def test_malformed_table_files_name_the_problem(tmp_path, body, extra, needle):
    path = _write_table(tmp_path, body, extra)
    with pytest.raises(HarnessError) as e:
        t = load_table(path)
        checks.check_table(t, {})
    assert str(path) in str(e.value)
    assert (needle or "rule 'median'") in str(e.value)


def test_unknown_table_id_suggests_close_ones():
    with pytest.raises(HarnessError, match="did you mean colocam-t1-ytov1"):
        get("colocam-t1")


# ------------------------------------------------------------------------------ run rows


def _fake_run(root: Path, name: str, *, dataset="synth-yto", protocol="pseudo-box-val", per_class=None,
              supervision="pseudo:cam-pg", selection_split="val", threshold_source="val", scope="global",
              backbone="resnet18", evaluations: dict | None = None) -> Path:
    """A run directory with a hand-made result record (the renderer reads records only)."""
    run = root / name
    (run / "evaluations").mkdir(parents=True)
    per_class = per_class or [10.0 * (i + 1) for i in range(10)]

    def record(proto, sup, split, source, shift=0.0, scope=scope):
        values = [v + shift for v in per_class]
        return {
            "run_id": name, "plugin": "colocam",
            "protocol": {"name": proto, "supervision": sup, "selection_split": split,
                         "threshold_source": source, "threshold_scope": scope, "select_metric": "corloc"},
            "dataset": {"name": dataset, "classes": YTO_CLASSES},
            "selection": {"epoch": 1, "tau": [0.5] * len(YTO_CLASSES), "score": 50.0},
            "metrics": {"test": {"corloc": sum(values) / len(values), "corloc_per_class": values,
                                 "cls_accuracy": 80.0, "box_acc": {"0.3": 90.0, "0.5": 50.0, "0.7": 10.0},
                                 "max_box_acc": {"0.3": 95.0, "0.5": 60.0, "0.7": 20.0}, "mean_iou": 0.45}},
            "config": {"classifier": {"backbone": backbone}},
        }

    (run / "result.json").write_text(json.dumps(record(protocol, supervision, selection_split, threshold_source)))
    for proto, (sup, split, source, shift) in (evaluations or {}).items():
        rec = record(proto, sup, split, source, shift, "per-class" if "per-class" in proto else "global")
        (run / "evaluations" / f"{proto}.json").write_text(json.dumps(rec))
    return run


def test_synth_run_row_is_inserted_marked_and_never_ranked(tmp_path):
    _fake_run(tmp_path, "r1", per_class=[100.0] * 10)  # would beat every published cell
    out = render.build(get("colocam-t1-ytov1"), [tmp_path], bold="max")
    run = out.rows[-1]
    assert run.kind == "run" and run.synth
    assert run.cells[0] == "colocam (resnet18, synth-yto, pseudo-box-val) [synth]"
    assert run.cells[1:12] == ["100.0"] * 11 and run.cells[12] == ""
    assert not any(i == len(out.rows) - 1 for i, _ in out.bold)
    avg = get("colocam-t1-ytov1").col("Avg")
    assert {i for i, j in out.bold if j == avg} == {25}  # CoLo-CAM's 82.1 stays the best
    text = " ".join(out.footnotes)
    assert "Mixed protocols" in text and "pseudo-box-val" in text and "test-threshold-per-class" in text
    assert "synth-yto stands in for ytov1/ytov2.2" in text and "resnet18" in text


def test_real_dataset_run_competes_for_best_and_same_protocol_has_no_mixed_footnote(tmp_path):
    _fake_run(tmp_path, "real", dataset="ytov1", protocol="test-threshold-per-class", supervision="gt",
              threshold_source="test", scope="per-class", backbone="resnet50", per_class=[90.0] * 10)
    t = get("colocam-t1-ytov1")
    out = render.build(t, [tmp_path], bold="max")
    last = len(out.rows) - 1
    assert (last, t.col("Avg")) in out.bold and (25, t.col("Avg")) not in out.bold
    assert (14, t.col("Aero")) in out.bold  # SPFTN (P) 97.3 still beats 90.0 on Aero
    assert not any("Mixed protocols" in f or "[synth]" in f or "Backbone" in f for f in out.footnotes)
    assert out.rows[-1].cells[0] == "colocam (resnet50, ytov1, test-threshold-per-class)"


def test_protocol_option_takes_the_runs_reevaluation(tmp_path):
    run = _fake_run(tmp_path, "r1", evaluations={"test-threshold": ("gt", "val", "test", 3.0),
                                                 "test-threshold-per-class": ("gt", "val", "test", 5.0)})
    out = render.build(get("colocam-t1-ytov1"), [run], protocol="test-threshold-per-class")
    assert out.rows[-1].cells[1] == "15.0"  # the re-evaluation's numbers, not the result's 10.0
    assert not any("Mixed protocols" in f for f in out.footnotes)
    with pytest.raises(HarnessError, match="harness eval --run .* --protocol all"):
        render.build(get("colocam-t1-ytov1"), [run], protocol="oracle")


def test_run_of_another_dataset_is_left_out_with_why(tmp_path):
    _fake_run(tmp_path, "cub", dataset="synth-cub")
    out = render.build(get("colocam-t1-ytov1"), [tmp_path])
    assert all(r.kind == "published" for r in out.rows)
    assert len(out.skipped) == 1 and "synth-cub" in out.skipped[0]


def test_runs_arguments(tmp_path):
    _fake_run(tmp_path, "a")
    _fake_run(tmp_path, "b")
    (tmp_path / "leaderboard.md").write_text("x")
    assert [p.name for p in run_dirs([tmp_path])] == ["a", "b"]
    assert [p.name for p in run_dirs(sorted(tmp_path.iterdir()))] == ["a", "b"]  # a shell glob of a root
    with pytest.raises(HarnessError, match="no such directory"):
        run_dirs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(HarnessError, match="neither a finished run"):
        run_dirs([tmp_path / "empty"])
    (tmp_path / "a" / "result.json").write_text("{not json")
    with pytest.raises(HarnessError, match="not a readable result record"):
        load_record(tmp_path / "a")


def test_stand_ins_name_real_datasets_of_the_tables():
    datasets = {d for t in all_tables().values() for d in t.datasets}
    assert set(STAND_INS["synth-yto"]) <= datasets


# ------------------------------------------------------------------------------- formats


def _rendered(tmp_path):
    _fake_run(tmp_path, "r1", per_class=[100.0] * 10)
    return render.build(get("colocam-t1-ytov1"), [tmp_path])


def test_markdown_marks_the_best_and_numbers_the_footnotes(tmp_path):
    text = render.to_markdown(_rendered(tmp_path))
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    assert len(lines) == 2 + 26 + 1
    assert "**82.1**" in lines[-2]
    assert "**" not in lines[-1]
    assert re.search(r"^1\. Published rows: CoLo-CAM Table 1 \(YTOv1\)", text, re.M)
    assert re.search(r"^2\. Bold: the paper's own marks", text, re.M)
    assert re.search(r"^4\. \[synth\]", text, re.M)


def test_latex_is_a_wellformed_booktabs_table(tmp_path):
    out = _rendered(tmp_path)
    tex = render.to_latex(out)
    assert tex.count(r"\toprule") == 1 and tex.count(r"\bottomrule") == 1 and tex.count(r"\midrule") == 2
    body = tex.split(r"\toprule")[1].split(r"\bottomrule")[0]
    rows = [ln for ln in body.splitlines() if ln.endswith(r"\\")]
    assert len(rows) == 1 + 26 + 1
    ncols = len(out.headers)
    for ln in rows:  # escaped ampersands are not separators
        assert len(re.findall(r"(?<!\\)&", ln)) == ncols - 1, ln
    assert tex.count("{") - tex.count(r"\{") == tex.count("}") - tex.count(r"\}")
    assert r"\begin{tabular}{l" + "r" * 11 + "l}" in tex
    assert r"\textbf{82.1}" in tex and "224$\\times$224" in tex
    assert "-{}-bold max" in tex  # not an en dash
    comment, rest = tex.split("\n", 1)
    assert comment.startswith("% ") and r"\usepackage{booktabs}" in comment and r"\usepackage{amssymb}" in comment
    assert "%" not in rest.replace(r"\%", "")


def test_csv_round_trips_every_row(tmp_path):
    out = _rendered(tmp_path)
    rows = list(csv.reader(io.StringIO(render.to_csv(out))))
    assert rows[0] == ["kind", "protocol", "source", *out.headers]
    assert len(rows) == 1 + 26 + 1
    assert rows[-1][0] == "run (synth)" and float(rows[-1][3 + 11]) == 100.0
    assert rows[1][3:] == [c.text for c in get("colocam-t1-ytov1").rows[0]]


class _Balance(HTMLParser):
    VOID = {"meta", "br", "img", "hr"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors = [], []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def test_html_is_a_wellformed_page_without_network(tmp_path):
    page = render.to_html(_rendered(tmp_path))
    p = _Balance()
    p.feed(page)
    assert not p.errors and not p.stack
    assert "http" not in page
    assert page.count("<tr class='run synth'") == 1 and page.count("<tr class='published'") == 26


def test_cli_table_list_match_and_errors(tmp_path, capsys):
    _fake_run(tmp_path, "r1")
    assert main(["leaderboard", "--table", "colocam-t1-ytov1", "--runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "colocam (resnet18, synth-yto, pseudo-box-val) [synth]" in out and "| 82.1 " not in out
    assert main(["leaderboard", "--table", "colocam-t1-ytov1", "--runs", str(tmp_path), "--format", "latex",
                 "--out", str(tmp_path / "t.tex")]) == 0
    assert (tmp_path / "t.tex").read_text().split("\n")[1] == r"\begin{table}[htbp]"
    assert main(["leaderboard", "--list"]) == 0
    listing = capsys.readouterr().out
    assert all(t in listing for t in all_tables())
    assert main(["leaderboard", "--match", "--runs", str(tmp_path / "r1")]) == 0
    assert "colocam-t1-ytov1" in capsys.readouterr().out
    assert main(["leaderboard", "--table", "nope"]) == 2
    assert "unknown leaderboard table 'nope'" in capsys.readouterr().err
    assert main(["leaderboard", "--runs", str(tmp_path)]) == 2
    assert "go with --table" in capsys.readouterr().err


def test_select_coded_table_gets_one_row_per_setting_from_the_grid(tmp_path):
    """The chapter's Table 4.2: rows (method, BT/BV-TT/VT), a column per supervision; the cls.
    column holds the Otsu-thresholded (CL-..-OT) result in the TT rows."""
    run = _fake_run(tmp_path, "g", dataset="synth-cub")  # its own result: BV-VT with cam-pg (ss), 50.0
    base = json.loads((run / "result.json").read_text())
    (run / "evaluations" / "grid").mkdir()
    settings = {"BV-VT.gt": ("gt", "val", "val", 52.0), "BT-TT.gt": ("gt", "test", "test", 53.0),
                "BT-OT.cls": ("cls", "test", "otsu", 54.0), "BT-TT.cls": ("cls", "test", "test", 55.0),
                "BV-VT.cam-pg": ("pseudo:cam-pg", "val", "val", 56.0)}
    for name, (sup, split, source, acc) in settings.items():
        rec = json.loads(json.dumps(base))
        rec["protocol"].update(name=name, supervision=sup, selection_split=split, threshold_source=source)
        rec["metrics"]["test"]["box_acc"]["0.5"] = acc
        (run / "evaluations" / "grid" / f"{name}.json").write_text(json.dumps(rec))
    t = get("realistic-t4.2")
    out = render.build(t, [run])
    rows = {r.cells[t.col("Select")]: r for r in out.rows if r.kind == "run"}
    assert set(rows) == {"BT-TT", "BV-VT"}
    assert rows["BT-TT"].cells[t.col("CUB GT")] == "53.00"
    assert rows["BT-TT"].cells[t.col("CUB cls.")] == "54.00"  # CL-BT-OT, not CL-BT-TT's 55
    assert rows["BV-VT"].cells[t.col("CUB GT")] == "52.00"
    assert rows["BV-VT"].cells[t.col("CUB SS")] == "50.00"  # the run's own result wins over the grid's copy
    assert rows["BV-VT"].cells[t.col("CUB RPN")] == "" and rows["BV-VT"].cells[t.col("ILSVRC GT")] == ""
    assert all(r.synth and r.cells[0] == "colocam (resnet18, synth-cub) [synth]" for r in rows.values())


def test_doubtful_rows_are_never_marked_best_and_said_so():
    t = get("realistic-t4.2")
    out = render.build(t, bold="max")
    dips = {i for i, r in enumerate(t.rows) if t.row_key(r).startswith("DiPS")}
    gt = t.col("CUB GT")
    assert len(dips) == 4 and max(r[gt].value for r in t.rows) == 97.0  # DiPS's doubtful 97.0
    assert {i for i, j in out.bold if j == gt} == {32}  # SAT BT-TT 92.14, the best undoubted cell
    assert not {i for i, _ in out.bold} & dips
    assert any("DiPS | BV-VT" in f for f in out.footnotes)


def test_a_one_backbone_run_fills_its_backbone_column_and_no_mean_over_backbones(tmp_path):
    """F-CAM Table 1: CUB MaxBoxAcc per backbone and their Mean; a ResNet-18 run on the CUB
    stand-in fills the ResNet column only (its family), never the three-backbone Mean, nor
    the OpenImages block (synth-cub speaks for the table's first dataset, CUB)."""
    run = _fake_run(tmp_path, "cub", dataset="synth-cub")
    t = get("fcam-t1")
    out = render.build(t, [run])
    cells = dict(zip(out.headers, out.rows[-1].cells))
    assert cells["CUB ResNet"] == "60.0"  # max_box_acc at IoU 0.5
    assert [cells[h] for h in ("CUB VGG", "CUB Inception", "CUB Mean", "OI VGG", "OI ResNet", "OI Mean")] == [""] * 6


def test_a_derived_average_is_the_mean_of_the_runs_own_cells(tmp_path):
    per_class = [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 95.0]
    _fake_run(tmp_path, "r", per_class=per_class)
    out = render.build(get("colocam-t1-ytov1"), [tmp_path])
    assert out.rows[-1].cells[11] == "45.5"


# ------------------------------------------------------------------------------ bold marks


def _bold_cells(text: str, fmt: str) -> list[str]:
    """The cell texts a rendered table shows in bold (the title and caption are not cells)."""
    pattern = {"md": r"\| \*\*(.+?)\*\* (?=\|)", "latex": r"\\textbf\{(.+?)\}", "html": r"<td[^>]*><b>(.+?)</b></td>"}
    return re.findall(pattern[fmt], text.split("\n\n", 1)[1] if fmt == "md" else text)


def test_bold_shows_the_papers_marks_or_each_columns_best_or_none(tmp_path):
    """CoLo-CAM Table 1 prints TCAM's 81.0 bold on Cow though F-CAM's 87.0 is higher: `paper`
    keeps the printed marks only, `max` ranks (a real-dataset run too), `none` has none."""
    _fake_run(tmp_path, "real", dataset="ytov1", protocol="test-threshold-per-class", supervision="gt",
              threshold_source="test", scope="per-class", per_class=[99.0] * 10)
    t = get("colocam-t1-ytov1")
    printed = {(i, j) for i, r in enumerate(t.rows) for j, c in enumerate(r) if c.bold}
    cow, tcam, fcam = t.col("Cow"), 24, 22
    assert (tcam, cow) in printed and t.rows[fcam][cow].value > t.rows[tcam][cow].value

    paper = render.build(t, [tmp_path])  # the default
    assert paper.bold == printed
    mx = render.build(t, [tmp_path], bold="max")
    run = len(t.rows)
    assert {(i, j) for i, j in mx.bold if j == cow} == {(run, cow)}  # 99.0 beats every printed cell
    assert all(i == run for i, j in mx.bold if t.columns[j].role == "value")
    assert render.build(t, [tmp_path], bold="none").bold == set()

    for out, expected in ((paper, len(printed)), (mx, len(mx.bold)), (render.build(t, bold="none"), 0)):
        for fmt in ("md", "latex", "html"):
            assert len(_bold_cells(render.render(out, fmt), fmt)) == expected, (fmt, expected)
    assert any(f.startswith("Bold: the paper's own marks") for f in paper.footnotes)
    assert any(f.startswith("Bold: the best value of each column") for f in mx.footnotes)
    with pytest.raises(HarnessError, match="--bold 'bold': use one of paper, max, none"):
        render.build(t, bold="bold")


def test_reference_rows_are_never_bold_and_said_so(tmp_path):
    """F-CAM Table 1: the FSL baseline (fully supervised) has the best CUB Inception cell, Best WSOL
    + ours repeats the best method's; neither is a method to rank."""
    t = get("fcam-t1")
    assert {"FSL baseline", "Center baseline", "Best WSOL", "Best WSOL + ours"} <= set(t.reference_rows)
    out = render.build(t, bold="max")
    inception = t.col("CUB Inception")
    fsl = next(i for i, r in enumerate(t.rows) if t.row_key(r) == "FSL baseline")
    assert max(r[inception].value for r in t.rows if r[inception].value is not None) == t.rows[fsl][inception].value
    refs = {i for i, r in enumerate(t.rows) if t.row_key(r) in t.reference_rows}
    assert not {i for i, _ in out.bold} & refs
    best = {t.row_key(t.rows[i]) for i, j in out.bold if j == inception}
    assert best == {"Smooth-GradCAM++ [25] + ours"}  # 86.8, which Best WSOL + ours repeats
    assert any(f.startswith("Reference rows, never bold: Best WSOL; FSL baseline") for f in out.footnotes)

    # every row named like a bound, a baseline or an aggregate of other rows is declared so
    reference_like = re.compile(r"^(Best WSOL( \+ ours)?|Improvement|Mean)$|upper bound|baseline|GT-Mask$", re.I)
    for table in all_tables().values():
        named = {table.row_key(r) for r in table.rows if reference_like.search(table.row_key(r).strip(" |"))}
        assert named <= set(table.reference_rows), (table.id, named - set(table.reference_rows))

    # a paper's own mark on a reference row is dropped too; an unknown name is an error
    body = SMALL.replace("| y | 30.0 |", "| y | **30.0** |")
    body = body.replace("| Improvement | 20.0 |", "| Improvement | **20.0** |")
    mine = load_table(_write_table(tmp_path, body, 'reference_rows = ["Improvement"]\n'))
    assert render.build(mine).bold == {(1, 1)}
    with pytest.raises(HarnessError, match=r"reference_rows names no row: \['Nope'\]"):
        load_table(_write_table(tmp_path, SMALL, 'reference_rows = ["Nope"]\n'))


# ----------------------------------------------------------- published output, every table

# Where the tables were transcribed from is for maintainers (`source`, `protocol_source`,
# `notes`): the reference digests are not public, so no rendered text may point into them.
INTERNAL = re.compile(r"\.md\b|§|digest|refcode|thesis_|colocam_tcam|fcam\.md| L\d{3,}")


@pytest.fixture(scope="module")
def every_table_with_runs(tmp_path_factory):
    """Every table rendered with runs inserted (a synth-yto, a synth-cub and a real YTOv1 run:
    each table takes the ones that fit): {(table id, bold mode): Rendered}."""
    root = tmp_path_factory.mktemp("runs")
    _fake_run(root, "yto")
    _fake_run(root, "cub", dataset="synth-cub")
    _fake_run(root, "real", dataset="ytov1", protocol="test-threshold-per-class", supervision="gt",
              threshold_source="test", scope="per-class", per_class=[99.0] * 10)
    return {(t.id, bold): render.build(t, [root], bold=bold) for t in all_tables().values() for bold in render.BOLD}


def test_published_output_cites_no_internal_file(every_table_with_runs, capsys):
    assert sum(any(r.kind == "run" for r in out.rows) for out in every_table_with_runs.values()) >= 30 * 3
    for (table_id, bold), out in every_table_with_runs.items():
        for fmt in render.FORMATS:
            text = render.render(out, fmt)
            hit = INTERNAL.search(text)
            assert hit is None, f"{table_id} --format {fmt} --bold {bold}: ...{text[hit.start() - 80:hit.end() + 20]}"
    assert main(["leaderboard", "--check"]) == 0 and main(["leaderboard", "--list"]) == 0
    printed = capsys.readouterr().out
    assert "FPPVOS" in printed and INTERNAL.search(printed) is None


def _tool(name: str) -> str | None:
    """The path of an external program, None when it is missing; with HARNESS_REQUIRE_TOOLS=1
    (CI) a missing one fails the test, so the check cannot silently shrink there."""
    path = shutil.which(name)
    if path is None and os.environ.get("HARNESS_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{name} is not installed but HARNESS_REQUIRE_TOOLS=1 (see .ci/run for the apt packages)")
    return path


def test_latex_of_every_table_compiles_with_pdflatex(every_table_with_runs, tmp_path):
    """Every table with the runs inserted, in one document: pure ASCII (every character the data
    uses is mapped), balanced braces and environments, and, where pdflatex is installed, a
    compile without errors using only the packages the tables' first line names."""
    texts = [render.to_latex(out) for (_, bold), out in every_table_with_runs.items() if bold == "max"]
    packages = set()
    for tex in texts:
        packages |= set(re.findall(r"\\usepackage\{(\w+)\}", tex.split("\n", 1)[0]))
        assert tex.isascii(), {ch for ch in tex if not ch.isascii()}
        assert render.LATEX_UNMAPPED not in tex
        unescaped = re.sub(r"\\[{}]", "", tex)
        assert unescaped.count("{") == unescaped.count("}")
        assert re.findall(r"\\begin\{(\w+)\}", tex) == re.findall(r"\\end\{(\w+)\}", tex)[::-1]
    assert packages == set(render.LATEX_PACKAGES)
    log = _compile_latex(texts, sorted(packages), tmp_path)
    assert log is None or f"({len(texts)} pages" in log


def _compile_latex(texts: list[str], packages, folder: Path) -> str | None:
    """The tables, a page each, compiled by pdflatex with ``packages``; assert no error and return
    the log. None where pdflatex is missing (a failure instead with HARNESS_REQUIRE_TOOLS=1)."""
    pdflatex = _tool("pdflatex")
    if pdflatex is None:
        return None
    document = ("\\documentclass{article}\n" + "".join(f"\\usepackage{{{p}}}\n" for p in packages)
                + "\\begin{document}\n" + "\\clearpage\n".join(texts) + "\\end{document}\n")
    (folder / "tables.tex").write_text(document)
    done = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", "tables.tex"], cwd=folder,
                          capture_output=True, text=True, timeout=120)
    log = (folder / "tables.log").read_text(errors="replace")
    errors = [ln for ln in log.splitlines() if ln.startswith("!")]
    assert done.returncode == 0 and not errors, errors or done.stdout[-2000:]
    return log


def test_latex_escape_maps_what_the_data_uses_and_shows_the_rest():
    esc = render.latex_escape
    assert esc("↓ ↑ ⟨z, t⟩ ✓ ✗ δ λ Ω É é") == (r"$\downarrow$ $\uparrow$ $\langle$z, t$\rangle$ $\checkmark$ "
                                               r"$\times$ $\delta$ $\lambda$ $\Omega$ \'{E} \'{e}")
    assert esc("a_b & 50% | x<y --bold") == r"a\_b \& 50\% \textbar{} x\textless{}y -{}-bold"
    assert esc("中 ϝ") == r"\texttt{[U+4E2D]} \texttt{[U+03DD]}"  # not dropped unseen


def test_leaderboard_modules_import_nothing_heavy():
    """`harness leaderboard` must start fast: none of these at import time."""
    heavy = ["torch", "cv2", "numba", "matplotlib", "mmengine", "numpy", "timm", "PIL"]
    code = ("import sys, harness.leaderboard.commands, harness.leaderboard.render, harness.leaderboard.checks; "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_run_with_its_own_backbone_section_is_labelled_with_the_architecture(tmp_path):
    """TrCAM-V and DiPS configure ``method.backbone`` as a section; the label takes its arch."""
    from harness.leaderboard.runs import RunRecord

    for backbone, label in (({"arch": "vit_small_patch16_224.dino", "pretrained": None}, "vit_small_patch16_224.dino"),
                            ("clip", "clip"), (None, "resnet18")):
        method = {"name": "dips"} if backbone is None else {"name": "dips", "backbone": backbone}
        rec = RunRecord(tmp_path, {"config": {"method": method, "classifier": {"backbone": "resnet18"}}}, "result.json")
        assert rec.backbone == label
