"""Per-run figures and the self-contained HTML report, on tiny runs made by the harness itself."""
import base64
import io
import json
import re
import shutil
import subprocess
from collections import Counter
from html import unescape
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness import runner
from harness.errors import HarnessError
from harness.evaluation import best_iou_per_threshold
from harness.report import choose_frames, drawn_frames, load_run, predicted_boxes, write_index, write_report
from harness.report.figures import MAX_PNG_BYTES

from conftest import TINY_YTO
from test_leaderboards import INTERNAL, _tool

FIGURES = ("test_frames", "threshold_curves", "epoch_curves", "class_corloc")
# Three ways of choosing tau: one global tau on pseudo-boxes, Otsu per map, one tau per class.
PROTOCOLS = ("pseudo-box-val", "class-only", "test-threshold-per-class")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    overrides = {**TINY_YTO, "classifier.epochs": 2, "device": "cpu"}
    out = {}
    for protocol in PROTOCOLS:
        run_dir = runner.prepare("cam", protocol, "synth-yto", overrides, root)
        runner.execute(run_dir, progress=False)
        out[protocol] = run_dir
    return out


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / run_dir.name))


def _result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def _cell(html: str, key: str) -> str:
    return re.search(rf'id="{key}"[^>]*>([^<]*)<', html).group(1)


def _local_refs(html: str) -> list[str]:
    return [r for r in re.findall(r'(?:src|href)="([^"]+)"', html) if not r.startswith("data:")]


def _embedded(html: str) -> dict[str, bytes]:
    """The page's images: alt text -> the PNG bytes of its data URI."""
    return {alt: base64.b64decode(data) for data, alt in
            re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]+)">', html)}


def test_report_has_every_figure_and_the_run_numbers(runs, tmp_path):
    run_dir = _copy(runs["pseudo-box-val"], tmp_path)
    page = write_report(run_dir, frames=8)
    html = page.read_text()
    for name in FIGURES:
        path = run_dir / "figures" / f"{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert 0 < path.stat().st_size <= MAX_PNG_BYTES, name
        with Image.open(path) as im:
            assert 300 <= im.width <= 2500 and 200 <= im.height <= 2500, (name, im.size)
    # self-contained: the figures are in the page itself, as written to figures/
    assert _embedded(html) == {name: (run_dir / "figures" / f"{name}.png").read_bytes() for name in FIGURES}
    assert _local_refs(html) == [] and html.count("<img") == len(FIGURES)
    assert "http://" not in html and "https://" not in html and "<script" not in html and "@import" not in html

    record = _result(run_dir)
    [tau] = set(record["selection"]["tau"])
    assert float(_cell(html, "tau")) == pytest.approx(tau, rel=1e-6)
    assert _cell(html, "test-corloc") == f"{record['metrics']['test']['corloc']:.2f}"
    assert _cell(html, "epoch").startswith(f"{record['selection']['epoch']} ")
    assert "BV-VT" in html and record["run_id"] in html


def test_tau_is_reported_as_otsu_or_per_class(runs, tmp_path):
    otsu = write_report(_copy(runs["class-only"], tmp_path), frames=4).read_text()
    assert _cell(otsu, "tau") == "Otsu per map" and "CL-BV-OT" in otsu
    per_class_dir = _copy(runs["test-threshold-per-class"], tmp_path)
    per_class = write_report(per_class_dir, frames=4).read_text()
    record = _result(per_class_dir)
    shown = dict(item.rsplit(" ", 1) for item in _cell(per_class, "tau").removeprefix("per class: ").split(", "))
    assert {c: float(t) for c, t in shown.items()} == pytest.approx(
        dict(zip(record["dataset"]["classes"], record["selection"]["tau"])))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_drawn_boxes_are_the_boxes_the_evaluation_scored(runs, protocol):
    """Over every test frame, the drawn boxes' IoUs add up to the evaluation record's counts
    and IoU sums at the chosen tau (or Otsu), and reproduce result.json's per-class CorLoc."""
    run = load_run(runs[protocol])
    acc = run.boxes("test", run.epoch)
    frames = drawn_frames(run, n=10_000)
    assert len(frames) == acc.num_frames
    num_classes, levels = len(run.classes), np.asarray(acc.iou_thresholds)
    iou_sum, hits = np.zeros(num_classes), np.zeros((num_classes, len(levels)))
    for d in frames:
        iou_sum[d.frame.label] += d.iou
        hits[d.frame.label] += d.iou >= levels
        if d.tau is not None:
            [expected] = best_iou_per_threshold(d.score_map, np.asarray(d.frame.boxes), [d.tau], run.multi_contour)
            assert d.iou == pytest.approx(expected, abs=1e-12), d.frame.id
    tau_idx = run.tau_indices(acc.thresholds)
    if tau_idx is None:
        assert (protocol, hits.tolist()) == (protocol, acc.otsu_correct.tolist())
        np.testing.assert_allclose(iou_sum, acc.otsu_iou_sum, atol=1e-9)
    else:
        rows = np.arange(num_classes)
        assert hits.tolist() == acc.correct[rows, :, tau_idx].tolist()
        np.testing.assert_allclose(iou_sum, acc.iou_sum[rows, tau_idx], atol=1e-9)
    assert iou_sum.sum() > 0  # the check above is not all zeros
    k = acc.level_index(run.iou)
    corloc = [100.0 * hits[c, k] / n if n else None for c, n in enumerate(acc.count)]
    assert corloc == pytest.approx(run.record["metrics"]["test"]["corloc_per_class"])


