"""Choosing the temperature ``beta`` of a power posterior from the data.

Two published rules, both per dataset and batched over ``K`` datasets of iid rows
(``model.obs_kind == "set"``):

- :func:`calibrate_beta` -- generalized posterior calibration (Syring & Martin 2019,
  *Biometrika* 106(2)): the ``beta`` at which the bootstrap coverage of the ``level`` credible
  region reaches ``level``. With a beta-conditioned estimator every one of the ``K x B x G``
  (dataset, bootstrap resample, temperature) posteriors is a forward pass, not a fit.
- :func:`information_beta` -- information matching (Holmes & Walker 2017; Lyddon, Holmes &
  Walker 2019, *Biometrika* 106(2)): ``beta = tr(J I^-1 J^T) / tr(J)`` from the Hessian ``J``
  and the score covariance ``I`` of the log-likelihood at the MLE (``beta = 1`` when the model
  is well specified, ``I = J``).

:func:`compare_beta_selection` tabulates the two side by side.

Shapes: ``K`` datasets, ``n`` rows per dataset, ``B`` bootstrap resamples, ``G`` temperatures,
``S`` draws, ``d`` parameters.
"""
from __future__ import annotations

import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from amortflow._compile import DEFAULT_CACHE
from amortflow.diagnostics.psis import psis, psis_khat_threshold
from amortflow.errors import ConfigError
from amortflow.estimators.tempered import check_beta_range
from amortflow.gbi.sweep import pair_keys
from amortflow.models.observation import Observation

__all__ = ["BetaCalibration", "calibrate_beta", "InformationBeta", "information_beta", "crossing",
           "compare_beta_selection", "bootstrap_indices", "default_beta_grid"]

_DRAWS_PER_CALL = 1 << 21  # draws per compiled chunk of the grid (memory bound: ~8 MB per float32 array and d)


# --------------------------------------------------------------------------- shared checks
def _require_iid_rows(model, owner: str):
    if getattr(model, "obs_kind", None) != "set":
        raise ConfigError(
            f"{owner}: needs datasets of exchangeable iid rows (model.obs_kind == 'set'), but model "
            f"{getattr(model, 'name', '?')!r} has obs_kind={getattr(model, 'obs_kind', None)!r}; the bootstrap "
            "and the per-observation scores resample / split a dataset along its first axis")
    if getattr(model, "uses_design", False):
        raise ConfigError(f"{owner}: model {model.name!r} takes per-dataset design data, which a row "
                          "bootstrap / per-row score cannot split; not supported")
    if model.obs_shape[0] < 2:
        raise ConfigError(f"{owner}: datasets need at least 2 rows, model {model.name!r} has obs_shape "
                          f"{model.obs_shape}")


def _datasets(model, obs, owner: str) -> np.ndarray:
    """``obs`` (array or :class:`Observation`, its ``beta`` ignored) -> checked ``[K, n, ...]``."""
    if isinstance(obs, Observation):
        if obs.design is not None:
            raise ConfigError(f"{owner}: design data is not supported (rows are resampled)")
        obs = obs.y
    arr = np.asarray(obs)
    if arr.ndim == len(model.obs_shape):
        arr = arr[None]
    return np.asarray(model.check_observations(arr), np.float32)


def _positive_int(owner, name, v, lo=1):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        raise ConfigError(f"{owner}: {name} must be a whole number >= {lo}, got {v!r}")
    return int(v)


# --------------------------------------------------------------------------- information matching
class InformationBeta(NamedTuple):
    """Output of :func:`information_beta` (numpy arrays).

    Attributes:
      beta: ``[K]`` ``tr(J I^-1 J^T) / tr(J)``; NaN where not ``ok``.
      theta_mle: ``[K, d]`` the maximum-likelihood estimate (unconstrained).
      J: ``[K, d, d]`` ``-(1/n)`` Hessian of ``log p(y | theta)`` at the MLE.
      I: ``[K, d, d]`` ``(1/n) sum_i s_i s_i^T`` of the per-observation scores at the MLE.
      grad_norm: ``[K]`` ``|grad (1/n) log p(y | theta_mle)|``.
      ok: ``[K]`` the optimiser converged (``grad_norm <= tol``) and ``J`` and ``I`` are
        positive definite.
    """

    beta: np.ndarray
    theta_mle: np.ndarray
    J: np.ndarray
    I: np.ndarray
    grad_norm: np.ndarray
    ok: np.ndarray


