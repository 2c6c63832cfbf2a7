//! Node lifecycle: a node whose Lease (`kube-node-lease/NAME`) is not renewed within the
//! grace period gets its conditions set to Unknown (`NodeStatusUnknown`), the
//! `node.kubernetes.io/unreachable` NoExecute and NoSchedule taints, and its pods' Ready
//! conditions set to False; a node whose kubelet reports Ready=False gets the `not-ready`
//! taints; a Ready node has neither. The taint eviction part deletes pods on NoExecute
//! tainted nodes once their toleration runs out.
//!
//! Staleness is measured on this process's monotonic clock from the moment a new
//! `renewTime` was observed (as upstream does), so clock skew between a node and the
//! controller-manager cannot evict anything; a node is given the full grace period after the
//! controller starts.
//!
//! Tolerations: a pod without any toleration for `unreachable`/`not-ready` gets
//! `Config::default_toleration_seconds` (what upstream's DefaultTolerationSeconds admission
//! plugin adds at creation); a toleration with `tolerationSeconds` waits that long from the
//! taint's `timeAdded`; a toleration without seconds tolerates forever. An untolerated
//! NoExecute taint of any other key evicts at once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use coxswain_runtime::events::{EventType, Recorder, object_ref};
use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::ResourceExt;
use serde_json::json;
use tracing::{debug, info, warn};

use crate::Context;

/// The controller's name in `--controllers`.
pub const NAME: &str = "nodelifecycle";
/// `source.component` of the node Events.
pub const COMPONENT: &str = "node-controller";
/// `source.component` of eviction Events.
pub const TAINT_EVICTION_COMPONENT: &str = "taint-eviction-controller";
/// Taint of a node whose status is Unknown.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Taint of a node whose kubelet reports NotReady.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// Namespace of node Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// The conditions set to Unknown when a node stops reporting.
const MONITORED_CONDITIONS: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// Errors of the node lifecycle controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call about a node failed.
    #[error("failed to {action} node {node}: {source}")]
    Node {
        action: &'static str,
        node: String,
        #[source]
        source: kube::Error,
    },
    /// An API call about a pod failed.
    #[error("failed to {action} pod {pod}: {source}")]
    Pod {
        action: &'static str,
        pod: String,
        #[source]
        source: kube::Error,
    },
    /// The watch machinery stopped.
    #[error("failed to run the node lifecycle controller: its watches ended")]
    Stopped,
}

fn reflect<K>(api: Api<K>) -> (Store<K>, impl std::future::Future<Output = ()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff());
    (reader, stream.for_each(|_| std::future::ready(())))
}

/// When a node's `renewTime` last changed, on our clock.
struct Observed {
    renew: String,
    at: Instant,
}

struct Monitor {
    ctx: Context,
    nodes: Store<Node>,
    leases: Store<Lease>,
    pods: Store<Pod>,
    node_events: Recorder,
    eviction_events: Recorder,
    observed: HashMap<String, Observed>,
    /// Pods whose deletion this process asked for (by uid), until they are gone.
    evicted: HashSet<String>,
}

fn condition<'a>(node: &'a Node, type_: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

fn ready_status(node: &Node) -> String {
    condition(node, "Ready")
        .map(|c| c.status.clone())
        .unwrap_or_else(|| "Unknown".to_owned())
}

/// The taints the node should carry for its Ready condition (`key`, `effect`).
fn wanted_taints(ready: &str) -> Vec<(&'static str, &'static str)> {
    match ready {
        "True" => Vec::new(),
        "False" => vec![(TAINT_NOT_READY, "NoExecute"), (TAINT_NOT_READY, "NoSchedule")],
        _ => vec![(TAINT_UNREACHABLE, "NoExecute"), (TAINT_UNREACHABLE, "NoSchedule")],
    }
}

/// The node's taints with the lifecycle taints set to `wanted`; `None` when unchanged.
fn retaint(current: &[Taint], wanted: &[(&str, &str)], now: Timestamp) -> Option<Vec<Taint>> {
    let ours = |t: &Taint| t.key == TAINT_UNREACHABLE || t.key == TAINT_NOT_READY;
    let have: Vec<(&str, &str)> = current
        .iter()
        .filter(|t| ours(t))
        .map(|t| (t.key.as_str(), t.effect.as_str()))
        .collect();
    let same = have.len() == wanted.len() && wanted.iter().all(|w| have.contains(w));
    if same {
        return None;
    }
    let mut out: Vec<Taint> = current
        .iter()
        .filter(|t| !ours(t) || wanted.contains(&(t.key.as_str(), t.effect.as_str())))
        .cloned()
        .collect();
    for (key, effect) in wanted {
        if !out.iter().any(|t| t.key == *key && t.effect == *effect) {
            out.push(Taint {
                key: (*key).to_owned(),
                effect: (*effect).to_owned(),
                time_added: (*effect == "NoExecute").then_some(Time(now)),
                value: None,
            });
        }
    }
    Some(out)
}

