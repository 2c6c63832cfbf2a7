//! The cluster-level controllers against an in-process API server with fake kubelets
//! (`coxswain-sim`): EndpointSlices and Endpoints, node lifecycle and taint eviction, node
//! IPAM, the garbage collector, namespace deletion, default ServiceAccounts, and leader
//! election between two managers.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use coxswain_controllers::{Config, Context, ControllerManager};
use coxswain_runtime::leader::LeaderConfig;
use coxswain_sim::{READY, SimCluster, SimNode};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, Namespace, Node, Pod, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// Polls `check` until it holds (within [`WAIT`]); fails naming `what` otherwise.
async fn until<F, Fut>(what: &str, check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    coxswain_sim::wait_for(WAIT, check)
        .await
        .with_context(|| what.to_owned())
}

/// Polls `name` through `api` until `wanted` holds for it (within [`WAIT`]) and returns
/// the object as it was then; fails naming `what` otherwise.
async fn get_when<K>(api: &Api<K>, name: &str, what: &str, wanted: impl Fn(&K) -> bool) -> Result<K>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let seen = std::sync::Mutex::new(None);
    until(what, || async {
        let obj = api.get(name).await?;
        let ok = wanted(&obj);
        if ok {
            *seen.lock().expect("seen") = Some(obj);
        }
        Ok(ok)
    })
    .await?;
    seen.into_inner()
        .expect("seen")
        .with_context(|| format!("{name} was seen as {what}"))
}

fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Settings that make every controller quick.
fn quick_config() -> Config {
    Config {
        node_monitor_grace_period: Duration::from_secs(2),
        node_monitor_period: Duration::from_millis(100),
        default_toleration_seconds: 1,
        cluster_cidr: "10.244.0.0/16".to_owned(),
        node_cidr_mask_size: 24,
        gc_resync_period: Duration::from_secs(5),
        ..Config::default()
    }
}

fn start(client: Client, config: Config, controllers: &[&'static str]) -> (Context, ControllerManager) {
    let ctx = Context::new(client, config);
    let manager = ControllerManager::start(ctx.clone(), controllers);
    (ctx, manager)
}

fn object<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("a valid object")
}

async fn create_ns(client: &Client, name: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    api.create(&PostParams::default(), &object(json!({"metadata": {"name": name}})))
        .await
        .with_context(|| format!("create namespace {name}"))?;
    Ok(())
}

/// A pod bound to `node`, labelled `app=web`, with one container exposing `port_name`.
fn web_pod(name: &str, node: &str, port_name: &str, port: i32, ready: bool) -> Pod {
    let annotations = if ready { json!({}) } else { json!({READY: "false"}) };
    object(json!({
        "metadata": {"name": name, "labels": {"app": "web"}, "annotations": annotations},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "image": "busybox",
                "ports": [{"name": port_name, "containerPort": port}]}],
        },
    }))
}

async fn slices_of(client: &Client, ns: &str, service: &str) -> Result<Vec<EndpointSlice>> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    Ok(api
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await?
        .items)
}

/// pod name -> (port, ready, serving, terminating, node) from every slice of the Service.
type Seen = BTreeMap<String, (Option<i32>, bool, bool, bool, String)>;

fn endpoints_by_pod(slices: &[EndpointSlice]) -> Seen {
    let mut out = BTreeMap::new();
    for s in slices {
        let port = s.ports.as_ref().and_then(|p| p.first()).and_then(|p| p.port);
        for e in s.endpoints.iter().flatten() {
            let c = e.conditions.clone().unwrap_or_default();
            let name = e.target_ref.as_ref().and_then(|r| r.name.clone()).unwrap_or_default();
            out.insert(
                name,
                (
                    port,
                    c.ready == Some(true),
                    c.serving == Some(true),
                    c.terminating == Some(true),
                    e.node_name.clone().unwrap_or_default(),
                ),
            );
        }
    }
    out
}

async fn wait_endpoints(client: &Client, want: &Seen) -> Result<Vec<EndpointSlice>> {
    let last = std::sync::Mutex::new(Seen::new());
    let found = coxswain_sim::wait_for(WAIT, || async {
        let slices = slices_of(client, "default", "web").await?;
        let seen = endpoints_by_pod(&slices);
        // The controller creates and updates before it deletes, so the endpoints can be all
        // there while an emptied slice (the placeholder of "no endpoints") still waits for
        // its deletion: done once that is gone too.
        let leftover = !want.is_empty() && slices.iter().any(|s| s.endpoints.as_ref().is_none_or(Vec::is_empty));
        let done = seen == *want && !leftover;
        *last.lock().unwrap() = seen;
        Ok(done)
    })
    .await;
    if found.is_err() {
        bail!("endpoint slices never became {want:?}; last seen {:?}", last.lock().unwrap());
    }
    slices_of(client, "default", "web").await
}

