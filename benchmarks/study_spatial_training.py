"""Training study behind bank augmentation (benchmarks/README.md, "Measurements behind design
choices"): the spatial GP's NBE (pinball 5/50/95%) trained on the bench-spatial bank (16 000 +
2 000 fields, 3000 steps) with the summary network or the data source varied, scored on 1000
test fields against the exact posterior (review metrics x 10^2).

    python benchmarks/study_spatial_training.py base,wide,flatten          # bank, model symmetries on
    python benchmarks/study_spatial_training.py base --no-symmetry         # bank, no augmentation
    python benchmarks/study_spatial_training.py base:online                # fresh simulations each step

Variants: ``base`` (the default CNN), ``wide`` (channels 32/64/128, hidden 128), ``flatten``
(flattened instead of mean-pooled features), ``k5`` (5 x 5 kernels), ``deep`` (4 blocks); a
``:online`` suffix trains on online simulation instead of the bank. Prints one line per variant
(metrics, training time, validation-loss history).
"""
import argparse
import dataclasses
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_spatial import metrics, to_ell  # noqa: E402

import amortflow as af  # noqa: E402
from amortflow.models.spatial import spatial_gp_grid_posterior  # noqa: E402
from amortflow.nets import CNNSummarySpec  # noqa: E402

SPECS = {
    "base": CNNSummarySpec(out_dim=16),
    "wide": CNNSummarySpec(channels=(32, 64, 128), hidden=(128,), out_dim=16),
    "flatten": CNNSummarySpec(pooling="flatten", out_dim=16),
    "k5": CNNSummarySpec(kernel_size=5, out_dim=16),
    "deep": CNNSummarySpec(channels=(32, 64, 128, 128), hidden=(128,), out_dim=16),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("variants", help="comma-separated, e.g. base,wide,base:online")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--no-symmetry", action="store_true", help="train without the model's symmetries")
    args = ap.parse_args()
    k_test, k_bank, k_nbe = jax.random.split(jax.random.PRNGKey(0), 10)[:3]  # bench-spatial's keys
    model = af.models.spatial_gp()
    if args.no_symmetry:
        model = dataclasses.replace(model, symmetry=None)
    theta_test, ys = jax.jit(model.sample_prior_predictive, static_argnums=1)(k_test, 1000)
    ys, ell_true = np.asarray(ys), to_ell(np.asarray(theta_test)[:, 0])
    bank = af.estimators.simulate_bank(k_bank, model, 18000, progress=False)
    post = spatial_gp_grid_posterior(model, ys)
    print("exact", {k: v for k, v in metrics("exact", ell_true, draws=post.sample(k_test, 4000)).items()}, flush=True)
    for v in args.variants.split(","):
        name, _, mode = v.partition(":")
        data = {} if mode == "online" else {"bank": bank, "num_validation": 2000}
        t0 = time.perf_counter()
        nbe = af.fit_point_estimator(k_nbe, model, af.estimators.Pinball(levels=(0.05, 0.5, 0.95)),
                                     summary=SPECS[name], train_config=af.TrainConfig(num_steps=args.steps),
                                     progress=False, **data)
        t = time.perf_counter() - t0
        qs = np.asarray(nbe.quantiles(ys))
        m = metrics("nbe", ell_true, estimate=to_ell(qs[:, 1, 0]), lower=to_ell(qs[:, 0, 0]), upper=to_ell(qs[:, 2, 0]))
        print(v, f"steps {args.steps}, train {t:.0f} s,",
              {k: None if x is None else round(100 * x, 2) for k, x in m.items()},
              "val loss", [round(x, 4) for x in nbe.history["val_loss"]],
              "last train loss", [round(x, 4) for x in nbe.history["train_loss"][-3:]], flush=True)


if __name__ == "__main__":
    main()
