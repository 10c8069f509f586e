"""One runner for the amortized-workflow paper's experiments beyond GEV (Li et al., arXiv
2409.04332): the Bernoulli GLM, the psychometric curves and the drift-diffusion model
(``make bench-glm``, ``bench-psychometric``, ``bench-ddm``).

Measured in one run, per experiment:

* **training (the model's preset) + the workflow (``WorkflowConfig()`` unless the preset says
  otherwise)** on all test datasets (prior-predictive, fixed seed; designs from the model's
  design sampler where it has one): routes, time per stage, total including training;
* **reference posteriors**: numpyro NUTS per dataset (fresh processes of 10 datasets, cached
  under ``benchmarks/cache``) on the first ``--num-ref`` datasets; their per-dataset times,
  **scaled** to all test datasets, are the numpyro baseline;
* **accuracy** of the workflow's draws vs the reference by bench-gev's criterion, in the
  reference's (constrained) parameters;
* **amortflow's batched NUTS** (4 chains x (500 + 500), one compiled call) on the first
  ``--num-batched`` datasets, **scaled** to all test datasets: the "MCMC on everything" baseline.

Goals (issue 14): every dataset resolved or failed with a reason; >= 99% of the reference subset
accurate; >= 3x faster than batched NUTS; the experiment's own time goal where it has one.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import Callable

import jax
import numpy as np

from _common import batched_nuts, likelihood_weighted_init, write_result
from bench_defaults import constrain_draws, references
from bench_gbi import judge_pairs, workflow_ess

import amortflow as af


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One paper experiment.

    name: result name (``<name>.json``, ``<name>_quick.json``).
    model, preset: the built-in model and its :class:`~amortflow.presets.NPEPreset` (``quick``).
    ref_module, ref_fn: numpyro model ``ref_fn(inputs)`` in ``benchmarks/<ref_module>.py``.
    ref_model: the model whose ``param_names`` name the numpyro sites (``site[i]`` for vectors).
    ref_inputs: ``(ys [n, ...], design or None) -> [n, ...]`` numpy arrays handed to ``ref_fn``
      one row at a time (a design is packed beside the observation).
    ref_init_fn: name of ``module.fn(theta [chains, d]) -> init_params`` (chains start at
      likelihood-weighted prior draws), or ``None`` (numpyro's own initialisation).
    to_reference_space: unconstrained draws ``[n, S, d]`` -> the reference's ``[n, S, d]``.
    sizes: ``(num_test, num_ref, num_batched)`` at full size; ``quick_sizes`` likewise.
    time_goal_s: the issue's wall-time goal at full size (training included), or ``None``.
    description: one line for the README section.
    """

    name: str
    model: af.Model
    preset: Callable[[bool], object]
    ref_module: str
    ref_fn: str
    ref_model: af.Model
    ref_inputs: Callable
    ref_init_fn: str | None
    to_reference_space: Callable
    sizes: tuple[int, int, int]
    quick_sizes: tuple[int, int, int]
    time_goal_s: float | None
    description: str
    max_div_frac: float = 0.02


def parse_args(doc: str):
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--num-test", type=int, default=None)
    ap.add_argument("--num-ref", type=int, default=None, help="datasets with numpyro reference NUTS")
    ap.add_argument("--num-batched", type=int, default=None, help="datasets timed with amortflow's batched NUTS")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args()