#[tokio::test]
async fn endpoint_slices_and_endpoints_follow_pods() -> Result<()> {
    init_logging();
    let cluster = SimCluster::start().await?;
    let client = cluster.client();
    let _node = cluster
        .add_node(SimNode::new("n1").labels([("topology.kubernetes.io/zone", "zone-a")]))
        .await?;
    // The API server keeps the `kubernetes` Service's endpoints itself (no selector).
    let kube_slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let kube_endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let kube_before = (
        kube_slices.get("kubernetes").await?.resource_version(),
        kube_endpoints.get("kubernetes").await?.resource_version(),
    );
    let (ctx, _manager) = start(client.clone(), quick_config(), &["endpointslice", "endpoint"]);

    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc = services
        .create(
            &PostParams::default(),
            &object(json!({
                "metadata": {"name": "web", "labels": {"team": "a"}},
                "spec": {"selector": {"app": "web"},
                    "ports": [{"name": "http", "port": 80, "targetPort": "web"}]},
            })),
        )
        .await?;
    // A Service without a selector is left alone.
    services
        .create(
            &PostParams::default(),
            &object(json!({"metadata": {"name": "manual"}, "spec": {"ports": [{"port": 80}]}})),
        )
        .await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut held = web_pod("a", "n1", "web", 8080, true);
    held.metadata.finalizers = Some(vec!["test.coxswain.dev/hold".to_owned()]);
    pods.create(&PostParams::default(), &held).await?;
    pods.create(&PostParams::default(), &web_pod("b", "n1", "web", 9090, true)).await?;
    pods.create(&PostParams::default(), &web_pod("c", "n1", "web", 8080, false)).await?;
    // Not selected: other labels.
    let mut other = web_pod("x", "n1", "web", 8080, true);
    other.metadata.labels = Some(BTreeMap::from([("app".to_owned(), "other".to_owned())]));
    pods.create(&PostParams::default(), &other).await?;

    let n1 = "n1".to_owned();
    let want = BTreeMap::from([
        ("a".to_owned(), (Some(8080), true, true, false, n1.clone())),
        ("b".to_owned(), (Some(9090), true, true, false, n1.clone())),
        ("c".to_owned(), (Some(8080), false, false, false, n1.clone())),
    ]);
    let slices = wait_endpoints(&client, &want).await?;
    // Named ports resolve per pod: 8080 and 9090 cannot share a slice.
    assert_eq!(slices.len(), 2, "one slice per resolved port set");
    for s in &slices {
        let labels = s.labels();
        assert_eq!(labels.get("kubernetes.io/service-name").map(String::as_str), Some("web"));
        assert_eq!(
            labels.get("endpointslice.kubernetes.io/managed-by").map(String::as_str),
            Some("endpointslice-controller.k8s.io")
        );
        assert_eq!(labels.get("team").map(String::as_str), Some("a"), "Service labels are copied");
        let owner = &s.owner_references()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Service", svc.uid().unwrap().as_str()));
        assert_eq!(owner.controller, Some(true));
        for e in s.endpoints.iter().flatten() {
            assert_eq!(e.zone.as_deref(), Some("zone-a"), "zone from the node's label");
        }
    }
    assert!(
        slices_of(&client, "default", "manual").await?.is_empty(),
        "selector-less Services get no slices"
    );

    // Legacy Endpoints: ready a and b (in two subsets), not-ready c.
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    until("the Endpoints object lists a and b ready, c not ready", || async {
        let Some(ep) = endpoints.get_opt("web").await? else { return Ok(false) };
        let mut ready = Vec::new();
        let mut not_ready = Vec::new();
        for s in ep.subsets.iter().flatten() {
            let port = s.ports.as_ref().and_then(|p| p.first()).map(|p| p.port);
            for a in s.addresses.iter().flatten() {
                ready.push((a.target_ref.as_ref().and_then(|r| r.name.clone()), port));
            }
            for a in s.not_ready_addresses.iter().flatten() {
                not_ready.push((a.target_ref.as_ref().and_then(|r| r.name.clone()), port));
            }
        }
        ready.sort();
        Ok(ready == [(Some("a".into()), Some(8080)), (Some("b".into()), Some(9090))]
            && not_ready == [(Some("c".into()), Some(8080))])
    }).await?;
    assert!(endpoints.get_opt("manual").await?.is_none());
    let kube_after = (
        kube_slices.get("kubernetes").await?.resource_version(),
        kube_endpoints.get("kubernetes").await?.resource_version(),
    );
    assert_eq!(kube_after, kube_before, "the controllers left the kubernetes Service's endpoints alone");

    // Nothing changes: a reconcile writes nothing.
    let before: Vec<(String, String)> = slices
        .iter()
        .map(|s| (s.name_any(), s.resource_version().unwrap_or_default()))
        .collect();
    let reconciles = ctx.metrics().reconciles("endpointslice", true);
    services
        .patch("web", &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"annotations": {"touch": "1"}}})))
        .await?;
    coxswain_sim::wait_for(WAIT, || async { Ok(ctx.metrics().reconciles("endpointslice", true) > reconciles) })
        .await?;
    let after: Vec<(String, String)> = slices_of(&client, "default", "web")
        .await?
        .iter()
        .map(|s| (s.name_any(), s.resource_version().unwrap_or_default()))
        .collect();
    let mut before_sorted = before.clone();
    before_sorted.sort();
    let mut after_sorted = after;
    after_sorted.sort();
    assert_eq!(before_sorted, after_sorted, "an unchanged Service's slices are not rewritten");

    // b becomes unready (readiness probe failing): ready and serving go false.
    pods.patch_status(
        "b",
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})),
    )
    .await?;
    // a starts terminating (its finalizer holds it): listed, not ready, still serving.
    pods.delete("a", &DeleteParams::default()).await?;
    let want = BTreeMap::from([
        ("a".to_owned(), (Some(8080), false, true, true, n1.clone())),
        ("b".to_owned(), (Some(9090), false, false, false, n1.clone())),
        ("c".to_owned(), (Some(8080), false, false, false, n1.clone())),
    ]);
    wait_endpoints(&client, &want).await?;
    // The legacy object drops the terminating pod.
    until("terminating pods leave the Endpoints", || async {
        let ep = endpoints.get("web").await?;
        let names: Vec<Option<String>> = ep
            .subsets
            .iter()
            .flatten()
            .flat_map(|s| s.addresses.iter().flatten().chain(s.not_ready_addresses.iter().flatten()))
            .map(|a| a.target_ref.as_ref().and_then(|r| r.name.clone()))
            .collect();
        Ok(!names.contains(&Some("a".into())) && names.len() == 2)
    }).await?;

    // a goes away for good; b's slice (9090) stays, c is alone at 8080.
    pods.patch("a", &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"finalizers": null}})))
        .await?;
    let want = BTreeMap::from([
        ("b".to_owned(), (Some(9090), false, false, false, n1.clone())),
        ("c".to_owned(), (Some(8080), false, false, false, n1.clone())),
    ]);
    wait_endpoints(&client, &want).await?;

    // publishNotReadyAddresses: every endpoint is ready.
    services
        .patch("web", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"publishNotReadyAddresses": true}})))
        .await?;
    let want = BTreeMap::from([
        ("b".to_owned(), (Some(9090), true, false, false, n1.clone())),
        ("c".to_owned(), (Some(8080), true, false, false, n1.clone())),
    ]);
    wait_endpoints(&client, &want).await?;

    // A pod whose labels change leaves the slices.
    pods.patch("c", &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"labels": {"app": "gone"}}})))
        .await?;
    let want = BTreeMap::from([("b".to_owned(), (Some(9090), true, false, false, n1.clone()))]);
    wait_endpoints(&client, &want).await?;
    Ok(())
}

