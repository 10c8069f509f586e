"""make bench-defaults: the library's defaults, end to end, on four models of different kinds.

    python benchmarks/bench_defaults.py           # full size (make bench-defaults)
    python benchmarks/bench_defaults.py --quick   # a few datasets, short training (make bench)

DEFAULTS ONLY. Per model, exactly what a user types:

    est = af.fit_posterior(key, model)                                     # no other argument
    res = af.run_workflow(key, model, est, ys, af.WorkflowConfig())         # via workflow_sbc

(``--quick`` shortens training to ``QUICK_TRAIN_STEPS`` optimizer steps -- every other training
default kept -- so its accuracy is indicative only; the full run is the defaults result.)

Models: ``af.models.gev()`` (the paper's GEV, built in) and three numpyro models written as a
user would and brought in with ``af.from_numpyro`` (``benchmarks/user_models.py``): a
negative-binomial regression with covariates (5 parameters), a non-centered hierarchical
normal model with 8 groups (11 parameters), and right-censored Weibull survival (4 parameters).

What is measured, per model, in this one run:

* **Datasets**: ``NUM_SIM`` prior-predictive datasets ``(theta, y)`` from the model's own prior
  (in distribution), drawn with a fixed seed; the workflow runs on the first ``--num-sbc`` of
  them in one batched ``run_workflow`` call (``af.diagnostics.workflow_sbc``), and the first
  ``--num-datasets`` of those are the test datasets checked against a reference (a quick run's
  datasets are a subset of the full run's).
* **Reference posteriors**: numpyro NUTS per test dataset on the numpyro model itself
  (GEV: ``bench_gev.numpyro_gev_model``, started from prior-SIR points because its support
  depends on the data), in fresh processes of at most 10 datasets, cached per dataset under
  ``--cache-dir``. Excluded (and counted): max R-hat >= ``REF_MAX_RHAT``, min bulk ESS <
  ``REF_MIN_ESS``, or more divergent transitions than ``REF_MAX_DIV_FRAC``.
* **Accuracy** (:data:`CRITERION`), by route; **route counts**; **fraction accepted without
  MCMC** (routes amortized / psis / refined); **time per stage** and total incl. training.
* **Routed-workflow SBC**: ranks of every dataset's final draws (whatever its route) and of the
  amortized draws alone; ECDF simultaneous-band test per parameter, family-wise decision
  (Bonferroni over parameters); failed datasets counted.

Goals (the issue "Trustworthy by default"; reported, never tuned for): >= 95% of test datasets
accurate on every model, >= 50% accepted without MCMC on every model, SBC of the final draws
passes on every model.

Results: ``benchmarks/results/defaults.json`` (``defaults_quick.json``), SBC figures next to it
(``defaults[_quick]_sbc_<model>.png``), ``benchmarks/README.md`` regenerated.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import sys
import time
import zlib

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import numpyro_nuts_per_dataset, quantiles, write_result  # noqa: E402

import amortflow as af  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, "cache")
NUM_SIM = 1000  # datasets simulated per model; runs use the first --num-sbc of them
QUICK_TRAIN_STEPS = 800
MEAN_TOL, SD_LO, SD_HI = 0.2, 0.8, 1.25
REF_MAX_RHAT, REF_MIN_ESS = 1.01, 400.0
REF_MAX_DIV_FRAC = 0.02  # GEV: 0.10 (divergences there are mostly trajectories leaving the
# data-dependent support, bench_gev.py)
NO_MCMC_ROUTES = ("amortized", "psis", "refined")
MODEL_ORDER = ("gev", "negbin_regression", "hierarchical_normal", "weibull_survival")

CRITERION = (f"a test dataset is accurate if its final draws are finite and, for every parameter (constrained "
             f"scale), |posterior mean - reference mean| < {MEAN_TOL} reference sd and posterior sd / reference "
             f"sd in [{SD_LO}, {SD_HI}]; the reference is numpyro NUTS on the numpyro model; failed routes count "
             f"as inaccurate; datasets whose reference did not converge (max R-hat >= {REF_MAX_RHAT}, min bulk "
             f"ESS < {REF_MIN_ESS:g}, or too many divergences) are excluded and counted")


def log(msg):
    print(f"[bench-defaults {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- models
def build_models(names):
    """name -> dict(model, module/ref fn of the numpyro reference, init fn, divergence limit)."""
    import user_models

    out = {}
    user = user_models.models()
    for name in names:
        if name == "gev":
            out[name] = {"model": af.models.gev(), "module": "bench_gev", "ref": "numpyro_gev_model",
                         "init_fn": "numpyro_gev_init", "max_div_frac": 0.10, "kind": "built-in (af.models.gev())"}
        elif name in user:
            m, ref = user[name]
            out[name] = {"model": m, "module": "user_models", "ref": ref, "init_fn": None,
                         "max_div_frac": REF_MAX_DIV_FRAC, "kind": "numpyro via af.from_numpyro"}
        else:
            raise SystemExit(f"unknown model {name!r}; choose from {MODEL_ORDER}")
    return out


def flat_constrained(model, constrained: dict) -> np.ndarray:
    """``{site: [n, S, ...]}`` -> ``[n, S, d]`` in ``model.param_names`` order (``site[i]`` is the
    i-th entry of the flattened site)."""
    cols = []
    for name in model.param_names:
        site, _, rest = name.partition("[")
        v = np.asarray(constrained[site], np.float64)
        n, s = v.shape[:2]
        v = v.reshape(n, s, -1)
        cols.append(v[:, :, int(rest[:-1]) if rest else 0])
    return np.stack(cols, -1)


def constrain_draws(model, draws):
    """Unconstrained ``[n, S, d]`` -> constrained ``[n, S, d]`` (NaN rows stay NaN)."""
    draws = np.asarray(draws)
    bad = ~np.all(np.isfinite(draws), axis=(1, 2))
    fn = jax.jit(jax.vmap(jax.vmap(model.constrain)))
    out = flat_constrained(model, fn(jnp.asarray(np.nan_to_num(draws), jnp.float32)))
    out[bad] = np.nan
    return out


# ----------------------------------------------------------------------------- reference
def reference_settings(quick: bool) -> dict:
    if quick:
        return {"num_chains": 2, "num_warmup": 400, "num_samples": 800, "target_accept": 0.9}
    return {"num_chains": 4, "num_warmup": 1000, "num_samples": 1000, "target_accept": 0.9}


def _ref_path(cache_dir, name, model, settings, seed, i, y):
    tag = hashlib.sha1(repr((name, model.fingerprint(), sorted(settings.items()), seed, "v1")).encode()).hexdigest()[:10]
    yh = hashlib.sha1(np.ascontiguousarray(y, np.float32).tobytes()).hexdigest()[:10]
    return os.path.join(cache_dir, f"defaults_ref_{name}_{tag}_{i:04d}_{yh}.npz")


def references(spec, name, ys, settings, seed, cache_dir, chunk):
    """numpyro NUTS per dataset (cached per dataset): ``(draws [n, C*N, d] constrained, info)``."""
    model = spec["model"]
    n = ys.shape[0]
    paths = [_ref_path(cache_dir, name, model, settings, seed, i, ys[i]) for i in range(n)]
    todo = [i for i in range(n) if not os.path.exists(paths[i])]
    wall = 0.0
    if todo:
        init = spec.get("init")
        if init is not None:
            init = np.asarray(init)[todo]
        elif spec["init_fn"]:
            from bench_gev import prior_sir_init

            init, _ = prior_sir_init(jax.random.PRNGKey(seed + 3), model, jnp.asarray(ys[todo]), settings["num_chains"])
            init = np.asarray(init)
        log(f"  reference: numpyro NUTS on {len(todo)} datasets ({n - len(todo)} cached), "
            f"{settings['num_chains']} chains x ({settings['num_warmup']} + {settings['num_samples']})")
        t0 = time.perf_counter()
        out = numpyro_nuts_per_dataset(ys[todo], module=spec["module"], model=spec["ref"], init=init,
                                       init_fn=spec["init_fn"], chunk=min(chunk, 10), seed=seed + 7, **settings)
        wall = time.perf_counter() - t0
        os.makedirs(cache_dir, exist_ok=True)
        for j, i in enumerate(todo):
            samp = {k: v[j] for k, v in out["samples"].items()}  # site -> [C, N, ...]
            tmp = paths[i] + ".tmp.npz"
            np.savez(tmp, time_s=out["times_s"][j], divergences=out["divergences"][j],
                     **{"site_" + k: v for k, v in samp.items()})
            os.replace(tmp, paths[i])
    chains, times, divs = [], [], []
    for p in paths:
        with np.load(p) as z:
            sites = {k[5:]: z[k][None] for k in z.files if k.startswith("site_")}  # [1, C, N, ...]
            c, s = next(iter(sites.values())).shape[1:3]
            flat = flat_constrained(model, {k: v.reshape((c, s) + v.shape[3:]) for k, v in sites.items()})
            chains.append(flat)  # [C, N, d]
            times.append(float(z["time_s"]))
            divs.append(int(z["divergences"]))
    chains = np.stack(chains)  # [n, C, N, d]
    rhat = np.stack([np.asarray(af.diagnostics.rhat(jnp.asarray(c))) for c in chains])
    ess = np.stack([np.asarray(af.diagnostics.ess_bulk(jnp.asarray(c))) for c in chains])
    total = chains.shape[1] * chains.shape[2]
    divs = np.asarray(divs)
    ok = (np.all(np.isfinite(chains), axis=(1, 2, 3)) & (np.nanmax(rhat, 1) < REF_MAX_RHAT)
          & (np.nanmin(ess, 1) >= REF_MIN_ESS) & (divs <= spec["max_div_frac"] * total))
    info = {"settings": settings, "num_computed_this_run": len(todo), "wall_s_computed_this_run": wall,
            "seconds_per_dataset": quantiles(times), "num_converged": int(ok.sum()),
            "num_not_converged": int((~ok).sum()), "not_converged": np.nonzero(~ok)[0].tolist()[:50],
            "max_rhat": quantiles(np.nanmax(rhat, 1)), "min_ess_bulk": quantiles(np.nanmin(ess, 1)),
            "divergences": quantiles(divs), "max_divergence_fraction": spec["max_div_frac"]}
    return chains.reshape(n, total, -1), ok, info


# ----------------------------------------------------------------------------- accuracy
def judge(draws_c, ref_c):
    """Per dataset: accurate (bool), mean error in reference sds ``[n, d]``, sd ratio ``[n, d]``."""
    ref_sd = np.maximum(ref_c.std(1, ddof=1), 1e-12)
    err = (draws_c.mean(1) - ref_c.mean(1)) / ref_sd
    ratio = draws_c.std(1, ddof=1) / ref_sd
    finite = np.all(np.isfinite(draws_c), axis=(1, 2))
    with np.errstate(invalid="ignore"):
        ok = finite & np.all(np.abs(err) < MEAN_TOL, 1) & np.all((ratio >= SD_LO) & (ratio <= SD_HI), 1)
    return ok, err, ratio


# ----------------------------------------------------------------------------- one model
def run_model(name, spec, args, quick):
    model = spec["model"]
    seed = args.seed + zlib.crc32(name.encode()) % 10_000
    n_sbc = max(args.num_sbc, args.num_datasets)
    out = {"kind": spec["kind"], "param_names": list(model.param_names), "dim": model.dim,
           "obs_shape": list(model.obs_shape), "seed": seed}
    log(f"{name}: {model.dim} parameters {model.param_names}, observation {model.obs_shape}")
    theta_all, ys_all = jax.jit(model.sample_prior_predictive, static_argnums=1)(jax.random.PRNGKey(seed), NUM_SIM)
    theta_all, ys_all = np.asarray(theta_all)[:n_sbc], np.asarray(ys_all)[:n_sbc]
    out["data"] = (f"model.sample_prior_predictive(PRNGKey({seed}), {NUM_SIM})[:{n_sbc}]: the workflow and SBC run "
                   f"on all {n_sbc}, the first {args.num_datasets} are the test datasets")

    # ---- training: the defaults
    t0 = time.perf_counter()
    if quick:
        tc = dataclasses.replace(af.TrainConfig(), num_steps=QUICK_TRAIN_STEPS)
        est = af.fit_posterior(jax.random.PRNGKey(seed + 1), model, train_config=tc)
        how = f"af.fit_posterior(key, model, train_config=replace(TrainConfig(), num_steps={QUICK_TRAIN_STEPS})) [quick]"
    else:
        est = af.fit_posterior(jax.random.PRNGKey(seed + 1), model)
        how = "af.fit_posterior(key, model)"
    jax.block_until_ready(est.params)
    t_train = time.perf_counter() - t0
    hist = getattr(est, "history", {}) or {}
    out["training"] = {"wall_s": t_train, "call": how, "best_val_loss": hist.get("best_val_loss")}
    log(f"  training ({how}): {t_train:.1f} s")

    # ---- the workflow (defaults) on all datasets, and the SBC of its final draws
    cfg = af.WorkflowConfig()
    t0 = time.perf_counter()
    sbc = af.diagnostics.workflow_sbc(jax.random.PRNGKey(seed + 2), model, est, config=cfg,
                                      data=(theta_all, ys_all), progress=False)
    t_all = time.perf_counter() - t0
    res = sbc.result
    t_wf = res.total_time_s
    rc = res.route_counts()
    no_mcmc = float(np.isin(res.route, NO_MCMC_ROUTES).mean())
    tests = sbc.tests()
    out["workflow"] = {
        "call": "af.run_workflow(key, model, est, ys, af.WorkflowConfig())", "num_datasets": n_sbc,
        "wall_s": t_wf, "route_counts": rc, "fraction_without_mcmc": no_mcmc,
        "stage_time_s": res.stage_time_s, "stage_counts": res.stage_counts,
        "mcmc_stage_time_s": res.mcmc_stage_time_s, "seconds_per_dataset": t_wf / n_sbc,
        "failed_reasons": [str(r) for r in res.reason[res.route == "failed"]][:20],
        "khat": quantiles(res.diagnostics["khat"]), "psis_ess": quantiles(res.diagnostics["psis_ess"]),
        "ood_flagged": int(np.sum(res.diagnostics["ood_flag"])),
    }
    out["total_s"] = t_train + t_wf
    out["sbc"] = {**tests, "num_draws": sbc.num_draws, "num_amortized_draws": sbc.num_amortized_draws,
                  "amortized_only_draws_s": t_all - t_wf}
    log(f"  workflow on {n_sbc} datasets: {t_wf:.1f} s; routes {rc}; without MCMC {100 * no_mcmc:.1f}%")
    log("  " + sbc.summary().replace("\n", "\n  "))
    if not args.skip_figures:
        from amortflow.plots import plot_workflow_sbc

        fig = plot_workflow_sbc(sbc, params=list(model.param_names)[:6])
        path = os.path.join(HERE, "results", f"{args.name}_sbc_{name}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fig.savefig(path, dpi=80)
        out["sbc"]["figure"] = os.path.relpath(path, HERE)

    # ---- references and accuracy on the test datasets
    acc = None
    if not args.skip_accuracy and args.num_datasets > 0:
        n = args.num_datasets
        ref_c, ref_ok, ref_info = references(spec, name, ys_all[:n], reference_settings(quick), seed,
                                             args.cache_dir, args.numpyro_chunk)
        out["reference"] = ref_info
        draws_c = constrain_draws(model, res.draws[:n])
        ok, err, ratio = judge(draws_c, ref_c)
        routes = res.route[:n]
        ev = ref_ok
        n_ev = int(ev.sum())
        acc = {"criterion": CRITERION, "num_test_datasets": n, "num_evaluable": n_ev,
               "num_reference_not_converged": int((~ev).sum()),
               "num_accurate": int((ok & ev).sum()),
               "fraction_accurate": float((ok & ev).sum() / max(n_ev, 1)) if n_ev else None,
               "num_failed_among_evaluable": int((ev & (routes == "failed")).sum()),
               "route_counts_test": {r: int((routes == r).sum()) for r in rc},
               "by_route": {r: {"evaluable": int((ev & (routes == r)).sum()),
                                "accurate": int((ok & ev & (routes == r)).sum())} for r in rc},
               "max_abs_mean_error_sd": quantiles(np.nanmax(np.abs(err[ev]), 1)) if n_ev else {},
               "sd_ratio_min": quantiles(np.nanmin(ratio[ev], 1)) if n_ev else {},
               "sd_ratio_max": quantiles(np.nanmax(ratio[ev], 1)) if n_ev else {},
               "inaccurate": [{"dataset": int(i), "route": str(routes[i]),
                               "worst_param": str(model.param_names[int(np.nanargmax(np.abs(err[i])))])
                               if np.isfinite(err[i]).any() else None,
                               "max_abs_mean_error_sd": float(np.nanmax(np.abs(err[i]))) if np.isfinite(err[i]).any() else None,
                               "sd_ratio_range": [float(np.nanmin(ratio[i])), float(np.nanmax(ratio[i]))]
                               if np.isfinite(ratio[i]).any() else None}
                              for i in np.nonzero(ev & ~ok)[0][:20]]}
        log(f"  accuracy: {acc['num_accurate']}/{n_ev} accurate ({n - n_ev} references excluded); "
            f"by route {acc['by_route']}")
        out["accuracy"] = acc
    fa = None if acc is None else acc["fraction_accurate"]
    out["goals"] = {"accurate_ge_95pct": None if fa is None else fa >= 0.95,
                    "without_mcmc_ge_50pct": no_mcmc >= 0.5,
                    "sbc_final_passes": tests["final"]["passed"]}
    log(f"  goals: {out['goals']}")
    return out


# ----------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"2 test datasets and 100 SBC datasets per model, {QUICK_TRAIN_STEPS} training steps, "
                         "short references")
    ap.add_argument("--models", default=",".join(MODEL_ORDER), help="comma-separated subset of " + ",".join(MODEL_ORDER))
    ap.add_argument("--num-datasets", type=int, default=None, help="test datasets with a reference, per model (100)")
    ap.add_argument("--num-sbc", type=int, default=None, help=f"SBC / workflow datasets per model (1000, at most {NUM_SIM})")
    ap.add_argument("--numpyro-chunk", type=int, default=10, help="datasets per fresh numpyro process (<= 10)")
    ap.add_argument("--seed", type=int, default=917)
    ap.add_argument("--cache-dir", default=CACHE)
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-figures", action="store_true")
    ap.add_argument("--name", default=None, help="result name (default defaults / defaults_quick)")
    args = ap.parse_args()
    quick = args.quick
    args.num_datasets = args.num_datasets if args.num_datasets is not None else (2 if quick else 100)
    args.num_sbc = min(args.num_sbc if args.num_sbc is not None else (100 if quick else 1000), NUM_SIM)
    if args.num_datasets > args.num_sbc:
        raise SystemExit("--num-datasets must not exceed --num-sbc (the test datasets are the first SBC datasets)")
    args.name = args.name or ("defaults_quick" if quick else "defaults")
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    t_bench = time.perf_counter()
    log(f"models {names}; {args.num_datasets} test / {args.num_sbc} SBC datasets each; backend "
        f"{jax.default_backend()}, {len(jax.devices())} device(s), load avg {os.getloadavg()[0]:.1f}")
    specs = build_models(names)
    per_model = {}
    for name in names:
        per_model[name] = run_model(name, specs[name], args, quick)
    goals = {
        "accurate_ge_95pct_every_model": (None if any(m["goals"]["accurate_ge_95pct"] is None for m in per_model.values())
                                          else all(m["goals"]["accurate_ge_95pct"] for m in per_model.values())),
        "without_mcmc_ge_50pct_every_model": all(m["goals"]["without_mcmc_ge_50pct"] for m in per_model.values()),
        "sbc_passes_every_model": all(bool(m["goals"]["sbc_final_passes"]) for m in per_model.values()),
    }
    result = {"quick": quick, "seed": args.seed, "num_test_datasets": args.num_datasets,
              "num_sbc_datasets": args.num_sbc, "models": per_model, "goals": goals,
              "criterion": CRITERION,
              "goal_notes": ("defaults only: af.fit_posterior(key, model) and af.WorkflowConfig(); quick mode trains "
                             f"{QUICK_TRAIN_STEPS} steps and uses 2 test / 100 SBC datasets and shorter references, "
                             "so its goals are indicative only"),
              "benchmark_wall_s": time.perf_counter() - t_bench}
    log(f"goals: {goals}; benchmark {result['benchmark_wall_s']:.0f} s")
    write_result(args.name, result)


if __name__ == "__main__":
    main()
