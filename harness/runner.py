"""One run: train a method's stages, evaluate checkpoints, select as the protocol says,
write the result record. A fresh run and a resumed one go through the same code, and
every epoch is seeded from (seed, stage, epoch), so a resumed run ends where an
uninterrupted one would."""
from __future__ import annotations

import datetime as dt
import json
import logging
import random
import re
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from tqdm import tqdm

from harness import __version__, io, results, stage_cache
from harness import config as config_mod
from harness.data.loader import train_loader
from harness.errors import HarnessError
from harness.evalstore import EvalStore, check_eval_config, split_metrics
from harness.evaluation import corloc_at, select_threshold, threshold_list
from harness.protocol import Protocol
from harness.registry import registry
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
) -> Path:
    """Compose the config of a new run and write it into a fresh run directory. Experiment
    ``config_files`` apply after the presets and before ``overrides``."""
    reg = registry()
    method_entry = reg.get("method", plugin)
    protocol_layer = _protocol_layer(protocol)
    dataset_entry = reg.get("dataset", dataset)
    overrides = dict(overrides or {})
    if device is not None:
        overrides["device"] = device
    cfg = config_mod.compose(method_entry.config, protocol_layer, dataset_entry.config,
                             defaults=annotator_defaults())
    for path in config_files:
        config_mod.apply_file(cfg, path)
    config_mod.apply_overrides(cfg, overrides)
    cfg.method.name = method_entry.name  # aliases resolve to the registered name
    Protocol.from_config(cfg.protocol)  # fail now, not after training
    check_eval_config(cfg)
    if run_root is not None:
        cfg.run.root = str(run_root)
    run_dir = _new_run_dir(Path(cfg.run.root), method_entry.name, cfg.protocol.name)
    io.write_text(run_dir / "config.py", config_mod.dump_text(cfg))
    return run_dir


def annotator_defaults() -> dict:
    """Every registered annotator's settings, so a run's config names the settings of the
    pseudo-boxes it is (or later may be) selected with, and ``--cfg-options annotators.*``
    can change them."""
    from harness.annotators.base import default_settings

    return {"annotators": {name: default_settings(name) for name in registry().names("annotator")}}


def _protocol_layer(protocol: str):
    """A registered preset by name or alias, or a user's protocol config file."""
    path = Path(protocol)
    if path.suffix in (".py", ".yaml", ".yml", ".json") and path.is_file():
        layer = config_mod.read_file(path)
        if "protocol" not in layer:
            raise HarnessError(f"{path} defines no `protocol = dict(...)`")
        return {"protocol": layer["protocol"]}
    entry = registry().get("protocol", protocol)
    return {"protocol": config_mod.read_file(entry.config)["protocol"]}


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
    """``checkpoints/<stage index>-<stage>-epoch<NNN>.pt``, each written atomically."""

    _NAME = re.compile(r"^(\d+)-(.+)-epoch(\d{3,})\.pt$")

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir) / "checkpoints"

    def path(self, stage_index: int, stage: str, epoch: int) -> Path:
        return self.dir / f"{stage_index}-{stage}-epoch{epoch:03d}.pt"

    def save(self, stage_index: int, stage: str, epoch: int, state: dict) -> None:
        with io.atomic_path(self.path(stage_index, stage, epoch)) as tmp:
            torch.save(state, tmp)

    def done(self) -> list[tuple[int, int]]:
        """(stage index, epoch) of every checkpoint on disk, in training order."""
        found = []
        for p in self.dir.glob("*.pt"):
            m = self._NAME.match(p.name)
            if m:
                found.append((int(m.group(1)), int(m.group(3))))
        return sorted(found)

    def stage_name(self, stage_index: int) -> str:
        for p in self.dir.glob(f"{stage_index}-*.pt"):
            m = self._NAME.match(p.name)
            if m:
                return m.group(2)
        raise HarnessError(f"no checkpoint of stage {stage_index} in {self.dir}")

    def load(self, stage_index: int, stage: str, epoch: int) -> dict:
        path = self.path(stage_index, stage, epoch)
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise HarnessError(
                f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); delete it to "
                f"retrain that epoch with --resume"
            ) from exc


# ---------------------------------------------------------------- the run


class _RunLog:
    """Log to ``log.txt`` in the run directory and to the console above the progress bars."""

    def __init__(self, run_dir: Path, console: bool = True):
        self.handlers = [logging.FileHandler(run_dir / "log.txt")] + ([_TqdmHandler()] if console else [])
        fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
        for h in self.handlers:
            h.setFormatter(fmt)
            log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False

    def close(self) -> None:
        for h in self.handlers:
            log.removeHandler(h)
            h.close()


