//! Running code inside a network namespace: the attach side works in the host's and every
//! pod's namespace, and tests treat namespaces as nodes.
//!
//! A netlink socket belongs to the namespace of the thread that opens it, `/proc/sys/net` to
//! the namespace of the thread that opens the file, and a child process (`nft`) starts in the
//! namespace of the thread that forks it. So the work runs on a fresh OS thread that first
//! joins the namespace, with a single-threaded tokio runtime so no task migrates off it. That
//! thread ends with the work: a thread that entered another namespace never returns to a pool
//! where unrelated work would run in the wrong namespace.

use std::fs::File;
use std::future::Future;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use rtnetlink::Handle;

use super::rtnl;

/// Why work could not be started in (or answered from) a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// Opening the namespace file failed (the pod's namespace may be gone already).
    #[error("opening network namespace {path}: {source}")]
    Open {
        /// Namespace path, e.g. `/run/netns/x` or `/proc/<pid>/ns/net`.
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
    /// The namespace thread's tokio runtime could not be built.
    #[error("building the runtime of a network namespace thread: {0}")]
    Runtime(#[source] std::io::Error),
    /// No netlink socket could be opened in the namespace.
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The OS refused a new thread.
    #[error("spawning a network namespace thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The thread ended without an answer: the work panicked.
    #[error("the network namespace thread {0} ended without an answer (it panicked)")]
    Lost(&'static str),
}

/// An open handle on a network namespace, which keeps it alive while held.
#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
    file: File,
}

impl Netns {
    /// Opens the namespace at `path` (a bind mount under `/run/netns` or `/proc/<pid>/ns/net`).
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.to_owned(),
            source,
        })?;
        Ok(Netns {
            path: path.to_owned(),
            file,
        })
    }

    /// Moves the calling thread into the namespace. Only for threads started by
    /// [`on_own_thread`], which end with their work.
    pub fn enter(&self) -> Result<(), NetnsError> {
        nix::sched::setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|source| {
            NetnsError::Enter {
                path: self.path.clone(),
                source,
            }
        })
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// A single-threaded runtime for a namespace thread: its tasks never leave the thread, hence
/// never leave the namespace.
pub fn runtime() -> Result<tokio::runtime::Runtime, NetnsError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(NetnsError::Runtime)
}

/// Runs `work` on a new OS thread named `name` and returns its answer. The thread may enter
/// other namespaces ([`Netns::enter`]): it runs nothing else and ends with `work`.
pub async fn on_own_thread<W, T, E>(name: &'static str, work: W) -> Result<T, E>
where
    W: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<NetnsError> + Send + 'static,
{
    on_own_thread_then(name, move || work().map(|answer| (answer, || ()))).await
}

/// Like [`on_own_thread`], but a successful `work` also returns what its thread does after
/// answering, still in the namespace it is in: the caller has its answer without waiting for
/// that part, which can only log what goes wrong.
pub async fn on_own_thread_then<W, T, E, A>(name: &'static str, work: W) -> Result<T, E>
where
    W: FnOnce() -> Result<(T, A), E> + Send + 'static,
    A: FnOnce(),
    T: Send + 'static,
    E: From<NetnsError> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            // The receiver is gone only when the caller gave up waiting: nobody to tell.
            match work() {
                Ok((answer, after)) => {
                    let _ = tx.send(Ok(answer));
                    after();
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })
        .map_err(NetnsError::Spawn)?;
    rx.await.map_err(|_| NetnsError::Lost(name))?
}

/// Runs `work` on its own thread inside `netns` (`None`: the caller's namespace) with a
/// netlink handle opened there. The namespace is opened before the thread starts, so a
/// missing one fails fast.
pub async fn in_netns<W, Fut, T, E>(netns: Option<&Path>, work: W) -> Result<T, E>
where
    W: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>>,
    T: Send + 'static,
    E: From<NetnsError> + Send + 'static,
{
    let ns = netns.map(Netns::open).transpose()?;
    on_own_thread("bridgenet-netns", move || {
        if let Some(ns) = &ns {
            ns.enter()?;
        }
        runtime()?.block_on(async {
            let handle = rtnl::connect_handle().map_err(NetnsError::Socket)?;
            work(handle).await
        })
    })
    .await
}

/// Runs `work` to completion on its own thread inside the network namespace at `path`
/// (e.g. `/run/netns/<name>`), blocking the caller, and returns its output. For tests and
/// benches, which treat namespaces as nodes.
#[cfg(any(test, feature = "testing"))]
pub fn run_in<F, Fut, T>(path: &Path, work: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let path = path.to_owned();
    futures::executor::block_on(on_own_thread("bridgenet-test-netns", move || {
        Netns::open(&path)?.enter()?;
        Ok(runtime()?.block_on(work()))
    }))
}

/// A named network namespace (`/run/netns/bnt-<tag>-<pid>`) for one test, deleted on drop, also
/// when the test fails. Creating it needs root: it panics saying so.
#[cfg(test)]
pub(crate) struct Throwaway {
    /// Its name, for `ip -n`.
    pub name: String,
}

#[cfg(test)]
impl Throwaway {
    pub(crate) fn new(tag: &str) -> Self {
        let name = format!("bnt-{tag}-{}", std::process::id());
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .status();
        let added = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            added,
            "ip netns add {name}: this test needs root (run `make root-test` as root)"
        );
        Throwaway { name }
    }

    /// Runs `work` on a thread inside it ([`run_in`]).
    pub(crate) fn run<F, Fut, T>(&self, work: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        run_in(Path::new(&format!("/run/netns/{}", self.name)), work)
    }
}

#[cfg(test)]
impl Drop for Throwaway {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
