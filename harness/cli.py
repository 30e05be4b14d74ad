"""The ``harness`` command line."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mmengine.config import Config, DictAction
from tabulate import tabulate

from harness.errors import HarnessError


_START = """commands: run, eval, compare, sweep, annotate, list, data, leaderboard, report (`harness COMMAND -h` for each).
To start: `harness run --plugin cam --protocol gt-val` trains and evaluates CAM on the built-in
synthetic dataset; `harness list` shows every method, protocol and dataset."""


class _KeyValues(DictAction):
    """mmengine's KEY=VALUE parsing, with a malformed pair as a usage error, not a traceback."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            super().__call__(parser, namespace, values, option_string)
        except (ValueError, TypeError, SyntaxError) as exc:
            bad = next((v for v in values if "=" not in v), None)
            why = f"{bad!r} has no '='" if bad is not None else f"{type(exc).__name__}: {exc}"
            parser.error(f"{option_string} takes KEY=VALUE pairs (e.g. classifier.epochs=3): {why}")


class _Warnings(logging.Handler):
    """The harness's warnings on stderr outside a run (inside one, the run's log shows them)."""

    def __init__(self):
        super().__init__(logging.WARNING)

    def emit(self, record):
        if not getattr(logging.getLogger("harness"), "run_console", False):
            print(f"harness: warning: {record.getMessage()}", file=sys.stderr)


def _rank_prefix() -> str:
    """``rank R of W: `` in a torchrun process (so the failing rank is named), else nothing."""
    from harness import distributed

    return f"rank {distributed.rank()} of {distributed.world_size()}: " if distributed.active() else ""


