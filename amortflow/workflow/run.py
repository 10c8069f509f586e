"""The adaptive amortized workflow (Li et al., 2409.04332), compiled once for all datasets.

Stage 1  amortized draws + log q for all K datasets in one compiled call; OOD score per dataset
         on the learned summaries (threshold from held-out simulations).
Stage 2  PSIS on the same draws: log w = log p(theta, y) - log q(theta | y); Pareto k-hat gate.
Stage 3+ many-chain MCMC (escalation policy: ChEES -> longer ChEES -> NUTS), started from the
         PSIS-resampled draws; nested R-hat gate; what still fails is reported with a reason.

Datasets move between stages as index sets; every compiled function sees fixed shapes (the
amortized pass runs on all valid datasets, MCMC on padded buckets). With ``out_dir`` each stage's
output is written as it completes (arrays in ``.npz``, text in JSON) and a re-run with the same
directory and inputs resumes where the previous run stopped.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from amortflow import diagnostics as dg
from amortflow.estimators.npe import datasets_per_step
from amortflow.mcmc.escalation import run_escalation
from amortflow.models.base import Model
from amortflow.workflow.config import WorkflowConfig
from amortflow.workflow.result import WorkflowResult

_MCMC_FIELDS = ("nested_rhat", "rhat", "ess_bulk", "ess_tail")
_MCMC_SCALARS = ("divergences", "step_size", "mean_num_steps", "max_tree_depth", "accept_rate")


# ----------------------------------------------------------------------------- inputs
def validate_datasets(model: Model, ys) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check every dataset on its own: ``(ys [K, *obs] float32, ok [K], reason [K])``.

    ``ys`` may be an array ``[K, *obs_shape]`` or a list of per-dataset arrays (a ragged list
    may contain wrongly shaped datasets). Bad datasets get a reason and a zero placeholder, so
    they never stop the others.
    """
    items = list(ys) if not isinstance(ys, np.ndarray) or ys.dtype == object else None
    if items is None:
        arr = np.asarray(ys)
        if arr.shape == model.obs_shape:
            arr = arr[None]
        if arr.ndim != len(model.obs_shape) + 1 or arr.shape[1:] != model.obs_shape:
            items = list(arr) if arr.ndim >= 1 else [arr]
        else:
            items = None
            out = arr.astype(np.float32)
    if items is not None:
        out = np.zeros((len(items),) + model.obs_shape, np.float32)
        reason = np.full(len(items), "", dtype=object)
        ok = np.ones(len(items), bool)
        for i, y in enumerate(items):
            y = np.asarray(y)
            if y.shape != model.obs_shape:
                ok[i] = False
                reason[i] = f"invalid input: shape {y.shape} does not match the model's {model.obs_shape}"
            else:
                out[i] = y
    else:
        reason = np.full(out.shape[0], "", dtype=object)
        ok = np.ones(out.shape[0], bool)
    finite = np.isfinite(out.reshape(out.shape[0], -1)).all(axis=1)
    for i in np.nonzero(ok & ~finite)[0]:
        reason[i] = "invalid input: dataset contains NaN or infinite values"
    ok &= finite
    out[~ok] = 0.0
    return out, ok, reason


# ----------------------------------------------------------------------------- compiled pieces
@partial(jax.jit, static_argnames=("model", "batch_size"))
def _log_joint(model, draws, ys, batch_size):
    """``log p(theta, y)`` for draws ``[K, S, d]`` of datasets ``ys [K, ...]`` -> ``[K, S]``."""
    per = jax.vmap(model.log_density, in_axes=(0, None))
    return jax.lax.map(lambda a: per(a[0], a[1]), (draws, ys), batch_size=batch_size)


@partial(jax.jit, static_argnames=("num", "scheme"))
def _psis_resample(key, draws, log_w, num, scheme):
    keys = jax.random.split(key, draws.shape[0])
    replace = scheme != "without_replacement"
    method = scheme if replace else "systematic"
    idx = jax.vmap(lambda k, lw: dg.resample(k, lw, num, replace=replace, method=method))(keys, log_w)
    return jnp.take_along_axis(draws, idx[..., None], axis=1)


