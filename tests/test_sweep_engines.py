"""`harness sweep` on real engines: Ray tasks and submitit jobs (local executor) run the
trials; the sweep selects from their result.json exactly as with the local runner, a resumed
sweep submits nothing that is finished, and a failed trial is named."""
from __future__ import annotations

import json
import os
import sys

import pytest
import ray
import submitit
import torch

from harness import config as config_mod
from harness import sweep
from harness.cli import main
from harness.errors import HarnessError

from conftest import TINY_YTO

# Learning rates far apart, so that the tiny trials disagree and the selection means something.
LRS = [0.001, 0.05, 0.5, 2.0]
OPTS = {**TINY_YTO, "classifier.epochs": 1}


def _spec(lrs=LRS) -> sweep.SweepSpec:
    return sweep.SweepSpec("cam", "gt-val", "synth-yto", grid={"classifier.lr": list(lrs)}, overrides=dict(OPTS))


def _selection(record: dict) -> dict:
    """What a sweep decides and reports, without what names this sweep's own folders."""
    return {
        "configuration": {k: record["configuration"][k] for k in ("trial", "overrides")},
        "selection": record["selection"],
        "metrics": record["metrics"],
        "trials": [{k: t[k] for k in ("id", "overrides", "score", "epoch", "tau", "test_corloc")}
                   for t in record["trials"]],
    }


def _result_mtimes(sweep_dir) -> dict:
    return {p: p.stat().st_mtime_ns for p in sweep_dir.glob("trials/*/result.json")}


@pytest.fixture(scope="module")
def local_record(tmp_path_factory) -> dict:
    """The same sweep with LocalRunner: what every engine must reproduce, to the last digit.
    On one thread, as each engine's worker is (one CPU per trial): floating-point sums split
    over another number of threads differ in their last digits (pxAP, for one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sweep_dir = sweep.create(_spec(), tmp_path_factory.mktemp("local"), progress=False)
        return sweep.execute(sweep_dir, sweep.LocalRunner(), progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for the module (it takes seconds to start); RayRunner uses it as it is."""
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_submissions(ray_cluster, monkeypatch) -> list[str]:
    """The run directories handed to Ray as tasks."""
    submitted, real_remote = [], ray.remote

    def remote(**options):
        def decorate(fn):
            task = real_remote(**options)(fn)

            class Counted:
                def remote(self, run_dir):
                    submitted.append(run_dir)
                    return task.remote(run_dir)

            return Counted()
        return decorate

    monkeypatch.setattr(ray, "remote", remote)
    return submitted


@pytest.fixture
def submitit_submissions(monkeypatch) -> list[str]:
    """The run directories handed to submitit as jobs."""
    submitted, real_map_array = [], submitit.AutoExecutor.map_array

    def map_array(self, fn, *iterables):
        submitted.extend(iterables[0])
        return real_map_array(self, fn, *iterables)

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", map_array)
    return submitted


def _break_trial(sweep_dir, n: int):
    """Trial n's config holds a value its run refuses (as a hand-edited config would)."""
    run_dir = sweep_dir / "trials" / json.loads((sweep_dir / "trials.json").read_text())[n]["run"]
    cfg = config_mod.load_run_config(run_dir)
    cfg.classifier.lr = -1.0
    (run_dir / "config.py").write_text(config_mod.dump_text(cfg))
    return run_dir


