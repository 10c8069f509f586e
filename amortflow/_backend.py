"""Which kind of device JAX runs on: the one place that decides CPU versus accelerator defaults
(batch layouts, sampler profiles, escalation ladders), and the one way a function is sharded
over the dataset axis."""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

ACCELERATOR_BACKENDS = ("gpu", "cuda", "rocm", "tpu")


def on_accelerator() -> bool:
    """True when JAX's default backend is a GPU or TPU."""
    return jax.default_backend() in ACCELERATOR_BACKENDS


def datasets_per_step(num_datasets: int, items_per_dataset: int, budget: int | None = None) -> int:
    """How many datasets a ``lax.map`` step evaluates together so that about ``budget`` items
    (draws, chains) are in flight: ``2**12`` on CPU, ``2**19`` on accelerators.

    On CPU the budget is set by the cache, not by memory: with 2**12 draws a conditioner's
    ``[N, 128]`` activations (2 MB) stay in L2 between the matrix multiply and the elementwise
    work that follows, while 2**19 draws (268 MB per activation) stream through DRAM
    (benchmarks/bench_amortized.py records the sweep). Accelerators want the big batch.
    """
    if budget is None:
        budget = (1 << 19) if on_accelerator() else (1 << 12)
    return int(max(1, min(num_datasets, budget // max(int(items_per_dataset), 1))))


def shard_over_datasets(local_fn: Callable, num_replicated: int = 0, devices=None) -> Callable:
    """``jax.jit`` of ``local_fn`` with its dataset axis split over ``devices``.

    The first ``num_replicated`` positional arguments are replicated (``P()``: parameters,
    standardisation), the others and every output are split on their leading axis over a 1-d
    ``"data"`` mesh (``P("data")``); that axis must be a multiple of ``len(devices)``.
    ``devices`` defaults to ``jax.devices()``; with one device this is plain ``jax.jit``.
    """
    devices = list(devices if devices is not None else jax.devices())
    if len(devices) == 1:
        return jax.jit(local_fn)
    mesh = Mesh(np.asarray(devices), ("data",))

    def sharded(*args):
        specs = (P(),) * num_replicated + (P("data"),) * (len(args) - num_replicated)
        return jax.shard_map(local_fn, mesh=mesh, in_specs=specs, out_specs=P("data"),
                             check_vma=False)(*args)

    return jax.jit(sharded)


def keys_for(key, ids):
    """``[K]`` per-dataset PRNG keys ``fold_in(key, ids[i])``: a dataset's randomness depends on
    its own id only, not on which other datasets share the call."""
    import jax.numpy as jnp

    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(ids).astype(jnp.uint32))
