//! The scheduler against Coxswain's API server (in-process, with fake kubelets): what a
//! user sees — where pods land, why they stay Pending, and when they are placed after all.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use coxswain_scheduler::plugins::insufficient_resources;
use coxswain_scheduler::{
    CycleState, Extension, FilterPlugin, NodeInfo, PodInfo, Plugin, Scheduler, SchedulerConfig,
    Status,
};
use coxswain_sim::{SimCluster, SimNode};
use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, Event, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, Pod, PodAffinityTerm, PodAntiAffinity,
    PodSpec, ResourceRequirements, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::api::{Api, ListParams, PostParams};
use kube::Client;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(30);

/// The scheduler running in the background; stopped when dropped.
struct Running(JoinHandle<()>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn start(scheduler: Scheduler) -> Running {
    Running(tokio::spawn(async move {
        if let Err(e) = scheduler.run().await {
            panic!("scheduler stopped: {e}");
        }
    }))
}

fn start_default(client: &Client) -> Running {
    start(Scheduler::new(client.clone(), SchedulerConfig::default()))
}

fn pod(name: &str, cpu: &str) -> Pod {
    let mut requests = BTreeMap::new();
    if !cpu.is_empty() {
        requests.insert("cpu".to_owned(), Quantity(cpu.to_owned()));
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some("default".to_owned()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".to_owned(),
                image: Some("busybox".to_owned()),
                resources: Some(ResourceRequirements {
                    requests: Some(requests),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn taint(key: &str, value: &str) -> Taint {
    Taint {
        key: key.to_owned(),
        value: Some(value.to_owned()),
        effect: "NoSchedule".to_owned(),
        ..Default::default()
    }
}

async fn create(client: &Client, pod: &Pod) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), pod)
        .await
        .with_context(|| format!("create pod {:?}", pod.metadata.name))?;
    Ok(())
}

async fn get(client: &Client, name: &str) -> Result<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    Ok(api.get(name).await?)
}

fn node_of(pod: &Pod) -> Option<String> {
    pod.spec.as_ref().and_then(|s| s.node_name.clone())
}

/// Waits until the pod is bound; returns its node.
async fn wait_bound(cluster: &SimCluster, name: &str) -> Result<String> {
    let client = cluster.client();
    cluster
        .wait_for(WAIT, || {
            let client = client.clone();
            async move { Ok(node_of(&get(&client, name).await?).is_some()) }
        })
        .await
        .with_context(|| format!("pod {name} was not bound"))?;
    Ok(node_of(&get(&client, name).await?).unwrap_or_default())
}

/// Waits until the pod carries `PodScheduled=False` (Unschedulable); returns the message.
async fn wait_unschedulable(cluster: &SimCluster, name: &str) -> Result<String> {
    let client = cluster.client();
    let condition = |pod: &Pod| {
        pod.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled").cloned())
    };
    cluster
        .wait_for(WAIT, || {
            let client = client.clone();
            async move {
                let p = get(&client, name).await?;
                Ok(condition(&p).is_some_and(|c| {
                    c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
                }))
            }
        })
        .await
        .with_context(|| format!("pod {name} was not marked unschedulable"))?;
    let p = get(&client, name).await?;
    assert_eq!(node_of(&p), None, "an unschedulable pod stays unbound");
    Ok(condition(&p).and_then(|c| c.message).unwrap_or_default())
}

/// Waits for an Event about the pod with this reason; returns its message.
async fn wait_event(cluster: &SimCluster, pod: &str, reason: &str) -> Result<String> {
    let client = cluster.client();
    let find = |events: Vec<Event>| {
        events.into_iter().find(|e| {
            e.involved_object.name.as_deref() == Some(pod) && e.reason.as_deref() == Some(reason)
        })
    };
    let api: Api<Event> = Api::namespaced(client.clone(), "default");
    cluster
        .wait_for(WAIT, || {
            let api = api.clone();
            async move { Ok(find(api.list(&ListParams::default()).await?.items).is_some()) }
        })
        .await
        .with_context(|| format!("no {reason} event for pod {pod}"))?;
    let e = find(api.list(&ListParams::default()).await?.items).context("event vanished")?;
    assert_eq!(
        e.source.and_then(|s| s.component).as_deref(),
        Some("default-scheduler")
    );
    Ok(e.message.unwrap_or_default())
}

#[tokio::test]
async fn a_workloads_pods_are_spread_over_nodes() -> Result<()> {
    let cluster = SimCluster::start().await?;
    let client = cluster.client();
    let mut nodes = Vec::new();
    for (name, zone) in [("n1", "a"), ("n2", "a"), ("n3", "b")] {
        nodes.push(
            cluster
                .add_node(SimNode::new(name).labels([("topology.kubernetes.io/zone", zone)]))
                .await?,
        );
    }
    let _scheduler = start_default(&client);
    let mut names = Vec::new();
    for i in 0..6 {
        let mut p = pod(&format!("web-{i}"), "100m");
        p.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "web".into(),
            uid: "3f1c0b5e-web".into(),
            controller: Some(true),
            ..Default::default()
        }]);
        create(&client, &p).await?;
        names.push(format!("web-{i}"));
    }
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for name in &names {
        *per_node.entry(wait_bound(&cluster, name).await?).or_default() += 1;
    }
    assert_eq!(per_node.len(), 3, "every node got replicas: {per_node:?}");
    assert!(per_node.values().all(|n| *n == 2), "evenly spread: {per_node:?}");
    Ok(())
}

