"""Bernoulli GLM: the SBI benchmark task that the amortized-workflow paper (Li et al., arXiv
2409.04332) runs on 10 000 datasets.

A neuron's spikes in ``T = 100`` time bins, ``y_t ~ Bernoulli(sigmoid(x_t^T theta))``, where
``x_t = (1, I_t, I_{t-1}, ..., I_{t-8})`` holds an offset and 9 lagged copies of a fixed
white-noise stimulus ``I`` (shipped as data, ``amortflow/models/data/bernoulli_glm_stimulus.json``,
checked against its SHA-256 when read). Parameters: ``theta = (b, h_1..h_9)``, the offset and a
9-tap temporal filter, with a Gaussian prior of precision

    P = blockdiag(0.5, F^T F),    F = D D + diag(sqrt(i / 9)), i = 0..8,

``D`` the first-difference matrix (a smoothness prior on the filter). The likelihood is the one
of the 100 raw bins; ``X^T y`` (spike count and spike-triggered sums) are sufficient, and the
preset's network sees exactly those (:func:`glm_summary_spec`).
"""
from __future__ import annotations

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from amortflow.models.base import Model, make_model

_STIMULUS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "bernoulli_glm_stimulus.json")
_LOG_2PI = float(np.log(2.0 * np.pi))


def glm_stimulus(path: str = _STIMULUS_FILE) -> np.ndarray:
    """The shipped white-noise stimulus ``[100]`` (float32), validated: JSON with the expected
    fields, 100 finite numbers, and the recorded SHA-256 of their float32 bytes.

    Raises:
      ValueError: naming what is wrong with the file (reinstall amortflow to restore it).
    """
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"Bernoulli GLM stimulus {path}: cannot be read as JSON ({e}); reinstall amortflow") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("stimulus"), list) or not isinstance(doc.get("sha256_float32"), str):
        raise ValueError(f"Bernoulli GLM stimulus {path}: expected fields 'stimulus' (a list) and 'sha256_float32'")
    values = doc["stimulus"]
    if len(values) != 100 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"Bernoulli GLM stimulus {path}: 'stimulus' must hold 100 numbers, got {len(values)} entries")
    stim = np.asarray(values, np.float32)
    if not np.isfinite(stim).all():
        raise ValueError(f"Bernoulli GLM stimulus {path}: non-finite values")
    if hashlib.sha256(stim.tobytes()).hexdigest() != doc["sha256_float32"]:
        raise ValueError(f"Bernoulli GLM stimulus {path}: checksum mismatch (the file was modified or damaged); "
                         "reinstall amortflow")
    return stim


def glm_design_matrix(stimulus: np.ndarray, num_lags: int = 9) -> np.ndarray:
    """``X [T, 1 + num_lags]``: an offset column and the stimulus delayed by 0..num_lags-1 bins
    (zeros before the recording starts)."""
    stimulus = np.asarray(stimulus, np.float32)
    t = len(stimulus)
    x = np.zeros((t, 1 + num_lags), np.float32)
    x[:, 0] = 1.0
    for lag in range(num_lags):
        x[lag:, 1 + lag] = stimulus[: t - lag]
    return x


def glm_prior_precision(num_lags: int = 9) -> np.ndarray:
    """The prior precision ``P [1 + num_lags, 1 + num_lags]`` of the module docstring."""
    m = num_lags
    d = np.eye(m) - np.eye(m, k=-1)
    f = d @ d + np.diag(np.sqrt(np.arange(m) / m))
    p = np.zeros((m + 1, m + 1))
    p[0, 0] = 0.5
    p[1:, 1:] = f.T @ f
    return p


def glm_summary_spec(model: Model):
    """The sufficient statistics ``X^T y / sqrt(T)`` as a fixed :class:`~amortflow.nets.LinearSummarySpec`
    (the ``1 / sqrt(T)`` keeps them of order one)."""
    from amortflow.nets.specs import LinearSummarySpec

    x = np.asarray(model.info["design_matrix"], np.float32)
    return LinearSummarySpec.from_array(x.T / np.sqrt(x.shape[0]))


def bernoulli_glm(num_lags: int = 9) -> Model:
    """The Bernoulli GLM (module docstring): ``d = 1 + num_lags`` parameters, observation ``[100]``
    of 0/1 spikes (any other value has zero likelihood)."""
    x_np = glm_design_matrix(glm_stimulus(), num_lags)
    prec = glm_prior_precision(num_lags)
    chol_prec = np.linalg.cholesky(prec)  # P = L L^T; theta = L^-T z has covariance P^-1
    logdet_prec = 2.0 * float(np.sum(np.log(np.diag(chol_prec))))
    x = jnp.asarray(x_np)
    p_j, l_j = jnp.asarray(prec, jnp.float32), jnp.asarray(chol_prec, jnp.float32)
    d = 1 + num_lags
    names = ("b",) + tuple(f"h{i + 1}" for i in range(num_lags))

    def sample_prior(key, n):
        z = jax.random.normal(key, (n, d))
        return jax.scipy.linalg.solve_triangular(l_j.T, z.T, lower=False).T

    def log_prior(theta):
        return -0.5 * (theta @ p_j @ theta) + 0.5 * logdet_prec - 0.5 * d * _LOG_2PI

    def log_likelihood(theta, y):
        eta = x @ theta
        ll = jnp.sum(y * jax.nn.log_sigmoid(eta) + (1.0 - y) * jax.nn.log_sigmoid(-eta))
        binary = jnp.all((y == 0.0) | (y == 1.0))
        return jnp.where(binary, ll, -jnp.inf)

    def simulate(key, theta):
        return jax.random.bernoulli(key, jax.nn.sigmoid(x @ theta)).astype(jnp.float32)

    return make_model(
        name="bernoulli_glm",
        param_names=names,
        obs_shape=(x_np.shape[0],),
        obs_kind="vector",  # bins are tied to the stimulus: not exchangeable
        sample_prior=sample_prior,
        simulate=simulate,
        log_prior=log_prior,
        log_likelihood=log_likelihood,
        info={"priors": {"theta": "Normal(0, P^-1), P = blockdiag(0.5, F^T F)"},
              "num_bins": int(x_np.shape[0]), "num_lags": int(num_lags),
              "design_matrix": x_np.tolist(),
              "reference": "Lueckmann et al. 2021 (SBI benchmark); Li et al., arXiv 2409.04332"},
    )
