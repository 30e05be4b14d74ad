"""`harness leaderboard --uncertainty std|ci`: run cells with the sample std over a seed group's
seeds, or with the bootstrap interval of test CorLoc; published rows untouched.

Expected numbers are computed here from the seeds' own records (their run directories), with
``statistics``, never through the renderer."""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from statistics import mean, stdev

import pytest
from test_leaderboards import _bold_cells, _Balance, _compile_latex, _fake_run

from harness import groups
from harness.cli import main
from harness.errors import HarnessError
from harness.leaderboard import commands, render
from harness.leaderboard.tables import all_tables, get

T = "colocam-t1-ytov1"  # per-class CorLoc columns and their Avg (a derived mean, metric corloc)
CLASSES = ["Aero", "Bird", "Boat", "Car", "Cat", "Cow", "Dog", "Horse", "Mbike", "Train"]
PER_CLASS = [[10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0],
             [12.0, 25.0, 27.0, 44.0, 50.0, 61.0, 75.0, 79.0, 93.0, 100.0],
             [16.0, 18.0, 33.0, 40.0, 58.0, 60.0, 66.0, 83.0, 90.0, 100.0]]
INTERVAL = {"estimate": 56.0, "low": 53.1, "high": 58.84, "level": 0.9, "n_boot": 500, "clusters": 10,
            "resampled": "videos", "of": "the mean over 3 seeds"}


def _group(root: Path, name: str, tweaks: list[dict], grid: dict | None = None, uncertainty: dict | None = None,
           **run) -> Path:
    """A seed group of hand-made members (test_leaderboards._fake_run, one per tweak: test metrics
    replaced), its record written by groups.summarize as `harness run --seeds` writes it. ``grid``:
    {evaluation name: (protocol fields, one tweak per seed)}, each member's re-evaluation and the
    group's record of them, as `harness eval --group --protocol grid` writes them."""
    group = root / name
    dirs = [_fake_run(group / "runs", f"{name}-{seed}", per_class=t.get("corloc_per_class"), **run)
            for seed, t in enumerate(tweaks)]
    (group / "group.json").write_text(json.dumps({"members": [{"seed": s, "run": d.name} for s, d in
                                                              enumerate(dirs)]}))

    def write(records: list[dict], changes: list[dict], path: str) -> None:
        for rec, change, d in zip(records, changes, dirs):
            rec["metrics"]["test"].update(change)
            (d / path).parent.mkdir(parents=True, exist_ok=True)
            (d / path).write_text(json.dumps(rec))
        missing = [d / "none.npz" for d in dirs]  # no per-frame outcomes: no interval
        groups.summarize(group, records, missing, records[0]["config"], group / path)

    own = [json.loads((d / "result.json").read_text()) for d in dirs]
    write(own, tweaks, "result.json")
    for evaluation, (protocol, changes) in (grid or {}).items():
        records = [json.loads(json.dumps(r)) for r in own]
        for r in records:
            r["protocol"].update(name=evaluation, **protocol)
        write(records, changes, f"evaluations/grid/{evaluation}.json")
    if uncertainty:
        record = json.loads((group / "result.json").read_text())
        (group / "result.json").write_text(json.dumps({**record, "uncertainty": {"test": {"corloc": uncertainty}}}))
    return group


def _members(group: Path, record: str = "result.json") -> list[dict]:
    """The seeds' own records, read from their run directories."""
    spec = json.loads((group / "group.json").read_text())
    return [json.loads((group / "runs" / m["run"] / record).read_text()) for m in spec["members"]]


def _cells(out: render.Rendered, row: int = -1) -> dict[str, str]:
    return dict(zip(out.headers, out.rows[row].cells))


