"""Per-dataset convergence statistics used inside the compiled samplers.

Uses ``amortflow.diagnostics.{rhat, ess_bulk, ess_tail}`` when that module provides them;
otherwise a compact fallback (rank-normalized split R-hat, Geyer-truncated bulk/tail ESS,
Vehtari et al. 2021). All functions take ``draws [C, N, d]`` and return ``[d]``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtri

from amortflow import diagnostics as _diag
from amortflow.diagnostics import nested_rhat  # noqa: F401  (re-exported for samplers)


def _split(x):
    """``[C, N, d]`` -> ``[2C, N//2, d]`` (drops the middle draw when N is odd)."""
    c, n, d = x.shape
    h = n // 2
    return jnp.concatenate([x[:, :h], x[:, n - h:]], axis=0)


def _rank_normalize(x):
    c, n, d = x.shape
    flat = x.reshape(c * n, d)
    ranks = jnp.argsort(jnp.argsort(flat, axis=0), axis=0).astype(flat.dtype) + 1.0
    z = ndtri((ranks - 0.375) / (c * n + 0.25))
    return z.reshape(c, n, d)


def _rhat_raw(x):
    c, n, d = x.shape
    means = x.mean(axis=1)
    w = x.var(axis=1, ddof=1).mean(axis=0)
    b = n * means.var(axis=0, ddof=1)
    return jnp.sqrt(((n - 1) / n * w + b / n) / w)


def _ess_raw(x):
    """Geyer initial-monotone-sequence ESS of ``[C, N, d]`` (chains already split)."""
    c, n, d = x.shape
    xc = x - x.mean(axis=1, keepdims=True)
    f = jnp.fft.rfft(xc, n=2 * n, axis=1)
    acov = jnp.fft.irfft(f * jnp.conj(f), n=2 * n, axis=1)[:, :n] / n  # [C, N, d]
    chain_var = acov[:, 0] * n / (n - 1)
    w = chain_var.mean(axis=0)
    var_plus = w * (n - 1) / n + (x.mean(axis=1).var(axis=0, ddof=1) if c > 1 else 0.0)
    rho = 1.0 - (w - acov.mean(axis=0)) / var_plus  # [N, d]
    rho = rho.at[0].set(1.0)
    m = n // 2
    pairs = rho[: 2 * m].reshape(m, 2, d).sum(axis=1)  # [m, d]
    keep = jnp.cumprod(pairs > 0, axis=0).astype(pairs.dtype)
    mono = jax.lax.cummin(jnp.where(keep > 0, pairs, jnp.inf), axis=0)
    tau = -1.0 + 2.0 * jnp.sum(jnp.where(keep > 0, mono, 0.0), axis=0)
    tau = jnp.maximum(tau, 1.0 / jnp.log10(c * n))
    return c * n / tau


def _rhat_fallback(draws):
    s = _split(draws)
    bulk = _rhat_raw(_rank_normalize(s))
    folded = jnp.abs(s - jnp.median(s.reshape(-1, s.shape[-1]), axis=0))
    return jnp.maximum(bulk, _rhat_raw(_rank_normalize(folded)))


def _ess_bulk_fallback(draws):
    return _ess_raw(_rank_normalize(_split(draws)))


def _ess_tail_fallback(draws):
    s = _split(draws)
    flat = s.reshape(-1, s.shape[-1])
    lo, hi = jnp.quantile(flat, 0.05, axis=0), jnp.quantile(flat, 0.95, axis=0)
    e_lo = _ess_raw((s <= lo).astype(s.dtype))
    e_hi = _ess_raw((s <= hi).astype(s.dtype))
    return jnp.minimum(e_lo, e_hi)


def _pick(name, fallback):
    fn = getattr(_diag, name, None)
    if fn is None:
        return fallback

    def call(draws):
        try:
            return jnp.asarray(fn(draws))
        except Exception:  # a diagnostics version that cannot be traced: stay correct
            return fallback(draws)

    return call


def convergence_stats(draws, num_superchains: int) -> dict:
    """``{"nested_rhat", "rhat", "ess_bulk", "ess_tail"}`` each ``[d]`` for ``draws [C, N, d]``."""
    rhat = _pick("rhat", _rhat_fallback)
    ess_bulk = _pick("ess_bulk", _ess_bulk_fallback)
    ess_tail = _pick("ess_tail", _ess_tail_fallback)
    return {
        "nested_rhat": nested_rhat(draws, num_superchains),
        "rhat": rhat(draws),
        "ess_bulk": ess_bulk(draws),
        "ess_tail": ess_tail(draws),
    }
