//! The `default/kubernetes` Service and its endpoints, kept by every API server (upstream's
//! bootstrap controller with the lease endpoint reconciler).
//!
//! Every `endpoint_reconcile_interval` each server renews its own Lease in `kube-system`
//! (`apiserver-<address>`, labelled `apiserver.kubernetes.io/identity=kube-apiserver`, its
//! advertised address in an annotation), makes sure the Service exists (ClusterIP the first
//! address of the service CIDR, port `https` 443 to the server's port), then writes the
//! `kubernetes` Endpoints (labelled `endpointslice.kubernetes.io/skip-mirror`) and the
//! EndpointSlice of the same name so that they list the addresses of the Leases still live.
//! Servers that agree on the live Leases compute the same objects, so several servers on one
//! store converge instead of taking turns; a server that dies stops renewing and its address
//! leaves the endpoints once its Lease expires; one that stops gracefully removes its Lease
//! and itself at once. Deleted objects come back at the next round.
//!
//! Every server is assumed to serve on the same port (as upstream assumes): the Service's
//! `targetPort` and the endpoints' port are each writer's own.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::handlers::{Ctx, create_object};
use crate::handlers::write::{self, Commit};
use crate::namespaces;
use crate::object;
use crate::server::ApiState;
use crate::status::{ApiError, Result};

/// The Service's name (in `default`).
pub(crate) const SERVICE_NAME: &str = "kubernetes";
const NAMESPACE: &str = "default";
/// The Service port clients use.
pub(crate) const SERVICE_PORT: u16 = 443;
const PORT_NAME: &str = "https";
const LEASE_NAMESPACE: &str = "kube-system";
/// The label of API server Leases (upstream's identity Leases carry it too).
pub(crate) const IDENTITY_LABEL: &str = "apiserver.kubernetes.io/identity";
const IDENTITY: &str = "kube-apiserver";
/// The annotation of an API server Lease that holds the address it advertises.
pub(crate) const ADDRESS_ANNOTATION: &str = "coxswain.dev/advertise-address";
const SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The name of the Lease of the API server advertising `address`.
pub(crate) fn lease_name(address: IpAddr) -> String {
    let text = address.to_string().replace(['.', ':'], "-");
    format!("apiserver-{}", text.trim_matches('-'))
}

/// The address a server advertises: the given one, else the one it listens on, else (for
/// an unspecified listen address) the source address the host uses towards a public address.
pub(crate) fn advertise_address(configured: Option<IpAddr>, listen: IpAddr) -> IpAddr {
    if let Some(ip) = configured {
        return ip;
    }
    if !listen.is_unspecified() {
        return listen;
    }
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            // No packet is sent: connecting a UDP socket only picks a route.
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// The Service as this server wants it.
fn desired_service(cluster_ip: IpAddr, port: u16) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": SERVICE_NAME,
            "namespace": NAMESPACE,
            "labels": {"provider": "kubernetes", "component": "apiserver"},
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip.to_string(),
            "ipFamilyPolicy": "SingleStack",
            "sessionAffinity": "None",
            "ports": service_ports(port),
        },
    })
}

fn service_ports(port: u16) -> Value {
    json!([{"name": PORT_NAME, "port": SERVICE_PORT, "protocol": "TCP", "targetPort": port}])
}

fn endpoint_ports(port: u16) -> Value {
    json!([{"name": PORT_NAME, "port": port, "protocol": "TCP"}])
}

/// The Endpoints listing `addresses` (sorted) on `port`.
pub(crate) fn desired_endpoints(addresses: &BTreeSet<IpAddr>, port: u16) -> Value {
    let addrs: Vec<Value> = addresses.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
    json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {
            "name": SERVICE_NAME,
            "namespace": NAMESPACE,
            "labels": {SKIP_MIRROR: "true"},
        },
        "subsets": [{"addresses": addrs, "ports": endpoint_ports(port)}],
    })
}

