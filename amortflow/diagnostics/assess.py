"""Assessing estimators on a simulated test set: what papers on neural Bayes estimators report.

For ``K`` test datasets with known parameters ``theta_true [K, d]`` and any estimator's output --
point estimates ``[K, d]``, posterior draws ``[K, S, d]``, marginal quantiles ``[K, Q, d]`` or
an interval ``(lower, upper)`` -- :func:`assess` returns an :class:`Assessment` with, per
parameter (cf. NeuralEstimators.jl ``assess`` and the table of Zammit-Mangion et al. 2024,
arXiv 2404.12484: RMSPE, MIS90, CRPS, COV90):

==================  ===========================================================================
bias                mean(estimate - truth)
mse, rmse           Bayes risk under squared loss, and its square root (RMSPE)
mae                 Bayes risk under absolute loss
interval_score      mean interval score (Gneiting & Raftery 2007), ``MIS_alpha`` with
                    ``alpha = 1 - nominal``: ``(u - l) + 2/alpha (l - x) 1{x < l}
                    + 2/alpha (x - u) 1{x > u}`` (central intervals; the general form with
                    ``1/alpha_l``, ``1/alpha_u`` is used for non-central ones)
coverage            fraction of datasets whose truth lies in ``[l, u]`` (nominal ``u_lvl - l_lvl``)
interval_width      mean ``u - l``
crps                mean continuous ranked probability score of the marginal predictive
==================  ===========================================================================

and the per-dataset arrays behind them (``estimate``, ``lower``, ``upper``, ``crps_per_dataset``,
``interval_score_per_dataset``, ``covered``), to look at recovery dataset by dataset.
:func:`interval_coverage_curve` gives the coverage of central intervals at many nominal levels
(a :class:`~amortflow.diagnostics.sbc.CoverageCurve`, drawn by :func:`amortflow.plots.plot_coverage`).

The array functions (:func:`crps_from_draws`, :func:`crps_from_quantiles`,
:func:`interval_score`, :func:`sorted_quantiles`) are pure JAX and vmappable;
:func:`assess` validates its inputs on the host (shapes, NaN) and then calls them.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from amortflow.diagnostics.sbc import CoverageCurve

Array = jax.Array

__all__ = ["Assessment", "assess", "combine", "review_table", "interval_coverage_curve", "crps_from_draws",
           "crps_from_quantiles", "interval_score", "sorted_quantiles", "ASSESSMENT_COLUMNS"]

ASSESSMENT_COLUMNS = ("estimator", "parameter", "num_datasets", "bias", "mse", "rmse", "mae", "crps",
                      "interval_score", "coverage", "nominal_coverage", "interval_width")


# ----------------------------------------------------------------------------- array functions


def sorted_quantiles(xs_sorted: Array, probs) -> Array:
    """Quantiles of draws already sorted along axis ``-2``, linear interpolation (NumPy's
    default ``"linear"`` method): ``[..., S, d]``, ``probs [P]`` -> ``[..., P, d]``."""
    s = xs_sorted.shape[-2]
    pos = jnp.asarray(probs, xs_sorted.dtype) * (s - 1)
    lo = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, s - 1)
    hi = jnp.minimum(lo + 1, s - 1)
    w = (pos - lo)[:, None]
    a = jnp.take(xs_sorted, lo, axis=-2)
    b = jnp.take(xs_sorted, hi, axis=-2)
    return a + w * (b - a)


def crps_from_draws(draws: Array, x: Array, *, draws_sorted: bool = False) -> Array:
    """CRPS of the empirical distribution of draws at the truth, per dataset and parameter.

    Energy form ``CRPS = E|X - x| - 0.5 E|X - X'|`` with ``X, X'`` independent draws. The second
    term uses the order statistics, ``E|X - X'| = (2 / S^2) sum_i (2 i - S - 1) x_(i)``
    (``i = 1..S``), so the cost is ``O(S log S)`` instead of ``O(S^2)``. (This is the plug-in
    CRPS of the empirical law; its expectation exceeds the true CRPS by ``E|X - X'| / (2 S)``.)

    Args:
      draws: ``[..., S, d]``.
      x: ``[..., d]`` true values.
    Returns:
      ``[..., d]``; lower is better, in the units of the parameter.
    """
    xs = draws if draws_sorted else jnp.sort(draws, axis=-2)
    xs = xs - x[..., None, :]  # both terms are shift invariant: centring at x saves float32 digits
    s = xs.shape[-2]
    term1 = jnp.mean(jnp.abs(xs), axis=-2)
    wts = (2.0 * jnp.arange(1, s + 1) - s - 1.0).astype(xs.dtype)
    e_xx = 2.0 / s**2 * jnp.einsum("...sd,s->...d", xs, wts)
    return term1 - 0.5 * e_xx


def crps_from_quantiles(quantiles: Array, levels, x: Array) -> Array:
    """CRPS approximated from marginal quantiles: ``CRPS = 2 int_0^1 rho_tau(x - q_tau) d tau``
    with the pinball loss ``rho_tau(u) = u (tau - 1{u < 0})``, the integral replaced by the
    mean over the ``Q`` given levels. Exact as ``Q -> inf`` for equally spaced midpoint levels
    ``tau_j = (j - 1/2) / Q``; with levels that leave out the tails (e.g. 0.05..0.95 only) the
    tails' contribution is missing and the value is too small.

    Args:
      quantiles: ``[..., Q, d]`` at ``levels [Q]`` (increasing, in (0, 1)).
      x: ``[..., d]``.
    Returns:
      ``[..., d]``.
    """
    tau = jnp.asarray(levels, quantiles.dtype)[:, None]
    u = x[..., None, :] - quantiles
    pinball = u * (tau - (u < 0).astype(quantiles.dtype))
    return 2.0 * jnp.mean(pinball, axis=-2)


def interval_score(lower: Array, upper: Array, x: Array, alpha_lower: float, alpha_upper: float | None = None) -> Array:
    """Interval score of ``[lower, upper]`` at ``x`` (Gneiting & Raftery 2007, eq. 43).

    For a central ``1 - alpha`` interval (``alpha_lower = alpha_upper = alpha / 2``):
    ``(u - l) + 2/alpha (l - x) 1{x < l} + 2/alpha (x - u) 1{x > u}``. A non-central interval
    between the ``alpha_lower`` and ``1 - alpha_upper`` quantiles gets the penalties
    ``1/alpha_lower`` and ``1/alpha_upper`` (the sum of the two quantiles' pinball losses, times 1/alpha).

    Args:
      lower, upper, x: broadcastable arrays.
      alpha_lower: probability below the lower bound (0.05 for a central 90% interval).
      alpha_upper: probability above the upper bound (default ``alpha_lower``).
    Returns:
      the score, shaped like the broadcast inputs; lower is better.
    """
    alpha_upper = alpha_lower if alpha_upper is None else alpha_upper
    return ((upper - lower) + (1.0 / alpha_lower) * jnp.maximum(lower - x, 0.0)
            + (1.0 / alpha_upper) * jnp.maximum(x - upper, 0.0))


@jax.jit
def _draw_summaries(draws, x, probs):
    """Sort once; mean, median, interval bounds and CRPS from the sorted draws."""
    xs = jnp.sort(draws, axis=-2)
    q = sorted_quantiles(xs, probs)  # [K, 3, d]: lower, median, upper
    return xs.mean(axis=-2), q[:, 1], q[:, 0], q[:, 2], crps_from_draws(xs, x, draws_sorted=True)


# ----------------------------------------------------------------------------- the assessment


@dataclasses.dataclass(frozen=True, eq=False)
class Assessment:
    """Accuracy and calibration of one estimator on ``K`` test datasets with ``d`` parameters.

    Per-parameter summaries are ``[d]`` NumPy arrays (NaN where the estimator's output does not
    give them: no point estimate, no interval, neither draws nor quantiles for the CRPS).

    Attributes:
      estimator_name, param_names: labels of the table's rows.
      theta_true: ``[K, d]``.
      estimate: ``[K, d]`` point estimates (given, or the posterior mean / median of the draws,
        or the median quantile), or ``None``.
      lower, upper: ``[K, d]`` interval bounds, or ``None``.
      nominal_coverage: ``upper_level - lower_level`` of the interval (NaN without one).
      interval_levels: ``(lower_level, upper_level)`` probabilities of the bounds.
      bias, mse, rmse, mae, crps, interval_score, coverage, interval_width: ``[d]``.
      crps_per_dataset, interval_score_per_dataset: ``[K, d]`` or ``None``.
      covered: ``[K, d]`` booleans (truth inside the interval) or ``None``.
    """

    estimator_name: str
    param_names: tuple[str, ...]
    theta_true: np.ndarray
    estimate: np.ndarray | None
    lower: np.ndarray | None
    upper: np.ndarray | None
    nominal_coverage: float
    interval_levels: tuple[float, float]
    bias: np.ndarray
    mse: np.ndarray
    rmse: np.ndarray
    mae: np.ndarray
    crps: np.ndarray
    interval_score: np.ndarray
    coverage: np.ndarray
    interval_width: np.ndarray
    crps_per_dataset: np.ndarray | None = None
    interval_score_per_dataset: np.ndarray | None = None
    covered: np.ndarray | None = None

    @property
    def num_datasets(self) -> int:
        return int(self.theta_true.shape[0])

    @property
    def error(self) -> np.ndarray | None:
        """``[K, d]`` estimate - truth (``None`` without point estimates)."""
        return None if self.estimate is None else self.estimate - self.theta_true

    @property
    def per_dataset(self) -> dict:
        """``[K, d]`` arrays per dataset (``None`` where the output lacks them): ``estimate``,
        ``error``, ``squared_error``, ``absolute_error``, ``lower``, ``upper``, ``width``,
        ``covered``, ``interval_score``, ``crps`` -- e.g. medians over datasets instead of means."""
        err = self.error
        return {"estimate": self.estimate, "error": err,
                "squared_error": None if err is None else err**2,
                "absolute_error": None if err is None else np.abs(err),
                "lower": self.lower, "upper": self.upper,
                "width": None if self.lower is None else self.upper - self.lower,
                "covered": self.covered, "interval_score": self.interval_score_per_dataset,
                "crps": self.crps_per_dataset}

    def table(self):
        """pandas DataFrame, one row per parameter, columns :data:`ASSESSMENT_COLUMNS`; tables
        of several estimators stack with :func:`combine` (or ``pd.concat``)."""
        import pandas as pd

        d = len(self.param_names)
        return pd.DataFrame({
            "estimator": [self.estimator_name] * d, "parameter": list(self.param_names),
            "num_datasets": [self.num_datasets] * d,
            **{c: np.asarray(getattr(self, c), float) for c in ASSESSMENT_COLUMNS[3:] if c != "nominal_coverage"},
            "nominal_coverage": [self.nominal_coverage] * d,
        })[list(ASSESSMENT_COLUMNS)]


def combine(assessments: Sequence[Assessment]):
    """One long DataFrame (rows: estimator x parameter) of several assessments, e.g. of
    different estimators on the same test set; ``.pivot(index="parameter",
    columns="estimator", values="rmse")`` gives one metric side by side."""
    import pandas as pd

    if isinstance(assessments, Assessment):
        assessments = [assessments]
    if not assessments:
        raise ValueError("combine: no assessments given; pass a list of Assessment objects from assess()")
    return pd.concat([a.table() for a in assessments], ignore_index=True)


def review_table(assessments: Sequence[Assessment]):
    """The layout of the review's comparison table (Zammit-Mangion et al. 2024): index
    (estimator, parameter), columns ``RMSPE``, ``MIS{pct}``, ``CRPS``, ``COV{pct}`` with
    ``pct`` the interval's nominal coverage in percent (e.g. MIS90, COV90)."""
    df = combine(assessments)
    pct = {round(100 * v) for v in df["nominal_coverage"].dropna()}
    tag = str(pct.pop()) if len(pct) == 1 else ""  # mixed levels: plain MIS / COV
    out = df.set_index(["estimator", "parameter"])[["rmse", "interval_score", "crps", "coverage"]]
    return out.rename(columns={"rmse": "RMSPE", "interval_score": f"MIS{tag}", "crps": "CRPS",
                               "coverage": f"COV{tag}"})


def _array(name: str, value, ndim: int, expected: str, k: int | None = None, d: int | None = None):
    """float64 host array of rank ``ndim`` with the expected leading/trailing sizes, finite."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"assess: {name} must be {expected}, got an array of shape {arr.shape}")
    if k is not None and arr.shape[0] != k:
        raise ValueError(f"assess: {name} must be {expected} with K = {k} datasets (theta_true's rows), "
                         f"got shape {arr.shape}")
    if d is not None and arr.shape[-1] != d:
        raise ValueError(f"assess: {name} must be {expected} with d = {d} parameters (theta_true's "
                         f"columns), got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = np.argwhere(bad)[0]
        raise ValueError(f"assess: {name} has {int(bad.sum())} non-finite (NaN or inf) entries, the first at "
                         f"index {tuple(int(i) for i in first)}; drop those datasets (all inputs "
                         f"row by row) or impute them before assessing")
    return arr


def _interp_quantiles(q: np.ndarray, levels: np.ndarray, p: float, name: str) -> np.ndarray:
    """``[K, Q, d]`` quantiles at ``levels`` -> ``[K, d]`` at probability ``p`` (linear)."""
    if not levels[0] - 1e-9 <= p <= levels[-1] + 1e-9:
        raise ValueError(f"assess: {name} level {p} lies outside the quantile levels "
                         f"[{levels[0]}, {levels[-1]}]; pass quantiles that bracket it or an interval")
    j = int(np.clip(np.searchsorted(levels, p, side="right") - 1, 0, len(levels) - 2)) if len(levels) > 1 else 0
    if len(levels) == 1:
        return q[:, 0]
    w = float(np.clip((p - levels[j]) / (levels[j + 1] - levels[j]), 0.0, 1.0))
    return q[:, j] + w * (q[:, j + 1] - q[:, j])


def assess(theta_true, *, estimate=None, draws=None, quantiles=None, quantile_levels=None,
           interval=None, levels: tuple[float, float] = (0.05, 0.95), level: float | None = None,
           point: str = "mean", param_names: Sequence[str] | None = None,
           estimator_name: str = "estimator") -> Assessment:
    """Assess an estimator on ``K`` simulated test datasets with known parameters.

    Give any of the estimator's outputs; each metric comes from the first source that has it:

    - point estimate: ``estimate``, else the posterior ``point`` (``"mean"`` or ``"median"``) of
      ``draws``, else the 0.5 quantile (interpolated) of ``quantiles``;
    - interval: ``interval``, else the ``levels`` quantiles of ``draws``, else of
      ``quantiles`` (interpolated between the given levels);
    - CRPS: ``draws`` (exact for their empirical law, :func:`crps_from_draws`), else
      ``quantiles`` (pinball-loss approximation, :func:`crps_from_quantiles`).

    Args:
      theta_true: ``[K, d]`` (or ``[K]`` for one parameter) true values.
      estimate: ``[K, d]`` point estimates.
      draws: ``[K, S, d]`` posterior draws, ``S >= 2``.
      quantiles: ``[K, Q, d]`` marginal quantiles at ``quantile_levels [Q]`` (increasing, in (0, 1)).
      interval: ``(lower [K, d], upper [K, d])`` with ``lower <= upper``.
      levels: probabilities ``(lo, hi)`` of the interval's bounds; nominal coverage
        ``hi - lo``; the interval score uses ``alpha_lower = lo``, ``alpha_upper = 1 - hi``.
      level: shorthand for a central interval of this nominal coverage, ``levels =
        ((1 - level) / 2, (1 + level) / 2)`` (e.g. ``level=0.9`` with a given 90% ``interval``).
      point: ``"mean"`` or ``"median"`` of the draws.
      param_names: ``d`` names (default ``theta_0 ...``).
      estimator_name: label of this estimator in tables and figures.
    Returns:
      :class:`Assessment`.
    Raises:
      ValueError: an input of the wrong shape (the message names the expected one), non-finite
        values, ``lower > upper``, or no output given at all.
    """
    theta = np.asarray(theta_true, np.float64)
    one_param = theta.ndim == 1
    if one_param:  # [K] -> [K, 1], and then every other input may drop its last axis too
        theta = theta[:, None]

    def lift(a, ndim):  # the 1-parameter shorthand: missing trailing d axis
        a = np.asarray(a, np.float64)
        return a[..., None] if one_param and a.ndim == ndim - 1 else a

    theta = _array("theta_true", theta, 2, "[K, d] (or [K] for one parameter)")
    k, d = theta.shape
    if k == 0:
        raise ValueError("assess: theta_true has no datasets (K = 0)")
    if all(v is None for v in (estimate, draws, quantiles, interval)):
        raise ValueError("assess: nothing to assess; pass estimate=[K, d], draws=[K, S, d], "
                         "quantiles=[K, Q, d] (with quantile_levels) and/or interval=(lower, upper)")
    if point not in ("mean", "median"):
        raise ValueError(f"assess: point must be 'mean' or 'median', got {point!r}")
    if level is not None:
        if not 0.0 < float(level) < 1.0:
            raise ValueError(f"assess: level (nominal coverage of a central interval) must lie in (0, 1), got {level}")
        central = ((1.0 - float(level)) / 2, (1.0 + float(level)) / 2)
        if tuple(levels) != (0.05, 0.95) and not np.allclose(levels, central):
            raise ValueError(f"assess: level={level} and levels={tuple(levels)} disagree; give one of them")
        levels = central
    if len(levels) != 2:
        raise ValueError(f"assess: levels must be the pair (lo, hi) of the interval's probabilities, got {levels}")
    lo_lvl, hi_lvl = (float(v) for v in levels)
    if not 0.0 < lo_lvl < hi_lvl < 1.0:
        raise ValueError(f"assess: levels must be (lo, hi) with 0 < lo < hi < 1, got {tuple(levels)}")
    names = tuple(param_names) if param_names is not None else tuple(f"theta_{i}" for i in range(d))
    if len(names) != d:
        raise ValueError(f"assess: {len(names)} param_names for d = {d} parameters")

    est = None if estimate is None else _array("estimate", lift(estimate, 2), 2, "[K, d]", k, d)
    lower = upper = crps_k = None
    if interval is not None:
        if len(interval) != 2:
            raise ValueError("assess: interval must be a pair (lower [K, d], upper [K, d])")
        lower = _array("interval lower", lift(interval[0], 2), 2, "[K, d]", k, d)
        upper = _array("interval upper", lift(interval[1], 2), 2, "[K, d]", k, d)
    if draws is not None:
        dr = _array("draws", lift(draws, 3), 3, "[K, S, d]", k, d)
        if dr.shape[1] < 2:
            raise ValueError(f"assess: draws must be [K, S, d] with S >= 2 draws per dataset, got {dr.shape}")
        mean, median, q_lo, q_hi, crps_k = (np.asarray(v, np.float64) for v in _draw_summaries(
            jnp.asarray(dr), jnp.asarray(theta), jnp.asarray([lo_lvl, 0.5, hi_lvl])))
        est = est if est is not None else (mean if point == "mean" else median)
        if lower is None:
            lower, upper = q_lo, q_hi
    if quantiles is not None:
        if quantile_levels is None:
            raise ValueError("assess: quantiles [K, Q, d] need quantile_levels [Q]")
        lv = np.asarray(quantile_levels, np.float64).ravel()
        q = _array("quantiles", lift(quantiles, 3), 3, f"[K, Q, d] with Q = {lv.size} (quantile_levels)", k, d)
        if q.shape[1] != lv.size or not np.all((lv > 0) & (lv < 1)) or np.any(np.diff(lv) <= 0):
            raise ValueError(f"assess: quantile_levels must be {q.shape[1]} increasing probabilities in (0, 1) "
                             f"(one per quantiles[:, j]), got {lv.tolist()}")
        q = np.sort(q, axis=1)  # crossing quantiles (a common artefact of quantile networks) are rearranged
        if est is None:
            est = _interp_quantiles(q, lv, 0.5, "median")
        if lower is None:
            lower = _interp_quantiles(q, lv, lo_lvl, "interval lower")
            upper = _interp_quantiles(q, lv, hi_lvl, "interval upper")
        if crps_k is None:
            crps_k = np.asarray(crps_from_quantiles(jnp.asarray(q), jnp.asarray(lv), jnp.asarray(theta)), np.float64)
    if lower is not None and np.any(lower > upper):
        n_bad = int(np.sum(lower > upper))
        raise ValueError(f"assess: interval lower > upper in {n_bad} entries; pass (lower, upper) in that order")

    nan = np.full(d, np.nan)
    if est is not None:
        err = est - theta
        bias, mse, mae = err.mean(0), (err**2).mean(0), np.abs(err).mean(0)
    else:
        bias = mse = mae = nan
    is_k = covered = None
    if lower is not None:
        is_k = np.asarray(interval_score(lower, upper, theta, lo_lvl, 1.0 - hi_lvl))
        covered = (theta >= lower) & (theta <= upper)
    return Assessment(
        estimator_name=str(estimator_name), param_names=names, theta_true=theta, estimate=est,
        lower=lower, upper=upper, nominal_coverage=hi_lvl - lo_lvl if lower is not None else math.nan,
        interval_levels=(lo_lvl, hi_lvl), bias=bias, mse=mse, rmse=np.sqrt(mse), mae=mae,
        crps=crps_k.mean(0) if crps_k is not None else nan,
        interval_score=is_k.mean(0) if is_k is not None else nan,
        coverage=covered.mean(0) if covered is not None else nan,
        interval_width=(upper - lower).mean(0) if lower is not None else nan,
        crps_per_dataset=crps_k, interval_score_per_dataset=is_k, covered=covered,
    )


@jax.jit
def _coverage_from_sorted(xs, x, probs_lo, probs_hi):
    lo = sorted_quantiles(xs, probs_lo)  # [K, L, d]
    hi = sorted_quantiles(xs, probs_hi)
    inside = (x[:, None, :] >= lo) & (x[:, None, :] <= hi)
    return inside.mean(axis=0)  # [L, d]


def interval_coverage_curve(theta_true, draws, levels=None, alpha: float = 0.05) -> CoverageCurve:
    """Empirical coverage of the central ``l`` intervals of posterior draws, at each nominal ``l``.

    Unlike :func:`amortflow.diagnostics.coverage_curve` (from SBC ranks), this takes the draws
    themselves, as :func:`assess` does; the interval is between the ``(1 - l)/2`` and
    ``(1 + l)/2`` empirical quantiles (linear interpolation).

    Args:
      theta_true: ``[K, d]`` (or ``[K]``).
      draws: ``[K, S, d]`` (or ``[K, S]``).
      levels: ``[L]`` nominal levels in (0, 1) (default 0.02, 0.04, ..., 0.98).
      alpha: level of the pointwise binomial band (coverage of a calibrated posterior,
        ``K x coverage ~ Binomial(K, l)``).
    Returns:
      :class:`~amortflow.diagnostics.sbc.CoverageCurve` (``coverage [L, d]``; plot it with
      :func:`amortflow.plots.plot_coverage` or several with
      :func:`amortflow.plots.plot_coverage_curves`).
    """
    from scipy import stats as sps

    theta = np.asarray(theta_true, np.float64)
    dr = np.asarray(draws, np.float64)
    if theta.ndim == 1 and dr.ndim == 2:
        theta, dr = theta[:, None], dr[..., None]
    theta = _array("theta_true", theta, 2, "[K, d]")
    dr = _array("draws", dr, 3, "[K, S, d]", theta.shape[0], theta.shape[1])
    lv = np.linspace(0.02, 0.98, 49) if levels is None else np.asarray(levels, np.float64).ravel()
    if not np.all((lv > 0) & (lv < 1)):
        raise ValueError(f"interval_coverage_curve: levels must lie in (0, 1), got {lv.tolist()}")
    xs = jnp.sort(jnp.asarray(dr, jnp.float32), axis=1)
    cov = _coverage_from_sorted(xs, jnp.asarray(theta, jnp.float32), jnp.asarray((1 - lv) / 2),
                                jnp.asarray((1 + lv) / 2))
    n = theta.shape[0]
    return CoverageCurve(jnp.asarray(lv), cov, sps.binom.ppf(alpha / 2, n, lv) / n,
                         sps.binom.ppf(1 - alpha / 2, n, lv) / n)
