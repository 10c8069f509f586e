"""Simulation-based calibration (Talts et al., 2018; Säilynoja, Bürkner & Vehtari, 2022).

- :func:`sbc_ranks`: rank of each true parameter among the posterior draws, vectorized over
  simulations and parameters.
- :func:`run_sbc`: simulate from the prior predictive, draw from any estimator, rank.
- :func:`sbc_ecdf_diff` / :func:`sbc_ecdf_bands`: ECDF difference of the (fractional) ranks and
  simultaneous ``1 - alpha`` confidence bands (simulation method of Säilynoja et al., 2022:
  the pointwise level ``gamma`` is calibrated so that a whole uniform ECDF stays inside with
  probability ``1 - alpha``).
- :func:`coverage_curve`: empirical coverage of central credible intervals vs nominal level.
- :func:`sbc_uniformity_test`: chi-square statistic and p-value of binned ranks per parameter, and
  :func:`sbc_ecdf_test`: simultaneous-band test (``gamma``-based p-value).

Ranks ``r`` take values ``0..S`` (``S`` draws, ``L = S + 1`` possible values). Under calibration
they are discrete uniform; ``#{r < i}`` is then Binomial(N, i / L) exactly.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats as sps

Array = jax.Array

__all__ = [
    "sbc_ranks", "run_sbc", "SBCResult", "SBCBands", "sbc_ecdf_bands", "sbc_ecdf_diff",
    "CoverageCurve", "coverage_curve", "sbc_uniformity_test", "sbc_ecdf_test",
]


def sbc_ranks(theta_true, draws, key=None):
    """SBC rank statistics.

    Args:
      theta_true: ``[N, d]`` parameters the data were simulated from.
      draws: ``[N, S, d]`` posterior draws for each simulated dataset.
      key: optional PRNG key; if given, ties (``draw == theta``, e.g. from discrete or point-mass
        estimators) are broken uniformly at random, otherwise ties count as "not smaller".
    Returns:
      ``[N, d]`` int32 ranks in ``0..S`` (number of draws smaller than the truth).
    """
    theta = jnp.asarray(theta_true)
    draws = jnp.asarray(draws)
    less = jnp.sum(draws < theta[:, None, :], axis=1)
    if key is None:
        return less.astype(jnp.int32)
    ties = jnp.sum(draws == theta[:, None, :], axis=1)
    u = jax.random.uniform(key, less.shape)
    extra = jnp.floor(u * (ties + 1)).astype(less.dtype)
    return (less + extra).astype(jnp.int32)


class SBCResult(NamedTuple):
    """Output of :func:`run_sbc`.

    Attributes:
      ranks: ``[N, d]`` int32 ranks in ``0..num_draws``.
      theta: ``[N, d]`` true parameters.
      num_draws: ``S`` (Python int).
      post_mean: ``[N, d]`` posterior means (for recovery plots / z-scores).
      post_sd: ``[N, d]`` posterior standard deviations.
    """

    ranks: Array
    theta: Array
    num_draws: int
    post_mean: Array
    post_sd: Array


def run_sbc(key, model, estimator, num_sims: int, num_draws: int, batch_size: int | None = None) -> SBCResult:
    """Simulation-based calibration of any estimator.

    Args:
      key: PRNG key.
      model: anything with ``sample_prior_predictive(key, n) -> (theta [n, d], ys [n, *obs])``.
      estimator: anything with ``sample_and_log_prob(key, ys, num_draws) -> (draws [K, S, d],
        log_q [K, S])``.
      num_sims: ``N`` simulated datasets.
      num_draws: ``S`` posterior draws per dataset.
      batch_size: if given, the estimator is called on chunks of this many datasets (memory).
    Returns:
      :class:`SBCResult`.
    """
    k_sim, k_post, k_tie = jax.random.split(key, 3)
    theta, ys = model.sample_prior_predictive(k_sim, num_sims)
    bs = num_sims if batch_size is None else int(batch_size)
    ranks, means, sds = [], [], []
    for j, start in enumerate(range(0, num_sims, bs)):
        sl = slice(start, min(start + bs, num_sims))
        draws, _ = estimator.sample_and_log_prob(jax.random.fold_in(k_post, j), ys[sl], num_draws)
        ranks.append(sbc_ranks(theta[sl], draws, jax.random.fold_in(k_tie, j)))
        means.append(draws.mean(axis=1))
        sds.append(draws.std(axis=1, ddof=1))
    cat = lambda xs: xs[0] if len(xs) == 1 else jnp.concatenate(xs, axis=0)  # noqa: E731
    return SBCResult(cat(ranks), theta, int(num_draws), cat(means), cat(sds))


class SBCBands(NamedTuple):
    """Simultaneous ECDF bands for ``N`` uniform ranks with ``L`` possible values.

    Attributes:
      z: ``[P]`` evaluation points ``i / L`` (fractional rank thresholds).
      thresholds: ``[P]`` integer rank thresholds ``i``; ECDF(z) = ``#{r < i} / N``.
      lower, upper: ``[P]`` band for the ECDF (subtract ``z`` for the ECDF-difference plot).
      gamma: pointwise level giving simultaneous level ``1 - alpha``.
      alpha: simultaneous level.
      num_sims: ``N``.
    """

    z: np.ndarray
    thresholds: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    gamma: float
    alpha: float
    num_sims: int


def _eval_thresholds(num_ranks: int, num_points: int | None, num_sims: int):
    inner = num_ranks - 1
    if num_points is None:
        num_points = min(inner, max(num_sims, 20), 200)
    num_points = min(int(num_points), inner)
    t = np.unique(np.round(np.linspace(1, inner, num_points)).astype(np.int64))
    return t


def _uniform_counts(key, num_simulations: int, n: int, num_ranks: int, t):
    """``#{r < t_j}`` for ``num_simulations`` samples of ``n`` uniform ranks: ``[M, P]``."""
    r = np.asarray(jax.random.randint(key, (num_simulations, n), 0, num_ranks), np.int64)
    flat = (r + num_ranks * np.arange(num_simulations)[:, None]).ravel()
    hist = np.bincount(flat, minlength=num_simulations * num_ranks).reshape(num_simulations, num_ranks)
    return np.cumsum(hist, axis=1)[:, t - 1]


