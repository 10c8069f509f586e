"""The built-in stages of the amortized workflow (Li et al., arXiv 2409.04332), as values.

Each factory returns a :class:`~amortflow.workflow.pipeline.Stage`; its gate -- the one place
its routes are decided -- is a small pure function next to it.

- :func:`amortized_stage`: amortized draws + ``log q`` for every open dataset in one compiled
  call, an OOD score on the learned summaries; accepts in-distribution datasets only when asked.
- :func:`psis_stage`: PSIS with the amortized draws as proposal,
  ``log w = log p(theta, y; beta) - log q(theta | y)``; gate on Pareto k-hat (and ESS).
- :func:`~amortflow.workflow.refine.refine_stage` (in ``refine.py``): adaptive importance
  sampling for what PSIS handed on, the same gate.
- :func:`mcmc_stage`: the many-chain MCMC ladder (:func:`amortflow.mcmc.run_ladder`) started
  from the latest weighted draws (refined, or PSIS-weighted amortized); gate on nested R-hat
  per rung.
"""
from __future__ import annotations

import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from amortflow import diagnostics as dg
from amortflow import mcmc
from amortflow._backend import datasets_per_step, keys_for
from amortflow.models.base import Model
from amortflow.models.observation import Observation, to_device
from amortflow.workflow.pipeline import FAILED, OPEN, Stage, StageInput, StageResult, hand_on


# ----------------------------------------------------------------------------- stage 1
def fit_ood(key, model: Model, estimator, method: str, alpha: float, num_simulations: int):
    """OOD detector on learned summaries of fresh prior-predictive simulations: half fit the
    reference, the other (held-out) half set the ``1 - alpha`` threshold.

    Returns ``(state, score_fn)`` with ``score_fn(summaries [K, c]) -> [K]``."""
    _, ys = jax.jit(model.sample_prior_predictive, static_argnums=1)(jax.random.fold_in(key, 1),
                                                                     num_simulations)
    ys = np.asarray(ys)
    ok = np.isfinite(ys.reshape(num_simulations, -1)).all(axis=1)
    s = np.asarray(estimator.summaries(ys[ok]))
    half = s.shape[0] // 2
    if method == "mahalanobis":
        state = dg.fit_mahalanobis(s[:half], s[half:], alpha=alpha)
        return state, partial(dg.mahalanobis_score, state)
    state = dg.fit_mmd_ood(jax.random.fold_in(key, 2), s[:half], s[half:], alpha=alpha)
    return state, partial(dg.mmd_score, state)


def ood_gate(flag: np.ndarray, score: np.ndarray, threshold: float, accept: bool,
             khat: np.ndarray | None = None, num_bad: np.ndarray | None = None):
    """In-distribution datasets end ``"amortized"`` only if ``accept`` -- and never when their
    PSIS k-hat is not below 1: then the importance weights have no finite mean, i.e. the draws
    are far from the posterior (or give the data zero likelihood: data the model cannot have
    produced), whatever the OOD score says; nor when the log density is NaN or +inf at some
    draw (``num_bad [n]``). The rest go on, with the reason."""
    route, reason = hand_on(flag.size)
    supported = np.ones(flag.size, bool) if khat is None else np.isfinite(khat) & (khat < 1.0)
    bad = np.zeros(flag.size, bool) if num_bad is None else np.asarray(num_bad) > 0
    supported &= ~bad
    if accept:
        route[~flag & supported] = "amortized"
    for j in np.nonzero(flag | ~supported)[0]:
        if bad[j]:
            reason[j] = (f"the log density is NaN or +inf at {int(num_bad[j])} amortized draws "
                         "(check the model's likelihood there)")
        elif not supported[j]:
            reason[j] = (f"PSIS k-hat {khat[j]:.2f} >= 1: the amortized draws are far from the "
                         "posterior (or give the data zero likelihood)")
        elif np.isfinite(score[j]):
            reason[j] = f"OOD score {score[j]:.2f} > {threshold:.2f}"
        else:
            reason[j] = "no OOD check"
    return route, reason


