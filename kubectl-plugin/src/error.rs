//! The plugin's one error type: each variant wraps one failing step with what it was about.

use std::fmt;
use std::time::Duration;

/// What can stop a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--kubeconfig FILE` could not be read or parsed.
    #[error("cannot read kubeconfig {path}: {source}")]
    ReadKubeconfig {
        /// The file given.
        path: String,
        /// Why.
        source: kube::config::KubeconfigError,
    },
    /// The kubeconfig was read but names no usable context/cluster/user.
    #[error("cannot load the client configuration from the kubeconfig: {0}")]
    Kubeconfig(#[source] kube::config::KubeconfigError),
    /// Neither KUBECONFIG, ~/.kube/config nor the in-cluster service account gave a config.
    #[error("cannot find a cluster to talk to: {0}")]
    Infer(#[source] kube::config::InferConfigError),
    /// The client could not be built from the configuration (TLS, proxy).
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// A list call failed.
    #[error("cannot list {what}: {source}")]
    List {
        /// The resource, e.g. `bridgenetworks`.
        what: &'static str,
        /// Why.
        source: kube::Error,
    },
    /// A get call failed for a reason other than the object not existing.
    #[error("cannot get bridgenetwork {name}: {source}")]
    Get {
        /// The network.
        name: String,
        /// Why.
        source: kube::Error,
    },
    /// JSON encoding failed.
    #[error("cannot encode the output as JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// YAML encoding failed.
    #[error("cannot encode the output as YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// Writing to stdout failed.
    #[error("cannot write the output: {0}")]
    Write(#[from] std::io::Error),
    /// Docker's words for a network that does not exist.
    #[error("No such network: {0}")]
    NoSuchNetwork(String),
    /// A `create` flag value that makes no network.
    #[error(transparent)]
    Flag(#[from] crate::create::FlagError),
    /// Docker's words for a name already taken.
    #[error("network with name {0} already exists")]
    NetworkExists(String),
    /// The API server refused an object (its schema and CEL rules), in its own words.
    #[error("{0}")]
    Refused(String),
    /// A `connect` flag the agent would refuse.
    #[error(transparent)]
    Request(#[from] crate::annotation::RequestError),
    /// Docker's words for a container that does not exist (`namespace/pod`).
    #[error("No such container: {0}")]
    NoSuchPod(String),
    /// Docker's words for connecting a container twice.
    #[error("endpoint with name {pod} already exists in network {network}")]
    AlreadyConnected {
        /// The pod.
        pod: String,
        /// The network.
        network: String,
    },
    /// Docker's words for disconnecting a container that is not connected.
    #[error("container {pod} is not connected to network {network}")]
    NotConnected {
        /// The pod.
        pod: String,
        /// The network.
        network: String,
    },
    /// `--interface` names one the pod already has.
    #[error("{0}")]
    InterfaceTaken(String),
    /// Docker's words for a container in the host's network namespace.
    #[error("container cannot be disconnected from host network or connected to host network")]
    HostNetwork,
    /// Docker's words for a container being removed.
    #[error(
        "container {0} is marked for removal and cannot be connected or disconnected to the network"
    )]
    PodTerminating(String),
    /// The pod's annotation cannot be read, so editing it could lose what it says.
    #[error(
        "pod {pod}: its {} annotation cannot be read ({source}); fix it with `kubectl annotate --overwrite`",
        bridgenet_crds::ANNOTATION_NETWORKS
    )]
    BadAnnotation {
        /// `namespace/pod`.
        pod: String,
        /// Why.
        source: crate::annotation::ParseError,
    },
    /// The node agent posted a Warning Event about the pod while the verb waited.
    #[error("the bridgenet agent could not {verb} pod {pod} {} network {network}: {reason}: {message}", verb.preposition())]
    AgentRefused {
        /// What was waited for.
        verb: Verb,
        /// `namespace/pod`.
        pod: String,
        /// The network.
        network: String,
        /// The Event's reason.
        reason: String,
        /// The Event's message.
        message: String,
    },
    /// The agent did not answer in time.
    #[error("{}", timeout_message(.verb, .pod, .network, .after, .node))]
    Timeout {
        /// What was waited for.
        verb: Verb,
        /// `namespace/pod`.
        pod: String,
        /// The network.
        network: String,
        /// The `--timeout`.
        after: Duration,
        /// The pod's node, if it has one.
        node: Option<String>,
    },
    /// The pod went away while the verb waited.
    #[error("pod {0} was deleted while waiting for the bridgenet agent")]
    PodGone(String),
    /// Docker's words for removing a network in use; `pods` from the operator's condition.
    #[error("error while removing network: network {network} has active endpoints ({pods})")]
    ActiveEndpoints {
        /// The network.
        network: String,
        /// The attached pod interfaces, as the operator lists them.
        pods: String,
    },
    /// Any other failing API call, with the server's message.
    #[error("cannot {what}: {}", api_message(.source))]
    Api {
        /// What was tried, e.g. `create bridgenetwork web`.
        what: String,
        /// Why.
        source: kube::Error,
    },
}

