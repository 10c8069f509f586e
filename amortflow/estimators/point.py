"""Neural Bayes estimators (Zammit-Mangion, Sainsbury-Dale, Huser, arXiv 2404.12484): a summary
network + MLP head trained to minimise a Bayes risk on simulations, so that its output is the
Bayes estimator of that loss -- the posterior mean (:class:`SquaredError`), the posterior median
(:class:`AbsoluteError`) or posterior quantiles (:class:`Pinball`) -- for any number of datasets
in one compiled call. No density: intervals come from quantile outputs or :func:`bootstrap`.

Losses are values: each says its output layout (``labels``, ``quantile_levels``) and its risk;
:class:`JointLoss` trains several in one network (e.g. the mean and the 5% / 95% quantiles).

Shapes: ``d`` parameters, ``K`` datasets, ``m`` outputs per parameter, ``Q`` quantile levels,
``B`` bootstrap datasets, ``c`` summary dimension.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from amortflow._backend import datasets_per_step, shard_over_datasets
from amortflow.estimators import checkpoint as ckpt
from amortflow.estimators.data import Standardization, fit_standardization, training_data, training_identity
from amortflow.estimators.npe import _count, _datasets, _extra_inputs, _pad_to_devices, _summaries, dataset_keys
from amortflow.estimators.training import TrainConfig, train
from amortflow.errors import ConfigError
from amortflow.models.base import Model
from amortflow.models.observation import Observation
from amortflow.nets.heads import PointHead
from amortflow.nets.layers import activation as _activation
from amortflow.nets.specs import spec_from_dict, spec_to_dict
from amortflow.nets.summary import build_summary, default_summary_spec


# ------------------------------------------------------------------ losses (values)
def quantile_label(level: float) -> str:
    """Output label of a quantile level: ``0.05 -> "q05"``, ``0.5 -> "q50"``, ``0.025 -> "q2.5"``."""
    pct = 100.0 * float(level)
    return f"q{int(round(pct)):02d}" if abs(pct - round(pct)) < 1e-9 else f"q{pct:g}"


@dataclasses.dataclass(frozen=True)
class SquaredError:
    """Loss ``sum_j (theta_j - t_j)^2``: its Bayes estimator is the posterior mean.

    Output layout: one slot per parameter, labelled ``"mean"``.
    """

    kind = "squared_error"
    labels = ("mean",)
    quantile_levels = (None,)
    monotone = ()

    def risk(self, pred, target):
        """``pred [..., 1, d]``, ``target [..., d]`` -> ``[...]``."""
        return jnp.sum((pred[..., 0, :] - target) ** 2, axis=-1)

    def to_dict(self) -> dict:
        return {"kind": self.kind}


@dataclasses.dataclass(frozen=True)
class AbsoluteError:
    """Loss ``sum_j |theta_j - t_j|``: its Bayes estimator is the (marginal) posterior median.

    The exact absolute error is used, no smooth surrogate: its subgradient (a sign) is all
    Adam needs, and a surrogate would move the minimiser off the median.
    Output layout: one slot per parameter, labelled ``"median"``.
    """

    kind = "absolute_error"
    labels = ("median",)
    quantile_levels = (None,)
    monotone = ()

    def risk(self, pred, target):
        """``pred [..., 1, d]``, ``target [..., d]`` -> ``[...]``."""
        return jnp.sum(jnp.abs(pred[..., 0, :] - target), axis=-1)

    def to_dict(self) -> dict:
        return {"kind": self.kind}


@dataclasses.dataclass(frozen=True)
class Pinball:
    """Quantile (pinball) loss ``sum_q sum_j rho_tau_q(theta_j - t_qj)``,
    ``rho_tau(u) = u (tau - 1[u < 0])``: its Bayes estimator is the vector of marginal posterior
    ``tau_q``-quantiles.

    Output layout: ``Q`` slots per parameter, one per level (increasing), labelled
    :func:`quantile_label` (``"q05"``, ``"q50"``, ``"q95"``). The head makes them monotone by
    construction (lowest level, then softplus increments; see
    :func:`~amortflow.nets.heads.monotone_blocks`).
    """

    levels: tuple[float, ...] = (0.05, 0.5, 0.95)
    kind = "pinball"

    def __post_init__(self):
        lv = self.levels
        if not isinstance(lv, (tuple, list)) or not lv or any(
                isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0.0 < float(v) < 1.0 for v in lv):
            raise ConfigError(f"Pinball.levels must be a non-empty tuple of numbers in (0, 1), got {lv!r}")
        lv = tuple(float(v) for v in lv)
        if any(b <= a for a, b in zip(lv, lv[1:])):
            raise ConfigError(f"Pinball.levels must be strictly increasing (monotone outputs are built "
                              f"lowest level first), got {lv!r}; sort them")
        object.__setattr__(self, "levels", lv)

    @property
    def monotone(self) -> tuple[tuple[int, int], ...]:
        """All ``Q`` slots form one non-decreasing block."""
        return ((0, len(self.levels)),)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(quantile_label(v) for v in self.levels)

    @property
    def quantile_levels(self) -> tuple[float, ...]:
        return self.levels

    def risk(self, pred, target):
        """``pred [..., Q, d]``, ``target [..., d]`` -> ``[...]``."""
        tau = jnp.asarray(self.levels, pred.dtype)[:, None]
        u = target[..., None, :] - pred
        return jnp.sum(jnp.maximum(tau * u, (tau - 1.0) * u), axis=(-2, -1))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "levels": list(self.levels)}


@dataclasses.dataclass(frozen=True)
class JointLoss:
    """Several losses trained in one network: ``sum_i weights_i * risk_i``.

    Output layout: the parts' slots concatenated in order (e.g.
    ``JointLoss((SquaredError(), Pinball((0.05, 0.95))))`` -> ``("mean", "q05", "q95")``).
    Labels must not repeat (at most one :class:`Pinball`).
    """

    parts: tuple = (SquaredError(), Pinball((0.05, 0.95)))
    weights: tuple[float, ...] | None = None

    kind = "joint"

    def __post_init__(self):
        parts = tuple(self.parts) if isinstance(self.parts, (tuple, list)) else None
        if not parts or not all(isinstance(p, (SquaredError, AbsoluteError, Pinball)) for p in parts):
            raise ConfigError(f"JointLoss.parts must be a non-empty tuple of SquaredError, AbsoluteError "
                              f"or Pinball values (not nested JointLoss), got {self.parts!r}")
        labels = [lab for p in parts for lab in p.labels]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"JointLoss outputs repeat ({labels}); each estimator and quantile level once")
        if sum(isinstance(p, Pinball) for p in parts) > 1:
            raise ConfigError("JointLoss: put all quantile levels in one Pinball (they are made monotone together)")
        w = self.weights
        if w is not None:
            if not isinstance(w, (tuple, list)) or len(w) != len(parts) or any(
                    isinstance(v, bool) or not isinstance(v, numbers.Real) or not (math.isfinite(v) and v > 0)
                    for v in w):
                raise ConfigError(f"JointLoss.weights must be None or one positive finite number per part "
                                  f"({len(parts)}), got {w!r}")
            w = tuple(float(v) for v in w)
        object.__setattr__(self, "parts", parts)
        object.__setattr__(self, "weights", w)

    @property
    def _offsets(self) -> tuple[int, ...]:
        return tuple(int(v) for v in np.cumsum([0] + [len(p.labels) for p in self.parts]))

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(lab for p in self.parts for lab in p.labels)

    @property
    def quantile_levels(self) -> tuple:
        return tuple(v for p in self.parts for v in p.quantile_levels)

    @property
    def monotone(self) -> tuple[tuple[int, int], ...]:
        return tuple((o + a, o + b) for p, o in zip(self.parts, self._offsets) for a, b in p.monotone)

    def risk(self, pred, target):
        """``pred [..., m, d]`` (the parts' slots in order), ``target [..., d]`` -> ``[...]``."""
        offs, w = self._offsets, self.weights or (1.0,) * len(self.parts)
        return sum(wi * p.risk(pred[..., a:b, :], target) for p, wi, a, b in zip(self.parts, w, offs, offs[1:]))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "parts": [p.to_dict() for p in self.parts],
                "weights": None if self.weights is None else list(self.weights)}


