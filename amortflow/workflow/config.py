"""Workflow configuration: thresholds and stage settings as a frozen dataclass (safe defaults:
every dataset must pass PSIS; the paper's OOD-only acceptance is the :meth:`WorkflowConfig.paper` opt-in)."""
from __future__ import annotations

import dataclasses
import math
import numbers

from amortflow.errors import ConfigError
from amortflow.mcmc.escalation import EscalationPolicy
from amortflow.mcmc.ladder import Ladder, default_ladder


def _int_field(name, v, lo, hi=None):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise ConfigError(f"WorkflowConfig.{name} must be a whole number, got {v!r}")
    if v < lo or (hi is not None and v > hi):
        raise ConfigError(f"WorkflowConfig.{name} must be in [{lo}, {hi if hi is not None else 'inf'}], got {v}")


def _float_field(name, v, lo, hi, *, allow_none=False, lo_open=False, hi_open=False):
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(v):
        raise ConfigError(f"WorkflowConfig.{name} must be a number, got {v!r}")
    if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
        raise ConfigError(f"WorkflowConfig.{name} must be in {'(' if lo_open else '['}{lo}, {hi}"
                          f"{')' if hi_open else ']'}, got {v}")


def min_draws_for_error(max_error: float) -> int:
    """Fewest draws whose 5% / 95% quantile error can be ``max_error`` posterior sds: for
    ``S`` independent draws of a normal posterior it is ``sqrt(0.05 * 0.95 / S) / phi(1.645)``
    ``~ 2.1 / sqrt(S)`` sd (2.2 with a margin for non-normal shapes)."""
    return int(math.ceil((2.2 / max_error) ** 2))


