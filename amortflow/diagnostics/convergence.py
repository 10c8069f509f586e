"""Convergence diagnostics for many-chain MCMC, as pure JAX functions (vmappable over datasets).

Chain layout: ``draws[C, N, d]`` (``C`` chains, ``N`` draws, ``d`` parameters). For nested R-hat
``C = K * M`` with consecutive blocks of ``M`` chains forming the ``K`` superchains (chains of one
superchain started from the same point).

:func:`rhat`, :func:`ess_bulk` and :func:`ess_tail` follow Vehtari et al. (2021, "Rank-normalization,
folding, and localization") exactly as ``arviz.rhat(method="rank")`` and ``arviz.ess(method="bulk" /
"tail")`` do: split chains, average ranks over all draws, Blom back-transform ``(r - 3/8)/(n + 1/4)``
to normal scores, FFT autocovariance, Geyer's initial positive + monotone sequence. The sequential
Geyer loop is written with fixed-shape cumulative operations so it compiles once and vmaps.

Differences from arviz: a single chain is allowed (its two halves are compared); NaN draws give NaN.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri

__all__ = [
    "rhat", "ess_bulk", "ess_tail", "nested_rhat", "split_rhat", "ess_basic", "split_chains",
    "rank_normalize", "nested_rhat_reference",
]


def _as3d(draws):
    draws = jnp.asarray(draws)
    if not jnp.issubdtype(draws.dtype, jnp.floating):
        draws = draws.astype(jnp.float32)
    squeeze = draws.ndim == 2
    if squeeze:
        draws = draws[..., None]
    if draws.ndim != 3:
        raise ValueError(f"expected draws of shape [C, N, d] or [C, N], got {draws.shape}")
    return draws, squeeze


def split_chains(x):
    """``[C, N] -> [2C, N // 2]``: first and last halves (the middle draw dropped for odd N)."""
    half = x.shape[1] // 2
    return jnp.concatenate([x[:, :half], x[:, x.shape[1] - half:]], axis=0)


def _average_ranks(flat):
    """1-based ranks of ``flat [n]`` with ties given their average rank (scipy ``rankdata``).

    Returns ``(ranks [n], sorted values [n])``. One (unstable) key-value sort: tie order does not
    matter because tied values get the same average rank.
    """
    n = flat.shape[0]
    s, order = jax.lax.sort((flat, jnp.arange(n, dtype=jnp.int32)), num_keys=1, is_stable=False)
    pos = jnp.arange(n)
    diff = s[1:] != s[:-1]
    new = jnp.concatenate([jnp.ones((1,), bool), diff])
    start = jax.lax.cummax(jnp.where(new, pos, 0))
    last = jnp.concatenate([diff, jnp.ones((1,), bool)])
    end = jax.lax.cummin(jnp.where(last, pos, n - 1), reverse=True)
    avg = 0.5 * (start + end).astype(flat.dtype) + 1.0
    return jnp.zeros_like(flat).at[order].set(avg), s


def _z_from_ranks(r, shape):
    return ndtri((r - 0.375) / (r.size + 0.25)).reshape(shape)


def rank_normalize(x):
    """Rank-normalized z scores of ``x [C, N]`` over all draws (Blom, c = 3/8)."""
    r, _ = _average_ranks(x.reshape(-1))
    return _z_from_ranks(r, x.shape)


def _rhat_basic(x):
    """Classic (non-split) R-hat of ``x [C, N]`` (arviz ``_rhat``)."""
    n = x.shape[1]
    chain_mean = x.mean(axis=1)
    chain_var = jnp.var(x, axis=1, ddof=1)
    b = n * jnp.var(chain_mean, ddof=1)
    w = chain_var.mean()
    return jnp.sqrt((b / w + n - 1) / n)


def _rhat_rank_2d(x):
    split = split_chains(x)
    r, srt = _average_ranks(split.reshape(-1))
    bulk = _rhat_basic(_z_from_ranks(r, split.shape))
    m = srt.shape[0]
    median = 0.5 * (srt[(m - 1) // 2] + srt[m // 2])  # == jnp.median, reusing the sort
    folded = jnp.abs(split - median)
    tail = _rhat_basic(rank_normalize(folded))
    return jnp.maximum(bulk, tail)


def _autocov(x):
    """Autocovariance of ``x [C, N]`` for every lag, ``/ N`` (arviz ``autocov``)."""
    n = x.shape[1]
    m = 1 << int(math.ceil(math.log2(max(2 * n, 2))))
    x = x - x.mean(axis=1, keepdims=True)
    f = jnp.fft.rfft(x, n=m, axis=1)
    cov = jnp.fft.irfft(f * jnp.conj(f), n=m, axis=1)[:, :n]
    return cov / n


def ess_basic(x):
    """ESS of ``x [C, N]`` with Geyer's initial monotone sequence (arviz ``_ess``), compiled form."""
    c, n = x.shape
    dtype = x.dtype
    size = c * n
    acov = _autocov(x)
    chain_mean = x.mean(axis=1)
    mean_var = acov[:, 0].mean() * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if c > 1:
        var_plus = var_plus + jnp.var(chain_mean, ddof=1)
    rho = 1.0 - (mean_var - acov.mean(axis=0)) / var_plus  # [n], rho[0] replaced below
    rho = rho.at[0].set(1.0)
    npair = n // 2
    if npair < 1:
        return jnp.asarray(jnp.nan, dtype)
    pairs = rho[: 2 * npair].reshape(npair, 2)
    psum = pairs.sum(axis=1)  # P_j = rho[2j] + rho[2j+1]
    # iteration i (i >= 1) of Geyer's positive loop runs iff 2i - 1 < n - 3 and P_0..P_{i-1} > 0
    i = jnp.arange(1, npair + 1)
    allowed = (2 * i - 1) < (n - 3)
    prev_pos = jnp.cumprod((psum > 0).astype(jnp.int32))  # prev_pos[i-1] = all(P_0..P_{i-1} > 0)
    i_last = jnp.sum(allowed & (prev_pos > 0))
    # monotone sequence over pairs 0..i_last-1: cumulative minimum of pair sums
    pmono = jax.lax.cummin(psum)
    jidx = jnp.arange(npair)
    body = jnp.sum(jnp.where(jidx < i_last, pmono, 0.0))
    # element rho[2 i_last]: kept if positive (or if its pair sum was >= 0, as arviz does)
    ev_idx = jnp.minimum(2 * i_last, n - 1)
    ev = rho[ev_idx]
    p_last = psum[jnp.minimum(i_last, npair - 1)]
    last_even = jnp.where((ev > 0) | ((i_last > 0) & (p_last >= 0)) | (i_last == 0), ev, 0.0)
    tau = -1.0 + 2.0 * body + last_even
    tau = jnp.maximum(tau, 1.0 / np.log10(size))
    ess = size / tau
    const = (jnp.max(x) - jnp.min(x)) < jnp.finfo(dtype).resolution
    ess = jnp.where(const, jnp.asarray(size, dtype), ess)
    return jnp.where(jnp.any(jnp.isnan(rho)) & ~const, jnp.nan, ess).astype(dtype)


def _ess_bulk_2d(x):
    return ess_basic(rank_normalize(split_chains(x)))


def _ess_tail_2d(x, prob_low=0.05, prob_high=0.95):
    flat = x.reshape(-1)
    q = jnp.quantile(flat, jnp.asarray([prob_low, prob_high], x.dtype))  # type 7 == arviz
    lo = ess_basic(split_chains((x <= q[0]).astype(x.dtype)))
    hi = ess_basic(split_chains((x <= q[1]).astype(x.dtype)))
    return jnp.minimum(lo, hi)


def _per_param(fn, draws):
    draws, squeeze = _as3d(draws)
    out = jax.vmap(fn, in_axes=2)(draws)
    return out[0] if squeeze else out


@jax.jit
def rhat(draws):
    """Rank-normalized split R-hat, ``max(bulk, folded tail)`` (arviz ``method="rank"``).

    Args:
      draws: ``[C, N, d]`` or ``[C, N]``; ``N >= 4``.
    Returns:
      ``[d]`` (or scalar).
    """
    return _per_param(_rhat_rank_2d, draws)


@jax.jit
def split_rhat(draws):
    """Plain split R-hat (no rank normalization), ``[C, N, d] -> [d]``."""
    return _per_param(lambda x: _rhat_basic(split_chains(x)), draws)


@jax.jit
def ess_bulk(draws):
    """Bulk effective sample size (rank-normalized split chains), ``[C, N, d] -> [d]``."""
    return _per_param(_ess_bulk_2d, draws)


@functools.partial(jax.jit, static_argnames=("prob",))
def ess_tail(draws, prob=(0.05, 0.95)):
    """Tail ESS: min of the ESS of the 5% and 95% quantile indicators, ``[C, N, d] -> [d]``."""
    lo, hi = prob
    return _per_param(lambda x: _ess_tail_2d(x, lo, hi), draws)


@functools.partial(jax.jit, static_argnames=("num_superchains",))
def nested_rhat(draws, num_superchains: int):
    """Nested R-hat (Margossian et al., 2024) per parameter.

    Args:
      draws: ``[C, N, d]`` (or ``[C, N]``), ``C = num_superchains * M``; ``N = 1`` and ``M = 1``
        are allowed (the corresponding within-terms are zero).
      num_superchains: ``K`` (static, ``>= 2``).
    Returns:
      ``[d]`` (or scalar): ``sqrt(1 + B / W)`` with B the variance between superchain means and
      W the mean over superchains of (variance of chain means within the superchain + mean
      within-chain variance). A converged run sits near ``sqrt(1 + 1/(M N_eff))``. Degenerate
      cases: ``B = W = 0`` gives 1, ``W = 0 < B`` gives ``inf``; NaN draws give NaN.
    """
    draws, squeeze = _as3d(draws)
    c, n, d = draws.shape
    k = int(num_superchains)
    if k < 1 or c % k:
        raise ValueError(f"nested_rhat: {c} chains do not split into {k} superchains")
    m = c // k
    x = draws.reshape(k, m, n, d)
    chain_mean = x.mean(axis=2)  # [K, M, d]
    super_mean = chain_mean.mean(axis=1)  # [K, d]
    zero = jnp.zeros((k, d), draws.dtype)
    b = jnp.var(super_mean, axis=0, ddof=1) if k > 1 else jnp.zeros(d, draws.dtype)
    w_between = jnp.var(chain_mean, axis=1, ddof=1) if m > 1 else zero
    w_within = jnp.var(x, axis=2, ddof=1).mean(axis=1) if n > 1 else zero
    w = (w_between + w_within).mean(axis=0)
    ratio = jnp.where(w > 0, b / jnp.where(w > 0, w, 1.0), jnp.where(b > 0, jnp.inf, 0.0))
    ratio = jnp.where(jnp.isnan(b) | jnp.isnan(w), jnp.nan, ratio)
    out = jnp.sqrt(1.0 + ratio)
    return out[0] if squeeze else out


def nested_rhat_reference(draws, num_superchains: int) -> np.ndarray:
    """Plain NumPy nested R-hat of ONE dataset (formula-by-formula; reference for tests/benchmarks)."""
    x = np.asarray(draws, dtype=np.float64)
    if x.ndim == 2:
        x = x[..., None]
    c, n, d = x.shape
    k = num_superchains
    m = c // k
    out = np.empty(d)
    for p in range(d):
        xs = x[:, :, p].reshape(k, m, n)
        cm = xs.mean(axis=2)
        sm = cm.mean(axis=1)
        b = sm.var(ddof=1) if k > 1 else 0.0
        wt = np.zeros(k)
        for kk in range(k):
            bt = cm[kk].var(ddof=1) if m > 1 else 0.0
            wk = np.mean([xs[kk, j].var(ddof=1) for j in range(m)]) if n > 1 else 0.0
            wt[kk] = bt + wk
        out[p] = np.sqrt(1 + b / wt.mean())
    return out
