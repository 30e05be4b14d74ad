"""CAM sources: closed-form maps on a hand-built network, parity with pytorch-grad-cam (the
``grad-cam`` package, a dev dependency), the torchcam reference variants, batching, chunking,
determinism, and that a source leaves the model untouched."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from torch import nn

import pytorch_grad_cam as pgc
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from harness.cam import CamSource, GradientCam
from harness.models.classifier import Classifier
from harness.plugins.cam_baselines.cam import CAM
from harness.plugins.cam_baselines.gradcam import GradCAM
from harness.plugins.cam_baselines.gradcampp import GradCAMPlusPlus
from harness.plugins.cam_baselines.layercam import LayerCAM
from harness.plugins.cam_baselines.scorecam import ScoreCAM
from harness.plugins.cam_baselines.smoothgradcampp import SmoothGradCAMPlusPlus
from harness.plugins.cam_baselines.xgradcam import XGradCAM

ALL = [CAM, GradCAM, GradCAMPlusPlus, SmoothGradCAMPlusPlus, XGradCAM, LayerCAM, ScoreCAM]
GRADIENT = [GradCAM, GradCAMPlusPlus, SmoothGradCAMPlusPlus, XGradCAM, LayerCAM]
VARIANTS = ["gradcam", "torchcam"]


# ----------------------------------------------------------------------------- models


class TinyNet(nn.Module):
    """Encoder: a fixed identity 1x1 conv (3 -> 3 channels, no bias) + ReLU, so A = ReLU(x) at the
    input's resolution; then GAP and a linear head over the 3 channels, 2 classes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        self.head = nn.Linear(3, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3)[:, :, None, None])
            self.head.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.5, 1.0, -1.0]]))
            self.head.bias.copy_(torch.tensor([0.1, -0.2]))

    def features(self, x):
        return [torch.relu(self.conv(x))]

    def forward(self, x):
        a = self.features(x)[-1]
        return self.head(a.mean(dim=(2, 3))), a


# One 2x2 image: A_0 = [[1, 2], [0, 3]] (sum 6), A_1 = [[2, 0], [1, 1]] (sum 4), A_2 = 0 (x < 0:
# a dead channel). Z = 4. The batch holds it twice, explaining class 0 then class 1.
X_TINY = torch.tensor([[[1.0, 2.0], [0.0, 3.0]], [[2.0, 0.0], [1.0, 1.0]], [[-1.0, -1.0], [-1.0, -1.0]]])
A0 = torch.tensor([[1.0, 2.0], [0.0, 3.0]], dtype=torch.float64)
A1 = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
# The gradient of y_c = sum_k W_ck mean(A_k) + b_c is G_k = W_ck / Z at every position:
#   class 0: g = (1, -2, 0.5) / 4 = (0.25, -0.5, 0.125);  class 1: g = (0.125, 0.25, -0.25).


@pytest.fixture()
def tiny():
    model = TinyNet().double().eval()
    images = torch.stack([X_TINY, X_TINY]).double()
    return model, images, torch.tensor([0, 1])


def _softmax(*s):
    e = [math.exp(v) for v in s]
    return [v / sum(e) for v in e]


