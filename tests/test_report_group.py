"""A seed group's page (`harness report --group`), on a tiny group made by the harness itself."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness import groups
from harness.errors import HarnessError
from harness.evalstore import split_metrics
from harness.evaluation import BoxAccumulator
from harness.report import load_run, write_report
from harness.report.figures import MAX_PNG_BYTES
from harness.report.group import SEED_EPOCHS, SEED_THRESHOLDS, epoch_bands, threshold_bands, write_group_report

from conftest import copy_group
from test_report import _check_page, _embedded, _local_refs

FIGURES = (SEED_EPOCHS, SEED_THRESHOLDS)


@pytest.fixture(scope="module")
def group(seed_group, tmp_path_factory):
    return copy_group(seed_group, tmp_path_factory.mktemp("groups"))  # the reports are written into it


def _json(path: Path):
    return json.loads(path.read_text())


def test_epoch_band_is_the_mean_and_std_of_each_seeds_records(group):
    dirs = groups.member_dirs(group)
    bands = epoch_bands([load_run(d) for d in dirs])
    records = [_json(d / "result.json") for d in dirs]
    epochs = sorted(int(e) for e in records[0]["selection"]["epoch_scores"])
    assert bands["score"].x.tolist() == bands["val_corloc"].x.tolist() == epochs
    for i, e in enumerate(epochs):
        scores = [r["selection"]["epoch_scores"][str(e)] for r in records]
        loc = [split_metrics(_json(d / "evals" / f"val-epoch{e:03d}.json"), None,
                             r["config"]["eval"]["iou_threshold"])["corloc_oracle"] for d, r in zip(dirs, records)]
        for b, values in ((bands["score"], scores), (bands["val_corloc"], loc)):
            assert b.seeds[:, i].tolist() == pytest.approx(values)
            assert b.mean[i] == pytest.approx(np.mean(values))
            assert b.std[i] == pytest.approx(np.std(values, ddof=1))
    assert bands["val_corloc"].std.any()  # the seeds differ: the check above is not all zeros


def test_threshold_band_is_the_mean_and_std_of_each_seeds_curve(group, tmp_path):
    dirs = groups.member_dirs(copy_group(group, tmp_path))
    for n, d in enumerate(dirs):  # the seeds select different epochs, whatever training chose
        record = _json(d / "result.json")
        epochs = sorted(int(e) for e in record["selection"]["epoch_scores"])
        chosen, record["selection"]["epoch"] = record["selection"]["epoch"], epochs[n % len(epochs)]
        (d / "result.json").write_text(json.dumps(record))
        # test is evaluated at the selected epoch only: its record stands in for the new epoch's (val has each)
        test = d / "evals" / f"test-epoch{record['selection']['epoch']:03d}.json"
        if not test.exists():
            shutil.copy(d / "evals" / f"test-epoch{chosen:03d}.json", test)
    bands = threshold_bands([load_run(d) for d in dirs])
    for split in ("val", "test"):
        curves = []
        for d in dirs:
            record = _json(d / "result.json")
            epoch, iou = record["selection"]["epoch"], record["config"]["eval"]["iou_threshold"]
            acc = BoxAccumulator.from_state_dict(_json(d / "evals" / f"{split}-epoch{epoch:03d}.json")["boxes"])
            assert bands[split].x.tolist() == acc.thresholds.tolist()
            # CorLoc (gt-val's metric) per class and threshold, then the mean over the classes with frames
            has = acc.count > 0
            k = acc.iou_thresholds.index(iou)
            curves.append((100.0 * acc.correct[has, k, :] / acc.count[has, None]).mean(axis=0))
        curves = np.array(curves)
        np.testing.assert_allclose(bands[split].seeds, curves)
        np.testing.assert_allclose(bands[split].mean, curves.mean(axis=0))
        np.testing.assert_allclose(bands[split].std, curves.std(axis=0, ddof=1))
    assert bands["test"].std.any()


def test_page_embeds_both_figures_the_tables_and_links_the_reports_that_exist(group, tmp_path):
    group_dir = copy_group(group, tmp_path / "root")
    dirs = groups.member_dirs(group_dir)
    write_report(dirs[1], frames=2)
    page = write_group_report(group_dir, progress=False)
    assert page == group_dir / "report.html"
    html = page.read_text()

    for name in FIGURES:
        path = group_dir / "figures" / f"{name}.png"
        assert 0 < path.stat().st_size <= MAX_PNG_BYTES, name
        with Image.open(path) as im:
            assert 300 <= im.width <= 2500 and 200 <= im.height <= 2500, (name, im.size)
    assert _embedded(html) == {name: (group_dir / "figures" / f"{name}.png").read_bytes() for name in FIGURES}
    # only the member with a report is linked; the others are named with the command that writes theirs
    assert _local_refs(html) == [f"runs/{dirs[1].name}/report.html"]
    for d in (dirs[0], dirs[2]):
        assert f"harness report --run {d}" in html

    record = _json(group_dir / "result.json")
    for m in record["seeds"]:
        assert re.search(rf"<td>{m['seed']}</td><td>(<a [^>]*>)?{m['run_id']}(</a>)?</td><td class=\"num\">"
                         rf"{m['epoch']}</td>", html), m["run_id"]
    test, std = record["metrics"]["test"], record["metrics_std"]["test"]
    corloc = groups.fmt_mean_std(test["corloc"], std["corloc"])
    assert f'<tr class="mean"><td>mean ± std</td><td></td><td class="num"></td><td></td><td class="num">{corloc}' in html
    assert re.search(rf"<td>CorLoc @tau</td><td class=\"num\">[^<]+</td><td class=\"num\">{re.escape(corloc)}</td>",
                     html)
    ci = record["uncertainty"]["test"]["corloc"]
    assert (f"test CorLoc@0.5 of the mean over 3 seeds: {ci['estimate']:.1f}, 95% interval [{ci['low']:.1f}, "
            f"{ci['high']:.1f}] from {ci['n_boot']} bootstrap resamples of the {ci['clusters']} videos") in html
    assert _check_page(page, tmp_path) == len(FIGURES)


def test_a_member_without_evaluation_records_leaves_the_figures_out_saying_why(group, tmp_path):
    group_dir = copy_group(group, tmp_path)
    write_group_report(group_dir, progress=False)
    member = groups.member_dirs(group_dir)[2]
    shutil.rmtree(member / "evals")
    html = write_group_report(group_dir, progress=False).read_text()
    for name in FIGURES:
        assert not (group_dir / "figures" / f"{name}.png").exists()  # no stale figure
        assert re.search(rf"Figure <code>{name}</code> left out: no evaluation record of epoch [^<]* of "
                         rf"{member.name} .*harness eval --run {re.escape(str(member))}", html), name
    assert _embedded(html) == {} and "<h2>Metrics</h2>" in html  # the tables come from the group record


def test_seeds_on_otsu_or_per_class_thresholds_are_drawn(group, tmp_path):
    group_dir = copy_group(group, tmp_path)
    dirs = groups.member_dirs(group_dir)
    for d, taus in ((dirs[0], None), (dirs[1], [0.2 + 0.05 * c for c in range(10)])):
        record = _json(d / "result.json")
        record["selection"]["tau"] = taus
        (d / "result.json").write_text(json.dumps(record))
    assert set(_embedded(write_group_report(group_dir, progress=False).read_text())) == set(FIGURES)


def test_a_group_is_not_a_run_and_a_run_is_not_a_group(group, tmp_path, capsys):
    from harness.cli import main

    with pytest.raises(HarnessError, match=re.escape(f"{group} is a seed group") + ".*" +
                       re.escape(f"harness report --group {group}")):
        load_run(group)
    assert main(["report", "--run", str(group), "--no-progress"]) == 2
    said = capsys.readouterr().err
    assert f"{group} is a seed group" in said and f"`harness report --group {group}`" in said and "Traceback" not in said
    member = groups.member_dirs(group)[0]
    with pytest.raises(HarnessError, match=re.escape(str(member)) + ".*seed group"):
        write_group_report(member, progress=False)


def test_cli_writes_the_group_page(group, tmp_path, capsys):
    from harness.cli import main

    group_dir = copy_group(group, tmp_path)
    assert main(["report", "--group", str(group_dir), "--no-progress"]) == 0
    assert capsys.readouterr().out == f"wrote {group_dir / 'report.html'}\n"
    assert set(_embedded((group_dir / "report.html").read_text())) == set(FIGURES)


def test_the_index_links_a_group_page_with_its_mean_and_std(group, tmp_path, capsys):
    from statistics import mean, stdev

    from harness.cli import main

    group_dir = copy_group(group, tmp_path / "runs")
    index = tmp_path / "site" / "index.html"
    assert main(["report", "--index", str(index), "--runs", str(group_dir), "--no-progress"]) == 0
    html = index.read_text()
    assert (group_dir / "report.html").is_file()  # written for the link, as a run's report is
    assert f"../runs/{group_dir.name}/report.html" in _local_refs(html)
    corloc = [_json(d / "result.json")["metrics"]["test"]["corloc"] for d in groups.member_dirs(group_dir)]
    assert f"{mean(corloc):.1f} ± {stdev(corloc):.1f}" in html and "(3 seeds)" in html
    _check_page(index, tmp_path)
