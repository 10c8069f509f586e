"""A misspecified example for generalized Bayes: a normal-mean model with known unit noise,
fitted to data from a symmetric contaminated process.

Assumed model (:func:`~amortflow.models.gaussian_mean`, ``dim=1``):
``mu ~ N(0, 1)``, ``y_i | mu ~ N(mu, 1)``, ``i = 1..n``. Its power posterior is analytic
(:func:`~amortflow.models.gaussian_mean_posterior`).

Data-generating process: ``y_i ~ (1 - c) N(mu, 1) + c N(mu, s^2)`` (``c`` the contamination,
``s`` the outlier sd). It is symmetric about ``mu``, so the true ``mu`` is the pseudo-true
parameter (the minimiser of the KL divergence from the process to the model), but the variance
of one observation is ``Var(y) = (1 - c) + c s^2`` instead of 1: the ordinary (``beta = 1``)
posterior is too narrow by a factor ``sqrt(Var(y))``. The power posterior at
``beta = 1 / Var(y)`` has the sandwich variance and hence asymptotically calibrated credible
intervals (Holmes & Walker 2017; Syring & Martin 2019). Defaults ``c = 0.1``, ``s = 5``:
``Var(y) = 3.4``, calibrated ``beta = 0.294``; at ``beta = 1`` the 90% interval covers the true
``mu`` only about 63% of the time (``P(|Z| < 1.645 / sqrt(3.4))``).
"""
from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp

from amortflow.errors import ConfigError
from amortflow.models.base import Model
from amortflow.models.gaussian import gaussian_mean


@dataclasses.dataclass(frozen=True)
class MisspecifiedNormal:
    """The misspecified normal-mean example (see the module docstring).

    Attributes:
      model: the assumed conjugate model, ``gaussian_mean(dim=1, num_obs=num_obs)``.
      num_obs: ``n`` observations per dataset.
      contamination: ``c``, the share of observations drawn with sd ``outlier_sd``.
      outlier_sd: ``s``.
    """

    model: Model
    num_obs: int
    contamination: float
    outlier_sd: float

    @property
    def variance(self) -> float:
        """``Var(y_i | mu) = (1 - c) + c s^2`` under the data-generating process."""
        return (1.0 - self.contamination) + self.contamination * self.outlier_sd ** 2

    @property
    def calibrated_beta(self) -> float:
        """``1 / Var(y)``: the temperature whose power posterior has the sandwich variance
        (exact asymptotically; the model's noise sd is 1 so ``J = 1`` and ``I = Var(y)``)."""
        return 1.0 / self.variance

    def simulate_data(self, key, theta):
        """Datasets from the contaminated process for ``theta [K, 1]`` -> ``ys [K, n, 1]``."""
        theta = jnp.asarray(theta, jnp.float32)
        if theta.ndim != 2 or theta.shape[1] != 1:
            raise ConfigError(f"MisspecifiedNormal.simulate_data: theta must have shape [K, 1], got {theta.shape}")
        k = theta.shape[0]
        k_out, k_noise = jax.random.split(key)
        outlier = jax.random.bernoulli(k_out, self.contamination, (k, self.num_obs, 1))
        sd = jnp.where(outlier, self.outlier_sd, 1.0)
        return theta[:, None, :] + sd * jax.random.normal(k_noise, (k, self.num_obs, 1))

    def sample(self, key, num_datasets: int):
        """``(theta [K, 1], ys [K, n, 1])``: true ``mu`` from the model's prior, data from the
        contaminated process."""
        if isinstance(num_datasets, bool) or not isinstance(num_datasets, numbers.Integral) or num_datasets < 1:
            raise ConfigError(f"MisspecifiedNormal.sample: num_datasets must be a whole number >= 1, got {num_datasets!r}")
        k_theta, k_data = jax.random.split(key)
        theta = self.model.sample_prior(k_theta, int(num_datasets))
        return theta, self.simulate_data(k_data, theta)


def misspecified_normal(num_obs: int = 50, contamination: float = 0.1, outlier_sd: float = 5.0) -> MisspecifiedNormal:
    """The misspecified normal-mean example: the assumed model ``N(mu, 1)`` (prior ``N(0, 1)``)
    and data from ``(1 - c) N(mu, 1) + c N(mu, outlier_sd^2)``; calibrated
    ``beta = 1 / ((1 - c) + c outlier_sd^2)`` (0.294 at the defaults). See the module docstring.

    Raises:
      ConfigError: ``num_obs`` not a whole number >= 2, ``contamination`` outside ``[0, 1)``, or
        ``outlier_sd`` not finite and > 0.
    """
    if isinstance(num_obs, bool) or not isinstance(num_obs, numbers.Integral) or num_obs < 2:
        raise ConfigError(f"misspecified_normal: num_obs must be a whole number >= 2, got {num_obs!r}")
    if not isinstance(contamination, numbers.Real) or not 0.0 <= contamination < 1.0:
        raise ConfigError(f"misspecified_normal: contamination must be in [0, 1), got {contamination!r}")
    if not isinstance(outlier_sd, numbers.Real) or not math.isfinite(outlier_sd) or outlier_sd <= 0:
        raise ConfigError(f"misspecified_normal: outlier_sd must be a finite number > 0, got {outlier_sd!r}")
    return MisspecifiedNormal(gaussian_mean(dim=1, num_obs=int(num_obs)), int(num_obs), float(contamination),
                              float(outlier_sd))
