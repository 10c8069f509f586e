"""Escalation policy as data: run -> nested-R-hat gate -> retry -> NUTS -> reported failure.

A policy is a tuple of :class:`Stage` (a sampler config plus where its starting points come
from). Datasets that fail a stage's gate move on to the next stage; datasets move between
stages by gathering their indices into fixed-size buckets (padded to a power of two, at most
``bucket_size``), so shapes -- and compiled functions -- are reused across stages and calls.
Per-dataset PRNG keys are ``fold_in(fold_in(key, stage), dataset_index)``: a dataset's result
does not depend on which other datasets share its bucket.
"""
from __future__ import annotations

import dataclasses
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from amortflow.mcmc import batching
from amortflow.mcmc.config import CheesConfig, MeadsConfig, NutsConfig, SamplerConfig, _on_accelerator
from amortflow.mcmc.init import InitInfo, initialize_positions
from amortflow.mcmc.samplers import MCMCResult, run_sampler_keys
from amortflow.models import Model


@dataclasses.dataclass(frozen=True)
class Stage:
    """One escalation stage.

    name: label reported per dataset (``stage_name``).
    config: :class:`CheesConfig` | :class:`MeadsConfig` | :class:`NutsConfig`; its ``route``
      (``"mcmc"`` for ChEES/MEADS, ``"nuts"`` for NUTS) is the route of datasets accepted here.
    init_from: ``"candidates"`` (the amortized / PSIS draws given to :func:`run_escalation`) or
      ``"previous"`` (the draws of the previous stage for this dataset: work is reused).
    """

    name: str
    config: SamplerConfig
    init_from: str = "candidates"

    def __post_init__(self):
        if self.init_from not in ("candidates", "previous"):
            raise ValueError(f"Stage.init_from must be 'candidates' or 'previous', got {self.init_from!r}")


@dataclasses.dataclass(frozen=True)
class EscalationPolicy:
    """Stages tried in order, plus settings shared by all of them.

    num_output_draws: draws per dataset in the result (every stage returns this many).
    bucket_size: maximum datasets per compiled call (rounded up to the device count).
    num_prior_draws: prior draws screened per dataset by the fallback initialisation.
    """

    stages: tuple[Stage, ...]
    num_output_draws: int = 1000
    bucket_size: int = 64
    num_prior_draws: int = 1024

    def __post_init__(self):
        if not self.stages:
            raise ValueError("EscalationPolicy needs at least one stage")
        for st in self.stages:
            total = st.config.num_chains * st.config.num_samples
            if total < self.num_output_draws:
                raise ValueError(
                    f"stage {st.name!r} yields {total} draws per dataset < num_output_draws="
                    f"{self.num_output_draws}")


def default_policy(num_output_draws: int = 1000, **kw) -> EscalationPolicy:
    """The backend's escalation ladder.

    Accelerators (the paper): ChEES 16 x 128 -> ChEES with 3x warmup -> NUTS.
    CPU: MEADS 4 x 16 (the cheapest per converged dataset on the GEV benchmark: ~35k gradients
    per dataset, 537 of 569 datasets accepted) -> NUTS 4 x (1000 + 1000) restarted from the
    candidates -> the same NUTS once more from its own draws. (A middle ChEES stage accepted 15
    of the 32 MEADS failures but cost a ~35 s compilation: on CPU, NUTS alone is cheaper for so
    few datasets.)
    """
    if _on_accelerator():
        chees = CheesConfig.accelerator()
        stages = (
            Stage("chees", chees),
            Stage("chees_long_warmup", dataclasses.replace(chees, num_warmup=3 * chees.num_warmup),
                  init_from="previous"),
            Stage("nuts", NutsConfig.accelerator(), init_from="previous"),
        )
    else:
        stages = (
            # 4 datasets per lax.map step: GHMC has no data-dependent loop, so vmapping a few
            # datasets costs nothing extra and halves the per-op overhead (38.6 -> 20.2 ms per
            # dataset on 128 GEV datasets; NUTS, whose trees differ in depth, gains nothing)
            Stage("meads", MeadsConfig.cpu_profile(num_superchains=4, chains_per_superchain=16,
                                                   num_warmup=400, num_samples=50, thin=5, batch_size=4)),
            # a dataset MEADS could not settle restarts from the PSIS-weighted candidates (or
            # likelihood-weighted prior draws): chains stuck where MEADS left them would not help
            Stage("nuts", NutsConfig.cpu_profile(), init_from="candidates"),
            # the same compiled NUTS again, restarted from its own draws with fresh keys and a
            # fresh adaptation: on GEV, ~1 in 1000 datasets (posterior against the support
            # edge, hundreds of divergences) ends NUTS at nested R-hat 1.01-1.02; costs nothing
            # where NUTS converged and no compilation where it did not
            Stage("nuts_retry", NutsConfig.cpu_profile(), init_from="previous"),
        )
    return EscalationPolicy(stages=stages, num_output_draws=num_output_draws, **kw)