def fit_ood(key, model: Model, estimator, config: WorkflowConfig):
    """OOD detector on learned summaries of fresh prior-predictive simulations: half fit the
    reference, the other (held-out) half set the ``1 - alpha`` threshold."""
    n = config.num_ood_simulations
    _, ys = jax.jit(model.sample_prior_predictive, static_argnums=1)(jax.random.fold_in(key, 1), n)
    ok = np.isfinite(np.asarray(ys).reshape(n, -1)).all(axis=1)
    s = np.asarray(estimator.summaries(np.asarray(ys)[ok]))
    half = s.shape[0] // 2
    if config.ood_method == "mahalanobis":
        state = dg.fit_mahalanobis(s[:half], s[half:], alpha=config.ood_alpha)
        return state, partial(dg.mahalanobis_score, state)
    state = dg.fit_mmd_ood(jax.random.fold_in(key, 2), s[:half], s[half:], alpha=config.ood_alpha)
    return state, partial(dg.mmd_score, state)


# ----------------------------------------------------------------------------- progress files
class _Progress:
    """Stage outputs under ``out_dir/progress`` (``None``: keep nothing)."""

    def __init__(self, out_dir, fingerprint):
        self.dir = None if out_dir is None else os.path.join(out_dir, "progress")
        if self.dir is None:
            return
        os.makedirs(self.dir, exist_ok=True)
        manifest = os.path.join(self.dir, "manifest.json")
        if os.path.exists(manifest):
            with open(manifest) as f:
                old = json.load(f).get("fingerprint")
            if old != fingerprint:
                raise ValueError(
                    f"{out_dir} holds progress of a different run (other datasets, estimator, key or "
                    "configuration); use a new output directory or delete its progress/ folder"
                )
        else:
            with open(manifest, "w") as f:
                json.dump({"fingerprint": fingerprint}, f)

    def load(self, name):
        if self.dir is None:
            return None
        f = os.path.join(self.dir, f"{name}.npz")
        if not os.path.exists(f):
            return None
        with np.load(f, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        jf = os.path.join(self.dir, f"{name}.json")
        text = {}
        if os.path.exists(jf):
            with open(jf) as fh:
                text = json.load(fh)
        return arrays, text

    def save(self, name, arrays, text=None):
        if self.dir is None:
            return
        if text is not None:
            with open(os.path.join(self.dir, f"{name}.json.tmp"), "w") as f:
                json.dump(text, f)
            os.replace(os.path.join(self.dir, f"{name}.json.tmp"), os.path.join(self.dir, f"{name}.json"))
        tmp = os.path.join(self.dir, f"{name}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, os.path.join(self.dir, f"{name}.npz"))  # the npz marks the stage done


def _fingerprint(key, ys, ok, estimator, config: WorkflowConfig, model: Model) -> str:
    h = hashlib.sha256()
    h.update(np.asarray(jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key).tobytes())
    h.update(np.ascontiguousarray(ys).tobytes())
    h.update(ok.tobytes())
    for leaf in jax.tree_util.tree_leaves(estimator.params):
        h.update(np.asarray(leaf).tobytes())
    h.update(repr(config.to_dict()).encode())
    h.update(model.name.encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- the workflow
def run_workflow(key, model: Model, estimator, ys, config: WorkflowConfig | None = None, *,
                 out_dir: str | None = None, progress: bool = True) -> WorkflowResult:
    """Analyse ``K`` datasets: amortized draws, OOD check, PSIS, many-chain MCMC, fallback.

    Args:
      key: PRNG key.
      model: the :class:`~amortflow.models.Model` the estimator was trained for.
      estimator: anything with ``sample_and_log_prob(key, ys, S) -> ([K, S, d], [K, S])`` and
        ``summaries(ys) -> [K, c]`` (for the OOD check).
      ys: ``[K, *obs_shape]`` datasets (or a list of per-dataset arrays).
      config: :class:`WorkflowConfig`.
      out_dir: if given, progress is written there per stage (and per MCMC chunk) and a re-run
        with the same directory resumes; the final result is saved to ``out_dir/result``.
      progress: progress bars and stage messages.
    Returns:
      :class:`WorkflowResult`.
    """
    cfg = config or WorkflowConfig()
    log = print if progress else (lambda *a, **k: None)
    if tuple(estimator.param_names) != tuple(model.param_names):
        raise ValueError(f"estimator parameters {estimator.param_names} do not match the model's "
                         f"{model.param_names}")
    ys_arr, ok, reason = validate_datasets(model, ys)
    k_all, s, d = ys_arr.shape[0], cfg.num_draws, model.dim
    store = _Progress(out_dir, _fingerprint(key, ys_arr, ok, estimator, cfg, model))
    valid = np.nonzero(ok)[0]
    times, counts = {}, {}
    route = np.where(ok, "", "failed").astype(object)
    draws_out = np.full((k_all, s, d), np.nan, np.float32)
    diag = {
        "ood_score": np.full(k_all, np.nan), "ood_flag": np.zeros(k_all, bool),
        "khat": np.full(k_all, np.nan), "psis_ess": np.full(k_all, np.nan),
        "num_log_density_evals": np.zeros(k_all, np.int64), "num_grad_evals": np.zeros(k_all, np.int64),
        "mcmc_stage": np.full(k_all, "", dtype=object),
        "nested_rhat_max": np.full(k_all, np.nan), "rhat_max": np.full(k_all, np.nan),
        "ess_bulk_min": np.full(k_all, np.nan), "ess_tail_min": np.full(k_all, np.nan),
        "divergences": np.full(k_all, np.nan), "step_size": np.full(k_all, np.nan),
        "num_init_fallback": np.zeros(k_all, np.int64),
    }
    if valid.size == 0:
        log("[amortflow] no valid datasets")
        return WorkflowResult(route, reason, draws_out, diag, times, counts, model.param_names,
                              model.name, cfg.to_dict(), model)
    yv = jnp.asarray(ys_arr[valid])
    bs = cfg.batch_size or datasets_per_step(valid.size, s)

    # ---- stage 1: amortized draws, log q, OOD score
    saved = store.load("stage1")
    if saved is None:
        t0 = time.perf_counter()
        draws, log_q = estimator.sample_and_log_prob(jax.random.fold_in(key, 1), yv, s, batch_size=cfg.batch_size)
        draws, log_q = jax.block_until_ready((draws, log_q))
        t_draw = time.perf_counter() - t0
        t0 = time.perf_counter()
        if cfg.ood_method is not None:
            ood_state, score_fn = fit_ood(jax.random.fold_in(key, 2), model, estimator, cfg)
            score = np.asarray(score_fn(estimator.summaries(yv)))
            ood_thr = float(ood_state.threshold)
            flag = score > ood_thr
        else:
            score, flag, ood_thr = np.full(valid.size, np.nan), np.ones(valid.size, bool), np.nan
        t_ood = time.perf_counter() - t0
        arrays = {"draws": np.asarray(draws), "log_q": np.asarray(log_q), "score": score, "flag": flag,
                  "ood_threshold": ood_thr, "t_draw": t_draw, "t_ood": t_ood}
        store.save("stage1", arrays)
    else:
        arrays = saved[0]
        log("[amortflow] stage 1 restored from progress")
    draws, log_q = jnp.asarray(arrays["draws"]), jnp.asarray(arrays["log_q"])
    score, flag = arrays["score"], arrays["flag"].astype(bool)
    times["amortized_draws"], times["ood_check"] = float(arrays["t_draw"]), float(arrays["t_ood"])
    counts["amortized_draws"] = counts["ood_check"] = int(valid.size)
    diag["ood_score"][valid], diag["ood_flag"][valid] = score, flag
    log(f"[amortflow] stage 1: {valid.size} datasets x {s} draws in {times['amortized_draws']:.1f} s; "
        f"{int(flag.sum())} flagged out-of-distribution")

    # ---- stage 2: PSIS on the same draws (diagnostics for all; gate per configuration)
    saved = store.load("stage2")
    if saved is None:
        t0 = time.perf_counter()
        log_p = _log_joint(model, draws, yv, bs)
        res = dg.psis(log_p - log_q)
        resampled = _psis_resample(jax.random.fold_in(key, 3), draws, res.log_weights, s,
                                   cfg.psis_resample)
        res, resampled = jax.block_until_ready((res, resampled))
        arrays2 = {"khat": np.asarray(res.khat), "ess": np.asarray(res.ess),
                   "log_weights": np.asarray(res.log_weights), "resampled": np.asarray(resampled),
                   "t": time.perf_counter() - t0}
        store.save("stage2", arrays2)
    else:
        arrays2 = saved[0]
        log("[amortflow] stage 2 restored from progress")
    khat, ess = arrays2["khat"], arrays2["ess"]
    thr = cfg.khat_threshold if cfg.khat_threshold is not None else dg.psis_khat_threshold(s)
    diag["khat"][valid], diag["psis_ess"][valid] = khat, ess
    diag["num_log_density_evals"][valid] += s
    times["psis"] = float(arrays2["t"])
    gated = flag | cfg.psis_on_all
    counts["psis"] = int(gated.sum())
    accept_amortized = ~gated
    min_ess = cfg.psis_min_ess if cfg.psis_min_ess is not None else 0.0
    accept_psis = gated & (khat <= thr) & np.isfinite(khat) & (ess >= min_ess)
    need_mcmc = gated & ~accept_psis
    route[valid[accept_amortized]] = "amortized"
    draws_out[valid[accept_amortized]] = np.asarray(draws)[accept_amortized]
    route[valid[accept_psis]] = "psis"
    draws_out[valid[accept_psis]] = arrays2["resampled"][accept_psis]
    for j in np.nonzero(need_mcmc)[0]:
        reason[valid[j]] = (f"PSIS k-hat {khat[j]:.2f} > {thr:.2f}" if not khat[j] <= thr
                            else f"PSIS ESS {ess[j]:.0f} < {min_ess:.0f}")
    log(f"[amortflow] stage 2: PSIS on {counts['psis']} datasets, {int(accept_psis.sum())} accepted, "
        f"{int(need_mcmc.sum())} to MCMC ({times['psis']:.1f} s)")

    # ---- stages 3-4: escalation (many-chain MCMC -> NUTS), in resumable chunks
    policy = cfg.policy()
    mc_local = np.nonzero(need_mcmc)[0]
    counts["mcmc"] = int(mc_local.size)
    t_mcmc = 0.0
    stage_times: dict[str, float] = {}
    lw_all = jnp.asarray(arrays2["log_weights"])
    chunks = [mc_local[i : i + cfg.mcmc_chunk] for i in range(0, mc_local.size, cfg.mcmc_chunk)]
    for ci, chunk in enumerate(chunks):
        name = f"mcmc_{ci:04d}"
        saved = store.load(name)
        if saved is None:
            t0 = time.perf_counter()
            esc = run_escalation(jax.random.fold_in(jax.random.fold_in(key, 4), ci), model, yv[chunk],
                                 draws[chunk], lw_all[chunk], policy, progress=progress)
            a = {"route": np.asarray(esc.route, dtype=str), "draws": esc.draws,
                 "num_grad_evals": esc.num_grad_evals, "num_init_fallback": esc.num_init_fallback,
                 "t": time.perf_counter() - t0, "stage_name": np.asarray(esc.stage_name, dtype=str)}
            for f in _MCMC_FIELDS:
                a[f] = getattr(esc, f)
            for f in _MCMC_SCALARS:
                a[f] = getattr(esc, f)
            text = {"reason": [str(r) for r in esc.reason],
                    "stage_time_s": {st.name: st.wall_time_s for st in esc.stages}}
            store.save(name, a, text)
        else:
            a, text = saved
        rows = valid[chunk]
        acc = a["route"] != "failed"
        route[rows] = a["route"]
        draws_out[rows[acc]] = a["draws"][acc]
        esc_reason = np.asarray(text["reason"], dtype=object)
        reason[rows] = np.where(acc, reason[rows], esc_reason)
        diag["mcmc_stage"][rows] = a["stage_name"]
        diag["num_grad_evals"][rows] += a["num_grad_evals"]
        diag["num_init_fallback"][rows] = a["num_init_fallback"]
        diag["nested_rhat_max"][rows] = np.nanmax(a["nested_rhat"], axis=1)
        diag["rhat_max"][rows] = np.nanmax(a["rhat"], axis=1)
        diag["ess_bulk_min"][rows] = np.nanmin(a["ess_bulk"], axis=1)
        diag["ess_tail_min"][rows] = np.nanmin(a["ess_tail"], axis=1)
        diag["divergences"][rows] = a["divergences"]
        diag["step_size"][rows] = a["step_size"]
        t_mcmc += float(a["t"])
        for st, v in text["stage_time_s"].items():
            stage_times[st] = stage_times.get(st, 0.0) + float(v)
    times["mcmc"] = t_mcmc
    for st in stage_times:
        counts[f"mcmc:{st}"] = int((diag["mcmc_stage"] == st).sum())
    result = WorkflowResult(route, reason, draws_out, diag, times, counts, model.param_names,
                            model.name, cfg.to_dict(), model, mcmc_stage_time_s=stage_times,
                            thresholds={"ood": float(arrays["ood_threshold"]), "khat": float(thr)})
    if out_dir is not None:
        result.save(os.path.join(out_dir, "result"))
    log("[amortflow] " + result.summary().replace("\n", "\n[amortflow] "))
    return result
