//! Builders for Services and EndpointSlices, a harness around
//! `MemoryServiceMaps` that checks the kernel's consistency invariant after
//! every single map operation, and renderings of map state and operations
//! that read like a spec.
#![allow(
    dead_code,
    reason = "shared by several test crates and the bench, each using a part"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::ops::Deref;

use coxswain_dataplane::{MapOp, MemoryServiceMaps, ServiceMapsDump};
use coxswain_ebpf_common::{
    BackendV4, MaglevKeyV4, ServiceKeyV4, ServiceValue, proto, scope, service_flags,
};
use coxswain_proxy::{
    BACKEND_FLAG_NAMES, NodeInfo, ProxyState, SERVICE_FLAG_NAMES, SERVICE_NAME_LABEL, SyncReport,
    flag_names,
};
use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceSpec,
    ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

// ---------------------------------------------------------------- builders

/// A Service under construction; derefs to the `Service`, so `&svc(..)...`
/// can be passed wherever a `&Service` is expected.
#[derive(Clone, Debug)]
pub struct SvcBuilder(pub Service);

impl Deref for SvcBuilder {
    type Target = Service;
    fn deref(&self) -> &Service {
        &self.0
    }
}

fn meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(namespace.to_owned()),
        name: Some(name.to_owned()),
        ..ObjectMeta::default()
    }
}

/// A `type: ClusterIP` Service without ports or address.
pub fn svc(namespace: &str, name: &str) -> SvcBuilder {
    SvcBuilder(Service {
        metadata: meta(namespace, name),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

impl SvcBuilder {
    fn spec(&mut self) -> &mut ServiceSpec {
        self.0.spec.as_mut().expect("built with a spec")
    }

    fn last_port(&mut self) -> &mut ServicePort {
        self.spec()
            .ports
            .as_mut()
            .and_then(|p| p.last_mut())
            .expect("add a port first")
    }

    pub fn cluster_ip(mut self, ip: &str) -> Self {
        self.spec().cluster_ip = Some(ip.to_owned());
        self.spec().cluster_ips = Some(vec![ip.to_owned()]);
        self
    }

    pub fn headless(self) -> Self {
        self.cluster_ip("None")
    }

    pub fn external_name(mut self, host: &str) -> Self {
        let spec = self.spec();
        spec.type_ = Some("ExternalName".to_owned());
        spec.external_name = Some(host.to_owned());
        self
    }

    pub fn type_(mut self, type_: &str) -> Self {
        self.spec().type_ = Some(type_.to_owned());
        self
    }

    /// A TCP port `port` → `target` (name `""` for an unnamed port).
    pub fn port(mut self, name: &str, port: i32, target: i32) -> Self {
        self.spec()
            .ports
            .get_or_insert_with(Vec::new)
            .push(ServicePort {
                name: (!name.is_empty()).then(|| name.to_owned()),
                port,
                target_port: Some(IntOrString::Int(target)),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            });
        self
    }

    /// A TCP port whose targetPort names a container port.
    pub fn port_to(mut self, name: &str, port: i32, target: &str) -> Self {
        self = self.port(name, port, 0);
        self.last_port().target_port = Some(IntOrString::String(target.to_owned()));
        self
    }

    /// Sets the protocol of the last port.
    pub fn protocol(mut self, protocol: &str) -> Self {
        self.last_port().protocol = Some(protocol.to_owned());
        self
    }

    /// Sets the nodePort of the last port.
    pub fn node_port(mut self, node_port: i32) -> Self {
        self.last_port().node_port = Some(node_port);
        self
    }

    pub fn external_ip(mut self, ip: &str) -> Self {
        self.spec()
            .external_ips
            .get_or_insert_with(Vec::new)
            .push(ip.to_owned());
        self
    }

    pub fn lb_ingress(self, ip: &str) -> Self {
        self.lb_ingress_mode(ip, None)
    }

    pub fn lb_ingress_mode(mut self, ip: &str, mode: Option<&str>) -> Self {
        self.0
            .status
            .get_or_insert_with(ServiceStatus::default)
            .load_balancer
            .get_or_insert_with(LoadBalancerStatus::default)
            .ingress
            .get_or_insert_with(Vec::new)
            .push(LoadBalancerIngress {
                ip: Some(ip.to_owned()),
                ip_mode: mode.map(str::to_owned),
                ..LoadBalancerIngress::default()
            });
        self
    }

    pub fn etp_local(mut self) -> Self {
        self.spec().external_traffic_policy = Some("Local".to_owned());
        self
    }

    pub fn itp_local(mut self) -> Self {
        self.spec().internal_traffic_policy = Some("Local".to_owned());
        self
    }

    /// The `coxswain.io/lb-algorithm` annotation.
    pub fn lb_algorithm(mut self, algorithm: &str) -> Self {
        self.0
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(coxswain_proxy::LB_ALGORITHM_ANNOTATION.to_owned(), algorithm.to_owned());
        self
    }

    /// `sessionAffinity: ClientIP`, with `timeoutSeconds` when given.
    pub fn affinity(mut self, timeout_seconds: Option<i32>) -> Self {
        let spec = self.spec();
        spec.session_affinity = Some("ClientIP".to_owned());
        spec.session_affinity_config = timeout_seconds.map(|t| SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(t),
            }),
        });
        self
    }
}

