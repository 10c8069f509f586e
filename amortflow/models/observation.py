"""The per-dataset observation: a pytree carrying the data ``y``, the temperature ``beta`` and any
per-dataset design data, flowing unchanged through every stage of the workflow.

One dataset is ``Observation(y [*obs_shape], beta [], design)``; a batch of ``K`` datasets has a
leading ``K`` axis on every leaf (``y [K, *obs_shape]``, ``beta [K]``, design leaves ``[K, ...]``).
Being a NamedTuple it is a JAX pytree: it can be an argument of jitted functions, ``vmap``-ed and
``lax.map``-ed over datasets, gathered by index (:func:`take`) and hashed (:func:`fingerprint_into`).

``beta`` scales the log-likelihood (power posterior ``p(theta) p(y | theta)^beta``); ``beta = 1``
is ordinary Bayes. ``design`` is ``None`` or a pytree of arrays the model's likelihood and
simulator take as a third argument (covariates, trials per stimulus, ...): a model declares that
it uses design data by ``Model.design_shape`` (see :func:`amortflow.make_model`).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Observation(NamedTuple):
    """Data, temperature and design of one dataset (or of ``K``: leading axis on every leaf)."""

    y: Any
    beta: Any = 1.0
    design: Any = None

    @property
    def num_datasets(self) -> int:
        """``K`` of a batched observation (leading axis of ``beta``)."""
        return int(np.shape(self.beta)[0])


def _is_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def observe(ys, beta=1.0, design=None, *, dtype=jnp.float32) -> Observation:
    """A batched :class:`Observation` from ``ys [K, *obs_shape]`` (array or already an
    Observation), ``beta`` scalar or ``[K]`` (broadcast), ``design`` pytree with leading ``K``.

    Traceable: used inside jitted code as well as at the API boundary.
    """
    if isinstance(ys, Observation):
        return ys
    ys = jnp.asarray(ys, dtype) if not isinstance(ys, np.ndarray) or _is_tracer(ys) else ys
    k = ys.shape[0]
    b = jnp.asarray(beta, jnp.float32) if _is_tracer(beta) else np.asarray(beta, np.float32)
    if b.ndim > 1 or (b.ndim == 1 and b.shape[0] not in (1, k)):
        raise ValueError(f"beta must be a scalar or have one value per dataset ({k}), got shape {b.shape}")
    b = (jnp if _is_tracer(b) else np).broadcast_to(b.reshape(-1) if b.ndim else b, (k,))
    return Observation(ys, b, design)


def flat_design(design, k: int):
    """The leaves of a batched ``design`` (leading ``k``), flattened and concatenated in tree
    order: ``[k, design_dim]`` float32 (traceable); ``None`` for no design. What a network sees."""
    if design is None:
        return None
    return jnp.concatenate([jnp.reshape(jnp.asarray(a, jnp.float32), (k, -1)) for a in jax.tree.leaves(design)],
                           axis=1)


def take(obs: Observation, idx) -> Observation:
    """Datasets ``idx`` of a batched observation (every leaf gathered on its leading axis)."""
    return jax.tree.map(lambda a: a[idx], obs)


def to_numpy(obs: Observation) -> Observation:
    return jax.tree.map(np.asarray, obs)


def to_device(obs: Observation) -> Observation:
    return jax.tree.map(jnp.asarray, obs)


def fingerprint_into(h, obs: Observation) -> None:
    """Feed every leaf of ``obs`` (shape, dtype and bytes, in tree order) into hash ``h``."""
    leaves, treedef = jax.tree.flatten(obs)
    h.update(str(treedef).encode())
    for leaf in leaves:
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())


__all__ = ["Observation", "observe", "take", "flat_design", "to_numpy", "to_device", "fingerprint_into"]
