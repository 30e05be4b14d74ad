"""One run: train a method's stages, evaluate checkpoints, select as the protocol says,
write the result record. A fresh run and a resumed one go through the same code, and
every epoch is seeded from (seed, stage, epoch), so a resumed run ends where an
uninterrupted one would."""
from __future__ import annotations

import datetime as dt
import inspect
import json
import logging
import os
import random
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from harness import __version__, distributed, evalstore, io, results, stage_cache
from harness import config as config_mod
from harness.data.frame_sampler import FramesPerShotSampler, effective_frames_per_shot, frames_per_shot
from harness.data.loader import RankBatches, check_finite_images, shuffled_batches, train_loader
from harness.errors import HarnessError, plugin_code
from harness.evalstore import EvalStore, check_eval_config, split_metrics
from harness.evaluation import corloc_at, select_threshold, threshold_list
from harness.method import Method, checked_loss, checked_optimizer
from harness.protocol import Protocol
from harness.registry import Entry, registry
from harness.selection import needs, select, supervision_target

log = logging.getLogger("harness")
Callback = Callable[[str, int], None]


# ---------------------------------------------------------------- run directories


def prepare(
    plugin: str,
    protocol: str,
    dataset: str,
    overrides: dict | None = None,
    run_root: str | Path | None = None,
    device: str | None = None,
    config_files: list[str | Path] = (),
    progress: bool = True,
) -> Path:
    """Compose the config of a new run and write it into a fresh run directory. Everything
    that can be checked before training is checked before the directory exists (config
    values, device, dataset, the method's construction), so a mistake leaves nothing behind."""
    cfg = compose(plugin, protocol, dataset, overrides, device, config_files)
    if run_root is not None:
        cfg.run.root = str(run_root)
    check_buildable(cfg, progress)
    return create_run_dir(cfg)


def check_buildable(cfg, progress: bool = True) -> None:
    """What a run needs before it starts: a run root that can be a folder, the dataset, and a
    method its plugin can build."""
    root = Path(cfg.run.root)
    blocked = next((p for p in (root, *root.parents) if p.exists()), None)
    if blocked is not None and not blocked.is_dir():
        raise HarnessError(f"the run root {root} cannot be created: {blocked} is a file; pass --run-root DIR")
    data = load_dataset(cfg, progress)
    build_method(cfg, data.num_classes)


def create_run_dir(cfg) -> Path:
    """A fresh run directory under ``cfg.run.root`` holding the run's config."""
    run_dir = _new_run_dir(Path(cfg.run.root), method_label(cfg), cfg.protocol.name)
    io.write_text(run_dir / "config.py", config_mod.dump_text(cfg))
    return run_dir


def compose(plugin: str, protocol: str, dataset: str, overrides: dict | None = None, device: str | None = None,
            config_files: list[str | Path] = ()) -> "config_mod.Config":
    """The checked config of a run: harness base <- plugin defaults <- protocol preset <-
    dataset preset <- experiment ``config_files`` <- ``overrides``."""
    reg = registry()
    method_entry = reg.get("method", plugin)
    protocol_layer = _protocol_layer(protocol)
    dataset_entry = reg.get("dataset", dataset)
    overrides = dict(overrides or {})
    if device is not None:
        overrides["device"] = device
    cfg = config_mod.compose(method_entry, protocol_layer, dataset_entry,
                             defaults=annotator_defaults(), method_name=f"plugin {_who(method_entry)}")
    explicit: list[str] = []
    for path in config_files:
        layer = config_mod.file_overrides(path)
        _reset_source_options(cfg, layer)
        config_mod.apply_file(cfg, path)
        explicit += list(layer)
    _reset_source_options(cfg, overrides)
    config_mod.apply_overrides(cfg, overrides)
    explicit += list(overrides)
    if not isinstance(cfg.get("method"), dict):
        cfg.method = {}  # a plugin whose defaults set no method section
    cfg.method.name = method_entry.name  # aliases resolve to the registered name
    _inherit_annotator_classifiers(cfg, explicit)
    config_mod.check_values(cfg)
    frames_per_shot(cfg)
    check_eval_config(cfg)
    resolve_device(cfg.device)
    _check_annotators(cfg, Protocol.from_config(cfg.protocol), explicit)  # fail now, not after training
    return cfg


def _check_annotators(cfg, protocol: Protocol, explicit: list[str]) -> None:
    """Build the annotators the protocol selects with, and those whose settings were changed:
    an unknown annotator or a bad setting fails before any work (the others are built when an
    evaluation needs them)."""
    from harness.annotators.base import build_annotator

    names = {t for _, t in needs(protocol) if t not in ("gt", "cls")}
    names |= {k.split(".")[1] for k in explicit if k.startswith("annotators.") and k.count(".") >= 2}
    for name in sorted(names):
        entry = registry().get("annotator", name)
        settings = (cfg.get("annotators") or {}).get(entry.name)
        build_annotator(entry.name, settings.to_dict() if hasattr(settings, "to_dict") else settings)


def _who(entry: Entry) -> str:
    return f"{entry.name!r} ({entry.distribution})"


def build_method(cfg, num_classes: int, entry: Entry | None = None) -> Method:
    """The run's method from its plugin's factory; a factory that raises, or returns something
    that is not a usable :class:`Method`, is an error naming the plugin and its distribution."""
    entry = entry or registry().get("method", cfg.method.name)
    try:
        method = entry.factory(cfg, num_classes)
        stages = method.stages if isinstance(method, Method) else None
    except HarnessError as exc:
        raise HarnessError(f"method {_who(entry)}: {exc}") from exc
    except Exception as exc:  # a third-party factory may raise anything
        raise HarnessError(f"method {_who(entry)} failed to build: {type(exc).__name__}: {exc}") from exc
    if not isinstance(method, Method):
        raise HarnessError(f"method {_who(entry)} failed to build: its factory returned a {type(method).__name__}, "
                           f"not a harness.method.Method")
    problem = _stages_problem(stages)
    if problem:
        raise HarnessError(f"method {_who(entry)} failed to build: {problem}")
    return method


def _stages_problem(stages) -> str | None:
    from harness.method import Stage
    from harness.names import NAME_RULE, is_safe_name

    if not isinstance(stages, (list, tuple)) or not stages:
        return f"Method.stages must be a non-empty list of harness.method.Stage, got {stages!r:.60}"
    for st in stages:
        if not isinstance(st, Stage):
            return f"Method.stages holds a {type(st).__name__}, not a harness.method.Stage"
        name = getattr(st, "name", None)
        if not is_safe_name(name):
            return f"stage name {name!r} is not a valid name (it names checkpoint files: {NAME_RULE})"
        epochs = getattr(st, "epochs", None)
        if getattr(st, "trains", True) is False and epochs != 1:
            return f"stage {name!r} trains nothing, so it has one epoch, not epochs={epochs!r}"
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
            return f"stage {name!r} has epochs={epochs!r}; it must be a whole number >= 1"
        size = getattr(st, "batch_size", None)
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            return f"stage {name!r} has batch_size={size!r}; it must be a whole number >= 1"
    return None


