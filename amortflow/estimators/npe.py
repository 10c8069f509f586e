"""Neural posterior estimation (forward KL): a summary network + conditional flow, trained on
simulations, answering any number of datasets in one compiled call.

Shapes: ``d`` parameters, ``K`` datasets, ``S`` draws per dataset, ``c`` summary dimension.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from amortflow._backend import datasets_per_step, shard_over_datasets, keys_for
from amortflow.estimators import checkpoint as ckpt
from amortflow.estimators.base import is_concrete
from amortflow.estimators.data import (  # noqa: F401  (Standardization etc. re-exported)
    Standardization,
    WidenedPrior,
    fit_standardization,
    training_data,
    training_identity,
    widen_prior,
)
from amortflow.estimators.tempered import Tempering, check_beta_range, make_tempered_loss
from amortflow.estimators.training import TrainConfig, TrainResult, train
from amortflow.errors import ConfigError
from amortflow.models.base import Model, ObservationError, check_observation_batch
from amortflow.models.observation import Observation, flat_design
from amortflow.nets.flows import ConditionalFlow
from amortflow.nets.specs import FlowSpec, spec_from_dict, spec_to_dict
from amortflow.nets.summary import build_summary, default_summary_spec


@dataclasses.dataclass(frozen=True)
class NPESpec:
    """Static description of a posterior estimator (hashable: a jit static argument).

    The flow's context is the learned summary followed by ``num_conditions`` extra scalars
    (``log beta`` for a generalized-Bayes estimator, unless ``conditions=`` are passed) and then
    ``design_dim`` values: the flattened leaves of the observation's design data, standardized
    by ``design_loc`` / ``design_scale`` (``design_dim`` floats each, fitted on the training
    designs; ``None``: used as they are).
    ``beta_range``: for a generalized-Bayes estimator, the ``(low, high)`` temperatures it was
    trained on (others are refused, see :class:`~amortflow.estimators.tempered.Tempering`).
    """

    dim: int
    obs_shape: tuple[int, ...]
    obs_kind: str
    summary: Any
    flow: FlowSpec
    num_conditions: int = 0
    design_dim: int = 0
    beta_range: tuple[float, float] | None = None
    design_loc: tuple[float, ...] | None = None
    design_scale: tuple[float, ...] | None = None

    @property
    def num_extra(self) -> int:
        """Context entries beyond the summary: ``num_conditions + design_dim``."""
        return self.num_conditions + self.design_dim

    @property
    def summary_net(self):
        return build_summary(self.summary, len(self.obs_shape))

    @property
    def flow_net(self):
        return ConditionalFlow(dim=self.dim, spec=self.flow)


# ------------------------------------------------------------------ pure functions of arrays
def context(spec: NPESpec, params, std: Standardization, ys, conditions=None):
    """Flow context for datasets ``ys [..., *obs_shape]`` -> ``[..., c + num_extra]``.

    ``conditions``: the extra inputs ``[..., num_extra]`` (broadcast): conditions, then the
    flattened design (see :class:`NPESpec`)."""
    s = spec.summary_net.apply(params["summary"], (ys - std.y_loc) / std.y_scale)
    if spec.num_extra:
        if conditions is None:
            raise ValueError(f"this estimator is conditioned on {spec.num_extra} extra inputs")
        s = jnp.concatenate([s, jnp.broadcast_to(conditions, s.shape[:-1] + (spec.num_extra,))], -1)
    return s


def log_prob_from_context(spec: NPESpec, params, std: Standardization, theta, ctx):
    """``log q(theta | ctx)``; ``theta [..., d]`` with ``ctx [..., c]`` broadcastable."""
    z = (theta - std.theta_loc) / std.theta_scale
    return spec.flow_net.apply(params["flow"], z, ctx, method="log_prob") - jnp.sum(jnp.log(std.theta_scale))


def sample_from_context(spec: NPESpec, params, std: Standardization, key, ctx, num_draws: int):
    """Draws for ONE context ``ctx [c]``: ``(theta [S, d], log_q [S])``."""
    eps = jax.random.normal(key, (num_draws, spec.dim), ctx.dtype)
    x, lq = spec.flow_net.apply(params["flow"], eps, ctx[None, :], method="sample_and_log_prob")
    theta = x * std.theta_scale + std.theta_loc
    return theta, lq - jnp.sum(jnp.log(std.theta_scale))


def design_inputs(spec, flat):
    """Flattened designs ``[..., design_dim]`` as the network sees them: standardized by an
    :class:`NPESpec`'s ``design_loc`` / ``design_scale``; as they are for a spec without them
    (e.g. a point estimator's, which shares :func:`_extra_inputs`)."""
    loc = getattr(spec, "design_loc", None)
    if loc is None:
        return flat
    return (flat - jnp.asarray(loc, jnp.float32)) / jnp.asarray(spec.design_scale, jnp.float32)


def fit_design_standardization(flat: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(loc, scale)`` per design value from training designs ``[N, design_dim]``: mean and
    standard deviation (1 where a value never varies)."""
    flat = np.asarray(flat, np.float64)
    sd = flat.std(axis=0)
    return (tuple(float(v) for v in flat.mean(axis=0)),
            tuple(float(v) for v in np.where(sd > 1e-8 * (1 + np.abs(flat.mean(axis=0))), sd, 1.0)))


def npe_loss(spec: NPESpec, params, std: Standardization, batch, key=None):
    """Forward-KL NPE loss: ``-mean log q(theta | y)`` over a batch ``(theta [B, d], y [B, ...])``."""
    theta, ys = batch[0], batch[1]
    conditions = batch[2] if len(batch) > 2 else None
    ctx = context(spec, params, std, ys, conditions)
    return -jnp.mean(log_prob_from_context(spec, params, std, theta, ctx))


def dataset_keys(key, k: int, dataset_ids=None):
    """``[k]`` per-dataset keys: ``fold_in(key, id)`` for each of ``dataset_ids``, else
    ``split(key, k)``."""
    if dataset_ids is None:
        return jax.random.split(key, k)
    ids = jnp.asarray(dataset_ids, jnp.uint32)
    if ids.shape != (k,):
        raise ValueError(f"dataset_ids must have one id per dataset ({k}), got shape {ids.shape}")
    return keys_for(key, ids)


@partial(jax.jit, static_argnames=("spec", "num_draws", "batch_size", "num_devices"))
def _sample_and_log_prob(spec, params, std, keys, ys, extra, num_draws, batch_size, num_devices=1):
    """Draws for datasets ``ys [K, ...]`` with per-dataset ``keys [K]``; ``K`` a multiple of
    ``num_devices``. The dataset axis is sharded over the devices; on each, ``lax.map`` runs
    ``batch_size`` datasets at a time (memory bound) and the summary network once per dataset.
    ``extra``: ``[K, num_extra]`` context inputs or None."""

    def local(params, std, keys, ys, extra):
        def one(args):
            k, y, e = args
            ctx = context(spec, params, std, y[None], None if e is None else e[None])[0]
            return sample_from_context(spec, params, std, k, ctx, num_draws)

        return jax.lax.map(one, (keys, ys, extra), batch_size=batch_size)

    if num_devices == 1:
        return local(params, std, keys, ys, extra)
    return shard_over_datasets(local, num_replicated=2, devices=jax.devices()[:num_devices])(
        params, std, keys, ys, extra)


@partial(jax.jit, static_argnames=("spec", "batch_size", "num_devices"))
def _log_prob(spec, params, std, theta, ys, extra, batch_size, num_devices=1):
    """``log q`` of ``theta [K, S, d]`` given datasets ``ys [K, ...]`` -> ``[K, S]``; ``K`` a
    multiple of ``num_devices`` (the dataset axis is sharded over them, as for sampling)."""

    def local(params, std, theta, ys, extra):
        def one(args):
            th, y, e = args
            ctx = context(spec, params, std, y[None], None if e is None else e[None])
            return log_prob_from_context(spec, params, std, th, ctx)

        return jax.lax.map(one, (theta, ys, extra), batch_size=batch_size)

    if num_devices == 1:
        return local(params, std, theta, ys, extra)
    return shard_over_datasets(local, num_replicated=2, devices=jax.devices()[:num_devices])(
        params, std, theta, ys, extra)


def _pad_to_devices(k: int, *arrays):
    """``(n_dev, padded arrays)``: the leading axis ``k`` padded (repeating rows) to a multiple of
    the device count, so the dataset axis can be sharded; ``None`` entries pass through."""
    n_dev = min(len(jax.devices()), k)
    pad = -k % n_dev
    if pad:
        arrays = tuple(None if a is None else jnp.concatenate([a, a[:pad]]) for a in arrays)
    return n_dev, arrays


@partial(jax.jit, static_argnames=("spec", "batch_size"))
def _summaries(spec, params, std, ys, batch_size):
    return jax.lax.map(
        lambda y: spec.summary_net.apply(params["summary"], (y - std.y_loc) / std.y_scale),
        ys, batch_size=batch_size,
    )


def _as_conditions(spec, conditions, k):
    """Explicit ``conditions`` (scalar, ``[K]`` or ``[K, num_conditions]``) -> ``[K, num_conditions]``."""
    c = jnp.asarray(conditions, jnp.float32)
    return jnp.broadcast_to(c.reshape(c.shape + (1,) * (2 - c.ndim)) if c.ndim < 2 else c,
                            (k, spec.num_conditions))


def _datasets(spec: NPESpec, obs, owner: str):
    """Normalise ``obs`` (array or :class:`Observation`, batched or one dataset) to
    ``(ys [K, *obs_shape] float32, beta [K] | None, design (leading K) | None, single)``.

    Shapes are checked always (they are static, known under tracing too); dtype and finiteness
    only for concrete inputs, so the estimator stays traceable under ``jit``/``vmap``/``grad``.
    """
    y, beta, design = (obs.y, obs.beta, obs.design) if isinstance(obs, Observation) else (obs, None, None)
    obs_shape = tuple(spec.obs_shape)
    single = tuple(np.shape(y)) == obs_shape
    if is_concrete(y):
        ys = jnp.asarray(check_observation_batch(y, obs_shape, owner), jnp.float32)
    else:
        if not single and tuple(np.shape(y)[1:]) != obs_shape:
            raise ObservationError(
                f"{owner}: expected observations of shape [K, {', '.join(map(str, obs_shape))}]"
                f" (K datasets of shape {obs_shape}), got {tuple(np.shape(y))}")
        ys = jnp.asarray(y, jnp.float32)
        ys = ys[None] if single else ys
    k = ys.shape[0]
    if beta is not None:
        beta = jnp.broadcast_to(jnp.reshape(jnp.asarray(beta, jnp.float32), (-1,)), (k,))
    if design is not None and single:
        design = jax.tree.map(lambda a: jnp.asarray(a)[None], design)
    return ys, beta, design, single


def _extra_inputs(spec: NPESpec, k: int, beta, design, conditions, extrapolate: bool = False):
    """The context's extra inputs ``[K, num_extra]`` (None if the spec has none): explicit
    ``conditions`` or else ``log beta`` (beta defaults to 1), then the flattened design."""
    cols = []
    if spec.num_conditions:
        if conditions is not None:
            cols.append(_as_conditions(spec, conditions, k))
        elif spec.num_conditions == 1:
            b = jnp.ones((k,), jnp.float32) if beta is None else beta
            if is_concrete(b) and not (np.isfinite(np.asarray(b)).all() and (np.asarray(b) > 0).all()):
                raise ValueError(f"beta must be positive and finite for a beta-conditioned estimator, got {b}")
            if is_concrete(b):
                check_beta_range(b, spec.beta_range, "beta-conditioned estimator", extrapolate)
            cols.append(jnp.log(b)[:, None])
        else:
            raise ValueError(f"this estimator is conditioned on {spec.num_conditions} extra inputs; "
                             "pass conditions=[K, num_conditions]")
    if spec.design_dim:
        if design is None:
            raise ValueError(f"this estimator takes {spec.design_dim} design values per dataset; "
                             "pass an Observation with design=...")
        flat = flat_design(design, k)
        if flat.shape[1] != spec.design_dim:
            raise ValueError(f"design data has {flat.shape[1]} values per dataset, the estimator "
                             f"was built for design_dim={spec.design_dim}")
        if is_concrete(flat) and not np.isfinite(np.asarray(flat)).all():
            raise ValueError("design data contain NaN or infinite values")
        cols.append(design_inputs(spec, flat))
    if not cols:
        return None
    return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=1)


@dataclasses.dataclass(frozen=True, eq=False)
class PosteriorEstimator(ckpt.Checkpointed):
    """A trained neural posterior ``q(theta | y)`` (an :class:`~amortflow.estimators.base.Estimator`).

    Every method takes ``obs``: datasets ``[K, *obs_shape]``, one dataset ``[*obs_shape]``
    (``K = 1``), or an :class:`~amortflow.models.observation.Observation`. Its ``beta`` is read
    only by a beta-conditioned estimator (``spec.num_conditions == 1``: context gets
    ``log beta``), its design only when ``spec.design_dim > 0``. Methods are traceable
    (``jit``, ``vmap``, ``grad``); value checks run on concrete inputs only.

    Attributes:
      spec: architecture (:class:`NPESpec`).
      params: ``{"summary": ..., "flow": ...}`` Flax parameters.
      standardization: :class:`Standardization`.
      param_names, model_name: what the estimator was trained for.
      history: training history (steps, train/validation loss, wall time).
      train_config: the :class:`TrainConfig` used, as a dict.
    """

    spec: NPESpec
    params: Any
    standardization: Standardization
    param_names: tuple[str, ...]
    model_name: str
    history: dict = dataclasses.field(default_factory=dict)
    train_config: dict = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)
    allow_beta_extrapolation: bool = False

    kind = "npe"
    has_log_prob = True

    @property
    def beta_range(self) -> tuple[float, float] | None:
        """``(low, high)`` temperatures a generalized-Bayes estimator was trained on, else None."""
        return self.spec.beta_range

    def allowing_extrapolation(self) -> "PosteriorEstimator":
        """This estimator, answering a ``beta`` outside :attr:`beta_range` with a warning
        instead of a :class:`~amortflow.estimators.tempered.BetaRangeError`."""
        return dataclasses.replace(self, allow_beta_extrapolation=True)

    def _inputs(self, obs, conditions):
        ys, beta, design, single = _datasets(self.spec, obs, f"estimator for {self.model_name!r}")
        extra = _extra_inputs(self.spec, ys.shape[0], beta, design, conditions, self.allow_beta_extrapolation)
        return ys, extra, single

    def sample_and_log_prob(self, key, obs, num_draws: int, *, conditions=None, batch_size: int | None = None,
                            dataset_ids=None):
        """Amortized draws for ``K`` datasets in one compiled call.

        Args:
          key: PRNG key.
          obs: ``[K, *obs_shape]`` observations, one dataset ``[*obs_shape]`` (``K = 1``), or an
            :class:`~amortflow.models.observation.Observation`.
          num_draws: ``S`` draws per dataset.
          conditions: ``[K, num_conditions]`` (or broadcastable) extra inputs, if the estimator
            was trained with them; overrides ``log beta`` of a beta-conditioned estimator.
          batch_size: datasets evaluated together per device; default
            :func:`~amortflow._backend.datasets_per_step` (cache-sized on CPU, large on accelerators).
          dataset_ids: ``[K]`` integers; dataset ``i`` then draws with ``fold_in(key, ids[i])``,
            so its draws do not depend on which other datasets share the call (default: the
            ``K`` keys of ``split(key, K)``).
        Returns:
          ``(draws [K, S, d], log_q [K, S])`` in the model's unconstrained space.
        """
        if isinstance(num_draws, bool) or not isinstance(num_draws, numbers.Integral) or num_draws < 1:
            raise ConfigError(f"sample_and_log_prob: num_draws must be a whole number >= 1, got {num_draws!r}")
        ys, extra, _ = self._inputs(obs, conditions)
        keys = dataset_keys(key, ys.shape[0], dataset_ids)  # per dataset: results do not depend on padding
        return self._draw(keys, ys, extra, int(num_draws), batch_size)

    def _draw(self, keys, ys, extra, num_draws: int, batch_size: int | None = None):
        """Draws for normalised inputs (see :meth:`_inputs`) with per-dataset ``keys [K]``."""
        k = ys.shape[0]
        n_dev, (keys, ys, extra) = _pad_to_devices(k, keys, ys, extra)
        per_dev = ys.shape[0] // n_dev
        bs = batch_size or datasets_per_step(per_dev, num_draws)
        draws, log_q = _sample_and_log_prob(self.spec, self.params, self.standardization, keys, ys, extra,
                                            int(num_draws), int(min(bs, per_dev)), n_dev)
        return draws[:k], log_q[:k]

    def sample(self, key, obs, num_draws: int, **kw):
        """``draws [K, S, d]``."""
        return self.sample_and_log_prob(key, obs, num_draws, **kw)[0]

    def log_prob(self, theta, obs, *, conditions=None, batch_size: int | None = None):
        """``log q(theta | y)``.

        Datasets ``[K, *obs]``: ``theta [K, S, d]`` -> ``[K, S]``, ``theta [K, d]`` -> ``[K]``.
        One dataset ``[*obs]``: ``theta [S, d]`` -> ``[S]``, ``theta [d]`` -> ``[]``.
        """
        ys, extra, single = self._inputs(obs, conditions)
        k, d = ys.shape[0], self.spec.dim
        theta = jnp.asarray(theta, jnp.float32)
        per_dataset = theta.ndim - (0 if single else 1)  # 1: one theta per dataset, 2: S of them
        if per_dataset not in (1, 2) or theta.shape[-1] != d or (not single and theta.shape[0] != k):
            raise ValueError(
                f"log_prob: theta of shape {theta.shape} does not fit "
                + ("one dataset: expected [S, {d}] or [{d}]".format(d=d) if single
                   else f"{k} datasets: expected [{k}, S, {d}] or [{k}, {d}]"))
        th = theta.reshape((k, -1, d))
        n_dev, (th_p, ys_p, extra_p) = _pad_to_devices(k, th, ys, extra)
        per_dev = ys_p.shape[0] // n_dev
        bs = batch_size or datasets_per_step(per_dev, th.shape[1])
        out = _log_prob(self.spec, self.params, self.standardization, th_p, ys_p, extra_p,
                        int(min(bs, per_dev)), n_dev)[:k]
        return out.reshape(theta.shape[:-1])

    def summaries(self, obs, *, batch_size: int = 1024):
        """Learned summary statistics ``[K, c]`` (for OOD checks; conditions not included)."""
        ys = _datasets(self.spec, obs, f"estimator for {self.model_name!r}")[0]
        return _summaries(self.spec, self.params, self.standardization, ys, int(min(batch_size, ys.shape[0])))

    def summary_function(self):
        """The learned summary as a pure JAX function of one dataset: ``y [*obs_shape] -> [c]``
        (standardization included; parameters fixed). A learned data space for estimators that
        need one, e.g. neural likelihood estimation on summaries (``fit_likelihood(summary_fn=...)``)."""
        spec, params, std = self.spec, self.params["summary"], self.standardization

        def summary(y):
            return spec.summary_net.apply(params, (jnp.asarray(y, jnp.float32) - std.y_loc) / std.y_scale)

        return summary

    def _spec_dict(self) -> dict:
        spec = self.spec
        return {
            "dim": spec.dim,
            "obs_shape": list(spec.obs_shape),
            "obs_kind": spec.obs_kind,
            "num_conditions": spec.num_conditions,
            "design_dim": spec.design_dim,
            "design_loc": None if spec.design_loc is None else list(spec.design_loc),
            "design_scale": None if spec.design_scale is None else list(spec.design_scale),
            "beta_range": None if spec.beta_range is None else [float(v) for v in spec.beta_range],
            "summary": spec_to_dict(spec.summary),
            "flow": spec_to_dict(spec.flow),
        }

    def _arrays(self) -> dict:
        return {"params": self.params, "standardization": self.standardization._asdict()}


# ------------------------------------------------------------------ simulation and training
def fit_posterior(
    key,
    model: Model,
    *,
    num_simulations: int | None = None,
    bank: tuple | None = None,
    summary=None,
    flow: FlowSpec | None = None,
    train_config: TrainConfig | None = None,
    num_validation: int | None = None,
    training_prior: WidenedPrior | None = None,
    tempering: Tempering | None = None,
    progress: bool = True,
    checkpoint_dir: str | None = None,
) -> PosteriorEstimator:
    """Train a neural posterior estimator by forward-KL minimisation.

    By default (``num_simulations=None``, no ``bank``) every training step simulates a fresh
    batch inside the compiled step: the model's simulator is JAX, so simulations are nearly free
    and the estimator cannot overfit a finite bank. For a costly simulator give a budget
    (``num_simulations``: a fixed bank simulated here) or the simulations themselves
    (``bank``). A held-out validation set selects the best parameters either way.

    Args:
      key: PRNG key.
      model: the :class:`~amortflow.models.Model`.
      num_simulations: size of a fixed simulation bank (``>= 512``); ``None``: online simulation.
      bank: pre-simulated ``(theta [N, d] unconstrained, ys [N, *obs_shape])``; for a model with
        per-dataset design data ``(theta, ys, design)`` (design leaves with a leading ``N``).
        Online or simulated banks of such a model draw designs from its ``design_sampler``: the
        estimator then conditions on the design, ``q(theta | y, design)``.
      summary: summary-network spec (default:
        :func:`~amortflow.nets.default_summary_spec` for the observation kind, size and ``d``).
      flow: :class:`FlowSpec` (default: 6 spline couplings, 8 bins, widths 128).
      train_config: :class:`TrainConfig` (default: 3000 steps of 256 simulations, learning rate 2e-3).
      num_validation: held-out simulations (default: 10% of the bank, at least 256; online: 2048).
      training_prior: a :class:`~amortflow.estimators.data.WidenedPrior` to train on instead of
        the model's prior (a defensive proposal for data outside the prior's bulk; PSIS corrects
        to the model's prior). Validation simulations come from the same training prior.
        Not combinable with ``bank``.
      tempering: a :class:`~amortflow.estimators.tempered.Tempering` to train a generalized-Bayes
        estimator ``q(theta | y, beta)`` of the power posterior for every ``beta`` in its range
        (``beta`` then rides in the :class:`~amortflow.models.Observation`); ``None``: ``beta = 1``.
      checkpoint_dir: resumable training state (re-running continues an interrupted run).
    Returns:
      :class:`PosteriorEstimator` with the best validation parameters.
    Raises:
      ConfigError: a setting outside its range (named).
    """
    cfg = train_config or TrainConfig()
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(f"fit_posterior: train_config must be a TrainConfig, got {type(cfg).__name__}")
    if num_simulations is not None and bank is None and (
            isinstance(num_simulations, bool) or not isinstance(num_simulations, numbers.Integral)
            or num_simulations < 512):
        raise ConfigError(f"fit_posterior: num_simulations must be a whole number >= 512 (256 are "
                          f"held out for validation), or None for online simulation; got {num_simulations!r}")
    if num_validation is not None and (isinstance(num_validation, bool)
                                       or not isinstance(num_validation, numbers.Integral) or num_validation < 1):
        raise ConfigError(f"fit_posterior: num_validation must be a whole number >= 1, got {num_validation!r}")
    if training_prior is not None and not isinstance(training_prior, WidenedPrior):
        raise ConfigError(f"fit_posterior: training_prior must be None or a WidenedPrior, "
                          f"got {type(training_prior).__name__}")
    if tempering is not None and not isinstance(tempering, Tempering):
        raise ConfigError(f"fit_posterior: tempering must be None or a Tempering, got {type(tempering).__name__}")
    if tempering is not None and training_prior is not None:
        raise ConfigError("fit_posterior: tempering and training_prior cannot be combined (the tempered "
                          "objective's weights assume prior-predictive simulations)")
    if tempering is not None and model.uses_design:
        raise ConfigError(f"fit_posterior: model {model.name!r} takes design data; a tempered estimator "
                          "does not condition on designs")
    if training_prior is not None and bank is not None:
        raise ConfigError("fit_posterior: training_prior cannot apply to a supplied bank (its parameters "
                          "were already drawn); simulate the bank from widen_prior(model, ...) instead")
    sim_model = model if training_prior is None else widen_prior(model, training_prior)
    k_bank, k_init, k_train, k_val = jax.random.split(key, 4)
    td = training_data(k_bank, k_val, model, sampler=sim_model, num_simulations=num_simulations, bank=bank,
                       num_validation=num_validation, batch_size=cfg.batch_size, owner="fit_posterior",
                       progress=progress)
    std = fit_standardization(td.fit[0], td.fit[1], model.obs_kind)
    design_std = {} if not model.uses_design else dict(
        design_dim=int(td.fit[2].shape[1]), **dict(zip(("design_loc", "design_scale"),
                                                         fit_design_standardization(td.fit[2]))))

    spec = NPESpec(
        dim=model.dim,
        obs_shape=model.obs_shape,
        obs_kind=model.obs_kind,
        summary=summary or default_summary_spec(model.obs_kind, model.obs_shape, model.dim),
        flow=flow or FlowSpec(),
        num_conditions=0 if tempering is None else 1,
        beta_range=None if tempering is None else (float(tempering.low), float(tempering.high)),
        **design_std,
    )
    params = init_params(spec, k_init)

    if tempering is None:
        def loss_fn(p, batch, k):
            if spec.design_dim:  # batches carry raw flattened designs: standardize as at inference
                batch = (batch[0], batch[1], design_inputs(spec, batch[2]))
            return npe_loss(spec, p, std, batch, k)
    else:
        loss_fn = make_tempered_loss(tempering, model, spec, std)

    prior_desc = None if training_prior is None else training_prior.to_dict()
    temper_desc = None if tempering is None else tempering.to_dict()
    identity = None if checkpoint_dir is None else {
        **training_identity("npe", key, model, repr(spec), td.simulations_hash), "training_prior": prior_desc,
        "tempering": temper_desc}
    result: TrainResult = train(
        k_train, loss_fn, params, td.batch_fn, td.data, td.val, cfg, progress=progress,
        checkpoint_dir=checkpoint_dir, checkpoint_identity=identity,
        description=f"NPE {model.name}" + ("" if tempering is None else f" (beta in [{tempering.low:g}, {tempering.high:g}])"),
    )
    return PosteriorEstimator(
        spec=spec,
        params=result.params,
        standardization=std,
        param_names=model.param_names,
        model_name=model.name,
        history=result.history,
        train_config=dataclasses.asdict(cfg),
        extra={"num_simulations": td.num_simulations, "num_validation": td.num_validation,
               "training_prior": prior_desc, "tempering": temper_desc},
    )


@partial(jax.jit, static_argnames=("spec",))
def init_params(spec: NPESpec, key):
    """Initial ``{"summary", "flow"}`` parameters for ``spec``.

    Jitted: Flax's ``init`` run eagerly dispatches (and compiles) every op on its own, a large
    share of a short training run; compiled once it is a fraction of a second."""
    k1, k2 = jax.random.split(key)
    y0 = jnp.zeros((1,) + spec.obs_shape, jnp.float32)
    p_summary = spec.summary_net.init(k1, y0)
    c_dim = spec.summary_net.apply(p_summary, y0).shape[-1] + spec.num_extra
    p_flow = spec.flow_net.init(k2, jnp.zeros((1, spec.dim)), jnp.zeros((1, c_dim)), method="log_prob")
    return {"summary": p_summary, "flow": p_flow}


# ------------------------------------------------------------------ checkpoints
def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _spec_from_json(s: dict, where: str) -> NPESpec:
    """:class:`NPESpec` from the ``spec`` entry of estimator.json, every field type-checked."""

    def field(key, ok, expected, default=None):
        if key not in s and default is not None:
            return default
        v = ckpt.require(s, key, object, where, name=f"spec.{key}")
        if not ok(v):
            raise ckpt.CheckpointError(f"{where}: field 'spec.{key}' should be {expected}, got {v!r}")
        return v

    dim = field("dim", lambda v: _count(v) and v > 0, "a positive integer")
    obs_shape = field("obs_shape", lambda v: isinstance(v, list) and all(_count(n) and n > 0 for n in v),
                      "a list of positive integers")
    nets = {}
    for key in ("summary", "flow"):
        try:
            nets[key] = spec_from_dict(field(key, lambda v: isinstance(v, dict), "an object"))
        except ValueError as e:
            if isinstance(e, ckpt.CheckpointError):
                raise
            raise ckpt.CheckpointError(f"{where}: field 'spec.{key}': {e}") from None
    if not isinstance(nets["flow"], FlowSpec):
        raise ckpt.CheckpointError(f"{where}: field 'spec.flow' is a {nets['flow'].kind} spec, not a flow")
    return NPESpec(
        dim=dim,
        obs_shape=tuple(obs_shape),
        obs_kind=field("obs_kind", lambda v: isinstance(v, str), "a string"),
        summary=nets["summary"],
        flow=nets["flow"],
        num_conditions=field("num_conditions", _count, "a non-negative integer", 0),
        design_dim=field("design_dim", _count, "a non-negative integer", 0),
        beta_range=_beta_range_from_json(s.get("beta_range"), where),
        **_design_standardization_from_json(s, where),
    )


def _design_standardization_from_json(s: dict, where: str) -> dict:
    """``design_loc`` / ``design_scale`` of a spec: both absent/None, or ``design_dim`` finite
    numbers each (scales positive)."""
    loc, scale, n = s.get("design_loc"), s.get("design_scale"), s.get("design_dim", 0)
    if loc is None and scale is None:
        return {}

    def numbers_(v, positive):
        return (isinstance(v, list) and len(v) == n and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and (x > 0 or not positive)
            for x in v))

    if not (numbers_(loc, False) and numbers_(scale, True)):
        raise ckpt.CheckpointError(f"{where}: fields 'spec.design_loc' / 'spec.design_scale' should be lists of "
                                   f"{n} finite numbers (scales positive), got {loc!r} / {scale!r}")
    return {"design_loc": tuple(float(x) for x in loc), "design_scale": tuple(float(x) for x in scale)}


def _beta_range_from_json(v, where: str):
    if v is None:
        return None
    if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                        for x in v) and 0 < v[0] < v[1] < math.inf):
        raise ckpt.CheckpointError(f"{where}: field 'spec.beta_range' should be [low, high] with 0 < low < high, got {v!r}")
    return (float(v[0]), float(v[1]))


def _load_npe(cfg: dict, state: dict, path: str) -> PosteriorEstimator:
    """Loader registered for kind ``"npe"`` (see :func:`amortflow.estimators.checkpoint.load_estimator`)."""
    cfg_file = ckpt.checkpoint_files(path)[0]
    spec = _spec_from_json(ckpt.require(cfg, "spec", dict, cfg_file), cfg_file)
    template_params = init_params(spec, jax.random.PRNGKey(0))
    return PosteriorEstimator(spec=spec, **ckpt.restore_flow_estimator(cfg, state, path, spec, template_params))


ckpt.register_estimator_kind("npe", _load_npe)
