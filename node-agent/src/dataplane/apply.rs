//! Executes plans through a [`Netlink`] implementation: observe → [`plan`] → minimal writes.

use std::collections::BTreeMap;

use super::netlink::{LinkChange, LinkKind, Netlink, NetlinkError};
use super::plan::{Observed, Op, PlanError, plan, plan_stale, plan_teardown, wanted_sysctls};
use super::{Desired, Teardown};

/// Why an apply failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The network cannot be realized as things stand (e.g. a foreign interface has its name).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A kernel call failed.
    #[error("network {network}: {source}")]
    Netlink {
        /// The BridgeNetwork being applied.
        network: String,
        /// The failing call.
        source: NetlinkError,
    },
    /// A link created or expected by the plan vanished while it ran (someone deleted it).
    #[error("network {network}: link {link} disappeared while being configured")]
    Vanished {
        /// The BridgeNetwork being applied.
        network: String,
        /// The link the next operation addressed by name.
        link: String,
    },
}

impl ApplyError {
    /// Short reason for the NodeBridge's `Ready` condition and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            ApplyError::Plan(p) => p.reason(),
            ApplyError::Netlink { .. } | ApplyError::Vanished { .. } => "NetlinkFailed",
        }
    }
}

/// Every error of a best-effort teardown.
#[derive(Debug, thiserror::Error)]
#[error("teardown of network {network}: {}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct TeardownError {
    /// The BridgeNetwork torn down.
    pub network: String,
    /// The failing calls, in order.
    pub errors: Vec<NetlinkError>,
}

/// Applies desired states through one netlink connection.
#[derive(Debug)]
pub struct Applier<N> {
    nl: N,
}

impl<N: Netlink> Applier<N> {
    /// An applier over `nl`: [`super::rtnl::Rtnl`] on a node, the recording
    /// `fake::FakeNetlink` (feature `testing`) in unit tests.
    pub fn new(nl: N) -> Self {
        Applier { nl }
    }

    /// The netlink implementation (tests read the fake's record through it).
    pub fn netlink(&mut self) -> &mut N {
        &mut self.nl
    }

    /// Reads what the plan for `desired` needs.
    pub async fn observe(&mut self, desired: &Desired) -> Result<Observed, ApplyError> {
        let err = |source| ApplyError::Netlink {
            network: desired.network.clone(),
            source,
        };
        let mut observed = Observed {
            bridge: self.nl.link(&desired.bridge).await.map_err(err)?,
            vxlan: self.nl.link(&desired.vxlan).await.map_err(err)?,
            ..Observed::default()
        };
        if let Some(b) = observed
            .bridge
            .as_ref()
            .filter(|b| b.kind == LinkKind::Bridge)
        {
            observed.bridge_addresses = self.nl.addresses(b.index).await.map_err(err)?;
        }
        if let Some(v) = observed
            .vxlan
            .as_ref()
            .filter(|v| matches!(v.kind, LinkKind::Vxlan(_)))
        {
            observed.flood = self.nl.flood_entries(v.index).await.map_err(err)?;
        }
        for (key, _) in wanted_sysctls(desired) {
            let value = self.nl.read_sysctl(&key).await.map_err(err)?;
            observed.sysctls.push((key, value));
        }
        Ok(observed)
    }

    /// Makes the kernel match `desired`; returns the operations performed (empty when nothing
    /// had to change).
    pub async fn apply(&mut self, desired: &Desired) -> Result<Vec<Op>, ApplyError> {
        let observed = self.observe(desired).await?;
        let mut ops = plan(desired, &observed)?;
        if !ops.is_empty() {
            // Only when something changes anyway: a no-change resync stays at a handful of
            // targeted reads, without dumping every link of the node.
            let links = self
                .nl
                .links()
                .await
                .map_err(|source| ApplyError::Netlink {
                    network: desired.network.clone(),
                    source,
                })?;
            let (before, after) = plan_stale(desired, &links);
            ops.splice(0..0, before);
            ops.extend(after);
        }
        let mut indexes = BTreeMap::new();
        for name in [&desired.bridge, &desired.vxlan] {
            for link in [&observed.bridge, &observed.vxlan].into_iter().flatten() {
                if &link.name == name {
                    indexes.insert(name.clone(), link.index);
                }
            }
        }
        for op in &ops {
            tracing::debug!(network = %desired.network, %op, "applying");
            self.execute(&desired.network, op, &mut indexes).await?;
        }
        if !ops.is_empty() {
            tracing::info!(network = %desired.network, bridge = %desired.bridge, changes = ops.len(), "network programmed");
        }
        Ok(ops)
    }