#[tokio::test]
async fn slices_hold_at_most_100_endpoints() -> Result<()> {
    init_logging();
    let cluster = SimCluster::start().await?;
    let client = cluster.client();
    let _node = cluster.add_node(SimNode::new("n1").pods(500)).await?;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    services
        .create(
            &PostParams::default(),
            &object(json!({"metadata": {"name": "web"},
                "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})),
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for i in 0..230 {
        pods.create(&PostParams::default(), &web_pod(&format!("p{i}"), "n1", "web", 8080, true))
            .await?;
    }
    let (_ctx, _manager) = start(client.clone(), quick_config(), &["endpointslice"]);
    until("every pod becomes a ready endpoint", || async {
        let slices = slices_of(&client, "default", "web").await?;
        let seen = endpoints_by_pod(&slices);
        let ready = seen.values().filter(|e| e.1).count();
        Ok(ready == 230)
    }).await?;
    let slices = slices_of(&client, "default", "web").await?;
    let sizes: Vec<usize> = slices.iter().map(|s| s.endpoints.as_ref().map_or(0, Vec::len)).collect();
    assert_eq!(slices.len(), 3, "{sizes:?}");
    assert!(sizes.iter().all(|n| *n <= 100), "{sizes:?}");
    Ok(())
}

fn taints(node: &Node) -> Vec<(String, String)> {
    let mut t: Vec<(String, String)> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|t| (t.key, t.effect))
        .collect();
    t.sort();
    t
}

fn ready_condition(node: &Node) -> Option<(String, String)> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
}

fn pod_with_tolerations(name: &str, node: &str, tolerations: serde_json::Value) -> Pod {
    object(json!({
        "metadata": {"name": name},
        "spec": {"nodeName": node, "tolerations": tolerations,
            "containers": [{"name": "c", "image": "busybox"}]},
    }))
}

async fn events_with_reason(client: &Client, reason: &str) -> Result<Vec<Event>> {
    let api: Api<Event> = Api::all(client.clone());
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect())
}

#[tokio::test]
async fn dead_node_is_tainted_and_its_pods_evicted() -> Result<()> {
    init_logging();
    let cluster = SimCluster::start().await?;
    let client = cluster.client();
    let dead = cluster
        .add_node(SimNode::new("dead").lease_interval(Duration::from_millis(200)))
        .await?;
    let _alive = cluster
        .add_node(SimNode::new("alive").lease_interval(Duration::from_millis(200)))
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let unreachable = "node.kubernetes.io/unreachable";
    pods.create(&PostParams::default(), &pod_with_tolerations("defaulted", "dead", json!([]))).await?;
    pods.create(
        &PostParams::default(),
        &pod_with_tolerations("forever", "dead", json!([{"key": unreachable, "operator": "Exists", "effect": "NoExecute"}])),
    )
    .await?;
    pods.create(
        &PostParams::default(),
        &pod_with_tolerations("seconds", "dead", json!([{"key": unreachable, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2}])),
    )
    .await?;
    pods.create(&PostParams::default(), &pod_with_tolerations("elsewhere", "alive", json!([]))).await?;
    until("the pods run", || async {
        let list = pods.list(&ListParams::default()).await?;
        Ok(list.items.iter().all(|p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        }))
    }).await?;

    let (_ctx, _manager) = start(client.clone(), quick_config(), &["nodelifecycle"]);
    dead.stop().await;

    let nodes: Api<Node> = Api::all(client.clone());
    let node = get_when(&nodes, "dead", "the dead node becomes Unknown and tainted unreachable", |node| {
        ready_condition(node) == Some(("Unknown".into(), "NodeStatusUnknown".into()))
            && taints(node)
                == [
                    (unreachable.to_owned(), "NoExecute".to_owned()),
                    (unreachable.to_owned(), "NoSchedule".to_owned()),
                ]
    })
    .await?;
    for c in node.status.and_then(|s| s.conditions).unwrap_or_default() {
        assert_eq!(c.status, "Unknown", "condition {} is Unknown", c.type_);
    }

    let evicted = |name: &'static str| {
        let pods = pods.clone();
        async move {
            Ok::<bool, anyhow::Error>(match pods.get_opt(name).await? {
                None => true,
                Some(p) => p.metadata.deletion_timestamp.is_some(),
            })
        }
    };
    until("a pod without tolerations is evicted after the default seconds", || evicted("defaulted")).await?;
    until("a pod is evicted after its tolerationSeconds", || evicted("seconds")).await?;
    // Evicted after "seconds" (2 s), so the pass that evicted it also looked at "forever".
    assert!(!evicted("forever").await?, "a toleration without seconds is never evicted");
    let forever = pods.get("forever").await?;
    let ready = forever
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status);
    assert_eq!(ready.as_deref(), Some("False"), "pods on the dead node are marked not ready");
    assert!(!evicted("elsewhere").await?, "pods on healthy nodes stay");
    let alive = nodes.get("alive").await?;
    assert!(taints(&alive).is_empty());
    assert_eq!(ready_condition(&alive).map(|r| r.0).as_deref(), Some("True"));

    let not_ready = events_with_reason(&client, "NodeNotReady").await?;
    assert!(
        not_ready.iter().any(|e| e.involved_object.name.as_deref() == Some("dead")
            && e.source.as_ref().and_then(|s| s.component.as_deref()) == Some("node-controller")),
        "a NodeNotReady Event about the node"
    );
    let evictions = events_with_reason(&client, "TaintManagerEviction").await?;
    assert!(
        evictions.iter().any(|e| e.involved_object.name.as_deref() == Some("defaulted")),
        "a TaintManagerEviction Event about the evicted pod"
    );

    // The node comes back: its kubelet renews the Lease and reports Ready again.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let renew = json!({"spec": {"renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now())}});
    leases.patch("dead", &PatchParams::default(), &Patch::Merge(&renew)).await?;
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
    let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "True",
        "reason": "KubeletReady", "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
    nodes.patch_status("dead", &PatchParams::default(), &Patch::Merge(&ready)).await?;
    until("the taints go when the node is Ready again", || async { Ok(taints(&nodes.get("dead").await?).is_empty()) }).await?;
    Ok(())
}

