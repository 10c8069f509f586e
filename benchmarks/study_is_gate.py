"""Which importance-sampling gate? Accuracy of PSIS / refined answers vs reference NUTS on the GEV
benchmark's 1000 test datasets, for k-hat + ESS-fraction gates and k-hat + Monte-Carlo-error gates.

No MCMC is run: for every dataset the amortized draws (GEV preset estimator) are weighted by PSIS
and, separately, refined by adaptive importance sampling; each candidate gate is judged by how
many datasets it accepts and how many of those are wrong by the issue's criterion (weighted
|mean error| >= 0.2 reference sd or sd ratio outside [0.8, 1.25], any parameter) and by a strict
one (0.1 sd, [0.9, 1.11]). References come from bench_gev's cache (run ``make bench-gev`` first).

    python benchmarks/study_is_gate.py [--estimator DIR] [--num-datasets N]
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
import bench_gev as bg  # noqa: E402
from _common import write_result  # noqa: E402

import amortflow as af  # noqa: E402
from amortflow import diagnostics as dg  # noqa: E402
from amortflow.models.observation import observe, to_device  # noqa: E402
from amortflow.workflow.refine import adaptive_is  # noqa: E402
from amortflow.workflow.stages import is_diagnostics, psis_diagnostics  # noqa: E402


def judge(mean, sd, ref_mean, ref_sd, tol_mean, lo, hi):
    z = np.abs(mean - ref_mean) / ref_sd
    r = sd / ref_sd
    return np.all((z < tol_mean) & (r > lo) & (r < hi), axis=-1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--estimator", default=None, help="saved GEV estimator (default: train the preset)")
    ap.add_argument("--num-datasets", type=int, default=1000)
    ap.add_argument("--cache-dir", default=bg.CACHE)
    ap.add_argument("--seed", type=int, default=2409)
    args = ap.parse_args()
    n, s = args.num_datasets, 2000
    model = bg._MODEL
    _, ys = jax.jit(af.models.gev(test_prior=True).sample_prior_predictive, static_argnums=1)(
        jax.random.PRNGKey(args.seed), bg.NUM_TEST)
    ys = np.asarray(ys)[:n]
    if args.estimator and os.path.exists(args.estimator):
        est = af.load_estimator(args.estimator)
    else:
        from amortflow.presets import gev_preset
        est = af.fit_posterior(jax.random.PRNGKey(args.seed + 1), model, **gev_preset().fit_kwargs())
        if args.estimator:
            est.save(args.estimator)
    rcfg = bg.reference_config()
    refs = [bg.reference_block(model, ys[i:i + bg.REF_BLOCK], i, args.seed, rcfg, args.cache_dir)[0]
            for i in range(0, n, bg.REF_BLOCK)]
    rd = np.concatenate([r["draws"] for r in refs])[:n].astype(np.float64)
    ok_ref = np.concatenate([bg.reference_converged(r, r["draws"].shape[1]) for r in refs])[:n]
    ref_mean, ref_sd = rd.mean(1), rd.std(1)

    # blocks of 200 datasets (bounded memory; one compilation for every block)
    blocks = {"p": [], "r": []}
    t_psis = t_ref = 0.0
    for b0 in range(0, n, 200):
        ids = np.arange(b0, min(n, b0 + 200))
        obs = observe(ys[ids])
        t0 = time.perf_counter()
        draws, log_q = est.sample_and_log_prob(jax.random.PRNGKey(7), obs, s, dataset_ids=ids)
        p = psis_diagnostics(model, np.asarray(draws), np.asarray(log_q), obs)
        t_psis += time.perf_counter() - t0
        t0 = time.perf_counter()
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(8), i))(jnp.asarray(ids))
        x, lw = adaptive_is(keys, model, to_device(obs), jnp.asarray(draws), jnp.asarray(p["log_weights"]),
                            3, s, 5.0, 8)
        r = is_diagnostics(x, lw)
        t_ref += time.perf_counter() - t0
        err_p = dg.is_mcse(jnp.asarray(draws), jnp.asarray(p["log_weights"]))
        err_r = dg.is_mcse(x, jnp.asarray(r["log_weights"]))
        blocks["p"].append((p["khat"], p["psis_ess"], np.asarray(err_p.mean), np.asarray(err_p.sd), p["psis_error"]))
        blocks["r"].append((r["khat"], r["ess"], np.asarray(err_r.mean), np.asarray(err_r.sd), r["error"]))
    cat = {k: [np.concatenate(c) for c in zip(*v)] for k, v in blocks.items()}

    out = {"num_datasets": n, "num_draws": s, "reference_converged": int(ok_ref.sum()),
           "time_psis_s": t_psis, "time_refine_s": t_ref, "gates": {}}
    thr = dg.psis_khat_threshold(s)
    for stage, (khat, ess, mean, sd, mx) in (("psis", cat["p"]), ("refined", cat["r"])):
        mean, sd = mean.astype(np.float64), sd.astype(np.float64)
        good = judge(mean, sd, ref_mean, ref_sd, 0.2, 0.8, 1.25)
        strict = judge(mean, sd, ref_mean, ref_sd, 0.1, 0.9, 1 / 0.9)
        kok = np.isfinite(khat) & (khat <= thr) & ok_ref
        gates = {"khat only": kok, "ESS >= 0.6 S": kok & (ess >= 0.6 * s), "ESS >= 400": kok & (ess >= 400)}
        for tol in (0.05, 0.075, 0.1, 0.15, 0.2):
            gates[f"MC error <= {tol} sd"] = kok & (mx <= tol)
        for name, g in gates.items():
            row = {"accepted": int(g.sum()), "wrong": int((g & ~good).sum()),
                   "wrong_strict": int((g & ~strict).sum())}
            out["gates"][f"{stage}: {name}"] = row
            print(f"{stage:8s} {name:22s} accepted {row['accepted']:4d}  wrong {row['wrong']:3d}  "
                  f"wrong(strict) {row['wrong_strict']:3d}", flush=True)
    write_result("is_gate_study", out)


if __name__ == "__main__":
    main()
