"""Object storage with one monotonic resourceVersion, a bounded event history for watches that
resume from a resourceVersion, and live watch fan-out."""

from __future__ import annotations

import asyncio
import collections
import copy
from dataclasses import dataclass, field
from typing import Any, Callable

Key = tuple[str, str, str]  # (storage, namespace or "", name)

# How many past events a watch can resume from; older resourceVersions get 410 Gone, as a
# real API server does once its watch cache has moved on.
HISTORY = 20000


@dataclass
class Event:
    rv: int
    storage: str
    type: str  # ADDED, MODIFIED, DELETED
    obj: dict
    old: dict | None


@dataclass
class Watcher:
    storage: str
    namespace: str | None
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)


class Store:
    def __init__(self, history: int = HISTORY) -> None:
        self.rv = 1
        self.objects: dict[Key, dict] = {}
        self.history: collections.deque[Event] = collections.deque(maxlen=history)
        self.watchers: list[Watcher] = []
        # Server-side apply: the last field set each (object, manager, subresource) applied.
        self.applied: dict[tuple, set] = {}
        self.on_change: list[Callable[[Event], None]] = []

    @property
    def oldest_rv(self) -> int:
        return self.history[0].rv if self.history else self.rv

    def get(self, key: Key) -> dict | None:
        return self.objects.get(key)

    def list(self, storage: str, namespace: str | None = None) -> list[dict]:
        out = [
            o for (s, ns, _), o in self.objects.items() if s == storage and (namespace is None or ns == namespace)
        ]
        out.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return out

    def uids(self) -> set[str]:
        return {o["metadata"]["uid"] for o in self.objects.values()}

    def _next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def _emit(self, storage: str, typ: str, obj: dict, old: dict | None) -> None:
        ev = Event(int(obj["metadata"]["resourceVersion"]), storage, typ, copy.deepcopy(obj), old)
        self.history.append(ev)
        for w in self.watchers:
            if w.storage == storage and (w.namespace is None or w.namespace == obj["metadata"].get("namespace", "")):
                w.queue.put_nowait(ev)
        for cb in self.on_change:
            cb(ev)

    def put(self, key: Key, obj: dict) -> dict:
        """Creates or replaces; assigns the next resourceVersion and tells the watchers."""
        old = self.objects.get(key)
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self._next_rv())
        self.objects[key] = obj
        self._emit(key[0], "MODIFIED" if old else "ADDED", obj, old)
        return copy.deepcopy(obj)

    def remove(self, key: Key, final: dict | None = None) -> dict | None:
        """Deletes; `final` is the last state watchers see (default: the stored one)."""
        old = self.objects.pop(key, None)
        if old is None:
            return None
        final = copy.deepcopy(final if final is not None else old)
        final["metadata"]["resourceVersion"] = str(self._next_rv())
        self._emit(key[0], "DELETED", final, old)
        for akey in [k for k in self.applied if k[:3] == key]:
            del self.applied[akey]
        return final

    def watch(self, storage: str, namespace: str | None) -> Watcher:
        w = Watcher(storage, namespace)
        self.watchers.append(w)
        return w

    def unwatch(self, w: Watcher) -> None:
        if w in self.watchers:
            self.watchers.remove(w)

    def events_since(self, storage: str, namespace: str | None, rv: int) -> list[Event]:
        return [
            e
            for e in self.history
            if e.rv > rv
            and e.storage == storage
            and (namespace is None or e.obj["metadata"].get("namespace", "") == namespace)
        ]


def strip(obj: dict) -> dict[str, Any]:
    """The object without the fields the server manages, to tell a real change from a no-op."""
    out = copy.deepcopy(obj)
    meta = out.get("metadata") or {}
    for k in ("resourceVersion", "managedFields", "generation"):
        meta.pop(k, None)
    return out
