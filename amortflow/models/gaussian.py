"""Conjugate Gaussian model with an analytic posterior: the ground truth for tests.

theta ~ N(prior_mean, prior_sd^2 I_d);  y_i | theta ~ N(theta, noise_sd^2 I_d), i = 1..n.
Observation: a set of ``n`` vectors, shape ``(n, d)``. Posterior is Gaussian with precision
``1/prior_sd^2 + n/noise_sd^2`` per coordinate; the power posterior (likelihood^beta) replaces
``n`` by ``beta * n``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy import stats as jstats

from amortflow.models.base import Model, make_model


def gaussian_mean(
    dim: int = 2,
    num_obs: int = 10,
    prior_mean: float = 0.0,
    prior_sd: float = 1.0,
    noise_sd: float = 1.0,
) -> Model:
    """Conjugate Gaussian-mean model (see module docstring)."""
    names = tuple(f"theta_{i}" for i in range(dim))

    def sample_prior(key, n):
        return prior_mean + prior_sd * jax.random.normal(key, (n, dim))

    def log_prior(theta):
        return jnp.sum(jstats.norm.logpdf(theta, prior_mean, prior_sd))

    def log_likelihood(theta, y):
        return jnp.sum(jstats.norm.logpdf(y, theta[None, :], noise_sd))

    def simulate(key, theta):
        return theta[None, :] + noise_sd * jax.random.normal(key, (num_obs, dim))

    return make_model(
        name="gaussian_mean",
        param_names=names,
        obs_shape=(num_obs, dim),
        obs_kind="set",
        sample_prior=sample_prior,
        simulate=simulate,
        log_prior=log_prior,
        log_likelihood=log_likelihood,
        info={
            "dim": dim,
            "num_obs": num_obs,
            "prior_mean": prior_mean,
            "prior_sd": prior_sd,
            "noise_sd": noise_sd,
        },
    )


def gaussian_mean_posterior(model: Model, ys, beta=1.0):
    """Analytic (power) posterior of :func:`gaussian_mean` for datasets ``ys [K, n, d]``.

    Returns ``(mean [K, d], sd [K, d])``.
    """
    info = model.info
    ys = jnp.asarray(ys)
    n = ys.shape[-2]
    prec = 1.0 / info["prior_sd"] ** 2 + beta * n / info["noise_sd"] ** 2
    mean = (info["prior_mean"] / info["prior_sd"] ** 2 + beta * ys.sum(-2) / info["noise_sd"] ** 2) / prec
    sd = jnp.broadcast_to(1.0 / jnp.sqrt(prec), mean.shape)
    return mean, sd
