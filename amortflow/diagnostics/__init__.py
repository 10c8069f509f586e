"""Diagnostics: PSIS, convergence (R-hat, nested R-hat, ESS), OOD scores, SBC, accuracy metrics."""
from amortflow.diagnostics.convergence import nested_rhat

__all__ = ["nested_rhat"]