def main(argv: list[str] | None = None) -> int:
    log = logging.getLogger("harness")
    if not any(isinstance(h, _Warnings) for h in log.handlers):
        log.addHandler(_Warnings())
    parser = _parser()
    args = parser.parse_args(argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)  # what a launcher starts again on each rank
    if not hasattr(args, "func"):
        sub = getattr(args, "_sub", None)
        (sub or parser).print_usage(sys.stderr)
        if sub is None:
            print(f"harness: error: no command given.\n{_START}", file=sys.stderr)
        else:
            print(f"harness: error: `harness {sub.prog.split()[-1]}` needs an action (see -h)", file=sys.stderr)
        return 2
    try:
        return args.func(args) or 0
    except HarnessError as exc:
        print(f"harness: error: {_rank_prefix()}{exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file the harness was not written to expect: name it, no traceback
        where = f" {exc.filename}" if exc.filename else ""
        print(f"harness: error:{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = getattr(args, "_run_dir", None)
        command = "sweep" if getattr(args, "func", None) is cmd_sweep else "run"
        hint = f"; continue with: harness {command} --resume {where}" if where else ""
        print(f"harness: interrupted{hint}", file=sys.stderr)
        return 130


def _runner_arguments(parser: argparse.ArgumentParser, what: str, same: str) -> None:
    """Where a sweep's trials or a seed group's runs execute (harness/sweep.py's runners)."""
    parser.add_argument("--runner", default="local", choices=["local", "ray", "slurm", "slurm-local"],
                        help=f"where {what} run: one after the other here (default), as Ray tasks, as a SLURM job "
                        f"array (submitit), or as submitit jobs on this machine; {same}")
    parser.add_argument("--cpus-per-trial", type=int, metavar="N", help="ray, slurm: CPUs of each run (default 1)")
    parser.add_argument("--gpus-per-trial", type=int, metavar="N", help="ray, slurm: GPUs of each run (default 0)")
    parser.add_argument("--ray-address", metavar="ADDRESS",
                        help="ray: a running cluster, e.g. auto (default: start Ray on this machine)")
    parser.add_argument("--partition", help="slurm: the partition (default: the cluster's)")
    parser.add_argument("--time-min", type=int, metavar="MINUTES", help="slurm: each run's time limit in minutes "
                        "(default 240); a run cut off continues from its last checkpoint with --resume")


def _make_runner(args):
    from harness import sweep

    return sweep.make_runner(args.runner, cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                             ray_address=args.ray_address, partition=args.partition, time_min=args.time_min)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description="Weakly-supervised object localization benchmarks")
    sub = p.add_subparsers(metavar="COMMAND")

    run = sub.add_parser("run", help="train and evaluate a method under a protocol")
    run.add_argument("--plugin", help="method plugin (see `harness list`)")
    run.add_argument("--protocol", help="protocol preset name or a protocol config file (default: gt-val)")
    run.add_argument("--dataset", help="dataset (default: synth-yto)")
    run.add_argument("--cfg-options", nargs="+", action=_KeyValues, default={}, metavar="KEY=VALUE",
                     help="override config keys, e.g. classifier.epochs=3 eval.multi_contour=True")
    run.add_argument("--config", action="append", default=[], metavar="FILE",
                     help="experiment config file(s) layered after the presets, e.g. configs/papers/...; "
                          "same keys and checks as --cfg-options")
    run.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    run.add_argument("--run-root", help="folder for run directories (default: config run.root = runs)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from its last checkpoint (or a seed "
                     "group: its unfinished runs)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--launcher", choices=("none", "torchrun"), default="none",
                     help="torchrun: train on --nproc processes of this machine (data parallel; docs/scale.md)")
    run.add_argument("--nproc", type=int, default=2, help="with --launcher torchrun: processes (default 2)")
    run.add_argument("--seeds", metavar="S1,S2,...", help="a seed group: one run per seed (e.g. 0,1,2 or 0-4), "
                     "reported as mean ± std over the seeds (docs/metrics.md)")
    _runner_arguments(run, "a seed group's runs", "with --seeds")
    run.set_defaults(func=cmd_run)

    ev = sub.add_parser("eval", help="re-evaluate a trained run (another protocol or eval settings), no training")
    ev.add_argument("--run", metavar="RUN_DIR", help="a run directory")
    ev.add_argument("--group", metavar="GROUP_DIR", help="a seed group (`harness run --seeds`): every metric as mean "
                    "± std over its seeds, under every protocol (or --protocol)")
    ev.add_argument("--protocol", help="protocol preset or file; 'all': every preset, one row each; 'grid': the "
                    "realistic-protocol chapter's Table 4.2 matrix (default: the run's own protocol; with --group, "
                    "all)")
    ev.add_argument("--annotators", help="with --protocol grid: pseudo-box annotators for the columns, "
                    "comma-separated, e.g. cam-pg,noisy-gt")
    ev.add_argument("--cfg-options", nargs="+", action=_KeyValues, default={}, metavar="KEY=VALUE",
                    help="evaluation settings only, e.g. eval.multi_contour=True eval.threshold_step=0.01")
    ev.add_argument("--device", help="auto, cpu, cuda, cuda:N (for runs whose maps were not saved)")
    ev.add_argument("--no-progress", action="store_true")
    ev.set_defaults(func=cmd_eval)

    sw = sub.add_parser("sweep", help="train a grid (or random search) of configurations, select one by the protocol")
    sw.add_argument("--plugin", help="method plugin (see `harness list`)")
    sw.add_argument("--protocol", help="protocol preset or file (default: realistic)")
    sw.add_argument("--dataset", help="dataset (default: synth-yto)")
    sw.add_argument("--grid", nargs="+", action=_KeyValues, default={}, metavar="KEY=V1,V2",
                    help="values to try, Cartesian product, e.g. classifier.lr=0.01,0.05 classifier.epochs=5,10")
    sw.add_argument("--space", nargs="+", action=_KeyValues, default={}, metavar="KEY=DIST",
                    help="random search: loguniform:A:B, uniform:A:B, int:A:B or choice:X:Y, with --trials")
    sw.add_argument("--trials", type=int, help="random-search draws (per grid point)")
    sw.add_argument("--seed", type=int, default=0, help="random-search seed")
    sw.add_argument("--cfg-options", nargs="+", action=_KeyValues, default={}, metavar="KEY=VALUE",
                    help="fixed overrides applied to every trial")
    sw.add_argument("--config", action="append", default=[], metavar="FILE")
    sw.add_argument("--run-root", help="folder for the sweep (default: config run.root = runs)")
    sw.add_argument("--resume", metavar="SWEEP_DIR", help="continue a sweep: finished trials are kept (the runner "
                    "options below may be given again)")
    sw.add_argument("--no-progress", action="store_true")
    _runner_arguments(sw, "trials", "selection is the same with every runner")
    sw.set_defaults(func=cmd_sweep)

    cp = sub.add_parser("compare", help="paired test of two runs on the same frames: CI of the CorLoc difference, p-value")
    cp.add_argument("run_a", metavar="RUN_A")
    cp.add_argument("run_b", metavar="RUN_B")
    cp.add_argument("--protocol", help="compare under this protocol (both runs evaluated with `harness eval` under it)")
    cp.add_argument("--split", default="test", choices=("test", "val"))
    cp.add_argument("--samples", type=int, default=2000, help="bootstrap resamples and permutations (default 2000)")
    cp.add_argument("--seed", type=int, default=0)
    cp.set_defaults(func=cmd_compare)

    an = sub.add_parser("annotate", help="make (or read from the cache) an annotator's pseudo-boxes; print their quality")
    an.add_argument("--annotator", default="cam-pg", help="annotator (see `harness list`)")
    an.add_argument("--dataset", default="synth-yto")
    an.add_argument("--split", default="val")
    an.add_argument("--cfg-options", nargs="+", action=_KeyValues, default={}, metavar="KEY=VALUE",
                    help="annotator and data settings, e.g. annotators.cam-pg.filter_fraction=0.3 data.seed=1")
    an.add_argument("--device", default="auto")
    an.add_argument("--no-progress", action="store_true")
    an.set_defaults(func=cmd_annotate)

    lst = sub.add_parser("list", help="list registered methods, CAM sources, protocols, datasets")
    lst.set_defaults(func=cmd_list)

    data = sub.add_parser("data", help="datasets: generate the synthetic ones, draw samples")
    data.set_defaults(_sub=data)
    dsub = data.add_subparsers(metavar="ACTION")
    synth = dsub.add_parser("synth", help="generate (or verify the cache of) a synthetic dataset")
    synth.add_argument("--name", default="synth-yto", choices=["synth-yto", "synth-cub"])
    synth.add_argument("--cfg-options", nargs="+", action=_KeyValues, default={}, metavar="KEY=VALUE",
                       help="generator parameters, e.g. data.seed=1 data.image_size=96")
    synth.set_defaults(func=cmd_data_synth)
    prep = dsub.add_parser("prepare", help="check a copy of a real dataset, index it, compare with the "
                           "published split sizes")
    prep.add_argument("name", help="ytov1, ytov2.2, cub, ilsvrc, openimages (or a synthetic one)")
    prep.add_argument("--root", help="the dataset folder (data.root); see docs/datasets.md for the layout")
    prep.add_argument("--check", default="eval", choices=["eval", "full", "headers", "none"],
                      help="images to open: eval = decode val/test, header of train (default); full = decode all")
    prep.add_argument("--cfg-options", nargs="+", action=_KeyValues, default={}, metavar="KEY=VALUE",
                      help="reader settings, e.g. data.train_frames_per_shot=10")
    prep.add_argument("--no-progress", action="store_true")
    prep.set_defaults(func=cmd_data_prepare)
    show = dsub.add_parser("show", help="write a PNG grid of frames with their GT boxes")
    show.add_argument("--name", default="synth-yto", help="dataset")
    show.add_argument("--split", default="val")
    show.add_argument("-n", type=int, default=16, help="number of frames")
    show.add_argument("--out", help="PNG path (default: <name>-<split>.png)")
    show.add_argument("--root", help="for a real dataset: its folder (data.root)")
    show.add_argument("--cfg-options", nargs="+", action=_KeyValues, default={}, metavar="KEY=VALUE")
    show.set_defaults(func=cmd_data_show)

    lb = sub.add_parser("leaderboard", help="the papers' tables with your runs inserted; or the run root's "
                        "leaderboard.md (no --table/--list/--match/--check)")
    lb.add_argument("--table", metavar="ID", help="a published table (see --list), rendered with --runs inserted")
    lb.add_argument("--runs", nargs="+", default=[], metavar="DIR", help="run directories or run roots")
    lb.add_argument("--format", default="md", choices=["md", "latex", "csv", "html"])
    lb.add_argument("--protocol", help="each run's re-evaluation under this preset (from `harness eval "
                    "--protocol all`) instead of its own result")
    lb.add_argument("--out", metavar="FILE", help="write the table to FILE instead of printing it (its folder is "
                    "created)")
    lb.add_argument("--bold", default="paper", choices=["paper", "max", "none"],
                    help="bold cells: the paper's own marks (default), each column's best among the ranked rows "
                    "on the real dataset, or none; reference rows are never bold")
    lb.add_argument("--uncertainty", default="none", choices=["none", "std", "ci"],
                    help="with --table: run cells as mean ± std over a seed group's seeds (std) or with their 95%% "
                    "bootstrap interval over test frames (ci); published rows stay as printed (default none)")
    lb.add_argument("--list", action="store_true", help="list the published tables")
    lb.add_argument("--match", action="store_true", help="the tables each of --runs fits")
    lb.add_argument("--check", action="store_true", help="re-derive every printed average of the transcriptions")
    lb.add_argument("--run-root", default="runs", help="without --table: regenerate this root's leaderboard.md")
    lb.set_defaults(func=cmd_leaderboard)

    rep = sub.add_parser("report", help="figures and report.html of a run; or an index page across runs")
    rep.add_argument("--run", metavar="RUN_DIR", help="write RUN_DIR/figures/*.png and RUN_DIR/report.html")
    rep.add_argument("--group", metavar="GROUP_DIR", help="a seed group's page: the seeds' spread per epoch, the "
                     "threshold curves' band, each seed's report linked (GROUP_DIR/report.html)")
    rep.add_argument("--index", metavar="HTML", help="write an index page of --runs with the published tables "
                     "they fit")
    rep.add_argument("--runs", nargs="+", default=[], metavar="DIR", help="with --index: run directories or roots")
    rep.add_argument("--tables", nargs="+", metavar="ID", help="with --index: these tables (default: every table "
                     "a run fits)")
    rep.add_argument("--bold", default="paper", choices=["paper", "max", "none"],
                     help="with --index: bold cells of the tables, as `harness leaderboard --bold`")
    rep.add_argument("--frames", type=int, default=16, help="test frames in the grid (default 16)")
    rep.add_argument("--device", help="for runs whose maps were not saved: auto, cpu, cuda")
    rep.add_argument("--no-progress", action="store_true")
    rep.set_defaults(func=cmd_report)
    return p


def cmd_run(args) -> int:
    from harness import config as config_mod, distributed, groups, results, runner

    group = args.seeds or (args.resume and groups.is_group(args.resume))
    runner_flags = [f for f, on in (("--runner", args.runner != "local"), ("--cpus-per-trial", args.cpus_per_trial),
                                    ("--gpus-per-trial", args.gpus_per_trial), ("--ray-address", args.ray_address),
                                    ("--partition", args.partition), ("--time-min", args.time_min)) if on]
    if group:
        if args.launcher == "torchrun":
            raise HarnessError("--seeds runs each seed as its own run: give --launcher torchrun to single runs, or "
                               "spread the seeds over processes with --runner ray|slurm-local")
        return _run_group(args)
    if runner_flags:
        raise HarnessError(f"{', '.join(runner_flags)} place the runs of a seed group: add --seeds S1,S2,...")
    if args.launcher == "torchrun":
        return _launch_torchrun(args)
    if args.resume:
        _refuse_with_resume(args, "--plugin", "--protocol", "--dataset", "--cfg-options", "--config", "--device",
                            "--run-root", what="a run continues with its saved config")
        run_dir = Path(args.resume)
        if not (run_dir / "config.py").is_file():
            raise HarnessError(f"--resume {run_dir}: not a run directory (no config.py)")
        runner.join_process_group(config_mod.load_run_config(run_dir).device)
    else:
        if not args.plugin:
            raise HarnessError("--plugin is required (see `harness list` for the methods)")
        # under torchrun (harness/distributed.py) rank 0 makes the run directory, the others join it
        runner.join_process_group(args.device or "auto")
        run_dir = runner.prepare(args.plugin, args.protocol or "gt-val", args.dataset or "synth-yto",
                                 args.cfg_options, args.run_root, args.device, args.config,
                                 progress=not args.no_progress) if distributed.is_main() else None
        run_dir = Path(distributed.broadcast(str(run_dir) if run_dir is not None else None))
    args._run_dir = run_dir
    if not distributed.is_main():
        runner.execute(run_dir, progress=False)
        return 0
    print(f"run directory: {run_dir}", file=sys.stderr)
    record = runner.execute(run_dir, progress=not args.no_progress)
    _print_record(record)
    print(f"result: {run_dir / results.RESULT_FILE}")
    if (run_dir / "report.html").is_file():
        print(f"report: {run_dir / 'report.html'}")
    _print_fitting_tables(run_dir)
    return 0


def _run_group(args) -> int:
    """``harness run --seeds ...``, or ``--resume GROUP_DIR``: every seed's run, then the group's record."""
    from harness import groups

    trial_runner = _make_runner(args)  # a bad runner option or a missing engine leaves nothing behind
    if args.resume:
        _refuse_with_resume(args, "--plugin", "--protocol", "--dataset", "--cfg-options", "--config", "--device",
                            "--run-root", "--seeds", what="a seed group continues with its saved members")
        group_dir = Path(args.resume)
        groups.load_spec(group_dir)
    else:
        if not args.plugin:
            raise HarnessError("--plugin is required (see `harness list` for the methods)")
        group_dir = groups.create(args.plugin, args.protocol or "gt-val", args.dataset or "synth-yto",
                                  groups.parse_seeds(args.seeds), args.cfg_options, args.config, args.run_root,
                                  args.device, progress=not args.no_progress)
        print(f"seed group: {group_dir}", file=sys.stderr)
    args._run_dir = group_dir
    record = groups.execute(group_dir, trial_runner, progress=not args.no_progress)
    print(groups.members_table(record))
    print()
    print(groups.metrics_table(record))
    print(f"\nresult: {group_dir / 'result.json'}")
    if (group_dir / "report.html").is_file():
        print(f"report: {group_dir / 'report.html'}")
    _print_fitting_tables(group_dir)
    return 0


def _launch_torchrun(args) -> int:
    """``harness run --launcher torchrun --nproc N ...``: this command again on N processes of this
    machine, started by torchrun (``python -m torch.distributed.run --standalone``)."""
    import subprocess

    if args.nproc < 1:
        raise HarnessError(f"--nproc {args.nproc}: use 1 or more processes")
    argv, skip = [], False
    for a in args._argv:  # the same command without the launcher's own flags
        if skip:
            skip = False
            continue
        if a in ("--launcher", "--nproc"):
            skip = True
            continue
        if a.startswith(("--launcher=", "--nproc=")):
            continue
        argv.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
           "-m", "harness", *argv]
    rc = subprocess.call(cmd)
    if rc != 0:
        print(f"harness: error: a rank of the {args.nproc}-process run failed (exit status {rc}); torchrun's "
              f"summary above names the rank and its error. Checkpoints already written are kept: continue "
              f"with `harness run --launcher torchrun --nproc {args.nproc} --resume RUN_DIR`", file=sys.stderr)
        return 2
    return 0


