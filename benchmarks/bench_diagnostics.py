"""Benchmark: batched JAX diagnostics vs the per-dataset arviz / NumPy loop, in the same run.

- PSIS on K datasets x S draws (default 1000 x 2000), float32 JAX (one compiled call) vs an
  ``arviz.psislw`` loop over datasets; also k̂ agreement (float64 and float32) with arviz.
- nested R-hat on K datasets x 2048 chains (64 superchains x 32 chains, N draws, d params) vs a
  per-dataset NumPy loop (arviz has no nested R-hat) and, side by side, the rank-normalized R-hat
  (JAX vs an ``arviz.rhat`` loop, the closest arviz diagnostic on the same draws).
- accuracy metrics (MMD², energy, W1, marginal TV, ...) on 200 datasets x 2000 vs 2000 reference
  draws (timing only; they are O(S·R) per dataset).

Writes ``benchmarks/results/diagnostics.json``. ``--quick`` shrinks every size by 5x.
Run with ``make bench-diagnostics`` (two host devices: datasets are sharded over both cores).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import arviz as az
from amortflow.diagnostics import nested_rhat, posterior_accuracy, psis, rhat

warnings.filterwarnings("ignore")


def _shard(x):
    """Shard the leading (dataset) axis over all devices when it divides evenly."""
    devs = jax.devices()
    if len(devs) < 2 or x.shape[0] % len(devs):
        return jnp.asarray(x)
    mesh = Mesh(np.array(devs), ("data",))
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))


def _time(fn, *args, repeats=3):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return first, best


def _nested_rhat_numpy(x, k):
    """Per-dataset NumPy nested R-hat (vectorized within the dataset): ``x [C, N, d]``."""
    c, n, d = x.shape
    xs = x.reshape(k, c // k, n, d)
    cm = xs.mean(axis=2)
    b = cm.mean(axis=1).var(axis=0, ddof=1)
    w = cm.var(axis=1, ddof=1) + (xs.var(axis=2, ddof=1).mean(axis=1) if n > 1 else 0.0)
    return np.sqrt(1 + b / w.mean(axis=0))


def bench_psis(k, s, rng):
    # mixture of light- and heavy-tailed importance ratios (true tail shape 0.1 .. 1.2)
    shape = np.linspace(0.1, 1.2, k)[:, None]
    lw = np.log(rng.pareto(1 / shape, size=(k, s)) + 1.0) + 0.3 * rng.normal(size=(k, s))
    x32 = _shard(lw.astype(np.float32))
    f = jax.jit(psis)
    first, best = _time(f, x32)
    res32 = f(x32)
    t0 = time.perf_counter()
    ref_k = np.empty(k)
    for i in range(k):  # the per-dataset loop a user would write with arviz
        ref_k[i] = az.psislw(lw[i].copy())[1]
    t_arviz = time.perf_counter() - t0
    with jax.enable_x64(True):
        res64 = jax.jit(psis)(jnp.asarray(lw))
        k64 = np.asarray(res64.khat)
    k32 = np.asarray(res32.khat)
    fin = np.isfinite(ref_k)
    return {
        "num_datasets": k, "num_draws": s, "dtype": "float32",
        "jax_first_call_s": first, "jax_s": best, "arviz_loop_s": t_arviz,
        "speedup_vs_arviz": t_arviz / best,
        "khat_max_abs_diff_float64_vs_arviz": float(np.max(np.abs(k64[fin] - ref_k[fin]))),
        "psis_float32_khat_max_abs_diff": float(np.max(np.abs(k32[fin] - ref_k[fin]))),
        "float32_khat_inf_where_arviz_finite": int(np.sum(~np.isfinite(k32) & fin)),
        "accept_decision_disagreements_float32": int(np.sum((k32 <= 0.7) != (ref_k <= 0.7))),
    }


def bench_nested(k, superchains, m, n, d, rng, arviz_subset):
    c = superchains * m
    # converged and unconverged datasets mixed: superchain offsets of size 0 or 1
    off = rng.normal(size=(k, superchains, 1, 1, d)) * (rng.random((k, 1, 1, 1, 1)) < 0.5)
    x = (off + rng.normal(size=(k, superchains, m, n, d))).reshape(k, c, n, d).astype(np.float32)
    xj = _shard(x)
    f_nr = jax.jit(jax.vmap(lambda a: nested_rhat(a, superchains)))
    first, best = _time(f_nr, xj)
    out = np.asarray(f_nr(xj))
    t0 = time.perf_counter()
    ref = np.stack([_nested_rhat_numpy(x[i].astype(np.float64), superchains) for i in range(k)])
    t_np = time.perf_counter() - t0
    # rank-normalized R-hat: JAX batched vs arviz loop (on a subset if asked, extrapolated)
    f_r = jax.jit(jax.vmap(rhat))
    r_first, r_best = _time(f_r, xj, repeats=1)
    rj = np.asarray(f_r(xj))
    ka = min(k, arviz_subset)
    t0 = time.perf_counter()
    ra = np.array([[az.rhat(x[i, :, :, p].astype(np.float64)) for p in range(d)] for i in range(ka)])
    t_az = (time.perf_counter() - t0) * k / ka
    return {
        "num_datasets": k, "num_chains": c, "num_superchains": superchains, "chains_per_superchain": m,
        "num_draws": n, "num_params": d, "dtype": "float32",
        "nested_rhat": {
            "jax_first_call_s": first, "jax_s": best, "numpy_loop_s": t_np,
            "speedup_vs_numpy_loop": t_np / best,
            "max_abs_diff_vs_numpy": float(np.max(np.abs(out - ref))),
        },
        "rank_rhat": {
            "jax_first_call_s": r_first, "jax_s": r_best,
            "arviz_loop_s": t_az, "arviz_datasets_timed": ka,
            "arviz_loop_extrapolated": ka < k,
            "speedup_vs_arviz": t_az / r_best,
            "max_abs_diff_vs_arviz": float(np.max(np.abs(rj[:ka] - ra))),
        },
    }


def bench_accuracy(k, s, d, rng):
    draws = _shard(rng.normal(size=(k, s, d)).astype(np.float32))
    ref = _shard(rng.normal(size=(k, s, d)).astype(np.float32))
    f = jax.jit(posterior_accuracy)
    first, best = _time(f, draws, ref, repeats=1)
    out = f(draws, ref)
    return {
        "num_datasets": k, "num_draws": s, "num_reference": s, "num_params": d, "dtype": "float32",
        "jax_first_call_s": first, "jax_s": best, "ms_per_dataset": 1e3 * best / k,
        "median_mmd2_identical": float(np.median(out["mmd2"])),
        "median_marginal_tv_identical": float(np.median(out["marginal_tv"])),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5x smaller sizes")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "diagnostics.json"))
    args = ap.parse_args()
    q = 5 if args.quick else 1
    if args.quick and args.out.endswith("diagnostics.json"):
        args.out = args.out.replace("diagnostics.json", "diagnostics_quick.json")
    rng = np.random.default_rng(0)
    t_start = time.perf_counter()
    result = {
        "benchmark": "diagnostics",
        "quick": args.quick,
        "jax_version": jax.__version__, "arviz_version": az.__version__,
        "backend": jax.default_backend(), "num_devices": jax.device_count(),
        "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    print("PSIS ...", flush=True)
    result["psis"] = bench_psis(1000 // q, 2000, rng)
    print(json.dumps(result["psis"], indent=1), flush=True)
    print("nested R-hat ...", flush=True)
    result["nested_rhat"] = bench_nested(1000 // q, 64, 32, 10, 2, rng, arviz_subset=1000 // q)
    print(json.dumps(result["nested_rhat"], indent=1), flush=True)
    print("accuracy metrics ...", flush=True)
    result["accuracy"] = bench_accuracy(200 // q, 2000, 3, rng)  # ~0.1 s/dataset on 2 CPU cores
    print(json.dumps(result["accuracy"], indent=1), flush=True)
    result["total_s"] = time.perf_counter() - t_start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out} ({result['total_s']:.0f} s)")


if __name__ == "__main__":
    main()