def _min_pointwise_level(counts, n, p):
    """``2 * min(F(c), 1 - F(c - 1))`` of Binomial(n, p), minimized over points: ``counts [M, P]``."""
    cdf = sps.binom.cdf(counts, n, p)
    sf = sps.binom.sf(counts - 1, n, p)
    return np.min(2.0 * np.minimum(cdf, sf), axis=-1)


def sbc_ecdf_bands(num_draws: int, num_sims: int, alpha: float = 0.05, num_points: int | None = None,
                   key=None, num_simulations: int = 2000) -> SBCBands:
    """Simultaneous ``1 - alpha`` ECDF bands for SBC ranks (Säilynoja et al., 2022, simulation method).

    Args:
      num_draws: ``S`` posterior draws per simulation (ranks take ``L = S + 1`` values).
      num_sims: ``N`` simulations.
      alpha: simultaneous level.
      num_points: number of evaluation points (default ``min(S, max(N, 20), 200)``).
      key: PRNG key for the calibration simulations (default ``PRNGKey(0)``: bands are then a
        deterministic function of the arguments).
      num_simulations: uniform rank samples used to calibrate ``gamma``.
    Returns:
      :class:`SBCBands` (host NumPy arrays: bands are constants, computed once).
    """
    num_ranks = int(num_draws) + 1
    n = int(num_sims)
    t = _eval_thresholds(num_ranks, num_points, n)
    p = t / num_ranks
    key = jax.random.PRNGKey(0) if key is None else key
    counts = _uniform_counts(key, num_simulations, n, num_ranks, t)
    gammas = _min_pointwise_level(counts, n, p[None, :])
    gamma = float(np.quantile(gammas, alpha, method="lower"))
    lower = sps.binom.ppf(gamma / 2, n, p) / n
    upper = sps.binom.ppf(1 - gamma / 2, n, p) / n
    return SBCBands(p, t, lower, upper, gamma, float(alpha), n)


def sbc_ecdf_diff(ranks, num_draws: int, thresholds=None):
    """ECDF difference of SBC ranks.

    Args:
      ranks: ``[N, d]`` ranks in ``0..S``.
      num_draws: ``S``.
      thresholds: ``[P]`` integer thresholds (default: every ``i`` in ``1..S``).
    Returns:
      ``(z [P], ecdf_minus_z [P, d])`` with ``ecdf(z_i) = #{r < t_i} / N`` and ``z_i = t_i / (S + 1)``.
    """
    ranks = jnp.asarray(ranks)
    if ranks.ndim == 1:
        ranks = ranks[:, None]
    num_ranks = num_draws + 1
    t = jnp.arange(1, num_ranks) if thresholds is None else jnp.asarray(thresholds)
    z = t / num_ranks
    ecdf = jnp.mean(ranks[None, :, :] < t[:, None, None], axis=1)
    return z, ecdf - z[:, None]


