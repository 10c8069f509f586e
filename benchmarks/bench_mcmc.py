"""Benchmark: batched many-chain MCMC across GEV datasets vs per-dataset baselines.

Run with ``make bench-mcmc`` (two host devices). Writes ``benchmarks/results/mcmc.json``.

Stages timed on ``--num-datasets`` (128) GEV datasets, each dataset with its own chains,
adaptation and diagnostics, all datasets in one compiled call sharded over both cores:
  ChEES (cpu_profile), MEADS (cpu_profile), NUTS (4 chains x 1000 warmup + 1000 draws).
Baselines, timed on a subset and scaled per dataset (labelled in the JSON):
  (a) per-dataset Python loop that rebuilds the jitted sampler per dataset (the observation
      closed over, as the reference implementation does), same sampler and config;
  (b) numpyro NUTS (4 x 1000 + 1000, sequential chains) per dataset, in a fresh subprocess.
Starting points: no trained network here, so the candidates are 256 prior draws per dataset
with importance log weights = log-likelihood (sampling-importance-resampling from the prior),
passed through ``initialize_positions`` exactly as amortized draws + PSIS weights would be.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import amortflow as af
from amortflow import mcmc
from amortflow.models import Observation

RESULTS = os.path.join(os.path.dirname(__file__), "results", "mcmc.json")


def quantiles(x):
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {}
    q = np.quantile(x, [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0])
    return dict(zip(["min", "q05", "q25", "median", "q75", "q95", "max"], map(float, q)))


def make_data(key, num):
    model = af.models.gev()
    k1, k2 = jax.random.split(key)
    _, ys = model.sample_prior_predictive(k1, num)
    cand = jax.vmap(lambda k: model.sample_prior(k, 256))(jax.random.split(k2, num))
    logw = jax.vmap(lambda c, y: jax.vmap(lambda t: model.log_likelihood(t, y))(c))(cand, ys)
    return model, ys, cand, logw


def stats(res: mcmc.MCMCResult, total_s: float, num: int):
    return {
        "num_datasets": num,
        "compile_s": float(res.compile_time_s.sum()),
        "run_s": float(res.wall_time_s.sum()),
        "total_s": total_s,
        "datasets_per_s": num / total_s,
        "datasets_per_s_excl_compile": num / float(res.wall_time_s.sum()),
        "converged_fraction": float(res.converged.mean()),
        "max_nested_rhat": quantiles(res.nested_rhat.max(1)),
        "max_rhat": quantiles(res.rhat.max(1)),
        "min_ess_bulk": quantiles(res.ess_bulk.min(1)),
        "min_ess_tail": quantiles(res.ess_tail.min(1)),
        "divergences": quantiles(res.divergences),
        "grad_evals_per_dataset": quantiles(res.num_grad_evals),
        "step_size": quantiles(res.step_size),
    }


def run_batched(name, rung, model, ys, cand, logw, key):
    sampler = rung.sampler
    init, info = mcmc.initialize_positions(key, model, ys, cand, logw, sampler.num_superchains)
    t0 = time.perf_counter()
    res = mcmc.run_sampler(key, model, ys, init, sampler, layout=rung.layout)
    total = time.perf_counter() - t0
    out = stats(res, total, ys.shape[0])
    out["init_fallback_datasets"] = int(np.sum(np.asarray(info.num_fallback) > 0))
    out["config"] = {**dataclasses.asdict(sampler.config), **dataclasses.asdict(rung.layout)}
    print(f"{name}: {out['datasets_per_s']:.3f} datasets/s (compile {out['compile_s']:.1f} s, "
          f"run {out['run_s']:.1f} s), converged {out['converged_fraction']:.2f}, "
          f"median max nested R-hat {out['max_nested_rhat']['median']:.4f}", flush=True)
    return out, init


def run_rebuild_loop(name, rung, model, ys, init, key, num):
    """(a): one jitted function built per dataset with the observation closed over."""
    one = rung.sampler.per_dataset(model)
    times = []
    for i in range(num):
        t0 = time.perf_counter()
        obs = Observation(ys[i], jnp.float32(1.0))
        fn = jax.jit(lambda k, x0: one(k, obs, x0))
        out = jax.block_until_ready(fn(jax.random.fold_in(key, i), init[i]))
        times.append(time.perf_counter() - t0)
    per = float(np.mean(times))
    print(f"(a) {name} rebuild-per-dataset loop: {per:.2f} s/dataset on {num} datasets", flush=True)
    return {"num_datasets_timed": num, "seconds_per_dataset": per, "datasets_per_s": 1.0 / per,
            "times_s": times}


NUMPYRO_CHILD = r"""
import sys, time, json, numpy as np, jax, jax.numpy as jnp
import amortflow as af
from numpyro.infer import MCMC, NUTS
model = af.models.gev()
d = np.load(sys.argv[1])
ys, init = d["ys"], d["init"]
times = []
for i in range(ys.shape[0]):
    y = jnp.asarray(ys[i])
    t0 = time.perf_counter()
    mc = MCMC(NUTS(potential_fn=lambda th: -model.log_density(th, y)), num_warmup=1000,
              num_samples=1000, num_chains=4, chain_method="sequential", progress_bar=False)
    mc.run(jax.random.PRNGKey(i), init_params=jnp.asarray(init[i]))
    jax.block_until_ready(mc.get_samples())
    times.append(time.perf_counter() - t0)
