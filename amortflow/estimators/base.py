"""What every estimator offers the workflow's stages: the :class:`Estimator` protocol, and the
content hash (:func:`content_fingerprint`) that resumable progress and checkpoints key on.

Shapes: ``K`` datasets, ``S`` draws per dataset, ``d`` parameters, ``c`` summary dimension.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Protocol, runtime_checkable

import jax
import numpy as np


@runtime_checkable
class Estimator(Protocol):
    """An amortized estimator answering many datasets at once.

    ``obs`` is a plain array ``[K, *obs_shape]`` (or one dataset ``[*obs_shape]``, taken as
    ``K = 1``) or an :class:`~amortflow.models.observation.Observation` carrying ``y``, the
    temperature ``beta`` and design data. An estimator not conditioned on ``beta`` ignores it:
    the workflow's importance-sampling and MCMC stages correct its draws to the tempered target.

    Attributes:
      kind: registry key of the estimator type (``"npe"``, ...); selects the checkpoint loader.
      param_names: names of the ``d`` unconstrained parameters, in order.
      model_name: the model the estimator was trained for.
      has_log_prob: whether :meth:`sample_and_log_prob` and :meth:`log_prob` exist (False for
        estimators without a density, e.g. point estimators).
    """

    kind: str
    param_names: tuple[str, ...]
    model_name: str
    has_log_prob: bool

    def sample_and_log_prob(self, key, obs, num_draws: int, *, batch_size: int | None = None,
                            dataset_ids=None):
        """``(draws [K, S, d], log_q [K, S])``; only when ``has_log_prob``. With ``dataset_ids
        [K]`` dataset ``i`` draws with ``fold_in(key, ids[i])`` (independent of the others)."""

    def sample(self, key, obs, num_draws: int, *, batch_size: int | None = None, dataset_ids=None):
        """``draws [K, S, d]`` (``dataset_ids`` as in :meth:`sample_and_log_prob`)."""

    def log_prob(self, theta, obs):
        """``log q(theta | obs)``: ``theta [K, S, d]`` -> ``[K, S]`` (see the implementation)."""

    def summaries(self, obs):
        """Summary statistics ``[K, c]`` (the space the OOD check scores in)."""

    def fingerprint(self) -> str:
        """sha256 hex digest of kind, architecture, every parameter array and the
        standardization: equal for equal estimators (also across save/load)."""

    def save(self, path) -> None:
        """Write the estimator to directory ``path`` (loadable by ``load_estimator``)."""


def is_concrete(x) -> bool:
    """True unless ``x`` is a JAX tracer (inside ``jit``/``vmap``/``grad`` values are unknown,
    so value checks such as finiteness can only run on concrete inputs)."""
    return not isinstance(x, jax.core.Tracer)


def architecture_json(kind: str, spec: dict, param_names) -> bytes:
    """Canonical JSON (sorted keys, no whitespace) of what defines an estimator's architecture:
    equal bytes for equal architectures, whichever order the dict was built in."""
    arch = {"kind": kind, "spec": spec, "param_names": list(param_names)}
    return json.dumps(arch, sort_keys=True, separators=(",", ":")).encode()


def content_fingerprint(kind: str, spec: dict, param_names, arrays: Any) -> str:
    """sha256 hex digest of the architecture (:func:`architecture_json`) and every leaf of the
    pytree ``arrays`` (its path, shape, dtype and bytes, in tree order)."""
    h = hashlib.sha256(architecture_json(kind, spec, param_names))
    for path, leaf in jax.tree_util.tree_leaves_with_path(arrays):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()