@pytest.mark.slow
def test_ray_sweep_from_the_cli_selects_as_the_local_runner_and_resumes_without_resubmitting(
        tmp_path, local_record, ray_submissions, capsys):
    opts = [f"{k}={v}" for k, v in OPTS.items()]
    argv = ["sweep", "--plugin", "cam", "--protocol", "gt-val", "--run-root", str(tmp_path), "--no-progress",
            "--grid", "classifier.lr=" + ",".join(map(str, LRS)), "--runner", "ray", "--cpus-per-trial", "1",
            "--cfg-options", *opts]
    assert main(argv) == 0, capsys.readouterr().err
    [sweep_dir] = (tmp_path / "sweeps").iterdir()
    record = json.loads((sweep_dir / "result.json").read_text())
    assert _selection(record) == _selection(local_record)
    trials = json.loads((sweep_dir / "trials.json").read_text())
    assert sorted(ray_submissions) == sorted(str((sweep_dir / "trials" / t["run"]).resolve()) for t in trials)

    # resume: every trial is finished, nothing goes to Ray, the same configuration is selected
    ray_submissions.clear()
    mtimes = _result_mtimes(sweep_dir)
    assert main(["sweep", "--resume", str(sweep_dir), "--no-progress", "--runner", "ray"]) == 0
    assert ray_submissions == [] and _result_mtimes(sweep_dir) == mtimes
    assert _selection(json.loads((sweep_dir / "result.json").read_text())) == _selection(record)

    # a trial that lost its result is the only one submitted again (selected again from its checkpoints)
    lost = sweep_dir / "trials" / trials[2]["run"]
    (lost / "result.json").unlink()
    again = sweep.execute(sweep_dir, sweep.RayRunner(), progress=False)
    assert ray_submissions == [str(lost.resolve())]
    assert {p: m for p, m in _result_mtimes(sweep_dir).items() if p.parent != lost} == \
           {p: m for p, m in mtimes.items() if p.parent != lost}
    assert _selection(again) == _selection(record)


@pytest.mark.slow
def test_submitit_local_sweep_selects_as_the_local_runner_and_resumes_without_resubmitting(
        tmp_path, local_record, submitit_submissions):
    sweep_dir = sweep.create(_spec(), tmp_path, progress=False)
    record = sweep.execute(sweep_dir, sweep.make_runner("slurm-local", time_min=10), progress=False)
    assert _selection(record) == _selection(local_record)
    assert len(submitit_submissions) == 4 and sorted(submitit_submissions) == sorted(
        str(p.parent.resolve()) for p in sweep_dir.glob("trials/*/result.json"))
    assert len(list((sweep_dir / "slurm").glob("*_log.out"))) == 4  # submitit's job files and logs

    submitit_submissions.clear()
    mtimes = _result_mtimes(sweep_dir)
    again = sweep.execute(sweep_dir, sweep.SlurmRunner(local=True), progress=False)
    assert submitit_submissions == [] and _result_mtimes(sweep_dir) == mtimes
    assert _selection(again) == _selection(record)


@pytest.mark.slow
def test_a_failed_ray_trial_is_named_after_the_others_finished(tmp_path, ray_cluster):
    sweep_dir = sweep.create(_spec([0.05, 0.5]), tmp_path, progress=False)
    bad = _break_trial(sweep_dir, 0)
    with pytest.raises(HarnessError) as err:
        sweep.execute(sweep_dir, sweep.RayRunner(), progress=False)
    message = str(err.value)
    assert "1 of 2 trial(s) failed" in message and f"{bad.resolve()}: HarnessError" in message
    assert "'classifier.lr' = -1.0 is out of range" in message
    assert f"harness sweep --resume {sweep_dir.resolve()}" in message
    good = [p.parent for p in sweep_dir.glob("trials/*/result.json")]
    assert len(good) == 1 and good[0] != bad  # the other trial ran to its end and kept its result
    assert not (sweep_dir / "result.json").exists()  # no selection from half the trials


@pytest.mark.slow
def test_a_failed_submitit_job_is_named_with_its_logs(tmp_path):
    sweep_dir = sweep.create(_spec([0.05, 0.5]), tmp_path, progress=False)
    bad = _break_trial(sweep_dir, 1)
    with pytest.raises(HarnessError) as err:
        sweep.execute(sweep_dir, sweep.SlurmRunner(time_min=10, local=True), progress=False)
    message = str(err.value)
    assert "1 of 2 trial(s) failed" in message
    line = next(l for l in message.splitlines() if str(bad.resolve()) in l)
    assert "HarnessError" in line and "'classifier.lr' = -1.0 is out of range" in line
    log_err = line.split("(logs: ")[1].split(",")[0]
    assert log_err.endswith("_log.err") and "classifier.lr" in open(log_err).read()
    good = [p.parent for p in sweep_dir.glob("trials/*/result.json")]
    assert len(good) == 1 and good[0] != bad
    assert not (sweep_dir / "result.json").exists()