def _information_fn(model, num_steps: int):
    def build():
        n = model.obs_shape[0]

        y_shape = tuple(model.obs_shape)

        def mean_ll(theta, y):
            return model.log_likelihood(theta, y) / n

        def row_ll(theta, yi):  # exact per-row log-likelihood for iid rows, static shape
            return model.log_likelihood(theta, jnp.broadcast_to(yi[None], y_shape)) / n
        grad = jax.grad(mean_ll)
        hess = jax.hessian(mean_ll)

        def one(theta0, y):
            d = theta0.shape[0]
            eye = jnp.eye(d, dtype=theta0.dtype)

            def safe(v):
                return jnp.where(jnp.isfinite(v), v, -jnp.inf)

            def step(carry, _):
                th, lam, f = carry
                g, h = grad(th, y), hess(th, y)
                neg = -h
                scale = jnp.maximum(jnp.abs(jnp.diag(neg)), 1e-6)
                a = neg + lam * jnp.diag(scale) + 1e-9 * eye
                delta = jnp.linalg.solve(a, g)
                delta = jnp.where(jnp.all(jnp.isfinite(delta)), delta, lam ** -1 * g)
                th_new = th + delta
                f_new = safe(mean_ll(th_new, y))
                better = f_new >= f
                th = jnp.where(better, th_new, th)
                f = jnp.where(better, f_new, f)
                lam = jnp.clip(jnp.where(better, lam * 0.3, lam * 10.0), 1e-8, 1e8)
                return (th, lam, f), None

            f0 = safe(mean_ll(theta0, y))
            (th, _, _), _ = jax.lax.scan(step, (theta0, jnp.asarray(1e-2, theta0.dtype), f0), None, length=num_steps)
            g = grad(th, y)
            j = -hess(th, y)
            j = 0.5 * (j + j.T)
            scores = jax.vmap(lambda yi: jax.grad(row_ll)(th, yi))(y)  # [n, d]
            info = scores.T @ scores / n  # row_ll is log p(y_i | theta): s_i per observation
            beta = jnp.trace(j @ jnp.linalg.solve(info, j.T)) / jnp.trace(j)
            return beta, th, j, info, jnp.linalg.norm(g)

        return jax.jit(jax.vmap(one))

    return DEFAULT_CACHE.get(("gbi.information_beta", model, int(num_steps)), build)[0]


