"""Psychometric curve with lapses and overdispersion: the amortized-workflow paper's second
experiment (Li et al., arXiv 2409.04332), where the number of trials per stimulus intensity is
per-dataset design data.

At 9 stimulus intensities ``x`` in [-1, 1] (``PSYCHOMETRIC_INTENSITIES``), dataset ``j`` has
``n_i`` trials at intensity ``x_i`` (its design, ``design = {"trials": n [9]}``) and ``y_i``
"right" responses:

    p_i = gamma + (1 - gamma - lambda) Phi((x_i - mu) / sigma)
    y_i ~ BetaBinomial(n_i, p_i c, (1 - p_i) c),    c = 1 / nu^2 - 1

(``nu`` is the overdispersion: the correlation of two trials' responses is ``nu^2``; ``nu -> 0``
is binomial). Priors: ``mu = 2 mu' - 1``, ``mu' ~ Beta(2, 2)``; ``sigma ~ HalfNormal(1)``;
lapse rates ``gamma, lambda ~ Beta(1, 10)``; ``nu ~ Beta(1, 10)``.

Unconstrained ``theta = (logit((mu + 1) / 2), log sigma, logit gamma, logit lambda,
logit nu)``.

The design distribution an estimator is trained over (:func:`psychometric_design_sampler`)
mixes the two kinds of experiment of the paper's description: a block of trials spread evenly
over the intensities, and several hundred trials concentrated on one side of zero; a third
component with independent counts per intensity covers irregular designs in between.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy import special as jsp
from jax.scipy import stats as jstats

from amortflow.models.base import Model, make_model
from amortflow.models.transforms import interval_forward, interval_inverse, positive_forward

#: the stimulus intensities (the paper's, symmetric around zero)
PSYCHOMETRIC_INTENSITIES = (-1.0, -0.25, -0.125, -0.0625, 0.0, 0.0625, 0.125, 0.25, 1.0)


def _log_rising_excess(x, m):
    """``(log Gamma(x + m) - log Gamma(x) - [x > 10] m log x, x > 10)`` for ``x > 0``, ``m >= 0``.

    Above 10 the difference of Stirling series, which stays accurate for ``x >> m``: there the
    direct difference of ``gammaln`` cancels catastrophically in float32 (``nu -> 0`` gives
    concentrations of 1e4..1e12 and log likelihoods off by up to hundreds of nats). The
    ``m log x`` left out there is added back by the caller, combined so that it cannot cancel."""
    big = x > 10.0
    xs = jnp.where(big, x, 10.0)  # each branch sees safe values: no NaN in the unused one's gradient
    xm = xs + m
    stirling = ((xm - 0.5) * jnp.log1p(m / xs) - m + (1.0 / xm - 1.0 / xs) / 12.0
                - (1.0 / xm ** 3 - 1.0 / xs ** 3) / 360.0)
    xd = jnp.where(big, 1.0, x)
    return jnp.where(big, stirling, jsp.gammaln(xd + m) - jsp.gammaln(xd)), big


def beta_binomial_logpmf(k, n, a, b):
    """``log BetaBinomial(k | n, a, b)`` elementwise (``a, b > 0``; ``k, n`` whole, ``0 <= k <= n``),
    accurate in float32 for concentrations ``a + b`` up to ~1e12 (the binomial limit) as well."""
    log_choose = jsp.gammaln(n + 1.0) - jsp.gammaln(k + 1.0) - jsp.gammaln(n - k + 1.0)
    s = a + b
    ea, big_a = _log_rising_excess(a, k)
    eb, big_b = _log_rising_excess(b, n - k)
    es, big_s = _log_rising_excess(s, n)
    # the m log x terms of the large arguments: k log a + (n - k) log b - n log s written as
    # k log(a / s) + (n - k) log(b / s) (+ what remains of log s when some argument is small)
    logs = (jnp.where(big_a, k * jnp.log(jnp.where(big_a, a, s) / s), 0.0)
            + jnp.where(big_b, (n - k) * jnp.log(jnp.where(big_b, b, s) / s), 0.0)
            + (jnp.where(big_a, k, 0.0) + jnp.where(big_b, n - k, 0.0) - jnp.where(big_s, n, 0.0)) * jnp.log(s))
    return log_choose + ea + eb - es + logs


def psychometric_probabilities(x, mu, sigma, gamma, lam):
    """``(p, 1 - p)`` of a "right" response at intensities ``x``; ``1 - p`` computed directly
    (``lambda + (1 - gamma - lambda) Phi(-z)``) so that it keeps its precision near ``p = 1``."""
    z = (x - mu) / sigma
    span = 1.0 - gamma - lam
    return gamma + span * jstats.norm.cdf(z), lam + span * jstats.norm.cdf(-z)


def psychometric_design_sampler(num_intensities: int = len(PSYCHOMETRIC_INTENSITIES)):
    """``sample_design(key, n) -> {"trials": [n, num_intensities]}`` (float32 whole numbers):
    with probability 1/3 each,

    - **block**: the same number of trials, 5..40, at every intensity (90 trials: 10 each);
    - **one-sided**: 200..600 trials, ~95% of them at zero and the intensities on one side of
      it (left or right), split by random weights; 0..5 trials at each other intensity;
    - **irregular**: 0..100 trials at each intensity, independently.
    """
    m = int(num_intensities)
    mid = m // 2

    def one(key):
        kc, kb, kt, ks, kw, ko, ki = jax.random.split(key, 7)
        block = jnp.full((m,), jax.random.randint(kb, (), 5, 41)).astype(jnp.float32)
        total = jax.random.randint(kt, (), 200, 601).astype(jnp.float32)
        right = jax.random.bernoulli(ks)
        idx = jnp.arange(m)
        side = jnp.where(right, idx >= mid, idx <= mid)
        w = jnp.where(side, jax.random.gamma(kw, 2.0, (m,)), 0.0)
        main = jnp.floor(0.95 * total * w / jnp.sum(w))
        other = jax.random.randint(ko, (m,), 0, 6).astype(jnp.float32)
        onesided = jnp.where(side, main, other)
        irregular = jax.random.randint(ki, (m,), 0, 101).astype(jnp.float32)
        c = jax.random.randint(kc, (), 0, 3)
        trials = jnp.where(c == 0, block, jnp.where(c == 1, onesided, irregular))
        return {"trials": trials}

    def sample_design(key, n):
        return jax.vmap(one)(jax.random.split(key, n))

    return sample_design


def psychometric(intensities=PSYCHOMETRIC_INTENSITIES) -> Model:
    """The psychometric model (module docstring): ``d = 5`` parameters
    ``(mu, sigma, gamma, lambda, nu)``, observation ``y [9]`` (responses per intensity), design
    ``{"trials": [9]}`` per dataset. ``y`` or ``trials`` that are not whole numbers with
    ``0 <= y <= trials`` have zero likelihood (``-inf``)."""
    x = jnp.asarray(intensities, jnp.float32)
    m = int(x.shape[0])
    names = ("mu", "sigma", "gamma", "lambda", "nu")

    def unpack(theta):
        mu, ld_mu = interval_forward(theta[0], -1.0, 1.0)
        sigma, ld_s = positive_forward(theta[1])
        gamma, ld_g = interval_forward(theta[2], 0.0, 1.0)
        lam, ld_l = interval_forward(theta[3], 0.0, 1.0)
        nu, ld_n = interval_forward(theta[4], 0.0, 1.0)
        return (mu, sigma, gamma, lam, nu), ld_mu + ld_s + ld_g + ld_l + ld_n

    def sample_prior(key, n):
        k1, k2, k3, k4, k5 = jax.random.split(key, 5)
        eps = 1e-6
        mu = 2.0 * jnp.clip(jax.random.beta(k1, 2.0, 2.0, (n,)), eps, 1 - eps) - 1.0
        sigma = jnp.maximum(jnp.abs(jax.random.normal(k2, (n,))), 1e-6)
        gamma, lam, nu = (jnp.clip(jax.random.beta(k, 1.0, 10.0, (n,)), eps, 1 - eps) for k in (k3, k4, k5))
        return jnp.stack([interval_inverse(mu, -1.0, 1.0), jnp.log(sigma), interval_inverse(gamma, 0.0, 1.0),
                          interval_inverse(lam, 0.0, 1.0), interval_inverse(nu, 0.0, 1.0)], axis=-1)

    def log_prior(theta):
        (mu, sigma, gamma, lam, nu), log_det = unpack(theta)
        lp = jstats.beta.logpdf((mu + 1.0) / 2.0, 2.0, 2.0) - jnp.log(2.0)
        lp += jnp.log(2.0) + jstats.norm.logpdf(sigma)
        lp += sum(jstats.beta.logpdf(v, 1.0, 10.0) for v in (gamma, lam, nu))
        return lp + log_det

    def concentrations(theta):
        (mu, sigma, gamma, lam, nu), _ = unpack(theta)
        p, q = psychometric_probabilities(x, mu, sigma, gamma, lam)
        c = (1.0 - nu) * (1.0 + nu) / (nu * nu)  # 1 / nu^2 - 1 without cancellation
        tiny = jnp.finfo(jnp.float32).tiny
        return jnp.maximum(p * c, tiny), jnp.maximum(q * c, tiny)

    def log_likelihood(theta, y, design):
        n = design["trials"]
        a, b = concentrations(theta)
        ok = jnp.all((y >= 0) & (y <= n) & (y == jnp.round(y)) & (n == jnp.round(n)))
        ll = jnp.sum(beta_binomial_logpmf(jnp.where(ok, y, 0.0), jnp.where(ok, n, 0.0), a, b))
        return jnp.where(ok, ll, -jnp.inf)

    def simulate(key, theta, design):
        n = design["trials"]
        a, b = concentrations(theta)
        k1, k2 = jax.random.split(key)
        p = jax.random.beta(k1, a, b)
        return jax.random.binomial(k2, n, p).astype(jnp.float32)

    def constrain(theta):
        (mu, sigma, gamma, lam, nu), _ = unpack(theta)
        return {"mu": mu, "sigma": sigma, "gamma": gamma, "lambda": lam, "nu": nu}

    return make_model(
        name="psychometric",
        param_names=names,
        obs_shape=(m,),
        obs_kind="vector",  # counts are tied to their intensities
        sample_prior=sample_prior,
        simulate=simulate,
        log_prior=log_prior,
        log_likelihood=log_likelihood,
        constrain=constrain,
        design_shape={"trials": (m,)},
        sample_design=psychometric_design_sampler(m),
        info={"priors": {"mu": "2 Beta(2, 2) - 1", "sigma": "HalfNormal(1)", "gamma": "Beta(1, 10)",
                         "lambda": "Beta(1, 10)", "nu": "Beta(1, 10)"},
              "intensities": [float(v) for v in np.asarray(x)],
              "likelihood": "BetaBinomial(n, p c, (1 - p) c), c = 1/nu^2 - 1, "
                            "p = gamma + (1 - gamma - lambda) Phi((x - mu) / sigma)",
              "reference": "Li et al., arXiv 2409.04332 (psychometric experiment)"},
    )