class _TqdmHandler(logging.Handler):
    def emit(self, record):
        tqdm.write(self.format(record))


def execute(run_dir: str | Path, progress: bool = True, callbacks: Iterable[Callback] = ()) -> dict:
    """Run (or resume) the run in ``run_dir`` to its result record."""
    run_dir = Path(run_dir)
    cfg = config_mod.load_run_config(run_dir)
    done_path = run_dir / results.RESULT_FILE
    if done_path.is_file():
        return json.loads(done_path.read_text())
    run_log = _RunLog(run_dir)
    try:
        return _execute(run_dir, cfg, progress, list(callbacks))
    finally:
        run_log.close()


def _execute(run_dir: Path, cfg, progress: bool, callbacks: list[Callback]) -> dict:
    started = time.time()
    reg = registry()
    protocol = Protocol.from_config(cfg.protocol)
    check_eval_config(cfg)
    device = resolve_device(cfg.device)
    dataset = reg.get("dataset", cfg.data.name).factory(cfg.data, progress=progress)
    seed_everything(cfg.seed)
    method = reg.get("method", cfg.method.name).factory(cfg, dataset.num_classes).to(device)
    log.info("run %s: %s on %s (%s), device %s", run_dir.name, cfg.method.name, dataset.name, dataset.identity, device)

    ckpts = Checkpoints(run_dir)
    store = EvalStore(run_dir, cfg, dataset, method, ckpts, device, progress)
    for split, target in needs(protocol):
        store.need(split, target)  # pseudo-boxes exist before training, as in the chapter
    resumed_from = _train(method, dataset, cfg, device, ckpts, store, run_dir, progress, callbacks)

    last = len(method.stages) - 1
    epochs = [e for s, e in ckpts.done() if s == last]
    selection, metrics = select_and_measure(cfg, protocol, store, epochs)
    if cfg.eval.save_maps == "selected":
        store.prune_maps(selection.epoch)
    record = {
        **_record(run_dir, cfg, protocol, dataset, selection, method.stages[last].name, metrics, store),
        "seed": cfg.seed,
        "device": str(device),
        "resumed_from": resumed_from,
        "wall_time_s": round(time.time() - started, 2),
        "config": cfg.to_dict(),
    }
    results.write_result(run_dir, record)
    results.write_leaderboard(run_dir.parent)
    if cfg.run.get("report", True):
        _write_report(run_dir, progress)
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
        "protocol": protocol.to_dict(),
        "dataset": dataset_summary(dataset),
        "selection": selection_summary(selection, protocol, stage, cfg),
        "metrics": metrics,
        "pseudo_boxes": pseudo_box_summary(store),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "provenance": results.provenance(),
    }


def dataset_summary(dataset) -> dict:
    return {
        "name": dataset.name,
        "kind": dataset.kind,
        "identity": dataset.identity,
        "classes": dataset.classes,
        "splits": {k: len(s) for k, s in dataset.splits.items()},
    }


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
    """Train every stage from the last checkpoint on; return what the run resumed from."""
    done = ckpts.done()
    resume_at = done[-1] if done else None
    stages = method.stages
    resumed_from = None
    if resume_at is not None:
        si, epoch = resume_at
        state = ckpts.load(si, stages[si].name, epoch)
        method.load_state_dict(state["method"])
        resumed_from = f"{stages[si].name} epoch {epoch}"
        log.info("resuming after %s", resumed_from)

    train_split = dataset.split("train")
    for si, stage in enumerate(stages):
        if resume_at is not None and si < resume_at[0]:
            continue
        key, description = _shared_stage_key(stage, si, cfg, dataset)
        not_started = resume_at is None or si > resume_at[0]
        if not_started and key is not None and stage_cache.fetch(stage.name, key, si, stage.epochs, ckpts):
            state = ckpts.load(si, stage.name, stage.epochs)
            method.load_state_dict(state["method"], strict=False)
            log.info("%s stage reused from the stage cache %s (same settings, data and seed): not retrained",
                     stage.name, stage_cache.entry_dir(stage.name, key))
            continue
        opt, sched = stage.optimizer()
        first = 1
        if resume_at is not None and si == resume_at[0]:
            opt.load_state_dict(state["optimizer"])
            if sched is not None and state.get("scheduler") is not None:
                sched.load_state_dict(state["scheduler"])
            first = resume_at[1] + 1
        if first <= stage.epochs:
            stage.prepare(train_split, device, progress)
        for epoch in range(first, stage.epochs + 1):
            seed = epoch_seed(cfg.seed, si, epoch)
            seed_everything(seed)
            stage.begin_epoch(epoch)
            stats = _train_epoch(stage, opt, train_split, cfg, seed, device, epoch, progress, method.normalization)
            lr = opt.param_groups[0]["lr"]
            if sched is not None:
                sched.step()
            ckpts.save(si, stage.name, epoch, {
                "method": method.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else None,
                "stage": stage.name,
                "epoch": epoch,
            })
            line = {"stage": stage.name, "epoch": epoch, "lr": lr, **stats}
            if si == len(stages) - 1 and store is not None:
                store.record("val", epoch, current=True)
                curves = store.curves("val", epoch)
                line["val_corloc_best_tau"] = corloc_at(curves, select_threshold(curves, "global"))["mean"]
                line["val_cls_accuracy"] = store.boxes("val", epoch).cls_accuracy()
                for target in sorted(store.default_targets.get("val", ())):
                    curves = store.curves("val", epoch, target)
                    line[f"val_corloc_best_tau@{target}"] = corloc_at(curves, select_threshold(curves, "global"))["mean"]
            io.append_line(run_dir / "metrics.jsonl", json.dumps(line))
            log.info("%s epoch %d/%d: %s", stage.name, epoch, stage.epochs,
                     ", ".join(f"{k} {v:.4g}" for k, v in line.items() if isinstance(v, float)))
            for cb in callbacks:
                cb(stage.name, epoch)
        if key is not None and stage_cache.publish(stage.name, key, si, stage.epochs, ckpts, description):
            log.info("%s stage published to the stage cache for reuse by later runs", stage.name)
    return resumed_from


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
    return stage_cache.stage_key({"stage": stage.name, **description}), description


