//! The scheduler's view of the cluster, fed by watches: every node with the pods bound (or
//! assumed) to it and what they request, kept incrementally so that scheduling a pod never
//! reads the API.
//!
//! Assume: a pod is counted on its node as soon as it is reserved, before the binding
//! round-trips, so consecutive pods do not oversubscribe a node. The watch then confirms it
//! (the pod shows up bound), or [`Cache::forget`] undoes it when the binding fails.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, PodAffinityTerm, Taint};

use crate::framework::ClusterEvents;
use crate::resources::{Resources, pod_non_zero_requests, pod_requests};

/// `namespace/name` of a pod.
pub type PodKey = Arc<str>;

/// The key of a pod.
pub fn pod_key(pod: &Pod) -> PodKey {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("")
    )
    .into()
}

/// A host port a container asks for: (protocol, host IP, port).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub protocol: String,
    pub ip: String,
    pub port: i32,
}

impl HostPort {
    /// Whether two host ports cannot both be bound on one node: same protocol and port, and
    /// the same IP or either one the wildcard.
    pub fn conflicts(&self, other: &HostPort) -> bool {
        let wildcard = |ip: &str| ip.is_empty() || ip == "0.0.0.0" || ip == "::";
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || wildcard(&self.ip) || wildcard(&other.ip))
    }
}

/// A pod with what the scheduler derives from it once (requests, ports, priority).
#[derive(Debug)]
pub struct PodInfo {
    pub pod: Pod,
    pub key: PodKey,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub requests: Resources,
    /// CPU (millicores) and memory counted for scoring (requests, or upstream's defaults).
    pub non_zero_cpu: i64,
    pub non_zero_memory: i64,
    pub host_ports: Vec<HostPort>,
    pub priority: i32,
    /// The uid of the pod's controller (ReplicaSet, StatefulSet, Job...): pods of one
    /// workload are spread over nodes.
    pub workload: Option<String>,
    /// `spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution`.
    pub required_anti_affinity: Vec<PodAffinityTerm>,
    /// `spec.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution`.
    pub required_affinity: Vec<PodAffinityTerm>,
}

impl PodInfo {
    pub fn new(pod: Pod) -> PodInfo {
        let requests = pod_requests(&pod);
        let (non_zero_cpu, non_zero_memory) = pod_non_zero_requests(&pod);
        let spec = pod.spec.as_ref();
        let host_ports = spec
            .into_iter()
            .flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()))
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let port = p.host_port.filter(|p| *p > 0)?;
                Some(HostPort {
                    protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
                    ip: p.host_ip.clone().unwrap_or_default(),
                    port,
                })
            })
            .collect();
        let affinity = spec.and_then(|s| s.affinity.as_ref());
        let required_anti_affinity = affinity
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| a.required_during_scheduling_ignored_during_execution.clone())
            .unwrap_or_default();
        let required_affinity = affinity
            .and_then(|a| a.pod_affinity.as_ref())
            .and_then(|a| a.required_during_scheduling_ignored_during_execution.clone())
            .unwrap_or_default();
        let workload = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone());
        PodInfo {
            key: pod_key(&pod),
            namespace: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            priority: spec.and_then(|s| s.priority).unwrap_or(0),
            requests,
            non_zero_cpu,
            non_zero_memory,
            host_ports,
            workload,
            required_anti_affinity,
            required_affinity,
            pod,
        }
    }

    /// The pod's labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.pod.metadata.labels.as_ref().unwrap_or(&EMPTY)
    }

    /// `spec.nodeName`, if bound.
    pub fn node_name(&self) -> Option<&str> {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty())
    }
}

/// A node with the pods on it and the sum of their requests.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: Arc<str>,
    /// `None` while pods are known on a node whose Node object is gone or not seen yet.
    pub node: Option<Arc<Node>>,
    pub allocatable: Resources,
    /// The sum of the requests of the pods on the node.
    pub requested: Resources,
    /// The sum of the pods' CPU and memory as counted for scoring.
    pub non_zero_cpu: i64,
    pub non_zero_memory: i64,
    pub pods: HashMap<PodKey, Arc<PodInfo>>,
    /// Host ports in use (one entry per pod asking for it).
    pub used_ports: Vec<HostPort>,
    /// Pods per workload (controller uid) on the node.
    pub workloads: HashMap<String, u32>,
    /// `spec.unschedulable` (cordoned), kept here so that filters read no Node object.
    unschedulable: bool,
    /// `spec.taints`, likewise.
    taints: Vec<Taint>,
}

