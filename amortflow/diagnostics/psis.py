"""Pareto-smoothed importance sampling (Vehtari et al., 2024, JMLR 25(72)) as pure JAX functions.

The algorithm follows ``arviz.psislw`` step by step (tail length ``M = ceil(min(S/5, 3 sqrt(S/r_eff)))``,
Zhang–Stephens empirical-Bayes generalized-Pareto fit with the weakly informative prior on k,
tail replaced by the fitted quantiles, truncation at the largest raw weight, normalization), so in
float64 the Pareto k̂ agrees with arviz to ~1e-10. Only the top ``M + 1`` log weights are needed,
so the tail is found with ``jax.lax.top_k`` instead of a full sort (XLA's CPU sort is slow).

Float32 (what it costs): measured against ``arviz.psislw`` (float64) on 1000 x 2000 log weights
with tail shapes 0.1..1.2, the float32 k̂ differs by < 1e-5 and no accept/reject decision at
0.7 changes (``benchmarks/results/diagnostics.json``). The loss appears when the tail spans more
than ~87 nats (``exp`` underflows in float32): exceedances near the cutoff become 0 and the fit
returns ``khat = inf`` (weights left unsmoothed) where float64 would give a large finite k̂ (> ~3).
Both fail any threshold, but compute in float64 if the exact k̂ of such tails matters.

Conventions for degenerate input (never NaN):

- ``-inf`` log weights (draws outside the target's support) get weight zero; ``NaN`` is treated as
  ``-inf``; ``+inf`` is clipped to the largest finite value.
- a row whose log weights are all ``-inf``/``NaN`` returns uniform log weights ``-log S``,
  ``khat = inf`` and ``ess = 0`` (the row is unusable; the uniform weights only keep resampling
  well defined).
- fewer than 5 draws in the tail (tiny ``S`` or massive ties): ``khat = inf``, weights left unsmoothed
  (as arviz).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

__all__ = ["PSISResult", "psis", "psis_khat_threshold", "psis_tail_length", "resample", "gpd_fit"]


class PSISResult(NamedTuple):
    """Output of :func:`psis`.

    Attributes:
      log_weights: ``[..., S]`` Pareto-smoothed, truncated, normalized log weights
        (``logsumexp = 0`` along the last axis).
      khat: ``[...]`` Pareto shape estimate of the upper tail (``inf`` when it cannot be fitted).
      ess: ``[...]`` importance-sampling effective sample size ``1 / sum(w^2)`` of the smoothed
        weights (0 for an all ``-inf`` row).
    """

    log_weights: Array
    khat: Array
    ess: Array


def psis_khat_threshold(num_draws: int) -> float:
    """Sample-size-dependent k̂ threshold ``min(1 - 1/log10(S), 0.7)`` (Vehtari et al., 2024)."""
    s = float(num_draws)
    if s <= 10:  # 1 - 1/log10(S) <= 0 : no k̂ is reliable
        return 0.0
    return min(1.0 - 1.0 / math.log10(s), 0.7)


def psis_tail_length(num_draws: int, reff: float = 1.0) -> int:
    """Tail length ``M = ceil(min(S/5, 3 sqrt(S / r_eff)))`` used by :func:`psis`."""
    s = int(num_draws)
    return int(np.ceil(min(s / 5.0, 3 * (s / reff) ** 0.5)))


def gpd_fit(tail_desc, n):
    """Zhang–Stephens empirical-Bayes generalized-Pareto fit with the Vehtari et al. prior on k.

    Args:
      tail_desc: ``[M]`` exceedances sorted in DESCENDING order; only the first ``n`` are used
        (the rest are ignored, so ``n`` may be traced).
      n: number of valid exceedances (``>= 1``).
    Returns:
      ``(k, sigma)`` scalars (k already shrunk towards 0.5 with prior weight 10, as arviz).
    """
    dtype = tail_desc.dtype
    m_cap = tail_desc.shape[0]
    eps = jnp.finfo(dtype).eps
    idx = jnp.arange(m_cap)
    mask = idx < n
    nf = n.astype(dtype)
    t = jnp.where(mask, tail_desc, 0.0)
    # ascending ary[int(n/4 + 0.5) - 1] == descending[n - (n + 2) // 4]
    quart = tail_desc[jnp.clip(n - (n + 2) // 4, 0, m_cap - 1)]
    t_max = tail_desc[0]
    m_est_cap = 30 + int(math.isqrt(m_cap))
    m_est = 30 + jnp.floor(jnp.sqrt(nf)).astype(jnp.int32)
    j = jnp.arange(1, m_est_cap + 1, dtype=dtype)
    jmask = jnp.arange(1, m_est_cap + 1) <= m_est
    b = 1.0 - jnp.sqrt(m_est.astype(dtype) / (j - 0.5))
    b = b / (3.0 * quart) + 1.0 / t_max
    b = jnp.where(jmask, b, 1.0 / t_max)  # harmless placeholder for unused grid points
    k_ary = jnp.sum(jnp.where(mask[None, :], jnp.log1p(-b[:, None] * t[None, :]), 0.0), axis=1) / nf
    len_scale = nf * (jnp.log(-(b / k_ary)) - k_ary - 1.0)
    len_scale = jnp.where(jmask & ~jnp.isnan(len_scale), len_scale, -jnp.inf)
    w = jax.nn.softmax(len_scale)
    w = jnp.where(w >= 10 * eps, w, 0.0)
    w = w / jnp.sum(w)
    b_post = jnp.sum(b * w)
    k_post = jnp.sum(jnp.where(mask, jnp.log1p(-b_post * t), 0.0)) / nf
    sigma = -k_post / b_post
    k_post = (nf * k_post + 10 * 0.5) / (nf + 10)
    return k_post, sigma


def _gpinv(p, k, sigma):
    eps = jnp.finfo(p.dtype).eps
    small = jnp.abs(k) < eps
    k_safe = jnp.where(small, 1.0, k)
    x = jnp.where(small, -jnp.log1p(-p), jnp.expm1(-k_safe * jnp.log1p(-p)) / k_safe)
    return x * sigma


def _psis_1d(lw, tail_len: int):
    s = lw.shape[-1]
    dtype = lw.dtype
    finfo = jnp.finfo(dtype)
    lw = jnp.nan_to_num(lw, nan=-jnp.inf, posinf=finfo.max, neginf=-jnp.inf)
    max_x = jnp.max(lw)
    ok = jnp.isfinite(max_x)
    x = jnp.where(ok, lw - jnp.where(ok, max_x, 0.0), 0.0)
    ktop = min(tail_len + 1, s)
    # the barrier keeps XLA from folding our slices into the top_k, which turns it into a full sort
    vals, inds = jax.lax.optimization_barrier(jax.lax.top_k(x, ktop))
    cutoffmin = jnp.log(finfo.tiny).astype(dtype)
    xcutoff = jnp.maximum(vals[ktop - 1], cutoffmin)
    head = vals[: ktop - 1]
    head_inds = inds[: ktop - 1]
    n = jnp.sum(head > xcutoff)  # the tail is a prefix of the descending top values
    expcut = jnp.exp(xcutoff)
    tail = jnp.exp(head) - expcut
    n_safe = jnp.maximum(n, 5)
    tail_safe = jnp.where(n >= 5, tail, jnp.ones_like(tail))
    k, sigma = gpd_fit(tail_safe, n_safe)
    fit_ok = (n > 4) & jnp.isfinite(k) & (sigma > 0)
    i = jnp.arange(ktop - 1, dtype=dtype)
    p = (n.astype(dtype) - 1.0 - i + 0.5) / n_safe.astype(dtype)
    p = jnp.clip(p, 0.0, 1.0)
    smoothed = jnp.log(_gpinv(p, k, sigma) + expcut)
    use = fit_ok & (jnp.arange(ktop - 1) < n)
    new_tail = jnp.where(use, smoothed, head)
    x = x.at[head_inds].set(new_tail)
    x = jnp.where(fit_ok, jnp.minimum(x, 0.0), x)
    x = x - jax.nn.logsumexp(x)
    khat = jnp.where(n > 4, jnp.where(jnp.isfinite(k), k, jnp.inf), jnp.inf)
    ess = jnp.exp(-jax.nn.logsumexp(2.0 * x))
    uniform = jnp.full_like(x, -jnp.log(jnp.asarray(s, dtype)))
    x = jnp.where(ok, x, uniform)
    khat = jnp.where(ok, khat, jnp.inf).astype(dtype)
    ess = jnp.where(ok, ess, 0.0).astype(dtype)
    return x, khat, ess


@functools.partial(jax.jit, static_argnames=("reff",))
def psis(log_weights, reff: float = 1.0) -> PSISResult:
    """Pareto-smoothed importance sampling on the last axis.

    Args:
      log_weights: ``[S]`` or ``[..., S]`` raw log importance ratios
        ``log p(theta, y) - log q(theta | y)`` (any constant offset is fine). Any number of
        leading (dataset) axes is processed in one vectorized call; dtype is preserved.
      reff: relative efficiency of the draws (1 for independent proposal draws; ``ess/S`` for
        MCMC). Static: only changes the tail length.
    Returns:
      :class:`PSISResult` ``(log_weights [..., S], khat [...], ess [...])``.
    """
    lw = jnp.asarray(log_weights)
    if not jnp.issubdtype(lw.dtype, jnp.floating):
        lw = lw.astype(jnp.float32)
    lead, s = lw.shape[:-1], lw.shape[-1]
    tail_len = psis_tail_length(s, reff)
    flat = lw.reshape((-1, s))
    out_lw, khat, ess = jax.vmap(lambda r: _psis_1d(r, tail_len))(flat)
    return PSISResult(out_lw.reshape(lead + (s,)), khat.reshape(lead), ess.reshape(lead))


@functools.partial(jax.jit, static_argnames=("num", "replace", "method"))
def resample(key, log_weights, num: int, replace: bool = True, method: str = "systematic"):
    """Weighted resampling of draw indices.

    Args:
      key: PRNG key.
      log_weights: ``[S]`` (unnormalized) log weights; ``-inf`` entries are never drawn with
        replacement (and only after every finite one without replacement). All ``-inf``: uniform.
      num: number of indices (static). Without replacement ``num <= S``.
      replace: with replacement or without (Gumbel top-k, i.e. successive sampling proportional
        to the weights).
      method: with replacement, ``"systematic"`` (one uniform, ``num`` evenly spaced points on
        the weight CDF: draw ``i`` appears ``floor`` or ``ceil`` of ``num * w_i`` times, so the
        resampled mean adds almost no noise to the importance-sampling estimate) or
        ``"multinomial"`` (independent draws: adds a variance of ``Var/num`` to every mean).
        Both are unbiased. The output order is randomly permuted either way.
    Returns:
      ``[num]`` int32 indices into the draws. vmap over datasets with ``jax.vmap(resample,
      (0, 0, None, None))`` (keys split per dataset).
    """
    if method not in ("systematic", "multinomial"):
        raise ValueError(f"resample method must be 'systematic' or 'multinomial', got {method!r}")
    lw = jnp.asarray(log_weights)
    lw = jnp.nan_to_num(lw, nan=-jnp.inf, posinf=jnp.finfo(lw.dtype).max, neginf=-jnp.inf)
    lw = jnp.where(jnp.isfinite(jnp.max(lw)), lw, jnp.zeros_like(lw))
    if replace:
        # inverse-CDF sampling: O(S + num log S) memory and time (categorical with shape=(num,)
        # would materialise a [num, S] Gumbel array: 16 GB for 1000 x 2000 x 2000)
        k_u, k_perm = jax.random.split(key)
        p = jnp.exp(lw - jnp.max(lw))
        cdf = jnp.cumsum(p)
        if method == "systematic":
            u = (jnp.arange(num, dtype=cdf.dtype) + jax.random.uniform(k_u, (), cdf.dtype)) / num
        else:
            u = jax.random.uniform(k_u, (num,), dtype=cdf.dtype)
        idx = jnp.searchsorted(cdf, u * cdf[-1], side="right")
        idx = jnp.minimum(idx, lw.shape[-1] - 1).astype(jnp.int32)
        return jax.random.permutation(k_perm, idx)
    if num > lw.shape[-1]:
        raise ValueError(f"resample without replacement: num={num} > S={lw.shape[-1]}")
    g = jax.random.gumbel(key, lw.shape, dtype=lw.dtype)
    # -inf entries are drawn (in random order) only after every entry with non-negligible weight:
    # they get the score of a weight exp(-2 * |log tiny|) relative to the largest one.
    lw0 = lw - jnp.max(lw)
    floor = 2.0 * jnp.log(jnp.finfo(lw.dtype).tiny)
    score = jnp.maximum(lw0, floor) + g
    return jax.lax.top_k(score, num)[1].astype(jnp.int32)
