//! The resourcequota controller against an in-process API server with fake kubelets
//! (`coxswain-sim`) and the real kubectl: quota status filled from the spec and shown by
//! `kubectl describe quota`, usage given back when pods are deleted or finish and when
//! counted objects go, leaked charges recounted by the periodic resync, and concurrent
//! creates that never overshoot a quota while the controller recounts under them.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use coxswain_controllers::{Config, Context, ControllerManager, resourcequota};
use coxswain_sim::{EXIT_CODE, SimCluster, SimNode};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ResourceQuota};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::Client;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

fn start(client: Client, resync: Duration) -> ControllerManager {
    start_with(client, resync, Config::default().quota_settle_period)
}

fn start_with(client: Client, resync: Duration, settle: Duration) -> ControllerManager {
    let config = Config {
        quota_resync_period: resync,
        quota_settle_period: settle,
        ..Config::default()
    };
    ControllerManager::start(Context::new(client, config), &[resourcequota::NAME])
}

fn object<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("a valid object")
}

fn pod(name: &str, cpu: &str) -> Pod {
    object(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "busybox:1.36",
            "resources": {"requests": {"cpu": cpu}, "limits": {"memory": "64Mi"}}}]},
    }))
}

/// `status.used` of a quota, as `name=value` pairs sorted by name.
async fn used(client: &Client, name: &str) -> Result<String> {
    let api: Api<ResourceQuota> = Api::default_namespaced(client.clone());
    let q = api.get(name).await?;
    let used = q.status.and_then(|s| s.used).unwrap_or_default();
    Ok(used.iter().map(|(k, v)| format!("{k}={}", v.0)).collect::<Vec<_>>().join(","))
}

async fn wait_used(client: &Client, name: &str, want: &str) -> Result<()> {
    let waited = coxswain_sim::wait_for(WAIT, || async { Ok(used(client, name).await? == want) }).await;
    if let Err(e) = waited {
        let now = used(client, name).await.unwrap_or_default();
        anyhow::bail!("quota {name} to be used {want} (now {now}): {e:#}");
    }
    Ok(())
}

/// Quota status comes from the controller (`kubectl describe quota` shows it); deleting a
/// pod, a pod finishing and a deleted ConfigMap give their usage back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_counted_and_given_back() -> Result<()> {
    init_logging();
    let cluster = SimCluster::start().await?;
    let client = cluster.client();
    let _node = cluster.add_node(SimNode::new("n1")).await?;
    let _manager = start(client.clone(), Duration::from_secs(300));
    cluster
        .kubectl_run(&["create", "quota", "compute", "--hard=pods=2,requests.cpu=1,count/pods=3,configmaps=1"])
        .await?;
    wait_used(&client, "compute", "configmaps=0,count/pods=0,pods=0,requests.cpu=0").await?;
    let described = cluster.kubectl_run(&["describe", "quota", "compute"]).await?;
    let row = |name: &str| {
        described
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
    };
    ensure!(row("requests.cpu") == Some(vec!["requests.cpu", "0", "1"]), "{described}");
    ensure!(row("pods") == Some(vec!["pods", "0", "2"]), "{described}");

    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    pods.create(&PostParams::default(), &pod("a", "500m")).await?;
    pods.create(&PostParams::default(), &pod("b", "500m")).await?;
    let refused = pods.create(&PostParams::default(), &pod("c", "100m")).await;
    match refused {
        Err(kube::Error::Api(s)) => ensure!(
            s.code == 403
                && s.message
                    == r#"pods "c" is forbidden: exceeded quota: compute, requested: pods=1,requests.cpu=100m, used: pods=2,requests.cpu=1, limited: pods=2,requests.cpu=1"#,
            "{s:?}"
        ),
        other => anyhow::bail!("a third pod was not refused: {other:?}"),
    }
    let described = cluster.kubectl_run(&["describe", "quota", "compute"]).await?;
    ensure!(
        described.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["requests.cpu", "1", "1"]),
        "{described}"
    );

    // Deleting a pod gives back everything it held.
    pods.delete("a", &DeleteParams::default()).await?;
    wait_used(&client, "compute", "configmaps=0,count/pods=1,pods=1,requests.cpu=500m").await?;
    pods.create(&PostParams::default(), &pod("c", "100m")).await?;
    wait_used(&client, "compute", "configmaps=0,count/pods=2,pods=2,requests.cpu=600m").await?;

    // A pod that finishes keeps its count/pods but gives back its compute.
    pods.delete("c", &DeleteParams::default()).await?;
    wait_used(&client, "compute", "configmaps=0,count/pods=1,pods=1,requests.cpu=500m").await?;
    let mut done = pod("done", "100m");
    done.metadata.annotations = Some([(EXIT_CODE.to_owned(), "0".to_owned())].into());
    let spec = done.spec.as_mut().context("spec")?;
    spec.node_name = Some("n1".to_owned());
    spec.restart_policy = Some("Never".to_owned());
    pods.create(&PostParams::default(), &done).await?;
    coxswain_sim::wait_for(WAIT, || async {
        Ok(pods.get("done").await?.status.and_then(|s| s.phase).as_deref() == Some("Succeeded"))
    })
    .await
    .context("the pod finishes")?;
    wait_used(&client, "compute", "configmaps=0,count/pods=2,pods=1,requests.cpu=500m").await?;

    // Counted objects of other kinds: a deleted ConfigMap frees its place.
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    cms.create(&PostParams::default(), &object(json!({"metadata": {"name": "one"}}))).await?;
    ensure!(cms.create(&PostParams::default(), &object(json!({"metadata": {"name": "two"}}))).await.is_err());
    cms.delete("one", &DeleteParams::default()).await?;
    wait_used(&client, "compute", "configmaps=0,count/pods=2,pods=1,requests.cpu=500m").await?;
    cms.create(&PostParams::default(), &object(json!({"metadata": {"name": "two"}}))).await?;

    // Raising the hard limit reaches the status (and admission) without any usage change.
    cluster
        .kubectl_run(&["patch", "quota", "compute", "-p", r#"{"spec":{"hard":{"pods":"5"}}}"#])
        .await?;
    let quotas: Api<ResourceQuota> = Api::default_namespaced(client.clone());
    coxswain_sim::wait_for(WAIT, || async {
        let q = quotas.get("compute").await?;
        Ok(q.status.and_then(|s| s.hard).and_then(|h| h.get("pods").cloned()).map(|q| q.0) == Some("5".into()))
    })
    .await
    .context("status.hard follows spec.hard")?;
    Ok(())
}

/// A charge whose create then failed (the name was taken) is given back by the periodic
/// resync, though nothing changed that the controller watches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_gives_back_leaked_charges() -> Result<()> {
    init_logging();
    let cluster = SimCluster::start().await?;
    let client = cluster.client();
    let _manager = start(client.clone(), Duration::from_secs(3));
    cluster.kubectl_run(&["create", "quota", "pods", "--hard=pods=2"]).await?;
    wait_used(&client, "pods", "pods=0").await?;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    pods.create(&PostParams::default(), &pod("x", "100m")).await?;
    let again = pods.create(&PostParams::default(), &pod("x", "100m")).await;
    ensure!(matches!(again, Err(kube::Error::Api(ref s)) if s.code == 409), "{again:?}");
    // Admission charged the refused create (as upstream does) ...
    ensure!(used(&client, "pods").await? == "pods=2");
    // ... and the resync recounts.
    wait_used(&client, "pods", "pods=1").await?;
    Ok(())
}