@pytest.mark.parametrize("name, module, extra", [("ray", "ray", "ray"), ("slurm-local", "submitit", "slurm")])
def test_a_missing_engine_says_what_to_install_before_the_sweep_exists(tmp_path, monkeypatch, capsys, name,
                                                                       module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` fails as if it were not installed
    with pytest.raises(HarnessError, match=rf"pip install 'wsol-harness\[{extra}\]'"):
        sweep.make_runner(name)
    argv = ["sweep", "--plugin", "cam", "--protocol", "gt-val", "--run-root", str(tmp_path), "--no-progress",
            "--grid", "classifier.lr=0.1,0.2", "--runner", name]
    assert main(argv) == 2
    assert f"pip install 'wsol-harness[{extra}]'" in capsys.readouterr().err
    assert not (tmp_path / "sweeps").exists()


@pytest.mark.parametrize("name, options, needle", [
    ("local", {"partition": "gpu"}, r"--runner local does not take --partition"),
    ("ray", {"time_min": 5}, r"--runner ray does not take --time-min"),
    ("slurm-local", {"ray_address": "auto"}, r"--runner slurm-local does not take --ray-address"),
    ("ray", {"cpus_per_trial": 0}, r"--cpus-per-trial 0: a whole number >= 1"),
    ("slurm-local", {"gpus_per_trial": -1}, r"--gpus-per-trial -1: a whole number >= 0"),
    ("slurm-local", {"time_min": 0}, r"--time-min 0: .*minutes >= 1"),
    ("dask", {}, r"--runner dask: not a trial runner; use one of local, ray, slurm, slurm-local"),
])
def test_runner_options_are_checked(name, options, needle):
    with pytest.raises(HarnessError, match=needle):
        sweep.make_runner(name, **options)


def test_runner_options_left_unset_take_the_runners_defaults():
    r = sweep.make_runner("slurm-local", partition=None, time_min=None, cpus_per_trial=2, gpus_per_trial=None,
                          ray_address=None)
    assert isinstance(r, sweep.SlurmRunner) and r.local
    assert (r.time_min, r.cpus_per_trial, r.gpus_per_trial) == (240, 2, 0)
    assert isinstance(sweep.make_runner("local", ray_address=None), sweep.LocalRunner)


def test_slurm_without_a_cluster_points_to_slurm_local(monkeypatch):
    monkeypatch.setattr(sweep.shutil, "which", lambda name: None)
    with pytest.raises(HarnessError, match=r"no SLURM on this machine .*--runner slurm-local"):
        sweep.make_runner("slurm", partition="gpu")


def test_a_trial_that_no_ray_node_can_hold_is_refused_before_submission(tmp_path, ray_submissions):
    (tmp_path / "trials" / "run").mkdir(parents=True)
    with pytest.raises(HarnessError, match=r"--gpus-per-trial 1: no node of the Ray cluster has that many GPUs"):
        sweep.RayRunner(gpus_per_trial=1).run([tmp_path / "trials" / "run"], progress=False)
    assert ray_submissions == []


def test_slurm_submits_one_job_array_through_sbatch_and_reports_its_refusal(tmp_path, monkeypatch):
    """submitit's SLURM executor up to sbatch, with an sbatch that keeps the script and refuses it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/script.sh\nenv > {tmp_path}/env.txt\n'
                                    'echo "sbatch: error: invalid partition specified: nogpu" >&2\nexit 1\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    trials = [tmp_path / "sw" / "trials" / name for name in ("a", "b")]
    for run_dir in trials:
        run_dir.mkdir(parents=True)
    runner = sweep.make_runner("slurm", partition="nogpu", time_min=30, gpus_per_trial=1, cpus_per_trial=4)
    with pytest.raises(HarnessError, match=r"could not be submitted: sbatch: error: invalid partition specified"):
        runner.run(trials, progress=False)
    script = (tmp_path / "script.sh").read_text()
    for line in ("--array=0-1", "--partition=nogpu", "--time=30", "--gpus-per-node=1", "--cpus-per-task=4",
                 f"--output={tmp_path}/sw/slurm/"):
        assert f"#SBATCH {line}" in script
    # the jobs inherit the environment sbatch had: this process's caches, a thread per CPU of the job
    env = dict(line.split("=", 1) for line in (tmp_path / "env.txt").read_text().splitlines() if "=" in line)
    assert env["OMP_NUM_THREADS"] == "4" and env["HARNESS_HOME"] == os.environ["HARNESS_HOME"]
    assert "OMP_NUM_THREADS" not in os.environ  # set for the submission only
