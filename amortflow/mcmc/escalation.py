"""Legacy names for the sampler ladder (:mod:`amortflow.mcmc.ladder`).

``WorkflowConfig.mcmc``, the CLI and the notebooks hold an :class:`EscalationPolicy`: a ladder
plus ``num_output_draws``. New code builds a :class:`~amortflow.mcmc.Ladder` and passes the
number of draws to :func:`~amortflow.mcmc.run_ladder`; ``policy.ladder`` converts.
"""
from __future__ import annotations

import dataclasses

from amortflow.mcmc.batching import bucket_size_for
from amortflow.mcmc.config import CheesConfig, MeadsConfig, NutsConfig
from amortflow.mcmc.ladder import Ladder, LadderResult, Rung, RungReport, default_ladder, run_ladder
from amortflow.mcmc.samplers import Sampler, chees, meads, nuts
from amortflow.models import Model

EscalationResult = LadderResult
StageReport = RungReport


def as_sampler(sampler_or_config) -> Sampler:
    """A :class:`Sampler` from a Sampler or a bare config (``CheesConfig`` -> ``chees``, ...)."""
    if isinstance(sampler_or_config, Sampler):
        return sampler_or_config
    for family in (chees, meads, nuts):
        if isinstance(sampler_or_config, family.config_type):
            return family.from_config(sampler_or_config)
    raise TypeError(f"expected a Sampler or a sampler config, got {type(sampler_or_config).__name__}")


def Stage(name: str, config, init_from: str = "candidates", **rung_kw) -> Rung:  # noqa: N802
    """Legacy constructor of a :class:`Rung` from a sampler config (or :class:`Sampler`)."""
    return Rung(name, as_sampler(config), init_from, **rung_kw)


@dataclasses.dataclass(frozen=True)
class EscalationPolicy:
    """Legacy: a :class:`Ladder` (``stages`` are its rungs) plus ``num_output_draws``.

    num_output_draws: draws per dataset in the result (every stage must yield this many).
    bucket_size, num_prior_draws: as in :class:`Ladder`.
    """

    stages: tuple[Rung, ...]
    num_output_draws: int = 1000
    bucket_size: int = 64
    num_prior_draws: int = 1024

    @property
    def ladder(self) -> Ladder:
        """The rungs as a :class:`Ladder`, raised to yield ``num_output_draws`` draws."""
        return Ladder(tuple(self.stages), self.bucket_size, self.num_prior_draws).yielding(
            self.num_output_draws)


def default_policy(num_output_draws: int = 1000, **kw) -> EscalationPolicy:
    """:func:`default_ladder` with ``num_output_draws`` as an :class:`EscalationPolicy`."""
    return EscalationPolicy(stages=default_ladder().rungs, num_output_draws=num_output_draws, **kw)


def run_escalation(key, model: Model, ys, candidates, candidate_log_weights=None,
                   policy: EscalationPolicy | None = None, *, progress: bool = True
                   ) -> LadderResult:
    """:func:`run_ladder` with ``policy.ladder`` and ``policy.num_output_draws``."""
    policy = policy or default_policy()
    return run_ladder(key, model, ys, candidates, candidate_log_weights, policy.ladder,
                      num_output_draws=policy.num_output_draws, progress=progress)


__all__ = ["Stage", "EscalationPolicy", "EscalationResult", "StageReport", "default_policy",
           "run_escalation", "bucket_size_for", "as_sampler", "CheesConfig", "MeadsConfig",
           "NutsConfig"]