def _expected_tiny():
    """The raw maps (before ReLU) of the two rows of the tiny batch, written out by hand."""
    # Score-CAM masks M_k = minmax(A_k): M_0 = A_0 / 3, M_1 = A_1 / 2, M_2 = 0 (0 / (0 + 1e-8)).
    # With the identity conv, features of X * M_k are M_k * A_j, so y_c(X * M_k) = sum_j W_cj
    # mean(M_k A_j) + b_c with mean(M_0 A_0) = 7/6, mean(M_0 A_1) = 5/12, mean(M_1 A_0) = 5/8,
    # mean(M_1 A_1) = 3/4, hence the scores (masked input k -> class 0 / class 1):
    #   k = 0: 7/6 - 5/6 + 0.1 = 13/30     | 7/12 + 5/12 - 0.2 = 0.8
    #   k = 1: 5/8 - 3/2 + 0.1 = -0.775    | 5/16 + 3/4 - 0.2 = 0.8625
    #   k = 2 (zero image): 0.1            | -0.2
    sc0 = _softmax(13 / 30, -0.775, 0.1)  # grad-cam: softmax over channels of class 0's scores
    sc1 = _softmax(0.8, 0.8625, -0.2)
    # torchcam: class-c probability of each masked input; channel 2 is constant -> NaN -> dropped
    p0 = [_softmax(13 / 30, 0.8)[0], _softmax(-0.775, 0.8625)[0]]
    p1 = [_softmax(13 / 30, 0.8)[1], _softmax(-0.775, 0.8625)[1]]
    gpp0 = (2 / 7) * A0  # Grad-CAM++: w_k = Z g / (2 + S_k g) for g > 0: 1 / (2 + 6/4) = 2/7
    gpp1 = (2 / 11) * A0 + (1 / 3) * A1  # class 1: 0.5 / (2 + 6/8) = 2/11, 1 / (2 + 4/4) = 1/3
    grad0 = torch.tensor([[-0.75, 0.5], [-0.5, 0.25]], dtype=torch.float64)  # (A0 - 2 A1) / 4
    grad1 = torch.tensor([[0.625, 0.25], [0.25, 0.625]], dtype=torch.float64)  # (A0/2 + A1) / 4
    return {
        ("cam", "gradcam"): [torch.tensor([[-3.0, 2.0], [-2.0, 1.0]]), torch.tensor([[2.5, 1.0], [1.0, 2.5]])],
        ("gradcam", "gradcam"): [grad0, grad1],
        ("xgradcam", "gradcam"): [grad0, grad1],  # w_k = g S/(S + 1e-7) = g
        ("layercam", "gradcam"): [0.25 * A0, grad1],  # sum_k ReLU(g_k) A_k
        ("gradcampp", "gradcam"): [gpp0, gpp1],
        # torchcam's no-op division: w_k = Z g^2 ReLU(g) = 4 g^3 for g > 0
        ("gradcampp", "torchcam"): [A0 / 16, A0 / 128 + A1 / 16],
        # G does not depend on the input here, so the noise changes nothing: D_p = G^p
        ("smoothgradcampp", "gradcam"): [gpp0, gpp1],
        ("scorecam", "gradcam"): [sc0[0] * A0 + sc0[1] * A1, sc1[0] * A0 + sc1[1] * A1],
        ("scorecam", "torchcam"): [p0[0] * A0 / 3 + p0[1] * A1 / 2, p1[0] * A0 / 3 + p1[1] * A1 / 2],
    }


def _make(cls, variant="gradcam", **kw):
    if cls is SmoothGradCAMPlusPlus:
        kw = {"n": 3, "sigma": 0.5, **kw}
    return cls(variant=variant, **kw)


class NonlinearHead(nn.Module):
    """A classifier whose head is not linear (the gradient then depends on the input), for the
    noise of Smooth-Grad-CAM++ to matter. Same interface as Classifier."""

    def __init__(self, backbone="resnet18", num_classes=4):
        super().__init__()
        self.body = Classifier(backbone, num_classes, feature_index=1)
        k = self.body.head.in_features
        self.head = nn.Sequential(nn.Linear(k, 16), nn.Tanh(), nn.Linear(16, num_classes))

    def forward(self, x):
        feats = self.body.features(x)[-1]
        return self.head(feats.mean(dim=(2, 3))), feats


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = Classifier("resnet18", 5, feature_index=1).eval()
    images = torch.randn(3, 3, 40, 40)  # features 64 x 10 x 10 (stride 4)
    return model, images, torch.tensor([0, 3, 1])


def _fresh_resnet():
    torch.manual_seed(1)
    return Classifier("resnet18", 5, feature_index=1).eval(), torch.randn(2, 3, 24, 24), torch.tensor([2, 4])


# ----------------------------------------------------------------------------- API


