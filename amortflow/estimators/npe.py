"""Neural posterior estimation (forward KL): a summary network + conditional flow, trained on
simulations, answering any number of datasets in one compiled call.

Shapes: ``d`` parameters, ``K`` datasets, ``S`` draws per dataset, ``c`` summary dimension.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from functools import partial

from amortflow._backend import on_accelerator
from amortflow.estimators.training import TrainConfig, TrainResult, train
from amortflow.models.base import Model
from amortflow.nets.flows import ConditionalFlow
from amortflow.nets.specs import FlowSpec
from amortflow.nets.summary import build_summary, default_summary_spec


@dataclasses.dataclass(frozen=True)
class NPESpec:
    """Static description of a posterior estimator (hashable: a jit static argument).

    ``num_conditions`` extra scalars (e.g. a log-temperature for generalized Bayes) are appended
    to the learned summary to form the flow's context.
    """

    dim: int
    obs_shape: tuple[int, ...]
    obs_kind: str
    summary: Any
    flow: FlowSpec
    num_conditions: int = 0

    @property
    def summary_net(self):
        return build_summary(self.summary, len(self.obs_shape))

    @property
    def flow_net(self):
        return ConditionalFlow(dim=self.dim, spec=self.flow)


class Standardization(NamedTuple):
    """Affine standardization applied inside the estimator.

    ``theta_loc``/``theta_scale``: ``[d]``; ``y_loc``/``y_scale`` broadcast against one
    observation (per set feature for sets, per element for vectors, scalar for grids).
    """

    theta_loc: jax.Array
    theta_scale: jax.Array
    y_loc: jax.Array
    y_scale: jax.Array


def fit_standardization(theta: np.ndarray, ys: np.ndarray, obs_kind: str) -> Standardization:
    """Standardization from a simulation bank ``theta [N, d]``, ``ys [N, *obs_shape]``.

    Observations use the median and the MAD (scaled to a normal sd): heavy-tailed simulators
    (GEV with xi > 0) would otherwise let a few extreme simulations set the scale.
    """
    theta = np.asarray(theta, np.float64)
    ys = np.asarray(ys, np.float64)
    obs_ndim = ys.ndim - 1
    if obs_kind == "set":
        axes = (0, 1)  # pool over datasets and set elements; one value per feature
    elif obs_kind == "vector":
        axes = (0,)
    else:
        axes = tuple(range(ys.ndim))
    med = np.median(ys, axis=axes, keepdims=True)
    mad = 1.4826 * np.median(np.abs(ys - med), axis=axes, keepdims=True)
    sd = ys.std(axis=axes, keepdims=True)
    scale = np.where(mad > 1e-8 * (1 + np.abs(med)), mad, np.where(sd > 0, sd, 1.0))
    y_loc = med.reshape(med.shape[1:]) if med.ndim > obs_ndim else med
    y_scale = scale.reshape(scale.shape[1:]) if scale.ndim > obs_ndim else scale
    t_sd = theta.std(axis=0)
    return Standardization(
        theta_loc=jnp.asarray(theta.mean(axis=0), jnp.float32),
        theta_scale=jnp.asarray(np.where(t_sd > 0, t_sd, 1.0), jnp.float32),
        y_loc=jnp.asarray(y_loc, jnp.float32),
        y_scale=jnp.asarray(y_scale, jnp.float32),
    )


# ------------------------------------------------------------------ pure functions of arrays
def context(spec: NPESpec, params, std: Standardization, ys, conditions=None):
    """Flow context for datasets ``ys [..., *obs_shape]`` -> ``[..., c (+ num_conditions)]``."""
    s = spec.summary_net.apply(params["summary"], (ys - std.y_loc) / std.y_scale)
    if spec.num_conditions:
        if conditions is None:
            raise ValueError(f"this estimator is conditioned on {spec.num_conditions} extra inputs")
        s = jnp.concatenate([s, jnp.broadcast_to(conditions, s.shape[:-1] + (spec.num_conditions,))], -1)
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


def npe_loss(spec: NPESpec, params, std: Standardization, batch, key=None):
    """Forward-KL NPE loss: ``-mean log q(theta | y)`` over a batch ``(theta [B, d], y [B, ...])``."""
    theta, ys = batch[0], batch[1]
    conditions = batch[2] if len(batch) > 2 else None
    ctx = context(spec, params, std, ys, conditions)
    return -jnp.mean(log_prob_from_context(spec, params, std, theta, ctx))


def datasets_per_step(num_datasets: int, items_per_dataset: int, budget: int | None = None) -> int:
    """How many datasets a ``lax.map`` step evaluates together so that about ``budget`` draws
    are in flight: ``2**12`` on CPU, ``2**19`` on accelerators.

    On CPU the budget is set by the cache, not by memory: with 2**12 draws a conditioner's
    ``[N, 128]`` activations (2 MB) stay in L2 between the matrix multiply and the elementwise
    work that follows, while 2**19 draws (268 MB per activation) stream through DRAM. Measured on
    this 2-core machine (1000 GEV datasets x 2000 draws): 8.5 s at 262 datasets per step, 5.0 s
    at 2 (benchmarks/bench_amortized.py records the sweep). Accelerators want the big batch.
    """
    if budget is None:
        budget = (1 << 19) if on_accelerator() else (1 << 12)
    return int(max(1, min(num_datasets, budget // max(int(items_per_dataset), 1))))


@partial(jax.jit, static_argnames=("spec", "num_draws", "batch_size", "num_devices"))
def _sample_and_log_prob(spec, params, std, keys, ys, conditions, num_draws, batch_size, num_devices=1):
    """Draws for datasets ``ys [K, ...]`` with per-dataset ``keys [K]``; ``K`` a multiple of
    ``num_devices``. The dataset axis is sharded over the devices; on each, ``lax.map`` runs
    ``batch_size`` datasets at a time (memory bound) and the summary network once per dataset."""

    def local(params, std, keys, ys, conditions):
        def one(args):
            k, y, cond = args
            ctx = context(spec, params, std, y[None], None if cond is None else cond[None])[0]
            return sample_from_context(spec, params, std, k, ctx, num_draws)

        return jax.lax.map(one, (keys, ys, conditions), batch_size=batch_size)

    if num_devices == 1:
        return local(params, std, keys, ys, conditions)
    from jax.sharding import Mesh, PartitionSpec as P

    mesh = Mesh(np.asarray(jax.devices()[:num_devices]), ("data",))
    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P("data"), P("data"), P("data")),
                         out_specs=P("data"), check_vma=False)(params, std, keys, ys, conditions)


@partial(jax.jit, static_argnames=("spec", "batch_size"))
def _log_prob(spec, params, std, theta, ys, conditions, batch_size):
    def one(args):
        th, y, cond = args
        ctx = context(spec, params, std, y[None], None if cond is None else cond[None])
        return log_prob_from_context(spec, params, std, th, ctx)

    return jax.lax.map(one, (theta, ys, conditions), batch_size=batch_size)


@partial(jax.jit, static_argnames=("spec", "batch_size"))
def _summaries(spec, params, std, ys, batch_size):
    return jax.lax.map(
        lambda y: spec.summary_net.apply(params["summary"], (y - std.y_loc) / std.y_scale),
        ys, batch_size=batch_size,
    )


def _as_conditions(spec, conditions, k):
    if spec.num_conditions == 0:
        return None
    c = jnp.asarray(conditions, jnp.float32)
    return jnp.broadcast_to(c.reshape(c.shape + (1,) * (2 - c.ndim)) if c.ndim < 2 else c,
                            (k, spec.num_conditions))


@dataclasses.dataclass(frozen=True, eq=False)
class PosteriorEstimator:
    """A trained neural posterior ``q(theta | y)``.

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

    kind = "npe"

    def _check(self, ys) -> jax.Array:
        from amortflow.models.base import check_observation_batch

        owner = f"estimator for {self.model_name!r}"
        return jnp.asarray(check_observation_batch(ys, self.spec.obs_shape, owner), jnp.float32)

    def sample_and_log_prob(self, key, ys, num_draws: int, *, conditions=None, batch_size: int | None = None):
        """Amortized draws for ``K`` datasets in one compiled call.

        Args:
          key: PRNG key.
          ys: ``[K, *obs_shape]`` observations (or one dataset ``[*obs_shape]``).
          num_draws: ``S`` draws per dataset.
          conditions: ``[K, num_conditions]`` (or broadcastable) extra inputs, if the estimator
            was trained with them.
          batch_size: datasets evaluated together per device; default
            :func:`datasets_per_step` (cache-sized on CPU, large on accelerators).
        Returns:
          ``(draws [K, S, d], log_q [K, S])`` in the model's unconstrained space.
        """
        ys = self._check(ys)
        k = ys.shape[0]
        n_dev = min(len(jax.devices()), k)
        pad = -k % n_dev
        keys = jax.random.split(key, k)  # per-dataset keys: results do not depend on padding
        cond = _as_conditions(self.spec, conditions, k)
        if pad:
            keys, ys = jnp.concatenate([keys, keys[:pad]]), jnp.concatenate([ys, ys[:pad]])
            cond = None if cond is None else jnp.concatenate([cond, cond[:pad]])
        per_dev = (k + pad) // n_dev
        bs = batch_size or datasets_per_step(per_dev, num_draws)
        draws, log_q = _sample_and_log_prob(self.spec, self.params, self.standardization, keys, ys, cond,
                                            int(num_draws), int(min(bs, per_dev)), n_dev)
        return draws[:k], log_q[:k]

    def sample(self, key, ys, num_draws: int, **kw):
        """``draws [K, S, d]``."""
        return self.sample_and_log_prob(key, ys, num_draws, **kw)[0]

    def log_prob(self, theta, ys, *, conditions=None, batch_size: int | None = None):
        """``log q(theta | y)`` for ``theta [K, S, d]`` (or ``[K, d]``) and ``ys [K, *obs]``."""
        ys = self._check(ys)
        theta = jnp.asarray(theta, jnp.float32)
        squeeze = theta.ndim == 2
        if squeeze:
            theta = theta[:, None, :]
        bs = batch_size or datasets_per_step(ys.shape[0], theta.shape[1])
        out = _log_prob(self.spec, self.params, self.standardization, theta, ys,
                        _as_conditions(self.spec, conditions, ys.shape[0]), int(bs))
        return out[:, 0] if squeeze else out

    def summaries(self, ys, *, batch_size: int = 1024):
        """Learned summary statistics ``[K, c]`` (for OOD checks)."""
        ys = self._check(ys)
        return _summaries(self.spec, self.params, self.standardization, ys, int(min(batch_size, ys.shape[0])))

    def save(self, path):
        """Write the estimator to directory ``path`` (JSON config + msgpack arrays)."""
        from amortflow.estimators.checkpoint import save_estimator

        save_estimator(self, path)