#[tokio::test]
async fn node_ipam_allocates_distinct_cidrs_and_survives_restart() -> Result<()> {
    init_logging();
    let cluster = SimCluster::start().await?;
    let client = cluster.client();
    let config = Config {
        cluster_cidr: "10.200.0.0/22".to_owned(),
        node_cidr_mask_size: 24,
        ..quick_config()
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let cidr_of = |name: &'static str| {
        let nodes = nodes.clone();
        async move {
            let node = nodes.get(name).await?;
            let spec = node.spec.unwrap_or_default();
            if let (Some(one), Some(list)) = (&spec.pod_cidr, &spec.pod_cidrs) {
                assert_eq!(list, &vec![one.clone()], "podCIDRs holds podCIDR");
            }
            Ok::<Option<String>, anyhow::Error>(spec.pod_cidr)
        }
    };
    let add = |name: &'static str, index: u32| {
        let client = client.clone();
        async move { coxswain_sim::create_node_object(&client, &SimNode::new(name), index).await }
    };
    add("a", 1).await?;
    let (_, manager) = start(client.clone(), config.clone(), &["nodeipam"]);
    add("b", 2).await?;
    coxswain_sim::wait_for(WAIT, || async { Ok(cidr_of("a").await?.is_some() && cidr_of("b").await?.is_some()) })
        .await?;
    let (a, b) = (cidr_of("a").await?.unwrap(), cidr_of("b").await?.unwrap());
    assert_ne!(a, b);

    // Restart: a node added meanwhile gets a block nobody holds.
    manager.shutdown().await;
    add("c", 3).await?;
    let (_ctx, manager) = start(client.clone(), config.clone(), &["nodeipam"]);
    coxswain_sim::wait_for(WAIT, || async { Ok(cidr_of("c").await?.is_some()) }).await?;
    let c = cidr_of("c").await?.unwrap();
    assert!(c != a && c != b, "{c} is new (a={a}, b={b})");
    assert_eq!(cidr_of("a").await?.unwrap(), a, "allocations are never changed");

    // Four /24 in a /22: d takes the last; e waits with an Event until a block frees up.
    add("d", 4).await?;
    coxswain_sim::wait_for(WAIT, || async { Ok(cidr_of("d").await?.is_some()) }).await?;
    let d = cidr_of("d").await?.unwrap();
    let mut all = vec![a.clone(), b.clone(), c.clone(), d.clone()];
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 4);
    add("e", 5).await?;
    until("an exhausted range is reported on the node", || async {
        Ok(events_with_reason(&client, "CIDRNotAvailable")
            .await?
            .iter()
            .any(|e| e.involved_object.name.as_deref() == Some("e")))
    }).await?;
    assert_eq!(cidr_of("e").await?, None);
    nodes.delete("b", &DeleteParams::default()).await?;
    until("a deleted node's block is released and reused", || async { Ok(cidr_of("e").await?.is_some()) }).await?;
    assert_eq!(cidr_of("e").await?.unwrap(), b);
    manager.shutdown().await;
    Ok(())
}

