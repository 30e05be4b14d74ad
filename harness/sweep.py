"""Selection across configurations: a grid or random search over config values for one
plugin, each trial a normal run, then the configuration chosen by the protocol's rule.

A sweep directory holds ``sweep.json`` (the specification), ``trials.json`` (trial id ->
overrides and run directory, written before any trial trains), ``trials/`` (the runs) and,
at the end, ``result.json`` and ``sweep.md``. Trials run through a :class:`TrialRunner`;
:class:`LocalRunner` runs them one after the other here. Selection reads only the trials'
``result.json`` records, so a runner that hands trials to Ray or SLURM changes nothing else.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import logging
import math
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol as TypingProtocol

from tabulate import tabulate

from harness import io, results, runner
from harness.errors import HarnessError

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
    label = f"{runner.method_label(cfgs[0])}-{cfgs[0].protocol.name}"
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    sweep_dir = root / "sweeps" / f"{stamp}-{label}"
    for n in range(2, 1000):
        if not sweep_dir.exists():
            break
        sweep_dir = root / "sweeps" / f"{stamp}-{n}-{label}"
    for cfg in cfgs:
        cfg.run.root = str(sweep_dir / "trials")
        runner.check_buildable(cfg, progress)
    (sweep_dir / "trials").mkdir(parents=True)
    io.write_json(sweep_dir / SPEC_FILE, asdict(spec))
    trials = [{"id": trial_id(n, o), "overrides": o, "run": runner.create_run_dir(cfg).name}
              for n, (o, cfg) in enumerate(zip(overrides, cfgs))]
    io.write_json(sweep_dir / TRIALS_FILE, trials)
    return sweep_dir


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
