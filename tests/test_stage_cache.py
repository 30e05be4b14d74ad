"""The classifier stage is trained once per settings and reused by later runs and methods."""
import json

import pytest
import torch

from harness import runner, stage_cache

from conftest import TINY_YTO


def _checkpoint_weights(run_dir):
    return [torch.load(p, weights_only=True)["method"]["classifier"]
            for p in sorted((run_dir / "checkpoints").glob("0-classifier-*.pt"))]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")  # the stubbed epochs never step
def test_second_run_reuses_the_trained_classifier(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_HOME", str(tmp_path / "home"))
    overrides = {**TINY_YTO, "classifier.cache": True}
    first = runner.prepare("cam", "gt-val", "synth-yto", overrides, tmp_path / "runs")
    rec1 = runner.execute(first, progress=False)
    [entry] = stage_cache.cache_root().iterdir()
    meta = json.loads((entry / "complete.json").read_text())
    assert meta["epochs"] == 2 and meta["seed"] == 0

    trained = []
    monkeypatch.setattr(runner, "_train_epoch", lambda *a, **k: trained.append(a) or {"loss": 0.0})
    second = runner.prepare("cam", "gt-val", "synth-yto", overrides, tmp_path / "runs")
    rec2 = runner.execute(second, progress=False)
    assert trained == []  # nothing trained
    assert "reused from the stage cache" in (second / "log.txt").read_text()
    assert rec2["metrics"] == rec1["metrics"]
    for a, b in zip(_checkpoint_weights(first), _checkpoint_weights(second)):
        assert all(torch.equal(a[k], b[k]) for k in a)

    # Another seed is another entry: its two epochs train (through the stub).
    third = runner.prepare("cam", "gt-val", "synth-yto", {**overrides, "seed": 1}, tmp_path / "runs")
    runner.execute(third, progress=False)
    assert len(trained) == 2
    assert len(list(stage_cache.cache_root().iterdir())) == 2


def test_key_depends_on_what_determines_the_weights():
    base = {"stage": "classifier", "settings": {"lr": 0.1}, "dataset": "abc", "seed": 0}
    assert stage_cache.stage_key(base) == stage_cache.stage_key(dict(reversed(list(base.items()))))
    for change in ({"settings": {"lr": 0.2}}, {"dataset": "abd"}, {"seed": 1}):
        assert stage_cache.stage_key({**base, **change}) != stage_cache.stage_key(base)


def test_incomplete_entry_is_not_used(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_HOME", str(tmp_path))
    entry = stage_cache.entry_dir("classifier", "k")
    entry.mkdir(parents=True)
    (entry / "epoch001.pt").write_bytes(b"x")
    (entry / "complete.json").write_text(json.dumps({"epochs": 2}))

    class Ckpts:
        dir = tmp_path / "run" / "checkpoints"

        def path(self, si, stage, epoch):
            return self.dir / f"{si}-{stage}-epoch{epoch:03d}.pt"

    assert not stage_cache.fetch("classifier", "k", 0, 2, Ckpts())
    assert not Ckpts.dir.exists() or not any(Ckpts.dir.iterdir())
