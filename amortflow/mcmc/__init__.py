"""Many-chain MCMC across datasets: ChEES-HMC, MEADS and NUTS (BlackJAX), initialisation from
the amortized stage, and an escalation policy (run -> nested R-hat gate -> retry -> NUTS ->
reported failure). All datasets of a batch run in one compiled call, sharded over devices."""
from amortflow.mcmc.batching import build_dataset_map, map_over_datasets
from amortflow.mcmc.config import CheesConfig, MeadsConfig, NutsConfig, SamplerConfig
from amortflow.mcmc.escalation import (
    EscalationPolicy,
    EscalationResult,
    Stage,
    StageReport,
    bucket_size_for,
    default_policy,
    run_escalation,
)
from amortflow.mcmc.init import InitInfo, initialize_positions
from amortflow.mcmc.samplers import (
    DatasetOutput,
    MCMCResult,
    chees_one,
    meads_one,
    nuts_one,
    run_chees,
    run_meads,
    run_nuts,
    run_sampler,
    run_sampler_keys,
)

__all__ = [
    "CheesConfig", "MeadsConfig", "NutsConfig", "SamplerConfig", "initialize_positions",
    "InitInfo", "run_chees", "run_meads", "run_nuts", "run_sampler", "run_sampler_keys",
    "MCMCResult", "DatasetOutput", "chees_one", "meads_one", "nuts_one", "Stage",
    "EscalationPolicy", "EscalationResult", "StageReport", "default_policy", "run_escalation",
    "bucket_size_for", "map_over_datasets", "build_dataset_map",
]
