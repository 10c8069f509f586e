"""Neural ratio estimation (NRE): a classifier ``d(theta, s(y))`` with a learned summary network
``s`` whose logit estimates the likelihood-to-evidence ratio ``log r = log p(y | theta) / p(y)``
-- the surrogate log-likelihood up to a theta-free constant. The posterior is sampled by the
library's batched MCMC on ``log p(theta) + beta * d(theta, s(y))``, all datasets at once.

Losses are values (frozen dataclasses), each mapping a ``[B, J]`` matrix of logits -- column 0
the joint pairs ``(theta_i, y_i)``, column ``j`` the pairs ``(theta_{i+j}, y_i)`` with a
parameter of another simulation (a draw of the marginal ``p(theta) p(y)``) -- to a scalar:

- :class:`BinaryNRE` -- Hermans, Begy & Louppe 2020 (NRE-A): joint vs marginal pairs, BCE.
- :class:`ContrastiveNRE` -- Miller, Weniger & Forré 2022 (NRE-C): ``K`` parameters per data
  set, ``K + 1`` classes (which one is the joint one, or none).
- :class:`BalancedNRE` -- Delaunoy et al. 2022 (BNRE): BCE plus ``lam`` times the squared
  violation of the balancing condition, for conservative (not overconfident) posteriors.

Shapes: ``d`` parameters, ``K`` datasets, ``S`` draws per dataset, ``c`` summary dimension,
``B`` batch size.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from functools import partial
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from amortflow.estimators import checkpoint as ckpt
from amortflow.estimators.data import Standardization, fit_standardization, training_data, training_identity
from amortflow.estimators.likelihood import (
    SurrogateLikelihood, check_model_supported, check_standardization, check_train_config,
    common_fields, is_count, is_shape, net_spec_field, restore_arrays, spec_field,
)
from amortflow.estimators.npe import _datasets
from amortflow.estimators.training import TrainConfig, train
from amortflow.errors import ConfigError
from amortflow.models.base import Model
from amortflow.nets.layers import MLP, activation
from amortflow.nets.specs import FlowSpec, spec_to_dict
from amortflow.nets.summary import build_summary, default_summary_spec


# ------------------------------------------------------------------ losses (values)
def _bce(logits):
    """Binary cross-entropy of joint (column 0) vs marginal (column 1) pairs, ``[B]`` each."""
    return jnp.mean(jax.nn.softplus(-logits[:, 0])) + jnp.mean(jax.nn.softplus(logits[:, 1]))


@dataclasses.dataclass(frozen=True)
class BinaryNRE:
    """NRE-A (Hermans et al. 2020): classify joint ``(theta, y)`` against marginal pairs with
    the binary cross-entropy; at the optimum ``d = log p(y | theta) / p(y)``."""

    name = "binary"

    @property
    def num_columns(self) -> int:
        return 2

    def __call__(self, logits):
        """``logits [B, 2]`` (joint, marginal) -> scalar."""
        return _bce(logits)

    def to_dict(self) -> dict:
        return {"kind": self.name}


@dataclasses.dataclass(frozen=True)
class ContrastiveNRE:
    """NRE-C (Miller, Weniger & Forré 2022): each ``y`` meets ``num_classes`` parameters; class
    ``k`` says the ``k``-th is its joint partner, class 0 that none is. With
    ``q(k) = (K/gamma) r_k / (1 + (K/gamma) sum_i r_i)`` and ``q(0) = 1 / (1 + ...)`` the loss is
    ``-(gamma E_joint log q(1) + E_marginal log q(0)) / (1 + gamma)``.

    Why NRE-C rather than NRE-B (Durkan et al. 2020, the ``K``-way softmax without class 0):
    NRE-B identifies the ratio only up to an arbitrary ``y``-dependent constant, NRE-C's
    optimum is the ratio itself (it contains NRE-A at ``K = 1`` and approaches NRE-B as
    ``gamma -> inf``), so ``d`` stays a calibrated log-ratio that can be compared across data
    sets and checked (``E_prior exp(d) = 1``), while keeping the contrastive sample efficiency.

    Attributes:
      num_classes: ``K`` parameters per dataset (``>= 1``; ``K + 1 <=`` the batch size).
      gamma: odds of a joint class against class 0 (``> 0``).
    """

    num_classes: int = 5
    gamma: float = 1.0
    name = "contrastive"

    def __post_init__(self):
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, numbers.Integral) \
                or self.num_classes < 1:
            raise ConfigError(f"ContrastiveNRE.num_classes must be a whole number >= 1, got {self.num_classes!r}")
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, numbers.Real) \
                or not (math.isfinite(self.gamma) and self.gamma > 0):
            raise ConfigError(f"ContrastiveNRE.gamma must be a finite number > 0, got {self.gamma!r}")

    @property
    def num_columns(self) -> int:
        return int(self.num_classes) + 1

    def __call__(self, logits):
        """``logits [B, K + 1]`` (joint, then ``K`` marginal) -> scalar. The joint set is
        columns ``0..K-1`` (joint partner first), the all-marginal set columns ``1..K``."""
        k, g = int(self.num_classes), float(self.gamma)
        a = math.log(k / g) + logits
        zero = jnp.zeros(logits.shape[:1] + (1,), logits.dtype)
        lq_joint = a[:, 0] - jax.nn.logsumexp(jnp.concatenate([zero, a[:, :k]], 1), axis=1)
        lq_none = -jax.nn.logsumexp(jnp.concatenate([zero, a[:, 1:k + 1]], 1), axis=1)
        return -(g * jnp.mean(lq_joint) + jnp.mean(lq_none)) / (1.0 + g)

    def to_dict(self) -> dict:
        return {"kind": self.name, "num_classes": int(self.num_classes), "gamma": float(self.gamma)}


@dataclasses.dataclass(frozen=True)
class BalancedNRE:
    """BNRE (Delaunoy et al. 2022): BCE + ``lam * (E_joint sigmoid(d) + E_marginal sigmoid(d) - 1)^2``.
    The balancing condition pushes the classifier towards conservative (wider, not
    overconfident) posteriors; ``lam = 100`` is the paper's default."""

    lam: float = 100.0
    name = "balanced"

    def __post_init__(self):
        if isinstance(self.lam, bool) or not isinstance(self.lam, numbers.Real) \
                or not (math.isfinite(self.lam) and self.lam >= 0):
            raise ConfigError(f"BalancedNRE.lam must be a finite number >= 0, got {self.lam!r}")

    @property
    def num_columns(self) -> int:
        return 2

    def __call__(self, logits):
        """``logits [B, 2]`` (joint, marginal) -> scalar."""
        balance = jnp.mean(jax.nn.sigmoid(logits[:, 0])) + jnp.mean(jax.nn.sigmoid(logits[:, 1])) - 1.0
        return _bce(logits) + float(self.lam) * balance ** 2

    def to_dict(self) -> dict:
        return {"kind": self.name, "lam": float(self.lam)}


