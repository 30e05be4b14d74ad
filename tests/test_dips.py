"""DiPS and dino-attn: the encoder's class-token maps, the proposal bank (cache, sampling rules),
both f_l variants' losses, the encoder stage, and end-to-end runs (plugins/dips; the proposal
algorithm itself is tested in test_dips_proposals.py)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness import runner
from harness.cli import main
from harness.errors import HarnessError
from harness.fcam.pseudo_labels import IGNORE, SamplerConfig
from harness.leaderboard.runs import fitting_tables, load_record
from harness.models.vit import create_vit
from harness.plugins.dips import bank as bank_mod
from harness.plugins.dips.bank import ProposalBank, renormalize
from harness.plugins.dips.model import AttentionEncoder, head_indices, upsample
from harness.plugins.dips.proposals import ProposalConfig, Proposals

from conftest import TINY_CUB

TINY_VIT = {"depth": 2, "embed_dim": 64, "num_heads": 4}
DIPS = {**TINY_CUB, "data.image_size": 64, "method.backbone.pretrained": False,
        **{f"method.backbone.{k}": v for k, v in TINY_VIT.items()},
        "method.encoder_train.epochs": 1, "method.encoder_train.batch_size": 16}
DIPS_RUN = {**DIPS, "method.train.epochs": 2, "method.train.batch_size": 16}


def tiny_encoder(classes=3, heads="all"):
    torch.manual_seed(0)
    return AttentionEncoder(create_vit("vit_small_patch16_224", False, TINY_VIT), classes, heads)


# ------------------------------------------------------------------ encoder


def test_class_token_maps_are_the_last_blocks_attention_rows():
    """Against timm's own attention matrix (unfused path, read where it leaves the softmax)."""
    enc = tiny_encoder().eval()
    attn = enc.vit.blocks[-1].attn
    attn.fused_attn = False
    seen = []
    attn.attn_drop.register_forward_hook(lambda m, a, out: seen.append(out))
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        tokens, a = enc.attention(x)
        maps = enc.maps(x)
    full = seen[0]  # (B, heads, T, T)
    torch.testing.assert_close(a, full[:, :, 0, 1:])
    torch.testing.assert_close(tokens, enc.vit.forward_features(x))
    assert maps.shape == (2, 5, 3, 4)  # 4 heads + the mean, on the 3 x 4 token grid
    mean = full[:, :, 0, 1:].mean(1).reshape(2, 3, 4)
    lo, hi = mean.amin((1, 2), keepdim=True), mean.amax((1, 2), keepdim=True)
    torch.testing.assert_close(maps[:, 4], (mean - lo) / (hi - lo))
    assert (maps.amin((2, 3)) == 0).all() and torch.allclose(maps.amax((2, 3)), torch.ones(2, 5))


def test_head_selection():
    assert head_indices("all", 6) == [0, 1, 2, 3, 4, 5]
    assert head_indices("first4", 6) == [0, 1, 2, 3]  # the WACV-W variant (+ the mean)
    assert head_indices([5, 1], 6) == [5, 1]
    assert tiny_encoder(heads="first4").num_maps == 5
    for bad in ("some", [6], [], [True]):
        with pytest.raises(HarnessError, match="method.heads"):
            head_indices(bad, 6)


def test_upsampled_maps_are_cropped_where_the_vit_padded_and_renormalized():
    m = torch.zeros(1, 1, 2, 2)
    m[0, 0, 0, 0] = 1.0
    up = upsample(m, (20, 24), 16)  # a 20 x 24 frame is 2 x 2 tokens of 16 px, padded to 32 x 32
    assert up.shape == (1, 1, 20, 24) and up.max() == 1 and up.min() == 0
    assert up[0, 0, 0, 0] == 1 and up[0, 0, 19, 23] == 0


