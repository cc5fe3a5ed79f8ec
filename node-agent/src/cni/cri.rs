//! The container runtime, through CRI (`--cri-endpoint`): which pod sandboxes exist (for the
//! reconcile that frees addresses of sandboxes that are gone) and where a running pod's network
//! namespace is (for hot-plug and repair) — read from the runtime, never guessed from paths.

use std::collections::HashSet;
use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ListPodSandboxRequest, PodSandboxFilter, PodSandboxState, PodSandboxStateValue,
    PodSandboxStatusRequest,
};
use serde_json::Value;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::cni::engine::Runtime;

/// Why the container runtime could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The endpoint is not `unix://PATH`.
    #[error("CRI endpoint {0:?} is not unix:///path/to/socket")]
    Endpoint(String),
    /// Connecting failed.
    #[error("connecting to the container runtime at {endpoint}: {source}")]
    Connect {
        /// The endpoint dialed.
        endpoint: String,
        /// Transport error.
        source: tonic::transport::Error,
    },
    /// A call failed.
    #[error("CRI {call}: {source}")]
    Call {
        /// The CRI method, e.g. `ListPodSandbox`.
        call: &'static str,
        /// gRPC status.
        source: Box<tonic::Status>,
    },
}

/// A ready pod sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sandbox {
    /// Sandbox ID (CNI's container ID).
    pub id: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod UID.
    pub uid: String,
}

/// A CRI runtime client.
#[derive(Clone)]
pub struct Cri {
    client: RuntimeServiceClient<Channel>,
}

impl Cri {
    /// Connects to `unix:///path` (lazily: the runtime may start after the agent).
    pub fn connect(endpoint: &str) -> Result<Self, CriError> {
        let path = endpoint
            .strip_prefix("unix://")
            .filter(|p| p.starts_with('/'))
            .ok_or_else(|| CriError::Endpoint(endpoint.to_owned()))?
            .to_owned();
        // The URI is required by tonic but unused: the connector dials the socket.
        let channel = Endpoint::try_from("http://[::]:50051")
            .map_err(|source| CriError::Connect {
                endpoint: endpoint.to_owned(),
                source,
            })?
            .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }));
        Ok(Self {
            client: RuntimeServiceClient::new(channel),
        })
    }

    /// IDs of every sandbox the runtime knows, ready or not.
    pub async fn sandbox_ids(&self) -> Result<HashSet<String>, CriError> {
        let resp = self
            .client
            .clone()
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await
            .map_err(|e| CriError::Call {
                call: "ListPodSandbox",
                source: Box::new(e),
            })?;
        Ok(resp.into_inner().items.into_iter().map(|s| s.id).collect())
    }

    /// The sandboxes the runtime reports ready (running pods), with their pods' identity.
    pub async fn ready_sandboxes(&self) -> Result<Vec<Sandbox>, CriError> {
        let filter = PodSandboxFilter {
            state: Some(PodSandboxStateValue {
                state: PodSandboxState::SandboxReady as i32,
            }),
            ..PodSandboxFilter::default()
        };
        let resp = self
            .client
            .clone()
            .list_pod_sandbox(ListPodSandboxRequest {
                filter: Some(filter),
            })
            .await
            .map_err(|e| CriError::Call {
                call: "ListPodSandbox",
                source: Box::new(e),
            })?;
        Ok(resp
            .into_inner()
            .items
            .into_iter()
            .filter_map(|s| {
                let meta = s.metadata?;
                Some(Sandbox {
                    id: s.id,
                    namespace: meta.namespace,
                    name: meta.name,
                    uid: meta.uid,
                })
            })
            .collect())
    }

    /// The network namespace path of a sandbox, from the runtime's verbose status
    /// (`info["info"]` → `.runtimeSpec.linux.namespaces[type=network].path`).
    pub async fn netns_of(&self, sandbox_id: &str) -> Result<Option<PathBuf>, CriError> {
        let resp = self
            .client
            .clone()
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: sandbox_id.to_owned(),
                verbose: true,
            })
            .await
            .map_err(|e| CriError::Call {
                call: "PodSandboxStatus",
                source: Box::new(e),
            })?;
        Ok(resp
            .into_inner()
            .info
            .get("info")
            .and_then(|raw| netns_from_info(raw)))
    }
}

impl Runtime for Cri {
    type Error = CriError;

    async fn running_netns(&self, container_id: &str) -> Result<Option<PathBuf>, CriError> {
        // Only ready sandboxes: the runtime marks one ready after its CNI ADD has returned and
        // unready before its DEL, so repair never races the plugin.
        if !self
            .ready_sandboxes()
            .await?
            .iter()
            .any(|s| s.id == container_id)
        {
            return Ok(None);
        }
        self.netns_of(container_id).await
    }
}

/// Extracts the network namespace path from the runtime's verbose `info` JSON.
pub fn netns_from_info(raw: &str) -> Option<PathBuf> {
    let info: Value = serde_json::from_str(raw).ok()?;
    info.pointer("/runtimeSpec/linux/namespaces")?
        .as_array()?
        .iter()
        .find(|ns| ns.get("type").and_then(Value::as_str) == Some("network"))?
        .get("path")?
        .as_str()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_network_namespace_in_verbose_info() {
        let raw = r#"{"pid":42,"runtimeSpec":{"linux":{"namespaces":[
            {"type":"pid"},{"type":"ipc"},{"type":"network","path":"/var/run/netns/cni-1234"}]}}}"#;
        assert_eq!(
            netns_from_info(raw),
            Some(PathBuf::from("/var/run/netns/cni-1234"))
        );
        assert_eq!(
            netns_from_info(r#"{"runtimeSpec":{"linux":{"namespaces":[{"type":"network"}]}}}"#),
            None
        );
        assert_eq!(netns_from_info("not json"), None);
    }

    #[test]
    fn refuses_non_unix_endpoints() {
        assert!(matches!(
            Cri::connect("tcp://1.2.3.4:1"),
            Err(CriError::Endpoint(_))
        ));
        assert!(matches!(
            Cri::connect("unix://relative"),
            Err(CriError::Endpoint(_))
        ));
    }
}
