"""Many-chain MCMC across datasets: ChEES-HMC, MEADS and NUTS (BlackJAX) as :class:`Sampler`
values, initialisation from the amortized stage, a :class:`ConvergenceGate`, and a
:class:`Ladder` of rungs (run -> gate -> next rung -> reported failure). All datasets of a bucket
run in one compiled call, sharded over devices, held in one bounded compile cache."""
from amortflow.mcmc.batching import (
    Layout, bucket_size_for, build_dataset_map, map_over_datasets, shard_over_datasets,
)
from amortflow.mcmc.config import CheesConfig, MeadsConfig, NutsConfig, SamplerConfig
from amortflow.mcmc.escalation import (
    EscalationPolicy, EscalationResult, Stage, StageReport, as_sampler, default_policy,
    run_escalation,
)
from amortflow.mcmc.init import InitInfo, initialize_positions, initialize_positions_keys
from amortflow.mcmc.ladder import (
    Ladder, LadderResult, Rung, RungReport, as_ladder, default_ladder, run_ladder, widen_batches,
)
from amortflow.mcmc.record import (
    ConvergenceGate, DatasetOutput, SamplerStats, concat_rows, empty_stats, put_rows, take_rows,
)
from amortflow.mcmc.samplers import (
    MCMCResult, Sampler, SamplerFamily, chees, chees_one, meads, meads_one, nuts, nuts_one,
    run_sampler, run_sampler_keys,
)

__all__ = [
    # samplers and their configurations
    "Sampler", "SamplerFamily", "chees", "meads", "nuts", "chees_one", "meads_one", "nuts_one",
    "CheesConfig", "MeadsConfig", "NutsConfig", "SamplerConfig",
    # running, judging, laying out
    "run_sampler", "run_sampler_keys", "MCMCResult", "SamplerStats", "DatasetOutput",
    "ConvergenceGate", "Layout", "empty_stats", "take_rows", "put_rows", "concat_rows",
    "initialize_positions", "initialize_positions_keys", "InitInfo",
    # the ladder
    "Rung", "Ladder", "RungReport", "LadderResult", "default_ladder", "run_ladder", "as_ladder", "widen_batches",
    # batching
    "bucket_size_for", "map_over_datasets", "build_dataset_map", "shard_over_datasets",
    # legacy names (WorkflowConfig.mcmc, CLI, notebooks)
    "Stage", "EscalationPolicy", "EscalationResult", "StageReport", "default_policy",
    "run_escalation", "as_sampler",
]
