//! Pod interfaces on an IPv4-only network take no IPv6 address, however the agent runs:
//! with `/proc/sys` writable and the agent in the node's own namespace (as the bench and a
//! privileged agent: the host end's `disable_ipv6` goes through a directory opened once), and
//! with `/proc/sys` read-only (the chart's default, unprivileged agent: netlink only).
//!
//! Each case runs on a thread of its own that moves into the namespaces it needs; the agent's
//! threads and the plugin inherit them. Both run in one test, the writable one first: the
//! agent remembers a refused `/proc/sys` for the rest of its process. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cni_support;
mod root_support;

use std::process::Command;

use cni_support::{Call, InProcessAgent, Netns, StaticDirectory, TestNetwork, World};
use cni_support::{chained_config, run_plugin};
use root_support::require_root;
use serde_json::Value;

fn inet6(link: &Value) -> Vec<String> {
    link["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|a| a["family"] == "inet6")
                .map(|a| a["local"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// One ADD on an IPv4-only network by an agent whose host namespace is `host` (`None`: the
/// thread's own, which the caller moved into `node`); returns the host end's name.
fn add_one(tag: &str, node: &Netns, pod: &Netns, host: Option<&Netns>) -> String {
    let red = TestNetwork::new(tag, 40);
    red.create_bridge(node);
    let dir = StaticDirectory::new(World {
        networks: vec![red.spec()],
        ..World::default()
    });
    dir.set_pod("default/web", tag);
    let state = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let agent = match host {
            Some(ns) => InProcessAgent::start(dir.clone(), state.path(), ns),
            None => InProcessAgent::start_in_own_namespace(dir.clone(), state.path()),
        };
        let add = Call::new(
            "ADD",
            &format!("sandbox-{tag}"),
            pod.path().to_str().unwrap(),
            "default/web",
            chained_config(&agent.socket, "1.1.0", None),
        );
        let answer = run_plugin(&add).await;
        assert!(answer.ok, "ADD failed: {}", answer.raw);
        // The pod end: no IPv6 address at all, not even link-local, once the link is up on
        // both ends (the kernel would add one right then).
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let link = pod.link_json("net1").expect("net1 in the pod");
        assert!(inet6(&link).is_empty(), "{link}");
        if host.is_none() {
            // Writable /proc/sys: disable_ipv6 too, right after the answer.
            assert_eq!(
                sysctl_in(pod, "/proc/sys/net/ipv6/conf/net1/disable_ipv6"),
                "1"
            );
        }
    });
    let host_end = node
        .links()
        .into_iter()
        .find(|l| l.starts_with("bnv"))
        .expect("host veth");
    let link = node.link_json(&host_end).unwrap();
    assert_eq!(link["master"], red.bridge);
    assert!(inet6(&link).is_empty(), "{link}");
    host_end
}

fn sysctl_in(node: &Netns, key: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &node.name, "cat", key])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The agent in the node's namespace, as deployed: the host end's IPv6 is off.
fn agent_in_node_namespace() {
    let node = Netns::new("sysctl-own-n");
    let pod = Netns::new("sysctl-own-p");
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(
                std::fs::File::open(node.path()).unwrap(),
                nix::sched::CloneFlags::CLONE_NEWNET,
            )
            .unwrap();
            let host_end = add_one("sysown", &node, &pod, None);
            assert_eq!(
                sysctl_in(
                    &node,
                    &format!("/proc/sys/net/ipv6/conf/{host_end}/disable_ipv6")
                ),
                "1"
            );
        })
        .join()
        .unwrap();
    });
}

/// `/proc/sys` read-only to the agent: no IPv6 address on either end all the same.
fn read_only_proc_sys() {
    let node = Netns::new("sysctl-ro-n");
    let pod = Netns::new("sysctl-ro-p");
    std::thread::scope(|s| {
        s.spawn(|| {
            // A mount namespace of this thread's own (its children's, the agent's and the
            // plugin's), with /proc/sys read-only as a container runtime mounts it.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
            for args in [
                &["--make-rprivate", "/"][..],
                &["--bind", "/proc/sys", "/proc/sys"],
                &["-o", "remount,bind,ro", "/proc/sys"],
            ] {
                assert!(Command::new("mount").args(args).status().unwrap().success());
            }
            assert!(std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").is_err());
            add_one("sysro", &node, &pod, Some(&node));
        })
        .join()
        .unwrap();
    });
}

#[test]
#[ignore = "needs root"]
fn ipv4_only_interfaces_take_no_ipv6_address_writable_or_not() {
    require_root();
    agent_in_node_namespace();
    read_only_proc_sys();
}
