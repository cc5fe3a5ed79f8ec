//! Starts the sandbox's Kubernetes API emulator (`tests/sandbox`, Python) as a child process and
//! hands out kube-rs clients for it, so Rust tests can check that the real client stack —
//! watchers, server-side apply, controllers, finalizers, event recorders — works against it.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};

/// Why the emulator could not be started or reached.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `python3 -m bnsandbox.apiserver` could not be spawned.
    #[error("spawning the emulator with {python}: {source}")]
    Spawn {
        /// The interpreter that was tried.
        python: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The emulator exited or did not write its ready file in time.
    #[error("the emulator did not become ready within {0:?}; log in {1}")]
    NotReady(Duration, PathBuf),
    /// A scratch directory or file could not be made or read.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The kubeconfig the emulator wrote could not be loaded.
    #[error("loading kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The kubeconfig file.
        path: PathBuf,
        /// The underlying error.
        source: kube::config::KubeconfigError,
    },
    /// A client could not be built from that kubeconfig.
    #[error("building a client: {0}")]
    Client(#[from] kube::Error),
}

/// A running emulator; killed on drop.
pub struct Emulator {
    child: Child,
    dir: PathBuf,
    /// The kubeconfig the emulator wrote.
    pub kubeconfig: PathBuf,
    /// The server URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
}

/// `tests/sandbox`, where the `bnsandbox` package lives.
pub fn sandbox_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("sandbox")
}

impl Emulator {
    /// Starts an emulator on a free port with a scratch directory under the system temp dir.
    pub fn start(extra_args: &[&str]) -> Result<Self, Error> {
        let dir = std::env::temp_dir().join(format!(
            "bnt-kube-compat-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            what: "creating",
            path: dir.clone(),
            source,
        })?;
        let kubeconfig = dir.join("kubeconfig");
        let ready = dir.join("ready");
        let log_path = dir.join("apiserver.log");
        let log = std::fs::File::create(&log_path).map_err(|source| Error::Io {
            what: "creating",
            path: log_path.clone(),
            source,
        })?;
        let log2 = log.try_clone().map_err(|source| Error::Io {
            what: "duplicating",
            path: log_path.clone(),
            source,
        })?;
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
        let child = Command::new(&python)
            .args([
                "-m",
                "bnsandbox.apiserver",
                "--port",
                "0",
                "--bookmark-interval",
                "1",
            ])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--ready-file")
            .arg(&ready)
            .args(extra_args)
            .current_dir(sandbox_dir())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|source| Error::Spawn { python, source })?;
        let mut emu = Emulator {
            child,
            dir,
            kubeconfig,
            url: String::new(),
        };
        let timeout = Duration::from_secs(20);
        let started = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready)
                && !text.trim().is_empty()
            {
                emu.url = text.trim().to_string();
                return Ok(emu);
            }
            let exited = matches!(emu.child.try_wait(), Ok(Some(_)));
            if exited || started.elapsed() > timeout {
                return Err(Error::NotReady(timeout, log_path));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts an emulator that serves HTTPS with a fresh CA (carried in its kubeconfig).
    pub fn start_tls() -> Result<Self, Error> {
        let dir = std::env::temp_dir().join(format!(
            "bnt-kube-compat-tls-{}-{}",
            std::process::id(),
            unique()
        ));
        let arg = dir.to_string_lossy().into_owned();
        let emu = Self::start(&["--tls-dir", &arg]);
        // The certificates are only needed while the server starts; the CA is in the kubeconfig.
        let _ = std::fs::remove_dir_all(&dir);
        emu
    }

    /// A kube-rs client configured from the emulator's kubeconfig, exactly as the operator and
    /// agent build theirs from `KUBECONFIG`.
    pub async fn client(&self) -> Result<kube::Client, Error> {
        let kc = Kubeconfig::read_from(&self.kubeconfig).map_err(|source| Error::Kubeconfig {
            path: self.kubeconfig.clone(),
            source,
        })?;
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|source| Error::Kubeconfig {
                path: self.kubeconfig.clone(),
                source,
            })?;
        Ok(kube::Client::try_from(config)?)
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Err(err) = self.child.kill() {
            tracing::warn!(%err, "killing the emulator");
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}