_LOSSES = (SquaredError, AbsoluteError, Pinball, JointLoss)


def as_loss(loss):
    """A loss value; a tuple/list of losses becomes a :class:`JointLoss`."""
    if isinstance(loss, (tuple, list)):
        return JointLoss(tuple(loss))
    if not isinstance(loss, _LOSSES):
        raise ConfigError(f"loss must be SquaredError(), AbsoluteError(), Pinball(levels=...), a JointLoss or a "
                          f"tuple of them, got {loss!r}")
    return loss


def loss_from_dict(d) -> Any:
    """Inverse of ``loss.to_dict()``; ValueError naming what is wrong."""
    if not isinstance(d, dict) or not isinstance(d.get("kind"), str):
        raise ValueError(f"a loss must be an object with a 'kind', got {d!r}")
    kind = d["kind"]
    if kind == SquaredError.kind:
        return SquaredError()
    if kind == AbsoluteError.kind:
        return AbsoluteError()
    if kind == Pinball.kind:
        lv = d.get("levels")
        if not isinstance(lv, list):
            raise ValueError(f"pinball loss 'levels' must be a list, got {lv!r}")
        return Pinball(tuple(lv))
    if kind == JointLoss.kind:
        parts, w = d.get("parts"), d.get("weights")
        if not isinstance(parts, list) or any(isinstance(p, dict) and p.get("kind") == "joint" for p in parts):
            raise ValueError(f"joint loss 'parts' must be a list of non-joint losses, got {parts!r}")
        if w is not None and not isinstance(w, list):
            raise ValueError(f"joint loss 'weights' must be null or a list, got {w!r}")
        return JointLoss(tuple(loss_from_dict(p) for p in parts), None if w is None else tuple(w))
    raise ValueError(f"unknown loss kind {kind!r}; known: squared_error, absolute_error, pinball, joint")


