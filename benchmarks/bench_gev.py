"""make bench-gev: the amortized-workflow paper's Table 1 GEV row, measured on this machine.

    python benchmarks/bench_gev.py            # 1000 datasets (make bench-gev; 20-40 min on 2 cores)
    python benchmarks/bench_gev.py --quick    # 50 datasets, small training budget (a few minutes)

What is measured, all in this one run:

* **Test data**: 1000 datasets from ``af.models.gev(test_prior=True)`` (doubled prior scales),
  drawn with a fixed seed; ``--num-datasets N`` (and ``--quick``) use the first ``N`` of them,
  so a quick run's datasets are a subset of the full run's.
* **Training** (wall time incl. simulation): ``af.fit_posterior`` on ``af.models.gev()`` with
  ``amortflow.presets.gev_preset().fit_kwargs()`` (the preset's one mapping onto
  ``fit_posterior``); the preset's workflow configuration (or ladder) is used too, otherwise
  ``af.WorkflowConfig()``.
* **Workflow** (wall time per stage and total): ``af.run_workflow`` on all test datasets;
  route counts = datasets accepted at each stage.
* **Baseline A**: numpyro NUTS per dataset (4 chains x 1000 warmup + 1000 draws, sequential
  chains, a numpyro model of the same GEV posterior written below and checked against
  ``model.log_density``) on ``--num-numpyro`` datasets (20) in fresh processes of at most 10
  datasets each (numpyro recompiles per ``.run`` and a process dies after 25-35 datasets, see
  DESIGN.md). The mean time per dataset is multiplied by the number of datasets: labelled
  **scaled**.
* **Baseline B**: amortflow's batched NUTS (``run_nuts``, ``NutsConfig.auto()``: 4 chains x
  1000 warmup + 1000 draws) on ALL datasets, measured in full (compile included). Starting
  points: ``initialize_positions`` on 256 *prior* draws per dataset weighted by the likelihood
  (sampling-importance-resampling) -- no network involved.
* **Accuracy of every dataset** against a reference: amortflow batched NUTS, 4 chains x (1000
  warmup + 2500 draws), target acceptance 0.95, started like B (prior SIR, other keys). Cached
  in ``benchmarks/cache/`` per block of 50 datasets (keyed by seed, dataset block, data hash and
  reference settings), so re-runs skip it. Datasets whose reference did not converge are
  excluded (and counted). See :data:`CRITERION` for the definition of "accurate".

Results: ``benchmarks/results/gev.json`` (``gev_quick.json`` with ``--quick``), a per-dataset
CSV next to it, and ``benchmarks/README.md`` regenerated from all result files.
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
from amortflow.diagnostics import accuracy_noise_floor, posterior_accuracy  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, "cache")
NUM_TEST = 1000  # the test set is always these 1000 datasets; runs use the first N
REF_BLOCK = 50  # reference cache granularity (datasets per file)
REF_SUBSET = 4000  # reference draws used by the MMD/energy/W1/TV metrics (O(S*R) cost)
REF_MIN_ESS = 400.0  # reference convergence: min bulk ESS (100 per chain) ...
REF_MAX_DIV_FRAC = 0.10  # ... at most 10% divergent transitions (GEV: mostly trajectories leaving the
# data-dependent support, where the log density is -inf), and R-hat < 1.01 for every parameter
TV_PRACTICAL = 0.2  # the workflow paper's "good" marginal TV
TV_FLOOR_MULT = 3.0
MEAN_PRACTICAL = 0.1  # posterior sds
MEAN_NUM_SE = 4.0
ACC_BLOCK = 50  # datasets per compiled accuracy call (padded: one compilation)

CRITERION = (
    f"a dataset is accurate if its draws are finite and (i) marginal TV <= max({TV_PRACTICAL}, "
    f"{TV_FLOOR_MULT:g} x its noise floor), the floor being the marginal TV between two random halves "
    f"({REF_SUBSET // 2} draws each) of the reference subset, and (ii) for every parameter "
    f"|mean error| / sd_ref <= max({MEAN_PRACTICAL}, {MEAN_NUM_SE:g} x MCSE), MCSE = "
    "sqrt(1/ESS_draws + 1/ESS_ref) (ESS_draws: S for amortized draws, min(S, PSIS ESS) for PSIS, min(S, "
    "refined-IS ESS) for refined, min(S, min bulk ESS) for MCMC/NUTS routes; ESS_ref: reference bulk ESS). Metrics "
    f"use a random {REF_SUBSET}-draw subset of the 10000 reference draws (mean errors the full "
    f"reference). Excluded: datasets whose reference has R-hat >= 1.01, bulk ESS < {REF_MIN_ESS:g}, "
    f"> {100 * REF_MAX_DIV_FRAC:g}% divergences or non-finite draws. Failed routes count as inaccurate."
)


def log(msg):
    print(f"[bench-gev {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- numpyro model (A)
GEV_PRIOR = {"mu_loc": 3.8, "mu_scale": 0.2, "sigma_scale": 0.3, "xi_scale": 0.2, "xi_bound": 0.6}


def numpyro_gev_model(y):
    """The GEV posterior of the paper in numpyro: mu ~ N(3.8, 0.2), sigma ~ HalfNormal(0.3),
    xi ~ TruncatedNormal(0, 0.2) on [-0.6, 0.6], 65 iid GEV observations (``numpyro.factor``
    with amortflow's ``gev_logpdf``; numpyro has no GEV distribution)."""
    import numpyro
    import numpyro.distributions as dist

    from amortflow.models.gev import gev_logpdf

    p = GEV_PRIOR
    mu = numpyro.sample("mu", dist.Normal(p["mu_loc"], p["mu_scale"]))
    sigma = numpyro.sample("sigma", dist.HalfNormal(p["sigma_scale"]))
    xi = numpyro.sample("xi", dist.TruncatedNormal(0.0, p["xi_scale"], low=-p["xi_bound"], high=p["xi_bound"]))
    numpyro.factor("loglik", jnp.sum(gev_logpdf(y, mu, sigma, xi)))


def numpyro_gev_init(theta):
    """amortflow unconstrained ``[chains, 3]`` -> numpyro unconstrained sites (same bijections:
    identity, exp, scaled sigmoid)."""
    theta = jnp.asarray(theta)
    return {"mu": theta[:, 0], "sigma": theta[:, 1], "xi": theta[:, 2]}


def numpyro_to_unconstrained(samples):
    """numpyro constrained samples ``{site: [n, C, N]}`` -> amortflow unconstrained ``[n, C, N, 3]``."""
    b = GEV_PRIOR["xi_bound"]
    p = (np.asarray(samples["xi"], np.float64) + b) / (2 * b)
    return np.stack([samples["mu"], np.log(samples["sigma"]), np.log(p) - np.log1p(-p)], -1).astype(np.float32)


def check_numpyro_equivalence(model, ys, key, num_points=8):
    """max |numpyro potential energy + model.log_density| over prior points of a few datasets."""
    from numpyro.infer.util import potential_energy

    diffs = []
    for i in range(min(3, ys.shape[0])):
        th = model.sample_prior(jax.random.fold_in(key, i), num_points)
        for t in np.asarray(th):
            ours = float(model.log_density(jnp.asarray(t), ys[i]))
            if not np.isfinite(ours):
                continue
            params = {k: v[0] for k, v in numpyro_gev_init(t[None]).items()}
            pe = float(potential_energy(numpyro_gev_model, (jnp.asarray(ys[i]),), {}, params))
            diffs.append(abs(pe + ours) / max(1.0, abs(ours)))
    return float(np.max(diffs)) if diffs else float("nan")


# ----------------------------------------------------------------------------- NUTS runs
@jax.jit
def _sir_candidates(keys, ys):
    model = _MODEL

    def one(k, y):
        th = model.sample_prior(k, _NUM_CAND)
        return th, jax.vmap(lambda t: model.log_likelihood(t, y))(th)

    return jax.vmap(one)(keys, ys)


_MODEL = af.models.gev()
_NUM_CAND = 256


def prior_sir_init(key, model, ys, num_chains):
    """Starting points from 256 prior draws per dataset weighted by the likelihood, through
    ``initialize_positions`` (random distinct finite-density points; prior fallback)."""
    k1, k2 = jax.random.split(key)
    cand, logw = _sir_candidates(jax.random.split(k1, ys.shape[0]), jnp.asarray(ys))
    return mcmc.initialize_positions(k2, model, ys, cand, logw, num_chains)


def reference_config():
    return mcmc.nuts.auto(num_warmup=1000, num_samples=2500, target_acceptance_rate=0.95)


def _ref_tag(seed, cfg):
    # cached reference runs are tagged with the repr of the NutsConfig from before Sampler
    # values (it also held the gate, output size and batch size); the draws are unchanged, so the
    # tag is rebuilt from the config as it was
    legacy = (repr(cfg.config)[:-1] + ", rhat_threshold=1.01, min_ess=0.0, num_output_draws=None, "
              f"batch_size={mcmc.Layout().map_batch_size})")
    s = repr((seed, legacy, _MODEL.name, _NUM_CAND, REF_SUBSET, "v1"))
    return hashlib.sha1(s.encode()).hexdigest()[:10]


def reference_block(model, ys_block, start, seed, cfg, cache_dir):
    """Reference NUTS for datasets ``start .. start + n`` (cached). Returns a dict of arrays."""
    n = ys_block.shape[0]
    ys_hash = hashlib.sha1(np.ascontiguousarray(ys_block, np.float32).tobytes()).hexdigest()
    path = os.path.join(cache_dir, f"gev_ref_{_ref_tag(seed, cfg)}_{start:04d}_{n}.npz")
    if os.path.exists(path):
        with np.load(path, allow_pickle=False) as z:
            if str(z["ys_hash"]) == ys_hash:
                return {k: z[k] for k in z.files}, True
    key = jax.random.PRNGKey(seed + 4)
    t0 = time.perf_counter()
    init, _ = prior_sir_init(jax.random.fold_in(jax.random.fold_in(key, 0), start), model, ys_block, cfg.num_chains)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, 1), i))(jnp.arange(start, start + n))
    res = mcmc.run_sampler_keys(keys, model, jnp.asarray(ys_block), init, cfg, layout=mcmc.Layout(bucket_size=n))
    r = res.draws.shape[1]
    sub_idx = np.stack([np.asarray(jax.random.choice(jax.random.fold_in(jax.random.fold_in(key, 2), start + i), r,
                                                     (min(REF_SUBSET, r),), replace=False)) for i in range(n)])
    sub = np.take_along_axis(res.draws, sub_idx[..., None], axis=1)
    floor = accuracy_noise_floor(jax.random.fold_in(jax.random.PRNGKey(seed + 5), start), jnp.asarray(sub))
    out = {
        "draws": res.draws.astype(np.float32), "sub_idx": sub_idx.astype(np.int32),
        "rhat": res.nested_rhat, "ess_bulk": res.ess_bulk, "ess_tail": res.ess_tail,
        "divergences": res.divergences, "step_size": res.step_size, "converged_gate": res.converged,
        "num_grad_evals": res.num_grad_evals, "wall_s": np.float64(time.perf_counter() - t0),
        "ys_hash": np.asarray(ys_hash),
        **{"floor_" + k: np.asarray(v) for k, v in floor.items()},
    }
    os.makedirs(cache_dir, exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **out)
    os.replace(tmp, path)
    return out, False