_DATASET_MEMO: dict[str, object] = {}


def load_dataset(cfg, progress: bool = True):
    """The run's dataset (the last one loaded is kept: a run prepares and executes with it)."""
    key = json.dumps(cfg.data.to_dict(), sort_keys=True, default=str)
    if key not in _DATASET_MEMO:
        dataset = build_dataset(cfg.data, progress)
        _DATASET_MEMO.clear()
        _DATASET_MEMO[key] = dataset
    return _DATASET_MEMO[key]


def build_dataset(data_cfg, progress: bool = True):
    """The dataset ``data_cfg.name`` from its plugin's factory; a factory that raises, or returns
    something that is not a dataset, is an error naming the plugin and its distribution."""
    from harness.data.base import WsolDataset

    entry = registry().get("dataset", data_cfg.name)
    try:
        dataset = entry.factory(data_cfg, progress=progress)
    except HarnessError:
        raise
    except Exception as exc:  # a third-party factory may raise anything
        raise HarnessError(f"dataset {_who(entry)} failed to load: {type(exc).__name__}: {exc}") from exc
    if not isinstance(dataset, WsolDataset):
        raise HarnessError(f"dataset {_who(entry)}: its factory returned a {type(dataset).__name__}, not a "
                           f"harness.data.base.WsolDataset")
    return dataset


def method_label(cfg) -> str:
    """The method's name in run names, logs and leaderboard rows: the plugin, plus the CAM
    source when the run swapped in another one than the plugin's own (``cam+eigencam``), so a
    swapped source is never passed off as the plugin's method."""
    source = cfg.method.get("cam_source")
    if not source:
        return cfg.method.name
    entry = registry().get("method", cfg.method.name)
    own = (entry.layer().get("method") or {}).get("cam_source")
    return cfg.method.name if source == own else f"{cfg.method.name}+{source}"


def _method_who(cfg) -> str:
    """How errors from a method's own code name it (an annotator's classifier has no method)."""
    return f"method {method_label(cfg)!r}" if "method" in cfg else "the annotator's classifier"


def _reset_source_options(cfg, layer: dict) -> None:
    """A layer that names another CAM source (``method.cam_source``) brings that source's own
    options: ``method.options`` becomes its defaults before the layer's other keys apply, so
    ``method.options.<key>`` checks against the new source, not the old one."""
    source = layer.get("method.cam_source")
    if not source or "options" not in cfg.method or source == cfg.method.get("cam_source"):
        return
    entry = registry().get("cam_source", source)
    cfg.method.options = entry.option_defaults()


def _inherit_annotator_classifiers(cfg, explicit: list[str]) -> None:
    """A pseudo-box annotator that scores with a classifier uses the run's classifier settings
    (so it is the very classifier stage the run trains or fetches from the stage cache), except
    the keys set apart for it (``annotators.<name>.classifier.<key>`` in a --config file or
    --cfg-options)."""
    if "classifier" not in cfg:
        return
    run_classifier = cfg.classifier.to_dict()
    for name, settings in (cfg.get("annotators") or {}).items():
        if not isinstance(settings, dict) or not isinstance(settings.get("classifier"), dict):
            continue
        prefix = f"annotators.{name}.classifier."
        if prefix[:-1] in explicit:  # the whole section was set apart
            continue
        own = config_mod.flatten(settings["classifier"].to_dict() if hasattr(settings["classifier"], "to_dict")
                                 else settings["classifier"])
        merged = dict(config_mod.flatten(run_classifier))
        merged.update({k: v for k, v in own.items() if prefix + k in explicit or
                       any(e.startswith(prefix + k + ".") for e in explicit) or k not in merged})
        cfg.annotators[name].classifier = config_mod.unflatten(merged)


def annotator_defaults() -> dict:
    """Every registered annotator's settings, so a run's config names the settings of the
    pseudo-boxes it is (or later may be) selected with, and ``--cfg-options annotators.*``
    can change them."""
    from harness.annotators.base import default_settings

    return {"annotators": {name: default_settings(name) for name in registry().names("annotator")}}


def _protocol_layer(protocol: str):
    """A registered preset by name or alias, or a user's protocol config file."""
    path = Path(protocol)
    if path.suffix in (".py", ".yaml", ".yml", ".json") or "/" in protocol or "\\" in protocol:
        if not path.is_file():
            raise HarnessError(f"protocol file {path} does not exist (give a preset name from `harness list`, "
                               f"or the path of a protocol file)")
        layer = config_mod.read_file(path)
        if "protocol" not in layer:
            raise HarnessError(f"{path} defines no `protocol = dict(...)`")
        return {"protocol": layer["protocol"]}
    entry = registry().get("protocol", protocol)
    layer = entry.layer()
    if not isinstance(layer.get("protocol"), dict):
        raise HarnessError(f"protocol {_who(entry)}: its config sets no protocol = dict(name=..., ...)")
    return {"protocol": layer["protocol"]}


def _new_run_dir(root: Path, plugin: str, protocol: str) -> Path:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HarnessError(f"cannot create the run root {root}: {exc}. Pass --run-root DIR") from exc
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}-{plugin}-{protocol}"
    for n in range(1, 1000):
        # Runs started within the same second (sweeps, tests) get a counter after the time.
        run_dir = root / (base if n == 1 else f"{stamp}-{n}-{plugin}-{protocol}")
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue
        except OSError as exc:
            raise HarnessError(f"cannot write in the run root {root}: {exc}. Pass --run-root DIR") from exc
    raise HarnessError(f"too many runs named {base} under {root}")


# ---------------------------------------------------------------- seeding and devices


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, stage_index: int, epoch: int) -> int:
    return seed * 1_000_003 + stage_index * 10_007 + epoch