def test_names_docstrings_and_flags():
    names = {cls.name for cls in ALL}
    assert names == {"cam", "gradcam", "gradcampp", "smoothgradcampp", "xgradcam", "layercam", "scorecam"}
    for cls in ALL:
        assert issubclass(cls, CamSource)
        doc = cls.__doc__.strip()
        assert "\n" not in doc and "(" in doc and "20" in doc, cls  # one line: formula + paper (year)
    assert not CAM.relu and not CAM.needs_grad
    assert ScoreCAM.relu and not ScoreCAM.needs_grad
    for cls in GRADIENT:
        assert issubclass(cls, GradientCam) and cls.relu and cls.needs_grad
    with pytest.raises(ValueError, match="variant"):
        GradCAM(variant="torch-cam")
    with pytest.raises(ValueError):
        ScoreCAM(batch_size=0)
    with pytest.raises(ValueError):
        SmoothGradCAMPlusPlus(n=0)


# ----------------------------------------------------------------------------- class indices


@pytest.mark.parametrize("cls", ALL)
def test_integer_classes_of_any_container_give_the_same_maps(tiny, cls):
    model, images, _ = tiny
    ref, ref_logits = _make(cls)(model, images, torch.tensor([0, 1]))
    for classes in ([0, 1], (0, 1), np.array([0, 1], dtype=np.int32), [np.int64(0), np.int16(1)],
                    torch.tensor([0, 1], dtype=torch.int32), torch.tensor([[0], [1]], dtype=torch.uint8)):
        maps, logits = _make(cls)(model, images, classes)
        torch.testing.assert_close(maps, ref, rtol=0, atol=0)
        torch.testing.assert_close(logits, ref_logits, rtol=0, atol=0)


@pytest.mark.parametrize("classes, error, needle", [
    # -1 used to make CAM explain the last class (weight[-1]) while the other sources raised
    ([0, -1], ValueError, r"class index -1 \(image 1\) is out of range: the model has 2 classes, valid indices are 0\.\.1"),
    (torch.tensor([2, 0]), ValueError, r"class index 2 \(image 0\) is out of range: .*0\.\.1"),
    ([5, -3], ValueError, r"class index 5 \(image 0\) is out of range, and 1 more"),
    ([0.9, 1], TypeError, r"0\.9 \(float\) is not an integer class index"),
    (np.array([0.0, 1.0]), TypeError, r"a float64 numpy array is not an integer class index"),
    (torch.tensor([0.0, 1.0]), TypeError, r"float32 tensor is not an integer class index"),
    ([True, 1], TypeError, r"True \(bool\) is a bool"),
    ([np.bool_(False), 1], TypeError, r"is a bool"),
    (torch.tensor([True, False]), TypeError, r"a bool tensor is a bool"),
    (np.array([True, False]), TypeError, r"a bool numpy array is a bool"),
    (["a", "b"], TypeError, r"give one integer class index per image"),
    (None, TypeError, r"give one integer class index per image"),
    ([0], ValueError, r"1 classes for 2 images"),
])
@pytest.mark.parametrize("cls", ALL)
def test_bad_class_indices_are_refused_by_every_source(tiny, cls, classes, error, needle):
    model, images, _ = tiny
    with pytest.raises(error, match=needle):
        _make(cls)(model, images, classes)
    with torch.inference_mode():  # as the harness may call them
        with pytest.raises(error, match=needle):
            _make(cls).raw(model, images, classes)


@pytest.mark.parametrize("cls", ALL)
def test_a_direct_call_builds_no_autograd_graph(cls):
    """Called directly, with grad mode on and trainable parameters, no source returns a tensor
    tied to the model's graph (which would keep every encoder activation alive)."""
    model, images, classes = _fresh_resnet()
    assert torch.is_grad_enabled() and all(p.requires_grad for p in model.parameters())
    for maps, logits in (_make(cls)(model, images, classes), _make(cls).raw(model, images, classes)):
        for t in (maps, logits):
            assert not t.requires_grad and t.grad_fn is None
    # the tiny net's head is a parameter the CAM indexes directly
    model, images, classes = TinyNet().double(), torch.stack([X_TINY, X_TINY]).double(), [0, 1]
    maps, logits = _make(cls)(model, images, classes)
    assert maps.grad_fn is None and logits.grad_fn is None and not maps.requires_grad
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("cls", ALL)
def test_closed_form_on_hand_built_net(tiny, cls, variant):
    model, images, classes = tiny
    expected = _expected_tiny()
    key = (cls.name, variant if (cls.name, variant) in expected else "gradcam")
    source = _make(cls, variant)
    if (cls.name, variant) == ("smoothgradcampp", "torchcam"):
        key = (cls.name, variant)
        # Grad-CAM++'s weights (G is constant; channel 2: alpha = 1/2, w = 4 * 1/2 * 0.125 for
        # class 0), applied to the features of the LAST noisy copy, ReLU(x + eps_n) here
        a = torch.relu(images[0] + source.noise(images)[-1])
        expected[key] = [(2 / 7) * a[0] + 0.25 * a[2], (2 / 11) * a[0] + (1 / 3) * a[1]]
        assert (expected[key][0] - expected[("gradcampp", "gradcam")][0]).abs().max() > 0.01
    raw, logits = source.raw(model, images, classes)
    torch.testing.assert_close(raw, torch.stack(expected[key]).double(), rtol=0, atol=1e-4)  # eps guards: ~2e-5
    # logits: class 0: 1.5 - 2 + 0.1; class 1: 0.75 + 1 - 0.2
    torch.testing.assert_close(logits, torch.tensor([[-0.4, 1.55]] * 2, dtype=torch.float64))
    maps, _ = _make(cls, variant)(model, images, classes)
    torch.testing.assert_close(maps, raw.clamp_min(0) if cls.relu else raw)