def reference_converged(ref, num_draws_per_dataset):
    ok = np.asarray(ref["converged_gate"], bool)
    ok &= np.all(np.isfinite(ref["draws"]), axis=(1, 2))
    ok &= np.nanmin(ref["ess_bulk"], axis=1) >= REF_MIN_ESS
    ok &= np.asarray(ref["divergences"]) <= REF_MAX_DIV_FRAC * num_draws_per_dataset
    return ok


# ----------------------------------------------------------------------------- accuracy
def accuracy(draws, ref_sub, progress_label):
    """posterior_accuracy in padded blocks of ACC_BLOCK datasets (one compilation)."""
    from tqdm.auto import tqdm

    n = draws.shape[0]
    if n == 0:
        return {k: np.zeros((0, 3) if k in ("mean_error_std", "sd_ratio", "wasserstein", "tv") else (0,))
                for k in ("mean_error_std", "sd_ratio", "mmd2", "energy", "wasserstein", "tv", "marginal_tv")}
    out = {}
    for s0 in tqdm(range(0, n, ACC_BLOCK), desc=progress_label, unit="block"):
        d, r = draws[s0:s0 + ACC_BLOCK], ref_sub[s0:s0 + ACC_BLOCK]
        m = d.shape[0]
        if m < ACC_BLOCK:  # pad with copies of the first row (discarded)
            d = np.concatenate([d, np.repeat(d[:1], ACC_BLOCK - m, 0)])
            r = np.concatenate([r, np.repeat(r[:1], ACC_BLOCK - m, 0)])
        res = posterior_accuracy(jnp.asarray(d, jnp.float32), jnp.asarray(r, jnp.float32))
        for k, v in res.items():
            out.setdefault(k, []).append(np.asarray(v)[:m])
    return {k: np.concatenate(v) for k, v in out.items()}


