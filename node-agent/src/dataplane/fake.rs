//! A recording in-memory kernel implementing [`Netlink`], for unit tests of the planner and
//! applier without root. Test scaffolding: compiled only for tests and with the `testing`
//! feature, never into the agent. It mirrors the kernel behaviours the applier depends on:
//! EEXIST on duplicate names and addresses, the alias being ignored on creation, addresses and
//! FDB entries disappearing with their link, ports losing their master when a bridge goes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::netlink::{Link, LinkChange, LinkKind, Netlink, NetlinkError, NewLink};

const EEXIST: i32 = 17;
const ENODEV: i32 = 19;
const EADDRNOTAVAIL: i32 = 99;
const ENOENT: i32 = 2;

/// One recorded call with its object, e.g. `Write("create link br-x")`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// A read (dump or get).
    Read(String),
    /// A write (anything that changes kernel state).
    Write(String),
}

/// The fake kernel: links, addresses, flood entries and sysctls of one namespace, and the
/// record of every call made on it.
#[derive(Clone, Debug)]
pub struct FakeNetlink {
    links: BTreeMap<u32, Link>,
    addresses: BTreeMap<u32, Vec<IpNet>>,
    flood: BTreeMap<u32, BTreeSet<IpAddr>>,
    sysctls: BTreeMap<String, String>,
    next_index: u32,
    /// Every call, in order; [`FakeNetlink::writes`] keeps the writes.
    pub calls: Vec<Call>,
}

impl Default for FakeNetlink {
    fn default() -> Self {
        let mut fake = FakeNetlink {
            links: BTreeMap::new(),
            addresses: BTreeMap::new(),
            flood: BTreeMap::new(),
            sysctls: BTreeMap::from([
                ("net/ipv4/ip_forward".to_owned(), "0".to_owned()),
                ("net/ipv6/conf/all/forwarding".to_owned(), "0".to_owned()),
            ]),
            next_index: 1,
            calls: Vec::new(),
        };
        fake.insert_link("lo", LinkKind::Other("loopback".into()), None);
        fake
    }
}

impl FakeNetlink {
    /// Adds a link as if someone else had created it (a foreign interface, or one of ours
    /// whose marker is given in `alias`). Returns its index.
    pub fn insert_link(&mut self, name: &str, kind: LinkKind, alias: Option<&str>) -> u32 {
        let index = self.next_index;
        self.next_index += 1;
        self.links.insert(
            index,
            Link {
                index,
                name: name.to_owned(),
                kind,
                alias: alias.map(str::to_owned),
                mtu: 1500,
                mac: Some([0x02, 0, 0, 0, 0, index as u8]),
                up: false,
                master: None,
            },
        );
        index
    }

    /// Deletes a link by name behind the applier's back (drift), as `ip link del` would.
    pub fn remove_link(&mut self, name: &str) -> bool {
        match self.index_of(name) {
            Some(i) => {
                self.drop_link(i);
                true
            }
            None => false,
        }
    }

    /// Mutable access to a link by name, to simulate drift.
    pub fn link_mut(&mut self, name: &str) -> Option<&mut Link> {
        let i = self.index_of(name)?;
        self.links.get_mut(&i)
    }

    /// Names of every link, loopback included, in index order.
    pub fn link_names(&self) -> Vec<String> {
        self.links.values().map(|l| l.name.clone()).collect()
    }

    /// Addresses of a link by name.
    pub fn addresses_of(&self, name: &str) -> Vec<IpNet> {
        self.index_of(name)
            .and_then(|i| self.addresses.get(&i).cloned())
            .unwrap_or_default()
    }

    /// Flood entries of a link by name.
    pub fn flood_of(&self, name: &str) -> Vec<IpAddr> {
        self.index_of(name)
            .and_then(|i| self.flood.get(&i))
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// A sysctl's value (`None`: never written nor preset); forwarding starts at `0`.
    pub fn sysctl(&self, key: &str) -> Option<&str> {
        self.sysctls.get(key).map(String::as_str)
    }

    /// The recorded writes, in order: a no-change apply must leave this empty.
    pub fn writes(&self) -> Vec<&str> {
        self.calls
            .iter()
            .filter_map(|c| match c {
                Call::Write(w) => Some(w.as_str()),
                Call::Read(_) => None,
            })
            .collect()
    }

    /// Forgets recorded calls, so a test counts only what its next step does.
    pub fn clear_calls(&mut self) {
        self.calls.clear();
    }

    fn index_of(&self, name: &str) -> Option<u32> {
        self.links
            .values()
            .find(|l| l.name == name)
            .map(|l| l.index)
    }

    fn drop_link(&mut self, index: u32) {
        self.links.remove(&index);
        self.addresses.remove(&index);
        self.flood.remove(&index);
        for l in self.links.values_mut() {
            if l.master == Some(index) {
                l.master = None;
            }
        }
    }

    fn exists(&self, op: &str, index: u32) -> Result<(), NetlinkError> {
        if self.links.contains_key(&index) {
            Ok(())
        } else {
            Err(NetlinkError::new(op, "No such device", Some(ENODEV)))
        }
    }
}

impl Netlink for FakeNetlink {
    async fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        self.calls.push(Call::Read("dump links".into()));
        Ok(self.links.values().cloned().collect())
    }