def _refuse_with_resume(args, *flags: str, what: str) -> None:
    """Flags that would change what is resumed are refused, not silently ignored."""
    given = [f for f in flags if getattr(args, f.lstrip("-").replace("-", "_"), None) not in (None, [], {}, False)]
    if given:
        raise HarnessError(f"--resume: {what}; drop {', '.join(given)}")


def _print_fitting_tables(run_dir: Path) -> None:
    from harness.leaderboard.runs import fitting_tables, load_record

    ids = fitting_tables([load_record(run_dir)])
    if ids:
        shown = ", ".join(ids[:6]) + (f" and {len(ids) - 6} more" if len(ids) > 6 else "")
        print(f"published tables this run fits: {shown}\n  harness leaderboard --table {ids[0]} --runs {run_dir}")


def _print_record(record: dict) -> None:
    from harness import results

    print(results.class_table(record))
    print()
    print(results.metrics_table(record))
    sel = record["selection"]
    print(f"\nselected {sel['stage']} epoch {sel['epoch']} ({sel['epoch_chosen_by']}), "
          f"tau {_taus(sel['tau'])} ({sel['tau_scope']}, {sel['tau_chosen_by']})")


def cmd_eval(args) -> int:
    from harness import io, results, runner

    if args.annotators and args.protocol != "grid":
        raise HarnessError("--annotators picks the columns of --protocol grid; add --protocol grid, or drop it")
    if bool(args.run) == bool(args.group):
        raise HarnessError("give --run RUN_DIR (a run) or --group GROUP_DIR (a seed group), one of them")
    if args.group:
        return _eval_group(args)
    run_dir = Path(args.run)
    if not (run_dir / "config.py").is_file():
        raise HarnessError(f"--run {run_dir}: not a run directory (no config.py)")
    if args.protocol in ("all", "grid"):
        protocols, out = _protocols(args, args.protocol)
        table = results.protocol_table if args.protocol == "all" else results.protocol_grid_table
        records = runner.reevaluate_many(run_dir, protocols, args.cfg_options, args.device, not args.no_progress,
                                         out_dir=out)
        folder = runner.evaluation_dir(run_dir, records[0]["settings_changed"], out)
        text = table(records)
        io.write_text(folder / "protocols.md", text + "\n")
        print(text)
        print(f"\nwritten: {folder}/")
        return 0
    record = runner.reevaluate(run_dir, args.protocol, args.cfg_options, args.device, not args.no_progress)
    _print_record(record)
    folder = runner.evaluation_dir(run_dir, record["settings_changed"])
    print(f"written: {folder / (record['protocol']['name'] + '.json')}")
    return 0