def judge(draws, ref_full, ref_ess, metrics, floor_mtv, ess_draws):
    """Per-dataset accuracy decision (see CRITERION) and the quantities behind it."""
    d64 = np.asarray(draws, np.float64)
    r64 = np.asarray(ref_full, np.float64)
    mean_err = (d64.mean(1) - r64.mean(1)) / np.maximum(r64.std(1, ddof=1), 1e-12)  # [n, d]
    se = np.sqrt(1.0 / np.maximum(ess_draws, 1.0)[:, None] + 1.0 / np.maximum(ref_ess, 1.0))
    mean_tol = np.maximum(MEAN_PRACTICAL, MEAN_NUM_SE * se)
    tv_tol = np.maximum(TV_PRACTICAL, TV_FLOOR_MULT * floor_mtv)
    finite = np.all(np.isfinite(d64), axis=(1, 2))
    mtv = np.asarray(metrics["marginal_tv"])
    tv_ok = finite & (mtv <= tv_tol)
    mean_ok = finite & np.all(np.abs(mean_err) <= mean_tol, axis=1)
    strict = finite & (mtv <= TV_FLOOR_MULT * floor_mtv) & np.all(np.abs(mean_err) <= MEAN_NUM_SE * se, axis=1)
    return {"accurate": tv_ok & mean_ok, "tv_ok": tv_ok, "mean_ok": mean_ok, "strict_mc": strict,
            "paper_tv_lt_0.2": finite & (mtv < TV_PRACTICAL), "mean_err": mean_err, "mean_tol": mean_tol,
            "tv_tol": tv_tol, "se": se}