#[tokio::test]
async fn a_pod_that_fits_nowhere_stays_pending_and_is_placed_when_a_node_appears() -> Result<()> {
    let cluster = SimCluster::start().await?;
    let client = cluster.client();
    let _n1 = cluster.add_node(SimNode::new("small-1").cpu("1")).await?;
    let _n2 = cluster.add_node(SimNode::new("small-2").cpu("1")).await?;
    let _n3 = cluster
        .add_node(SimNode::new("gpu").cpu("8").taints(vec![taint("dedicated", "gpu")]))
        .await?;
    let _scheduler = start_default(&client);
    create(&client, &pod("big", "2")).await?;

    let message = wait_unschedulable(&cluster, "big").await?;
    let expected = "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, \
                    2 Insufficient cpu.";
    assert!(message.starts_with(expected), "condition message: {message}");
    let event = wait_event(&cluster, "big", "FailedScheduling").await?;
    assert!(event.starts_with(expected), "event message: {event}");

    let _n4 = cluster.add_node(SimNode::new("large").cpu("4")).await?;
    assert_eq!(wait_bound(&cluster, "big").await?, "large");
    let scheduled = wait_event(&cluster, "big", "Scheduled").await?;
    assert_eq!(scheduled, "Successfully assigned default/big to large");
    cluster
        .wait_for(WAIT, || {
            let client = client.clone();
            async move {
                let p = get(&client, "big").await?;
                Ok(p.status
                    .and_then(|s| s.conditions)
                    .into_iter()
                    .flatten()
                    .any(|c| {
                        // Set by the binding (the API server), Unschedulable's reason gone.
                        c.type_ == "PodScheduled"
                            && c.status == "True"
                            && c.reason.is_none()
                            && c.last_transition_time.is_some()
                    }))
            }
        })
        .await
        .context("PodScheduled did not turn True")?;
    Ok(())
}

#[tokio::test]
async fn resources_are_not_oversubscribed_by_consecutive_pods() -> Result<()> {
    let cluster = SimCluster::start().await?;
    let client = cluster.client();
    let _n1 = cluster.add_node(SimNode::new("n1").cpu("2")).await?;
    let _n2 = cluster.add_node(SimNode::new("n2").cpu("2")).await?;
    // Created before the scheduler starts, so they are scheduled back to back, before any
    // binding is seen through the watch: only the assume cache keeps the count right.
    for i in 0..5 {
        create(&client, &pod(&format!("p{i}"), "1")).await?;
    }
    let _scheduler = start_default(&client);
    let mut bound = HashMap::<String, usize>::new();
    let mut pending = Vec::new();
    cluster
        .wait_for(WAIT, || {
            let client = client.clone();
            async move {
                let api: Api<Pod> = Api::namespaced(client, "default");
                let pods = api.list(&ListParams::default()).await?.items;
                Ok(pods.iter().filter(|p| node_of(p).is_some()).count() == 4)
            }
        })
        .await?;
    for i in 0..5 {
        let p = get(&client, &format!("p{i}")).await?;
        match node_of(&p) {
            Some(n) => *bound.entry(n).or_default() += 1,
            None => pending.push(i),
        }
    }
    assert_eq!(bound.get("n1"), Some(&2), "{bound:?}");
    assert_eq!(bound.get("n2"), Some(&2), "{bound:?}");
    let message = wait_unschedulable(&cluster, &format!("p{}", pending[0])).await?;
    assert!(message.starts_with("0/2 nodes are available: 2 Insufficient cpu."), "{message}");
    Ok(())
}

