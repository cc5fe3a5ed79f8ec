//! The node-wide owner of the kernel side: one netlink connection, the nftables tables, and
//! the set of networks realized on this node (the firewall is computed over all of them).
//! Every change goes through one lock, so concurrent reconciles never interleave their plans.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::sync::Notify;

use crate::dataplane::apply::{Applier, ApplyError, TeardownError};
use crate::dataplane::firewall::{Firewall, FirewallError, FirewallOutcome};
pub use crate::dataplane::links::marked_link_losses;
use crate::dataplane::marker::{ALIAS_PREFIX, network_of};
use crate::dataplane::netlink::{LinkKind, Netlink};
use crate::dataplane::plan::{Op, orphaned_networks};
use crate::dataplane::rtnl::Rtnl;
use crate::dataplane::{Desired, Teardown};

/// A failure of the node's data plane.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// Links, addresses, FDB or sysctls.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The node's nftables ruleset could not be listed or replaced.
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    /// Teardown of links (every failure listed).
    #[error(transparent)]
    Teardown(#[from] TeardownError),
    /// The blocking nftables call could not complete.
    #[error("nftables worker: {0}")]
    Worker(#[from] tokio::task::JoinError),
}

impl DataplaneError {
    /// Short reason for the NodeBridge's `Ready` condition and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            DataplaneError::Apply(e) => e.reason(),
            DataplaneError::Firewall(e) => e.reason(),
            DataplaneError::Teardown(_) => "TeardownFailed",
            DataplaneError::Worker(_) => "FirewallFailed",
        }
    }
}

struct State {
    networks: BTreeMap<String, Desired>,
    /// Bumped on every change of `networks`.
    version: u64,
    /// When the firewall was last verified, and at which version.
    verified: Option<(Instant, u64)>,
}

/// The kernel side of the agent, one per node: every NodeBridge is realized and removed
/// through it, one at a time.
pub struct Dataplane {
    applier: tokio::sync::Mutex<Applier<Rtnl>>,
    /// Told whenever a pass changed links: a re-created bridge has lost its ports, and the
    /// attachment side (the CNI engine's repair) puts the pods back on it.
    changed: Arc<Notify>,
    firewall: Firewall,
    state: Mutex<State>,
    /// How long a verified firewall is trusted before it is listed again.
    firewall_check_interval: Duration,
}

impl Dataplane {
    /// A data plane on the calling thread's network namespace. `firewall_check_interval`
    /// bounds how stale the nftables verification may be (drift of rules is repaired within
    /// it); a changed set of networks is always applied at once.
    pub fn new(rtnl: Rtnl, firewall: Firewall, firewall_check_interval: Duration) -> Self {
        Dataplane {
            applier: tokio::sync::Mutex::new(Applier::new(rtnl)),
            changed: Arc::default(),
            firewall,
            state: Mutex::new(State {
                networks: BTreeMap::new(),
                version: 0,
                verified: None,
            }),
            firewall_check_interval,
        }
    }

