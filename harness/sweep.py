"""Selection across configurations: a grid or random search over config values for one
plugin, each trial a normal run, then the configuration chosen by the protocol's rule.

A sweep directory holds ``sweep.json`` (the specification), ``trials.json`` (trial id ->
overrides and run directory, written before any trial trains), ``trials/`` (the runs) and,
at the end, ``result.json`` and ``sweep.md``. Trials run through a :class:`TrialRunner`:
:class:`LocalRunner` runs them one after the other here, :class:`RayRunner` hands each to
Ray as a task, :class:`SlurmRunner` submits them as a submitit job array (on SLURM, or as
local processes). The engines only execute trials, each a run directory with its own config
and seed; selection reads only the trials' ``result.json`` records, here, so every runner
selects the same configuration from the same trials.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import inspect
import itertools
import json
import logging
import math
import os
import random
import re
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol as TypingProtocol

from tabulate import tabulate

from harness import io, results, runner
from harness.errors import HarnessError
from harness.paths import harness_home

log = logging.getLogger("harness")

SPEC_FILE, TRIALS_FILE = "sweep.json", "trials.json"
# Sweeping these would change what the trials are compared on, not the trained model.
_FROZEN = ("annotators.", "eval.", "data.", "protocol.", "method.name")
_DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")


@dataclass
class SweepSpec:
    plugin: str
    protocol: str
    dataset: str
    grid: dict[str, list] = field(default_factory=dict)  # key -> values (Cartesian product)
    space: dict[str, str] = field(default_factory=dict)  # key -> "loguniform:1e-3:1e-1" etc.
    trials: int | None = None  # random search: number of trials drawn from `space` (x grid)
    seed: int = 0  # of the random search
    overrides: dict[str, Any] = field(default_factory=dict)  # applied to every trial
    config_files: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.trials is not None and (isinstance(self.trials, bool) or not isinstance(self.trials, int)
                                        or self.trials < 1):
            raise HarnessError(f"--trials {self.trials!r}: give how many configurations to draw from --space, "
                               f"an integer >= 1")
        keys = list(self.grid) + list(self.space)
        frozen = [k for k in keys if k.startswith(_FROZEN)]
        if frozen:
            raise HarnessError(
                f"cannot sweep {', '.join(frozen)}: trials must share data, evaluation and pseudo-boxes to "
                f"be comparable; set them once with --cfg-options"
            )
        if not keys:
            raise HarnessError("nothing to sweep: give --grid key=v1,v2 and/or --space key=dist:a:b with --trials N")
        if self.space and not self.trials:
            raise HarnessError("--space needs --trials N (how many configurations to draw)")
        if self.trials and not self.space:
            raise HarnessError(f"--trials {self.trials} draws from --space, which is not given: add --space "
                               f"key=dist:a:b, or drop --trials for a plain grid")
        for key, dist in self.space.items():
            _parse_distribution(key, dist)
        for key, values in self.grid.items():
            if not values:
                raise HarnessError(f"--grid {key}= has no value")
        both = sorted(set(self.grid) & set(self.space))
        if both:
            raise HarnessError(f"{', '.join(both)} is in --grid and in --space: sweep each key one way")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise HarnessError(f"--seed {self.seed!r}: the random search's seed is a whole number >= 0")


def _parse_distribution(key: str, text: str) -> tuple[str, list]:
    """``(kind, args)``: numeric bounds for uniform/loguniform/int (checked: finite, in order,
    > 0 for loguniform, whole numbers for int), the raw values for choice."""
    kind, *args = str(text).split(":")
    if kind not in _DISTRIBUTIONS:
        raise HarnessError(f"--space {key}={text}: distribution must be one of {', '.join(_DISTRIBUTIONS)} "
                           "(e.g. loguniform:1e-4:1e-1, uniform:0:1, int:1:10, choice:a:b)")
    if kind == "choice":
        if not args:
            raise HarnessError(f"--space {key}={text}: choice needs values, e.g. choice:a:b")
        return kind, args
    if len(args) != 2:
        raise HarnessError(f"--space {key}={text}: {kind} needs two bounds, e.g. {kind}:1e-3:1e-1")
    bounds = []
    for arg in args:
        try:
            bounds.append(int(arg) if kind == "int" else float(arg))
        except ValueError:
            what = "an integer" if kind == "int" else "a number"
            raise HarnessError(f"--space {key}={text}: bound {arg!r} is not {what}, e.g. {kind}:"
                               f"{'1:10' if kind == 'int' else '1e-3:1e-1'}") from None
        if not math.isfinite(bounds[-1]):
            raise HarnessError(f"--space {key}={text}: bound {arg!r} is not finite; give finite bounds")
    lo, hi = bounds
    if lo >= hi:
        raise HarnessError(f"--space {key}={text}: the lower bound {args[0]} must be below the upper bound "
                           f"{args[1]} ({kind}:LOW:HIGH); a fixed value belongs in --cfg-options {key}=VALUE")
    if kind == "loguniform" and lo <= 0:
        raise HarnessError(f"--space {key}={text}: loguniform bounds must be > 0 (it draws the logarithm "
                           f"uniformly); use uniform for a range that includes 0 or negative values")
    return kind, bounds


def _draw(kind: str, args: list, rng: random.Random):
    if kind == "choice":
        return _literal(rng.choice(args))
    lo, hi = args
    if kind == "uniform":
        return rng.uniform(lo, hi)
    if kind == "loguniform":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    return rng.randint(lo, hi)


def _literal(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"True": True, "False": False, "None": None}.get(text, text)


def trial_overrides(spec: SweepSpec) -> list[dict]:
    """Every trial's overrides, in a fixed order: the grid's product (last key fastest), each
    combined with ``trials`` random draws when a space is given."""
    keys = list(spec.grid)
    combos = [dict(zip(keys, values)) for values in itertools.product(*(spec.grid[k] for k in keys))] or [{}]
    if not spec.space:
        return combos
    rng = random.Random(spec.seed)
    parsed = {k: _parse_distribution(k, v) for k, v in spec.space.items()}
    out = []
    for combo in combos:
        for _ in range(spec.trials):
            out.append({**combo, **{k: _draw(kind, args, rng) for k, (kind, args) in parsed.items()}})
    return out


def trial_id(n: int, overrides: dict) -> str:
    digest = hashlib.sha256(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{n:03d}-{digest}"


# ------------------------------------------------------------------------------ runners


class TrialRunner(TypingProtocol):
    def run(self, run_dirs: list[Path], progress: bool) -> None:
        """Bring every run directory to its ``result.json`` (each is a prepared run)."""


class LocalRunner:
    """Trials one after the other in this process; a trial already finished is skipped and
    an interrupted one resumes from its last checkpoint."""

    def run(self, run_dirs: list[Path], progress: bool) -> None:
        for n, run_dir in enumerate(run_dirs, start=1):
            log.info("sweep trial %d/%d: %s", n, len(run_dirs), run_dir.name)
            runner.execute(run_dir, progress=progress)


def _execute_trial(run_dir: str) -> str:
    """One trial on an engine's worker. Module-level, so that Ray and submitit pickle it by
    reference and the worker imports it from the installed harness."""
    runner.execute(run_dir, progress=False)
    return run_dir


class RayRunner:
    """Each unfinished trial is a Ray task holding ``cpus_per_trial`` CPUs and ``gpus_per_trial``
    GPUs; Ray places the tasks on its nodes. ``ray_address`` joins a running cluster (``auto``:
    the one this node belongs to); without it a Ray is started on this machine
    (``ray.init(**ray_init)``) and stopped at the end. A Ray the caller has already started is
    used as it is."""

    def __init__(self, cpus_per_trial: int = 1, gpus_per_trial: int = 0, ray_address: str | None = None,
                 ray_init: dict | None = None):
        _check_resources(cpus_per_trial, gpus_per_trial)
        self.cpus_per_trial, self.gpus_per_trial = cpus_per_trial, gpus_per_trial
        self.ray_address, self.ray_init = ray_address, dict(ray_init or {})
        self.ray = _import_engine("ray", "ray")

    def run(self, run_dirs: list[Path], progress: bool) -> None:
        pending = _unfinished(run_dirs)
        if not pending:
            return
        ray = self.ray
        started = not ray.is_initialized()
        if started:
            try:
                ray.init(address=self.ray_address, **self.ray_init)
            except ConnectionError as exc:
                raise HarnessError(f"--ray-address {self.ray_address}: {exc}; start the cluster first (`ray start "
                                   f"--head` on its head node), or drop --ray-address to start Ray here") from None
        failures, waiting = [], []
        try:
            self._check_cluster()
            task = ray.remote(num_cpus=self.cpus_per_trial, num_gpus=self.gpus_per_trial,
                              runtime_env={"env_vars": _job_environment(self.gpus_per_trial)})(_execute_trial)
            trials = {task.remote(str(d)): d for d in pending}
            log.info("sweep: %d trial(s) submitted to Ray (%d finished already)", len(pending),
                     len(run_dirs) - len(pending))
            waiting = list(trials)
            while waiting:  # every trial runs to its end, whatever the others do
                [done], waiting = ray.wait(waiting, num_returns=1)
                try:
                    ray.get(done)
                    log.info("sweep trial finished: %s", trials[done].name)
                except ray.exceptions.RayError as exc:
                    cause = getattr(exc, "cause", None)  # a RayTaskError carries the trial's own exception
                    why = f"{type(cause).__name__}: {cause}" if cause is not None else _first_line(exc)
                    failures.append((trials[done], why + _trial_log(trials[done])))
        except KeyboardInterrupt:
            for ref in waiting:  # a task left running would train beside the --resume that continues the sweep
                ray.cancel(ref, force=True)
            raise
        finally:
            if started:
                ray.shutdown()
        if failures:
            raise _trials_failed(failures, len(pending))

    def _check_cluster(self) -> None:
        """A task asking for more than any node has would wait forever: refuse it now."""
        nodes = [node["Resources"] for node in self.ray.nodes() if node["Alive"]]
        for flag, need, kind in (("--cpus-per-trial", self.cpus_per_trial, "CPU"),
                                 ("--gpus-per-trial", self.gpus_per_trial, "GPU")):
            most = max((node.get(kind, 0) for node in nodes), default=0)
            if need > most:
                raise HarnessError(f"{flag} {need}: no node of the Ray cluster has that many {kind}s (the most is "
                                   f"{most:g}); ask for fewer, or join a cluster that has them (--ray-address)")


class SlurmRunner:
    """The unfinished trials as one submitit job array, a job of ``cpus_per_trial`` CPUs and
    ``gpus_per_trial`` GPUs each, cut off after ``time_min`` minutes (a trial cut off resumes
    from its last checkpoint with ``harness sweep --resume``). ``local=True`` runs the jobs as
    processes on this machine through the same code (submitit's local executor). Job files and
    logs go to ``<sweep>/slurm/``."""

    def __init__(self, partition: str | None = None, time_min: int = 240, gpus_per_trial: int = 0,
                 cpus_per_trial: int = 1, local: bool = False):
        _check_resources(cpus_per_trial, gpus_per_trial)
        if isinstance(time_min, bool) or not isinstance(time_min, int) or time_min < 1:
            raise HarnessError(f"--time-min {time_min!r}: each trial's time limit, whole minutes >= 1")
        if not local and shutil.which("srun") is None:
            raise HarnessError("--runner slurm: no SLURM on this machine (srun not found); submit from a login "
                               "node of the cluster, or run the trials here with --runner slurm-local")
        self.partition, self.time_min, self.local = partition, time_min, local
        self.cpus_per_trial, self.gpus_per_trial = cpus_per_trial, gpus_per_trial
        self.submitit = _import_engine("submitit", "slurm")

    def run(self, run_dirs: list[Path], progress: bool) -> None:
        pending = _unfinished(run_dirs)
        if not pending:
            return
        folder = pending[0].parent.parent / "slurm"  # <sweep>/trials/<run> -> <sweep>/slurm
        executor = self.submitit.AutoExecutor(folder=folder, cluster="local" if self.local else "slurm")
        executor.update_parameters(name="harness-sweep", slurm_partition=self.partition, timeout_min=self.time_min,
                                   gpus_per_node=self.gpus_per_trial, cpus_per_task=self.cpus_per_trial)
        # A job takes this process's environment when it is submitted; as Ray does, a thread per
        # CPU of the job, not one per core of the node.
        env = {**_job_environment(self.gpus_per_trial), "OMP_NUM_THREADS": str(self.cpus_per_trial)}
        errors = self.submitit.core.utils
        try:
            with _environment_for_jobs(**env):
                jobs = executor.map_array(_execute_trial, [str(d) for d in pending])
        except (errors.FailedJobError, errors.FailedSubmissionError) as exc:  # what sbatch said, e.g. a bad partition
            raise HarnessError(f"the trials could not be submitted: {exc}; check --partition, --time-min (within the "
                               f"partition's limit) and --gpus-per-trial / --cpus-per-trial") from None
        log.info("sweep: %d trial(s) submitted to %s (%d finished already); job logs in %s", len(pending),
                 "local processes" if self.local else f"SLURM, job array {jobs[0].job_id.split('_')[0]}",
                 len(run_dirs) - len(pending), folder)
        failures = []
        try:
            for job, run_dir in zip(jobs, pending):
                error = job.exception()  # waits for the job; every job runs to its end
                if error is None:
                    log.info("sweep trial finished: %s", run_dir.name)
                else:
                    failures.append((run_dir, f"{_job_error(error)} (logs: {job.paths.stderr}, {job.paths.stdout})"))
        except KeyboardInterrupt:
            for job in jobs:  # a job left running would train beside the --resume that continues the sweep
                job.cancel(check=False)
            raise
        if failures:
            raise _trials_failed(failures, len(pending))


def make_runner(name: str, **options) -> TrialRunner:
    """The runner of ``harness sweep --runner NAME`` (local, ray, slurm, slurm-local); options
    left None take the runner's defaults."""
    runners = {"local": (LocalRunner, {}), "ray": (RayRunner, {}), "slurm": (SlurmRunner, {}),
               "slurm-local": (SlurmRunner, {"local": True})}
    if name not in runners:
        raise HarnessError(f"--runner {name}: not a trial runner; use one of {', '.join(runners)}")
    cls, fixed = runners[name]
    given = {k: v for k, v in options.items() if v is not None}
    stray = [k for k in given if k not in inspect.signature(cls).parameters or k in fixed]
    if stray:
        raise HarnessError(f"--runner {name} does not take {', '.join('--' + k.replace('_', '-') for k in stray)} "
                           f"(--cpus-per-trial and --gpus-per-trial are for ray and slurm, --ray-address for ray, "
                           f"--partition and --time-min for slurm)")
    return cls(**fixed, **given)


def _unfinished(run_dirs: list[Path]) -> list[Path]:
    """The trials without a result, as absolute paths (a worker may start in another folder).
    A finished trial is never handed to an engine: a resumed sweep submits only what is left."""
    return [Path(d).resolve() for d in run_dirs if not (Path(d) / results.RESULT_FILE).is_file()]


def _import_engine(module: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise HarnessError(f"this trial runner needs {module}, which cannot be imported ({exc}): "
                           f"pip install 'wsol-harness[{extra}]'") from None


def _job_environment(gpus: int) -> dict[str, str]:
    """What a trial's worker needs from this process: the stage, annotator and dataset caches
    where this process has them (a trial reuses what another one, or an earlier sweep,
    computed), and no GPU when it was given none: Ray leaves such a task every GPU of its node,
    which it would use unreserved, beside the trials that reserved them."""
    return {"HARNESS_HOME": str(harness_home()), **({"CUDA_VISIBLE_DEVICES": ""} if not gpus else {})}


@contextmanager
def _environment_for_jobs(**defaults: str) -> Iterator[None]:
    """Environment variables this process leaves unset, set while jobs are submitted."""
    unset = [k for k in defaults if k not in os.environ]
    os.environ.update({k: defaults[k] for k in unset})
    try:
        yield
    finally:
        for k in unset:
            os.environ.pop(k, None)


def _check_resources(cpus: int, gpus: int) -> None:
    for flag, value, least in (("--cpus-per-trial", cpus, 1), ("--gpus-per-trial", gpus, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise HarnessError(f"{flag} {value!r}: a whole number >= {least}")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _job_error(error: Exception) -> str:
    """The line that says what went wrong: a failed job's message holds its whole traceback
    between dashed lines, the last line of which is the exception."""
    parts = str(error).split("-" * 22)
    if len(parts) >= 3 and parts[1].strip():
        return parts[1].strip().splitlines()[-1]
    return _first_line(error)


def _trial_log(run_dir: Path) -> str:
    log_file = run_dir / "log.txt"
    return f" (its log: {log_file})" if log_file.is_file() else ""


def _trials_failed(failures: list[tuple[Path, str]], submitted: int) -> HarnessError:
    sweep_dir = failures[0][0].parent.parent
    lines = "\n".join(f"  {run_dir}: {why}" for run_dir, why in failures)
    kept = "the other trials' results are kept" if len(failures) < submitted else "none finished"
    return HarnessError(f"{len(failures)} of {submitted} trial(s) failed; {kept}:\n"
                        f"{lines}\nfix the cause, then continue with: harness sweep --resume {sweep_dir}")


# ------------------------------------------------------------------------------ the sweep


def create(spec: SweepSpec, run_root: str | Path | None = None, progress: bool = True) -> Path:
    """Write the sweep directory with every trial prepared. Every trial's config is composed
    and checked, and its method built, before anything is written: a bad value in one trial
    leaves no half-made sweep behind."""
    spec.validate()
    overrides = trial_overrides(spec)
    fixed = {**spec.overrides, **_pinned_annotator_classifiers(spec)}
    cfgs = [runner.compose(spec.plugin, spec.protocol, spec.dataset, {**fixed, **o}, config_files=spec.config_files)
            for o in overrides]
    root = Path(run_root) if run_root is not None else Path(cfgs[0].run.root)
    # Named from the composed config, not from the arguments: --protocol may be a file path
    # (`../../p.json`) and --plugin an alias; method and protocol names are validated as safe
    # file names (harness/names.py), so the folder stays under <root>/sweeps.
    sweep_dir = new_folder(root / "sweeps", f"{runner.method_label(cfgs[0])}-{cfgs[0].protocol.name}")
    for cfg in cfgs:
        cfg.run.root = str(sweep_dir / "trials")
        runner.check_buildable(cfg, progress)
    (sweep_dir / "trials").mkdir(parents=True)
    io.write_json(sweep_dir / SPEC_FILE, asdict(spec))
    trials = [{"id": trial_id(n, o), "overrides": o, "run": runner.create_run_dir(cfg).name}
              for n, (o, cfg) in enumerate(zip(overrides, cfgs))]
    io.write_json(sweep_dir / TRIALS_FILE, trials)
    return sweep_dir


def new_folder(parent: Path, label: str) -> Path:
    """A name under ``parent`` not taken yet: ``<stamp>-<label>``, with a counter after the time
    for folders made within the same second (a sweep's, a seed group's); not created here."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        path = parent / (f"{stamp}-{label}" if n == 1 else f"{stamp}-{n}-{label}")
        if not path.exists():
            return path
    raise HarnessError(f"too many folders named {stamp}-{label} under {parent}")


def _pinned_annotator_classifiers(spec: SweepSpec) -> dict:
    """An annotator's classifier follows the run's classifier settings; in a sweep it follows
    the sweep's fixed settings instead, so that every trial is selected against the same
    pseudo-boxes whatever classifier setting the trial changes."""
    base = runner.compose(spec.plugin, spec.protocol, spec.dataset, spec.overrides, config_files=spec.config_files)
    return {f"annotators.{name}.classifier": settings["classifier"].to_dict()
            for name, settings in (base.get("annotators") or {}).items()
            if isinstance(settings, dict) and isinstance(settings.get("classifier"), dict)}


def execute(sweep_dir: str | Path, trial_runner: TrialRunner | None = None, progress: bool = True) -> dict:
    """Run (or resume) every trial, then select the configuration and write the result."""
    sweep_dir = Path(sweep_dir)
    spec = _load_spec(sweep_dir)
    trials = _load_trials(sweep_dir)
    run_dirs = [sweep_dir / "trials" / t["run"] for t in trials]
    (trial_runner or LocalRunner()).run(run_dirs, progress)
    records = [_trial_record(d / results.RESULT_FILE) for d in run_dirs]
    record = summarize(spec, trials, records)
    io.write_json(sweep_dir / results.RESULT_FILE, record)
    io.write_text(sweep_dir / "sweep.md", trials_table(record) + "\n")
    return record


def _trial_record(path: Path) -> dict:
    """A trial's record, also checked for what the sweep's selection and summary read."""
    record = results.read_record(path)
    test, selection = record["metrics"].get("test"), record["selection"]
    missing = [what for what, ok in [
        ("run_id", isinstance(record.get("run_id"), str)),
        ("metrics.test.corloc", isinstance(test, dict) and "corloc" in test),
        ("selection.score", isinstance(selection.get("score"), (int, float))),
        ("selection.epoch_chosen_by", isinstance(selection.get("epoch_chosen_by"), str)),
    ] if not ok]
    if missing:
        raise HarnessError(f"{path} is not a finished trial's record: no {', '.join(missing)}; delete it and resume "
                           f"the sweep (harness sweep --resume) to select and evaluate that trial again")
    return record


def _load_spec(sweep_dir: Path) -> SweepSpec:
    path = sweep_dir / SPEC_FILE
    data = _load(path, "specification")
    try:
        spec = SweepSpec(**data) if isinstance(data, dict) else None
    except TypeError as exc:
        raise HarnessError(f"{path} is not a sweep specification ({exc})") from None
    fields = {"plugin": str, "protocol": str, "dataset": str, "grid": dict, "space": dict, "overrides": dict,
              "config_files": list}
    bad = [k for k, t in fields.items() if spec is not None and not isinstance(getattr(spec, k), t)]
    if spec is None or bad:
        raise HarnessError(f"{path} is not a sweep specification"
                           + (f" ({bad[0]} is not a {fields[bad[0]].__name__})" if bad else " (not an object)"))
    spec.validate()
    return spec


def _load_trials(sweep_dir: Path) -> list[dict]:
    from harness.names import check_name

    path = sweep_dir / TRIALS_FILE
    trials = _load(path, "trials")
    ok = isinstance(trials, list) and trials and all(
        isinstance(t, dict) and isinstance(t.get("id"), str) and isinstance(t.get("overrides"), dict)
        and isinstance(t.get("run"), str) for t in trials)
    if not ok:
        raise HarnessError(f"{path} is not the sweep's list of trials ({{id, overrides, run}} each)")
    for t in trials:  # a run name becomes a path: it stays inside the sweep's trials/ folder
        check_name(t["run"], f"{path}: trial run")
    return trials


def _load(path: Path, what: str):
    try:
        return io.read_json(path, f"sweep {what}")
    except HarnessError as exc:
        raise HarnessError(f"{exc}; is this a sweep directory?") from exc


def select_configuration(records: list[dict]) -> int:
    """Index of the trial the protocol selects: the highest selection score (each trial's
    selected epoch, scored on the protocol's selection split with its supervision); ties go
    to the earlier trial."""
    if not records:
        raise HarnessError("the sweep has no finished trial to select from")
    names = {r["protocol"]["name"] for r in records}
    if len(names) != 1:
        raise HarnessError(f"trials were selected under different protocols {sorted(names)}: not comparable")
    return max(range(len(records)), key=lambda i: (records[i]["selection"]["score"], -i))


def summarize(spec: SweepSpec, trials: list[dict], records: list[dict]) -> dict:
    best = select_configuration(records)
    chosen = records[best]
    proto = chosen["protocol"]
    return {
        "kind": "sweep",
        "plugin": spec.plugin,
        "protocol": proto,
        "dataset": chosen["dataset"],
        "configuration": {"trial": trials[best]["id"], "overrides": trials[best]["overrides"],
                          "run_id": chosen["run_id"]},
        "configuration_chosen_by": f"highest selection score over {len(records)} trials: "
                                   f"{chosen['selection']['epoch_chosen_by']}",
        "selection": chosen["selection"],
        "metrics": chosen["metrics"],
        "pseudo_boxes": chosen.get("pseudo_boxes", {}),
        "trials": [
            {"id": t["id"], "overrides": t["overrides"], "run_id": r["run_id"], "score": r["selection"]["score"],
             "epoch": r["selection"]["epoch"], "tau": r["selection"]["tau"],
             "test_corloc": r["metrics"]["test"]["corloc"], "record": f"trials/{t['run']}/{results.RESULT_FILE}"}
            for t, r in zip(trials, records)
        ],
        "spec": asdict(spec),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "provenance": results.provenance(),
    }


def trials_table(record: dict) -> str:
    chosen = record["configuration"]["trial"]
    rows = [[("* " if t["id"] == chosen else "") + t["id"],
             ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["overrides"].items()),
             f"{t['score']:.2f}", t["epoch"], results._fmt_taus(t["tau"]), f"{t['test_corloc']:.1f}"]
            for t in record["trials"]]
    return tabulate(rows, headers=["trial", "configuration", "selection score", "epoch", "tau", "test CorLoc"],
                    tablefmt="github")
