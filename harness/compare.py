"""``harness compare RUN_A RUN_B``: are two runs' CorLoc different, beyond the noise of the test
frames? A paired comparison on the same frames (harness/evaluation/uncertainty.py): the paired
cluster bootstrap interval of the difference and a permutation p-value, from each run's
per-frame outcomes at its selected epoch and threshold (``result.outcomes.npz``, or
``evaluations/<protocol>.outcomes.npz`` after ``harness eval --protocol``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tabulate import tabulate

from harness import io, results
from harness.errors import HarnessError
from harness.evaluation.uncertainty import bootstrap_ci, paired_comparison
from harness.runner import OUTCOMES_SUFFIX


def load(run_dir: str | Path, protocol: str | None = None) -> tuple[dict, dict]:
    """A run's record and its selected per-frame outcomes, under its own protocol or ``protocol``."""
    run_dir = Path(run_dir)
    own = run_dir / results.RESULT_FILE
    if not own.is_file():
        raise HarnessError(f"{run_dir} has no {results.RESULT_FILE}: finish the run first (harness run --resume)")
    record = results.read_record(own)
    if protocol is None or protocol == record["protocol"]["name"]:
        path = run_dir / ("result" + OUTCOMES_SUFFIX)
    else:
        record_path = run_dir / "evaluations" / f"{protocol}.json"
        if not record_path.is_file():
            raise HarnessError(f"{run_dir} was not evaluated under {protocol!r}: run "
                               f"`harness eval --run {run_dir} --protocol {protocol}` first")
        record = results.read_record(record_path)
        path = run_dir / "evaluations" / f"{protocol}{OUTCOMES_SUFFIX}"
    try:
        outcomes = io.load_npz(path)
    except HarnessError as exc:
        raise HarnessError(f"{exc}: the run predates per-frame outcomes; re-evaluate it "
                           f"(harness eval --run {run_dir} --protocol {protocol or record['protocol']['name']})") from None
    return record, outcomes


def compare(run_a, run_b, protocol: str | None = None, split: str = "test", n_boot: int = 2000, n_perm: int = 2000,
            seed: int = 0) -> dict:
    (ra, oa), (rb, ob) = load(run_a, protocol), load(run_b, protocol)
    da, db = ra["dataset"], rb["dataset"]
    if (da["name"], da.get("identity")) != (db["name"], db.get("identity")):
        raise HarnessError(f"the runs are on different datasets ({da['name']} {da.get('identity')} vs {db['name']} "
                           f"{db.get('identity')}): a paired comparison needs the same frames")
    key = f"{split}_correct"
    if key not in oa or key not in ob:
        raise HarnessError(f"no per-frame outcomes of split {split!r} in one of the runs")
    same = all(np.array_equal(oa[f"{split}_{k}"], ob[f"{split}_{k}"]) for k in ("label", "cluster"))
    if len(oa[key]) != len(ob[key]) or not same:
        raise HarnessError(f"the runs' {split} splits differ ({len(oa[key])} vs {len(ob[key])} frames, or other "
                           f"labels/videos): a paired comparison needs the same frames")
    labels, clusters = oa[f"{split}_label"], oa[f"{split}_cluster"]
    c = paired_comparison(oa[key], ob[key], labels, clusters, n_boot=n_boot, n_perm=n_perm, seed=seed)
    runs = [{"run": r["run_id"], "method": r.get("method_label") or r["plugin"], "protocol": r["protocol"]["name"],
             "corloc": bootstrap_ci(o[key], labels, clusters, n_boot=n_boot, seed=seed).to_dict()}
            for r, o in ((ra, oa), (rb, ob))]
    return {"split": split, "dataset": da["name"], "frames": int(len(labels)), "videos": int(clusters.max()) + 1,
            "runs": runs, "corloc_difference": c.to_dict()}


def table(result: dict) -> str:
    rows = [[r["run"], r["method"], r["protocol"], f"{r['corloc']['estimate']:.2f}",
             f"[{r['corloc']['low']:.2f}, {r['corloc']['high']:.2f}]"] for r in result["runs"]]
    d = result["corloc_difference"]
    head = tabulate(rows, headers=["run", "method", "protocol", f"{result['split']} CorLoc", "95% CI (videos)"],
                    tablefmt="github")
    return (f"{head}\n\nCorLoc A - B: {d['difference']:+.2f}, 95% paired bootstrap CI [{d['low']:+.2f}, "
            f"{d['high']:+.2f}], permutation p = {d['p_value']:.4f} ({d['n_perm']} permutations of whole videos; "
            f"{result['frames']} frames, {result['videos']} videos of {result['dataset']} {result['split']})")