def _ood_scores(key, model, estimator, obs, method, alpha, num_simulations):
    """``(score [n], flag [n], threshold)``; ``method=None``: every dataset flagged."""
    n = obs.num_datasets
    if method is None:
        return np.full(n, np.nan), np.ones(n, bool), np.nan
    state, score_fn = fit_ood(key, model, estimator, method, alpha, num_simulations)
    score = np.asarray(score_fn(estimator.summaries(obs)))
    return score, score > float(state.threshold), float(state.threshold)


def amortized_stage(model: Model, estimator, *, num_draws: int, ood_method: str | None = "mahalanobis",
                    ood_alpha: float = 0.05, num_ood_simulations: int = 4000,
                    accept_in_distribution: bool = True, batch_size: int | None = None) -> Stage:
    """Stage 1: ``num_draws`` amortized draws per dataset, their OOD score and -- when the
    estimator has a density -- their PSIS diagnostics (k-hat, ESS), for every open dataset.

    Hands on ``carry["draws"] [n, S, d]``, ``carry["log_q"] [n, S]`` and (with a density)
    ``carry["log_weights"]``, ``carry["khat"]``, ``carry["psis_ess"]``. With
    ``accept_in_distribution`` (the paper's default) datasets the OOD check passes end here --
    unless their k-hat is not finite; otherwise every dataset goes on (it must pass PSIS).
    """
    with_density = getattr(estimator, "has_log_prob", True)

    def run(key, inp: StageInput) -> StageResult:
        t0 = time.perf_counter()
        if with_density:
            draws, log_q = estimator.sample_and_log_prob(jax.random.fold_in(key, 1), inp.obs, num_draws,
                                                         batch_size=batch_size, dataset_ids=inp.index)
        else:
            draws = estimator.sample(jax.random.fold_in(key, 1), inp.obs, num_draws,
                                     batch_size=batch_size, dataset_ids=inp.index)
            log_q = None
        draws = np.asarray(draws)
        t_draw, t0 = time.perf_counter() - t0, time.perf_counter()
        score, flag, threshold = _ood_scores(jax.random.fold_in(key, 2), model, estimator, inp.obs,
                                             ood_method, ood_alpha, num_ood_simulations)
        times = {"amortized_draws": t_draw, "ood_check": time.perf_counter() - t0}
        carry, diags, cost = {"draws": draws}, {"ood_score": score, "ood_flag": flag}, {}
        if log_q is not None:
            t0 = time.perf_counter()
            psis_carry = psis_diagnostics(model, draws, np.asarray(log_q), inp.obs, batch_size)
            carry.update(log_q=np.asarray(log_q), **psis_carry)
            diags.update(khat=psis_carry["khat"], psis_ess=psis_carry["psis_ess"],
                         psis_error=psis_carry["psis_error"])
            cost["num_log_density_evals"] = np.full(inp.index.size, draws.shape[1], np.int64)
            times["psis"] = time.perf_counter() - t0
        route, reason = ood_gate(flag, score, threshold, accept_in_distribution, carry.get("khat"),
                                 carry.get("psis_num_bad"))
        return StageResult(
            route, reason, draws=draws if (route != OPEN).any() else None, diagnostics=diags,
            cost=cost, carry=carry,
            info={"times": times, "thresholds": {"ood": threshold},
                  "note": f"{int(flag.sum())} flagged out-of-distribution"})

    return Stage("amortized", run, columns={"ood_score": np.float64, "ood_flag": np.bool_,
                                            "khat": np.float64, "psis_ess": np.float64,
                                            "psis_error": np.float64,
                                            "num_log_density_evals": np.int64})


# ----------------------------------------------------------------------------- stage 2
@partial(jax.jit, static_argnames=("model", "batch_size"))
def log_joint(model: Model, draws, obs: Observation, batch_size: int):
    """``log p(theta, y; beta)`` for draws ``[K, S, d]`` of datasets ``obs [K]`` -> ``[K, S]``."""
    per = jax.vmap(model.raw_log_density_obs, in_axes=(0, None))  # NaN kept for the gate
    return jax.lax.map(lambda a: per(a[0], a[1]), (draws, obs), batch_size=batch_size)


