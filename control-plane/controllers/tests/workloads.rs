//! The workload controllers against Coxswain's API server (in process, via
//! `coxswain-sim`) with simulated kubelets: what a user sees with kubectl.
//!
//! Pods need a node: a tiny binder here binds every unbound pod (to the node its
//! `matchFields metadata.name` affinity names, else round-robin), so these tests do not
//! depend on the scheduler.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use coxswain_controllers::workloads::{self, JobOptions};
use coxswain_controllers::{Config, Context};
use coxswain_sim::{EXIT_CODE, RUN_MILLIS, SimCluster, SimNode, SimNodeHandle};
use futures::TryStreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Event, Node, Pod, Taint};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(60);

/// A cluster with the controllers under test and the binder running; everything stops
/// when it is dropped.
struct Harness {
    cluster: SimCluster,
    tasks: Vec<JoinHandle<()>>,
    nodes: Vec<SimNodeHandle>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Harness {
    async fn start(controllers: &[&str], nodes: &[&str]) -> Result<Harness> {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let cluster = SimCluster::start().await?;
        let mut h = Harness {
            cluster,
            tasks: Vec::new(),
            nodes: Vec::new(),
        };
        for n in nodes {
            h.add_node(SimNode::new(*n)).await?;
        }
        for name in controllers {
            h.run_controller(name);
        }
        let client = h.client();
        h.tasks.push(tokio::spawn(async move {
            if let Err(e) = bind_pods(client).await {
                panic!("binder failed: {e:#}");
            }
        }));
        Ok(h)
    }

    fn run_controller(&mut self, name: &str) {
        let ctx = Context::new(self.client(), Config::default());
        let name = name.to_owned();
        self.tasks.push(tokio::spawn(async move {
            if name == "job" {
                // Failed pods are replaced after 100 ms (doubling) instead of 10 s.
                let options = JobOptions {
                    pod_failure_backoff: Duration::from_millis(100),
                    ..JobOptions::default()
                };
                workloads::run_job_with(ctx, options)
                    .await
                    .expect("job controller");
            } else {
                workloads::run(&name, ctx).await.expect("controller");
            }
        }));
    }

    async fn add_node(&mut self, node: SimNode) -> Result<()> {
        let handle = self.cluster.add_node(node).await?;
        self.nodes.push(handle);
        Ok(())
    }

    fn client(&self) -> Client {
        self.cluster.client()
    }

    async fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.cluster.kubectl_run(args).await
    }

    async fn wait_for<F, Fut>(&self, what: &str, check: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<bool>>,
    {
        self.cluster
            .wait_for(WAIT, check)
            .await
            .with_context(|| format!("waiting for {what}"))
    }

    async fn apply(&self, manifest: serde_json::Value) -> Result<()> {
        let path = std::env::temp_dir().join(format!("wl-{}.json", uuid_like()));
        std::fs::write(&path, serde_json::to_vec(&manifest)?)?;
        let out = self
            .kubectl(&["apply", "-f", path.to_str().unwrap_or_default()])
            .await;
        let _ = std::fs::remove_file(&path);
        out.map(|_| ())
    }

    /// Waits until an Event about `name` with `reason` exists (Events are written after
    /// the change they report, so a test may see the change first).
    async fn wait_event(&self, name: &str, reason: &str) -> Result<()> {
        self.wait_for(&format!("event {reason} about {name}"), || async {
            Ok(!self.events(name, reason).await?.is_empty())
        })
        .await
    }

    /// Events recorded about `name` with `reason`, in the default namespace.
    async fn events(&self, name: &str, reason: &str) -> Result<Vec<Event>> {
        let api: Api<Event> = Api::namespaced(self.client(), "default");
        Ok(api
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| {
                e.involved_object.name.as_deref() == Some(name)
                    && e.reason.as_deref() == Some(reason)
            })
            .collect())
    }
}

fn uuid_like() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Binds every unbound pod: to the node its `matchFields metadata.name` affinity names
/// (DaemonSet pods), else round-robin over the Ready nodes.
async fn bind_pods(client: Client) -> Result<()> {
    let pods: Api<Pod> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let next = AtomicUsize::new(0);
    let mut stream = std::pin::pin!(
        watcher(pods, watcher::Config::default().fields("spec.nodeName="))
            .default_backoff()
            .applied_objects()
    );
    while let Some(pod) = stream.try_next().await? {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let pinned = pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|na| {
                na.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .and_then(|r| r.node_selector_terms.first())
            .and_then(|t| t.match_fields.as_ref())
            .and_then(|f| f.first())
            .and_then(|r| r.values.as_ref())
            .and_then(|v| v.first().cloned());
        let node = match pinned {
            Some(n) => n,
            None => {
                let names: Vec<String> = nodes
                    .list(&ListParams::default())
                    .await?
                    .items
                    .iter()
                    .map(|n| n.name_any())
                    .collect();
                if names.is_empty() {
                    continue;
                }
                names[next.fetch_add(1, Ordering::Relaxed) % names.len()].clone()
            }
        };
        let ns = pod.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": pod.name_any(), "namespace": ns},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        // A pod already bound or gone is fine.
        let _ = api
            .create_subresource::<_, serde_json::Value>(
                "binding",
                &pod.name_any(),
                &PostParams::default(),
                &binding,
            )
            .await;
    }
    Ok(())
}

fn container(image: &str) -> serde_json::Value {
    json!({"name": "app", "image": image})
}

fn deployment(
    name: &str,
    replicas: i32,
    image: &str,
    strategy: serde_json::Value,
) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": strategy,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [container(image)]},
            },
        },
    })
}