impl Error {
    /// Whether Docker reports this one from its daemon (`Error response from daemon: ...`)
    /// rather than from its CLI (`Error: ...`); the prefix is part of Docker's words.
    pub fn is_daemon_error(&self) -> bool {
        matches!(
            self,
            Error::NetworkExists(_)
                | Error::Refused(_)
                | Error::NoSuchPod(_)
                | Error::AlreadyConnected { .. }
                | Error::NotConnected { .. }
                | Error::HostNetwork
                | Error::PodTerminating(_)
                | Error::AgentRefused { .. }
                | Error::ActiveEndpoints { .. }
        )
    }

    /// What the user sees on stderr: Docker's line, and where Docker's words leave out what
    /// differs in bridgenet, a second line saying it.
    pub fn user_message(&self) -> String {
        let line = if self.is_daemon_error() {
            format!("Error response from daemon: {self}")
        } else {
            format!("Error: {self}")
        };
        match self {
            Error::ActiveEndpoints { network, .. } => format!(
                "{line}\nThe deletion stays pending: the network goes once they disconnect \
                 (`kubectl bridgenet disconnect {network} POD -n NAMESPACE`), or at once, taking \
                 their interfaces, with `kubectl bridgenet rm --force-delete {network}`."
            ),
            Error::AgentRefused {
                verb: Verb::Attach,
                pod,
                network,
                ..
            } => {
                let (namespace, name) = pod.split_once('/').unwrap_or(("", pod));
                format!(
                    "{line}\nThe pod's {} annotation still asks for {network}, so the agent retries; \
                     `kubectl bridgenet disconnect {network} {name} -n {namespace}` takes it back.",
                    bridgenet_crds::ANNOTATION_NETWORKS
                )
            }
            _ => line,
        }
    }
}

/// The API server's own message for a refused call (a `Status`), else the client's error.
pub fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => other.to_string(),
    }
}

/// What `connect` and `disconnect` wait for the agent to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// `connect`.
    Attach,
    /// `disconnect`.
    Detach,
}

impl Verb {
    fn preposition(self) -> &'static str {
        match self {
            Verb::Attach => "to",
            Verb::Detach => "from",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verb::Attach => "attach",
            Verb::Detach => "detach",
        })
    }
}

/// The timeout says what was seen, that the change still happens, and where to look.
fn timeout_message(
    verb: &Verb,
    pod: &str,
    network: &str,
    after: &Duration,
    node: &Option<String>,
) -> String {
    let (seen, later) = match verb {
        Verb::Attach => ("does not list it yet", "asks for it, so the agent attaches"),
        Verb::Detach => (
            "still lists it",
            "no longer asks for it, so the agent detaches",
        ),
    };
    let (namespace, name) = pod.split_once('/').unwrap_or(("", pod));
    let hint = match node {
        None => "the pod is not on a node yet".to_owned(),
        Some(node) => format!(
            "is the bridgenet agent running on node {node}? `kubectl get events -n {namespace} --field-selector involvedObject.name={name}` may say more"
        ),
    };
    format!(
        "timed out after {} waiting for the bridgenet agent to {verb} pod {pod} {} network {network}: \
         the pod's {} {seen}. Its {} annotation {later} it when it can; {hint}",
        human_duration(*after),
        verb.preposition(),
        bridgenet_crds::ANNOTATION_NETWORK_STATUS,
        bridgenet_crds::ANNOTATION_NETWORKS,
    )
}

/// `60s`, `1m30s`, `500ms`: how `--timeout` is written.
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    if s < 120 {
        return format!("{s}s");
    }
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn dockers_words_carry_the_daemon_prefix() {
        let e = Error::AlreadyConnected {
            pod: "api".into(),
            network: "web".into(),
        };
        assert_eq!(
            e.user_message(),
            "Error response from daemon: endpoint with name api already exists in network web"
        );
        assert_eq!(
            Error::NoSuchNetwork("web".into()).user_message(),
            "Error: No such network: web"
        );
    }

    #[test]
    fn timeouts_say_what_was_seen_and_where_to_look() {
        let e = Error::Timeout {
            verb: Verb::Attach,
            pod: "shop/api".into(),
            network: "web".into(),
            after: Duration::from_secs(90),
            node: Some("node1".into()),
        };
        assert_eq!(
            e.to_string(),
            "timed out after 90s waiting for the bridgenet agent to attach pod shop/api to network web: \
             the pod's bridgenet.io/network-status does not list it yet. Its bridgenet.io/networks \
             annotation asks for it, so the agent attaches it when it can; is the bridgenet agent \
             running on node node1? `kubectl get events -n shop --field-selector involvedObject.name=api` \
             may say more"
        );
        let e = Error::Timeout {
            verb: Verb::Detach,
            pod: "shop/api".into(),
            network: "web".into(),
            after: Duration::from_millis(1500),
            node: None,
        };
        assert!(
            e.to_string().starts_with(
                "timed out after 1500ms waiting for the bridgenet agent to detach pod shop/api from network web: \
                 the pod's bridgenet.io/network-status still lists it."
            ),
            "{e}"
        );
        assert!(
            e.to_string().ends_with("; the pod is not on a node yet"),
            "{e}"
        );
    }

    #[test]
    fn durations_print_as_they_are_written() {
        assert_eq!(human_duration(Duration::from_secs(60)), "60s");
        assert_eq!(human_duration(Duration::from_secs(90)), "90s");
        assert_eq!(human_duration(Duration::from_secs(150)), "2m30s");
        assert_eq!(human_duration(Duration::from_secs(120)), "2m");
        assert_eq!(human_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(human_duration(Duration::ZERO), "0s");
    }
}