fn config_map(name: &str, owners: serde_json::Value, finalizers: serde_json::Value) -> ConfigMap {
    object(json!({
        "metadata": {"name": name, "ownerReferences": owners, "finalizers": finalizers},
        "data": {"k": "v"},
    }))
}

fn owner_ref(owner: &ConfigMap, block: bool) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "name": owner.name_any(),
        "uid": owner.uid().unwrap(), "blockOwnerDeletion": block})
}

#[tokio::test]
async fn garbage_collector_cascades_in_three_modes() -> Result<()> {
    init_logging();
    let cluster = SimCluster::start().await?;
    let client = cluster.client();
    let (_ctx, _manager) = start(client.clone(), quick_config(), &["garbagecollector"]);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    let gone = |name: &'static str| {
        let cms = cms.clone();
        async move { Ok::<bool, anyhow::Error>(cms.get_opt(name).await?.is_none()) }
    };

    // Background: the owner goes at once, then its dependents (a ConfigMap and a Pod).
    let owner = cms.create(&pp, &config_map("bg-owner", json!([]), json!([]))).await?;
    cms.create(&pp, &config_map("bg-dep", json!([owner_ref(&owner, false)]), json!([]))).await?;
    let mut pod = pod_with_tolerations("bg-pod", "", json!([]));
    pod.spec.as_mut().unwrap().node_name = None;
    pod.metadata.owner_references = Some(vec![object(owner_ref(&owner, false))]);
    pods.create(&pp, &pod).await?;
    // A dependent with a second, living owner keeps living (without the dead reference).
    let keeper = cms.create(&pp, &config_map("keeper", json!([]), json!([]))).await?;
    cms.create(
        &pp,
        &config_map("shared", json!([owner_ref(&owner, false), owner_ref(&keeper, false)]), json!([])),
    )
    .await?;
    cms.delete("bg-owner", &DeleteParams::background()).await?;
    assert!(gone("bg-owner").await?, "background deletion removes the owner at once");
    until("background deletion removes the dependents", || async {
        Ok(gone("bg-dep").await? && pods.get_opt("bg-pod").await?.is_none())
    }).await?;
    until("a dependent with a living owner stays, without the dangling reference", || async {
        let shared = cms.get("shared").await?;
        Ok(shared.owner_references().len() == 1 && shared.owner_references()[0].name == "keeper")
    }).await?;

    // Foreground: the owner waits for its blocking dependents.
    let owner = cms.create(&pp, &config_map("fg-owner", json!([]), json!([]))).await?;
    cms.create(
        &pp,
        &config_map("fg-blocking", json!([owner_ref(&owner, true)]), json!(["test.coxswain.dev/hold"])),
    )
    .await?;
    cms.create(&pp, &config_map("fg-other", json!([owner_ref(&owner, false)]), json!([]))).await?;
    cms.delete("fg-owner", &DeleteParams::foreground()).await?;
    until("foreground deletion deletes the dependents", || async {
        let dep = cms.get("fg-blocking").await?;
        Ok(dep.metadata.deletion_timestamp.is_some() && gone("fg-other").await?)
    }).await?;
    let waiting = cms.get_opt("fg-owner").await?.context("the owner waits for its blocking dependent")?;
    assert!(waiting.metadata.deletion_timestamp.is_some());
    assert!(waiting.finalizers().iter().any(|f| f == "foregroundDeletion"));
    cms.patch("fg-blocking", &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"finalizers": null}})))
        .await?;
    until("the owner goes once its blocking dependent is gone", || gone("fg-owner")).await?;

    // Foreground down a chain: owner <- mid <- leaf (held). mid is deleted in foreground
    // too, so the owner waits for mid, which waits for leaf.
    let owner = cms.create(&pp, &config_map("chain-owner", json!([]), json!([]))).await?;
    let mid = cms.create(&pp, &config_map("chain-mid", json!([owner_ref(&owner, true)]), json!([]))).await?;
    cms.create(
        &pp,
        &config_map("chain-leaf", json!([owner_ref(&mid, true)]), json!(["test.coxswain.dev/hold"])),
    )
    .await?;
    cms.delete("chain-owner", &DeleteParams::foreground()).await?;
    until("the cascade reaches the leaf", || async {
        Ok(cms.get("chain-leaf").await?.metadata.deletion_timestamp.is_some())
    }).await?;
    for name in ["chain-owner", "chain-mid"] {
        let waiting = cms.get(name).await?;
        assert!(
            waiting.finalizers().iter().any(|f| f == "foregroundDeletion"),
            "{name} waits in foreground"
        );
    }
    cms.patch("chain-leaf", &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"finalizers": null}})))
        .await?;
    until("the chain goes bottom-up", || async { Ok(gone("chain-mid").await? && gone("chain-owner").await?) }).await?;

    // Orphan: the dependents stay, without the reference.
    let owner = cms.create(&pp, &config_map("or-owner", json!([]), json!([]))).await?;
    cms.create(&pp, &config_map("or-dep", json!([owner_ref(&owner, true)]), json!([]))).await?;
    cms.delete("or-owner", &DeleteParams::orphan()).await?;
    until("the orphaned owner goes", || gone("or-owner")).await?;
    let dep = cms.get("or-dep").await?;
    assert!(dep.owner_references().is_empty(), "the orphan lost its ownerReference");
    assert!(dep.metadata.deletion_timestamp.is_none());

    // A dependent created after its owner is gone is collected too.
    cms.create(
        &pp,
        &config_map("late", json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "nobody", "uid": "00000000-dead-beef-0000-000000000000"}]), json!([])),
    )
    .await?;
    until("an object whose owner never existed is collected", || gone("late")).await?;
    Ok(())
}

