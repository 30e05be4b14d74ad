"""harness.kernels.cam: the Triton kernels equal the torch path, and both equal a naive reference.

No GPU is needed: the Triton path runs on CPU tensors under Triton's interpreter. Triton reads
``TRITON_INTERPRET`` when ``triton.jit`` wraps a kernel, and harness.kernels wraps its kernels on
first use, keyed on the flag; so the module fixture below only has to set the variable (and
restores it afterwards, for the other test modules). Shapes are small: the interpreter runs each
program instance in numpy.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from harness.kernels import TritonUnavailableError, cam_maps, upsample_minmax, weighted_channel_sum
from harness.kernels import cam as cam_mod

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5


pytestmark = pytest.mark.usefixtures("triton_interpreter")


# ----------------------------------------------------------------------------- naive reference


def naive_sum(A, w, relu, relu_weights=False):
    """float64: einsum over channels (broadcast weights for the (B, K) case)."""
    A, w = A.double(), w.double()
    if relu_weights:
        w = w.relu()
    if w.dim() == 2:
        w = w[:, :, None, None].expand_as(A)
    m = torch.einsum("bkhw,bkhw->bhw", w, A)
    return m.relu() if relu else m


def naive_upsample_minmax(maps, size, mode="bilinear"):
    """float64: F.interpolate then per-map (m - min) / (max - min); a map whose raw values are
    constant gives zeros (see test_constant_map_is_not_rounding_noise for why not 'whose
    upsampled values are constant')."""
    maps = maps.double()
    up = F.interpolate(maps[:, None], size=size, mode=mode, align_corners=False)[:, 0]
    out = torch.zeros_like(up)
    for i in range(len(up)):
        if maps[i].min() < maps[i].max() and up[i].min() < up[i].max():
            out[i] = (up[i] - up[i].min()) / (up[i].max() - up[i].min())
    return out


def make_inputs(B, K, h, w, weights, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(B, K, h, w, generator=g).relu().to(dtype)  # post-ReLU activations, as in CNNs
    shape = (B, K) if weights == "bk" else (B, K, h, w)
    W = torch.randn(*shape, generator=g).to(dtype)
    return A, W


def assert_close(actual, expected, tol=TOL):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual.double(), expected.double(), rtol=0, atol=tol)


# ----------------------------------------------------------------------------- equality

# (B, K, h, w, (H, W), weights, relu). Block sizes: K in steps of 32, 128 feature pixels and
# 1024 output pixels per program; cases below cross each boundary.
CASES = [
    (1, 37, 7, 9, (7, 9), "bk", False),  # B=1, upsampling to the same size
    (2, 37, 7, 9, (30, 17), "bk", True),  # non-square output
    (3, 70, 13, 11, (40, 29), "bkhw", False),  # 3 K-steps, 2 pixel tiles, 2 output tiles
    (2, 33, 5, 6, (64, 70), "bkhw", True),  # 5 output tiles -> 5 min/max partials per map
    (2, 20, 9, 8, (4, 5), "bk", False),  # downsampling
    (1, 5, 3, 17, (17, 3), "bkhw", True),  # transposed aspect
    (2, 1, 1, 1, (5, 3), "bk", False),  # 1x1 maps are constant -> zeros
]


@pytest.mark.parametrize("B,K,h,w,size,weights,relu", CASES)
def test_cam_maps_triton_equals_torch_equals_naive(B, K, h, w, size, weights, relu):
    A, W = make_inputs(B, K, h, w, weights, seed=B * 1000 + K)
    expected = naive_upsample_minmax(naive_sum(A, W, relu), size)
    got_torch = cam_maps(A, W, relu, size, backend="torch")
    got_triton = cam_maps(A, W, relu, size, backend="triton")
    assert got_triton.shape == (B, *size)
    assert_close(got_torch, expected)
    assert_close(got_triton, expected)
    assert_close(got_triton, got_torch)
    assert got_triton.min() >= 0 and got_triton.max() <= 1


@pytest.mark.parametrize("weights", ["bk", "bkhw"])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("relu_weights", [False, True])
def test_weighted_channel_sum(weights, relu, relu_weights):
    A, W = make_inputs(2, 45, 11, 13, weights, seed=7)
    expected = naive_sum(A, W, relu, relu_weights)
    got_torch = weighted_channel_sum(A, W, relu, relu_weights=relu_weights, backend="torch")
    got_triton = weighted_channel_sum(A, W, relu, relu_weights=relu_weights, backend="triton")
    assert got_triton.shape == (2, 11, 13)
    assert_close(got_torch, expected)
    assert_close(got_triton, expected)
    assert_close(got_triton, got_torch)
    if relu:
        assert (got_triton >= 0).all()
        assert (got_triton == 0).any() != relu_weights  # A >= 0: with ReLU(w) no sum is negative


def test_torch_path_sums_elementwise_weights_in_chunks(monkeypatch):
    monkeypatch.setattr(cam_mod, "_CHUNK_ELEMENTS", 150)  # 4 * 5 = 20 pixels -> 7 channels a step
    A, W = make_inputs(2, 45, 4, 5, "bkhw", seed=14)
    for relu_weights in (False, True):
        got = weighted_channel_sum(A, W, True, relu_weights=relu_weights, backend="torch")
        assert_close(got, naive_sum(A, W, True, relu_weights))


@pytest.mark.parametrize("size", [(6, 7), (1, 1), (29, 50), (3, 31)])
def test_upsample_minmax(size):
    maps = torch.randn(3, 6, 7, generator=torch.Generator().manual_seed(3)) * 5 + 2
    expected = naive_upsample_minmax(maps, size)
    assert_close(upsample_minmax(maps, size, backend="torch"), expected)
    assert_close(upsample_minmax(maps, size, backend="triton"), expected)
    if size == (6, 7):  # same size: plain min-max of the input
        lo, hi = maps.amin((1, 2), keepdim=True), maps.amax((1, 2), keepdim=True)
        assert_close(upsample_minmax(maps, size, backend="triton"), (maps - lo) / (hi - lo))


def test_upsample_minmax_reaches_0_and_1():
    maps = torch.randn(4, 5, 8, generator=torch.Generator().manual_seed(4))
    for backend in ("torch", "triton"):
        out = upsample_minmax(maps, (23, 41), backend=backend)
        assert (out.amin((1, 2)) == 0).all() and (out.amax((1, 2)) == 1).all()


def test_constant_maps_give_zeros():
    g = torch.Generator().manual_seed(5)
    maps = torch.randn(4, 6, 5, generator=g)
    maps[1] = 0.37  # constant
    maps[2] = 0.0  # what ReLU gives when every value is negative
    for backend in ("torch", "triton"):
        out = upsample_minmax(maps, (13, 11), backend=backend)
        assert (out[1] == 0).all() and (out[2] == 0).all()
        assert_close(out, naive_upsample_minmax(maps, (13, 11)))
        assert out[0].max() == 1 and out[3].max() == 1

    # through the fused path: image 1's map is all negative before the ReLU
    A, W = make_inputs(3, 10, 4, 7, "bk", seed=6)
    W[1] = -W[1].abs()
    for relu in (False, True):
        expected = naive_upsample_minmax(naive_sum(A, W, relu), (9, 14))
        for backend in ("torch", "triton"):
            out = cam_maps(A, W, relu, (9, 14), backend=backend)
            assert_close(out, expected)
            assert (out[1] == 0).all() == relu


def test_constant_map_is_not_rounding_noise():
    """Why a constant *input* gives zeros: bilinear weights sum to 1 only up to rounding, so the
    upsampled map of a constant is not exactly constant, and plain min-max would stretch that
    noise to [0, 1]."""
    maps = torch.full((1, 7, 9), 12345.678)
    up = F.interpolate(maps[:, None], size=(13, 5), mode="bilinear", align_corners=False)
    assert up.max() > up.min()  # the premise (float32 on CPU)
    for backend in ("torch", "triton"):
        assert (upsample_minmax(maps, (13, 5), backend=backend) == 0).all()


def test_non_contiguous_inputs():
    A, W = make_inputs(2, 40, 9, 10, "bk", seed=8)
    A_cl = A.contiguous(memory_format=torch.channels_last)  # (B, K, h, w) with channels innermost
    W_t = W.t().contiguous().t()  # (B, K) with stride (1, B)
    W4 = torch.randn(2, 10, 9, 40).permute(0, 3, 2, 1)  # (B, K, h, w) with odd strides
    for weights in (W_t, W4):
        expected = naive_upsample_minmax(naive_sum(A, weights, True), (20, 15))
        for backend in ("torch", "triton"):
            assert_close(cam_maps(A_cl, weights, True, (20, 15), backend=backend), expected)
    maps = torch.randn(3, 12, 14)[:, 1:11:2, ::3]  # strided view
    for backend in ("torch", "triton"):
        assert_close(upsample_minmax(maps, (21, 8), backend=backend), naive_upsample_minmax(maps, (21, 8)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_accumulate_in_float32(dtype):
    A, W = make_inputs(2, 24, 6, 5, "bkhw", seed=9, dtype=dtype)
    expected = naive_upsample_minmax(naive_sum(A, W, False), (11, 12))  # from the same rounded inputs
    for backend in ("torch", "triton"):
        assert_close(cam_maps(A, W, False, (11, 12), backend=backend), expected)
        assert_close(weighted_channel_sum(A, W, backend=backend), naive_sum(A, W, False), tol=1e-4)


def test_bicubic_is_torch_only():
    maps = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(10))
    expected = naive_upsample_minmax(maps, (17, 9), mode="bicubic")
    assert_close(upsample_minmax(maps, (17, 9), mode="bicubic", backend="torch"), expected)
    assert_close(upsample_minmax(maps, (17, 9), mode="bicubic"), expected)  # auto
    with pytest.raises(NotImplementedError, match="bilinear"):
        upsample_minmax(maps, (17, 9), mode="bicubic", backend="triton")


def test_empty_batch():
    A, W = make_inputs(0, 4, 3, 3, "bk", seed=0)
    for backend in ("torch", "triton"):
        assert cam_maps(A, W, True, (5, 6), backend=backend).shape == (0, 5, 6)
        assert weighted_channel_sum(A, W, backend=backend).shape == (0, 3, 3)


# ----------------------------------------------------------------------------- backend choice, errors


def test_auto_uses_torch_on_cpu(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the Triton path ran")

    monkeypatch.setattr(cam_mod, "_import_triton", boom)
    A, W = make_inputs(2, 8, 4, 4, "bk", seed=11)
    expected = naive_upsample_minmax(naive_sum(A, W, True), (8, 8))
    assert_close(cam_maps(A, W, True, (8, 8)), expected)
    assert_close(cam_maps(A, W, True, (8, 8), backend="torch"), expected)


def test_auto_keeps_autograd_on_the_torch_path(monkeypatch):
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))  # pretend: CUDA tensors
    A, W = make_inputs(2, 8, 4, 4, "bk", seed=15)
    assert cam_mod._resolve("auto", (A, W)) is not None  # would take the Triton path
    W.requires_grad_(True)
    assert cam_mod._resolve("auto", (A, W)) is None
    with torch.no_grad():
        assert cam_mod._resolve("auto", (A, W)) is not None
    out = cam_maps(A.cpu(), W, False, (6, 6), backend="torch")
    out.sum().backward()
    assert W.grad is not None


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    A, W = make_inputs(1, 4, 3, 3, "bk", seed=12)
    with pytest.raises(TritonUnavailableError, match="needs CUDA tensors.*TRITON_INTERPRET=1"):
        cam_maps(A, W, False, (5, 5), backend="triton")


def test_missing_triton_is_a_clear_error():
    """Without Triton the package imports, torch and auto work, and backend='triton' says why."""
    code = (
        "import sys; sys.modules['triton'] = None\n"  # makes `import triton` raise ImportError
        "import torch\n"
        "from harness.kernels import cam_maps, triton_available, TritonUnavailableError\n"
        "A, w = torch.rand(2, 3, 4, 5), torch.rand(2, 3)\n"
        "assert not triton_available()\n"
        "assert cam_maps(A, w, True, (6, 7)).shape == (2, 6, 7)\n"
        "assert cam_maps(A, w, True, (6, 7), backend='torch').shape == (2, 6, 7)\n"
        "try:\n"
        "    cam_maps(A, w, True, (6, 7), backend='triton')\n"
        "except TritonUnavailableError as e:\n"
        "    assert 'Triton cannot be imported' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no error')\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_importing_the_package_does_not_import_triton():
    code = "import sys, harness.kernels; assert 'triton' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_bad_arguments():
    A, W = make_inputs(2, 4, 3, 3, "bk", seed=13)
    with pytest.raises(ValueError, match="backend"):
        cam_maps(A, W, False, (5, 5), backend="cuda")
    with pytest.raises(ValueError, match="does not match"):
        weighted_channel_sum(A, W[:, :3])
    with pytest.raises(ValueError, match="does not match"):
        weighted_channel_sum(A, torch.rand(2, 4, 3, 2))
    with pytest.raises(ValueError, match=r"\(B, K, h, w\)"):
        weighted_channel_sum(A[0], W)
    with pytest.raises(ValueError, match="size"):
        upsample_minmax(A[:, 0], (0, 5))
    with pytest.raises(ValueError, match="mode"):
        upsample_minmax(A[:, 0], (5, 5), mode="nearest")
    with pytest.raises(TypeError, match="floating-point"):
        upsample_minmax(torch.ones(2, 3, 3, dtype=torch.int64), (5, 5))


# ----------------------------------------------------------------------------- compiled mode


COMPILE_CHECK = """
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile
from harness.kernels import _cam_triton as kt

wsum, up = kt.kernels()
assert type(wsum).__name__ == "JITFunction", type(wsum)
target = GPUTarget("cuda", 90, 32)

def build(kernel, types, consts):
    names = list(kernel.arg_names)
    signature = dict(zip(names, types)) | {k: "constexpr" for k in consts}
    src = ASTSource(fn=kernel, signature=signature,
                    constexprs={(names.index(k),): v for k, v in consts.items()})
    assert compile(src, target=target).asm["cubin"]

for elementwise in (False, True):
    build(wsum, ["*fp16", "*fp32", "*fp32"] + ["i32"] * 3 + ["i64"] * 9,
          dict(ELEMENTWISE=elementwise, RELU=True, RELU_WEIGHTS=True,
               BLOCK_K=kt.WSUM_BLOCK_K, BLOCK_P=kt.WSUM_BLOCK_P))
for phase in (0, 1):
    build(up, ["*fp32"] * 3 + ["i32"] * 4 + ["i64"] * 4 + ["fp32"] * 2 + ["i32"],
          dict(PHASE=phase, NSPLIT_P2=16, BLOCK=kt.UP_BLOCK))
"""


def test_kernels_compile_for_cuda():
    """The interpreter accepts code the compiler rejects: compile every kernel variant to a cubin
    for an sm_90 (H100) target with Triton's bundled ptxas; no GPU is needed for that. In a fresh
    process: Triton 3.9's interpreter leaves triton.language.core patched after it runs a kernel
    that calls a @triton.jit library function (tl.sum, tl.max...), which breaks later
    compilation in the same process."""
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    subprocess.run([sys.executable, "-c", COMPILE_CHECK], cwd=ROOT, env=env, check=True)
