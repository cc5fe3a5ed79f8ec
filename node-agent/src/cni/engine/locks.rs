//! Per-sandbox mutual exclusion for the engine.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};

use tokio::sync::{Mutex, OwnedMutexGuard};

/// One lock per sandbox: a CNI call, a hot-plug change and a repair of the same sandbox never
/// interleave (a repair must not re-create an interface that a DEL is deleting, nor one that
/// an ADD is still creating), while calls for different sandboxes run in parallel.
#[derive(Default)]
pub(super) struct SandboxLocks {
    /// Entries exist only while someone holds or waits for the lock.
    held: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// A held sandbox lock; the map entry goes with its last holder.
pub(super) struct SandboxGuard<'a> {
    locks: &'a SandboxLocks,
    id: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl SandboxLocks {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Mutex<()>>>> {
        // Every critical section is one map operation: a poisoned lock holds no torn state.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn entry(&self, id: &str) -> Arc<Mutex<()>> {
        self.map().entry(id.to_owned()).or_default().clone()
    }

    pub(super) async fn lock(&self, id: &str) -> SandboxGuard<'_> {
        let guard = self.entry(id).lock_owned().await;
        SandboxGuard {
            locks: self,
            id: id.to_owned(),
            guard: Some(guard),
        }
    }

    pub(super) fn try_lock(&self, id: &str) -> Option<SandboxGuard<'_>> {
        let held = self.entry(id).try_lock_owned().ok();
        match held {
            Some(guard) => Some(SandboxGuard {
                locks: self,
                id: id.to_owned(),
                guard: Some(guard),
            }),
            None => {
                self.release(id);
                None
            }
        }
    }

    pub(super) fn is_busy(&self, id: &str) -> bool {
        self.map().contains_key(id)
    }

    /// Drops the entry of `id` unless someone else still holds or awaits it.
    fn release(&self, id: &str) {
        let mut map = self.map();
        if map.get(id).is_some_and(|m| Arc::strong_count(m) == 1) {
            map.remove(id);
        }
    }
}

impl Drop for SandboxGuard<'_> {
    fn drop(&mut self) {
        // The guard holds a reference to the entry: release it before counting holders.
        drop(self.guard.take());
        self.locks.release(&self.id);
    }
}
