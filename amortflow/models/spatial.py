"""Spatial Gaussian process on a grid: the illustration of Zammit-Mangion, Sainsbury-Dale & Huser,
"Neural Methods for Amortized Inference" (arXiv 2404.12484).

One field per dataset: a zero-mean Gaussian process observed without noise on an ``n x n`` grid
of the unit square, exponential covariance ``C(d) = exp(-d / ell)`` (unit variance), length scale
``ell ~ Uniform(0, ell_max)``. The unconstrained parameter is ``theta = logit(ell / ell_max)``.

The length scale is one-dimensional, so the exact posterior is available by quadrature:
:func:`spatial_gp_grid_posterior` evaluates the exact likelihood of every field on a fine grid of
``ell`` with one Cholesky factor per grid point shared by all fields -- the reference an MCMC run
can only approximate.
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from amortflow.models.base import Model, make_model
from amortflow.models.symmetry import chain, dihedral, sign_flip
from amortflow.models.transforms import interval_forward, interval_inverse

_LOG_2PI = float(np.log(2.0 * np.pi))


def grid_coordinates(n: int) -> np.ndarray:
    """``[n * n, 2]`` points of the regular ``n x n`` grid on the unit square (row-major)."""
    g = np.linspace(0.0, 1.0, n)
    xx, yy = np.meshgrid(g, g, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


def exponential_covariance(dist, ell, jitter: float):
    """``exp(-dist / ell) + jitter I`` for a distance matrix ``dist [m, m]``.

    The jitter keeps the float32 Cholesky factor finite for the longest length scales; the
    simulator and the likelihood use the same matrix, so the model stays self-consistent."""
    return jnp.exp(-dist / ell) + jitter * jnp.eye(dist.shape[0], dtype=dist.dtype)


def gp_log_likelihood(chol, fields):
    """Zero-mean Gaussian log density of flattened ``fields [..., m]`` under ``chol [m, m]``
    (lower Cholesky factor of the covariance) -> ``[...]``."""
    m = chol.shape[0]
    flat = fields.reshape((-1, m))
    z = jax.scipy.linalg.solve_triangular(chol, flat.T, lower=True)
    quad = jnp.sum(z * z, axis=0)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))
    out = -0.5 * (quad + logdet + m * _LOG_2PI)
    return out.reshape(fields.shape[:-1])


def spatial_gp(grid_size: int = 16, ell_max: float = 0.6, jitter: float = 1e-5) -> Model:
    """The review's spatial GP model (see the module docstring); observation ``[n, n]``.

    Args:
      grid_size: ``n``, the number of grid points per side (the review: 16).
      ell_max: upper end of the uniform prior on the length scale (the review: 0.6).
      jitter: nugget added to the covariance's diagonal (numerical, see
        :func:`exponential_covariance`).
    """
    n = int(grid_size)
    if n < 2:
        raise ValueError(f"spatial_gp: grid_size must be >= 2, got {grid_size!r}")
    if not ell_max > 0:
        raise ValueError(f"spatial_gp: ell_max must be > 0, got {ell_max!r}")
    coords = grid_coordinates(n)
    dist = np.sqrt(((coords[:, None, :] - coords[None, :, :]) ** 2).sum(-1)).astype(np.float32)
    hi = float(ell_max)

    def ell_of(theta):
        return interval_forward(theta[..., 0], 0.0, hi)

    def chol_of(theta):
        ell, _ = ell_of(theta)
        return jnp.linalg.cholesky(exponential_covariance(jnp.asarray(dist), ell, jitter))

    def sample_prior(key, num):
        # open interval: the logit of an endpoint is infinite (the 1e-6 cut drops 1e-6 of prior mass)
        ell = jax.random.uniform(key, (num, 1), minval=1e-6 * hi, maxval=hi)
        return interval_inverse(ell, 0.0, hi)

    def log_prior(theta):
        # Uniform(0, ell_max) pushed through the sigmoid: the log-Jacobian minus log ell_max
        _, log_det = ell_of(theta)
        return log_det - jnp.log(hi)

    def simulate(key, theta):
        z = jax.random.normal(key, (n * n,))
        return (chol_of(theta) @ z).reshape(n, n)

    def log_likelihood(theta, y):
        return gp_log_likelihood(chol_of(theta), y.reshape(n * n))

    def constrain(theta):
        return {"ell": ell_of(theta)[0]}

    return make_model(
        name="spatial_gp",
        param_names=("ell",),
        obs_shape=(n, n),
        obs_kind="grid",
        sample_prior=sample_prior,
        simulate=simulate,
        log_prior=log_prior,
        log_likelihood=log_likelihood,
        constrain=constrain,
        info={"grid_size": n, "ell_max": hi, "jitter": float(jitter)},
        # isotropic covariance on a square grid, zero mean: the 8 grid symmetries and y -> -y
        # leave every field's likelihood unchanged (training banks are augmented with them)
        symmetry=chain(dihedral(), sign_flip()),
    )


class GridPosterior(NamedTuple):
    """Exact posterior of the length scale on a grid: ``ell [G]`` (grid points, constrained),
    ``weights [K, G]`` (normalised posterior mass of each grid cell per field), ``mean [K]``,
    ``sd [K]``."""

    ell: np.ndarray
    weights: np.ndarray
    mean: np.ndarray
    sd: np.ndarray

    def quantile(self, q) -> np.ndarray:
        """Posterior quantiles ``[K, len(q)]`` of ``ell`` (the grid CDF, interpolated linearly)."""
        cdf = np.cumsum(self.weights, axis=1)
        q = np.atleast_1d(np.asarray(q, np.float64))
        return np.stack([np.interp(q, c, self.ell) for c in cdf])

    def sample(self, key, num_draws: int) -> np.ndarray:
        """``[K, S]`` draws of ``ell`` by inverse CDF (uniforms from ``key``)."""
        u = np.asarray(jax.random.uniform(key, (self.weights.shape[0], num_draws)), np.float64)
        cdf = np.cumsum(self.weights, axis=1)
        return np.stack([np.interp(ui, c, self.ell) for ui, c in zip(u, cdf)])


def spatial_gp_grid_posterior(model: Model, ys, num_grid: int = 1200, batch_size: int = 32) -> GridPosterior:
    """Exact posterior of ``ell`` for fields ``ys [K, n, n]`` of :func:`spatial_gp` by quadrature.

    The prior is uniform in ``ell``, so the posterior on a uniform grid of ``num_grid`` midpoints
    of ``(0, ell_max)`` is the normalised likelihood. Each grid point needs one Cholesky factor,
    shared by all ``K`` fields (float64 on the host side of the computation is not needed: the
    log-likelihoods are differenced per field before exponentiating).
    """
    info = model.info
    if model.name != "spatial_gp":
        raise ValueError(f"spatial_gp_grid_posterior needs the spatial_gp model, got {model.name!r}")
    n, hi, jitter = int(info["grid_size"]), float(info["ell_max"]), float(info["jitter"])
    ys = np.asarray(ys, np.float32)
    if ys.ndim != 3 or ys.shape[1:] != (n, n):
        raise ValueError(f"spatial_gp_grid_posterior: expected fields [K, {n}, {n}], got {ys.shape}")
    coords = grid_coordinates(n)
    dist = jnp.asarray(np.sqrt(((coords[:, None, :] - coords[None, :, :]) ** 2).sum(-1)), jnp.float32)
    ell = (np.arange(num_grid) + 0.5) * hi / num_grid
    loglik = np.asarray(_grid_loglik(dist, jnp.asarray(ell, jnp.float32), jnp.asarray(ys.reshape(len(ys), -1)),
                                     jitter, batch_size), np.float64).T  # [K, G]
    lw = loglik - loglik.max(axis=1, keepdims=True)
    w = np.exp(lw)
    w /= w.sum(axis=1, keepdims=True)
    mean = w @ ell
    sd = np.sqrt(np.maximum(w @ ell ** 2 - mean ** 2, 0.0))
    return GridPosterior(ell=ell, weights=w, mean=mean, sd=sd)


@partial(jax.jit, static_argnames=("jitter", "batch_size"))
def _grid_loglik(dist, ell, flat, jitter, batch_size):
    def one(l):
        chol = jnp.linalg.cholesky(exponential_covariance(dist, l, jitter))
        return gp_log_likelihood(chol, flat)

    return jax.lax.map(one, ell, batch_size=batch_size)  # [G, K]


__all__ = ["spatial_gp", "spatial_gp_grid_posterior", "GridPosterior", "grid_coordinates",
           "exponential_covariance", "gp_log_likelihood"]
