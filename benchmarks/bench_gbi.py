"""make bench-gbi: amortized generalized Bayes on the temperature grid of Sun, Nicholls & Lee.

    python benchmarks/bench_gbi.py            # 200 datasets x 9 temperatures per model (make bench-gbi)
    python benchmarks/bench_gbi.py --quick    # 20 datasets, short training (a few minutes)

Models: the conjugate normal mean (2-d, 10 observations; power posterior analytic), GEV (the
paper's prior, test data from that prior; reference: amortflow batched NUTS on the tempered density, cached) and the
misspecification example (``af.models.misspecified_normal``: the normal-mean model fitted to
contaminated data; power posterior analytic). For each model, all in this one run:

* **Training** (wall time): ``af.fit_posterior(key, model, tempering=af.Tempering())`` -- the
  default objective and range [0.05, 2].
* **Pairs**: every test dataset at every beta of ``BETAS`` (K x 9 (dataset, beta) pairs).
* **Amortized**: ``est.sample`` for all pairs in one call; accuracy vs the reference per beta.
* **Workflow**: ``af.run_workflow`` on all pairs (beta per pair): routes and accuracy per beta.
* **Baselines**: numpyro NUTS per (dataset, beta) pair (4 chains x 1000 + 1000, fresh processes)
  on ``--num-numpyro`` pairs, scaled to all pairs and labelled so; for GEV also amortflow's
  batched NUTS reference run (its wall time, compile included).
* **Accuracy** as in bench-gev (:data:`bench_gev.CRITERION`): marginal TV and mean error against
  the reference, with its noise floor. Analytic references are 4000 exact draws.
* **Choosing beta** (misspecified example): coverage of the true mean by 90% intervals vs beta,
  and at the beta chosen per dataset by generalized posterior calibration and by information
  matching.

Results: ``benchmarks/results/gbi.json`` (``gbi_quick.json``); the figures are in notebook 04.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import numpyro_nuts_per_dataset, quantiles, write_result  # noqa: E402

import amortflow as af  # noqa: E402
from amortflow import mcmc  # noqa: E402
from amortflow.diagnostics import accuracy_noise_floor  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, "cache")
RESULTS = os.path.join(HERE, "results")
BETAS = (0.1, 0.3, 0.5, 0.7, 0.9, 1.0, 1.1, 1.3, 1.5)
REF_DRAWS = 4000


def log(msg):
    print(f"[bench-gbi {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- numpyro baselines
def numpyro_tempered_normal(y_aug):
    """Conjugate normal mean (2-d, unit prior and noise sds), likelihood ^ beta; ``y_aug`` is the
    flattened data followed by beta (the child passes one array per dataset)."""
    import numpyro
    import numpyro.distributions as dist

    y, beta = y_aug[:-1].reshape(-1, 2), y_aug[-1]
    theta = numpyro.sample("theta", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    numpyro.factor("loglik", beta * jnp.sum(dist.Normal(theta, 1.0).log_prob(y)))


def numpyro_tempered_gev(y_aug):
    """bench-gev's numpyro GEV model with the likelihood raised to ``beta = y_aug[-1]``."""
    import numpyro
    import numpyro.distributions as dist

    from amortflow.models.gev import gev_logpdf
    from bench_gev import GEV_PRIOR as p

    y, beta = y_aug[:-1], y_aug[-1]
    mu = numpyro.sample("mu", dist.Normal(p["mu_loc"], p["mu_scale"]))
    sigma = numpyro.sample("sigma", dist.HalfNormal(p["sigma_scale"]))
    xi = numpyro.sample("xi", dist.TruncatedNormal(0.0, p["xi_scale"], low=-p["xi_bound"], high=p["xi_bound"]))
    numpyro.factor("loglik", beta * jnp.sum(gev_logpdf(y, mu, sigma, xi)))


def numpyro_pairs(ys, beta, module_fn, n):
    """numpyro NUTS on the first ``n`` pairs; mean seconds per pair."""
    aug = np.concatenate([np.asarray(ys[:n]).reshape(n, -1), np.asarray(beta[:n])[:, None]], 1).astype(np.float32)
    out = numpyro_nuts_per_dataset(aug, module="bench_gbi", model=module_fn, chunk=min(n, 10), seed=3)
    return {"num_pairs_timed": n, "seconds_per_pair": float(np.mean(out["times_s"])), "times_s": out["times_s"],
            "settings": "numpyro NUTS, 4 chains x 1000 warmup + 1000 draws, sequential chains, fresh process "
                        "per 10 pairs"}


