//! The executor: runs `nft` to list and replace the bridgenet tables, remembers the last state
//! it verified, and counts every write.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;

use super::TABLE;
use super::generation::{current_netns, ruleset_generation};
use super::rules::{Family, Rule, RuleKey, keys, rules};
use super::transaction::transaction;
use crate::dataplane::Desired;

/// A failed nftables call.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// `nft` failed or could not run.
    #[error("nftables: {op}: {source}")]
    Nft {
        /// What was being done.
        op: &'static str,
        /// The error from the nftables crate.
        source: nftables::helper::NftablesError,
    },
    /// A rule's statements did not serialize to JSON for its content hash: a bug in the
    /// schema types, never a property of the input.
    #[error("nftables: building the rule set: {0}")]
    Schema(#[source] serde_json::Error),
    /// `nft -j list table` printed something that is not JSON.
    #[error("nftables: reading `nft -j list table {family} {TABLE}`: {source}")]
    Listing {
        /// Family of the table listed.
        family: &'static str,
        /// The parse error.
        source: serde_json::Error,
    },
    /// Asking the kernel for the nftables ruleset generation failed.
    #[error("nftables: reading the ruleset generation over netlink: {0}")]
    Generation(#[source] std::io::Error),
}

impl FirewallError {
    /// The condition and metrics reason: `FirewallFailed`, whichever call failed.
    pub fn reason(&self) -> &'static str {
        "FirewallFailed"
    }
}

/// Rule identities of the `inet` and `bridge` tables; `None` for a table that is absent.
pub type ObservedTables = (Option<BTreeSet<RuleKey>>, Option<BTreeSet<RuleKey>>);

/// Rule identities found in `nft -j list table` output.
///
/// Read as untyped JSON on purpose: the table may hold a rule someone else added with a
/// statement the `nftables` crate's schema cannot parse, and such a table must be replaced,
/// not fail the check.
pub fn observed_keys(listing: &Value) -> BTreeSet<RuleKey> {
    let mut out = BTreeSet::new();
    let Some(items) = listing.get("nftables").and_then(Value::as_array) else {
        return out;
    };
    for item in items {
        let Some(r) = item.get("rule") else { continue };
        let field = |k: &str| {
            r.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        out.insert((field("family"), field("chain"), field("comment")));
    }
    out
}

/// Runs nftables for the data plane, in the calling thread's network namespace.
///
/// Clones share what the last check verified, so a clone moved into a blocking task still
/// benefits from its siblings' checks.
#[derive(Clone, Debug, Default)]
pub struct Firewall {
    /// `nft` binary to run; `None` for the one on `PATH`.
    pub nft: Option<std::path::PathBuf>,
    verified: Arc<Mutex<Option<Verified>>>,
}

/// A state of the kernel known to hold exactly some desired rules.
#[derive(Debug, PartialEq)]
struct Verified {
    /// The network namespace checked (device and inode of its nsfs file).
    netns: (u64, u64),
    /// The ruleset generation read *before* the listing that found the rules right: any
    /// commit after that read, including one racing the listing, has bumped it.
    generation: u32,
    /// The rule identities the listing found, which were the wanted ones.
    keys: BTreeSet<RuleKey>,
}

/// What [`Firewall::reconcile`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirewallOutcome {
    /// The kernel already had exactly the desired rules.
    Unchanged,
    /// The tables were replaced in one transaction.
    Replaced,
}

impl Firewall {
    /// A firewall that runs `nft` (`None`: the one on `PATH`).
    pub fn new(nft: Option<std::path::PathBuf>) -> Self {
        Firewall {
            nft,
            verified: Arc::default(),
        }
    }

    fn program(&self) -> Option<&std::ffi::OsStr> {
        self.nft.as_deref().map(std::path::Path::as_os_str)
    }

    /// Lists one bridgenet table; `None` when it does not exist.
    fn list(&self, family: Family) -> Result<Option<Value>, FirewallError> {
        let args = ["list", "table", family.name(), TABLE];
        match nftables::helper::get_current_ruleset_raw(self.program(), args.iter().copied()) {
            Ok(out) => {
                serde_json::from_str(&out)
                    .map(Some)
                    .map_err(|source| FirewallError::Listing {
                        family: family.name(),
                        source,
                    })
            }
            Err(nftables::helper::NftablesError::NftFailed { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                Ok(None)
            }
            Err(source) => Err(FirewallError::Nft {
                op: "listing the bridgenet tables",
                source,
            }),
        }
    }

    /// Rule identities currently in the kernel; `None` per table that is absent.
    ///
    /// The two `nft` runs go in parallel: each costs a process start (~2.5 ms here), which is
    /// most of a no-change check. The helper thread inherits the caller's network namespace.
    pub fn observe(&self) -> Result<ObservedTables, FirewallError> {
        let (inet, bridge) = std::thread::scope(|scope| {
            let bridge = scope.spawn(|| self.list(Family::Bridge));
            let inet = self.list(Family::Inet);
            (inet, bridge.join())
        });
        let bridge = bridge.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        Ok((
            inet?.map(|v| observed_keys(&v)),
            bridge?.map(|v| observed_keys(&v)),
        ))
    }

    fn verified(&self) -> std::sync::MutexGuard<'_, Option<Verified>> {
        // Single-assignment critical sections: a poisoned lock holds consistent data.
        self.verified.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the bridgenet tables hold exactly the rules of `networks`, writing only when they
    /// differ. Skips listing them when the kernel's ruleset generation shows nothing changed
    /// since a check that found exactly these rules.
    pub fn reconcile(&self, networks: &[Desired]) -> Result<FirewallOutcome, FirewallError> {
        let wanted = rules(networks)?;
        let wanted_keys = keys(&wanted);
        let netns = current_netns()?;
        let generation = ruleset_generation()?;
        {
            let mut verified = self.verified();
            match &*verified {
                Some(v)
                    if v.netns == netns && v.generation == generation && v.keys == wanted_keys =>
                {
                    return Ok(FirewallOutcome::Unchanged);
                }
                _ => *verified = None,
            }
        }
        let (inet, bridge) = self.observe()?;
        let matches = if networks.is_empty() {
            inet.is_none() && bridge.is_none()
        } else {
            match (inet, bridge) {
                (Some(i), Some(b)) => i.union(&b).cloned().collect::<BTreeSet<_>>() == wanted_keys,
                _ => false,
            }
        };
        if matches {
            *self.verified() = Some(Verified {
                netns,
                generation,
                keys: wanted_keys,
            });
            return Ok(FirewallOutcome::Unchanged);
        }
        // Not remembered as verified: the generation after our own commit could already
        // include someone else's. The next check lists once more and remembers that.
        self.replace(&wanted, !networks.is_empty())?;
        tracing::info!(
            networks = networks.len(),
            rules = wanted.len(),
            "nftables rules replaced"
        );
        Ok(FirewallOutcome::Replaced)
    }

    /// Applies the replacing transaction unconditionally, counting the write in the
    /// `nftables_writes` metric (an unchanged node must count none).
    pub fn replace(&self, rules: &[Rule], any_network: bool) -> Result<(), FirewallError> {
        let batch = transaction(rules, any_network);
        crate::metrics::nftables_write();
        nftables::helper::apply_ruleset_with_args(
            &batch,
            self.program(),
            nftables::helper::DEFAULT_ARGS,
        )
        .map_err(|source| FirewallError::Nft {
            op: "applying the bridgenet tables",
            source,
        })
    }

    /// Removes both bridgenet tables (nothing of bridgenet left in nftables).
    pub fn remove_all(&self) -> Result<(), FirewallError> {
        self.replace(&[], false)
    }
}
