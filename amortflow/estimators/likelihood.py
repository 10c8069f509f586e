"""Neural likelihood estimation (NLE; Papamakarios, Sterratt & Murray 2019): a conditional flow
``q(x | theta)`` over the data ``x`` -- the flattened observation, or ``x = summary_fn(y)`` for a
fixed, user-supplied JAX function (hand-crafted statistics) -- trained by maximum likelihood on
simulated pairs. The posterior is then sampled by the library's batched MCMC on the *surrogate*
``log p(theta) + beta * log q(x | theta)``, all datasets at once.

Also here, shared with :mod:`amortflow.estimators.ratio`: :class:`SurrogateLikelihood` (what a
surrogate-likelihood estimator offers: the surrogate :class:`~amortflow.models.Model`, the same
model in summary space, batched MCMC sampling). Training data come from
:func:`amortflow.estimators.data.training_data`.

Shapes: ``d`` parameters, ``K`` datasets, ``S`` draws per dataset, ``m`` (= ``c``) data /
summary dimension, ``P`` probe datasets.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from amortflow.estimators import checkpoint as ckpt
from amortflow.estimators.data import (
    Standardization, fit_standardization, training_data, training_identity,
)
from amortflow.estimators.npe import _datasets  # the shared observation normalisation
from amortflow.estimators.training import TrainConfig, train
from amortflow.errors import ConfigError
from amortflow.models.base import Model
from amortflow.models.observation import Observation, observe
from amortflow.nets.flows import ConditionalFlow
from amortflow.nets.specs import FlowSpec, spec_from_dict, spec_to_dict

#: simulated datasets kept with an NLE estimator to check a re-supplied ``summary_fn``
NUM_PROBES = 8


def check_model_supported(model: Model, owner: str) -> None:
    if model.uses_design:
        raise ConfigError(f"{owner}: model {model.name!r} takes per-dataset design data; surrogate "
                          "likelihood estimators do not condition on design yet (use fit_posterior)")


def check_train_config(cfg, owner: str) -> TrainConfig:
    cfg = cfg or TrainConfig()
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(f"{owner}: train_config must be a TrainConfig, got {type(cfg).__name__}")
    return cfg


# ------------------------------------------------------------------ shared: the surrogate
class SurrogateLikelihood:
    """What NLE and NRE estimators share: a network log-likelihood ``l(theta, s)`` of the
    parameters and a per-dataset summary ``s = summary(y) [c]`` (NLE: the data ``x`` itself;
    NRE: the learned summary), turned into models the MCMC machinery samples.

    A subclass provides ``spec`` (with ``dim`` and ``obs_shape``), ``kind``, ``param_names``,
    ``model_name``, ``model`` (the :class:`~amortflow.models.Model` it was trained on, or
    ``None`` after loading), :meth:`summary_of` and :meth:`log_likelihood_from_summary`.

    The posterior these estimators answer is ``p(theta) exp(beta * l(theta, s(y)))``: the
    *surrogate's* posterior, which MCMC samples; there is no amortized draw and no density
    ``q(theta | y)`` (``has_log_prob = False``).
    """

    has_log_prob = False

    # -- to provide
    def summary_of(self, y):
        """``s [c]`` of ONE dataset ``y [*obs_shape]`` (traceable)."""
        raise NotImplementedError

    def log_likelihood_from_summary(self, theta, s):
        """Surrogate log-likelihood: ``theta [..., d]``, ``s [..., c]`` (broadcast) -> ``[...]``."""
        raise NotImplementedError

    # -- shared
    def sample_and_log_prob(self, *args, **kwargs):
        """Not available: a surrogate likelihood has no normalized posterior density
        ``q(theta | y)`` (``has_log_prob = False``); :meth:`sample` draws by MCMC."""
        raise NotImplementedError(f"{self._owner()}: a surrogate likelihood has no posterior density q(theta | y); "
                                  "use est.sample(...) (batched MCMC) or est.log_likelihood(theta, obs)")

    def log_prob(self, *args, **kwargs):
        """Not available (see :meth:`sample_and_log_prob`)."""
        return self.sample_and_log_prob()

    @property
    def surrogate_label(self) -> str:
        """What the result table says produced the posterior, e.g. ``"nle surrogate"``."""
        return f"{self.kind} surrogate"

    def _owner(self) -> str:
        return f"{self.kind} estimator for {self.model_name!r}"

    def _check_model(self, model: Model) -> Model:
        if not isinstance(model, Model):
            raise TypeError(f"{self._owner()}: expected an amortflow Model, got {type(model).__name__}")
        if tuple(model.param_names) != tuple(self.param_names) or model.name != self.model_name \
                or tuple(model.obs_shape) != tuple(self.spec.obs_shape):
            raise ValueError(
                f"{self._owner()} (parameters {tuple(self.param_names)}, observations "
                f"{tuple(self.spec.obs_shape)}) does not fit model {model.name!r} (parameters "
                f"{tuple(model.param_names)}, observations {tuple(model.obs_shape)}); train one for it")
        check_model_supported(model, self._owner())
        return model

    def with_model(self, model: Model):
        """This estimator bound to ``model`` (its prior is needed to sample the surrogate
        posterior; a loaded estimator has none until bound). Checked: names and shapes."""
        return dataclasses.replace(self, model=self._check_model(model))

    def _model_or(self, model: Model | None) -> Model:
        model = model if model is not None else self.model
        if model is None:
            raise ValueError(f"{self._owner()}: sampling the surrogate posterior needs the prior: "
                             "pass model=... or bind it once with est = est.with_model(model)")
        return self._check_model(model)

    def _derived(self, tag: str, model: Model, build):
        # one derived Model per (kind, model) and estimator: compiled samplers are cached by the
        # model's identity, so a fresh Model per call would recompile the sampler every call
        cache = self.__dict__.setdefault("_derived_models", {})
        hit = cache.get((tag, id(model)))
        if hit is None or hit[0] is not model:
            hit = cache[(tag, id(model))] = (model, build())
        return hit[1]

    def surrogate_model(self, model: Model | None = None) -> Model:
        """``model`` with its log-likelihood replaced by the network's (observation: the data
        ``y``): every function that uses ``log_density`` then targets the surrogate posterior
        ``log p(theta) + beta * l(theta, summary(y))``. Inside MCMC this recomputes the summary
        at every step; :meth:`summary_model` does not."""
        model = self._model_or(model)

        def build():
            def log_likelihood(theta, y):
                return self.log_likelihood_from_summary(theta, self.summary_of(y))

            info = {**dict(model.info), "surrogate_likelihood": self.kind}
            return dataclasses.replace(model, log_likelihood_fn=log_likelihood, info=info)

        return self._derived("surrogate", model, build)

    def summary_model(self, model: Model | None = None) -> Model:
        """The surrogate posterior as a model whose observation IS the summary vector
        (``obs_shape (c,)``): ``log_likelihood(theta, s) = l(theta, s)``, the simulator returns
        ``summary(y)``. Summaries are loop-invariant in MCMC, so computing them once per dataset
        and sampling this model avoids re-running the summary at every leapfrog step."""
        model = self._model_or(model)

        def build():
            base_sim = model.simulator

            def simulate(key, theta):
                return self.summary_of(base_sim(key, theta))

            info = {**dict(model.info), "surrogate_likelihood": self.kind, "summary_space": True}
            return dataclasses.replace(
                model, name=f"{model.name}[{self.kind} summaries]", obs_shape=(self.summary_dim,),
                obs_kind="vector", simulator=simulate, log_likelihood_fn=self.log_likelihood_from_summary,
                info=info)

        return self._derived("summary", model, build)

    @property
    def summary_dim(self) -> int:
        """``c``, the summary dimension."""
        return int(jax.eval_shape(self.summary_of, jax.ShapeDtypeStruct(self.spec.obs_shape, jnp.float32)).shape[0])

    def summary_observation(self, obs) -> Observation:
        """``obs`` (datasets ``[K, *obs_shape]``, one dataset, or an Observation) as the batched
        Observation of :meth:`summary_model`: ``y = summaries [K, c]``, ``beta`` kept."""
        ys, beta, design, _ = _datasets(self.spec, obs, self._owner())
        if design is not None:
            raise ValueError(f"{self._owner()}: design data are not supported by surrogate likelihoods")
        s = np.asarray(self.summaries(ys))
        return observe(s, 1.0 if beta is None else np.asarray(beta))

    def posterior_mcmc(self, key, obs, num_draws: int, *, model: Model | None = None, ladder=None,
                       dataset_ids=None, progress: bool = False):
        """Batched MCMC on the surrogate posterior of every dataset at once
        (:func:`amortflow.mcmc.run_ladder` on :meth:`summary_model`; starting points screened
        from prior draws). ``ladder``: default :func:`amortflow.mcmc.default_ladder` with
        :func:`amortflow.mcmc.widen_batches` (a surrogate density is cheap).

        Returns the :class:`~amortflow.mcmc.LadderResult` (routes, nested R-hat, draws
        ``[K, num_draws, d]``)."""
        from amortflow import mcmc  # mcmc sits above estimators in the import order

        if isinstance(num_draws, bool) or not isinstance(num_draws, numbers.Integral) or num_draws < 1:
            raise ConfigError(f"{self._owner()}: num_draws must be a whole number >= 1, got {num_draws!r}")
        target = self.summary_model(model)
        obs_s = self.summary_observation(obs)
        k = obs_s.num_datasets
        lad = (mcmc.widen_batches(mcmc.default_ladder()) if ladder is None
               else mcmc.as_ladder(ladder)).yielding(int(num_draws))
        cand = np.full((k, 1, self.spec.dim), np.nan, np.float32)  # no proposal: prior screening
        return mcmc.run_ladder(key, target, obs_s, cand, None, lad, num_output_draws=int(num_draws),
                               dataset_ids=dataset_ids, progress=progress)

    def sample(self, key, obs, num_draws: int, *, model: Model | None = None, ladder=None,
               dataset_ids=None, batch_size: int | None = None, progress: bool = False):
        """``draws [K, S, d]`` of the surrogate posterior by batched MCMC (see
        :meth:`posterior_mcmc`; ``batch_size`` is accepted for the protocol and unused). Warns
        naming the datasets whose chains did not pass the convergence gate (their draws are
        the last rung's); use :meth:`posterior_mcmc` for the diagnostics."""
        res = self.posterior_mcmc(key, obs, num_draws, model=model, ladder=ladder,
                                  dataset_ids=dataset_ids, progress=progress)
        failed = np.nonzero(np.asarray(res.route) == "failed")[0]
        if failed.size:
            warnings.warn(f"{self._owner()}: MCMC on the surrogate posterior did not converge for "
                          f"{failed.size} dataset(s) (indices {failed[:10].tolist()}): "
                          f"{res.reason[failed[0]]}", stacklevel=2)
        return np.asarray(res.draws)


# ------------------------------------------------------------------ NLE: spec and pure functions
@dataclasses.dataclass(frozen=True)
class NLESpec:
    """Static description of a neural likelihood estimator (hashable: a jit static argument).

    ``dim``: parameters (the flow's context); ``x_dim``: ``m``, the flow's dimension;
    ``summary_fn_name``: ``None`` when ``x`` is the flattened observation, else the name of the
    user's ``summary_fn`` (the function itself cannot be saved).
    """

    dim: int
    obs_shape: tuple[int, ...]
    obs_kind: str
    x_dim: int
    flow: FlowSpec
    summary_fn_name: str | None = None

    @property
    def flow_net(self):
        return ConditionalFlow(dim=self.x_dim, spec=self.flow)


def features(spec: NLESpec, summary_fn, ys):
    """The modelled data ``x``: ``ys [..., *obs_shape] -> [..., m]`` (``summary_fn`` maps ONE
    dataset to ``[m]``; ``None``: the flattened observation)."""
    lead = ys.shape[: ys.ndim - len(spec.obs_shape)]
    if summary_fn is None:
        return ys.reshape(lead + (-1,))
    x = jax.vmap(summary_fn)(ys.reshape((-1,) + tuple(spec.obs_shape)))
    return x.reshape(lead + x.shape[-1:])


def nle_log_prob(spec: NLESpec, params, std: Standardization, theta, x):
    """``log q(x | theta)``, a density in ``x`` (the standardization's Jacobian included):
    ``theta [..., d]``, ``x [..., m]`` broadcast -> ``[...]``."""
    batch = jnp.broadcast_shapes(jnp.shape(theta)[:-1], jnp.shape(x)[:-1])
    z = jnp.broadcast_to((x - std.y_loc) / std.y_scale, batch + (spec.x_dim,))
    ctx = jnp.broadcast_to((theta - std.theta_loc) / std.theta_scale, batch + (spec.dim,))
    return spec.flow_net.apply(params, z, ctx, method="log_prob") - jnp.sum(jnp.log(std.y_scale))


def nle_loss(spec: NLESpec, summary_fn, params, std: Standardization, batch):
    """Maximum likelihood: ``-mean log q(x | theta)`` over ``(theta [B, d], ys [B, ...])``."""
    theta, ys = batch[0], batch[1]
    return -jnp.mean(nle_log_prob(spec, params, std, theta, features(spec, summary_fn, ys)))


@partial(jax.jit, static_argnames=("spec",))
def init_nle_params(spec: NLESpec, key):
    """Initial flow parameters (jitted: eager Flax init dispatches every op on its own)."""
    return spec.flow_net.init(key, jnp.zeros((1, spec.x_dim)), jnp.zeros((1, spec.dim)), method="log_prob")


@partial(jax.jit, static_argnames=("spec", "summary_fn", "batch_size"))
def _features_batched(spec, summary_fn, ys, batch_size):
    return jax.lax.map(lambda y: features(spec, summary_fn, y), ys, batch_size=batch_size)


@partial(jax.jit, static_argnames=("spec",))
def _nle_log_lik(spec, params, std, theta, x):
    return nle_log_prob(spec, params, std, theta, x[:, None, :])


def _summary_fn_outputs(summary_fn, obs_shape, owner: str) -> int:
    """``m`` for a user ``summary_fn`` (``[*obs_shape] -> [m]``), or ConfigError saying why not."""
    if not callable(summary_fn):
        raise ConfigError(f"{owner}: summary_fn must be a JAX function [*obs_shape] -> [m], got "
                          f"{type(summary_fn).__name__}")
    try:
        out = jax.eval_shape(summary_fn, jax.ShapeDtypeStruct(tuple(obs_shape), jnp.float32))
    except Exception as e:  # a user function: any error it raises under tracing
        raise ConfigError(f"{owner}: summary_fn fails on one dataset of shape {tuple(obs_shape)} "
                          f"({type(e).__name__}: {e}); it must be a JAX function [*obs_shape] -> [m]") from None
    if not hasattr(out, "shape") or len(out.shape) != 1 or out.shape[0] < 1:
        raise ConfigError(f"{owner}: summary_fn must return a vector [m] for ONE dataset of shape "
                          f"{tuple(obs_shape)}, got {getattr(out, 'shape', type(out).__name__)}")
    return int(out.shape[0])


def _probe_mismatch(x_new, x_saved) -> float:
    """Largest difference of re-computed probe summaries, relative to their scale."""
    x_new, x_saved = np.asarray(x_new, np.float64), np.asarray(x_saved, np.float64)
    if x_new.shape != x_saved.shape:
        return math.inf
    scale = 1.0 + np.abs(x_saved)
    return float(np.max(np.abs(x_new - x_saved) / scale)) if x_new.size else 0.0


@dataclasses.dataclass(frozen=True, eq=False)
class LikelihoodEstimator(SurrogateLikelihood, ckpt.Checkpointed):
    """A trained neural likelihood ``q(x | theta)`` (kind ``"nle"``).

    Methods take ``obs``: datasets ``[K, *obs_shape]``, one dataset ``[*obs_shape]``, or an
    :class:`~amortflow.models.observation.Observation` (its ``beta`` tempers the surrogate
    posterior in :meth:`sample`).

    Attributes:
      spec: :class:`NLESpec`.
      params: Flax parameters of the flow.
      standardization: ``theta_loc/theta_scale [d]``; ``y_loc/y_scale [m]`` standardize ``x``.
      probe: ``{"y": [P, *obs_shape], "x": [P, m]}`` simulated datasets and their ``x``: a
        re-supplied ``summary_fn`` must reproduce ``x`` (:meth:`with_summary_fn`).
      summary_fn: the fixed function ``x = summary_fn(y)`` or ``None`` (flattened ``y``). Not
        saved: a loaded estimator with ``spec.summary_fn_name`` needs it passed again.
      model: the model trained on (``None`` after loading; see :meth:`with_model`).
    """

    spec: NLESpec
    params: Any
    standardization: Standardization
    probe: dict
    param_names: tuple[str, ...]
    model_name: str
    summary_fn: Callable | None = None
    model: Model | None = None
    history: dict = dataclasses.field(default_factory=dict)
    train_config: dict = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)

    kind = "nle"

    def _fn(self):
        if self.spec.summary_fn_name is not None and self.summary_fn is None:
            raise ValueError(
                f"{self._owner()} was trained on x = {self.spec.summary_fn_name}(y), a Python function "
                "a saved file cannot hold; pass it again: est = est.with_summary_fn(fn) (or "
                "load_likelihood_estimator(path, summary_fn=fn))")
        return self.summary_fn

    def with_summary_fn(self, summary_fn, *, rtol: float = 1e-4):
        """This estimator with its ``summary_fn`` re-supplied (after loading), checked: it must
        reproduce the saved probe summaries to ``rtol`` (relative to ``1 + |x|``), else
        ConfigError naming the mismatch -- another function would silently give another
        likelihood."""
        if self.spec.summary_fn_name is None:
            raise ConfigError(f"{self._owner()} models the flattened observation; it takes no summary_fn")
        m = _summary_fn_outputs(summary_fn, self.spec.obs_shape, "with_summary_fn")
        if m != self.spec.x_dim:
            raise ConfigError(f"with_summary_fn: the function returns {m} values, the estimator was "
                              f"trained on {self.spec.x_dim} ({self.spec.summary_fn_name})")
        x = features(self.spec, summary_fn, jnp.asarray(self.probe["y"]))
        err = _probe_mismatch(x, self.probe["x"])
        if not err <= rtol:
            raise ConfigError(
                f"with_summary_fn: the function does not reproduce {self.spec.summary_fn_name!r} on the "
                f"saved probe datasets (largest relative difference {err:.3g} > {rtol:g}); pass the "
                "summary function the estimator was trained with")
        return dataclasses.replace(self, summary_fn=summary_fn)

    @property
    def summary_dim(self) -> int:
        return self.spec.x_dim

    def summary_of(self, y):
        return features(self.spec, self._fn(), y)

    def log_likelihood_from_summary(self, theta, s):
        return nle_log_prob(self.spec, self.params, self.standardization, theta, s)

    def summaries(self, obs, *, batch_size: int = 1024):
        """The modelled data ``x [K, m]`` (flattened ``y`` or ``summary_fn(y)``)."""
        ys = _datasets(self.spec, obs, self._owner())[0]
        return _features_batched(self.spec, self._fn(), ys, int(min(batch_size, ys.shape[0])))

    def log_likelihood(self, theta, obs):
        """Surrogate ``log p(y | theta)`` (a proper density in ``x``):
        ``theta [K, S, d]`` with ``K`` datasets -> ``[K, S]``; one dataset: ``[S, d]`` -> ``[S]``."""
        ys, _, _, single = _datasets(self.spec, obs, self._owner())
        theta = jnp.asarray(theta, jnp.float32)
        k, d = ys.shape[0], self.spec.dim
        want = (k, None, d) if not single else (None, d)
        if theta.ndim != len(want) or theta.shape[-1] != d or (not single and theta.shape[0] != k):
            raise ValueError(f"log_likelihood: theta of shape {theta.shape} does not fit "
                             + (f"one dataset: expected [S, {d}]" if single else f"{k} datasets: expected [{k}, S, {d}]"))
        x = self.summaries(ys)
        out = _nle_log_lik(self.spec, self.params, self.standardization, theta.reshape(k, -1, d), x)
        return out.reshape(theta.shape[:-1])

    # -- checkpoints
    def _spec_dict(self) -> dict:
        s = self.spec
        return {"dim": s.dim, "obs_shape": list(s.obs_shape), "obs_kind": s.obs_kind, "x_dim": s.x_dim,
                "flow": spec_to_dict(s.flow), "summary_fn_name": s.summary_fn_name}

    def _arrays(self) -> dict:
        # a saved summary_fn is its name plus its outputs on the probe datasets: another function
        # changes the fingerprint, and a loader re-supplied with one checks it against the probes
        return {"params": self.params, "standardization": self.standardization._asdict(),
                "probe": {"y": np.asarray(self.probe["y"]), "x": np.asarray(self.probe["x"])}}


