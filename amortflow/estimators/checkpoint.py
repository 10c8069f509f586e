"""Saving and loading estimators as data: ``estimator.json`` (kind, architecture, names, library
version, training history, checksums) + ``arrays.msgpack`` (Flax msgpack of the arrays).

This module knows no estimator type: each kind registers a loader with
:func:`register_estimator_kind`, and :func:`load_estimator` checks what is common to all kinds
(format, version, checksums, finite arrays) before dispatching on ``kind``. Nothing in a file is
ever executed.

Format versions: 1 had no checksums (still loaded); 2 stores the sha256 of the
``arrays.msgpack`` bytes and of the canonical architecture JSON, verified on load so that an
edited or damaged file is refused instead of silently giving a different posterior.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable

import jax
import numpy as np
from flax import serialization

from amortflow._version import __version__
from amortflow.estimators.base import architecture_json, content_fingerprint

FORMAT = "amortflow-estimator"
FORMAT_VERSION = 2
CONFIG_FILE = "estimator.json"
ARRAYS_FILE = "arrays.msgpack"

#: ``loader(config, state, path) -> estimator``; filled by the modules defining estimator kinds
_LOADERS: dict[str, Callable[[dict, dict, str], Any]] = {}


from amortflow.errors import CheckpointError  # noqa: E402  (defined with the other errors)


def register_estimator_kind(kind: str, loader: Callable[[dict, dict, str], Any]) -> None:
    """Make :func:`load_estimator` answer files of ``kind`` with ``loader``.

    ``loader(config, state, path)`` gets the parsed ``estimator.json`` (format, version and
    checksums already verified), the raw msgpack state dict (nested dicts of numpy arrays, all
    finite) and the directory; it validates its own fields (raising :class:`CheckpointError`
    naming the file and field) and returns the estimator.
    """
    _LOADERS[kind] = loader


def registered_kinds() -> tuple[str, ...]:
    return tuple(sorted(_LOADERS))


def checkpoint_files(path) -> tuple[str, str]:
    """``(estimator.json path, arrays.msgpack path)`` inside directory ``path``."""
    return os.path.join(path, CONFIG_FILE), os.path.join(path, ARRAYS_FILE)


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


def _architecture_sha256(kind, spec, param_names) -> str:
    return hashlib.sha256(architecture_json(kind, spec, param_names)).hexdigest()


class Checkpointed:
    """``fingerprint()`` and ``save()`` for an estimator that defines ``_spec_dict()`` (its
    JSON-ready architecture) and ``_arrays()`` (parameters, standardization, ...) and carries
    ``kind``, ``param_names``, ``model_name``, ``train_config``, ``history`` and ``extra``."""

    def fingerprint(self) -> str:
        """sha256 of kind, architecture, parameter names and every array (parameters,
        standardization, ...): equal for equal estimators, also across save / load."""
        return content_fingerprint(self.kind, self._spec_dict(), self.param_names, self._arrays())

    def save(self, path) -> None:
        """Write the estimator to directory ``path`` (JSON config + msgpack arrays; loaded by
        ``load_estimator``)."""
        write_estimator(path, kind=self.kind, spec=self._spec_dict(), param_names=self.param_names,
                        model_name=self.model_name, arrays=self._arrays(), train_config=self.train_config,
                        history=self.history, extra=self.extra)


def write_estimator(path, *, kind: str, spec: dict, param_names, model_name: str, arrays,
                    **fields) -> None:
    """Write an estimator of ``kind`` to directory ``path``.

    Args:
      spec: JSON-ready architecture (lists, not tuples); what the loader rebuilds from.
      arrays: pytree of arrays (``serialization.to_state_dict``-able).
      fields: further JSON-ready entries (training history, configuration, ...).
    """
    os.makedirs(path, exist_ok=True)
    cfg_file, arr_file = checkpoint_files(path)
    blob = serialization.to_bytes(arrays)
    spec = json.loads(json.dumps(_jsonable(spec)))  # hash what a reader will parse back
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "amortflow_version": __version__,
        "kind": kind,
        "model_name": model_name,
        "param_names": list(param_names),
        "spec": spec,
        "architecture_sha256": _architecture_sha256(kind, spec, param_names),
        "arrays_sha256": hashlib.sha256(blob).hexdigest(),
        **{k: _jsonable(v) for k, v in fields.items()},
    }
    # arrays first, each file replaced atomically: an interrupted save never pairs a new
    # estimator.json with old arrays (the checksum would refuse the mix anyway)
    for file, data, mode in ((arr_file, blob, "wb"), (cfg_file, json.dumps(config, indent=1), "w")):
        with open(file + ".tmp", mode) as f:
            f.write(data)
        os.replace(file + ".tmp", file)


def require(cfg: dict, key: str, typ, where: str, *, name: str | None = None):
    """``cfg[key]`` if present and of type ``typ`` (bool is not an int here), else
    :class:`CheckpointError` naming ``where`` and the field (``name``, default ``key``)."""
    name = name or key
    if key not in cfg:
        raise CheckpointError(f"{where}: missing field {name!r}")
    v = cfg[key]
    if not isinstance(v, typ) or (isinstance(v, bool) and typ is int):
        expected = getattr(typ, "__name__", str(typ))
        raise CheckpointError(f"{where}: field {name!r} should be {expected}, got {v!r}")
    return v


def check_shapes(arrays, template, where: str) -> None:
    """Every leaf of ``arrays`` has its ``template`` leaf's shape, else CheckpointError."""
    for (kp, a), b in zip(jax.tree_util.tree_leaves_with_path(arrays), jax.tree_util.tree_leaves(template)):
        if np.shape(a) != np.shape(b):
            raise CheckpointError(
                f"{where}: array {jax.tree_util.keystr(kp)} has shape {np.shape(a)}, "
                f"architecture needs {np.shape(b)}"
            )