@dataclasses.dataclass(frozen=True)
class WorkflowConfig:
    """Settings of :func:`amortflow.run_workflow`.

    Attributes:
      num_draws: ``S`` amortized draws per dataset, and draws per dataset in the result.
      ood_method: ``"mahalanobis"`` (default), ``"mmd"``, or ``None`` (no OOD check: every
        dataset goes to PSIS).
      ood_alpha: OOD threshold is the empirical ``1 - alpha`` quantile of held-out simulations.
      num_ood_simulations: fresh prior-predictive simulations for the OOD reference (half fit
        the detector, half set its threshold).
      psis_on_all: every dataset must pass the PSIS gate (the default; the paper recommends it
        for high-stakes use). ``False`` (:meth:`paper`) accepts datasets that pass the OOD check
        from their amortized draws. PSIS diagnostics are reported for all datasets either way.
      khat_threshold: Pareto k-hat gate, at most 1 (``-inf`` sends every dataset on); ``None`` =
        ``min(1 - 1/log10 S, 0.7)``.
      psis_min_ess: PSIS-accepted (and refined) datasets also need this absolute
        importance-sampling ESS (``None``: no ESS floor); in ``[0, num_draws]``.
      psis_max_error: the answer-driven gate: PSIS-accepted (and refined) datasets need the
        Monte Carlo error of every parameter's weighted mean, sd and 5% / 95% quantiles to be at
        most this many posterior sds (:func:`amortflow.diagnostics.is_mcse`); ``None`` turns it
        off. What the answer needs decides, not a fraction of ``S``: k-hat alone admits weight
        sets whose ESS is a few hundred out of thousands, measurably off on GEV.
      psis_resample: how PSIS-accepted datasets get ``num_draws`` equally weighted draws from
        the weighted ones: ``"systematic"`` (with replacement, the lowest-noise unbiased
        scheme), ``"multinomial"`` (with replacement, independent) or ``"without_replacement"``
        (Gumbel top-k). See :func:`amortflow.diagnostics.resample`.
      refine_rounds: rounds of Student-t adaptive importance sampling for the datasets PSIS
        hands on, gated like PSIS (route ``"refined"``; :func:`amortflow.workflow.refine_stage`);
        0 leaves the stage out.
      mcmc: the MCMC ladder of stages 3-4 (``None``: the backend's
        :func:`amortflow.mcmc.default_policy`: on CPU MEADS -> NUTS -> NUTS retry, on
        accelerators ChEES 16 x 128 -> ChEES with 3x warmup -> NUTS); it returns ``num_draws``
        draws per dataset.
      mcmc_chunk: datasets handed to the ladder per call; progress is written after each chunk,
        so an interrupted run loses at most one chunk (fewer, fuller calls are cheaper; see
        benchmarks/README.md).
      batch_size: datasets per ``lax.map`` step of the amortized and PSIS stages (``None``:
        :func:`amortflow._backend.datasets_per_step`, cache-sized on CPU, large on
        accelerators).
    """

    num_draws: int = 2000
    ood_method: str | None = "mahalanobis"
    ood_alpha: float = 0.05
    num_ood_simulations: int = 4000
    psis_on_all: bool = True
    khat_threshold: float | None = None
    psis_min_ess: float | None = None
    psis_max_error: float | None = 0.1
    psis_resample: str = "systematic"
    refine_rounds: int = 3
    mcmc: Ladder | EscalationPolicy | None = None
    mcmc_chunk: int = 256
    batch_size: int | None = None

    def __post_init__(self):
        _int_field("num_draws", self.num_draws, 10)
        if self.ood_method not in ("mahalanobis", "mmd", None):
            raise ConfigError(f"WorkflowConfig.ood_method must be 'mahalanobis', 'mmd' or None, got {self.ood_method!r}")
        if self.psis_resample not in ("systematic", "multinomial", "without_replacement"):
            raise ConfigError("WorkflowConfig.psis_resample must be 'systematic', 'multinomial' or "
                              f"'without_replacement', got {self.psis_resample!r}")
        _float_field("ood_alpha", self.ood_alpha, 0.0, 1.0, lo_open=True, hi_open=True)
        # half the simulations fit the detector, half set its threshold: both need to be many
        # more than the summary dimension for a stable covariance and a 1 - alpha quantile
        _int_field("num_ood_simulations", self.num_ood_simulations, 200)
        if not isinstance(self.psis_on_all, bool):
            raise ConfigError(f"WorkflowConfig.psis_on_all must be True or False, got {self.psis_on_all!r}")
        # k-hat >= 1: the importance weights have no finite mean; no gate above that is valid
        _float_field("khat_threshold", self.khat_threshold, -math.inf, 1.0, allow_none=True)
        _float_field("psis_min_ess", self.psis_min_ess, 0.0, float(self.num_draws), allow_none=True)
        # an error of a whole posterior sd would accept anything; below ~1/sqrt(S) nothing passes
        _float_field("psis_max_error", self.psis_max_error, 0.0, 1.0, allow_none=True, lo_open=True)
        if self.psis_max_error is not None and self.num_draws < min_draws_for_error(self.psis_max_error):
            raise ConfigError(
                f"WorkflowConfig.psis_max_error={self.psis_max_error} cannot be met with num_draws="
                f"{self.num_draws}: even {self.num_draws} independent equally weighted draws estimate a "
                f"5% quantile with an error of about {2.2 / math.sqrt(self.num_draws):.2f} posterior sd. "
                f"Use num_draws >= {min_draws_for_error(self.psis_max_error)}, a larger psis_max_error, "
                "or psis_max_error=None")
        if self.mcmc is not None and not isinstance(self.mcmc, (Ladder, EscalationPolicy)):
            raise ConfigError("WorkflowConfig.mcmc must be an amortflow.mcmc.Ladder (or a legacy "
                              f"EscalationPolicy) or None, got {type(self.mcmc).__name__}")
        _int_field("mcmc_chunk", self.mcmc_chunk, 1)
        _int_field("refine_rounds", self.refine_rounds, 0, 20)
        if self.batch_size is not None:
            _int_field("batch_size", self.batch_size, 1)

    @classmethod
    def paper(cls, **kw) -> "WorkflowConfig":
        """The paper's default, as an explicit opt-in: datasets that pass the OOD check are
        accepted from the amortized draws without the PSIS gate (their k-hat is still reported,
        and k-hat >= 1 still refuses them). Faster, but the answer is the network's alone:
        its error is whatever training left, where the default gate bounds the Monte Carlo
        error of every accepted answer. Measured with ``fit_posterior`` defaults against the
        analytic posterior (50 datasets, benchmarks/notes_training.md): posterior means off by
        0.054 sd RMS (max 0.13) on the 2-d conjugate Gaussian, 0.115 sd RMS (max 0.39) on the
        10-d one."""
        return cls(**{"psis_on_all": False, **kw})

    @classmethod
    def high_stakes(cls, **kw) -> "WorkflowConfig":
        """The paper's recommendation for high-stakes use (every dataset must pass PSIS), with
        a PSIS ESS of at least 60% of the draws on top of the Monte Carlo error gate.

        Why an ESS gate: k-hat alone admits weight sets whose ESS is a few hundred out of
        thousands, and the PSIS ESS overstates the precision of heavy-tailed weights; on the GEV
        benchmark lower ESS gates let measurably wrong posteriors through (benchmarks/README.md
        records the sweep)."""
        num_draws = kw.get("num_draws", cls.num_draws)
        return cls(**{"psis_on_all": True, "psis_min_ess": 0.6 * num_draws, **kw})

    def ladder(self) -> Ladder:
        """The MCMC ladder of stages 3-4, yielding ``num_draws`` draws per dataset (rungs that
        would yield fewer sample longer; see :meth:`amortflow.mcmc.Ladder.yielding`)."""
        base = self.mcmc.ladder if isinstance(self.mcmc, EscalationPolicy) else (self.mcmc or default_ladder())
        return base.yielding(self.num_draws)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["mcmc"] = repr(self.ladder())
        return d