def fit_likelihood(
    key,
    model: Model,
    *,
    summary_fn: Callable | None = None,
    summary_name: str | None = None,
    flow: FlowSpec | None = None,
    num_simulations: int | None = None,
    bank: tuple[np.ndarray, np.ndarray] | None = None,
    train_config: TrainConfig | None = None,
    num_validation: int | None = None,
    progress: bool = True,
    checkpoint_dir: str | None = None,
) -> LikelihoodEstimator:
    """Train a neural likelihood estimator ``q(x | theta)`` by maximum likelihood.

    With ``summary_fn`` the surrogate is a likelihood of ``x = summary_fn(y)``: its posterior
    equals the model's only if the statistics are sufficient (e.g. the sample mean of the
    conjugate normal); otherwise it is the posterior given those statistics.

    Args:
      key: PRNG key.
      model: the :class:`~amortflow.models.Model` (no design data).
      summary_fn: fixed JAX function ONE dataset ``[*obs_shape] -> [m]``; ``None``: ``x`` is the
        flattened observation.
      summary_name: what the saved file calls ``summary_fn`` (default: its ``__name__``).
      flow: :class:`~amortflow.nets.FlowSpec` of the flow over ``x`` (default ``FlowSpec()``).
      num_simulations, bank, num_validation, checkpoint_dir: as for
        :func:`~amortflow.fit_posterior` (default: online simulation).
      train_config: :class:`TrainConfig` (default: 3000 steps of 256 simulations).
    Returns:
      :class:`LikelihoodEstimator` (bound to ``model`` for sampling) with the best validation
      parameters.
    Raises:
      ConfigError: a setting outside its range, a ``summary_fn`` of the wrong shape or with
        non-finite outputs on simulations (named).
    """
    owner = "fit_likelihood"
    cfg = check_train_config(train_config, owner)
    check_model_supported(model, owner)
    if flow is not None and not isinstance(flow, FlowSpec):
        raise ConfigError(f"{owner}: flow must be a FlowSpec, got {type(flow).__name__}")
    if summary_fn is None:
        x_dim, name = int(np.prod(model.obs_shape)), None
        if summary_name is not None:
            raise ConfigError(f"{owner}: summary_name names a summary_fn, but none was given")
    else:
        x_dim = _summary_fn_outputs(summary_fn, model.obs_shape, owner)
        name = summary_name or getattr(summary_fn, "__name__", None) or "summary_fn"
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{owner}: summary_name must be a non-empty string, got {name!r}")
    k_data, k_init, k_train = jax.random.split(key, 3)
    td = training_data(*jax.random.split(k_data), model, num_simulations=num_simulations, bank=bank,
                       num_validation=num_validation, batch_size=cfg.batch_size, owner=owner,
                       progress=progress)
    spec = NLESpec(dim=model.dim, obs_shape=tuple(model.obs_shape), obs_kind=model.obs_kind,
                   x_dim=x_dim, flow=flow or FlowSpec(), summary_fn_name=name)
    x_fit = np.asarray(_features_batched(spec, summary_fn, jnp.asarray(td.fit[1]), 256))
    bad = ~np.isfinite(x_fit).all(axis=1)
    if bad.any():
        raise ConfigError(f"{owner}: summary_fn {name!r} returned NaN/inf for {int(bad.sum())} of "
                          f"{len(bad)} simulated datasets; make it finite on the prior predictive")
    std = fit_standardization(td.fit[0], x_fit, "vector")
    params = init_nle_params(spec, k_init)

    def loss_fn(p, batch, k):
        return nle_loss(spec, summary_fn, p, std, batch)

    identity = None if checkpoint_dir is None else training_identity("nle", key, model, repr(spec),
                                                                     td.simulations_hash)
    result = train(k_train, loss_fn, params, td.batch_fn, td.data, td.val, cfg, progress=progress,
                   checkpoint_dir=checkpoint_dir, checkpoint_identity=identity,
                   description=f"NLE {model.name}")
    probe_y = np.asarray(td.val[1][:NUM_PROBES], np.float32)
    probe = {"y": probe_y, "x": np.asarray(features(spec, summary_fn, jnp.asarray(probe_y)), np.float32)}
    return LikelihoodEstimator(
        spec=spec, params=result.params, standardization=std, probe=probe,
        param_names=model.param_names, model_name=model.name, summary_fn=summary_fn, model=model,
        history=result.history, train_config=dataclasses.asdict(cfg),
        extra={"num_simulations": td.num_simulations, "num_validation": td.num_validation,
               "summary_fn": name})


