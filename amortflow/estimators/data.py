"""Training data shared by every estimator: prior-predictive simulation banks, the held-out
validation split, online simulation (:func:`training_data`), the identity a resumable checkpoint
records (:func:`training_identity`), and the affine standardization an estimator applies to its
inputs.

Shapes: ``N`` simulations, ``d`` parameters.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import numbers
import warnings
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from amortflow.errors import ConfigError
from amortflow.models.base import Model
from amortflow.models.symmetry import augment_batch

#: above this fraction of non-finite simulations the simulator or the prior is broken
MAX_NONFINITE_FRACTION = 0.1


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


def simulate_bank(key, model: Model, num_simulations: int, *, chunk: int = 4096, progress: bool = True):
    """Simulate ``(theta [N, d], ys [N, *obs_shape])`` from the prior predictive, in compiled
    chunks, dropping simulations with non-finite output (``N`` may be below
    ``num_simulations``; a warning names how many were dropped). A model with design data
    gives ``(theta, ys, design [N, design_dim])``: designs from its
    :attr:`~amortflow.models.Model.design_sampler`, flattened as the networks see them.

    Raises:
      ValueError: if more than 10% of the simulations are non-finite.
    """
    from tqdm.auto import tqdm

    from amortflow.models.observation import flat_design

    def draw(k, n):
        theta, y, design = model.sample_joint(k, n)
        return (theta, y) if design is None else (theta, y, flat_design(design, n))

    sim = jax.jit(draw, static_argnums=1)
    parts = []
    n_chunks = -(-num_simulations // chunk)
    for i in tqdm(range(n_chunks), desc="simulating", disable=not progress or n_chunks < 2, leave=False):
        parts.append([np.asarray(a) for a in sim(jax.random.fold_in(key, i), chunk)])
    arrays = [np.concatenate(col)[:num_simulations] for col in zip(*parts)]
    ok = np.ones(len(arrays[0]), bool)
    for a in arrays:
        ok &= np.isfinite(a.reshape(len(a), -1)).all(1)
    n_bad = int((~ok).sum())
    if ok.mean() < 1 - MAX_NONFINITE_FRACTION:
        raise ValueError(
            f"{model.name}: {n_bad} of {len(ok)} simulations are NaN/inf; "
            "check the simulator and the prior"
        )
    if n_bad:
        # dropping them biases the bank towards the prior region where the simulator is finite
        warnings.warn(
            f"{model.name}: dropped {n_bad} of {len(ok)} simulations ({n_bad / len(ok):.1%}) "
            "with NaN/inf output", stacklevel=2,
        )
    return tuple(a[ok] for a in arrays)


def split_bank(key, theta, ys, num_validation: int, *extra):
    """Random training / validation split of a bank ``theta [N, d]``, ``ys [N, *obs_shape]``
    (and any ``extra [N, ...]`` arrays, e.g. flattened designs, split alike).

    Returns:
      ``((theta_train, ys_train, *extra_train), (theta_val, ys_val, *extra_val))`` as device
      arrays, ``num_validation`` rows held out.
    Raises:
      ValueError: if ``num_validation`` leaves no training simulations.
    """
    n = len(theta)
    if len(ys) != n or any(len(e) != n for e in extra):
        raise ValueError(f"bank has {n} parameter rows but {len(ys)} datasets"
                         + "".join(f" and {len(e)} design rows" for e in extra))
    if num_validation >= n:
        raise ValueError(f"num_validation={num_validation} leaves no training simulations out of {n}")
    perm = np.asarray(jax.random.permutation(key, n))
    val_idx, tr_idx = perm[:num_validation], perm[num_validation:]
    arrays = (theta, ys) + tuple(extra)
    return tuple(jnp.asarray(a[tr_idx]) for a in arrays), tuple(jnp.asarray(a[val_idx]) for a in arrays)


# ------------------------------------------------------------------ defensive training priors
@dataclasses.dataclass(frozen=True)
class WidenedPrior:
    """A wider training prior for a proposal that must cover out-of-distribution data.

    A training draw is, with probability ``model_weight``, a draw ``theta`` of the model's prior
    and otherwise its widened version ``c + scale * (theta - c)``, ``c`` the coordinate-wise
    median of the prior in the model's unconstrained space. This works for any
    :class:`~amortflow.models.Model` (it only needs ``sample_prior`` and ``log_prior``), and
    widens a constrained parameter through its unconstrained coordinate (``log sigma``,
    ``logit`` of a bounded one).

    The estimator then learns the posterior under this prior. Used as a proposal it is
    corrected back to the model's own prior by importance weights ``p(theta, y) / q(theta | y)``
    (the workflow's PSIS stage), and the mixture's heavier tails keep those weights bounded
    where the data point outside the model prior's bulk.

    Attributes:
      scale: widening factor of the unconstrained coordinates around ``c`` (``>= 1``).
      model_weight: probability of an unwidened prior draw (in ``[0, 1]``).
    """

    scale: float = 2.0
    model_weight: float = 0.5

    def __post_init__(self):
        for name, lo, hi in (("scale", 1.0, math.inf), ("model_weight", 0.0, 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) \
                    or not lo <= v <= hi:
                rng = f">= {lo:g}" if hi == math.inf else f"in [{lo:g}, {hi:g}]"
                raise ConfigError(f"WidenedPrior.{name} must be a finite number {rng}, got {v!r}")

    def to_dict(self) -> dict:
        return {"kind": "widened", "scale": float(self.scale), "model_weight": float(self.model_weight)}


#: prior draws behind the centre of a widened prior (fixed key: the centre depends on the model only)
_CENTRE_DRAWS = 8192


def prior_centre(model: Model) -> jax.Array:
    """Coordinate-wise median ``[d]`` of ``8192`` unconstrained prior draws (fixed key)."""
    th = np.asarray(jax.jit(model.sample_prior, static_argnums=1)(jax.random.PRNGKey(0), _CENTRE_DRAWS))
    return jnp.asarray(np.median(th[np.isfinite(th).all(1)], axis=0), jnp.float32)


def widen_prior(model: Model, widened: WidenedPrior) -> Model:
    """The model with its prior replaced by ``widened`` (see :class:`WidenedPrior`); the
    simulator and likelihood are the model's own.

    ``sample_prior(key, n) -> [n, d]``; ``log_prior(theta [d])`` is the mixture's density
    ``log(w p(theta) + (1 - w) scale^-d p(c + (theta - c) / scale))``.
    """
    if not isinstance(widened, WidenedPrior):
        raise ConfigError(f"widen_prior: expected a WidenedPrior, got {type(widened).__name__}")
    centre = prior_centre(model)
    s, w, d = float(widened.scale), float(widened.model_weight), model.dim
    base_sample, base_log_prior = model.prior_sampler, model.log_prior_fn

    def sample_prior(key, n):
        k1, k2 = jax.random.split(key)
        theta = base_sample(k1, n)
        keep = jax.random.uniform(k2, (n, 1)) < w
        return jnp.where(keep, theta, centre + s * (theta - centre))

    def log_prior(theta):
        parts = []
        if w > 0:
            parts.append(math.log(w) + base_log_prior(theta))
        if w < 1:
            parts.append(math.log1p(-w) - d * math.log(s) + base_log_prior(centre + (theta - centre) / s))
        return jax.scipy.special.logsumexp(jnp.stack(parts))

    info = {**dict(model.info), "training_prior": widened.to_dict()}
    return dataclasses.replace(model, name=f"{model.name}[widened x{s:g}, w={w:g}]",
                               prior_sampler=sample_prior, log_prior_fn=log_prior, info=info)


def finite_rows(theta, ys, num: int, *extra):
    """``num`` rows of a simulated batch ``theta [M, d]``, ``ys [M, *obs_shape]`` (and
    ``extra [M, ...]``) whose values are all finite (finite rows first, repeated cyclically if
    fewer than ``num``; traceable). Online training draws ``M > num`` when the pilot simulations
    had non-finite outputs, as a simulation bank drops them."""
    arrays = (theta, ys) + tuple(extra)
    ok = jnp.ones(theta.shape[0], bool)
    for a in arrays:
        ok &= jnp.isfinite(a.reshape(a.shape[0], -1)).all(1)
    order = jnp.argsort(~ok, stable=True)
    idx = order[jnp.arange(num) % jnp.maximum(ok.sum(), 1)]
    return tuple(a[idx] for a in arrays)


class TrainingData(NamedTuple):
    """What :func:`~amortflow.estimators.training.train` needs, for every simulation-based estimator.

    For a model with design data every tuple below has a third entry, the flattened designs
    ``[., design_dim]`` (:func:`~amortflow.models.observation.flat_design`).

    data: the training bank ``(theta [N, d], ys [N, *obs_shape])`` or ``None`` (online).
    val: fixed validation pairs ``(theta [V, d], ys [V, *obs_shape])``.
    fit: ``(theta, ys)`` numpy pairs to fit the standardization on (the training bank, or the
    online pilot).
    batch_fn: ``(data, key) -> (theta [B, d], ys [B, ...])``.
    num_simulations: bank size ``N + V`` (``None`` online); num_validation: ``V``.
    simulations_hash: sha256 of the bank (of ``"online"``), for resumable checkpoints.
    """
    data: tuple | None
    val: tuple
    fit: tuple
    batch_fn: Callable
    num_simulations: int | None
    num_validation: int
    simulations_hash: str


def _check_count(owner: str, name: str, v, lo: int):
    if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo):
        raise ConfigError(f"{owner}: {name} must be a whole number >= {lo}, got {v!r}")


def _supplied_bank(model: Model, bank, owner: str) -> tuple:
    """A user's bank as float32 numpy arrays ``(theta, ys)`` or, for a model with design data,
    ``(theta, ys, design [N, design_dim])``; checked against the model."""
    from amortflow.models.observation import flat_design

    if model.uses_design != (len(bank) == 3):
        raise ConfigError(f"{owner}: model {model.name!r} " + (
            "takes per-dataset design data: pass bank=(theta, ys, design) with the design of every "
            "simulation (leading N axis)" if model.uses_design else "takes no design data: pass bank=(theta, ys)"))
    theta_bank, y_bank = np.asarray(bank[0], np.float32), np.asarray(bank[1], np.float32)
    model.check_observations(y_bank)
    model.check_theta(theta_bank)
    if not model.uses_design:
        return theta_bank, y_bank
    n = len(theta_bank)
    shapes = jax.tree.map(lambda a: tuple(np.shape(a))[1:], bank[2])
    lead = {np.shape(a)[0] if np.ndim(a) else None for a in jax.tree.leaves(bank[2])}
    if jax.tree.structure(shapes, is_leaf=lambda s: isinstance(s, tuple)) != jax.tree.structure(
            model.design_shape, is_leaf=lambda s: isinstance(s, tuple)) or lead != {n} or \
            jax.tree.leaves(shapes, is_leaf=lambda s: isinstance(s, tuple)) != \
            jax.tree.leaves(model.design_shape, is_leaf=lambda s: isinstance(s, tuple)):
        raise ConfigError(f"{owner}: the bank's designs must have the model's design shapes {model.design_shape} "
                          f"with a leading axis of {n} (one per simulation)")
    design = np.asarray(flat_design(bank[2], n), np.float32)
    if not np.isfinite(design).all():
        raise ConfigError(f"{owner}: the bank's designs contain NaN or infinite values")
    return theta_bank, y_bank, design


def training_data(key_bank, key_val, model: Model, *, num_simulations: int | None, bank,
                  num_validation: int | None, batch_size: int, owner: str, sampler: Model | None = None,
                  progress: bool = True) -> TrainingData:
    """A simulation bank (``bank`` given, or ``num_simulations`` simulated here) split into
    training and validation pairs, or online simulation (``num_simulations=None`` and no
    ``bank``: every step simulates a fresh batch inside the compiled step, validated on a fixed
    pilot bank). ``sampler`` is the model simulated from (default ``model``; a widened training
    prior in :func:`~amortflow.fit_posterior`); a supplied bank is checked against ``model``.
    Online, each step draws extra rows when the pilot had non-finite simulations, so that a batch
    of finite ones remains (a bank drops them). A bank's batches are transformed by the model's
    ``symmetry``, when it declares one. A model with design data draws designs from its
    ``design_sampler`` (a supplied bank brings its own: ``(theta, ys, design)``).
    Raises ConfigError naming a bad setting."""
    from amortflow.models.observation import flat_design

    if bank is None and num_simulations is not None:
        _check_count(owner, "num_simulations", num_simulations, 512)
    _check_count(owner, "num_validation", num_validation, 1)
    sampler = model if sampler is None else sampler
    if model.uses_design and bank is None and sampler.design_sampler is None:
        raise ConfigError(f"{owner}: model {model.name!r} takes per-dataset design data but has no design "
                          "sampler: give the designs to train over with model.with_design_sampler(fn), "
                          "or pass bank=(theta, ys, design)")
    if bank is not None:
        arrays = _supplied_bank(model, bank, owner)
    elif num_simulations is not None:
        arrays = simulate_bank(key_bank, sampler, int(num_simulations), progress=progress)
    else:
        arrays = None
    h = hashlib.sha256()
    for a in (arrays or (None, None)):
        h.update(b"online" if a is None else np.ascontiguousarray(a).tobytes())
    if arrays is not None:
        n_val = num_validation or max(256, len(arrays[0]) // 10)
        data, val = split_bank(key_val, arrays[0], arrays[1], n_val, *arrays[2:])

        symmetry = model.symmetry

        def batch_fn(d, k):
            idx = jax.random.randint(k, (batch_size,), 0, d[0].shape[0])
            ys = d[1][idx]
            # a fixed bank is seen many times: a fresh symmetric copy each time keeps a large
            # summary network from memorising it (amortflow.models.symmetry)
            ys = ys if symmetry is None else augment_batch(symmetry, jax.random.fold_in(k, 1), ys)
            return (d[0][idx], ys) + tuple(e[idx] for e in d[2:])

        return TrainingData(data, val, tuple(np.asarray(a) for a in data), batch_fn,
                            int(len(arrays[0])), int(n_val), h.hexdigest())
    n_val = num_validation or 2048
    n_pilot = max(n_val, 4096)
    pilot = simulate_bank(key_val, sampler, n_pilot, progress=False)
    val = tuple(jnp.asarray(a[:n_val]) for a in pilot)
    bad_fraction = 1.0 - len(pilot[0]) / n_pilot
    n_draw = batch_size if bad_fraction == 0 else int(math.ceil(batch_size * (1 + 2 * bad_fraction) + 16))

    def batch_fn(d, k):
        theta, ys, design = sampler.sample_joint(k, n_draw)
        out = (theta, ys) if design is None else (theta, ys, flat_design(design, n_draw))
        return out if n_draw == batch_size else finite_rows(*out[:2], batch_size, *out[2:])

    return TrainingData(None, val, pilot, batch_fn, None, int(n_val), h.hexdigest())


def training_identity(kind: str, key, model: Model, spec_repr: str, simulations_hash: str, **extra) -> dict:
    """What a resumable training checkpoint was trained on: a checkpoint of another kind, model,
    seed, simulation bank, architecture or loss must not be resumed as if it were this run's."""
    kd = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return {"kind": kind, "model": model.fingerprint(), "key": np.asarray(kd).tolist(),
            "simulations": simulations_hash, "architecture": spec_repr, **extra}