# ------------------------------------------------------------------ architecture
@dataclasses.dataclass(frozen=True)
class PointSpec:
    """Static description of a point estimator (hashable: a jit static argument).

    The head sees the learned summary followed by ``design_dim`` values (the flattened leaves
    of the observation's design data, as :class:`~amortflow.estimators.npe.NPESpec`) and
    outputs ``[m, d]`` in standardized parameter space, ``m = len(loss.labels)``.
    """

    dim: int
    obs_shape: tuple[int, ...]
    obs_kind: str
    summary: Any
    loss: Any
    hidden: tuple[int, ...] = (128, 128)
    activation: str = "gelu"
    design_dim: int = 0

    # what npe's input helpers read: a point estimator takes no conditions and no beta
    num_conditions = 0
    beta_range = None

    @property
    def num_extra(self) -> int:
        return self.design_dim

    @property
    def num_outputs(self) -> int:
        return len(self.loss.labels)

    @property
    def summary_net(self):
        return build_summary(self.summary, len(self.obs_shape))

    @property
    def head_net(self):
        return PointHead(dim=self.dim, num_outputs=self.num_outputs, hidden=tuple(self.hidden),
                         act=self.activation, monotone=self.loss.monotone)


# ------------------------------------------------------------------ pure functions of arrays
def features(spec: PointSpec, params, std: Standardization, ys, extra=None):
    """Head input for datasets ``ys [..., *obs_shape]`` -> ``[..., c + design_dim]``;
    ``extra [..., design_dim]`` (broadcast) when the spec takes design data."""
    s = spec.summary_net.apply(params["summary"], (ys - std.y_loc) / std.y_scale)
    if spec.design_dim:
        if extra is None:
            raise ValueError(f"this estimator takes {spec.design_dim} design values per dataset")
        s = jnp.concatenate([s, jnp.broadcast_to(extra, s.shape[:-1] + (spec.design_dim,))], -1)
    return s


def predict_standardized(spec: PointSpec, params, std: Standardization, ys, extra=None):
    """Outputs ``[..., m, d]`` in standardized parameter space ``(theta - loc) / scale``."""
    return spec.head_net.apply(params["head"], features(spec, params, std, ys, extra))


def predict(spec: PointSpec, params, std: Standardization, ys, extra=None):
    """Outputs ``[..., m, d]`` in the model's unconstrained space. The standardization is a
    positive per-parameter scaling, so it keeps quantiles ordered and maps each loss's Bayes
    estimator in standardized space to the Bayes estimator in theta space."""
    return predict_standardized(spec, params, std, ys, extra) * std.theta_scale + std.theta_loc


def point_loss(spec: PointSpec, params, std: Standardization, batch, key=None):
    """Bayes risk on a batch ``(theta [N, d], y [N, ...][, design [N, design_dim]])``, computed in
    standardized parameter space (every coordinate on one scale in the sum over parameters)."""
    theta, ys = batch[0], batch[1]
    extra = batch[2] if len(batch) > 2 else None
    z = (theta - std.theta_loc) / std.theta_scale
    return jnp.mean(spec.loss.risk(predict_standardized(spec, params, std, ys, extra), z))