# ------------------------------------------------------------------ checkpoints (shared checks)
def spec_field(s: dict, key: str, ok, expected: str, where: str, default=dataclasses.MISSING):
    """``s[key]`` if it passes ``ok``, else CheckpointError naming ``spec.<key>``."""
    if key not in s and default is not dataclasses.MISSING:
        return default
    v = ckpt.require(s, key, object, where, name=f"spec.{key}")
    if not ok(v):
        raise ckpt.CheckpointError(f"{where}: field 'spec.{key}' should be {expected}, got {v!r}")
    return v


def is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def is_shape(v) -> bool:
    return isinstance(v, list) and all(is_count(n) and n > 0 for n in v)


def net_spec_field(s: dict, key: str, where: str):
    d = spec_field(s, key, lambda v: isinstance(v, dict), "an object", where)
    try:
        return spec_from_dict(d)
    except ValueError as e:
        if isinstance(e, ckpt.CheckpointError):
            raise
        raise ckpt.CheckpointError(f"{where}: field 'spec.{key}': {e}") from None


def common_fields(cfg: dict, cfg_file: str, dim: int) -> tuple[tuple[str, ...], str, dict]:
    """``(param_names, model_name, {history, train_config, extra})`` of estimator.json, checked."""
    names = ckpt.require(cfg, "param_names", list, cfg_file)
    if not all(isinstance(n, str) for n in names):
        raise ckpt.CheckpointError(f"{cfg_file}: field 'param_names' should be a list of strings")
    if len(names) != dim:
        raise ckpt.CheckpointError(f"{cfg_file}: {len(names)} parameter names for dimension {dim}")
    meta = {k: ckpt.require(cfg, k, dict, cfg_file) if k in cfg else {} for k in ("history", "train_config", "extra")}
    return tuple(names), ckpt.require(cfg, "model_name", str, cfg_file), meta


