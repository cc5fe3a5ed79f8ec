//! The guard of the agent's root tests. They carry `#[ignore = "needs root"]`, so a plain
//! `cargo test` leaves them out and `make root-test` (`cargo test -- --ignored`) runs them; run
//! that way without root they fail at once, saying why, instead of passing having checked
//! nothing.
#![allow(dead_code)]

/// Whether this process runs with effective user id 0 (the `Uid:` line of
/// `/proc/self/status`).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Fails the calling test unless it runs as root: it creates network namespaces and drives
/// netlink and nftables in them.
#[track_caller]
pub fn require_root() {
    assert!(
        is_root(),
        "this test needs root (network namespaces, netlink, nftables): run `make root-test` as root"
    );
}
