"""Three numpyro models written the way a user would write them, for ``make bench-defaults``.

Each is an ordinary numpyro model taking its data by keyword (``y=None`` to simulate) and is
brought into amortflow with ``af.from_numpyro`` (:func:`models`). Each also has a one-argument
form ``reference_<name>(y)`` for the per-dataset numpyro NUTS reference run in fresh processes
(``_common.numpyro_nuts_per_dataset`` calls ``model(y)``): the same model, the flat observation
split back into its keywords.

- ``negbin_regression``: counts of 40 units with an intercept, three covariates (a fixed
  standard-normal design matrix) and negative-binomial overdispersion: 5 parameters.
- ``hierarchical_normal``: 8 groups x 6 measurements, non-centered group effects
  ``theta_j = mu + tau z_j``, shared noise sd: 11 parameters (``mu``, ``sigma``, ``tau``, ``z[8]``).
- ``weibull_survival``: 40 subjects (intercept, a treatment indicator, a standardized age),
  Weibull event times right-censored at a fixed follow-up time; the data are the observed time
  ``min(t, censor)`` and the event indicator; censored subjects enter the likelihood through
  the survival function (``numpyro.factor``): 4 parameters, the shape ``k`` positive.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

# ----------------------------------------------------------------------------- (i) regression
N_UNITS, N_COV = 40, 3
X_COUNTS = np.random.default_rng(20240917).standard_normal((N_UNITS, N_COV)).astype(np.float32)
X_COUNTS = (X_COUNTS - X_COUNTS.mean(0)) / X_COUNTS.std(0)


def negbin_regression(x, y=None):
    """Counts with log-mean ``alpha + x @ beta`` and negative-binomial overdispersion ``phi``."""
    alpha = numpyro.sample("alpha", dist.Normal(1.5, 0.5))
    beta = numpyro.sample("beta", dist.Normal(0.0, 0.5).expand([x.shape[1]]).to_event(1))
    phi = numpyro.sample("phi", dist.Gamma(2.0, 0.2))  # concentration: mean 10
    mean = jnp.exp(alpha + x @ beta)
    with numpyro.plate("units", x.shape[0]):
        numpyro.sample("y", dist.NegativeBinomial2(mean, phi), obs=y)


def reference_negbin_regression(y):
    negbin_regression(jnp.asarray(X_COUNTS), y=y)


# ----------------------------------------------------------------------------- (ii) hierarchical
N_GROUPS, N_PER_GROUP = 8, 6


def hierarchical_normal(y=None):
    """Measurements ``y [groups, per group]`` around non-centered group means."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    tau = numpyro.sample("tau", dist.HalfNormal(1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([N_GROUPS]).to_event(1))
    theta = numpyro.deterministic("theta", mu + tau * z)
    numpyro.sample("y", dist.Normal(theta[:, None], sigma).expand([N_GROUPS, N_PER_GROUP]).to_event(2), obs=y)


def reference_hierarchical_normal(y):
    hierarchical_normal(y=y)


# ----------------------------------------------------------------------------- (iii) censored
N_SUBJECTS, CENSOR = 40, 2.0
_rng = np.random.default_rng(20240918)
X_SURV = np.stack([np.ones(N_SUBJECTS), np.repeat([0.0, 1.0], N_SUBJECTS // 2),
                   _rng.standard_normal(N_SUBJECTS)], 1).astype(np.float32)
X_SURV[:, 2] = (X_SURV[:, 2] - X_SURV[:, 2].mean()) / X_SURV[:, 2].std()


def weibull_survival(x, censor, time=None, event=None):
    """Weibull event times with log-scale ``x @ beta``, right-censored at ``censor``."""
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    k = numpyro.sample("k", dist.LogNormal(0.0, 0.3))  # Weibull shape
    scale = jnp.exp(x @ beta)
    with numpyro.plate("subjects", x.shape[0]):
        if time is None:  # simulate: latent event times, then censor them
            t = numpyro.sample("t", dist.Weibull(scale, k))
            numpyro.deterministic("time", jnp.minimum(t, censor))
            numpyro.deterministic("event", (t < censor).astype(jnp.float32))
        else:  # score: density for events, survival function for censored subjects
            log_pdf = dist.Weibull(scale, k).log_prob(time)
            log_surv = -((time / scale) ** k)
            numpyro.factor("lik", jnp.where(event == 1, log_pdf, log_surv))


def reference_weibull_survival(y):
    weibull_survival(jnp.asarray(X_SURV), CENSOR, time=y[:N_SUBJECTS], event=y[N_SUBJECTS:])


# ----------------------------------------------------------------------------- as amortflow models
def models() -> dict:
    """name -> (``af.from_numpyro`` Model, reference function name in this module)."""
    import amortflow as af

    return {
        "negbin_regression": (af.from_numpyro(negbin_regression, X_COUNTS, obs="y"),
                              "reference_negbin_regression"),
        "hierarchical_normal": (af.from_numpyro(hierarchical_normal, obs="y"),
                                "reference_hierarchical_normal"),
        "weibull_survival": (af.from_numpyro(weibull_survival, X_SURV, CENSOR, obs=("time", "event"),
                                             obs_kind="vector"),
                             "reference_weibull_survival"),
    }
