"""What a real cluster's controller manager does after a DELETE: garbage collection of
dependents whose owners are all gone, orphaning on `propagationPolicy=Orphan`, and finishing a
terminating Namespace or CRD once its contents are gone."""

from __future__ import annotations

import asyncio
import copy
from typing import Callable

from .registry import ResourceType, Types
from .store import Key, Store

# Deletes one stored object the way a DELETE without options does (finalizers honoured).
DeleteFn = Callable[[ResourceType, str | None, str], object]
# Removes an object whose deletion is complete, with what the server owes its watchers.
FinishFn = Callable[[ResourceType, Key], object]

NAMESPACES = "/namespaces"
CRDS = "apiextensions.k8s.io/customresourcedefinitions"


class GarbageCollector:
    """Sweeps the store after every deletion (and once a second): the server wakes it, and
    it deletes through the server's own `delete`, so what it removes goes through finalizers
    and reaches watchers like any client's deletion."""

    def __init__(self, store: Store, types: Types, delete: DeleteFn, finish_delete: FinishFn,
                 interval: float) -> None:
        self.store = store
        self.types = types
        self.delete = delete
        self.finish_delete = finish_delete
        self.interval = interval
        self._wakeup: asyncio.Event | None = None

    def wake(self) -> None:
        """Asks for a sweep soon; before `run` has started there is nothing to wake."""
        if self._wakeup is not None:
            self._wakeup.set()

    def orphan(self, owner_uid: str) -> None:
        """Drops the owner reference to `owner_uid` from its dependents, which then outlive it."""
        for key, obj in list(self.store.objects.items()):
            refs = obj["metadata"].get("ownerReferences") or []
            if any(r.get("uid") == owner_uid for r in refs):
                new = copy.deepcopy(obj)
                new["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != owner_uid]
                if not new["metadata"]["ownerReferences"]:
                    del new["metadata"]["ownerReferences"]
                self.store.put(key, new)

    def sweep(self) -> bool:
        """One sweep; True when it changed anything (the next one may then find more)."""
        changed = False
        uids = self.store.uids()
        by_storage = self.types.by_storage()
        for key, obj in list(self.store.objects.items()):
            refs = obj["metadata"].get("ownerReferences") or []
            if refs and not any(r.get("uid") in uids for r in refs) and not obj["metadata"].get("deletionTimestamp"):
                rtype = by_storage.get(key[0])
                if rtype is None:
                    continue
                self.delete(rtype, key[1] or None, key[2])
                changed = True
        for key, obj in list(self.store.objects.items()):
            if not obj["metadata"].get("deletionTimestamp"):
                continue
            if key[0] == NAMESPACES:
                changed |= self._finish_namespace(key, obj, by_storage)
            elif key[0] == CRDS:
                changed |= self._finish_crd(key, obj, by_storage)
        return changed

    def _finish_namespace(self, key: Key, obj: dict, by_storage: dict[str, ResourceType]) -> bool:
        """Deletes a terminating namespace's contents; removes the namespace once it is empty
        and its finalizers are gone."""
        changed = False
        ns = key[2]
        contents = [k for k in self.store.objects if k[1] == ns and k[0] != NAMESPACES]
        for ckey in contents:
            rtype = by_storage.get(ckey[0])
            cobj = self.store.objects.get(ckey)
            if rtype and cobj and not cobj["metadata"].get("deletionTimestamp"):
                self.delete(rtype, ns, ckey[2])
                changed = True
        if not contents and not obj["metadata"].get("finalizers"):
            self.store.remove(key)
            changed = True
        return changed

    def _finish_crd(self, key: Key, obj: dict, by_storage: dict[str, ResourceType]) -> bool:
        """Deletes every object of a deleted CRD's resource; removes the CRD once none is left."""
        changed = False
        crd_type = self.types.get(obj["spec"]["group"], obj["spec"]["names"]["plural"])
        storage = crd_type.storage if crd_type else f"{obj['spec']['group']}/{obj['spec']['names']['plural']}"
        contents = [k for k in self.store.objects if k[0] == storage]
        for ckey in contents:
            cobj = self.store.objects.get(ckey)
            if crd_type and cobj and not cobj["metadata"].get("deletionTimestamp"):
                self.delete(crd_type, ckey[1] or None, ckey[2])
                changed = True
        if not contents and not obj["metadata"].get("finalizers"):
            self.finish_delete(by_storage[key[0]], key)
            changed = True
        return changed

    async def run(self) -> None:
        """Sweeps until cancelled: after each wake-up, or after a second without one."""
        self._wakeup = asyncio.Event()
        while True:
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                pass
            self._wakeup.clear()
            # Real garbage collection is asynchronous too; a short delay lets clients observe it.
            await asyncio.sleep(self.interval)
            while self.sweep():
                pass