def _std(out: render.Rendered, header: str, row: int = -1) -> float | None:
    s = out.rows[row].spread[out.headers.index(header)]
    return None if s is None else s[0]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """Hand-made groups and runs: a synth-yto group of three seeds (with an interval), a
    synth-cub group (MaxBoxAcc per IoU, mean IoU, and a grid re-evaluation for the select-coded
    tables), a real-dataset YTOv1 group that beats every published cell, single runs with and
    without an interval."""
    root = tmp_path_factory.mktemp("made")
    yto = _group(root, "yto", [{"corloc_per_class": pc, "cls_accuracy": acc} for pc, acc in
                               zip(PER_CLASS, (80.0, 84.0, 71.0))], uncertainty=INTERVAL)
    cub_tweaks = [{"max_box_acc": {"0.3": 90.0, "0.5": 60.0, "0.7": 20.0}, "mean_iou": 0.40,
                   "box_acc": {"0.3": 88.0, "0.5": 50.0, "0.7": 10.0}},
                  {"max_box_acc": {"0.3": 94.0, "0.5": 63.0, "0.7": 29.0}, "mean_iou": 0.47,
                   "box_acc": {"0.3": 91.0, "0.5": 54.0, "0.7": 12.0}},
                  {"max_box_acc": {"0.3": 91.0, "0.5": 66.0, "0.7": 21.0}, "mean_iou": 0.43,
                   "box_acc": {"0.3": 83.0, "0.5": 47.0, "0.7": 17.0}}]
    gt = {"supervision": "gt", "selection_split": "val", "threshold_source": "val"}
    cub = _group(root, "cub", cub_tweaks, dataset="synth-cub",
                 grid={"BV-VT.gt": (gt, [{"box_acc": {"0.3": a, "0.5": b, "0.7": c}} for a, b, c in
                                         ((95.0, 70.0, 30.0), (97.0, 62.0, 35.0), (90.0, 71.0, 26.0))])})
    # each seed's own corloc unlike its mean over classes: the Avg column is the table's mean of
    # the class columns, so its spread must be that of each seed's mean of its class cells
    odd = _group(root, "odd", [{"corloc_per_class": pc, "corloc": c} for pc, c in zip(PER_CLASS, (1.0, 30.0, 2.0))])
    real = _group(root, "real", [{"corloc_per_class": [99.0] * 10}, {"corloc_per_class": [98.0] * 10}],
                  dataset="ytov1", protocol="test-threshold-per-class", supervision="gt", threshold_source="test",
                  scope="per-class", backbone="resnet50")
    single = _fake_run(root / "single", "one")
    record = json.loads((single / "result.json").read_text())
    record["uncertainty"] = {"test": {"corloc": {**INTERVAL, "low": 50.0, "high": 60.0, "level": 0.95,
                                                 "n_boot": 1000}}}
    (single / "result.json").write_text(json.dumps(record))
    old = _fake_run(root / "old", "old")  # no interval recorded
    return {"yto": yto, "odd": odd, "cub": cub, "real": real, "single": single, "old": old}


@pytest.fixture(scope="module")
def trained(seed_group) -> Path:
    """A seed group trained for real: three seeds of CAM on a tiny synth-yto (read only)."""
    return seed_group


# --------------------------------------------------------------------------------- std