@partial(jax.jit, static_argnames=("num", "scheme"))
def psis_resample(key, draws, log_w, num: int, scheme: str, dataset_ids):
    """``num`` equally weighted draws per dataset from weighted ``draws [K, S, d]``; dataset
    ``i`` resamples with ``fold_in(key, dataset_ids[i])``."""
    keys = keys_for(key, dataset_ids)
    replace = scheme != "without_replacement"
    method = scheme if replace else "systematic"
    idx = jax.vmap(lambda k, lw: dg.resample(k, lw, num, replace=replace, method=method))(keys, log_w)
    return jnp.take_along_axis(draws, idx[..., None], axis=1)


def psis_gate(khat: np.ndarray, ess: np.ndarray, khat_threshold: float, min_ess: float, *,
              error=None, max_error: float | None = None, worst=None, num_bad=None,
              param_names=None, label: str = "PSIS"):
    """The importance-sampling gate: ``"psis"`` where every criterion holds, else hand on with
    the first failing criterion as reason.

    Criteria: no NaN / +inf log weight (``num_bad [n]``: a density that returns them is broken
    there, and PSIS would silently drop those draws); k-hat finite and at most ``khat_threshold``;
    ESS at least ``min_ess`` (absolute); and, with ``max_error``, the Monte Carlo error of every
    parameter's weighted mean, sd and 5% / 95% quantiles at most ``max_error`` posterior sds
    (``error [n]``, ``worst [n, 2]`` from :func:`amortflow.diagnostics.is_mcse`).
    """
    route, reason = hand_on(khat.size)
    ok = np.isfinite(khat) & (khat <= khat_threshold) & (ess >= min_ess)
    if num_bad is not None:
        ok &= np.asarray(num_bad) == 0
    if max_error is not None and error is not None:
        ok &= np.asarray(error) <= max_error
    route[ok] = "psis"
    functional = ("mean", "sd") + tuple(f"{int(round(100 * p))}% quantile" for p in (0.05, 0.95))
    for j in np.nonzero(~ok)[0]:
        if num_bad is not None and num_bad[j]:
            reason[j] = (f"{label}: the log density is NaN or +inf at {int(num_bad[j])} draws "
                         "(check the model's likelihood there)")
        elif not khat[j] <= khat_threshold:
            reason[j] = f"{label} k-hat {khat[j]:.2f} > {khat_threshold:.2f}"
        elif not ess[j] >= min_ess:
            reason[j] = f"{label} ESS {ess[j]:.0f} < {min_ess:.0f}"
        else:
            pj, fj = (int(worst[j][0]), int(worst[j][1])) if worst is not None else (0, 0)
            name = param_names[pj] if param_names is not None else f"parameter {pj}"
            what = functional[fj] if fj < len(functional) else "quantile"
            reason[j] = (f"{label} Monte Carlo error of the {what} of {name} is {error[j]:.2f} "
                         f"posterior sd > {max_error:.2f} (ESS {ess[j]:.0f})")
    return route, reason


def is_diagnostics(draws, log_weights_raw) -> dict:
    """PSIS of raw log weights ``[n, S]`` for draws ``[n, S, d]``: smoothed ``log_weights``,
    ``khat``, ``ess``, the relative Monte Carlo error ``error`` / ``worst`` of the weighted
    summaries, and ``num_bad`` (NaN or +inf raw log weights)."""
    # through host memory: on arrays left sharded over host devices by an earlier computation,
    # XLA's CPU compiler aborts on PSIS's top_k (seen with 2 forced host devices)
    lw = jnp.asarray(np.asarray(log_weights_raw))
    draws = jnp.asarray(np.asarray(draws))
    num_bad = jnp.sum(jnp.isnan(lw) | (lw == jnp.inf), axis=-1)
    res = dg.psis(lw)
    err = dg.is_mcse(draws, res.log_weights)
    jax.block_until_ready(err)
    return {"log_weights": np.asarray(res.log_weights), "khat": np.asarray(res.khat),
            "ess": np.asarray(res.ess), "error": np.asarray(err.max_error),
            "worst": np.asarray(err.worst), "num_bad": np.asarray(num_bad)}


