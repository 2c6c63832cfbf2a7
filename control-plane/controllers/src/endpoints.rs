//! The legacy Endpoints controller: one `core/v1` Endpoints per Service with a selector,
//! named like the Service, with ready addresses, not-ready addresses and ports grouped into
//! subsets (pods whose named target ports resolve differently land in different subsets).
//! Terminating pods are left out unless the Service publishes not-ready addresses.
//!
//! Unlike upstream, the Endpoints carries a controller ownerReference to its Service, so
//! the garbage collector removes it with the Service (kube-runtime does not reconcile
//! objects that are gone from its cache, so deletion cannot be observed in `reconcile`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use coxswain_runtime::events::{EventType, Recorder, object_ref};
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Pod, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;
use tracing::info;

use crate::{Context, reconciler};
use crate::endpointslice::{
    Error, PodServiceIndex, api_err, find_port, hostname_for, owner_ref, pod_ip, pod_ready,
    pod_terminal, selected_pods, service_labels, target_ref,
};

/// The controller's name in `--controllers`.
pub const NAME: &str = "endpoint";
/// `source.component` of its Events.
pub const COMPONENT: &str = "endpoint-controller";
/// Addresses an Endpoints object holds at most (upstream's limit; EndpointSlices have none).
pub const MAX_ADDRESSES: usize = 1000;
/// Annotation set when addresses were left out because of [`MAX_ADDRESSES`].
pub const OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";

/// Keeps at most [`MAX_ADDRESSES`] addresses, ready ones first; returns whether any went.
fn truncate(subsets: &mut [EndpointSubset]) -> bool {
    let total: usize = subsets
        .iter()
        .map(|s| {
            s.addresses.as_ref().map_or(0, Vec::len) + s.not_ready_addresses.as_ref().map_or(0, Vec::len)
        })
        .sum();
    if total <= MAX_ADDRESSES {
        return false;
    }
    let mut room = MAX_ADDRESSES;
    for s in subsets.iter_mut() {
        if let Some(a) = s.addresses.as_mut() {
            a.truncate(room);
            room -= a.len();
        }
    }
    for s in subsets.iter_mut() {
        if let Some(a) = s.not_ready_addresses.as_mut() {
            a.truncate(room);
            room -= a.len();
        }
    }
    for s in subsets.iter_mut() {
        if s.addresses.as_ref().is_some_and(Vec::is_empty) {
            s.addresses = None;
        }
        if s.not_ready_addresses.as_ref().is_some_and(Vec::is_empty) {
            s.not_ready_addresses = None;
        }
    }
    true
}

/// The subsets for `service` over `pods`, sorted so that equal content compares equal.
fn desired_subsets(service: &Service, pods: &[Pod]) -> Vec<EndpointSubset> {
    let spec = service.spec.clone().unwrap_or_default();
    let tolerate_unready = spec.publish_not_ready_addresses == Some(true);
    let family = spec
        .ip_families
        .as_ref()
        .and_then(|f| f.first().cloned())
        .unwrap_or_else(|| "IPv4".to_owned());
    // ports key -> (ports, ready, not ready)
    type Subset = (Vec<EndpointPort>, Vec<EndpointAddress>, Vec<EndpointAddress>);
    let mut subsets: BTreeMap<String, Subset> = BTreeMap::new();
    for pod in pods {
        if pod_terminal(pod) {
            continue;
        }
        if pod.metadata.deletion_timestamp.is_some() && !tolerate_unready {
            continue;
        }
        let Some(ip) = pod_ip(pod, &family) else { continue };
        let ports: Vec<EndpointPort> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(EndpointPort {
                    name: p.name.clone().filter(|n| !n.is_empty()),
                    port: find_port(pod, p)?,
                    protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".to_owned())),
                    app_protocol: p.app_protocol.clone(),
                })
            })
            .collect();
        if ports.is_empty() && spec.ports.as_ref().is_some_and(|p| !p.is_empty()) {
            // None of the Service's ports exist on this pod.
            continue;
        }
        let address = EndpointAddress {
            ip,
            hostname: hostname_for(pod, service),
            node_name: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty()),
            target_ref: Some(target_ref(pod)),
        };
        let key = serde_json::to_string(&ports).unwrap_or_default();
        let entry = subsets
            .entry(key)
            .or_insert_with(|| (ports, Vec::new(), Vec::new()));
        if tolerate_unready || pod_ready(pod) {
            entry.1.push(address);
        } else {
            entry.2.push(address);
        }
    }
    subsets
        .into_values()
        .map(|(ports, mut ready, mut not_ready)| {
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then_some(ports),
            }
        })
        .collect()
}

struct State {
    ctx: Context,
    recorder: Recorder,
}

fn normalized(subsets: Option<Vec<EndpointSubset>>) -> Vec<EndpointSubset> {
    subsets.unwrap_or_default()
}