/// A recount soon after a charge keeps the charged usage (the create it paid for may still
/// be on its way to the store), applies increases at once, and lowers the usage only once
/// the quota has settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_charge_is_not_recounted_away() -> Result<()> {
    init_logging();
    let cluster = SimCluster::start().await?;
    let client = cluster.client();
    let _manager = start_with(client.clone(), Duration::from_secs(300), Duration::from_secs(5));
    cluster.kubectl_run(&["create", "quota", "q", "--hard=pods=10,requests.cpu=10"]).await?;
    wait_used(&client, "q", "pods=0,requests.cpu=0").await?;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    pods.create(&PostParams::default(), &pod("one", "100m")).await?;
    pods.create(&PostParams::default(), &pod("two", "100m")).await?;
    // Charges as admission makes them for creates still in flight (pods), and an
    // undercount (cpu).
    let quotas: Api<ResourceQuota> = Api::default_namespaced(client.clone());
    let mut q = quotas.get("q").await?;
    q.status.as_mut().context("status")?.used = Some(object(json!({"pods": "5", "requests.cpu": "0"})));
    quotas.replace_status("q", &PostParams::default(), &q).await?;
    // A deletion makes the controller recount at once.
    pods.delete("two", &DeleteParams::default()).await?;
    wait_used(&client, "q", "pods=5,requests.cpu=100m").await?;
    wait_used(&client, "q", "pods=1,requests.cpu=100m").await?;
    Ok(())
}

/// 20 pods created at once against a quota of 5 pods, while the controller recounts on
/// every change: exactly 5 are admitted, and after deleting them all, 5 more fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_with_the_controller_running() -> Result<()> {
    init_logging();
    let cluster = SimCluster::start().await?;
    let client = cluster.client();
    let _manager = start(client.clone(), Duration::from_secs(1));
    cluster.kubectl_run(&["create", "quota", "five", "--hard=pods=5"]).await?;
    wait_used(&client, "five", "pods=0").await?;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    for round in 0..2 {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..20 {
            let pods = pods.clone();
            tasks.spawn(async move { pods.create(&PostParams::default(), &pod(&format!("r{round}-{i}"), "10m")).await });
        }
        let mut admitted = 0;
        while let Some(result) = tasks.join_next().await {
            match result? {
                Ok(_) => admitted += 1,
                Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains("exceeded quota: five") => {}
                Err(e) => anyhow::bail!("unexpected error: {e}"),
            }
        }
        ensure!(admitted == 5, "round {round}: {admitted} admitted");
        ensure!(pods.list(&ListParams::default()).await?.items.len() == 5);
        wait_used(&client, "five", "pods=5").await?;
        pods.delete_collection(&DeleteParams::default(), &ListParams::default()).await?;
        wait_used(&client, "five", "pods=0").await?;
    }
    Ok(())
}
