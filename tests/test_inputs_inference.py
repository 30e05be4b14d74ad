"""Evaluation inputs: a frame whose image is not finite is named as a bad input (frame ids,
split), before the model runs; a finite input that gives a non-finite map is the model's."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from harness.data.base import Frame, Split
from harness.errors import HarnessError
from harness.inference import iterate_maps
from harness.method import Method, Prediction
from harness.plugins.cam_baselines.cam import CAM

CFG = SimpleNamespace(loader=SimpleNamespace(eval_batch_size=3, num_workers=0),
                      method=SimpleNamespace(name="tiny-cam"), eval=SimpleNamespace(interpolation="bilinear"))


class TinyClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        a = torch.relu(self.conv(x))
        return self.head(a.mean(dim=(2, 3))), a


class TinyCam(Method):
    """CAM over a tiny classifier; counts the batches it was asked to predict."""

    def __init__(self, normalization=None):
        super().__init__(None, 2)
        self.model = TinyClassifier()
        self.calls = 0
        self._normalization = normalization

    @property
    def normalization(self):
        return self._normalization or super().normalization

    @property
    def stages(self):
        return []

    def modules(self):
        return {"model": self.model}

    def predict(self, images, classes):
        self.calls += 1
        maps, logits = CAM()(self.model, images, classes)
        return Prediction(maps=maps, logits=logits)


def split_with(bad: dict[int, float], n: int = 7) -> Split:
    """``n`` annotated 8x8 frames; frame i of ``bad`` gets one pixel set to that value."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (8, 8, 3)).astype(np.float32) for _ in range(n)]
    for i, value in bad.items():
        images[i][3, 4, 1] = value
    frames = [Frame(f"vid/f{i:02d}", i % 2, "vid", "s0", i, ((1, 1, 6, 6),)) for i in range(n)]
    return Split("val", frames, lambda i: images[i])


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_non_finite_input_image_is_named_as_the_input_not_the_model(value):
    method = TinyCam()
    # frames 4 and 5 are in the second batch of 3: the first batch is evaluated normally
    maps = iterate_maps(method, split_with({4: value, 5: value}), CFG, "cpu", progress=False)
    for _ in range(3):
        frame, m, _ = next(maps)
        assert np.isfinite(m).all()
    with pytest.raises(HarnessError) as info:
        next(maps)
    msg = str(info.value)
    assert "split 'val'" in msg and "'vid/f04', 'vid/f05'" in msg and "vid/f03" not in msg
    assert "input image" in msg and "NaN/inf" in msg and "not the model" in msg
    assert "diverged" not in msg and "lr" not in msg
    assert method.calls == 1  # the bad batch never reached the model


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
def test_a_zero_std_normalization_is_a_bad_input_too():
    method = TinyCam(normalization=((0.5, 0.5, 0.5), (0.2, 0.0, 0.2)))
    with pytest.raises(HarnessError, match=r"frame\(s\) 'vid/f00', 'vid/f01', 'vid/f02'.*normalization"):
        next(iterate_maps(method, split_with({}), CFG, "cpu", progress=False))


def test_a_finite_input_with_a_non_finite_map_is_still_the_model_diverging():
    method = TinyCam()
    with torch.no_grad():
        method.model.conv.weight[0, 0, 0, 0] = float("nan")  # what a diverged training leaves
    with pytest.raises(HarnessError) as info:
        list(iterate_maps(method, split_with({}), CFG, "cpu", progress=False))
    msg = str(info.value)
    assert "method 'tiny-cam' produced a map with NaN/inf for frame 'vid/f00' of split 'val'" in msg
    assert "diverged" in msg and "input image" not in msg