RatioLoss = BinaryNRE | ContrastiveNRE | BalancedNRE


# ------------------------------------------------------------------ network
class RatioClassifier(nn.Module):
    """``d(s, theta)``: an MLP on ``[s, theta]``, its first layer split into ``W_s s + W_t theta``
    (the same function) so ``s`` is projected once however many parameters meet it.
    ``s [..., c]``, ``theta [..., d]`` broadcast -> ``[...]``."""

    hidden: Sequence[int]
    act: str = "gelu"

    @nn.compact
    def __call__(self, s, theta):
        h = nn.Dense(self.hidden[0], name="s_proj")(s) + nn.Dense(self.hidden[0], use_bias=False,
                                                                  name="theta_proj")(theta)
        return MLP(tuple(self.hidden[1:]), 1, self.act)(activation(self.act)(h))[..., 0]


@dataclasses.dataclass(frozen=True)
class NRESpec:
    """Static description of a ratio estimator (hashable: a jit static argument).

    ``summary``: summary-network spec; ``hidden``/``activation``: the classifier MLP."""

    dim: int
    obs_shape: tuple[int, ...]
    obs_kind: str
    summary: Any
    hidden: tuple[int, ...] = (128, 128)
    activation: str = "gelu"

    @property
    def summary_net(self):
        return build_summary(self.summary, len(self.obs_shape))

    @property
    def classifier_net(self):
        return RatioClassifier(hidden=tuple(self.hidden), act=self.activation)