/// What a pod watch saw at every step, for invariants that must hold throughout.
#[derive(Default)]
struct PodCensus {
    live: HashMap<String, Pod>,
    /// Largest number of non-terminating, unfinished pods at any moment.
    max_live: usize,
    /// Smallest number of Ready, non-terminating pods at any moment since armed.
    min_ready: Option<usize>,
    armed: bool,
    /// (moment, image) pairs where two images ran at once (for Recreate).
    images_mixed: bool,
    created_order: Vec<String>,
    deleting_order: Vec<String>,
    deleting_uids: std::collections::HashSet<String>,
    /// Pods created while a lower ordinal was not Ready (for OrderedReady).
    out_of_order: Vec<String>,
}

fn is_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn is_live(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && !matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

fn image(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// Watches pods with `label` and keeps a [`PodCensus`] up to date.
fn census(
    client: Client,
    label: &str,
    set_name: Option<&str>,
) -> (Arc<Mutex<PodCensus>>, JoinHandle<()>) {
    let state = Arc::new(Mutex::new(PodCensus::default()));
    let api: Api<Pod> = Api::namespaced(client, "default");
    let config = watcher::Config::default().labels(label);
    let st = state.clone();
    let set_name = set_name.map(str::to_owned);
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
        while let Ok(Some(event)) = stream.try_next().await {
            let mut c = st.lock().expect("census lock");
            match event {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                    let name = p.name_any();
                    if !c.live.contains_key(&name) {
                        c.created_order.push(name.clone());
                        if let Some(set) = &set_name {
                            let ord: usize = name
                                .rsplit('-')
                                .next()
                                .and_then(|n| n.parse().ok())
                                .unwrap_or(0);
                            let lower_ready = (0..ord)
                                .all(|i| c.live.get(&format!("{set}-{i}")).is_some_and(is_ready));
                            if !lower_ready {
                                c.out_of_order.push(name.clone());
                            }
                        }
                    }
                    let uid = p.metadata.uid.clone().unwrap_or_default();
                    if p.metadata.deletion_timestamp.is_some() && c.deleting_uids.insert(uid) {
                        c.deleting_order.push(name.clone());
                    }
                    c.live.insert(name, p);
                }
                watcher::Event::Delete(p) => {
                    c.live.remove(&p.name_any());
                }
                watcher::Event::Init | watcher::Event::InitDone => {}
            }
            let live = c.live.values().filter(|p| is_live(p)).count();
            let ready = c.live.values().filter(|p| is_ready(p)).count();
            c.max_live = c.max_live.max(live);
            if c.armed {
                c.min_ready = Some(c.min_ready.map_or(ready, |m| m.min(ready)));
            }
            let mut images: Vec<String> = c.live.values().map(image).collect();
            images.sort();
            images.dedup();
            if images.len() > 1 {
                c.images_mixed = true;
            }
        }
    });
    (state, task)
}