def _check_finite(state, where: str) -> None:
    for kp, a in jax.tree_util.tree_leaves_with_path(state):
        a = np.asarray(a)
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            raise CheckpointError(
                f"{where}: array {jax.tree_util.keystr(kp)} contains NaN or infinite values; "
                "the estimator is unusable (diverged training or a damaged file): retrain it"
            )


def _damaged(file: str, what: str) -> CheckpointError:
    return CheckpointError(f"{file}: {what}: the file was modified or damaged after saving; "
                           "re-save the estimator (or retrain it)")


def load_estimator(path):
    """Load an estimator written by ``est.save(path)``, of any registered kind.

    Raises:
      CheckpointError: missing files, unknown format/version/kind, checksum mismatch (an edited
        or damaged file), undecodable or non-finite arrays, fields of the wrong type, or arrays
        that do not match the architecture described in the JSON. The message names the file.
    """
    path = str(path)
    cfg_file, arr_file = checkpoint_files(path)
    for f in (cfg_file, arr_file):
        if not os.path.isfile(f):
            raise CheckpointError(f"{path}: no {os.path.basename(f)} (not a saved amortflow estimator)")
    try:
        with open(cfg_file) as f:
            cfg = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_file}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_file}: not an amortflow estimator file")
    version = require(cfg, "format_version", int, cfg_file)
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{cfg_file}: format version {version} is newer than this amortflow "
            f"({__version__}) understands; upgrade amortflow"
        )
    kind = require(cfg, "kind", str, cfg_file)
    if kind not in _LOADERS:
        raise CheckpointError(f"{cfg_file}: unknown estimator kind {kind!r}; registered kinds: "
                              f"{list(registered_kinds())}")
    with open(arr_file, "rb") as f:
        blob = f.read()
    if version >= 2:
        arch = _architecture_sha256(kind, cfg.get("spec"), require(cfg, "param_names", list, cfg_file))
        if require(cfg, "architecture_sha256", str, cfg_file) != arch:
            raise _damaged(cfg_file, "the architecture does not match its checksum")
        if require(cfg, "arrays_sha256", str, cfg_file) != hashlib.sha256(blob).hexdigest():
            raise _damaged(arr_file, "the arrays do not match the checksum in estimator.json")
    try:
        state = serialization.msgpack_restore(blob)
    except Exception as e:  # msgpack raises several unrelated types on truncated/garbled bytes
        raise CheckpointError(f"{arr_file}: cannot be decoded ({type(e).__name__}: {e}); the file "
                              "is truncated or damaged: re-save the estimator (or retrain it)") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{arr_file}: expected a dict of arrays, got {type(state).__name__}")
    _check_finite(state, arr_file)
    try:
        return _LOADERS[kind](cfg, state, path)
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError) as e:  # a field the loader did not anticipate
        raise CheckpointError(f"{cfg_file}: invalid {kind} estimator ({type(e).__name__}: {e})") from None


def restore_flow_estimator(cfg: dict, state: dict, path: str, spec, template_params) -> dict:
    """What NPE and the point estimators load the same way: the checked parameter names
    (``spec.dim`` of them), metadata, the parameters restored into ``template_params`` (shapes
    checked) and the :class:`~amortflow.estimators.data.Standardization` (shapes, positive
    scales). Returns the estimator's constructor keywords except ``spec``."""
    import jax.numpy as jnp

    from amortflow.estimators.data import Standardization

    cfg_file, arr_file = checkpoint_files(path)
    names = require(cfg, "param_names", list, cfg_file)
    if not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{cfg_file}: field 'param_names' should be a list of strings")
    if len(names) != spec.dim:
        raise CheckpointError(f"{cfg_file}: {len(names)} parameter names for dimension {spec.dim}")
    meta = {k: require(cfg, k, dict, cfg_file) if k in cfg else {} for k in ("history", "train_config", "extra")}
    d = spec.dim
    template = {
        "params": template_params,
        "standardization": {"theta_loc": np.zeros(d, np.float32), "theta_scale": np.ones(d, np.float32),
                            "y_loc": np.zeros(0, np.float32), "y_scale": np.zeros(0, np.float32)},
    }
    try:
        restored = serialization.from_state_dict(template, state)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{arr_file}: arrays do not match the architecture ({e})") from None
    check_shapes(restored["params"], template_params, arr_file)
    st = restored["standardization"]
    for k in ("theta_loc", "theta_scale"):
        if np.shape(st[k]) != (d,):
            raise CheckpointError(f"{arr_file}: standardization {k} has shape {np.shape(st[k])}, expected ({d},)")
    try:
        np.broadcast_shapes(np.shape(st["y_loc"]), np.shape(st["y_scale"]), spec.obs_shape)
    except ValueError:
        raise CheckpointError(f"{arr_file}: observation standardization does not fit {spec.obs_shape}") from None
    for k in ("theta_scale", "y_scale"):
        if not (np.asarray(st[k]) > 0).all():
            raise CheckpointError(f"{arr_file}: standardization {k} has non-positive entries")
    return {
        "params": jax.tree_util.tree_map(jnp.asarray, restored["params"]),
        "standardization": Standardization(**{k: jnp.asarray(v) for k, v in st.items()}),
        "param_names": tuple(names),
        "model_name": require(cfg, "model_name", str, cfg_file),
        "history": meta["history"], "train_config": meta["train_config"],
        "extra": {**meta["extra"], "loaded_from": path, "saved_with": cfg.get("amortflow_version")},
    }