def join_process_group(device_name: str | None) -> bool:
    """Under torchrun, join its process group (gloo on CPU, NCCL on CUDA); False without one."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    return distributed.init_from_env(resolve_device(device_name or "auto"))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise HarnessError(f"device {name!r} is not a torch device: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HarnessError(f"device {name!r} requested but CUDA is not available here; use --device cpu")
    return device


# ---------------------------------------------------------------- checkpoints


class Checkpoints:
    """``checkpoints/<stage index>-<stage>-epoch<NNN>.pt``, each written atomically. A
    checkpoint holds tensors and plain data only and is read with ``weights_only=True``: a
    crafted file in a run directory (or in the stage cache, which is linked into runs) is
    refused, never executed."""

    _NAME = re.compile(r"^(\d+)-(.+)-epoch(\d{3,})\.pt$")

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir) / "checkpoints"

    def path(self, stage_index: int, stage: str, epoch: int) -> Path:
        return self.dir / f"{stage_index}-{stage}-epoch{epoch:03d}.pt"

    def save(self, stage_index: int, stage: str, epoch: int, state: dict) -> None:
        with io.atomic_path(self.path(stage_index, stage, epoch)) as tmp:
            torch.save(state, tmp)
            # read back as it will be on resume (mmap: no tensor data is read), so that a state
            # that is more than tensors and plain data fails now, not in a resume loop
            try:
                io.load_tensors(tmp, mmap=True)
            except HarnessError:
                raise HarnessError(
                    f"the state of stage {stage!r} cannot be checkpointed: it holds more than tensors and plain "
                    f"data; keep tensors, numbers, strings, lists and dicts in the modules' state_dict() "
                    f"(checkpoints are read with weights_only=True)") from None

    def found(self) -> list[tuple[int, str, int]]:
        """(stage index, stage name, epoch) of every checkpoint on disk, in training order."""
        out = []
        for p in self.dir.glob("*.pt"):
            m = self._NAME.match(p.name)
            if m:
                out.append((int(m.group(1)), m.group(2), int(m.group(3))))
        return sorted(out)

    def done(self) -> list[tuple[int, int]]:
        """(stage index, epoch) of every checkpoint on disk, in training order."""
        return [(si, epoch) for si, _, epoch in self.found()]

    def set_aside_damaged(self) -> list[Path]:
        """Rename every checkpoint whose data fails its zip checksums to ``*.pt.damaged`` (kept,
        never deleted): resume then treats it as missing and trains that epoch again, instead of
        trusting a file that fails later. Reads every checkpoint once; run on resume only."""
        import zipfile

        damaged = []
        for si, name, epoch in self.found():
            path = self.path(si, name, epoch)
            try:
                with zipfile.ZipFile(path) as z:
                    bad = z.testzip() is not None
            except (OSError, zipfile.BadZipFile, RuntimeError, EOFError):
                bad = True
            if bad:
                aside = path.with_name(path.name + ".damaged")
                path.replace(aside)
                log.warning("checkpoint %s is damaged: kept as %s, and that epoch is trained again", path.name,
                            aside.name)
                damaged.append(aside)
        return damaged

    def stage_name(self, stage_index: int) -> str:
        for si, name, _ in self.found():
            if si == stage_index:
                return name
        raise HarnessError(f"no checkpoint of stage {stage_index} in {self.dir}")

    def load(self, stage_index: int, stage: str, epoch: int) -> dict:
        path = self.path(stage_index, stage, epoch)
        try:
            state = io.load_tensors(path)
        except HarnessError as exc:
            raise HarnessError(f"{exc}; delete it and `harness run --resume {self.dir.parent}` trains that epoch "
                               f"(and the later ones) again") from exc
        if not isinstance(state, dict) or "method" not in state:
            raise HarnessError(f"checkpoint {path} is not a harness checkpoint (no 'method' state); delete it "
                               f"and `harness run --resume {self.dir.parent}` trains that epoch again")
        return state


def resume_point(stages, done: list[tuple[int, int]]) -> tuple[tuple[int, int] | None, tuple[int, int] | None,
                                                                list[tuple[int, int]]]:
    """Where training continues: ``(last checkpoint before the first missing epoch, first missing
    (stage index, epoch) or None when all are there, the checkpoints after that gap)``. Training
    is sequential, so a missing middle checkpoint is retrained from the one before it, and the
    checkpoints after it are trained again (and overwritten) rather than trusted."""
    have = set(done)
    last = None
    for si, stage in enumerate(stages):
        for epoch in range(1, stage.epochs + 1):
            if (si, epoch) not in have:
                return last, (si, epoch), sorted(d for d in have if d > (si, epoch))
            last = (si, epoch)
    return last, None, []


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """One process at a time in a run directory: a second ``harness run --resume`` (or an
    ``harness eval``) on a directory in use fails at once instead of training beside it. The
    operating system drops the lock when its process dies, so a killed run never stays locked."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(Path(run_dir) / ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise HarnessError(f"{run_dir} is in use by another harness process; wait for it to end (a run "
                           f"directory is trained, resumed and re-evaluated by one process at a time)") from None
    except OSError as exc:
        raise io.write_error(Path(run_dir) / ".lock", exc) from exc
    try:
        yield
    finally:
        lock.release()


# ---------------------------------------------------------------- the run


class _RunLog:
    """Log to ``log.txt`` in the run directory and to the console above the progress bars."""

    def __init__(self, run_dir: Path, console: bool = True):
        try:
            self.handlers = [logging.FileHandler(run_dir / "log.txt")] + ([_TqdmHandler()] if console else [])
        except OSError as exc:
            raise io.write_error(Path(run_dir) / "log.txt", exc) from exc
        fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
        for h in self.handlers:
            h.setFormatter(fmt)
            log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False
        self.console_before = getattr(log, "run_console", False)
        log.run_console = self.console_before or console  # the CLI's warning printer stays quiet meanwhile

    def close(self) -> None:
        for h in self.handlers:
            log.removeHandler(h)
            h.close()
        log.run_console = self.console_before


class _TqdmHandler(logging.Handler):
    def emit(self, record):
        tqdm.write(self.format(record))


def execute(run_dir: str | Path, progress: bool = True, callbacks: Iterable[Callback] = ()) -> dict:
    """Run (or resume) the run in ``run_dir`` to its result record and every other artefact
    it promises (one checkpoint and one metrics line per epoch, the leaderboard row, the report).
    A finished run is only completed: its result is returned as written."""
    run_dir = Path(run_dir)
    cfg = config_mod.load_run_config(run_dir)
    if not distributed.is_main():
        return _execute_other_rank(run_dir, cfg)
    with run_lock(run_dir):
        run_log = _RunLog(run_dir)
        try:
            ckpts = Checkpoints(run_dir)
            ckpts.set_aside_damaged()
            record = _finished_result(run_dir)
            finished = distributed.broadcast(record is not None)
            if not finished:
                record = _execute(run_dir, cfg, progress, list(callbacks))
            else:
                log.info("%s has its result already; completing its other artefacts", run_dir.name)
                _complete_metrics_lines(run_dir, cfg, ckpts, progress)
            _complete(run_dir, cfg, progress)
            return record
        finally:
            run_log.close()


def _execute_other_rank(run_dir: Path, cfg) -> dict:
    """A rank other than 0 under torchrun: it trains and evaluates its share beside rank 0 and
    writes nothing in the run directory (no lock, no log file, no record)."""
    log.setLevel(logging.WARNING)
    if distributed.broadcast(None):  # rank 0 found the run finished
        return {}
    return _execute(run_dir, cfg, False, [])