print(json.dumps(times))
"""


def run_numpyro(ys, init, num, chunk):
    """(b): numpyro NUTS per dataset, in chunks of fresh processes (DESIGN: LLVM memory)."""
    import tempfile
    times = []
    for s0 in range(0, num, chunk):
        with tempfile.NamedTemporaryFile(suffix=".npz", delete=False) as f:
            np.savez(f, ys=np.asarray(ys[s0:s0 + chunk]), init=np.asarray(init[s0:s0 + chunk]))
        env = dict(os.environ, XLA_FLAGS="")
        out = subprocess.run([sys.executable, "-c", NUMPYRO_CHILD, f.name], capture_output=True,
                             text=True, env=env, check=True)
        os.unlink(f.name)
        times += json.loads(out.stdout.strip().splitlines()[-1])
    per = float(np.mean(times))
    print(f"(b) numpyro NUTS per dataset: {per:.2f} s/dataset on {num} datasets", flush=True)
    return {"num_datasets_timed": num, "seconds_per_dataset": per, "datasets_per_s": 1.0 / per,
            "times_s": times, "chunk_size": chunk}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--num-datasets", type=int, default=128)
    p.add_argument("--num-baseline", type=int, default=4, help="datasets timed for (a) and (b)")
    p.add_argument("--numpyro-chunk", type=int, default=8)
    p.add_argument("--samplers", default="chees,meads,nuts")
    p.add_argument("--skip-numpyro", action="store_true")
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--quick", action="store_true", help="16 datasets, 2 baseline datasets (make bench)")
    args = p.parse_args()
    if args.quick:
        args.num_datasets, args.num_baseline = 16, 2
        if args.out == RESULTS:
            args.out = RESULTS.replace("mcmc.json", "mcmc_quick.json")

    key = jax.random.PRNGKey(2024)
    model, ys, cand, logw = make_data(key, args.num_datasets)
    # the samplers (and layouts) of the workflow's default ladder on this backend; on CPU the
    # ladder has no ChEES rung, so ChEES runs with the same 4 x 16 layout as MEADS
    cfgs = {"chees": mcmc.Rung("chees", mcmc.chees.auto() if jax.default_backend() != "cpu" else
                               mcmc.chees.cpu_profile(num_superchains=4, chains_per_superchain=16,
                                                      num_warmup=200, num_samples=50))}
    for rung in mcmc.default_ladder().rungs:
        cfgs.setdefault(rung.sampler.name, rung)
    result = {
        "backend": jax.default_backend(), "devices": len(jax.devices()),
        "model": "gev", "num_datasets": args.num_datasets,
        "init": "256 prior draws per dataset, log weights = log-likelihood (SIR stand-in for "
                "amortized draws + PSIS)",
        "batched": {}, "rebuild_loop_a": {}, "ratios": {},
    }
    inits = {}
    for name in args.samplers.split(","):
        result["batched"][name], inits[name] = run_batched(name, cfgs[name], model, ys, cand, logw,
                                                           jax.random.fold_in(key, 1))
    nb = args.num_baseline
    for name in args.samplers.split(","):
        a = run_rebuild_loop(name, cfgs[name], model, ys, inits[name],
                             jax.random.fold_in(key, 2), nb)
        a["label"] = f"timed on {nb} datasets, scaled per dataset"
        result["rebuild_loop_a"][name] = a
        result["ratios"][f"{name}_vs_rebuild_loop_a"] = (
            result["batched"][name]["datasets_per_s"] / a["datasets_per_s"])
    if not args.skip_numpyro:
        init_nuts = inits.get("nuts")
        if init_nuts is None:
            init_nuts, _ = mcmc.initialize_positions(key, model, ys, cand, logw, 4)
        b = run_numpyro(ys, init_nuts, nb, args.numpyro_chunk)
        b["label"] = f"timed on {nb} datasets, scaled per dataset"
        result["numpyro_nuts_b"] = b
        for name in result["batched"]:
            result["ratios"][f"{name}_vs_numpyro_b"] = (
                result["batched"][name]["datasets_per_s"] / b["datasets_per_s"])
    print(json.dumps(result["ratios"], indent=1))
    sys.path.insert(0, os.path.dirname(__file__))
    from _common import environment, write_readme

    result["environment"] = environment()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, default=str)
    print(f"wrote {args.out}")
    print(f"wrote {write_readme()}")


if __name__ == "__main__":
    main()