def information_beta(model, obs, theta_init=None, *, num_steps: int = 30, tol: float = 1e-3) -> InformationBeta:
    """Information-matching temperature ``beta = tr(J I^-1 J^T) / tr(J)`` per dataset.

    ``J = -(1/n) d^2 log p(y | theta) / d theta^2`` and ``I = (1/n) sum_i s_i s_i^T``, with
    ``s_i = d log p(y_i | theta) / d theta`` the per-observation scores, both at the MLE (Holmes
    & Walker 2017, eq. for the "loss-likelihood" calibration; Lyddon, Holmes & Walker 2019). A
    well-specified model has ``I = J`` and ``beta = 1``; heavier-tailed data than the model
    assumes inflate ``I`` and lower ``beta``. The per-observation log-likelihood of iid rows is
    ``log_likelihood(theta, y_i repeated n times) / n`` (exact, keeps the static shape).

    The trace form is not invariant to reparametrization for ``d > 1`` (it is exact, and
    parametrization-free, for ``d = 1``: ``beta = J / I``); we use the model's unconstrained
    parametrization, the one every amortflow density is written in. ``J`` and ``I`` come back
    so a caller can form another summary (e.g. the full sandwich ``J^-1 I J^-1``).

    Args:
      model: a :class:`~amortflow.models.Model` with ``obs_kind == "set"`` (iid rows), no design.
      obs: datasets ``[K, n, ...]`` (or one dataset, or an Observation; its ``beta`` is ignored).
      theta_init: ``[K, d]`` or ``[d]`` starting points in the unconstrained space, e.g. the
        amortized posterior mean at ``beta = 1`` (default: the mean of 512 prior draws with the
        fixed key ``PRNGKey(0)``).
      num_steps: damped-Newton (Levenberg-Marquardt) steps on ``(1/n) log p(y | theta)``.
      tol: gradient norm below which the MLE counts as converged.
    Returns:
      :class:`InformationBeta` (numpy arrays, leading axis ``K``).
    Raises:
      ConfigError: a model whose rows are not iid (``obs_kind != "set"``) or that takes design
        data, a ``theta_init`` of the wrong shape, bad ``num_steps``.
    """
    owner = "information_beta"
    _require_iid_rows(model, owner)
    num_steps = _positive_int(owner, "num_steps", num_steps)
    ys = _datasets(model, obs, owner)
    k, d = ys.shape[0], model.dim
    if theta_init is None:
        th0 = np.broadcast_to(np.asarray(model.sample_prior(jax.random.PRNGKey(0), 512)).mean(0), (k, d))
    else:
        th0 = np.asarray(theta_init, np.float32)
        if th0.shape == (d,):
            th0 = np.broadcast_to(th0, (k, d))
        if th0.shape != (k, d) or not np.isfinite(th0).all():
            raise ConfigError(f"{owner}: theta_init must be finite with shape [{k}, {d}] or [{d}], got {th0.shape}")
    fn = _information_fn(model, num_steps)
    beta, th, j, info, gnorm = (np.asarray(a) for a in fn(jnp.asarray(th0, jnp.float32), jnp.asarray(ys)))

    def posdef(m):
        ev = np.linalg.eigvalsh(np.where(np.isfinite(m), m, 0.0))
        return np.isfinite(m).all((1, 2)) & (ev.min(-1) > 0)

    ok = np.isfinite(gnorm) & (gnorm <= tol) & posdef(j) & posdef(info) & np.isfinite(beta)
    return InformationBeta(np.where(ok, beta, np.nan), th, j, info, gnorm, ok)