def _protocols(args, which: str) -> tuple[list, str]:
    """The protocols of ``--protocol all|grid`` (each checked before any work) and their folder."""
    from harness.registry import registry

    if which == "all":
        return registry().names("protocol"), "evaluations"
    from harness.protocol import grid

    names = [a for a in (args.annotators or "").split(",") if a]
    for name in names:
        registry().get("annotator", name)  # unknown names fail before any work
    return grid(names), "evaluations/grid"


def _eval_group(args) -> int:
    from harness import groups, io, runner

    group_dir = Path(args.group)
    groups.load_spec(group_dir)
    protocol = args.protocol or "all"
    protocols, out = _protocols(args, protocol) if protocol in ("all", "grid") else ([protocol], "evaluations")
    records = groups.reevaluate(group_dir, protocols, args.cfg_options, args.device, not args.no_progress, out)
    folder = runner.evaluation_dir(group_dir, records[0].get("settings_changed") or {}, out)
    text = groups.protocols_table(records) + "\n\n" + "\n\n".join(
        f"### {r['protocol']['name']}\n\n{groups.metrics_table(r)}" for r in records)
    io.write_text(folder / "protocols.md", text + "\n")
    print(text)
    print(f"\nwritten: {folder}/")
    return 0


def _taus(taus: list[float]) -> str:
    return f"{taus[0]:.3f}" if len(set(taus)) == 1 else ", ".join(f"{t:.3f}" for t in taus)