def _finished_result(run_dir: Path) -> dict | None:
    """The run's result when it is valid and every checkpoint it was selected from is still
    there; None (train what is missing, select again) otherwise. A damaged result is kept
    aside as ``result.json.damaged``, never silently overwritten."""
    path = run_dir / results.RESULT_FILE
    if not path.is_file():
        return None
    try:
        record = results.read_record(path)
    except HarnessError as exc:
        aside = next(a for n in range(1, 10_000) for a in [path.with_name(
            results.RESULT_FILE + ".damaged" + ("" if n == 1 else f"-{n}"))] if not a.exists())
        path.replace(aside)
        log.warning("%s; moved it to %s and selecting again", exc, aside.name)
        return None
    epochs = sorted(int(e) for e in record["selection"].get("epoch_scores", {}))
    stage = record["selection"].get("stage")
    have = {(name, e) for _, name, e in Checkpoints(run_dir).found()}
    missing = [e for e in epochs if (stage, e) not in have]
    if missing:
        log.warning("checkpoint(s) of %s epoch %s are missing: training them again and selecting again",
                    stage, ", ".join(map(str, missing)))
        return None
    return record


def _complete_metrics_lines(run_dir: Path, cfg, ckpts: Checkpoints, progress: bool) -> None:
    """A finished run whose metrics.jsonl lost lines gets them back, validation numbers included."""
    have = {(x["stage"], x["epoch"]) for x in read_metrics_lines(run_dir)}
    if all((name, epoch) in have for _, name, epoch in ckpts.found()):
        return
    device = resolve_device(cfg.device)
    dataset = load_dataset(cfg, progress)
    method = build_method(cfg, dataset.num_classes).to(device)
    store = EvalStore(run_dir, cfg, dataset, method, ckpts, device, progress)
    for split, target in needs(Protocol.from_config(cfg.protocol)):
        if target not in ("gt", "cls"):
            store.default_targets.setdefault(split, set()).add(target)
    _sync_metrics_lines(run_dir, ckpts, store, len(method.stages) - 1)


def _complete(run_dir: Path, cfg, progress: bool) -> None:
    """The artefacts that follow the result: the run root's leaderboard and the report."""
    results.write_leaderboard(run_dir.parent)
    if cfg.run.get("report", True) and not (run_dir / "report.html").is_file():
        _write_report(run_dir, progress)


def _execute(run_dir: Path, cfg, progress: bool, callbacks: list[Callback]) -> dict:
    started = time.time()
    protocol = Protocol.from_config(cfg.protocol)
    check_eval_config(cfg)
    frames_per_shot(cfg)  # a run directory's config edited by hand fails before any work
    device = distributed.rank_device(resolve_device(cfg.device))
    dataset = load_dataset(cfg, progress)
    seed_everything(cfg.seed)
    method = build_method(cfg, dataset.num_classes).to(device)
    log.info("run %s: %s on %s (%s), device %s", run_dir.name, method_label(cfg), dataset.name, dataset.identity,
             device)

    ckpts = Checkpoints(run_dir)
    store = EvalStore(run_dir, cfg, dataset, method, ckpts, device, progress)
    for split, target in needs(protocol):
        # pseudo-boxes exist before training, as in the chapter (under torchrun the ranks make them
        # together, rank 0 holding the cache's lock and writing it: annotators/base.py)
        store.need(split, target)
    resumed_from = _train(method, dataset, cfg, device, ckpts, store, run_dir, progress, callbacks)

    last = len(method.stages) - 1
    epochs = [e for s, e in ckpts.done() if s == last and e <= method.stages[last].epochs]
    selection, metrics = select_and_measure(cfg, protocol, store, epochs)
    main = distributed.is_main()  # only rank 0's record is written: the other ranks skip the bootstrap
    outcomes = selected_outcomes(store, selection) if main else {}
    if cfg.eval.save_maps == "selected":
        store.prune_maps(selection.epoch)
    record = {
        **_record(run_dir, cfg, protocol, dataset, selection, method.stages[last].name, metrics, store),
        "seed": cfg.seed,
        "device": str(device),
        "resumed_from": resumed_from,
        "wall_time_s": round(time.time() - started, 2),
        "config": cfg.to_dict(),
        "uncertainty": intervals(outcomes, bootstrap_samples(cfg), int(cfg.seed)),
    }
    if record["train_frames"]["per_shot_per_epoch"]:
        record["train_frames"]["stages_with_own_batches"] = _own_batch_stages(method, dataset, cfg)
    facts = _method_provenance(method, cfg)
    if facts:
        record["method_provenance"] = facts
    if distributed.active():
        record["distributed"] = {"world_size": distributed.world_size(), "backend": torch.distributed.get_backend()}
    if not main:
        return record
    io.save_npz(run_dir / ("result" + OUTCOMES_SUFFIX), outcomes)  # before the result: a result implies them
    results.write_result(run_dir, record)
    tau = record["selection"]["tau"]
    log.info("selected epoch %d, tau %s; test CorLoc %.2f", selection.epoch,
             "Otsu per map" if tau is None else f"{tau[0]:.3f}", metrics["test"]["corloc"])
    return record


def _write_report(run_dir: Path, progress: bool) -> None:
    """The run's figures and report.html; the result is already written, so a failure here
    costs only the report (`harness report --run DIR` makes it later)."""
    from harness.report import write_report

    try:
        page = write_report(run_dir, progress=progress)
        log.info("report: %s", page)
    except (HarnessError, OSError, ValueError) as exc:
        log.warning("no report for %s (%s); the result is saved, try `harness report --run %s`", run_dir, exc, run_dir)


def select_and_measure(cfg, protocol: Protocol, store: EvalStore, epochs: list[int]):
    """The protocol's selection over ``epochs`` and every metric of val and test at it (and,
    under pseudo-box supervision, of the selection split against the pseudo-boxes)."""
    iou = cfg.eval.iou_threshold
    selection = select(protocol, epochs, store.boxes, iou)
    metrics = {
        split: split_metrics(store.record(split, selection.epoch), selection.tau_index, iou)
        for split in ("val", "test")
    }
    target = supervision_target(protocol)
    if target not in ("gt", "cls"):
        split = protocol.selection_split
        rec = store.record(split, selection.epoch, targets=(target,))
        metrics[f"{split}@{target}"] = split_metrics(rec, selection.tau_index, iou, target)
    return selection, metrics


