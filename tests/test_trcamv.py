"""TrCAM-V (plugins/trcamv): the network, the pixel selection on hand-built maps, the loss on a
hand-computed case through the shared F-CAM parts, and runs on synth-yto (tiny random ViT)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from harness import runner
from harness.cli import main
from harness.errors import HarnessError
from harness.fcam.cam_bank import CamBank, previous_frames
from harness.fcam.pseudo_labels import IGNORE, SamplerConfig, otsu_threshold, regions, sample_labels
from harness.leaderboard.runs import fitting_tables, load_record
from harness.models.vit import create_vit
from harness.plugins.trcamv.model import TrcamvNet

from conftest import TINY_YTO

TINY_VIT = {"depth": 2, "embed_dim": 64, "num_heads": 2}
TRCAMV = {**TINY_YTO, "data.image_size": 64, "method.backbone.pretrained": False,
          **{f"method.backbone.{k}": v for k, v in TINY_VIT.items()}, "method.train.epochs": 2,
          "method.train.batch_size": 16}
TINY_CLIP = str(Path(__file__).parent / "data" / "tiny-clip-es.json")


def tiny_net(classes=3):
    torch.manual_seed(0)
    return TrcamvNet(create_vit("vit_small_patch16_224", False, TINY_VIT), classes)


# ------------------------------------------------------------------ network


@pytest.mark.parametrize("size", [(64, 64), (48, 80), (40, 56)])
def test_the_network_gives_class_scores_and_a_two_channel_map_at_the_input_size(size):
    net = tiny_net().eval()
    logits, seg = net(torch.randn(2, 3, *size))
    assert logits.shape == (2, 3) and seg.shape == (2, 2, *size)


def test_the_localization_head_reads_the_patch_tokens_and_the_class_token():
    net = tiny_net().eval()
    x = torch.randn(1, 3, 64, 64)
    seen = []
    net.decoder.center.register_forward_pre_hook(lambda m, a: seen.append(a[0]))  # the grid it decodes
    with torch.no_grad():
        net(x)
        tokens = net.backbone.forward_features(x)
    grid = seen[0]
    assert grid.shape == (1, 128, 4, 4)
    torch.testing.assert_close(grid[0, :64].flatten(1).T, tokens[0, 1:])  # patch tokens, row-major
    torch.testing.assert_close(grid[0, 64:, 2, 3], tokens[0, 0])  # the class token, everywhere


def test_backbone_weights_are_never_downloaded(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(HarnessError, match=r"not cached on this machine; method.backbone.pretrained=True never downloads"):
        create_vit("vit_small_patch16_224.dino", True, TINY_VIT)
    with caplog.at_level("WARNING"):
        net = create_vit("vit_small_patch16_224.dino", None, TINY_VIT)  # None: cached, else random, warned
    assert net.loaded_weights is None and "random initialization" in caplog.text
    with pytest.raises(HarnessError, match="no such checkpoint file"):
        create_vit("vit_small_patch16_224.dino", str(tmp_path / "dino.pth"), TINY_VIT)
    saved = create_vit("vit_small_patch16_224", False, TINY_VIT)
    torch.save(saved.state_dict(), tmp_path / "vit.pth")
    loaded = create_vit("vit_small_patch16_224", str(tmp_path / "vit.pth"), TINY_VIT)
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), loaded.state_dict().values()))


# ------------------------------------------------------------------ pixel selection


def test_otsu_matches_opencv():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(6, 24, 24, generator=g) ** torch.linspace(0.5, 3, 6)[:, None, None]
    ours = otsu_threshold(maps)
    for m, t in zip(maps, ours):
        q = (m.numpy() * 255).astype(np.uint8)
        level, _ = cv2.threshold(q, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        assert int(t) == int(level)


def _two_blobs():
    """A small bright blob (top left) and a big dim one (bottom right), on a dark field."""
    m = torch.full((1, 16, 16), 0.05)
    m[0, 1:3, 1:3] = 1.0  # 4 px, mean 1.0
    m[0, 8:15, 8:15] = 0.6  # 49 px, mean 0.6
    m[0, 10, 10] = 0.7
    return m


def _bank(maps, roi="densest"):
    bank = CamBank(maps.half(), torch.zeros(len(maps), 1, dtype=torch.long) + torch.arange(len(maps))[:, None],
                   tuple(maps.shape[-2:]), None)
    bank.roi = bank._rois(roi, 8)
    return bank


def test_the_densest_region_is_the_bright_blob_not_the_big_one():
    maps = _two_blobs()
    bank = _bank(maps)
    roi = bank.get_roi(torch.tensor([0]))[0]
    assert roi[1:3, 1:3].all() and int(roi.sum()) == 4
    largest = _bank(maps, "largest").get_roi(torch.tensor([0]))[0]
    assert largest[8:15, 8:15].all() and int(largest.sum()) == 49


def test_top_and_bottom_n_percent():
    maps = torch.zeros(1, 10, 10)
    maps[0, 2:8, 2:8] = torch.linspace(0.5, 1.0, 36).reshape(6, 6)  # one region, 36 px
    maps[0, 0, :] = torch.linspace(0.0, 0.09, 10)  # the 10 lowest pixels ... the rest of the field is 0
    roi = _bank(maps).get_roi(torch.tensor([0]))
    cfg = SamplerConfig(k=1, fg_top_p=0.25, bg="bottom", bg_p=0.1)
    fg, bg = regions(maps, cfg, roi)
    assert int(fg.sum()) == 9  # ceil(0.25 * 36) of the region, its brightest
    assert fg[0].nonzero().tolist() == [[6, 5], [6, 6], [6, 7], [7, 2], [7, 3], [7, 4], [7, 5], [7, 6], [7, 7]]
    assert int(bg.sum()) >= 10 and not (bg & (maps > 0.0)).any()  # the bottom 10 of 100: zeros (ties kept)


def test_sampling_frequencies_multinomial_foreground_uniform_background():
    maps = torch.zeros(1, 8, 8)
    maps[0, 2, 2], maps[0, 2, 3] = 1.0, 0.5  # foreground candidates with weights 2:1
    roi = torch.ones(1, 8, 8, dtype=torch.bool)
    cfg = SamplerConfig(k=1, fg_draw="multinomial", fg_top_p=1.0, bg="bottom", bg_p=0.5)
    g = torch.Generator().manual_seed(0)
    fg_hits = torch.zeros(8, 8)
    bg_hits = torch.zeros(8, 8)
    n = 3000
    for _ in range(n):
        lab = sample_labels(maps, cfg, roi, generator=g)[0]
        fg_hits += lab == 1
        bg_hits += lab == 0
    assert fg_hits.sum() == n and abs(fg_hits[2, 2] / n - 2 / 3) < 0.03  # multinomial by activation
    bg_cells = bg_hits[bg_hits > 0]
    assert len(bg_cells) == 62 and float(bg_cells.std() / bg_cells.mean()) < 0.2  # uniform over 62 zeros


# ------------------------------------------------------------------ the loss, by hand


def test_the_stage_loss_on_a_hand_computed_case(tmp_path):
    """2x2 frame, maps [[.9, .8], [.1, 0]]: the Otsu region is the top row (one component);
    fg_top_p 0.5 keeps (0, 0); bg_p 0.25 keeps (1, 1); k = 3 takes every candidate.
    Seg logits: (0, 0) -> (0, ln 3), (1, 1) -> (ln 3, 0), else (0, 0); class logits (0, 0).
    CE = ln 2; PAL = -ln(3/4) at both seeds; size: both areas are 2, t = 1: 0.5 * 2 * (-ln 2)."""
    cfg = runner.compose("trcamv", "gt-val", "synth-yto", {
        **TRCAMV, "method.pseudo_labels.k": 3, "method.pseudo_labels.fg_top_p": 0.5,
        "method.pseudo_labels.bg_p": 0.25, "method.losses.crf.weight": 0.0})
    method = runner.build_method(cfg, 2)
    stage = method.stages[-1]
    stage.bank = _bank(torch.tensor([[[0.9, 0.8], [0.1, 0.0]]]))
    seg = torch.zeros(1, 2, 2, 2)
    seg[0, 1, 0, 0] = math.log(3)
    seg[0, 0, 1, 1] = math.log(3)
    method.net.forward = lambda x: (torch.zeros(1, 2, requires_grad=True), seg.clone().requires_grad_(True))
    stage.begin_epoch(1)
    total, scalars = stage.loss({"image": torch.zeros(1, 3, 2, 2), "label": torch.tensor([1]), "index": torch.tensor([0])})
    assert scalars["cls"] == pytest.approx(math.log(2))
    assert scalars["pal"] == pytest.approx(-math.log(0.75))
    assert scalars["size"] == pytest.approx(-math.log(2))
    assert "crf" not in scalars
    assert float(total.detach()) == pytest.approx(math.log(2) - math.log(0.75) - math.log(2))
    labels = sample_labels(stage.bank.get(torch.tensor([0])), stage.sampler, stage.bank.get_roi(torch.tensor([0])))
    assert labels[0].tolist() == [[1, IGNORE], [IGNORE, 0]]


# ------------------------------------------------------------------ runs


@pytest.mark.slow
def test_realistic_run_on_synth_yto_then_every_protocol(tmp_path, capsys):
    argv = ["run", "--plugin", "trcamv", "--protocol", "realistic", "--run-root", str(tmp_path), "--no-progress",
            "--cfg-options", *[f"{k}={v}" for k, v in TRCAMV.items()]]
    assert main(argv) == 0
    run_dir = next(tmp_path.glob("*-trcamv-pseudo-box-val"))
    record = json.loads((run_dir / "result.json").read_text())
    assert record["selection"]["stage"] == "trcamv" and record["selection"]["tau_supervision"] == "cam-pg"
    names = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt"))
    assert names[0].startswith("0-classifier") and names[-1] == "1-trcamv-epoch002.pt"
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"train_cls", "train_pal", "train_crf", "train_size"} <= set(lines[-1])
    capsys.readouterr()
    assert main(["eval", "--run", str(run_dir), "--protocol", "all", "--no-progress"]) == 0
    assert "test-threshold-per-class" in capsys.readouterr().out
    assert "trcamv-ta2.1-ytov1" in fitting_tables([load_record(run_dir)])


@pytest.mark.slow
def test_a_run_with_tiny_random_clip_es_maps(tmp_path):
    overrides = {**TRCAMV, "method.map_source": "clip-es", "method.train.epochs": 1,
                 "method.clip_es.model": TINY_CLIP, "method.clip_es.random_init": True, "method.clip_es.attn_layers": 2}
    run_dir = runner.prepare("trcamv", "gt-val", "synth-yto", overrides, tmp_path)
    record = runner.execute(run_dir, progress=False)
    assert [p.name for p in (run_dir / "checkpoints").glob("*.pt")] == ["0-trcamv-epoch001.pt"]  # no classifier
    assert 0 <= record["metrics"]["test"]["corloc"] <= 100
    with pytest.raises(HarnessError, match=r"unknown config key 'method.clip_es.tau'"):
        runner.prepare("trcamv", "gt-val", "synth-yto", {**overrides, "method.clip_es.tau": 0.3}, tmp_path)