# --------------------------------------------------------------------------- posterior calibration
class BetaCalibration(NamedTuple):
    """Output of :func:`calibrate_beta` (numpy arrays).

    Attributes:
      beta_hat: ``[K]`` the temperature where the coverage curve crosses ``level`` (log-linear
        interpolation on the monotone rearrangement of the curve); clipped to the grid's end
        where there is no crossing (see ``below_range`` / ``above_range``).
      betas: ``[G]`` the grid (increasing).
      coverage: ``[K, G]`` bootstrap coverage ``c(beta)``: share of the ``B`` resamples whose
        ``level`` region contains ``theta_hat(beta)``.
      theta_hat: ``[K, G, d]`` posterior means on the observed data (PSIS-weighted where
        ``correct`` and k-hat acceptable).
      khat: ``[K, B, G]`` PSIS k-hat of ``q(. | y*_b, beta)`` against the exact tempered
        density ``log p(theta) + beta log p(y*_b | theta)``.
      khat_data: ``[K, G]`` the same on the observed data.
      khat_threshold: ``psis_khat_threshold(S)``.
      high_khat: ``[K, G]`` share of the resamples with ``khat > khat_threshold`` (their region
        test used the raw ``q``: the network is out of its training distribution there).
      below_range: ``[K]`` coverage below ``level`` at every ``beta``: ``beta_hat = betas[0]``
        (the true crossing is at a smaller ``beta``, outside the grid).
      above_range: ``[K]`` coverage at least ``level`` at every ``beta``: ``beta_hat = betas[-1]``.
      level: credible level; num_bootstrap: ``B``; num_draws: ``S``; corrected: whether PSIS
        weights and the exact density were used where k-hat was acceptable.
    """

    beta_hat: np.ndarray
    betas: np.ndarray
    coverage: np.ndarray
    theta_hat: np.ndarray
    khat: np.ndarray
    khat_data: np.ndarray
    khat_threshold: float
    high_khat: np.ndarray
    below_range: np.ndarray
    above_range: np.ndarray
    level: float
    num_bootstrap: int
    num_draws: int
    corrected: bool

    @property
    def high_khat_fraction(self) -> float:
        """Share of all ``K x B x G`` bootstrap posteriors with ``khat > khat_threshold``."""
        return float(np.mean(~(self.khat <= self.khat_threshold)))

    def high_khat_fraction_at(self, beta) -> np.ndarray:
        """``[K]`` share of the resamples with a high k-hat at the grid point nearest ``beta``
        (scalar or ``[K]``, e.g. ``beta_hat``), on the log scale."""
        b = np.broadcast_to(np.asarray(beta, np.float64), self.beta_hat.shape)
        g = np.abs(np.log(self.betas)[None, :] - np.log(b)[:, None]).argmin(1)
        return self.high_khat[np.arange(len(g)), g]

    def table(self):
        """pandas DataFrame, one row per dataset: ``beta_hat``, the flags, and the share of
        high-k-hat resamples at ``beta_hat`` and over the grid."""
        import pandas as pd

        return pd.DataFrame({
            "beta_hat": self.beta_hat, "below_range": self.below_range, "above_range": self.above_range,
            "high_khat_at_beta_hat": self.high_khat_fraction_at(self.beta_hat),
            "high_khat_over_grid": self.high_khat.mean(1),
        })


def default_beta_grid(beta_range=None, num: int = 25) -> np.ndarray:
    """``geomspace(0.05, 2, num)`` restricted to ``beta_range = (low, high)`` (the grid's ends
    clipped to the range, then spaced geometrically again: no repeated values)."""
    lo, hi = 0.05, 2.0
    if beta_range is not None:
        lo, hi = max(lo, float(beta_range[0])), min(hi, float(beta_range[1]))
    if not lo < hi:
        lo, hi = float(beta_range[0]), float(beta_range[1])
    return np.geomspace(lo, hi, int(num))


def bootstrap_indices(key, num_datasets: int, num_bootstrap: int, num_rows: int) -> jax.Array:
    """``[K, B, n]`` row indices drawn with replacement (independently per dataset and resample)."""
    return jax.random.randint(key, (num_datasets, num_bootstrap, num_rows), 0, num_rows)


def _region_fn(model, threshold: float, level: float, correct: bool):
    """Compiled ``(draws [N, S, d], log_q [N, S], theta_hat [N, d], lq_hat [N], ys [N, ...],
    beta [N]) -> (inside [N], khat [N])``."""

    def build():
        def one(draws, log_q, th_hat, lq_hat, y, beta):
            lp = jax.vmap(lambda t: model.log_density(t, y, beta))(draws)
            lp_hat = model.log_density(th_hat, y, beta)
            res = psis(jnp.where(jnp.isfinite(log_q), lp - log_q, -jnp.inf))
            mass_q = jnp.mean(log_q > lq_hat)
            mass_p = jnp.sum(jnp.exp(res.log_weights) * (lp > lp_hat))
            use = correct & (res.khat <= threshold)
            mass = jnp.where(use, mass_p, mass_q)
            return mass <= level, res.khat

        return jax.jit(jax.vmap(one))

    return DEFAULT_CACHE.get(("gbi.calibrate_region", model, float(threshold), float(level), bool(correct)), build)[0]