def selected_outcomes(store: EvalStore, selection) -> dict[str, np.ndarray]:
    """Per split, per evaluated frame, whether its box was right at the selected epoch and
    threshold (``<split>_correct``), with ``<split>_label`` and ``<split>_cluster`` (its video):
    what the intervals and ``harness compare`` resample. Empty for records that predate the
    per-frame outcomes."""
    out = {}
    for split in ("val", "test"):
        o = store.outcomes(split, selection.epoch)
        if o is None:
            continue
        if selection.tau_index is None:  # each map's own Otsu box
            correct = o["otsu_correct"]
        else:
            rows = np.unpackbits(o["correct"], axis=1, count=int(o["thresholds"])).astype(bool)
            correct = rows[np.arange(len(rows)), np.asarray(selection.tau_index)[o["label"]]]
        out.update({f"{split}_correct": correct, f"{split}_label": o["label"], f"{split}_cluster": o["cluster"]})
    return out


def intervals(outcomes: dict[str, np.ndarray], n_boot: int, seed: int) -> dict:
    """95% bootstrap intervals of CorLoc per split from :func:`selected_outcomes` (or a seed
    group's averaged outcomes), resampling whole videos (harness/evaluation/uncertainty.py)."""
    from harness.evaluation.uncertainty import bootstrap_ci

    out = {}
    for split in ("val", "test"):
        if f"{split}_correct" in outcomes:
            ci = bootstrap_ci(outcomes[f"{split}_correct"], outcomes[f"{split}_label"], outcomes[f"{split}_cluster"],
                              n_boot=n_boot, seed=seed)
            out[split] = {"corloc": {**ci.to_dict(), "resampled": "videos"}}
    return out


def bootstrap_samples(cfg) -> int:
    return int(cfg.eval.get("bootstrap_samples", 1000))


OUTCOMES_SUFFIX = ".outcomes.npz"  # beside result.json and each evaluations/<protocol>.json


def pseudo_box_summary(store: EvalStore) -> dict:
    """Every annotator the run's selection read: its cache key, settings and quality on GT."""
    out: dict = {}
    for (split, name), pb in sorted(store._pseudo.items()):
        entry = out.setdefault(name, {"key": pb.key, "quality": {}})
        entry["quality"][split] = pb.quality
    return out


def _record(run_dir: Path, cfg, protocol: Protocol, dataset, selection, stage: str, metrics: dict,
            store: EvalStore) -> dict:
    """The fields a run's result and a re-evaluation share."""
    return {
        "run_id": run_dir.name,
        "plugin": cfg.method.name,
        "method_label": method_label(cfg),
        "cam_source": cfg.method.get("cam_source"),
        "protocol": protocol.to_dict(),
        "dataset": dataset_summary(dataset),
        "train_frames": train_frames_summary(cfg, dataset),
        "selection": selection_summary(selection, protocol, stage, cfg),
        "metrics": metrics,
        "pseudo_boxes": pseudo_box_summary(store),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "provenance": {**results.provenance(), "plugins": plugin_provenance(cfg)},
    }


def plugin_provenance(cfg) -> dict:
    """Which distribution (name, version, git revision of its source where it is a checkout)
    registered each component the run used: a third-party method's record names its maker."""
    reg = registry()
    used = {"method": cfg.method.name, "dataset": cfg.data.name}
    if cfg.method.get("cam_source"):
        used["cam_source"] = cfg.method.cam_source
    out = {}
    for kind, name in used.items():
        try:
            entry = reg.get(kind, name)
        except HarnessError:
            continue
        out[kind] = {"name": entry.name, **results.distribution_provenance(entry)}
    return out


def dataset_summary(dataset) -> dict:
    return {
        "name": dataset.name,
        "kind": dataset.kind,
        "identity": dataset.identity,
        "classes": dataset.classes,
        "splits": {k: len(s) for k, s in dataset.splits.items()},
    }


def train_frames_summary(cfg, dataset) -> dict:
    """The training-frame policy the run applied: ``per_shot_per_epoch`` frames of each shot drawn
    anew each epoch (``loader.train_frames_per_shot``; 0: every train frame every epoch, always so
    on an image dataset). The run's result adds the stages that drew their own batches instead."""
    return {"per_shot_per_epoch": effective_frames_per_shot(cfg, dataset)}


def _method_provenance(method: Method, cfg) -> dict:
    """``method.provenance()``, or {} with a warning when it is not plain JSON data (a plugin's
    bad return value costs its line in the record, never the run)."""
    with plugin_code(_method_who(cfg), "provenance()"):
        facts = method.provenance()
    try:
        if not isinstance(facts, dict):
            raise TypeError(f"a {type(facts).__name__}, not a dict")
        json.dumps(facts, allow_nan=False)
    except (TypeError, ValueError) as exc:
        log.warning("%s: provenance() returned %s; the result is written without it", _method_who(cfg), exc)
        return {}
    return facts


def _own_batch_stages(method: Method, dataset, cfg) -> list[str]:
    """The trained stages whose own ``batch_sampler`` (e.g. CoLo-CAM's clips) replaces the
    training-frame policy (asked with their first epoch's seed, as training does)."""
    who, split, out = _method_who(cfg), dataset.split("train"), []
    for si, stage in enumerate(method.stages):
        if not stage.trains:
            continue
        with plugin_code(who, f"stage {stage.name!r} batch_sampler()"):
            if stage.batch_sampler(split, epoch_seed(cfg.seed, si, 1)) is not None:
                out.append(stage.name)
    return out


def selection_summary(selection, protocol: Protocol, stage: str, cfg) -> dict:
    """What was selected on what: the epoch and the threshold, each with its supervision."""
    iou = cfg.eval.iou_threshold
    metric = "CorLoc" if protocol.select_metric == "corloc" else "mean IoU"

    def boxes(target):
        return "GT boxes" if target == "gt" else f"{target} pseudo-boxes"

    if selection.epoch_target == "cls":
        epoch_by = f"classification accuracy on {protocol.selection_split}"
    else:
        how = "Otsu boxes" if protocol.threshold_source == "otsu" else f"best {protocol.threshold_scope} tau"
        epoch_by = f"{metric}@{iou:g} ({how}) against {boxes(selection.epoch_target)} on {protocol.selection_split}"
    if selection.tau_target is None:
        tau_by = "Otsu's threshold of each map"
    else:
        tau_by = f"{metric}@{iou:g} against {boxes(selection.tau_target)} on {protocol.threshold_source}"
    return {
        "stage": stage,
        "epoch": selection.epoch,
        "epoch_chosen_by": epoch_by,
        "epoch_supervision": selection.epoch_target,
        "score": selection.score,
        "epoch_scores": {str(e): s for e, s in selection.epoch_scores.items()},
        "tau": selection.taus(threshold_list(cfg.eval.threshold_step)),
        "tau_scope": protocol.threshold_scope if selection.tau_target else "per-map",
        "tau_chosen_by": tau_by,
        "tau_supervision": selection.tau_target or "otsu",
    }