def test_std_is_the_sample_std_of_each_seeds_own_cell(made):
    """Per-class CorLoc, the derived Avg (each seed's own mean over classes), cls accuracy;
    MaxBoxAcc at an IoU, MaxBoxAccV2 (mean of three IoUs) and its derived mean; mean IoU x100."""
    members = _members(made["yto"])
    out = render.build(get(T), [made["yto"]], uncertainty="std")
    cells = _cells(out)
    for k, header in enumerate(CLASSES):
        seeds = [m["metrics"]["test"]["corloc_per_class"][k] for m in members]
        assert _std(out, header) == pytest.approx(stdev(seeds))
        assert cells[header] == f"{mean(seeds):.1f} ± {stdev(seeds):.1f}"
    avg = [mean(m["metrics"]["test"]["corloc_per_class"]) for m in members]
    assert _std(out, "Avg") == pytest.approx(stdev(avg)) and stdev(avg) > 0.5
    assert cells["Avg"] == f"{mean(avg):.1f} ± {stdev(avg):.1f}"
    assert cells["Horse"] == "80.7 ± 2.1" and cells["Train"] == "100.0 ± 0.0"  # by hand, once
    assert _cells(render.build(get(T), [made["odd"]], uncertainty="std"))["Avg"] == cells["Avg"] == "56.0 ± 0.9"
    acc = [m["metrics"]["test"]["cls_accuracy"] for m in members]
    assert _cells(render.build(get("tcam-t2"), [made["yto"]], uncertainty="std"))["YTOv1"] \
        == f"{mean(acc):.1f} ± {stdev(acc):.1f}"

    members = _members(made["cub"])
    test = [m["metrics"]["test"] for m in members]
    v2 = [mean(t["max_box_acc"][k] for k in ("0.3", "0.5", "0.7")) for t in test]
    assert _std(render.build(get("dips-t2.1"), [made["cub"]], uncertainty="std"), "CUB MaxBoxAccV2") \
        == pytest.approx(stdev(v2))
    out = render.build(get("dips-t2.2"), [made["cub"]], uncertainty="std")
    assert _std(out, "δ=0.7") == pytest.approx(stdev(t["max_box_acc"]["0.7"] for t in test))
    assert _std(out, "Mean (MaxBoxAccV2)") == pytest.approx(stdev(v2))  # derived from the three IoU columns
    out = render.build(get("realistic-t4.6"), [made["cub"]], uncertainty="std")
    iou = [100 * t["mean_iou"] for t in test]
    assert _std(out, "CUB IoU SS") == pytest.approx(stdev(iou))
    assert _cells(out)["CUB IoU SS"] == f"{mean(iou):.2f} ± {stdev(iou):.2f}"


def test_select_coded_rows_take_each_cells_spread_from_its_own_record(made):
    """Table 4.7's BV-VT row: the GT cells come from the group's grid re-evaluation, the SS
    cells from its own result; the derived MaxBoxAccV2 cells keep their value and get no spread."""
    t = get("realistic-t4.7")
    out = render.build(t, [made["cub"]], uncertainty="std")
    row = next(i for i, r in enumerate(out.rows) if r.kind == "run" and r.cells[t.col("Select")] == "BV-VT")
    grid = [m["metrics"]["test"]["box_acc"] for m in _members(made["cub"], "evaluations/grid/BV-VT.gt.json")]
    own = [m["metrics"]["test"]["box_acc"] for m in _members(made["cub"])]
    for iou, suffix in (("0.3", "30"), ("0.5", "50"), ("0.7", "70")):
        assert _std(out, f"GT IoU-{suffix}", row) == pytest.approx(stdev(b[iou] for b in grid))
        assert _std(out, f"SS IoU-{suffix}", row) == pytest.approx(stdev(b[iou] for b in own))
    cells = _cells(out, row)
    gt_v2 = mean(mean(b[k] for b in grid) for k in ("0.3", "0.5", "0.7"))
    assert cells["GT MaxBoxAccV2"] == f"{gt_v2:.2f}" and _std(out, "GT MaxBoxAccV2", row) is None


def test_a_single_run_shows_its_value_alone_and_the_footnote_says_so(made):
    out = render.build(get(T), [made["yto"], made["single"]], uncertainty="std")
    assert "±" in out.rows[-2].cells[1] and not any("±" in c for c in out.rows[-1].cells)
    note = out.footnotes[-1]
    assert note.startswith("Run rows: mean ± sample standard deviation over the seeds of each seed group")
    assert "yto: 3 seeds (0, 1, 2)" in note and "a single run's row shows its value alone" in note
    assert "Published rows as printed" in note

    alone = render.build(get(T), [made["single"]], uncertainty="std")
    assert not any("±" in c for r in alone.rows for c in r.cells)
    assert "no run row is one" in alone.footnotes[-1]
    assert render.build(get(T), [made["single"]]).rows[-1].cells == alone.rows[-1].cells


# ---------------------------------------------------------------------------------- ci