def ratio_summary(spec: NRESpec, params, std: Standardization, ys):
    """Learned summary ``ys [..., *obs_shape] -> [..., c]``."""
    return spec.summary_net.apply(params["summary"], (ys - std.y_loc) / std.y_scale)


def log_ratio_from_summary(spec: NRESpec, params, std: Standardization, theta, s):
    """``d(theta, s)``: ``theta [..., d]``, ``s [..., c]`` broadcast -> ``[...]``."""
    return spec.classifier_net.apply(params["classifier"], s, (theta - std.theta_loc) / std.theta_scale)


def contrast_logits(spec: NRESpec, params, std: Standardization, theta, ys, num_columns: int):
    """``[B, J]`` logits: column ``j`` pairs ``y_i`` with ``theta_{(i + j) mod B}`` (column 0 the
    joint pairs; the others parameters of other, independent simulations). One summary per
    dataset."""
    s = ratio_summary(spec, params, std, ys)  # [B, c]
    thetas = jnp.stack([jnp.roll(theta, -j, axis=0) for j in range(num_columns)])  # [J, B, d]
    return log_ratio_from_summary(spec, params, std, thetas, s[None]).T


@partial(jax.jit, static_argnames=("spec",))
def init_nre_params(spec: NRESpec, key):
    k1, k2 = jax.random.split(key)
    y0 = jnp.zeros((1,) + tuple(spec.obs_shape), jnp.float32)
    p_summary = spec.summary_net.init(k1, y0)
    s0 = spec.summary_net.apply(p_summary, y0)
    p_clf = spec.classifier_net.init(k2, s0, jnp.zeros((1, spec.dim)))
    return {"summary": p_summary, "classifier": p_clf}


@partial(jax.jit, static_argnames=("spec", "batch_size"))
def _summaries(spec, params, std, ys, batch_size):
    return jax.lax.map(lambda y: ratio_summary(spec, params, std, y), ys, batch_size=batch_size)


@partial(jax.jit, static_argnames=("spec",))
def _log_ratio(spec, params, std, theta, s):
    return log_ratio_from_summary(spec, params, std, theta, s[:, None, :])


@dataclasses.dataclass(frozen=True, eq=False)
class RatioEstimator(SurrogateLikelihood, ckpt.Checkpointed):
    """A trained ratio estimator ``d(theta, s(y)) ~ log p(y | theta) / p(y)`` (kind ``"nre"``).

    Methods take ``obs``: datasets ``[K, *obs_shape]``, one dataset, or an
    :class:`~amortflow.models.observation.Observation`.

    Attributes:
      spec: :class:`NRESpec`.
      params: ``{"summary": ..., "classifier": ...}`` Flax parameters.
      standardization: :class:`~amortflow.estimators.data.Standardization` of ``theta`` and ``y``.
      model: the model trained on (``None`` after loading; see :meth:`with_model`).
      extra: ``{"loss": loss.to_dict(), ...}``.
    """

    spec: NRESpec
    params: Any
    standardization: Standardization
    param_names: tuple[str, ...]
    model_name: str
    model: Model | None = None
    history: dict = dataclasses.field(default_factory=dict)
    train_config: dict = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)

    kind = "nre"

    def summary_of(self, y):
        return ratio_summary(self.spec, self.params, self.standardization, y)

    def log_likelihood_from_summary(self, theta, s):
        return log_ratio_from_summary(self.spec, self.params, self.standardization, theta, s)

    def summaries(self, obs, *, batch_size: int = 1024):
        """Learned summaries ``[K, c]``."""
        ys = _datasets(self.spec, obs, self._owner())[0]
        return _summaries(self.spec, self.params, self.standardization, ys, int(min(batch_size, ys.shape[0])))

    def log_ratio(self, theta, obs):
        """``log r(theta, y) = d(theta, s(y))``: ``theta [K, S, d]`` with ``K`` datasets -> ``[K, S]``;
        one dataset: ``[S, d]`` -> ``[S]``."""
        ys, _, _, single = _datasets(self.spec, obs, self._owner())
        theta = jnp.asarray(theta, jnp.float32)
        k, d = ys.shape[0], self.spec.dim
        if theta.ndim != (2 if single else 3) or theta.shape[-1] != d or (not single and theta.shape[0] != k):
            raise ValueError(f"log_ratio: theta of shape {theta.shape} does not fit "
                             + (f"one dataset: expected [S, {d}]" if single else f"{k} datasets: expected [{k}, S, {d}]"))
        out = _log_ratio(self.spec, self.params, self.standardization, theta.reshape(k, -1, d), self.summaries(ys))
        return out.reshape(theta.shape[:-1])

    def log_likelihood(self, theta, obs):
        """The surrogate log-likelihood: :meth:`log_ratio` (``log p(y | theta)`` up to the
        theta-free ``log p(y)``)."""
        return self.log_ratio(theta, obs)

    # -- checkpoints
    def _spec_dict(self) -> dict:
        s = self.spec
        return {"dim": s.dim, "obs_shape": list(s.obs_shape), "obs_kind": s.obs_kind,
                "summary": spec_to_dict(s.summary), "hidden": list(s.hidden), "activation": s.activation}

    def _arrays(self) -> dict:
        return {"params": self.params, "standardization": self.standardization._asdict()}


