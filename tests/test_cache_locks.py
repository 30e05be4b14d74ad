"""Caches reached by several runs at once: one computes and writes the entry, the others wait
for its lock and then read it (harness/locks.py)."""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness import locks, stage_cache
from harness.errors import HarnessError

from conftest import TINY_YTO

# a fresh interpreter, as another run is (and no fork of a process whose threads may hold locks)
SPAWN = mp.get_context("spawn")


def _append(path, line: str) -> None:
    with open(path, "a") as f:  # O_APPEND: each short line lands whole
        f.write(line + "\n")


def _run_together(target, *per_process_args, timeout=180, context=SPAWN):
    """Start one process per argument tuple; they meet at a barrier (its last argument) so
    that they reach the cache at the same moment."""
    barrier = context.Barrier(len(per_process_args))
    procs = [context.Process(target=target, args=(*args, barrier)) for args in per_process_args]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():  # deadlocked or too slow: fails below, leaves nothing behind
            p.kill()
            p.join()
    assert [p.exitcode for p in procs] == [0] * len(procs)


class _LogLines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def _harness_log():
    logger = logging.getLogger("harness")
    handler, level = _LogLines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# ------------------------------------------------------------------------------ file_lock


def _write_markers(lock, out, use_lock, barrier):
    barrier.wait()
    for _ in range(3):
        with locks.file_lock(lock, "the other writer") if use_lock else contextlib.nullcontext():
            _append(out, f"start {os.getpid()}")
            time.sleep(0.2)
            _append(out, f"end {os.getpid()}")


def _interleaved(lines: list[str]) -> bool:
    pairs = [lines[i:i + 2] for i in range(0, len(lines), 2)]
    return any(a.split()[0] != "start" or b != a.replace("start", "end") for a, b in pairs)


@pytest.mark.parametrize("use_lock", [True, False])
def test_file_lock_excludes_other_processes(tmp_path, use_lock):
    out = tmp_path / "markers.txt"
    _run_together(_write_markers, (tmp_path / "locks" / "x.lock", out, use_lock),
                  (tmp_path / "locks" / "x.lock", out, use_lock))
    lines = out.read_text().splitlines()
    assert len(lines) == 12
    # without the lock the two writers overlap: the check below can see it
    assert _interleaved(lines) != use_lock, lines
    assert (tmp_path / "locks" / "x.lock").is_file() == use_lock  # left in place for the next comer


def test_a_second_comer_logs_once_waits_and_then_holds_the_lock(tmp_path):
    lock = tmp_path / "x.lock"
    got = threading.Event()

    def second():
        with locks.file_lock(lock, "the first holder"):
            got.set()

    with _harness_log() as lines:
        with locks.file_lock(lock, "nobody"):
            waiter = threading.Thread(target=second)  # its own open file: excluded like a process
            waiter.start()
            time.sleep(0.5)
            assert not got.is_set()
        waiter.join(10)
    assert got.is_set()
    assert lines == [f"waiting for the first holder ({lock})"]


def test_a_nested_request_of_the_holder_passes_and_busy_without_waiting(tmp_path):
    lock = tmp_path / "x.lock"
    done, busy = threading.Event(), []

    def nested():
        with locks.file_lock(lock, "a"), locks.file_lock(lock, "b"):  # would deadlock on itself
            done.set()

    t = threading.Thread(target=nested, daemon=True)
    t.start()
    t.join(10)
    assert done.is_set()

    def no_wait():
        try:
            with locks.file_lock(lock, "the holder", wait=False):
                pass
        except locks.Busy:
            busy.append(True)

    with locks.file_lock(lock, "x"):
        t = threading.Thread(target=no_wait)
        t.start()
        t.join(10)
    assert busy == [True]