@partial(jax.jit, static_argnames=("spec",))
def init_params(spec: PointSpec, key):
    """Initial ``{"summary", "head"}`` parameters for ``spec`` (jitted, as npe's)."""
    k1, k2 = jax.random.split(key)
    y0 = jnp.zeros((1,) + spec.obs_shape, jnp.float32)
    p_summary = spec.summary_net.init(k1, y0)
    c_dim = spec.summary_net.apply(p_summary, y0).shape[-1] + spec.design_dim
    p_head = spec.head_net.init(k2, jnp.zeros((1, c_dim)))
    return {"summary": p_summary, "head": p_head}


@partial(jax.jit, static_argnames=("spec", "batch_size", "num_devices"))
def _predict_batched(spec, params, std, ys, extra, batch_size, num_devices=1):
    """Outputs ``[K, m, d]`` for datasets ``ys [K, ...]`` (``extra [K, design_dim]`` or None);
    ``K`` a multiple of ``num_devices``: the dataset axis is sharded over the devices and on
    each ``lax.map`` runs ``batch_size`` datasets at a time."""

    def local(params, std, ys, extra):
        def one(args):
            y, e = args
            return predict(spec, params, std, y[None], None if e is None else e[None])[0]

        return jax.lax.map(one, (ys, extra), batch_size=batch_size)

    if num_devices == 1:
        return local(params, std, ys, extra)
    return shard_over_datasets(local, num_replicated=2, devices=jax.devices()[:num_devices])(
        params, std, ys, extra)


def _rows_per_dataset(spec: PointSpec) -> int:
    # the activations a summary network holds per dataset: one row per set element (DeepSet,
    # sorted MLP over the set), one per dataset otherwise; sizes the lax.map batch like npe's draws
    return int(spec.obs_shape[0]) if spec.obs_kind == "set" and spec.obs_shape else 1


def _no_density(what: str):
    raise NotImplementedError(
        f"{what}: a point estimator (kind 'nbe') has no distribution to sample or evaluate; train a "
        "posterior with fit_posterior for draws and log q, or use amortflow.estimators.point.bootstrap "
        "for sampling variability of the estimate")


