"""Probabilistic diffeomorphic registration (Dalca et al. 2018) as pieces for MONAI engines.

The network predicts ``pred = [mu, log_var]`` (``2 D`` channels): the mean and the log-variance of a Gaussian
posterior over a stationary velocity field ``z`` (voxels of the prediction grid; VoxelMorph's public models
predict it at half the input resolution). ``phi_z = exp(z)`` (scaling and squaring) and ``phi_z^-1 = exp(-z)``.

* :class:`ProbabilisticRegistrationLoss` - the paper's loss for one batch (the negative ELBO, up to constants),
  with every sum divided by the number of velocity entries ``n = D * |grid|``::

      forward only : [ 1/(2 s^2) * 1/K sum_k ||x - y o phi_k||^2                      + KL ] / n
      bidirectional: [ 1/(4 s^2) * 1/K sum_k (||x - y o phi_k||^2 + ||y - x o phi_k^-1||^2) + KL ] / n
      (+ seg_weight * (1 - mean Dice of s_y o phi_mu against s_x), when labels are given)

  ``x`` is the fixed image, ``y`` the moving one, ``s`` the image noise (``image_sigma``), ``phi_k = exp(z_k)``
  with ``z_k`` a reparameterised posterior sample (:func:`common.losses.sample_velocity`), the squared norms are
  sums over voxels of the input grid, and KL is :class:`common.losses.PriorKLLoss` (the formula is in
  :mod:`common.losses.probabilistic`). The Dice term is the optional segmentation loss of the paper; it uses the
  mean field so that it does not add sampling noise.
* :class:`SVFToDDF` (``common.engines.registration``) turns ``pred`` into the displacement of the posterior mean;
  ``SVFToDDF(inverse=True)`` gives ``exp(-mu)``.
* test-time optimisation (the bundle's ``instance_iterations``) is the project's one engine,
  :class:`common.engines.instance_optimisation.InstanceOptimiser`, started from the posterior mean's field and
  diffeomorphic (``init o exp(v)``), on the input grid.
* :class:`PosteriorUncertainty` - the per-voxel uncertainty map written by inference: the standard deviation
  (in mm, over the vector components combined) of the displacement over ``K`` posterior samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from common.blocks import VelocityIntegrator, pair_one_hot, resize_flow, warp
from common.losses.labels import soft_dice
from common.losses.probabilistic import GaussianSmoothing, PriorKLLoss, sample_velocity

__all__ = ["split_posterior", "ProbabilisticRegistrationLoss", "PosteriorUncertainty"]


def split_posterior(pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``pred (B, 2D, *S)`` -> ``mu, log_var``, each ``(B, D, *S)``, with a clear error for other shapes."""
    dims = pred.ndim - 2
    if dims not in (2, 3) or pred.shape[1] != 2 * dims:
        raise ValueError(
            f"split_posterior: expected (B, {2 * max(dims, 2)}, *S) = [mu, log_var] for a {dims}D velocity field, "
            f"got shape {tuple(pred.shape)}."
        )
    return pred[:, :dims], pred[:, dims:]


