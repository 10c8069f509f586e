"""Training data shared by every estimator: prior-predictive simulation banks, the held-out
validation split, and the affine standardization an estimator applies to its inputs.

Shapes: ``N`` simulations, ``d`` parameters.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from amortflow.models.base import Model

#: above this fraction of non-finite simulations the simulator or the prior is broken
MAX_NONFINITE_FRACTION = 0.1


class Standardization(NamedTuple):
    """Affine standardization applied inside the estimator.

    ``theta_loc``/``theta_scale``: ``[d]``; ``y_loc``/``y_scale`` broadcast against one
    observation (per set feature for sets, per element for vectors, scalar for grids).
    """

    theta_loc: jax.Array
    theta_scale: jax.Array
    y_loc: jax.Array
    y_scale: jax.Array


def fit_standardization(theta: np.ndarray, ys: np.ndarray, obs_kind: str) -> Standardization:
    """Standardization from a simulation bank ``theta [N, d]``, ``ys [N, *obs_shape]``.

    Observations use the median and the MAD (scaled to a normal sd): heavy-tailed simulators
    (GEV with xi > 0) would otherwise let a few extreme simulations set the scale.
    """
    theta = np.asarray(theta, np.float64)
    ys = np.asarray(ys, np.float64)
    obs_ndim = ys.ndim - 1
    if obs_kind == "set":
        axes = (0, 1)  # pool over datasets and set elements; one value per feature
    elif obs_kind == "vector":
        axes = (0,)
    else:
        axes = tuple(range(ys.ndim))
    med = np.median(ys, axis=axes, keepdims=True)
    mad = 1.4826 * np.median(np.abs(ys - med), axis=axes, keepdims=True)
    sd = ys.std(axis=axes, keepdims=True)
    scale = np.where(mad > 1e-8 * (1 + np.abs(med)), mad, np.where(sd > 0, sd, 1.0))
    y_loc = med.reshape(med.shape[1:]) if med.ndim > obs_ndim else med
    y_scale = scale.reshape(scale.shape[1:]) if scale.ndim > obs_ndim else scale
    t_sd = theta.std(axis=0)
    return Standardization(
        theta_loc=jnp.asarray(theta.mean(axis=0), jnp.float32),
        theta_scale=jnp.asarray(np.where(t_sd > 0, t_sd, 1.0), jnp.float32),
        y_loc=jnp.asarray(y_loc, jnp.float32),
        y_scale=jnp.asarray(y_scale, jnp.float32),
    )


def simulate_bank(key, model: Model, num_simulations: int, *, chunk: int = 4096, progress: bool = True):
    """Simulate ``(theta [N, d], ys [N, *obs_shape])`` from the prior predictive, in compiled
    chunks, dropping simulations with non-finite output (``N`` may be below
    ``num_simulations``; a warning names how many were dropped).

    Raises:
      ValueError: if more than 10% of the simulations are non-finite.
    """
    from tqdm.auto import tqdm

    sim = jax.jit(model.sample_prior_predictive, static_argnums=1)
    thetas, ys = [], []
    n_chunks = -(-num_simulations // chunk)
    for i in tqdm(range(n_chunks), desc="simulating", disable=not progress or n_chunks < 2, leave=False):
        th, y = sim(jax.random.fold_in(key, i), chunk)
        thetas.append(np.asarray(th))
        ys.append(np.asarray(y))
    theta = np.concatenate(thetas)[:num_simulations]
    y = np.concatenate(ys)[:num_simulations]
    ok = np.isfinite(y.reshape(len(y), -1)).all(1) & np.isfinite(theta).all(1)
    n_bad = int((~ok).sum())
    if ok.mean() < 1 - MAX_NONFINITE_FRACTION:
        raise ValueError(
            f"{model.name}: {n_bad} of {len(ok)} simulations are NaN/inf; "
            "check the simulator and the prior"
        )
    if n_bad:
        # dropping them biases the bank towards the prior region where the simulator is finite
        warnings.warn(
            f"{model.name}: dropped {n_bad} of {len(ok)} simulations ({n_bad / len(ok):.1%}) "
            "with NaN/inf output", stacklevel=2,
        )
    return theta[ok], y[ok]


def split_bank(key, theta, ys, num_validation: int):
    """Random training / validation split of a bank ``theta [N, d]``, ``ys [N, *obs_shape]``.

    Returns:
      ``((theta_train, ys_train), (theta_val, ys_val))`` as device arrays, ``num_validation``
      rows held out.
    Raises:
      ValueError: if ``num_validation`` leaves no training simulations.
    """
    n = len(theta)
    if len(ys) != n:
        raise ValueError(f"bank has {n} parameter rows but {len(ys)} datasets")
    if num_validation >= n:
        raise ValueError(f"num_validation={num_validation} leaves no training simulations out of {n}")
    perm = np.asarray(jax.random.permutation(key, n))
    val_idx, tr_idx = perm[:num_validation], perm[num_validation:]
    train = (jnp.asarray(theta[tr_idx]), jnp.asarray(ys[tr_idx]))
    val = (jnp.asarray(theta[val_idx]), jnp.asarray(ys[val_idx]))
    return train, val
