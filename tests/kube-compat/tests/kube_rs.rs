//! kube-rs 5 against the sandbox's API emulator: the calls the operator and the agent make
//! (watchers with and without streaming lists, server-side apply of objects and status,
//! optimistic locking, a `Controller` with `owns`, the `finalizer` helper, owner-reference
//! garbage collection, the events.k8s.io `Recorder`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bridgenet_crds::{BridgeNetwork, NodeBridge};
use bridgenet_kube_compat::Emulator;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Event as CoreEvent};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, CustomResourceExt, Resource, ResourceExt};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(15);

async fn start() -> Result<(Emulator, Client)> {
    let emu = Emulator::start(&[])?;
    let client = emu.client().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let pp = PatchParams::apply("bridgenet-kube-compat").force();
    for crd in [BridgeNetwork::crd(), NodeBridge::crd()] {
        crds.patch(&crd.name_any(), &pp, &Patch::Apply(&crd))
            .await?;
    }
    Ok((emu, client))
}

fn network(name: &str, subnet: &str) -> Result<BridgeNetwork> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "bridgenet.io/v1alpha1", "kind": "BridgeNetwork",
        "metadata": {"name": name}, "spec": {"subnet": subnet}
    }))?)
}

async fn eventually<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if check().await? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("timed out waiting for {what}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_see_creates_and_updates_with_and_without_streaming_lists() -> Result<()> {
    let (_emu, client) = start().await?;
    let api: Api<BridgeNetwork> = Api::all(client.clone());
    let pp = PatchParams::apply("bridgenet-operator").force();
    for (i, config) in [
        watcher::Config::default(),
        watcher::Config::default().streaming_lists(),
    ]
    .into_iter()
    .enumerate()
    {
        let before = format!("before-{i}");
        api.create(&PostParams::default(), &network(&before, "172.20.0.0/16")?)
            .await?;
        let mut stream = watcher(api.clone(), config)
            .default_backoff()
            .applied_objects()
            .boxed();
        // The initial list holds every network so far, this round's included.
        let mut initial = Vec::new();
        for _ in 0..(2 * i + 1) {
            let obj = tokio::time::timeout(WAIT, stream.try_next())
                .await?
                .context("stream ended")?;
            initial.push(obj.context("no object")?.name_any());
        }
        assert!(initial.contains(&before), "{initial:?}");
        let name = format!("net-{i}");
        api.patch(&name, &pp, &Patch::Apply(network(&name, "172.21.0.0/16")?))
            .await?;
        let seen = tokio::time::timeout(WAIT, stream.try_next())
            .await?
            .context("stream ended")?;
        assert_eq!(seen.map(|o| o.name_any()), Some(name.clone()));
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"mtu": 1400}})),
        )
        .await?;
        let updated = tokio::time::timeout(WAIT, stream.try_next())
            .await?
            .context("stream ended")?
            .unwrap();
        assert_eq!(updated.name_any(), name);
        assert_eq!(updated.spec.mtu, Some(1400));
        assert_eq!(updated.metadata.generation, Some(2));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_status_and_conflicts() -> Result<()> {
    let (_emu, client) = start().await?;
    let api: Api<BridgeNetwork> = Api::all(client.clone());
    let pp = PatchParams::apply("bridgenet-operator").force();
    let created = api
        .patch(
            "custom-network",
            &pp,
            &Patch::Apply(network("custom-network", "172.20.0.0/16")?),
        )
        .await?;
    assert_eq!(created.spec.subnet, "172.20.0.0/16");
    let status = json!({
        "apiVersion": "bridgenet.io/v1alpha1", "kind": "BridgeNetwork",
        "status": {"readySummary": "0/2", "conditions": [{"type": "Accepted", "status": "True",
            "reason": "Valid", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    });
    let with_status = api
        .patch_status("custom-network", &pp, &Patch::Apply(&status))
        .await?;
    let st = with_status.status.clone().context("no status")?;
    assert_eq!(st.ready_summary.as_deref(), Some("0/2"));
    assert_eq!(st.conditions.len(), 1);
    assert_eq!(with_status.metadata.generation, Some(1));

    let mut stale = created.clone();
    stale.spec.mtu = Some(1300);
    api.replace("custom-network", &PostParams::default(), &with_status)
        .await?;
    match api
        .replace("custom-network", &PostParams::default(), &stale)
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (409, "Conflict")),
        other => bail!("expected a 409 Conflict, got {other:?}"),
    }
    match api.get("missing").await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (404, "NotFound")),
        other => bail!("expected a 404 NotFound, got {other:?}"),
    }
    assert!(api.get_opt("missing").await?.is_none());
    Ok(())
}

