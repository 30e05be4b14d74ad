"""Seed groups: one configuration trained once per seed, and its numbers as mean ± std over
the seeds, with a bootstrap interval over the test frames.

``harness run ... --seeds 0,1,2`` writes a group directory::

    <root>/groups/<stamp>-<method>-<protocol>/
        group.json            the specification and its members (seed -> run), written first
        runs/<run>/           one ordinary run per seed (its own result, report, evaluations)
        result.json           the group record (below), once every member has finished
        result.outcomes.npz   per test frame, the fraction of seeds whose box was right
        group.md              the members and the mean ± std of every metric
        evaluations/<p>.json  after ``harness eval --group DIR``: the same under protocol p

The members run through the sweep's trial runners (local, Ray, SLURM), which skip a finished
member and resume an interrupted one from its last checkpoint, so ``harness run --resume
GROUP_DIR`` continues a group cut off mid-way.

The group record has the fields of a run's record, so the leaderboard and ``harness compare``
read it as they read a run: ``metrics`` holds the mean over the seeds, element by element (per
class, per IoU), ``metrics_std`` the sample standard deviation, ``seeds`` each member's own
metrics, ``selection.epoch`` and ``selection.tau`` each member's choice (lists), and
``uncertainty`` the interval of the seed-mean CorLoc over the test frames. Averaging the
members' per-frame outcomes before resampling makes the interval's estimate exactly the mean
of the seeds' CorLoc (CorLoc is linear in the outcomes).
"""
from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import numpy as np
from tabulate import tabulate

from harness import io, results, runner
from harness.errors import HarnessError
from harness.evaluation.uncertainty import mean_std
from harness.sweep import LocalRunner, new_folder

log = logging.getLogger("harness")

GROUP_FILE, GROUP_MD = "group.json", "group.md"
KIND = "seed-group"


