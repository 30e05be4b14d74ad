"""Several processes on one run (harness/distributed.py): sharded evaluation against one process,
gradient averaging against one big batch. Two gloo processes on the CPU, started with spawn."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from harness import distributed, runner
from harness.inference import evaluate_split, logits_path, saved_maps, shard_path

from conftest import TINY_YTO

EVAL = {**TINY_YTO, "data.image_size": 48}


def _group(rank: int, world: int, store: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)


def _method_and_split():
    cfg = runner.compose("cam", "gt-val", "synth-yto", EVAL)
    dataset = runner.load_dataset(cfg, progress=False)
    torch.manual_seed(0)
    method = runner.build_method(cfg, len(dataset.classes))
    return cfg, dataset, method


def _evaluate(rank: int, world: int, store: str, out: str, home: str) -> None:
    import os

    os.environ["HARNESS_HOME"] = home
    _group(rank, world, store)
    cfg, dataset, method = _method_and_split()
    record = evaluate_split(method, dataset.split("val"), len(dataset.classes), cfg, "cpu", progress=False,
                            save_to=f"{out}/maps.npy")
    np.savez(f"{out}/frames{rank}.npz", **record.pop("per_frame"))
    with open(f"{out}/record{rank}.json", "w") as f:
        json.dump(record, f)
    dist.destroy_process_group()


def test_sharded_evaluation_equals_one_process_bit_for_bit(tmp_path):
    home = str(tmp_path / "home")
    import os
    os.environ["HARNESS_HOME"] = home  # the synthetic data is generated once, here
    cfg, dataset, method = _method_and_split()
    split = dataset.split("val")
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    single = evaluate_split(method, split, len(dataset.classes), cfg, "cpu", progress=False,
                            save_to=tmp_path / "one" / "maps.npy")
    mp.start_processes(_evaluate, args=(2, str(tmp_path / "store"), str(tmp_path / "two"), home), nprocs=2,
                       start_method="spawn")
    per_frame = single.pop("per_frame")
    for r in range(2):
        got = json.loads((tmp_path / "two" / f"record{r}.json").read_text())
        assert got == json.loads(json.dumps(single))  # every count and float sum, on every rank
        with np.load(tmp_path / "two" / f"frames{r}.npz") as frames:  # and every frame's outcome
            assert set(frames.files) == set(per_frame)
            assert all(np.array_equal(frames[k], per_frame[k]) for k in per_frame)
    assert np.asarray(single["boxes"]["iou_sum"]).sum() > 0  # the float sums are compared too
    one = np.load(tmp_path / "one" / "maps.npy")
    two = np.load(tmp_path / "two" / "maps.npy")
    assert np.array_equal(one, two) and not list((tmp_path / "two").glob("*.shard*"))
    assert np.array_equal(np.load(tmp_path / "one" / "maps.logits.npy"), np.load(tmp_path / "two" / "maps.logits.npy"))


def test_maps_left_in_blocks_are_read_as_one_file(tmp_path):
    cfg, dataset, method = _method_and_split()
    split = dataset.split("val")
    evaluate_split(method, split, len(dataset.classes), cfg, "cpu", progress=False, save_to=tmp_path / "maps.npy")
    whole = list(saved_maps(tmp_path / "maps.npy", split))
    maps = np.load(tmp_path / "maps.npy")
    logits = np.load(tmp_path / "maps.logits.npy")
    cut = [0, 3, len(maps)]  # as a 2-rank run killed before rank 0 joined the blocks
    for r in range(2):
        np.save(shard_path(tmp_path / "maps.npy", r, 2), maps[cut[r]:cut[r + 1]])
        np.save(logits_path(shard_path(tmp_path / "maps.npy", r, 2)), logits[cut[r]:cut[r + 1]])
    (tmp_path / "maps.npy").unlink()
    blocks = list(saved_maps(tmp_path / "maps.npy", split))
    assert [i for i, _, _ in blocks] == [i for i, _, _ in whole]
    assert all(np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2]) for a, b in zip(whole, blocks))


def test_shards_are_contiguous_blocks_covering_everything_once():
    for n in (0, 1, 5, 16, 17):
        for w in (1, 2, 3, 4):
            blocks = [distributed.shard(n, r, w) for r in range(w)]
            assert [i for b in blocks for i in b] == list(range(n))
            assert max(len(b) for b in blocks) - min(len(b) for b in blocks) <= 1


def _average(rank: int, world: int, store: str, out: str) -> None:
    _group(rank, world, store)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    y = torch.randn(8, 2, generator=torch.Generator().manual_seed(2))
    part = slice(rank * 4, rank * 4 + 4)  # each rank half of one batch of 8
    torch.nn.functional.mse_loss(net(x[part]), y[part]).backward()
    distributed.average_gradients(net.parameters())
    torch.save([p.grad for p in net.parameters()], f"{out}/grads{rank}.pt")
    dist.destroy_process_group()


def test_averaged_gradients_equal_the_whole_batchs(tmp_path):
    mp.start_processes(_average, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, start_method="spawn")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    y = torch.randn(8, 2, generator=torch.Generator().manual_seed(2))
    torch.nn.functional.mse_loss(net(x), y).backward()
    for r in range(2):
        got = torch.load(tmp_path / f"grads{r}.pt", weights_only=True)
        for g, p in zip(got, net.parameters()):
            torch.testing.assert_close(g, p.grad, rtol=1e-6, atol=1e-7)


def test_the_shuffled_batches_are_the_loaders_own():
    from harness.data.loader import shuffled_batches, train_loader

    cfg, dataset, _ = _method_and_split()
    split = dataset.split("train")
    for seed in (0, 7):
        loader = train_loader(split, 5, seed)
        assert [b["index"].tolist() for b in loader] == shuffled_batches(split, 5, seed)


# ------------------------------------------------------------------ runs under torchrun (2 gloo processes)

RUN = {**TINY_YTO, "classifier.augment.hflip": False}


def _argv(root, *extra, overrides=RUN, protocol="gt-val"):
    return ["run", "--plugin", "cam", "--protocol", protocol, "--run-root", str(root), "--no-progress", *extra,
            "--cfg-options", *[f"{k}={v}" for k, v in overrides.items()]]


def _losses(run_dir):
    return [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


SIX = {**RUN, "classifier.epochs": 6}


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """One uninterrupted 2-process run of 6 epochs under the realistic protocol (its annotator's
    classifier trains on both ranks too), shared by the tests below."""
    from harness.cli import main

    root = tmp_path_factory.mktemp("two")
    assert main(_argv(root, "--launcher", "torchrun", "--nproc", "2", overrides=SIX, protocol="realistic")) == 0
    [run] = root.glob("*-cam-pseudo-box-val")
    return run


@pytest.mark.slow
def test_a_two_process_run_writes_one_result_close_to_one_process(two_process_run, tmp_path):
    from harness.cli import main

    two = two_process_run
    record = json.loads((two / "result.json").read_text())
    assert record["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert sorted(p.name for p in (two / "checkpoints").glob("*.pt")) == [f"0-classifier-epoch00{e}.pt"
                                                                          for e in range(1, 7)]
    assert not list(two.glob("**/*.shard*")) and len(list(two.parent.glob("*-cam-*"))) == 1  # one run directory
    assert record["selection"]["tau_supervision"] == "cam-pg"
    assert main(_argv(tmp_path / "one", protocol="realistic")) == 0  # 2 epochs: the 6-epoch run's first two
    [one] = (tmp_path / "one").glob("*-cam-pseudo-box-val")
    # same global batches and averaged gradients; BatchNorm sees half batches on each rank
    np.testing.assert_allclose(_losses(two)[:2], _losses(one), rtol=0.03)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc: parent ids)."""
    from pathlib import Path

    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    out, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier]
        out += kids
        frontier = kids
    return out


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_to_the_uninterrupted_result(two_process_run, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from harness.cli import main

    overrides, whole = SIX, two_process_run
    cmd = [sys.executable, "-m", "harness", *_argv(tmp_path / "cut", "--launcher", "torchrun", "--nproc", "2",
                                                    overrides=overrides, protocol="realistic")]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((tmp_path / "cut").glob("*/checkpoints/0-classifier-epoch002.pt")):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    for pid in [proc.pid, *_descendants(proc.pid)]:  # torchrun's workers live in sessions of their own
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    [cut] = (tmp_path / "cut").glob("*-cam-pseudo-box-val")
    assert not (cut / "result.json").exists()
    assert main(["run", "--launcher", "torchrun", "--nproc", "2", "--resume", str(cut), "--no-progress"]) == 0
    resumed = json.loads((cut / "result.json").read_text())
    assert resumed["resumed_from"].startswith("classifier epoch")
    np.testing.assert_allclose(_losses(cut), _losses(whole), rtol=1e-6)
    assert resumed["metrics"]["test"]["corloc"] == json.loads((whole / "result.json").read_text())["metrics"]["test"][
        "corloc"]


DIES = '''
import torch.distributed as dist
from harness.hookspecs import hookimpl
from harness.registry import Entry
from harness.models.classifier import ClassifierMethod, ClassifierStage


class Dies(ClassifierStage):
    def loss(self, batch):
        if dist.is_initialized() and dist.get_rank() == 1 and self.epoch == 2:
            raise RuntimeError("rank 1 lost its GPU")
        return super().loss(batch)


class DiesMethod(ClassifierMethod):
    def __init__(self, cfg, n):
        super().__init__(cfg, n)
        self._stages = [Dies(self.model, cfg.classifier)]


@hookimpl
def harness_register_methods():
    return [Entry("dies", DiesMethod, "fails on rank 1 in epoch 2")]
'''


@pytest.mark.slow
def test_a_rank_that_dies_fails_the_run_naming_it_and_keeps_what_was_written(tmp_path, monkeypatch, capfd):
    import os

    from plugin_fixtures import fake_distribution
    from harness.cli import main

    site = fake_distribution(tmp_path / "site", "dies-plugin", "dies_mod", DIES)
    monkeypatch.setenv("PYTHONPATH", f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    argv = _argv(tmp_path / "runs", "--launcher", "torchrun", "--nproc", "2")
    argv[argv.index("cam")] = "dies"
    assert main(argv) == 2
    err = capfd.readouterr().err
    assert "rank 1 of 2: method 'dies'" in err and "rank 1 lost its GPU" in err
    assert "a rank of the 2-process run failed" in err and "--resume RUN_DIR" in err
    [run] = (tmp_path / "runs").glob("*-dies-gt-val")
    assert (run / "checkpoints" / "0-classifier-epoch001.pt").is_file() and not (run / "result.json").exists()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