async fn pods_with(client: &Client, label: &str) -> Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    Ok(api.list(&ListParams::default().labels(label)).await?.items)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deployment_rolls_through_two_revisions_and_kubectl_undo_rolls_back() -> Result<()> {
    let h = Harness::start(&["deployment", "replicaset"], &["n1", "n2"]).await?;
    let client = h.client();
    let strategy =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}});
    let (census, watch) = census(client.clone(), "app=web", None);
    h.apply(deployment("web", 4, "web:v1", strategy)).await?;
    h.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await?;
    h.wait_for("census sees 4 ready pods", || async {
        let c = census.lock().expect("census");
        Ok(c.live.values().filter(|p| is_ready(p)).count() == 4)
    })
    .await?;
    census.lock().expect("census").armed = true;

    // Revision 2.
    h.kubectl(&["set", "image", "deployment/web", "app=web:v2"])
        .await?;
    let out = h
        .kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await?;
    assert!(out.contains("successfully rolled out"), "{out}");
    let pods = pods_with(&client, "app=web").await?;
    let live: Vec<&Pod> = pods.iter().filter(|p| is_live(p)).collect();
    assert_eq!(live.len(), 4);
    assert!(live.iter().all(|p| image(p) == "web:v2"), "all pods run v2");

    // Back to revision 1 with the real kubectl (client-side undo from the ReplicaSets).
    let out = h.kubectl(&["rollout", "undo", "deployment/web"]).await?;
    assert!(out.contains("rolled back"), "{out}");
    let out = h
        .kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await?;
    assert!(out.contains("successfully rolled out"), "{out}");
    h.wait_for("only v1 pods", || async {
        let pods = pods_with(&client, "app=web").await?;
        Ok(pods.len() == 4
            && pods
                .iter()
                .all(|p| is_live(p) && is_ready(p) && image(p) == "web:v1"))
    })
    .await?;

    // History: the v1 ReplicaSet is revision 3 now, v2 is revision 2; no new ReplicaSet.
    let rs_api: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let sets = rs_api
        .list(&ListParams::default().labels("app=web"))
        .await?
        .items;
    assert_eq!(sets.len(), 2, "undo reuses the v1 ReplicaSet");
    let revision_of = |img: &str| {
        sets.iter()
            .find(|rs| {
                rs.spec
                    .template
                    .as_ref()
                    .and_then(|t| t.spec.as_ref())
                    .and_then(|s| s.containers.first())
                    .and_then(|c| c.image.as_deref())
                    == Some(img)
            })
            .and_then(|rs| {
                rs.annotations()
                    .get("deployment.kubernetes.io/revision")
                    .cloned()
            })
    };
    assert_eq!(revision_of("web:v1").as_deref(), Some("3"));
    assert_eq!(revision_of("web:v2").as_deref(), Some("2"));
    for rs in &sets {
        let owner = rs
            .owner_references()
            .first()
            .cloned()
            .context("owner reference")?;
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.controller,
                owner.block_owner_deletion
            ),
            ("Deployment", Some(true), Some(true))
        );
    }
    let history = h.kubectl(&["rollout", "history", "deployment/web"]).await?;
    assert!(history.contains('2') && history.contains('3'), "{history}");

    // Status as kubectl reads it.
    let d: Deployment = Api::namespaced(client.clone(), "default")
        .get("web")
        .await?;
    let status = d.status.context("status")?;
    assert_eq!(status.observed_generation, d.metadata.generation);
    assert_eq!(
        (
            status.updated_replicas,
            status.ready_replicas,
            status.available_replicas
        ),
        (Some(4), Some(4), Some(4))
    );
    let progressing = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_.as_deref() == Some("Progressing"))
        .context("Progressing")?;
    assert_eq!(
        progressing.reason.as_deref(),
        Some("NewReplicaSetAvailable")
    );
    h.wait_event("web", "ScalingReplicaSet").await?;

    // maxSurge 1 and maxUnavailable 1 held throughout.
    watch.abort();
    let c = census.lock().expect("census");
    assert!(
        c.max_live <= 5,
        "at most replicas + maxSurge pods, saw {}",
        c.max_live
    );
    assert!(
        c.min_ready.is_some_and(|m| m >= 3),
        "at least replicas - maxUnavailable ready, saw {:?}",
        c.min_ready
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deployment_recreate_stops_old_pods_before_starting_new_ones() -> Result<()> {
    let h = Harness::start(&["deployment", "replicaset"], &["n1"]).await?;
    h.apply(deployment("db", 3, "db:v1", json!({"type": "Recreate"})))
        .await?;
    h.kubectl(&["rollout", "status", "deployment/db", "--timeout=60s"])
        .await?;
    let (census, watch) = census(h.client(), "app=db", None);
    h.wait_for("census primed", || async {
        Ok(census.lock().expect("census").live.len() == 3)
    })
    .await?;
    h.kubectl(&["set", "image", "deployment/db", "app=db:v2"])
        .await?;
    h.kubectl(&["rollout", "status", "deployment/db", "--timeout=60s"])
        .await?;
    let client = h.client();
    h.wait_for("three v2 pods", || async {
        let pods = pods_with(&client, "app=db").await?;
        Ok(pods.len() == 3 && pods.iter().all(|p| image(p) == "db:v2" && is_ready(p)))
    })
    .await?;
    watch.abort();
    assert!(
        !census.lock().expect("census").images_mixed,
        "v1 and v2 pods never coexist under Recreate"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deployment_scales_up_and_down() -> Result<()> {
    let h = Harness::start(&["deployment", "replicaset"], &["n1", "n2"]).await?;
    let client = h.client();
    h.apply(deployment(
        "api",
        2,
        "api:v1",
        json!({"type": "RollingUpdate"}),
    ))
    .await?;
    h.kubectl(&["rollout", "status", "deployment/api", "--timeout=60s"])
        .await?;
    h.kubectl(&["scale", "deployment/api", "--replicas=5"])
        .await?;
    let d_api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    h.wait_for("5 available", || async {
        let d = d_api.get("api").await?;
        let s = d.status.unwrap_or_default();
        Ok(s.available_replicas == Some(5) && s.observed_generation == d.metadata.generation)
    })
    .await?;
    assert_eq!(
        pods_with(&client, "app=api")
            .await?
            .iter()
            .filter(|p| is_live(p))
            .count(),
        5
    );
    h.kubectl(&["scale", "deployment/api", "--replicas=1"])
        .await?;
    h.wait_for("one pod left", || async {
        let pods = pods_with(&client, "app=api").await?;
        Ok(pods.len() == 1 && is_ready(&pods[0]))
    })
    .await?;
    let rs_api: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let sets = rs_api
        .list(&ListParams::default().labels("app=api"))
        .await?
        .items;
    assert_eq!(sets.len(), 1, "scaling makes no new ReplicaSet");
    assert_eq!(sets[0].spec.replicas, Some(1));
    Ok(())
}

/// The ReplicaSets of `app=NAME` as (image, spec.replicas, max-replicas annotation).
async fn replica_sets(client: &Client, name: &str) -> Result<Vec<(String, i32, String)>> {
    let rs_api: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let mut out: Vec<(String, i32, String)> = rs_api
        .list(&ListParams::default().labels(&format!("app={name}")))
        .await?
        .items
        .into_iter()
        .map(|rs| {
            let image = rs
                .spec
                .template
                .as_ref()
                .and_then(|t| t.spec.as_ref())
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            let max = rs
                .annotations()
                .get("deployment.kubernetes.io/max-replicas")
                .cloned()
                .unwrap_or_default();
            (image, rs.spec.replicas.unwrap_or(0), max)
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Upstream's "deployment should support proportional scaling": a rollout stalls on a
/// template whose pods never become ready; scaling the Deployment then shares the new
/// replicas between the old and new ReplicaSets in proportion to their sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deployment_scaled_mid_rollout_scales_its_replicasets_proportionally() -> Result<()> {
    let h = Harness::start(&["deployment", "replicaset"], &["n1", "n2", "n3"]).await?;
    let client = h.client();
    let strategy = json!({"type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 3, "maxUnavailable": 2}});
    h.apply(deployment("web", 10, "web:v1", strategy.clone())).await?;
    h.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"]).await?;
    // v2's pods run but never turn Ready: the rollout stops at 8 old + 5 new (13 = 10 + 3).
    let mut stalled = deployment("web", 10, "web:v2", strategy);
    stalled["spec"]["template"]["metadata"]["annotations"] =
        json!({coxswain_sim::READY: "false"});
    h.apply(stalled).await?;
    let want = vec![
        ("web:v1".to_owned(), 8, "13".to_owned()),
        ("web:v2".to_owned(), 5, "13".to_owned()),
    ];
    h.wait_for("the rollout to stall at 8 + 5", || async {
        Ok(replica_sets(&client, "web").await? == want)
    })
    .await?;
    h.kubectl(&["scale", "deployment/web", "--replicas=30"]).await?;
    let want = vec![
        ("web:v1".to_owned(), 20, "33".to_owned()),
        ("web:v2".to_owned(), 13, "33".to_owned()),
    ];
    h.wait_for("20 old + 13 new", || async {
        Ok(replica_sets(&client, "web").await? == want)
    })
    .await?;
    // The Deployment is still mid-rollout: nothing moved past the proportions.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(replica_sets(&client, "web").await?, want);
    let d_api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    h.wait_for("the ReplicaSets' pods", || async {
        let s = d_api.get("web").await?.status.unwrap_or_default();
        Ok(s.replicas == Some(33) && s.available_replicas == Some(20))
    })
    .await?;
    // Back to 10: 13 again, shared the same way.
    h.kubectl(&["scale", "deployment/web", "--replicas=10"]).await?;
    let want = vec![
        ("web:v1".to_owned(), 8, "13".to_owned()),
        ("web:v2".to_owned(), 5, "13".to_owned()),
    ];
    h.wait_for("8 old + 5 new again", || async {
        Ok(replica_sets(&client, "web").await? == want)
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deployment_reports_an_exceeded_progress_deadline() -> Result<()> {
    let h = Harness::start(&["deployment", "replicaset"], &["n1"]).await?;
    let mut d = deployment("stuck", 1, "stuck:v1", json!({"type": "RollingUpdate"}));
    d["spec"]["progressDeadlineSeconds"] = json!(2);
    d["spec"]["template"]["metadata"]["annotations"] = json!({coxswain_sim::READY: "false"});
    h.apply(d).await?;
    let api: Api<Deployment> = Api::namespaced(h.client(), "default");
    h.wait_for("ProgressDeadlineExceeded", || async {
        let d = api.get("stuck").await?;
        Ok(d.status
            .unwrap_or_default()
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| {
                c.type_.as_deref() == Some("Progressing")
                    && c.status.as_deref() == Some("False")
                    && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            }))
    })
    .await?;
    let err = h
        .kubectl(&["rollout", "status", "deployment/stuck", "--timeout=30s"])
        .await
        .expect_err("rollout status fails past the deadline");
    assert!(
        format!("{err:#}").contains("exceeded its progress deadline"),
        "{err:#}"
    );
    let available = api
        .get("stuck")
        .await?
        .status
        .unwrap_or_default()
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_.as_deref() == Some("Available"))
        .context("Available")?;
    assert_eq!(available.status.as_deref(), Some("False"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deployment_pause_holds_rollouts_and_history_is_capped() -> Result<()> {
    let h = Harness::start(&["deployment", "replicaset"], &["n1"]).await?;
    let client = h.client();
    let mut d = deployment("site", 2, "site:v1", json!({"type": "RollingUpdate"}));
    d["spec"]["revisionHistoryLimit"] = json!(1);
    h.apply(d).await?;
    h.kubectl(&["rollout", "status", "deployment/site", "--timeout=60s"])
        .await?;
    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let rs_api: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");

    h.kubectl(&["rollout", "pause", "deployment/site"]).await?;
    h.kubectl(&["set", "image", "deployment/site", "app=site:v2"])
        .await?;
    h.wait_for("the paused change observed", || async {
        let d = api.get("site").await?;
        let s = d.status.unwrap_or_default();
        Ok(s.observed_generation == d.metadata.generation
            && s.conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.reason.as_deref() == Some("DeploymentPaused")))
    })
    .await?;
    assert_eq!(
        rs_api
            .list(&ListParams::default().labels("app=site"))
            .await?
            .items
            .len(),
        1,
        "no rollout while paused"
    );

    h.kubectl(&["rollout", "resume", "deployment/site"]).await?;
    h.kubectl(&["rollout", "status", "deployment/site", "--timeout=60s"])
        .await?;
    h.kubectl(&["set", "image", "deployment/site", "app=site:v3"])
        .await?;
    h.kubectl(&["rollout", "status", "deployment/site", "--timeout=60s"])
        .await?;
    // v3 plus one old ReplicaSet (revisionHistoryLimit 1): v1 is deleted.
    h.wait_for("history capped", || async {
        let sets = rs_api
            .list(&ListParams::default().labels("app=site"))
            .await?
            .items;
        let revisions: Vec<String> = sets
            .iter()
            .filter_map(|rs| {
                rs.annotations()
                    .get("deployment.kubernetes.io/revision")
                    .cloned()
            })
            .collect();
        Ok(sets.len() == 2
            && revisions.contains(&"2".to_owned())
            && revisions.contains(&"3".to_owned()))
    })
    .await?;
    Ok(())
}

fn replica_set(name: &str, replicas: i32) -> ReplicaSet {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"rs": name}},
            "template": {"metadata": {"labels": {"rs": name}}, "spec": {"containers": [container("x:1")]}},
        },
    }))
    .expect("replica set")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicaset_replaces_deleted_pods_and_adopts_orphans() -> Result<()> {
    let h = Harness::start(&["replicaset"], &["n1"]).await?;
    let client = h.client();
    let rs_api: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let (census, watch) = census(client.clone(), "rs=frontend", None);
    rs_api
        .create(&PostParams::default(), &replica_set("frontend", 3))
        .await?;
    h.wait_for("3 ready replicas", || async {
        let rs = rs_api.get("frontend").await?;
        Ok(rs.status.and_then(|s| s.ready_replicas) == Some(3))
    })
    .await?;
    let first = pod_api
        .list(&ListParams::default().labels("rs=frontend"))
        .await?
        .items;
    assert_eq!(first.len(), 3);
    for p in &first {
        let owner = p.owner_references().first().cloned().context("owner")?;
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.controller,
                owner.block_owner_deletion
            ),
            ("ReplicaSet", Some(true), Some(true))
        );
    }

    // A deleted pod is replaced, by exactly one new pod.
    let victim = first[0].name_any();
    pod_api.delete(&victim, &DeleteParams::default()).await?;
    h.wait_for("replacement", || async {
        let pods = pod_api
            .list(&ListParams::default().labels("rs=frontend"))
            .await?
            .items;
        Ok(pods.len() == 3 && pods.iter().all(|p| p.name_any() != victim && is_ready(p)))
    })
    .await?;
    assert_eq!(
        census.lock().expect("census").created_order.len(),
        4,
        "no double creation"
    );

    // An orphan with matching labels is adopted, and the set goes back to 3.
    let orphan: Pod = serde_json::from_value(json!({
        "metadata": {"name": "stray", "labels": {"rs": "frontend"}},
        "spec": {"containers": [container("x:1")]},
    }))?;
    pod_api.create(&PostParams::default(), &orphan).await?;
    h.wait_for("orphan adopted and one pod removed", || async {
        let stray = pod_api.get_opt("stray").await?;
        let pods: Vec<Pod> = pod_api
            .list(&ListParams::default().labels("rs=frontend"))
            .await?
            .items
            .into_iter()
            .filter(is_live)
            .collect();
        let adopted_or_gone = stray.is_none_or(|s| {
            s.owner_references()
                .iter()
                .any(|r| r.name == "frontend" && r.controller == Some(true))
        });
        Ok(adopted_or_gone && pods.len() == 3)
    })
    .await?;
    let stray = pod_api.get_opt("stray").await?;
    if let Some(s) = stray {
        assert!(s.owner_references().iter().any(|r| r.name == "frontend"));
    }
    h.wait_event("frontend", "SuccessfulCreate").await?;
    h.wait_event("frontend", "SuccessfulDelete").await?;
    watch.abort();
    Ok(())
}

fn job(
    name: &str,
    completions: i32,
    parallelism: i32,
    exit_code: i32,
    extra: serde_json::Value,
) -> Job {
    let mut v = json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "completions": completions,
            "parallelism": parallelism,
            "template": {
                "metadata": {"annotations": {EXIT_CODE: exit_code.to_string(), RUN_MILLIS: "200"}},
                "spec": {"restartPolicy": "Never", "containers": [container("busybox")]},
            },
        },
    });
    if let (Some(spec), Some(extra)) = (v["spec"].as_object_mut(), extra.as_object()) {
        for (k, val) in extra {
            spec.insert(k.clone(), val.clone());
        }
    }
    serde_json::from_value(v).expect("job")
}