def cmd_sweep(args) -> int:
    from harness import sweep

    # Before the sweep directory exists: a bad runner option or a missing engine leaves nothing behind.
    trial_runner = _make_runner(args)
    if args.resume:
        _refuse_with_resume(args, "--plugin", "--protocol", "--dataset", "--grid", "--space", "--trials",
                            "--cfg-options", "--config", "--run-root", what="a sweep continues with its saved "
                            "specification")
        if args.seed != 0:
            raise HarnessError("--resume: a sweep continues with its saved specification; drop --seed")
        sweep_dir = Path(args.resume)
        if not (sweep_dir / sweep.SPEC_FILE).is_file():
            raise HarnessError(f"--resume {sweep_dir}: not a sweep directory (no {sweep.SPEC_FILE})")
    else:
        if not args.plugin:
            raise HarnessError("--plugin is required (see `harness list` for the methods)")
        grid = {k: (v if isinstance(v, list) else [v]) for k, v in args.grid.items()}
        spec = sweep.SweepSpec(args.plugin, args.protocol or "realistic", args.dataset or "synth-yto", grid,
                               dict(args.space), args.trials, args.seed, dict(args.cfg_options), list(args.config))
        sweep_dir = sweep.create(spec, args.run_root, progress=not args.no_progress)
        print(f"sweep directory: {sweep_dir}")
    args._run_dir = sweep_dir
    record = sweep.execute(sweep_dir, trial_runner=trial_runner, progress=not args.no_progress)
    print(sweep.trials_table(record))
    c = record["configuration"]
    print(f"\nselected trial {c['trial']} ({c['overrides']}): {record['configuration_chosen_by']}; "
          f"test CorLoc {record['metrics']['test']['corloc']:.1f}")
    print(f"result: {sweep_dir / 'result.json'}")
    return 0