#[tokio::test]
async fn namespace_deletion_with_controllers_running() -> Result<()> {
    init_logging();
    let cluster = SimCluster::start().await?;
    let client = cluster.client();
    let _node = cluster.add_node(SimNode::new("n1")).await?;
    let all = coxswain_controllers::all_controllers();
    let (_ctx, _manager) = start(client.clone(), quick_config(), &all);
    create_ns(&client, "doomed").await?;
    // Pods are admitted once the namespace has its default ServiceAccount (as upstream's e2e
    // framework, wait for the controller to create it).
    let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), "doomed");
    coxswain_sim::wait_for(WAIT, || async { Ok(sa.get_opt("default").await?.is_some()) })
        .await
        .context("the namespace gets its default ServiceAccount")?;
    let services: Api<Service> = Api::namespaced(client.clone(), "doomed");
    services
        .create(
            &PostParams::default(),
            &object(json!({"metadata": {"name": "web"},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}})),
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "doomed");
    for i in 0..3 {
        pods.create(&PostParams::default(), &web_pod(&format!("p{i}"), "n1", "http", 80, true))
            .await?;
    }
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    cms.create(&PostParams::default(), &config_map("cm", json!([]), json!([]))).await?;
    until("the controllers fill the namespace", || async {
        let slices = slices_of(&client, "doomed", "web").await?;
        let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), "doomed");
        Ok(endpoints_by_pod(&slices).len() == 3 && sa.get_opt("default").await?.is_some())
    }).await?;

    cluster
        .kubectl_run(&["delete", "namespace", "doomed", "--timeout=60s"])
        .await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    until("the namespace is gone", || async { Ok(namespaces.get_opt("doomed").await?.is_none()) }).await?;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "doomed");
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "doomed");
    assert!(pods.list(&ListParams::default()).await?.items.is_empty());
    assert!(slices.list(&ListParams::default()).await?.items.is_empty());
    assert!(sas.list(&ListParams::default()).await?.items.is_empty(), "no ServiceAccount was recreated");
    Ok(())
}