def test_frames_come_from_the_checkpoint_when_maps_were_not_saved(runs, tmp_path):
    run_dir = _copy(runs["pseudo-box-val"], tmp_path)
    from_saved = drawn_frames(load_run(run_dir), n=6)
    shutil.rmtree(run_dir / "maps")
    from_checkpoint = drawn_frames(load_run(run_dir), n=6, device="cpu")
    assert [d.position for d in from_checkpoint] == [d.position for d in from_saved]
    for a, b in zip(from_saved, from_checkpoint):
        np.testing.assert_allclose(a.score_map, b.score_map, atol=1e-5)
    write_report(run_dir, frames=6, device="cpu")
    assert (run_dir / "figures" / "test_frames.png").is_file()


def test_missing_pieces_leave_out_figures_and_say_why(runs, tmp_path):
    run_dir = _copy(runs["pseudo-box-val"], tmp_path)
    write_report(run_dir, frames=4)
    shutil.rmtree(run_dir / "maps")
    shutil.rmtree(run_dir / "checkpoints")
    shutil.rmtree(run_dir / "evals")
    html = write_report(run_dir, frames=4).read_text()
    assert "no saved maps" in html and "harness eval --run" in html
    assert not (run_dir / "figures" / "test_frames.png").exists()  # no stale figure
    assert not (run_dir / "figures" / "threshold_curves.png").exists()
    # the per-epoch selection scores and the per-class CorLoc live in result.json itself
    assert set(_embedded(html)) == {"epoch_curves", "class_corloc"} and _local_refs(html) == []


def test_epochs_without_evaluation_record_are_skipped(runs, tmp_path):
    run_dir = _copy(runs["pseudo-box-val"], tmp_path)
    record = _result(run_dir)
    other = next(e for e in record["selection"]["epoch_scores"] if int(e) != record["selection"]["epoch"])
    (run_dir / "evals" / f"val-epoch{int(other):03d}.json").unlink()
    html = write_report(run_dir, frames=4).read_text()
    assert "left out" not in html


def test_other_protocols_are_tabled_with_any_eval_setting_they_changed(runs, tmp_path):
    run_dir = _copy(runs["pseudo-box-val"], tmp_path)
    runner.reevaluate_many(run_dir, ["oracle", "pseudo-box-val"], device="cpu", progress=False)
    runner.reevaluate(run_dir, "gt-val", {"eval.multi_contour": True}, "cpu", progress=False)
    html = write_report(run_dir, frames=2).read_text()
    rows = {name: attrs for attrs, name in re.findall(r"<tr( class=\"own\")?><td>([^<]+)</td>", html)}
    assert rows == {"pseudo-box-val": ' class="own"', "oracle": "", "gt-val": ""}
    assert re.search(r"<td>gt-val</td>.*<td>multi_contour=True</td></tr>", html)
    assert re.search(r"<td>oracle</td><td>BT-TT</td>.*<td></td></tr>", html)
    # That re-evaluation kept its records apart (evals/settings-<key>/): the run's own cached
    # records still describe the run, and the figures read them.
    run = load_run(run_dir)
    assert all(run.eval_record("val", e) is not None for e in run.epochs())
    assert _cell(html, "test-corloc") == f"{_result(run_dir)['metrics']['test']['corloc']:.2f}"


def test_text_from_the_record_is_escaped(runs, tmp_path):
    run_dir = _copy(runs["test-threshold-per-class"], tmp_path)
    record = _result(run_dir)
    record["dataset"]["classes"][0] = "<b>evil</b>"
    record["selection"]["epoch_chosen_by"] = "a & b"
    (run_dir / "result.json").write_text(json.dumps(record))
    html = write_report(run_dir, frames=2).read_text()
    assert "<b>evil</b>" not in html and "&lt;b&gt;evil&lt;/b&gt;" in html and "a &amp; b" in html