def _mean_fn(model, threshold: float, correct: bool):
    """Compiled ``(draws [N, S, d], log_q [N, S], ys [N, ...], beta [N]) -> (mean [N, d], khat [N])``."""

    def build():
        def one(draws, log_q, y, beta):
            lp = jax.vmap(lambda t: model.log_density(t, y, beta))(draws)
            res = psis(jnp.where(jnp.isfinite(log_q), lp - log_q, -jnp.inf))
            w = jnp.exp(res.log_weights)
            use = correct & (res.khat <= threshold)
            return jnp.where(use, w @ draws, draws.mean(0)), res.khat

        return jax.jit(jax.vmap(one))

    return DEFAULT_CACHE.get(("gbi.calibrate_mean", model, float(threshold), bool(correct)), build)[0]


def crossing(betas, coverage, level):
    """``(beta_hat [K], below_range [K], above_range [K])``: where ``coverage [K, G]`` crosses
    ``level`` on the increasing grid ``betas [G]``.

    Coverage decreases in ``beta``; the noisy bootstrap curve is first made monotone by
    rearrangement (sorting it in decreasing order, Chernozhukov, Fernandez-Val & Galichon 2009),
    whose crossing index is the number of grid points with ``coverage >= level``; ``beta_hat``
    interpolates linearly in ``log beta`` between the two grid points around it.
    """
    lb = np.log(np.asarray(betas, np.float64))
    c = -np.sort(-np.asarray(coverage, np.float64), axis=1)  # decreasing along the grid
    g = lb.size
    m = (c >= level).sum(1)  # grid points at or above level
    below, above = m == 0, m == g
    i = np.clip(m - 1, 0, g - 2)
    rows = np.arange(c.shape[0])
    c0, c1 = c[rows, i], c[rows, i + 1]
    t = np.clip(np.where(c0 > c1, (c0 - level) / np.where(c0 > c1, c0 - c1, 1.0), 0.5), 0.0, 1.0)
    log_hat = lb[i] + t * (lb[i + 1] - lb[i])
    log_hat = np.where(below, lb[0], np.where(above, lb[-1], log_hat))
    return np.exp(log_hat), below, above