    /// Notifies `changed` (instead of a private one) after every pass that changed links.
    pub fn with_change_signal(mut self, changed: Arc<Notify>) -> Self {
        self.changed = changed;
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Single-assignment critical sections: a poisoned lock holds consistent data.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the networks known at startup (before any reconcile), so the first firewall
    /// transaction contains all of them.
    pub fn seed(&self, networks: BTreeMap<String, Desired>) {
        let mut s = self.state();
        s.networks = networks;
        s.version += 1;
    }

    /// Names of the networks currently realized.
    pub fn networks(&self) -> Vec<String> {
        self.state().networks.keys().cloned().collect()
    }

    /// Realizes one network (links, then the node's whole firewall).
    pub async fn realize(&self, desired: Desired) -> Result<Vec<Op>, DataplaneError> {
        let mut applier = self.applier.lock().await;
        let result = applier.apply(&desired).await;
        let links_changed = result.as_ref().is_ok_and(|ops| !ops.is_empty());
        if links_changed {
            self.changed.notify_one();
        }
        {
            let mut s = self.state();
            match &result {
                Ok(_) => {
                    if s.networks.get(&desired.network) != Some(&desired) {
                        s.networks.insert(desired.network.clone(), desired.clone());
                        s.version += 1;
                    }
                }
                // Never point rules at an interface that is not ours.
                Err(ApplyError::Plan(_)) => {
                    if s.networks.remove(&desired.network).is_some() {
                        s.version += 1;
                    }
                }
                Err(_) => {}
            }
        }
        // Links that had to be re-created (deleted by hand, a host network restart) often went
        // with the rules: check them now rather than when the last check expires.
        let firewall = self.sync_firewall(links_changed).await;
        let ops = result?;
        firewall?;
        Ok(ops)
    }

    /// Forgets the last firewall check: the next pass verifies the rules whatever its age
    /// (our tables were changed by someone, see [`crate::dataplane::nftmonitor`]).
    pub fn firewall_changed(&self) {
        self.state().verified = None;
    }

    /// Verifies (and if need be replaces) the node's rules; a check younger than
    /// `firewall_check_interval` for the same networks is trusted unless `force`.
    async fn sync_firewall(&self, force: bool) -> Result<FirewallOutcome, DataplaneError> {
        let (networks, version) = {
            let s = self.state();
            if let Some((at, v)) = s.verified
                && !force
                && v == s.version
                && at.elapsed() < self.firewall_check_interval
            {
                return Ok(FirewallOutcome::Unchanged);
            }
            (s.networks.values().cloned().collect::<Vec<_>>(), s.version)
        };
        let fw = self.firewall.clone();
        let outcome = tokio::task::spawn_blocking(move || fw.reconcile(&networks)).await??;
        self.state().verified = Some((Instant::now(), version));
        Ok(outcome)
    }

    /// Removes one network: its rules first (one transaction for the remaining set), then its
    /// links. Best effort: both steps run, every error is returned.
    pub async fn remove(&self, teardown: &Teardown) -> Result<(), DataplaneError> {
        let mut applier = self.applier.lock().await;
        {
            let mut s = self.state();
            s.networks.remove(&teardown.network);
            s.version += 1;
        }
        let firewall = self.sync_firewall(false).await;
        let links = applier.teardown(teardown).await;
        firewall?;
        links?;
        Ok(())
    }

    /// Tears down networks that have links on the node but no NodeBridge any more (deleted
    /// while the agent was away and their finalizer forced off). `known` holds the network of
    /// every NodeBridge of this node, valid or not.
    pub async fn collect_orphans(&self, known: &BTreeSet<String>) {
        let mut applier = self.applier.lock().await;
        let links = match applier.netlink().links().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "listing links for orphan collection failed");
                return;
            }
        };
        let orphans: Vec<Teardown> = orphaned_networks(&links, known)
            .into_iter()
            .map(|network| Teardown {
                network: network.to_owned(),
                bridge: links
                    .iter()
                    .find(|l| {
                        l.kind == LinkKind::Bridge
                            && l.alias.as_deref().and_then(network_of) == Some(network)
                    })
                    .map(|l| l.name.clone())
                    .unwrap_or_default(),
                vxlan: None,
            })
            .collect();
        for t in orphans {
            tracing::info!(network = %t.network, bridge = %t.bridge, "removing links of a network this node no longer has");
            if let Err(e) = applier.teardown(&t).await {
                tracing::warn!(network = %t.network, error = %e, "orphan teardown failed");
            }
        }
    }
}

/// A stream that yields whenever a link carrying a network's marker is deleted or set down
/// (someone ran `ip link del` or `ip link set down` on a bridge or overlay port), so drift is
/// repaired at once rather than at the next periodic resync. Empty (periodic resync only) when
/// the monitor cannot be opened.
pub fn link_deletions() -> impl Stream<Item = ()> + Send + 'static {
    marked_link_losses(ALIAS_PREFIX)
}