# ------------------------------------------------------------------ simulation and training
def simulate_bank(key, model: Model, num_simulations: int, *, chunk: int = 4096, progress: bool = True):
    """Simulate ``(theta [N, d], ys [N, *obs_shape])`` from the prior predictive, in compiled
    chunks, dropping (and counting) simulations with non-finite output.

    Raises:
      ValueError: if more than 10% of the simulations are non-finite.
    """
    from tqdm.auto import tqdm

    sim = jax.jit(model.sample_prior_predictive, static_argnums=1)
    thetas, ys = [], []
    n_chunks = -(-num_simulations // chunk)
    for i in tqdm(range(n_chunks), desc="simulating", disable=not progress or n_chunks < 2, leave=False):
        th, y = sim(jax.random.fold_in(key, i), chunk)
        thetas.append(np.asarray(th))
        ys.append(np.asarray(y))
    theta = np.concatenate(thetas)[:num_simulations]
    y = np.concatenate(ys)[:num_simulations]
    ok = np.isfinite(y.reshape(len(y), -1)).all(1) & np.isfinite(theta).all(1)
    if ok.mean() < 0.9:
        raise ValueError(
            f"{model.name}: {int((~ok).sum())} of {len(ok)} simulations are NaN/inf; "
            "check the simulator and the prior"
        )
    return theta[ok], y[ok]


def fit_posterior(
    key,
    model: Model,
    *,
    num_simulations: int | None = 10_000,
    bank: tuple[np.ndarray, np.ndarray] | None = None,
    summary=None,
    flow: FlowSpec | None = None,
    train_config: TrainConfig | None = None,
    num_validation: int | None = None,
    progress: bool = True,
    checkpoint_dir: str | None = None,
) -> PosteriorEstimator:
    """Train a neural posterior estimator by forward-KL minimisation.

    Simulations come from a fixed bank (``num_simulations`` drawn here, or ``bank=(theta, ys)``
    supplied) or, with ``num_simulations=None``, are simulated online inside the compiled
    training step (an unlimited budget). A held-out validation set selects the best parameters.

    Args:
      key: PRNG key.
      model: the :class:`~amortflow.models.Model`.
      num_simulations: simulation budget (``None``: online simulation).
      bank: pre-simulated ``(theta [N, d] unconstrained, ys [N, *obs_shape])``.
      summary: summary-network spec (default for the model's observation kind).
      flow: :class:`FlowSpec` (default: 6 spline couplings).
      train_config: :class:`TrainConfig`.
      num_validation: held-out simulations (default: 10% of the bank, at least 256; online: 2048).
      checkpoint_dir: resumable training state (re-running continues an interrupted run).
    Returns:
      :class:`PosteriorEstimator` with the best validation parameters.
    """
    cfg = train_config or TrainConfig()
    k_bank, k_init, k_train, k_val = jax.random.split(key, 4)
    if bank is not None:
        theta_bank, y_bank = np.asarray(bank[0], np.float32), np.asarray(bank[1], np.float32)
        model.check_observations(y_bank)
        model.check_theta(theta_bank)
        if len(theta_bank) != len(y_bank):
            raise ValueError(f"bank has {len(theta_bank)} parameter rows but {len(y_bank)} datasets")
    elif num_simulations is not None:
        theta_bank, y_bank = simulate_bank(k_bank, model, int(num_simulations), progress=progress)
    else:
        theta_bank = y_bank = None

    if theta_bank is not None:
        n_val = num_validation or max(256, len(theta_bank) // 10)
        if n_val >= len(theta_bank):
            raise ValueError(f"num_validation={n_val} leaves no training simulations out of {len(theta_bank)}")
        perm = np.asarray(jax.random.permutation(k_val, len(theta_bank)))
        val_idx, tr_idx = perm[:n_val], perm[n_val:]
        val = (jnp.asarray(theta_bank[val_idx]), jnp.asarray(y_bank[val_idx]))
        data = (jnp.asarray(theta_bank[tr_idx]), jnp.asarray(y_bank[tr_idx]))
        std = fit_standardization(data[0], data[1], model.obs_kind)
        batch_size = cfg.batch_size

        def batch_fn(d, k):
            idx = jax.random.randint(k, (batch_size,), 0, d[0].shape[0])
            return d[0][idx], d[1][idx]
    else:
        n_val = num_validation or 2048
        pilot = simulate_bank(k_val, model, max(n_val, 4096), progress=False)
        val = (jnp.asarray(pilot[0][:n_val]), jnp.asarray(pilot[1][:n_val]))
        std = fit_standardization(pilot[0], pilot[1], model.obs_kind)
        data = None
        batch_size = cfg.batch_size

        def batch_fn(d, k):
            return model.sample_prior_predictive(k, batch_size)

    spec = NPESpec(
        dim=model.dim,
        obs_shape=model.obs_shape,
        obs_kind=model.obs_kind,
        summary=summary or default_summary_spec(model.obs_kind, model.obs_shape),
        flow=flow or FlowSpec(),
    )
    params = init_params(spec, k_init)

    def loss_fn(p, batch, k):
        return npe_loss(spec, p, std, batch, k)

    result: TrainResult = train(
        k_train, loss_fn, params, batch_fn, data, val, cfg,
        progress=progress, checkpoint_dir=checkpoint_dir, description=f"NPE {model.name}",
    )
    return PosteriorEstimator(
        spec=spec,
        params=result.params,
        standardization=std,
        param_names=model.param_names,
        model_name=model.name,
        history=result.history,
        train_config=dataclasses.asdict(cfg),
        extra={"num_simulations": None if theta_bank is None else int(len(theta_bank)),
               "num_validation": int(n_val)},
    )


@partial(jax.jit, static_argnames=("spec",))
def init_params(spec: NPESpec, key):
    """Initial ``{"summary", "flow"}`` parameters for ``spec``.

    Jitted: Flax's ``init`` run eagerly dispatches (and compiles) every op on its own, which took
    4.4 s of a 26 s GEV training run; compiled once it is a fraction of a second."""
    k1, k2 = jax.random.split(key)
    y0 = jnp.zeros((1,) + spec.obs_shape, jnp.float32)
    p_summary = spec.summary_net.init(k1, y0)
    c_dim = spec.summary_net.apply(p_summary, y0).shape[-1] + spec.num_conditions
    p_flow = spec.flow_net.init(k2, jnp.zeros((1, spec.dim)), jnp.zeros((1, c_dim)), method="log_prob")
    return {"summary": p_summary, "flow": p_flow}