# ----------------------------------------------------------------------------- references
def analytic_reference(key, model, ys, beta):
    """Exact power-posterior draws of the conjugate normal mean: ``[P, REF_DRAWS, d]``."""
    from amortflow.models.gaussian import gaussian_mean_posterior

    m, s = (np.asarray(a) for a in gaussian_mean_posterior(model, ys, np.asarray(beta)[:, None]))
    z = np.asarray(jax.random.normal(key, (len(beta), REF_DRAWS, m.shape[1])))
    draws = (m[:, None] + s[:, None] * z).astype(np.float32)
    return {"draws": draws, "ess": np.full(m.shape, float(REF_DRAWS)), "ok": np.ones(len(beta), bool),
            "wall_s": 0.0}


def nuts_reference(key, model, ys, beta, cache_dir, block=None):
    """amortflow batched NUTS (4 chains x (1000 + 1000), target acceptance 0.95) on the tempered
    density, started from prior draws weighted by the tempered likelihood; cached per block."""
    from bench_gev import REF_MAX_DIV_FRAC, REF_MIN_ESS

    cfg = mcmc.nuts.auto(num_warmup=1000, num_samples=1000, target_acceptance_rate=0.95)
    outs, t_total = [], 0.0
    block = block or (len(beta) if len(beta) <= 300 else 150)  # equal blocks: one compilation
    for s0 in range(0, len(beta), block):
        yb, bb = np.asarray(ys[s0:s0 + block], np.float32), np.asarray(beta[s0:s0 + block], np.float32)
        h = hashlib.sha1(yb.tobytes() + bb.tobytes() + repr(cfg).encode() + b"gbi-v1").hexdigest()[:16]
        path = os.path.join(cache_dir, f"gbi_ref_{model.name}_{h}.npz")
        if os.path.exists(path):
            with np.load(path, allow_pickle=False) as z:
                outs.append({k: z[k] for k in z.files})
            continue
        t0 = time.perf_counter()
        obs = af.observe(yb, bb)
        kb = jax.random.fold_in(key, s0)
        cand = jax.vmap(lambda k: model.sample_prior(k, 256))(jax.random.split(kb, len(bb)))
        ll = jax.vmap(lambda th, y: jax.vmap(lambda t: model.log_likelihood(t, y))(th))(cand, jnp.asarray(yb))
        init, _ = mcmc.initialize_positions(jax.random.fold_in(kb, 1), model, obs, cand, jnp.asarray(bb)[:, None] * ll,
                                            cfg.num_chains)
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, 2), i))(jnp.arange(s0, s0 + len(bb)))
        res = mcmc.run_sampler_keys(keys, model, obs, init, cfg, layout=mcmc.Layout(bucket_size=len(bb)))
        n_draws = res.draws.shape[1]
        ok = (np.asarray(res.converged, bool) & np.all(np.isfinite(res.draws), axis=(1, 2))
              & (np.nanmin(res.ess_bulk, axis=1) >= REF_MIN_ESS) & (np.asarray(res.divergences) <= REF_MAX_DIV_FRAC * n_draws))
        out = {"draws": np.asarray(res.draws, np.float32), "ess": np.asarray(res.ess_bulk), "ok": ok,
               "wall_s": np.float64(time.perf_counter() - t0)}
        os.makedirs(cache_dir, exist_ok=True)
        np.savez(path + ".tmp.npz", **out)
        os.replace(path + ".tmp.npz", path)
        outs.append(out)
        t_total += float(out["wall_s"])
    ref = {k: np.concatenate([o[k] for o in outs]) for k in ("draws", "ess", "ok")}
    ref["wall_s"] = t_total
    ref["wall_s_all_blocks"] = float(sum(float(o["wall_s"]) for o in outs))
    return ref


# ----------------------------------------------------------------------------- accuracy
def judge_pairs(key, draws, ess_draws, ref):
    """bench-gev's accuracy decision for every pair (reference draws subsampled to 4000)."""
    from bench_gev import accuracy, judge, subsample

    sub = subsample(key, ref["draws"], REF_DRAWS)
    floor = accuracy_noise_floor(jax.random.fold_in(key, 1), jnp.asarray(sub))
    acc = np.zeros(len(draws), bool)
    idx = np.nonzero(ref["ok"] & np.all(np.isfinite(draws), axis=(1, 2)))[0]
    if idx.size:
        metrics = accuracy(draws[idx], sub[idx], "accuracy")
        j = judge(draws[idx], ref["draws"][idx], ref["ess"][idx], metrics, np.asarray(floor["marginal_tv"])[idx],
                  ess_draws[idx])
        acc[idx] = j["accurate"]
    return acc


