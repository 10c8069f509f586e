"""Figures (matplotlib; Agg-safe: no pyplot state is required, every function returns the Figure)."""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

__all__ = ["plot_beta_sweep", "plot_sbc_ecdf", "plot_workflow_sbc", "plot_sbc_histogram", "plot_coverage", "plot_psis_khat", "plot_ood_scores",
           "plot_routing", "plot_workflow_diagnostics", "plot_posterior_comparison", "plot_recovery",
           "plot_coverage_vs_beta", "plot_tempered_sbc_ecdf"]


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


def _sbc_band(ax, bands):
    ax.fill_between(bands.z, bands.lower - bands.z, bands.upper - bands.z, color="0.85",
                    step="mid", label=f"{100 * (1 - bands.alpha):.0f}% simultaneous band")
    ax.axhline(0.0, color="0.4", lw=0.8)


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
        _sbc_band(ax, bands)
        ax.step(z, diff[:, j], where="mid", color="C0")
        ax.set_title(name)
        ax.set_xlabel("fractional rank")
    axes[0].set_ylabel("ECDF - uniform")
    axes[0].legend(fontsize="small")
    return fig


def plot_workflow_sbc(sbc, params=None, alpha: float = 0.05, by_route: bool = True,
                      min_route_datasets: int = 10, key=None):
    """SBC of the routed workflow: ECDF-difference bands of the amortized-only draws (left) and
    of the workflow's final draws (right), one row per parameter.

    Args:
      sbc: :class:`~amortflow.diagnostics.WorkflowSBC` (from ``workflow_sbc``).
      params: parameter names or indices to show (default: all).
      alpha: simultaneous level of the bands.
      by_route: also draw, in the right column, each route's ECDF difference (routes with at
        least ``min_route_datasets`` resolved datasets; their own bands are wider, as each
        route has fewer datasets).
    Returns:
      the Figure; each panel title carries the band test's p-value (the final column also the
      number of datasets without draws).
    """
    from amortflow.diagnostics.sbc import sbc_ecdf_bands, sbc_ecdf_diff, sbc_ecdf_test

    names = list(sbc.param_names)
    if params is None:
        cols = list(range(len(names)))
    else:
        cols = [names.index(p) if isinstance(p, str) else int(p) for p in params]
    final = np.asarray(sbc.ranks)[np.asarray(sbc.resolved)]
    sets = (("amortized only", np.asarray(sbc.amortized_ranks), sbc.num_amortized_draws),
            (f"workflow (final, {sbc.num_failed} failed)", final, sbc.num_draws))
    fig = Figure(figsize=(6.6, 2.3 * len(cols)), layout="constrained")
    axes = fig.subplots(len(cols), 2, squeeze=False, sharex=True)
    for c, (label, ranks, s) in enumerate(sets):
        if ranks.shape[0] == 0:
            for ax in axes[:, c]:
                ax.text(0.5, 0.5, "no datasets", ha="center", va="center", transform=ax.transAxes)
            continue
        bands = sbc_ecdf_bands(s, ranks.shape[0], alpha, key=key)
        z, diff = (np.asarray(a) for a in sbc_ecdf_diff(ranks, s, bands.thresholds))
        _, pval = sbc_ecdf_test(ranks[:, cols], s, alpha, key=key)
        routes = {}
        if by_route and c == 1:
            routes = {r: rk for r, rk in sbc.route_ranks().items() if rk.shape[0] >= min_route_datasets}
        for row, (j, p) in enumerate(zip(cols, pval)):
            ax = axes[row, c]
            _sbc_band(ax, bands)
            for r, rk in routes.items():
                zr, dr = sbc_ecdf_diff(rk, s, bands.thresholds)
                ax.step(np.asarray(zr), np.asarray(dr)[:, j], where="mid", lw=0.9, alpha=0.9,
                        color=ROUTE_COLORS.get(r, "0.4"), label=f"{r} ({rk.shape[0]})")
            ax.step(z, diff[:, j], where="mid", color="k" if routes else "C0", lw=1.4,
                    label=f"all ({ranks.shape[0]})")
            ax.set_title(f"{names[j]}: {label}, p={p:.3f}", fontsize="small")
            if c == 0:
                ax.set_ylabel("ECDF - uniform")
        axes[-1, c].set_xlabel("fractional rank")
        axes[0, c].legend(fontsize="x-small")
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
    ax.scatter(x[bad], shown[bad], s=8, color="C3", label=rf"$\hat{{k}}$ > {threshold:.2f}")
    ax.axhline(threshold, color="C3", lw=0.8, ls="--")
    ax.set_xlabel("dataset" if labels is None else "")
    if labels is not None:
        ax.set_xticks(x, labels, rotation=90, fontsize="small")
    ax.set_ylabel(r"Pareto $\hat{k}$")
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



