"""Point-estimator heads: features ``[..., f]`` -> outputs ``[..., m, d]`` (``m`` outputs per
parameter, ``d`` parameters), with quantile blocks monotone by construction."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from amortflow.nets.layers import MLP


def monotone_blocks(raw, blocks: Sequence[tuple[int, int]]):
    """Make output slots ``[start, stop)`` of each block non-decreasing along axis ``-2``.

    ``raw [..., m, d]``: in each block the first slot is taken as is (the lowest quantile) and
    every further slot adds ``softplus`` of its raw value to the previous one (cumulative sum),
    so ``out[j] >= out[j - 1]`` holds for every input and every parameter value -- quantiles
    never cross, trained or not. Slots outside the blocks pass through unchanged.
    """
    if not blocks:
        return raw
    parts, pos = [], 0
    for start, stop in blocks:
        parts.append(raw[..., pos:start, :])
        g = raw[..., start:stop, :]
        steps = jnp.concatenate([g[..., :1, :], jax.nn.softplus(g[..., 1:, :])], axis=-2)
        parts.append(jnp.cumsum(steps, axis=-2))
        pos = stop
    parts.append(raw[..., pos:, :])
    return jnp.concatenate(parts, axis=-2)


class PointHead(nn.Module):
    """MLP head: features ``[..., f]`` -> ``[..., num_outputs, dim]``.

    ``monotone``: ``(start, stop)`` output blocks made non-decreasing by :func:`monotone_blocks`
    (the levels of a quantile estimator, lowest first).
    """

    dim: int
    num_outputs: int
    hidden: Sequence[int] = (128, 128)
    act: str = "gelu"
    monotone: tuple[tuple[int, int], ...] = ()

    @nn.compact
    def __call__(self, x):
        raw = MLP(tuple(self.hidden), self.num_outputs * self.dim, self.act)(x)
        raw = raw.reshape(raw.shape[:-1] + (self.num_outputs, self.dim))
        return monotone_blocks(raw, self.monotone)