def _train_epoch(stage, opt, split, cfg, seed, device, epoch, progress, normalization) -> dict:
    loader = train_loader(
        split, stage.batch_size, seed, cfg.loader.num_workers, hflip=stage.hflip, normalization=normalization,
        batch_sampler=stage.batch_sampler(split, seed),
    )
    stage.train_mode()
    total, n, extra = 0.0, 0, {}
    bar = tqdm(loader, desc=f"{stage.name} epoch {epoch}/{stage.epochs}", leave=False, disable=not progress)
    for batch in bar:
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        loss, scalars = stage.loss(batch)
        if not torch.isfinite(loss):
            raise HarnessError(
                f"{stage.name} loss became {loss.item()} at epoch {epoch}: training diverged; lower "
                f"the learning rate (e.g. --cfg-options {stage.name}.lr=...)"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bs = batch["image"].shape[0]
        total += loss.item() * bs
        n += bs
        for k, v in scalars.items():
            extra[k] = extra.get(k, 0.0) + v * bs
        bar.set_postfix(loss=f"{loss.item():.3f}")
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
    checkpoint's maps are computed at most once). ``None`` is the run's own protocol."""
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
    config_mod.apply_overrides(cfg, overrides)
    check_eval_config(cfg)
    protos = [p if isinstance(p, Protocol) else
              Protocol.from_config(_protocol_layer(p)["protocol"] if p else cfg.protocol) for p in protocols]
    ckpts = Checkpoints(run_dir)
    done = ckpts.done()
    if not done:
        raise HarnessError(f"{run_dir} has no checkpoint: train it first (harness run --resume {run_dir})")
    last = max(s for s, _ in done)
    epochs = [e for s, e in done if s == last]
    dev = resolve_device(device or cfg.device)
    reg = registry()
    dataset = reg.get("dataset", cfg.data.name).factory(cfg.data, progress=progress)

    def build_method():
        return reg.get("method", cfg.method.name).factory(cfg, dataset.num_classes).to(dev)

    store = EvalStore(run_dir, cfg, dataset, build_method, ckpts, dev, progress)
    store.save_new_maps = cfg.eval.save_maps == "all"  # a re-evaluation keeps the run's maps as they are
    for proto in protos:  # every target a split needs, so each checkpoint is run once
        for split, target in needs(proto):
            if target != "gt":
                store.default_targets.setdefault(split, set()).add(target)
    records = []
    for proto in protos:
        selection, metrics = select_and_measure(cfg, proto, store, epochs)
        record = {
            **_record(run_dir, cfg, proto, dataset, selection, ckpts.stage_name(last), metrics, store),
            "eval": cfg.eval.to_dict(),
            "evaluated_from": [{"split": s, "epoch": e, "source": src} for s, e, src in store.computed],
        }
        record["pseudo_boxes"] = {k: v for k, v in record["pseudo_boxes"].items()
                                  if k in {t for _, t in needs(proto)}}
        io.write_json(run_dir / out_dir / f"{proto.name}.json", record)
        records.append(record)
    return records