/// An EndpointSlice under construction; derefs to the `EndpointSlice`.
#[derive(Clone, Debug)]
pub struct SliceBuilder(pub EndpointSlice);

impl Deref for SliceBuilder {
    type Target = EndpointSlice;
    fn deref(&self) -> &EndpointSlice {
        &self.0
    }
}

/// An IPv4 slice of `service`, without ports or endpoints.
pub fn slice(namespace: &str, name: &str, service: &str) -> SliceBuilder {
    let mut metadata = meta(namespace, name);
    metadata.labels = Some(BTreeMap::from([(
        SERVICE_NAME_LABEL.to_owned(),
        service.to_owned(),
    )]));
    SliceBuilder(EndpointSlice {
        metadata,
        address_type: "IPv4".to_owned(),
        endpoints: Some(Vec::new()),
        ports: Some(Vec::new()),
    })
}

impl SliceBuilder {
    /// A TCP port (name `""` for an unnamed port).
    pub fn port(self, name: &str, port: i32) -> Self {
        self.port_proto(name, port, "TCP")
    }

    pub fn port_proto(mut self, name: &str, port: i32, protocol: &str) -> Self {
        self.0
            .ports
            .get_or_insert_with(Vec::new)
            .push(EndpointPort {
                name: (!name.is_empty()).then(|| name.to_owned()),
                port: Some(port),
                protocol: Some(protocol.to_owned()),
                app_protocol: None,
            });
        self
    }

    pub fn address_type(mut self, address_type: &str) -> Self {
        self.0.address_type = address_type.to_owned();
        self
    }

    /// An endpoint with every condition explicit.
    pub fn ep_cond(
        mut self,
        addr: &str,
        node: Option<&str>,
        ready: Option<bool>,
        serving: Option<bool>,
        terminating: Option<bool>,
    ) -> Self {
        self.0
            .endpoints
            .get_or_insert_with(Vec::new)
            .push(Endpoint {
                addresses: vec![addr.to_owned()],
                conditions: Some(EndpointConditions {
                    ready,
                    serving,
                    terminating,
                }),
                node_name: node.map(str::to_owned),
                ..Endpoint::default()
            });
        self
    }

    /// A ready endpoint on another node.
    pub fn ep(self, addr: &str) -> Self {
        self.ep_cond(addr, Some("node-z"), Some(true), Some(true), Some(false))
    }

    /// A ready endpoint on `node`.
    pub fn ep_on(self, addr: &str, node: &str) -> Self {
        self.ep_cond(addr, Some(node), Some(true), Some(true), Some(false))
    }

    /// An endpoint that is neither ready nor terminating (starting up).
    pub fn not_ready(self, addr: &str) -> Self {
        self.ep_cond(addr, Some("node-z"), Some(false), Some(false), Some(false))
    }

    /// A terminating endpoint, still serving or not.
    pub fn terminating(self, addr: &str, serving: bool) -> Self {
        self.ep_cond(addr, Some("node-z"), Some(false), Some(serving), Some(true))
    }
}

// ---------------------------------------------------------------- harness

