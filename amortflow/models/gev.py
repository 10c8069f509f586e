"""Generalized extreme value (GEV) model of the amortized-workflow paper (Li et al., 2409.04332).

Parameters (constrained): location mu, scale sigma > 0, shape xi in [-b, b].
Priors: mu ~ N(3.8, 0.2^2), sigma ~ HalfNormal(0.3), xi ~ TruncatedNormal(0, 0.2^2) on
[-0.6, 0.6]; 65 iid observations per dataset. ``test_prior=True`` doubles every prior scale
(xi bounds +-1.2), which is how the paper draws its test datasets.

Unconstrained vector theta = (mu, log sigma, logit((xi + b) / 2b)).

Density (xi != 0): log f(y) = -log sigma - (1 + 1/xi) log t - t^(-1/xi), t = 1 + xi (y - mu)/sigma,
-inf where t <= 0 (bounded support). scipy's ``genextreme`` uses c = -xi.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy import stats as jstats

from amortflow.models.base import Model, make_model
from amortflow.models.transforms import (
    interval_forward,
    interval_inverse,
    positive_forward,
    positive_inverse,
)

_SMALL_XI = 1e-4


def gev_logpdf(y, mu, sigma, xi):
    """Elementwise GEV log density; ``-inf`` outside the support, finite gradients everywhere."""
    z = (y - mu) / sigma
    q = xi * z
    valid = q > -1.0
    q_safe = jnp.where(valid, q, 0.0)
    z_safe = jnp.where(valid, z, 0.0)
    small = jnp.abs(xi) < _SMALL_XI
    xi_safe = jnp.where(small, 1.0, xi)
    a = jnp.where(
        small,
        z_safe * (1.0 - q_safe / 2.0 + q_safe * q_safe / 3.0),
        jnp.log1p(q_safe) / xi_safe,
    )
    lt = jnp.log1p(q_safe)
    # t^(-1/xi) = exp(-a) overflows float32 near the support edge; clamping keeps the value
    # hugely negative (not -inf) and the gradient finite
    lp = -jnp.log(sigma) - lt - a - jnp.exp(-jnp.maximum(a, -50.0))
    return jnp.where(valid, lp, -jnp.inf)


def gev_sample(key, mu, sigma, xi, shape):
    """Inverse-CDF GEV draws of ``shape`` (broadcast against the parameters)."""
    u = jax.random.uniform(key, shape, minval=1e-7, maxval=1.0 - 1e-7)
    ell = jnp.log(-jnp.log(u))  # Gumbel: y = mu - sigma * ell
    small = jnp.abs(xi) < _SMALL_XI
    xi_safe = jnp.where(small, 1.0, xi)
    w = jnp.where(small, -ell + xi * ell * ell / 2.0, jnp.expm1(-xi_safe * ell) / xi_safe)
    return mu + sigma * w


def gev(test_prior: bool = False, num_obs: int = 65) -> Model:
    """The GEV model; ``test_prior=True`` gives the doubled-scale prior used for test datasets."""
    f = 2.0 if test_prior else 1.0
    mu_loc, mu_scale = 3.8, 0.2 * f
    sigma_scale = 0.3 * f
    xi_scale, xi_bound = 0.2 * f, 0.6 * f
    lo, hi = -xi_bound, xi_bound
    names = ("mu", "sigma", "xi")

    def unpack(theta):
        mu = theta[0]
        sigma, ld_s = positive_forward(theta[1])
        xi, ld_x = interval_forward(theta[2], lo, hi)
        return mu, sigma, xi, ld_s + ld_x

    def sample_prior(key, n):
        k1, k2, k3 = jax.random.split(key, 3)
        mu = mu_loc + mu_scale * jax.random.normal(k1, (n,))
        sigma = sigma_scale * jnp.abs(jax.random.normal(k2, (n,)))
        sigma = jnp.maximum(sigma, 1e-6)
        xi = xi_scale * jax.random.truncated_normal(k3, lo / xi_scale, hi / xi_scale, (n,))
        xi = jnp.clip(xi, lo + 1e-6 * (hi - lo), hi - 1e-6 * (hi - lo))
        return jnp.stack([mu, positive_inverse(sigma), interval_inverse(xi, lo, hi)], axis=-1)

    def log_prior(theta):
        mu, sigma, xi, log_det = unpack(theta)
        lp_mu = jstats.norm.logpdf(mu, mu_loc, mu_scale)
        lp_sigma = jnp.log(2.0) + jstats.norm.logpdf(sigma, 0.0, sigma_scale)
        z_norm = jstats.norm.cdf(hi / xi_scale) - jstats.norm.cdf(lo / xi_scale)
        lp_xi = jstats.norm.logpdf(xi, 0.0, xi_scale) - jnp.log(z_norm)
        return lp_mu + lp_sigma + lp_xi + log_det

    def log_likelihood(theta, y):
        mu, sigma, xi, _ = unpack(theta)
        return jnp.sum(gev_logpdf(y, mu, sigma, xi))

    def simulate(key, theta):
        mu, sigma, xi, _ = unpack(theta)
        return gev_sample(key, mu, sigma, xi, (num_obs,))

    def constrain(theta):
        mu, sigma, xi, _ = unpack(theta)
        return {"mu": mu, "sigma": sigma, "xi": xi}

    return make_model(
        name="gev_test_prior" if test_prior else "gev",
        param_names=names,
        obs_shape=(num_obs,),
        obs_kind="set",
        sample_prior=sample_prior,
        simulate=simulate,
        log_prior=log_prior,
        log_likelihood=log_likelihood,
        constrain=constrain,
        info={
            "priors": {
                "mu": f"Normal({mu_loc}, {mu_scale})",
                "sigma": f"HalfNormal({sigma_scale})",
                "xi": f"TruncatedNormal(0, {xi_scale}, [{lo}, {hi}])",
            },
            "num_obs": num_obs,
            "test_prior": test_prior,
            "reference": "Li et al., arXiv 2409.04332",
        },
    )
