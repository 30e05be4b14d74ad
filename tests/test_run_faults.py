"""Faults around a run: kills at every moment, damaged and missing files, crafted checkpoints,
two processes at once, a full or read-only disk, out-of-range settings. Each case ends with
no traceback and nothing lost: a resumed run ends like an uninterrupted one."""
import errno
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from harness import io, results, runner, stage_cache
from harness.cli import main
from harness.errors import HarnessError
from harness.evalstore import EvalStore

from conftest import TINY_YTO

OVERRIDES = {**TINY_YTO, "classifier.epochs": 3}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run every fault case must end like."""
    root = tmp_path_factory.mktemp("reference")
    run_dir = runner.prepare("cam", "gt-val", "synth-yto", OVERRIDES, root, progress=False)
    return run_dir, runner.execute(run_dir, progress=False)


def _same_result(record, ref):
    assert record["metrics"] == ref["metrics"]
    assert record["selection"] == ref["selection"]


def _metrics_lines(run_dir):
    return [(x["stage"], x["epoch"]) for x in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["method"]["classifier"]


class Kill(Exception):
    """Stands for the process dying at that point (a KeyboardInterrupt would end pytest)."""


def _kill_on_call(monkeypatch, owner, name, when, after=False):
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        if when(*args, **kwargs) and not after:
            raise Kill(name)
        out = original(*args, **kwargs)
        if when(*args, **kwargs):
            raise Kill(name)
        return out

    monkeypatch.setattr(owner, name, wrapper)


def _epoch_line(n):
    return lambda run_dir, line: line["epoch"] == n


# Seven moments of a run: (what to patch, when to die, die after the call instead of before).
KILL_POINTS = {
    "mid-epoch": (runner, "_train_epoch", lambda *a, **k: a[6] == 2, False),
    "after the checkpoint, before its metrics line": (runner, "write_metrics_line", _epoch_line(2), False),
    "between epochs": (runner, "write_metrics_line", _epoch_line(2), True),
    "during the val evaluation": (EvalStore, "_compute", lambda self, split, epoch, *a: split == "val" and epoch == 2,
                                  False),
    "during the test evaluation": (EvalStore, "_compute", lambda self, split, epoch, *a: split == "test", False),
    "after the result, before the leaderboard": (results, "write_leaderboard", lambda *a, **k: True, False),
    "after the result, before the report": (runner, "_write_report", lambda *a, **k: True, False),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_kill_at_any_moment_resumes_to_the_same_result_and_every_artefact(point, reference, tmp_path, monkeypatch):
    ref_dir, ref = reference
    report = point.endswith("report")
    run_dir = runner.prepare("cam", "gt-val", "synth-yto", {**OVERRIDES, "run.report": report}, tmp_path,
                             progress=False)
    owner, name, when, after = KILL_POINTS[point]
    with monkeypatch.context() as m:
        _kill_on_call(m, owner, name, when, after)
        with pytest.raises(Kill):
            runner.execute(run_dir, progress=False)
    resumed = runner.execute(run_dir, progress=False)
    _same_result(resumed, ref)
    assert _metrics_lines(run_dir) == [("classifier", e) for e in (1, 2, 3)]
    assert run_dir.name in (tmp_path / "leaderboard.md").read_text()
    assert (run_dir / "report.html").is_file() == report
    for epoch in (1, 2, 3):
        a, b = _weights(ref_dir / f"checkpoints/0-classifier-epoch{epoch:03d}.pt"), \
            _weights(run_dir / f"checkpoints/0-classifier-epoch{epoch:03d}.pt")
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(run_dir.rglob("*.tmp"))  # no half-written file anywhere


@pytest.mark.slow
def test_a_sigkill_of_the_process_resumes_to_the_same_result(reference, tmp_path):
    _, ref = reference
    run_dir = runner.prepare("cam", "gt-val", "synth-yto", OVERRIDES, tmp_path, progress=False)
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "--resume", str(run_dir), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "0-classifier-epoch002.pt").exists() and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    _same_result(runner.execute(run_dir, progress=False), ref)
    assert _metrics_lines(run_dir) == [("classifier", e) for e in (1, 2, 3)]


# ------------------------------------------------------------------------ missing and damaged files


@pytest.mark.slow
def test_a_deleted_middle_checkpoint_is_trained_again_not_dropped(reference, tmp_path):
    ref_dir, ref = reference
    run_dir = runner.prepare("cam", "gt-val", "synth-yto", OVERRIDES, tmp_path, progress=False)
    runner.execute(run_dir, progress=False)
    (run_dir / "checkpoints" / "0-classifier-epoch002.pt").unlink()

    # harness eval refuses by name: a selection over fewer epochs would be another result
    assert main(["eval", "--run", str(run_dir), "--no-progress"]) == 2
    # resume trains epoch 2 (and 3, from it) again and selects over all three
    resumed = runner.execute(run_dir, progress=False)
    _same_result(resumed, ref)
    assert resumed["resumed_from"] == "classifier epoch 1"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        f"0-classifier-epoch00{e}.pt" for e in (1, 2, 3)]
    assert "0-classifier-epoch002.pt is missing" in (run_dir / "log.txt").read_text()


def test_eval_names_the_missing_checkpoint(tmp_path, capsys):
    run_dir = runner.prepare("cam", "gt-val", "synth-yto", OVERRIDES, tmp_path, progress=False)
    (run_dir / "checkpoints").mkdir()
    for e in (1, 3):
        torch.save({"method": {}}, run_dir / "checkpoints" / f"0-classifier-epoch00{e}.pt")
    assert main(["eval", "--run", str(run_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "0-classifier-epoch002.pt" in err and "harness run --resume" in err and "Traceback" not in err


@pytest.mark.slow
def test_resume_of_a_finished_run_completes_what_is_missing(reference, tmp_path):
    run_dir = runner.prepare("cam", "gt-val", "synth-yto", {**OVERRIDES, "run.report": True}, tmp_path,
                             progress=False)
    first = runner.execute(run_dir, progress=False)
    before = (run_dir / "result.json").read_bytes()
    (run_dir / "report.html").unlink()
    (tmp_path / "leaderboard.md").unlink()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text("\n".join(lines[:1] + lines[2:]) + "\n")  # epoch 2's line lost

    assert runner.execute(run_dir, progress=False) == first
    assert (run_dir / "result.json").read_bytes() == before  # the result is not touched
    assert (run_dir / "report.html").is_file()
    assert run_dir.name in (tmp_path / "leaderboard.md").read_text()
    assert _metrics_lines(run_dir) == [("classifier", e) for e in (1, 3, 2)]
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[2]) == json.loads(lines[1])


@pytest.mark.slow
def test_a_damaged_result_is_kept_aside_and_the_run_selected_again(reference, tmp_path):
    _, ref = reference
    run_dir = runner.prepare("cam", "gt-val", "synth-yto", OVERRIDES, tmp_path, progress=False)
    runner.execute(run_dir, progress=False)
    (run_dir / "result.json").write_text('{"metrics": [1, 2]}')
    assert main(["run", "--resume", str(run_dir), "--no-progress"]) == 0
    assert (run_dir / "result.json.damaged").read_text() == '{"metrics": [1, 2]}'
    _same_result(json.loads((run_dir / "result.json").read_text()), ref)


@pytest.mark.slow
def test_a_foreign_result_under_the_run_root_breaks_no_later_run(tmp_path, capsys):
    for name, text in [("foreign", '{"hello": "world"}'), ("list", "[1, 2]"), ("broken", "{"),
                       ("wrong-types", json.dumps({"protocol": {"name": 3, "supervision": "gt"}, "dataset": {},
                                                   "selection": {"epoch": "x"}, "metrics": "none"}))]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "result.json").write_text(text)
    argv = ["run", "--plugin", "cam", "--run-root", str(tmp_path), "--no-progress", "--cfg-options",
            *[f"{k}={v}" for k, v in {**TINY_YTO, "classifier.epochs": 1}.items()]]
    assert main(argv) == 0
    [run_dir] = tmp_path.glob("*-cam-gt-val")
    board = (tmp_path / "leaderboard.md").read_text()
    assert run_dir.name in board and "foreign" not in board
    skipped = []
    results.write_leaderboard(tmp_path, skipped)
    assert sorted(Path(s.split(" ")[0]).parent.name for s in skipped) == ["broken", "foreign", "list", "wrong-types"]
    assert any("its protocol is not valid" in s and "name=3" in s for s in skipped)


# ------------------------------------------------------------------------ files that must not run code


class _Payload:
    """Unpickling this object creates ``marker``: a stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.slow