#[tokio::test]
async fn every_namespace_gets_a_default_service_account() -> Result<()> {
    init_logging();
    let cluster = SimCluster::start().await?;
    let client = cluster.client();
    let (_ctx, _manager) = start(client.clone(), quick_config(), &["serviceaccount"]);
    let default_sa = |ns: &'static str| {
        let client = client.clone();
        async move {
            let api: Api<ServiceAccount> = Api::namespaced(client, ns);
            Ok::<Option<ServiceAccount>, anyhow::Error>(api.get_opt("default").await?)
        }
    };
    // (The simulated cluster creates `default`'s itself.)
    for ns in ["kube-system", "kube-public"] {
        coxswain_sim::wait_for(WAIT, || async { Ok(default_sa(ns).await?.is_some()) })
            .await
            .with_context(|| format!("a default ServiceAccount in {ns}"))?;
    }
    create_ns(&client, "team-a").await?;
    until("a new namespace gets one", || async { Ok(default_sa("team-a").await?.is_some()) }).await?;
    let uid = default_sa("team-a").await?.unwrap().uid();
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), "team-a");
    api.delete("default", &DeleteParams::default()).await?;
    until("a deleted default ServiceAccount is recreated", || async {
        Ok(default_sa("team-a").await?.is_some_and(|sa| sa.uid() != uid))
    }).await?;
    Ok(())
}

#[tokio::test]
async fn every_namespace_gets_the_root_ca_certificate_and_keeps_it() -> Result<()> {
    use coxswain_controllers::rootcacertpublisher::{CONFIG_MAP, DESCRIPTION, DESCRIPTION_ANNOTATION};
    init_logging();
    let cluster = SimCluster::start().await?;
    let client = cluster.client();
    let ca = cluster.ca_pem();
    let config = Config { root_ca_cert: Some(ca.clone()), ..quick_config() };
    let (_ctx, _manager) = start(client.clone(), config, &["rootcacertpublisher"]);
    let published = |ns: &'static str| {
        let client = client.clone();
        let ca = ca.clone();
        async move {
            let api: Api<ConfigMap> = Api::namespaced(client, ns);
            Ok::<Option<ConfigMap>, anyhow::Error>(api.get_opt(CONFIG_MAP).await?.filter(|cm| {
                cm.data.as_ref().and_then(|d| d.get("ca.crt")) == Some(&ca)
                    && cm.annotations().get(DESCRIPTION_ANNOTATION).map(String::as_str) == Some(DESCRIPTION)
            }))
        }
    };
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        coxswain_sim::wait_for(WAIT, || async { Ok(published(ns).await?.is_some()) })
            .await
            .with_context(|| format!("kube-root-ca.crt in {ns}"))?;
    }
    create_ns(&client, "team-b").await?;
    coxswain_sim::wait_for(WAIT, || async { Ok(published("team-b").await?.is_some()) })
        .await
        .context("a new namespace gets it")?;

    // Deleted, it comes back; edited, it is put back (extra keys removed).
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "team-b");
    let uid = published("team-b").await?.unwrap().uid();
    api.delete(CONFIG_MAP, &DeleteParams::default()).await?;
    coxswain_sim::wait_for(WAIT, || async {
        Ok(published("team-b").await?.is_some_and(|cm| cm.uid() != uid))
    })
    .await
    .context("a deleted kube-root-ca.crt is recreated")?;
    let tamper = json!({"data": {"ca.crt": "not a CA", "extra": "x"}});
    api.patch(CONFIG_MAP, &PatchParams::default(), &Patch::Merge(&tamper)).await?;
    coxswain_sim::wait_for(WAIT, || async {
        Ok(published("team-b").await?.is_some_and(|cm| cm.data.as_ref().is_some_and(|d| d.len() == 1)))
    })
    .await
    .context("an edited kube-root-ca.crt is put back")?;
    Ok(())
}

fn quick_lease(identity: &str) -> LeaderConfig {
    LeaderConfig {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(200),
        ..LeaderConfig::new("kube-controller-manager", identity)
    }
}