def psis_diagnostics(model: Model, draws, log_q, obs: Observation, batch_size: int | None = None) -> dict:
    """PSIS of amortized draws ``[n, S, d]`` with proposal log densities ``log_q [n, S]``
    against ``log p(theta, y; beta)``: ``{"log_weights" [n, S], "khat" [n], "psis_ess" [n],
    "psis_error" [n], "psis_worst" [n, 2], "psis_num_bad" [n]}`` (see :func:`is_diagnostics`)."""
    draws = jnp.asarray(draws)
    bs = batch_size or datasets_per_step(draws.shape[0], draws.shape[1])
    log_p = log_joint(model, draws, to_device(obs), bs)
    d = is_diagnostics(draws, log_p - jnp.asarray(log_q))
    return {"log_weights": d["log_weights"], "khat": d["khat"], "psis_ess": d["ess"],
            "psis_error": d["error"], "psis_worst": d["worst"], "psis_num_bad": d["num_bad"]}


def psis_stage(model: Model, *, num_draws: int, khat_threshold: float | None = None,
               min_ess: float | None = None, max_error: float | None = None,
               resample: str = "systematic", batch_size: int | None = None) -> Stage:
    """Stage 2: the PSIS gate (:func:`psis_gate`) on the amortized draws.

    Reads ``carry["log_weights"]`` and the PSIS diagnostics (computed here from
    ``carry["draws"]`` and ``carry["log_q"]`` if an earlier stage did not). Accepted datasets
    get ``num_draws`` draws resampled from the smoothed weights, and keep the weighted draws
    and their normalized log weights (``WorkflowResult.weighted``) for weighted summaries.
    """
    thr = khat_threshold if khat_threshold is not None else dg.psis_khat_threshold(num_draws)

    def run(key, inp: StageInput) -> StageResult:
        c = inp.carry
        new = {} if "khat" in c else psis_diagnostics(model, c["draws"], c["log_q"], inp.obs, batch_size)
        c = {**c, **new}
        resampled = psis_resample(jax.random.fold_in(key, 3), jnp.asarray(c["draws"]),
                                  jnp.asarray(c["log_weights"]), num_draws, resample,
                                  jnp.asarray(inp.index))
        route, reason = psis_gate(c["khat"], c["psis_ess"], thr, min_ess or 0.0, error=c.get("psis_error"),
                                  max_error=max_error, worst=c.get("psis_worst"),
                                  num_bad=c.get("psis_num_bad"), param_names=model.param_names)
        s = c["draws"].shape[1]
        return StageResult(
            route, reason, draws=np.asarray(resampled),
            diagnostics={"khat": c["khat"], "psis_ess": c["psis_ess"], "psis_error": c["psis_error"]},
            cost={"num_log_density_evals": np.full(inp.index.size, s, np.int64)} if new else {},
            carry=new, weighted=(np.asarray(c["draws"]), np.asarray(c["log_weights"])),
            info={"thresholds": {"khat": float(thr), "min_ess": float(min_ess or 0.0),
                                 "max_error": max_error}})

    return Stage("psis", run, columns={"khat": np.float64, "psis_ess": np.float64, "psis_error": np.float64,
                                       "num_log_density_evals": np.int64})


# ----------------------------------------------------------------------------- stages 3-4
def _nan_reduce(fn, a):
    a = np.asarray(a, np.float64)
    out = np.full(a.shape[0], np.nan)
    has = np.isfinite(a).any(axis=1)
    out[has] = fn(a[has], axis=1)
    return out


#: the per-dataset diagnostics an MCMC-ladder stage reports (see :func:`ladder_stage_result`)
MCMC_COLUMNS = {"mcmc_stage": object, "nested_rhat_max": np.float64, "rhat_max": np.float64,
                "ess_bulk_min": np.float64, "ess_tail_min": np.float64, "divergences": np.float64,
                "step_size": np.float64, "num_init_fallback": np.int64, "num_grad_evals": np.int64}


def ladder_stage_result(res) -> StageResult:
    """A :class:`~amortflow.mcmc.LadderResult` as a stage's result: the accepting rung's route
    (``"mcmc"`` | ``"nuts"``) or ``"failed"`` with the ladder's reason, the draws, and the
    :data:`MCMC_COLUMNS` diagnostics (shared by every stage that runs the ladder)."""
    st = res.stats
    return StageResult(
        np.asarray(res.route, dtype=object), np.asarray(res.reason, dtype=object), draws=np.asarray(res.draws),
        diagnostics={
            "mcmc_stage": np.asarray(res.rung, dtype=object),
            "nested_rhat_max": _nan_reduce(np.nanmax, st.nested_rhat),
            "rhat_max": _nan_reduce(np.nanmax, st.rhat),
            "ess_bulk_min": _nan_reduce(np.nanmin, st.ess_bulk),
            "ess_tail_min": _nan_reduce(np.nanmin, st.ess_tail),
            "divergences": np.asarray(st.divergences, np.float64),
            "step_size": np.asarray(st.step_size, np.float64),
            "num_init_fallback": np.asarray(res.num_init_fallback, np.int64)},
        cost={"num_grad_evals": np.asarray(st.num_grad_evals, np.int64)},
        info={"rung_time_s": {k: float(v) for k, v in res.rung_time_s.items()},
              "rung_accepted": {k: int(v) for k, v in res.rung_accepted.items()}})