def _soft_dice_loss(warped: torch.Tensor, fixed: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``1 - mean over foreground classes and batch of soft Dice`` (one-hot ``(B, K, *S)``, class 0 dropped)."""
    present = fixed[:, 1:].flatten(2).sum(-1) > 0
    dice = soft_dice(warped[:, 1:], fixed[:, 1:], smooth=eps)
    return 1 - dice[present].mean() if present.any() else warped.new_zeros(())


class ProbabilisticRegistrationLoss(nn.Module):
    """The loss of Dalca et al. 2018 (module docstring), called as ``loss(pred, targets)`` by MONAI's trainer.

    Args:
        image_sigma: image noise ``s`` (intensities in [0, 1]); smaller trusts the images more.
        prior_lambda: ``lambda`` of the Laplacian prior ``p(z) = N(0, (lambda L)^-1)``.
        smoothing_sigma: sigma (voxels of the velocity grid) of the posterior smoothing ``C``; ``0`` is the
            original diagonal posterior.
        num_samples: ``K`` posterior samples per step.
        bidirectional: add the inverse term ``||y - x o phi^-1||^2`` (and halve the image weight).
        seg_weight: weight of the optional segmentation (Dice) loss; ``0`` switches it off.
        num_classes: label classes ``0..K-1`` for the Dice term (default: inferred per batch).
        int_steps: scaling-and-squaring steps.
        sample: draw posterior samples (True, training); False uses ``z = mu`` (deterministic).
        image_smoothing: sigma (input voxels) of a Gaussian applied to both images before the squared
            differences (0: none, the paper's loss). Not in the paper: synthetic images carry i.i.d. voxel noise,
            and linear interpolation of a sub-voxel shift averages that noise away, so the plain SSD is lower at a
            half-voxel shift than at the true (zero) displacement and a network learns a global shift; smoothing
            first removes that bias (tests/methods/test_prob_diffeo.py).
    """

    def __init__(
        self,
        image_sigma: float = 0.02,
        prior_lambda: float = 10.0,
        smoothing_sigma: float = 1.0,
        num_samples: int = 1,
        bidirectional: bool = True,
        seg_weight: float = 0.0,
        num_classes: int | None = None,
        int_steps: int = 7,
        sample: bool = True,
        image_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if image_sigma <= 0:
            raise ValueError(f"ProbabilisticRegistrationLoss: image_sigma must be > 0, got {image_sigma}.")
        if num_samples < 1:
            raise ValueError(f"ProbabilisticRegistrationLoss: num_samples must be >= 1, got {num_samples}.")
        self.image_sigma, self.num_samples = float(image_sigma), int(num_samples)
        self.bidirectional, self.seg_weight, self.num_classes = bool(bidirectional), float(seg_weight), num_classes
        self.sample = bool(sample)
        self.smoothing_sigma = float(smoothing_sigma)
        self._smoothing: dict[int, GaussianSmoothing] = {}
        self.kl = {d: PriorKLLoss(prior_lambda, self.smoothing(d)) for d in (2, 3)}
        self.integrate = VelocityIntegrator(int_steps)
        self.image_smoothing = float(image_smoothing)
        self._image_smoothers: dict[int, GaussianSmoothing] = {}
        self.generator: torch.Generator | None = None
        self.last_terms: dict[str, float] = {}

    def smoothing(self, dims: int) -> GaussianSmoothing | None:
        """The posterior smoothing ``C`` for ``dims`` (None for the diagonal posterior)."""
        if self.smoothing_sigma <= 0:
            return None
        if dims not in self._smoothing:
            self._smoothing[dims] = GaussianSmoothing(self.smoothing_sigma, dims)
        return self._smoothing[dims]

    def smooth_images(self, image: torch.Tensor) -> torch.Tensor:
        """The images the squared differences compare (Gaussian-smoothed when ``image_smoothing > 0``)."""
        if self.image_smoothing <= 0:
            return image
        dims = image.ndim - 2
        if dims not in self._image_smoothers:
            self._image_smoothers[dims] = GaussianSmoothing(self.image_smoothing, dims)
        return self._image_smoothers[dims].to(image.device)(image)

    def forward(self, pred: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        mu, log_var = split_posterior(pred)
        dims = mu.ndim - 2
        moving = self.smooth_images(targets["moving_image"].float())
        fixed = self.smooth_images(targets["fixed_image"].float())
        size = tuple(fixed.shape[2:])
        n = mu[0].numel()
        smoothing = self.smoothing(dims)
        if smoothing is not None:
            smoothing = smoothing.to(mu.device)
        sq_fwd = sq_bwd = pred.new_zeros(())
        for _ in range(self.num_samples):
            z = sample_velocity(mu, log_var, smoothing, self.generator) if self.sample else mu
            sq_fwd = sq_fwd + (warp(moving, resize_flow(self.integrate(z), size)) - fixed).pow(2).sum() / mu.shape[0]
            if self.bidirectional:
                inv = resize_flow(self.integrate(-z), size)
                sq_bwd = sq_bwd + (warp(fixed, inv) - moving).pow(2).sum() / mu.shape[0]
        scale = 1.0 / ((4.0 if self.bidirectional else 2.0) * self.image_sigma**2 * self.num_samples * n)
        recon = scale * (sq_fwd + sq_bwd)
        kl = self.kl[dims](mu, log_var)
        total = recon + kl
        terms = {"recon": float(recon.detach()), "recon_forward": float((scale * sq_fwd).detach()),
                 "kl": float(kl.detach())}  # fmt: skip
        if self.bidirectional:
            terms["recon_inverse"] = float((scale * sq_bwd).detach())
        if self.seg_weight > 0 and "moving_label" in targets and "fixed_label" in targets:
            moh, foh, _ = pair_one_hot(targets["moving_label"], targets["fixed_label"], self.num_classes)
            ddf = resize_flow(self.integrate(mu), size)
            seg = _soft_dice_loss(warp(moh, ddf), foh)
            total = total + self.seg_weight * seg
            terms["dice_loss"] = float(seg.detach())
        terms["total"] = float(total.detach())
        self.last_terms = terms
        return total


class PosteriorUncertainty:
    """Inference extra output: ``{"uncertainty": (1, *S_net)}`` - the displacement's posterior spread in mm.

    For ``K`` samples ``z_k = mu + C (sigma * r_k)`` the displacement ``exp(z_k)`` is brought to the network grid
    and to mm (``net_spacing``); the map is ``sqrt(sum_d var_k(u_d))`` per voxel. Seeded, so reruns agree.

    Args:
        loss: the :class:`ProbabilisticRegistrationLoss` whose smoothing and integrator to use.
        num_samples: ``K``.
        seed: random seed.
    """

    def __init__(self, loss: ProbabilisticRegistrationLoss, num_samples: int = 16, seed: int = 0) -> None:
        if int(num_samples) < 2:
            raise ValueError(f"PosteriorUncertainty: num_samples must be >= 2, got {num_samples}.")
        self.loss, self.num_samples, self.seed = loss, int(num_samples), int(seed)

    def maps(self, pred: torch.Tensor, size: Sequence[int], spacing: Sequence[float]) -> torch.Tensor:
        """``pred (1, 2D, *S_pred)`` -> uncertainty ``(1, *size)`` in mm."""
        mu, log_var = split_posterior(pred.float())
        dims = mu.ndim - 2
        smoothing = self.loss.smoothing(dims)
        if smoothing is not None:
            smoothing = smoothing.to(mu.device)
        generator = torch.Generator(device=mu.device).manual_seed(self.seed)
        scale = torch.as_tensor([float(s) for s in spacing], dtype=mu.dtype, device=mu.device).view(1, dims,
                                                                                                    *([1] * dims))  # fmt: skip
        total = total_sq = None
        with torch.no_grad():
            for _ in range(self.num_samples):
                z = sample_velocity(mu, log_var, smoothing, generator)
                u = resize_flow(self.loss.integrate(z), tuple(size)) * scale
                total = u if total is None else total + u
                total_sq = u * u if total_sq is None else total_sq + u * u
        k = float(self.num_samples)
        var = (total_sq - total * total / k) / (k - 1)
        return var.clamp_min(0).sum(1).sqrt()

    def __call__(self, item: dict[str, Any], ddf_net: torch.Tensor) -> dict[str, np.ndarray]:
        pred = item["pred"]
        pred = pred.as_tensor() if hasattr(pred, "as_tensor") else torch.as_tensor(pred)
        net_aff = item["geometry"]["net_affine"]
        net_aff = np.asarray(net_aff.cpu() if isinstance(net_aff, torch.Tensor) else net_aff, dtype=np.float64)
        dims = ddf_net.shape[1]
        spacing = np.sqrt((net_aff[:dims, :dims] ** 2).sum(0))
        return {"uncertainty": self.maps(pred[None], ddf_net.shape[2:], spacing).cpu().numpy()}