def restore_arrays(template: dict, state: dict, arr_file: str, exact: tuple[str, ...]) -> dict:
    """``state`` restored into ``template``'s structure; the leaves under the ``exact`` entries
    must have the template's shapes (others, e.g. a standardization, are checked by the caller)."""
    try:
        restored = serialization.from_state_dict(template, state)
    except (ValueError, KeyError, TypeError) as e:
        raise ckpt.CheckpointError(f"{arr_file}: arrays do not match the architecture ({e})") from None
    for k in exact:
        ckpt.check_shapes(restored[k], template[k], arr_file)
    return restored


def check_standardization(st: dict, d: int, y_shape, arr_file: str) -> Standardization:
    """Standardization arrays: theta ``[d]``; y loc/scale broadcasting to ``y_shape``; scales > 0."""
    for k in ("theta_loc", "theta_scale"):
        if np.shape(st[k]) != (d,):
            raise ckpt.CheckpointError(f"{arr_file}: standardization {k} has shape {np.shape(st[k])}, expected ({d},)")
    try:
        if np.broadcast_shapes(np.shape(st["y_loc"]), np.shape(st["y_scale"]), tuple(y_shape)) != tuple(y_shape):
            raise ValueError
    except ValueError:
        raise ckpt.CheckpointError(f"{arr_file}: data standardization does not fit {tuple(y_shape)}") from None
    for k in ("theta_scale", "y_scale"):
        if not (np.asarray(st[k]) > 0).all():
            raise ckpt.CheckpointError(f"{arr_file}: standardization {k} has non-positive entries")
    return Standardization(**{k: jnp.asarray(v, jnp.float32) for k, v in st.items()})