def mcmc_stage(model: Model, ladder, *, num_output_draws: int, chunk_size: int = 256,
               progress: bool = True) -> Stage:
    """Stages 3-4: the MCMC ladder on the datasets handed on, in resumable chunks.

    Starting points come from ``carry["draws"]`` weighted by ``carry["log_weights"]`` (either may
    be absent: the ladder then screens prior draws). Routes are the accepting rung's
    (``"mcmc"`` | ``"nuts"``) or ``"failed"`` with the ladder's reason.
    """

    def run(key, inp: StageInput) -> StageResult:
        n = inp.index.size
        cand = inp.carry.get("draws")
        if cand is None:
            cand = np.full((n, 1, model.dim), np.nan, np.float32)
        res = mcmc.run_ladder(key, model, inp.obs, cand, inp.carry.get("log_weights"), ladder,
                              num_output_draws=num_output_draws, dataset_ids=inp.index,
                              progress=progress)
        return ladder_stage_result(res)

    return Stage("mcmc", run, chunk_size=chunk_size, salt=4, columns=dict(MCMC_COLUMNS))


# ----------------------------------------------------------------------------- the default
def default_stages(model: Model, estimator, config, *, progress: bool = True) -> tuple[Stage, ...]:
    """The workflow of ``config`` (:class:`~amortflow.WorkflowConfig`): amortized -> PSIS ->
    (refinement, if ``config.refine_rounds``) -> MCMC ladder. PSIS and refinement need the
    proposal's density; estimators without one go from stage 1 to MCMC.

    A surrogate-likelihood estimator (NLE / NRE: it exposes ``summary_model``) has no amortized
    draws at all: its workflow is MCMC on its surrogate posterior
    (:func:`amortflow.workflow.surrogate.surrogate_stages`)."""
    from amortflow.workflow.refine import refine_stage  # refine.py builds on this module
    if callable(getattr(estimator, "summary_model", None)):
        from amortflow.workflow.surrogate import surrogate_stages  # builds on this module
        return surrogate_stages(model, estimator, config, progress=progress)
    stages = [amortized_stage(
        model, estimator, num_draws=config.num_draws, ood_method=config.ood_method,
        ood_alpha=config.ood_alpha, num_ood_simulations=config.num_ood_simulations,
        accept_in_distribution=not config.psis_on_all, batch_size=config.batch_size)]
    if getattr(estimator, "has_log_prob", True):  # PSIS needs the proposal's density
        stages.append(psis_stage(model, num_draws=config.num_draws,
                                 khat_threshold=config.khat_threshold, min_ess=config.psis_min_ess,
                                 max_error=config.psis_max_error, resample=config.psis_resample,
                                 batch_size=config.batch_size))
        if config.refine_rounds:
            stages.append(refine_stage(model, num_draws=config.num_draws, rounds=config.refine_rounds,
                                       estimator=estimator,
                                       khat_threshold=config.khat_threshold,
                                       min_ess=config.psis_min_ess, max_error=config.psis_max_error,
                                       resample=config.psis_resample,
                                       batch_size=config.batch_size))
    stages.append(mcmc_stage(model, config.ladder(), num_output_draws=config.num_draws,
                             chunk_size=config.mcmc_chunk, progress=progress))
    return tuple(stages)


__all__ = ["amortized_stage", "psis_stage", "mcmc_stage", "default_stages", "ladder_stage_result", "MCMC_COLUMNS", "ood_gate",
           "psis_gate", "is_diagnostics", "psis_diagnostics", "fit_ood", "log_joint", "psis_resample", "FAILED"]
