//! Name resolution on every network, like Docker's embedded DNS.
//!
//! For each network of this node with `dns` on, the agent answers DNS on the network's gateway
//! addresses (IPv4, and IPv6 on dual stack), UDP and TCP port 53. The gateway is anycast, so a
//! pod always asks the agent of its own node, and every agent knows the whole network: it
//! watches every NodeBridge and builds each network's [`Zone`](zone::Zone) from the endpoints
//! all nodes report. A pod's name (in the asker's namespace), `pod.namespace` and its aliases
//! resolve to its addresses on *this* network; other single-label names are NXDOMAIN, so no
//! name leaks from another network; the rest goes upstream (see [`answer`]).
//!
//! The resolver runs beside the data plane and CNI, never in their way: it shares nothing with
//! them but the NodeBridge status book, where it sets the `ResolverReady` condition.

pub mod answer;
pub mod server;
pub mod upstream;
pub mod zone;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use bridgenet_crds::conditions::{RESOLVER_READY, Reason};
use bridgenet_crds::resolve_node_bridge;
use bridgenet_crds::v1alpha1::{Endpoint, NodeBridge};
use futures::StreamExt as _;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Api, ResourceExt as _};

use crate::metrics;
use crate::nodebridge::StatusWriter;
use server::{Listener, NetworkState, Resolver, Shared};

/// How the resolvers are set up (from the agent's flags).
#[derive(Clone, Debug)]
pub struct Settings {
    /// This node: its NodeBridges are the networks served here.
    pub node: String,
    /// Resolvers for names that are not the networks' (`--dns-upstream`).
    pub upstream: Vec<SocketAddr>,
    /// The cluster DNS, for names of `cluster_domain` (`--cluster-dns`).
    pub cluster: Vec<SocketAddr>,
    /// The cluster's DNS domain (`--cluster-domain`).
    pub cluster_domain: String,
    /// The port answered on every gateway address (53; tests use others).
    pub port: u16,
    /// Queries a second one client may ask (bursts of twice that).
    pub client_rate: u32,
}

/// Runs the resolvers of this node's networks until the NodeBridge watch ends.
pub async fn run(
    client: kube::Client,
    settings: Settings,
    status: StatusWriter,
) -> anyhow::Result<()> {
    tracing::info!(
        upstream = ?settings.upstream,
        cluster = ?settings.cluster,
        domain = %settings.cluster_domain,
        "network resolvers starting"
    );
    let resolver = Arc::new(Resolver::new(
        upstream::Upstreams::new(settings.upstream.clone(), settings.cluster.clone()),
        &settings.cluster_domain,
        settings.client_rate,
    ));
    let mut book = Book::new(settings, resolver, status);
    // Every NodeBridge: each network's names are the endpoints of all its nodes.
    let api: Api<NodeBridge> = Api::all(client);
    let mut events =
        std::pin::pin!(watcher::watcher(api, watcher::Config::default()).default_backoff());
    let mut listing: Option<BTreeMap<String, NodeBridge>> = None;
    while let Some(event) = events.next().await {
        let event = event.context("watching NodeBridges for the network resolvers")?;
        match event {
            Event::Init => listing = Some(BTreeMap::new()),
            Event::InitApply(nb) => {
                if let Some(list) = listing.as_mut() {
                    list.insert(nb.name_any(), nb);
                }
            }
            Event::InitDone => {
                if let Some(list) = listing.take() {
                    book.replace_all(list).await;
                }
            }
            Event::Apply(nb) => book.apply(nb).await,
            Event::Delete(nb) => book.delete(&nb.name_any()).await,
        }
    }
    anyhow::bail!("the NodeBridge watch of the network resolvers ended")
}

/// One NodeBridge as the resolvers need it.
#[derive(Clone, Debug)]
struct Known {
    network: String,
    endpoints: Vec<Endpoint>,
    /// This node's NodeBridge (the network is served here).
    local: Option<Box<NodeBridge>>,
}

/// A network served on this node.
struct Served {
    shared: Shared,
    /// The listeners' addresses and the spec they were made for.
    addrs: Vec<SocketAddr>,
    listeners: Vec<Listener>,
}

/// What the resolvers know, and the listeners they keep open.
struct Book {
    settings: Settings,
    resolver: Arc<Resolver>,
    status: StatusWriter,
    known: HashMap<String, Known>,
    served: HashMap<String, Served>,
}

impl Book {
    fn new(settings: Settings, resolver: Arc<Resolver>, status: StatusWriter) -> Self {
        Book {
            settings,
            resolver,
            status,
            known: HashMap::new(),
            served: HashMap::new(),
        }
    }

    fn known(&self, nb: NodeBridge) -> Known {
        let local = (nb.spec.node == self.settings.node).then(|| Box::new(nb.clone()));
        // A NodeBridge being deleted is the network leaving its node (the node deleted, or no
        // longer selected): its pods are no longer reachable there, so their names go now,
        // not when the finalizer is released.
        let leaving = nb.metadata.deletion_timestamp.is_some();
        Known {
            network: nb.spec.network.clone(),
            endpoints: match nb.status {
                Some(status) if !leaving => status.endpoints,
                _ => Vec::new(),
            },
            local,
        }
    }