def test_torchcam_variants_really_differ_on_hand_built_net(tiny):
    """Same closed forms as above, seen after the harness's min-max: Grad-CAM++ and Score-CAM
    give different normalized maps in the two variants (class 1 mixes two channels)."""
    model, images, classes = tiny
    for cls in (GradCAMPlusPlus, ScoreCAM):
        a = _norm(cls(variant="gradcam")(model, images, classes)[0][1])
        b = _norm(cls(variant="torchcam")(model, images, classes)[0][1])
        assert (a - b).abs().max() > 0.05, cls


def _norm(m):
    return (m - m.min()) / (m.max() - m.min())


# ----------------------------------------------------------------------------- combine() formulas


def _random_ag(seed=0, n=None):
    g = torch.Generator().manual_seed(seed)
    A = torch.relu(torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64))
    A[0, 1] = 0  # a dead channel
    shape = (2, 5, 3, 4) if n is None else (n, 2, 5, 3, 4)
    G = torch.randn(*shape, generator=g, dtype=torch.float64)
    G[..., 0, 0] = 0  # zero gradients: grad-cam++ sets alpha to 0 there
    return A, G


@pytest.mark.parametrize("cls,lib", [(GradCAM, pgc.GradCAM), (GradCAMPlusPlus, pgc.GradCAMPlusPlus),
                                     (XGradCAM, pgc.XGradCAM), (LayerCAM, pgc.LayerCAM)])
def test_combine_matches_grad_cam_package_with_spatial_gradients(cls, lib):
    """The weighting itself, with gradients that vary over positions (GAP heads give constant
    ones), against the package's own numpy code."""
    A, G = _random_ag()
    a, g = A.numpy(), G.numpy()
    if cls is LayerCAM:
        expected = lib.get_cam_image(None, None, None, None, a, g, False)
    else:
        weights = lib.get_cam_weights(None, None, None, None, a, g)
        expected = (weights[:, :, None, None] * a).sum(axis=1)
    got = cls().combine(A, G)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_smooth_combine_formulas():
    A, G = _random_ag(1, n=3)
    sum_a = A.sum(dim=(2, 3), keepdim=True)
    D1, D2, D3 = G.mean(0), (G**2).mean(0), (G**3).mean(0)
    # common definition: grad-cam++'s alpha on the averaged powers, ReLU of the averaged gradient
    alpha = torch.where(D2 != 0, D2 / (2 * D2 + sum_a * D3 + 1e-6), torch.zeros_like(D2))
    expected = ((alpha * D1.clamp_min(0)).sum(dim=(2, 3))[:, :, None, None] * A).sum(1)
    torch.testing.assert_close(SmoothGradCAMPlusPlus().combine(A, G), expected)
    # torchcam: denominator sum_ab (D3 A)_ab, no guard, ReLU of the LAST pass's gradient, nansum
    # over the LAST pass's features
    alpha_t = D2 / (2 * D2 + (D3 * A).sum(dim=(2, 3), keepdim=True))
    w_t = (alpha_t * G[-1].clamp_min(0)).sum(dim=(2, 3))
    assert torch.isnan(w_t).any()  # the dead channel with a zero gradient column is 0/0 ...
    A_last = A + 0.1 * torch.rand(A.shape, generator=torch.Generator().manual_seed(9), dtype=A.dtype)
    expected_t = torch.nansum(w_t[:, :, None, None] * A_last, dim=1)  # ... and dropped
    torch.testing.assert_close(SmoothGradCAMPlusPlus(variant="torchcam").combine(A, G, A_last), expected_t)
    assert (expected - expected_t).abs().max() > 1e-3
    # one sample: the common definition is Grad-CAM++
    torch.testing.assert_close(SmoothGradCAMPlusPlus().combine(A, G[:1]), GradCAMPlusPlus().combine(A, G[0]))