def workflow_ess(res):
    """Effective draws per dataset by route: S amortized, the importance sampling ESS for psis /
    refined, the minimum bulk ESS for MCMC routes (works for runs without a PSIS stage too)."""
    s, diag = res.draws.shape[1], res.diagnostics
    nan = np.full(len(res.route), np.nan)
    return np.select([res.route == "amortized", res.route == "psis", res.route == "refined"],
                     [s, np.minimum(s, diag.get("psis_ess", nan)), np.minimum(s, diag.get("refine_ess", nan))],
                     np.minimum(s, diag.get("ess_bulk_min", nan)))


def per_beta(values, beta, ok):
    """``{beta: fraction of evaluable pairs}``."""
    return {f"{b:g}": (float(values[(beta == np.float32(b)) & ok].mean()) if ((beta == np.float32(b)) & ok).any() else None)
            for b in BETAS}


# ----------------------------------------------------------------------------- one model
def run_model(name, model, ys, args, key, true_theta=None):
    k_train, k_amort, k_wf, k_ref, k_acc = jax.random.split(key, 5)
    n = ys.shape[0]
    out = {"model": model.name, "num_datasets": n, "betas": list(BETAS), "num_pairs": n * len(BETAS)}
    cfg = af.TrainConfig(num_steps=args.train_steps) if args.train_steps else None
    t0 = time.perf_counter()
    est = af.fit_posterior(k_train, model, tempering=af.Tempering(), train_config=cfg, progress=not args.no_progress)
    t_train = time.perf_counter() - t0
    out["training"] = {"wall_s": t_train, "steps": int(est.history["step"][-1]),
                       "tempering": est.extra["tempering"], "best_val_loss": est.history["best_val_loss"]}
    log(f"{name}: trained in {t_train:.0f} s")
    yp = np.repeat(ys, len(BETAS), axis=0)
    beta = np.tile(np.asarray(BETAS, np.float32), n)
    obs = af.observe(yp, beta)
    t0 = time.perf_counter()
    amort = np.asarray(jax.block_until_ready(est.sample(k_amort, obs, 1000)))
    t_amort = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = af.run_workflow(k_wf, model, est, obs, progress=not args.no_progress)
    t_wf = time.perf_counter() - t0
    log(f"{name}: workflow on {len(beta)} pairs in {t_wf:.0f} s; routes {res.route_counts()}")
    ref = (analytic_reference(k_ref, model, yp, beta) if name != "gev"
           else nuts_reference(k_ref, model, yp, beta, args.cache_dir))
    acc_amort = judge_pairs(k_acc, amort, np.full(len(beta), 1000.0), ref)
    acc_wf = judge_pairs(k_acc, res.draws, workflow_ess(res), ref)
    ok = ref["ok"]
    out.update({
        "amortized": {"wall_s": t_amort, "fraction_accurate_per_beta": per_beta(acc_amort, beta, ok),
                      "fraction_accurate": float(acc_amort[ok].mean())},
        "workflow": {"wall_s": t_wf, "routes": res.route_counts(),
                     "routes_per_beta": {f"{b:g}": {r: int(np.sum((res.route == r) & (beta == np.float32(b))))
                                                    for r in res.routes} for b in BETAS},
                     "fraction_accurate_per_beta": per_beta(acc_wf, beta, ok),
                     "fraction_accurate": float(acc_wf[ok].mean()),
                     "num_failed": int(np.sum(res.route == "failed")),
                     "stage_wall_s": {k: float(v) for k, v in res.stage_time_s.items()},
                     "stage_counts": dict(res.stage_counts)},
        "reference": {"kind": "analytic" if name != "gev" else "amortflow batched NUTS 4 x (1000 + 1000), accept 0.95",
                      "num_evaluable": int(ok.sum()), "wall_s_computed_this_run": float(ref["wall_s"]),
                      "wall_s_all_blocks": float(ref.get("wall_s_all_blocks", ref["wall_s"]))},
    })
    total = t_train + t_wf
    out["total_wall_s"] = total
    # route (B) of Sun et al.: its weights' ESS per beta, and (unless skipped) its accuracy
    th_b, y_b = model.sample_prior_predictive(jax.random.fold_in(key, 99), 4096)
    ess_b = af.estimators.reweighting_ess(model, th_b, y_b, BETAS)
    out["route_b_weight_ess_fraction"] = {f"{b:g}": float(e) for b, e in zip(BETAS, ess_b)}
    if not args.skip_route_b:
        t0 = time.perf_counter()
        est_b = af.fit_posterior(k_train, model, tempering=af.Tempering(objective=af.ReweightedSimulations()),
                                 train_config=cfg, progress=not args.no_progress)
        t_b = time.perf_counter() - t0
        amort_b = np.asarray(est_b.sample(k_amort, obs, 1000))
        acc_b = judge_pairs(k_acc, amort_b, np.full(len(beta), 1000.0), ref)
        out["route_b"] = {"training_wall_s": t_b, "fraction_accurate_per_beta": per_beta(acc_b, beta, ok),
                          "fraction_accurate": float(acc_b[ok].mean())}
        log(f"{name}: route (B) amortized accurate {out['route_b']['fraction_accurate_per_beta']}")
    if args.num_numpyro and name in ("normal", "gev"):
        fn = "numpyro_tempered_normal" if name == "normal" else "numpyro_tempered_gev"
        # pairs spread over the grid: the first numpyro datasets at every beta
        pick = np.argsort(np.arange(len(beta)) % len(BETAS), kind="stable")[:args.num_numpyro]
        np_out = numpyro_pairs(yp[pick], beta[pick], fn, len(pick))
        np_out["scaled_total_s"] = np_out["seconds_per_pair"] * len(beta)
        np_out["label"] = f"scaled: mean of {len(pick)} timed pairs x {len(beta)} pairs"
        out["numpyro_per_pair"] = np_out
        out["speedup_vs_numpyro_per_pair"] = {"total_incl_training": np_out["scaled_total_s"] / total,
                                              "workflow_only": np_out["scaled_total_s"] / t_wf}
    if name == "gev" and ref.get("wall_s_all_blocks"):
        out["speedup_vs_batched_nuts_reference"] = ref["wall_s_all_blocks"] / total
    lo_hi = [b for b in BETAS if 0.3 <= b <= 1.5]
    out["goals"] = {
        "corrected_ge_99pct_every_beta": all((v or 0) >= 0.99 for v in out["workflow"]["fraction_accurate_per_beta"].values()),
        "amortized_ge_90pct_beta_0.3_to_1.5": all((out["amortized"]["fraction_accurate_per_beta"][f"{b:g}"] or 0) >= 0.9
                                                  for b in lo_hi),
        "all_resolved_or_failed_with_reason": bool(np.all((res.route != "failed") | (res.reason != ""))),
    }
    if "speedup_vs_numpyro_per_pair" in out:
        out["goals"]["ge_100x_vs_per_pair_nuts"] = out["speedup_vs_numpyro_per_pair"]["total_incl_training"] >= 100
    log(f"{name}: amortized accurate {out['amortized']['fraction_accurate_per_beta']}")
    log(f"{name}: workflow accurate {out['workflow']['fraction_accurate_per_beta']}; goals {out['goals']}")
    return out, est, res