fn condition(job: &Job, type_: &str) -> Option<(String, Option<String>)> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map(|c| (c.type_.clone(), c.reason.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn job_runs_to_completion_retries_and_fails_at_the_backoff_limit() -> Result<()> {
    let h = Harness::start(&["job"], &["n1", "n2"]).await?;
    let client = h.client();
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");

    jobs.create(&PostParams::default(), &job("batch", 3, 2, 0, json!({})))
        .await?;
    h.wait_for("Complete", || async {
        Ok(condition(&jobs.get("batch").await?, "Complete").is_some())
    })
    .await?;
    let done = jobs.get("batch").await?;
    let status = done.status.clone().context("status")?;
    assert_eq!(status.succeeded, Some(3));
    assert!(status.start_time.is_some() && status.completion_time.is_some());
    let pods = pods_with(&client, "batch.kubernetes.io/job-name=batch").await?;
    assert_eq!(pods.len(), 3, "exactly completions pods");
    assert!(pods.iter().all(
        |p| p.labels().get("batch.kubernetes.io/controller-uid") == done.metadata.uid.as_ref()
    ));
    h.wait_event("batch", "Completed").await?;

    // Every pod fails: retried until failures exceed backoffLimit (2), then Failed.
    jobs.create(
        &PostParams::default(),
        &job("flaky", 1, 1, 1, json!({"backoffLimit": 2})),
    )
    .await?;
    h.wait_for("Failed", || async {
        Ok(condition(&jobs.get("flaky").await?, "Failed").is_some())
    })
    .await?;
    let failed = jobs.get("flaky").await?;
    assert_eq!(
        condition(&failed, "Failed").and_then(|c| c.1).as_deref(),
        Some("BackoffLimitExceeded")
    );
    assert_eq!(
        failed.status.as_ref().and_then(|s| s.failed),
        Some(3),
        "one try and two retries"
    );
    h.wait_event("flaky", "BackoffLimitExceeded").await?;
    Ok(())
}

/// The completion index of a pod (its annotation), checked against its label, name and
/// hostname, which must all agree.
fn index_of(job: &str, pod: &Pod) -> Result<i32> {
    const INDEX: &str = "batch.kubernetes.io/job-completion-index";
    let annotation = pod.annotations().get(INDEX).context("index annotation")?.clone();
    anyhow::ensure!(pod.labels().get(INDEX) == Some(&annotation), "label: {:?}", pod.labels());
    let name = pod.name_any();
    let prefix = format!("{job}-{annotation}-");
    anyhow::ensure!(
        name.starts_with(&prefix) && name.len() == prefix.len() + 5,
        "name {name} is not {prefix}<suffix>"
    );
    let spec = pod.spec.as_ref().context("spec")?;
    anyhow::ensure!(spec.hostname.as_deref() == Some(format!("{job}-{annotation}").as_str()));
    let env = spec.containers[0].env.clone().unwrap_or_default();
    let var = env.iter().find(|e| e.name == "JOB_COMPLETION_INDEX").context("env")?;
    let path = var.value_from.as_ref().and_then(|f| f.field_ref.as_ref()).map(|f| f.field_path.as_str());
    anyhow::ensure!(path == Some("metadata.annotations['batch.kubernetes.io/job-completion-index']"));
    Ok(annotation.parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn indexed_job_runs_one_pod_per_index_and_replaces_a_lost_one_with_the_same_index()
-> Result<()> {
    let h = Harness::start(&["job"], &["n1", "n2"]).await?;
    let client = h.client();
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job("shards", 5, 2, 0, json!({"completionMode": "Indexed"})),
    )
    .await?;
    h.wait_for("Complete", || async {
        Ok(condition(&jobs.get("shards").await?, "Complete").is_some())
    })
    .await?;
    let status = jobs.get("shards").await?.status.context("status")?;
    assert_eq!(status.completed_indexes.as_deref(), Some("0-4"));
    assert_eq!(status.succeeded, Some(5));
    let pods = pods_with(&client, "batch.kubernetes.io/job-name=shards").await?;
    let mut indexes: Vec<i32> = pods.iter().map(|p| index_of("shards", p)).collect::<Result<_>>()?;
    indexes.sort_unstable();
    assert_eq!(indexes, vec![0, 1, 2, 3, 4], "one pod per index");

    // A pod lost mid-run comes back with the same index.
    let mut long = job("slow", 3, 3, 0, json!({"completionMode": "Indexed"}));
    if let Some(t) = long.spec.as_mut().and_then(|s| s.template.metadata.as_mut()) {
        t.annotations.get_or_insert_with(BTreeMap::new).insert(RUN_MILLIS.into(), "3000".into());
    }
    jobs.create(&PostParams::default(), &long).await?;
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut victim = None;
    h.wait_for("three running pods", || async {
        let pods = pods_with(&client, "batch.kubernetes.io/job-name=slow").await?;
        let running: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .collect();
        Ok(running.len() == 3)
    })
    .await?;
    for p in pods_with(&client, "batch.kubernetes.io/job-name=slow").await? {
        if index_of("slow", &p)? == 1 {
            victim = Some(p.name_any());
        }
    }
    let victim = victim.context("the pod of index 1")?;
    pod_api.delete(&victim, &DeleteParams::default()).await?;
    h.wait_for("a new pod for index 1", || async {
        let pods = pods_with(&client, "batch.kubernetes.io/job-name=slow").await?;
        Ok(pods.iter().any(|p| p.name_any() != victim && p.name_any().starts_with("slow-1-")))
    })
    .await?;
    h.wait_for("Complete", || async {
        Ok(condition(&jobs.get("slow").await?, "Complete").is_some())
    })
    .await?;
    let status = jobs.get("slow").await?.status.context("status")?;
    assert_eq!(status.completed_indexes.as_deref(), Some("0-2"));
    assert_eq!(status.succeeded, Some(3));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn job_past_its_active_deadline_fails_and_stops_its_pods() -> Result<()> {
    let h = Harness::start(&["job"], &["n1"]).await?;
    let client = h.client();
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let mut slow = job("slow", 1, 1, 0, json!({"activeDeadlineSeconds": 2}));
    if let Some(t) = slow
        .spec
        .as_mut()
        .and_then(|s| s.template.metadata.as_mut())
    {
        t.annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(RUN_MILLIS.to_owned(), "600000".to_owned());
    }
    jobs.create(&PostParams::default(), &slow).await?;
    h.wait_for("Failed", || async {
        Ok(condition(&jobs.get("slow").await?, "Failed").is_some())
    })
    .await?;
    assert_eq!(
        condition(&jobs.get("slow").await?, "Failed")
            .and_then(|c| c.1)
            .as_deref(),
        Some("DeadlineExceeded")
    );
    h.wait_for("pods stopped", || async {
        Ok(pods_with(&client, "batch.kubernetes.io/job-name=slow")
            .await?
            .iter()
            .all(|p| !is_live(p)))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cronjob_creates_a_job_on_schedule() -> Result<()> {
    let h = Harness::start(&["cronjob", "job"], &["n1"]).await?;
    let client = h.client();
    let cj: CronJob = serde_json::from_value(json!({
        "metadata": {"name": "tick", "namespace": "default"},
        "spec": {
            "schedule": "* * * * *",
            "jobTemplate": {"spec": {"template": {
                "metadata": {"annotations": {EXIT_CODE: "0"}},
                "spec": {"restartPolicy": "Never", "containers": [container("busybox")]},
            }}},
        },
    }))?;
    let api: Api<CronJob> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &cj).await?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    // The next minute boundary is at most 60 s away.
    client_wait(Duration::from_secs(90), || async {
        let owned = jobs
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|j| {
                j.owner_references()
                    .iter()
                    .any(|r| r.name == "tick" && r.kind == "CronJob")
            });
        Ok(owned
            .into_iter()
            .any(|j| condition(&j, "Complete").is_some()))
    })
    .await
    .context("a completed job from the cronjob")?;
    h.wait_for("lastSuccessfulTime", || async {
        let s = api.get("tick").await?.status.unwrap_or_default();
        Ok(s.last_schedule_time.is_some() && s.last_successful_time.is_some())
    })
    .await?;
    let job = jobs
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .find(|j| j.name_any().starts_with("tick-"))
        .context("job")?;
    assert!(
        job.annotations()
            .contains_key("batch.kubernetes.io/cronjob-scheduled-timestamp")
    );
    h.wait_event("tick", "SuccessfulCreate").await?;
    Ok(())
}

async fn client_wait<F, Fut>(timeout: Duration, check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    coxswain_sim::wait_for(timeout, check).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daemonset_follows_nodes_as_they_come_and_go() -> Result<()> {
    let mut h = Harness::start(&["daemonset"], &["n1", "n2"]).await?;
    h.add_node(SimNode::new("tainted").taints(vec![Taint {
        key: "dedicated".into(),
        effect: "NoSchedule".into(),
        value: Some("db".into()),
        ..Taint::default()
    }]))
    .await?;
    let client = h.client();
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agent", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"ds": "agent"}},
            "template": {"metadata": {"labels": {"ds": "agent"}}, "spec": {"containers": [container("agent:1")]}},
        },
    }))?;
    let ds_api: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
    ds_api.create(&PostParams::default(), &ds).await?;
    let nodes_of = |pods: &[Pod]| {
        let mut n: Vec<String> = pods
            .iter()
            .filter(|p| is_live(p))
            .filter_map(|p| p.spec.as_ref()?.node_name.clone())
            .collect();
        n.sort();
        n
    };
    h.wait_for("a daemon on n1 and n2 only", || async {
        let pods = pods_with(&client, "ds=agent").await?;
        Ok(nodes_of(&pods) == ["n1", "n2"] && pods.iter().all(is_ready))
    })
    .await?;

    h.add_node(SimNode::new("n3")).await?;
    h.wait_for("a daemon on n3", || async {
        Ok(nodes_of(&pods_with(&client, "ds=agent").await?) == ["n1", "n2", "n3"])
    })
    .await?;
    h.wait_for("status counts 3", || async {
        let s = ds_api.get("agent").await?.status.unwrap_or_default();
        Ok(s.desired_number_scheduled == 3
            && s.number_ready == 3
            && s.updated_number_scheduled == Some(3))
    })
    .await?;

    // Rolling update with maxUnavailable 1 (the default): never two nodes without a
    // ready daemon.
    let (census, watch) = census(client.clone(), "ds=agent", None);
    h.wait_for("census sees 3 ready daemons", || async {
        Ok(census
            .lock()
            .expect("census")
            .live
            .values()
            .filter(|p| is_ready(p))
            .count()
            == 3)
    })
    .await?;
    census.lock().expect("census").armed = true;
    h.kubectl(&["set", "image", "daemonset/agent", "app=agent:2"])
        .await?;
    h.kubectl(&["rollout", "status", "daemonset/agent", "--timeout=60s"])
        .await?;
    h.wait_for("every daemon on agent:2", || async {
        let pods: Vec<Pod> = pods_with(&client, "ds=agent")
            .await?
            .into_iter()
            .filter(is_live)
            .collect();
        Ok(pods.len() == 3 && pods.iter().all(|p| image(p) == "agent:2" && is_ready(p)))
    })
    .await?;
    watch.abort();
    let min_ready = census.lock().expect("census").min_ready;
    assert!(
        min_ready.is_some_and(|m| m >= 2),
        "at most one node without a ready daemon, saw {min_ready:?}"
    );

    // n2 leaves the cluster: its daemon goes too.
    let nodes: Api<Node> = Api::all(client.clone());
    nodes.delete("n2", &DeleteParams::default()).await?;
    h.wait_for("no daemon for n2", || async {
        let pods = pods_with(&client, "ds=agent").await?;
        Ok(pods
            .iter()
            .all(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some("n2"))
            && nodes_of(&pods) == ["n1", "n3"])
    })
    .await?;
    h.wait_for("status counts 2", || async {
        Ok(ds_api
            .get("agent")
            .await?
            .status
            .unwrap_or_default()
            .desired_number_scheduled
            == 2)
    })
    .await?;
    let pod = pods_with(&client, "ds=agent")
        .await?
        .into_iter()
        .next()
        .context("pod")?;
    let tolerations = pod.spec.and_then(|s| s.tolerations).unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.key.as_deref() == Some("node.kubernetes.io/unreachable"))
    );
    Ok(())
}