def test_torchcam_gradcampp_quirk_is_a_noop_division():
    """Why torchcam's Grad-CAM++ alpha stays G^2: dividing a boolean-indexed copy in place
    leaves the tensor alone."""
    A, G = _random_ag(2)
    alpha = G**2
    before = alpha.clone()
    alpha[alpha > 0].div_(7.0)
    assert torch.equal(alpha, before)
    expected = ((G**2 * G.clamp_min(0)).sum(dim=(2, 3))[:, :, None, None] * A).sum(1)
    torch.testing.assert_close(GradCAMPlusPlus(variant="torchcam").combine(A, G), expected)
    assert (GradCAMPlusPlus().combine(A, G) - expected).abs().max() > 1e-3


def test_xgradcam_variants_agree_up_to_the_guard():
    A, G = _random_ag(3)
    torch.testing.assert_close(XGradCAM(variant="torchcam").combine(A, G), XGradCAM().combine(A, G))


# ----------------------------------------------------------------------------- grad-cam parity


class _Logits(nn.Module):
    """What pytorch-grad-cam expects: model(x) -> logits."""

    def __init__(self, clf):
        super().__init__()
        self.clf = clf

    def forward(self, x):
        return self.clf(x)[0]


def _cam_layer(clf: Classifier) -> nn.Module:
    return clf.encoder.get_submodule(clf.encoder.feature_info.module_name()[-1])


def _grad_cam_package(lib_cls, clf, images, classes, **attrs):
    """(raw maps before ReLU (B, h, w), the package's final maps (B, H, W))."""

    class Capture(lib_cls):
        def get_cam_image(self, *args, **kwargs):
            self.raw_cam = super().get_cam_image(*args, **kwargs)
            return self.raw_cam

    with Capture(model=_Logits(clf), target_layers=[_cam_layer(clf)]) as cam:
        for k, v in attrs.items():
            setattr(cam, k, v)
        out = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(c)) for c in classes])
        raw = torch.from_numpy(np.asarray(cam.raw_cam, dtype=np.float32))
    clf.zero_grad(set_to_none=True)
    return raw, out


def _grad_cam_postprocess(maps: torch.Tensor, size) -> np.ndarray:
    """The package's order: ReLU'd map -> min-max (/(max + 1e-7)) -> cv2 bilinear resize ->
    min-max again (its multi-layer aggregation)."""

    def minmax(m):
        m = m - m.min()
        return m / (1e-7 + m.max())

    maps = maps.detach().numpy().astype(np.float32)
    return np.float32([minmax(cv2.resize(minmax(m), (size[1], size[0]))) for m in maps])


PARITY = [
    (GradCAM, {}, pgc.GradCAM, {}),
    (GradCAMPlusPlus, {}, pgc.GradCAMPlusPlus, {}),
    (XGradCAM, {}, pgc.XGradCAM, {}),
    (LayerCAM, {}, pgc.LayerCAM, {}),
    (ScoreCAM, {"batch_size": 7}, pgc.ScoreCAM, {"batch_size": 16}),
    # no Smooth-Grad-CAM++ in the package: with a GAP->linear head, dy/dA = w_c / Z whatever the
    # input, so the noise cannot change the gradients and the method equals Grad-CAM++
    (SmoothGradCAMPlusPlus, {"n": 3, "sigma": 0.5}, pgc.GradCAMPlusPlus, {}),
]