def cmd_compare(args) -> int:
    from harness import compare

    if args.samples < 100:
        raise HarnessError(f"--samples {args.samples}: use at least 100")
    result = compare.compare(args.run_a, args.run_b, args.protocol, args.split, args.samples, args.samples, args.seed)
    print(compare.table(result))
    return 0


def cmd_annotate(args) -> int:
    from harness import config as config_mod
    from harness.annotators.base import pseudo_boxes
    from harness.registry import registry
    from harness.runner import annotator_defaults, build_dataset, resolve_device

    entry = registry().get("annotator", args.annotator)
    dataset_entry = registry().get("dataset", args.dataset)
    cfg = Config(config_mod.merge(annotator_defaults(), dataset_entry.layer()))
    bad = [k for k in args.cfg_options if not k.startswith(("annotators.", "data."))]
    if bad:
        raise HarnessError(f"harness annotate takes annotators.* and data.* options only; got {', '.join(bad)}")
    config_mod.apply_overrides(cfg, args.cfg_options)
    dataset = build_dataset(cfg.data, progress=not args.no_progress)
    pb = pseudo_boxes(entry.name, cfg.annotators[entry.name].to_dict(), dataset, args.split,
                      resolve_device(args.device), not args.no_progress)
    q = pb.quality
    rows = [[k, f"{v:.2f}" if isinstance(v, float) else v] for k, v in q.items() if not isinstance(v, dict)]
    rows += [[f"step {k} (mean IoU)", f"{v:.2f}"] for k, v in q.get("steps", {}).items()]
    print(tabulate(rows, headers=[f"{entry.name} on {dataset.name} {args.split}", ""], tablefmt="github"))
    print(f"\n{len(pb.boxes)} pseudo-boxes, key {pb.key}")
    return 0