# ------------------------------------------------------------------ the estimator
@dataclasses.dataclass(frozen=True, eq=False)
class PointEstimator(ckpt.Checkpointed):
    """A trained neural Bayes estimator (an :class:`~amortflow.estimators.base.Estimator`
    without a density: ``has_log_prob = False``).

    Every method takes ``obs``: datasets ``[K, *obs_shape]``, one dataset ``[*obs_shape]``
    (then ``K = 1``), or an :class:`~amortflow.models.observation.Observation` (its design is
    read when ``spec.design_dim > 0``; its ``beta`` is ignored: the estimator answers for the
    ``beta = 1`` posterior it was trained on). Outputs are in the model's unconstrained space.
    Methods are traceable (``jit``, ``vmap``); value checks run on concrete inputs only.

    Attributes:
      spec: architecture and loss (:class:`PointSpec`).
      params: ``{"summary": ..., "head": ...}`` Flax parameters.
      standardization: :class:`~amortflow.estimators.data.Standardization`.
      param_names, model_name: what the estimator was trained for.
      history, train_config, extra: training record.
    """

    spec: PointSpec
    params: Any
    standardization: Standardization
    param_names: tuple[str, ...]
    model_name: str
    history: dict = dataclasses.field(default_factory=dict)
    train_config: dict = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)

    kind = "nbe"
    has_log_prob = False

    # ---------------------------------------------------------------- layout
    @property
    def loss(self):
        return self.spec.loss

    @property
    def output_labels(self) -> tuple[str, ...]:
        """Label of each of the ``m`` outputs (``"mean"``, ``"median"``, ``"q05"``, ...)."""
        return self.spec.loss.labels

    @property
    def quantile_levels(self) -> tuple[float, ...]:
        """Levels of the quantile outputs, increasing (empty without a :class:`Pinball`)."""
        return tuple(v for v in self.spec.loss.quantile_levels if v is not None)

    def _quantile_slots(self) -> list[int]:
        return [i for i, v in enumerate(self.spec.loss.quantile_levels) if v is not None]

    def _point_slot(self) -> int:
        """The output a single point estimate is read from: the first mean / median, else the
        0.5 quantile."""
        lv = self.spec.loss.quantile_levels
        for i, v in enumerate(lv):
            if v is None:
                return i
        for i, v in enumerate(lv):
            if abs(v - 0.5) < 1e-9:
                return i
        raise ConfigError(f"this estimator's outputs {self.output_labels} hold no point estimate (mean, "
                          "median or 0.5 quantile); train with SquaredError(), AbsoluteError() or a "
                          "Pinball including 0.5")

    # ---------------------------------------------------------------- answers
    def _inputs(self, obs):
        ys, _, design, _ = _datasets(self.spec, obs, f"point estimator for {self.model_name!r}")
        return ys, _extra_inputs(self.spec, ys.shape[0], None, design, None)

    def predict(self, obs, *, batch_size: int | None = None):
        """Every output: ``[K, m, d]`` in the order of :attr:`output_labels`.

        ``batch_size``: datasets evaluated together per device (default
        :func:`~amortflow._backend.datasets_per_step`)."""
        ys, extra = self._inputs(obs)
        k = ys.shape[0]
        n_dev, (ys_p, extra_p) = _pad_to_devices(k, ys, extra)
        per_dev = ys_p.shape[0] // n_dev
        bs = batch_size or datasets_per_step(per_dev, _rows_per_dataset(self.spec))
        return _predict_batched(self.spec, self.params, self.standardization, ys_p, extra_p,
                                int(min(bs, per_dev)), n_dev)[:k]

    def estimate(self, obs, *, batch_size: int | None = None):
        """The Bayes estimate: ``[K, d]`` for a single-output loss (posterior mean or median),
        else ``[K, m, d]`` (``[K, Q, d]`` quantiles for a :class:`Pinball`; see
        :attr:`output_labels`)."""
        out = self.predict(obs, batch_size=batch_size)
        return out[:, 0] if out.shape[1] == 1 else out

    def outputs(self, obs, *, batch_size: int | None = None) -> dict:
        """label -> ``[K, d]`` for every output."""
        out = self.predict(obs, batch_size=batch_size)
        return {lab: out[:, i] for i, lab in enumerate(self.output_labels)}

    def point(self, obs, *, batch_size: int | None = None):
        """One point estimate per dataset ``[K, d]``: the mean or median output, else the 0.5
        quantile (what :func:`bootstrap` simulates from)."""
        return self.predict(obs, batch_size=batch_size)[:, self._point_slot()]

    def quantiles(self, obs, *, batch_size: int | None = None):
        """Marginal posterior quantiles ``[K, Q, d]`` at :attr:`quantile_levels` (non-decreasing
        along ``Q`` by construction)."""
        slots = self._quantile_slots()
        if not slots:
            raise ConfigError(f"this estimator has no quantile outputs ({self.output_labels}); train it "
                              "with loss=Pinball(levels=...) (or a JointLoss with one), or use bootstrap()")
        return self.predict(obs, batch_size=batch_size)[:, slots[0]:slots[-1] + 1]

    def interval(self, obs, level: float = 0.9, *, batch_size: int | None = None):
        """Central marginal posterior interval ``(lower [K, d], upper [K, d])`` at ``level``,
        from the quantile outputs at ``(1 - level) / 2`` and ``(1 + level) / 2``.

        Raises:
          ConfigError: the estimator was not trained for those two levels (the message names
            the levels it has).
        """
        if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0 < level < 1:
            raise ConfigError(f"interval: level must be a number in (0, 1), got {level!r}")
        lv = self.quantile_levels
        want = ((1 - level) / 2, (1 + level) / 2)
        idx = [next((i for i, v in enumerate(lv) if abs(v - w) < 1e-6), None) for w in want]
        if None in idx:
            raise ConfigError(
                f"interval(level={level:g}) needs quantile levels {want[0]:g} and {want[1]:g}; this "
                f"estimator has {lv or 'none'}: train with Pinball(levels=({want[0]:g}, 0.5, {want[1]:g})) "
                "or use bootstrap(..., level=...)")
        q = self.quantiles(obs, batch_size=batch_size)
        return q[:, idx[0]], q[:, idx[1]]

    def summaries(self, obs, *, batch_size: int = 1024):
        """Learned summary statistics ``[K, c]`` (the space an OOD check scores in)."""
        ys = _datasets(self.spec, obs, f"point estimator for {self.model_name!r}")[0]
        return _summaries(self.spec, self.params, self.standardization, ys, int(min(batch_size, ys.shape[0])))

    def sample(self, *a, **k):
        """Not available: a point estimator has no distribution (raises NotImplementedError)."""
        _no_density("sample")

    def sample_and_log_prob(self, *a, **k):
        """Not available: a point estimator has no distribution (raises NotImplementedError)."""
        _no_density("sample_and_log_prob")

    def log_prob(self, *a, **k):
        """Not available: a point estimator has no density (raises NotImplementedError)."""
        _no_density("log_prob")

    # ---------------------------------------------------------------- files
    def _spec_dict(self) -> dict:
        s = self.spec
        return {"dim": s.dim, "obs_shape": list(s.obs_shape), "obs_kind": s.obs_kind,
                "summary": spec_to_dict(s.summary), "loss": s.loss.to_dict(),
                "hidden": list(s.hidden), "activation": s.activation, "design_dim": s.design_dim}

    def _arrays(self) -> dict:
        return {"params": self.params, "standardization": self.standardization._asdict()}