@pytest.mark.parametrize("cls,kw,lib,lib_attrs", PARITY, ids=[p[0].name for p in PARITY])
def test_parity_with_grad_cam_package(resnet, cls, kw, lib, lib_attrs):
    model, images, classes = resnet
    lib_raw, lib_out = _grad_cam_package(lib, model, images, classes, **lib_attrs)
    raw, logits = cls(**kw).raw(model, images, classes)
    assert lib_raw.abs().max() > 0
    scale = float(lib_raw.abs().max())
    assert float((raw - lib_raw).abs().max()) <= 1e-4 * scale, cls
    ours = _grad_cam_postprocess(cls(**kw)(model, images, classes)[0], images.shape[-2:])
    assert np.abs(ours - lib_out).max() <= 1e-4
    torch.testing.assert_close(logits, model(images)[0])


def test_cam_is_grad_cam_times_z(resnet):
    """On a GAP->linear head Grad-CAM's weights are w_ck / Z: CAM = Z * raw Grad-CAM."""
    model, images, classes = resnet
    lib_raw, _ = _grad_cam_package(pgc.GradCAM, model, images, classes)
    raw, _ = CAM().raw(model, images, classes)
    z = raw.shape[-1] * raw.shape[-2]
    torch.testing.assert_close(raw / z, lib_raw, rtol=1e-4, atol=1e-4 * float(lib_raw.abs().max()))


