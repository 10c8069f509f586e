"""make bench-spatial: the spatial Gaussian-process study of Zammit-Mangion, Sainsbury-Dale & Huser
("Neural Methods for Amortized Inference", arXiv 2404.12484), reproduced with amortflow.

    python benchmarks/bench_spatial.py            # 1000 test fields, 16 000 + 2 000 training fields
    python benchmarks/bench_spatial.py --quick    # 100 test fields, short training (a few minutes)

Model: ``af.models.spatial_gp()`` -- zero-mean GP on a 16 x 16 grid of the unit square,
covariance exp(-d / ell), ell ~ U(0, 0.6); one field per dataset. As in the review, every
estimator trains on one bank of 16 000 simulated fields (2 000 more for validation) and is tested
on 1000 fresh prior-predictive fields. Methods, all in this one run:

* **Exact posterior** (the reference): ell is one-dimensional, so the exact posterior is computed
  by quadrature (``af.models.spatial_gp_grid_posterior``, 1200 grid cells); this is what the
  review's MCMC approximates.
* **MCMC**: amortflow's batched NUTS on the exact likelihood (4 chains x (500 + 500)), on the
  first ``--num-mcmc`` fields (every leapfrog step is a 256 x 256 Cholesky factorisation: MCMC on
  all fields does not fit this CPU's budget), and numpyro NUTS per field (4 x (1000 + 1000),
  fresh processes) on ``--num-numpyro`` fields; per-field MCMC times are scaled to all fields and
  labelled so.
* **NBE**: ``af.fit_point_estimator`` with the pinball loss at 5%, 50% and 95% (the review's
  quantile estimator): the median and the 90% interval.
* **NPE**: ``af.fit_posterior`` on the bank (default summary network for a grid: the CNN).
* **NPE + workflow**: ``af.run_workflow`` with defaults.
* **NLE + MCMC** and **NRE + MCMC**: the surrogate likelihood / ratio in the batched MCMC stage
  (``run_workflow`` with defaults on those estimators), and a per-field loop of the same sampler
  on ``--num-loop`` fields.

Metrics (per method; the review's convention: the posterior median as the estimate, then the
MEDIAN over fields of the squared error -> RMSPE, of the 90% interval score -> MIS90 and of the
CRPS -> MCRPS; COV90 the mean coverage; also the means over fields): computed with
``af.diagnostics.assess``. Accuracy vs the exact posterior: bench-gev's criterion
(:data:`bench_gev.CRITERION`) against 4000 exact draws per field.

Results: ``benchmarks/results/spatial.json`` (``spatial_quick.json``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import batched_nuts, numpyro_nuts_per_dataset, write_result  # noqa: E402
from bench_gbi import judge_pairs, workflow_ess  # noqa: E402

import amortflow as af  # noqa: E402
from amortflow import mcmc  # noqa: E402
from amortflow.models.spatial import spatial_gp_grid_posterior  # noqa: E402

ELL_MAX = 0.6
REF_DRAWS = 4000
NUM_DRAWS = 1000
# the review's table (medians over test fields, x 10^2; its repository's fig/results_table.tex)
REVIEW = {"MCMC": {"rmspe": 1.50, "mis90": 9.55, "mcrps": 1.41, "cov90": 89.6},
          "NBE": {"rmspe": 1.56, "mis90": 10.62, "mcrps": None, "cov90": 87.7},
          "NPE": {"rmspe": 1.50, "mis90": 9.89, "mcrps": 1.46, "cov90": 90.6},
          "NRE": {"rmspe": 1.70, "mis90": 10.99, "mcrps": 1.59, "cov90": 91.3}}


def log(msg):
    print(f"[bench-spatial {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def to_ell(theta):
    """Unconstrained theta (any shape) -> length scale ell."""
    return ELL_MAX / (1.0 + np.exp(-np.asarray(theta, np.float64)))


def to_theta(ell):
    p = np.asarray(ell, np.float64) / ELL_MAX
    return np.log(p) - np.log1p(-p)


def numpyro_spatial_model(y):
    """The spatial GP in numpyro (for the per-field NUTS baseline): ell ~ U(0, 0.6), the field
    ~ MVN(0, exp(-D / ell) + 1e-5 I) -- the same density as ``af.models.spatial_gp()``."""
    import numpyro
    import numpyro.distributions as dist

    from amortflow.models.spatial import exponential_covariance, grid_coordinates

    n = y.shape[0]
    c = grid_coordinates(n)
    d = jnp.asarray(np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1)), jnp.float32)
    ell = numpyro.sample("ell", dist.Uniform(0.0, ELL_MAX))
    numpyro.sample("y", dist.MultivariateNormal(jnp.zeros(n * n), exponential_covariance(d, ell, 1e-5)),
                   obs=y.reshape(-1))


# ----------------------------------------------------------------------------- metrics
def metrics(name, ell_true, *, draws=None, estimate=None, lower=None, upper=None):
    """The review's metrics and their means (see the module docstring) for one method, from
    ``af.diagnostics.assess``: ``draws [K, S]`` of ell, or a point ``estimate [K]`` with a 90%
    interval ``lower / upper [K]``."""
    t = np.asarray(ell_true, np.float64)[:, None]
    if draws is not None:
        a = af.diagnostics.assess(t, draws=np.asarray(draws, np.float64)[..., None], point="median",
                                  param_names=("ell",), estimator_name=name)
    else:
        a = af.diagnostics.assess(t, estimate=np.asarray(estimate)[:, None],
                                  interval=(np.asarray(lower)[:, None], np.asarray(upper)[:, None]),
                                  param_names=("ell",), estimator_name=name)
    sq = (a.estimate[:, 0] - t[:, 0]) ** 2
    score = a.interval_score_per_dataset[:, 0]
    out = {"rmspe": float(np.sqrt(np.median(sq))), "mis90": float(np.median(score)),
           "cov90": float(np.mean(a.covered[:, 0])),
           "rmse_mean_over_fields": float(a.rmse[0]), "mis90_mean_over_fields": float(a.interval_score[0]),
           "width90_mean": float(a.interval_width[0]), "mcrps": None}
    if a.crps_per_dataset is not None and draws is not None:
        out["mcrps"] = float(np.median(a.crps_per_dataset[:, 0]))
        out["crps_mean_over_fields"] = float(a.crps[0])
    return out


def judge_fields(key, draws_theta, ess_draws, ref_theta):
    """bench-gev's accuracy decision per field, against exact reference draws."""
    ref = {"draws": np.asarray(ref_theta, np.float32)[..., None], "ess": np.full((len(ref_theta), 1), float(REF_DRAWS)),
           "ok": np.ones(len(ref_theta), bool)}
    return judge_pairs(key, np.asarray(draws_theta, np.float32), np.asarray(ess_draws, np.float64), ref)