# ----------------------------------------------------------------------------- workflow results
ROUTE_COLORS = {"amortized": "#2ca02c", "psis": "#1f77b4", "refined": "#17becf", "mcmc": "#ff7f0e", "nuts": "#9467bd",
                "failed": "#d62728"}


def _route_order():
    from amortflow.workflow.result import ROUTES

    return ROUTES


def plot_routing(result, training_time_s: float | None = None):
    """Two panels: datasets per route, and wall time per stage (MCMC split by escalation stage).

    Args:
      result: a :class:`~amortflow.workflow.WorkflowResult`.
      training_time_s: if given, the (one-off) training time is shown as its own bar.
    """
    counts = result.route_counts()
    routes = list(counts)
    fig = Figure(figsize=(10.5, 3.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, width_ratios=(1, 1.35))
    vals = [counts[r] for r in routes]
    bars = ax1.bar(routes, vals, color=[ROUTE_COLORS.get(r, "0.4") for r in routes])
    k = max(result.num_datasets, 1)
    for b, v in zip(bars, vals):
        ax1.annotate(f"{v}\n({100 * v / k:.1f}%)", (b.get_x() + b.get_width() / 2, v), ha="center",
                     va="bottom", fontsize="small", xytext=(0, 2), textcoords="offset points")
    ax1.set_ylim(0, max(vals + [1]) * 1.25)
    ax1.set_ylabel("datasets")
    ax1.set_title(f"route of {result.num_datasets} datasets")

    labels, times, colors = [], [], []
    if training_time_s is not None:
        labels.append("training (once)")
        times.append(float(training_time_s))
        colors.append("0.55")
    stage_color = {"amortized_draws": ROUTE_COLORS["amortized"], "ood_check": ROUTE_COLORS["amortized"],
                   "psis": ROUTE_COLORS["psis"], "refine": ROUTE_COLORS["refined"], "mcmc": ROUTE_COLORS["mcmc"]}
    for name, t in result.stage_time_s.items():
        n = result.stage_counts.get(name)
        rungs = [(st.rpartition(":")[2], ts) for st, ts in result.mcmc_stage_time_s.items()
                 if (st.rpartition(":")[0] or "mcmc") == name]  # "<stage>:<rung>"; bare: of "mcmc"
        if rungs:
            for rung, ts in rungs:
                labels.append(f"{name}: {rung}")
                times.append(float(ts))
                colors.append(ROUTE_COLORS["nuts"] if "nuts" in rung else ROUTE_COLORS["mcmc"])
            continue
        labels.append(name if n is None else f"{name} ({n})")
        times.append(float(t))
        colors.append(stage_color.get(name, "0.4"))
    y = np.arange(len(labels))[::-1]
    ax2.barh(y, times, color=colors)
    ax2.set_yticks(y, labels, fontsize="small")
    top = max(times + [1e-3])
    for yi, t in zip(y, times):
        ax2.annotate(f"{t:.1f} s", (t, yi), va="center", fontsize="small", xytext=(3, 0),
                     textcoords="offset points")
    ax2.set_xlim(0, top * 1.22)
    ax2.set_xlabel("wall time [s]")
    ax2.set_title(f"time per stage (workflow total {result.total_time_s:.1f} s)")
    return fig


def _ood_threshold(score, flag):
    """The OOD threshold lies between the largest unflagged and the smallest flagged score."""
    ok = np.isfinite(score)
    lo = score[ok & ~flag].max() if (ok & ~flag).any() else None
    hi = score[ok & flag].min() if (ok & flag).any() else None
    if lo is None and hi is None:
        return None
    if lo is None:
        return float(hi)
    if hi is None:
        return float(lo)
    return 0.5 * float(lo + hi)


def plot_workflow_diagnostics(result, ood_threshold: float | None = None, rhat_threshold: float = 1.01,
                              bins: int = 30):
    """Three panels: OOD scores (threshold), Pareto k̂ (threshold), nested R̂ of MCMC datasets.

    Args:
      result: a :class:`~amortflow.workflow.WorkflowResult`.
      ood_threshold: the OOD threshold; default: inferred from the per-dataset flags.
      rhat_threshold: the nested-R̂ gate drawn on the third panel.
    """
    from amortflow.diagnostics.psis import psis_khat_threshold

    dg = result.diagnostics
    fig = Figure(figsize=(12.5, 3.4), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(1, 3)

    score = np.asarray(dg.get("ood_score", np.full(result.num_datasets, np.nan)), float)
    flag = np.asarray(dg.get("ood_flag", np.zeros(result.num_datasets, bool)), bool)
    ok = np.isfinite(score)
    if ok.any():
        saved = getattr(result, "thresholds", {}).get("ood")
        if ood_threshold is not None:
            thr = ood_threshold
        elif saved is not None and np.isfinite(saved):
            thr = saved
        else:
            thr = _ood_threshold(score, flag)
        s = score[ok]
        cap = np.quantile(s, 0.98) * 1.5 if s.size > 10 else s.max()
        cap = max(cap, thr or 0.0) * 1.05
        shown = np.minimum(s, cap)
        edges = np.histogram_bin_edges(shown, bins=bins)
        ax1.hist(shown[~flag[ok]], bins=edges, color=ROUTE_COLORS["amortized"], alpha=0.8, label="in distribution")
        ax1.hist(shown[flag[ok]], bins=edges, color=ROUTE_COLORS["failed"], alpha=0.7,
                 label=f"flagged ({int(flag[ok].sum())})")
        if thr is not None:
            ax1.axvline(thr, color="k", ls="--", lw=1, label="threshold")
        if (s > cap).any():
            ax1.annotate(f"{int((s > cap).sum())} beyond axis (clipped)", (0.98, 0.6), xycoords="axes fraction",
                         ha="right", fontsize="x-small")
        ax1.legend(fontsize="x-small")
    else:
        ax1.text(0.5, 0.5, "OOD check off", ha="center", va="center", transform=ax1.transAxes)
    ax1.set_xlabel("OOD score (summary space)")
    ax1.set_ylabel("datasets")
    ax1.set_title("stage 1: out-of-distribution check")

    khat = np.asarray(dg.get("khat", np.full(result.num_datasets, np.nan)), float)
    kthr = getattr(result, "thresholds", {}).get("khat")
    if kthr is None:
        kthr = result.config.get("khat_threshold") if isinstance(result.config, dict) else None
    if kthr is None:
        s_draws = result.config.get("num_draws") if isinstance(result.config, dict) else None
        kthr = psis_khat_threshold(int(s_draws or result.draws.shape[1]))
    kthr = float(kthr)
    fin = khat[np.isfinite(khat)]
    if khat[~np.isnan(khat)].size:
        hi = max(float(fin.max()) if fin.size else 1.0, kthr) + 0.1
        shown = np.where(np.isinf(khat), hi, khat)[~np.isnan(khat)]
        edges = np.histogram_bin_edges(shown, bins=bins)
        ax2.hist(shown[shown <= kthr], bins=edges, color=ROUTE_COLORS["psis"], alpha=0.8, label=r"$\hat{k}$ ≤ threshold")
        ax2.hist(shown[shown > kthr], bins=edges, color=ROUTE_COLORS["failed"], alpha=0.7,
                 label=rf"$\hat{{k}}$ > threshold ({int((shown > kthr).sum())})")
        ax2.axvline(kthr, color="k", ls="--", lw=1, label=f"threshold {kthr:.2f}")
        ax2.legend(fontsize="x-small")
    else:
        ax2.text(0.5, 0.5, "no PSIS diagnostics", ha="center", va="center", transform=ax2.transAxes)
    ax2.set_xlabel(r"Pareto $\hat{k}$ (all datasets)")
    ax2.set_title("stage 2: PSIS")

    rhat = np.asarray(dg.get("nested_rhat_max", np.full(result.num_datasets, np.nan)), float)
    ran = np.isfinite(rhat)
    if ran.any():
        cap = max(rhat_threshold * 1.2, 1.1)
        for r in ("mcmc", "nuts", "failed"):
            sel = ran & (result.route == r)
            if sel.any():
                v = np.minimum(rhat[sel], cap)
                jitter = np.linspace(-0.25, 0.25, v.size) if v.size > 1 else np.zeros(1)
                ax3.scatter(v, np.full(v.size, ("mcmc", "nuts", "failed").index(r)) + jitter, s=12,
                            color=ROUTE_COLORS.get(r, "0.4"), label=f"{r} ({int(sel.sum())})")
        ax3.set_yticks([0, 1, 2], ["mcmc", "nuts", "failed"])
        ax3.axvline(rhat_threshold, color="k", ls="--", lw=1, label=f"gate {rhat_threshold}")
        if (rhat[ran] > cap).any():
            ax3.annotate(f"values > {cap:.2f} drawn at {cap:.2f}", (0.98, 0.02), xycoords="axes fraction",
                         ha="right", fontsize="x-small")
        ax3.margins(x=0.08)
        ax3.legend(fontsize="x-small", loc="best")
    else:
        ax3.text(0.5, 0.5, "no dataset needed MCMC", ha="center", va="center", transform=ax3.transAxes)
    ax3.set_xlabel(r"max nested $\hat{R}$ (final MCMC stage)")
    ax3.set_title("stages 3-4: MCMC convergence")
    return fig


def _constrained(result, draws):
    """Constrained name -> values for unconstrained ``draws [..., d]`` (or named raw values)."""
    draws = np.asarray(draws)
    if result.model is not None:
        import jax

        out = jax.jit(result.model.constrain)(np.nan_to_num(draws))
        return {k: np.asarray(v) for k, v in out.items()}
    return {n: draws[..., j] for j, n in enumerate(result.param_names)}


def plot_posterior_comparison(result, i: int, reference_draws=None, reference_label: str = "reference",
                              truth: dict | None = None, bins: int = 40):
    """Marginal posteriors of dataset ``i`` per (constrained) parameter.

    Args:
      result: a :class:`~amortflow.workflow.WorkflowResult`.
      i: dataset index.
      reference_draws: optional draws to overlay: unconstrained ``[S, d]`` (constrained through
        the result's model) or a dict name -> ``[S]`` of constrained values.
      reference_label: legend label of the reference (e.g. ``"NUTS"``, ``"amortized (stage 1)"``).
      truth: optional name -> true (constrained) value, drawn as a vertical line.
    """
    i = int(i)
    route = str(result.route[i])
    post = _constrained(result, result.draws[i])
    ref = None
    if reference_draws is not None:
        ref = ({k: np.asarray(v) for k, v in reference_draws.items()} if isinstance(reference_draws, dict)
               else _constrained(result, reference_draws))
    names = [n for n in post if np.ndim(post[n]) == 1]
    fig, axes = _grid(len(names), size=(3.4, 2.7))
    color = ROUTE_COLORS.get(route, "C0")
    for ax, n in zip(axes, names):
        v = post[n][np.isfinite(post[n])]
        pool = [v] + ([ref[n][np.isfinite(ref[n])]] if ref is not None and n in ref else [])
        allv = np.concatenate(pool) if pool else v
        if allv.size == 0:
            ax.text(0.5, 0.5, "no draws", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(n)
            continue
        lo, hi = np.quantile(allv, [0.002, 0.998])
        edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, bins + 1)
        if v.size:
            ax.hist(v, bins=edges, density=True, color=color, alpha=0.6, label=f"accepted ({route})")
        if ref is not None and n in ref:
            ax.hist(ref[n], bins=edges, density=True, histtype="step", color="k", lw=1.2, label=reference_label)
        if truth is not None and n in truth:
            ax.axvline(float(truth[n]), color="C3", ls="--", lw=1.2, label="true value")
        ax.set_title(n)
        ax.set_yticks([])
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=len(handles), fontsize="small")
    k = result.diagnostics.get("khat")
    extra = rf", $\hat{{k}}$ = {float(np.asarray(k)[i]):.2f}" if k is not None and np.isfinite(np.asarray(k)[i]) else ""
    fig.suptitle(f"dataset {i}: route {route}{extra}", fontsize="medium")
    return fig


def plot_recovery(true_theta_constrained: dict, result, max_points: int = 2000):
    """Posterior mean ± sd against the true value, per constrained parameter, colored by route.

    Args:
      true_theta_constrained: name -> ``[K]`` true (constrained) values of the ``K`` datasets.
      result: a :class:`~amortflow.workflow.WorkflowResult` of those datasets (failed datasets,
        which have no draws, are left out).
      max_points: at most this many datasets are drawn (evenly spaced).
    """
    post = result.constrained_draws() if result.model is not None else {
        n: result.draws[:, :, j] for j, n in enumerate(result.param_names)}
    names = [n for n in true_theta_constrained if n in post and np.ndim(post[n]) == 2]
    if not names:
        raise ValueError(f"no true values match the result's parameters {sorted(post)}")
    fig, axes = _grid(len(names), size=(3.6, 3.3))
    sel = np.arange(result.num_datasets)
    if sel.size > max_points:
        sel = sel[np.linspace(0, sel.size - 1, max_points).astype(int)]
    routes = np.asarray(result.route)[sel]
    for ax, n in zip(axes, names):
        t = np.asarray(true_theta_constrained[n], float)
        if t.shape[0] != result.num_datasets:
            raise ValueError(f"true values of {n!r} have {t.shape[0]} rows, the result {result.num_datasets} datasets")
        t = t[sel]
        v = post[n][sel]
        has = np.isfinite(v).any(axis=1)  # failed datasets have no draws
        m, s = np.full(v.shape[0], np.nan), np.full(v.shape[0], np.nan)
        m[has], s[has] = np.nanmean(v[has], axis=1), np.nanstd(v[has], axis=1)
        for r in _route_order():
            if r == "failed":
                continue
            rs = (routes == r) & np.isfinite(m)
            if rs.any():
                ax.errorbar(t[rs], m[rs], yerr=s[rs], fmt="o", ms=2.5, lw=0.6, alpha=0.75,
                            color=ROUTE_COLORS.get(r, "0.4"), label=f"{r} ({int(rs.sum())})")
        ok = np.isfinite(m)
        if ok.any():
            lo = float(min(t[ok].min(), (m - s)[ok].min()))
            hi = float(max(t[ok].max(), (m + s)[ok].max()))
            ax.plot([lo, hi], [lo, hi], color="0.4", lw=0.8)
            r2 = 1 - np.sum((m[ok] - t[ok]) ** 2) / max(np.sum((t[ok] - t[ok].mean()) ** 2), 1e-12)
            ax.set_title(f"{n}  (R² = {r2:.2f})")
        else:
            ax.set_title(n)
        ax.set_xlabel("true value")
    axes[0].set_ylabel("posterior mean ± sd")
    axes[0].legend(fontsize="x-small", markerscale=2)
    return fig


def _tempered_inconclusive(ax, result):
    """Grey out the temperatures a :class:`~amortflow.diagnostics.TemperedSBC` marks inconclusive."""
    for b, ok in zip(np.asarray(result.betas), np.asarray(result.conclusive)):
        if not ok:
            ax.axvline(b, color="0.8", lw=6, alpha=0.6, zorder=0)


def plot_coverage_vs_beta(result, param_names=None):
    """Weighted coverage of central credible intervals vs temperature (log x-axis), one panel
    per parameter: one line per nominal level with a ``±2 se`` band, the nominal level dashed;
    inconclusive temperatures (low ESS / high ``k-hat``) shaded grey.

    Args:
      result: :class:`~amortflow.diagnostics.TemperedSBC` (``coverage [G, L, d]``).
      param_names: ``d`` panel titles (default ``result.param_names``).
    Returns:
      Figure with ``d`` visible axes.
    """
    betas = np.asarray(result.betas, np.float64)
    cov, se = np.asarray(result.coverage), np.asarray(result.coverage_se)
    levels = np.asarray(result.levels)
    d = cov.shape[2]
    order = np.argsort(betas)
    fig, axes = _grid(d)
    names = _names(param_names if param_names is not None else result.param_names, d)
    for j, (ax, name) in enumerate(zip(axes, names)):
        _tempered_inconclusive(ax, result)
        for l, lv in enumerate(levels):
            c = f"C{l % 10}"
            y, e = cov[order, l, j], se[order, l, j]
            ax.fill_between(betas[order], y - 2 * e, y + 2 * e, color=c, alpha=0.2, lw=0)
            ax.plot(betas[order], y, "o-", color=c, ms=3, label=f"{lv:g}")
            ax.axhline(lv, color=c, ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_title(name)
        ax.set_xlabel("beta")
    axes[0].set_ylabel("weighted coverage")
    axes[0].legend(title="nominal", fontsize="small")
    return fig


def plot_tempered_sbc_ecdf(result, param_names=None):
    """Weighted ECDF difference of the ranks at every temperature, one panel per parameter, with
    each temperature's bootstrap simultaneous ``1 - alpha`` band (``±result.critical``) as dotted
    lines of the same colour; inconclusive temperatures dashed.

    Args:
      result: :class:`~amortflow.diagnostics.TemperedSBC`.
    Returns:
      Figure with ``d`` visible axes.
    """
    z, diff = result.ecdf_diff()
    crit = np.asarray(result.critical)
    d = diff.shape[2]
    fig, axes = _grid(d)
    names = _names(param_names if param_names is not None else result.param_names, d)
    for j, (ax, name) in enumerate(zip(axes, names)):
        ax.axhline(0.0, color="0.4", lw=0.8)
        for g, b in enumerate(np.asarray(result.betas)):
            c = f"C{g % 10}"
            ls = "-" if result.conclusive[g] else "--"
            ax.step(z, diff[g, :, j], where="mid", color=c, ls=ls,
                    label=f"beta {b:g} ({result.verdict[g]}, p={result.pvalue[g, j]:.2g})")
            ax.axhline(crit[g, j], color=c, ls=":", lw=0.8)
            ax.axhline(-crit[g, j], color=c, ls=":", lw=0.8)
        ax.set_title(name)
        ax.set_xlabel("fractional rank")
    axes[0].set_ylabel("weighted ECDF - uniform")
    axes[0].legend(fontsize="x-small")
    return fig


def plot_beta_sweep(sweep, model=None, datasets=None, level: float = 0.9, max_datasets: int = 6):
    """How the power posterior moves with beta: per parameter, the posterior mean and central
    ``level`` interval against beta (log axis), one line per dataset.

    Args:
      sweep: :class:`~amortflow.gbi.BetaSweep` (``af.beta_sweep``) -- or its ``summary()`` table.
      model: constrain the parameters with it (else unconstrained).
      datasets: dataset indices to draw (default: the first ``max_datasets``).
    """
    table = sweep if hasattr(sweep, "pivot") else sweep.summary(model, level=level)
    params = list(dict.fromkeys(table["param"]))
    ids = list(datasets) if datasets is not None else sorted(set(table["dataset"]))[:max_datasets]
    fig, axes = _grid(len(params))
    for ax, name in zip(axes, params):
        t = table[table["param"] == name]
        for c, i in enumerate(ids):
            r = t[t["dataset"] == i].sort_values("beta")
            ax.fill_between(r["beta"], r["lower"], r["upper"], color=f"C{c % 10}", alpha=0.15, lw=0)
            ax.plot(r["beta"], r["mean"], color=f"C{c % 10}", marker="o", ms=3, label=f"dataset {i}")
        ax.axvline(1.0, color="0.5", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("temperature beta")
        ax.set_title(name)
    axes[0].set_ylabel(f"posterior mean and {100 * level:.0f}% interval")
    if len(ids) > 1:
        axes[0].legend(fontsize="x-small")
    return fig


# ----------------------------------------------------------------------------- estimator assessment
# (amortflow.diagnostics.assess; the names differ from plot_recovery / plot_coverage above, which
# take a WorkflowResult and one CoverageCurve)
__all__ += ["plot_estimate_recovery", "plot_coverage_curves", "plot_interval_width"]


def _by_estimator(theta_true, estimates, intervals):
    """``(theta [K, d], {name: (estimate or None, lower or None, upper or None)}, names)`` from
    arrays, dicts of arrays, or :class:`~amortflow.diagnostics.assess.Assessment` objects."""
    from amortflow.diagnostics.assess import Assessment

    if isinstance(estimates, Assessment):
        estimates = [estimates]
    if isinstance(estimates, (list, tuple)) and estimates and all(isinstance(a, Assessment) for a in estimates):
        theta = np.asarray(estimates[0].theta_true if theta_true is None else theta_true, float)
        series = {a.estimator_name: (a.estimate, a.lower, a.upper) for a in estimates}
        return theta, series, list(estimates[0].param_names)
    if theta_true is None:
        raise ValueError("theta_true [K, d] is needed unless Assessment objects are passed")
    theta = np.asarray(theta_true, float)
    theta = theta[:, None] if theta.ndim == 1 else theta
    est = estimates if isinstance(estimates, dict) else {"estimate": estimates}
    ivs = intervals if isinstance(intervals, dict) else {k: intervals for k in (est or {"estimate": None})}

    def fix(a):  # [K] -> [K, 1] for one parameter
        a = None if a is None else np.asarray(a, float)
        return a[:, None] if a is not None and a.ndim == 1 else a

    series = {}
    for k in dict.fromkeys(list(est) + list(ivs)):
        e = est.get(k)
        iv = ivs.get(k)
        lo, hi = (None, None) if iv is None else iv
        for label, a in (("estimates", e), ("interval lower", lo), ("interval upper", hi)):
            if a is not None and fix(a).shape != theta.shape:
                raise ValueError(f"{label} of {k!r} must be [K, d] = {theta.shape} like theta_true, got {np.shape(a)}")
        series[k] = (fix(e), fix(lo), fix(hi))
    return theta, series, None


def _subsample(k: int, max_points: int):
    return np.arange(k) if k <= max_points else np.linspace(0, k - 1, max_points).astype(int)


def plot_estimate_recovery(theta_true, estimates, intervals=None, param_names=None, max_points: int = 1000):
    """Estimate against truth per parameter (one colour per estimator), with optional interval bars.

    Args:
      theta_true: ``[K, d]`` true values (may be ``None`` when ``estimates`` are Assessments).
      estimates: ``[K, d]``, ``{estimator: [K, d]}``, or one / a list of
        :class:`~amortflow.diagnostics.assess.Assessment` (their estimates and intervals).
      intervals: ``(lower, upper)`` (each ``[K, d]``) or ``{estimator: (lower, upper)}``.
      max_points: at most this many datasets are drawn (evenly spaced).
    Returns:
      the Figure; each panel's title gives RMSE per estimator.
    """
    theta, series, names = _by_estimator(theta_true, estimates, intervals)
    k, d = theta.shape
    sel = _subsample(k, max_points)
    fig, axes = _grid(d, size=(3.6, 3.3))
    for j, (ax, name) in enumerate(zip(axes, _names(param_names or names, d))):
        t = theta[sel, j]
        rmse = []
        for c, (label, (e, lo, hi)) in enumerate(series.items()):
            if e is None:
                continue
            m = e[sel, j]
            yerr = None if lo is None else np.stack([m - lo[sel, j], hi[sel, j] - m]).clip(0)
            ax.errorbar(t, m, yerr=yerr, fmt="o", ms=2.5, lw=0.5, alpha=0.6, color=f"C{c % 10}", label=label)
            rmse.append(f"{np.sqrt(np.mean((e[:, j] - theta[:, j]) ** 2)):.3g}")
        lims = [float(np.min(t)), float(np.max(t))]
        ax.plot(lims, lims, color="0.4", lw=0.8)
        ax.set_title(f"{name}  (RMSE {', '.join(rmse)})" if rmse else name)
        ax.set_xlabel("true value")
    axes[0].set_ylabel("estimate" + (" and interval" if any(s[1] is not None for s in series.values()) else ""))
    if len(series) > 1:
        axes[0].legend(fontsize="x-small", markerscale=2)
    return fig


def plot_coverage_curves(curves, param_names=None):
    """Empirical vs nominal coverage of central intervals for one or several estimators, with
    the pointwise binomial band of a calibrated estimator.

    Args:
      curves: a :class:`~amortflow.diagnostics.CoverageCurve` (e.g. from
        :func:`~amortflow.diagnostics.assess.interval_coverage_curve`) or ``{estimator: curve}``
        (all on the same test set, so they share one band).
    """
    curves = curves if isinstance(curves, dict) else {"estimator": curves}
    first = next(iter(curves.values()))
    d = np.asarray(first.coverage).reshape(len(np.asarray(first.levels)), -1).shape[1]
    fig, axes = _grid(d)
    for j, (ax, name) in enumerate(zip(axes, _names(param_names, d))):
        ax.fill_between(np.asarray(first.levels), first.lower, first.upper, color="0.85", label="binomial band")
        ax.plot([0, 1], [0, 1], color="0.4", lw=0.8)
        for c, (label, cv) in enumerate(curves.items()):
            lv = np.asarray(cv.levels)
            ax.plot(lv, np.asarray(cv.coverage).reshape(lv.size, -1)[:, j], color=f"C{c % 10}", label=label)
        ax.set_title(name)
        ax.set_xlabel("nominal coverage")
    axes[0].set_ylabel("empirical coverage")
    axes[0].legend(fontsize="x-small")
    return fig


def plot_interval_width(theta_true, intervals=None, param_names=None, max_points: int = 1000):
    """Interval width against the true value, per parameter (one colour per estimator): where
    in parameter space an estimator is uncertain; covered datasets are filled markers,
    missed ones open.

    Args:
      theta_true: ``[K, d]`` (may be ``None`` with Assessments).
      intervals: ``(lower, upper)``, ``{estimator: (lower, upper)}``, or one / a list of
        :class:`~amortflow.diagnostics.assess.Assessment`.
    """
    from amortflow.diagnostics.assess import Assessment

    if isinstance(intervals, Assessment) or (isinstance(intervals, (list, tuple)) and intervals
                                             and isinstance(intervals[0], Assessment)):
        theta, series, names = _by_estimator(theta_true, intervals, None)
    else:
        if intervals is None:
            raise ValueError("plot_interval_width needs intervals (lower, upper) or Assessments with intervals")
        theta, series, names = _by_estimator(theta_true, {}, intervals)
    series = {k: v for k, v in series.items() if v[1] is not None}
    if not series:
        raise ValueError("plot_interval_width: no intervals to draw")
    k, d = theta.shape
    sel = _subsample(k, max_points)
    fig, axes = _grid(d)
    for j, (ax, name) in enumerate(zip(axes, _names(param_names or names, d))):
        t = theta[sel, j]
        for c, (label, (_, lo, hi)) in enumerate(series.items()):
            w = hi[sel, j] - lo[sel, j]
            inside = (t >= lo[sel, j]) & (t <= hi[sel, j])
            col = f"C{c % 10}"
            ax.scatter(t[inside], w[inside], s=6, color=col, alpha=0.6, label=f"{label} (covered {inside.mean():.0%})")
            ax.scatter(t[~inside], w[~inside], s=8, facecolors="none", edgecolors=col, alpha=0.8, lw=0.6)
        ax.set_title(name)
        ax.set_xlabel("true value")
    axes[0].set_ylabel("interval width")
    axes[0].legend(fontsize="x-small", markerscale=2)
    return fig