def test_torchcam_gradcampp_on_resnet(resnet):
    """torchcam's Grad-CAM++ on a linear head: w_k = Z (w_ck / Z)^2 ReLU(w_ck / Z)."""
    model, images, classes = resnet
    raw, _ = GradCAMPlusPlus(variant="torchcam").raw(model, images, classes)
    with torch.no_grad():
        feats = model(images)[1]
    z = feats.shape[-1] * feats.shape[-2]
    g = model.head.weight.detach()[classes] / z
    expected = ((z * g**2 * g.clamp_min(0))[:, :, None, None] * feats).sum(1)
    torch.testing.assert_close(raw, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_torchcam_scorecam_on_resnet(resnet):
    """torchcam's Score-CAM, written out: feature-resolution min-max channels N_k (constant ones
    dropped), masks = bilinear (align_corners=False) upsampling, weights = softmax-over-classes
    probability of c, map = sum_k w_k N_k."""
    model, images, classes = resnet
    with torch.no_grad():
        model_out = model(images)[1]
    raw, _ = ScoreCAM(variant="torchcam", batch_size=50).raw(model, images, classes)
    for b in range(2):  # two images are enough (K masked forwards each)
        a = model_out[b]
        lo, hi = a.amin(dim=(1, 2), keepdim=True), a.amax(dim=(1, 2), keepdim=True)
        live = (hi > lo)[:, 0, 0]
        n = (a[live] - lo[live]) / (hi[live] - lo[live])
        size = images.shape[-2:]
        masks = torch.nn.functional.interpolate(n[:, None], size=size, mode="bilinear", align_corners=False)
        with torch.no_grad():
            p = torch.softmax(model(images[b] * masks)[0], dim=1)[:, classes[b]]
        expected = (p[:, None, None] * n).sum(0)
        torch.testing.assert_close(raw[b], expected, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- behaviour


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("cls", ALL)
def test_batched_equals_per_image(resnet, cls, variant):
    model, images, classes = resnet
    source = _make(cls, variant)
    with torch.no_grad():  # as the harness calls sources
        batched, logits = source(model, images, classes)
        singles = [source(model, images[i : i + 1], classes[i : i + 1]) for i in range(images.shape[0])]
    for i, (single, single_logits) in enumerate(singles):
        scale = max(float(batched[i].abs().max()), 1e-12)
        torch.testing.assert_close(single[0], batched[i], rtol=1e-4, atol=1e-5 * scale)
        torch.testing.assert_close(single_logits[0], logits[i], rtol=1e-4, atol=1e-5)


def _snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        {n: m.training for n, m in model.named_modules()},
    )


def _no_hooks_or_grads(model):
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        assert not getattr(m, "_backward_pre_hooks", None)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("cls", ALL)
def test_model_untouched_and_frozen_classifier(cls, variant):
    model, images, classes = _fresh_resnet()
    source = _make(cls, variant)
    ref, _ = source(model, images, classes)
    state, flags, modes = _snapshot(model)
    _no_hooks_or_grads(model)

    # frozen (the F-CAM family freezes the classifier), under no_grad and under inference_mode
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        frozen, _ = source(model, images, classes)
    with torch.inference_mode():
        inference, _ = source(model, images, classes)
    torch.testing.assert_close(frozen, ref)
    torch.testing.assert_close(inference, ref)
    assert all(not p.requires_grad for p in model.parameters())
    for p in model.parameters():
        p.requires_grad_(True)

    after, after_flags, after_modes = _snapshot(model)
    assert after_flags == flags and after_modes == modes
    for k in state:
        assert torch.equal(state[k], after[k]), k
    _no_hooks_or_grads(model)
    assert not ref.requires_grad and ref.grad_fn is None


@pytest.mark.parametrize("variant", VARIANTS)
def test_scorecam_chunk_size_does_not_change_maps(resnet, variant):
    model, images, classes = resnet
    maps = [ScoreCAM(batch_size=bs, variant=variant).raw(model, images, classes)[0] for bs in (5, 37, 10_000)]
    for m in maps[1:]:
        torch.testing.assert_close(m, maps[0], rtol=1e-4, atol=1e-5 * float(maps[0].abs().max()))


@pytest.mark.parametrize("cls", ALL)
def test_memory_layout_does_not_change_maps(resnet, cls):
    model, images, classes = resnet
    with torch.no_grad():
        a, la = _make(cls, channels_last=True)(model, images, classes)
        b, lb = _make(cls, channels_last=False)(model, images, classes)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
    torch.testing.assert_close(la, lb, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_smoothgradcampp_deterministic_for_a_seed(variant):
    torch.manual_seed(2)
    model = NonlinearHead().eval()
    images, classes = torch.randn(3, 3, 32, 32), torch.tensor([0, 2, 3])
    a = SmoothGradCAMPlusPlus(n=3, sigma=0.5, seed=7, variant=variant)(model, images, classes)[0]
    torch.manual_seed(123)  # the global RNG plays no part
    b = SmoothGradCAMPlusPlus(n=3, sigma=0.5, seed=7, variant=variant)(model, images, classes)[0]
    c = SmoothGradCAMPlusPlus(n=3, sigma=0.5, seed=8, variant=variant)(model, images, classes)[0]
    plain = GradCAMPlusPlus(variant=variant)(model, images, classes)[0]
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-6 * a.abs().max()  # the noise matters with this head ...
    assert (a - plain).abs().max() > 1e-6 * a.abs().max()
    # ... and, with no noise, Smooth-Grad-CAM++ is Grad-CAM++ (common definition)
    if variant == "gradcam":
        quiet = SmoothGradCAMPlusPlus(n=2, sigma=0.0)(model, images, classes)[0]
        torch.testing.assert_close(quiet, plain, rtol=1e-5, atol=1e-7)
    # the noise is shared by every image of a batch: batched == per-image
    single = SmoothGradCAMPlusPlus(n=3, sigma=0.5, seed=7, variant=variant)(model, images[1:2], classes[1:2])[0]
    torch.testing.assert_close(single[0], a[1], rtol=1e-4, atol=1e-6)


def test_gradient_sources_match_grad_cam_package_with_nonlinear_head():
    """The head-only backward is the full backward's gradient at the CAM layer, whatever the
    head (here with a hidden tanh layer)."""
    torch.manual_seed(3)
    model = NonlinearHead().eval()
    images, classes = torch.randn(2, 3, 32, 32), torch.tensor([1, 3])

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x):
            return self.m(x)[0]

    layer = model.body.encoder.get_submodule(model.body.encoder.feature_info.module_name()[-1])
    for cls, lib in [(GradCAM, pgc.GradCAM), (GradCAMPlusPlus, pgc.GradCAMPlusPlus)]:
        with lib(model=Wrapped(), target_layers=[layer]) as cam:
            out = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(c)) for c in classes])
        ours = _grad_cam_postprocess(cls()(model, images, classes)[0], images.shape[-2:])
        assert np.abs(ours - out).max() <= 1e-4
