"""Every CAM baseline runs end to end on both synthetic datasets from one trained classifier."""
import json

import pytest

from harness import runner, stage_cache
from harness.registry import registry

from conftest import TINY_CUB, TINY_YTO

SEVEN = ["cam", "gradcam", "gradcampp", "smoothgradcampp", "xgradcam", "layercam", "scorecam"]


def test_the_seven_are_registered_as_methods_and_cam_sources():
    reg = registry()
    for name in SEVEN:
        assert reg.get("method", name).plugin == "cam_baselines"
        assert reg.get("cam_source", name).factory().name == name


@pytest.mark.slow
@pytest.mark.parametrize("dataset,overrides", [("synth-yto", TINY_YTO), ("synth-cub", TINY_CUB)])
def test_seven_methods_share_one_classifier(dataset, overrides, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_HOME", str(tmp_path / "home"))
    overrides = {**overrides, "classifier.cache": True, "classifier.epochs": 1}
    records = {}
    for name in SEVEN:
        run_dir = runner.prepare(name, "gt-val", dataset, overrides, tmp_path / "runs")
        records[name] = runner.execute(run_dir, progress=False)
        log = (run_dir / "log.txt").read_text()
        assert ("reused from the stage cache" in log) == (name != SEVEN[0]), name
    assert len(list(stage_cache.cache_root().iterdir())) == 1  # one classifier for all seven
    for name, rec in records.items():
        assert rec["plugin"] == name
        assert 0 <= rec["metrics"]["test"]["corloc"] <= 100
        # Same classifier, so the same class scores whatever the CAM source.
        assert rec["metrics"]["test"]["cls_accuracy"] == records["cam"]["metrics"]["test"]["cls_accuracy"]
    board = (tmp_path / "runs" / "leaderboard.md").read_text()
    assert all(f"| {name} " in board for name in SEVEN)
    saved = json.loads(next((tmp_path / "runs").glob("*-smoothgradcampp-gt-val/result.json")).read_text())
    assert saved["config"]["method"]["options"]  # the source's settings are recorded
