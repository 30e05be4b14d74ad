"""CLIP-ES as a method plugin (plugins/clip_es/method.py): a method with nothing to train runs,
resumes, re-evaluates, sweeps and fills leaderboards like a trained one. Random tiny CLIP."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness import runner
from harness.cli import main
from harness.errors import HarnessError
from harness.leaderboard.runs import fitting_tables, load_record
from harness.plugins.clip_es.model import clip_es_maps

from conftest import TINY_CUB, TINY_YTO

TINY_CLIP = str(Path(__file__).parent / "data" / "tiny-clip-es.json")
CLIP = {"method.model": TINY_CLIP, "method.random_init": True, "method.attn_layers": 2}
YTO = {**TINY_YTO, "data.image_size": 64, **CLIP}
CUB = {**TINY_CUB, "data.image_size": 64, **CLIP}


def _opts(overrides):
    return ["--cfg-options", *[f"{k}={v}" for k, v in overrides.items()]]


def test_a_training_free_run_evaluates_its_one_epoch_and_resumes_without_work(tmp_path):
    run_dir = runner.prepare("clip-es", "gt-val", "synth-yto", YTO, tmp_path)
    record = runner.execute(run_dir, progress=False)
    assert record["selection"]["stage"] == "zero-shot" and record["selection"]["epoch"] == 1
    assert list(record["selection"]["epoch_scores"]) == ["1"]
    assert 0 <= record["metrics"]["test"]["corloc"] <= 100
    assert record["config"]["method"]["class_input"] == "gt"
    ckpt = run_dir / "checkpoints" / "0-zero-shot-epoch001.pt"
    assert torch.load(ckpt, weights_only=True)["method"] == {}  # CLIP's weights are never copied
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["trained"] is False and "val_corloc_best_tau" in lines[0]
    again = runner.execute(run_dir, progress=False)
    assert again["metrics"] == record["metrics"]


def _method(overrides):
    cfg = runner.compose("clip-es", "gt-val", "synth-yto", {**YTO, **overrides})
    runner.load_dataset(cfg, progress=False)
    return runner.build_method(cfg, 10), cfg


def _batch(cfg, n=4):
    dataset = runner.load_dataset(cfg, progress=False)
    split = dataset.split("test")
    from harness.data.loader import eval_loader

    method_norm = _method({})[0].normalization
    batch = next(iter(eval_loader(split, n, 0, method_norm)))
    return batch["image"], batch["label"]


def test_class_input_is_used_as_set(tmp_path):
    torch.manual_seed(0)
    gt, cfg = _method({})
    images, labels = _batch(cfg)
    wrong = (labels + 1) % 10
    a = gt.predict(images, wrong)
    class_text, background = gt.text(images.device)
    direct = clip_es_maps(gt.clip, images, wrong, class_text, background, attn_layers=2)
    torch.testing.assert_close(a.maps, direct.maps)  # gt: the class it is given

    pred, _ = _method({"method.class_input": "predicted"})
    b = pred.predict(images, wrong)
    class_text, background = pred.text(images.device)
    top1 = clip_es_maps(pred.clip, images, None, class_text, background, attn_layers=2)
    assert (top1.classes != wrong).any()  # the given classes are not what CLIP predicts
    torch.testing.assert_close(b.maps, top1.maps)  # predicted: CLIP's top-1, whatever it is given
    torch.testing.assert_close(b.logits, top1.logits)


def test_a_classifier_predictor_adds_the_shared_classifier_stage(tmp_path):
    run_dir = runner.prepare("clip-es", "gt-val", "synth-yto",
                             {**YTO, "method.class_input": "predicted", "method.predictor": "classifier",
                              "classifier.epochs": 1}, tmp_path)
    record = runner.execute(run_dir, progress=False)
    names = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt"))
    assert names == ["0-classifier-epoch001.pt", "1-zero-shot-epoch001.pt"]
    state = torch.load(run_dir / "checkpoints" / names[1], weights_only=True)["method"]
    assert list(state) == ["classifier"]
    assert 0 <= record["metrics"]["test"]["cls_accuracy"] <= 100  # the classifier's logits were scored
    method, cfg = _method({"method.class_input": "predicted", "method.predictor": "classifier"})
    method.load_state_dict(state)
    images, labels = _batch(cfg)
    out = method.predict(images, labels)
    logits = method._classifier_logits(images)
    torch.testing.assert_close(out.logits, logits)
    class_text, background = method.text(images.device)
    direct = clip_es_maps(method.clip, images, logits.argmax(1), class_text, background, attn_layers=2)
    torch.testing.assert_close(out.maps, direct.maps)


def test_bad_settings_and_missing_weights_are_named(tmp_path):
    with pytest.raises(HarnessError, match="method.class_input='both'"):
        _method({"method.class_input": "both"})
    with pytest.raises(HarnessError, match="method.background='vocc'"):
        _method({"method.background": "vocc"})
    missing = tmp_path / "nope" / "ViT-B-16.pt"
    with pytest.raises(HarnessError, match=rf"CLIP checkpoint not found: {missing} \(given as method.checkpoint"):
        _method({"method.model": "ViT-B-16", "method.random_init": False, "method.checkpoint": str(missing)})
    # the default: the openai tag from the local open_clip cache, never downloaded
    with pytest.raises(HarnessError, match=r"not in the local cache and downloads are disabled.*method.checkpoint="):
        _method({"method.model": "ViT-B-16", "method.random_init": False})


def test_input_size_must_be_a_multiple_of_the_patch():
    method, cfg = _method({"method.input_size": 40})
    images, labels = _batch(cfg, 2)
    with pytest.raises(HarnessError, match="input_size=40: each side must be a positive multiple of the patch size 16"):
        method.predict(images, labels)
    method, _ = _method({"method.input_size": [32, 48]})
    assert method.predict(images, labels).maps.shape == (2, 2, 3)


@pytest.mark.parametrize("dataset,overrides", [("synth-cub", CUB), ("synth-yto", YTO)])
def test_realistic_run_then_every_protocol_and_the_leaderboards(dataset, overrides, tmp_path, capsys):
    argv = ["run", "--plugin", "clip-es", "--protocol", "realistic", "--dataset", dataset,
            "--run-root", str(tmp_path), "--no-progress"]
    assert main(argv + _opts(overrides)) == 0
    run_dir = next(tmp_path.glob("*-clip-es-pseudo-box-val"))
    record = json.loads((run_dir / "result.json").read_text())
    assert record["selection"]["tau_supervision"] == "cam-pg" and record["selection"]["epoch"] == 1
    capsys.readouterr()
    assert main(["eval", "--run", str(run_dir), "--protocol", "all", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("gt-val", "oracle", "test-threshold", "class-only"))
    run = load_record(run_dir)
    assert run.backbone == "clip"  # never matched to a ResNet column through the unused classifier
    tables = fitting_tables([run])
    if dataset == "synth-cub":
        assert "tedloc-t3.1" in tables and "dips-t2.4" in tables
        from harness.leaderboard.runs import target_dataset
        from harness.leaderboard.tables import all_tables

        # Table 3.1 lists ILSVRC first; a synth-cub row still speaks for CUB
        assert target_dataset(all_tables()["tedloc-t3.1"], run) == "cub"
        assert main(["leaderboard", "--match", "--runs", str(run_dir)]) == 0
        out = capsys.readouterr().out
        assert "tedloc-t3.1" in out and "dips-t2.4" in out
    else:
        assert "trcamv-ta2.1-ytov1" in tables


def test_sweep_chooses_tau_caa_and_the_background_list(tmp_path):
    opts = [f"{k}={v}" for k, v in YTO.items()]
    argv = ["sweep", "--plugin", "clip-es", "--protocol", "realistic", "--run-root", str(tmp_path), "--no-progress",
            "--grid", "method.tau_caa=0.2,0.6", "method.background=voc,coco", "--cfg-options", *opts]
    assert main(argv) == 0
    sweep_dir = next((tmp_path / "sweeps").iterdir())
    record = json.loads((sweep_dir / "result.json").read_text())
    assert len(record["trials"]) == 4
    best = max(record["trials"], key=lambda t: t["score"])
    assert record["configuration"]["overrides"] == best["overrides"]
    assert {tuple(sorted(t["overrides"].items())) for t in record["trials"]} == {
        (("method.background", b), ("method.tau_caa", t)) for b in ("voc", "coco") for t in (0.2, 0.6)}


def test_a_stage_that_trains_nothing_has_exactly_one_epoch():
    from harness.method import NoTrainingStage

    stage = NoTrainingStage()
    assert runner._stages_problem([stage]) is None and list(stage.parameters()) == []
    stage.epochs = 2
    assert "trains nothing, so it has one epoch, not epochs=2" in runner._stages_problem([stage])