    async fn link(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        self.calls.push(Call::Read(format!("get link {name}")));
        Ok(self
            .index_of(name)
            .and_then(|i| self.links.get(&i).cloned()))
    }

    async fn addresses(&mut self, index: u32) -> Result<Vec<IpNet>, NetlinkError> {
        self.calls
            .push(Call::Read(format!("dump addresses {index}")));
        Ok(self.addresses.get(&index).cloned().unwrap_or_default())
    }

    async fn flood_entries(&mut self, index: u32) -> Result<Vec<IpAddr>, NetlinkError> {
        self.calls.push(Call::Read(format!("dump fdb {index}")));
        Ok(self
            .flood
            .get(&index)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default())
    }

    async fn create_link(&mut self, link: &NewLink) -> Result<(), NetlinkError> {
        let op = format!("create link {}", link.name);
        self.calls.push(Call::Write(op.clone()));
        if self.index_of(&link.name).is_some() {
            return Err(NetlinkError::new(op, "File exists", Some(EEXIST)));
        }
        let index = self.insert_link(&link.name, link.kind.clone(), None);
        if let Some(l) = self.links.get_mut(&index) {
            l.mtu = link.mtu;
            if let Some(mac) = link.mac {
                l.mac = Some(mac);
            }
        }
        Ok(())
    }

    async fn change_link(&mut self, index: u32, change: &LinkChange) -> Result<(), NetlinkError> {
        let op = format!("change link {index} {change:?}");
        self.calls.push(Call::Write(op.clone()));
        self.exists(&op, index)?;
        if let Some(m) = change.master {
            self.exists(&op, m)?;
        }
        if let Some(l) = self.links.get_mut(&index) {
            if let Some(a) = &change.alias {
                l.alias = Some(a.clone());
            }
            if let Some(mtu) = change.mtu {
                l.mtu = mtu;
            }
            if let Some(mac) = change.mac {
                l.mac = Some(mac);
            }
            if change.master.is_some() {
                l.master = change.master;
            }
            if change.up {
                l.up = true;
            }
        }
        Ok(())
    }

    async fn delete_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        let op = format!("delete link {index}");
        self.calls.push(Call::Write(op.clone()));
        self.exists(&op, index)?;
        self.drop_link(index);
        Ok(())
    }

    async fn add_address(&mut self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
        let op = format!("add address {addr} to {index}");
        self.calls.push(Call::Write(op.clone()));
        self.exists(&op, index)?;
        let addrs = self.addresses.entry(index).or_default();
        if addrs.contains(&addr) {
            return Err(NetlinkError::new(op, "File exists", Some(EEXIST)));
        }
        addrs.push(addr);
        Ok(())
    }

    async fn delete_address(&mut self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
        let op = format!("delete address {addr} from {index}");
        self.calls.push(Call::Write(op.clone()));
        let addrs = self.addresses.entry(index).or_default();
        let before = addrs.len();
        addrs.retain(|a| *a != addr);
        if addrs.len() == before {
            return Err(NetlinkError::new(
                op,
                "Cannot assign requested address",
                Some(EADDRNOTAVAIL),
            ));
        }
        Ok(())
    }

    async fn append_flood(&mut self, index: u32, dst: IpAddr) -> Result<(), NetlinkError> {
        let op = format!("append flood {dst} to {index}");
        self.calls.push(Call::Write(op.clone()));
        self.exists(&op, index)?;
        if !self.flood.entry(index).or_default().insert(dst) {
            return Err(NetlinkError::new(op, "File exists", Some(EEXIST)));
        }
        Ok(())
    }

    async fn delete_flood(&mut self, index: u32, dst: IpAddr) -> Result<(), NetlinkError> {
        let op = format!("delete flood {dst} from {index}");
        self.calls.push(Call::Write(op.clone()));
        if !self.flood.entry(index).or_default().remove(&dst) {
            return Err(NetlinkError::new(
                op,
                "No such file or directory",
                Some(ENOENT),
            ));
        }
        Ok(())
    }

    async fn read_sysctl(&mut self, key: &str) -> Result<String, NetlinkError> {
        self.calls.push(Call::Read(format!("read sysctl {key}")));
        self.sysctls.get(key).cloned().ok_or_else(|| {
            NetlinkError::new(format!("read sysctl {key}"), "No such file", Some(ENOENT))
        })
    }

    async fn write_sysctl(&mut self, key: &str, value: &str) -> Result<(), NetlinkError> {
        self.calls
            .push(Call::Write(format!("write sysctl {key}={value}")));
        self.sysctls.insert(key.to_owned(), value.to_owned());
        Ok(())
    }
}