def parse_seeds(text: str) -> list[int]:
    """``0,1,2`` -> ``[0, 1, 2]``; ``0-4`` -> ``[0, 1, 2, 3, 4]``."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        try:
            values = list(range(int(lo), int(hi) + 1)) if dash else [int(part)]
        except ValueError:
            raise HarnessError(f"--seeds {text}: {part!r} is not a seed; give whole numbers, e.g. --seeds 0,1,2 "
                               f"or --seeds 0-4") from None
        if dash and int(hi) < int(lo):
            raise HarnessError(f"--seeds {text}: the range {part} runs backwards; write it as {hi}-{lo}")
        seeds += values
    if any(s < 0 for s in seeds):
        raise HarnessError(f"--seeds {text}: seeds are whole numbers >= 0")
    if len(set(seeds)) != len(seeds):
        raise HarnessError(f"--seeds {text}: a seed is repeated; each seed trains one run")
    if len(seeds) < 2:
        raise HarnessError(f"--seeds {text}: a group needs at least two seeds (one seed is `--cfg-options seed=N`)")
    return seeds


def is_group(path: str | Path) -> bool:
    return (Path(path) / GROUP_FILE).is_file()


def create(plugin: str, protocol: str, dataset: str, seeds: list[int], overrides: dict | None = None,
           config_files: list[str] = (), run_root: str | Path | None = None, device: str | None = None,
           progress: bool = True) -> Path:
    """Write the group directory with every member prepared; every member's config is composed
    and its method built before anything is written, so a mistake leaves nothing behind."""
    overrides = dict(overrides or {})
    if "seed" in overrides:
        raise HarnessError(f"--cfg-options seed={overrides['seed']} and --seeds both set the seed: the group gives "
                           f"each member its own; drop seed= from --cfg-options")
    cfgs = [runner.compose(plugin, protocol, dataset, {**overrides, "seed": s}, device, list(config_files))
            for s in seeds]
    root = Path(run_root) if run_root is not None else Path(cfgs[0].run.root)
    # named from the composed config: method and protocol names are validated as file names
    group_dir = new_folder(root / "groups", f"{runner.method_label(cfgs[0])}-{cfgs[0].protocol.name}")
    for cfg in cfgs:
        cfg.run.root = str(group_dir / "runs")
        runner.check_buildable(cfg, progress)
    (group_dir / "runs").mkdir(parents=True)
    members = [{"seed": s, "run": runner.create_run_dir(cfg).name} for s, cfg in zip(seeds, cfgs)]
    io.write_json(group_dir / GROUP_FILE, {"plugin": plugin, "protocol": protocol, "dataset": dataset,
                                           "seeds": seeds, "overrides": overrides,
                                           "config_files": [str(f) for f in config_files], "members": members})
    return group_dir


def load_spec(group_dir: str | Path) -> dict:
    from harness.names import check_name

    path = Path(group_dir) / GROUP_FILE
    try:
        spec = io.read_json(path, "seed group")
    except HarnessError as exc:
        raise HarnessError(f"{exc}; is {group_dir} a seed group (written by `harness run --seeds`)?") from None
    members = spec.get("members") if isinstance(spec, dict) else None
    ok = isinstance(members, list) and len(members) >= 2 and all(
        isinstance(m, dict) and isinstance(m.get("seed"), int) and isinstance(m.get("run"), str) for m in members)
    if not ok:
        raise HarnessError(f"{path} is not a seed group: it needs members, a list of {{seed, run}} (two or more)")
    for m in members:  # a run name becomes a path: it stays inside the group's runs/ folder
        check_name(m["run"], f"{path}: member run")
    return spec


def member_dirs(group_dir: str | Path) -> list[Path]:
    group_dir = Path(group_dir)
    return [group_dir / "runs" / m["run"] for m in load_spec(group_dir)["members"]]


def execute(group_dir: str | Path, trial_runner=None, progress: bool = True) -> dict:
    """Run (or resume) every member, then write the group record."""
    group_dir = Path(group_dir)
    dirs = member_dirs(group_dir)
    (trial_runner or LocalRunner()).run(dirs, progress)
    own = [results.read_record(d / results.RESULT_FILE) for d in dirs]
    record = summarize(group_dir, own, [d / ("result" + runner.OUTCOMES_SUFFIX) for d in dirs], own[0]["config"])
    io.write_text(group_dir / GROUP_MD, members_table(record) + "\n\n" + metrics_table(record) + "\n")
    if record["config"].get("run", {}).get("report", True):
        _write_report(group_dir, progress)
    return record


def _write_report(group_dir: Path, progress: bool) -> None:
    from harness.report.group import write_group_report

    try:
        log.info("report: %s", write_group_report(group_dir, progress=progress))
    except (HarnessError, OSError, ValueError) as exc:
        log.warning("no report for %s (%s); the result is saved, try `harness report --group %s`", group_dir, exc,
                    group_dir)


def summarize(group_dir: Path, records: list[dict], outcome_files: list[Path], config: dict,
              out: Path | None = None) -> dict:
    """The group record of the members' ``records`` (one protocol; ``config``: the first
    member's), written to ``out`` (default ``<group>/result.json``) with its averaged outcomes
    beside it."""
    _check_members(records)
    first = records[0]
    seeds = [m["seed"] for m in load_spec(group_dir)["members"]]
    splits = [s for s in first["metrics"] if all(s in r["metrics"] for r in records)]
    metrics, spread = {}, {}
    for split in splits:
        keys = [k for k in first["metrics"][split] if all(k in r["metrics"][split] for r in records)]
        metrics[split] = {k: _combine([r["metrics"][split][k] for r in records], "mean") for k in keys}
        spread[split] = {k: _combine([r["metrics"][split][k] for r in records], "std") for k in keys}
    outcomes = mean_outcomes(outcome_files)
    n_boot = int((config.get("eval") or {}).get("bootstrap_samples", 1000))
    of = f"the mean over {len(records)} seeds"
    uncertainty = {split: {"corloc": {**ci["corloc"], "of": of}}
                   for split, ci in runner.intervals(outcomes, n_boot, seed=0).items()}
    config = {**config, "seed": seeds}
    sel = first["selection"]
    record = {
        "kind": KIND,
        "run_id": group_dir.name,
        "plugin": first["plugin"],
        "method_label": first.get("method_label") or first["plugin"],
        "cam_source": first.get("cam_source"),
        "protocol": first["protocol"],
        "dataset": first["dataset"],
        "selection": {
            "stage": sel.get("stage"),
            "epoch": [r["selection"]["epoch"] for r in records],
            "tau": [r["selection"]["tau"] for r in records],
            "score": _combine([r["selection"].get("score") for r in records], "mean"),
            "epoch_chosen_by": sel.get("epoch_chosen_by"),
            "tau_chosen_by": sel.get("tau_chosen_by"),
            "tau_scope": sel.get("tau_scope"),
            "epoch_scores": {},
            "per_seed": True,
        },
        "metrics": metrics,
        "metrics_std": spread,
        "seeds": [{"seed": s, "run_id": r["run_id"], "epoch": r["selection"]["epoch"], "tau": r["selection"]["tau"],
                   "metrics": r["metrics"], "uncertainty": r.get("uncertainty", {})}
                  for s, r in zip(seeds, records)],
        "uncertainty": uncertainty,
        "pseudo_boxes": first.get("pseudo_boxes", {}),
        "config": config,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "provenance": results.provenance(),
    }
    record.update({k: first[k] for k in ("eval", "settings_changed") if k in first})  # a re-evaluation's
    out = out or group_dir / results.RESULT_FILE
    io.save_npz(out.with_name(out.stem + runner.OUTCOMES_SUFFIX), outcomes)  # before the record, as a run does
    io.write_json(out, record)
    return record


def _check_members(records: list[dict]) -> None:
    """Members must differ by their seed only: same method, protocol and frames."""
    first = records[0]
    for r in records[1:]:
        for what, a, b in (("method", first.get("method_label"), r.get("method_label")),
                           ("protocol", first["protocol"]["name"], r["protocol"]["name"]),
                           ("dataset", (first["dataset"]["name"], first["dataset"].get("identity")),
                            (r["dataset"]["name"], r["dataset"].get("identity")))):
            if a != b:
                raise HarnessError(f"the group's runs {first['run_id']} and {r['run_id']} differ in {what} ({a} vs "
                                   f"{b}): a seed group's members differ by their seed only")


def _combine(values: list, how: str):
    """Mean or sample std over seeds, element by element through lists (per class) and dicts
    (per IoU); None where any seed has none (a class absent from a split)."""
    if all(isinstance(v, dict) for v in values):
        keys = [k for k in values[0] if all(k in v for v in values)]
        return {k: _combine([v[k] for v in values], how) for k in keys}
    if all(isinstance(v, list) for v in values) and len({len(v) for v in values}) == 1:
        return [_combine(list(col), how) for col in zip(*values)]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        mean, std = mean_std(values)
        return mean if how == "mean" else std
    return None


def mean_outcomes(paths: list[Path]) -> dict[str, np.ndarray]:
    """Per split and frame, the fraction of the members whose box was right; the members must
    have evaluated the same frames. Empty when a member predates per-frame outcomes."""
    if not all(Path(p).is_file() for p in paths):
        return {}
    loaded = [io.load_npz(p) for p in paths]
    out: dict[str, np.ndarray] = {}
    for split in ("val", "test"):
        if not all(f"{split}_correct" in o for o in loaded):
            continue
        ref = loaded[0]
        for p, o in zip(paths[1:], loaded[1:]):
            if not all(np.array_equal(o[f"{split}_{k}"], ref[f"{split}_{k}"]) for k in ("label", "cluster")):
                raise HarnessError(f"{p}: its {split} frames differ from {paths[0]}'s; a seed group's members "
                                   f"must be evaluated on the same frames")
        out[f"{split}_correct"] = np.mean([o[f"{split}_correct"].astype(np.float64) for o in loaded], axis=0)
        out[f"{split}_label"], out[f"{split}_cluster"] = ref[f"{split}_label"], ref[f"{split}_cluster"]
    return out


# ------------------------------------------------------------------------- re-evaluation


def reevaluate(group_dir: str | Path, protocols: list[str | None], overrides: dict | None = None,
               device: str | None = None, progress: bool = True, out_dir: str = "evaluations") -> list[dict]:
    """``harness eval --group``: every member re-selected under each protocol (records reused
    where their settings match), then one group record per protocol in
    ``<group>/<out_dir>/<protocol>.json``. A member that was re-evaluated before is only
    re-selected, so a group evaluation cut off mid-way costs only what was left."""
    group_dir = Path(group_dir)
    dirs = member_dirs(group_dir)
    unfinished = [d for d in dirs if not (d / results.RESULT_FILE).is_file()]
    if unfinished:
        raise HarnessError(f"{len(unfinished)} member(s) of the group have not finished (e.g. {unfinished[0]}); "
                           f"finish them with `harness run --resume {group_dir}`")
    config = results.read_record(dirs[0] / results.RESULT_FILE).get("config") or {}
    per_member = []
    for n, d in enumerate(dirs, start=1):
        log.info("group member %d/%d: %s", n, len(dirs), d.name)
        per_member.append(runner.reevaluate_many(d, protocols, overrides, device, progress, out_dir=out_dir))
    changed = per_member[0][0]["settings_changed"]
    folder = runner.evaluation_dir(group_dir, changed, out_dir)
    if changed:
        io.write_json(folder / "settings.json", {"overrides": changed})
    records = []
    for k in range(len(protocols)):
        recs = [member[k] for member in per_member]
        name = recs[0]["protocol"]["name"]
        files = [runner.evaluation_dir(d, changed, out_dir) / f"{name}{runner.OUTCOMES_SUFFIX}" for d in dirs]
        record = summarize(group_dir, recs, files, config, out=folder / f"{name}.json")
        records.append(record)
    return records


# ------------------------------------------------------------------------------ tables


def fmt_mean_std(mean, std, scale: float = 1.0) -> str:
    if not isinstance(mean, (int, float)):
        return "-"
    return f"{scale * mean:.1f} ± {scale * std:.1f}" if isinstance(std, (int, float)) else f"{scale * mean:.1f}"


def members_rows(record: dict) -> tuple[list[str], list[list]]:
    """The members table: a row per seed (in the group's seed order), then the mean ± std."""
    rows = []
    for m in record["seeds"]:
        test = m["metrics"].get("test", {})
        rows.append([m["seed"], m["run_id"], m["epoch"], results._fmt_taus(m["tau"]), results._fmt(test.get("corloc")),
                     _fmt_ci(m.get("uncertainty"))])
    test, std = record["metrics"].get("test", {}), record["metrics_std"].get("test", {})
    rows.append(["mean ± std", "", "", "", fmt_mean_std(test.get("corloc"), std.get("corloc")),
                 _fmt_ci(record.get("uncertainty"))])
    return ["seed", "run", "epoch", "tau", "test CorLoc", "95% CI (videos)"], rows


def members_table(record: dict) -> str:
    head, rows = members_rows(record)
    return tabulate(rows, headers=head, tablefmt="github", disable_numparse=True)


def _fmt_ci(uncertainty: dict | None) -> str:
    ci = ((uncertainty or {}).get("test") or {}).get("corloc")
    return f"[{ci['low']:.1f}, {ci['high']:.1f}]" if ci else "-"


def metrics_rows(record: dict) -> tuple[list[str], list[list[str]]]:
    """Every metric of the group as mean ± std over its seeds, a column per split."""
    splits = list(record["metrics"])
    rows = []
    for label, key, sub in results._SUMMARY:
        cells = []
        for split in splits:
            mean, std = record["metrics"][split].get(key), record["metrics_std"].get(split, {}).get(key)
            if sub is not None:
                mean = mean.get(sub) if isinstance(mean, dict) else None
                std = std.get(sub) if isinstance(std, dict) else None
            cells.append(fmt_mean_std(mean, std, 100.0 if key == "mean_iou" else 1.0))
        if any(c != "-" for c in cells):
            rows.append([label] + cells)
    return [f"metric (mean ± std, {len(record['seeds'])} seeds)"] + splits, rows


def metrics_table(record: dict) -> str:
    head, rows = metrics_rows(record)
    return tabulate(rows, headers=head, tablefmt="github")


def protocols_table(records: list[dict]) -> str:
    """One row per protocol: the test metrics of the chapter's Table 4.2 as mean ± std, the
    interval of the mean CorLoc, and the epochs the seeds chose."""
    from harness.protocol import Protocol

    rows = []
    for r in records:
        p, m, s = r["protocol"], r["metrics"]["test"], r["metrics_std"]["test"]
        rows.append([p["name"], Protocol.from_config(p).code, p["supervision"],
                     ", ".join(str(e) for e in r["selection"]["epoch"]),
                     fmt_mean_std(m.get("corloc"), s.get("corloc")),
                     _fmt_ci(r.get("uncertainty")),
                     fmt_mean_std((m.get("box_acc") or {}).get("0.5"), (s.get("box_acc") or {}).get("0.5")),
                     fmt_mean_std(m.get("mean_iou"), s.get("mean_iou"), 100.0),
                     fmt_mean_std(m.get("cls_accuracy"), s.get("cls_accuracy"))])
    headers = ["protocol", "setting", "supervision", "epochs", "test CorLoc", "95% CI", "test BoxAcc@0.5",
               "test mean IoU", "test cls acc"]
    return tabulate(rows, headers=headers, tablefmt="github")
