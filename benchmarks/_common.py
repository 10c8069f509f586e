"""Shared helpers for benchmarks: environment record, timing, JSON output, roofline."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def environment() -> dict:
    import amortflow

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(__file__)).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": commit,
        "amortflow": amortflow.__version__,
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_average": os.getloadavg(),
    }


def best_time(fn, repeats: int = 3) -> float:
    """Minimum wall time of ``fn()`` (which must block until its result is ready)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def sgemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Measured float32 matrix-multiply rate of this machine (the roofline), GFLOP/s."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    mm = jax.jit(jnp.dot)
    mm(a, b).block_until_ready()
    t = best_time(lambda: mm(a, b).block_until_ready(), repeats)
    return 2.0 * n**3 / t / 1e9


def compiled_flops(jitted, *args, **kwargs) -> float | None:
    """FLOPs XLA counts for one call of a jitted function (None if unavailable)."""
    try:
        ca = jitted.lower(*args, **kwargs).compile().cost_analysis()
        if isinstance(ca, (list, tuple)):
            ca = ca[0]
        return float(ca.get("flops", np.nan))
    except Exception:  # noqa: BLE001 - cost analysis is best-effort across backends
        return None


def write_result(name: str, payload: dict) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    payload = {"benchmark": name, "environment": environment(), **payload}
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=lambda o: np.asarray(o).tolist())
    print(f"wrote {path}")
    return path