def test_ci_shows_the_records_interval_on_the_corloc_column_only(made):
    out = render.build(get(T), [made["yto"], made["single"], made["old"]], uncertainty="ci")
    group, single, old = (_cells(out, i) for i in (-3, -2, -1))
    corloc = mean(mean(m["metrics"]["test"]["corloc_per_class"]) for m in _members(made["yto"]))
    assert group["Avg"] == f"{corloc:.1f} [{INTERVAL['low']:.1f}, {INTERVAL['high']:.1f}]" == "56.0 [53.1, 58.8]"
    assert single["Avg"] == "55.0 [50.0, 60.0]" and old["Avg"] == "55.0"
    assert not any("[" in group[h] or "[" in single[h] for h in CLASSES)  # per-class columns have none
    note = out.footnotes[-1]
    assert note == ("Run rows: [low, high] is the 90% bootstrap interval of test CorLoc over the test frames, "
                    "resampling whole videos (500 resamples) or the 95% bootstrap interval of test CorLoc over the "
                    "test frames, resampling whole videos (1000 resamples; a seed group's interval is of its mean "
                    "over seeds); other columns have none. Published rows as printed.")

    assert "no run row records one" in render.build(get(T), [made["old"]], uncertainty="ci").footnotes[-1]
    assert "the table has no CorLoc column" in render.build(get("tcam-t2"), [made["yto"]],
                                                            uncertainty="ci").footnotes[-1]


# ----------------------------------------------------------------------- every format


def test_published_rows_stay_as_printed_in_every_format(made):
    runs = [made["yto"], made["single"]]
    plain = render.build(get(T), runs)
    published = sum(r.kind == "published" for r in plain.rows)
    for how in ("std", "ci"):
        out = render.build(get(T), runs, uncertainty=how)
        assert [r.cells for r in out.rows[:published]] == [r.cells for r in plain.rows[:published]]
        for fmt, rows in (("latex", lambda s: [ln for ln in s.splitlines() if ln.endswith(r"\\")]),
                          ("html", lambda s: re.findall(r"<tr class='published'.*?</tr>", s))):
            assert rows(render.render(out, fmt))[:published + 1] == rows(render.render(plain, fmt))[:published + 1]
        # Markdown pads a column to its widest cell: the cells, not the padding, stay
        md = [[c.strip() for c in ln.split("|")] for ln in render.to_markdown(out).splitlines() if ln.startswith("|")]
        md0 = [[c.strip() for c in ln.split("|")] for ln in render.to_markdown(plain).splitlines()
               if ln.startswith("|")]
        assert md[2:2 + published] == md0[2:2 + published]
        table = list(csv.reader(io.StringIO(render.to_csv(out))))
        table0 = list(csv.reader(io.StringIO(render.to_csv(plain))))
        width = len(table0[0])
        assert [r[:width] for r in table] == table0  # run rows' values too: the spread has columns of its own
        assert all(c == "" for r in table[1:1 + published] for c in r[width:])


def test_csv_adds_a_spread_column_per_column_that_has_one(made):
    members = _members(made["yto"])
    out = render.build(get(T), [made["yto"], made["single"]], uncertainty="std")
    header, *rows = list(csv.reader(io.StringIO(render.to_csv(out))))
    width = 3 + len(out.headers)
    assert header[width:] == [f"{h} std" for h in CLASSES + ["Avg"]]
    group, single = rows[-2], rows[-1]
    horse = [m["metrics"]["test"]["corloc_per_class"][7] for m in members]
    assert float(group[width + 7]) == pytest.approx(stdev(horse), abs=1e-6)
    assert float(group[3 + out.headers.index("Horse")]) == pytest.approx(mean(horse))
    assert single[width:] == [""] * 11

    header, *rows = list(csv.reader(io.StringIO(render.to_csv(render.build(get(T), [made["yto"]],
                                                                                uncertainty="ci")))))
    assert header[width:] == ["Avg low", "Avg high"]
    assert [float(x) for x in rows[-1][width:]] == [INTERVAL["low"], INTERVAL["high"]]


def test_bold_ranks_the_values_and_marks_the_whole_cell(made):
    t = get(T)
    plain = render.build(t, [made["real"]], bold="max")
    out = render.build(t, [made["real"]], bold="max", uncertainty="std")
    assert out.bold == plain.bold and (len(out.rows) - 1, t.col("Avg")) in out.bold
    assert "98.5 ± 0.7" in _bold_cells(render.to_markdown(out), "md")


