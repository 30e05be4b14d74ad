"""End to end: `harness run` on a tiny synth-yto, the run directory, resume, bad input."""
import json

import numpy as np
import pytest
import torch

from harness import runner
from harness.cli import main
from harness.errors import HarnessError
from harness.evaluation import BoxAccumulator, corloc_at, threshold_list

from conftest import TINY_CUB, TINY_YTO


def _opts(overrides):
    return ["--cfg-options", *[f"{k}={v}" for k, v in overrides.items()]]


def _run_cli(tmp_path, *extra, overrides=TINY_YTO):
    argv = ["run", "--plugin", "cam", "--protocol", "gt-val", "--run-root", str(tmp_path), "--no-progress"]
    return main(argv + list(extra) + _opts(overrides))


@pytest.mark.slow
def test_demo_command_writes_a_complete_run_directory(tmp_path, capsys):
    assert _run_cli(tmp_path, overrides={**TINY_YTO, "run.report": True}) == 0
    out = capsys.readouterr().out
    [run_dir] = tmp_path.glob("*-cam-gt-val")
    for name in ("config.py", "log.txt", "metrics.jsonl", "result.json"):
        assert (run_dir / name).is_file(), name
    assert "MaxBoxAcc@0.5" in out and "PxAP" in out and "pointing game" in out
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "0-classifier-epoch001.pt", "0-classifier-epoch002.pt"]
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2

    record = json.loads((run_dir / "result.json").read_text())
    classes = record["dataset"]["classes"]
    assert len(classes) == 10 and "Avg" in out and all(c in out for c in classes)
    assert record["plugin"] == "cam" and record["protocol"]["name"] == "gt-val"
    assert record["seed"] == 0 and record["device"] == "cpu"
    assert record["provenance"]["packages"]["torch"] == torch.__version__.split("+")[0]
    assert len(record["dataset"]["identity"]) == 16
    assert record["config"]["classifier"]["epochs"] == 2

    # The selection is what the protocol says: the best val epoch, its best val tau.
    sel = record["selection"]
    scores = {int(e): s for e, s in sel["epoch_scores"].items()}
    assert sel["epoch"] == max(scores, key=lambda e: (scores[e], -e))
    val = json.loads((run_dir / "evals" / f"val-epoch{sel['epoch']:03d}.json").read_text())
    test = json.loads((run_dir / "evals" / f"test-epoch{sel['epoch']:03d}.json").read_text())
    val_curves = BoxAccumulator.from_state_dict(val["boxes"]).curves(0.5)
    test_curves = BoxAccumulator.from_state_dict(test["boxes"]).curves(0.5)
    thresholds = threshold_list(0.01)
    best = np.nanmean(val_curves, axis=0).max()
    tau_idx = int(np.round(sel["tau"][0] / 0.01))
    assert np.isclose(np.nanmean(val_curves[:, tau_idx]), best)
    assert sel["tau"] == [float(thresholds[tau_idx])] * 10
    expected = corloc_at(test_curves, np.full(10, tau_idx))
    assert record["metrics"]["test"]["corloc"] == pytest.approx(expected["mean"])
    assert record["metrics"]["test"]["corloc_per_class"] == expected["per_class"]
    assert record["metrics"]["test"]["corloc_oracle"] >= record["metrics"]["test"]["corloc"]

    board = (tmp_path / "leaderboard.md").read_text()
    assert run_dir.name in board and "gt-val" in board
    assert f"report: {run_dir / 'report.html'}" in out
    assert "published tables this run fits: colocam-t1-ytov1" in out
    page = (run_dir / "report.html").read_text()  # the run's report, written as it ended
    for fig in ("test_frames", "threshold_curves", "epoch_curves", "class_corloc"):
        assert (run_dir / "figures" / f"{fig}.png").stat().st_size > 1000
    assert page.count("data:image/png;base64,") >= 4  # the page carries its figures


