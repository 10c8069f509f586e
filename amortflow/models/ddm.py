"""Six-parameter drift-diffusion model (DDM) of von Krausen et al. (2022), as run by the
amortized-workflow paper (Li et al., arXiv 2409.04332).

Two conditions c in {0, 1}, each with its own drift v_c and boundary separation a_c;
non-decision times t_plus (upper-boundary responses) and t_minus (lower-boundary responses);
unbiased start w = 1/2; ``num_trials_per_condition`` trials per condition.

Priors (constrained): v_c ~ Gamma(shape 2, rate 1), a_c ~ Gamma(shape 6, scale 0.15),
t_plus ~ Gamma(shape 3, scale 0.15), t_minus ~ Gamma(shape 3, scale 0.5).
Unconstrained vector theta = log of (v1, v2, a1, a2, t_plus, t_minus).

One dataset y [2n, 2] (n = ``num_trials_per_condition``): column 0 the signed response time in
seconds (+rt: upper boundary, -rt: lower boundary), column 1 the condition (0.0 for the first n
rows, 1.0 for the rest). Rows are exchangeable (each carries its condition): the
observation kind is ``"set"``, as :func:`~amortflow.models.base.infer_obs_kind` finds.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from amortflow.models.base import Model, make_model
from amortflow.models.transforms import positive_forward
from amortflow.models.wiener import wiener_log_density, wiener_sample

PARAM_NAMES = ("v1", "v2", "a1", "a2", "t_plus", "t_minus")
#: (shape, scale) of each parameter's Gamma prior, in PARAM_NAMES order (rate 1 = scale 1)
PRIORS = ((2.0, 1.0), (2.0, 1.0), (6.0, 0.15), (6.0, 0.15), (3.0, 0.15), (3.0, 0.5))
#: relative start point (unbiased)
START = 0.5


def _gamma_log_prior_unconstrained(theta):
    """sum_i log Gamma(exp(theta_i) | k_i, s_i) + theta_i (log-Jacobian of exp), in theta
    directly: k theta - e^theta / s - k log s - lgamma(k), exact where exp would over/underflow."""
    k = jnp.asarray([p[0] for p in PRIORS], theta.dtype)
    s = jnp.asarray([p[1] for p in PRIORS], theta.dtype)
    const = sum(-kk * math.log(ss) - math.lgamma(kk) for kk, ss in PRIORS)
    return jnp.sum(k * theta - jnp.exp(theta) / s) + const


def drift_diffusion(num_trials_per_condition: int = 60) -> Model:
    """The two-condition, six-parameter DDM; ``2 * num_trials_per_condition`` trials per dataset."""
    n = int(num_trials_per_condition)
    if n < 1:
        raise ValueError(f"drift_diffusion: num_trials_per_condition must be >= 1, got {n}")
    condition = jnp.concatenate([jnp.zeros(n), jnp.ones(n)])

    def unpack(theta):
        x, _ = positive_forward(theta)
        return x[0:2], x[2:4], x[4], x[5]  # v [2], a [2], t_plus, t_minus

    def sample_prior(key, num):
        keys = jax.random.split(key, len(PRIORS))
        # log of a Gamma(k, s) draw, sampled in log space (no underflow to log 0)
        cols = [jax.random.loggamma(kk, k, (num,)) + math.log(s) for kk, (k, s) in zip(keys, PRIORS)]
        return jnp.stack(cols, axis=-1)

    def log_prior(theta):
        return _gamma_log_prior_unconstrained(theta)

    def log_likelihood(theta, y):
        v, a, t_plus, t_minus = unpack(theta)
        rt, c = y[:, 0], y[:, 1]
        good_c = (c == 0) | (c == 1)
        idx = jnp.where(c == 1, 1, 0)
        upper = rt > 0
        # decision time: response time minus the non-decision time of the boundary hit;
        # rt == 0 counts as lower with decision time -t_minus < 0, hence -inf
        dt = jnp.where(upper, rt - t_plus, -rt - t_minus)
        ll = wiener_log_density(dt, v[idx], a[idx], START, upper=upper)
        return jnp.sum(jnp.where(good_c, ll, -jnp.inf))

    def simulate(key, theta):
        v, a, t_plus, t_minus = unpack(theta)
        keys = jax.random.split(key, 2)
        t, upper = jax.vmap(lambda k, vc, ac: wiener_sample(k, vc, ac, START, (n,)))(keys, v, a)
        t, upper = t.reshape(-1), upper.reshape(-1)  # condition 0 rows first, then condition 1
        rt = jnp.where(upper, t + t_plus, -(t + t_minus))
        return jnp.stack([rt, condition.astype(rt.dtype)], axis=-1)

    def constrain(theta):
        x, _ = positive_forward(theta)
        return {name: x[i] for i, name in enumerate(PARAM_NAMES)}

    return make_model(
        name="drift_diffusion",
        param_names=PARAM_NAMES,
        obs_shape=(2 * n, 2),
        # what make_model's row-permutation probe infers (tested); stated here because the probe
        # simulates and evaluates the likelihood op by op, which takes seconds for this model
        obs_kind="set",
        sample_prior=sample_prior,
        simulate=simulate,
        log_prior=log_prior,
        log_likelihood=log_likelihood,
        constrain=constrain,
        info={
            "priors": {
                "v1": "Gamma(shape=2, rate=1)",
                "v2": "Gamma(shape=2, rate=1)",
                "a1": "Gamma(shape=6, scale=0.15)",
                "a2": "Gamma(shape=6, scale=0.15)",
                "t_plus": "Gamma(shape=3, scale=0.15)",
                "t_minus": "Gamma(shape=3, scale=0.5)",
            },
            "start_point": START,
            "num_trials_per_condition": n,
            "num_trials": 2 * n,
            "observation": "[2n, 2]: signed response time (+ upper, - lower boundary), condition 0/1",
            "reference": "von Krausen et al. (2022); Li et al., arXiv 2409.04332; density: Navarro & Fuss (2009)",
        },
    )
