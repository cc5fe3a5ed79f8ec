//! Running data-plane code inside another network namespace (tests treat namespaces as nodes).
//!
//! A netlink socket belongs to the namespace of the thread that opens it, `/proc/sys/net` to
//! the namespace of the thread that opens the file, and a child process (`nft`) starts in the
//! namespace of the thread that forks it. So the work runs on a fresh OS thread that first
//! joins the namespace, with a single-threaded tokio runtime so no task migrates off it.

use std::future::Future;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;

/// Why the work could not run in the namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// Opening the namespace file failed.
    #[error("opening network namespace {path}: {source}")]
    Open {
        /// Namespace path, e.g. `/run/netns/x`.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `setns` failed.
    #[error("entering network namespace {path}: {source}")]
    Enter {
        /// Namespace path.
        path: PathBuf,
        /// errno.
        source: nix::Error,
    },
    /// The runtime could not be built.
    #[error("building a runtime for network namespace {path}: {source}")]
    Runtime {
        /// Namespace path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The work panicked.
    #[error("work in network namespace {path} panicked")]
    Panicked {
        /// Namespace path.
        path: PathBuf,
    },
}

/// Runs `work` to completion on a new thread inside the network namespace at `path`
/// (e.g. `/run/netns/<name>`), and returns its output.
pub fn run_in<F, Fut, T>(path: &Path, work: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let owned = path.to_owned();
    let thread = std::thread::spawn(move || -> Result<T, NetnsError> {
        let file = std::fs::File::open(&owned).map_err(|source| NetnsError::Open {
            path: owned.clone(),
            source,
        })?;
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
            path: owned.clone(),
            source,
        })?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| NetnsError::Runtime {
                path: owned.clone(),
                source,
            })?;
        Ok(rt.block_on(work()))
    });
    thread.join().map_err(|_| NetnsError::Panicked {
        path: path.to_owned(),
    })?
}