def test_a_crafted_checkpoint_is_refused_never_executed(tmp_path, capsys):
    run_dir = runner.prepare("cam", "gt-val", "synth-yto", {**TINY_YTO, "classifier.epochs": 1}, tmp_path / "runs",
                             progress=False)
    runner.execute(run_dir, progress=False)
    marker = tmp_path / "pwned"
    ckpt = run_dir / "checkpoints" / "0-classifier-epoch001.pt"
    torch.save({"method": _Payload(marker)}, ckpt)
    for folder in ("evals", "maps"):  # so that the evaluation must read the checkpoint
        for p in (run_dir / folder).iterdir():
            p.unlink()
    assert main(["eval", "--run", str(run_dir), "--no-progress"]) == 2
    (run_dir / "result.json").unlink()
    assert main(["run", "--resume", str(run_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "0-classifier-epoch001.pt cannot be read" in err and "Traceback" not in err
    assert not marker.exists()


@pytest.mark.slow
def test_a_crafted_stage_cache_entry_is_refused_never_executed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_HOME", str(tmp_path / "home"))
    overrides = {**TINY_YTO, "classifier.epochs": 1, "classifier.cache": True}
    first = runner.prepare("cam", "gt-val", "synth-yto", overrides, tmp_path / "runs", progress=False)
    runner.execute(first, progress=False)
    [entry] = stage_cache.cache_root().iterdir()
    assert oct((entry / "epoch001.pt").stat().st_mode & 0o777) == "0o444"  # linked into runs: never written in place
    marker = tmp_path / "pwned"
    (entry / "epoch001.pt").unlink()  # the run's own checkpoint is a hard link to it: leave that one alone
    torch.save({"method": _Payload(marker)}, entry / "epoch001.pt")
    argv = ["run", "--plugin", "cam", "--run-root", str(tmp_path / "runs"), "--no-progress", "--cfg-options",
            *[f"{k}={v}" for k, v in overrides.items()]]
    # the entry no longer matches what was published: set aside, the stage trained again
    assert main(argv) == 0
    assert list(entry.parent.glob(f".{entry.name}.damaged-*"))
    io.load_tensors(entry / "epoch001.pt")  # and published again, sound, by the run that trained it
    assert not marker.exists()

    # an entry forged to match what was published is read as tensors only: refused
    [entry] = stage_cache.cache_root().glob("classifier-*")
    meta = json.loads((entry / "complete.json").read_text())
    (entry / "epoch001.pt").unlink()
    torch.save({"method": _Payload(marker)}, entry / "epoch001.pt")
    meta["sizes"]["epoch001.pt"] = (entry / "epoch001.pt").stat().st_size
    (entry / "complete.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(argv) == 2
    assert "holds Python objects besides tensors and plain data" in capsys.readouterr().err
    assert not marker.exists()


# ------------------------------------------------------------------------ two processes at once

_HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from harness.runner import run_lock
    with run_lock(Path(sys.argv[1])):
        print("locked", flush=True)
        time.sleep(60)
""")


def test_a_run_directory_in_use_is_refused(tmp_path, capsys):
    run_dir = runner.prepare("cam", "gt-val", "synth-yto", TINY_YTO, tmp_path, progress=False)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["run", "--resume", str(run_dir), "--no-progress"]) == 2
        assert "in use by another harness process" in capsys.readouterr().err
        assert not (run_dir / "checkpoints").exists()  # nothing trained beside the other process
    finally:
        holder.kill()
        holder.wait()
    # the lock dies with its process: nothing stale remains
    with runner.run_lock(run_dir):
        pass


def test_runs_finishing_together_lose_no_leaderboard_row(tmp_path, monkeypatch):
    """The forced interleaving: A reads the results, B writes its result and the board, then
    A writes the board from what it read. Without the lock, B's row is lost every time."""
    record = {"run_id": "", "plugin": "cam", "protocol": {"name": "gt-val", "supervision": "gt"},
              "dataset": {"name": "synth-yto", "classes": ["a"]}, "selection": {"epoch": 1, "tau": [0.5]},
              "metrics": {"test": {"corloc": 50.0, "corloc_per_class": [50.0]}}}
    original = results.load_results
    a_has_read = threading.Event()

    def slow_load(root, skipped=None):
        out = original(root, skipped)
        if threading.current_thread().name == "A":
            a_has_read.set()
            time.sleep(1.0)  # B finishes meanwhile, unless the lock holds it back
        return out

    monkeypatch.setattr(results, "load_results", slow_load)

    def finish(name):
        io.write_json(tmp_path / name / "result.json", {**record, "run_id": name})
        results.write_leaderboard(tmp_path)

    a = threading.Thread(target=finish, args=("run-a",), name="A")
    a.start()
    a_has_read.wait(10)
    b = threading.Thread(target=finish, args=("run-b",), name="B")
    b.start()
    a.join()
    b.join()
    board = (tmp_path / "leaderboard.md").read_text()
    assert "run-a" in board and "run-b" in board


# ------------------------------------------------------------------------ settings and disks


@pytest.mark.parametrize("key, value, match", [
    ("classifier.lr", -0.1, r"classifier.lr.*\(0, 100\]"),
    ("classifier.batch_size", 0, r"classifier.batch_size.*\[1, 65536\]"),
    ("loader.num_workers", -1, r"loader.num_workers.*\[0, 64\]"),
    ("classifier.epochs", 0, "classifier.epochs.*>= 1"),
    ("classifier.momentum", 1.5, r"classifier.momentum.*\[0, 1\]"),
    ("annotators.cam-pg.classifier.lr", 0.0, r"annotators.cam-pg.classifier.lr.*\(0, 100\]"),
    ("eval.interpolation", "nearest", "eval.interpolation='nearest'"),
    ("eval.iou_thresholds", [0.5, 1.5], "eval.iou_thresholds"),
    ("seed", -3, "seed.*>= 0"),
    ("classifier.lr", 1e300, r"classifier.lr.*\(0, 100\]"),
    ("classifier.weight_decay", float("inf"), "give a finite number"),
    ("eval.threshold_step", 1e-9, r"threshold_step.*\[0.0001, 0.5\]"),
    ("loader.num_workers", 100000, r"\[0, 64\]"),
    ("annotators.cam-pg.filter_fraction", 2.0, "filter_fraction=2.0 must be in"),
])
def test_out_of_range_settings_fail_before_any_work(key, value, match, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_HOME", str(tmp_path / "home"))
    with pytest.raises(HarnessError, match=match):
        runner.prepare("cam", "realistic", "synth-yto", {key: value}, tmp_path / "runs", progress=False)
    assert not (tmp_path / "home").exists()  # no data generated, no annotator trained
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_a_full_disk_while_writing_a_checkpoint_is_named_and_leaves_nothing_half_written(tmp_path, monkeypatch,
                                                                                          capsys):
    run_dir = runner.prepare("cam", "gt-val", "synth-yto", OVERRIDES, tmp_path, progress=False)
    real_save = torch.save

    def save(obj, path, *a, **k):
        if ".0-classifier-epoch002.pt." in str(path):  # the temporary file of epoch 2's checkpoint
            Path(path).write_bytes(b"half")  # the disk filled up mid-write
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    assert main(["run", "--resume", str(run_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "0-classifier-epoch002.pt" in err and "disk is full" in err and "Traceback" not in err
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["0-classifier-epoch001.pt"]
    monkeypatch.setattr(torch, "save", real_save)
    runner.execute(run_dir, progress=False)  # once there is space, resume finishes the run
    assert _metrics_lines(run_dir) == [("classifier", e) for e in (1, 2, 3)]


def test_a_read_only_folder_is_a_named_error(tmp_path, monkeypatch):
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).startswith(str(tmp_path)):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(io.WriteError, match="result.json: Read-only file system.*read-only"):
        io.write_json(target, {"new": 1})
    assert target.read_text() == "old"  # the previous file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # the temporary file is gone
    with pytest.raises(OSError):  # still an OSError for code that tolerates failed optional writes
        io.write_text(target, "x")


# ------------------------------------------------------------------------ what the reviewers found


@pytest.mark.slow
def test_a_stage_from_the_stage_cache_gets_its_metrics_lines_and_resumes_alike(tmp_path, monkeypatch):
    """The second method on one classifier fetches it: its metrics.jsonl still has a line per
    epoch (training numbers from the checkpoint, validation numbers of its own maps), and a
    kill after the fetch resumes to the same lines and result."""
    monkeypatch.setenv("HARNESS_HOME", str(tmp_path / "home"))
    overrides = {**OVERRIDES, "classifier.cache": True}
    runner.execute(runner.prepare("cam", "gt-val", "synth-yto", overrides, tmp_path / "a", progress=False),
                   progress=False)
    whole = runner.prepare("gradcam", "gt-val", "synth-yto", overrides, tmp_path / "b", progress=False)
    ref = runner.execute(whole, progress=False)
    lines = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [(x["stage"], x["epoch"]) for x in lines] == [("classifier", e) for e in (1, 2, 3)]
    assert all("loss" in x and "val_corloc_best_tau" in x for x in lines)

    killed = runner.prepare("gradcam", "gt-val", "synth-yto", overrides, tmp_path / "c", progress=False)
    with monkeypatch.context() as m:
        _kill_on_call(m, EvalStore, "_compute", lambda self, split, epoch, *a: split == "test")
        with pytest.raises(Kill):
            runner.execute(killed, progress=False)
    _same_result(runner.execute(killed, progress=False), ref)
    assert [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()] == lines


@pytest.mark.slow
def test_a_damaged_middle_checkpoint_of_a_finished_run_is_trained_again(reference, tmp_path):
    ref_dir, ref = reference
    run_dir = runner.prepare("cam", "gt-val", "synth-yto", OVERRIDES, tmp_path, progress=False)
    runner.execute(run_dir, progress=False)
    ckpt = run_dir / "checkpoints" / "0-classifier-epoch002.pt"
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of the tensors
    ckpt.write_bytes(bytes(data))
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text("\n".join(lines + lines[:1]) + "\n")  # and a duplicated line
    _same_result(runner.execute(run_dir, progress=False), ref)
    assert (run_dir / "checkpoints" / "0-classifier-epoch002.pt.damaged").read_bytes() == bytes(data)
    a, b = _weights(ref_dir / "checkpoints/0-classifier-epoch002.pt"), _weights(ckpt)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _metrics_lines(run_dir) == [("classifier", e) for e in (1, 2, 3)]


@pytest.mark.slow
def test_every_damaged_result_is_kept(reference, tmp_path):
    run_dir = runner.prepare("cam", "gt-val", "synth-yto", {**OVERRIDES, "classifier.epochs": 1}, tmp_path,
                             progress=False)
    runner.execute(run_dir, progress=False)
    for n, text in enumerate(["[1]", "{broken"]):
        (run_dir / "result.json").write_text(text)
        runner.execute(run_dir, progress=False)
    assert (run_dir / "result.json.damaged").read_text() == "[1]"
    assert (run_dir / "result.json.damaged-2").read_text() == "{broken"
