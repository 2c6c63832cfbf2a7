//! The EndpointSlice controller: for every Service with a selector, EndpointSlices listing
//! the selected pods' addresses, ports (named target ports resolved per pod), readiness
//! (`ready`, `serving`, `terminating`), node and zone, at most 100 endpoints per slice.
//!
//! Updates keep churn minimal, as upstream's reconciler does: an endpoint that stays stays
//! in the slice it is in, new endpoints fill slices that change anyway before others, and a
//! slice is written only when its content changes. The node agent's proxy programs the
//! kernel from these slices, so every needless write costs every node a sync.
//!
//! Pods and slices are read with live lists at each reconciliation (a consistent read, so a
//! reconciliation never acts on a cache older than the event that triggered it, and never
//! creates a slice twice because its own last write has not been watched yet). Reconciles
//! are triggered by the Service, its slices and pod changes (a pod that stops matching
//! triggers the Services it matched before).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coxswain_runtime::events::{EventType, Recorder, object_ref};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::ResourceExt;
use tracing::{debug, info};

use crate::{Context, reconciler};
use crate::labels::selector_matches;

/// The controller's name in `--controllers`.
pub const NAME: &str = "endpointslice";
/// `source.component` of its Events.
pub const COMPONENT: &str = "endpointslice-controller";
/// Label: the Service a slice belongs to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Label: who manages a slice.
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`] on the slices this controller writes.
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Label set on the slices and Endpoints of headless Services.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Upstream's `--max-endpoints-per-slice` default.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Bound on the pods whose matching Services are remembered (see [`PodServiceIndex`]).
const MAX_REMEMBERED_PODS: usize = 200_000;

/// Errors of one reconciliation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("failed to {action} for service {service}: {source}")]
    Api {
        action: String,
        service: String,
        #[source]
        source: kube::Error,
    },
    /// The watch machinery stopped.
    #[error("failed to run the {0} controller: its watches ended")]
    Stopped(&'static str),
}

pub(crate) fn api_err(action: impl Into<String>, service: &str) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    let service = service.to_owned();
    move |source| Error::Api {
        action,
        service,
        source,
    }
}

// ---------------------------------------------------------------------------------------
// What the Endpoints and EndpointSlice controllers share: which pods back a Service, their
// ports, their readiness.

/// Maps pod events to the Services that select the pod now or selected it at the previous
/// event (so a pod whose labels change triggers the Service it left).
#[derive(Clone)]
pub(crate) struct PodServiceIndex {
    services: Store<Service>,
    previous: Arc<Mutex<ServicesByPod>>,
}

/// (namespace, pod name) -> the Services that selected the pod at its last event.
type ServicesByPod = HashMap<(String, String), Vec<ObjectRef<Service>>>;

impl PodServiceIndex {
    pub(crate) fn new(services: Store<Service>) -> PodServiceIndex {
        PodServiceIndex {
            services,
            previous: Arc::default(),
        }
    }

    pub(crate) fn services_for(&self, pod: &Pod) -> Vec<ObjectRef<Service>> {
        let namespace = pod.namespace().unwrap_or_default();
        let key = (namespace.clone(), pod.name_any());
        let now: Vec<ObjectRef<Service>> = self
            .services
            .state()
            .iter()
            .filter(|s| s.namespace().as_deref() == Some(namespace.as_str()))
            .filter(|s| {
                s.spec
                    .as_ref()
                    .and_then(|spec| spec.selector.as_ref())
                    .is_some_and(|sel| selector_matches(sel, pod.metadata.labels.as_ref()))
            })
            .map(|s| ObjectRef::from_obj(s.as_ref()))
            .collect();
        let mut previous = self.previous.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = if pod.metadata.deletion_timestamp.is_some() {
            // Going away: its next events are the last ones.
            previous.remove(&key).unwrap_or_default()
        } else {
            if previous.len() >= MAX_REMEMBERED_PODS {
                // Pods deleted without a grace period never say goodbye; forget them all
                // rather than grow forever (only label moves in flight lose a trigger).
                previous.clear();
            }
            previous.insert(key.clone(), now.clone()).unwrap_or_default()
        };
        for s in now {
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }
}

/// The label selector string of a Service selector map.
pub(crate) fn selector_string(selector: &BTreeMap<String, String>) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The pods selected by `service` (live list), or `None` when it has no selector.
pub(crate) async fn selected_pods(
    client: &kube::Client,
    service: &Service,
) -> Result<Option<Vec<Pod>>, Error> {
    let Some(selector) = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
    else {
        return Ok(None);
    };
    let namespace = service.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let pods = api
        .list(&ListParams::default().labels(&selector_string(selector)))
        .await
        .map_err(api_err("list pods", &service.name_any()))?;
    Ok(Some(
        pods.items
            .into_iter()
            .filter(|p| selector_matches(selector, p.metadata.labels.as_ref()))
            .collect(),
    ))
}

/// Whether the pod's Ready condition is True.
pub(crate) fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether the pod has finished for good (its containers will not run again).
pub(crate) fn pod_terminal(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed"))
}

/// The pod's IP of `family` (`IPv4`/`IPv6`), if any.
pub(crate) fn pod_ip(pod: &Pod, family: &str) -> Option<String> {
    let status = pod.status.as_ref()?;
    let mut ips: Vec<String> = status
        .pod_ips
        .as_ref()
        .map(|ips| ips.iter().map(|ip| ip.ip.clone()).collect())
        .unwrap_or_default();
    if let Some(ip) = &status.pod_ip {
        ips.insert(0, ip.clone());
    }
    ips.into_iter().find(|ip| {
        ip.parse::<std::net::IpAddr>().is_ok_and(|a| match family {
            "IPv6" => a.is_ipv6(),
            _ => a.is_ipv4(),
        })
    })
}

fn protocol_of(p: Option<&String>) -> &str {
    p.map(String::as_str).unwrap_or("TCP")
}

/// The pod port a Service port targets (upstream `FindPort`): a number as is, a name looked
/// up among the pod's container ports (and restartable init containers) with the same
/// protocol. `None` when the name is not found: the port is left out for that pod.
pub(crate) fn find_port(pod: &Pod, port: &ServicePort) -> Option<i32> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<i32>() {
                return Some(n);
            }
            let spec = pod.spec.as_ref()?;
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && protocol_of(p.protocol.as_ref()) == protocol_of(port.protocol.as_ref())
                })
                .map(|p| p.container_port)
        }
    }
}

/// Whether the pod's hostname goes into its endpoint (pod's subdomain is the Service).
pub(crate) fn hostname_for(pod: &Pod, service: &Service) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let hostname = spec.hostname.as_ref().filter(|h| !h.is_empty())?;
    (spec.subdomain.as_deref() == Some(service.name_any().as_str())
        && pod.namespace() == service.namespace())
    .then(|| hostname.clone())
}

/// Labels of a Service's managed objects: the Service's own, plus the headless marker.
pub(crate) fn service_labels(service: &Service) -> BTreeMap<String, String> {
    let mut labels = service.labels().clone();
    let headless = service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        == Some("None");
    if headless {
        labels.insert(LABEL_HEADLESS.to_owned(), String::new());
    } else {
        labels.remove(LABEL_HEADLESS);
    }
    labels
}

/// The controller ownerReference to `service`.
pub(crate) fn owner_ref(service: &Service) -> OwnerReference {
    OwnerReference {
        api_version: "v1".to_owned(),
        kind: "Service".to_owned(),
        name: service.name_any(),
        uid: service.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

pub(crate) fn target_ref(pod: &Pod) -> k8s_openapi::api::core::v1::ObjectReference {
    k8s_openapi::api::core::v1::ObjectReference {
        kind: Some("Pod".to_owned()),
        namespace: pod.namespace(),
        name: Some(pod.name_any()),
        uid: pod.uid(),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------
// Desired state.

/// Endpoints grouped by what a slice shares: address type and ports.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct GroupKey {
    address_type: String,
    /// The ports, serialized (a stable key for the list).
    ports: String,
}

struct Group {
    ports: Vec<EndpointPort>,
    /// By endpoint key (pod uid, or the address).
    endpoints: BTreeMap<String, Endpoint>,
}

fn endpoint_key(e: &Endpoint) -> String {
    e.target_ref
        .as_ref()
        .and_then(|r| r.uid.clone())
        .unwrap_or_else(|| e.addresses.join(","))
}

/// A stable key for a port list; absent names and protocols count as their defaults, so
/// a server that drops empty strings does not make every slice look changed.
fn ports_key(ports: &[EndpointPort]) -> String {
    let normal: Vec<(String, Option<i32>, String, Option<String>)> = ports
        .iter()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.port,
                protocol_of(p.protocol.as_ref()).to_owned(),
                p.app_protocol.clone(),
            )
        })
        .collect();
    serde_json::to_string(&normal).unwrap_or_default()
}

fn address_families(service: &Service) -> Vec<String> {
    let families = service
        .spec
        .as_ref()
        .and_then(|s| s.ip_families.clone())
        .unwrap_or_default();
    if families.is_empty() {
        vec!["IPv4".to_owned()]
    } else {
        families
    }
}

fn desired_groups(
    service: &Service,
    pods: &[Pod],
    nodes: &Store<Node>,
) -> BTreeMap<GroupKey, Group> {
    let spec = service.spec.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let mut groups: BTreeMap<GroupKey, Group> = BTreeMap::new();
    for family in address_families(service) {
        for pod in pods {
            if pod_terminal(pod) {
                continue;
            }
            let Some(ip) = pod_ip(pod, &family) else { continue };
            let ports: Vec<EndpointPort> = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some(EndpointPort {
                        name: Some(p.name.clone().unwrap_or_default()),
                        port: Some(find_port(pod, p)?),
                        protocol: Some(protocol_of(p.protocol.as_ref()).to_owned()),
                        app_protocol: p.app_protocol.clone(),
                    })
                })
                .collect();
            let serving = pod_ready(pod);
            let terminating = pod.metadata.deletion_timestamp.is_some();
            let ready = publish_not_ready || (serving && !terminating);
            let node_name = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty());
            let zone = node_name.as_ref().and_then(|n| {
                nodes
                    .get(&ObjectRef::new(n))
                    .and_then(|node| node.labels().get(ZONE_LABEL).cloned())
            });
            let endpoint = Endpoint {
                addresses: vec![ip],
                conditions: Some(EndpointConditions {
                    ready: Some(ready),
                    serving: Some(serving),
                    terminating: Some(terminating),
                }),
                hostname: hostname_for(pod, service),
                node_name,
                zone,
                target_ref: Some(target_ref(pod)),
                ..Endpoint::default()
            };
            let key = GroupKey {
                address_type: family.clone(),
                ports: ports_key(&ports),
            };
            groups
                .entry(key)
                .or_insert_with(|| Group {
                    ports,
                    endpoints: BTreeMap::new(),
                })
                .endpoints
                .insert(endpoint_key(&endpoint), endpoint);
        }
    }
    groups
}

// ---------------------------------------------------------------------------------------
// Placement: desired endpoints into existing and new slices, with minimal churn.

/// What to write: slices to create, slices to replace, slices to delete.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub create: Vec<EndpointSlice>,
    pub update: Vec<EndpointSlice>,
    pub delete: Vec<EndpointSlice>,
}

fn sorted(mut endpoints: Vec<Endpoint>) -> Vec<Endpoint> {
    endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses).then_with(|| endpoint_key(a).cmp(&endpoint_key(b))));
    endpoints
}

fn owned_by(slice: &EndpointSlice, service_uid: &str) -> bool {
    slice
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == service_uid && o.kind == "Service")
}

fn slice_ports(s: &EndpointSlice) -> Vec<EndpointPort> {
    s.ports.clone().unwrap_or_default()
}

fn new_slice(service: &Service, key: &GroupKey, ports: &[EndpointPort], endpoints: Vec<Endpoint>) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", service.name_any())),
            namespace: service.namespace(),
            ..ObjectMeta::default()
        },
        address_type: key.address_type.clone(),
        ports: Some(ports.to_vec()),
        endpoints: Some(sorted(endpoints)),
    }
}

/// Sets labels and owner of `slice` for `service`; returns whether anything changed.
fn set_metadata(slice: &mut EndpointSlice, service: &Service) -> bool {
    let mut labels = service_labels(service);
    labels.insert(LABEL_SERVICE_NAME.to_owned(), service.name_any());
    labels.insert(LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned());
    let owners = vec![owner_ref(service)];
    let mut changed = false;
    if slice.metadata.labels.as_ref() != Some(&labels) {
        slice.metadata.labels = Some(labels);
        changed = true;
    }
    if slice.metadata.owner_references.as_ref() != Some(&owners) {
        slice.metadata.owner_references = Some(owners);
        changed = true;
    }
    changed
}

/// Computes the writes that turn `existing` (this Service's managed slices) into slices
/// holding `groups`.
fn plan(service: &Service, groups: BTreeMap<GroupKey, Group>, existing: Vec<EndpointSlice>) -> Plan {
    let mut plan = Plan::default();
    let total: usize = groups.values().map(|g| g.endpoints.len()).sum();
    let mut by_group: BTreeMap<GroupKey, Vec<EndpointSlice>> = BTreeMap::new();
    let uid = service.uid().unwrap_or_default();
    for slice in existing {
        let key = GroupKey {
            address_type: slice.address_type.clone(),
            ports: ports_key(&slice_ports(&slice)),
        };
        if !owned_by(&slice, &uid) || !groups.contains_key(&key) {
            // A slice of another incarnation of the Service, or of ports nobody has anymore.
            plan.delete.push(slice);
            continue;
        }
        by_group.entry(key).or_default().push(slice);
    }
    for (key, group) in groups {
        let mut remaining = group.endpoints;
        let mut slices = by_group.remove(&key).unwrap_or_default();
        slices.sort_by_key(|s| s.name_any());
        // Keep what stays where it is, with its new conditions.
        let mut kept: Vec<(EndpointSlice, Vec<Endpoint>, bool)> = Vec::new();
        for mut slice in slices {
            let before = sorted(slice.endpoints.take().unwrap_or_default());
            let mut now = Vec::new();
            for e in &before {
                if let Some(want) = remaining.remove(&endpoint_key(e)) {
                    if now.len() < MAX_ENDPOINTS_PER_SLICE {
                        now.push(want);
                    } else {
                        remaining.insert(endpoint_key(&want), want);
                    }
                }
            }
            let now = sorted(now);
            let mut changed = now != before;
            changed |= set_metadata(&mut slice, service);
            kept.push((slice, now, changed));
        }
        // New endpoints fill slices that are written anyway, then the fullest others.
        let mut new: Vec<Endpoint> = remaining.into_values().collect();
        kept.sort_by_key(|(_, e, changed)| (!*changed, std::cmp::Reverse(e.len())));
        for (_, endpoints, changed) in kept.iter_mut() {
            while endpoints.len() < MAX_ENDPOINTS_PER_SLICE {
                let Some(e) = new.pop() else { break };
                endpoints.push(e);
                *changed = true;
            }
        }
        while !new.is_empty() {
            let at = new.len().saturating_sub(MAX_ENDPOINTS_PER_SLICE);
            let chunk = new.split_off(at);
            let mut slice = new_slice(service, &key, &group.ports, chunk);
            set_metadata(&mut slice, service);
            plan.create.push(slice);
        }
        for (mut slice, endpoints, changed) in kept {
            if endpoints.is_empty() && total > 0 {
                plan.delete.push(slice);
                continue;
            }
            slice.endpoints = Some(sorted(endpoints));
            if changed {
                plan.update.push(slice);
            }
        }
    }
    // With no endpoint at all, keep (or create) exactly one empty placeholder slice, as
    // upstream does, so watchers can tell "no endpoints" from "not synced yet".
    if total == 0 {
        let primary = address_families(service).remove(0);
        let reusable = plan
            .delete
            .iter()
            .position(|s| owned_by(s, &uid) && s.address_type == primary);
        match reusable {
            Some(i) => {
                let mut slice = plan.delete.remove(i);
                let mut changed = !slice.endpoints.as_ref().is_none_or(Vec::is_empty)
                    || !slice_ports(&slice).is_empty();
                slice.endpoints = None;
                slice.ports = None;
                changed |= set_metadata(&mut slice, service);
                if changed {
                    plan.update.push(slice);
                }
            }
            None => {
                let key = GroupKey {
                    address_type: primary,
                    ports: String::new(),
                };
                let mut slice = new_slice(service, &key, &[], Vec::new());
                slice.ports = None;
                set_metadata(&mut slice, service);
                plan.create.push(slice);
            }
        }
    }
    plan
}

// ---------------------------------------------------------------------------------------
// The controller.

struct State {
    ctx: Context,
    recorder: Recorder,
    nodes: Store<Node>,
}

async fn sync_service(service: &Service, state: &State) -> Result<(), Error> {
    if service.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let client = &state.ctx.client;
    let Some(pods) = selected_pods(client, service).await? else {
        // No selector: the endpoints are someone else's business.
        return Ok(());
    };
    let name = service.name_any();
    let namespace = service.namespace().unwrap_or_default();
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &namespace);
    let existing = api
        .list(&ListParams::default().labels(&format!(
            "{LABEL_SERVICE_NAME}={name},{LABEL_MANAGED_BY}={MANAGED_BY}"
        )))
        .await
        .map_err(api_err("list endpoint slices", &name))?
        .items;
    let groups = desired_groups(service, &pods, &state.nodes);
    let plan = plan(service, groups, existing);
    if plan.create.is_empty() && plan.update.is_empty() && plan.delete.is_empty() {
        return Ok(());
    }
    debug!(
        service = %reconciler::object_key(service),
        create = plan.create.len(),
        update = plan.update.len(),
        delete = plan.delete.len(),
        "syncing endpoint slices"
    );
    let result = apply_plan(&api, &name, plan).await;
    if let Err(e) = &result {
        state
            .recorder
            .record(
                &object_ref(service),
                EventType::Warning,
                "FailedToUpdateEndpointSlices",
                &format!("Error updating Endpoint Slices for Service {namespace}/{name}: {e}"),
            )
            .await;
    }
    result
}

async fn apply_plan(api: &Api<EndpointSlice>, service: &str, plan: Plan) -> Result<(), Error> {
    // Creates and updates before deletes: endpoints moving between slices are never absent.
    for slice in &plan.create {
        api.create(&PostParams::default(), slice)
            .await
            .map_err(api_err("create an endpoint slice", service))?;
    }
    for slice in &plan.update {
        api.replace(&slice.name_any(), &PostParams::default(), slice)
            .await
            .map_err(api_err(format!("update endpoint slice {}", slice.name_any()), service))?;
    }
    for slice in &plan.delete {
        match api.delete(&slice.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(api_err(format!("delete endpoint slice {}", slice.name_any()), service)(e));
            }
        }
    }
    Ok(())
}

/// A reflector on Nodes (for zones), run by the returned future.
pub(crate) fn node_store(client: kube::Client) -> (Store<Node>, impl std::future::Future<Output = ()>) {
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(Api::<Node>::all(client), watcher::Config::default()).default_backoff(),
    );
    (reader, stream.for_each(|_| std::future::ready(())))
}

/// Runs the EndpointSlice controller until its watches end.
pub async fn run(ctx: Context) -> Result<(), Error> {
    let client = ctx.client.clone();
    let (nodes, node_reflector) = node_store(client.clone());
    let controller = Controller::new(Api::<Service>::all(client.clone()), watcher::Config::default());
    let index = PodServiceIndex::new(controller.store());
    let metrics = ctx.metrics().clone();
    let state = Arc::new(State {
        recorder: Recorder::new(client.clone(), COMPONENT, None),
        ctx,
        nodes,
    });
    info!("starting the endpointslice controller");
    let controller = controller
        .owns(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}")),
        )
        .watches(Api::<Pod>::all(client), watcher::Config::default(), move |pod| {
            index.services_for(&pod)
        })
        .with_config(controller::Config::default().debounce(Duration::from_millis(20)));
    let controller = reconciler::run(controller, NAME, metrics, state, |service: Arc<Service>, state: Arc<State>| async move {
        sync_service(&service, &state).await.map(|()| Action::await_change())
    });
    tokio::select! {
        () = controller => {}
        () = node_reflector => {}
    }
    Err(Error::Stopped(NAME))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "svc-uid"},
            "spec": {"selector": {"app": "web"}, "ports": ports},
        }))
        .unwrap()
    }

    fn pod(name: &str, ip: &str, ready: bool, container_ports: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": container_ports}]},
            "status": {"phase": "Running", "podIP": ip,
                "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        }))
        .unwrap()
    }

    fn nodes() -> Store<Node> {
        let (reader, _writer) = reflector::store();
        reader
    }

    #[test]
    fn named_ports_resolve_per_pod_into_separate_slices() {
        let svc = service(json!([{"name": "http", "port": 80, "targetPort": "web"}]));
        let a = pod("a", "10.0.0.1", true, json!([{"name": "web", "containerPort": 8080}]));
        let b = pod("b", "10.0.0.2", true, json!([{"name": "web", "containerPort": 9090}]));
        let c = pod("c", "10.0.0.3", true, json!([{"name": "other", "containerPort": 1}]));
        let groups = desired_groups(&svc, &[a, b, c], &nodes());
        let ports: Vec<Vec<Option<i32>>> = groups
            .values()
            .map(|g| g.ports.iter().map(|p| p.port).collect())
            .collect();
        assert_eq!(groups.len(), 3, "{ports:?}");
        assert!(ports.contains(&vec![Some(8080)]));
        assert!(ports.contains(&vec![Some(9090)]));
        assert!(ports.contains(&vec![]), "a pod without the named port has no port");
    }

    #[test]
    fn plan_splits_at_100_and_keeps_unchanged_slices() {
        let svc = service(json!([{"name": "http", "port": 80}]));
        let pods: Vec<Pod> = (0..250)
            .map(|i| pod(&format!("p{i}"), &format!("10.0.{}.{}", i / 200, i % 200 + 1), true, json!([])))
            .collect();
        let groups = desired_groups(&svc, &pods, &nodes());
        let first = plan(&svc, groups, Vec::new());
        assert_eq!(first.create.len(), 3);
        assert!(first.create.iter().all(|s| s.endpoints.as_ref().map_or(0, Vec::len) <= MAX_ENDPOINTS_PER_SLICE));
        // Pretend they were written, then add one pod: exactly one slice changes.
        let existing: Vec<EndpointSlice> = first
            .create
            .into_iter()
            .enumerate()
            .map(|(i, mut s)| {
                s.metadata.name = Some(format!("web-{i}"));
                s
            })
            .collect();
        let groups = desired_groups(&svc, &pods, &nodes());
        let again = plan(&svc, groups, existing.clone());
        assert!(again.create.is_empty() && again.update.is_empty() && again.delete.is_empty());
        let mut more = pods.clone();
        more.push(pod("extra", "10.9.9.9", true, json!([])));
        let groups = desired_groups(&svc, &more, &nodes());
        let one = plan(&svc, groups, existing);
        assert_eq!(one.update.len(), 1, "one slice absorbs the new endpoint");
        assert!(one.create.is_empty() && one.delete.is_empty());
    }

    #[test]
    fn no_endpoints_keeps_one_placeholder() {
        let svc = service(json!([{"name": "http", "port": 80}]));
        let first = plan(&svc, desired_groups(&svc, &[], &nodes()), Vec::new());
        assert_eq!(first.create.len(), 1);
        assert!(first.create[0].endpoints.as_ref().is_none_or(Vec::is_empty));
        let mut existing = first.create;
        existing[0].metadata.name = Some("web-x".into());
        let again = plan(&svc, desired_groups(&svc, &[], &nodes()), existing);
        assert!(again.create.is_empty() && again.update.is_empty() && again.delete.is_empty(), "{again:?}");
    }

    #[test]
    fn terminating_pods_are_not_ready_but_serving() {
        let svc = service(json!([{"name": "http", "port": 80}]));
        let mut p = pod("a", "10.0.0.1", true, json!([]));
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
        let groups = desired_groups(&svc, &[p], &nodes());
        let e = groups.values().next().unwrap().endpoints.values().next().unwrap().clone();
        let c = e.conditions.unwrap();
        assert_eq!((c.ready, c.serving, c.terminating), (Some(false), Some(true), Some(true)));
    }
}