async fn sync_service(service: &Service, state: &State) -> Result<(), Error> {
    if service.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let client = &state.ctx.client;
    let Some(pods) = selected_pods(client, service).await? else {
        return Ok(());
    };
    let name = service.name_any();
    let namespace = service.namespace().unwrap_or_default();
    let api: Api<Endpoints> = Api::namespaced(client.clone(), &namespace);
    let mut subsets = desired_subsets(service, &pods);
    let truncated = truncate(&mut subsets);
    subsets.retain(|s| s.addresses.is_some() || s.not_ready_addresses.is_some());
    let labels = service_labels(service);
    let owners = vec![owner_ref(service)];
    let current = api
        .get_opt(&name)
        .await
        .map_err(api_err("read endpoints", &name))?;
    let result = match current {
        Some(mut current) => {
            let marked = current.annotations().contains_key(OVER_CAPACITY);
            let same = normalized(current.subsets.clone()) == subsets
                && current.metadata.labels.clone().unwrap_or_default() == labels
                && current.metadata.owner_references.as_ref() == Some(&owners)
                && marked == truncated;
            if same {
                return Ok(());
            }
            let annotations = current.metadata.annotations.get_or_insert_with(Default::default);
            if truncated {
                annotations.insert(OVER_CAPACITY.to_owned(), "truncated".to_owned());
            } else {
                annotations.remove(OVER_CAPACITY);
            }
            current.subsets = (!subsets.is_empty()).then_some(subsets);
            current.metadata.labels = Some(labels);
            current.metadata.owner_references = Some(owners);
            api.replace(&name, &PostParams::default(), &current)
                .await
                .map(|_| ())
                .map_err(api_err("update endpoints", &name))
        }
        None => {
            let endpoints = Endpoints {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(namespace.clone()),
                    labels: Some(labels),
                    owner_references: Some(owners),
                    annotations: truncated.then(|| {
                        BTreeMap::from([(OVER_CAPACITY.to_owned(), "truncated".to_owned())])
                    }),
                    ..ObjectMeta::default()
                },
                subsets: (!subsets.is_empty()).then_some(subsets),
            };
            match api.create(&PostParams::default(), &endpoints).await {
                Ok(_) => Ok(()),
                Err(e) => Err(api_err("create endpoints", &name)(e)),
            }
        }
    };
    if let Err(e) = &result {
        state
            .recorder
            .record(
                &object_ref(service),
                EventType::Warning,
                "FailedToUpdateEndpoint",
                &format!("Failed to update endpoint {namespace}/{name}: {e}"),
            )
            .await;
    }
    result
}

/// Runs the Endpoints controller until its watches end.
pub async fn run(ctx: Context) -> Result<(), Error> {
    let client = ctx.client.clone();
    let controller = Controller::new(Api::<Service>::all(client.clone()), watcher::Config::default());
    let index = PodServiceIndex::new(controller.store());
    let metrics = ctx.metrics().clone();
    let state = Arc::new(State {
        recorder: Recorder::new(client.clone(), COMPONENT, None),
        ctx,
    });
    info!("starting the endpoints controller");
    let controller = controller
        .owns(Api::<Endpoints>::all(client.clone()), watcher::Config::default())
        .watches(Api::<Pod>::all(client), watcher::Config::default(), move |pod| {
            index.services_for(&pod)
        })
        .with_config(controller::Config::default().debounce(Duration::from_millis(20)));
    reconciler::run(controller, NAME, metrics, state, |service: Arc<Service>, state: Arc<State>| async move {
        sync_service(&service, &state).await.map(|()| Action::await_change())
    })
    .await;
    Err(Error::Stopped(NAME))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ip: &str, ready: bool, terminating: bool) -> Pod {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": name, "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "web", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip,
                "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        }))
        .unwrap();
        if terminating {
            p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
        }
        p
    }

    fn service(publish: bool) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "publishNotReadyAddresses": publish,
                "ports": [{"name": "http", "port": 80, "targetPort": "web"}]},
        }))
        .unwrap()
    }

    fn ips(a: &Option<Vec<EndpointAddress>>) -> Vec<String> {
        a.iter().flatten().map(|a| a.ip.clone()).collect()
    }

    #[test]
    fn ready_unready_terminating() {
        let pods = [
            pod("a", "10.0.0.2", true, false),
            pod("b", "10.0.0.1", false, false),
            pod("c", "10.0.0.3", true, true),
        ];
        let subsets = desired_subsets(&service(false), &pods);
        assert_eq!(subsets.len(), 1);
        assert_eq!(ips(&subsets[0].addresses), ["10.0.0.2"]);
        assert_eq!(ips(&subsets[0].not_ready_addresses), ["10.0.0.1"]);
        assert_eq!(subsets[0].ports.as_ref().unwrap()[0].port, 8080);
        let subsets = desired_subsets(&service(true), &pods);
        assert_eq!(ips(&subsets[0].addresses), ["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
    }

    #[test]
    fn more_than_1000_addresses_are_truncated_ready_first() {
        let pods: Vec<Pod> = (0..1200)
            .map(|i| pod(&format!("p{i}"), &format!("10.1.{}.{}", i / 250, i % 250 + 1), i % 2 == 0, false))
            .collect();
        let mut subsets = desired_subsets(&service(false), &pods);
        assert!(truncate(&mut subsets));
        let ready: usize = subsets.iter().map(|s| s.addresses.as_ref().map_or(0, Vec::len)).sum();
        let not_ready: usize = subsets.iter().map(|s| s.not_ready_addresses.as_ref().map_or(0, Vec::len)).sum();
        assert_eq!((ready, not_ready), (600, 400));
        let mut small = desired_subsets(&service(false), &pods[..10]);
        assert!(!truncate(&mut small));
    }
}