def test_renormalize_goes_from_one_normalization_to_another():
    x01 = torch.rand(2, 3, 4, 4)
    a = ((0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    b = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    norm = lambda x, n: (x - torch.tensor(n[0])[:, None, None]) / torch.tensor(n[1])[:, None, None]  # noqa: E731
    torch.testing.assert_close(renormalize(norm(x01, a), a, b), norm(x01, b))
    t = norm(x01, a)
    assert renormalize(t, a, a) is t


# ------------------------------------------------------------------ proposal bank and sampling


def hand_bank(size=(8, 10)):
    """One frame, two maps on a 1-pixel token grid (patch 1): map 0 rises left to right, map 1
    right to left; proposals: box A (x 0-3, y 0-7) from map 1 and box B (x 8-9, y 2-5) from map 0."""
    h, w = size
    ramp = torch.linspace(0, 1, w).expand(h, w)
    maps = torch.stack([ramp, ramp.flip(-1)])[None].half()
    props = Proposals(boxes=torch.tensor([[[0, 0, 3, 7], [8, 2, 9, 5]]]), heads=torch.tensor([[1, 0]]),
                      scores=torch.tensor([[0.9, 0.5]]), count=torch.tensor([2]))
    return ProposalBank(maps, props, size, 1)


def test_sampling_follows_the_thesis_rules_for_each_proposal():
    bank = hand_bank()
    cfg = SamplerConfig(k=50, fg_top_p=0.25, bg_p=0.5, fg_otsu=False, bg="bottom", balanced=True)
    g = torch.Generator().manual_seed(0)
    seen_boxes = {0: 0, 1: 0}
    for _ in range(200):
        lab = bank.sample(torch.tensor([0]), None, cfg, g)[0]
        fg, bg = lab == 1, lab == 0
        assert fg.sum() == bg.sum() > 0  # balanced
        outside = torch.ones(8, 10, dtype=torch.bool)
        outside[0:8, 0:4] = False
        outside[2:6, 8:10] = False
        assert not (bg & ~outside).any()  # background outside every box
        if fg[:, :4].any():  # box A, map 1 (high on the left): its top 25% = columns 0 (8 px)
            seen_boxes[0] += 1
            assert fg[:, 0].all() and not fg[:, 1:].any()
            # the lowest half of the pixels outside both boxes, by map 1 (which falls to the right)
            vals = bank.maps[0, 1].float()[outside]
            thr = vals.sort().values[int(0.5 * len(vals)) - 1]
            assert (bank.maps[0, 1].float()[bg] <= thr).all()
        else:  # box B, map 0 (high on the right): the top 25% of its 8 pixels, ties kept: column 9
            seen_boxes[1] += 1
            assert fg[2:6, 9].all() and fg.sum() == 4 and bg.sum() == 4
    assert 70 < seen_boxes[0] < 130  # one proposal drawn uniformly
    # a flipped frame: the same proposal (same draw), its regions mirrored; every fg candidate is
    # drawn here (k >= their count), so the foreground seeds mirror exactly
    for seed in range(6):
        flipped = bank.sample(torch.tensor([0]), torch.tensor([1]), cfg, torch.Generator().manual_seed(seed))[0]
        plain = bank.sample(torch.tensor([0]), None, cfg, torch.Generator().manual_seed(seed))[0]
        assert torch.equal(flipped == 1, (plain == 1).flip(-1))
        assert not ((flipped == 0).flip(-1) & ~outside).any()


def test_the_proposal_cache_is_reused_and_invalidated_by_settings_and_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_HOME", str(tmp_path))
    cfg = runner.compose("dips", "gt-val", "synth-cub", DIPS)
    method = runner.build_method(cfg, 4)
    split = runner.load_dataset(cfg, progress=False).split("train")
    calls = []
    real = bank_mod.propose
    monkeypatch.setattr(bank_mod, "propose", lambda *a, **k: calls.append(1) or real(*a, **k))
    folder = tmp_path / "dips-proposals"

    def build(pcfg):
        return ProposalBank.build(method.encoder, method.classifier, split, "cpu", pcfg, batch_size=16,
                                  normalization=method.normalization, progress=False)

    first = build(ProposalConfig())
    n = len(calls)
    assert n > 0 and len(list(folder.glob("*.pt"))) == 1
    again = build(ProposalConfig())
    assert len(calls) == n  # read from the cache
    for f in ("boxes", "heads", "scores", "count"):
        assert torch.equal(getattr(first.proposals, f), getattr(again.proposals, f))
    assert torch.equal(first.maps, again.maps) and len(first.proposals) == len(split)
    build(ProposalConfig(top_k=2))
    assert len(calls) == 2 * n  # new settings, new key
    with torch.no_grad():
        method.classifier.head.bias.add_(1.0)  # another f_r
    build(ProposalConfig())
    assert len(calls) == 3 * n and len(list(folder.glob("*.pt"))) == 3
    newest = max(folder.glob("*.pt"), key=lambda p: p.stat().st_mtime_ns)
    newest.write_bytes(b"not a torch file")  # damaged: computed again, not fatal
    build(ProposalConfig())
    assert len(calls) == 4 * n


# ------------------------------------------------------------------ losses


def small_stage(variant, **over):
    cfg = runner.compose("dips", "gt-val", "synth-cub", {**DIPS, "method.variant": variant,
                                                         "method.losses.crf.weight": 0.0, **over})
    method = runner.build_method(cfg, 2)
    stage = method.stages[-1]
    stage.bank = hand_bank((16, 16))
    stage.bank.proposals.count[:] = 1  # box A only: deterministic regions
    stage.begin_epoch(1)
    return method, stage


def test_ivc_loss_is_the_partial_ce_of_the_sampled_pixels_by_hand():
    method, stage = small_stage("ivc", **{"method.pseudo_labels.k": 2})
    logits = torch.zeros(1, 2, 16, 16)
    logits[0, 1] = math.log(3)  # p(fg) = 3/4 everywhere
    method.localize = lambda images, tokens=None: logits.clone().requires_grad_(True)
    torch.manual_seed(0)
    total, scalars = stage.loss({"image": torch.zeros(1, 3, 16, 16), "label": torch.tensor([1]),
                                 "index": torch.tensor([0])})
    # 2 fg pixels at -log(3/4), 2 bg pixels at -log(1/4): mean over the 4 seeds
    assert scalars["pce"] == pytest.approx((2 * -math.log(0.75) + 2 * -math.log(0.25)) / 4)
    assert "cls" not in scalars and "crf" not in scalars
    assert float(total.detach()) == pytest.approx(scalars["pce"])


def test_wacvw_adds_the_masked_image_through_the_frozen_encoder():
    method, stage = small_stage("wacvw", **{"method.losses.cls.weight": 0.5, "method.losses.pce.weight": 0.0})
    stage.train_mode()
    images = torch.randn(2, 3, 16, 16)
    labels = torch.tensor([1, 0])
    torch.manual_seed(0)
    stage.bank = hand_bank((16, 16))
    stage.bank.maps = stage.bank.maps.expand(2, -1, -1, -1)
    stage.bank.proposals = Proposals(*(t.expand(2, *t.shape[1:]) for t in (
        stage.bank.proposals.boxes, stage.bank.proposals.heads, stage.bank.proposals.scores, stage.bank.proposals.count)))
    total, scalars = stage.loss({"image": images, "label": labels, "index": torch.tensor([0, 1])})
    with torch.no_grad():
        fg = method.localize(images).softmax(1)[:, 1:2]
        want = F.cross_entropy(method.encoder.head(method.encoder.vit.forward_features(images * fg)[:, 0]), labels)
    assert scalars["cls"] == pytest.approx(float(want), rel=1e-5)
    assert float(total.detach()) == pytest.approx(0.5 * float(want), rel=1e-5)
    total.backward()
    assert all(p.grad is None for p in method.encoder.parameters())  # frozen: no gradient kept
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.localizer.parameters())


def test_bad_dips_settings_are_named():
    with pytest.raises(HarnessError, match="method.variant"):
        runner.build_method(runner.compose("dips", "gt-val", "synth-cub", {**DIPS, "method.variant": "v2"}), 2)
    with pytest.raises(HarnessError, match="finetune"):
        runner.build_method(runner.compose("dips", "gt-val", "synth-cub", {**DIPS, "method.backbone.finetune": "yes"}), 2)
    with pytest.raises(HarnessError, match="top_k"):
        runner.build_method(runner.compose("dips", "gt-val", "synth-cub", {**DIPS, "method.proposals.top_k": 0}), 2)
    with pytest.raises(HarnessError, match="unknown config key"):
        runner.compose("dips", "gt-val", "synth-cub", {**DIPS, "method.proposals.topk": 2})


def test_the_paper_configs_compose_and_ask_for_the_dino_weights():
    papers = Path(runner.__file__).parent / "configs" / "papers"
    for name, variant, heads in (("dips_cub", "ivc", "all"), ("dips_wacvw", "wacvw", "first4")):
        cfg = runner.compose("dips", "test-threshold", "synth-cub", config_files=[papers / f"{name}.py"])
        assert cfg.method.variant == variant and cfg.method.heads == heads
        assert cfg.method.backbone.pretrained is True and cfg.method.backbone.finetune is False
        assert cfg.classifier.backbone == "resnet50" and cfg.method.train.epochs == 50


# ------------------------------------------------------------------ encoder stage


def test_the_encoder_stage_trains_only_f_c_unless_fine_tuning():
    for finetune in (False, True):
        cfg = runner.compose("dips", "gt-val", "synth-cub", {**DIPS, "method.backbone.finetune": finetune})
        method = runner.build_method(cfg, 2)
        stage = method.stages[1]
        assert stage.name == "encoder" and method.finetune is finetune
        before = {k: v.clone() for k, v in method.encoder.state_dict().items()}
        opt, _ = stage.optimizer()
        stage.train_mode()
        loss, scalars = stage.loss({"image": torch.randn(4, 3, 32, 32), "label": torch.tensor([0, 1, 0, 1])})
        opt.zero_grad()
        loss.backward()
        opt.step()
        after = method.encoder.state_dict()
        assert not torch.equal(before["head.weight"], after["head.weight"])
        vit_changed = any(not torch.equal(before[k], after[k]) for k in before if k.startswith("vit.") and
                          before[k].is_floating_point())
        assert vit_changed is finetune


# ------------------------------------------------------------------ runs


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["ivc", "wacvw"])
def test_a_dips_run_on_synth_cub_records_how_the_encoder_was_made(tmp_path, variant):
    argv = ["run", "--plugin", "dips", "--protocol", "realistic", "--dataset", "synth-cub", "--run-root",
            str(tmp_path), "--no-progress", "--cfg-options",
            *[f"{k}={v}" for k, v in {**DIPS_RUN, "method.variant": variant}.items()]]
    assert main(argv) == 0
    run_dir = next(tmp_path.glob("*-dips-*"))
    record = json.loads((run_dir / "result.json").read_text())
    assert record["selection"]["stage"] == "dips"
    assert record["method_provenance"]["encoder_finetuned"] is True
    assert record["method_provenance"]["encoder_weights"] == "random initialization"
    assert record["method_provenance"]["variant"] == variant
    names = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt"))
    assert names[0].startswith("0-classifier") and names[-1] == "2-dips-epoch002.pt"
    assert any(n.startswith("1-encoder") for n in names)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"train_pce", "train_crf"} <= set(lines[-1]) and (("train_cls" in lines[-1]) == (variant == "wacvw"))
    assert 0 <= record["metrics"]["test"]["corloc"] <= 100
    assert "dips-t2.1" in fitting_tables([load_record(run_dir)])


@pytest.mark.slow
def test_a_dino_attn_run_picks_one_head_map_per_image(tmp_path):
    run_dir = runner.prepare("dino-attn", "gt-val", "synth-cub", DIPS, tmp_path)
    record = runner.execute(run_dir, progress=False)
    assert record["selection"]["stage"] == "encoder"  # fine-tuned: no DINO weights offline
    assert record["method_provenance"]["encoder_finetuned"] is True
    cfg = runner.compose("dino-attn", "gt-val", "synth-cub", {**DIPS, "method.backbone.finetune": False})
    method = runner.build_method(cfg, 4)
    assert [s.name for s in method.stages] == ["classifier", "dino-attn"] and not method.stages[-1].trains
    images = torch.randn(3, 3, 64, 64)
    method.eval_mode()
    with torch.no_grad():
        pred = method.predict(images, torch.tensor([0, 1, 2]))
        maps = upsample(method.encoder.maps(images), (64, 64), 16)
    # each image's map is one of its head maps, the one whose blurred-background image f_r scores highest
    hit = [(maps[i] - pred.maps[i]).abs().amax((1, 2)).min() for i in range(3)]
    assert max(float(h) for h in hit) == 0.0
    assert pred.logits.shape == (3, 4)