/// The EndpointSlice mirroring `endpoints` (upstream's `endpointSliceFromEndpoints`).
pub(crate) fn slice_from_endpoints(endpoints: &Value) -> Value {
    let subset = endpoints.pointer("/subsets/0").cloned().unwrap_or(Value::Null);
    let ip_of = |a: &Value| a.get("ip").and_then(Value::as_str).unwrap_or_default().to_owned();
    let ready: Vec<String> = subset.get("addresses").and_then(Value::as_array).into_iter().flatten().map(ip_of).collect();
    let not_ready: Vec<String> =
        subset.get("notReadyAddresses").and_then(Value::as_array).into_iter().flatten().map(ip_of).collect();
    let all_v6 = !ready.is_empty() && ready.iter().chain(&not_ready).all(|ip| ip.contains(':'));
    let address_type = if all_v6 { "IPv6" } else { "IPv4" };
    let endpoint = |ip: &String, ready: bool| json!({"addresses": [ip], "conditions": {"ready": ready}});
    let wanted_family = |ip: &&String| ip.contains(':') == all_v6;
    let list: Vec<Value> = ready
        .iter()
        .filter(wanted_family)
        .map(|ip| endpoint(ip, true))
        .chain(not_ready.iter().filter(wanted_family).map(|ip| endpoint(ip, false)))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": object::name(endpoints),
            "namespace": object::namespace(endpoints),
            "labels": {SERVICE_NAME_LABEL: object::name(endpoints)},
        },
        "addressType": address_type,
        "endpoints": list,
        "ports": subset.get("ports").cloned().unwrap_or_else(|| json!([])),
    })
}

/// The addresses the Endpoints lists, if it has the shape the reconciler writes (one subset).
fn listed_addresses(endpoints: &Value) -> Option<BTreeSet<IpAddr>> {
    let subsets = endpoints.get("subsets").and_then(Value::as_array)?;
    let [subset] = subsets.as_slice() else { return None };
    let addresses = subset.get("addresses").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let set: BTreeSet<IpAddr> =
        addresses.iter().filter_map(|a| a.get("ip")?.as_str()?.parse().ok()).collect();
    (set.len() == addresses.len()).then_some(set)
}

/// Whether a Lease is still live at `now`: renewed less than its duration ago.
pub(crate) fn lease_live(lease: &Value, now: jiff::Timestamp) -> bool {
    let Some(renewed) = lease
        .pointer("/spec/renewTime")
        .and_then(Value::as_str)
        .and_then(object::parse_time)
    else {
        return false;
    };
    let duration = lease.pointer("/spec/leaseDurationSeconds").and_then(Value::as_i64).unwrap_or(0);
    renewed.as_millisecond() + duration.saturating_mul(1000) > now.as_millisecond()
}

/// How the reconciler is set up.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// What this server advertises.
    pub address: IpAddr,
    /// The port it serves on.
    pub port: u16,
    /// Its Lease's holder identity.
    pub identity: String,
    /// The Service's ClusterIP.
    pub cluster_ip: IpAddr,
    pub interval: Duration,
    pub lease_ttl: Duration,
}

/// The running reconciler; [`Reconciler::stop`] removes this server from the endpoints.
#[derive(Debug)]
pub(crate) struct Reconciler {
    stop: Option<oneshot::Sender<oneshot::Sender<()>>>,
    interval: Duration,
}

impl Reconciler {
    /// Starts reconciling every `settings.interval`, the first round at once.
    pub(crate) fn start(state: Arc<ApiState>, settings: Settings) -> Reconciler {
        let (stop, mut stopped) = oneshot::channel::<oneshot::Sender<()>>();
        let interval = settings.interval;
        info!(address = %settings.address, port = settings.port, cluster_ip = %settings.cluster_ip,
            "keeping the kubernetes Service and its endpoints");
        tokio::spawn(async move {
            let mut first = true;
            loop {
                if let Err(e) = round(&state, &settings, first).await {
                    warn!(error = %e, "failed to reconcile the kubernetes Service; retrying");
                } else {
                    first = false;
                }
                tokio::select! {
                    done = &mut stopped => {
                        // Dropped without `stop` (the server's future was dropped): end as a
                        // crashed server would, leaving the Lease to expire.
                        let Ok(done) = done else { return };
                        if let Err(e) = remove_self(&state, &settings).await {
                            warn!(error = %e, "failed to remove this API server from the kubernetes Service's endpoints");
                        }
                        let _ = done.send(());
                        return;
                    }
                    () = tokio::time::sleep(settings.interval) => {}
                }
            }
        });
        Reconciler { stop: Some(stop), interval }
    }