/// Whether `toleration` tolerates `taint` (upstream `ToleratesTaint`).
fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or("");
    let operator = toleration.operator.as_deref().unwrap_or("Equal");
    if key.is_empty() {
        return operator == "Exists";
    }
    if key != taint.key {
        return false;
    }
    match operator {
        "Exists" => true,
        _ => toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
    }
}

/// How long `pod` may stay on a node with `taints` (NoExecute ones only): `Some(ZERO)` for
/// at once, `None` for forever; otherwise the earliest deadline.
fn eviction_deadline(pod: &Pod, taints: &[Taint], default_seconds: i64) -> Option<Timestamp> {
    let tolerations: &[Toleration] = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    let mut deadline: Option<Timestamp> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let added = taint.time_added.as_ref().map_or_else(Timestamp::now, |t| t.0);
        let matching: Vec<&Toleration> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        let seconds = if matching.is_empty() {
            let defaulted = taint.key == TAINT_UNREACHABLE || taint.key == TAINT_NOT_READY;
            if defaulted { Some(default_seconds) } else { Some(0) }
        } else if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            None
        } else {
            matching.iter().filter_map(|t| t.toleration_seconds).min()
        };
        let Some(seconds) = seconds else { continue };
        let due = added
            .checked_add(SignedDuration::from_secs(seconds.max(0)))
            .unwrap_or(added);
        deadline = Some(deadline.map_or(due, |d: Timestamp| d.min(due)));
    }
    deadline
}

fn pod_key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

/// The cached pods, by the node they are bound to (one pass over the cache).
fn pods_by_node(pods: &Store<Pod>) -> HashMap<String, Vec<Arc<Pod>>> {
    let mut out: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
    for pod in pods.state() {
        if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
            out.entry(node).or_default().push(pod);
        }
    }
    out
}

impl Monitor {

