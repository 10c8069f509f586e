"""The one per-dataset record of sampler statistics, and the convergence gate that judges it.

:class:`SamplerStats` is what a per-dataset kernel returns (no leading axis), what a batched run
returns (leading ``[K]``, NumPy) and what the ladder keeps for every dataset; rows move between
them with :func:`take_rows` / :func:`put_rows` instead of per-field copies.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np


class SamplerStats(NamedTuple):
    """Per-dataset sampler statistics (shapes for one dataset; batched: leading ``[K]``)."""

    draws: Any  # [S, d] pooled over chains, thinned (random subset if num_output_draws)
    nested_rhat: Any  # [d]
    rhat: Any  # [d] rank-normalized split R-hat
    ess_bulk: Any  # [d]
    ess_tail: Any  # [d]
    divergences: Any  # [] sampling-phase divergent transitions, all chains
    warmup_divergences: Any  # []
    step_size: Any  # [] (NUTS: mean over chains)
    mean_num_steps: Any  # [] mean leapfrog steps per sampling transition
    max_tree_depth: Any  # [] NUTS: max doublings in sampling; others 0
    accept_rate: Any  # [] mean acceptance probability in sampling
    num_grad_evals: Any  # [] warmup + sampling, all chains (int32 in a kernel, int64 on host)
    all_finite: Any  # [] every draw of every chain finite
    converged: Any  # [] passed the ConvergenceGate (False until a gate is applied)


DatasetOutput = SamplerStats
"""What one dataset's compiled run returns (the same record, without a leading axis)."""


def empty_stats(num_datasets: int, num_draws: int, dim: int) -> SamplerStats:
    """Host record for datasets no sampler has run on yet: NaN draws and diagnostics, zero
    counts, ``all_finite = converged = False``."""
    k = num_datasets

    def nan(*shape):
        return np.full((k,) + shape, np.nan, np.float32)

    return SamplerStats(
        draws=nan(num_draws, dim), nested_rhat=nan(dim), rhat=nan(dim), ess_bulk=nan(dim),
        ess_tail=nan(dim), divergences=np.zeros(k, np.int32),
        warmup_divergences=np.zeros(k, np.int32), step_size=nan(), mean_num_steps=nan(),
        max_tree_depth=np.zeros(k, np.int32), accept_rate=nan(),
        num_grad_evals=np.zeros(k, np.int64), all_finite=np.zeros(k, bool),
        converged=np.zeros(k, bool))


def take_rows(tree, idx):
    """Rows ``idx`` of every leaf of a batched record (or any pytree with leading ``[K]``)."""
    return jax.tree.map(lambda a: a[idx], tree)


def put_rows(dst, idx, src) -> None:
    """``dst[idx] = src`` on every leaf, in place (host NumPy records)."""
    jax.tree.map(lambda d, s: d.__setitem__(idx, np.asarray(s)), dst, src)


def concat_rows(trees: Sequence):
    """Concatenate batched records along the dataset axis."""
    return jax.tree.map(lambda *xs: np.concatenate([np.asarray(x) for x in xs], axis=0), *trees)


def forward_to_stats(self, name: str):
    """``__getattr__`` of results that hold a ``stats`` record: ``res.draws`` is
    ``res.stats.draws`` (and so for every :class:`SamplerStats` field)."""
    if name in SamplerStats._fields:
        return getattr(self.stats, name)
    raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


@dataclasses.dataclass(frozen=True)
class ConvergenceGate:
    """When a sampler's run of one dataset is accepted.

    rhat_threshold: ``max_d nested R-hat < rhat_threshold`` (and every nested R-hat finite).
    min_ess: ``min_d ess_bulk >= min_ess`` (0 disables).
    Every draw of every chain must also be finite (``all_finite``).
    """

    rhat_threshold: float = 1.01
    min_ess: float = 0.0

    def __call__(self, stats: SamplerStats) -> np.ndarray:
        """``[K]`` bool for a batched record."""
        nr = np.asarray(stats.nested_rhat)
        ok = np.all(np.isfinite(nr), axis=-1) & (np.max(nr, axis=-1) < self.rhat_threshold)
        ok &= np.asarray(stats.all_finite, bool)
        if self.min_ess > 0:
            ok &= np.min(np.asarray(stats.ess_bulk), axis=-1) >= self.min_ess
        return ok

    def explain(self, stats: SamplerStats, row: int, param_names: Sequence[str]) -> str:
        """Why row ``row`` of a batched record fails the gate, in words: the failed criteria
        (worst parameter named), then the nested R-hat when that criterion passed."""
        parts = []
        nr = np.asarray(stats.nested_rhat[row], np.float64)
        if not np.all(np.isfinite(nr)):
            parts.append(f"nested R-hat not finite ({param_names[int(np.argmin(np.isfinite(nr)))]})")
        elif np.max(nr) >= self.rhat_threshold:
            j = int(np.argmax(nr))
            parts.append(f"max nested R-hat {nr[j]:.3f} >= {self.rhat_threshold} ({param_names[j]})")
        rhat_ok = not parts
        if not bool(stats.all_finite[row]):
            parts.append("non-finite draws")
        ess = np.asarray(stats.ess_bulk[row], np.float64)
        if self.min_ess > 0 and not np.min(ess) >= self.min_ess:
            j = int(np.argmin(np.where(np.isfinite(ess), ess, -np.inf)))
            parts.append(f"min bulk ESS {ess[j]:.0f} < {self.min_ess:.0f} ({param_names[j]})")
        if rhat_ok:
            parts.append(f"max nested R-hat {np.max(nr):.3f}")
        return "; ".join(parts)


def describe_row(stats: SamplerStats, row: int) -> str:
    """The sampler diagnostics of one row beyond the gate's (R-hat, ESS, divergences, step size,
    trajectory length), for failure reasons and logs."""
    def extreme(fn, a):  # NaN (not a RuntimeWarning) when every entry is NaN
        a = np.asarray(a, np.float64)
        return fn(a[np.isfinite(a)]) if np.isfinite(a).any() else np.nan

    parts = [f"max R-hat {extreme(np.max, stats.rhat[row]):.3f}",
             f"min bulk ESS {extreme(np.min, stats.ess_bulk[row]):.0f}",
             f"{int(stats.divergences[row])} divergences",
             f"step size {float(stats.step_size[row]):.3g}",
             f"mean leapfrog steps {float(stats.mean_num_steps[row]):.1f}"]
    if stats.max_tree_depth[row] > 0:
        parts.append(f"max tree depth {int(stats.max_tree_depth[row])}")
    return "; ".join(parts)


__all__ = ["SamplerStats", "DatasetOutput", "ConvergenceGate", "empty_stats", "take_rows",
           "put_rows", "concat_rows", "describe_row"]
