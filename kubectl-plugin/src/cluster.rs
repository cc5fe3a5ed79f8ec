//! Talking to the cluster: a client chosen like kubectl chooses one, the objects the verbs
//! render, and the create call with its errors in Docker's words.

use bridgenet_crds::{BridgeNetwork, NodeBridge};
use kube::api::{ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};

use crate::error::Error;

/// The field manager of every write, so `managedFields` tells the plugin's changes apart.
pub const FIELD_MANAGER: &str = "kubectl-bridgenet";

/// A client like kubectl's: `--kubeconfig` wins over `KUBECONFIG`, `--context` picks a context;
/// with neither, kube's inference (KUBECONFIG, ~/.kube/config, then in-cluster).
pub async fn client(kubeconfig: Option<&str>, context: Option<&str>) -> Result<Client, Error> {
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..KubeConfigOptions::default()
    };
    let config = match (kubeconfig, context) {
        (Some(path), _) => {
            let kc = Kubeconfig::read_from(path).map_err(|source| Error::ReadKubeconfig {
                path: path.to_owned(),
                source,
            })?;
            Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(Error::Kubeconfig)?
        }
        (None, Some(_)) => Config::from_kubeconfig(&options)
            .await
            .map_err(Error::Kubeconfig)?,
        (None, None) => Config::infer().await.map_err(Error::Infer)?,
    };
    Client::try_from(config).map_err(Error::Client)
}

/// Every BridgeNetwork, sorted by name.
pub async fn networks(client: Client) -> Result<Vec<BridgeNetwork>, Error> {
    let mut nets = Api::<BridgeNetwork>::all(client)
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::List {
            what: "bridgenetworks",
            source,
        })?
        .items;
    nets.sort_by_key(ResourceExt::name_any);
    Ok(nets)
}

/// The named networks that exist, in the order asked, and a `NoSuchNetwork` for each that
/// does not; any other failure stops.
pub async fn named_networks(
    client: Client,
    names: Vec<String>,
) -> Result<(Vec<BridgeNetwork>, Vec<Error>), Error> {
    let api = Api::<BridgeNetwork>::all(client);
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for name in names {
        match api.get_opt(&name).await {
            Ok(Some(net)) => found.push(net),
            Ok(None) => missing.push(Error::NoSuchNetwork(name)),
            Err(source) => return Err(Error::Get { name, source }),
        }
    }
    Ok((found, missing))
}

/// Every NodeBridge; the renderer picks each network's own by `spec.network`.
pub async fn node_bridges(client: Client) -> Result<Vec<NodeBridge>, Error> {
    Ok(Api::<NodeBridge>::all(client)
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::List {
            what: "nodebridges",
            source,
        })?
        .items)
}

/// Creates `net`, or with `dry_run` has the API server validate and default it without storing
/// it. A taken name is Docker's `network with name X already exists`; a spec the server's
/// rules refuse comes back with the server's message.
pub async fn create(
    client: Client,
    net: &BridgeNetwork,
    dry_run: bool,
) -> Result<BridgeNetwork, Error> {
    let params = PostParams {
        dry_run,
        field_manager: Some(FIELD_MANAGER.to_owned()),
    };
    Api::<BridgeNetwork>::all(client)
        .create(&params, net)
        .await
        .map_err(|source| match source {
            kube::Error::Api(ref s) if s.is_already_exists() => {
                Error::NetworkExists(net.name_any())
            }
            kube::Error::Api(ref s) if s.code == 422 || s.reason == "Invalid" => {
                Error::Refused(s.message.clone())
            }
            source => Error::Api {
                what: format!("create bridgenetwork {}", net.name_any()),
                source,
            },
        })
}