impl NodeInfo {
    fn empty(name: Arc<str>) -> NodeInfo {
        NodeInfo {
            name,
            node: None,
            allocatable: Resources::default(),
            requested: Resources::default(),
            non_zero_cpu: 0,
            non_zero_memory: 0,
            pods: HashMap::new(),
            used_ports: Vec::new(),
            workloads: HashMap::new(),
            unschedulable: false,
            taints: Vec::new(),
        }
    }

    /// A node with no pods, for tests and for plugins that simulate.
    pub fn new(node: Node) -> NodeInfo {
        let name: Arc<str> = node.metadata.name.clone().unwrap_or_default().into();
        let mut info = NodeInfo::empty(name);
        info.set_node(Arc::new(node));
        info
    }

    fn set_node(&mut self, node: Arc<Node>) {
        self.allocatable = node
            .status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()))
            .map(Resources::from_list)
            .unwrap_or_default();
        let spec = node.spec.as_ref();
        self.unschedulable = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        self.taints = spec.and_then(|s| s.taints.clone()).unwrap_or_default();
        self.node = Some(node);
    }

    /// Forgets the Node object (its pods stay counted).
    fn clear_node(&mut self) {
        self.node = None;
        self.allocatable = Resources::default();
        self.unschedulable = false;
        self.taints.clear();
    }

    /// The node's labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.node
            .as_ref()
            .and_then(|n| n.metadata.labels.as_ref())
            .unwrap_or(&EMPTY)
    }

    /// Whether the node is cordoned (`spec.unschedulable`).
    pub fn is_unschedulable(&self) -> bool {
        self.unschedulable
    }

    /// The node's taints.
    pub fn taints(&self) -> &[Taint] {
        &self.taints
    }

    /// Counts a pod on the node.
    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        if let Some(old) = self.pods.remove(&pod.key) {
            self.account(&old, false);
        }
        self.account(&pod, true);
        self.pods.insert(pod.key.clone(), pod);
    }

    /// Stops counting a pod on the node.
    pub fn remove_pod(&mut self, key: &str) -> Option<Arc<PodInfo>> {
        let old = self.pods.remove(key)?;
        self.account(&old, false);
        Some(old)
    }

    fn account(&mut self, pod: &PodInfo, add: bool) {
        if add {
            self.requested.add(&pod.requests);
            self.non_zero_cpu += pod.non_zero_cpu;
            self.non_zero_memory += pod.non_zero_memory;
            self.used_ports.extend(pod.host_ports.iter().cloned());
            if let Some(w) = &pod.workload {
                *self.workloads.entry(w.clone()).or_default() += 1;
            }
        } else {
            self.requested.sub(&pod.requests);
            self.non_zero_cpu -= pod.non_zero_cpu;
            self.non_zero_memory -= pod.non_zero_memory;
            for p in &pod.host_ports {
                if let Some(i) = self.used_ports.iter().position(|u| u == p) {
                    self.used_ports.swap_remove(i);
                }
            }
            if let Some(w) = &pod.workload
                && let Some(n) = self.workloads.get_mut(w)
            {
                *n -= 1;
                if *n == 0 {
                    self.workloads.remove(w);
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
struct PodState {
    node: Arc<str>,
    /// Reserved by this scheduler, not yet seen bound through the watch.
    assumed: bool,
}

/// Every node and the pods counted on it.
///
/// Nodes live in a slab (`slots`, reused through `free`) found by name through `by_name`;
/// `order` lists the slots of the nodes that have a Node object, in a stable order for
/// round-robin sampling, so the filter loop walks plain indices and never hashes a name.
#[derive(Debug, Default)]
pub struct Cache {
    slots: Vec<Option<NodeInfo>>,
    free: Vec<usize>,
    by_name: HashMap<Arc<str>, usize>,
    order: Vec<usize>,
    /// Position in `order` of each slot that is in it.
    order_index: HashMap<usize, usize>,
    pods: HashMap<PodKey, PodState>,
    /// Bound pods with required anti-affinity terms, which every new pod is checked against.
    anti_affinity_pods: HashMap<PodKey, Arc<str>>,
    /// Pods per node of each workload (controller uid), for spreading.
    workload_nodes: HashMap<String, HashMap<Arc<str>, u32>>,
}

impl Cache {
    pub fn new() -> Cache {
        Cache::default()
    }

    /// Number of nodes that can take pods (have a Node object).
    pub fn node_count(&self) -> usize {
        self.order.len()
    }

    fn slot(&self, i: usize) -> &NodeInfo {
        self.slots[i].as_ref().expect("a listed slot holds a node")
    }

    /// The `i`-th node in round-robin order.
    pub fn node_at(&self, i: usize) -> &NodeInfo {
        self.slot(self.order[i])
    }

    /// Every node with a Node object.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.order.iter().map(|&i| self.slot(i))
    }

    /// A node by name (also one known only from its pods).
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.by_name.get(name).map(|&i| self.slot(i))
    }

    fn node_mut(&mut self, name: &str) -> Option<&mut NodeInfo> {
        let i = *self.by_name.get(name)?;
        self.slots[i].as_mut()
    }

    /// The slot of `name`, created empty if the node is unknown.
    fn slot_for(&mut self, name: &Arc<str>) -> usize {
        if let Some(&i) = self.by_name.get(name) {
            return i;
        }
        let info = NodeInfo::empty(name.clone());
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(info);
                i
            }
            None => {
                self.slots.push(Some(info));
                self.slots.len() - 1
            }
        };
        self.by_name.insert(name.clone(), i);
        i
    }

    /// Drops the node `name` from the slab (it has neither a Node object nor pods).
    fn release(&mut self, name: &str) {
        if let Some(i) = self.by_name.remove(name) {
            self.slots[i] = None;
            self.free.push(i);
        }
    }

    /// Bound pods that carry required anti-affinity terms, with their node.
    pub fn pods_with_anti_affinity(&self) -> impl Iterator<Item = (&PodInfo, &NodeInfo)> {
        self.anti_affinity_pods.iter().filter_map(|(k, n)| {
            let node = self.node(n)?;
            Some((node.pods.get(k)?.as_ref(), node))
        })
    }

    /// The nodes running pods of `workload` (a controller uid), with how many.
    pub fn workload_nodes(&self, workload: &str) -> Option<&HashMap<Arc<str>, u32>> {
        self.workload_nodes.get(workload)
    }

    /// Whether the pod is counted somewhere (bound or assumed).
    pub fn contains_pod(&self, key: &str) -> bool {
        self.pods.contains_key(key)
    }

    /// Whether the pod is assumed (reserved by us, binding not yet observed).
    pub fn is_assumed(&self, key: &str) -> bool {
        self.pods.get(key).is_some_and(|p| p.assumed)
    }

    /// Adds or updates a Node; returns the event it amounts to.
    pub fn apply_node(&mut self, node: Node) -> ClusterEvents {
        let name: Arc<str> = node.metadata.name.clone().unwrap_or_default().into();
        let node = Arc::new(node);
        let slot = self.slot_for(&name);
        let entry = self.slots[slot].as_mut().expect("slot_for fills the slot");
        let event = match &entry.node {
            None => ClusterEvents::NODE_ADD,
            Some(old) => {
                let relevant = old.metadata.labels != node.metadata.labels
                    || old.spec != node.spec
                    || old.status.as_ref().map(|s| (&s.allocatable, &s.capacity))
                        != node.status.as_ref().map(|s| (&s.allocatable, &s.capacity));
                if relevant {
                    ClusterEvents::NODE_UPDATE
                } else {
                    ClusterEvents::NONE
                }
            }
        };
        entry.set_node(node);
        if event == ClusterEvents::NODE_ADD {
            self.order_index.insert(slot, self.order.len());
            self.order.push(slot);
        }
        event
    }

    /// Removes a Node (its pods stay counted until they go, in case it comes back).
    pub fn remove_node(&mut self, name: &str) {
        let Some(&slot) = self.by_name.get(name) else {
            return;
        };
        if let Some(i) = self.order_index.remove(&slot) {
            self.order.swap_remove(i);
            if let Some(&moved) = self.order.get(i) {
                self.order_index.insert(moved, i);
            }
        }
        let Some(info) = self.slots[slot].as_mut() else {
            return;
        };
        info.clear_node();
        if info.pods.is_empty() {
            self.release(name);
        }
    }

    /// Counts a pod seen bound through the watch (confirming it if it was assumed); returns
    /// the event it amounts to.
    pub fn apply_bound_pod(&mut self, pod: Arc<PodInfo>) -> ClusterEvents {
        let Some(node) = pod.node_name() else {
            return ClusterEvents::NONE;
        };
        let node: Arc<str> = node.into();
        let event = match self.pods.get(&pod.key) {
            Some(state) if !state.assumed && state.node == node => {
                let old = self
                    .node(&node)
                    .and_then(|n| n.pods.get(&pod.key))
                    .map(|p| &p.pod.metadata.labels);
                if old != Some(&pod.pod.metadata.labels) {
                    ClusterEvents::ASSIGNED_POD_UPDATE
                } else {
                    ClusterEvents::NONE
                }
            }
            _ => ClusterEvents::ASSIGNED_POD_ADD,
        };
        self.insert(pod, node, false);
        event
    }

    fn insert(&mut self, pod: Arc<PodInfo>, node: Arc<str>, assumed: bool) {
        self.remove_pod(&pod.key);
        if pod.required_anti_affinity.is_empty() {
            self.anti_affinity_pods.remove(&pod.key);
        } else {
            self.anti_affinity_pods
                .insert(pod.key.clone(), node.clone());
        }
        if let Some(w) = &pod.workload {
            *self
                .workload_nodes
                .entry(w.clone())
                .or_default()
                .entry(node.clone())
                .or_default() += 1;
        }
        self.pods.insert(
            pod.key.clone(),
            PodState {
                node: node.clone(),
                assumed,
            },
        );
        let slot = self.slot_for(&node);
        self.slots[slot]
            .as_mut()
            .expect("slot_for fills the slot")
            .add_pod(pod);
    }

    /// Stops counting a pod (deleted, finished); returns whether it was counted.
    pub fn remove_pod(&mut self, key: &str) -> bool {
        let Some(state) = self.pods.remove(key) else {
            return false;
        };
        self.anti_affinity_pods.remove(key);
        if let Some(info) = self.node_mut(&state.node) {
            let old = info.remove_pod(key);
            let gone = info.node.is_none() && info.pods.is_empty();
            if let Some(old) = old
                && let Some(w) = &old.workload
                && let Some(per_node) = self.workload_nodes.get_mut(w)
            {
                if let Some(n) = per_node.get_mut(&state.node) {
                    *n -= 1;
                    if *n == 0 {
                        per_node.remove(&state.node);
                    }
                }
                if per_node.is_empty() {
                    self.workload_nodes.remove(w);
                }
            }
            if gone {
                self.release(&state.node);
            }
        }
        true
    }

    /// Counts a pod on `node` before its binding is confirmed.
    pub fn assume(&mut self, pod: Arc<PodInfo>, node: Arc<str>) {
        self.insert(pod, node, true);
    }

    /// Undoes [`Cache::assume`] after a failed binding (unless the watch already saw the pod
    /// bound, in which case the binding did happen).
    pub fn forget(&mut self, key: &str) {
        if self.is_assumed(key) {
            self.remove_pod(key);
        }
    }

    /// Keys of every counted pod (bound or assumed), for relists.
    pub(crate) fn pod_keys(&self) -> Vec<PodKey> {
        self.pods.keys().cloned().collect()
    }

    /// Names of every node with a Node object, for relists.
    pub(crate) fn node_names(&self) -> Vec<Arc<str>> {
        self.nodes().map(|n| n.name.clone()).collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, NodeStatus, PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    pub(crate) fn node(name: &str, cpu: &str, memory: &str, pods: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                allocatable: Some(BTreeMap::from([
                    ("cpu".to_owned(), Quantity(cpu.into())),
                    ("memory".to_owned(), Quantity(memory.into())),
                    ("pods".to_owned(), Quantity(pods.into())),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub(crate) fn pod(name: &str, cpu: &str, memory: &str) -> Pod {
        let mut requests = BTreeMap::new();
        if !cpu.is_empty() {
            requests.insert("cpu".to_owned(), Quantity(cpu.into()));
        }
        if !memory.is_empty() {
            requests.insert("memory".to_owned(), Quantity(memory.into()));
        }
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
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

    pub(crate) fn bound(mut p: Pod, node: &str) -> Pod {
        p.spec.get_or_insert_with(Default::default).node_name = Some(node.into());
        p
    }

    #[test]
    fn assumed_pods_count_until_forgotten_and_confirmation_sticks() {
        let mut cache = Cache::new();
        assert_eq!(cache.apply_node(node("n1", "4", "8Gi", "110")), ClusterEvents::NODE_ADD);
        let p = Arc::new(PodInfo::new(pod("a", "1", "1Gi")));
        cache.assume(p.clone(), "n1".into());
        assert_eq!(cache.node("n1").unwrap().requested.milli_cpu, 1000);
        assert!(cache.is_assumed("default/a"));
        cache.forget("default/a");
        assert_eq!(cache.node("n1").unwrap().requested.milli_cpu, 0);

        cache.assume(p, "n1".into());
        let seen = Arc::new(PodInfo::new(bound(pod("a", "1", "1Gi"), "n1")));
        assert_eq!(cache.apply_bound_pod(seen), ClusterEvents::ASSIGNED_POD_ADD);
        cache.forget("default/a");
        let n1 = cache.node("n1").unwrap();
        assert_eq!(n1.requested.milli_cpu, 1000, "a confirmed pod is not forgotten");
        assert_eq!(n1.requested.pods, 1);
        assert!(cache.remove_pod("default/a"));
        assert_eq!(cache.node("n1").unwrap().requested, Resources::default());
    }

    #[test]
    fn nodes_leave_and_return_without_losing_their_pods_and_slots_are_reused() {
        let mut cache = Cache::new();
        let mut cordoned = node("n1", "4", "8Gi", "110");
        cordoned.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
            unschedulable: Some(true),
            ..Default::default()
        });
        cache.apply_node(cordoned);
        cache.apply_node(node("n2", "4", "8Gi", "110"));
        assert!(cache.node("n1").unwrap().is_unschedulable());
        let p = Arc::new(PodInfo::new(bound(pod("a", "1", "1Gi"), "n1")));
        cache.apply_bound_pod(p);
        // The Node goes: not sampled any more, but its pod is still counted.
        cache.remove_node("n1");
        assert_eq!(cache.node_count(), 1);
        assert_eq!(cache.node_at(0).name.as_ref(), "n2");
        let gone = cache.node("n1").expect("kept for its pod");
        assert!(gone.node.is_none() && !gone.is_unschedulable());
        assert_eq!(gone.requested.milli_cpu, 1000);
        // It comes back (uncordoned) with the pod still on it.
        assert_eq!(cache.apply_node(node("n1", "4", "8Gi", "110")), ClusterEvents::NODE_ADD);
        let back = cache.node("n1").unwrap();
        assert_eq!((back.requested.milli_cpu, back.is_unschedulable()), (1000, false));
        assert_eq!(cache.node_names().len(), 2);
        // A node without a Node object and without pods is dropped, its slot reused.
        cache.remove_node("n1");
        assert!(cache.remove_pod("default/a"));
        assert!(cache.node("n1").is_none());
        let slots = cache.slots.len();
        cache.apply_node(node("n3", "4", "8Gi", "110"));
        assert_eq!(cache.slots.len(), slots, "the freed slot is reused");
        let mut names: Vec<String> = cache.nodes().map(|n| n.name.to_string()).collect();
        names.sort();
        assert_eq!(names, ["n2", "n3"]);
    }

    #[test]
    fn node_updates_only_matter_when_scheduling_inputs_change() {
        let mut cache = Cache::new();
        cache.apply_node(node("n1", "4", "8Gi", "110"));
        assert_eq!(cache.apply_node(node("n1", "4", "8Gi", "110")), ClusterEvents::NONE);
        assert_eq!(
            cache.apply_node(node("n1", "8", "8Gi", "110")),
            ClusterEvents::NODE_UPDATE
        );
        cache.apply_node(node("n2", "4", "8Gi", "110"));
        cache.apply_node(node("n3", "4", "8Gi", "110"));
        cache.remove_node("n1");
        let names: Vec<_> = cache.nodes().map(|n| n.name.to_string()).collect();
        assert_eq!(names.len(), 2);
        assert!(names.contains(&"n2".to_owned()) && names.contains(&"n3".to_owned()));
        assert_eq!(cache.node_at(0).name.as_ref(), "n3");
    }
}