def summarize_accuracy(j, metrics, floor):
    return {
        "marginal_tv": quantiles(metrics["marginal_tv"]),
        "max_abs_mean_error_std": quantiles(np.max(np.abs(j["mean_err"]), axis=1)),
        "max_abs_mean_error_in_mcse": quantiles(np.max(np.abs(j["mean_err"]) / j["se"], axis=1)),
        "sd_ratio": {n: quantiles(np.asarray(metrics["sd_ratio"])[:, i]) for i, n in enumerate(_MODEL.param_names)},
        "mmd2": quantiles(metrics["mmd2"]), "energy": quantiles(metrics["energy"]),
        "wasserstein_max": quantiles(np.max(np.asarray(metrics["wasserstein"]), axis=1)),
        "noise_floor": {"marginal_tv": quantiles(floor["marginal_tv"]), "mmd2": quantiles(floor["mmd2"]),
                        "energy": quantiles(floor["energy"]),
                        "wasserstein_max": quantiles(np.max(np.asarray(floor["wasserstein"]), axis=1))},
        "fraction_tv_ok": float(np.mean(j["tv_ok"])) if j["tv_ok"].size else None,
        "fraction_mean_ok": float(np.mean(j["mean_ok"])) if j["mean_ok"].size else None,
        "fraction_strict_mc": float(np.mean(j["strict_mc"])) if j["strict_mc"].size else None,
        "fraction_paper_tv_lt_0.2": float(np.mean(j["paper_tv_lt_0.2"])) if j["tv_ok"].size else None,
    }


def subsample(key, draws, num):
    """Random ``num`` of the ``S`` draws of every dataset (without replacement)."""
    k, s, _ = draws.shape
    if s <= num:
        return draws
    idx = np.stack([np.asarray(jax.random.choice(jax.random.fold_in(key, i), s, (num,), replace=False))
                    for i in range(k)])
    return np.take_along_axis(draws, idx[..., None], axis=1)