/// The node of most tests.
pub const NODE: &str = "node-a";

pub fn node() -> NodeInfo {
    NodeInfo {
        name: NODE.to_owned(),
        addresses: vec![
            Ipv4Addr::new(192, 168, 1, 10),
            Ipv4Addr::new(192, 168, 2, 10),
        ],
    }
}

/// An engine and in-memory maps that check consistency after every
/// operation and convergence after every change.
pub struct Harness {
    pub proxy: ProxyState,
    pub maps: MemoryServiceMaps,
    /// Operations already returned by [`Harness::ops`].
    seen: usize,
}

impl Harness {
    /// Synced (first full resync done on empty maps) for [`node`].
    pub fn new() -> Self {
        Self::with_node(node())
    }

    pub fn with_node(node: NodeInfo) -> Self {
        let mut maps = MemoryServiceMaps {
            observer: Some(assert_consistent),
            ..MemoryServiceMaps::default()
        };
        let mut proxy = ProxyState::new(node);
        let report = proxy.full_resync(&mut maps).unwrap();
        assert_eq!(report.ops, 0);
        Self {
            proxy,
            maps,
            seen: 0,
        }
    }

    pub fn svc(&mut self, service: &Service) -> SyncReport {
        let report = self.proxy.upsert_service(&mut self.maps, service).unwrap();
        self.check();
        report
    }

    pub fn slice(&mut self, slice: &EndpointSlice) -> SyncReport {
        let report = self
            .proxy
            .upsert_endpoint_slice(&mut self.maps, slice)
            .unwrap();
        self.check();
        report
    }

    pub fn delete_svc(&mut self, namespace: &str, name: &str) -> SyncReport {
        let report = self
            .proxy
            .delete_service(&mut self.maps, namespace, name)
            .unwrap();
        self.check();
        report
    }

    pub fn delete_slice(&mut self, namespace: &str, name: &str) -> SyncReport {
        let report = self
            .proxy
            .delete_endpoint_slice(&mut self.maps, namespace, name)
            .unwrap();
        self.check();
        report
    }

    pub fn set_node(&mut self, node: NodeInfo) -> SyncReport {
        let report = self.proxy.set_node(&mut self.maps, node).unwrap();
        self.check();
        report
    }

    /// The operations since the previous call, rendered.
    pub fn ops(&mut self) -> Vec<String> {
        let ops = self.maps.ops[self.seen..].iter().map(render_op).collect();
        self.seen = self.maps.ops.len();
        ops
    }

    /// The maps' content, one line per master entry.
    pub fn lines(&self) -> Vec<String> {
        render_maps(&self.maps.state)
    }

