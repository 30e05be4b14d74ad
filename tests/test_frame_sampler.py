"""loader.train_frames_per_shot: k frames of each shot drawn anew each epoch (harness/data/frame_sampler.py)."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from mmengine.config import Config

from harness import config as config_mod
from harness import runner
from harness.data.base import Frame, Split
from harness.data.frame_sampler import FramesPerShotSampler, effective_frames_per_shot, frames_per_shot
from harness.errors import HarnessError

from conftest import TINY_YTO

# shots of 1, 2, 3, 5, 7 and 12 frames, interleaved in the split as a reader may list them
SIZES = {("v0", "s0"): 1, ("v0", "s1"): 2, ("v1", "s0"): 3, ("v1", "s1"): 5, ("v2", "s0"): 7, ("v3", "s0"): 12}


def _split() -> Split:
    frames = [Frame(id=f"{v}/{s}/{i}", label=0, video=v, shot=s, index=i)
              for (v, s), n in SIZES.items() for i in range(n)]
    order = np.random.default_rng(123).permutation(len(frames))
    frames = [frames[i] for i in order]
    return Split("train", frames, read=lambda i: np.zeros((8, 8, 3), np.uint8))


def _by_shot(split: Split, indices) -> dict:
    out: dict = {}
    for i in indices:
        f = split.frames[i]
        out.setdefault((f.video, f.shot), []).append(i)
    return out


@pytest.mark.parametrize("k", [1, 3, 6])
def test_every_shot_gets_min_k_distinct_frames_each_epoch(k):
    split = _split()
    for seed in range(5):
        drawn = FramesPerShotSampler(split, k, 4, seed).draw().tolist()
        assert len(drawn) == len(set(drawn))  # without replacement
        shots = _by_shot(split, drawn)
        assert set(shots) == set(SIZES)  # every shot covered
        assert {s: len(v) for s, v in shots.items()} == {s: min(k, n) for s, n in SIZES.items()}


def test_same_seed_same_frames_other_seed_other_frames():
    split = _split()
    a = FramesPerShotSampler(split, 3, 4, 7)
    assert list(a) == list(FramesPerShotSampler(split, 3, 4, 7)) == list(a)  # iterating twice: the same epoch
    subsets = {frozenset(FramesPerShotSampler(split, 3, 4, seed).draw().tolist()) for seed in range(6)}
    assert len(subsets) > 1  # another epoch seed draws another subset
    orders = {tuple(FramesPerShotSampler(split, 3, 4, seed).draw().tolist()) for seed in range(6)}
    assert len(orders) == 6
    # a shot shorter than k gives all its frames every epoch; a longer one is subsampled differently
    long = [set(_by_shot(split, FramesPerShotSampler(split, 3, 4, seed).draw())[("v3", "s0")]) for seed in range(6)]
    assert len({frozenset(s) for s in long}) > 1


def test_batches_cover_the_drawn_frames_once_and_drop_an_incomplete_last_batch():
    split = _split()
    # k=3: 1 + 2 + 3 + 3 + 3 + 3 = 15 frames drawn
    sampler = FramesPerShotSampler(split, 3, 5, 11)
    batches = list(sampler)
    assert sampler.drawn_per_epoch == 15 and len(sampler) == len(batches) == 3
    assert all(len(b) == 5 for b in batches)
    flat = [i for b in batches for i in b]
    assert flat == sampler.draw().tolist()  # exactly the drawn frames, each once, in the drawn order
    assert all(isinstance(i, int) for i in flat)
    # 15 frames in batches of 4: the incomplete last batch is dropped, as the shuffled loader does
    sampler = FramesPerShotSampler(split, 3, 4, 11)
    batches = list(sampler)
    assert len(sampler) == len(batches) == 3 and all(len(b) == 4 for b in batches)
    assert [i for b in batches for i in b] == sampler.draw().tolist()[:12]
    # no more frames than one batch: one (smaller) batch of them all, as the shuffled loader does
    sampler = FramesPerShotSampler(split, 1, 64, 3)
    assert len(sampler) == 1 and sorted(next(iter(sampler))) == sorted(sampler.draw().tolist())
    assert len(next(iter(sampler))) == len(SIZES)


def test_the_sampler_feeds_a_data_loader():
    from harness.data.loader import train_loader

    split = _split()
    sampler = FramesPerShotSampler(split, 2, 3, 5)
    loader = train_loader(split, 3, 5, batch_sampler=sampler)
    seen = [b["index"].tolist() for b in loader]
    assert seen == list(sampler)


def test_bad_sampler_arguments_are_refused():
    with pytest.raises(HarnessError, match="train_frames_per_shot"):
        FramesPerShotSampler(_split(), 0, 4, 0)
    with pytest.raises(HarnessError, match="batch_size"):
        FramesPerShotSampler(_split(), 2, 0, 0)


# ------------------------------------------------------------------------------ the setting


@pytest.mark.parametrize("value", [-1, 1.5, "x", True])
def test_a_bad_value_names_the_key(value):
    with pytest.raises(HarnessError, match=r"loader\.train_frames_per_shot"):
        runner.compose("cam", "gt-val", "synth-yto", {**TINY_YTO, "loader.train_frames_per_shot": value})
    with pytest.raises(HarnessError, match=r"loader\.train_frames_per_shot"):
        frames_per_shot(Config({"loader": {"train_frames_per_shot": value}}))


def test_default_is_every_frame_and_image_datasets_keep_every_image():
    cfg = runner.compose("cam", "gt-val", "synth-yto", TINY_YTO)
    assert cfg.loader.train_frames_per_shot == 0
    assert frames_per_shot(Config({"loader": {"num_workers": 0}})) == 0  # e.g. an annotator's classifier

    class Data:
        kind = "image"

    cfg = Config({"loader": {"train_frames_per_shot": 4}})
    assert effective_frames_per_shot(cfg, Data()) == 0
    assert runner.train_frames_summary(cfg, Data()) == {"per_shot_per_epoch": 0}
    Data.kind = "video"
    assert runner.train_frames_summary(cfg, Data()) == {"per_shot_per_epoch": 4}


def test_real_youtube_objects_entries_draw_10_frames_per_shot_from_every_indexed_frame():
    from harness.registry import registry

    for name in ("ytov1", "ytov2.2"):
        layer = registry().get("dataset", name).layer()
        assert layer["loader"]["train_frames_per_shot"] == 10 and layer["data"]["train_frames_per_shot"] == 0
        cfg = runner.compose("cam", "gt-val", name)  # composing reads no data
        assert cfg.loader.train_frames_per_shot == 10 and cfg.data.train_frames_per_shot == 0
    for name in ("cub", "ilsvrc", "openimages", "synth-yto", "synth-cub"):
        assert runner.compose("cam", "gt-val", name).loader.train_frames_per_shot == 0, name


def test_a_run_config_from_before_the_setting_reads_as_every_frame(tmp_path):
    cfg = runner.compose("cam", "gt-val", "synth-yto", TINY_YTO)
    cfg.run.root = str(tmp_path)
    run_dir = runner.create_run_dir(cfg)
    data = config_mod.read_literal_config(run_dir / "config.py")
    del data["loader"]["train_frames_per_shot"]
    (run_dir / "config.py").write_text(Config(data).pretty_text)
    assert config_mod.load_run_config(run_dir).loader.train_frames_per_shot == 0


def test_the_stage_cache_key_changes_only_when_frames_are_drawn():
    class Stage:
        name = "classifier"

        def cache_key(self):
            return {"backbone": "x"}

    class Data:
        kind, identity = "video", "abc"

    def key(**loader):
        return runner._shared_stage_key(Stage(), 0, Config({"seed": 0, "loader": {"num_workers": 0, **loader}}),
                                        Data())

    (plain, described), (zero, _), (two, with_two) = key(), key(train_frames_per_shot=0), key(train_frames_per_shot=2)
    assert plain == zero != two  # runs trained on every frame keep their cached stages
    assert "train_frames_per_shot" not in described and with_two["train_frames_per_shot"] == 2


class _FakeStage:
    name, batch_size, hflip, epochs = "fake", 4, False, 1

    def __init__(self, own=None):
        self.own = own

    def batch_sampler(self, split, seed):
        return self.own

    def train_mode(self):
        pass


def _batches_of_epoch(monkeypatch, stage, per_shot, announce=True):
    seen, lines = {}, []

    def fake_loader(split, batch_size, seed, num_workers=0, hflip=False, normalization=None, batch_sampler=None):
        seen["sampler"] = batch_sampler
        return []

    class Capture(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    monkeypatch.setattr(runner, "train_loader", fake_loader)
    handler, log = Capture(), logging.getLogger("harness")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        runner._train_epoch(stage, None, _split(), Config({"loader": {"num_workers": 0}}), 3, "cpu", 1, False, None,
                            per_shot=per_shot, announce=announce)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    return seen["sampler"], lines


def test_a_stage_with_its_own_batches_keeps_them(monkeypatch):
    own = [[0, 1], [2, 3]]
    sampler, lines = _batches_of_epoch(monkeypatch, _FakeStage(own), 2)
    assert sampler is own and any("draws its own batches" in x for x in lines)
    sampler, lines = _batches_of_epoch(monkeypatch, _FakeStage(), 2)
    assert isinstance(sampler, FramesPerShotSampler) and sampler.k == 2 and sampler.seed == 3
    assert any("drawn anew each epoch" in x for x in lines)
    sampler, lines = _batches_of_epoch(monkeypatch, _FakeStage(), 2, announce=False)
    assert isinstance(sampler, FramesPerShotSampler) and lines == []  # said once per stage, not every epoch
    assert _batches_of_epoch(monkeypatch, _FakeStage(), 0) == (None, [])  # off: the shuffled loader


# ------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_resume_after_a_kill_draws_the_same_frames_as_an_uninterrupted_run(tmp_path):
    overrides = {**TINY_YTO, "classifier.epochs": 2, "loader.train_frames_per_shot": 2}
    ref_dir = runner.prepare("cam", "gt-val", "synth-yto", overrides, tmp_path / "ref")
    ref = runner.execute(ref_dir, progress=False)
    assert ref["train_frames"] == {"per_shot_per_epoch": 2, "stages_with_own_batches": []}
    assert json.loads((ref_dir / "result.json").read_text())["train_frames"]["per_shot_per_epoch"] == 2
    assert "frame(s) of each shot drawn anew each epoch" in (ref_dir / "log.txt").read_text()

    run_dir = runner.prepare("cam", "gt-val", "synth-yto", overrides, tmp_path / "killed")

    def kill_after_epoch_1(stage, epoch):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.execute(run_dir, progress=False, callbacks=[kill_after_epoch_1])
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1] == "0-classifier-epoch001.pt"
    resumed = runner.execute(run_dir, progress=False)
    assert resumed["resumed_from"] == "classifier epoch 1"
    assert resumed["metrics"] == ref["metrics"] and resumed["selection"] == ref["selection"]
    assert resumed["train_frames"] == ref["train_frames"]
    for epoch in (1, 2):
        a = torch.load(ref_dir / "checkpoints" / f"0-classifier-epoch{epoch:03d}.pt", weights_only=True)["method"]
        b = torch.load(run_dir / "checkpoints" / f"0-classifier-epoch{epoch:03d}.pt", weights_only=True)["method"]
        for key in a["classifier"]:
            assert torch.equal(a["classifier"][key], b["classifier"][key]), (epoch, key)
