//! Notice of changes to bridgenet's nftables tables as they happen, so that a flushed or
//! edited ruleset (`nft flush ruleset`, a firewall reload) is repaired at once: until then the
//! node forwards between the networks' bridges and isolation is gone, and the periodic resync
//! may be seconds away.
//!
//! A netlink socket of the `NETLINK_NETFILTER` family joined to the `NFNLGRP_NFTABLES` group
//! receives one message for every table, chain and rule that a committed nftables transaction
//! adds or deletes, whoever commits. Only those naming a table of ours count; our own
//! transactions are among them, and the pass they trigger finds everything in place and writes
//! nothing, so the monitor cannot feed itself.

use futures::Stream;

use super::nlattr;

/// `NFNLGRP_NFTABLES`: the multicast group of nf_tables change notifications.
const NFNLGRP_NFTABLES: u32 = 7;
/// `NFNL_SUBSYS_NFTABLES`, the high byte of an nf_tables message type.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// nf_tables message types that change a table's content: NEW/DEL of tables, chains, rules,
/// sets and set elements.
const CHANGES: &[u16] = &[0, 2, 3, 5, 6, 8, 9, 11, 12, 14];
/// The first attribute of every one of those messages is the table's name
/// (`NFTA_TABLE_NAME`, `NFTA_CHAIN_TABLE`, `NFTA_RULE_TABLE`, `NFTA_SET_TABLE`,
/// `NFTA_SET_ELEM_LIST_TABLE` are all 1).
const ATTR_TABLE: u16 = 1;
const NFGENMSG: usize = 4;

/// Whether one netlink datagram holds a change to a table named `table` (any family).
pub fn concerns_table(datagram: &[u8], table: &str) -> bool {
    nlattr::messages(datagram).any(|(kind, body)| {
        kind >> 8 == NFNL_SUBSYS_NFTABLES
            && CHANGES.contains(&(kind & 0xff))
            && table_attr(body.get(NFGENMSG..).unwrap_or_default()) == Some(table)
    })
}

/// The `ATTR_TABLE` string among `attrs` (netlink attributes).
fn table_attr(attrs: &[u8]) -> Option<&str> {
    let value = nlattr::attributes(attrs)
        .find(|a| a.kind == ATTR_TABLE)?
        .value;
    std::str::from_utf8(value.strip_suffix(&[0]).unwrap_or(value)).ok()
}

/// A stream that yields whenever a committed nftables transaction changes a table named
/// `table` in the calling thread's network namespace. Empty (periodic resync only) when the
/// group cannot be joined.
pub fn table_changes(table: &'static str) -> impl Stream<Item = ()> + Send + 'static {
    let (tx, rx) = futures::channel::mpsc::unbounded::<()>();
    let socket = (|| {
        use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.add_membership(NFNLGRP_NFTABLES)?;
        Ok::<_, std::io::Error>(socket)
    })();
    match socket {
        // A plain thread: the socket blocks, and the thread was created in (and so stays in)
        // the agent's network namespace.
        Ok(socket) => {
            let spawned = std::thread::Builder::new()
                .name("bridgenet-nftmon".into())
                .spawn(move || {
                    let mut buf = Vec::with_capacity(64 * 1024);
                    loop {
                        buf.clear();
                        match socket.recv(&mut buf, 0) {
                            Ok(_) => {
                                if concerns_table(&buf, table) && tx.unbounded_send(()).is_err() {
                                    return;
                                }
                            }
                            // ENOBUFS: notifications were dropped; something changed, so look.
                            Err(e) if e.raw_os_error() == Some(105) => {
                                if tx.unbounded_send(()).is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "nftables monitor stopped; drift is repaired by the periodic resync only");
                                return;
                            }
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the nftables monitor");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot monitor nftables changes; drift is repaired by the periodic resync only")
        }
    }
    rx
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::dataplane::nlattr::tests::attr;

    fn message(msg_type: u16, attrs: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = attrs.concat();
        let len = nlattr::NLMSG_HDRLEN + NFGENMSG + body.len();
        let mut m = Vec::new();
        m.extend(u32::try_from(len).unwrap().to_ne_bytes());
        m.extend(((NFNL_SUBSYS_NFTABLES << 8) | msg_type).to_ne_bytes());
        m.extend([0u8; 10]); // flags, seq, pid
        m.extend([1, 0, 0, 0]); // nfgenmsg: family inet, version, res_id
        m.extend(body);
        m
    }

    #[test]
    fn a_deleted_table_of_ours_counts_and_others_do_not() {
        let ours = message(2, &[attr(1, b"bridgenet\0"), attr(3, &[0; 4])]);
        let theirs = message(2, &[attr(1, b"kube-proxy\0")]);
        let rule = message(8, &[attr(1, b"bridgenet\0"), attr(2, b"forward\0")]);
        let newgen = message(15, &[attr(1, &[0; 4])]);
        assert!(concerns_table(&ours, "bridgenet"));
        assert!(concerns_table(&rule, "bridgenet"));
        assert!(!concerns_table(&theirs, "bridgenet"));
        assert!(!concerns_table(&newgen, "bridgenet"));
        // Several messages in one datagram: any of ours counts.
        assert!(concerns_table(
            &[theirs.clone(), ours].concat(),
            "bridgenet"
        ));
        assert!(!concerns_table(&[theirs, newgen].concat(), "bridgenet"));
    }

    /// The kernel's own notifications, in a throwaway namespace: creating our table, a
    /// foreign table, and `nft flush ruleset`.
    #[test]
    #[ignore = "needs root"]
    fn the_kernel_reports_changes_to_our_table() {
        let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        });
        assert!(
            root,
            "this test needs root (network namespaces, nftables): run `make root-test` as root"
        );
        let ns = crate::dataplane::netns::Throwaway::new("nftmon");
        let in_ns = ns.name.clone();
        let nft = move |args: &str| {
            let ok = std::process::Command::new("ip")
                .args(["netns", "exec", &in_ns, "nft"])
                .args(args.split(' '))
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "nft {args}");
        };
        let seen = ns
            .run(move || async move {
                use futures::StreamExt;
                let mut changes = table_changes("bridgenet");
                let mut next = async || {
                    tokio::time::timeout(std::time::Duration::from_millis(500), changes.next())
                        .await
                        .is_ok()
                };
                nft("add table inet kube-proxy");
                let foreign = next().await;
                nft("add table inet bridgenet");
                let created = next().await;
                // Drain what the creation sent, then flush everything.
                while next().await {}
                nft("flush ruleset");
                let flushed = next().await;
                (foreign, created, flushed)
            })
            .unwrap();
        assert_eq!(seen, (false, true, true));
    }

    #[test]
    fn truncated_or_foreign_datagrams_are_ignored() {
        let ours = message(2, &[attr(1, b"bridgenet\0")]);
        for cut in 0..ours.len() {
            assert!(!concerns_table(&ours[..cut], "bridgenet"), "cut at {cut}");
        }
        let mut other_subsys = ours.clone();
        other_subsys[5] = 1; // NFNL_SUBSYS_CTNETLINK
        assert!(!concerns_table(&other_subsys, "bridgenet"));
    }
}
