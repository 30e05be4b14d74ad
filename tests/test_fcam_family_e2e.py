"""F-CAM, TCAM and CoLo-CAM end to end on a tiny synth-yto, over one shared classifier."""
from __future__ import annotations

import json

import pytest
import torch

from harness import runner
from harness.registry import registry

from conftest import TINY_YTO

FAMILY = ["fcam", "tcam", "colocam"]
TINY_DECODER = {
    **TINY_YTO,
    "classifier.cache": True,  # the three share the classifier stage
    "method.decoder.epochs": 2,
    "method.decoder.batch_size": 8,
    "method.decoder.channels": [32, 16],  # a small decoder: the tests check wiring, not accuracy
}


def test_the_three_are_registered_with_their_own_configuration():
    reg = registry()
    for name in FAMILY:
        assert reg.get("method", name).plugin == name
    from harness import config as config_mod

    cfgs = {n: config_mod.read_file(reg.get("method", n).config)["method"] for n in FAMILY}
    assert cfgs["tcam"]["pseudo_labels"]["temporal"] >= 1 and cfgs["fcam"]["pseudo_labels"]["temporal"] == 0
    assert cfgs["colocam"]["losses"]["coloc"]["weight"] > 0 and cfgs["fcam"]["losses"]["coloc"]["weight"] == 0
    assert cfgs["colocam"]["clips"]["n"] > 1
    # one implementation: every plugin builds the same class
    assert {reg.get("method", n).factory for n in FAMILY} == {reg.get("method", "fcam").factory}


@pytest.mark.slow
def test_family_runs_end_to_end_on_one_classifier(tmp_path):
    records, classifiers = {}, {}
    for name in FAMILY:
        run_dir = runner.prepare(name, "realistic", "synth-yto", TINY_DECODER, tmp_path)
        records[name] = runner.execute(run_dir, progress=False)
        ck = runner.Checkpoints(run_dir)
        classifiers[name] = ck.load(0, "classifier", TINY_YTO["classifier.epochs"])["method"]["classifier"]
        final = ck.load(1, "decoder", 2)["method"]["classifier"]
        # the decoder stage never touches the classifier
        assert all(torch.equal(final[k], classifiers[name][k]) for k in final)
        log = (run_dir / "log.txt").read_text()
        if name != "fcam":
            assert "classifier stage reused from the stage cache" in log
        lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        decoder_lines = [x for x in lines if x["stage"] == "decoder"]
        assert len(decoder_lines) == 2 and all("train_pce" in x and "train_crf" in x for x in decoder_lines)
        if name == "colocam":
            assert all(x["train_coloc"] == pytest.approx(-5.0) for x in decoder_lines)  # adaptive: -lambda_c
    for name in FAMILY[1:]:
        assert all(torch.equal(classifiers[name][k], classifiers["fcam"][k]) for k in classifiers["fcam"])
    for name, rec in records.items():
        assert rec["selection"]["stage"] == "decoder"
        assert 0 <= rec["metrics"]["test"]["corloc"] <= 100


@pytest.mark.slow
def test_colocam_resumes_from_a_decoder_checkpoint_like_an_uninterrupted_run(tmp_path):
    overrides = {**TINY_DECODER, "classifier.cache": False, "classifier.epochs": 1, "method.decoder.epochs": 2}
    full_dir = runner.prepare("colocam", "gt-val", "synth-yto", overrides, tmp_path / "a")
    full = runner.execute(full_dir, progress=False)

    class Stop(Exception):
        pass

    def stop_after_decoder_epoch_1(stage, epoch):
        if stage == "decoder" and epoch == 1:
            raise Stop

    cut_dir = runner.prepare("colocam", "gt-val", "synth-yto", overrides, tmp_path / "b")
    with pytest.raises(Stop):
        runner.execute(cut_dir, progress=False, callbacks=[stop_after_decoder_epoch_1])
    resumed = runner.execute(cut_dir, progress=False)
    assert resumed["resumed_from"] == "decoder epoch 1"
    a = runner.Checkpoints(full_dir).load(1, "decoder", 2)["method"]["decoder"]
    b = runner.Checkpoints(cut_dir).load(1, "decoder", 2)["method"]["decoder"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    assert resumed["selection"]["epoch"] == full["selection"]["epoch"]
    assert resumed["metrics"]["test"]["corloc"] == pytest.approx(full["metrics"]["test"]["corloc"])


def test_unknown_loss_term_and_bad_pseudo_label_settings_are_named(tmp_path):
    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match="method.losses"):
        runner.prepare("fcam", "gt-val", "synth-yto", {**TINY_YTO, "method.losses.tv": 1.0}, tmp_path)
    # the method is built before the run directory exists: a bad setting leaves nothing behind
    with pytest.raises(HarnessError, match="method 'fcam' .*pseudo_labels.bg='outside'"):
        runner.prepare("fcam", "gt-val", "synth-yto", {**TINY_DECODER, "method.pseudo_labels.bg": "outside"}, tmp_path)
    assert list(tmp_path.iterdir()) == []