# ------------------------------------------------------------------ training
def _whole(v, lo: int) -> bool:
    return not isinstance(v, bool) and isinstance(v, numbers.Integral) and v >= lo


def fit_point_estimator(
    key,
    model: Model,
    loss=SquaredError(),
    *,
    num_simulations: int | None = None,
    bank: tuple[np.ndarray, np.ndarray] | None = None,
    summary=None,
    hidden: tuple[int, ...] = (128, 128),
    activation: str = "gelu",
    train_config: TrainConfig | None = None,
    num_validation: int | None = None,
    progress: bool = True,
    checkpoint_dir: str | None = None,
) -> PointEstimator:
    """Train a neural Bayes estimator: minimise the Bayes risk of ``loss`` over simulated
    ``(theta, y)`` pairs in the model's unconstrained space (standardized).

    Simulations as in :func:`~amortflow.fit_posterior`: online (a fresh batch inside every
    compiled step) by default, else a fixed bank (``num_simulations``) or your own (``bank``);
    a held-out validation set selects the best parameters.

    Quantile outputs are monotone by construction: for a :class:`Pinball` the head outputs the
    lowest level and softplus increments for each next level, cumulatively summed, so estimated
    quantiles never cross, for any input, trained or not.

    Args:
      key: PRNG key.
      model: the :class:`~amortflow.models.Model` (without design data: training would need a
        design distribution to simulate from).
      loss: :class:`SquaredError` (posterior mean, default), :class:`AbsoluteError` (median),
        :class:`Pinball` (quantiles), a :class:`JointLoss` or a tuple of them.
      num_simulations: size of a fixed simulation bank (``>= 512``); ``None``: online simulation.
      bank: pre-simulated ``(theta [N, d] unconstrained, ys [N, *obs_shape])``.
      summary: summary-network spec (default :func:`~amortflow.nets.default_summary_spec` for
        the observation kind, size and ``d``).
      hidden, activation: the MLP head.
      train_config: :class:`TrainConfig` (default 3000 steps of 256 simulations).
      num_validation: held-out simulations (default: 10% of the bank, at least 256; online: 2048).
      checkpoint_dir: resumable training state.
    Returns:
      :class:`PointEstimator` with the best validation parameters.
    Raises:
      ConfigError: a setting outside its range (named).
    """
    loss = as_loss(loss)
    cfg = train_config or TrainConfig()
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(f"fit_point_estimator: train_config must be a TrainConfig, got {type(cfg).__name__}")
    if num_simulations is not None and bank is None and not _whole(num_simulations, 512):
        raise ConfigError(f"fit_point_estimator: num_simulations must be a whole number >= 512 (256 are held "
                          f"out for validation), or None for online simulation; got {num_simulations!r}")
    if num_validation is not None and not _whole(num_validation, 1):
        raise ConfigError(f"fit_point_estimator: num_validation must be a whole number >= 1, got {num_validation!r}")
    if not isinstance(hidden, (tuple, list)) or not all(_whole(h, 1) for h in hidden):
        raise ConfigError(f"fit_point_estimator: hidden must be a tuple of positive layer widths, got {hidden!r}")
    try:
        _activation(activation)
    except ValueError as e:
        raise ConfigError(f"fit_point_estimator: {e}") from None
    if model.uses_design:
        raise ConfigError(f"fit_point_estimator: model {model.name!r} takes design data; training on "
                          "simulations needs a design distribution, which is not supported yet")
    k_bank, k_init, k_train, k_val = jax.random.split(key, 4)
    td = training_data(k_bank, k_val, model, num_simulations=num_simulations, bank=bank,
                       num_validation=num_validation, batch_size=cfg.batch_size, owner="fit_point_estimator",
                       progress=progress)
    std = fit_standardization(td.fit[0], td.fit[1], model.obs_kind)
    spec = PointSpec(
        dim=model.dim, obs_shape=tuple(model.obs_shape), obs_kind=model.obs_kind,
        summary=summary or default_summary_spec(model.obs_kind, model.obs_shape, model.dim),
        loss=loss, hidden=tuple(int(h) for h in hidden), activation=activation,
    )
    params = init_params(spec, k_init)

    def loss_fn(p, batch, k):
        return point_loss(spec, p, std, batch, k)

    identity = None if checkpoint_dir is None else {
        **training_identity("nbe", key, model, repr(spec), td.simulations_hash)}
    result = train(k_train, loss_fn, params, td.batch_fn, td.data, td.val, cfg, progress=progress,
                   checkpoint_dir=checkpoint_dir, checkpoint_identity=identity,
                   description=f"NBE {model.name} ({', '.join(loss.labels)})")
    return PointEstimator(
        spec=spec, params=result.params, standardization=std, param_names=model.param_names,
        model_name=model.name, history=result.history, train_config=dataclasses.asdict(cfg),
        extra={"num_simulations": td.num_simulations, "num_validation": td.num_validation},
    )


