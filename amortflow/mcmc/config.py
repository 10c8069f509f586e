"""Sampler configurations: algorithm settings and chain layout only (frozen, hashable dataclasses:
one compiled function per configuration).

What a run is judged by (:class:`~amortflow.mcmc.ConvergenceGate`), how datasets are laid out
over a compiled call (:class:`~amortflow.mcmc.Layout`) and how many draws it returns
(``num_output_draws`` of the run) are separate values, so one compiled sampler serves every gate,
bucket and output size that does not change its shapes.

The dataclass defaults are the accelerator settings; ``cpu_profile()`` gives a smaller layout that
keeps the nested-R-hat gate meaningful on a few CPU cores, and ``auto()`` picks one of the two
(:func:`amortflow._backend.on_accelerator`). Why the CPU profile is not just "fewer chains": a
converged run has nested R-hat near ``sqrt(1 + 1 / (M * N_eff))`` (``M`` chains per superchain,
``N_eff`` effective draws per chain), so the default 1.01 gate needs ``M * N_eff >~ 100``; the CPU
profiles keep ``M * N_eff`` in the several hundreds.
"""
from __future__ import annotations

import dataclasses

from amortflow._backend import on_accelerator


class _Profiles:
    """``accelerator`` / ``cpu_profile`` / ``auto`` constructors shared by the configs; a config
    lists its CPU overrides in ``_CPU``."""

    _CPU: dict = {}

    @classmethod
    def accelerator(cls, **kw):
        """The dataclass defaults (the paper's layout)."""
        return cls(**kw)

    @classmethod
    def cpu_profile(cls, **kw):
        """Fewer chains and shorter runs that still keep ``M * N_eff`` in the hundreds."""
        return cls(**{**cls._CPU, **kw})

    @classmethod
    def auto(cls, **kw):
        return cls.accelerator(**kw) if on_accelerator() else cls.cpu_profile(**kw)


@dataclasses.dataclass(frozen=True)
class CheesConfig(_Profiles):
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

    ``cpu_profile()``: 8 x 16 = 128 chains, 400 warmup + 100 draws.
    """

    _CPU = dict(num_superchains=8, chains_per_superchain=16, num_warmup=400, num_samples=100)
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

    @property
    def num_chains(self) -> int:
        return self.num_superchains * self.chains_per_superchain


@dataclasses.dataclass(frozen=True)
class MeadsConfig(_Profiles):
    """MEADS (BlackJAX ``meads_adaptation`` + generalized HMC), many chains per dataset.

    GHMC takes one leapfrog step per transition, so draws are thinned (``thin``). The total
    number of chains must be divisible by ``num_folds``. Layout attributes as in
    :class:`CheesConfig`; ``cpu_profile()``: 8 x 16 chains, 1000 warmup + 100 draws thinned by 10.
    """

    _CPU = dict(num_superchains=8, chains_per_superchain=16, num_warmup=1000, num_samples=100,
                thin=10)
    num_superchains: int = 16
    chains_per_superchain: int = 128
    num_warmup: int = 1000
    num_samples: int = 100
    thin: int = 10
    num_folds: int = 4
    step_size_multiplier: float = 0.5
    damping_slowdown: float = 1.0

    def __post_init__(self):
        if (self.num_superchains * self.chains_per_superchain) % self.num_folds:
            raise ValueError(
                f"MeadsConfig: {self.num_superchains} x {self.chains_per_superchain} chains do "
                f"not split into num_folds={self.num_folds} folds"
            )

    @property
    def num_chains(self) -> int:
        return self.num_superchains * self.chains_per_superchain


@dataclasses.dataclass(frozen=True)
class NutsConfig(_Profiles):
    """NUTS with Stan-style window adaptation, each chain adapted on its own.

    The final fallback and the reference sampler (4 chains x 1000 warmup + 1000 draws, on every
    backend). For the nested-R-hat gate each chain is its own superchain (``M = 1``), which
    reduces nested R-hat to the classic between/within ratio.
    """

    num_chains: int = 4
    num_warmup: int = 1000
    num_samples: int = 1000
    thin: int = 1
    max_num_doublings: int = 10
    target_acceptance_rate: float = 0.8
    initial_step_size: float = 1.0

    @property
    def num_superchains(self) -> int:
        return self.num_chains

    @property
    def chains_per_superchain(self) -> int:
        return 1


SamplerConfig = CheesConfig | MeadsConfig | NutsConfig
