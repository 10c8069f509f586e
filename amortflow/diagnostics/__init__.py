"""Diagnostics: PSIS, convergence (R-hat, nested R-hat, ESS), OOD scores, SBC, accuracy metrics."""
from amortflow.diagnostics.accuracy import (
    ACCURACY_KEYS, accuracy_noise_floor, c2st_knn, posterior_accuracy, wasserstein_1d,
)
from amortflow.diagnostics.assess import Assessment, assess, combine, interval_coverage_curve, review_table
from amortflow.diagnostics.convergence import (
    ess_basic, ess_bulk, ess_tail, nested_rhat, nested_rhat_reference, rank_normalize, rhat, split_chains,
    split_rhat,
)
from amortflow.diagnostics.ood import (
    MahalanobisOOD, MMDOOD, empirical_threshold, fit_mahalanobis, fit_mmd_ood,
    ledoit_wolf_shrinkage, mahalanobis_score, mmd_score,
)
from amortflow.diagnostics.is_error import ISError, MCSE_FUNCTIONALS, is_mcse
from amortflow.diagnostics.psis import (
    PSISResult, gpd_fit, psis, psis_khat_threshold, psis_tail_length, resample,
)
from amortflow.diagnostics.sbc import (
    CoverageCurve, SBCBands, SBCResult, WorkflowSBC, coverage_curve, run_sbc, sbc_ecdf_bands, sbc_ecdf_diff,
    sbc_ecdf_test, sbc_of_result, sbc_ranks, sbc_uniformity_test, workflow_sbc,
)
from amortflow.diagnostics.tempered_sbc import (
    TemperedSBC, tempered_sbc, tempered_sbc_fresh_prior, weighted_coverage, weighted_ecdf_diff,
)

__all__ = [
    "nested_rhat", "ISError", "is_mcse", "MCSE_FUNCTIONALS", "PSISResult", "psis", "psis_khat_threshold", "psis_tail_length", "resample", "gpd_fit",
    "rhat", "split_rhat", "ess_bulk", "ess_tail", "ess_basic", "split_chains", "rank_normalize",
    "nested_rhat_reference",
    "MahalanobisOOD", "fit_mahalanobis", "mahalanobis_score", "MMDOOD", "fit_mmd_ood", "mmd_score",
    "ledoit_wolf_shrinkage", "empirical_threshold",
    "sbc_ranks", "run_sbc", "SBCResult", "SBCBands", "sbc_ecdf_bands", "sbc_ecdf_diff",
    "sbc_ecdf_test", "sbc_uniformity_test", "CoverageCurve", "coverage_curve",
    "workflow_sbc", "WorkflowSBC", "sbc_of_result",
    "tempered_sbc", "tempered_sbc_fresh_prior", "TemperedSBC", "weighted_ecdf_diff", "weighted_coverage",
    "assess", "Assessment", "combine", "review_table", "interval_coverage_curve",
    "posterior_accuracy", "accuracy_noise_floor", "c2st_knn", "wasserstein_1d", "ACCURACY_KEYS",
]
