"""Reading and writing the JSON side of amortflow's files, with errors that name the file.

Every file is written to ``<path>.tmp`` and renamed, so a killed process leaves the old file or
the new one, never half of one. Reading raises the caller's error type (``CheckpointError``,
``ProgressError``, ...) with the path and what to do, never a bare ``JSONDecodeError``.
"""
from __future__ import annotations

import json
import os
from typing import Any


def write_json(path: str, obj: Any, **dump_kw) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, **dump_kw)
    os.replace(tmp, path)


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def read_json(path: str, error: type[Exception], todo: str) -> dict:
    """The JSON object in ``path``; ``error(message)`` if it is missing, not JSON or not an
    object. ``todo`` says what to do (e.g. ``"re-save the result"``)."""
    try:
        with open(path) as f:
            out = json.load(f)
    except FileNotFoundError:
        raise error(f"{path} is missing; {todo}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path} is damaged (not valid JSON: {e}); {todo}") from None
    if not isinstance(out, dict):
        raise error(f"{path} does not hold a JSON object; {todo}")
    return out