def cmd_list(args) -> int:
    from harness.registry import registry

    reg = registry()
    rows = [[e.kind, e.name + (f" ({', '.join(e.aliases)})" if e.aliases else ""), e.description,
             f"{e.distribution} [{e.plugin}]"] for e in reg.all_entries()]
    print(tabulate(rows, headers=["kind", "name", "description", "from"], tablefmt="simple"))
    if reg.failures:
        print("\nplugin problems (what they register is skipped; everything else works):")
        for f in reg.failures:
            print(f"  {f.plugin} ({f.distribution}): {f.error}")
    if reg.warnings:
        print("\nplugin warnings:")
        for f in reg.warnings:
            print(f"  {f.plugin} ({f.distribution}): {f.error}")
    return 0


def _dataset_config(name: str, overrides: dict) -> tuple[object, Config]:
    from harness import config as config_mod
    from harness.registry import registry

    entry = registry().get("dataset", name)
    cfg = Config(entry.layer())
    config_mod.apply_overrides(cfg, overrides)
    return entry, cfg


def cmd_data_synth(args) -> int:
    from harness.data.synth import summary
    from harness.runner import build_dataset

    _, cfg = _dataset_config(args.name, args.cfg_options)
    ds = build_dataset(cfg.data)
    print(summary(ds))
    print(f"\nidentity {ds.identity}; cached in {ds.info.get('root', '?')}")
    return 0


def cmd_data_prepare(args) -> int:
    from harness.data.prepare import prepare
    from harness.data.synth import summary
    from harness.runner import build_dataset

    overrides = {**args.cfg_options, **({"data.root": args.root} if args.root else {})}
    entry, cfg = _dataset_config(args.name, overrides)
    reader = getattr(entry.factory, "reader", None)
    if reader is None:  # a synthetic or third-party dataset: building it is its check
        ds = build_dataset(cfg.data, progress=not args.no_progress)
        print(summary(ds) if args.name.startswith("synth-") else f"{ds.name}: {ds.identity}")
        return 0
    print(prepare(reader(), cfg.data.to_dict(), args.check, progress=not args.no_progress))
    return 0


