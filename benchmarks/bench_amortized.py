"""make bench-amortized: training steps/s, amortized draws/s for 1000 GEV datasets x 2000 draws,
and the sampling pass's achieved GFLOP/s against this machine's sgemm rate (the roofline).

    python benchmarks/bench_amortized.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(__file__))
from _common import best_time, compiled_flops, sgemm_gflops, write_result  # noqa: E402

import amortflow as af  # noqa: E402
from amortflow._backend import datasets_per_step  # noqa: E402
from amortflow.estimators.npe import _sample_and_log_prob, init_params, NPESpec  # noqa: E402
from amortflow.presets import gev_preset  # noqa: E402


def matmul_flops_per_draw(spec: NPESpec) -> float:
    """Analytic multiply-add FLOPs of the flow's dense layers for one draw (context projections
    are per dataset and excluded)."""
    f = spec.flow
    n_id, n_tr = spec.dim // 2, spec.dim - spec.dim // 2
    per = 3 * f.num_bins + 1 if f.transform == "spline" else 2
    widths = list(f.hidden)
    flops = 2 * n_id * widths[0]
    for a, b in zip(widths[:-1], widths[1:]):
        flops += 2 * a * b
    flops += 2 * widths[-1] * n_tr * per
    return float(f.num_layers * flops)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes (make bench)")
    args = ap.parse_args()
    num_datasets, num_draws = (200, 500) if args.quick else (1000, 2000)
    preset = gev_preset()
    model, test_model = af.models.gev(), af.models.gev(test_prior=True)

    roofline = sgemm_gflops()
    print(f"sgemm roofline: {roofline:.1f} GFLOP/s")

    # ---- training throughput (fused lax.scan steps; compile excluded)
    from amortflow.estimators.data import fit_standardization
    from amortflow.estimators.npe import npe_loss
    from amortflow.estimators.training import _make_chunk

    theta, ys = af.estimators.simulate_bank(jax.random.PRNGKey(0), model, 10_000, progress=False)
    spec = NPESpec(dim=3, obs_shape=model.obs_shape, obs_kind="set", summary=preset.summary, flow=preset.flow)
    std = fit_standardization(theta, ys, "set")
    params = init_params(spec, jax.random.PRNGKey(1))
    cfg = preset.train
    opt = cfg.optimizer()
    bs = cfg.batch_size

    def batch_fn(d, k):
        idx = jax.random.randint(k, (bs,), 0, d[0].shape[0])
        return d[0][idx], d[1][idx]

    steps = 50 if args.quick else 200
    chunk = _make_chunk(lambda p, b, k: npe_loss(spec, p, std, b, k), batch_fn, opt, steps)
    from amortflow.estimators.training import TrainState

    state = TrainState(params, opt.init(params), jnp.zeros((), jnp.int32))
    data = (jnp.asarray(theta), jnp.asarray(ys))
    state, _ = chunk(state, data, jax.random.PRNGKey(2))
    jax.block_until_ready(state)
    t_train = best_time(lambda: jax.block_until_ready(chunk(state, data, jax.random.PRNGKey(3))), 2)
    steps_per_s = steps / t_train
    print(f"training: {steps_per_s:.1f} steps/s (batch {bs}, {1000 / steps_per_s:.2f} ms/step)")

    # ---- amortized sampling pass
    _, test_ys = test_model.sample_prior_predictive(jax.random.PRNGKey(4), num_datasets)
    est = af.PosteriorEstimator(spec=spec, params=state.params, standardization=std,
                                param_names=model.param_names, model_name=model.name)
    key = jax.random.PRNGKey(5)
    t0 = time.perf_counter()
    jax.block_until_ready(est.sample_and_log_prob(key, test_ys, num_draws))
    first_call = time.perf_counter() - t0
    t_sample = best_time(lambda: jax.block_until_ready(est.sample_and_log_prob(key, test_ys, num_draws)), 3)
    total_draws = num_datasets * num_draws
    n_dev = len(jax.devices())
    bs_ds = datasets_per_step(num_datasets // n_dev, num_draws)
    xla_flops = compiled_flops(_sample_and_log_prob, spec, est.params, std, jax.random.split(key, num_datasets),
                               jnp.asarray(test_ys, jnp.float32), None, num_draws, bs_ds, n_dev)
    mm_flops = matmul_flops_per_draw(spec) * total_draws
    achieved = mm_flops / t_sample / 1e9
    print(f"sampling {num_datasets} x {num_draws}: {t_sample:.2f} s, {total_draws / t_sample:.3g} draws/s, "
          f"{achieved:.1f} GFLOP/s matmul = {100 * achieved / roofline:.0f}% of roofline")
    # datasets per lax.map step: the default keeps activations cache-sized on CPU
    sweep = {}
    for per_step in sorted({1, bs_ds, 16, (1 << 19) // num_draws}):
        if per_step > num_datasets // n_dev:
            continue
        fn = lambda: jax.block_until_ready(est.sample_and_log_prob(key, test_ys, num_draws, batch_size=per_step))
        fn()
        sweep[per_step] = best_time(fn, 2)
        print(f"  {per_step:4d} datasets per step: {sweep[per_step]:.2f} s")
    write_result("amortized_quick" if args.quick else "amortized", {
        "quick": args.quick,
        "roofline_sgemm_gflops": roofline,
        "training": {"batch_size": bs, "steps_timed": steps, "steps_per_second": steps_per_s,
                     "ms_per_step": 1000 / steps_per_s, "summary": str(preset.summary), "flow": str(preset.flow)},
        "sampling": {
            "num_datasets": num_datasets, "num_draws": num_draws, "seconds": t_sample,
            "first_call_seconds_incl_compile": first_call,
            "draws_per_second": total_draws / t_sample,
            "matmul_flops": mm_flops, "xla_counted_flops": xla_flops,
            "achieved_matmul_gflops": achieved,
            "achieved_xla_gflops": None if not xla_flops else xla_flops / t_sample / 1e9,
            "fraction_of_roofline": achieved / roofline,
            "target_fraction": 0.30,
        },
    })


if __name__ == "__main__":
    main()
