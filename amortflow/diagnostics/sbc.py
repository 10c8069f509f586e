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
- :func:`workflow_sbc`: SBC of the whole routed workflow (:func:`amortflow.run_workflow` on many
  prior-predictive datasets at once): ranks of the final draws whatever route each dataset took,
  beside the estimator's own draws, with route counts and ranks by route (:class:`WorkflowSBC`).

Ranks ``r`` take values ``0..S`` (``S`` draws, ``L = S + 1`` possible values). Under calibration
they are discrete uniform; ``#{r < i}`` is then Binomial(N, i / L) exactly.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats as sps

from amortflow.models.observation import observe

Array = jax.Array

__all__ = [
    "sbc_ranks", "run_sbc", "SBCResult", "SBCBands", "sbc_ecdf_bands", "sbc_ecdf_diff",
    "CoverageCurve", "coverage_curve", "sbc_uniformity_test", "sbc_ecdf_test", "WorkflowSBC", "workflow_sbc",
    "sbc_of_result",
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


# ----------------------------------------------------------------------------- the routed workflow
class WorkflowSBC(NamedTuple):
    """Output of :func:`workflow_sbc`: SBC of the whole routed workflow beside the amortized draws.

    Ranks are in the model's unconstrained space (where ``theta`` and the workflow's draws live);
    elementwise monotone bijections leave them unchanged, and any fixed function of ``theta`` is
    a valid SBC test quantity either way.

    Attributes:
      theta: ``[N, d]`` true unconstrained parameters of the prior-predictive datasets.
      ranks: ``[N, d]`` int32 ranks of ``theta`` among the workflow's final draws, ``0..num_draws``;
        ``-1`` in the rows of datasets without draws (failed route / non-finite draws).
      amortized_ranks: ``[N, d]`` int32 ranks among ``num_amortized_draws`` draws of the
        estimator alone (no gate, no correction).
      route: ``[N]`` route of each dataset (``res.route``).
      resolved: ``[N]`` bool, the datasets with finite final draws (ranks ``>= 0``).
      num_draws: ``S`` final draws per dataset (``config.num_draws``).
      num_amortized_draws: draws per dataset behind ``amortized_ranks``.
      param_names: the ``d`` unconstrained parameter names.
      result: the :class:`~amortflow.workflow.WorkflowResult` of the run (routes, diagnostics,
        stage times); its draws are the final draws ranked here.
    """

    theta: np.ndarray
    ranks: np.ndarray
    amortized_ranks: np.ndarray
    route: np.ndarray
    resolved: np.ndarray
    num_draws: int
    num_amortized_draws: int
    param_names: tuple
    result: object

    @property
    def num_datasets(self) -> int:
        return int(self.theta.shape[0])

    @property
    def num_failed(self) -> int:
        """Datasets without final draws (route ``"failed"`` or non-finite draws)."""
        return int((~self.resolved).sum())

    def route_counts(self) -> dict:
        """Datasets per route, in workflow order (``failed`` included)."""
        return self.result.route_counts() if hasattr(self.result, "route_counts") else {
            str(r): int((self.route == r).sum()) for r in np.unique(self.route)}

    def route_ranks(self) -> dict:
        """route -> ``[n_r, d]`` final ranks of that route's datasets (resolved routes only)."""
        return {r: self.ranks[(self.route == r) & self.resolved]
                for r in self.route_counts() if np.any((self.route == r) & self.resolved)}

    def tests(self, alpha: float = 0.05, min_route_datasets: int = 10, key=None) -> dict:
        """ECDF simultaneous-band tests (:func:`sbc_ecdf_test`) per parameter.

        Returns a JSON-ready dict: ``final`` (the resolved datasets' final draws), ``amortized``
        (every dataset's amortized draws), ``by_route`` (routes with at least
        ``min_route_datasets`` resolved datasets), each ``{"num_datasets", "inside" {name: bool},
        "pvalue" {name: float}, "max_ecdf_deviation" {name: float} (``max |ECDF(z) - z|``, a
        distance that keeps growing where p-values bottom out), "min_pvalue", "passed"}``; ``passed`` is the family-wise decision
        over the ``d`` parameters (Bonferroni: every p-value ``>= alpha / d``), so a calibrated
        posterior passes with probability ``>= 1 - alpha`` however many parameters it has. Plus
        ``num_failed``, ``route_counts`` and ``alpha``.

        Why dropping failed datasets, or splitting by route, keeps the test valid: a route is a
        function of the data ``y`` and of the workflow's own randomness, both independent of
        ``theta`` given ``y``; conditioning on it leaves ``theta | y`` the posterior, so each
        route's ranks are uniform when that route's draws are exact. The failures are reported
        (``num_failed``) because they are datasets the workflow could not answer.
        """
        d = len(self.param_names)

        def one(ranks, s):
            n = int(ranks.shape[0])
            if n == 0:
                return {"num_datasets": 0, "inside": {}, "pvalue": {}, "max_ecdf_deviation": {},
                    "min_pvalue": None, "passed": None}
            inside, p = sbc_ecdf_test(ranks, s, alpha, key=key)
            p = np.asarray(p, np.float64)
            dev = np.max(np.abs(np.asarray(sbc_ecdf_diff(ranks, s)[1])), axis=0)
            return {"num_datasets": n,
                    "inside": {nm: bool(v) for nm, v in zip(self.param_names, inside)},
                    "pvalue": {nm: float(v) for nm, v in zip(self.param_names, p)},
                    "max_ecdf_deviation": {nm: float(v) for nm, v in zip(self.param_names, dev)},
                    "min_pvalue": float(p.min()), "passed": bool(np.all(p >= alpha / d))}

        by_route = {r: one(rk, self.num_draws) for r, rk in self.route_ranks().items()
                    if rk.shape[0] >= min_route_datasets}
        return {"alpha": float(alpha), "correction": f"Bonferroni over {d} parameters (p >= alpha / d)",
                "final": one(self.ranks[self.resolved], self.num_draws),
                "amortized": one(self.amortized_ranks, self.num_amortized_draws),
                "by_route": by_route, "num_failed": self.num_failed,
                "route_counts": self.route_counts(), "num_datasets": self.num_datasets}

    def summary(self, alpha: float = 0.05, min_route_datasets: int = 10) -> str:
        """The tests as text: one line per draw set, p-values per parameter."""
        t = self.tests(alpha, min_route_datasets)
        lines = [f"workflow SBC: {self.num_datasets} prior-predictive datasets, routes "
                 + ", ".join(f"{r} {c}" for r, c in t["route_counts"].items() if c)
                 + f"; {t['num_failed']} without draws"]

        def line(label, r):
            if not r["num_datasets"]:
                return f"  {label:<22} (no datasets)"
            ps = " ".join(f"{nm}={p:.3f}" for nm, p in r["pvalue"].items())
            return (f"  {label:<22} n={r['num_datasets']:<5} {'PASS' if r['passed'] else 'FAIL'}  "
                    f"min p={r['min_pvalue']:.4f}  [{ps}]")

        lines.append(line(f"amortized ({self.num_amortized_draws} draws)", t["amortized"]))
        lines.append(line(f"final ({self.num_draws} draws)", t["final"]))
        for r, v in t["by_route"].items():
            lines.append(line(f"  route {r}", v))
        return "\n".join(lines)


def _accepted(fn, **kwargs) -> dict:
    """The keywords ``fn`` takes (duck-typed estimators may take fewer than the protocol's)."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def workflow_sbc(key, model, estimator, num_datasets: int | None = None, config=None, *, data=None,
                 num_amortized_draws: int | None = None, progress: bool = False, batch_size: int | None = None,
                 **workflow_kwargs) -> WorkflowSBC:
    """SBC of the whole routed workflow: every route's final draws, beside the amortized draws.

    Draws ``theta ~ p(theta)``, ``y ~ p(y | theta)`` for ``num_datasets`` datasets, runs
    :func:`amortflow.run_workflow` on all of them at once (one batched call: each stage sees
    every dataset it handles together), and ranks ``theta`` among the final draws, whichever
    route (amortized, PSIS, refined, MCMC, NUTS) each dataset took. The same datasets are also
    answered by the estimator alone (``num_amortized_draws`` draws, no gate): its ranks show what
    the workflow had to correct. See :meth:`WorkflowSBC.tests` for the ECDF-band tests.

    The final draws need not be independent (MCMC chains, PSIS resampling repeats draws): ranks
    among correlated draws that follow the posterior are uniform up to a resolution of about
    ``1 / ESS`` in fractional rank, far below what ``N`` datasets can resolve at the ESS the
    workflow's gates ask for; an ESS of a few draws shows up as ranks piling at ``0`` and ``S``.

    Args:
      key: PRNG key.
      model: the :class:`~amortflow.models.Model` (``sample_prior_predictive``; unconstrained
        ``theta``, as the workflow's draws).
      estimator: the estimator handed to :func:`~amortflow.run_workflow`.
      num_datasets: ``N`` prior-predictive datasets (simulated here from ``key``).
      config: :class:`~amortflow.WorkflowConfig` (default ``WorkflowConfig()``).
      data: ``(theta [N, d], ys [N, *obs_shape])`` prior-predictive simulations made elsewhere
        (e.g. ``model.sample_prior_predictive``), instead of ``num_datasets``; only valid if
        ``theta`` was drawn from the prior and ``ys`` from the model given it. For a model with
        per-dataset design data ``(theta, ys, design)`` (e.g. ``model.sample_joint``); simulated
        here, designs come from the model's design sampler.
      num_amortized_draws: draws per dataset for the amortized-only ranks (default
        ``config.num_draws``).
      progress: the workflow's progress messages.
      batch_size: datasets per call of the estimator for the amortized-only draws (memory).
      **workflow_kwargs: passed to :func:`~amortflow.run_workflow` (``out_dir``, ``stages``, ...).
    Returns:
      :class:`WorkflowSBC`.
    """
    from amortflow.workflow.config import WorkflowConfig  # diagnostics sit below the workflow:
    from amortflow.workflow.run import run_workflow  # imported when called

    cfg = config if config is not None else WorkflowConfig()
    k_sim, k_wf, k_am, k_tie = jax.random.split(key, 4)
    design = None
    if data is not None:
        if model.uses_design != (len(data) == 3):
            raise ValueError(f"workflow_sbc: model {model.name!r} " + (
                "takes design data: pass data=(theta, ys, design)" if model.uses_design else
                "takes no design data: pass data=(theta, ys)"))
        theta, ys = np.asarray(data[0]), np.asarray(data[1])
        design = data[2] if len(data) == 3 else None
        if theta.ndim != 2 or theta.shape[1] != model.dim or ys.shape[0] != theta.shape[0]:
            raise ValueError(f"workflow_sbc: data must be (theta [N, {model.dim}], ys [N, ...]) with one "
                             f"dataset per theta, got shapes {theta.shape} and {ys.shape}")
        if num_datasets is not None and int(num_datasets) != theta.shape[0]:
            raise ValueError(f"workflow_sbc: num_datasets={num_datasets} but data holds {theta.shape[0]} datasets")
        n = int(theta.shape[0])
    else:
        if num_datasets is None:
            raise ValueError("workflow_sbc: give num_datasets (or data=(theta, ys))")
        n = int(num_datasets)
        theta = ys = None
    if n < 1:
        raise ValueError(f"workflow_sbc: num_datasets must be >= 1, got {n}")
    if theta is None:
        theta, ys, design = jax.jit(model.sample_joint, static_argnums=1)(k_sim, n)
        theta, ys = np.asarray(theta), np.asarray(ys)
    # the workflow and the estimator see the same observations: y with its design, if any
    obs = ys if design is None else observe(ys, design=jax.tree.map(np.asarray, design))
    res = run_workflow(k_wf, model, estimator, obs, cfg, progress=progress, **workflow_kwargs)
    return _ranked(k_am, k_tie, model, estimator, theta, obs, res, num_amortized_draws, batch_size)


def sbc_of_result(key, model, estimator, theta, obs, result, *, num_amortized_draws: int | None = None,
                  batch_size: int | None = None) -> WorkflowSBC:
    """:class:`WorkflowSBC` of a workflow run made elsewhere (e.g. timed on its own): ranks of
    ``theta [N, d]`` among ``result``'s final draws, beside the estimator's own draws for the
    same observations ``obs`` (``ys [N, ...]`` or a batched Observation with designs). Valid only
    if ``theta`` was drawn from the prior and the data from the model given it."""
    k_am, k_tie = jax.random.split(key)
    return _ranked(k_am, k_tie, model, estimator, theta, obs, result, num_amortized_draws, batch_size)


def _ranked(k_am, k_tie, model, estimator, theta, obs, result, num_amortized_draws, batch_size) -> WorkflowSBC:
    theta = np.asarray(theta)
    n = theta.shape[0]
    draws = np.asarray(result.draws)
    s_am = int(num_amortized_draws or draws.shape[1])
    resolved = (np.asarray(result.route) != "failed") & np.all(np.isfinite(draws), axis=(1, 2))
    ranks = np.asarray(sbc_ranks(theta, np.nan_to_num(draws), jax.random.fold_in(k_tie, 0)))
    ranks = np.where(resolved[:, None], ranks, -1).astype(np.int32)

    am = estimator.sample(k_am, obs, s_am, **_accepted(estimator.sample, batch_size=batch_size,
                                                      dataset_ids=jnp.arange(n)))
    am_ranks = np.asarray(sbc_ranks(theta, am, jax.random.fold_in(k_tie, 1)), np.int32)
    return WorkflowSBC(theta, ranks, am_ranks, np.asarray(result.route), resolved, int(draws.shape[1]), s_am,
                       tuple(model.param_names), result)
