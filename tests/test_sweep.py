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
    ({"space": {"classifier.lr": "uniform:5:1"}, "trials": 2},
     r"classifier.lr=uniform:5:1: the lower bound 5 must be below the upper bound 1"),
    ({"space": {"classifier.lr": "uniform:0.5:0.5"}, "trials": 2}, r"a fixed value belongs in --cfg-options"),
    ({"space": {"classifier.epochs": "int:4:2"}, "trials": 2}, r"lower bound 4 must be below"),
    ({"space": {"classifier.lr": "loguniform:0:1e-1"}, "trials": 2}, r"loguniform bounds must be > 0"),
    ({"space": {"classifier.lr": "loguniform:-1e-3:1e-1"}, "trials": 2}, r"loguniform bounds must be > 0"),
    ({"space": {"classifier.epochs": "int:1.5:4"}, "trials": 2}, r"int:1.5:4: bound '1.5' is not an integer"),
    ({"space": {"classifier.epochs": "int:1:ten"}, "trials": 2}, r"bound 'ten' is not an integer"),
    ({"space": {"classifier.lr": "uniform:low:1"}, "trials": 2}, r"uniform:low:1: bound 'low' is not a number"),
    ({"space": {"classifier.lr": "loguniform:1e-3:"}, "trials": 2}, r"bound '' is not a number"),
    ({"space": {"classifier.lr": "uniform:0:inf"}, "trials": 2}, r"bound 'inf' is not finite"),
    ({"space": {"classifier.lr": "uniform:nan:1"}, "trials": 2}, r"bound 'nan' is not finite"),
    ({"space": {"classifier.lr": "uniform:0:1"}, "trials": -1}, r"--trials -1: .* an integer >= 1"),
    ({"space": {"classifier.lr": "uniform:0:1"}, "trials": 0}, r"--trials 0: .* an integer >= 1"),
    ({"grid": {"classifier.lr": [0.1]}, "trials": -1}, r"--trials -1"),
    ({"space": {"classifier.lr": "uniform:0:1"}, "trials": "3"}, r"--trials '3'"),
    ({"space": {"classifier.lr": "uniform:0:1"}, "trials": True}, r"--trials True"),
    ({"grid": {"classifier.lr": [0.1, 0.2]}, "trials": 3}, r"--trials 3 draws from --space, which is not given"),
])
def test_bad_sweeps_are_refused_before_any_training(kw, needle):
    with pytest.raises(HarnessError, match=needle):
        spec(**kw).validate()


def test_bounds_are_parsed_once_and_drawn_inside_them():
    s = spec(space={"classifier.epochs": "int:-2:1", "classifier.lr": "uniform:-1:-0.5",
                    "classifier.weight_decay": "loguniform:1e-6:2e-6"}, trials=40)
    s.validate()
    got = trial_overrides(s)
    assert {t["classifier.epochs"] for t in got} == {-2, -1, 0, 1}
    assert all(isinstance(t["classifier.epochs"], int) for t in got)
    assert all(-1 <= t["classifier.lr"] <= -0.5 for t in got)
    assert all(1e-6 <= t["classifier.weight_decay"] <= 2e-6 for t in got)


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


def test_a_protocol_path_never_places_the_sweep_outside_the_run_root(tmp_path, monkeypatch):
    """--protocol is a file path here (`../../../p.json`): the folder is named from the
    protocol's own (validated) name, always one level under <run root>/sweeps/."""
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (tmp_path / "p.json").write_text(json.dumps({"protocol": {
        "name": "my-proto", "supervision": "gt", "selection_split": "val", "threshold_source": "val"}}))
    monkeypatch.chdir(deep)
    root = tmp_path / "a" / "runs"
    opts = {**TINY_YTO, "classifier.epochs": 1}
    s = SweepSpec("cam", "../../../p.json", "synth-yto", grid={"classifier.lr": [0.01]}, overrides=opts)
    sweep_dir = sweep.create(s, root)
    assert sweep_dir.parent == root / "sweeps"
    assert sweep_dir.name.endswith("-cam-my-proto") and ".." not in sweep_dir.name and "p.json" not in sweep_dir.name
    assert sorted(p.name for p in (root / "sweeps").iterdir()) == [sweep_dir.name]
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "a" / "sweeps").exists()
    assert (sweep_dir / "trials.json").is_file()
    # an unsafe name inside the file is refused before any folder exists
    (tmp_path / "p.json").write_text(json.dumps({"protocol": {"name": "../../escape", "supervision": "gt"}}))
    with pytest.raises(HarnessError, match=r"protocol name='\.\./\.\./escape' holds '/'"):
        sweep.create(s, root)
    assert sorted(p.name for p in (root / "sweeps").iterdir()) == [sweep_dir.name]


