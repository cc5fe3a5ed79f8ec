//! The agent side of the CNI socket: one JSON [`Request`] per connection (the plugin half-closes
//! after writing it), one JSON [`Response`] back.
//!
//! The socket is root-only (0600): whoever can talk to it can put interfaces into any network
//! namespace.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::cni::engine::{Directory, Engine, failpoint};
use crate::cni::types::{CniError, Command, Request, Response, code};

/// Largest request accepted (a network config with a large prevResult stays far below).
const MAX_REQUEST: u64 = 4 << 20;
/// A client that does not finish sending its request in this time is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the socket server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Preparing the socket path failed.
    #[error("preparing CNI socket {path}: {source}")]
    Prepare {
        /// Socket path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// Binding failed.
    #[error("binding CNI socket {path}: {source}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// Accepting failed.
    #[error("accepting on CNI socket: {0}")]
    Accept(std::io::Error),
}

/// Binds the socket at `path` (replacing a stale one left by a previous agent), root-only.
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let prepare = |source| ServerError::Prepare {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(prepare)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(prepare(e)),
    }
    let listener = UnixListener::bind(path).map_err(|source| ServerError::Bind {
        path: path.to_owned(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(prepare)?;
    Ok(listener)
}

/// Serves CNI requests forever, each connection on its own task, once the DELs a killed
/// agent had answered but not finished are finished (calls wait in the listener's backlog).
pub async fn serve<D: Directory>(
    listener: UnixListener,
    engine: Arc<Engine<D>>,
) -> Result<(), ServerError> {
    engine.finish_releasing().await;
    loop {
        let (stream, _) = listener.accept().await.map_err(ServerError::Accept)?;
        let engine = engine.clone();
        tokio::spawn(async move {
            if let Err(e) = handle_conn(stream, &engine).await {
                tracing::warn!(error = %e, "CNI connection failed");
            }
        });
    }
}

async fn handle_conn<D: Directory>(
    mut stream: UnixStream,
    engine: &Engine<D>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut is_add = false;
    let mut rest = None;
    let read = tokio::time::timeout(
        READ_TIMEOUT,
        (&mut stream).take(MAX_REQUEST).read_to_end(&mut buf),
    )
    .await;
    let response = match read {
        Err(_) => Response::Error(CniError::new(
            code::IO_FAILURE,
            "timed out reading the request from the plugin",
            "",
        )),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(_)) => match serde_json::from_slice::<Request>(&buf) {
            Ok(req) => {
                is_add = req.command == Command::Add;
                let (response, more) = engine.answer(req).await;
                rest = more;
                response
            }
            Err(e) => Response::Error(CniError::new(
                code::DECODE_FAILURE,
                format!("malformed request from the plugin: {e}"),
                "the bridgenet plugin binary and agent versions differ; reinstall the agent",
            )),
        },
    };
    let bytes = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    let sent = async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    }
    .await;
    // An answered DEL is finished whether or not its answer reached the plugin: the
    // allocations are journaled as releasing either way.
    if let Some(rest) = rest {
        engine.finish(rest).await;
    }
    sent?;
    if is_add && matches!(response, Response::Ok(_)) {
        failpoint(failpoint::ADD_AFTER_REPLY);
    }
    Ok(())
}