@pytest.mark.parametrize("make", ["missing", "empty", "corrupt"])
def test_a_directory_that_is_not_a_finished_run_is_named(tmp_path, make):
    run_dir = tmp_path / "not-a-run"
    if make != "missing":
        run_dir.mkdir()
    if make == "corrupt":
        (run_dir / "result.json").write_text("{not json")
    with pytest.raises(HarnessError, match=re.escape(str(run_dir))):
        write_report(run_dir)


def test_index_links_every_run_relative_to_itself(runs, tmp_path):
    dirs = [_copy(d, tmp_path / "root") for d in runs.values()]
    unfinished = tmp_path / "root" / "unfinished-run"
    unfinished.mkdir()
    index = write_index(tmp_path / "site" / "index.html", dirs + [unfinished],
                        tables=[("Leaderboard <all>", "<table><tr><td>board</td></tr></table>")])
    html = index.read_text()
    links = _local_refs(html)
    assert sorted(links) == sorted(f"../root/{d.name}/report.html" for d in dirs)
    assert all((index.parent / link).is_file() for link in links)  # missing reports were written
    assert "unfinished-run" in html
    assert "<h2>Leaderboard &lt;all&gt;</h2>" in html and "<td>board</td>" in html
    assert "http://" not in html and "https://" not in html


def test_frame_choice_is_deterministic_and_spreads_over_classes():
    labels = [0] * 9 + [1] * 2 + [2] * 5 + [3] * 1
    chosen = choose_frames(labels, 8)
    assert chosen == choose_frames(labels, 8)
    assert len(set(chosen)) == 8
    per_class = Counter(labels[p] for p in chosen)
    assert set(per_class) == {0, 1, 2, 3} and max(per_class.values()) - min(per_class.values()) <= 3
    assert [labels[p] for p in chosen] == sorted(labels[p] for p in chosen)  # drawn in class order
    assert [p for p in chosen if labels[p] == 0] == [0, 4, 8]  # evenly spaced within a class
    assert choose_frames(labels, 100) == sorted(range(len(labels)), key=lambda p: (labels[p], p))

    many = [c for c in range(20) for _ in range(3)]
    few = choose_frames(many, 5)
    assert [many[p] for p in few] == [0, 5, 10, 14, 19]  # evenly spaced classes, one frame each


def test_predicted_boxes_follow_the_evaluation_conventions():
    score_map = np.zeros((20, 30))
    score_map[4:9, 5:12] = 1.0  # a 7x5 blob: boxes end one past the last pixel
    score_map[12:18, 20:22] = 0.6
    assert predicted_boxes(score_map, 0.5, False).tolist() == [[5, 4, 12, 9]]
    assert sorted(predicted_boxes(score_map, 0.5, True).tolist()) == [[5, 4, 12, 9], [20, 12, 22, 18]]
    assert predicted_boxes(score_map, 0.7, True).tolist() == [[5, 4, 12, 9]]
    assert predicted_boxes(score_map, None, True).tolist() == predicted_boxes(score_map, 0.5, True).tolist()