def sbc_ecdf_test(ranks, num_draws: int, alpha: float = 0.05, key=None, num_simulations: int = 2000):
    """Simultaneous-band uniformity test per parameter.

    Returns:
      ``(inside [d] bool, pvalue [d])``: whether each ECDF stays inside the ``1 - alpha``
      bands, and the p-value of the observed minimal pointwise level among uniform simulations.
    """
    ranks = np.asarray(ranks)
    if ranks.ndim == 1:
        ranks = ranks[:, None]
    n = ranks.shape[0]
    bands = sbc_ecdf_bands(num_draws, n, alpha, key=key, num_simulations=num_simulations)
    t = bands.thresholds
    counts = np.stack([np.cumsum(np.bincount(ranks[:, j], minlength=num_draws + 1))[t - 1]
                       for j in range(ranks.shape[1])])  # [d, P]
    obs_level = _min_pointwise_level(counts, n, bands.z[None, :])  # [d]
    key = jax.random.PRNGKey(0) if key is None else key
    sim_counts = _uniform_counts(jax.random.fold_in(key, 1), num_simulations, n, num_draws + 1, t)
    sim_level = _min_pointwise_level(sim_counts, n, bands.z[None, :])
    pvalue = (1.0 + (sim_level[None, :] <= obs_level[:, None]).sum(axis=1)) / (num_simulations + 1.0)
    ecdf = counts / n
    inside = np.all((ecdf >= bands.lower) & (ecdf <= bands.upper), axis=1)
    return inside, pvalue


def sbc_uniformity_test(ranks, num_draws: int, num_bins: int | None = None):
    """Chi-square goodness-of-fit of binned ranks to the discrete uniform, per parameter.

    Args:
      ranks: ``[N, d]`` ranks in ``0..S``.
      num_draws: ``S``.
      num_bins: number of bins (default ``min(S + 1, max(5, N // 10), 50)``), each holding a
        contiguous block of rank values; expected counts account for unequal block sizes.
    Returns:
      ``(chi2 [d], pvalue [d])`` NumPy arrays.
    """
    ranks = np.asarray(ranks)
    if ranks.ndim == 1:
        ranks = ranks[:, None]
    n, d = ranks.shape
    num_ranks = num_draws + 1
    if num_bins is None:
        num_bins = min(num_ranks, max(5, n // 10), 50)
    b = (ranks.astype(np.int64) * num_bins) // num_ranks  # bin of each rank value
    sizes = np.bincount(np.arange(num_ranks) * num_bins // num_ranks, minlength=num_bins)
    expected = n * sizes / num_ranks
    obs = np.stack([np.bincount(b[:, j], minlength=num_bins) for j in range(d)], axis=0)
    chi2 = ((obs - expected[None]) ** 2 / expected[None]).sum(axis=1)
    pvalue = sps.chi2.sf(chi2, num_bins - 1)
    return chi2, pvalue


class CoverageCurve(NamedTuple):
    """Empirical coverage of central credible intervals.

    Attributes:
      levels: ``[L]`` nominal levels in (0, 1).
      coverage: ``[L, d]`` fraction of simulations whose truth lies in the central interval.
      lower, upper: ``[L]`` pointwise ``1 - alpha`` binomial (Clopper–Pearson) band for the
        coverage of a calibrated posterior with ``N`` simulations.
    """

    levels: Array
    coverage: Array
    lower: np.ndarray
    upper: np.ndarray


def coverage_curve(ranks, num_draws: int, levels=None, alpha: float = 0.05) -> CoverageCurve:
    """Coverage curve from SBC ranks.

    The truth lies in the central ``q`` interval of the ``S`` draws iff its fractional rank
    ``u = (r + 0.5) / (S + 1)`` satisfies ``|u - 1/2| <= q / 2``.

    Args:
      ranks: ``[N, d]`` ranks in ``0..S``.
      num_draws: ``S``.
      levels: ``[L]`` nominal levels (default 0.02, 0.04, ..., 0.98).
      alpha: level of the pointwise band.
    Returns:
      :class:`CoverageCurve`.
    """
    ranks = jnp.asarray(ranks)
    if ranks.ndim == 1:
        ranks = ranks[:, None]
    n = ranks.shape[0]
    levels = jnp.linspace(0.02, 0.98, 49) if levels is None else jnp.asarray(levels)
    u = (ranks + 0.5) / (num_draws + 1.0)
    inside = jnp.abs(u - 0.5)[None, :, :] <= levels[:, None, None] / 2.0
    cov = inside.mean(axis=1)
    lv = np.asarray(levels, np.float64)
    # band: coverage of a calibrated posterior, count ~ Binomial(N, q)
    lower = sps.binom.ppf(alpha / 2, n, lv) / n
    upper = sps.binom.ppf(1 - alpha / 2, n, lv) / n
    return CoverageCurve(levels, cov, lower, upper)
