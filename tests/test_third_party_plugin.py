"""A plugin from outside the package, installed with pip, runs end to end through the CLI."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "toy_plugin"


@pytest.fixture(scope="module")
def installed_toy(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(EXAMPLE)],
        check=True,
    )
    assert (target / "harness_toy" / "config.py").is_file()
    return dict(os.environ, PYTHONPATH=str(target))


def _harness(env, *args):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], env=env, capture_output=True, text=True)


def test_list_shows_the_installed_plugin(installed_toy):
    out = _harness(installed_toy, "list")
    assert out.returncode == 0, out.stderr
    line = next(l for l in out.stdout.splitlines() if "toycnn" in l)
    assert line.startswith("method") and "harness-toy-plugin 0.1.0" in line


@pytest.mark.slow
def test_run_with_the_third_party_plugin(installed_toy, tmp_path):
    out = _harness(
        installed_toy, "run", "--plugin", "toycnn", "--protocol", "gt-val", "--run-root", str(tmp_path),
        "--no-progress", "--cfg-options", "toy.epochs=1", "toy.width=8", "data.image_size=32",
        "data.train_videos_per_class=1", "data.val_videos_per_class=1", "data.test_videos_per_class=1",
        "data.shots_per_video=1", "data.frames_per_shot=4", "eval.threshold_step=0.01",
    )
    assert out.returncode == 0, out.stderr
    [run_dir] = tmp_path.glob("*-toycnn-gt-val")
    record = json.loads((run_dir / "result.json").read_text())
    assert record["plugin"] == "toycnn" and record["selection"]["stage"] == "tinycnn"
    assert record["config"]["toy"]["width"] == 8
    assert "Avg" in out.stdout
