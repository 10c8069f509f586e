"""Bijections from R to constrained intervals, with log |Jacobian|, written to stay NaN-free."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def positive_forward(u):
    """``exp``: R -> (0, inf); returns ``(x, log|dx/du|)``."""
    return jnp.exp(u), u


def positive_inverse(x):
    return jnp.log(x)


def interval_forward(v, lo, hi):
    """Scaled sigmoid: R -> (lo, hi); returns ``(x, log|dx/dv|)``."""
    x = lo + (hi - lo) * jax.nn.sigmoid(v)
    log_det = jnp.log(hi - lo) + jax.nn.log_sigmoid(v) + jax.nn.log_sigmoid(-v)
    return x, log_det


def interval_inverse(x, lo, hi):
    p = (x - lo) / (hi - lo)
    return jnp.log(p) - jnp.log1p(-p)