# ------------------------------------------------------------------ parametric bootstrap
class Bootstrap(NamedTuple):
    """Parametric bootstrap of a point estimator.

    estimate: ``[K, d]`` the point estimate of each observed dataset (simulated from).
    samples: ``[K, B, d]`` the estimator on ``B`` datasets simulated at ``estimate`` (NaN where
      a simulation was not finite).
    lower, upper: ``[K, d]`` percentile interval of ``samples`` at ``level``.
    level: the interval's nominal level.
    """

    estimate: jax.Array
    samples: jax.Array
    lower: jax.Array
    upper: jax.Array
    level: float


@partial(jax.jit, static_argnames=("model", "num"))
def _simulate_at(model: Model, keys, theta, design, num: int):
    """``num`` datasets per row of ``theta [K, d]`` (keys ``[K]``) -> ``[K * num, *obs_shape]``."""
    def one(k, th, de):
        rep = jnp.broadcast_to(th, (num,) + th.shape)
        de_rep = None if de is None else jax.tree.map(lambda a: jnp.broadcast_to(a, (num,) + a.shape), de)
        return model.simulate(k, rep, de_rep)

    ys = jax.vmap(one)(keys, theta, design)
    return ys.reshape((-1,) + ys.shape[2:])


def bootstrap(key, est: PointEstimator, model: Model, obs, num_bootstrap: int = 200, level: float = 0.9, *,
              batch_size: int | None = None, dataset_ids=None) -> Bootstrap:
    """Parametric bootstrap: for each of ``K`` datasets, simulate ``B`` datasets from the model
    at the dataset's point estimate (:meth:`PointEstimator.point`, unconstrained, through
    ``model.simulate``), re-estimate all ``K * B`` in one compiled batched call and take
    percentile intervals.

    Args:
      key: PRNG key; dataset ``i`` simulates with ``fold_in(key, dataset_ids[i])`` when
        ``dataset_ids [K]`` are given (else ``split(key, K)``).
      est: the :class:`PointEstimator`.
      model: the model it was trained for (its simulator).
      obs: ``[K, *obs_shape]``, one dataset, or an :class:`Observation` (design reused for the
        simulations).
      num_bootstrap: ``B``.
      level: nominal level of the percentile interval.
    Returns:
      :class:`Bootstrap` (``samples [K, B, d]``, ``lower``/``upper [K, d]``).
    """
    if not isinstance(est, PointEstimator):
        raise ConfigError(f"bootstrap: est must be a PointEstimator, got {type(est).__name__}")
    if not _whole(num_bootstrap, 2):
        raise ConfigError(f"bootstrap: num_bootstrap must be a whole number >= 2, got {num_bootstrap!r}")
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0 < level < 1:
        raise ConfigError(f"bootstrap: level must be a number in (0, 1), got {level!r}")
    if tuple(model.param_names) != tuple(est.param_names) or model.name != est.model_name:
        raise ConfigError(f"bootstrap: the estimator was trained for {est.model_name!r} {est.param_names}, "
                          f"not model {model.name!r} {model.param_names}")
    ys, _, design, _ = _datasets(est.spec, obs, f"point estimator for {est.model_name!r}")
    k, b = ys.shape[0], int(num_bootstrap)
    base = Observation(ys, 1.0, design) if design is not None else ys
    theta_hat = est.point(base, batch_size=batch_size)
    keys = dataset_keys(key, k, dataset_ids)
    sims = _simulate_at(model, keys, theta_hat, design, b)
    design_rep = None if design is None else jax.tree.map(lambda a: jnp.repeat(jnp.asarray(a), b, axis=0), design)
    finite = jnp.isfinite(sims.reshape(k * b, -1)).all(axis=1)
    safe = jnp.where(finite.reshape((-1,) + (1,) * (sims.ndim - 1)), sims, 0.0)
    sim_obs = safe if design_rep is None else Observation(safe, 1.0, design_rep)
    samples = jnp.where(finite[:, None], est.point(sim_obs, batch_size=batch_size), jnp.nan).reshape(k, b, -1)
    lo, hi = jnp.nanquantile(samples, jnp.asarray([(1 - level) / 2, (1 + level) / 2]), axis=1)
    return Bootstrap(theta_hat, samples, lo, hi, float(level))


