"""`harness sweep`: trials, the configuration selection rule, resume, the runner seam."""
from __future__ import annotations

import json
import math

import pytest

from harness import sweep
from harness.cli import main
from harness.errors import HarnessError
from harness.sweep import SweepSpec, select_configuration, trial_overrides

from conftest import TINY_YTO


def spec(**kw) -> SweepSpec:
    return SweepSpec(**{"plugin": "cam", "protocol": "realistic", "dataset": "synth-yto", **kw})


def test_grid_is_the_cartesian_product_last_key_fastest():
    s = spec(grid={"classifier.lr": [0.1, 0.01], "classifier.epochs": [1, 2, 3]})
    got = trial_overrides(s)
    assert len(got) == 6
    assert got[0] == {"classifier.lr": 0.1, "classifier.epochs": 1}
    assert got[1] == {"classifier.lr": 0.1, "classifier.epochs": 2}
    assert got[3] == {"classifier.lr": 0.01, "classifier.epochs": 1}


def test_random_search_is_seeded_and_in_bounds():
    s = spec(space={"classifier.lr": "loguniform:1e-4:1e-1", "classifier.epochs": "int:2:4",
                    "classifier.backbone": "choice:resnet18:resnet50"}, trials=50, seed=3)
    a, b = trial_overrides(s), trial_overrides(s)
    assert a == b and len(a) == 50
    assert all(1e-4 <= t["classifier.lr"] <= 1e-1 for t in a)
    assert {t["classifier.epochs"] for t in a} == {2, 3, 4}
    assert {t["classifier.backbone"] for t in a} == {"resnet18", "resnet50"}
    # log-uniform: about as many draws below the geometric midpoint as above
    below = sum(math.log10(t["classifier.lr"]) < -2.5 for t in a)
    assert 15 <= below <= 35
    assert trial_overrides(spec(space=s.space, trials=50, seed=4)) != a


@pytest.mark.parametrize("kw, needle", [
    ({"grid": {"eval.threshold_step": [0.01, 0.1]}}, "cannot sweep eval.threshold_step"),
    ({"grid": {"annotators.cam-pg.seed": [0, 1]}}, "pseudo-boxes"),
    ({}, "nothing to sweep"),
    ({"space": {"classifier.lr": "loguniform:1e-3:1e-1"}}, "--space needs --trials"),
    ({"space": {"classifier.lr": "normal:0:1"}, "trials": 2}, "distribution must be one of"),
    ({"space": {"classifier.lr": "uniform:1"}, "trials": 2}, "needs two bounds"),
])
def test_bad_sweeps_are_refused_before_any_training(kw, needle):
    with pytest.raises(HarnessError, match=needle):
        spec(**kw).validate()


def _record(score, protocol="pseudo-box-val"):
    return {"protocol": {"name": protocol}, "selection": {"score": score}}


def test_configuration_with_the_best_selection_score_wins_ties_to_the_earlier():
    assert select_configuration([_record(10.0), _record(30.0), _record(20.0)]) == 1
    assert select_configuration([_record(30.0), _record(30.0)]) == 0
    with pytest.raises(HarnessError, match="different protocols"):
        select_configuration([_record(1.0), _record(2.0, "gt-val")])
    with pytest.raises(HarnessError, match="no finished trial"):
        select_configuration([])


@pytest.mark.slow
def test_sweep_end_to_end_resume_and_a_custom_trial_runner(tmp_path, capsys):
    opts = [f"{k}={v}" for k, v in {**TINY_YTO, "classifier.epochs": 1}.items()]
    argv = ["sweep", "--plugin", "cam", "--protocol", "realistic", "--run-root", str(tmp_path), "--no-progress",
            "--grid", "classifier.lr=0.01,0.1", "--cfg-options", *opts]
    assert main(argv) == 0
    sweep_dir = next((tmp_path / "sweeps").iterdir())
    record = json.loads((sweep_dir / "result.json").read_text())
    scores = [t["score"] for t in record["trials"]]
    assert len(record["trials"]) == 2
    best = record["trials"][scores.index(max(scores))]
    assert record["configuration"]["overrides"] == best["overrides"]
    assert record["configuration"]["run_id"] == best["run_id"]
    assert record["selection"]["epoch_supervision"] == "cam-pg"
    for t in record["trials"]:  # every trial's own record is kept
        trial = json.loads((sweep_dir / t["record"]).read_text())
        assert trial["config"]["classifier"]["lr"] == t["overrides"]["classifier.lr"]
    assert "* " + record["configuration"]["trial"] in (sweep_dir / "sweep.md").read_text()

    # resume: nothing retrains, the same configuration is selected
    mtimes = {p: p.stat().st_mtime for p in sweep_dir.glob("trials/*/result.json")}
    assert main(["sweep", "--resume", str(sweep_dir), "--no-progress"]) == 0
    assert {p: p.stat().st_mtime for p in sweep_dir.glob("trials/*/result.json")} == mtimes
    assert json.loads((sweep_dir / "result.json").read_text())["configuration"] == record["configuration"]

    # another trial runner (Ray, SLURM) only has to bring run directories to their results
    class Recording:
        def __init__(self):
            self.dirs = []

        def run(self, run_dirs, progress):
            self.dirs = list(run_dirs)

    rec = Recording()
    again = sweep.execute(sweep_dir, rec, progress=False)
    assert [d.name for d in rec.dirs] == [t["run_id"] for t in record["trials"]]
    assert again["configuration"] == record["configuration"]


def test_resume_of_a_folder_that_is_not_a_sweep(tmp_path, capsys):
    assert main(["sweep", "--resume", str(tmp_path)]) == 2
    assert "not a sweep directory" in capsys.readouterr().err
