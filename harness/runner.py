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
from harness.selection import check_supported, select

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
    cfg = config_mod.compose(method_entry.config, protocol_layer, dataset_entry.config)
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

    def __init__(self, run_dir: Path):
        self.handlers = [logging.FileHandler(run_dir / "log.txt"), _TqdmHandler()]
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
    check_supported(protocol)
    check_eval_config(cfg)
    device = resolve_device(cfg.device)
    dataset = reg.get("dataset", cfg.data.name).factory(cfg.data, progress=progress)
    seed_everything(cfg.seed)
    method = reg.get("method", cfg.method.name).factory(cfg, dataset.num_classes).to(device)
    log.info("run %s: %s on %s (%s), device %s", run_dir.name, cfg.method.name, dataset.name, dataset.identity, device)

    ckpts = Checkpoints(run_dir)
    store = EvalStore(run_dir, cfg, dataset, method, ckpts, device, progress)
    resumed_from = _train(method, dataset, cfg, device, ckpts, store, run_dir, progress, callbacks)

    last = len(method.stages) - 1
    epochs = [e for s, e in ckpts.done() if s == last]
    selection, metrics = select_and_measure(cfg, protocol, store, epochs)
    if cfg.eval.save_maps == "selected":
        store.prune_maps(selection.epoch)
    record = {
        **_record(run_dir, cfg, protocol, dataset, selection, method.stages[last].name, metrics),
        "seed": cfg.seed,
        "device": str(device),
        "resumed_from": resumed_from,
        "wall_time_s": round(time.time() - started, 2),
        "config": cfg.to_dict(),
    }
    results.write_result(run_dir, record)
    results.write_leaderboard(run_dir.parent)
    log.info("selected epoch %d, tau %s; test CorLoc %.2f", selection.epoch, record["selection"]["tau"][0], metrics["test"]["corloc"])
    return record


def select_and_measure(cfg, protocol: Protocol, store: EvalStore, epochs: list[int]):
    """The protocol's selection over ``epochs`` and every metric of val and test at it."""
    selection = select(protocol, epochs, store.curves)
    metrics = {
        split: split_metrics(store.record(split, selection.epoch), selection.tau_index, cfg.eval.iou_threshold)
        for split in ("val", "test")
    }
    return selection, metrics


def _record(run_dir: Path, cfg, protocol: Protocol, dataset, selection, stage: str, metrics: dict) -> dict:
    """The fields a run's result and a re-evaluation share."""
    return {
        "run_id": run_dir.name,
        "plugin": cfg.method.name,
        "protocol": protocol.to_dict(),
        "dataset": dataset_summary(dataset),
        "selection": selection_summary(selection, protocol, stage, cfg),
        "metrics": metrics,
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
    chosen_by = f"{protocol.select_metric}@{cfg.eval.iou_threshold:g} with {protocol.supervision}"
    return {
        "stage": stage,
        "epoch": selection.epoch,
        "epoch_chosen_by": f"{chosen_by} on {protocol.selection_split}",
        "epoch_scores": {str(e): s for e, s in selection.epoch_scores.items()},
        "tau": selection.taus(threshold_list(cfg.eval.threshold_step)),
        "tau_scope": protocol.threshold_scope,
        "tau_chosen_by": f"{chosen_by} on {protocol.threshold_source}",
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
        for epoch in range(first, stage.epochs + 1):
            seed = epoch_seed(cfg.seed, si, epoch)
            seed_everything(seed)
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
            if si == len(stages) - 1:
                store.record("val", epoch, current=True)
                curves = store.curves("val", epoch)
                line["val_corloc_best_tau"] = corloc_at(curves, select_threshold(curves, "global"))["mean"]
                line["val_cls_accuracy"] = store.boxes("val", epoch).cls_accuracy()
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
        split, stage.batch_size, seed, cfg.loader.num_workers, hflip=stage.hflip, normalization=normalization
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
    settings (``eval.*`` overrides), without training: records are reused when their settings
    match, else rebuilt from saved maps, else from the checkpoints. Writes
    ``evaluations/<protocol>.json`` in the run directory and returns it."""
    run_dir = Path(run_dir)
    cfg = config_mod.load_run_config(run_dir)
    overrides = dict(overrides or {})
    bad = [k for k in overrides if not k.startswith("eval.")]
    if bad:
        raise HarnessError(f"harness eval only changes evaluation settings (eval.*); got {', '.join(bad)}")
    config_mod.apply_overrides(cfg, overrides)
    check_eval_config(cfg)
    proto = Protocol.from_config(_protocol_layer(protocol)["protocol"] if protocol else cfg.protocol)
    check_supported(proto)
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
    selection, metrics = select_and_measure(cfg, proto, store, epochs)
    record = {
        **_record(run_dir, cfg, proto, dataset, selection, ckpts.stage_name(last), metrics),
        "eval": cfg.eval.to_dict(),
        "evaluated_from": [{"split": s, "epoch": e, "source": src} for s, e, src in store.computed],
    }
    io.write_json(run_dir / "evaluations" / f"{proto.name}.json", record)
    return record