    async fn apply(&mut self, nb: NodeBridge) {
        let name = nb.name_any();
        let known = self.known(nb);
        let unchanged = self.known.get(&name).is_some_and(|k| {
            k.local.is_none() && k.network == known.network && k.endpoints == known.endpoints
        });
        // Another node's NodeBridge matters only for its endpoints.
        if known.local.is_none() && unchanged {
            return;
        }
        let network = known.network.clone();
        let before = self.known.insert(name, known).map(|k| k.network);
        if let Some(old) = before.filter(|old| *old != network) {
            self.refresh(&old).await;
        }
        self.refresh(&network).await;
    }

    async fn delete(&mut self, name: &str) {
        if let Some(gone) = self.known.remove(name) {
            self.refresh(&gone.network).await;
        }
    }

    async fn replace_all(&mut self, list: BTreeMap<String, NodeBridge>) {
        let mut networks: Vec<String> = self.known.values().map(|k| k.network.clone()).collect();
        self.known = list
            .into_iter()
            .map(|(name, nb)| (name, self.known(nb)))
            .collect();
        networks.extend(self.known.values().map(|k| k.network.clone()));
        networks.sort();
        networks.dedup();
        for network in networks {
            self.refresh(&network).await;
        }
    }

    /// Brings `network`'s resolver in line with what is known: its names, its listeners, and
    /// the `ResolverReady` condition of this node's NodeBridge.
    async fn refresh(&mut self, network: &str) {
        let endpoints = self
            .known
            .values()
            .filter(|k| k.network == network)
            .flat_map(|k| k.endpoints.iter());
        let zone = zone::Zone::build(endpoints);
        let local = self
            .known
            .values()
            .find(|k| k.network == network && k.local.is_some())
            .and_then(|k| k.local.as_deref().cloned());
        let Some(local) = local.filter(|nb| nb.metadata.deletion_timestamp.is_none()) else {
            if self.served.remove(network).is_some() {
                tracing::info!(
                    network,
                    "network resolver stopped: the network left this node"
                );
            }
            metrics::set_dns_names(network, None);
            return;
        };
        let name = local.name_any();
        let generation = local.metadata.generation;
        self.status.seed(&name, local.status.as_ref());
        if !local.spec.dns {
            if self.served.remove(network).is_some() {
                tracing::info!(network, "network resolver stopped: dns is off");
            }
            metrics::set_dns_names(network, None);
            self.condition(
                &name,
                false,
                Reason::DnsDisabled,
                "dns is off for this network".into(),
                generation,
            )
            .await;
            return;
        }
        // An unresolvable spec is the data plane's to report (InvalidSpec); nothing to serve.
        let Ok(spec) = resolve_node_bridge(&local.spec) else {
            self.served.remove(network);
            return;
        };
        metrics::set_dns_names(network, Some(zone.names()));
        let state = Arc::new(NetworkState {
            network: network.to_owned(),
            zone,
            subnets: spec.families().map(|f| f.subnet).collect(),
            internal: spec.internal,
        });
        let addrs: Vec<SocketAddr> = spec
            .gateways()
            .into_iter()
            .map(|ip: IpAddr| SocketAddr::new(ip, self.settings.port))
            .collect();
        let served = self
            .served
            .entry(network.to_owned())
            .or_insert_with(|| Served {
                shared: Arc::new(RwLock::new(state.clone())),
                addrs: Vec::new(),
                listeners: Vec::new(),
            });
        *served
            .shared
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = state;
        if served.addrs != addrs || served.listeners.len() != addrs.len() {
            served.listeners.clear();
            served.addrs.clone_from(&addrs);
            let mut failed = Vec::new();
            for addr in &addrs {
                match server::listen(*addr, served.shared.clone(), self.resolver.clone()) {
                    Ok(listener) => served.listeners.push(listener),
                    Err(e) => failed.push(format!("{addr}: {e}")),
                }
            }
            if failed.is_empty() {
                tracing::info!(network, ?addrs, "network resolver listening");
            } else {
                tracing::warn!(network, errors = ?failed, "network resolver cannot listen");
            }
        }
        let (ok, reason, message) = if served.listeners.len() == addrs.len() {
            let at: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            (
                true,
                Reason::Serving,
                format!("answering DNS on {} (UDP and TCP)", at.join(", ")),
            )
        } else {
            let listening: Vec<SocketAddr> = served.listeners.iter().map(|l| l.addr).collect();
            let missing: Vec<String> = addrs
                .iter()
                .filter(|a| !listening.contains(a))
                .map(ToString::to_string)
                .collect();
            // Retried at the next change of the network; a port taken by another program
            // is for the administrator to free.
            served.listeners.clear();
            (
                false,
                Reason::ListenFailed,
                format!("cannot listen on {}", missing.join(", ")),
            )
        };
        self.condition(&name, ok, reason, message, generation).await;
    }

    async fn condition(
        &self,
        name: &str,
        ok: bool,
        reason: Reason,
        message: String,
        generation: Option<i64>,
    ) {
        let result = self
            .status
            .update(name, |s| {
                crate::nodebridge::status::set_condition(
                    &mut s.conditions,
                    RESOLVER_READY,
                    ok,
                    reason.as_str(),
                    &message,
                    generation,
                );
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(nodebridge = name, error = %e, "writing the ResolverReady condition");
        }
    }
}
