"""`harness eval` on a trained run: nothing the run wrote is replaced, names never leave the
run directory, and a pseudo-box annotator takes the run's own classifier instead of training."""
import hashlib
import json

import pytest

from harness import runner, stage_cache
from harness.cli import main

from conftest import TINY_YTO


def _digests(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    run_dir = runner.prepare("cam", "gt-val", "synth-yto", {**TINY_YTO, "eval.save_maps": "all"}, root,
                             progress=False)
    runner.execute(run_dir, progress=False)
    assert main(["eval", "--run", str(run_dir), "--protocol", "test-threshold", "--no-progress"]) == 0
    return run_dir


@pytest.mark.slow
def test_eval_under_other_settings_keeps_the_run_records(finished, capsys):
    before = {f: _digests(finished / f) for f in ("evals", "maps", "evaluations")}
    result = (finished / "result.json").read_bytes()
    argv = ["eval", "--run", str(finished), "--protocol", "test-threshold", "--no-progress", "--cfg-options",
            "eval.multi_contour=True", "eval.interpolation=bicubic"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for folder, digests in before.items():  # every file the run (and the first eval) wrote is untouched
        now = _digests(finished / folder)
        assert {k: now[k] for k in digests} == digests, folder
    assert (finished / "result.json").read_bytes() == result
    [other] = (finished / "evaluations").glob("settings-*")
    assert f"written: {other / 'test-threshold.json'}" in out
    assert json.loads((other / "settings.json").read_text())["overrides"] == {
        "eval.multi_contour": True, "eval.interpolation": "bicubic"}
    record = json.loads((other / "test-threshold.json").read_text())
    assert record["metrics"]["test"]["max_box_acc_v2"] is not None  # the new settings were applied
    own = json.loads((finished / "evaluations" / "test-threshold.json").read_text())
    assert own["metrics"]["test"]["max_box_acc_v2"] is None
    # bicubic maps cannot come from the bilinear maps the run saved: recomputed, never written over them
    assert {e["source"] for e in record["evaluated_from"]} == {"checkpoint"}
    assert list((finished / "evals").glob("settings-*/val-epoch001.json"))


@pytest.mark.slow
def test_a_protocol_name_never_leaves_the_run_directory(finished, tmp_path, capsys):
    for name in ("../../escaped", "a/b", ".hidden"):
        proto = tmp_path / "p.json"
        proto.write_text(json.dumps({"protocol": {"name": name, "supervision": "gt"}}))
        assert main(["eval", "--run", str(finished), "--protocol", str(proto), "--no-progress"]) == 2
        assert "it becomes a file name" in capsys.readouterr().err
    assert not list(finished.parent.parent.rglob("escaped.json"))


def test_a_missing_protocol_file_is_named(tmp_path, capsys):
    assert main(["run", "--plugin", "cam", "--protocol", str(tmp_path / "missing.py"), "--run-root",
                 str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"protocol file {tmp_path / 'missing.py'} does not exist" in err
    assert main(["run", "--plugin", "cam", "--protocol", "nonesuch", "--run-root", str(tmp_path)]) == 2
    assert "unknown protocol 'nonesuch'. Valid protocols: class-only, gt-val" in capsys.readouterr().err


def test_harness_with_no_command_says_how_to_start(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "no command given" in err and "harness run --plugin cam --protocol gt-val" in err
    for command in ("run", "eval", "sweep", "list", "leaderboard", "report"):
        assert command in err
    assert main(["data"]) == 2
    assert "`harness data` needs an action" in capsys.readouterr().err


def test_the_annotator_classifier_follows_the_run_unless_set_apart():
    cfg = runner.compose("cam", "realistic", "synth-yto", {"classifier.epochs": 3, "classifier.lr": 0.02})
    for name in ("cam-pg", "rpn"):
        assert cfg.annotators[name].classifier.epochs == 3 and cfg.annotators[name].classifier.lr == 0.02
    cfg = runner.compose("cam", "realistic", "synth-yto", {"classifier.epochs": 3,
                                                           "annotators.cam-pg.classifier.epochs": 1})
    assert cfg.annotators["cam-pg"].classifier.epochs == 1  # set apart
    assert cfg.annotators["rpn"].classifier.epochs == 3


@pytest.mark.slow
def test_eval_under_a_pseudo_box_protocol_reuses_the_run_classifier(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_HOME", str(tmp_path / "home"))
    overrides = {k: v for k, v in TINY_YTO.items() if not k.startswith("annotators.")}
    run_dir = runner.prepare("cam", "gt-val", "synth-yto", {**overrides, "classifier.cache": True},
                             tmp_path / "runs", progress=False)
    runner.execute(run_dir, progress=False)
    for entry in stage_cache.cache_root().iterdir():  # the cache was cleaned meanwhile
        for f in entry.iterdir():
            f.unlink()
        entry.rmdir()

    trained = []
    monkeypatch.setattr(runner, "_train_epoch", lambda *a, **k: trained.append(a))
    [record] = runner.reevaluate_many(run_dir, ["realistic"], progress=False)
    assert trained == []  # the annotator's classifier is the run's own, not trained again
    [annotator_ckpt] = (tmp_path / "home").rglob("cam-pg*/**/0-classifier-epoch002.pt")
    assert annotator_ckpt.stat().st_ino == (run_dir / "checkpoints" / "0-classifier-epoch002.pt").stat().st_ino
    assert record["pseudo_boxes"]["cam-pg"]["quality"]["val"]["mean_iou"] is not None


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["pickled", "truncated", "objects", "wrong shape"])
def test_damaged_saved_maps_are_computed_again_from_the_checkpoint(finished, tmp_path, damage, capsys):
    import shutil

    import numpy as np

    run_dir = tmp_path / finished.name
    shutil.copytree(finished, run_dir)
    for p in (run_dir / "evals").rglob("*.json"):  # so that the maps must be read
        p.unlink()
    maps = run_dir / "maps" / "val-epoch001.npy"
    good = np.load(maps)
    if damage == "pickled":
        np.save(maps, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif damage == "truncated":
        maps.write_bytes(maps.read_bytes()[:100])
    elif damage == "objects":
        np.save(maps, np.array([None] * len(good), dtype=object), allow_pickle=True)
    else:
        np.save(maps, good[:, :4, :4])
    assert main(["eval", "--run", str(run_dir), "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "computing them again from the checkpoint" in out + err and "Traceback" not in out + err
    own = json.loads((finished / "result.json").read_text())
    again = json.loads((run_dir / "evaluations" / "gt-val.json").read_text())
    assert again["metrics"] == own["metrics"]


def test_a_run_config_is_read_as_data_never_run(finished, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / finished.name
    shutil.copytree(finished, run_dir)
    marker = tmp_path / "pwned"
    text = (run_dir / "config.py").read_text()
    (run_dir / "config.py").write_text(f"import os\nos.system('touch {marker}')\n" + text)
    for argv in (["eval", "--run", str(run_dir)], ["run", "--resume", str(run_dir)]):
        assert main(argv + ["--no-progress"]) == 2
        assert "only `name = value` lines are allowed" in capsys.readouterr().err
    assert main(["report", "--run", str(run_dir), "--no-progress"]) == 0  # reads the result's config, not the file
    (run_dir / "config.py").write_text(text.replace("seed = 0", f"seed = __import__('os').system('touch {marker}')"))
    assert main(["eval", "--run", str(run_dir), "--no-progress"]) == 2
    assert "Call is not data" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("eval = dict(", "evaluation = dict("), "no 'eval'"),
    (lambda t: t.replace("threshold_step=0.01", "threshold_stp=0.01"), "no eval.threshold_step"),
    (lambda t: t.replace("threshold_step=0.01", "threshold_step='fine'"), "eval.threshold_step' expects float"),
    (lambda t: t.replace("epochs=2", "epochs=-2", 1), "out of range"),
    (lambda t: "\x00\xff" + t, "cannot be read"),
])
def test_a_damaged_run_config_is_named(finished, tmp_path, edit, message, capsys):
    import shutil

    run_dir = tmp_path / finished.name
    shutil.copytree(finished, run_dir)
    (run_dir / "config.py").write_text(edit((run_dir / "config.py").read_text()))
    assert main(["eval", "--run", str(run_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "config.py" in err and "Traceback" not in err
