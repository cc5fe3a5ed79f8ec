//! `bridgenet`: the CNI plugin the container runtime executes (spec 1.1; 0.3.x, 0.4.0 and 1.0.0
//! configurations accepted).
//!
//! Deliberately thin and synchronous: it reads the CNI environment and stdin, forwards them over
//! the agent's unix socket, and prints the agent's answer. All decisions, state and netlink work
//! live in the agent, so a plugin killed at any instant leaves nothing behind. VERSION is
//! answered locally; everything else needs the agent, and when it is unreachable the answer is
//! CNI error 11 ("try again later") saying what to check.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use bridgenet_agent::cni::types::{
    CNI_VERSION, CniError, Command, NetConf, Request, Response, code, version_result,
};

/// How long an agent may take to answer (ADD of several networks on a loaded node).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(110);

fn main() -> ExitCode {
    match run() {
        Ok(Some(out)) => {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(out.as_bytes());
            let _ = stdout.write_all(b"\n");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(err) => {
            let text = serde_json::to_string(&err).unwrap_or_else(|_| {
                format!(r#"{{"cniVersion":"{CNI_VERSION}","code":999,"msg":"internal error"}}"#)
            });
            let _ = writeln!(std::io::stdout().lock(), "{text}");
            ExitCode::FAILURE
        }
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

fn run() -> Result<Option<String>, CniError> {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        return Ok(Some(format!(
            "bridgenet CNI plugin {}",
            env!("CARGO_PKG_VERSION")
        )));
    }
    let command_name = env("CNI_COMMAND");
    let command = Command::parse(&command_name).ok_or_else(|| {
        CniError::new(
            code::INVALID_ENV,
            format!("CNI_COMMAND {command_name:?} is not a CNI command"),
            "bridgenet is a CNI plugin: the container runtime runs it with CNI_COMMAND=ADD|DEL|CHECK|STATUS|GC|VERSION",
        )
    })?;
    let mut stdin = Vec::new();
    std::io::stdin().read_to_end(&mut stdin).map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            format!("reading the network configuration from stdin: {e}"),
            "",
        )
    })?;
    if command == Command::Version {
        // VERSION must work with any (or no) configuration.
        let version = serde_json::from_slice::<serde_json::Value>(&stdin)
            .ok()
            .and_then(|v| {
                v.get("cniVersion")
                    .and_then(|s| s.as_str())
                    .map(str::to_owned)
            });
        return Ok(Some(version_result(version.as_deref()).to_string()));
    }
    let conf = NetConf::parse(&stdin)?;
    let version = conf.cni_version.clone();
    let config = serde_json::from_slice(&stdin).map_err(|e| {
        CniError::new(code::DECODE_FAILURE, e.to_string(), "").with_version(&version)
    })?;
    let request = Request {
        command,
        container_id: env("CNI_CONTAINERID"),
        netns: env("CNI_NETNS"),
        ifname: env("CNI_IFNAME"),
        args: env("CNI_ARGS"),
        config,
    };
    if request.command == Command::Del && !std::path::Path::new(conf.socket_path()).exists() {
        // No socket at all: the agent is not installed on this node (or the node just rebooted
        // and it has not started). Failing would block pod deletion forever; whatever the pod
        // held is freed by the agent's reconcile against the runtime when it runs.
        eprintln!(
            "bridgenet: agent socket {} absent; DEL left to the agent's reconcile",
            conf.socket_path()
        );
        return Ok(None);
    }
    match forward(conf.socket_path(), &request) {
        Ok(Response::Ok(serde_json::Value::Null)) => Ok(None),
        Ok(Response::Ok(result)) => Ok(Some(result.to_string())),
        Ok(Response::Error(e)) => Err(e),
        Err(e) => Err(e.with_version(&version)),
    }
}

fn forward(socket: &str, request: &Request) -> Result<Response, CniError> {
    let unreachable = |e: std::io::Error| {
        let (code, what) = if request.command == Command::Status {
            (code::NOT_AVAILABLE, "bridgenet is not available")
        } else {
            (code::TRY_AGAIN_LATER, "try again later")
        };
        CniError::new(
            code,
            format!("{what}: the bridgenet agent is not reachable on {socket}: {e}"),
            "the bridgenet-agent DaemonSet pod on this node is not running or not ready; check \
             `kubectl -n bridgenet-system get pods -o wide` and its logs. The kubelet retries the pod sandbox.",
        )
    };
    let mut stream = UnixStream::connect(socket).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(ANSWER_TIMEOUT)))
        .map_err(unreachable)?;
    let body = serde_json::to_vec(request)
        .map_err(|e| CniError::new(code::DECODE_FAILURE, e.to_string(), ""))?;
    stream.write_all(&body).map_err(unreachable)?;
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(unreachable)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(unreachable)?;
    if answer.is_empty() {
        // The agent died mid-call (or was killed): nothing it started is lost (it journals
        // first), and the runtime's retry or DEL cleans up.
        return Err(unreachable(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the agent closed the connection without answering (it may have restarted)",
        )));
    }
    serde_json::from_slice(&answer).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            format!("unreadable answer from the agent: {e}"),
            "the bridgenet plugin binary and agent versions differ; restart the agent to reinstall the plugin",
        )
    })
}