def _train(method, dataset, cfg, device, ckpts, store, run_dir, progress, callbacks) -> str | None:
    """Train every stage from the last checkpoint before the first missing epoch on; return
    what the run resumed from."""
    stages = method.stages
    who = _method_who(cfg)
    resume_at, missing, after_gap = resume_point(stages, ckpts.done())
    if after_gap:
        log.warning("checkpoint %s is missing: training again from there (%d later checkpoint(s) are trained "
                    "again and replaced)", ckpts.path(missing[0], stages[missing[0]].name, missing[1]).name,
                    len(after_gap))
    resumed_from = None
    last = len(stages) - 1
    main = distributed.is_main()  # under torchrun only rank 0 writes checkpoints and metrics lines
    if resume_at is not None:
        if main:
            _sync_metrics_lines(run_dir, ckpts, store, last, upto=resume_at)
        si, epoch = resume_at
        state = ckpts.load(si, stages[si].name, epoch)
        with plugin_code(who, "load_state_dict()"):
            method.load_state_dict(state["method"])
        resumed_from = f"{stages[si].name} epoch {epoch}"
        log.info("resuming after %s", resumed_from)

    distributed.broadcast_state(method.modules().values())  # every rank starts from rank 0's weights
    train_split = dataset.split("train")
    per_shot = effective_frames_per_shot(cfg, dataset)
    if frames_per_shot(cfg) and not per_shot:
        log.info("loader.train_frames_per_shot=%d does not apply to the image dataset %s (each image is its own "
                 "shot): every image every epoch", frames_per_shot(cfg), dataset.name)
    for si, stage in enumerate(stages):
        if resume_at is not None and si < resume_at[0]:
            continue
        key, description = _shared_stage_key(stage, si, cfg, dataset)
        not_started = resume_at is None or si > resume_at[0]
        # one run at a time trains a shared stage: the others wait here, then fetch what it published
        with stage_cache.claim(stage.name, key if main else None):  # rank 0 holds it for its run
            fetched = not_started and key is not None and main and stage_cache.fetch(stage.name, key, si, stage.epochs,
                                                                                       ckpts)
            if distributed.broadcast(fetched):  # rank 0 linked the cached checkpoints; every rank loads them
                state = ckpts.load(si, stage.name, stage.epochs)
                with plugin_code(who, "load_state_dict()"):
                    method.load_state_dict(state["method"], strict=False)
                log.info("%s stage reused from the stage cache %s (same settings, data and seed): not retrained",
                         stage.name, stage_cache.entry_dir(stage.name, key))
                if si == last and store is not None:
                    for epoch in range(1, stage.epochs + 1):
                        store.forget(epoch)  # records of earlier weights, if any, are not these epochs'
                if main:
                    _sync_metrics_lines(run_dir, ckpts, store, last, upto=(si, stage.epochs))
                continue
            if not stage.trains:
                _record_untrained(method, stage, si, last, ckpts, store, run_dir, who, callbacks)
                continue
            opt, sched = checked_optimizer(stage, who)
            first = 1
            if resume_at is not None and si == resume_at[0]:
                opt.load_state_dict(state["optimizer"])
                if sched is not None and state.get("scheduler") is not None:
                    sched.load_state_dict(state["scheduler"])
                first = resume_at[1] + 1
            if first <= stage.epochs:
                with plugin_code(who, f"stage {stage.name!r} prepare()"):
                    stage.prepare(train_split, device, progress)
            for epoch in range(first, stage.epochs + 1):
                seed = epoch_seed(cfg.seed, si, epoch)
                seed_everything(seed)
                with plugin_code(who, f"stage {stage.name!r} begin_epoch()"):
                    stage.begin_epoch(epoch)
                if si == last and store is not None:
                    store.forget(epoch)  # evaluated from an earlier attempt at this epoch
                stats = _train_epoch(stage, opt, train_split, cfg, seed, device, epoch, progress, method.normalization,
                                     per_shot=per_shot, announce=epoch == first)
                distributed.broadcast_state(method.modules().values())  # rank 0's BatchNorm statistics everywhere
                lr = opt.param_groups[0]["lr"]
                if sched is not None:
                    sched.step()
                line = {"stage": stage.name, "epoch": epoch, "lr": lr, **stats}
                if si == last and store is not None:
                    line.update(_val_summary(store, epoch))
                # The epoch's log line travels in its checkpoint: a kill between the two writes
                # loses no line (the next resume writes it from the checkpoint).
                if main:
                    with plugin_code(who, "state_dict()"):
                        method_state = method.state_dict()
                    ckpts.save(si, stage.name, epoch, {
                        "method": method_state,
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict() if sched is not None else None,
                        "stage": stage.name,
                        "epoch": epoch,
                        "log": line,
                    })
                    write_metrics_line(run_dir, line)
                distributed.barrier()  # a rank killed now finds the epoch's checkpoint written, or not begun
                log.info("%s epoch %d/%d: %s", stage.name, epoch, stage.epochs,
                         ", ".join(f"{k} {v:.4g}" for k, v in line.items() if isinstance(v, float)))
                for cb in callbacks:
                    cb(stage.name, epoch)
            if main and key is not None and stage_cache.publish(stage.name, key, si, stage.epochs, ckpts, description):
                log.info("%s stage published to the stage cache for reuse by later runs", stage.name)
    return resumed_from


def _record_untrained(method, stage, si, last, ckpts, store, run_dir, who, callbacks) -> None:
    """A stage that trains nothing (:class:`harness.method.NoTrainingStage`): its one epoch's
    checkpoint holds the method as built, and its metrics line the validation numbers."""
    if store is not None and si == last:
        store.forget(1)
    line = {"stage": stage.name, "epoch": 1, "trained": False}
    if si == last and store is not None:
        line.update(_val_summary(store, 1))
    if distributed.is_main():
        with plugin_code(who, "state_dict()"):
            method_state = method.state_dict()
        ckpts.save(si, stage.name, 1, {"method": method_state, "optimizer": None, "scheduler": None,
                                       "stage": stage.name, "epoch": 1, "log": line})
        write_metrics_line(run_dir, line)
    distributed.barrier()
    log.info("%s: nothing to train, evaluated as built: %s", stage.name,
             ", ".join(f"{k} {v:.4g}" for k, v in line.items() if isinstance(v, float)))
    for cb in callbacks:
        cb(stage.name, 1)


def _val_summary(store: EvalStore, epoch: int, current: bool = True) -> dict:
    """The per-epoch validation numbers of the metrics line (``current``: the method holds that
    epoch's weights; else they are read from its checkpoint)."""
    store.record("val", epoch, current=current)
    curves = store.curves("val", epoch)
    out = {"val_corloc_best_tau": corloc_at(curves, select_threshold(curves, "global"))["mean"],
           "val_cls_accuracy": store.boxes("val", epoch).cls_accuracy()}
    for target in sorted(store.default_targets.get("val", ())):
        curves = store.curves("val", epoch, target)
        out[f"val_corloc_best_tau@{target}"] = corloc_at(curves, select_threshold(curves, "global"))["mean"]
    return out