def _valid_record(score=50.0):
    return {"run_id": "r", "protocol": {"name": "gt-val", "supervision": "gt"},
            "dataset": {"name": "synth-yto", "classes": ["a"]},
            "selection": {"epoch": 1, "tau": [0.5], "score": score, "epoch_chosen_by": "CorLoc on val"},
            "metrics": {"test": {"corloc": 40.0, "corloc_per_class": [40.0]}}}


class _NoRun:
    def run(self, run_dirs, progress):
        pass


def _fake_sweep(tmp_path, trial_records: list[str]):
    d = tmp_path / "sw"
    (d / "trials").mkdir(parents=True)
    (d / sweep.SPEC_FILE).write_text(json.dumps({"plugin": "cam", "protocol": "gt-val", "dataset": "synth-yto",
                                                 "grid": {"classifier.lr": [0.1, 0.2]}}))
    trials = []
    for n, text in enumerate(trial_records):
        (d / "trials" / f"t{n}").mkdir()
        (d / "trials" / f"t{n}" / "result.json").write_text(text)
        trials.append({"id": f"00{n}", "overrides": {"classifier.lr": 0.1 * (n + 1)}, "run": f"t{n}"})
    (d / sweep.TRIALS_FILE).write_text(json.dumps(trials))
    return d


@pytest.mark.parametrize("second, needle", [
    ("{not json", r"t1/result.json is not a readable result record"),
    ("[1, 2]", r"t1/result.json is not a result record the harness can read: it holds a list"),
    (json.dumps({**_valid_record(), "selection": {"epoch": "one"}}), r"t1/result.json .*selection.epoch is str"),
    (json.dumps({k: v for k, v in _valid_record().items() if k != "run_id"}),
     r"t1/result.json is not a finished trial's record: no run_id; delete it and resume"),
    (json.dumps({**_valid_record(), "metrics": {"val": {"corloc": 1.0, "corloc_per_class": [1.0]}}}),
     r"no metrics.test.corloc"),
    (json.dumps({**_valid_record(None)}), r"no selection.score"),
])
def test_execute_names_a_damaged_trial_record(tmp_path, second, needle):
    d = _fake_sweep(tmp_path, [json.dumps(_valid_record()), second])
    with pytest.raises(HarnessError, match=needle):
        sweep.execute(d, _NoRun(), progress=False)
    assert not (d / "result.json").exists()


def test_execute_selects_from_valid_trial_records(tmp_path):
    d = _fake_sweep(tmp_path, [json.dumps(_valid_record(10.0)), json.dumps(_valid_record(30.0))])
    record = sweep.execute(d, _NoRun(), progress=False)
    assert record["configuration"]["trial"] == "001" and record["configuration"]["overrides"] == {"classifier.lr": 0.2}


def test_every_trial_is_selected_against_the_same_pseudo_boxes(tmp_path):
    """An annotator's classifier follows the run's classifier settings; a sweep over those
    pins it to the sweep's fixed settings, so no trial changes its own selection supervision."""
    from harness import config as config_mod

    spec = SweepSpec("cam", "realistic", "synth-yto", grid={"classifier.lr": [0.01, 0.2], "classifier.epochs": [1, 3]},
                     overrides={k: v for k, v in TINY_YTO.items() if not k.startswith("annotators.")})
    sweep_dir = sweep.create(spec, tmp_path)
    trials = json.loads((sweep_dir / "trials.json").read_text())
    annotator = set()
    for t in trials:
        cfg = config_mod.load_run_config(sweep_dir / "trials" / t["run"])
        assert (cfg.classifier.lr, cfg.classifier.epochs) == (t["overrides"]["classifier.lr"],
                                                              t["overrides"]["classifier.epochs"])
        annotator.add(json.dumps(cfg.annotators["cam-pg"].classifier.to_dict(), sort_keys=True))
    [pinned] = annotator
    assert json.loads(pinned)["lr"] == 0.05 and json.loads(pinned)["epochs"] == TINY_YTO["classifier.epochs"]
