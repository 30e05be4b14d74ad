"""Shared fixtures: generated data goes to a per-session HARNESS_HOME, never the user cache."""
from __future__ import annotations

import os

import pytest

# Triton decides interpreter-or-compiler when its library functions are wrapped, at import.
# Other tests import it indirectly (timm, torch), so the CPU kernel tests need the flag set
# before anything else runs.
os.environ.setdefault("TRITON_INTERPRET", "1")

# A synth-yto small enough for end-to-end runs in seconds on 2 CPU cores.
TINY_YTO = {
    "data.image_size": 32,
    "data.train_videos_per_class": 2,
    "data.val_videos_per_class": 1,
    "data.test_videos_per_class": 1,
    "data.shots_per_video": 2,
    "data.frames_per_shot": 4,
    "classifier.epochs": 2,
    "classifier.batch_size": 16,
    "classifier.feature_index": 1,
    "eval.threshold_step": 0.01,
    "classifier.cache": False,  # tests of training itself must train; test_stage_cache.py covers reuse
    "run.report": False,  # the report has its own tests (test_report.py, the demo test)
    # the realistic protocol's annotator trains its own classifier: as tiny
    "annotators.cam-pg.classifier.epochs": 1,
    "annotators.cam-pg.classifier.batch_size": 16,
    "annotators.cam-pg.classifier.feature_index": 1,
}
TINY_CUB = {
    "data.image_size": 32,
    "data.num_classes": 4,
    "data.train_images_per_class": 4,
    "data.val_images_per_class": 2,
    "data.test_images_per_class": 2,
    **{k: v for k, v in TINY_YTO.items() if not k.startswith("data.")},
}


@pytest.fixture(autouse=True, scope="session")
def _harness_home(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("HARNESS_HOME", str(tmp_path_factory.mktemp("harness-home")))
    yield
    mp.undo()


@pytest.fixture
def fresh_registry():
    """Drop the process-wide registry so a test sees the plugins installed for it."""
    from harness.registry import registry

    registry.cache_clear()
    yield
    registry.cache_clear()


@pytest.fixture(scope="module")
def triton_interpreter():
    """TRITON_INTERPRET=1 for a whole test module (the kernel tests run Triton on CPU tensors);
    use it with ``pytestmark = pytest.mark.usefixtures("triton_interpreter")``."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TRITON_INTERPRET", "1")
    yield
    mp.undo()


@pytest.fixture(scope="session")
def seed_group(tmp_path_factory, _harness_home):
    """A seed group trained once for the session (``harness run --seeds 0,1,2``: CAM, gt-val, tiny
    synth-yto). Read-only: a test that writes into it works on a copy (:func:`copy_group`)."""
    from harness.cli import main

    root = tmp_path_factory.mktemp("seed-group")
    assert main(["run", "--plugin", "cam", "--seeds", "0,1,2", "--run-root", str(root), "--no-progress",
                 "--cfg-options", *(f"{k}={v}" for k, v in TINY_YTO.items())]) == 0
    [group_dir] = (root / "groups").iterdir()
    return group_dir


def copy_group(group_dir, folder):
    """A copy of a seed group to write into: its runs' paths are relative to the group."""
    import shutil
    from pathlib import Path

    return Path(shutil.copytree(group_dir, Path(folder) / group_dir.name))
