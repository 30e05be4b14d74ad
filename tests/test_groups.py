"""Seed groups (harness/groups.py): one run per seed, mean ± std over the seeds, the interval of
the mean, re-evaluation under other protocols, resume, and the trial runners."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest

from harness import groups, io, results, sweep
from harness.cli import main
from harness.errors import HarnessError
from conftest import TINY_YTO, copy_group

SEEDS = [0, 1, 2]


def _options(overrides: dict) -> list[str]:
    return ["--cfg-options", *(f"{k}={v}" for k, v in overrides.items())]


@pytest.fixture(scope="module")
def group(seed_group, tmp_path_factory) -> Path:
    """The session's group (made through `harness run --seeds 0,1,2`), copied: these tests write
    evaluations into it."""
    return copy_group(seed_group, tmp_path_factory.mktemp("groups"))


def _member_records(group_dir: Path, name: str = results.RESULT_FILE) -> list[dict]:
    return [json.loads((d / name).read_text()) for d in groups.member_dirs(group_dir)]


def _tensors(state) -> list[np.ndarray]:
    if isinstance(state, dict):
        return [t for v in state.values() for t in _tensors(v)]
    return [state.numpy()] if hasattr(state, "is_floating_point") and state.is_floating_point() else []


def test_seeds_parse_lists_and_ranges_and_refuse_what_is_not_a_group():
    assert groups.parse_seeds("0,1,2") == [0, 1, 2]
    assert groups.parse_seeds("3-5") == [3, 4, 5]
    assert groups.parse_seeds("0, 7-8") == [0, 7, 8]
    for text, why in [("0,x", "not a seed"), ("1,1", "repeated"), ("4", "at least two"), ("5-3", "backwards"),
                      ("-1,2", "not a seed")]:
        with pytest.raises(HarnessError, match=why):
            groups.parse_seeds(text)


def test_mean_and_std_over_seeds_by_hand():
    # three seeds' metrics: a number, a per-class list (with a class one seed lacks), a per-IoU dict
    values = [{"corloc": 40.0, "per_class": [10.0, None], "box_acc": {"0.5": 30.0, "0.7": 5.0}},
              {"corloc": 46.0, "per_class": [20.0, 50.0], "box_acc": {"0.5": 36.0, "0.7": 7.0}},
              {"corloc": 43.0, "per_class": [30.0, 70.0], "box_acc": {"0.5": 33.0, "0.7": 9.0}}]
    mean, std = groups._combine(values, "mean"), groups._combine(values, "std")
    # by hand: mean 43, deviations -3, 3, 0 -> sample variance 18/2 = 9, std 3
    assert mean["corloc"] == pytest.approx(43.0) and std["corloc"] == pytest.approx(3.0)
    # 10, 20, 30: mean 20, deviations -10, 0, 10 -> variance 200/2, std 10
    assert mean["per_class"][0] == pytest.approx(20.0) and std["per_class"][0] == pytest.approx(10.0)
    assert mean["per_class"][1] is None and std["per_class"][1] is None
    assert mean["box_acc"] == pytest.approx({"0.5": 33.0, "0.7": 7.0})
    assert std["box_acc"] == pytest.approx({"0.5": 3.0, "0.7": 2.0})


def test_the_group_record_is_the_mean_and_std_of_its_members(group):
    members = _member_records(group)
    record = results.read_record(group / results.RESULT_FILE)
    assert record["kind"] == groups.KIND
    assert [m["seed"] for m in members] == SEEDS == [s["seed"] for s in record["seeds"]] == record["config"]["seed"]
    for split in ("val", "test"):
        corlocs = [m["metrics"][split]["corloc"] for m in members]
        assert record["metrics"][split]["corloc"] == pytest.approx(statistics.mean(corlocs))
        assert record["metrics_std"][split]["corloc"] == pytest.approx(statistics.stdev(corlocs))
        for c in range(len(record["dataset"]["classes"])):
            per_class = [m["metrics"][split]["corloc_per_class"][c] for m in members]
            if None not in per_class:
                assert record["metrics"][split]["corloc_per_class"][c] == pytest.approx(statistics.mean(per_class))
        pxap = [m["metrics"][split]["pxap"] for m in members]
        assert record["metrics_std"][split]["pxap"] == pytest.approx(statistics.stdev(pxap))
    assert record["selection"]["epoch"] == [m["selection"]["epoch"] for m in members]
    # the seeds trained differently: their first checkpoints differ
    weights = [_tensors(io.load_tensors(d / "checkpoints" / "0-classifier-epoch001.pt")["method"])
               for d in groups.member_dirs(group)]
    assert len(weights[0]) == len(weights[1]) > 0
    assert any(not np.allclose(a, b) for a, b in zip(weights[0], weights[1]))
    assert (group / groups.GROUP_MD).is_file() and "mean ± std" in (group / groups.GROUP_MD).read_text()


def test_the_interval_of_the_group_is_of_the_mean_over_seeds(group):
    record = results.read_record(group / results.RESULT_FILE)
    outcomes = io.load_npz(group / "result.outcomes.npz")
    member_outcomes = [io.load_npz(d / "result.outcomes.npz") for d in groups.member_dirs(group)]
    # per frame, the fraction of the seeds whose box was right
    assert record["metrics"]["val"]["corloc"] > 0  # the tiny runs localize a few val frames: not a 0 = 0 check
    for split in ("val", "test"):
        by_hand = sum(o[f"{split}_correct"].astype(float) for o in member_outcomes) / len(SEEDS)
        np.testing.assert_allclose(outcomes[f"{split}_correct"], by_hand)
        ci = record["uncertainty"][split]["corloc"]
        # CorLoc is linear in the outcomes: the interval's estimate is the mean of the seeds' CorLoc
        assert ci["estimate"] == pytest.approx(record["metrics"][split]["corloc"])
        assert ci["low"] <= ci["estimate"] <= ci["high"] and ci["resampled"] == "videos"
        assert ci["clusters"] == len(np.unique(outcomes[f"{split}_cluster"]))


def test_eval_group_reports_each_protocol_as_the_mean_of_its_members(group, capsys):
    assert main(["eval", "--group", str(group), "--protocol", "test-threshold", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "test-threshold" in out and "±" in out
    record = results.read_record(group / "evaluations" / "test-threshold.json")
    members = _member_records(group, "evaluations/test-threshold.json")
    corlocs = [m["metrics"]["test"]["corloc"] for m in members]
    assert record["protocol"]["name"] == "test-threshold"
    assert record["metrics"]["test"]["corloc"] == pytest.approx(statistics.mean(corlocs))
    assert record["metrics_std"]["test"]["corloc"] == pytest.approx(statistics.stdev(corlocs))
    assert record["uncertainty"]["test"]["corloc"]["estimate"] == pytest.approx(statistics.mean(corlocs))
    assert (group / "evaluations" / "protocols.md").is_file()
    assert (group / "evaluations" / "test-threshold.outcomes.npz").is_file()


def test_eval_group_default_is_every_protocol(group, capsys):
    from harness.registry import registry

    assert main(["eval", "--group", str(group), "--no-progress"]) == 0
    out = capsys.readouterr().out
    for name in registry().names("protocol"):
        assert (group / "evaluations" / f"{name}.json").is_file()
        assert f"### {name}" in out


def test_compare_reads_groups_as_runs(group, capsys):
    """Two groups compare on their seed-mean outcomes; a group against itself differs by 0."""
    assert main(["compare", str(group), str(group), "--samples", "200"]) == 0
    out = capsys.readouterr().out
    assert "CorLoc A - B: +0.00" in out


@pytest.mark.slow
def test_a_group_cut_off_after_its_first_seed_resumes_the_rest_through_the_submitit_runner(tmp_path, capsys):
    group_dir = groups.create("cam", "gt-val", "synth-yto", [3, 4], {**TINY_YTO, "run.report": True},
                              run_root=tmp_path, progress=False)
    first, second = groups.member_dirs(group_dir)

    class CutOff:
        def run(self, run_dirs, progress):
            sweep.LocalRunner().run(run_dirs[:1], progress)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        groups.execute(group_dir, CutOff(), progress=False)
    assert (first / results.RESULT_FILE).is_file() and not (group_dir / results.RESULT_FILE).exists()
    written = (first / results.RESULT_FILE).stat().st_mtime_ns
    assert main(["eval", "--group", str(group_dir), "--protocol", "gt-val", "--no-progress"]) == 2
    assert f"harness run --resume {group_dir}" in capsys.readouterr().err
    # the rest of the group as submitit jobs (processes of this machine): only the unfinished seed
    assert main(["run", "--resume", str(group_dir), "--no-progress", "--runner", "slurm-local", "--time-min",
                 "10"]) == 0
    assert (first / results.RESULT_FILE).stat().st_mtime_ns == written  # kept, not retrained
    jobs = list((group_dir / "slurm").glob("*_submitted.pkl"))
    assert len(jobs) == 1  # one job: the second seed
    record = results.read_record(group_dir / results.RESULT_FILE)
    assert [s["seed"] for s in record["seeds"]] == [3, 4]
    assert record["metrics"]["test"]["corloc"] == pytest.approx(statistics.mean(
        m["metrics"]["test"]["corloc"] for m in _member_records(group_dir)))
    assert (second / results.RESULT_FILE).is_file()
    assert (group_dir / "report.html").is_file()  # run.report: the group's page follows its record
    assert "mean ± std" in capsys.readouterr().out


@pytest.mark.parametrize("argv, why", [
    (["run", "--plugin", "cam", "--seeds", "0,1", "--launcher", "torchrun"], "each seed as its own run"),
    (["run", "--plugin", "cam", "--runner", "ray"], "add --seeds"),
    (["run", "--plugin", "cam", "--seeds", "0,1", "--cfg-options", "seed=3"], "drop seed= from --cfg-options"),
    (["run", "--plugin", "cam", "--seeds", "0,0"], "repeated"),
    (["eval"], "--run RUN_DIR .* or --group GROUP_DIR"),
])
def test_bad_group_commands_are_named(tmp_path, capsys, argv, why):
    assert main([*argv, "--run-root", str(tmp_path)] if argv[0] == "run" else argv) == 2
    assert __import__("re").search(why, capsys.readouterr().err)
    assert not (tmp_path / "groups").exists()


def test_resume_and_eval_refuse_what_is_not_a_group(group, tmp_path, capsys):
    assert main(["run", "--resume", str(group), "--plugin", "cam"]) == 2
    assert "drop --plugin" in capsys.readouterr().err
    assert main(["eval", "--group", str(tmp_path)]) == 2
    assert "seed group" in capsys.readouterr().err
    (tmp_path / groups.GROUP_FILE).write_text(json.dumps({"members": [{"seed": 0, "run": "../../etc"}] * 2}))
    assert main(["eval", "--group", str(tmp_path)]) == 2
    assert "member run" in capsys.readouterr().err


def test_members_that_differ_in_more_than_their_seed_are_refused(group):
    a, b = _member_records(group)[:2]
    b["protocol"] = {**b["protocol"], "name": "test-threshold"}
    with pytest.raises(HarnessError, match="differ in protocol"):
        groups._check_members([a, b])
