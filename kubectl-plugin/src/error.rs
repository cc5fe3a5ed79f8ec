//! The plugin's one error type: each variant wraps one failing step with what it was about.

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
        matches!(self, Error::NetworkExists(_) | Error::Refused(_))
    }

    /// The line the user sees on stderr.
    pub fn user_message(&self) -> String {
        if self.is_daemon_error() {
            format!("Error response from daemon: {self}")
        } else {
            format!("Error: {self}")
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
