"""Dalca et al. 2018 engine pieces: the loss's exact scaling, the inverse, instance optimisation, uncertainty."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.blocks import warp
from common.engines import SVFToDDF
from common.losses.probabilistic import GaussianSmoothing, PriorKLLoss
from common.methods.prob_diffeo import ProbabilisticRegUNet
from common.methods.prob_diffeo.engine import (
    PosteriorUncertainty,
    ProbabilisticRegistrationLoss,
    split_posterior,
)


def _blob_pair(shape=(24, 24, 24), shift=2.0):
    g = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij"))
    c = torch.tensor(shape, dtype=torch.float32).view(3, 1, 1, 1) / 2
    fixed = torch.exp(-((g - c) ** 2).sum(0) / 30.0)
    moving = torch.exp(-((g - c - torch.tensor([shift, 0, 0]).view(3, 1, 1, 1)) ** 2).sum(0) / 30.0)
    return moving[None, None], fixed[None, None]


def _pred(mu, log_var_value=-20.0):
    return torch.cat([mu, torch.full_like(mu, log_var_value)], 1)


def test_split_posterior_refuses_wrong_channel_count():
    with pytest.raises(ValueError, match=r"\[mu, log_var\]"):
        split_posterior(torch.zeros(1, 3, 4, 4, 4))
    mu, lv = split_posterior(torch.zeros(1, 6, 4, 4, 4))
    assert mu.shape == lv.shape == (1, 3, 4, 4, 4)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_zero_field_loss_is_the_scaled_ssd_plus_kl(bidirectional):
    moving, fixed = _blob_pair()
    mu = torch.zeros(1, 3, 12, 12, 12)  # half-resolution velocity
    pred = _pred(mu, -3.0)
    sigma, lam = 0.05, 7.0
    loss = ProbabilisticRegistrationLoss(image_sigma=sigma, prior_lambda=lam, smoothing_sigma=1.0,
                                         bidirectional=bidirectional, sample=False)  # fmt: skip
    value = loss(pred, {"moving_image": moving, "fixed_image": fixed})
    ssd = float(((moving - fixed) ** 2).sum())
    n = mu.numel()
    # forward: ssd / (2 s^2); bidirectional: (ssd + ssd) / (4 s^2) - the same number at zero displacement
    expected_recon = ssd / (2 * sigma**2) / n
    expected_kl = float(PriorKLLoss(lam, GaussianSmoothing(1.0, 3))(mu, pred[:, 3:]))
    assert loss.last_terms["recon"] == pytest.approx(expected_recon, rel=1e-5)
    assert loss.last_terms["kl"] == pytest.approx(expected_kl, rel=1e-6)
    assert float(value) == pytest.approx(expected_recon + expected_kl, rel=1e-5)
    assert ("recon_inverse" in loss.last_terms) == bidirectional


def test_correct_translation_beats_zero_and_the_wrong_direction():
    moving, fixed = _blob_pair(shift=2.0)
    loss = ProbabilisticRegistrationLoss(image_sigma=0.05, prior_lambda=1.0, sample=False)
    targets = {"moving_image": moving, "fixed_image": fixed}
    values = {}
    for name, vx in (("zero", 0.0), ("right", 1.0), ("wrong", -1.0)):  # half-res voxels: 1.0 = 2 input voxels
        mu = torch.zeros(1, 3, 12, 12, 12)
        mu[:, 0] = vx
        loss(_pred(mu), targets)
        values[name] = loss.last_terms["recon"]
    assert values["right"] < 0.2 * values["zero"] < values["wrong"]
    assert loss.last_terms["recon_forward"] > 0


def test_inverse_svf_undoes_the_forward_map():
    v = torch.zeros(1, 3, 12, 12, 12)
    g = torch.linspace(-1, 1, 12)
    v[:, 0] = 1.5 * torch.sin(3 * g).view(12, 1, 1)
    v[:, 1] = 0.8 * torch.cos(2 * g).view(1, 1, 12)
    fwd = SVFToDDF()(v, (24, 24, 24))
    inv = SVFToDDF(inverse=True)(v, (24, 24, 24))
    composed = inv + warp(fwd, inv)  # x -> x + inv(x) -> (x + inv) + fwd(x + inv)
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4), slice(4, -4))
    naive = -fwd + warp(fwd, -fwd)  # negating the displacement is not its inverse
    assert float(fwd.abs().max()) > 2.0
    assert float(composed[inner].abs().max()) < 0.08 * float(fwd.abs().max())
    assert float(composed[inner].abs().mean()) < 0.5 * float(naive[inner].abs().mean())


def test_bidirectional_term_scores_the_inverse_warp():
    moving, fixed = _blob_pair(shift=2.0)
    loss = ProbabilisticRegistrationLoss(image_sigma=0.05, prior_lambda=1.0, sample=False)
    mu = torch.zeros(1, 3, 12, 12, 12)
    mu[:, 0] = 1.0
    loss(_pred(mu), {"moving_image": moving, "fixed_image": fixed})
    good = loss.last_terms["recon_inverse"]
    loss(_pred(torch.zeros_like(mu)), {"moving_image": moving, "fixed_image": fixed})
    assert good < 0.2 * loss.last_terms["recon_inverse"]


def test_segmentation_term_is_used_only_with_labels_and_a_weight():
    moving, fixed = _blob_pair(shift=0.0)
    labels = (fixed > 0.5).long()
    mu = torch.zeros(1, 3, 12, 12, 12)
    targets = {"moving_image": moving, "fixed_image": fixed, "moving_label": labels, "fixed_label": labels}
    with_seg = ProbabilisticRegistrationLoss(seg_weight=10.0, sample=False, num_classes=2)
    with_seg(_pred(mu), targets)
    assert with_seg.last_terms["dice_loss"] == pytest.approx(0.0, abs=1e-4)
    shifted = torch.roll(labels, 3, dims=2)
    with_seg(_pred(mu), {**targets, "moving_label": shifted})
    assert with_seg.last_terms["dice_loss"] > 0.1
    without = ProbabilisticRegistrationLoss(seg_weight=0.0, sample=False)
    without(_pred(mu), targets)
    assert "dice_loss" not in without.last_terms


def test_sampling_uses_the_posterior_spread():
    moving, fixed = _blob_pair(shift=0.0)
    mu = torch.zeros(1, 3, 12, 12, 12)
    targets = {"moving_image": moving, "fixed_image": fixed}
    loss = ProbabilisticRegistrationLoss(image_sigma=0.05, smoothing_sigma=1.0)
    loss.generator = torch.Generator().manual_seed(0)
    loss(_pred(mu, -20.0), targets)
    tight = loss.last_terms["recon"]
    loss(_pred(mu, 2.0), targets)
    assert tight < 1e-6 < loss.last_terms["recon"]


def test_uncertainty_map_tracks_the_posterior_variance_and_the_spacing():
    loss = ProbabilisticRegistrationLoss(smoothing_sigma=0.0)
    unc = PosteriorUncertainty(loss, num_samples=64, seed=0)
    mu = torch.zeros(1, 3, 8, 8, 8)
    low = unc.maps(_pred(mu, 2 * np.log(0.01)), (16, 16, 16), (1.0, 1.0, 1.0))
    high = unc.maps(_pred(mu, 2 * np.log(0.2)), (16, 16, 16), (1.0, 1.0, 1.0))
    high_2mm = unc.maps(_pred(mu, 2 * np.log(0.2)), (16, 16, 16), (2.0, 2.0, 2.0))
    assert low.shape == (1, 16, 16, 16)
    assert float(high.mean()) > 10 * float(low.mean())
    assert torch.allclose(high_2mm, 2 * high, rtol=1e-4, atol=1e-6)
    # velocity std 0.2 half-res voxels -> displacement std about 0.4 input voxels per axis, sqrt(3) * 0.4 combined
    assert 0.3 < float(high[:, 4:-4, 4:-4, 4:-4].mean()) < 1.2
    assert torch.equal(
        unc.maps(_pred(mu, -3.0), (16,) * 3, (1.0,) * 3), unc.maps(_pred(mu, -3.0), (16,) * 3, (1.0,) * 3)
    )
    with pytest.raises(ValueError, match="num_samples"):
        PosteriorUncertainty(loss, num_samples=1)


def test_network_starts_at_identity_with_a_tiny_posterior_variance():
    net = ProbabilisticRegUNet(enc_channels=(4, 4, 4, 4), dec_channels=(4, 4, 4, 4, 4), log_var_init=-10.0)
    out = net(torch.rand(1, 2, 16, 16, 16))
    assert out.shape == (1, 6, 8, 8, 8)
    mu, log_var = split_posterior(out)
    assert float(mu.abs().max()) < 1e-2
    assert torch.allclose(log_var, torch.full_like(log_var, -10.0), atol=1e-2)


def test_image_smoothing_removes_the_interpolation_noise_bias():
    """Same anatomy, independent voxel noise: plain SSD prefers a half-voxel shift (interpolation averages the
    noise); with the images smoothed first, zero displacement scores best, as it should."""
    g = torch.Generator().manual_seed(0)
    base, _ = _blob_pair(shape=(32, 32, 32), shift=0.0)
    moving = base + 0.1 * torch.randn(base.shape, generator=g)
    fixed = base + 0.1 * torch.randn(base.shape, generator=g)
    targets = {"moving_image": moving, "fixed_image": fixed}

    def recon(loss, shift):
        mu = torch.zeros(1, 3, 16, 16, 16)
        mu[:, 2] = shift  # half-resolution voxels: 0.25 = half an input voxel
        loss(_pred(mu), targets)
        return loss.last_terms["recon"]

    plain = ProbabilisticRegistrationLoss(image_sigma=0.1, sample=False)
    smoothed = ProbabilisticRegistrationLoss(image_sigma=0.1, sample=False, image_smoothing=1.0)
    assert recon(plain, 0.25) < 0.9 * recon(plain, 0.0)
    assert recon(smoothed, 0.0) < recon(smoothed, 0.25)
    assert recon(smoothed, 0.0) < recon(smoothed, -0.25)