    /// Whether the node's Lease (and its Ready heartbeat) have gone unrenewed for longer than
    /// the grace period. Either one changing counts as a sign of life, as upstream.
    fn stale(&mut self, node: &Node) -> bool {
        let name = node.name_any();
        let lease = self
            .leases
            .get(&ObjectRef::new(&name).within(NODE_LEASE_NAMESPACE))
            .and_then(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| t.0.to_string()))
            .unwrap_or_default();
        let heartbeat = condition(node, "Ready")
            .and_then(|c| c.last_heartbeat_time.as_ref())
            .map(|t| t.0.to_string())
            .unwrap_or_default();
        let renew = format!("{lease}|{heartbeat}");
        let now = Instant::now();
        let entry = self.observed.entry(name).or_insert_with(|| Observed {
            renew: renew.clone(),
            at: now,
        });
        if entry.renew != renew {
            entry.renew = renew;
            entry.at = now;
        }
        now.duration_since(entry.at) > self.ctx.config.node_monitor_grace_period
    }

    async fn mark_unknown(&self, node: &Node) -> Result<Node, Error> {
        let name = node.name_any();
        let now = Time(Timestamp::now());
        let mut updated = node.clone();
        let status = updated.status.get_or_insert_with(Default::default);
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        for type_ in MONITORED_CONDITIONS {
            match conditions.iter_mut().find(|c| c.type_ == type_) {
                Some(c) => {
                    if c.status != "Unknown" {
                        c.last_transition_time = Some(now.clone());
                    }
                    c.status = "Unknown".to_owned();
                    c.reason = Some("NodeStatusUnknown".to_owned());
                    c.message = Some("Kubelet stopped posting node status.".to_owned());
                }
                None => conditions.push(NodeCondition {
                    type_: type_.to_owned(),
                    status: "Unknown".to_owned(),
                    reason: Some("NodeStatusNeverUpdated".to_owned()),
                    message: Some("Kubelet never posted node status.".to_owned()),
                    last_heartbeat_time: None,
                    last_transition_time: Some(now.clone()),
                }),
            }
        }
        let api: Api<Node> = Api::all(self.ctx.client.clone());
        let written = api
            .replace_status(&name, &PostParams::default(), &updated)
            .await
            .map_err(|source| Error::Node {
                action: "mark Unknown",
                node: name.clone(),
                source,
            })?;
        warn!(node = %name, "node stopped renewing its lease: status Unknown");
        self.node_events
            .record(
                &object_ref(node),
                EventType::Normal,
                "NodeNotReady",
                &format!("Node {name} status is now: NodeNotReady"),
            )
            .await;
        Ok(written)
    }

    async fn set_taints(&self, node: &Node, ready: &str) -> Result<(), Error> {
        let current = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let Some(taints) = retaint(&current, &wanted_taints(ready), Timestamp::now()) else {
            return Ok(());
        };
        let name = node.name_any();
        let mut updated = node.clone();
        updated.spec.get_or_insert_with(Default::default).taints =
            (!taints.is_empty()).then_some(taints);
        let api: Api<Node> = Api::all(self.ctx.client.clone());
        api.replace(&name, &PostParams::default(), &updated)
            .await
            .map_err(|source| Error::Node {
                action: "update the taints of",
                node: name.clone(),
                source,
            })?;
        info!(node = %name, ready, "node lifecycle taints updated");
        Ok(())
    }

    /// Sets the Ready condition of the node's pods to False.
    async fn mark_pods_not_ready(&self, pods: &[Arc<Pod>]) -> Result<(), Error> {
        for pod in pods {
            let Some(conditions) = pod.status.as_ref().and_then(|s| s.conditions.clone()) else {
                continue;
            };
            if !conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True") {
                continue;
            }
            let now = Time(Timestamp::now());
            let conditions: Vec<_> = conditions
                .into_iter()
                .map(|mut c| {
                    if c.type_ == "Ready" {
                        c.status = "False".to_owned();
                        c.reason = Some("NodeNotReady".to_owned());
                        c.last_transition_time = Some(now.clone());
                    }
                    c
                })
                .collect();
            let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &pod.namespace().unwrap_or_default());
            let patch = json!({"status": {"conditions": conditions}});
            match api
                .patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.node_events
                        .record(
                            &object_ref(pod.as_ref()),
                            EventType::Warning,
                            "NodeNotReady",
                            "Node is not ready",
                        )
                        .await;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => {
                    return Err(Error::Pod {
                        action: "mark not ready",
                        pod: pod_key(pod),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// One pass over every node: health, taints, pod readiness.
    async fn monitor_nodes(&mut self) -> Result<(), Error> {
        let mut first_error = None;
        let nodes = self.nodes.state();
        let mut pods = pods_by_node(&self.pods);
        let names: HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
        self.observed.retain(|n, _| names.contains(n));
        for node in nodes {
            let mut node = node.as_ref().clone();
            let result: Result<(), Error> = async {
                if self.stale(&node) && ready_status(&node) != "Unknown" {
                    node = self.mark_unknown(&node).await?;
                }
                let ready = ready_status(&node);
                self.set_taints(&node, &ready).await?;
                if ready != "True" {
                    let on_node = pods.remove(&node.name_any()).unwrap_or_default();
                    self.mark_pods_not_ready(&on_node).await?;
                }
                Ok(())
            }
            .await;
            self.ctx.metrics().count(NAME, result.is_ok());
            if let Err(e) = result {
                debug!(error = %e, "node pass failed; retried next period");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Deletes the pods whose tolerations of their node's NoExecute taints ran out.
    async fn evict(&mut self) -> Result<(), Error> {
        let now = Timestamp::now();
        let default_seconds = self.ctx.config.default_toleration_seconds;
        let live: HashSet<String> = self.pods.state().iter().filter_map(|p| p.uid()).collect();
        self.evicted.retain(|uid| live.contains(uid));
        let mut pending = 0;
        let mut first_error = None;
        let mut pods = pods_by_node(&self.pods);
        for node in self.nodes.state() {
            let taints: Vec<Taint> = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|t| t.effect == "NoExecute")
                .collect();
            if taints.is_empty() {
                continue;
            }
            for pod in pods.remove(&node.name_any()).unwrap_or_default() {
                let uid = pod.uid().unwrap_or_default();
                if pod.metadata.deletion_timestamp.is_some() || self.evicted.contains(&uid) {
                    continue;
                }
                let Some(deadline) = eviction_deadline(&pod, &taints, default_seconds) else {
                    continue;
                };
                if deadline > now {
                    pending += 1;
                    continue;
                }
                let api: Api<Pod> =
                    Api::namespaced(self.ctx.client.clone(), &pod.namespace().unwrap_or_default());
                let params = DeleteParams {
                    preconditions: Some(kube::api::Preconditions {
                        uid: Some(uid.clone()),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                let deleted = match api.delete(&pod.name_any(), &params).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                    Err(e) => Err(e),
                };
                match deleted {
                    Ok(()) => {
                        info!(pod = %pod_key(&pod), node = %node.name_any(), "evicted pod from tainted node");
                        self.evicted.insert(uid);
                        self.eviction_events
                            .record(
                                &object_ref(pod.as_ref()),
                                EventType::Normal,
                                "TaintManagerEviction",
                                &format!("Marking for deletion Pod {}", pod_key(&pod)),
                            )
                            .await;
                    }
                    Err(source) => {
                        first_error.get_or_insert(Error::Pod {
                            action: "evict",
                            pod: pod_key(&pod),
                            source,
                        });
                    }
                }
            }
        }
        self.ctx.metrics().set_queue_depth("taint-eviction", pending);
        first_error.map_or(Ok(()), Err)
    }
}

/// Runs the node lifecycle controller (with taint eviction) until its watches end.
pub async fn run(ctx: Context) -> Result<(), Error> {
    let client = ctx.client.clone();
    let (nodes, nodes_task) = reflect(Api::<Node>::all(client.clone()));
    let (leases, leases_task) = reflect(Api::<Lease>::namespaced(client.clone(), NODE_LEASE_NAMESPACE));
    let (pods, pods_task) = reflect(Api::<Pod>::all(client.clone()));
    let mut monitor = Monitor {
        node_events: Recorder::new(client.clone(), COMPONENT, None),
        eviction_events: Recorder::new(client, TAINT_EVICTION_COMPONENT, None),
        ctx,
        nodes,
        leases,
        pods,
        observed: HashMap::new(),
        evicted: HashSet::new(),
    };
    let work = async move {
        let ready = async {
            let _ = monitor.nodes.wait_until_ready().await;
            let _ = monitor.leases.wait_until_ready().await;
            let _ = monitor.pods.wait_until_ready().await;
        };
        ready.await;
        info!(
            grace = ?monitor.ctx.config.node_monitor_grace_period,
            "starting the node lifecycle controller"
        );
        let mut tick = tokio::time::interval(monitor.ctx.config.node_monitor_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = monitor.monitor_nodes().await {
                warn!(error = %e, "node monitoring pass incomplete");
            }
            if let Err(e) = monitor.evict().await {
                warn!(error = %e, "taint eviction pass incomplete");
            }
        }
    };
    tokio::select! {
        () = work => {}
        () = nodes_task => {}
        () = leases_task => {}
        () = pods_task => {}
    }
    Err(Error::Stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, effect: &str, added: Timestamp) -> Taint {
        Taint {
            key: key.to_owned(),
            effect: effect.to_owned(),
            time_added: Some(Time(added)),
            value: None,
        }
    }

    fn pod(tolerations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [], "tolerations": tolerations}}))
            .unwrap()
    }

    #[test]
    fn eviction_deadlines() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let unreachable = [taint(TAINT_UNREACHABLE, "NoExecute", t0)];
        let at = |s: i64| Some(t0.checked_add(SignedDuration::from_secs(s)).unwrap());
        let cases = [
            (json!([]), &unreachable[..], at(300)),
            (json!([{"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 7}]), &unreachable[..], at(7)),
            (json!([{"key": TAINT_UNREACHABLE, "operator": "Exists"}]), &unreachable[..], None),
            (json!([{"operator": "Exists"}]), &unreachable[..], None),
            (json!([{"key": "other", "operator": "Exists", "tolerationSeconds": 1}]), &unreachable[..], at(300)),
        ];
        for (tolerations, taints, want) in cases {
            assert_eq!(eviction_deadline(&pod(tolerations.clone()), taints, 300), want, "{tolerations}");
        }
        let custom = [taint("dedicated", "NoExecute", t0)];
        assert_eq!(eviction_deadline(&pod(json!([])), &custom, 300), at(0));
        let no_schedule = [taint("dedicated", "NoSchedule", t0)];
        assert_eq!(eviction_deadline(&pod(json!([])), &no_schedule, 300), None);
    }

    #[test]
    fn retaint_adds_and_removes_only_lifecycle_taints() {
        let now = Timestamp::now();
        let user = taint("dedicated", "NoSchedule", now);
        let out = retaint(std::slice::from_ref(&user), &wanted_taints("Unknown"), now).unwrap();
        assert_eq!(out.len(), 3);
        assert!(out.iter().any(|t| t.key == TAINT_UNREACHABLE && t.effect == "NoExecute" && t.time_added.is_some()));
        assert!(retaint(&out, &wanted_taints("Unknown"), now).is_none(), "stable");
        let back = retaint(&out, &wanted_taints("True"), now).unwrap();
        assert_eq!(back, vec![user.clone()]);
        let not_ready = retaint(&out, &wanted_taints("False"), now).unwrap();
        assert!(not_ready.iter().all(|t| t.key != TAINT_UNREACHABLE));
        assert_eq!(not_ready.iter().filter(|t| t.key == TAINT_NOT_READY).count(), 2);
    }
}
