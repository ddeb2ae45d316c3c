"""Image similarity losses: gradients, behaviour under shifts and remappings, agreement with MONAI, errors."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from loss_helpers import blob_image, shift_x
from monai.losses import GlobalMutualInformationLoss, LocalNormalizedCrossCorrelationLoss
from torch.autograd import gradcheck

from common.losses import GlobalNCCLoss, LocalNCCLoss, MutualInformationLoss, NGFLoss, SSDLoss
from common.losses.image import valid_lncc_map

SHAPES = {2: (24, 24), 3: (14, 14, 14)}


def make_losses() -> dict[str, torch.nn.Module]:
    return {
        "ssd": SSDLoss(),
        "global_ncc": GlobalNCCLoss(),
        "local_ncc": LocalNCCLoss(kernel_size=5),
        "mi": MutualInformationLoss(num_bins=16, normalise="minmax"),
        "ngf": NGFLoss(epsilon=0.01),
    }


# ---------------------------------------------------------------- gradcheck (float64, tiny)
GRADCHECK = [
    ("ssd", lambda: SSDLoss()),
    ("global_ncc", lambda: GlobalNCCLoss()),
    ("local_ncc", lambda: LocalNCCLoss(kernel_size=3)),
    ("local_ncc_slabs", lambda: LocalNCCLoss(kernel_size=3, chunk_size=10)),
    ("mi_minmax_chunked", lambda: MutualInformationLoss(num_bins=6, normalise="minmax", chunk_size=40)),
    ("mi_unit_range", lambda: MutualInformationLoss(num_bins=5, chunk_size=1000)),
    ("ngf_spacing", lambda: NGFLoss(epsilon=0.3, spacing=None)),
]


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name,factory", GRADCHECK, ids=[g[0] for g in GRADCHECK])
@pytest.mark.parametrize("with_mask", [False, True])
def test_gradcheck(name, factory, dims, with_mask):
    shape = (1, 1, *([5] * dims))
    pred = (torch.rand(shape, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    target = (torch.rand(shape, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    mask = torch.rand(shape, dtype=torch.float64) if with_mask else None
    loss = factory()
    if name == "ngf_spacing":
        loss.spacing = (1.5, 0.7, 2.0)[:dims]
    assert gradcheck(lambda p, t: loss(p, t, mask), (pred, target), eps=1e-6, atol=1e-5, fast_mode=True)


# ---------------------------------------------------------------- behaviour
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", ["ssd", "global_ncc", "local_ncc", "mi", "ngf"])
def test_minimal_at_alignment_and_grows_with_shift(name, dims):
    fixed = blob_image(SHAPES[dims])
    loss = make_losses()[name]
    values = [float(loss(shift_x(fixed, s), fixed)) for s in (0, 1, 2, 3)]
    assert all(b > a + 1e-4 for a, b in zip(values, values[1:])), values
    # and the optimum is the documented one
    optimum = {"ssd": 0.0, "global_ncc": 0.0, "ngf": 0.0}
    if name in optimum:
        assert values[0] == pytest.approx(optimum[name], abs=1e-5)


def test_mi_exactly_invariant_to_increasing_linear_remap_with_minmax():
    # values far outside [0, 1] are fine with normalise="minmax"
    fixed = blob_image(SHAPES[2])
    mi = MutualInformationLoss(num_bins=16, normalise="minmax")
    for s in (0, 1, 2, 3):
        moving = shift_x(fixed, s)
        assert float(mi(moving, 250.0 * fixed - 40.0)) == pytest.approx(float(mi(moving, fixed)), rel=1e-9)


REMAPS = [
    # (name, increasing/decreasing intensity remapping of the fixed image, relative tolerance for MI)
    ("inversion", lambda x: 1.0 - x, 1e-7),  # decreasing affine: exact under minmax (bins mirror)
    ("quadratic", lambda x: x + x**2, 0.15),  # non-linear: Parzen binning is only nearly invariant
]


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("remap_name,remap,rel", REMAPS, ids=[r[0] for r in REMAPS])
def test_mi_nearly_invariant_to_monotonic_remap(remap_name, remap, rel, dims):
    fixed = blob_image(SHAPES[dims])
    mi = MutualInformationLoss(num_bins=16, normalise="minmax")
    ssd = SSDLoss()
    mi_plain, mi_remap, ssd_plain, ssd_remap = [], [], [], []
    for s in (0, 1, 2, 3):
        moving = shift_x(fixed, s)
        mi_plain.append(float(mi(moving, fixed)))
        mi_remap.append(float(mi(moving, remap(fixed))))
        ssd_plain.append(float(ssd(moving, fixed)))
        ssd_remap.append(float(ssd(moving, remap(fixed))))
    for a, b in zip(mi_plain, mi_remap):
        assert abs(b - a) <= rel * abs(a) + 1e-12
    assert mi_remap == sorted(mi_remap)  # still minimal at alignment
    # control: SSD is not invariant (its value at alignment jumps from 0 above its value at 1 voxel shift)
    assert ssd_plain[0] < 1e-12 and ssd_remap[0] > ssd_plain[1]


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("remap_name,remap", [("inversion", lambda x: 1.0 - x), ("quadratic", lambda x: x + x**2)])
def test_ngf_nearly_invariant_to_monotonic_remap_on_edges(remap_name, remap, dims):
    # where both gradients exceed eps by far, NGF depends on gradient directions only
    fixed = blob_image(SHAPES[dims])
    eps = 1e-4
    grad_norm = torch.stack(torch.gradient(fixed, dim=tuple(range(2, 2 + dims)))).norm(dim=0)
    edges = (grad_norm > 100 * eps).to(fixed.dtype)
    assert 0.2 < float(edges.mean()) < 1.0
    ngf = NGFLoss(epsilon=eps)
    for s in (0, 1, 2, 3):
        moving = shift_x(fixed, s)
        plain = float(ngf(moving, fixed, edges))
        assert float(ngf(moving, remap(fixed), edges)) == pytest.approx(plain, abs=2e-3)


def test_ngf_flat_regions_count_as_aligned_and_spacing_scales_gradients():
    flat = torch.full((1, 1, 8, 8), 0.3, dtype=torch.float64)
    assert float(NGFLoss()(flat, flat + 0.5)) == pytest.approx(0.0, abs=1e-12)
    ramp_x = torch.arange(8, dtype=torch.float64).view(1, 1, 8, 1).expand(1, 1, 8, 8) * 0.05
    ramp_y = ramp_x.transpose(2, 3)
    # orthogonal ramps, gradient 0.05 per voxel: with eps=0.05 at 1 mm, value = 1 - e^4 / (2 e^2)^2 = 0.75
    assert float(NGFLoss(epsilon=0.05)(ramp_x, ramp_y)) == pytest.approx(0.75)
    # spacing 0.5 mm doubles the gradients (0.1 per mm): 1 - e^4 / ((0.01 + e^2)^2) = 1 - 1/25
    value = float(NGFLoss(epsilon=0.05, spacing=(0.5, 0.5))(ramp_x, ramp_y))
    assert value == pytest.approx(1 - 1 / 25)


@pytest.mark.parametrize(
    "transform,expected", [(lambda x: 3.0 * x + 2.0, 0.0), (lambda x: -x, 2.0), (lambda x: 0 * x + 5, 1.0)]
)
def test_global_ncc_values(transform, expected):
    fixed = blob_image(SHAPES[3])
    assert float(GlobalNCCLoss()(transform(fixed), fixed)) == pytest.approx(expected, abs=1e-5)


def test_global_ncc_mask_restricts_the_statistics():
    a = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    b = a.clone()
    b[..., 4:] = torch.rand(1, 1, 8, 4, dtype=torch.float64)  # differ only in the right half
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    mask[..., :4] = 1
    assert float(GlobalNCCLoss()(a, b, mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(GlobalNCCLoss()(a, b)) > 0.1


def test_local_ncc_matches_monai_inside_and_stays_in_range_on_flat_regions():
    a = torch.rand(1, 1, 16, 16, 16)
    b = 0.5 * a + 0.5 * torch.rand(1, 1, 16, 16, 16)
    ours = LocalNCCLoss(kernel_size=5, reduction="none")(a, b)
    monai = LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=5, reduction="none")(a, b)
    inner = (slice(None), slice(None)) + (slice(2, -2),) * 3  # windows that do not reach the padding
    torch.testing.assert_close(ours[inner], 1.0 + monai[inner], atol=1e-4, rtol=0)
    # flat region at a non-zero level: MONAI's float32 variances cancel and -LNCC^2 leaves [-1, 0]
    flat_a = 0.7 + 1e-4 * torch.randn(1, 1, 20, 20, 20)
    flat_b = 0.7 + 1e-4 * torch.randn(1, 1, 20, 20, 20)
    raw = LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=9, reduction="none")(flat_a, flat_b)
    assert float(raw.min()) < -1.5  # the defect being fixed (still present in MONAI 1.6.1)
    ours = LocalNCCLoss(kernel_size=9, reduction="none")(flat_a, flat_b)
    assert float(ours.min()) >= 0.0 and float(ours.max()) <= 1.0
    assert float(ours.mean()) > 0.9  # uncorrelated noise: LNCC^2 close to 0


@pytest.mark.parametrize("dims", [2, 3])
def test_valid_lncc_map_is_the_padded_map_without_its_border(dims):
    a = torch.rand(3, 1, *range(11, 11 + dims), dtype=torch.float64, requires_grad=True)
    b = 0.5 * a.detach() + 0.5 * torch.rand_like(a) + 3.0  # offset: centring must not matter
    valid = valid_lncc_map(a, b, 5)
    assert valid.shape == (3, 1, *range(7, 7 + dims))
    inner = (slice(None), slice(None)) + (slice(2, -2),) * dims
    padded = LocalNCCLoss(kernel_size=5, reduction="none")(a, b)[inner]
    torch.testing.assert_close(valid, padded)
    (g1,) = torch.autograd.grad(valid.sum(), a)
    (g2,) = torch.autograd.grad(padded.sum(), a)
    torch.testing.assert_close(g1, g2)
    same = valid_lncc_map(a, 2.0 * a + 1.0, 3)  # an affine function of itself: LNCC^2 = 1 in every window
    assert float(same.detach().abs().max()) < 1e-6
    with pytest.raises(ValueError, match="valid_lncc_map: kernel_size"):
        valid_lncc_map(a, b, 4)


@pytest.mark.parametrize("dims", [2, 3])
def test_local_ncc_slabs_give_the_same_values_and_gradients(dims):
    a = torch.rand(2, 1, *([9] * dims), dtype=torch.float64, requires_grad=True)
    b = torch.rand(2, 1, *([9] * dims), dtype=torch.float64)
    outs = []
    for chunk in (10**9, 1, 2 * 9 ** (dims - 1) * 2):  # whole image, one row per slab, two rows per slab
        value = LocalNCCLoss(kernel_size=5, chunk_size=chunk)(a, b)
        (grad,) = torch.autograd.grad(value, a)
        outs.append((value, grad))
    for value, grad in outs[1:]:
        torch.testing.assert_close(value, outs[0][0])
        torch.testing.assert_close(grad, outs[0][1])


@pytest.mark.parametrize("name", ["local_ncc", "mi"])
def test_half_precision_autocast_is_computed_in_float32(name):
    a, b = torch.rand(1, 1, 12, 12, 12), torch.rand(1, 1, 12, 12, 12)
    loss = make_losses()[name]
    reference = float(loss(a, b))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        assert float(loss(a, b)) == pytest.approx(reference, rel=1e-5)
    assert float(loss(a.bfloat16(), b.bfloat16())) == pytest.approx(reference, rel=2e-2)


def test_mi_matches_monai_on_unit_range_inputs():
    a = torch.rand(2, 1, 10, 10, 10)
    b = (0.6 * a + 0.4 * torch.rand(2, 1, 10, 10, 10)).clamp(0, 1)
    ours = MutualInformationLoss(num_bins=23, sigma_ratio=0.5)(a, b)
    monai = GlobalMutualInformationLoss(num_bins=23, sigma_ratio=0.5)(a, b)
    assert float(ours) == pytest.approx(float(monai), rel=1e-3)


def test_mi_histogram_chunking_mask_and_range():
    a = torch.rand(1, 1, 9, 11, 7, dtype=torch.float64)
    b = torch.rand(1, 1, 9, 11, 7, dtype=torch.float64)
    whole = MutualInformationLoss(num_bins=8, chunk_size=10**6).joint_histogram(a, b)
    chunked = MutualInformationLoss(num_bins=8, chunk_size=17).joint_histogram(a, b)
    torch.testing.assert_close(whole, chunked)
    assert float(whole.sum()) == pytest.approx(1.0)
    # a binary mask gives the histogram of the masked voxels only
    mask = torch.zeros(1, 1, 9, 11, 7, dtype=torch.float64)
    mask[:, :, :4] = 1
    mi = MutualInformationLoss(num_bins=8)
    masked = mi.joint_histogram(a, b, mask)
    cropped = mi.joint_histogram(a[:, :, :4].contiguous(), b[:, :, :4].contiguous())
    torch.testing.assert_close(masked, cropped)
    # -MI of an image with itself is -H(A) >= -log(bins); independent images give about 0
    assert -math.log(8) <= float(mi(a, a)) < -1.0
    assert float(mi(a, b)) > -0.1


@pytest.mark.parametrize("name", ["ssd", "local_ncc", "ngf"])
def test_voxel_map_reduction_and_mask(name):
    a = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    b = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    loss = make_losses()[name]
    loss.reduction = "none"
    values = loss(a, b)
    assert values.shape == a.shape
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    mask[..., :3, :] = 1
    loss.reduction = "mean"
    assert float(loss(a, b, mask)) == pytest.approx(float(values[..., :3, :].mean()))
    loss.reduction = "sum"
    assert float(loss(a, b)) == pytest.approx(float(values.sum()))


@pytest.mark.parametrize("name", ["global_ncc", "mi"])
def test_per_sample_reduction(name):
    a = torch.rand(3, 2, 8, 8, dtype=torch.float64)
    b = torch.rand(3, 2, 8, 8, dtype=torch.float64)
    loss = make_losses()[name]
    loss.reduction = "none"
    values = loss(a, b)
    assert values.shape == (3, 2)
    loss.reduction = "mean"
    assert float(loss(a, b)) == pytest.approx(float(values.mean()))


# ---------------------------------------------------------------- errors
ERRORS = [
    (
        "shape mismatch",
        lambda: (torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9), None),
        r"shape mismatch.*\(1, 1, 8, 9\)",
    ),
    ("channel mismatch", lambda: (torch.rand(1, 2, 8, 8), torch.rand(1, 1, 8, 8), None), r"shape mismatch"),
    ("nan pred", lambda: (torch.full((1, 1, 8, 8), float("nan")), torch.rand(1, 1, 8, 8), None), r"`pred`.*NaN"),
    (
        "inf target",
        lambda: (torch.rand(1, 1, 8, 8), torch.full((1, 1, 8, 8), float("inf")), None),
        r"`target`.*NaN or Inf",
    ),
    (
        "mask channels",
        lambda: (torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), torch.ones(1, 2, 8, 8)),
        r"`mask` must have shape \(1, 1, 8, 8\)",
    ),
    ("negative mask", lambda: (torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), -torch.ones(1, 1, 8, 8)), r"negative"),
    ("1d input", lambda: (torch.rand(1, 1, 8), torch.rand(1, 1, 8), None), r"2 or 3 spatial dims.*\(1, 1, 8\)"),
]


@pytest.mark.parametrize("name", ["ssd", "global_ncc", "local_ncc", "mi", "ngf"])
@pytest.mark.parametrize("case,make,match", ERRORS, ids=[e[0] for e in ERRORS])
def test_input_errors(name, case, make, match):
    loss = make_losses()[name]
    pred, target, mask = make()
    with pytest.raises(ValueError, match=rf"^{type(loss).__name__}: .*{match}"):
        loss(pred, target, mask)


@pytest.mark.parametrize("low,high", [(-0.2, 0.9), (0.0, 1.3)])
def test_mi_refuses_values_outside_unit_range_without_normalisation(low, high):
    pred = torch.rand(1, 1, 6, 6) * (high - low) + low
    pred.view(-1)[0], pred.view(-1)[1] = low, high
    with pytest.raises(ValueError, match=r"^MutualInformationLoss: `pred` has values in .* outside \[0, 1\]"):
        MutualInformationLoss()(pred, torch.rand(1, 1, 6, 6))
    with pytest.raises(ValueError, match=r"`target` has values"):
        MutualInformationLoss()(torch.rand(1, 1, 6, 6), pred)
    # explicit normalisation accepts the same input
    assert torch.isfinite(MutualInformationLoss(normalise="minmax")(pred, torch.rand(1, 1, 6, 6)))


@pytest.mark.parametrize(
    "factory,match",
    [
        (lambda: SSDLoss(reduction="avg"), r"^SSDLoss: `reduction` must be one of"),
        (lambda: LocalNCCLoss(kernel_size=4), r"^LocalNCCLoss: `kernel_size` must be a positive odd"),
        (lambda: MutualInformationLoss(normalise="zscore"), r"^MutualInformationLoss: `normalise`"),
        (lambda: MutualInformationLoss(num_bins=1), r"^MutualInformationLoss: `num_bins`"),
        (lambda: NGFLoss(epsilon=0.0), r"^NGFLoss: `epsilon` must be > 0"),
        (lambda: GlobalNCCLoss(eps=-1.0), r"^GlobalNCCLoss: `eps` must be > 0"),
    ],
)
def test_constructor_errors(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_ngf_spacing_must_match_dims():
    with pytest.raises(ValueError, match=r"^NGFLoss: `spacing` must be 2 positive numbers"):
        NGFLoss(spacing=(1.0, 1.0, 1.0))(torch.rand(1, 1, 6, 6), torch.rand(1, 1, 6, 6))


def test_integer_inputs_are_refused():
    with pytest.raises(TypeError, match=r"^SSDLoss: `pred` must be a floating-point tensor"):
        SSDLoss()(torch.ones(1, 1, 4, 4, dtype=torch.long), torch.rand(1, 1, 4, 4))


# ---------------------------------------------------------------- memory on a realistic volume (slow)
_MEMORY_SCRIPT = """
import sys, torch
from common.losses import LocalNCCLoss, MutualInformationLoss
torch.set_num_threads(2)
def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
a = torch.rand(1, 1, 160, 192, 224, requires_grad=True)
b = torch.rand(1, 1, 160, 192, 224)
loss = MutualInformationLoss(num_bins=32, normalise="minmax") if sys.argv[1] == "mi" else LocalNCCLoss(9)
open("/proc/self/clear_refs", "w").write("5")  # reset the peak-RSS counter
base = rss("VmRSS")
loss(a, b).backward()
print(rss("VmHWM") - base)
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
@pytest.mark.parametrize("name", ["mi", "local_ncc"])
def test_peak_memory_on_a_brain_sized_volume(name):
    # forward + backward on 1x1x160x192x224 float32 (27.5 MB per image), peak RSS increase measured here:
    # MI (32 bins) +0.36 to +0.39 GB, LNCC (9^3) +0.47 to +0.53 GB; MONAI's GlobalMutualInformationLoss +5.9 GB
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, name], capture_output=True, text=True, check=True, timeout=600
    )
    peak_mb = float(out.stdout.strip().splitlines()[-1])
    print(f"{name}: peak RSS increase {peak_mb:.0f} MB")
    assert peak_mb < 1024