def coverage_of_truth(draws, theta, level=0.9):
    """Share of datasets whose central ``level`` interval (per coordinate) covers ``theta``:
    ``draws [P, S, d]``, ``theta [P, d]`` -> ``[P]`` bool (every coordinate covered)."""
    a = (1 - level) / 2
    lo, hi = np.quantile(np.asarray(draws, np.float64), [a, 1 - a], axis=1)
    return np.all((lo <= theta) & (theta <= hi), axis=1)


def run_misspecified(kd, km, n, args):
    """The misspecified example: accuracy over the grid as for the other models, coverage of the
    true mean vs beta, and the beta chosen per dataset by calibration and information matching."""
    from amortflow.models.gaussian import gaussian_mean_posterior
    from scipy import stats

    ex = af.models.misspecified_normal()
    theta, ys = (np.asarray(a) for a in ex.sample(kd, n))
    out, est, res = run_model("misspecified", ex.model, ys, args, km)
    out["description"] = (f"normal mean with known unit sd, {ex.num_obs} observations from "
                          f"{1 - ex.contamination:g} N(mu, 1) + {ex.contamination:g} N(mu, {ex.outlier_sd:g}^2); "
                          f"calibrated beta = 1/Var(y) = {ex.calibrated_beta:.3f}")
    beta = np.tile(np.asarray(BETAS, np.float32), n)
    th_p = np.repeat(theta, len(BETAS), axis=0)
    cov_wf = coverage_of_truth(res.draws, th_p)
    m, s = (np.asarray(a) for a in gaussian_mean_posterior(ex.model, np.repeat(ys, len(BETAS), 0), beta[:, None]))
    z = stats.norm.ppf(0.95)
    cov_exact = np.all(np.abs(th_p - m) <= z * s, axis=1)
    cov = {f"{b:g} (workflow)": float(cov_wf[beta == np.float32(b)].mean()) for b in BETAS}
    cov.update({f"{b:g} (exact power posterior)": float(cov_exact[beta == np.float32(b)].mean()) for b in BETAS})
    # choosing beta per dataset
    t0 = time.perf_counter()
    cal = af.gbi.calibrate_beta(jax.random.fold_in(km, 7), est, ex.model, ys, betas=np.geomspace(0.05, 2.0, 13),
                                num_bootstrap=50 if args.quick else 100)
    t_cal = time.perf_counter() - t0
    t0 = time.perf_counter()
    info = af.gbi.information_beta(ex.model, ys)
    t_info = time.perf_counter() - t0
    sel = {}
    for label, bh in (("calibration", np.asarray(cal.beta_hat)), ("information", np.asarray(info.beta))):
        bh = np.clip(np.where(np.isfinite(bh), bh, 1.0), *est.beta_range).astype(np.float32)
        r = af.run_workflow(jax.random.fold_in(km, 8), ex.model, est, ys, beta=bh, progress=False)
        cw = coverage_of_truth(r.draws, theta)
        me, se = (np.asarray(a) for a in gaussian_mean_posterior(ex.model, ys, bh[:, None]))
        ce = np.all(np.abs(theta - me) <= z * se, axis=1)
        sel[label] = {"beta_hat": quantiles(bh), "coverage_workflow": float(cw.mean()),
                      "coverage_exact": float(ce.mean()), "routes": r.route_counts()}
        cov[f"chosen by {label} (workflow)"] = float(cw.mean())
    sel["calibration"].update({"wall_s": t_cal, "high_khat_fraction": cal.high_khat_fraction,
                               "below_range": int(np.sum(cal.below_range)), "above_range": int(np.sum(cal.above_range))})
    sel["information"].update({"wall_s": t_info, "num_not_ok": int(np.sum(~np.asarray(info.ok)))})
    out["coverage"] = cov
    out["selection"] = sel
    out["goals"]["chosen_beta_coverage_85_95pct"] = all(0.85 <= v["coverage_workflow"] <= 0.95 for v in sel.values())
    out["goals"]["beta1_coverage_below_85pct"] = cov["1 (workflow)"] < 0.85
    log(f"misspecified: coverage {cov}")
    log(f"misspecified: selection {sel}")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--num-datasets", type=int, default=None)
    ap.add_argument("--num-numpyro", type=int, default=None, help="(dataset, beta) pairs timed with numpyro NUTS")
    ap.add_argument("--train-steps", type=int, default=None)
    ap.add_argument("--models", default="normal,gev,misspecified")
    ap.add_argument("--cache-dir", default=CACHE)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--skip-route-b", action="store_true", help="do not train the ReweightedSimulations comparison")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n = args.num_datasets or (20 if args.quick else 200)
    if args.num_numpyro is None:
        args.num_numpyro = 2 if args.quick else 9
    if args.train_steps is None and args.quick:
        args.train_steps = 800
    key = jax.random.PRNGKey(args.seed)
    result = {"settings": {"num_datasets": n, "betas": list(BETAS), "quick": args.quick,
                           "train_steps": args.train_steps or af.TrainConfig().num_steps,
                           "criterion": __import__("bench_gev").CRITERION}}
    for i, name in enumerate(args.models.split(",")):
        kd, km = jax.random.split(jax.random.fold_in(key, i))
        if name == "normal":
            model = af.models.gaussian_mean(dim=2, num_obs=10)
            _, ys = model.sample_prior_predictive(kd, n)
            result[name], _, _ = run_model(name, model, np.asarray(ys), args, km)
        elif name == "gev":
            model = af.models.gev()
            _, ys = model.sample_prior_predictive(kd, n)  # in-distribution: the grid is about beta, not OOD data
            result[name], _, _ = run_model(name, model, np.asarray(ys), args, km)
        elif name == "misspecified" and not hasattr(af.models, "misspecified_normal"):
            log("misspecified example not available in this version; skipped")
        elif name == "misspecified":
            result[name] = run_misspecified(kd, km, n, args)
        else:
            raise SystemExit(f"unknown model {name!r}")
    write_result("gbi_quick" if args.quick else "gbi", result)


if __name__ == "__main__":
    main()
