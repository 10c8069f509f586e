"""Small Flax building blocks shared by summary networks, flows and heads."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

_ACTIVATIONS = {"gelu": nn.gelu, "relu": nn.relu, "silu": nn.silu, "tanh": jnp.tanh, "elu": nn.elu}


def activation(name: str):
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(_ACTIVATIONS)}") from None


class MLP(nn.Module):
    """Dense stack: ``[..., in] -> [..., out_dim]``; ``zero_last`` starts the output at zero."""

    hidden: Sequence[int]
    out_dim: int
    act: str = "gelu"
    zero_last: bool = False

    @nn.compact
    def __call__(self, x):
        f = activation(self.act)
        for h in self.hidden:
            x = f(nn.Dense(h)(x))
        init = nn.initializers.zeros if self.zero_last else nn.initializers.lecun_normal()
        return nn.Dense(self.out_dim, kernel_init=init)(x)