def log(name, msg):
    print(f"[bench-{name} {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def test_datasets(key, model, n: int, n_fixed: int):
    """``(theta [n, d], ys [n, ...], design or None)``, prior-predictive: always the same
    ``n_fixed`` datasets (a smaller run's are a prefix, so cached references carry over)."""
    theta, ys, design = jax.jit(model.sample_joint, static_argnums=1)(key, max(n, n_fixed))
    design = None if design is None else jax.tree.map(lambda a: np.asarray(a)[:n], design)
    return np.asarray(theta)[:n], np.asarray(ys)[:n], design


def head(design, n):
    return None if design is None else jax.tree.map(lambda a: a[:n], design)


def run(exp: Experiment, doc: str):
    args = parse_args(doc)
    cache_dir = args.cache_dir or os.path.join(os.path.dirname(os.path.abspath(__file__)), "cache")
    q = args.quick
    full_n, full_ref, full_bat = exp.sizes
    qn, qref, qbat = exp.quick_sizes
    n_test = args.num_test or (qn if q else full_n)
    n_ref = min(n_test, args.num_ref if args.num_ref is not None else (qref if q else full_ref))
    n_bat = min(n_test, args.num_batched if args.num_batched is not None else (qbat if q else full_bat))
    progress = not args.no_progress
    k_data, k_fit, k_wf, k_bat, k_acc = jax.random.split(jax.random.PRNGKey(args.seed), 5)
    model, preset = exp.model, exp.preset(q)
    out = {"settings": {"num_test": n_test, "num_ref": n_ref, "num_batched": n_bat, "quick": q,
                        "train_steps": preset.train.num_steps, "seed": args.seed},
           "model": {"name": model.name, "param_names": list(model.param_names), "obs_shape": list(model.obs_shape),
                     "design_shape": None if model.design_shape is None else jax.tree.map(list, model.design_shape,
                                                                                             is_leaf=lambda s: isinstance(s, tuple))},
           "description": exp.description}

    theta, ys, design = test_datasets(k_data, model, n_test, full_n)
    log(exp.name, f"{n_test} test datasets, observation {ys.shape[1:]}"
        + ("" if design is None else f", designs {jax.tree.map(lambda a: a.shape[1:], design)}"))

    # -- training (the preset) and the workflow on every dataset
    t0 = time.perf_counter()
    est = af.fit_posterior(k_fit, model, progress=progress, **preset.fit_kwargs())
    jax.block_until_ready(est.params)
    t_train = time.perf_counter() - t0
    log(exp.name, f"training: {t_train:.1f} s")
    t0 = time.perf_counter()
    res = af.run_workflow(k_wf, model, est, ys, preset.workflow, progress=progress, design=design)
    t_wf = time.perf_counter() - t0
    routes = res.route_counts()
    failed = res.route == "failed"
    out["training"] = {"wall_s": t_train, "val_loss_last": (est.history.get("val_loss") or [None])[-1]}
    out["workflow"] = {"wall_s": t_wf, "route_counts": routes, "stage_time_s": res.stage_time_s,
                       "stage_counts": res.stage_counts, "num_failed": int(failed.sum()),
                       "failed_without_reason": int(np.sum(failed & (res.reason.astype(str) == ""))),
                       "fraction_without_mcmc": float(np.isin(res.route, ("amortized", "psis", "refined")).mean())}
    out["total_s"] = t_train + t_wf
    log(exp.name, f"workflow: {t_wf:.1f} s; routes {routes}; total incl. training {t_train + t_wf:.1f} s")
    # the test datasets are prior-predictive with known parameters: SBC of every final answer
    sbc = af.diagnostics.sbc_of_result(jax.random.fold_in(k_acc, 3), model, est, theta,
                                       af.observe(ys, design=design), res)
    tests = sbc.tests()
    out["sbc"] = {"final": tests["final"], "amortized": tests["amortized"], "num_failed": tests["num_failed"]}
    log(exp.name, "SBC: " + sbc.summary().replace("\n", "; "))

    # -- reference NUTS (numpyro, per dataset) and accuracy
    settings = {"num_chains": 4, "num_warmup": 1000, "num_samples": 1000, "target_accept": 0.9}
    init = None if exp.ref_init_fn is None else np.asarray(likelihood_weighted_init(
        jax.random.fold_in(k_acc, 7), model, ys[:n_ref], head(design, n_ref), settings["num_chains"]))
    spec = {"model": exp.ref_model, "module": exp.ref_module, "ref": exp.ref_fn, "init_fn": exp.ref_init_fn,
            "init": init, "max_div_frac": exp.max_div_frac}
    ref_draws, ref_ok, ref_info = references(spec, exp.name, exp.ref_inputs(ys[:n_ref], head(design, n_ref)),
                                             settings, args.seed, cache_dir, 10)
    ref = {"draws": ref_draws.astype(np.float32), "ess": reference_ess(ref_draws, 4), "ok": ref_ok}
    draws = np.asarray(exp.to_reference_space(np.asarray(res.draws[:n_ref])), np.float32)
    acc = judge_pairs(k_acc, draws, workflow_ess(res)[:n_ref], ref)
    ev = ref_ok
    r = res.route[:n_ref]
    out["reference"] = ref_info
    out["accuracy"] = {"num_evaluable": int(ev.sum()), "num_accurate": int((acc & ev).sum()),
                       "fraction_accurate": float((acc & ev).sum() / max(int(ev.sum()), 1)),
                       "by_route": {k: {"evaluable": int((ev & (r == k)).sum()), "accurate": int((acc & ev & (r == k)).sum())}
                                    for k in routes}}
    per_np = float(ref_info["seconds_per_dataset"]["median"])
    out["numpyro"] = {"label": f"numpyro NUTS 4 x (1000 + 1000) per dataset: median of {n_ref} datasets x {n_test} (scaled)",
                      "seconds_per_dataset": ref_info["seconds_per_dataset"], "scaled_total_s": per_np * n_test}
    log(exp.name, f"accuracy: {out['accuracy']['num_accurate']}/{out['accuracy']['num_evaluable']}; numpyro "
        f"{per_np:.2f} s per dataset -> {per_np * n_test:.0f} s scaled")

    # -- amortflow's batched NUTS on a subset, scaled
    _, res_b, t_b = batched_nuts(k_bat, model, ys[:n_bat], bucket_size=min(n_bat, 64), design=head(design, n_bat))
    out["batched_nuts"] = {"label": f"amortflow batched NUTS 4 x (500 + 500), first {n_bat} datasets (incl. compilation), "
                                    f"scaled to {n_test}",
                           "wall_s": t_b, "per_dataset_s": t_b / n_bat, "scaled_total_s": t_b / n_bat * n_test,
                           "converged": int(np.sum(np.asarray(res_b.converged)))}
    total = out["total_s"]
    out["speedup_vs_batched_nuts"] = out["batched_nuts"]["scaled_total_s"] / total
    out["speedup_vs_numpyro"] = out["numpyro"]["scaled_total_s"] / total
    log(exp.name, f"batched NUTS: {t_b:.1f} s on {n_bat} -> {t_b / n_bat * n_test:.0f} s scaled; speed-ups "
        f"{out['speedup_vs_batched_nuts']:.1f}x (batched NUTS), {out['speedup_vs_numpyro']:.1f}x (numpyro)")
    goals = {"all_resolved_or_failed_with_reason": out["workflow"]["failed_without_reason"] == 0,
             "sbc_final_passes": bool(tests["final"]["passed"]),
             "accurate_ge_99pct": out["accuracy"]["fraction_accurate"] >= 0.99,
             "ge_3x_faster_than_batched_nuts": out["speedup_vs_batched_nuts"] >= 3.0}
    if exp.time_goal_s is not None:
        goals[f"le_{exp.time_goal_s:g}s_incl_training"] = None if n_test != full_n else total <= exp.time_goal_s
    out["goals"] = goals
    log(exp.name, f"goals: {goals}")
    write_result(f"{exp.name}_quick" if q else exp.name, out)
    return out, res


def reference_ess(chains, num_chains):
    """Bulk ESS ``[n, d]`` of reference draws ``[n, C * N, d]``."""
    n, total, d = chains.shape
    c = chains.reshape(n, num_chains, total // num_chains, d)
    return np.stack([np.asarray(af.diagnostics.ess_bulk(jax.numpy.asarray(ci))) for ci in c])


def constrained(model):
    """``to_reference_space`` for references in the model's constrained parameters."""
    return lambda draws: constrain_draws(model, draws)