def test_cli_report_and_index_with_the_tables_the_runs_fit(runs, tmp_path, capsys):
    from harness.cli import main

    root = tmp_path / "root"
    dirs = [_copy(d, root) for d in runs.values()]
    assert main(["report", "--run", str(dirs[0]), "--frames", "4", "--no-progress"]) == 0
    assert capsys.readouterr().out == (f"wrote {dirs[0] / 'report.html'} (4 of 4 figures embedded, also written "
                                       f"to {dirs[0] / 'figures'})\n")
    index = tmp_path / "new" / "site" / "index.html"
    assert main(["report", "--index", str(index), "--runs", str(root), "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert said.startswith(f"created folder {index.parent}; wrote {index} (3 runs, ") and "tables)" in said
    html = index.read_text()
    # synth-yto runs fit the YouTube-Objects tables: they are on the page, with the runs inserted
    assert "id='colocam-t1-ytov1'" in html and "id='tcam-t1-ytov2.2'" in html
    assert "<td class='num'><b>82.1</b></td>" in html  # the paper's own marks by default
    assert main(["report", "--index", str(index), "--runs", str(root), "--bold", "none", "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {index} (")  # the folder exists now
    assert "<td class='num'><b>" not in index.read_text()
    assert html.count("<tr class='run synth'") >= len(dirs)
    assert "id='fcam-t1'" not in html  # an image table no run fits
    assert main(["report", "--index", str(index), "--runs", str(root), "--tables", "fcam-t1",
                 "--no-progress"]) == 0
    assert "id='fcam-t1'" in index.read_text() and "id='colocam-t1-ytov1'" not in index.read_text()
    assert main(["report"]) == 2
    assert "give --run RUN_DIR" in capsys.readouterr().err
    assert main(["report", "--index", str(index)]) == 2
    assert "--index needs --runs" in capsys.readouterr().err


# ------------------------------------------------------------------ self-contained, in a browser

# Runs in the page before anything loads: records every failed load and script error, then
# writes what the browser saw into the DOM, which --dump-dom prints.
_PROBE = """<script>
var probeErrors = [];
window.addEventListener("error", function (e) {
  var t = e.target;
  probeErrors.push(t && t !== window ? "failed to load " + (t.src || t.href || t.tagName).slice(0, 80)
                                      : String(e.message));
}, true);
window.addEventListener("load", function () {
  var pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify({
    images: Array.prototype.map.call(document.images, function (i) { return [i.alt, i.naturalWidth]; }),
    errors: probeErrors,
    fetched: performance.getEntriesByType("resource").map(function (r) { return r.name.slice(0, 80); })});
  document.body.appendChild(pre);
});
</script>"""


def _check_page(page: Path, tmp_path: Path) -> int:
    """Assert ``page`` needs nothing outside itself; return how many images it shows. Statically:
    every image a data URI of a valid PNG, no stylesheet, script, font or remote reference, links
    only to files that exist. In headless Chromium (when installed; required with
    HARNESS_REQUIRE_TOOLS=1), from a copy in an empty folder: every image decoded, nothing
    fetched, nothing failed, no console message."""
    html = page.read_text()
    images = re.findall(r"<img [^>]*>", html)
    sources = [re.search(r'src="([^"]*)"', img).group(1) for img in images]
    for src in sources:
        assert src.startswith("data:image/png;base64,"), src[:60]
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True))) as im:
            im.verify()
    for needle in ("<link", "<script", "url(", "@import", "http://", "https://", "<iframe", "<object"):
        assert needle not in html, needle
    for href in re.findall(r'href="([^"]*)"', html):
        assert not Path(href).is_absolute() and (page.parent / href).is_file(), href

    chromium = _tool("chromium")
    if chromium is not None:
        alone = tmp_path / f"alone-{page.parent.name}"
        alone.mkdir()
        (alone / page.name).write_text(html.replace("<head>", "<head>" + _PROBE, 1))
        done = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
             "--dump-dom", (alone / page.name).as_uri()], capture_output=True, text=True, timeout=120)
        found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
        assert done.returncode == 0 and found, done.stderr[-3000:]
        seen = json.loads(unescape(found.group(1)))
        assert len(seen["images"]) == len(images) and all(width > 0 for _, width in seen["images"]), seen["images"]
        assert seen["errors"] == [] and seen["fetched"] == [], seen
        console = [ln for ln in done.stderr.splitlines() if ":CONSOLE" in ln]
        assert console == [], console
    return len(images)


def test_report_and_index_pages_are_self_contained(runs, tmp_path):
    run_dir = _copy(runs["pseudo-box-val"], tmp_path / "root")
    page = write_report(run_dir, frames=4)
    assert _check_page(page, tmp_path) == len(FIGURES)
    from harness.leaderboard import render
    from harness.leaderboard.tables import get

    out = render.build(get("colocam-t1-ytov1"), [run_dir])
    index = write_index(tmp_path / "site" / "index.html", [run_dir],
                        tables=[(out.table.title, f"<style>{render.HTML_STYLE}</style>" + render.html_fragment(out))])
    assert "colocam-t1-ytov1" in index.read_text()
    _check_page(index, tmp_path)
    for html in (page.read_text(), index.read_text()):
        assert INTERNAL.search(html) is None  # published pages cite no internal digest


def test_a_damaged_reevaluation_is_left_out_of_the_report_naming_it(runs, tmp_path, capsys):
    """One damaged record under evaluations/ must not hide the others, nor stop the report."""
    from harness.cli import main

    run_dir = _copy(runs["pseudo-box-val"], tmp_path)
    good = _result(run_dir)
    good["protocol"]["name"] = "gt-val"
    (run_dir / "evaluations").mkdir(exist_ok=True)
    (run_dir / "evaluations" / "gt-val.json").write_text(json.dumps(good))
    (run_dir / "evaluations" / "broken.json").write_text(json.dumps([good]))
    assert main(["report", "--run", str(run_dir), "--frames", "2", "--no-progress"]) == 0
    captured = capsys.readouterr()
    broken = run_dir / "evaluations" / "broken.json"
    assert f"{broken} is not a result record" in captured.err and "Traceback" not in captured.err
    html = (run_dir / "report.html").read_text()
    assert "<td>gt-val</td>" in html and f"Left out: {broken} is not a result record" in html