def fit_ratio(
    key,
    model: Model,
    loss: RatioLoss = BinaryNRE(),
    *,
    summary=None,
    hidden: tuple[int, ...] = (128, 128),
    num_simulations: int | None = None,
    bank: tuple[np.ndarray, np.ndarray] | None = None,
    train_config: TrainConfig | None = None,
    num_validation: int | None = None,
    progress: bool = True,
    checkpoint_dir: str | None = None,
) -> RatioEstimator:
    """Train a ratio estimator: a classifier ``d(theta, s(y))`` with a learned summary network.

    Args:
      key: PRNG key.
      model: the :class:`~amortflow.models.Model` (no design data).
      loss: :class:`BinaryNRE` (default), :class:`ContrastiveNRE` or :class:`BalancedNRE`.
      summary: summary-network spec (default
        :func:`~amortflow.nets.default_summary_spec` for the observation kind, size and ``d``).
      hidden: classifier MLP widths.
      num_simulations, bank, num_validation, checkpoint_dir: as for
        :func:`~amortflow.fit_posterior` (default: online simulation). Marginal pairs pair a
        dataset with the parameters of other simulations of the same batch.
      train_config: :class:`TrainConfig` (default: 3000 steps of 256 simulations).
    Returns:
      :class:`RatioEstimator` (bound to ``model`` for sampling), best validation parameters.
    Raises:
      ConfigError: a setting outside its range (named).
    """
    owner = "fit_ratio"
    cfg = check_train_config(train_config, owner)
    check_model_supported(model, owner)
    if not isinstance(loss, (BinaryNRE, ContrastiveNRE, BalancedNRE)):
        raise ConfigError(f"{owner}: loss must be BinaryNRE(), ContrastiveNRE(...) or BalancedNRE(...), "
                          f"got {type(loss).__name__}")
    if loss.num_columns > cfg.batch_size:
        raise ConfigError(f"{owner}: {loss.num_columns - 1} contrastive parameters per dataset need a "
                          f"batch of at least {loss.num_columns}; TrainConfig.batch_size is {cfg.batch_size}")
    hidden = tuple(hidden)
    if not hidden or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden):
        raise ConfigError(f"{owner}: hidden must be a non-empty tuple of positive integers, got {hidden!r}")
    if summary is not None and isinstance(summary, FlowSpec):
        raise ConfigError(f"{owner}: summary must be a summary-network spec, got a FlowSpec")
    k_data, k_init, k_train = jax.random.split(key, 3)
    td = training_data(*jax.random.split(k_data), model, num_simulations=num_simulations, bank=bank,
                       num_validation=num_validation, batch_size=cfg.batch_size, owner=owner,
                       progress=progress)
    std = fit_standardization(td.fit[0], td.fit[1], model.obs_kind)
    spec = NRESpec(dim=model.dim, obs_shape=tuple(model.obs_shape), obs_kind=model.obs_kind,
                   summary=summary or default_summary_spec(model.obs_kind, model.obs_shape, model.dim),
                   hidden=hidden)
    params = init_nre_params(spec, k_init)
    j = loss.num_columns

    def loss_fn(p, batch, k):
        return loss(contrast_logits(spec, p, std, batch[0], batch[1], j))

    identity = None if checkpoint_dir is None else training_identity(
        "nre", key, model, repr(spec), td.simulations_hash, loss=loss.to_dict())
    result = train(k_train, loss_fn, params, td.batch_fn, td.data, td.val, cfg, progress=progress,
                   checkpoint_dir=checkpoint_dir, checkpoint_identity=identity,
                   description=f"NRE ({loss.name}) {model.name}")
    return RatioEstimator(
        spec=spec, params=result.params, standardization=std, param_names=model.param_names,
        model_name=model.name, model=model, history=result.history, train_config=dataclasses.asdict(cfg),
        extra={"loss": loss.to_dict(), "num_simulations": td.num_simulations,
               "num_validation": td.num_validation})


