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
    assert "eigencam" in out.stdout and "plugin problems" not in out.stdout and "plugin warnings" not in out.stdout
    # registered lazily, as the docs advise: listing imports none of the plugin's model code
    code = ("import sys\nfrom harness.cli import main\nmain(['list'])\n"
            "print('HEAVY', [m for m in ('torch', 'harness_toy.method') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], env=installed_toy, capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "HEAVY []", out.stderr


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


@pytest.mark.slow
def test_a_third_party_cam_source_runs_under_the_cam_plugin_and_is_named(installed_toy, tmp_path):
    out = _harness(
        installed_toy, "run", "--plugin", "cam", "--protocol", "gt-val", "--run-root", str(tmp_path),
        "--no-progress", "--cfg-options", "method.cam_source=eigencam", "method.options.center=False",
        "classifier.epochs=1", "classifier.batch_size=16", "classifier.feature_index=1", "classifier.cache=False",
        "data.image_size=32", "data.train_videos_per_class=1", "data.val_videos_per_class=1",
        "data.test_videos_per_class=1", "data.shots_per_video=1", "data.frames_per_shot=4",
        "eval.threshold_step=0.01", "run.report=False",
    )
    assert out.returncode == 0, out.stderr
    [run_dir] = tmp_path.glob("*-cam+eigencam-gt-val")  # never passed off as plain CAM
    record = json.loads((run_dir / "result.json").read_text())
    assert record["plugin"] == "cam" and record["method_label"] == "cam+eigencam"
    assert record["config"]["method"]["options"] == {"center": False, "variant": "gradcam", "channels_last": None}
    source = record["provenance"]["plugins"]["cam_source"]
    assert (source["name"], source["distribution"], source["version"]) == ("eigencam", "harness-toy-plugin", "0.1.0")
    assert record["provenance"]["plugins"]["method"]["distribution"] == "wsol-harness"
    assert "cam+eigencam" in (tmp_path / "leaderboard.md").read_text()
    table = _harness(installed_toy, "leaderboard", "--table", "colocam-t1-ytov1", "--runs", str(run_dir))
    assert table.returncode == 0 and "cam+eigencam (resnet18, synth-yto, gt-val) [synth]" in table.stdout

    # an option the source does not take is refused with the ones it does
    bad = _harness(installed_toy, "run", "--plugin", "cam", "--run-root", str(tmp_path / "bad"),
                   "--cfg-options", "method.cam_source=eigencam", "method.options.n=3")
    assert bad.returncode == 2 and "method.options.n" in bad.stderr and "center" in bad.stderr


def test_eigencam_matches_a_per_image_principal_component(installed_toy):
    import numpy as np
    import torch

    sys.path.insert(0, installed_toy["PYTHONPATH"])
    try:
        from harness_toy.eigencam import EigenCAM
    finally:
        sys.path.pop(0)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 6, 3, stride=2, padding=1)
            self.head = torch.nn.Linear(6, 4)

        def forward(self, x):
            a = torch.relu(self.conv(x))
            return self.head(a.mean(dim=(2, 3))), a

    torch.manual_seed(0)
    model, images = Model().eval(), torch.randn(3, 3, 16, 16)
    maps, logits = EigenCAM(center=True, channels_last=False)(model, images, [0, 1, 3])
    _, feats = model(images)
    for b in range(3):  # the plain way: one image at a time, numpy's SVD
        a = feats[b].detach().numpy().reshape(6, -1).T.astype(np.float64)
        a = a - a.mean(axis=0)
        proj = (a @ np.linalg.svd(a, full_matrices=False)[2][0]).reshape(8, 8)
        got = maps[b].numpy()
        expected = np.maximum(proj, 0) if (got * proj).sum() >= 0 else np.maximum(-proj, 0)
        np.testing.assert_allclose(got, expected, atol=1e-4)
    with pytest.raises(ValueError, match="out of range"):
        EigenCAM()(model, images, [0, 1, 4])