METRICS_FILE = "metrics.jsonl"


def read_metrics_lines(run_dir: Path) -> list[dict]:
    """The lines of ``metrics.jsonl``, one per (stage, epoch) (the last one written wins); a line
    that does not parse, e.g. cut by a kill in an old run, is dropped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    lines: dict[tuple, dict] = {}
    for text in path.read_text(errors="replace").splitlines():
        try:
            line = json.loads(text)
        except (ValueError, RecursionError):
            continue
        if isinstance(line, dict) and isinstance(line.get("stage"), str) and isinstance(line.get("epoch"), int):
            lines.pop((line["stage"], line["epoch"]), None)
            lines[line["stage"], line["epoch"]] = line
    return list(lines.values())


def write_metrics_line(run_dir: Path, line: dict | None = None) -> None:
    """Add (or replace: an epoch trained again) the line of one (stage, epoch), atomically; with
    no line, rewrite the file as :func:`read_metrics_lines` reads it (one line per epoch)."""
    lines = read_metrics_lines(run_dir)
    if line is not None:
        lines = [old for old in lines if (old["stage"], old["epoch"]) != (line["stage"], line["epoch"])] + [line]
    io.write_text(Path(run_dir) / METRICS_FILE, "".join(json.dumps(x) + "\n" for x in lines))


def _sync_metrics_lines(run_dir: Path, ckpts: Checkpoints, store: EvalStore | None = None, last: int = -1,
                        upto: tuple[int, int] | None = None) -> None:
    """Give every checkpoint (up to ``upto``, else all) its line in ``metrics.jsonl``: a kill fell
    between a checkpoint and its line, or the stage came from the stage cache. The training
    numbers come from the copy the checkpoint carries, the validation numbers of the last stage
    (index ``last``) from ``store`` now, so the line is the one an uninterrupted run writes."""
    lines = read_metrics_lines(run_dir)
    path = Path(run_dir) / METRICS_FILE
    if path.is_file() and len(path.read_text(errors="replace").splitlines()) != len(lines):
        write_metrics_line(run_dir)  # duplicated or broken lines: one per epoch again
    have = {(x["stage"], x["epoch"]) for x in lines}
    for si, name, epoch in ckpts.found():
        if upto is not None and (si, epoch) > upto:
            break
        if (name, epoch) in have:
            continue
        kept = ckpts.load(si, name, epoch).get("log")
        line = {k: v for k, v in kept.items() if not k.startswith("val_")} if isinstance(kept, dict) else {}
        line.update(stage=name, epoch=epoch)
        if store is not None and si == last:
            line.update(_val_summary(store, epoch, current=False))
        write_metrics_line(run_dir, line)


def _shared_stage_key(stage, stage_index: int, cfg, dataset) -> tuple[str | None, dict]:
    """The stage-cache key of a stage that can be shared, from everything its weights depend on."""
    settings = stage.cache_key()
    if settings is None:
        return None, {}
    description = {
        "stage_index": stage_index,
        "settings": settings,
        "dataset": dataset.identity,
        "seed": cfg.seed,
        "loader_workers": cfg.loader.num_workers,  # augmentation randomness depends on it
        "harness": __version__,
    }
    per_shot = effective_frames_per_shot(cfg, dataset)
    if per_shot:  # only when set, so the keys of stages trained on every frame stay as they were
        description["train_frames_per_shot"] = per_shot
    return stage_cache.stage_key({"stage": stage.name, **description}), description


def _lr_key(cfg, stage: str) -> str:
    """Where a stage's learning rate is set, when the config says (classifier.lr,
    method.decoder.lr), else the hint to look for it."""
    flat = config_mod.flatten(cfg.to_dict())
    keys = [k for k in (f"{stage}.lr", f"method.{stage}.lr") if k in flat]
    return f"--cfg-options {keys[0]}=..." if keys else "the plugin's lr setting"


def _train_epoch(stage, opt, split, cfg, seed, device, epoch, progress, normalization, per_shot: int = 0,
                 announce: bool = False) -> dict:
    """One epoch of ``stage``. Its batches: the stage's own (``Stage.batch_sampler``), else,
    with ``per_shot`` > 0, ``per_shot`` frames of each shot drawn with the epoch ``seed``, else
    every frame shuffled. ``announce``: log which (the stage's first epoch in this process)."""
    who = _method_who(cfg)
    with plugin_code(who, f"stage {stage.name!r} batch_sampler()"):
        sampler = stage.batch_sampler(split, seed)
    if per_shot > 0:
        if sampler is not None:
            if announce:
                log.info("%s stage draws its own batches (%s): loader.train_frames_per_shot=%d does not apply to "
                         "it", stage.name, type(sampler).__name__, per_shot)
        else:
            sampler = FramesPerShotSampler(split, per_shot, stage.batch_size, seed)
            if announce:
                log.info("%s stage: %d frame(s) of each shot drawn anew each epoch (loader.train_frames_per_shot): "
                         "%d of the %d train frames per epoch", stage.name, per_shot, sampler.drawn_per_epoch,
                         len(split))
    if distributed.active():  # each rank takes its block of every batch of the epoch (the same batches)
        sampler = RankBatches(sampler if sampler is not None else shuffled_batches(split, stage.batch_size, seed))
    loader = train_loader(
        split, stage.batch_size, seed, cfg.loader.num_workers, hflip=stage.hflip, normalization=normalization,
        batch_sampler=sampler,
    )
    with plugin_code(who, f"stage {stage.name!r} train_mode()"):
        stage.train_mode()
    total, n, extra = 0.0, 0, {}
    bar = tqdm(loader, desc=f"{stage.name} epoch {epoch}/{stage.epochs}", leave=False, disable=not progress)
    for batch in bar:
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        loss, scalars = checked_loss(stage, batch, who)
        if not torch.isfinite(loss):
            check_finite_images(batch, split, normalization)
            raise HarnessError(
                f"{stage.name} loss became {loss.item()} at epoch {epoch}: training diverged; lower "
                f"the stage's learning rate ({_lr_key(cfg, stage.name)})"
            )
        opt.zero_grad(set_to_none=True)
        with plugin_code(who, f"stage {stage.name!r} backward()/step()"):
            loss.backward()
            distributed.average_gradients(p for group in opt.param_groups for p in group["params"])
            opt.step()
        bs = batch["image"].shape[0]
        total += loss.item() * bs
        n += bs
        for k, v in scalars.items():
            extra[k] = extra.get(k, 0.0) + v * bs
        bar.set_postfix(loss=f"{loss.item():.3f}")
    if distributed.active():  # the epoch's means over every rank's frames
        keys = sorted(extra)
        total, n, *values = distributed.all_sum([total, n, *(extra[k] for k in keys)])
        extra = dict(zip(keys, values))
    return {"loss": total / max(n, 1), **{f"train_{k}": v / max(n, 1) for k, v in extra.items()}}


# ---------------------------------------------------------------- re-evaluation


def reevaluate(run_dir: str | Path, protocol: str | None = None, overrides: dict | None = None,
               device: str | None = None, progress: bool = True) -> dict:
    """Select and measure a trained run again, under another protocol and/or other evaluation
    settings (``eval.*`` and ``annotators.*`` overrides), without training: records are reused
    when their settings match, else rebuilt from saved maps, else from the checkpoints. Writes
    ``evaluations/<protocol>.json`` in the run directory and returns it."""
    return reevaluate_many(run_dir, [protocol], overrides, device, progress)[0]


def reevaluate_many(run_dir: str | Path, protocols: list[str | Protocol | None], overrides: dict | None = None,
                    device: str | None = None, progress: bool = True, out_dir: str = "evaluations") -> list[dict]:
    """:func:`reevaluate` under several protocols, sharing one evaluation store (each
    checkpoint's maps are computed at most once). ``None`` is the run's own protocol.

    Records go to ``<out_dir>/<protocol>.json``; under evaluation settings other than the run's
    own, to ``<out_dir>/settings-<key>/`` (with the settings in ``settings.json``), so a
    re-evaluation never replaces a record written under other settings."""
    run_dir = Path(run_dir)
    cfg = config_mod.load_run_config(run_dir)
    overrides = dict(overrides or {})
    bad = [k for k in overrides if not k.startswith(("eval.", "annotators."))]
    if bad:
        raise HarnessError(
            f"harness eval only changes evaluation settings (eval.*, annotators.*); got {', '.join(bad)}"
        )
    if "annotators" not in cfg:  # a run from before annotators had settings in the config
        cfg.merge_from_dict(annotator_defaults())
    before = config_mod.flatten(cfg.to_dict())
    own_eval = cfg.eval.to_dict()
    config_mod.apply_overrides(cfg, overrides)
    config_mod.check_values(cfg)
    check_eval_config(cfg)
    changed = {k: v for k, v in config_mod.flatten(cfg.to_dict()).items() if before.get(k, KeyError) != v}
    protos = [p if isinstance(p, Protocol) else
              Protocol.from_config(_protocol_layer(p)["protocol"] if p else cfg.protocol) for p in protocols]
    ckpts = Checkpoints(run_dir)
    with run_lock(run_dir):
        epochs, stage = _evaluable_epochs(run_dir, ckpts)
        dev = resolve_device(device or cfg.device)
        dataset = load_dataset(cfg, progress)
        built: list[Method] = []

        def method() -> Method:
            if not built:
                built.append(build_method(cfg, dataset.num_classes).to(dev))
            return built[0]

        store = EvalStore(run_dir, cfg, dataset, method, ckpts, dev, progress, own_eval=own_eval)
        store.save_new_maps = cfg.eval.save_maps == "all"  # a re-evaluation keeps the run's maps as they are
        targets = {t for proto in protos for _, t in needs(proto) if t not in ("gt", "cls")}
        if targets:
            _share_trained_stages(method(), cfg, dataset, ckpts)
        for proto in protos:  # every target a split needs, so each checkpoint is run once
            for split, target in needs(proto):
                if target != "gt":
                    store.default_targets.setdefault(split, set()).add(target)
        folder = evaluation_dir(run_dir, changed, out_dir)
        if changed:
            io.write_json(folder / "settings.json", {"overrides": changed})
        records = []
        for proto in protos:
            selection, metrics = select_and_measure(cfg, proto, store, epochs)
            record = {
                **_record(run_dir, cfg, proto, dataset, selection, stage, metrics, store),
                "eval": cfg.eval.to_dict(),
                "settings_changed": changed,
                "evaluated_from": [{"split": s, "epoch": e, "source": src} for s, e, src in store.computed],
            }
            record["pseudo_boxes"] = {k: v for k, v in record["pseudo_boxes"].items()
                                      if k in {t for _, t in needs(proto)}}
            outcomes = selected_outcomes(store, selection)
            record["uncertainty"] = intervals(outcomes, bootstrap_samples(cfg), int(cfg.seed))
            io.save_npz(folder / f"{proto.name}{OUTCOMES_SUFFIX}", outcomes)
            io.write_json(folder / f"{proto.name}.json", record)
            records.append(record)
    return records


def evaluation_dir(run_dir: Path, changed: dict, out_dir: str = "evaluations") -> Path:
    """Where re-evaluations under the settings ``changed`` (flattened key -> value, empty for
    the run's own) are written."""
    folder = Path(run_dir) / out_dir
    return folder / f"settings-{evalstore.settings_key(changed)}" if changed else folder


def _evaluable_epochs(run_dir: Path, ckpts: Checkpoints) -> tuple[list[int], str]:
    """The last stage's epochs, refusing by name when one is missing: a selection over fewer
    epochs than the run trained would be another result, not a re-evaluation."""
    found = ckpts.found()
    if not found:
        raise HarnessError(f"{run_dir} has no checkpoint: train it first (harness run --resume {run_dir})")
    last = max(si for si, _, _ in found)
    stage = next(name for si, name, _ in found if si == last)
    epochs = sorted(e for si, _, e in found if si == last)
    expected = set(range(1, epochs[-1] + 1))
    try:
        record = results.read_record(run_dir / results.RESULT_FILE)
        expected |= {int(e) for e in record["selection"].get("epoch_scores", {})}
    except HarnessError:
        pass  # an unfinished run: its checkpoints say what exists
    missing = sorted(expected - set(epochs))
    if missing:
        names = ", ".join(ckpts.path(last, stage, e).name for e in missing)
        raise HarnessError(f"{run_dir}: checkpoint(s) {names} are missing, so those epochs cannot be evaluated; "
                           f"`harness run --resume {run_dir}` trains them again")
    return epochs, stage


def _share_trained_stages(method: Method, cfg, dataset, ckpts: Checkpoints) -> None:
    """Publish the run's shareable stages to the stage cache (when they are not there), so an
    annotator whose classifier has the run's settings takes the run's own classifier instead
    of training one."""
    for si, stage in enumerate(method.stages):
        key, description = _shared_stage_key(stage, si, cfg, dataset)
        if key is None or not all(ckpts.path(si, stage.name, e).is_file() for e in range(1, stage.epochs + 1)):
            continue
        if stage_cache.publish(stage.name, key, si, stage.epochs, ckpts, description):
            log.info("%s stage of the run is in the stage cache: annotators with its settings reuse it", stage.name)
