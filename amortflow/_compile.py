"""One explicit, bounded cache of compiled functions.

Compiled samplers, dataset maps and initialisers are keyed by what they close over (model,
config, layout, device set). A model hashes by identity, so a long session that builds many
models would grow an unbounded dict; this cache evicts the least recently used entry beyond
``maxsize``. Functions that compile take ``cache=`` (default :data:`DEFAULT_CACHE`), so a caller
can isolate or drop compilations by passing its own :class:`CompileCache`.
"""
from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Hashable


class CompileCache:
    """LRU mapping ``key -> compiled object``, at most ``maxsize`` entries (thread-safe)."""

    def __init__(self, maxsize: int = 64):
        if maxsize < 1:
            raise ValueError(f"CompileCache: maxsize must be >= 1, got {maxsize}")
        self.maxsize = int(maxsize)
        self._items: collections.OrderedDict[Hashable, Any] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, build: Callable[[], Any]) -> tuple[Any, bool]:
        """``(value, was_cached)``; ``build()`` runs (outside the lock) on a miss."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key], True
        value = build()
        with self._lock:
            self.misses += 1
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
        return value, False

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


DEFAULT_CACHE = CompileCache()
"""The cache used when a caller passes none (bounded, so identity-keyed models do not leak)."""