/// A rolling update with `maxSurge: 1, maxUnavailable: 0`: each node's new daemon starts
/// beside the old one, which goes only once the new one is ready, one node at a time, so
/// every node has a ready daemon throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daemonset_max_surge_starts_new_daemons_before_stopping_old_ones() -> Result<()> {
    let h = Harness::start(&["daemonset"], &["n1", "n2", "n3", "n4"]).await?;
    let client = h.client();
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "proxy", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"ds": "proxy"}},
            "updateStrategy": {"type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": {"ds": "proxy"}}, "spec": {"containers": [container("proxy:1")]}},
        },
    }))?;
    let ds_api: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
    ds_api.create(&PostParams::default(), &ds).await?;
    h.kubectl(&["rollout", "status", "daemonset/proxy", "--timeout=60s"]).await?;
    let (census, watch) = census(client.clone(), "ds=proxy", None);
    h.wait_for("census sees 4 ready daemons", || async {
        let c = census.lock().expect("census");
        Ok(c.live.values().filter(|p| is_ready(p)).count() == 4)
    })
    .await?;
    {
        let mut c = census.lock().expect("census");
        c.armed = true;
        c.max_live = 0;
    }
    h.kubectl(&["set", "image", "daemonset/proxy", "app=proxy:2"]).await?;
    h.kubectl(&["rollout", "status", "daemonset/proxy", "--timeout=60s"]).await?;
    h.wait_for("every daemon on proxy:2", || async {
        let pods: Vec<Pod> = pods_with(&client, "ds=proxy").await?.into_iter().filter(is_live).collect();
        Ok(pods.len() == 4 && pods.iter().all(|p| image(p) == "proxy:2" && is_ready(p)))
    })
    .await?;
    watch.abort();
    let (min_ready, max_live) = {
        let c = census.lock().expect("census");
        (c.min_ready, c.max_live)
    };
    assert!(
        min_ready.is_some_and(|m| m >= 4),
        "a node went without a ready daemon: at least {min_ready:?} ready"
    );
    assert!(max_live <= 5, "more than maxSurge extra daemons at once: {max_live}");
    assert!(max_live == 5, "the update surged: {max_live}");
    let status = ds_api.get("proxy").await?.status.unwrap_or_default();
    assert_eq!(
        (status.updated_number_scheduled, status.number_available),
        (Some(4), Some(4))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn statefulset_starts_in_order_and_scales_down_from_the_top() -> Result<()> {
    let h = Harness::start(&["statefulset"], &["n1", "n2"]).await?;
    let client = h.client();
    let (census, watch) = census(client.clone(), "sts=web", Some("web"));
    let sts: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": 3,
            "serviceName": "web",
            "selector": {"matchLabels": {"sts": "web"}},
            "template": {"metadata": {"labels": {"sts": "web"}}, "spec": {"containers": [container("web:1")]}},
        },
    }))?;
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &sts).await?;
    h.kubectl(&["rollout", "status", "statefulset/web", "--timeout=60s"])
        .await?;
    {
        let c = census.lock().expect("census");
        assert_eq!(c.created_order, ["web-0", "web-1", "web-2"]);
        assert!(
            c.out_of_order.is_empty(),
            "created before lower ordinals were ready: {:?}",
            c.out_of_order
        );
    }
    let pods = pods_with(&client, "sts=web").await?;
    for p in &pods {
        assert_eq!(
            p.labels().get("statefulset.kubernetes.io/pod-name"),
            Some(&p.name_any())
        );
        assert_eq!(
            p.spec.as_ref().and_then(|s| s.hostname.clone()),
            Some(p.name_any())
        );
    }

    // Rolling update: one pod at a time from the highest ordinal.
    h.kubectl(&["set", "image", "statefulset/web", "app=web:2"])
        .await?;
    h.kubectl(&["rollout", "status", "statefulset/web", "--timeout=60s"])
        .await?;
    h.wait_for("every pod on web:2", || async {
        let pods: Vec<Pod> = pods_with(&client, "sts=web")
            .await?
            .into_iter()
            .filter(is_live)
            .collect();
        Ok(pods.len() == 3 && pods.iter().all(|p| image(p) == "web:2" && is_ready(p)))
    })
    .await?;
    assert_eq!(
        census.lock().expect("census").deleting_order,
        ["web-2", "web-1", "web-0"],
        "updated from the highest ordinal"
    );

    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await?;
    h.wait_for("only web-0 left", || async {
        let pods = pods_with(&client, "sts=web").await?;
        Ok(pods.len() == 1 && pods[0].name_any() == "web-0")
    })
    .await?;
    watch.abort();
    let deleting_order = census.lock().expect("census").deleting_order.clone();
    assert_eq!(
        deleting_order[3..],
        ["web-2", "web-1"],
        "scale-down from the highest ordinal"
    );
    let s = api.get("web").await?.status.unwrap_or_default();
    assert_eq!(s.current_revision, s.update_revision);
    Ok(())
}