@pytest.mark.slow
def test_leaderboard_keeps_every_run(tmp_path, capsys):
    assert _run_cli(tmp_path, overrides={**TINY_YTO, "classifier.epochs": 1}) == 0
    assert _run_cli(tmp_path, overrides={**TINY_YTO, "classifier.epochs": 1, "seed": 1}) == 0
    runs = sorted(p.name for p in tmp_path.glob("*-cam-gt-val"))
    assert len(runs) == 2
    board = (tmp_path / "leaderboard.md").read_text()
    assert all(r in board for r in runs)
    capsys.readouterr()
    assert main(["leaderboard", "--run-root", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert all(r in printed for r in runs)


@pytest.mark.slow
def test_resume_after_a_kill_ends_like_an_uninterrupted_run(tmp_path):
    overrides = {**TINY_YTO, "classifier.epochs": 3}
    ref_dir = runner.prepare("cam", "gt-val", "synth-yto", overrides, tmp_path / "ref")
    ref = runner.execute(ref_dir, progress=False)

    run_dir = runner.prepare("cam", "gt-val", "synth-yto", overrides, tmp_path / "killed")

    def kill_after_epoch_2(stage, epoch):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.execute(run_dir, progress=False, callbacks=[kill_after_epoch_2])
    assert not (run_dir / "result.json").exists()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1] == "0-classifier-epoch002.pt"

    resumed = runner.execute(run_dir, progress=False)
    assert resumed["resumed_from"] == "classifier epoch 2"
    assert resumed["metrics"] == ref["metrics"]
    assert resumed["selection"] == ref["selection"]
    a = torch.load(ref_dir / "checkpoints" / "0-classifier-epoch003.pt", weights_only=True)["method"]
    b = torch.load(run_dir / "checkpoints" / "0-classifier-epoch003.pt", weights_only=True)["method"]
    for key in a["classifier"]:
        assert torch.equal(a["classifier"][key], b["classifier"][key]), key


def test_resume_of_a_finished_run_returns_its_result_untouched(tmp_path):
    run_dir = runner.prepare("cam", "gt-val", "synth-yto", {**TINY_YTO, "classifier.epochs": 1}, tmp_path)
    first = runner.execute(run_dir, progress=False)
    before = (run_dir / "result.json").stat().st_mtime_ns
    assert runner.execute(run_dir, progress=False) == first
    assert (run_dir / "result.json").stat().st_mtime_ns == before


def test_a_damaged_checkpoint_is_kept_aside_and_its_epoch_trained_again(tmp_path):
    run_dir = runner.prepare("cam", "gt-val", "synth-yto", {**TINY_YTO, "classifier.epochs": 2}, tmp_path)
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "0-classifier-epoch001.pt").write_bytes(b"not a checkpoint")
    record = runner.execute(run_dir, progress=False)
    assert record["resumed_from"] is None  # nothing sound to resume from: trained from the start
    assert (run_dir / "checkpoints" / "0-classifier-epoch001.pt.damaged").read_bytes() == b"not a checkpoint"
    assert "0-classifier-epoch001.pt is damaged: kept as" in (run_dir / "log.txt").read_text()


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["run", "--plugin", "nope"], "unknown method 'nope'. Valid methods: cam"),
        (["run", "--plugin", "cam", "--protocol", "nope"], "Valid protocols: class-only, gt-val"),
        (["run", "--plugin", "cam", "--dataset", "nope"], "synth-cub, synth-yto"),
        (["run", "--plugin", "cam", "--cfg-options", "classifier.nope=1"], "Valid keys there"),
        (["run"], "--plugin is required"),
        (["run", "--resume", "/nonexistent/run"], "not a run directory"),
        (["run", "--plugin", "cam", "--device", "cuda:7"], "CUDA is not available"),
        (["leaderboard", "--run-root", "/nonexistent/root"], "does not exist"),
    ],
)
def test_bad_input_gives_a_clear_error(argv, needle, capsys, tmp_path):
    if argv[:1] == ["run"] and "--resume" not in argv:
        argv = argv + ["--run-root", str(tmp_path), "--no-progress"]
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_run_root_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "runs"
    blocker.write_text("I am a file")
    assert main(["run", "--plugin", "cam", "--run-root", str(blocker)]) == 2
    assert "run root" in capsys.readouterr().err
    assert blocker.read_text() == "I am a file"


def test_nan_maps_are_an_error_naming_the_frame(tmp_path):
    from mmengine.config import Config

    from harness.inference import evaluate_split
    from harness.method import Prediction
    from harness.registry import registry

    ds = registry().get("dataset", "synth-yto").factory(
        {k.split(".", 1)[1]: v for k, v in TINY_YTO.items() if k.startswith("data.")}, progress=False)

    class NanMethod:
        normalization = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

        def eval_mode(self):
            pass

        def predict(self, images, classes):
            maps = torch.zeros(len(images), 4, 4)
            maps[1] = float("nan")
            return Prediction(maps=maps, logits=torch.zeros(len(images), 10))

    cfg = Config({"loader": {"eval_batch_size": 8, "num_workers": 0}, "method": {"name": "nan"},
                  "eval": {"threshold_step": 0.01, "iou_thresholds": [0.5], "iou_threshold": 0.5,
                           "multi_contour": False, "interpolation": "bilinear"}})
    split = ds.split("val")
    with pytest.raises(HarnessError, match=split.frames[1].id):
        evaluate_split(NanMethod(), split, 10, cfg, torch.device("cpu"), progress=False)