class StageReport(NamedTuple):
    """What happened in one stage: which datasets ran (``indices [n]``), their init report and
    sampler result (rows aligned with ``indices``), and the stage's wall time."""

    name: str
    indices: np.ndarray
    init_info: InitInfo | None
    result: MCMCResult | None
    wall_time_s: float


class EscalationResult(NamedTuple):
    """Per-dataset outcome of :func:`run_escalation` (leading axis ``K``).

    route: ``"mcmc"`` | ``"nuts"`` | ``"failed"``.
    stage_name: stage that accepted the dataset (the last stage tried if failed; ``""`` if
      no stage could start it).
    stage_index: index into ``policy.stages`` of that stage (-1 if never run).
    converged: accepted by some stage's gate.
    draws: ``[K, S, d]`` from the accepting (or last tried) stage; NaN if never run.
    nested_rhat, rhat, ess_bulk, ess_tail: ``[K, d]`` of that stage.
    divergences, step_size, mean_num_steps, max_tree_depth, accept_rate: ``[K]`` of that stage.
    num_grad_evals: ``[K]`` summed over every stage the dataset went through.
    num_stages_run: ``[K]``.
    num_init_fallback: ``[K]`` starting points from the prior fallback (first stage run).
    reason: ``[K]`` why a dataset failed (``""`` if it did not).
    stages: tuple of :class:`StageReport`.
    wall_time_s: total wall time.
    """

    route: np.ndarray
    stage_name: np.ndarray
    stage_index: np.ndarray
    converged: np.ndarray
    draws: np.ndarray
    nested_rhat: np.ndarray
    rhat: np.ndarray
    ess_bulk: np.ndarray
    ess_tail: np.ndarray
    divergences: np.ndarray
    step_size: np.ndarray
    mean_num_steps: np.ndarray
    max_tree_depth: np.ndarray
    accept_rate: np.ndarray
    num_grad_evals: np.ndarray
    num_stages_run: np.ndarray
    num_init_fallback: np.ndarray
    reason: np.ndarray
    stages: tuple
    wall_time_s: float

    def summary(self) -> dict:
        """Counts per route and per accepting stage, total cost."""
        routes, counts = np.unique(self.route, return_counts=True)
        names, ncounts = np.unique(self.stage_name[self.converged], return_counts=True)
        return {
            "routes": dict(zip(routes.tolist(), counts.tolist())),
            "accepted_by_stage": dict(zip(names.tolist(), ncounts.tolist())),
            "num_grad_evals": int(self.num_grad_evals.sum()),
            "wall_time_s": float(self.wall_time_s),
            "stage_wall_time_s": {s.name: s.wall_time_s for s in self.stages},
        }