# ----------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="50 datasets, quick preset, 2 numpyro datasets")
    ap.add_argument("--num-datasets", type=int, default=None)
    ap.add_argument("--num-numpyro", type=int, default=None, help="datasets timed for baseline A")
    ap.add_argument("--numpyro-chunk", type=int, default=10, help="datasets per fresh numpyro process (<= 10)")
    ap.add_argument("--seed", type=int, default=2409)
    ap.add_argument("--skip-numpyro", action="store_true")
    ap.add_argument("--skip-baseline-b", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--cache-dir", default=CACHE)
    ap.add_argument("--refine-rounds", type=int, default=None,
                    help="override the workflow's refine_rounds (adaptive importance sampling stage)")
    ap.add_argument("--name", default=None, help="result name (default gev / gev_quick)")
    ap.add_argument("--config", choices=("preset", "default", "high_stakes"), default="preset",
                    help="workflow settings: the preset's (default), WorkflowConfig() or high_stakes()")
    ap.add_argument("--estimator", default=None,
                    help="load this saved estimator instead of training (for iterating on the workflow; "
                         "the total then excludes training and the run is not a Table-1 result)")
    args = ap.parse_args()
    n = args.num_datasets or (50 if args.quick else NUM_TEST)
    n_np = args.num_numpyro if args.num_numpyro is not None else (2 if args.quick else 20)
    n_np = min(n_np, n)
    name = args.name or ("gev_quick" if args.quick else "gev")
    seed = args.seed
    t_bench = time.perf_counter()

    model, test_model = _MODEL, af.models.gev(test_prior=True)
    _, ys_all = jax.jit(test_model.sample_prior_predictive, static_argnums=1)(jax.random.PRNGKey(seed), max(NUM_TEST, n))
    ys_all = np.asarray(ys_all)
    ys = ys_all[:n]
    log(f"{n} test datasets (test prior, seed {seed}); backend {jax.default_backend()}, "
        f"{len(jax.devices())} device(s), load avg {os.getloadavg()[0]:.1f}")
    result = {"quick": args.quick, "seed": seed, "num_datasets": n,
              "test_data": "af.models.gev(test_prior=True).sample_prior_predictive(PRNGKey(seed), 1000)[:N]"}

    # ---- training (incl. simulation)
    from amortflow.presets import gev_preset

    preset = gev_preset(quick=True) if args.quick else gev_preset()
    fit_kwargs = preset.fit_kwargs()
    cfg, cfg_source = preset.workflow, "preset.workflow"
    if args.config != "preset":
        cfg = af.WorkflowConfig.high_stakes() if args.config == "high_stakes" else af.WorkflowConfig()
        cfg_source = {"default": "WorkflowConfig()", "high_stakes": "WorkflowConfig.high_stakes()"}[args.config]
    if args.refine_rounds is not None:
        import dataclasses

        cfg = dataclasses.replace(cfg, refine_rounds=args.refine_rounds)
        cfg_source += f" with refine_rounds={args.refine_rounds}"
    log(f"training: fit_posterior with preset.fit_kwargs() {sorted(fit_kwargs)}")
    t0 = time.perf_counter()
    if args.estimator:
        if args.name in (None, "gev", "gev_quick"):
            raise SystemExit("--estimator needs --name (a loaded estimator is not a Table-1 result)")
        est = af.load_estimator(args.estimator)
        t_train = 0.0
        log(f"training: skipped, estimator loaded from {args.estimator}")
    else:
        est = af.fit_posterior(jax.random.PRNGKey(seed + 1), model, **fit_kwargs)
        jax.block_until_ready(est.params)
        t_train = time.perf_counter() - t0
        log(f"training: {t_train:.1f} s")
    result["training"] = {"wall_s": t_train, "num_simulations": getattr(preset, "num_simulations", None),
                          "preset": repr(preset), "fit_kwargs": sorted(fit_kwargs),
                          "loaded_estimator": args.estimator}

    # ---- the workflow
    log(f"workflow on {n} datasets ({cfg_source})")
    t0 = time.perf_counter()
    res = af.run_workflow(jax.random.PRNGKey(seed + 2), model, est, ys, cfg)
    t_wf = time.perf_counter() - t0
    total = t_train + t_wf
    rc = res.route_counts()
    log(f"workflow: {t_wf:.1f} s; routes {rc}; total incl. training {total:.1f} s")
    result["workflow"] = {
        "wall_s": t_wf, "config_source": cfg_source, "config": res.config,
        "route_counts": rc, "stage_time_s": res.stage_time_s, "stage_counts": res.stage_counts,
        "mcmc_stage_time_s": res.mcmc_stage_time_s,
        "accepted_by_mcmc_stage": {k: int(v) for k, v in zip(*np.unique(
            res.diagnostics["mcmc_stage"][np.isin(res.route, ["mcmc", "nuts"])].astype(str), return_counts=True))},
        "failed_reasons": [str(r) for r in res.reason[res.route == "failed"]][:20],
        "ood_flagged": int(np.sum(res.diagnostics["ood_flag"])),
        "khat": quantiles(res.diagnostics["khat"]),
    }
    result["total_s"] = total

    # ---- baseline B: batched NUTS on all datasets
    b = None
    if not args.skip_baseline_b:
        bcfg = mcmc.nuts.auto()
        log(f"baseline B: batched NUTS ({bcfg.num_chains} x {bcfg.config.num_warmup} + {bcfg.config.num_samples}) on all {n} datasets")
        t0 = time.perf_counter()
        init_b, info_b = prior_sir_init(jax.random.PRNGKey(seed + 3), model, ys, bcfg.num_chains)
        init_b = jax.block_until_ready(init_b)
        t_init = time.perf_counter() - t0
        res_b = mcmc.run_sampler(jax.random.PRNGKey(seed + 6), model, ys, init_b, bcfg,
                                 layout=mcmc.Layout(bucket_size=min(n, 100)), progress=True)
        t_b = time.perf_counter() - t0
        b = {"num_datasets": n, "wall_s": t_b, "init_s": t_init, "compile_s": float(res_b.compile_time_s.sum()),
             "run_s": float(res_b.wall_time_s.sum()), "label": "measured on all datasets",
             "init": "initialize_positions on 256 prior draws per dataset, log weights = log-likelihood (no network)",
             "config": repr(bcfg.config), "converged_fraction": float(res_b.converged.mean()),
             "max_rhat": quantiles(res_b.nested_rhat.max(1)), "min_ess_bulk": quantiles(res_b.ess_bulk.min(1)),
             "divergences": quantiles(res_b.divergences), "grad_evals_per_dataset": quantiles(res_b.num_grad_evals),
             "init_fallback_datasets": int(np.sum(np.asarray(info_b.num_fallback) > 0))}
        log(f"baseline B: {t_b:.1f} s (compile {b['compile_s']:.1f} s), converged {b['converged_fraction']:.3f}")
        result["baseline_b_batched_nuts"] = b

    # ---- baseline A: numpyro per dataset, fresh processes
    a = None
    if not args.skip_numpyro and n_np > 0:
        eq = check_numpyro_equivalence(model, ys, jax.random.PRNGKey(seed + 7))
        log(f"baseline A: numpyro NUTS on {n_np} datasets, {args.numpyro_chunk} per process "
            f"(numpyro vs amortflow log density: max rel. diff {eq:.2e})")
        init_a, _ = prior_sir_init(jax.random.PRNGKey(seed + 8), model, ys[:n_np], 4)
        t0 = time.perf_counter()
        out = numpyro_nuts_per_dataset(ys[:n_np], module="bench_gev", model="numpyro_gev_model",
                                       init=np.asarray(init_a), init_fn="numpyro_gev_init",
                                       chunk=min(args.numpyro_chunk, 10), seed=seed + 9)
        t_a_all = time.perf_counter() - t0
        per = float(np.mean(out["times_s"]))
        a = {"num_datasets_timed": n_np, "seconds_per_dataset": per,
             "seconds_per_dataset_median": float(np.median(out["times_s"])),
             "times_s": out["times_s"], "process_wall_s": out["process_wall_s"], "chunk_size": out["chunk_size"],
             "wall_s_all_processes": t_a_all,
             "scaled_total_s": per * n, "label": f"scaled: mean of {n_np} timed datasets x {n}",
             "settings": "numpyro NUTS, 4 chains x 1000 warmup + 1000 draws, chain_method='sequential', "
                         "target_accept 0.8, init from prior SIR points; one MCMC object per dataset",
             "log_density_max_rel_diff_vs_amortflow": eq, "divergences": out["divergences"]}
        a["_draws"] = numpyro_to_unconstrained(out["samples"])  # [n, C, N, 3]; dropped before writing
        log(f"baseline A: {per:.1f} s/dataset -> scaled {a['scaled_total_s']:.0f} s for {n} datasets")
        result["baseline_a_numpyro"] = a

    sp = {}
    if a:
        sp["vs_a_total"] = a["scaled_total_s"] / total
        sp["vs_a_workflow_only"] = a["scaled_total_s"] / t_wf
    if b:
        sp["vs_b_total"] = b["wall_s"] / total
        sp["vs_b_workflow_only"] = b["wall_s"] / t_wf
        sp["vs_b_run_excl_compile_total"] = b["run_s"] / total
    result["speedups"] = sp
    log(f"speed-ups: {sp}")

    # ---- reference + accuracy of every dataset
    acc_all, per_ds = None, {}
    if not args.skip_accuracy:
        rcfg = reference_config()
        blocks = list(range(0, n, REF_BLOCK))
        log(f"reference NUTS ({rcfg.num_chains} x ({rcfg.config.num_warmup} + {rcfg.config.num_samples}), target accept "
            f"{rcfg.config.target_acceptance_rate}) for {n} datasets in blocks of {REF_BLOCK} (cached in {args.cache_dir})")
        from tqdm.auto import tqdm

        refs, t_ref, n_cached = [], 0.0, 0
        for s0 in tqdm(blocks, desc="reference NUTS blocks", unit="block"):
            ref, cached = reference_block(model, ys_all[s0:s0 + REF_BLOCK], s0, seed, rcfg, args.cache_dir)
            n_cached += cached
            if not cached:
                t_ref += float(ref["wall_s"])
            refs.append(ref)
        ref = {k: np.concatenate([np.atleast_1d(r[k]) if np.ndim(r[k]) else np.full(len(r["draws"]), r[k])
                                  for r in refs])[:n]
               for k in refs[0] if k not in ("ys_hash", "wall_s")}
        num_ref_draws = ref["draws"].shape[1]
        ref_ok = reference_converged(ref, num_ref_draws)
        ref_sub = np.take_along_axis(ref["draws"], ref["sub_idx"][..., None].astype(np.int64), axis=1)
        floor = {k[6:]: ref[k] for k in ref if k.startswith("floor_")}
        ref_ess = ref["ess_bulk"]
        result["reference"] = {
            "config": repr(rcfg.config), "init": "prior SIR (256 draws) through initialize_positions",
            "num_blocks": len(blocks), "blocks_from_cache": n_cached,
            "wall_s_computed_this_run": t_ref, "num_converged": int(ref_ok.sum()),
            "num_not_converged": int((~ref_ok).sum()),
            "not_converged_indices": np.nonzero(~ref_ok)[0].tolist()[:50],
            "max_rhat": quantiles(ref["rhat"].max(1)), "min_ess_bulk": quantiles(ref["ess_bulk"].min(1)),
            "divergences": quantiles(ref["divergences"]),
            "step_size": quantiles(ref["step_size"]),
        }
        log(f"reference: {int(ref_ok.sum())}/{n} converged ({n_cached}/{len(blocks)} blocks cached, "
            f"{t_ref:.0f} s computed)")

        # the workflow's draws
        resolved = res.route != "failed"
        ev = ref_ok & resolved
        diag = res.diagnostics
        s = res.draws.shape[1]
        # the effective sample size behind each route's draws (importance-sampling ESS for the
        # weighted routes, bulk ESS for MCMC)
        ess_wf = np.select([res.route == "amortized", res.route == "psis", res.route == "refined"],
                           [s, np.minimum(s, diag["psis_ess"]), np.minimum(s, diag.get("refine_ess", np.nan))],
                           np.minimum(s, diag["ess_bulk_min"]))
        idx = np.nonzero(ev)[0]
        metrics = accuracy(res.draws[idx], ref_sub[idx], "accuracy: workflow vs reference")
        fl = {k: v[idx] for k, v in floor.items()}
        j = judge(res.draws[idx], ref["draws"][idx], ref_ess[idx], metrics, fl["marginal_tv"], ess_wf[idx])
        accurate = np.zeros(n, bool)
        accurate[idx] = j["accurate"]
        n_eval = int(ref_ok.sum())
        acc_all = {
            "criterion": CRITERION, "num_evaluable": n_eval,
            "num_reference_not_converged": int((~ref_ok).sum()),
            "num_failed_route_among_evaluable": int((ref_ok & ~resolved).sum()),
            "num_accurate": int(accurate[ref_ok].sum()),
            "fraction_accurate": float(accurate[ref_ok].sum() / max(n_eval, 1)),
            "by_route": {r: {"evaluable": int((ref_ok & (res.route == r)).sum()),
                             "accurate": int((accurate & ref_ok & (res.route == r)).sum())} for r in rc},
            "metrics": summarize_accuracy(j, metrics, fl),
        }
        log(f"accuracy: {acc_all['num_accurate']}/{n_eval} accurate ({100 * acc_all['fraction_accurate']:.1f}%); "
            f"by route {acc_all['by_route']}")
        per_ds = {"marginal_tv": np.full(n, np.nan), "floor_marginal_tv": floor["marginal_tv"][:n],
                  "max_abs_mean_error_std": np.full(n, np.nan), "max_abs_mean_error_mcse": np.full(n, np.nan),
                  "reference_converged": ref_ok, "accurate": accurate,
                  "reference_max_rhat": ref["rhat"].max(1), "reference_min_ess": ref["ess_bulk"].min(1),
                  "reference_divergences": ref["divergences"]}
        per_ds["marginal_tv"][idx] = metrics["marginal_tv"]
        per_ds["max_abs_mean_error_std"][idx] = np.max(np.abs(j["mean_err"]), 1)
        per_ds["max_abs_mean_error_mcse"][idx] = np.max(np.abs(j["mean_err"]) / j["se"], 1)

        # the baselines against the same reference (checks the criterion and the numpyro model)
        if b is not None:
            idx_b = np.nonzero(ref_ok & np.all(np.isfinite(res_b.draws), axis=(1, 2)))[0]
            db = subsample(jax.random.PRNGKey(seed + 10), res_b.draws[idx_b], s)
            mb = accuracy(db, ref_sub[idx_b], "accuracy: baseline B vs reference")
            jb = judge(db, ref["draws"][idx_b], ref_ess[idx_b], mb, floor["marginal_tv"][idx_b],
                       np.minimum(s, res_b.ess_bulk[idx_b].min(1)))
            b["accuracy_vs_reference"] = {"num_evaluated": int(idx_b.size), "num_accurate": int(jb["accurate"].sum()),
                                          "fraction_accurate": float(jb["accurate"].mean()) if idx_b.size else None,
                                          "draws_compared": s, "metrics": summarize_accuracy(jb, mb, {k: v[idx_b] for k, v in floor.items()})}
            log(f"baseline B vs reference: {int(jb['accurate'].sum())}/{idx_b.size} accurate by the same criterion")
        if a is not None:
            dr = a.pop("_draws")
            idx_a = np.nonzero(ref_ok[:n_np])[0]
            da_chains = dr[idx_a]
            da = da_chains.reshape(len(idx_a), -1, 3)
            ess_a = np.array([float(np.min(af.diagnostics.ess_bulk(jnp.asarray(c)))) for c in da_chains])
            da = subsample(jax.random.PRNGKey(seed + 11), da, s)
            ma = accuracy(da, ref_sub[idx_a], "accuracy: baseline A vs reference")
            ja = judge(da, ref["draws"][idx_a], ref_ess[idx_a], ma, floor["marginal_tv"][idx_a], np.minimum(s, ess_a))
            a["accuracy_vs_reference"] = {"num_evaluated": int(idx_a.size), "num_accurate": int(ja["accurate"].sum()),
                                          "marginal_tv": quantiles(ma["marginal_tv"]),
                                          "max_abs_mean_error_std": quantiles(np.max(np.abs(ja["mean_err"]), 1))}
            log(f"baseline A (numpyro) vs reference: {int(ja['accurate'].sum())}/{idx_a.size} accurate")
        result["accuracy"] = acc_all
    if a is not None:
        a.pop("_draws", None)

    # ---- goals
    goals = {"all_resolved": rc.get("failed", 0) == 0,
             "accurate_ge_99pct": None if acc_all is None else acc_all["fraction_accurate"] >= 0.99,
             "total_le_180s": total <= 180.0,
             "speedup_vs_numpyro_ge_100x": None if a is None else sp["vs_a_total"] >= 100.0,
             "speedup_vs_batched_nuts_ge_3x": None if b is None else sp["vs_b_total"] >= 3.0}
    result["goals"] = goals
    result["goal_notes"] = ("speed-ups and the 180 s goal use training + workflow wall time; A is scaled from "
                            f"{n_np} datasets, B is measured on all {n}; quick mode uses a smaller preset and "
                            "50 datasets, so its goals are indicative only")
    result["benchmark_wall_s"] = time.perf_counter() - t_bench

    # ---- per-dataset CSV
    import pandas as pd

    tab = res.table()
    keep = [c for c in ("dataset", "route", "ood_flag", "ood_score", "khat", "psis_ess", "refine_khat",
                        "refine_ess", "mcmc_stage",
                        "nested_rhat_max", "ess_bulk_min", "reason") if c in tab]
    tab = tab[keep]
    for k, v in per_ds.items():
        tab[k] = np.asarray(v)[:n]
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    csv = os.path.join(HERE, "results", f"{name}_per_dataset.csv")
    tab.to_csv(csv, index=False, float_format="%.5g")
    result["per_dataset_csv"] = os.path.relpath(csv, HERE)
    log(f"goals: {goals}")
    write_result(name, result)


if __name__ == "__main__":
    main()
