"""Figures (matplotlib; Agg-safe: no pyplot state is required, every function returns the Figure)."""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

__all__ = ["plot_sbc_ecdf", "plot_sbc_histogram", "plot_coverage", "plot_psis_khat", "plot_ood_scores"]


def _grid(num: int, ncols: int | None = None, size=(3.2, 2.6)):
    ncols = ncols or min(num, 4)
    nrows = int(np.ceil(num / ncols))
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[num:]:
        ax.set_visible(False)
    return fig, axes[:num]


def _names(names, d):
    return list(names) if names is not None else [f"theta_{i}" for i in range(d)]


def plot_sbc_ecdf(ranks, num_draws: int, param_names=None, alpha: float = 0.05, bands=None, key=None):
    """ECDF-difference plot of SBC ranks with simultaneous ``1 - alpha`` bands (Säilynoja et al.).

    Args:
      ranks: ``[N, d]`` ranks in ``0..num_draws``.
      num_draws: ``S``.
      bands: precomputed :class:`~amortflow.diagnostics.SBCBands` (else computed here).
    """
    from amortflow.diagnostics.sbc import sbc_ecdf_bands, sbc_ecdf_diff

    ranks = np.asarray(ranks)
    if ranks.ndim == 1:
        ranks = ranks[:, None]
    n, d = ranks.shape
    if bands is None:
        bands = sbc_ecdf_bands(num_draws, n, alpha, key=key)
    z, diff = sbc_ecdf_diff(ranks, num_draws, bands.thresholds)
    z, diff = np.asarray(z), np.asarray(diff)
    fig, axes = _grid(d)
    for j, (ax, name) in enumerate(zip(axes, _names(param_names, d))):
        ax.fill_between(bands.z, bands.lower - bands.z, bands.upper - bands.z, color="0.85",
                        step="mid", label=f"{100 * (1 - bands.alpha):.0f}% simultaneous band")
        ax.step(z, diff[:, j], where="mid", color="C0")
        ax.axhline(0.0, color="0.4", lw=0.8)
        ax.set_title(name)
        ax.set_xlabel("fractional rank")
    axes[0].set_ylabel("ECDF - uniform")
    axes[0].legend(fontsize="small")
    return fig


def plot_sbc_histogram(ranks, num_draws: int, num_bins: int = 20, param_names=None):
    """Rank histograms with the 99% binomial range of a uniform histogram."""
    from scipy import stats as sps

    ranks = np.asarray(ranks)
    if ranks.ndim == 1:
        ranks = ranks[:, None]
    n, d = ranks.shape
    fig, axes = _grid(d)
    edges = np.linspace(0, num_draws + 1, num_bins + 1)
    lo, hi = sps.binom.ppf([0.005, 0.995], n, 1.0 / num_bins)
    for j, (ax, name) in enumerate(zip(axes, _names(param_names, d))):
        ax.axhspan(lo, hi, color="0.85")
        ax.hist(ranks[:, j], bins=edges, color="C0", alpha=0.8)
        ax.set_title(name)
        ax.set_xlabel("rank")
    return fig


def plot_coverage(curve, param_names=None):
    """Empirical vs nominal coverage of central intervals (a :class:`~amortflow.diagnostics.CoverageCurve`)."""
    levels = np.asarray(curve.levels)
    cov = np.asarray(curve.coverage)
    if cov.ndim == 1:
        cov = cov[:, None]
    d = cov.shape[1]
    fig, axes = _grid(d)
    for j, (ax, name) in enumerate(zip(axes, _names(param_names, d))):
        ax.fill_between(levels, curve.lower, curve.upper, color="0.85")
        ax.plot([0, 1], [0, 1], color="0.4", lw=0.8)
        ax.plot(levels, cov[:, j], color="C0")
        ax.set_title(name)
        ax.set_xlabel("nominal coverage")
    axes[0].set_ylabel("empirical coverage")
    return fig


def plot_psis_khat(khat, threshold: float | None = None, num_draws: int | None = None, labels=None):
    """Pareto k̂ per dataset with the acceptance threshold (inf k̂ drawn at the top edge)."""
    from amortflow.diagnostics.psis import psis_khat_threshold

    k = np.asarray(khat, dtype=float).ravel()
    if threshold is None:
        threshold = psis_khat_threshold(num_draws) if num_draws else 0.7
    fig = Figure(figsize=(6.4, 3.2), layout="constrained")
    ax = fig.subplots()
    finite = np.isfinite(k)
    top = max(float(np.max(k[finite])) if finite.any() else 1.0, threshold) + 0.1
    shown = np.where(finite, k, top)
    bad = shown > threshold
    x = np.arange(k.size)
    ax.scatter(x[~bad], shown[~bad], s=8, color="C0", label="accepted")
    ax.scatter(x[bad], shown[bad], s=8, color="C3", label=f"k̂ > {threshold:.2f}")
    ax.axhline(threshold, color="C3", lw=0.8, ls="--")
    ax.set_xlabel("dataset" if labels is None else "")
    if labels is not None:
        ax.set_xticks(x, labels, rotation=90, fontsize="small")
    ax.set_ylabel("Pareto k̂")
    ax.legend(fontsize="small")
    return fig


def plot_ood_scores(scores, threshold: float, heldout_scores=None, bins: int = 40):
    """Histogram of OOD scores of observed datasets (and held-out training ones) with the threshold."""
    s = np.asarray(scores, dtype=float).ravel()
    fig = Figure(figsize=(5.2, 3.2), layout="constrained")
    ax = fig.subplots()
    pool = s if heldout_scores is None else np.concatenate([s, np.asarray(heldout_scores).ravel()])
    pool = pool[np.isfinite(pool)]
    edges = np.histogram_bin_edges(pool, bins=bins) if pool.size else bins
    if heldout_scores is not None:
        ax.hist(np.asarray(heldout_scores).ravel(), bins=edges, density=True, color="0.7", label="held-out training")
    ax.hist(s[np.isfinite(s)], bins=edges, density=True, color="C0", alpha=0.7, label="observed")
    ax.axvline(float(threshold), color="C3", ls="--", label="threshold")
    ax.set_xlabel("OOD score")
    ax.legend(fontsize="small")
    return fig
