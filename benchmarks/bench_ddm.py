"""make bench-ddm: the six-parameter drift-diffusion experiment of the amortized-workflow paper
(Li et al., arXiv 2409.04332; model of von Krausen et al., 2022), on this machine.

    python benchmarks/bench_ddm.py           # 1000 test participants, 200 reference participants
    python benchmarks/bench_ddm.py --quick   # 200 test participants, 20 reference participants, short training

Model: ``af.models.drift_diffusion()`` -- drift and boundary separation per condition,
non-decision times per response, 120 signed response times per participant; likelihood the
Wiener first-passage-time density (``amortflow.models.wiener``). Preset
``af.presets.drift_diffusion_preset()``; the workflow with ``WorkflowConfig()``. What is measured
and the goals: ``benchmarks/_paper.py``. The numpyro reference evaluates amortflow's Wiener
density (numpyro has none). Results: ``benchmarks/results/ddm.json`` (``ddm_quick.json``).
"""
from __future__ import annotations

import os
import sys

import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _paper import Experiment, constrained, run  # noqa: E402

import amortflow as af  # noqa: E402


def numpyro_ddm_model(y):
    """The DDM in numpyro (reference NUTS), ``y [120, 2]`` (signed RT, condition): Gamma priors,
    ``numpyro.factor`` with amortflow's Wiener log density -- the density of
    ``af.models.drift_diffusion()``."""
    import numpyro
    import numpyro.distributions as dist

    from amortflow.models.ddm import PARAM_NAMES, PRIORS, START
    from amortflow.models.wiener import wiener_log_density

    p = {name: numpyro.sample(name, dist.Gamma(k, 1.0 / s)) for name, (k, s) in zip(PARAM_NAMES, PRIORS)}
    rt, c = y[:, 0], y[:, 1].astype(jnp.int32)
    v = jnp.stack([p["v1"], p["v2"]])[c]
    a = jnp.stack([p["a1"], p["a2"]])[c]
    upper = rt > 0
    dt = jnp.where(upper, rt - p["t_plus"], -rt - p["t_minus"])
    numpyro.factor("y", jnp.sum(wiener_log_density(dt, v, a, START, upper=upper)))


def numpyro_ddm_init(theta):
    """amortflow unconstrained ``[chains, 6]`` (logs) -> numpyro's unconstrained sites (log too)."""
    from amortflow.models.ddm import PARAM_NAMES

    theta = jnp.asarray(theta)
    return {name: theta[:, i] for i, name in enumerate(PARAM_NAMES)}


def experiment() -> Experiment:
    model = af.models.drift_diffusion()
    return Experiment(
        name="ddm", model=model, preset=lambda quick: af.presets.drift_diffusion_preset(quick=quick),
        ref_module="bench_ddm", ref_fn="numpyro_ddm_model", ref_model=model,
        ref_inputs=lambda ys, design: ys, ref_init_fn="numpyro_ddm_init", to_reference_space=constrained(model),
        sizes=(1000, 200, 200), quick_sizes=(200, 20, 20), time_goal_s=None,
        # the density drops to 0 where a non-decision time passes the fastest response: NUTS
        # diverges at that edge, as on GEV's support boundary (bench-gev also allows 10%)
        max_div_frac=0.10,
        description="`af.models.drift_diffusion()` (6 parameters, 2 conditions x 60 trials, Wiener likelihood), "
                    "preset `af.presets.drift_diffusion_preset()`")


if __name__ == "__main__":
    run(experiment(), __doc__)