def test_latex_compiles_and_html_is_wellformed(made, tmp_path):
    texts = []
    for how in ("std", "ci"):
        out = render.build(get(T), [made["yto"], made["single"]], uncertainty=how)
        tex = render.to_latex(out)
        assert tex.isascii() and render.LATEX_UNMAPPED not in tex
        texts.append(tex)
        page = render.to_html(out)
        p = _Balance()
        p.feed(page)
        assert not p.errors and not p.stack
        assert ("56.0 ± 0.9" if how == "std" else "56.0 [53.1, 58.8]") in page
    assert r"56.0 $\pm$ 0.9" in texts[0] and "56.0 [53.1, 58.8]" in texts[1]
    _compile_latex(texts, render.LATEX_PACKAGES, tmp_path)


def test_every_table_renders_groups_in_every_format(made):
    """No table, format or mode fails on a seed group (select-coded tables, text columns, tables
    without a CorLoc column)."""
    runs = [made["yto"], made["cub"], made["single"]]
    for t in all_tables().values():
        for how in ("std", "ci"):
            out = render.build(t, runs, uncertainty=how)
            for fmt in render.FORMATS:
                assert render.render(out, fmt)


def test_unknown_uncertainty_is_an_error(made):
    with pytest.raises(HarnessError, match=r"--uncertainty 'sem': use one of none, std, ci"):
        render.build(get(T), [made["yto"]], uncertainty="sem")
    with pytest.raises(HarnessError, match="use one of none, std, ci"):
        commands.table(T, [str(made["yto"])], uncertainty="var")


def test_a_group_is_pointed_to_eval_group(made):
    out = render.build(get(T), [made["yto"]])
    assert "or `harness eval --group DIR` for a seed group" in " ".join(out.footnotes)  # Mixed protocols
    with pytest.raises(HarnessError, match=r"harness eval --group .*yto --protocol all"):
        render.build(get(T), [made["yto"]], protocol="oracle")


# ---------------------------------------------------------------- a trained seed group


def _md_row(text: str, label: str) -> dict[str, str]:
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    headers = [c.strip() for c in lines[0].strip("|").split("|")]
    row = next(ln for ln in lines if label in ln)
    return dict(zip(headers, (c.strip() for c in row.strip("|").split("|"))))


def test_cli_on_a_trained_seed_group(trained, capsys):
    """`harness leaderboard --uncertainty` end to end on a group that `groups.execute` trained:
    each cell's ± is the std of its members' result.json values; the CI is the group record's."""
    members = _members(trained)
    label = "cam (resnet18, synth-yto, gt-val, 3 seeds) [synth]"
    assert main(["leaderboard", "--table", "tcam-t2", "--runs", str(trained), "--uncertainty", "std"]) == 0
    acc = [m["metrics"]["test"]["cls_accuracy"] for m in members]
    assert _md_row(capsys.readouterr().out, label)["YTOv1"] == f"{mean(acc):.1f} ± {stdev(acc):.1f}"

    assert main(["leaderboard", "--table", T, "--runs", str(trained), "--uncertainty", "std"]) == 0
    text = capsys.readouterr().out
    cells = _md_row(text, label)
    for k, header in enumerate(CLASSES):
        seeds = [m["metrics"]["test"]["corloc_per_class"][k] for m in members]
        assert cells[header] == f"{mean(seeds):.1f} ± {stdev(seeds):.1f}"
    avg = [mean(m["metrics"]["test"]["corloc_per_class"]) for m in members]
    assert cells["Avg"] == f"{mean(avg):.1f} ± {stdev(avg):.1f}"
    assert f"{trained.name}: 3 seeds (0, 1, 2)" in text

    assert main(["leaderboard", "--table", T, "--runs", str(trained), "--uncertainty", "ci"]) == 0
    text = capsys.readouterr().out
    ci = json.loads((trained / "result.json").read_text())["uncertainty"]["test"]["corloc"]
    assert _md_row(text, label)["Avg"] == f"{mean(avg):.1f} [{ci['low']:.1f}, {ci['high']:.1f}]"
    assert f"95% bootstrap interval of test CorLoc over the test frames, resampling whole videos " \
           f"({ci['n_boot']} resamples; a seed group's interval is of its mean over seeds)" in text