def _load_nle(cfg: dict, state: dict, path: str) -> LikelihoodEstimator:
    """Loader registered for kind ``"nle"`` (see :func:`~amortflow.estimators.checkpoint.load_estimator`).
    An estimator trained on a ``summary_fn`` comes back without it (see
    :meth:`LikelihoodEstimator.with_summary_fn`)."""
    cfg_file, arr_file = ckpt.checkpoint_files(path)
    s = ckpt.require(cfg, "spec", dict, cfg_file)
    dim = spec_field(s, "dim", lambda v: is_count(v) and v > 0, "a positive integer", cfg_file)
    x_dim = spec_field(s, "x_dim", lambda v: is_count(v) and v > 0, "a positive integer", cfg_file)
    obs_shape = tuple(spec_field(s, "obs_shape", is_shape, "a list of positive integers", cfg_file))
    fn_name = spec_field(s, "summary_fn_name", lambda v: v is None or (isinstance(v, str) and v),
                         "null or a non-empty string", cfg_file)
    if fn_name is None and x_dim != int(np.prod(obs_shape)):
        raise ckpt.CheckpointError(f"{cfg_file}: field 'spec.x_dim' is {x_dim} but the flattened "
                                   f"observation {obs_shape} has {int(np.prod(obs_shape))} values")
    flow = net_spec_field(s, "flow", cfg_file)
    if not isinstance(flow, FlowSpec):
        raise ckpt.CheckpointError(f"{cfg_file}: field 'spec.flow' is a {flow.kind} spec, not a flow")
    spec = NLESpec(dim=dim, obs_shape=obs_shape,
                   obs_kind=spec_field(s, "obs_kind", lambda v: isinstance(v, str), "a string", cfg_file),
                   x_dim=x_dim, flow=flow, summary_fn_name=fn_name)
    names, model_name, meta = common_fields(cfg, cfg_file, dim)
    if not isinstance(state.get("probe"), dict):
        raise ckpt.CheckpointError(f"{arr_file}: no probe datasets (entry 'probe')")
    p = np.shape(state["probe"].get("y", np.zeros(0)))[0] if np.ndim(state["probe"].get("y", 0)) else 0
    template = {
        "params": init_nle_params(spec, jax.random.PRNGKey(0)),
        "standardization": {"theta_loc": np.zeros(dim, np.float32), "theta_scale": np.ones(dim, np.float32),
                            "y_loc": np.zeros(x_dim, np.float32), "y_scale": np.ones(x_dim, np.float32)},
        "probe": {"y": np.zeros((p,) + obs_shape, np.float32), "x": np.zeros((p, x_dim), np.float32)},
    }
    restored = restore_arrays(template, state, arr_file, ("params", "standardization", "probe"))
    std = check_standardization(restored["standardization"], dim, (x_dim,), arr_file)
    probe = {k: np.asarray(v, np.float32) for k, v in restored["probe"].items()}
    if fn_name is None and _probe_mismatch(probe["y"].reshape(p, -1), probe["x"]) > 0:
        raise ckpt.CheckpointError(f"{arr_file}: probe data and their flattened values disagree")
    return LikelihoodEstimator(
        spec=spec, params=jax.tree_util.tree_map(jnp.asarray, restored["params"]), standardization=std,
        probe=probe, param_names=names, model_name=model_name, summary_fn=None, model=None,
        history=meta["history"], train_config=meta["train_config"],
        extra={**meta["extra"], "loaded_from": path, "saved_with": cfg.get("amortflow_version")})


def load_likelihood_estimator(path, summary_fn: Callable | None = None, model: Model | None = None):
    """:func:`~amortflow.estimators.checkpoint.load_estimator` for an NLE file, with its
    ``summary_fn`` re-supplied (checked on the probe datasets) and, optionally, bound to
    ``model`` for sampling."""
    est = ckpt.load_estimator(path)
    if not isinstance(est, LikelihoodEstimator):
        raise ckpt.CheckpointError(f"{path}: holds a {est.kind!r} estimator, not an NLE")
    if summary_fn is not None:
        est = est.with_summary_fn(summary_fn)
    elif est.spec.summary_fn_name is not None:
        raise ConfigError(f"{path}: the estimator was trained on x = {est.spec.summary_fn_name}(y); "
                          "pass summary_fn=... (a Python function cannot be saved)")
    return est if model is None else est.with_model(model)


ckpt.register_estimator_kind("nle", _load_nle)

__all__ = ["NLESpec", "LikelihoodEstimator", "fit_likelihood", "load_likelihood_estimator", "nle_log_prob",
           "nle_loss", "features", "SurrogateLikelihood"]
