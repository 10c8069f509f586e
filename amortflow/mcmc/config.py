"""Sampler configurations (frozen dataclasses, hashable: one compiled function per config).

Every config carries the chain layout (superchains x chains per superchain), the warmup and
sampling lengths, thinning, the nested-R-hat gate and ``batch_size`` for ``lax.map`` over
datasets. The dataclass defaults are the accelerator settings; ``cpu_profile()`` gives a
smaller layout that keeps the nested-R-hat gate meaningful on a few CPU cores, and ``auto()``
picks one of the two from ``jax.default_backend()``.

Why the CPU profile is not just "fewer chains": a converged run has nested R-hat near
``sqrt(1 + 1 / (M * N_eff))`` (``M`` chains per superchain, ``N_eff`` effective draws per
chain), so the default 1.01 gate needs ``M * N_eff >~ 100``. The CPU profiles keep
``M * N_eff`` in the several hundreds.
"""
from __future__ import annotations

import dataclasses

from amortflow._backend import on_accelerator as _on_accelerator


@dataclasses.dataclass(frozen=True)
class CheesConfig:
    """ChEES-HMC (BlackJAX ``chees_adaptation`` + dynamic HMC), many chains per dataset.

    Attributes:
      num_superchains: superchains per dataset; all chains of one superchain start at one point.
      chains_per_superchain: ``M``; ``num_superchains * M`` chains are adapted jointly.
      num_warmup: adaptation steps (all chains together, one jitted function with sampling).
      num_samples: kept draws per chain (after thinning).
      thin: transitions per kept draw.
      initial_step_size: starting leapfrog step size of the dual averaging.
      learning_rate: Adam learning rate of the trajectory-length optimisation.
      target_acceptance_rate: harmonic-mean acceptance target of the step size.
      decay_rate: weight decay of the step-size / length moving averages.
      max_leapfrog_steps: cap on the trajectory length in leapfrog steps.
      mass_matrix: ``"diagonal"`` (ensemble-estimated) or ``None`` (identity).
      rhat_threshold: convergence gate, ``max_d nested R-hat < rhat_threshold``.
      min_ess: optional second gate on ``min_d ess_bulk`` (0 disables).
      num_output_draws: pooled draws returned per dataset (random subset without replacement);
        ``None`` returns all ``num_chains * num_samples``.
      batch_size: ``lax.map`` batch size over datasets; ``None`` = backend default (1 on CPU,
        full ``vmap`` on accelerators).
    """

    name = "chees"
    route = "mcmc"
    num_superchains: int = 16
    chains_per_superchain: int = 128
    num_warmup: int = 500
    num_samples: int = 100
    thin: int = 1
    initial_step_size: float = 0.1
    learning_rate: float = 0.025
    target_acceptance_rate: float = 0.651
    decay_rate: float = 0.5
    max_leapfrog_steps: int = 512
    mass_matrix: str | None = "diagonal"
    rhat_threshold: float = 1.01
    min_ess: float = 0.0
    num_output_draws: int | None = None
    batch_size: int | None = None

    @property
    def num_chains(self) -> int:
        return self.num_superchains * self.chains_per_superchain

    @classmethod
    def accelerator(cls, **kw) -> "CheesConfig":
        """Paper layout: 16 superchains x 128 chains."""
        return cls(**kw)

    @classmethod
    def cpu_profile(cls, **kw) -> "CheesConfig":
        """8 x 16 = 128 chains, 400 warmup + 100 draws: M * N_eff in the hundreds."""
        base = dict(num_superchains=8, chains_per_superchain=16, num_warmup=400, num_samples=100,
                    batch_size=1)
        return cls(**{**base, **kw})

    @classmethod
    def auto(cls, **kw) -> "CheesConfig":
        return cls.accelerator(**kw) if _on_accelerator() else cls.cpu_profile(**kw)


@dataclasses.dataclass(frozen=True)
class MeadsConfig:
    """MEADS (BlackJAX ``meads_adaptation`` + generalized HMC), many chains per dataset.

    GHMC takes one leapfrog step per transition, so draws are thinned (``thin``). The total
    number of chains must be divisible by ``num_folds``. Other attributes as in
    :class:`CheesConfig`.
    """

    name = "meads"
    route = "mcmc"
    num_superchains: int = 16
    chains_per_superchain: int = 128
    num_warmup: int = 1000
    num_samples: int = 100
    thin: int = 10
    num_folds: int = 4
    step_size_multiplier: float = 0.5
    damping_slowdown: float = 1.0
    rhat_threshold: float = 1.01
    min_ess: float = 0.0
    num_output_draws: int | None = None
    batch_size: int | None = None

    def __post_init__(self):
        if (self.num_superchains * self.chains_per_superchain) % self.num_folds:
            raise ValueError(
                f"MeadsConfig: {self.num_superchains} x {self.chains_per_superchain} chains do "
                f"not split into num_folds={self.num_folds} folds"
            )

    @property
    def num_chains(self) -> int:
        return self.num_superchains * self.chains_per_superchain

    @classmethod
    def accelerator(cls, **kw) -> "MeadsConfig":
        return cls(**kw)

    @classmethod
    def cpu_profile(cls, **kw) -> "MeadsConfig":
        """8 x 16 = 128 chains, 1000 warmup + 100 draws thinned by 10."""
        base = dict(num_superchains=8, chains_per_superchain=16, num_warmup=1000, num_samples=100,
                    thin=10, batch_size=1)
        return cls(**{**base, **kw})

    @classmethod
    def auto(cls, **kw) -> "MeadsConfig":
        return cls.accelerator(**kw) if _on_accelerator() else cls.cpu_profile(**kw)


@dataclasses.dataclass(frozen=True)
class NutsConfig:
    """NUTS with Stan-style window adaptation, each chain adapted on its own.

    The final fallback and the reference sampler (4 chains x 1000 warmup + 1000 draws).
    For the nested-R-hat gate each chain is its own superchain (``M = 1``), which reduces
    nested R-hat to the classic between/within ratio.
    """

    name = "nuts"
    route = "nuts"
    num_chains: int = 4
    num_warmup: int = 1000
    num_samples: int = 1000
    thin: int = 1
    max_num_doublings: int = 10
    target_acceptance_rate: float = 0.8
    initial_step_size: float = 1.0
    rhat_threshold: float = 1.01
    min_ess: float = 0.0
    num_output_draws: int | None = None
    batch_size: int | None = None

    @property
    def num_superchains(self) -> int:
        return self.num_chains

    @property
    def chains_per_superchain(self) -> int:
        return 1

    @classmethod
    def accelerator(cls, **kw) -> "NutsConfig":
        return cls(**kw)

    @classmethod
    def cpu_profile(cls, **kw) -> "NutsConfig":
        return cls(**{**dict(batch_size=1), **kw})

    @classmethod
    def auto(cls, **kw) -> "NutsConfig":
        return cls.accelerator(**kw) if _on_accelerator() else cls.cpu_profile(**kw)


SamplerConfig = CheesConfig | MeadsConfig | NutsConfig