def cmd_data_show(args) -> int:
    from harness.data.show import save_grid
    from harness.runner import build_dataset

    overrides = {**args.cfg_options, **({"data.root": args.root} if args.root else {})}
    _, cfg = _dataset_config(args.name, overrides)
    ds = build_dataset(cfg.data)
    out = Path(args.out or f"{args.name}-{args.split}.png")
    ds.split(args.split)  # a clear error for an unknown split before drawing
    save_grid(ds, args.split, out, n=args.n)
    print(f"wrote {out}")
    return 0


def cmd_leaderboard(args) -> int:
    from harness.leaderboard import commands

    modes = [f for f, on in (("--list", args.list), ("--check", args.check), ("--match", args.match),
                             ("--table", bool(args.table))) if on]
    if len(modes) > 1:
        raise HarnessError(f"{' and '.join(modes)} are different commands: give one of them")
    if (args.list or args.check) and args.runs:
        raise HarnessError(f"{modes[0]} takes no --runs (they go with --table ID or --match)")
    if args.list:
        print(commands.list_tables())
        return 0
    if args.check:
        text, ok = commands.check_report()
        print(text)
        return 0 if ok else 1
    if args.match:
        if not args.runs:
            raise HarnessError("--match needs --runs DIR ...")
        print(commands.match(args.runs))
        return 0
    if args.table:
        text, skipped = commands.table(args.table, args.runs, args.format, args.protocol, args.bold,
                                       args.uncertainty)
        for why in skipped:
            print(f"harness: left out {why}", file=sys.stderr)
        if args.out:
            print(commands.write_output(args.out, text))
        else:
            print(text, end="")
        return 0
    if args.runs or args.format != "md" or args.protocol or args.out or args.bold != "paper" \
            or args.uncertainty != "none":
        raise HarnessError("--runs/--format/--protocol/--out/--bold/--uncertainty go with --table ID (see --list)")
    root = Path(args.run_root)
    if not root.is_dir():
        raise HarnessError(f"run root {root} does not exist; pass --run-root DIR")
    path, listed, skipped = commands.regenerate(root)
    print(path.read_text())
    for why in skipped:
        print(f"harness: left out of the leaderboard: {why}", file=sys.stderr)
    print(f"wrote {path} ({listed} run{'' if listed == 1 else 's'}"
          + (f"; {len(skipped)} damaged record{'' if len(skipped) == 1 else 's'} left out, named above)"
             if skipped else ")"))
    return 0


def cmd_report(args) -> int:
    from harness.leaderboard import commands, render
    from harness.leaderboard.runs import fitting_tables, load_record, run_dirs
    from harness.leaderboard.tables import get
    from harness.report import report_summary, write_index, write_report

    if sum(map(bool, (args.run, args.index, args.group))) != 1:
        raise HarnessError("give --run RUN_DIR (one run's report), --group GROUP_DIR (a seed group's) or --index HTML "
                           "--runs DIR ... (a page across runs)")
    if args.frames < 1:
        raise HarnessError(f"--frames {args.frames}: must be at least 1")
    progress = not args.no_progress
    if args.group:
        from harness.report.group import write_group_report

        page = write_group_report(args.group, progress=progress)
        print(f"wrote {page}")
        return 0
    if args.run:
        page = write_report(args.run, args.frames, progress, args.device)
        summary, damaged = report_summary(page)
        for why in damaged:
            print(f"harness: left out {why}", file=sys.stderr)
        print(f"wrote {page} ({summary})")
        return 0
    dirs = run_dirs(args.runs) if args.runs else []
    if not dirs:
        raise HarnessError("--index needs --runs DIR ... (run directories or run roots)")
    created = commands.missing_folder(args.index)  # before the work of rendering every run's report
    ids = args.tables or fitting_tables([load_record(d) for d in dirs])
    tables, skipped = [], []
    for n, table_id in enumerate(ids):
        out = render.build(get(table_id), dirs, bold=args.bold)
        skipped += [why for why in out.damaged if why not in skipped]
        style = f"<style>{render.HTML_STYLE}</style>" if n == 0 else ""
        tables.append((out.table.title, style + render.html_fragment(out)))
    for why in skipped:
        print(f"harness: left out {why}", file=sys.stderr)
    page = write_index(args.index, dirs, tables, progress, args.frames)
    print(f"{commands.wrote(page, created)} ({len(dirs)} runs, {len(tables)} tables)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