# ----------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="100 test fields, 4000 training fields, short training")
    ap.add_argument("--num-test", type=int, default=None)
    ap.add_argument("--num-train", type=int, default=None, help="training fields (validation: 1/8 of it more)")
    ap.add_argument("--steps", type=int, default=None, help="training steps of every estimator")
    ap.add_argument("--num-mcmc", type=int, default=None, help="fields for amortflow's exact-likelihood NUTS")
    ap.add_argument("--num-numpyro", type=int, default=None, help="fields timed with numpyro NUTS per field")
    ap.add_argument("--num-loop", type=int, default=None, help="fields of the per-field surrogate-MCMC loop")
    ap.add_argument("--methods", default="nbe,npe,workflow,nle,nre",
                    help="comma-separated subset of nbe, npe, workflow, nle, nre (the exact posterior always runs)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    q = args.quick
    n_test = args.num_test or (100 if q else 1000)
    n_train = args.num_train or (4000 if q else 16000)
    n_val = n_train // 8
    steps = args.steps or (600 if q else 3000)
    n_mcmc = args.num_mcmc if args.num_mcmc is not None else (4 if q else 20)
    n_np = args.num_numpyro if args.num_numpyro is not None else (1 if q else 3)
    n_loop = args.num_loop if args.num_loop is not None else (3 if q else 10)
    progress = not args.no_progress
    key = jax.random.PRNGKey(args.seed)
    k_test, k_bank, k_nbe, k_npe, k_wf, k_nle, k_nre, k_mc, k_acc, k_ref = jax.random.split(key, 10)
    model = af.models.spatial_gp()
    out = {"settings": {"num_test": n_test, "num_train": n_train, "num_validation": n_val, "train_steps": steps,
                        "num_mcmc": n_mcmc, "num_numpyro": n_np, "num_loop": n_loop, "num_draws": NUM_DRAWS,
                        "quick": q},
           "review_table_x100": REVIEW, "methods": {}}
    cfg = af.TrainConfig(num_steps=steps)

    theta_test, ys = jax.jit(model.sample_prior_predictive, static_argnums=1)(k_test, n_test)
    ys = np.asarray(ys)
    ell_true = to_ell(np.asarray(theta_test)[:, 0])
    t0 = time.perf_counter()
    bank = af.estimators.simulate_bank(k_bank, model, n_train + n_val, progress=progress)
    t_bank = time.perf_counter() - t0
    out["simulation_bank"] = {"num_fields": n_train + n_val, "wall_s": t_bank}
    log(f"bank of {n_train + n_val} fields in {t_bank:.1f} s")
    methods = out["methods"]

    # -- the exact posterior (reference)
    t0 = time.perf_counter()
    post = spatial_gp_grid_posterior(model, ys)
    t_ref = time.perf_counter() - t0
    ref_ell = post.sample(k_ref, REF_DRAWS)
    ref_theta = to_theta(ref_ell)
    methods["exact"] = {"label": "exact posterior (quadrature, 1200 cells)", "wall_s": t_ref,
                        **metrics("exact", ell_true, draws=ref_ell)}
    log(f"exact posterior: {t_ref:.1f} s; {methods['exact']}")

    # -- MCMC on the exact likelihood: amortflow batched NUTS on a subset, numpyro per field
    if n_mcmc:
        d_mc, res_mc, t_mc = batched_nuts(k_mc, model, ys[:n_mcmc])
        d_mc = d_mc[..., 0]
        acc = judge_fields(k_acc, to_theta(d_mc)[..., None], np.nanmin(np.asarray(res_mc.ess_bulk), 1), ref_theta[:n_mcmc])
        methods["mcmc_batched"] = {
            "label": f"amortflow batched NUTS, exact likelihood, 4 x (500 + 500), first {n_mcmc} fields",
            "num_fields": n_mcmc, "wall_s": t_mc, "per_field_s": t_mc / n_mcmc,
            "converged": int(np.sum(np.asarray(res_mc.converged))),
            "accurate_vs_exact": float(np.mean(acc)),
            **metrics("mcmc", ell_true[:n_mcmc], draws=d_mc),
            "exact_on_same_fields": metrics("exact", ell_true[:n_mcmc], draws=ref_ell[:n_mcmc])}
        log(f"batched NUTS on {n_mcmc} fields: {t_mc:.0f} s, accurate {np.mean(acc):.2f}")
    if n_np:
        r = numpyro_nuts_per_dataset(ys[:n_np], module="bench_spatial", model="numpyro_spatial_model",
                                     chunk=n_np, progress=progress)
        per = float(np.mean(r["times_s"]))
        methods["mcmc_numpyro"] = {"label": f"numpyro NUTS per field 4 x (1000 + 1000), scaled: mean of {n_np} timed fields x {n_test}",
                                   "per_field_s": per, "times_s": r["times_s"], "scaled_total_s": per * n_test,
                                   "divergences": r["divergences"]}
        log(f"numpyro NUTS: {per:.1f} s per field -> {per * n_test:.0f} s scaled")
    per_field_mcmc_total = (methods.get("mcmc_numpyro") or methods.get("mcmc_batched") or {}).get("per_field_s")
    per_field_mcmc_total = None if per_field_mcmc_total is None else per_field_mcmc_total * n_test

    def speed(entry, total):
        entry["total_s"] = total
        if per_field_mcmc_total:
            entry["speedup_vs_per_field_mcmc"] = per_field_mcmc_total / total
            entry["speedup_vs_per_field_mcmc_inference_only"] = per_field_mcmc_total / entry["inference_s"]

    wanted = set(args.methods.split(","))
    if not wanted <= {"nbe", "npe", "workflow", "nle", "nre"}:
        raise SystemExit(f"--methods: unknown {sorted(wanted - {'nbe', 'npe', 'workflow', 'nle', 'nre'})}")
    out["settings"]["methods"] = sorted(wanted)

    # -- NBE: pinball loss at 5/50/95%
    if "nbe" in wanted:
        t0 = time.perf_counter()
        nbe = af.fit_point_estimator(k_nbe, model, af.estimators.Pinball(levels=(0.05, 0.5, 0.95)), bank=bank,
                                     num_validation=n_val, train_config=cfg, progress=progress)
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        qs = np.asarray(jax.block_until_ready(nbe.quantiles(ys)))  # [K, 3, 1]
        t_inf = time.perf_counter() - t0
        e = {"label": "NBE: pinball loss (5%, 50%, 95%), CNN summary", "train_s": t_train, "inference_s": t_inf,
             **metrics("nbe", ell_true, estimate=to_ell(qs[:, 1, 0]), lower=to_ell(qs[:, 0, 0]),
                       upper=to_ell(qs[:, 2, 0]))}
        speed(e, t_train + t_inf)
        methods["nbe"] = e
        log(f"NBE: {e}")

    # -- NPE, alone and through the workflow (NLE models the NPE's learned summaries)
    npe = None
    if wanted & {"npe", "workflow", "nle"}:
        t0 = time.perf_counter()
        npe = af.fit_posterior(k_npe, model, bank=bank, num_validation=n_val, train_config=cfg, progress=progress)
        t_npe_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        d_npe = np.asarray(jax.block_until_ready(npe.sample(jax.random.fold_in(k_npe, 1), ys, NUM_DRAWS)))
        t_inf = time.perf_counter() - t0
        acc = judge_fields(k_acc, d_npe, np.full(n_test, float(NUM_DRAWS)), ref_theta)
        e = {"label": "NPE (forward KL), CNN summary + spline flow", "train_s": t_npe_train, "inference_s": t_inf,
             "accurate_vs_exact": float(np.mean(acc)), **metrics("npe", ell_true, draws=to_ell(d_npe[..., 0]))}
        speed(e, t_npe_train + t_inf)
        methods["npe"] = e
        log(f"NPE: {e}")

    if "workflow" in wanted:
        t0 = time.perf_counter()
        res = af.run_workflow(k_wf, model, npe, ys, progress=progress)
        t_wf = time.perf_counter() - t0
        acc = judge_fields(k_acc, res.draws, workflow_ess(res), ref_theta)
        e = {"label": "NPE + the workflow (defaults)", "train_s": t_npe_train, "inference_s": t_wf,
             "routes": res.route_counts(), "stage_time_s": _stage_times(res),
             "accurate_vs_exact": float(np.mean(acc)),
             **metrics("npe_workflow", ell_true, draws=to_ell(res.draws[..., 0]))}
        speed(e, t_npe_train + t_wf)
        methods["npe_workflow"] = e
        log(f"NPE + workflow: {e}")

    # -- NLE and NRE through the batched (surrogate) MCMC stage
    for name, fit, k_fit in (("nle", _fit_nle, k_nle), ("nre", _fit_nre, k_nre)):
        if name not in wanted:
            continue
        t0 = time.perf_counter()
        est = fit(k_fit, model, bank, n_val, cfg, progress, npe)
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = af.run_workflow(jax.random.fold_in(k_fit, 1), model, est, ys, progress=progress)
        t_inf = time.perf_counter() - t0
        acc = judge_fields(k_acc, res.draws, workflow_ess(res), ref_theta)
        e = {"label": est_label(name), "train_s": t_train, "inference_s": t_inf, "routes": res.route_counts(),
             "stage_time_s": _stage_times(res), "accurate_vs_exact": float(np.mean(acc)),
             **metrics(name, ell_true, draws=to_ell(res.draws[..., 0]))}
        if name == "nle":
            e["train_s_including_npe_summary"] = t_train + t_npe_train
        speed(e, t_train + t_inf)
        if n_loop:
            # the surrogate sampler alone, one field per call (compiled once: the observation is an
            # argument), against the same stage's time on the fields it sampled in the batched run
            cfg_wf = af.WorkflowConfig()
            sampler = af.workflow.surrogate_mcmc_stage(est, model, mcmc.widen_batches(cfg_wf.ladder()),
                                                       num_output_draws=cfg_wf.num_draws, progress=False)
            n_sur = int(np.sum(res.table()["posterior"].to_numpy(object) == est.surrogate_label))
            t_sur = float(res.stage_time_s.get("mcmc", t_inf))
            t0 = time.perf_counter()
            for i in range(n_loop):
                jax.block_until_ready(af.run_workflow(jax.random.fold_in(k_fit, 2), model, est, ys[i:i + 1],
                                                      stages=(sampler,), progress=False).draws)
            per_loop = (time.perf_counter() - t0) / n_loop
            e["per_field_loop"] = {"label": f"the surrogate MCMC stage, one field per call, mean of {n_loop} "
                                            f"fields (scaled to the {n_sur} fields it sampled batched)",
                                   "per_field_s": per_loop, "scaled_total_s": per_loop * n_sur,
                                   "batched_stage_s": t_sur,
                                   "batched_speedup": per_loop * n_sur / max(t_sur, 1e-9)}
        methods[name] = e
        log(f"{name}: {e}")
    finish(out, methods, q)


def finish(out, methods, quick):
    out["goals"] = goals(methods)
    log(f"goals: {out['goals']}")
    path = write_result("spatial_quick" if quick else "spatial", out)
    log(f"wrote {path}")


def goals(methods):
    """The issue's goals, against the exact posterior (what MCMC approximates): RMSPE and MIS90
    within 5%, COV90 in [87, 93]%, NPE + workflow accurate on >= 99% of fields, every amortized
    method >= 100x faster than per-field MCMC (training included), batched surrogate MCMC >= 10x
    faster than a per-field loop of the same stage."""
    ex = methods["exact"]
    out = {}
    for k in ("nbe", "npe", "npe_workflow", "nle", "nre"):
        e = methods.get(k)
        if not e:
            continue
        out[f"{k}: RMSPE within 5% of exact"] = e["rmspe"] <= 1.05 * ex["rmspe"]
        out[f"{k}: MIS90 within 5% of exact"] = e["mis90"] <= 1.05 * ex["mis90"]
        out[f"{k}: COV90 in [87, 93]%"] = 0.87 <= e["cov90"] <= 0.93
        if "speedup_vs_per_field_mcmc" in e:
            out[f"{k}: >= 100x faster than per-field MCMC"] = e["speedup_vs_per_field_mcmc"] >= 100
        if "per_field_loop" in e:
            out[f"{k}: batched >= 10x faster than a per-field loop"] = e["per_field_loop"]["batched_speedup"] >= 10
    if "npe_workflow" in methods:
        out["npe_workflow: >= 99% accurate vs exact"] = methods["npe_workflow"]["accurate_vs_exact"] >= 0.99
    return {k: bool(v) for k, v in out.items()}


def est_label(name):
    return {"nle": "NLE on the NPE's learned summaries + batched MCMC (surrogate likelihood)",
            "nre": "NRE (binary classifier, CNN summary) + batched MCMC"}[name]


def _fit_nle(key, model, bank, n_val, cfg, progress, npe):
    """NLE of the NPE's learned summaries: a flow over 16 numbers instead of 256 pixels."""
    from amortflow.estimators.likelihood import fit_likelihood

    return fit_likelihood(key, model, summary_fn=npe.summary_function(), bank=bank, num_validation=n_val,
                          train_config=cfg, progress=progress)


def _fit_nre(key, model, bank, n_val, cfg, progress, npe):
    from amortflow.estimators.ratio import fit_ratio

    return fit_ratio(key, model, bank=bank, num_validation=n_val, train_config=cfg, progress=progress)


def _stage_times(res):
    return {**{k: float(v) for k, v in res.stage_time_s.items()},
            **{f"mcmc/{k}": float(v) for k, v in res.mcmc_stage_time_s.items()}}


if __name__ == "__main__":
    main()