struct Ctx {
    client: Client,
    recorder: Recorder,
}

async fn reconcile(
    bn: Arc<BridgeNetwork>,
    ctx: Arc<Ctx>,
) -> Result<Action, kube::runtime::finalizer::Error<kube::Error>> {
    let api: Api<BridgeNetwork> = Api::all(ctx.client.clone());
    finalizer(&api, bridgenet_crds::FINALIZER_OPERATOR, bn, |event| async {
        match event {
            Finalizer::Apply(bn) => {
                let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), "default");
                let owner = bn.controller_owner_ref(&()).expect("BridgeNetworks have uids");
                let child = json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": format!("{}-child", bn.name_any()), "ownerReferences": [owner]},
                    "data": {"subnet": bn.spec.subnet}
                });
                let pp = PatchParams::apply("bridgenet-operator").force();
                cms.patch(&format!("{}-child", bn.name_any()), &pp, &Patch::Apply(&child)).await?;
                let status = json!({"apiVersion": "bridgenet.io/v1alpha1", "kind": "BridgeNetwork",
                                    "status": {"readySummary": "1/1"}});
                api.patch_status(&bn.name_any(), &pp, &Patch::Apply(&status)).await?;
                ctx.recorder
                    .publish(
                        &KEvent {
                            type_: EventType::Normal,
                            reason: "Programmed".into(),
                            note: Some("child written".into()),
                            action: "Reconcile".into(),
                            secondary: None,
                        },
                        &bn.object_ref(&()),
                    )
                    .await?;
                Ok(Action::await_change())
            }
            Finalizer::Cleanup(_) => Ok(Action::await_change()),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_finalizer_garbage_collection_and_events() -> Result<()> {
    let (_emu, client) = start().await?;
    let api: Api<BridgeNetwork> = Api::all(client.clone());
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let reporter = Reporter {
        controller: "bridgenet-operator".into(),
        instance: Some("op-0".into()),
    };
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
    });
    let controller = Controller::new(api.clone(), watcher::Config::default())
        .owns(cms.clone(), watcher::Config::default())
        .run(
            reconcile,
            |_, err, _| {
                eprintln!("reconcile failed: {err}");
                Action::requeue(Duration::from_millis(200))
            },
            ctx,
        )
        .for_each(|_| futures::future::ready(()));
    let handle = tokio::spawn(controller);

    api.create(&PostParams::default(), &network("net-a", "172.20.0.0/16")?)
        .await?;
    eventually("status and finalizer", || async {
        let bn = api.get("net-a").await?;
        Ok(
            bn.status.and_then(|s| s.ready_summary).as_deref() == Some("1/1")
                && bn.metadata.finalizers.unwrap_or_default()
                    == [bridgenet_crds::FINALIZER_OPERATOR],
        )
    })
    .await?;
    let child = cms.get("net-a-child").await?;
    assert_eq!(child.owner_references()[0].name, "net-a");

    let events: Api<CoreEvent> = Api::namespaced(client.clone(), "default");
    let lp = ListParams::default().fields("involvedObject.name=net-a");
    eventually("the Programmed event in core/v1", || async {
        Ok(events
            .list(&lp)
            .await?
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Programmed")))
    })
    .await?;

    api.delete("net-a", &DeleteParams::background()).await?;
    eventually("the finalizer to release the network", || async {
        Ok(api.get_opt("net-a").await?.is_none())
    })
    .await?;
    eventually("the child to be garbage collected", || async {
        Ok(cms.get_opt("net-a-child").await?.is_none())
    })
    .await?;
    handle.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_the_kubeconfig_ca() -> Result<()> {
    let emu = Emulator::start_tls()?;
    assert!(emu.url.starts_with("https://"), "{}", emu.url);
    let client = emu.client().await?;
    let version = client.apiserver_version().await?;
    assert_eq!(version.major, "1");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = BridgeNetwork::crd();
    let pp = PatchParams::apply("bridgenet-kube-compat").force();
    crds.patch(&crd.name_any(), &pp, &Patch::Apply(&crd))
        .await?;
    let api: Api<BridgeNetwork> = Api::all(client);
    let created = api
        .patch(
            "tls-net",
            &pp,
            &Patch::Apply(network("tls-net", "172.20.0.0/16")?),
        )
        .await?;
    assert_eq!(created.spec.subnet, "172.20.0.0/16");
    Ok(())
}