def _load_nre(cfg: dict, state: dict, path: str) -> RatioEstimator:
    """Loader registered for kind ``"nre"`` (see :func:`~amortflow.estimators.checkpoint.load_estimator`)."""
    cfg_file, arr_file = ckpt.checkpoint_files(path)
    s = ckpt.require(cfg, "spec", dict, cfg_file)
    dim = spec_field(s, "dim", lambda v: is_count(v) and v > 0, "a positive integer", cfg_file)
    obs_shape = tuple(spec_field(s, "obs_shape", is_shape, "a list of positive integers", cfg_file))
    summary = net_spec_field(s, "summary", cfg_file)
    if isinstance(summary, FlowSpec):
        raise ckpt.CheckpointError(f"{cfg_file}: field 'spec.summary' is a flow spec, not a summary network")
    hidden = spec_field(s, "hidden", lambda v: isinstance(v, list) and len(v) > 0 and all(is_count(h) and h > 0 for h in v),
                        "a non-empty list of positive integers", cfg_file)
    act = spec_field(s, "activation", lambda v: isinstance(v, str), "a string", cfg_file)
    try:
        activation(act)
    except ValueError as e:
        raise ckpt.CheckpointError(f"{cfg_file}: field 'spec.activation': {e}") from None
    spec = NRESpec(dim=dim, obs_shape=obs_shape,
                   obs_kind=spec_field(s, "obs_kind", lambda v: isinstance(v, str), "a string", cfg_file),
                   summary=summary, hidden=tuple(hidden), activation=act)
    names, model_name, meta = common_fields(cfg, cfg_file, dim)
    template = {
        "params": init_nre_params(spec, jax.random.PRNGKey(0)),
        "standardization": {"theta_loc": np.zeros(dim, np.float32), "theta_scale": np.ones(dim, np.float32),
                            "y_loc": np.zeros(0, np.float32), "y_scale": np.zeros(0, np.float32)},
    }
    restored = restore_arrays(template, state, arr_file, ("params",))
    std = check_standardization(restored["standardization"], dim, obs_shape, arr_file)
    return RatioEstimator(
        spec=spec, params=jax.tree_util.tree_map(jnp.asarray, restored["params"]), standardization=std,
        param_names=names, model_name=model_name, model=None, history=meta["history"],
        train_config=meta["train_config"],
        extra={**meta["extra"], "loaded_from": path, "saved_with": cfg.get("amortflow_version")})


ckpt.register_estimator_kind("nre", _load_nre)

__all__ = ["BinaryNRE", "ContrastiveNRE", "BalancedNRE", "NRESpec", "RatioEstimator", "RatioClassifier",
           "fit_ratio", "ratio_summary", "log_ratio_from_summary", "contrast_logits"]
