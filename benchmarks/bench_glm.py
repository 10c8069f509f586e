"""make bench-glm: the Bernoulli GLM experiment of the amortized-workflow paper (Li et al., arXiv
2409.04332: 10 000 datasets, about 5 min on a V100), on this machine.

    python benchmarks/bench_glm.py           # 10 000 test datasets, 200 reference datasets
    python benchmarks/bench_glm.py --quick   # 500 test datasets, 20 reference datasets, short training

Model: ``af.models.bernoulli_glm()`` -- 10 parameters (offset + 9-tap filter), 100 bins of a
fixed white-noise stimulus, the SBI benchmark's smoothness prior. Preset
``af.presets.bernoulli_glm_preset()``: the network sees the sufficient statistics ``X^T y``
(a fixed linear summary), online simulation; the workflow with ``WorkflowConfig()`` defaults
(PSIS, refinement and MCMC use the 100 raw bins).

Measured in this one run:

* **training + the workflow** on all test datasets (prior-predictive, fixed seed): routes, time
  per stage, total including training;
* **reference posteriors**: numpyro NUTS per dataset (4 chains x (1000 + 1000), fresh processes
  of 10 datasets, cached under ``benchmarks/cache``) on the first ``--num-ref`` datasets; their
  per-dataset times, **scaled** to all test datasets, are the numpyro baseline;
* **accuracy** of the workflow's draws vs the reference by bench-gev's criterion
  (:data:`bench_gev.CRITERION`);
* **amortflow's batched NUTS** (4 chains x (500 + 500), one compiled call) on the first
  ``--num-batched`` datasets, **scaled** to all test datasets: the "MCMC on everything" baseline.

Goals (issue 14): every dataset resolved or failed with a reason; >= 99% of the reference
subset accurate; >= 3x faster than batched NUTS; 10 000 datasets in <= 2 min including
training. Results: ``benchmarks/results/glm.json`` (``glm_quick.json``).
"""
from __future__ import annotations

import os
import sys

import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _paper import Experiment, run  # noqa: E402

import amortflow as af  # noqa: E402


def numpyro_glm_model(y):
    """The Bernoulli GLM in numpyro (reference NUTS): theta ~ MVN(0, precision P), y_t ~
    Bernoulli(logit = x_t^T theta) -- the density of ``af.models.bernoulli_glm()``."""
    import numpyro
    import numpyro.distributions as dist

    from amortflow.models.glm import glm_design_matrix, glm_prior_precision, glm_stimulus

    x = jnp.asarray(glm_design_matrix(glm_stimulus()))
    prec = jnp.asarray(glm_prior_precision(), jnp.float32)
    theta = numpyro.sample("theta", dist.MultivariateNormal(jnp.zeros(x.shape[1]), precision_matrix=prec))
    numpyro.sample("y", dist.Bernoulli(logits=x @ theta), obs=y)


def experiment() -> Experiment:
    import dataclasses

    model = af.models.bernoulli_glm()
    return Experiment(
        name="glm", model=model, preset=lambda quick: af.presets.bernoulli_glm_preset(model, quick=quick),
        ref_module="bench_glm", ref_fn="numpyro_glm_model",
        ref_model=dataclasses.replace(model, param_names=tuple(f"theta[{i}]" for i in range(model.dim))),
        ref_inputs=lambda ys, design: ys, ref_init_fn=None,
        to_reference_space=lambda draws: draws,  # the GLM's parameters are unconstrained
        sizes=(10_000, 200, 200), quick_sizes=(500, 20, 20), time_goal_s=120.0,
        description="`af.models.bernoulli_glm()` (10 parameters, 100 bins), preset `af.presets.bernoulli_glm_preset()` "
                    "(the network sees X^T y, online training)")


if __name__ == "__main__":
    run(experiment(), __doc__)
