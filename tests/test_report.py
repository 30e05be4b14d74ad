"""Per-run figures and the self-contained HTML report, on tiny runs made by the harness itself."""
import json
import re
import shutil
from collections import Counter
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
    return re.findall(r'(?:src|href)="([^"]+)"', html)


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
        assert f'src="figures/{name}.png"' in html
    refs = _local_refs(html)
    assert len(refs) == len(FIGURES)
    assert all(not Path(r).is_absolute() and (page.parent / r).is_file() for r in refs)
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
    assert {r for r in _local_refs(html)} == {"figures/epoch_curves.png", "figures/class_corloc.png"}


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
    # That re-evaluation overwrote the cached val records under other settings: they no
    # longer describe the run, and no figure reads them.
    run = load_run(run_dir)
    assert all(run.eval_record("val", e) is None for e in run.epochs())
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
    assert (dirs[0] / "report.html").is_file() and "report.html" in capsys.readouterr().out
    index = tmp_path / "index.html"
    assert main(["report", "--index", str(index), "--runs", str(root), "--no-progress"]) == 0
    html = index.read_text()
    # synth-yto runs fit the YouTube-Objects tables: they are on the page, with the runs inserted
    assert "id='colocam-t1-ytov1'" in html and "id='tcam-t1-ytov2.2'" in html
    assert html.count("<tr class='run synth'") >= len(dirs)
    assert "id='fcam-t1'" not in html  # an image table no run fits
    assert main(["report", "--index", str(index), "--runs", str(root), "--tables", "fcam-t1",
                 "--no-progress"]) == 0
    assert "id='fcam-t1'" in index.read_text() and "id='colocam-t1-ytov1'" not in index.read_text()
    assert main(["report"]) == 2
    assert "give --run RUN_DIR" in capsys.readouterr().err
    assert main(["report", "--index", str(index)]) == 2
    assert "--index needs --runs" in capsys.readouterr().err
