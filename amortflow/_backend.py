"""Which kind of device JAX runs on: the one place that decides CPU versus accelerator defaults
(batch layouts, sampler profiles, escalation ladders)."""
from __future__ import annotations

import jax

ACCELERATOR_BACKENDS = ("gpu", "cuda", "rocm", "tpu")


def on_accelerator() -> bool:
    """True when JAX's default backend is a GPU or TPU."""
    return jax.default_backend() in ACCELERATOR_BACKENDS