def calibrate_beta(key, estimator, model, obs, *, betas=None, num_bootstrap: int = 100, level: float = 0.9,
                   num_draws: int = 200, correct: bool = True) -> BetaCalibration:
    """Generalized posterior calibration (Syring & Martin 2019) with a beta-conditioned NPE.

    For each dataset ``y`` (``n`` iid rows) and temperature ``beta`` of the grid:
    ``theta_hat(beta)`` is the mean of ``q(. | y, beta)``; ``B`` bootstrap resamples ``y*_b``
    (rows drawn with replacement) each give a posterior ``q(. | y*_b, beta)``, and the coverage
    ``c(beta)`` is the share of ``b`` whose ``level`` credible region contains ``theta_hat(beta)``.
    The region is a highest-density region: ``theta_hat`` is inside when the (weighted) mass of
    the draws whose density exceeds the density at ``theta_hat`` is ``<= level`` (for a
    unimodal 1-d posterior, the central interval). ``beta_hat`` is where ``c`` crosses
    ``level`` (:func:`crossing`; ``c`` grows as ``beta`` falls). All ``K x B x G`` posteriors are
    forward passes of ``estimator`` in a few compiled calls (the grid is chunked to bound memory).

    Bootstrap resamples repeat rows, which the prior predictive the network was trained on
    never does, so they may be out of its training distribution. Every bootstrap posterior is
    therefore checked: PSIS k-hat of ``q``'s draws against the exact tempered density
    ``log p(theta) + beta log p(y*_b | theta)``. With ``correct=True`` the region test (and
    ``theta_hat``) uses the PSIS-weighted draws and that exact density where k-hat is at most
    ``psis_khat_threshold(S)``, and falls back to the raw ``q`` (``log q`` as the density) where
    it is higher; ``BetaCalibration.high_khat`` reports how often.

    Args:
      key: PRNG key (bootstrap indices and draws).
      estimator: a beta-conditioned :class:`~amortflow.PosteriorEstimator`
        (``fit_posterior(..., tempering=af.Tempering())``).
      model: the model it was trained for; ``obs_kind == "set"`` (iid rows), no design data.
      obs: datasets ``[K, n, ...]`` (or one dataset, or an Observation; its ``beta`` is ignored).
      betas: ``[G]`` temperatures (default :func:`default_beta_grid` on ``estimator.beta_range``:
        25 values from 0.05 to 2, restricted to the range). Values outside the estimator's
        range raise :class:`~amortflow.errors.BetaRangeError` (unless the estimator allows
        extrapolation).
      num_bootstrap: ``B``.
      level: credible level in ``(0, 1)``.
      num_draws: ``S`` draws per posterior (>= 20; the k-hat threshold depends on it).
      correct: PSIS-correct toward the exact tempered density where k-hat allows.
    Returns:
      :class:`BetaCalibration`.
    Raises:
      ConfigError: a model whose rows are not iid (``obs_kind != "set"``) or with design data,
        an estimator not conditioned on ``beta``, a bad grid, ``level`` or count.
      BetaRangeError: a grid value outside the estimator's training range.
    """
    owner = "calibrate_beta"
    _require_iid_rows(model, owner)
    if getattr(getattr(estimator, "spec", None), "num_conditions", 0) != 1:
        raise ConfigError(f"{owner}: the estimator is not conditioned on beta (train it with "
                          "fit_posterior(..., tempering=af.Tempering()))")
    if tuple(estimator.param_names) != tuple(model.param_names):
        raise ConfigError(f"{owner}: the estimator's parameters {estimator.param_names} are not the model's "
                          f"{model.param_names}")
    num_bootstrap = _positive_int(owner, "num_bootstrap", num_bootstrap, lo=2)
    num_draws = _positive_int(owner, "num_draws", num_draws, lo=20)
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0.0 < level < 1.0:
        raise ConfigError(f"{owner}: level must be a number in (0, 1), got {level!r}")
    if not isinstance(correct, bool):
        raise ConfigError(f"{owner}: correct must be True or False, got {correct!r}")
    grid = default_beta_grid(estimator.beta_range) if betas is None else np.asarray(betas, np.float64).ravel()
    if grid.size < 2 or not (np.isfinite(grid) & (grid > 0)).all() or not (np.diff(grid) > 0).all():
        raise ConfigError(f"{owner}: betas must be >= 2 finite, positive, strictly increasing values, got {grid}")
    check_beta_range(grid, estimator.beta_range, owner, getattr(estimator, "allow_beta_extrapolation", False))
    ys = _datasets(model, obs, owner)
    k, n = ys.shape[:2]
    nb, ng, d = num_bootstrap, grid.size, model.dim
    threshold = psis_khat_threshold(num_draws)
    k_boot, k_data, k_star = jax.random.split(key, 3)

    # observed data: theta_hat(beta) for every (k, g)
    y_dev = jnp.asarray(ys)
    beta_kg = np.tile(grid, k).astype(np.float32)                  # [K*G], dataset-major
    g_ids = np.tile(np.arange(ng), k)
    y_kg = jnp.repeat(y_dev, ng, axis=0)
    draws, lq = _draws(estimator, k_data, y_kg, beta_kg, g_ids, np.repeat(np.arange(k), ng), num_draws)
    theta_hat, khat_data = _mean_fn(model, threshold, correct)(draws, lq, y_kg, jnp.asarray(beta_kg))
    theta_hat = theta_hat.reshape(k, ng, d)
    del draws, lq

    # bootstrap resamples: [K, B, n, ...], flattened to K*B
    idx = bootstrap_indices(k_boot, k, nb, n)
    y_star = jax.vmap(lambda y, ii: y[ii])(y_dev, idx).reshape((k * nb,) + ys.shape[1:])
    chunk = max(1, min(ng, _DRAWS_PER_CALL // max(1, k * nb * num_draws)))
    chunk = -(-ng // -(-ng // chunk))  # as many calls as needed, each as small as possible
    region = _region_fn(model, threshold, float(level), correct)
    inside = np.zeros((k, nb, ng), bool)
    khat = np.zeros((k, nb, ng), np.float32)
    ids = np.arange(k * nb)
    for g0 in range(0, ng, chunk):
        gs = np.minimum(np.arange(g0, g0 + chunk), ng - 1)  # the last chunk repeats the last beta:
        gc = gs.size                                          # every call has one shape (one compile)
        # pairs ordered (dataset*resample, grid point)
        y_p = jnp.repeat(y_star, gc, axis=0)
        b_p = np.tile(grid[gs], k * nb).astype(np.float32)
        g_p = np.tile(gs, k * nb)
        i_p = np.repeat(ids, gc)
        th_p = jnp.repeat(theta_hat[:, None, gs, :], nb, axis=1).reshape(-1, d)  # [K*B*gc, d]
        dr, lq = _draws(estimator, k_star, y_p, b_p, g_p, i_p, num_draws)
        lq_hat = estimator.log_prob(th_p, Observation(y_p, jnp.asarray(b_p)))
        ins, kh = region(dr, lq, th_p, lq_hat, y_p, jnp.asarray(b_p))
        inside[:, :, gs] = np.asarray(ins).reshape(k, nb, gc)  # repeated betas: the same value lands twice
        khat[:, :, gs] = np.asarray(kh).reshape(k, nb, gc)
        del dr, lq

    coverage = inside.mean(1)
    beta_hat, below, above = crossing(grid, coverage, level)
    return BetaCalibration(
        beta_hat=beta_hat, betas=grid, coverage=coverage, theta_hat=np.asarray(theta_hat),
        khat=khat, khat_data=np.asarray(khat_data).reshape(k, ng), khat_threshold=float(threshold),
        high_khat=(~(khat <= threshold)).mean(1), below_range=below, above_range=above, level=float(level),
        num_bootstrap=nb, num_draws=num_draws, corrected=correct)


def _draws(estimator, key, ys, betas, grid_ids, pair_ids, num_draws):
    """Draws of ``q(. | ys[i], betas[i])`` for ``N`` pairs -> ``(draws [N, S, d], log_q [N, S])``;
    pair ``i`` uses ``fold_in(fold_in(key, grid_ids[i]), pair_ids[i])``, so its draws do not
    depend on how the grid is chunked."""
    obs = Observation(ys, jnp.asarray(betas, jnp.float32))
    y_in, extra, _ = estimator._inputs(obs, None)
    return estimator._draw(pair_keys(key, grid_ids, pair_ids), y_in, extra, int(num_draws))


# --------------------------------------------------------------------------- comparison
def compare_beta_selection(calibration: BetaCalibration, information: InformationBeta, reference=None):
    """pandas DataFrame, one row per dataset: ``beta_calibrated`` (:func:`calibrate_beta`),
    its flags and high-k-hat share at ``beta_hat``, ``beta_information`` (:func:`information_beta`)
    and its ``ok`` flag, the ratio ``beta_calibrated / beta_information``, and the ratios to
    ``reference`` (a known calibrated value, scalar or ``[K]``) when given."""
    import pandas as pd

    if calibration.beta_hat.shape != information.beta.shape:
        raise ConfigError(f"compare_beta_selection: {calibration.beta_hat.shape[0]} calibrated datasets vs "
                          f"{information.beta.shape[0]} information-matched ones")
    df = pd.DataFrame({
        "beta_calibrated": calibration.beta_hat, "below_range": calibration.below_range,
        "above_range": calibration.above_range,
        "high_khat_at_beta_hat": calibration.high_khat_fraction_at(calibration.beta_hat),
        "beta_information": information.beta, "information_ok": information.ok,
    })
    df["ratio"] = df["beta_calibrated"] / df["beta_information"]
    if reference is not None:
        ref = np.broadcast_to(np.asarray(reference, np.float64), calibration.beta_hat.shape)
        df["calibrated_vs_reference"] = df["beta_calibrated"] / ref
        df["information_vs_reference"] = df["beta_information"] / ref
    return df