def bucket_size_for(n: int, max_bucket: int, n_dev: int | None = None) -> int:
    """Padded bucket size for ``n`` pending datasets.

    CPU: always ``max_bucket`` (rounded to the device count) -- padded rows are skipped by
    ``lax.cond`` inside ``lax.map``, so padding is free and every call of a stage reuses ONE
    compiled function. Accelerators (``vmap``: padded lanes cost compute): the next power of two
    (times the device count) up to ``max_bucket``, so few distinct shapes occur."""
    n_dev = n_dev or batching.num_devices()
    cap = -(-max_bucket // n_dev) * n_dev
    if not _on_accelerator():
        return cap
    size = n_dev
    while size < n and size < cap:
        size *= 2
    return min(size, cap)


def _failure_reason(res: MCMCResult, row: int, config, stage_names, param_names) -> str:
    nr = res.nested_rhat[row]
    j = int(np.nanargmax(np.where(np.isfinite(nr), nr, np.inf)))
    parts = [f"not converged after stages {', '.join(stage_names)}:",
             f"max nested R-hat {nr[j]:.3f} >= {config.rhat_threshold} ({param_names[j]})"]
    parts.append(f"max R-hat {np.nanmax(res.rhat[row]):.3f}")
    parts.append(f"min bulk ESS {np.nanmin(res.ess_bulk[row]):.0f}")
    parts.append(f"{int(res.divergences[row])} divergences")
    parts.append(f"step size {float(res.step_size[row]):.3g}")
    parts.append(f"mean leapfrog steps {float(res.mean_num_steps[row]):.1f}")
    if res.max_tree_depth[row] > 0:
        parts.append(f"max tree depth {int(res.max_tree_depth[row])}")
    if not np.all(np.isfinite(res.draws[row])):
        parts.append("non-finite draws")
    return "; ".join(parts)


def _stage_init(key, model, ys, idx, candidates, candidate_log_weights, draws, ran_once, stage,
                cfg, policy):
    """Starting points for the datasets ``idx``: previous-stage draws where the stage asks for
    them and the dataset has run before, the original candidates otherwise."""
    prev = np.asarray(ran_once[idx]) & (stage.init_from == "previous")
    parts = []
    for mask, use_prev in ((prev, True), (~prev, False)):
        sub = idx[mask]
        if sub.size == 0:
            continue
        if use_prev:
            cand, logw = jnp.asarray(draws[sub]), None
        else:
            cand = candidates[sub]
            logw = (None if candidate_log_weights is None
                    else jnp.asarray(candidate_log_weights)[sub])
        init, info = initialize_positions(jax.random.fold_in(key, int(use_prev)), model, ys[sub],
                                          cand, logw, cfg.num_superchains,
                                          num_prior_draws=policy.num_prior_draws)
        parts.append((np.nonzero(mask)[0], init, info))
    out_init = np.zeros((idx.size, cfg.num_superchains, model.dim), np.float32)
    fields = {f: [None] * idx.size for f in InitInfo._fields}
    for rows, init, info in parts:
        out_init[rows] = np.asarray(init)
        for f in InitInfo._fields:
            vals = np.asarray(getattr(info, f))
            for r, v in zip(rows, vals):
                fields[f][r] = v
    info = InitInfo(**{f: np.stack(v) for f, v in fields.items()})
    return jnp.asarray(out_init), info


def run_escalation(key, model: Model, ys, candidates, candidate_log_weights=None,
                   policy: EscalationPolicy | None = None, *, progress: bool = True
                   ) -> EscalationResult:
    """Run the stages of ``policy`` on the datasets that still need them.

    Args:
      key: PRNG key.
      model: the model.
      ys: ``[K, *obs_shape]`` datasets.
      candidates: ``[K, S, d]`` amortized (or PSIS-resampled) draws used for initialisation.
      candidate_log_weights: ``[K, S]`` log weights or ``None``.
      policy: :class:`EscalationPolicy` (default :func:`default_policy`).
      progress: tqdm bar over stages/buckets.
    Returns:
      :class:`EscalationResult`.
    """
    policy = policy or default_policy()
    t_start = time.perf_counter()
    ys = jnp.asarray(ys)
    candidates = jnp.asarray(candidates)
    k, d, s_out = ys.shape[0], model.dim, policy.num_output_draws
    n_dev = batching.num_devices()

    route = np.full(k, "failed", dtype=object)
    stage_name = np.full(k, "", dtype=object)
    stage_index = np.full(k, -1)
    converged = np.zeros(k, bool)
    draws = np.full((k, s_out, d), np.nan, np.float32)
    vec = {f: np.full((k, d), np.nan, np.float32) for f in ("nested_rhat", "rhat", "ess_bulk", "ess_tail")}
    sca = {f: np.zeros(k, np.float32) for f in ("divergences", "step_size", "mean_num_steps",
                                                 "max_tree_depth", "accept_rate")}
    grads = np.zeros(k, np.int64)
    stages_run = np.zeros(k, np.int64)
    fallback = np.full(k, -1, np.int64)
    reason = np.full(k, "", dtype=object)
    init_failed = np.zeros(k, bool)
    ran_once = np.zeros(k, bool)
    reports = []
    pending = np.arange(k)

    for si, stage in enumerate(policy.stages):
        if pending.size == 0:
            break
        t0 = time.perf_counter()
        cfg = dataclasses.replace(stage.config, num_output_draws=s_out)
        skey = jax.random.fold_in(key, si)
        idx = pending
        init, info = _stage_init(jax.random.fold_in(skey, 2**31 - 1), model, ys, idx, candidates,
                                 candidate_log_weights, draws, ran_once, stage, cfg, policy)
        ok = np.asarray(info.ok)
        first = fallback[idx] < 0
        fallback[idx[first]] = np.asarray(info.num_fallback)[first]
        init_failed[idx[~ok]] = True
        run_idx = idx[ok]
        result = None
        if run_idx.size:
            keys = jax.vmap(lambda i: jax.random.fold_in(skey, i))(jnp.asarray(run_idx))
            size = bucket_size_for(run_idx.size, policy.bucket_size, n_dev)
            result = run_sampler_keys(keys, model, ys[run_idx], init[ok], cfg, bucket_size=size,
                                      progress=progress)
            ran_once[run_idx] = True
            init_failed[run_idx] = False
            grads[run_idx] += result.num_grad_evals
            stages_run[run_idx] += 1
            draws[run_idx] = result.draws
            for f in vec:
                vec[f][run_idx] = getattr(result, f)
            for f in sca:
                sca[f][run_idx] = getattr(result, f)
            stage_name[run_idx] = stage.name
            stage_index[run_idx] = si
            acc = result.converged
            converged[run_idx[acc]] = True
            route[run_idx[acc]] = cfg.route
            for row in np.nonzero(~acc)[0]:
                reason[run_idx[row]] = _failure_reason(
                    result, row, cfg, [st.name for st in policy.stages[: si + 1]],
                    model.param_names)
            pending = np.concatenate([run_idx[~acc], idx[~ok]])
            pending.sort()
        reports.append(StageReport(stage.name, idx, info, result, time.perf_counter() - t0))
        if progress:
            n_acc = 0 if result is None else int(result.converged.sum())
            print(f"[amortflow.mcmc] stage {stage.name}: {idx.size} datasets, {n_acc} accepted, "
                  f"{pending.size} escalated ({time.perf_counter() - t0:.1f} s)")

    for i in np.nonzero(init_failed)[0]:
        reason[i] = ("no finite-density starting point: all candidates and "
                     f"{policy.num_prior_draws} prior draws have log density -inf")
    reason[converged] = ""
    return EscalationResult(
        route=route, stage_name=stage_name, stage_index=stage_index, converged=converged,
        draws=draws, **vec, **sca, num_grad_evals=grads, num_stages_run=stages_run,
        num_init_fallback=np.maximum(fallback, 0), reason=reason, stages=tuple(reports),
        wall_time_s=time.perf_counter() - t_start)


__all__ = ["Stage", "EscalationPolicy", "EscalationResult", "StageReport", "default_policy",
           "run_escalation", "bucket_size_for", "MeadsConfig"]