    async fn index(
        &mut self,
        network: &str,
        name: &str,
        indexes: &mut BTreeMap<String, u32>,
    ) -> Result<u32, ApplyError> {
        if let Some(i) = indexes.get(name) {
            return Ok(*i);
        }
        let link = self
            .nl
            .link(name)
            .await
            .map_err(|source| ApplyError::Netlink {
                network: network.to_owned(),
                source,
            })?
            .ok_or_else(|| ApplyError::Vanished {
                network: network.to_owned(),
                link: name.to_owned(),
            })?;
        indexes.insert(name.to_owned(), link.index);
        Ok(link.index)
    }

    async fn execute(
        &mut self,
        network: &str,
        op: &Op,
        indexes: &mut BTreeMap<String, u32>,
    ) -> Result<(), ApplyError> {
        let err = |source| ApplyError::Netlink {
            network: network.to_owned(),
            source,
        };
        match op {
            Op::WriteSysctl { key, value } => self.nl.write_sysctl(key, value).await.map_err(err),
            Op::CreateLink(link) => {
                indexes.remove(&link.name);
                self.nl.create_link(link).await.map_err(err)
            }
            Op::ChangeLink { link, change } => {
                let index = self.index(network, link, indexes).await?;
                let master = match &change.master {
                    Some(m) => Some(self.index(network, m, indexes).await?),
                    None => None,
                };
                let change = LinkChange {
                    alias: change.alias.clone(),
                    mtu: change.mtu,
                    mac: change.mac,
                    master,
                    up: change.up,
                };
                self.nl.change_link(index, &change).await.map_err(err)
            }
            Op::DeleteLink { link } => {
                let index = self.index(network, link, indexes).await?;
                indexes.remove(link);
                self.nl.delete_link(index).await.map_err(err)
            }
            Op::AddAddress { link, addr } => {
                let index = self.index(network, link, indexes).await?;
                self.nl.add_address(index, *addr).await.map_err(err)
            }
            Op::DeleteAddress { link, addr } => {
                let index = self.index(network, link, indexes).await?;
                self.nl.delete_address(index, *addr).await.map_err(err)
            }
            Op::AppendFlood { link, dst } => {
                let index = self.index(network, link, indexes).await?;
                self.nl.append_flood(index, *dst).await.map_err(err)
            }
            Op::DeleteFlood { link, dst } => {
                let index = self.index(network, link, indexes).await?;
                self.nl.delete_flood(index, *dst).await.map_err(err)
            }
        }
    }

    /// Removes every link and address bridgenet made for `teardown.network`: overlay, gateway
    /// addresses, bridge. Best effort: every step is tried, objects already gone count as
    /// removed, and all failures are returned together. Running it again succeeds.
    pub async fn teardown(&mut self, teardown: &Teardown) -> Result<Vec<Op>, TeardownError> {
        let fail = |errors| TeardownError {
            network: teardown.network.clone(),
            errors,
        };
        let links = self.nl.links().await.map_err(|e| fail(vec![e]))?;
        let alias = super::marker::alias_of(&teardown.network);
        let bridge = links
            .iter()
            .find(|l| l.name == teardown.bridge && l.alias.as_deref() == Some(alias.as_str()));
        let addresses = match bridge {
            Some(b) => self
                .nl
                .addresses(b.index)
                .await
                .map_err(|e| fail(vec![e]))?,
            None => Vec::new(),
        };
        let ops = plan_teardown(teardown, &links, &addresses);
        let indexes: BTreeMap<&str, u32> =
            links.iter().map(|l| (l.name.as_str(), l.index)).collect();
        let mut errors = Vec::new();
        for op in &ops {
            let result = match op {
                Op::DeleteLink { link } => match indexes.get(link.as_str()) {
                    Some(i) => self.nl.delete_link(*i).await,
                    None => Ok(()),
                },
                Op::DeleteAddress { link, addr } => match indexes.get(link.as_str()) {
                    Some(i) => self.nl.delete_address(*i, *addr).await,
                    None => Ok(()),
                },
                // plan_teardown only deletes links and addresses.
                _ => Ok(()),
            };
            match result {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            if !ops.is_empty() {
                tracing::info!(network = %teardown.network, bridge = %teardown.bridge, "network removed from node");
            }
            Ok(ops)
        } else {
            Err(fail(errors))
        }
    }
}
