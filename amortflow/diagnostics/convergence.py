"""Convergence diagnostics for many-chain MCMC, as pure JAX functions (vmappable over datasets).

Chain layout: ``draws[C, N, d]`` with ``C = K * M`` chains, consecutive blocks of ``M`` chains
forming the ``K`` superchains (chains of one superchain started from the same point).
"""
from __future__ import annotations

import jax.numpy as jnp


def nested_rhat(draws, num_superchains: int):
    """Nested R-hat (Margossian et al., 2024) per parameter.

    Args:
      draws: ``[C, N, d]`` (or ``[C, N]``), ``C = num_superchains * M``; ``N = 1`` and ``M = 1``
        are allowed (the corresponding within-terms are zero).
      num_superchains: ``K``.
    Returns:
      ``[d]`` (or scalar): ``sqrt(1 + B / W)`` with B the variance between superchain means and
      W the mean over superchains of (variance of chain means within the superchain + mean
      within-chain variance).
    """
    draws = jnp.asarray(draws)
    squeeze = draws.ndim == 2
    if squeeze:
        draws = draws[..., None]
    c, n, d = draws.shape
    k = int(num_superchains)
    if c % k:
        raise ValueError(f"nested_rhat: {c} chains do not split into {k} superchains")
    m = c // k
    x = draws.reshape(k, m, n, d)
    chain_mean = x.mean(axis=2)  # [K, M, d]
    super_mean = chain_mean.mean(axis=1)  # [K, d]
    b = jnp.var(super_mean, axis=0, ddof=1) if k > 1 else jnp.zeros(d, draws.dtype)
    w_between = jnp.var(chain_mean, axis=1, ddof=1) if m > 1 else jnp.zeros((k, d), draws.dtype)
    w_within = jnp.var(x, axis=2, ddof=1).mean(axis=1) if n > 1 else jnp.zeros((k, d), draws.dtype)
    w = (w_between + w_within).mean(axis=0)
    out = jnp.sqrt(1.0 + b / w)
    return out[0] if squeeze else out