# ------------------------------------------------------------------ checkpoints
def _spec_from_json(s: dict, where: str) -> PointSpec:
    """:class:`PointSpec` from the ``spec`` entry of estimator.json, every field type-checked."""

    def field(key, ok, expected):
        v = ckpt.require(s, key, object, where, name=f"spec.{key}")
        if not ok(v):
            raise ckpt.CheckpointError(f"{where}: field 'spec.{key}' should be {expected}, got {v!r}")
        return v

    dim = field("dim", lambda v: _count(v) and v > 0, "a positive integer")
    obs_shape = field("obs_shape", lambda v: isinstance(v, list) and all(_count(n) and n > 0 for n in v),
                      "a list of positive integers")
    hidden = field("hidden", lambda v: isinstance(v, list) and all(_count(n) and n > 0 for n in v),
                   "a list of positive integers")
    act = field("activation", lambda v: isinstance(v, str), "a string")
    try:
        _activation(act)
        summary = spec_from_dict(field("summary", lambda v: isinstance(v, dict), "an object"))
    except ckpt.CheckpointError:
        raise
    except ValueError as e:
        raise ckpt.CheckpointError(f"{where}: field 'spec.summary' / 'spec.activation': {e}") from None
    if getattr(summary, "kind", None) == "coupling_flow":
        raise ckpt.CheckpointError(f"{where}: field 'spec.summary' is a flow spec, not a summary network")
    try:
        loss = loss_from_dict(field("loss", lambda v: isinstance(v, dict), "an object"))
    except ckpt.CheckpointError:
        raise
    except ValueError as e:
        raise ckpt.CheckpointError(f"{where}: field 'spec.loss': {e}") from None
    return PointSpec(dim=dim, obs_shape=tuple(obs_shape),
                     obs_kind=field("obs_kind", lambda v: isinstance(v, str), "a string"),
                     summary=summary, loss=loss, hidden=tuple(hidden), activation=act,
                     design_dim=field("design_dim", _count, "a non-negative integer"))


def _load_nbe(cfg: dict, state: dict, path: str) -> PointEstimator:
    """Loader registered for kind ``"nbe"`` (see :func:`amortflow.estimators.checkpoint.load_estimator`:
    format, checksums and finiteness are checked there)."""
    cfg_file = ckpt.checkpoint_files(path)[0]
    spec = _spec_from_json(ckpt.require(cfg, "spec", dict, cfg_file), cfg_file)
    # shapes only (traced, not compiled or run): a load costs no XLA compilation
    template_params = jax.eval_shape(init_params, spec, jax.random.PRNGKey(0))
    return PointEstimator(spec=spec, **ckpt.restore_flow_estimator(cfg, state, path, spec, template_params))


ckpt.register_estimator_kind("nbe", _load_nbe)

__all__ = ["SquaredError", "AbsoluteError", "Pinball", "JointLoss", "as_loss", "loss_from_dict", "quantile_label",
           "PointSpec", "PointEstimator", "fit_point_estimator", "Bootstrap", "bootstrap", "point_loss",
           "predict", "init_params"]
