"""make bench-psychometric: the psychometric-curve experiment of the amortized-workflow paper (Li
et al., arXiv 2409.04332), with per-dataset trial counts, on this machine.

    python benchmarks/bench_psychometric.py           # 1000 test datasets, 200 reference datasets
    python benchmarks/bench_psychometric.py --quick   # 200 test datasets, 20 reference datasets, short training

Model: ``af.models.psychometric()`` -- 5 parameters (bias, slope, two lapse rates,
overdispersion), BetaBinomial responses at 9 intensities; **the number of trials per intensity is
per-dataset design data** drawn by ``psychometric_design_sampler()`` (even blocks, several
hundred trials on one side of zero, irregular counts): one network and one compiled workflow for
all of them. Preset ``af.presets.psychometric_preset()``; the workflow with ``WorkflowConfig()``.
What is measured and the goals: ``benchmarks/_paper.py``. Results:
``benchmarks/results/psychometric.json`` (``psychometric_quick.json``).
"""
from __future__ import annotations

import os
import sys

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _paper import Experiment, constrained, run  # noqa: E402

import amortflow as af  # noqa: E402


def numpyro_psychometric_model(data):
    """The psychometric model in numpyro (reference NUTS); ``data [2, 9]``: responses, then trials
    per intensity -- the density of ``af.models.psychometric()``."""
    import numpyro
    import numpyro.distributions as dist

    from amortflow.models.psychometric import PSYCHOMETRIC_INTENSITIES

    x = jnp.asarray(PSYCHOMETRIC_INTENSITIES)
    y, n = data[0], data[1]
    mu01 = numpyro.sample("mu01", dist.Beta(2.0, 2.0))
    mu = numpyro.deterministic("mu", 2.0 * mu01 - 1.0)
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    gamma = numpyro.sample("gamma", dist.Beta(1.0, 10.0))
    lam = numpyro.sample("lambda", dist.Beta(1.0, 10.0))
    nu = numpyro.sample("nu", dist.Beta(1.0, 10.0))
    p = gamma + (1.0 - gamma - lam) * dist.Normal().cdf((x - mu) / sigma)
    c = 1.0 / nu ** 2 - 1.0
    numpyro.sample("y", dist.BetaBinomial(p * c, (1.0 - p) * c, total_count=n), obs=y)


def numpyro_psychometric_init(theta):
    """amortflow unconstrained ``[chains, 5]`` -> numpyro's unconstrained sites (both use logit
    for the unit-interval parameters and log for sigma; mu01 = (mu + 1) / 2 has mu's logit)."""
    theta = jnp.asarray(theta)
    return {"mu01": theta[:, 0], "sigma": theta[:, 1], "gamma": theta[:, 2], "lambda": theta[:, 3], "nu": theta[:, 4]}


def experiment() -> Experiment:
    model = af.models.psychometric()
    return Experiment(
        name="psychometric", model=model, preset=lambda quick: af.presets.psychometric_preset(quick=quick),
        ref_module="bench_psychometric", ref_fn="numpyro_psychometric_model", ref_model=model,
        ref_inputs=lambda ys, design: np.stack([ys, design["trials"]], axis=1),
        ref_init_fn="numpyro_psychometric_init", to_reference_space=constrained(model),
        sizes=(1000, 200, 200), quick_sizes=(200, 20, 20), time_goal_s=None,
        description="`af.models.psychometric()` (5 parameters, 9 intensities, trials per intensity as per-dataset "
                    "design data), preset `af.presets.psychometric_preset()`")


if __name__ == "__main__":
    run(experiment(), __doc__)
