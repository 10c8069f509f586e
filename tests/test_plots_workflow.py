"""Workflow figures on synthetic results: edge cases (no OOD check, no MCMC, infinite k-hat,
failed datasets without draws, no model attached)."""
import numpy as np
from matplotlib.figure import Figure

from amortflow import plots
from amortflow.workflow import WorkflowResult


def _result(k=12, s=50, d=2, ood=True, mcmc=True):
    rng = np.random.default_rng(0)
    route = np.array((["amortized", "psis", "mcmc", "nuts", "failed", "amortized"] * k)[:k], dtype=object)
    draws = rng.normal(size=(k, s, d)).astype(np.float32)
    draws[route == "failed"] = np.nan
    khat = rng.uniform(0, 1.2, k)
    khat[1] = np.inf
    rhat = np.where(np.isin(route, ["mcmc", "nuts", "failed"]), rng.uniform(1.0, 1.05, k), np.nan) if mcmc \
        else np.full(k, np.nan)
    score = rng.gamma(2.0, 1.0, k) if ood else np.full(k, np.nan)
    diag = {"ood_score": score, "ood_flag": route != "amortized", "khat": khat,
            "psis_ess": rng.uniform(5, 50, k), "nested_rhat_max": rhat}
    return WorkflowResult(route=route, reason=np.full(k, "", dtype=object), draws=draws, diagnostics=diag,
                          stage_time_s={"amortized_draws": 1.0, "ood_check": 0.5, "psis": 0.2, "mcmc": 3.0},
                          stage_counts={"amortized_draws": k, "ood_check": k, "psis": 8, "mcmc": 6},
                          param_names=("a", "b"), model_name="synthetic", config={"num_draws": s},
                          mcmc_stage_time_s={"chees": 2.0, "nuts": 1.0})


def test_workflow_figures_render(tmp_path):
    res = _result()
    truth = {"a": np.zeros(12), "b": np.ones(12)}
    figs = [plots.plot_routing(res, training_time_s=10.0), plots.plot_workflow_diagnostics(res),
            plots.plot_posterior_comparison(res, 2, reference_draws=np.zeros((30, 2)), truth={"a": 0.0}),
            plots.plot_posterior_comparison(res, 4),  # failed: no draws
            plots.plot_recovery(truth, res)]
    for j, f in enumerate(figs):
        assert isinstance(f, Figure)
        f.savefig(tmp_path / f"{j}.png")
    off = _result(ood=False, mcmc=False)
    plots.plot_workflow_diagnostics(off).savefig(tmp_path / "off.png")
    plots.plot_routing(off).savefig(tmp_path / "routing.png")
