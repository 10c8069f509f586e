"""Summary networks: observation ``[..., *obs_shape]`` -> summary ``[..., out_dim]``."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from amortflow.nets.layers import MLP, activation
from amortflow.nets.specs import DeepSetSpec, IdentitySummarySpec, MLPSummarySpec, SortedSetSpec


class DeepSet(nn.Module):
    """Invariant DeepSet over a set ``[..., n, k]`` (or ``[..., n]`` of scalars)."""

    spec: DeepSetSpec
    obs_ndim: int

    @nn.compact
    def __call__(self, y):
        if self.obs_ndim == 1:
            y = y[..., None]
        f = activation(self.spec.activation)
        h = y
        for width in self.spec.phi_hidden:
            h = f(nn.Dense(width)(h))
        pooled = []
        for p in self.spec.pooling:
            if p == "mean":
                pooled.append(h.mean(axis=-2))
            elif p == "max":
                pooled.append(h.max(axis=-2))
            elif p == "std":
                pooled.append(jnp.sqrt(h.var(axis=-2) + 1e-6))
            else:
                raise ValueError(f"unknown pooling {p!r}; use mean, max or std")
        return MLP(self.spec.rho_hidden, self.spec.out_dim, self.spec.activation)(
            jnp.concatenate(pooled, axis=-1)
        )


class SortedSetSummary(nn.Module):
    """Sort the set along its element axis (per feature), flatten, MLP."""

    spec: SortedSetSpec
    obs_ndim: int

    @nn.compact
    def __call__(self, y):
        axis = y.ndim - self.obs_ndim  # the set axis
        y = jnp.sort(y, axis=axis)
        y = y.reshape(y.shape[:axis] + (-1,))
        return MLP(self.spec.hidden, self.spec.out_dim, self.spec.activation)(y)


class MLPSummary(nn.Module):
    """Flatten the observation and apply an MLP."""

    spec: MLPSummarySpec
    obs_ndim: int

    @nn.compact
    def __call__(self, y):
        y = y.reshape(y.shape[: y.ndim - self.obs_ndim] + (-1,))
        return MLP(self.spec.hidden, self.spec.out_dim, self.spec.activation)(y)


class IdentitySummary(nn.Module):
    """The flattened observation itself."""

    spec: IdentitySummarySpec
    obs_ndim: int

    def __call__(self, y):
        return y.reshape(y.shape[: y.ndim - self.obs_ndim] + (-1,))


def build_summary(spec, obs_ndim: int) -> nn.Module:
    """Flax module for a summary spec; the module maps ``[..., *obs_shape] -> [..., out]``."""
    cls = {"deepset": DeepSet, "sorted_mlp": SortedSetSummary, "mlp": MLPSummary,
           "identity": IdentitySummary}.get(spec.kind)
    if cls is None:
        raise ValueError(f"{spec.kind!r} is not a summary network spec")
    return cls(spec=spec, obs_ndim=obs_ndim)


def default_summary_spec(obs_kind: str, obs_shape: tuple[int, ...], dim: int | None = None):
    """A summary network for the observation kind and size, and ``dim`` parameters.

    - set of scalars ``[n]``: :class:`SortedSetSpec` (order statistics + MLP);
    - set of vectors ``[n, k]``: :class:`DeepSetSpec` with mean and max pooling (sorting per
      feature would lose which features belong to one element);
    - vector of at most 16 values: the observation itself;
    - anything else: :class:`MLPSummarySpec` on the flattened observation.

    Learned summaries have ``out_dim = max(16, 2 dim)`` (``dim`` parameters; 16 if not given),
    so ten or more parameters are not squeezed through fewer summaries than they need.
    """
    out_dim = max(16, 2 * int(dim)) if dim is not None else 16
    if obs_kind == "set":
        if len(obs_shape) == 1:
            return SortedSetSpec(out_dim=out_dim)
        return DeepSetSpec(out_dim=out_dim)
    size = 1
    for s in obs_shape:
        size *= s
    if obs_kind == "vector" and size <= 16:
        return IdentitySummarySpec()
    return MLPSummarySpec(out_dim=out_dim)