    /// Stops reconciling and removes this server's Lease and address (bounded by two
    /// intervals, so an unreachable store never blocks shutdown).
    pub(crate) async fn stop(mut self) {
        let Some(stop) = self.stop.take() else { return };
        let (done, finished) = oneshot::channel();
        if stop.send(done).is_ok() && tokio::time::timeout(self.interval * 2, finished).await.is_err() {
            warn!("removing this API server from the kubernetes Service's endpoints timed out");
        }
    }
}

fn ctx(state: &Arc<ApiState>, group: &str, plural: &str, namespace: &str) -> Result<Ctx> {
    namespaces::ctx(state, group, plural, Some(namespace))
}

/// The object `name` and its revision, if it exists.
async fn get(c: &Ctx, name: &str) -> Result<Option<(Value, i64)>> {
    match c.current(name).await {
        Ok(found) => Ok(Some(found)),
        Err(ApiError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces `current` (at `rev`) with `new` through the normal update path; `false` when
/// someone wrote in between (the next round reads again).
async fn replace(c: &Ctx, current: &Value, rev: i64, new: Value) -> Result<bool> {
    let merged = write::merge_update(c, current, new);
    Ok(matches!(write::commit_update(c, current, rev, merged).await?, Commit::Done(..)))
}

/// Creates `obj`; an object created meanwhile by another server is fine.
async fn create(c: &Ctx, obj: Value) -> Result<()> {
    match create_object(c, obj).await {
        Ok(_) | Err(ApiError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// One round: renew the Lease, ensure the Service, write the endpoints.
async fn round(state: &Arc<ApiState>, s: &Settings, first: bool) -> Result<()> {
    renew_lease(state, s).await?;
    ensure_service(state, s, first).await?;
    reconcile_endpoints(state, s.port, first).await
}

async fn renew_lease(state: &Arc<ApiState>, s: &Settings) -> Result<()> {
    let c = ctx(state, "coordination.k8s.io", "leases", LEASE_NAMESPACE)?;
    let name = lease_name(s.address);
    let now = jiff::Timestamp::now();
    let lease: k8s_openapi::api::coordination::v1::Lease = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "namespace": LEASE_NAMESPACE,
            "labels": {IDENTITY_LABEL: IDENTITY},
            "annotations": {ADDRESS_ANNOTATION: s.address.to_string()},
        },
        "spec": {
            "holderIdentity": s.identity,
            "leaseDurationSeconds": s.lease_ttl.as_secs().max(1),
        },
    }))
    .map_err(|e| ApiError::Internal(format!("the API server Lease is malformed: {e}")))?;
    let mut lease = lease;
    if let Some(spec) = lease.spec.as_mut() {
        spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(now));
    }
    let mut wanted = serde_json::to_value(&lease).map_err(|e| ApiError::Internal(e.to_string()))?;
    wanted["apiVersion"] = json!("coordination.k8s.io/v1");
    wanted["kind"] = json!("Lease");
    match get(&c, &name).await? {
        None => create(&c, wanted).await,
        Some((current, rev)) => {
            let mut new = current.clone();
            new["metadata"]["labels"][IDENTITY_LABEL] = json!(IDENTITY);
            new["metadata"]["annotations"][ADDRESS_ANNOTATION] = json!(s.address.to_string());
            new["spec"] = wanted["spec"].clone();
            if !replace(&c, &current, rev, new).await? {
                debug!(lease = %name, "the API server Lease changed while renewing; next round");
            }
            Ok(())
        }
    }
}

/// The addresses of the live API server Leases; expired ones are deleted.
async fn live_addresses(state: &Arc<ApiState>) -> Result<BTreeSet<IpAddr>> {
    let c = ctx(state, "coordination.k8s.io", "leases", LEASE_NAMESPACE)?;
    let page = state
        .store
        .list(&c.rt.namespace_prefix(Some(LEASE_NAMESPACE)), coxswain_store::ListOptions::default())
        .await
        .map_err(|e| ApiError::from_store(e, &c.target("")))?;
    let now = jiff::Timestamp::now();
    let mut live = BTreeSet::new();
    for kv in &page.items {
        let lease = crate::storage::decode(kv)?;
        if object::label(&lease, IDENTITY_LABEL) != Some(IDENTITY) {
            continue;
        }
        if !lease_live(&lease, now) {
            // Deleted only if unchanged since read: a server renewing it meanwhile wins.
            match state.store.delete(&kv.key, Some(kv.mod_revision)).await {
                Ok(_) => info!(lease = object::name(&lease), "removed the expired Lease of an API server"),
                Err(e) => debug!(lease = object::name(&lease), error = %e, "expired Lease not removed"),
            }
            continue;
        }
        let address = object::meta_map(&lease, "annotations")
            .find(|(k, _)| *k == ADDRESS_ANNOTATION)
            .and_then(|(_, v)| v.parse::<IpAddr>().ok());
        if let Some(ip) = address {
            live.insert(ip);
        }
    }
    Ok(live)
}

async fn ensure_service(state: &Arc<ApiState>, s: &Settings, first: bool) -> Result<()> {
    let c = ctx(state, "", "services", NAMESPACE)?;
    match get(&c, SERVICE_NAME).await? {
        None => {
            info!(cluster_ip = %s.cluster_ip, "creating the kubernetes Service");
            create(&c, desired_service(s.cluster_ip, s.port)).await
        }
        // As upstream, the ports and type are put back only when a server starts.
        Some((current, rev)) if first => {
            let wanted = service_ports(s.port);
            let ports_match = current.pointer("/spec/ports").is_some_and(|p| same_ports(p, &wanted));
            let type_matches = current.pointer("/spec/type").and_then(Value::as_str) == Some("ClusterIP");
            if ports_match && type_matches {
                return Ok(());
            }
            warn!("resetting the ports and type of the kubernetes Service");
            let mut new = current.clone();
            new["spec"]["ports"] = wanted;
            new["spec"]["type"] = json!("ClusterIP");
            replace(&c, &current, rev, new).await.map(|_| ())
        }
        Some(_) => Ok(()),
    }
}

/// Whether Service ports `have` are `want` (fields `want` names; defaults may add others).
fn same_ports(have: &Value, want: &Value) -> bool {
    let (Some(have), Some(want)) = (have.as_array(), want.as_array()) else { return false };
    have.len() == want.len()
        && have.iter().zip(want).all(|(h, w)| {
            w.as_object().is_some_and(|w| w.iter().all(|(k, v)| h.get(k) == Some(v)))
        })
}

async fn reconcile_endpoints(state: &Arc<ApiState>, port: u16, reset_ports: bool) -> Result<()> {
    let live = live_addresses(state).await?;
    if live.is_empty() {
        return Err(ApiError::Internal(
            "no API server Lease is live: refusing to erase every endpoint of the kubernetes Service".to_owned(),
        ));
    }
    let c = ctx(state, "", "endpoints", NAMESPACE)?;
    let endpoints = match get(&c, SERVICE_NAME).await? {
        None => {
            info!(addresses = ?live, "creating the kubernetes Service's endpoints");
            let wanted = desired_endpoints(&live, port);
            create(&c, wanted.clone()).await?;
            wanted
        }
        Some((current, rev)) => {
            let skip_mirror = object::label(&current, SKIP_MIRROR) == Some("true");
            let listed = listed_addresses(&current);
            let ports = current.pointer("/subsets/0/ports").cloned();
            // Ports are kept as found once the format is right, except at start (upstream).
            let ports_ok = !reset_ports || ports.as_ref() == Some(&endpoint_ports(port));
            if skip_mirror && listed.as_ref() == Some(&live) && ports_ok {
                current
            } else {
                let keep_ports = listed.is_some() && !reset_ports;
                let mut new = current.clone();
                let wanted = desired_endpoints(&live, port);
                new["metadata"]["labels"][SKIP_MIRROR] = json!("true");
                new["subsets"] = wanted["subsets"].clone();
                if keep_ports && let Some(p) = ports {
                    new["subsets"][0]["ports"] = p;
                }
                info!(addresses = ?live, "resetting the kubernetes Service's endpoints");
                if !replace(&c, &current, rev, new.clone()).await? {
                    return Ok(());
                }
                new
            }
        }
    };
    ensure_slice(state, &endpoints).await
}

async fn ensure_slice(state: &Arc<ApiState>, endpoints: &Value) -> Result<()> {
    let c = ctx(state, "discovery.k8s.io", "endpointslices", NAMESPACE)?;
    let mut wanted = slice_from_endpoints(endpoints);
    (c.rt.defaults)(&mut wanted);
    match get(&c, SERVICE_NAME).await? {
        None => create(&c, wanted).await,
        Some((current, rev)) => {
            if current.get("addressType") != wanted.get("addressType") {
                // The address type is immutable: replace the slice.
                let _ = state.store.delete(&c.key(SERVICE_NAME), Some(rev)).await;
                return create(&c, wanted).await;
            }
            let same = ["endpoints", "ports"].iter().all(|f| current.get(*f) == wanted.get(*f))
                && current.pointer("/metadata/labels") == wanted.pointer("/metadata/labels");
            if same {
                return Ok(());
            }
            let mut new = current.clone();
            new["endpoints"] = wanted["endpoints"].clone();
            new["ports"] = wanted["ports"].clone();
            new["metadata"]["labels"] = wanted["metadata"]["labels"].clone();
            replace(&c, &current, rev, new).await.map(|_| ())
        }
    }
}

/// Removes this server's Lease, then writes the endpoints without it.
async fn remove_self(state: &Arc<ApiState>, s: &Settings) -> Result<()> {
    let c = ctx(state, "coordination.k8s.io", "leases", LEASE_NAMESPACE)?;
    if let Err(e) = state.store.delete(&c.key(&lease_name(s.address)), None).await
        && !matches!(e, coxswain_store::Error::NotFound { .. })
    {
        return Err(ApiError::from_store(e, &c.target(&lease_name(s.address))));
    }
    info!(address = %s.address, "removed this API server from the kubernetes Service's endpoints");
    reconcile_endpoints(state, s.port, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn lease_names_are_valid_object_names() {
        assert_eq!(lease_name("10.250.0.1".parse().unwrap()), "apiserver-10-250-0-1");
        assert_eq!(lease_name("fd00::1".parse().unwrap()), "apiserver-fd00--1");
    }

    #[test]
    fn endpoints_and_slice_shapes_follow_upstream() {
        let e = desired_endpoints(&ips(&["10.0.0.2", "10.0.0.1"]), 6443);
        assert_eq!(e["metadata"]["labels"][SKIP_MIRROR], "true");
        assert_eq!(e["subsets"][0]["addresses"], json!([{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}]));
        assert_eq!(e["subsets"][0]["ports"], json!([{"name": "https", "port": 6443, "protocol": "TCP"}]));
        assert_eq!(listed_addresses(&e), Some(ips(&["10.0.0.1", "10.0.0.2"])));
        let slice = slice_from_endpoints(&e);
        assert_eq!(slice["metadata"]["labels"][SERVICE_NAME_LABEL], "kubernetes");
        assert_eq!(slice["addressType"], "IPv4");
        assert_eq!(
            slice["endpoints"],
            json!([
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": true}},
            ])
        );
        assert_eq!(slice["ports"], e["subsets"][0]["ports"]);
        let two: Value = json!({"subsets": [{}, {}]});
        assert_eq!(listed_addresses(&two), None, "two subsets are not the reconciler's format");
    }

    #[test]
    fn leases_expire_after_their_duration() {
        let now = jiff::Timestamp::from_second(1_000_000).unwrap();
        let lease = |renewed: i64, duration: i64| {
            json!({"spec": {"renewTime": object::format_time(jiff::Timestamp::from_second(renewed).unwrap()),
                "leaseDurationSeconds": duration}})
        };
        assert!(lease_live(&lease(999_990, 15), now));
        assert!(!lease_live(&lease(999_985, 15), now));
        let fraction = json!({"spec": {"renewTime": "1970-01-12T13:46:39.900000Z", "leaseDurationSeconds": 1}});
        assert!(lease_live(&fraction, now), "renewed 100 ms ago, for a second");
        assert!(!lease_live(&json!({"spec": {}}), now));
    }

    #[test]
    fn an_unspecified_listen_address_advertises_a_real_one() {
        let listen: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(advertise_address(None, listen), listen);
        let given: IpAddr = "10.9.9.9".parse().unwrap();
        assert_eq!(advertise_address(Some(given), listen), given);
        assert!(!advertise_address(None, "0.0.0.0".parse().unwrap()).is_unspecified());
    }

    #[test]
    fn ports_compare_on_the_fields_we_set() {
        let want = service_ports(6443);
        let mut have = want.clone();
        have[0]["nodePort"] = Value::Null;
        assert!(same_ports(&want, &want));
        have[0]["targetPort"] = json!(6444);
        assert!(!same_ports(&have, &want));
    }
}
