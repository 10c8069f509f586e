"""Saving and loading estimators as data: ``estimator.json`` (configuration, names, library
version, training history) + ``arrays.msgpack`` (Flax msgpack of parameters and
standardization). Loading validates every field and every array shape against the architecture
rebuilt from the JSON; nothing in a file is ever executed.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from amortflow._version import __version__
from amortflow.nets.specs import spec_from_dict, spec_to_dict

FORMAT = "amortflow-estimator"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A saved estimator is missing, malformed, or does not match its declared architecture."""


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.generic, jax.Array, np.ndarray)):
        return np.asarray(obj).tolist()
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)
    return obj


def save_estimator(est, path) -> None:
    """Write ``est`` (a :class:`~amortflow.estimators.npe.PosteriorEstimator`) to directory ``path``."""
    os.makedirs(path, exist_ok=True)
    spec = est.spec
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "amortflow_version": __version__,
        "kind": est.kind,
        "model_name": est.model_name,
        "param_names": list(est.param_names),
        "spec": {
            "dim": spec.dim,
            "obs_shape": list(spec.obs_shape),
            "obs_kind": spec.obs_kind,
            "num_conditions": spec.num_conditions,
            "summary": spec_to_dict(spec.summary),
            "flow": spec_to_dict(spec.flow),
        },
        "train_config": _jsonable(est.train_config),
        "history": _jsonable(est.history),
        "extra": _jsonable(est.extra),
    }
    arrays = {"params": est.params, "standardization": est.standardization._asdict()}
    tmp = os.path.join(path, "arrays.msgpack.tmp")
    with open(tmp, "wb") as f:
        f.write(serialization.to_bytes(arrays))
    os.replace(tmp, os.path.join(path, "arrays.msgpack"))
    with open(os.path.join(path, "estimator.json"), "w") as f:
        json.dump(config, f, indent=1)


def _require(cfg, key, typ, where="estimator.json"):
    if key not in cfg:
        raise CheckpointError(f"{where}: missing field {key!r}")
    if not isinstance(cfg[key], typ):
        raise CheckpointError(f"{where}: field {key!r} should be {typ}, got {type(cfg[key]).__name__}")
    return cfg[key]


def load_estimator(path):
    """Load an estimator written by ``est.save(path)``; validates configuration and arrays.

    Raises:
      CheckpointError: missing files, unknown format/version, or arrays that do not match the
        architecture described in the JSON.
    """
    from amortflow.estimators.npe import NPESpec, PosteriorEstimator, Standardization, init_params

    cfg_file = os.path.join(path, "estimator.json")
    arr_file = os.path.join(path, "arrays.msgpack")
    for f in (cfg_file, arr_file):
        if not os.path.isfile(f):
            raise CheckpointError(f"{path}: no {os.path.basename(f)} (not a saved amortflow estimator)")
    try:
        with open(cfg_file) as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_file}: not an amortflow estimator file")
    if _require(cfg, "format_version", int) > FORMAT_VERSION:
        raise CheckpointError(
            f"{cfg_file}: format version {cfg['format_version']} is newer than this amortflow "
            f"({__version__}) understands; upgrade amortflow"
        )
    if _require(cfg, "kind", str) != "npe":
        raise CheckpointError(f"{cfg_file}: unsupported estimator kind {cfg['kind']!r}")
    s = _require(cfg, "spec", dict)
    try:
        spec = NPESpec(
            dim=int(_require(s, "dim", int, "spec")),
            obs_shape=tuple(int(v) for v in _require(s, "obs_shape", list, "spec")),
            obs_kind=str(_require(s, "obs_kind", str, "spec")),
            summary=spec_from_dict(_require(s, "summary", dict, "spec")),
            flow=spec_from_dict(_require(s, "flow", dict, "spec")),
            num_conditions=int(s.get("num_conditions", 0)),
        )
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_file}: invalid architecture ({e})") from None
    names = tuple(_require(cfg, "param_names", list))
    if len(names) != spec.dim:
        raise CheckpointError(f"{cfg_file}: {len(names)} parameter names for dimension {spec.dim}")

    template_params = init_params(spec, jax.random.PRNGKey(0))
    d = spec.dim
    template = {
        "params": template_params,
        "standardization": {"theta_loc": np.zeros(d, np.float32), "theta_scale": np.ones(d, np.float32),
                            "y_loc": np.zeros(0, np.float32), "y_scale": np.zeros(0, np.float32)},
    }
    with open(arr_file, "rb") as f:
        raw = serialization.msgpack_restore(f.read())
    try:
        restored = serialization.from_state_dict(template, raw)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{arr_file}: arrays do not match the architecture ({e})") from None
    for (kp, a), b in zip(jax.tree_util.tree_leaves_with_path(restored["params"]),
                          jax.tree_util.tree_leaves(template_params)):
        if np.shape(a) != np.shape(b):
            raise CheckpointError(
                f"{arr_file}: array {jax.tree_util.keystr(kp)} has shape {np.shape(a)}, "
                f"architecture needs {np.shape(b)}"
            )
    st = restored["standardization"]
    for k in ("theta_loc", "theta_scale"):
        if np.shape(st[k]) != (d,):
            raise CheckpointError(f"{arr_file}: standardization {k} has shape {np.shape(st[k])}, expected ({d},)")
    try:
        np.broadcast_shapes(np.shape(st["y_loc"]), np.shape(st["y_scale"]), spec.obs_shape)
    except ValueError:
        raise CheckpointError(f"{arr_file}: observation standardization does not fit {spec.obs_shape}") from None
    return PosteriorEstimator(
        spec=spec,
        params=jax.tree_util.tree_map(jnp.asarray, restored["params"]),
        standardization=Standardization(**{k: jnp.asarray(v) for k, v in st.items()}),
        param_names=names,
        model_name=str(_require(cfg, "model_name", str)),
        history=cfg.get("history", {}),
        train_config=cfg.get("train_config", {}),
        extra={**cfg.get("extra", {}), "loaded_from": str(path), "saved_with": cfg.get("amortflow_version")},
    )