async fn lease_holder(client: &Client) -> Result<Option<String>> {
    let api: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    Ok(api
        .get_opt("kube-controller-manager")
        .await?
        .and_then(|l| l.spec?.holder_identity))
}

#[tokio::test]
async fn two_managers_one_leader() -> Result<()> {
    init_logging();
    let cluster = SimCluster::start().await?;
    let client = cluster.client();
    let enabled = vec!["serviceaccount"];
    let spawn_manager = |identity: &'static str| {
        let ctx = Context::new(client.clone(), quick_config());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(coxswain_controllers::run_elected(
            ctx.clone(),
            enabled.clone(),
            quick_lease(identity),
            async {
                let _ = stopped.await;
            },
        ));
        (ctx, stop, task)
    };
    let (first, stop_first, first_task) = spawn_manager("first");
    until("the first manager leads", || async { Ok(lease_holder(&client).await?.as_deref() == Some("first")) }).await?;
    let (second, stop_second, second_task) = spawn_manager("second");

    create_ns(&client, "one").await?;
    let sa_in = |ns: &'static str| {
        let client = client.clone();
        async move {
            let api: Api<ServiceAccount> = Api::namespaced(client, ns);
            Ok::<bool, anyhow::Error>(api.get_opt("default").await?.is_some())
        }
    };
    coxswain_sim::wait_for(WAIT, || sa_in("one")).await?;
    until("the leader acts", || async { Ok(first.metrics().total_reconciles() > 0) }).await?;
    assert_eq!(second.metrics().total_reconciles(), 0, "the follower does nothing");
    assert_eq!(lease_holder(&client).await?.as_deref(), Some("first"));

    // The leader stops (releasing its Lease): the second takes over.
    stop_first.send(()).ok();
    first_task.await?;
    until("the second manager takes over", || async { Ok(lease_holder(&client).await?.as_deref() == Some("second")) }).await?;
    let first_count = first.metrics().total_reconciles();
    create_ns(&client, "two").await?;
    coxswain_sim::wait_for(WAIT, || sa_in("two")).await?;
    until("the new leader acts", || async { Ok(second.metrics().total_reconciles() > 0) }).await?;
    assert_eq!(first.metrics().total_reconciles(), first_count, "the stopped manager does nothing");
    assert!(second.metrics().is_leader());

    // Another candidate takes the Lease (as after a partition): the second stops its work
    // at once, then wins the Lease back once the intruder's term expires.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let steal = json!({"spec": {"holderIdentity": "intruder", "leaseDurationSeconds": 3,
        "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now())}});
    leases
        .patch("kube-controller-manager", &PatchParams::default(), &Patch::Merge(&steal))
        .await?;
    until("a manager that lost its Lease stops leading", || async { Ok(!second.metrics().is_leader()) }).await?;
    until("it re-enters the election and wins once the Lease expires", || async {
        Ok(second.metrics().is_leader() && lease_holder(&client).await?.as_deref() == Some("second"))
    }).await?;
    create_ns(&client, "three").await?;
    coxswain_sim::wait_for(WAIT, || sa_in("three")).await?;
    stop_second.send(()).ok();
    second_task.await?;
    Ok(())
}

#[tokio::test]
async fn replicaset_pods_on_a_dead_node_are_replaced_elsewhere() -> Result<()> {
    init_logging();
    let cluster = SimCluster::start().await?;
    let client = cluster.client();
    let dead = cluster
        .add_node(SimNode::new("dead").lease_interval(Duration::from_millis(200)))
        .await?;
    let (_ctx, _manager) = start(client.clone(), quick_config(), &["replicaset", "nodelifecycle"]);
    let scheduler = tokio::spawn(
        coxswain_scheduler::Scheduler::new(client.clone(), coxswain_scheduler::SchedulerConfig::default()).run(),
    );
    let replicasets: Api<k8s_openapi::api::apps::v1::ReplicaSet> = Api::namespaced(client.clone(), "default");
    replicasets
        .create(
            &PostParams::default(),
            &object(json!({
                "metadata": {"name": "web"},
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
            })),
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let running_on = |node: &'static str| {
        let pods = pods.clone();
        async move {
            let list = pods.list(&ListParams::default().labels("app=web")).await?;
            Ok::<usize, anyhow::Error>(
                list.items
                    .iter()
                    .filter(|p| {
                        p.metadata.deletion_timestamp.is_none()
                            && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
                            && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    })
                    .count(),
            )
        }
    };
    until("both replicas run on the only node", || async { Ok(running_on("dead").await? == 2) }).await?;
    let _alive = cluster
        .add_node(SimNode::new("alive").lease_interval(Duration::from_millis(200)))
        .await?;
    dead.stop().await;
    until("the replicas are evicted from the dead node and replaced on the live one", || async { Ok(running_on("alive").await? == 2) }).await?;
    assert_eq!(running_on("dead").await?, 0);
    scheduler.abort();
    Ok(())
}