def test_a_lock_file_in_an_unwritable_place_is_a_named_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    lock = tmp_path / "file" / "x.lock"  # under a plain file: fails even for root
    with pytest.raises(HarnessError, match="cannot create the lock file .*x.lock.*HARNESS_HOME"):
        with locks.file_lock(lock, "x"):
            pass

    def refuse(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    with monkeypatch.context() as m:
        m.setattr(locks.fcntl, "flock", refuse)  # as some network file systems do
        with pytest.raises(HarnessError, match="cannot lock .*y.lock.*refuses file locks.*HARNESS_HOME"):
            with locks.file_lock(tmp_path / "y.lock", "y"):
                pass

    # The stage cache is an optimisation: an unlockable cache warns and the stage trains.
    monkeypatch.setenv("HARNESS_HOME", str(tmp_path / "file"))
    ran = []
    with _harness_log() as lines:
        with stage_cache.claim("classifier", "k"):
            ran.append(True)
    assert ran == [True]
    assert any("training the classifier stage without it" in line for line in lines)


# ------------------------------------------------------------------------------ stage cache


class _Ckpts:
    """The part of runner.Checkpoints the stage cache uses."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir) / "checkpoints"

    def path(self, si, stage, epoch):
        return self.dir / f"{si}-{stage}-epoch{epoch:03d}.pt"


def _fetch_or_train(home, run_dir, events, use_claim, barrier):
    """What the runner does for one shared stage: reuse the cache entry, else train and publish."""
    os.environ["HARNESS_HOME"] = str(home)
    ckpts = _Ckpts(run_dir)
    barrier.wait()
    with stage_cache.claim("classifier", "k") if use_claim else contextlib.nullcontext():
        if stage_cache.fetch("classifier", "k", 0, 2, ckpts):
            _append(events, "fetched")
            return
        time.sleep(1)  # training
        ckpts.dir.mkdir(parents=True)
        for epoch in (1, 2):
            ckpts.path(0, "classifier", epoch).write_text(f"{run_dir} epoch {epoch}")
        stage_cache.publish("classifier", "k", 0, 2, ckpts, {"seed": 0})
        _append(events, "trained")


@pytest.mark.parametrize("use_claim", [True, False])
def test_runs_that_claim_a_stage_at_once_train_it_once(tmp_path, use_claim):
    events = tmp_path / "events.txt"
    runs = [tmp_path / "run0", tmp_path / "run1"]
    _run_together(_fetch_or_train, *[(tmp_path / "home", run, events, use_claim) for run in runs])
    got = sorted(events.read_text().split())
    assert got == (["fetched", "trained"] if use_claim else ["trained", "trained"])

    # Either way one sound entry, whole from one publisher, and no temporary folder left.
    assert sorted(p.name for p in (tmp_path / "home" / "stages").iterdir()) == ["classifier-k"]
    entry = tmp_path / "home" / "stages" / "classifier-k"
    meta = json.loads((entry / "complete.json").read_text())
    assert meta["epochs"] == 2
    texts = [(entry / f"epoch{e:03d}.pt").read_text() for e in (1, 2)]
    publisher = texts[0].split(" epoch")[0]
    assert texts == [f"{publisher} epoch 1", f"{publisher} epoch 2"]
    if use_claim:  # the other run's checkpoints are the published ones
        for run in runs:
            assert _Ckpts(run).path(0, "classifier", 2).read_text() == f"{publisher} epoch 2"


def test_publish_keeps_a_complete_entry_and_replaces_a_broken_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_HOME", str(tmp_path / "home"))
    runs = []
    for name in ("a", "b"):
        ckpts = _Ckpts(tmp_path / name)
        ckpts.dir.mkdir(parents=True)
        ckpts.path(0, "classifier", 1).write_text(name)
        runs.append(ckpts)
    entry = stage_cache.entry_dir("classifier", "k")
    entry.mkdir(parents=True)
    (entry / "epoch001.pt").write_text("cut short")  # a folder without complete.json

    assert stage_cache.publish("classifier", "k", 0, 1, runs[0], {}) == entry
    assert (entry / "epoch001.pt").read_text() == "a"
    assert stage_cache.publish("classifier", "k", 0, 1, runs[1], {}) == entry  # the first publisher wins
    assert (entry / "epoch001.pt").read_text() == "a"
    assert stage_cache.fetch("classifier", "k", 0, 1, runs[1])
    assert runs[1].path(0, "classifier", 1).read_text() == "a"


def test_publish_does_not_wait_for_a_run_training_the_same_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_HOME", str(tmp_path / "home"))
    ckpts = _Ckpts(tmp_path / "run")
    ckpts.dir.mkdir(parents=True)
    ckpts.path(0, "classifier", 1).write_text("x")
    holder_in, release = threading.Event(), threading.Event()

    def trainer():  # another thread: its own open file, excluded like another process
        with stage_cache.claim("classifier", "k"):
            holder_in.set()
            release.wait(10)

    t = threading.Thread(target=trainer)
    t.start()
    try:
        assert holder_in.wait(10)
        assert stage_cache.publish("classifier", "k", 0, 1, ckpts, {}) is None  # the trainer publishes
    finally:
        release.set()
        t.join(10)
    assert not stage_cache.entry_dir("classifier", "k").exists()
    with stage_cache.claim("classifier", "k"):  # the claimer's own publish is not refused
        assert stage_cache.publish("classifier", "k", 0, 1, ckpts, {}) == stage_cache.entry_dir("classifier", "k")


# ------------------------------------------------------------------------------ pseudo-boxes


def _annotate(cfg, dataset, out, group, barrier):
    """``group``: (store file, rank, world size) of a gloo process group this process joins,
    as a torchrun rank does; None for a plain run."""
    import torch

    from harness.annotators.base import pseudo_boxes

    torch.set_num_threads(1)  # as a forked data-loader worker does: the parent's thread pool is not its own
    if group is not None:
        store, rank, world = group
        torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    with _harness_log() as lines:
        barrier.wait()
        pb = pseudo_boxes("cam-pg", cfg.annotators["cam-pg"].to_dict(), dataset, "val", progress=False)
    Path(out).write_text(json.dumps({"log": lines, "boxes": pb.boxes}))


def _annotate_together(tmp_path, monkeypatch, groups):
    """Each of ``groups`` (None, or a torchrun-like rank) asks for the same pseudo-boxes at once;
    return what each logged and got."""
    from harness import runner
    from harness.registry import registry

    monkeypatch.setenv("HARNESS_HOME", str(tmp_path / "home"))
    cfg = runner.compose("cam", "realistic", "synth-yto", TINY_YTO)
    dataset = runner.load_dataset(cfg, progress=False)  # the data exists before they start
    registry()
    outs = [tmp_path / f"{i}.json" for i in range(len(groups))]
    # forked, so that the children start with the harness imported and the plugins found
    _run_together(_annotate, *[(cfg, dataset, out, group) for out, group in zip(outs, groups)],
                  context=mp.get_context("fork"), timeout=120)
    return [json.loads(out.read_text()) for out in outs]


def _annotated(result) -> bool:
    return any(line.startswith("annotating ") for line in result["log"])


def test_two_processes_annotate_a_split_once(tmp_path, monkeypatch):
    a, b = _annotate_together(tmp_path, monkeypatch, [None, None])
    assert sorted([_annotated(a), _annotated(b)]) == [False, True]
    waited = b if _annotated(a) else a
    assert any(line.startswith("waiting for another run that is annotating val with cam-pg") for line in waited["log"])
    assert a["boxes"] == b["boxes"] and a["boxes"]


def test_the_ranks_of_a_torchrun_run_annotate_together_and_as_one_run(tmp_path, monkeypatch):
    """The ranks of one run annotate together (collectives inside): a lock per process would
    leave rank 0 waiting for a rank that waits for its lock. Against another run they are one."""
    store = str(tmp_path / "group")
    plain, rank0, rank1 = _annotate_together(tmp_path, monkeypatch, [None, (store, 0, 2), (store, 1, 2)])
    assert _annotated(rank0) == _annotated(rank1) != _annotated(plain)
    assert plain["boxes"] == rank0["boxes"] == rank1["boxes"] and plain["boxes"]


# ------------------------------------------------------------------------------ two runs, end to end


@pytest.mark.slow
def test_two_runs_started_at_once_train_the_classifier_once(tmp_path, monkeypatch):
    """Needs ``with stage_cache.claim(...)`` around a stage's fetch-or-train-and-publish in
    runner._train: without it both runs train."""
    from harness import runner

    monkeypatch.setenv("HARNESS_HOME", str(tmp_path / "home"))
    # Epochs enough that one run still trains when the other reaches the cache.
    overrides = {**TINY_YTO, "classifier.cache": True, "run.report": False, "classifier.epochs": 3}
    runner.load_dataset(runner.compose("cam", "gt-val", "synth-yto", overrides), progress=False)  # made once
    options = [f"{k}={v}" for k, v in overrides.items()]
    outputs = [tmp_path / f"output{i}.txt" for i in range(2)]
    procs = []
    for i, output in enumerate(outputs):
        with open(output, "w") as out:  # a file, not a pipe: a full pipe would stall the run that trains
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "harness", "run", "--plugin", "cam", "--protocol", "gt-val", "--dataset",
                 "synth-yto", "--run-root", str(tmp_path / f"runs{i}"), "--no-progress", "--cfg-options", *options],
                env={**os.environ}, stdout=out, stderr=subprocess.STDOUT))
    for proc in procs:
        proc.wait(timeout=600)
    assert [proc.returncode for proc in procs] == [0, 0], [output.read_text()[-3000:] for output in outputs]
    logs = [next((tmp_path / f"runs{i}").rglob("log.txt")).read_text() for i in range(2)]
    reused = ["reused from the stage cache" in log for log in logs]
    assert sorted(reused) == [False, True], logs
    trainer, reuser = (logs[1], logs[0]) if reused[0] else (logs[0], logs[1])
    assert "classifier epoch 3/3" in trainer and "classifier epoch 1/3" not in reuser
    assert "waiting for another run that is training the same classifier stage" in reuser
    results = [json.loads(next((tmp_path / f"runs{i}").rglob("result.json")).read_text()) for i in range(2)]
    assert results[0]["metrics"] == results[1]["metrics"]
