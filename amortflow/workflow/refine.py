"""Refinement between PSIS and MCMC: adaptive importance sampling, batched over datasets.

For a dataset whose amortized draws fail the PSIS gate, the weighted draws still locate the
posterior. :func:`refine_stage` fits a multivariate Student-t to them (weighted mean and
covariance, blended with the proposal's own spread so that a few dominant weights cannot
collapse it), draws a fresh proposal set from it, reweights against ``log p(theta, y; beta)``
and repeats for ``rounds`` rounds (a few steps of adaptive importance sampling / population
Monte Carlo). With the estimator's density at hand the final set is a defensive mixture --
``2 S`` draws from the last Student-t and ``2 S`` from the amortized proposal (its ``S`` draws
plus ``S`` fresh ones), weighted by the balance heuristic (:func:`mixture_weights`) -- so a
Student-t that fits badly cannot make the answer worse than the amortized draws, and a dataset
PSIS refused only for want of draws gets four times as many. The final weights face the PSIS
gate (k-hat, ESS, Monte Carlo error); datasets that pass end ``"refined"``, the others go on to
MCMC starting from the refined draws.

Every round is a compiled function of arrays for all datasets at once (``lax.map``); the cost is
``rounds * S + 4 S`` log-density evaluations per dataset, ``S`` amortized draws and ``2 S``
amortized log densities, and no gradients.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from amortflow import diagnostics as dg
from amortflow._backend import datasets_per_step, keys_for
from amortflow.models.base import Model
from amortflow.models.observation import Observation, take, to_device
from amortflow.workflow.pipeline import Stage, StageInput, StageResult, _pad_width


def fit_student_t(draws, log_w, *, blend: float = 0.1, inflate: float = 1.2):
    """Location and Cholesky scale of a Student-t fitted to weighted draws.

    Args:
      draws: ``[S, d]``; rows with non-finite values or weights are ignored (with no finite
        weight at all, the finite draws count equally).
      log_w: ``[S]`` log weights (any normalisation).
      blend: weight of the unweighted covariance of the draws (a defensive floor: importance
        weights dominated by a few draws would give a degenerate covariance).
      inflate: scale factor on the covariance (proposals should be wider than the target).
    Returns:
      ``(mean [d], chol [d, d])``.
    """
    finite = jnp.all(jnp.isfinite(draws), -1)
    ok = finite & jnp.isfinite(log_w)
    x = jnp.where(finite[:, None], draws, 0.0)
    u = finite / jnp.maximum(jnp.sum(finite), 1)
    lw = jnp.where(ok, log_w, -jnp.inf)
    w = jnp.exp(lw - jnp.max(lw))
    # no finite weight at all (the data have zero likelihood under every draw): keep the draws'
    # own spread rather than collapse onto a point
    w = jnp.where(jnp.any(ok), w / jnp.sum(jnp.where(ok, w, 0.0)), u)
    w = jnp.where(ok | ~jnp.any(ok), w, 0.0)
    mean = w @ x
    cw = ((x - mean) * w[:, None]).T @ (x - mean)
    mu_u = u @ x
    cu = ((x - mu_u) * u[:, None]).T @ (x - mu_u)
    cov = inflate * ((1 - blend) * cw + blend * cu)
    d = draws.shape[-1]
    jitter = 1e-6 * (jnp.trace(cov) / d + 1e-12)
    return mean, jnp.linalg.cholesky(cov + jitter * jnp.eye(d))


def student_t_logpdf(theta, mean, chol, df: float):
    """Log density ``[n]`` of the multivariate t(``df``, ``mean``, ``chol chol^T``) at ``theta [n, d]``."""
    d = mean.shape[-1]
    sol = jax.scipy.linalg.solve_triangular(chol, (theta - mean).T, lower=True)
    maha = jnp.sum(sol**2, axis=0)
    log_det = jnp.sum(jnp.log(jnp.diag(chol)))
    return (jax.scipy.special.gammaln((df + d) / 2) - jax.scipy.special.gammaln(df / 2)
            - 0.5 * d * jnp.log(df * jnp.pi) - log_det - 0.5 * (df + d) * jnp.log1p(maha / df))


def student_t_sample(key, mean, chol, df: float, num: int):
    """``(theta [num, d], log_q [num])`` from the multivariate t(``df``, ``mean``, ``chol chol^T``)."""
    d = mean.shape[-1]
    kz, kg = jax.random.split(key)
    z = jax.random.normal(kz, (num, d))
    g = jax.random.gamma(kg, df / 2.0, (num,)) / (df / 2.0)
    theta = mean + (z / jnp.sqrt(g)[:, None]) @ chol.T
    return theta, student_t_logpdf(theta, mean, chol, df)


@partial(jax.jit, static_argnames=("model", "rounds", "num", "df", "batch_size"))
def adaptive_is(keys, model: Model, obs: Observation, draws, log_w, rounds: int, num: int,
                df: float, batch_size: int):
    """``rounds`` of Student-t adaptive importance sampling for datasets ``obs [K]``.

    ``draws [K, S, d]`` with ``log_w [K, S]`` seed the first fit; ``batch_size`` datasets are
    evaluated together (``lax.map``: cache-sized on CPU). Returns ``(draws [K, num, d],
    log_w [K, num], mean [K, d], chol [K, d, d])``: the last round's draws and raw (unsmoothed)
    log weights, and the Student-t fitted to them.
    """

    def one(args):
        key, o, x, lw = args
        for r in range(rounds):
            mean, chol = fit_student_t(x, lw)
            x, log_q = student_t_sample(jax.random.fold_in(key, r), mean, chol, df, num)
            log_p = jax.vmap(model.raw_log_density_obs, in_axes=(0, None))(x, o)
            # -inf (outside the support) is a zero weight; NaN / +inf stay, for the gate to refuse
            lw = jnp.where(log_p == -jnp.inf, -jnp.inf, log_p - log_q)
        mean, chol = fit_student_t(x, lw)
        return x, lw, mean, chol

    return jax.lax.map(one, (keys, obs, draws, log_w), batch_size=batch_size)


@partial(jax.jit, static_argnames=("model", "df", "batch_size"))
def mixture_weights(model: Model, obs: Observation, x_q, log_q_xq, x_t, log_q_xt, mean, chol,
                    df: float, batch_size: int):
    """Deterministic-mixture (balance heuristic) log weights of draws from the amortized
    proposal ``x_q [K, n_q, d]`` and the fitted Student-t ``x_t [K, n_t, d]``: every draw is
    weighted against ``(n_q q + n_t t) / (n_q + n_t)``, so the set is never worse than the
    amortized draws alone and as good as the Student-t where it fits (Veach & Guibas 1995;
    Owen & Zhou 2000). ``log_q_*`` are the amortized log densities at each set.
    Returns ``(draws [K, n_q + n_t, d], raw log weights [K, n_q + n_t])``."""
    n_q, n_t = x_q.shape[1], x_t.shape[1]
    frac_q = jnp.log(n_q / (n_q + n_t))
    frac_t = jnp.log(n_t / (n_q + n_t))

    def one(args):
        o, xq, lqq, xt, lqt, m, c = args
        x = jnp.concatenate([xq, xt], 0)
        log_q = jnp.concatenate([lqq, lqt], 0)
        log_t = student_t_logpdf(x, m, c, df)
        log_mix = jnp.logaddexp(frac_q + log_q, frac_t + log_t)
        log_p = jax.vmap(model.raw_log_density_obs, in_axes=(0, None))(x, o)
        return x, jnp.where(log_p == -jnp.inf, -jnp.inf, log_p - log_mix)

    return jax.lax.map(one, (obs, x_q, log_q_xq, x_t, log_q_xt, mean, chol), batch_size=batch_size)


def refine_stage(model: Model, *, num_draws: int, rounds: int = 3, df: float = 5.0,
                 khat_threshold: float | None = None, min_ess: float | None = None,
                 max_error: float | None = None, resample: str = "systematic", route: str = "refined",
                 batch_size: int | None = None, estimator=None, final_factor: int = 2) -> Stage:
    """Adaptive importance sampling for the datasets PSIS handed on (see the module docstring).

    Reads ``carry["draws"]`` and ``carry["log_weights"]`` (uniform weights if absent); hands on
    the refined draws and weights in their place, so MCMC starts from them. Gate: the PSIS gate
    of :func:`~amortflow.workflow.stages.psis_gate` with the same thresholds.

    With ``estimator`` (one with a density) the final set is a defensive mixture: ``final_factor
    * num_draws`` draws from the fitted Student-t and as many from the amortized proposal (its
    ``num_draws`` draws in ``carry["draws"]`` / ``carry["log_q"]`` plus fresh ones), weighted by
    :func:`mixture_weights`. Where the Student-t fits badly (funnels, skew) the amortized half
    still carries the answer with twice PSIS's draws -- the Monte Carlo error gate often fails
    PSIS only for want of draws.
    """
    from amortflow.workflow.stages import is_diagnostics, psis_gate, psis_resample

    thr = khat_threshold if khat_threshold is not None else dg.psis_khat_threshold(num_draws)
    mixture = estimator is not None and getattr(estimator, "has_log_prob", False)
    n_final = int(final_factor) * num_draws

    def run(key, inp: StageInput) -> StageResult:
        n = inp.index.size
        draws = jnp.asarray(inp.carry["draws"])
        lw0 = inp.carry.get("log_weights")
        lw0 = jnp.zeros(draws.shape[:2]) if lw0 is None else jnp.asarray(lw0)
        ids = jnp.asarray(inp.index, jnp.uint32)
        keys = keys_for(key, ids)
        bs = batch_size or datasets_per_step(n, num_draws)
        obs = to_device(inp.obs)
        x, lw, mean, chol = adaptive_is(keys, model, obs, draws, lw0, rounds, num_draws, df, bs)
        evals = np.full(n, rounds * num_draws, np.int64)
        d = is_diagnostics(x, lw)
        gate = dict(khat_threshold=thr, min_ess=min_ess or 0.0, max_error=max_error,
                    param_names=model.param_names, label="refined IS")

        def judge(d):
            return psis_gate(d["khat"], d["ess"], gate["khat_threshold"], gate["min_ess"], error=d["error"],
                             max_error=gate["max_error"], worst=d["worst"], num_bad=d["num_bad"],
                             param_names=gate["param_names"], label=gate["label"])

        routes, reasons = judge(d)
        x = np.asarray(x)
        # the defensive mixture only where the Student-t alone fails the gate (and the estimator
        # has a density): it costs 2 * n_final amortized log densities per dataset
        redo = np.nonzero(routes != "psis")[0] if mixture and "log_q" in inp.carry else np.zeros(0, int)
        if redo.size:
            sub = jnp.asarray(redo)
            xt = jax.vmap(lambda k, m, c: student_t_sample(jax.random.fold_in(k, 10_000), m, c, df, n_final)[0])(
                keys[sub], mean[sub], chol[sub])
            sub_obs = take(inp.obs, redo)
            extra = n_final - draws.shape[1]
            parts_x, parts_lq = [draws[sub]], [jnp.asarray(inp.carry["log_q"])[sub]]
            if extra > 0:
                xq, lq = estimator.sample_and_log_prob(jax.random.fold_in(key, 2), sub_obs, extra,
                                                       batch_size=batch_size, dataset_ids=inp.index[redo])
                parts_x.append(jnp.asarray(np.asarray(xq)))
                parts_lq.append(jnp.asarray(np.asarray(lq)))
            lq_t = jnp.asarray(np.asarray(estimator.log_prob(np.asarray(xt), sub_obs)))
            xm, lwm = mixture_weights(model, to_device(sub_obs), jnp.concatenate(parts_x, 1),
                                      jnp.concatenate(parts_lq, 1), xt, lq_t, mean[sub], chol[sub], df,
                                      max(1, bs // (2 * int(final_factor))))
            dm = is_diagnostics(xm, lwm)
            width = xm.shape[1]
            x = _pad_width(x, width, np.nan)
            d = {k: (_pad_width(v, width, -np.inf) if k == "log_weights" else np.array(v)) for k, v in d.items()}
            x[redo] = np.asarray(xm)
            for k, v in dm.items():
                d[k][redo] = v
            evals[redo] += 2 * n_final
            routes, reasons = judge(d)
        khat, ess = d["khat"], d["ess"]
        routes[routes == "psis"] = route
        out = psis_resample(jax.random.fold_in(key, 1), jnp.asarray(x), jnp.asarray(d["log_weights"]),
                            num_draws, resample, ids)
        return StageResult(
            routes, reasons, draws=np.asarray(out),
            diagnostics={"refine_khat": khat, "refine_ess": ess, "refine_error": d["error"]},
            cost={"num_log_density_evals": evals},
            carry={"draws": np.asarray(out), "log_weights": np.zeros((n, num_draws), np.float32)},
            weighted=(np.asarray(x), d["log_weights"]),
            info={"note": f"{rounds} rounds of Student-t adaptive importance sampling"
                          + (f"; a defensive mixture of {2 * n_final} draws for the {redo.size} the "
                             "Student-t alone did not settle" if redo.size else "")})

    return Stage("refine", run, salt=5, columns={"refine_khat": np.float64, "refine_ess": np.float64,
                                                 "refine_error": np.float64})


__all__ = ["refine_stage", "adaptive_is", "mixture_weights", "fit_student_t", "student_t_sample",
           "student_t_logpdf"]