#[tokio::test]
async fn node_selectors_affinity_taints_and_tolerations_are_honoured() -> Result<()> {
    let cluster = SimCluster::start().await?;
    let client = cluster.client();
    let _a = cluster
        .add_node(SimNode::new("a").labels([("zone", "a"), ("disk", "ssd")]))
        .await?;
    let _b = cluster.add_node(SimNode::new("b").labels([("zone", "b")])).await?;
    let _c = cluster
        .add_node(
            SimNode::new("c")
                .labels([("gpu", "true")])
                .taints(vec![taint("dedicated", "gpu")]),
        )
        .await?;
    let _scheduler = start_default(&client);

    let mut ssd = pod("wants-ssd", "");
    ssd.spec.as_mut().unwrap().node_selector = Some(labels(&[("disk", "ssd")]));
    create(&client, &ssd).await?;

    let mut zone_b = pod("wants-zone-b", "");
    zone_b.spec.as_mut().unwrap().affinity = Some(Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: "zone".into(),
                        operator: "In".into(),
                        values: Some(vec!["b".into()]),
                    }]),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    create(&client, &zone_b).await?;

    let gpu_pod = |name: &str, tolerate: bool| {
        let mut p = pod(name, "");
        let spec = p.spec.as_mut().unwrap();
        spec.node_selector = Some(labels(&[("gpu", "true")]));
        if tolerate {
            spec.tolerations = Some(vec![Toleration {
                key: Some("dedicated".into()),
                operator: Some("Equal".into()),
                value: Some("gpu".into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            }]);
        }
        p
    };
    create(&client, &gpu_pod("tolerates-gpu", true)).await?;
    create(&client, &gpu_pod("intolerant", false)).await?;
    // Plain pods never land on the tainted node.
    for i in 0..4 {
        create(&client, &pod(&format!("plain-{i}"), "")).await?;
    }

    assert_eq!(wait_bound(&cluster, "wants-ssd").await?, "a");
    assert_eq!(wait_bound(&cluster, "wants-zone-b").await?, "b");
    assert_eq!(wait_bound(&cluster, "tolerates-gpu").await?, "c");
    for i in 0..4 {
        assert_ne!(wait_bound(&cluster, &format!("plain-{i}")).await?, "c");
    }
    let message = wait_unschedulable(&cluster, "intolerant").await?;
    assert!(
        message.starts_with(
            "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, \
             2 node(s) didn't match Pod's node affinity/selector."
        ),
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn host_port_conflicts_keep_pods_apart() -> Result<()> {
    let cluster = SimCluster::start().await?;
    let client = cluster.client();
    let _n1 = cluster.add_node(SimNode::new("n1")).await?;
    let _n2 = cluster.add_node(SimNode::new("n2")).await?;
    let _scheduler = start_default(&client);
    let with_port = |name: &str| {
        let mut p = pod(name, "");
        p.spec.as_mut().unwrap().containers[0].ports = Some(vec![ContainerPort {
            container_port: 80,
            host_port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]);
        p
    };
    create(&client, &with_port("web-1")).await?;
    create(&client, &with_port("web-2")).await?;
    let a = wait_bound(&cluster, "web-1").await?;
    let b = wait_bound(&cluster, "web-2").await?;
    assert_ne!(a, b, "two pods holding host port 8080 share no node");
    create(&client, &with_port("web-3")).await?;
    let message = wait_unschedulable(&cluster, "web-3").await?;
    assert!(
        message.starts_with(
            "0/2 nodes are available: 2 node(s) didn't have free ports for the requested pod ports."
        ),
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn required_anti_affinity_keeps_replicas_on_distinct_nodes() -> Result<()> {
    let cluster = SimCluster::start().await?;
    let client = cluster.client();
    let _nodes = [
        cluster.add_node(SimNode::new("n1")).await?,
        cluster.add_node(SimNode::new("n2")).await?,
        cluster.add_node(SimNode::new("n3")).await?,
    ];
    let _scheduler = start_default(&client);
    let replica = |name: &str| {
        let mut p = pod(name, "");
        p.metadata.labels = Some(labels(&[("app", "db")]));
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                    label_selector: Some(LabelSelector {
                        match_labels: Some(labels(&[("app", "db")])),
                        ..Default::default()
                    }),
                    topology_key: "kubernetes.io/hostname".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        p
    };
    for i in 0..4 {
        create(&client, &replica(&format!("db-{i}"))).await?;
    }
    let mut placed = Vec::new();
    let mut pending = Vec::new();
    cluster
        .wait_for(WAIT, || {
            let client = client.clone();
            async move {
                let api: Api<Pod> = Api::namespaced(client, "default");
                let pods = api.list(&ListParams::default()).await?.items;
                Ok(pods.iter().filter(|p| node_of(p).is_some()).count() == 3)
            }
        })
        .await?;
    for i in 0..4 {
        match node_of(&get(&client, &format!("db-{i}")).await?) {
            Some(n) => placed.push(n),
            None => pending.push(format!("db-{i}")),
        }
    }
    placed.sort();
    assert_eq!(placed, vec!["n1", "n2", "n3"]);
    assert_eq!(pending.len(), 1);
    let message = wait_unschedulable(&cluster, &pending[0]).await?;
    assert!(
        message.starts_with("0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."),
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn higher_priority_pods_are_scheduled_first() -> Result<()> {
    let cluster = SimCluster::start().await?;
    let client = cluster.client();
    // Room for exactly one pod.
    let _n1 = cluster.add_node(SimNode::new("n1").pods(1)).await?;
    let with_priority = |name: &str, priority: i32| {
        let mut p = pod(name, "");
        let spec = p.spec.as_mut().unwrap();
        spec.priority = Some(priority);
        // Only ordering is under test here: no preemption.
        spec.preemption_policy = Some("Never".into());
        p
    };
    // The low-priority pod is older; both wait when the scheduler starts.
    create(&client, &with_priority("low", 0)).await?;
    create(&client, &with_priority("high", 1000)).await?;
    let _scheduler = start_default(&client);
    assert_eq!(wait_bound(&cluster, "high").await?, "n1");
    let message = wait_unschedulable(&cluster, "low").await?;
    assert!(message.starts_with("0/1 nodes are available: 1 Too many pods."), "{message}");
    Ok(())
}

#[tokio::test]
async fn a_higher_priority_pod_preempts_a_lower_priority_one() -> Result<()> {
    let cluster = SimCluster::start().await?;
    let client = cluster.client();
    let _n1 = cluster.add_node(SimNode::new("n1").cpu("2")).await?;
    let _scheduler = start_default(&client);
    let mut low = pod("low", "1500m");
    low.spec.as_mut().unwrap().priority = Some(0);
    create(&client, &low).await?;
    assert_eq!(wait_bound(&cluster, "low").await?, "n1");

    let mut high = pod("high", "1500m");
    high.spec.as_mut().unwrap().priority = Some(1000);
    create(&client, &high).await?;
    assert_eq!(wait_bound(&cluster, "high").await?, "n1");
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    cluster
        .wait_for(WAIT, || {
            let api = api.clone();
            async move { Ok(api.get_opt("low").await?.is_none()) }
        })
        .await
        .context("the victim was not deleted")?;
    let message = wait_event(&cluster, "low", "Preempted").await?;
    assert!(message.starts_with("Preempted by pod"), "{message}");
    Ok(())
}

/// A filter that lets any pod onto any node, whatever it requests (an "overcommit" policy),
/// registered under the built-in's name so it replaces it.
struct Overcommit;

impl Plugin for Overcommit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }
}

impl FilterPlugin for Overcommit {
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        // Still refuse nodes with no pod slots left; ignore CPU and memory.
        let reasons: Vec<String> = insufficient_resources(pod, node)
            .into_iter()
            .filter(|r| r == "Too many pods")
            .collect();
        match reasons.first() {
            Some(r) => Status::unschedulable(r.clone()),
            None => Status::success(),
        }
    }
}

#[tokio::test]
async fn a_user_plugin_replaces_a_builtin() -> Result<()> {
    let cluster = SimCluster::start().await?;
    let client = cluster.client();
    let _n1 = cluster.add_node(SimNode::new("n1").cpu("1")).await?;
    let scheduler = Scheduler::new(client.clone(), SchedulerConfig::default())
        .with_plugin(Extension::Filter(Arc::new(Overcommit)));
    assert_eq!(
        scheduler
            .profile()
            .filter_names()
            .iter()
            .filter(|n| **n == "NodeResourcesFit")
            .count(),
        1,
        "replaced, not added"
    );
    let _scheduler = start(scheduler);
    create(&client, &pod("greedy", "16")).await?;
    assert_eq!(wait_bound(&cluster, "greedy").await?, "n1");
    Ok(())
}
