"""Bootstrap intervals, paired comparisons and seed statistics (harness/evaluation/uncertainty.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.evaluation.uncertainty import (_cluster_weights, bootstrap_ci, class_mean_accuracy, mean_std,
                                            paired_comparison)


def test_class_mean_accuracy_by_hand():
    correct = np.array([1, 0, 1, 1, 0, 0])
    labels = np.array([0, 0, 1, 1, 1, 2])
    assert class_mean_accuracy(correct, labels) == pytest.approx((50 + 200 / 3 + 0) / 3)
    w = np.array([2, 0, 1, 0, 1, 0])  # class 2 absent from this resample: left out of the mean
    assert class_mean_accuracy(correct, labels, w) == pytest.approx((100 + 50) / 2)


def test_the_interval_of_a_proportion_matches_the_binomial_closed_form():
    n, hits = 400, 120
    correct = np.r_[np.ones(hits), np.zeros(n - hits)]
    ci = bootstrap_ci(correct, np.zeros(n, dtype=int), n_boot=4000, seed=1)
    p = hits / n
    half = 1.959964 * math.sqrt(p * (1 - p) / n) * 100
    assert ci.estimate == pytest.approx(30.0)
    assert ci.low == pytest.approx(30.0 - half, abs=0.8) and ci.high == pytest.approx(30.0 + half, abs=0.8)
    assert ci.clusters == n and ci.to_dict()["level"] == 0.95


def test_the_cluster_bootstrap_keeps_videos_whole():
    clusters = np.repeat(np.arange(20), 10)  # 20 videos of 10 frames
    w = _cluster_weights(clusters, np.random.default_rng(0), 50)
    assert (w.reshape(50, 20, 10) == w.reshape(50, 20, 10)[:, :, :1]).all()  # a video's frames move together
    assert (w.reshape(50, 20, 10)[:, :, 0].sum(1) == 20).all()  # as many videos drawn as there are
    correct = np.repeat(np.arange(20) % 2, 10)  # whole videos right or wrong
    labels = np.zeros(200, dtype=int)
    by_video = bootstrap_ci(correct, labels, clusters, seed=2)
    by_frame = bootstrap_ci(correct, labels, None, seed=2)
    # binomial over 20 videos (+-22 points) against 200 frames (+-7): the correlation counts
    assert by_video.clusters == 20 and by_video.high - by_video.low > 2.5 * (by_frame.high - by_frame.low)


def test_the_permutation_test_finds_a_planted_difference_and_holds_its_level_under_the_null():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(4), 50)
    a = rng.random(200) < 0.8
    b = rng.random(200) < 0.5
    c = paired_comparison(a, b, labels, n_boot=500, n_perm=500, seed=4)
    assert c.difference == pytest.approx(class_mean_accuracy(a, labels) - class_mean_accuracy(b, labels))
    assert c.p_value < 0.01 and c.low > 0
    rejected = 0
    for k in range(200):  # pairs with no difference: rejections at 5% come about 5% of the time
        a = rng.random(60) < 0.5
        b = rng.random(60) < 0.5
        rejected += paired_comparison(a, b, np.zeros(60, dtype=int), n_boot=10, n_perm=199, seed=k).p_value <= 0.05
    assert 0.01 <= rejected / 200 <= 0.10


def test_mean_and_std_over_seeds_by_hand_and_bad_input():
    assert mean_std([46.0, 47.0, 45.0]) == (46.0, 1.0)
    assert mean_std([12.5]) == (12.5, 0.0)
    with pytest.raises(HarnessError, match="finite"):
        mean_std([1.0, float("nan")])
    with pytest.raises(HarnessError, match="one length"):
        bootstrap_ci([1, 0], [0], None)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["test-threshold-per-class", "class-only"])
def test_a_runs_interval_comes_from_its_per_frame_outcomes_and_centres_on_its_corloc(protocol, tmp_path):
    """Per-class thresholds, and each map's own Otsu box (class-only): the interval's estimate,
    recomputed from the stored per-frame outcomes, is the record's CorLoc."""
    import json

    from harness import runner

    from conftest import TINY_YTO

    run_dir = runner.prepare("cam", protocol, "synth-yto", {**TINY_YTO, "eval.bootstrap_samples": 200}, tmp_path)
    record = runner.execute(run_dir, progress=False)
    for split in ("val", "test"):
        ci = record["uncertainty"][split]["corloc"]
        assert ci["estimate"] == pytest.approx(record["metrics"][split]["corloc"], abs=1e-9)
        assert ci["low"] <= ci["estimate"] <= ci["high"] and ci["n_boot"] == 200 and ci["resampled"] == "videos"
        assert ci["clusters"] == 10  # synth-yto test/val: 1 video per class
    assert json.loads((run_dir / "result.json").read_text())["uncertainty"] == record["uncertainty"]
    frames = sorted(p.name for p in (run_dir / "evals").glob("*.frames.npz"))
    assert "test-epoch001.frames.npz" in frames


@pytest.mark.slow
def test_harness_compare_pairs_two_runs_on_the_same_frames_and_refuses_others(tmp_path, capsys):
    import json

    from harness.cli import main

    from conftest import TINY_CUB, TINY_YTO

    opts = [f"{k}={v}" for k, v in TINY_YTO.items()]
    for plugin in ("cam", "layercam"):
        assert main(["run", "--plugin", plugin, "--run-root", str(tmp_path), "--no-progress", "--cfg-options", *opts]) == 0
    a, b = sorted(tmp_path.glob("*-cam-gt-val"))[0], sorted(tmp_path.glob("*-layercam-gt-val"))[0]
    capsys.readouterr()
    assert main(["compare", str(a), str(b), "--samples", "200"]) == 0
    out = capsys.readouterr().out
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (a, b))
    diff = ra["metrics"]["test"]["corloc"] - rb["metrics"]["test"]["corloc"]
    assert f"CorLoc A - B: {diff:+.2f}" in out and "permutation p = " in out and "10 videos" in out
    # under another protocol, once both runs are evaluated under it
    assert main(["compare", str(a), str(b), "--protocol", "test-threshold"]) == 2
    assert "harness eval --run" in capsys.readouterr().err
    for d in (a, b):
        assert main(["eval", "--run", str(d), "--protocol", "test-threshold", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["compare", str(a), str(b), "--protocol", "test-threshold", "--samples", "200"]) == 0
    assert "test-threshold" in capsys.readouterr().out
    # another dataset: refused
    cub = [f"{k}={v}" for k, v in TINY_CUB.items()]
    assert main(["run", "--plugin", "cam", "--dataset", "synth-cub", "--run-root", str(tmp_path / "cub"),
                 "--no-progress", "--cfg-options", *cub]) == 0
    [c] = (tmp_path / "cub").glob("*-cam-gt-val")
    capsys.readouterr()
    assert main(["compare", str(a), str(c)]) == 2
    assert "different datasets" in capsys.readouterr().err
    (a / "result.outcomes.npz").unlink()  # a run from before the outcomes
    assert main(["compare", str(a), str(b)]) == 2
    assert "predates per-frame outcomes" in capsys.readouterr().err
