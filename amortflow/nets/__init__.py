"""Flax networks: summary networks and conditional normalizing flows, described by specs."""
from amortflow.nets.flows import ConditionalFlow, std_normal_logpdf
from amortflow.nets.layers import MLP
from amortflow.nets.specs import (
    CNNSummarySpec,
    DeepSetSpec,
    FlowSpec,
    IdentitySummarySpec,
    LinearSummarySpec,
    MLPSummarySpec,
    RecurrentSummarySpec,
    SetTransformerSpec,
    SortedSetSpec,
    spec_from_dict,
    spec_to_dict,
)
from amortflow.nets.summary import build_summary, default_summary_spec, sinusoidal_positions

__all__ = [
    "ConditionalFlow", "std_normal_logpdf", "MLP", "DeepSetSpec", "FlowSpec", "IdentitySummarySpec",
    "MLPSummarySpec", "SortedSetSpec", "spec_from_dict", "spec_to_dict", "build_summary", "default_summary_spec",
    "CNNSummarySpec", "LinearSummarySpec", "SetTransformerSpec", "RecurrentSummarySpec", "sinusoidal_positions",
]