@pytest.mark.slow
def test_sigkilled_run_resumes_from_its_last_checkpoint(tmp_path):
    """A real kill -9 mid-training: checkpoints on disk stay readable and --resume finishes
    with the numbers of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    overrides = {**TINY_YTO, "classifier.epochs": 5}
    ref = runner.execute(runner.prepare("cam", "gt-val", "synth-yto", overrides, tmp_path / "ref"), progress=False)

    root = tmp_path / "killed"
    cmd = [sys.executable, "-m", "harness.cli", "run", "--plugin", "cam", "--run-root", str(root), "--no-progress",
           *_opts(overrides)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(root.glob("*/checkpoints/0-classifier-epoch001.pt")):
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    [run_dir] = [p for p in root.iterdir() if p.is_dir()]
    assert not (run_dir / "result.json").exists()

    assert main(["run", "--resume", str(run_dir), "--no-progress"]) == 0
    resumed = json.loads((run_dir / "result.json").read_text())
    assert resumed["resumed_from"].startswith("classifier epoch ")
    assert resumed["metrics"] == ref["metrics"]
    assert resumed["selection"] == ref["selection"]


@pytest.mark.slow
def test_harness_eval_reuses_records_and_saved_maps(tmp_path, capsys):
    run_dir = runner.prepare("cam", "gt-val", "synth-yto", TINY_YTO, tmp_path)
    rec = runner.execute(run_dir, progress=False)
    e = rec["selection"]["epoch"]
    # eval.save_maps="selected": only the selected epoch's maps (and class scores) are kept.
    assert sorted(p.name for p in (run_dir / "maps").iterdir()) == [
        f"{s}-epoch{e:03d}{x}" for s in ("test", "val") for x in (".logits.npy", ".npy")]

    same = runner.reevaluate(run_dir, progress=False)
    assert same["evaluated_from"] == [] and same["metrics"] == rec["metrics"]

    # Records of the selected epoch gone: rebuilt from the saved maps, to the same numbers.
    for s in ("val", "test"):
        (run_dir / "evals" / f"{s}-epoch{e:03d}.json").unlink()
    rebuilt = runner.reevaluate(run_dir, progress=False)
    assert {(d["split"], d["source"]) for d in rebuilt["evaluated_from"]} == {("val", "saved maps"), ("test", "saved maps")}
    assert rebuilt["metrics"] == rec["metrics"]

    # Other settings: the saved maps serve the selected epoch, the checkpoints the others.
    multi = runner.reevaluate(run_dir, overrides={"eval.multi_contour": True}, progress=False)
    sources = {(d["split"], d["epoch"]): d["source"] for d in multi["evaluated_from"]}
    assert sources[("val", e)] == "saved maps"
    assert all(src == "checkpoint" for (s, ep), src in sources.items() if ep != e)
    assert multi["metrics"]["test"]["max_box_acc_v2"] is not None
    assert len(list((run_dir / "maps").iterdir())) == 4  # a re-evaluation leaves the run's maps alone
    assert rec["metrics"]["test"]["max_box_acc_v2"] is None
    assert (run_dir / "evaluations" / "gt-val.json").is_file()

    capsys.readouterr()
    assert main(["eval", "--run", str(run_dir), "--protocol", "all", "--no-progress"]) == 0
    assert "gt-val" in capsys.readouterr().out
    assert main(["eval", "--run", str(run_dir), "--cfg-options", "classifier.lr=1"]) == 2
    assert "eval.*" in capsys.readouterr().err


@pytest.mark.slow
def test_threshold_on_test_is_an_oracle_over_the_same_candidates(tmp_path, capsys):
    """On the same maps, choosing tau on test (or epoch and tau on test) never scores below
    choosing it on val; per-class taus never below one global tau."""
    run_dir = runner.prepare("cam", "gt-val", "synth-yto", {**TINY_YTO, "classifier.epochs": 3}, tmp_path)
    runner.execute(run_dir, progress=False)
    got = {name: runner.reevaluate(run_dir, name, progress=False)
           for name in ("gt-val", "test-threshold", "test-threshold-per-class", "oracle")}
    test = {name: rec["metrics"]["test"]["corloc"] for name, rec in got.items()}
    assert got["test-threshold"]["selection"]["epoch"] == got["gt-val"]["selection"]["epoch"]
    assert test["test-threshold"] >= test["gt-val"]
    assert test["test-threshold-per-class"] >= test["test-threshold"]
    assert test["oracle"] >= test["test-threshold"]
    assert got["test-threshold"]["evaluated_from"] == []  # no new evaluation: same records
    capsys.readouterr()
    assert main(["eval", "--run", str(run_dir), "--protocol", "all", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in got)


@pytest.mark.slow
@pytest.mark.parametrize("dataset,overrides", [("synth-yto", TINY_YTO), ("synth-cub", TINY_CUB)])
def test_realistic_protocol_end_to_end_then_every_preset(dataset, overrides, tmp_path, capsys):
    """`harness run --protocol realistic` selects with cam-pg pseudo-boxes made before training;
    the finished run re-evaluates under every preset (and the Table 4.2 grid) without training."""
    argv = ["run", "--plugin", "cam", "--protocol", "realistic", "--dataset", dataset, "--run-root",
            str(tmp_path), "--no-progress"]
    assert main(argv + _opts(overrides)) == 0
    run_dir = next(tmp_path.glob("*-cam-pseudo-box-val"))
    record = json.loads((run_dir / "result.json").read_text())
    sel = record["selection"]
    assert record["protocol"]["supervision"] == "pseudo:cam-pg"
    assert sel["epoch_supervision"] == "cam-pg" and sel["tau_supervision"] == "cam-pg"
    assert "cam-pg pseudo-boxes on val" in sel["epoch_chosen_by"]
    quality = record["pseudo_boxes"]["cam-pg"]["quality"]["val"]
    assert 0 <= quality["mean_iou"] <= quality["upper_bound_iou"] <= 100
    assert "val@cam-pg" in record["metrics"]
    # the epoch maximizes the pseudo-box score, and that score is what the record says
    scores = {int(e): s for e, s in sel["epoch_scores"].items()}
    assert sel["score"] == max(scores.values()) and scores[sel["epoch"]] == sel["score"]
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all("val_corloc_best_tau@cam-pg" in x for x in lines)

    capsys.readouterr()
    assert main(["eval", "--run", str(run_dir), "--protocol", "all", "--no-progress"]) == 0
    out = capsys.readouterr().out
    for name, code in [("class-only", "CL-BV-OT"), ("gt-val", "BV-VT"), ("oracle", "BT-TT"),
                       ("pseudo-box-val", "BV-VT"), ("test-threshold", "BV-TT")]:
        assert any(name in row and code in row for row in out.splitlines())
    evals = {p.stem: json.loads(p.read_text()) for p in (run_dir / "evaluations").glob("*.json")}
    assert evals["class-only"]["selection"]["tau"] is None
    assert evals["pseudo-box-val"]["metrics"]["test"] == record["metrics"]["test"]  # same annotator, same result
    assert evals["test-threshold"]["metrics"]["test"]["corloc"] >= evals["gt-val"]["metrics"]["test"]["corloc"]
    cls_scores = evals["class-only"]["selection"]["epoch_scores"]
    assert evals["class-only"]["selection"]["score"] == max(cls_scores.values())

    assert main(["eval", "--run", str(run_dir), "--protocol", "grid", "--annotators", "cam-pg,noisy-gt",
                 "--no-progress"]) == 0
    table = (run_dir / "evaluations" / "grid" / "protocols.md").read_text()
    assert [c.strip() for c in table.splitlines()[0].split("|")[1:-1]] == ["select", "cls", "gt", "cam-pg", "noisy-gt"]
    assert [r.split("|")[1].strip() for r in table.splitlines()[2:]] == ["BT-TT", "BT-VT", "BV-TT", "BV-VT", "BT-OT",
                                                                        "BV-OT"]


def test_a_protocol_defined_in_a_config_file_needs_no_code(tmp_path):
    path = tmp_path / "my_protocol.py"
    path.write_text('protocol = dict(name="mine", supervision="pseudo:noisy-gt", selection_split="val",\n'
                    '                threshold_source="val", threshold_scope="per-class")\n')
    run_dir = runner.prepare("cam", str(path), "synth-yto", {**TINY_YTO, "classifier.epochs": 1}, tmp_path)
    record = runner.execute(run_dir, progress=False)
    assert record["protocol"]["name"] == "mine" and record["selection"]["tau_scope"] == "per-class"
    assert record["pseudo_boxes"]["noisy-gt"]["quality"]["val"]["mean_iou"] < 100