    /// The maps hold exactly what the engine wants.
    pub fn check(&self) {
        assert_converged(&self.proxy, &self.maps.state);
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------- invariants

/// The kernel's invariant, checked after every map operation: a master
/// counting `n` has slots `1..=n` with its service id, its reverse-NAT entry
/// names its address and port, and every slot names an existing backend;
/// every entry of every Maglev table names an existing backend.
pub fn assert_consistent(state: &ServiceMapsDump, op: &MapOp) {
    for (key, table) in &state.maglev {
        if let Some(missing) = table.iter().find(|id| !state.backends.contains_key(id)) {
            panic!(
                "after {}: Maglev table {key:?} names missing backend {missing}",
                render_op(op)
            );
        }
    }
    for (key, value) in &state.services {
        if key.slot != 0 {
            assert!(
                state.backends.contains_key(&value.backend_id),
                "after {}: slot {} names missing backend {}",
                render_op(op),
                render_key(key),
                value.backend_id
            );
            continue;
        }
        let rev_nat = state.rev_nat.get(&value.service_id).unwrap_or_else(|| {
            panic!(
                "after {}: master {} names missing rev_nat {}",
                render_op(op),
                render_key(key),
                value.service_id
            )
        });
        assert_eq!(
            (rev_nat.addr, rev_nat.port),
            (key.addr, key.port),
            "after {}: rev_nat {} does not name master {}",
            render_op(op),
            value.service_id,
            render_key(key)
        );
        for slot in 1..=value.count {
            let slot_value = state
                .services
                .get(&ServiceKeyV4 { slot, ..*key })
                .unwrap_or_else(|| {
                    panic!(
                        "after {}: master {} counts {} but slot {slot} is missing",
                        render_op(op),
                        render_key(key),
                        value.count
                    )
                });
            assert_eq!(
                slot_value.service_id,
                value.service_id,
                "after {}: slot {slot} of {}",
                render_op(op),
                render_key(key)
            );
        }
    }
}

/// The maps hold what `proxy.desired()` says, and nothing more: no slot
/// above a count, no backend or reverse-NAT entry that nothing names.
pub fn assert_converged(proxy: &ProxyState, state: &ServiceMapsDump) {
    let wanted: Vec<String> = proxy
        .desired()
        .iter()
        .filter(|view| view.active)
        .map(ToString::to_string)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        render_maps(state),
        wanted,
        "maps differ from the wanted state"
    );
    let mut named_backends = BTreeSet::new();
    let mut named_services = BTreeSet::new();
    for (key, value) in &state.services {
        let master = state.services.get(&ServiceKeyV4 { slot: 0, ..*key });
        let Some(master) = master else {
            panic!("slot {} without master", render_key(key));
        };
        assert!(
            key.slot <= master.count,
            "slot {} above the count",
            render_key(key)
        );
        if key.slot == 0 {
            named_services.insert(value.service_id);
        } else {
            named_backends.insert(value.backend_id);
        }
    }
    assert_eq!(
        state.backends.keys().copied().collect::<BTreeSet<_>>(),
        named_backends,
        "unreferenced backends"
    );
    assert_eq!(
        state.rev_nat.keys().copied().collect::<BTreeSet<_>>(),
        named_services,
        "unreferenced rev_nat entries"
    );
    // A Maglev table exactly for each Maglev master with backends, naming
    // exactly that master's slots' backends.
    let mut wanted_tables = BTreeSet::new();
    for (key, master) in state.services.iter().filter(|(k, _)| k.slot == 0) {
        if master.flags & service_flags::MAGLEV == 0 || master.count == 0 {
            continue;
        }
        let table_key = MaglevKeyV4 {
            service_id: master.service_id,
            scope: key.scope,
            pad: [0; 3],
        };
        let table = state
            .maglev
            .get(&table_key)
            .unwrap_or_else(|| panic!("Maglev master {} has no table", render_key(key)));
        let slots: BTreeSet<u32> = (1..=master.count)
            .map(|slot| state.services[&ServiceKeyV4 { slot, ..*key }].backend_id)
            .collect();
        let in_table: BTreeSet<u32> = table.iter().copied().collect();
        assert_eq!(in_table, slots, "Maglev table of {} and its slots", render_key(key));
        wanted_tables.insert(table_key);
    }
    assert_eq!(
        state.maglev.keys().copied().collect::<BTreeSet<_>>(),
        wanted_tables,
        "unreferenced Maglev tables"
    );
}

// ---------------------------------------------------------------- renderings

fn addr(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

fn proto_name(number: u8) -> String {
    match number {
        proto::TCP => "TCP".to_owned(),
        proto::UDP => "UDP".to_owned(),
        proto::SCTP => "SCTP".to_owned(),
        other => format!("proto{other}"),
    }
}

/// `10.96.0.10:80/TCP`, with ` local` for the local scope.
pub fn render_frontend(key: &ServiceKeyV4) -> String {
    let scope = if key.scope == scope::LOCAL {
        " local"
    } else {
        ""
    };
    format!(
        "{}:{}/{}{scope}",
        addr(key.addr),
        u16::from_be(key.port),
        proto_name(key.proto)
    )
}

/// `10.96.0.10:80/TCP#2` for slot 2.
pub fn render_key(key: &ServiceKeyV4) -> String {
    format!("{}#{}", render_frontend(key), key.slot)
}

pub fn render_backend(backend: &BackendV4) -> String {
    let mut text = format!("{}:{}", addr(backend.addr), u16::from_be(backend.port));
    if backend.flags != 0 {
        text.push_str(&format!(
            "({})",
            flag_names(backend.flags, &BACKEND_FLAG_NAMES)
        ));
    }
    text
}

/// One line per master entry, sorted, in the format of `FrontendView`'s
/// `Display`: `10.96.0.10:80/TCP all [-] -> 10.0.0.1:8080 10.0.0.2:8080`.
pub fn render_maps(state: &ServiceMapsDump) -> Vec<String> {
    let mut lines: Vec<String> = state
        .services
        .iter()
        .filter(|(key, _)| key.slot == 0)
        .map(|(key, master)| {
            let scope = if key.scope == scope::LOCAL {
                "local"
            } else {
                "all"
            };
            let mut line = format!(
                "{}:{}/{} {scope} [{}]",
                addr(key.addr),
                u16::from_be(key.port),
                proto_name(key.proto),
                flag_names(master.flags, &SERVICE_FLAG_NAMES)
            );
            if master.flags & service_flags::AFFINITY != 0 {
                line.push_str(&format!(" timeout={}s", master.affinity_timeout_s));
            }
            line.push_str(" ->");
            if master.count == 0 {
                line.push_str(" reject");
            }
            for slot in 1..=master.count {
                let slot_value = state.services.get(&ServiceKeyV4 { slot, ..*key });
                let backend = slot_value.and_then(|s| state.backends.get(&s.backend_id));
                match backend {
                    Some(backend) => line.push_str(&format!(" {}", render_backend(backend))),
                    None => line.push_str(" <missing>"),
                }
            }
            line
        })
        .collect();
    lines.sort();
    lines
}

fn render_master(value: &ServiceValue) -> String {
    let mut text = format!("count={} id={}", value.count, value.service_id);
    if value.flags != 0 {
        text.push_str(&format!(
            " [{}]",
            flag_names(value.flags, &SERVICE_FLAG_NAMES)
        ));
    }
    text
}

/// One map operation, e.g. `set slot 10.96.0.10:80/TCP#3 -> backend 3`.
pub fn render_op(op: &MapOp) -> String {
    match op {
        MapOp::UpdateService(key, value) if key.slot == 0 => {
            format!(
                "set master {} {}",
                render_frontend(key),
                render_master(value)
            )
        }
        MapOp::UpdateService(key, value) => format!(
            "set slot {} -> backend {}",
            render_key(key),
            value.backend_id
        ),
        MapOp::DeleteService(key) if key.slot == 0 => {
            format!("del master {}", render_frontend(key))
        }
        MapOp::DeleteService(key) => format!("del slot {}", render_key(key)),
        MapOp::UpdateBackend(id, backend) => {
            format!("set backend {id} = {}", render_backend(backend))
        }
        MapOp::DeleteBackend(id) => format!("del backend {id}"),
        MapOp::UpdateRevNat(id, rev_nat) => {
            format!(
                "set rev_nat {id} = {}:{}",
                addr(rev_nat.addr),
                u16::from_be(rev_nat.port)
            )
        }
        MapOp::DeleteRevNat(id) => format!("del rev_nat {id}"),
        MapOp::UpdateMaglev(key) => {
            format!("set maglev {}/{}", key.service_id, key.scope)
        }
        MapOp::DeleteMaglev(key) => format!("del maglev {}/{}", key.service_id, key.scope),
    }
}

// ---------------------------------------------------------------- scale

/// `n` ClusterIP Services (namespace `ns-{i / 100}`, name `svc-{i}`, port
/// http 80 → 8080) with one slice of `endpoints` ready endpoints each; pod
/// addresses are unique across the cluster.
pub fn cluster(n: u32, endpoints: u32) -> Vec<(SvcBuilder, SliceBuilder)> {
    (0..n)
        .map(|i| {
            let cluster_ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i + 1);
            let (namespace, name) = (format!("ns-{}", i / 100), format!("svc-{i}"));
            let service = svc(&namespace, &name)
                .cluster_ip(&cluster_ip.to_string())
                .port("http", 80, 8080);
            let mut slice = slice(&namespace, &format!("{name}-abcde"), &name).port("http", 8080);
            for j in 0..endpoints {
                slice = slice.ep(&pod_ip(i * endpoints + j).to_string());
            }
            (service, slice)
        })
        .collect()
}

/// The `k`-th pod address of [`cluster`].
pub fn pod_ip(k: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + k)
}
