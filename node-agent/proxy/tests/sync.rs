//! How changes reach the maps: the exact operations, in order, for each kind
//! of change; ids (stable, refcounted, reused); adoption of what a previous
//! agent left; recovery from failed writes; and cost at 10,000 Services.

mod support;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Instant;

use coxswain_dataplane::{MapOp, MapWriteError, MemoryServiceMaps, ServiceMaps, ServiceMapsDump};
use coxswain_ebpf_common::{
    BackendV4, MaglevKeyV4, MaglevTable, RevNatV4, ServiceKeyV4, ServiceValue, proto, scope,
};
use coxswain_proxy::{Error, LbAlgorithm, NodeInfo, ProxyState};
use support::{
    Harness, NODE, SliceBuilder, SvcBuilder, assert_consistent, assert_converged, cluster, node,
    pod_ip, render_maps, render_op, slice, svc,
};

fn web() -> SvcBuilder {
    svc("default", "web")
        .cluster_ip("10.96.0.10")
        .port("http", 80, 8080)
}

fn web_slice() -> SliceBuilder {
    slice("default", "web-1", "web").port("http", 8080)
}

fn api() -> SvcBuilder {
    svc("default", "api")
        .cluster_ip("10.96.0.20")
        .port("http", 80, 8080)
}

fn api_slice() -> SliceBuilder {
    slice("default", "api-1", "api").port("http", 8080)
}

/// `web` with endpoints 10.0.0.1..=3, programmed; ops consumed.
fn web_with_three() -> Harness {
    let mut h = Harness::new();
    h.svc(&web());
    h.slice(&web_slice().ep("10.0.0.1").ep("10.0.0.2").ep("10.0.0.3"));
    h.ops();
    h
}

fn ids_of(proxy: &ProxyState) -> Vec<(String, Option<u32>, Vec<Option<u32>>)> {
    proxy
        .desired()
        .iter()
        .map(|v| {
            (
                v.to_string(),
                v.service_id,
                v.backends.iter().map(|b| b.backend_id).collect(),
            )
        })
        .collect()
}

#[test]
fn cluster_ip_with_three_endpoints_exact_entries() {
    let mut h = Harness::new();
    h.svc(&web());
    assert_eq!(
        h.ops(),
        [
            "set rev_nat 1 = 10.96.0.10:80",
            "set master 10.96.0.10:80/TCP count=0 id=1"
        ],
        "a Service without endpoints rejects"
    );
    let report = h.slice(&web_slice().ep("10.0.0.3").ep("10.0.0.1").ep("10.0.0.2"));
    assert_eq!(
        h.ops(),
        [
            "set backend 1 = 10.0.0.1:8080",
            "set backend 2 = 10.0.0.2:8080",
            "set backend 3 = 10.0.0.3:8080",
            "set slot 10.96.0.10:80/TCP#1 -> backend 1",
            "set slot 10.96.0.10:80/TCP#2 -> backend 2",
            "set slot 10.96.0.10:80/TCP#3 -> backend 3",
            "set master 10.96.0.10:80/TCP count=3 id=1",
        ]
    );
    assert_eq!((report.ops, report.services, report.frontends), (7, 1, 1));

    // The raw entries, as the kernel reads them (network byte order).
    let addr = |a: [u8; 4]| u32::from_ne_bytes(a);
    let key = |slot| ServiceKeyV4 {
        addr: addr([10, 96, 0, 10]),
        port: 80u16.to_be(),
        slot,
        proto: proto::TCP,
        scope: scope::ALL,
        pad: [0; 2],
    };
    let slot = |backend_id| ServiceValue {
        backend_id,
        count: 0,
        flags: 0,
        service_id: 1,
        affinity_timeout_s: 0,
    };
    let backend = |last| BackendV4 {
        addr: addr([10, 0, 0, last]),
        port: 8080u16.to_be(),
        proto: proto::TCP,
        flags: 0,
    };
    let want = ServiceMapsDump {
        services: BTreeMap::from([
            (
                key(0),
                ServiceValue {
                    backend_id: 0,
                    count: 3,
                    flags: 0,
                    service_id: 1,
                    affinity_timeout_s: 0,
                },
            ),
            (key(1), slot(1)),
            (key(2), slot(2)),
            (key(3), slot(3)),
        ]),
        backends: BTreeMap::from([(1, backend(1)), (2, backend(2)), (3, backend(3))]),
        rev_nat: BTreeMap::from([(
            1,
            RevNatV4 {
                addr: addr([10, 96, 0, 10]),
                port: 80u16.to_be(),
                pad: 0,
            },
        )]),
        maglev: BTreeMap::new(),
    };
    assert_eq!(h.maps.state, want);
}

#[test]
fn new_frontend_order_backends_slots_rev_nat_master() {
    let mut h = Harness::new();
    h.slice(&web_slice().ep("10.0.0.1").ep("10.0.0.2"));
    assert_eq!(
        h.ops(),
        Vec::<String>::new(),
        "a slice without its Service writes nothing"
    );
    h.svc(&web());
    assert_eq!(
        h.ops(),
        [
            "set backend 1 = 10.0.0.1:8080",
            "set backend 2 = 10.0.0.2:8080",
            "set slot 10.96.0.10:80/TCP#1 -> backend 1",
            "set slot 10.96.0.10:80/TCP#2 -> backend 2",
            "set rev_nat 1 = 10.96.0.10:80",
            "set master 10.96.0.10:80/TCP count=2 id=1",
        ]
    );
}

/// Each endpoint change: the minimal operations, only on that Service.
#[test]
fn endpoint_changes_write_minimal_ops() {
    #[allow(clippy::type_complexity, reason = "a table")]
    let table: [(&str, &[&str], &[&str]); 6] = [
        (
            "added (sorts last): backend, slot, then master",
            &["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"],
            &[
                "set backend 6 = 10.0.0.4:8080",
                "set slot 10.96.0.10:80/TCP#4 -> backend 6",
                "set master 10.96.0.10:80/TCP count=4 id=1",
            ],
        ),
        (
            "added (sorts first): later slots shift in place",
            &["10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3"],
            &[
                "set backend 6 = 10.0.0.0:8080",
                "set slot 10.96.0.10:80/TCP#1 -> backend 6",
                "set slot 10.96.0.10:80/TCP#2 -> backend 1",
                "set slot 10.96.0.10:80/TCP#3 -> backend 2",
                "set slot 10.96.0.10:80/TCP#4 -> backend 3",
                "set master 10.96.0.10:80/TCP count=4 id=1",
            ],
        ),
        (
            "removed (last): master first, then slot, then backend",
            &["10.0.0.1", "10.0.0.2"],
            &[
                "set master 10.96.0.10:80/TCP count=2 id=1",
                "del slot 10.96.0.10:80/TCP#3",
                "del backend 3",
            ],
        ),
        (
            "removed (first): master first, slots shift, then delete",
            &["10.0.0.2", "10.0.0.3"],
            &[
                "set master 10.96.0.10:80/TCP count=2 id=1",
                "set slot 10.96.0.10:80/TCP#1 -> backend 2",
                "set slot 10.96.0.10:80/TCP#2 -> backend 3",
                "del slot 10.96.0.10:80/TCP#3",
                "del backend 1",
            ],
        ),
        (
            "replaced: one slot update",
            &["10.0.0.1", "10.0.0.2", "10.0.0.9"],
            &[
                "set backend 6 = 10.0.0.9:8080",
                "set slot 10.96.0.10:80/TCP#3 -> backend 6",
                "del backend 3",
            ],
        ),
        (
            "scaled to zero: master kept with count 0",
            &[],
            &[
                "set master 10.96.0.10:80/TCP count=0 id=1",
                "del slot 10.96.0.10:80/TCP#1",
                "del slot 10.96.0.10:80/TCP#2",
                "del slot 10.96.0.10:80/TCP#3",
                "del backend 1",
                "del backend 2",
                "del backend 3",
            ],
        ),
    ];
    for (name, endpoints, want) in table {
        let mut h = web_with_three();
        // Another Service that must not be touched.
        h.svc(&api());
        h.slice(&api_slice().ep("10.0.1.1").ep("10.0.1.2"));
        h.ops();
        let mut web = web_slice();
        for ep in endpoints {
            web = web.ep(ep);
        }
        let report = h.slice(&web);
        assert_eq!(h.ops(), want, "{name}");
        assert_eq!((report.ops, report.services), (want.len(), 1), "{name}");
    }
}

#[test]
fn scale_to_zero_and_back() {
    let mut h = web_with_three();
    h.slice(&web_slice());
    assert_eq!(h.lines(), ["10.96.0.10:80/TCP all [-] -> reject"]);
    h.ops();
    h.slice(&web_slice().ep("10.0.0.5"));
    assert_eq!(
        h.ops(),
        [
            "set backend 1 = 10.0.0.5:8080",
            "set slot 10.96.0.10:80/TCP#1 -> backend 1",
            "set master 10.96.0.10:80/TCP count=1 id=1",
        ]
    );
    h.delete_slice("default", "web-1");
    assert_eq!(
        h.ops(),
        [
            "set master 10.96.0.10:80/TCP count=0 id=1",
            "del slot 10.96.0.10:80/TCP#1",
            "del backend 1"
        ]
    );
}

#[test]
fn endpoint_turning_terminating_reflags_its_backend_only() {
    let mut h = Harness::new();
    h.svc(&web());
    h.slice(&web_slice().ep("10.0.0.1"));
    h.ops();
    // The only endpoint starts terminating but still serves: same slot,
    // the backend is flagged.
    h.slice(&web_slice().terminating("10.0.0.1", true));
    assert_eq!(h.ops(), ["set backend 1 = 10.0.0.1:8080(terminating)"]);
    h.slice(&web_slice().terminating("10.0.0.1", false));
    assert_eq!(
        h.ops(),
        [
            "set master 10.96.0.10:80/TCP count=0 id=1",
            "del slot 10.96.0.10:80/TCP#1",
            "del backend 1"
        ]
    );
}

#[test]
fn delete_service_keeps_backends_other_services_use() {
    let mut h = Harness::new();
    h.svc(&web());
    h.slice(&web_slice().ep("10.0.0.1").ep("10.0.0.2"));
    h.svc(&api());
    // 10.0.0.2:8080 backs both Services: one backend id.
    h.slice(&api_slice().ep("10.0.0.2").ep("10.0.0.3"));
    assert_eq!(h.maps.state.backends.len(), 3);
    h.ops();
    let report = h.delete_svc("default", "web");
    assert_eq!(
        h.ops(),
        [
            "del master 10.96.0.10:80/TCP",
            "del slot 10.96.0.10:80/TCP#1",
            "del slot 10.96.0.10:80/TCP#2",
            "del rev_nat 1",
            "del backend 1",
        ]
    );
    assert_eq!(report.ops, 5);
    assert_eq!(
        h.lines(),
        ["10.96.0.20:80/TCP all [-] -> 10.0.0.2:8080 10.0.0.3:8080"]
    );

    // Its slice stays known: the Service coming back finds its endpoints.
    h.svc(&web());
    assert_eq!(
        h.lines(),
        [
            "10.96.0.10:80/TCP all [-] -> 10.0.0.1:8080 10.0.0.2:8080",
            "10.96.0.20:80/TCP all [-] -> 10.0.0.2:8080 10.0.0.3:8080",
        ]
    );
}

#[test]
fn unchanged_objects_write_nothing() {
    let mut h = web_with_three();
    let report = h.svc(&web());
    assert_eq!((report.ops, report.services), (0, 0));
    let report = h.slice(&web_slice().ep("10.0.0.3").ep("10.0.0.2").ep("10.0.0.1"));
    assert_eq!(report.ops, 0, "same endpoints in another order");
    // A change the maps do not depend on (targetPort: the slices carry the
    // resolved port) writes nothing.
    let report = h.svc(
        &svc("default", "web")
            .cluster_ip("10.96.0.10")
            .port("http", 80, 9999),
    );
    assert_eq!((report.ops, report.frontends), (0, 0));
    assert!(h.ops().is_empty());
}

#[test]
fn service_type_change_adds_and_removes_node_ports() {
    let mut h = Harness::with_node(NodeInfo {
        name: NODE.into(),
        addresses: vec![Ipv4Addr::new(192, 168, 1, 10)],
    });
    h.svc(&web());
    h.slice(&web_slice().ep("10.0.0.1"));
    h.ops();
    let node_port = svc("default", "web")
        .cluster_ip("10.96.0.10")
        .type_("NodePort")
        .port("http", 80, 8080)
        .node_port(30080);
    h.svc(&node_port);
    assert_eq!(
        h.ops(),
        [
            "set slot 192.168.1.10:30080/TCP#1 -> backend 1",
            "set rev_nat 2 = 192.168.1.10:30080",
            "set master 192.168.1.10:30080/TCP count=1 id=2 [snat,node-port]",
        ]
    );
    h.svc(&web());
    assert_eq!(
        h.ops(),
        [
            "del master 192.168.1.10:30080/TCP",
            "del slot 192.168.1.10:30080/TCP#1",
            "del rev_nat 2"
        ]
    );
}

#[test]
fn external_traffic_policy_switch() {
    let mut h = Harness::with_node(NodeInfo {
        name: NODE.into(),
        addresses: vec![Ipv4Addr::new(192, 168, 1, 10)],
    });
    let service = || {
        svc("default", "web")
            .cluster_ip("10.96.0.10")
            .type_("NodePort")
            .port("http", 80, 8080)
            .node_port(30080)
    };
    h.svc(&service());
    h.slice(&web_slice().ep_on("10.0.0.1", NODE).ep("10.0.0.2"));
    h.ops();
    h.svc(&service().etp_local());
    assert_eq!(
        h.ops(),
        [
            "set master 192.168.1.10:30080/TCP count=2 id=2 [node-port]",
            "set slot 192.168.1.10:30080/TCP local#1 -> backend 1",
            "set master 192.168.1.10:30080/TCP local count=1 id=2 [node-port]",
        ],
        "the local scope shares the frontend's service id and reverse-NAT entry"
    );
    h.svc(&service());
    assert_eq!(
        h.ops(),
        [
            "set master 192.168.1.10:30080/TCP count=2 id=2 [snat,node-port]",
            "del master 192.168.1.10:30080/TCP local",
            "del slot 192.168.1.10:30080/TCP local#1",
        ]
    );
}

#[test]
fn node_address_change_touches_node_port_services_only() {
    let mut h = Harness::with_node(NodeInfo {
        name: NODE.into(),
        addresses: vec![
            Ipv4Addr::new(192, 168, 1, 10),
            Ipv4Addr::new(192, 168, 2, 10),
        ],
    });
    h.svc(
        &svc("default", "web")
            .cluster_ip("10.96.0.10")
            .type_("NodePort")
            .port("http", 80, 8080)
            .node_port(30080),
    );
    h.slice(&web_slice().ep("10.0.0.1"));
    h.svc(&api());
    h.slice(&api_slice().ep("10.0.1.1"));
    h.ops();
    let report = h.set_node(NodeInfo {
        name: NODE.into(),
        addresses: vec![
            Ipv4Addr::new(192, 168, 1, 10),
            Ipv4Addr::new(192, 168, 3, 10),
        ],
    });
    assert_eq!(report.services, 1);
    assert_eq!(
        h.ops(),
        [
            "del master 192.168.2.10:30080/TCP",
            "del slot 192.168.2.10:30080/TCP#1",
            "set slot 192.168.3.10:30080/TCP#1 -> backend 1",
            "set rev_nat 5 = 192.168.3.10:30080",
            "set master 192.168.3.10:30080/TCP count=1 id=5 [snat,node-port]",
            "del rev_nat 3",
        ]
    );
}

#[test]
fn node_rename_changes_which_endpoints_are_local() {
    let mut h = Harness::new();
    h.svc(&web());
    h.slice(&web_slice().ep_on("10.0.0.1", "node-b").ep("10.0.0.2"));
    h.ops();
    h.set_node(NodeInfo {
        name: "node-b".into(),
        addresses: vec![],
    });
    assert_eq!(h.ops(), ["set backend 1 = 10.0.0.1:8080(local)"]);
}

#[test]
fn slice_moving_to_another_service_updates_both() {
    let mut h = Harness::new();
    h.svc(&web());
    h.svc(&api());
    h.slice(
        &slice("default", "shared-1", "web")
            .port("http", 8080)
            .ep("10.0.0.1"),
    );
    let report = h.slice(
        &slice("default", "shared-1", "api")
            .port("http", 8080)
            .ep("10.0.0.1"),
    );
    assert_eq!(report.services, 2);
    assert_eq!(
        h.lines(),
        [
            "10.96.0.10:80/TCP all [-] -> reject",
            "10.96.0.20:80/TCP all [-] -> 10.0.0.1:8080"
        ]
    );
}

#[test]
fn ids_are_reused_lowest_first_after_delete() {
    let mut h = web_with_three(); // backends 1..=3, service id 1
    h.svc(&api());
    h.slice(&api_slice().ep("10.0.1.1").ep("10.0.1.2")); // backends 4, 5, service id 2
    h.delete_svc("default", "web");
    h.delete_slice("default", "web-1");
    h.svc(
        &svc("default", "db")
            .cluster_ip("10.96.0.30")
            .port("sql", 5432, 5432),
    );
    h.slice(
        &slice("default", "db-1", "db")
            .port("sql", 5432)
            .ep("10.0.2.1")
            .ep("10.0.2.2"),
    );
    let db = h.proxy.service_frontends("default", "db");
    assert_eq!(db[0].service_id, Some(1));
    assert_eq!(
        db[0]
            .backends
            .iter()
            .map(|b| b.backend_id)
            .collect::<Vec<_>>(),
        [Some(1), Some(2)]
    );
    let api = h.proxy.service_frontends("default", "api");
    assert_eq!(
        api[0].service_id,
        Some(2),
        "ids of live entries never change"
    );
    assert_eq!(
        api[0]
            .backends
            .iter()
            .map(|b| b.backend_id)
            .collect::<Vec<_>>(),
        [Some(4), Some(5)]
    );
}

#[test]
fn same_address_and_port_in_two_services_first_one_wins() {
    let mut h = Harness::new();
    let b = svc("team-b", "web")
        .cluster_ip("10.96.0.21")
        .port("http", 80, 8080)
        .external_ip("203.0.113.5");
    let a = svc("team-a", "web")
        .cluster_ip("10.96.0.11")
        .port("http", 80, 8080)
        .external_ip("203.0.113.5");
    h.svc(&b);
    h.slice(
        &slice("team-b", "web-1", "web")
            .port("http", 8080)
            .ep("10.0.0.2"),
    );
    h.svc(&a);
    h.slice(
        &slice("team-a", "web-1", "web")
            .port("http", 8080)
            .ep("10.0.0.1"),
    );
    assert!(
        h.lines()
            .contains(&"203.0.113.5:80/TCP all [snat,external] -> 10.0.0.1:8080".to_owned())
    );
    let shadowed = h.proxy.service_frontends("team-b", "web");
    assert!(
        shadowed
            .iter()
            .any(|v| v.addr == Ipv4Addr::new(203, 0, 113, 5) && !v.active)
    );
    h.ops();
    h.delete_svc("team-a", "web");
    assert!(
        h.lines()
            .contains(&"203.0.113.5:80/TCP all [snat,external] -> 10.0.0.2:8080".to_owned())
    );
    assert!(
        h.ops()
            .contains(&"set slot 203.0.113.5:80/TCP#1 -> backend 1".to_owned()),
        "handover is an in-place slot replacement"
    );
}

#[test]
fn changes_before_the_first_resync_are_deferred() {
    let mut maps = MemoryServiceMaps {
        observer: Some(assert_consistent),
        ..MemoryServiceMaps::default()
    };
    let mut proxy = ProxyState::new(node());
    let report = proxy.upsert_service(&mut maps, &web()).unwrap();
    assert!(report.deferred);
    proxy
        .upsert_endpoint_slice(&mut maps, &web_slice().ep("10.0.0.1"))
        .unwrap();
    assert!(maps.ops.is_empty() && !proxy.is_synced());
    let report = proxy.full_resync(&mut maps).unwrap();
    assert_eq!(report.ops, 4);
    assert!(proxy.is_synced());
    assert!(matches!(
        proxy.adopt(ServiceMapsDump::default()),
        Err(Error::AdoptAfterSync)
    ));
}

/// The state a previous agent left, with ids that are not what a fresh
/// allocation would give (a Service came and went before).
fn previous_agent() -> (Harness, Vec<SvcBuilder>, Vec<SliceBuilder>) {
    let services = vec![
        web(),
        api(),
        svc("default", "edge")
            .cluster_ip("10.96.0.40")
            .type_("LoadBalancer")
            .etp_local()
            .affinity(Some(300))
            .port("https", 443, 8443)
            .node_port(30443)
            .lb_ingress("198.51.100.7"),
    ];
    let slices = vec![
        web_slice().ep("10.0.0.1").ep("10.0.0.2").ep("10.0.0.3"),
        api_slice()
            .ep("10.0.0.2")
            .terminating("10.0.1.9", true)
            .ep("10.0.1.1"),
        slice("default", "edge-1", "edge")
            .port("https", 8443)
            .ep_on("10.0.3.1", NODE)
            .ep("10.0.3.2"),
    ];
    let mut h = Harness::new();
    h.svc(
        &svc("default", "gone")
            .cluster_ip("10.96.0.99")
            .port("http", 80, 8080),
    );
    h.slice(
        &slice("default", "gone-1", "gone")
            .port("http", 8080)
            .ep("10.0.9.1")
            .ep("10.0.9.2"),
    );
    for service in &services {
        h.svc(service);
    }
    for slice in &slices {
        h.slice(slice);
    }
    h.delete_svc("default", "gone");
    h.delete_slice("default", "gone-1");
    (h, services, slices)
}

#[test]
fn adopt_then_resync_on_identical_objects_writes_nothing_and_keeps_ids() {
    let (previous, services, slices) = previous_agent();
    let ids_before = ids_of(&previous.proxy);
    assert!(ids_before.iter().any(|(_, sid, _)| *sid != Some(1)));

    let mut maps = MemoryServiceMaps {
        state: previous.maps.state.clone(),
        ops: Vec::new(),
        observer: Some(assert_consistent),
    };
    let mut proxy = ProxyState::new(node());
    proxy.adopt(maps.dump().unwrap()).unwrap();
    // The initial lists arrive in another order.
    for slice in slices.iter().rev() {
        proxy.upsert_endpoint_slice(&mut maps, slice).unwrap();
    }
    for service in services.iter().rev() {
        proxy.upsert_service(&mut maps, service).unwrap();
    }
    let report = proxy.full_resync(&mut maps).unwrap();
    assert_eq!(
        report.ops,
        0,
        "{:?}",
        maps.ops.iter().map(render_op).collect::<Vec<_>>()
    );
    assert_eq!(ids_of(&proxy), ids_before);
    assert_eq!(maps.state, previous.maps.state);

    // And changes go on from there with the adopted ids.
    let report = proxy
        .upsert_endpoint_slice(&mut maps, &web_slice().ep("10.0.0.1").ep("10.0.0.2"))
        .unwrap();
    assert_eq!(report.ops, 3);
    assert_converged(&proxy, &maps.state);
}

#[test]
fn adopt_keeps_ids_a_previous_agent_chose() {
    let addr = |a: [u8; 4]| u32::from_ne_bytes(a);
    let key = |slot| ServiceKeyV4 {
        addr: addr([10, 96, 0, 10]),
        port: 80u16.to_be(),
        slot,
        proto: proto::TCP,
        scope: scope::ALL,
        pad: [0; 2],
    };
    let slot = |backend_id| ServiceValue {
        backend_id,
        count: 0,
        flags: 0,
        service_id: 9,
        affinity_timeout_s: 0,
    };
    let backend = |last| BackendV4 {
        addr: addr([10, 0, 0, last]),
        port: 8080u16.to_be(),
        proto: proto::TCP,
        flags: 0,
    };
    let dump = ServiceMapsDump {
        services: BTreeMap::from([
            (
                key(0),
                ServiceValue {
                    backend_id: 0,
                    count: 2,
                    flags: 0,
                    service_id: 9,
                    affinity_timeout_s: 0,
                },
            ),
            (key(1), slot(7)),
            (key(2), slot(3)),
        ]),
        backends: BTreeMap::from([(7, backend(1)), (3, backend(2))]),
        rev_nat: BTreeMap::from([(
            9,
            RevNatV4 {
                addr: addr([10, 96, 0, 10]),
                port: 80u16.to_be(),
                pad: 0,
            },
        )]),
        maglev: BTreeMap::new(),
    };
    let mut maps = MemoryServiceMaps {
        state: dump.clone(),
        ops: Vec::new(),
        observer: Some(assert_consistent),
    };
    let mut proxy = ProxyState::new(node());
    proxy.adopt(dump).unwrap();
    proxy.upsert_service(&mut maps, &web()).unwrap();
    proxy
        .upsert_endpoint_slice(&mut maps, &web_slice().ep("10.0.0.1").ep("10.0.0.2"))
        .unwrap();
    assert_eq!(proxy.full_resync(&mut maps).unwrap().ops, 0);
    // A new endpoint gets the lowest id no one holds.
    proxy
        .upsert_endpoint_slice(
            &mut maps,
            &web_slice().ep("10.0.0.1").ep("10.0.0.2").ep("10.0.0.3"),
        )
        .unwrap();
    assert_eq!(
        maps.ops.iter().map(render_op).collect::<Vec<_>>(),
        [
            "set backend 1 = 10.0.0.3:8080",
            "set slot 10.96.0.10:80/TCP#3 -> backend 1",
            "set master 10.96.0.10:80/TCP count=3 id=9",
        ]
    );
}

#[test]
fn adopt_with_leftovers_deletes_them_and_only_them() {
    let (previous, services, slices) = previous_agent();
    let mut dump = previous.maps.state.clone();
    // What a previous agent may leave behind. A Service deleted while no
    // agent ran (10.96.0.77, endpoints 10.0.0.1, shared with web, and
    // 10.0.7.1):
    let stale_sid = 60;
    let stale_backend = 61;
    let web_master = *dump
        .services
        .iter()
        .find(|(k, v)| k.slot == 0 && v.count == 3)
        .unwrap()
        .0;
    let stale_key = ServiceKeyV4 {
        addr: u32::from_ne_bytes([10, 96, 0, 77]),
        ..web_master
    };
    let shared = dump.services[&ServiceKeyV4 {
        slot: 1,
        ..web_master
    }]
        .backend_id; // 10.0.0.1
    dump.backends.insert(
        stale_backend,
        BackendV4 {
            addr: u32::from_ne_bytes([10, 0, 7, 1]),
            port: 8080u16.to_be(),
            proto: proto::TCP,
            flags: 0,
        },
    );
    dump.rev_nat.insert(
        stale_sid,
        RevNatV4 {
            addr: stale_key.addr,
            port: stale_key.port,
            pad: 0,
        },
    );
    for (slot, backend_id) in [(1, shared), (2, stale_backend)] {
        dump.services.insert(
            ServiceKeyV4 { slot, ..stale_key },
            ServiceValue {
                backend_id,
                service_id: stale_sid,
                ..ServiceValue::default()
            },
        );
    }
    dump.services.insert(
        stale_key,
        ServiceValue {
            count: 2,
            service_id: stale_sid,
            ..ServiceValue::default()
        },
    );
    // Crash debris: an unreferenced backend, an orphan reverse-NAT entry, a
    // slot above web's count, a slot without a master, a key this engine
    // never writes.
    dump.backends.insert(
        70,
        BackendV4 {
            addr: u32::from_ne_bytes([10, 0, 70, 1]),
            port: 8080u16.to_be(),
            proto: proto::TCP,
            flags: 0,
        },
    );
    dump.rev_nat.insert(71, RevNatV4::default());
    let web_sid = dump.services[&web_master].service_id;
    dump.services.insert(
        ServiceKeyV4 {
            slot: 4,
            ..web_master
        },
        ServiceValue {
            backend_id: 70,
            service_id: web_sid,
            ..ServiceValue::default()
        },
    );
    dump.services.insert(
        ServiceKeyV4 {
            addr: u32::from_ne_bytes([10, 96, 0, 88]),
            slot: 1,
            ..web_master
        },
        ServiceValue {
            backend_id: shared,
            service_id: 72,
            ..ServiceValue::default()
        },
    );
    dump.services.insert(
        ServiceKeyV4 {
            pad: [0, 1],
            ..web_master
        },
        ServiceValue {
            service_id: web_sid,
            ..ServiceValue::default()
        },
    );

    let ids_before = ids_of(&previous.proxy);
    let mut maps = MemoryServiceMaps {
        state: dump.clone(),
        ops: Vec::new(),
        observer: Some(assert_consistent),
    };
    let mut proxy = ProxyState::new(node());
    proxy.adopt(dump).unwrap();
    for service in &services {
        proxy.upsert_service(&mut maps, service).unwrap();
    }
    for slice in &slices {
        proxy.upsert_endpoint_slice(&mut maps, slice).unwrap();
    }
    proxy.full_resync(&mut maps).unwrap();
    let ops: Vec<String> = maps.ops.iter().map(render_op).collect();
    assert!(
        maps.ops.iter().all(|op| matches!(
            op,
            MapOp::DeleteService(_) | MapOp::DeleteBackend(_) | MapOp::DeleteRevNat(_)
        )),
        "only deletions: {ops:?}"
    );
    assert_eq!(
        ops,
        [
            "del master 10.96.0.10:80/TCP",
            "del slot 10.96.0.10:80/TCP#4",
            "del master 10.96.0.77:80/TCP",
            "del slot 10.96.0.77:80/TCP#1",
            "del slot 10.96.0.77:80/TCP#2",
            "del slot 10.96.0.88:80/TCP#1",
            "del rev_nat 60",
            "del rev_nat 71",
            "del backend 61",
            "del backend 70",
        ],
        "the first one is the key with non-zero padding"
    );
    assert_converged(&proxy, &maps.state);
    assert_eq!(ids_of(&proxy), ids_before);
    assert_eq!(maps.state, previous.maps.state);
}

/// Maps that fail the `n`-th operation from now.
struct FailingMaps {
    inner: MemoryServiceMaps,
    fail_in: Option<usize>,
}

impl FailingMaps {
    fn tick(&mut self) -> Result<(), MapWriteError> {
        match self.fail_in {
            Some(0) => {
                self.fail_in = None;
                Err(MapWriteError::MissingMap("SERVICES_V4 (injected)"))
            }
            Some(n) => {
                self.fail_in = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl ServiceMaps for FailingMaps {
    fn update_service(
        &mut self,
        key: ServiceKeyV4,
        value: ServiceValue,
    ) -> Result<(), MapWriteError> {
        self.tick()?;
        self.inner.update_service(key, value)
    }
    fn delete_service(&mut self, key: ServiceKeyV4) -> Result<(), MapWriteError> {
        self.tick()?;
        self.inner.delete_service(key)
    }
    fn update_backend(&mut self, id: u32, backend: BackendV4) -> Result<(), MapWriteError> {
        self.tick()?;
        self.inner.update_backend(id, backend)
    }
    fn delete_backend(&mut self, id: u32) -> Result<(), MapWriteError> {
        self.tick()?;
        self.inner.delete_backend(id)
    }
    fn update_rev_nat(&mut self, id: u32, rev_nat: RevNatV4) -> Result<(), MapWriteError> {
        self.tick()?;
        self.inner.update_rev_nat(id, rev_nat)
    }
    fn delete_rev_nat(&mut self, id: u32) -> Result<(), MapWriteError> {
        self.tick()?;
        self.inner.delete_rev_nat(id)
    }
    fn update_maglev(
        &mut self,
        key: MaglevKeyV4,
        table: &MaglevTable,
    ) -> Result<(), MapWriteError> {
        self.tick()?;
        self.inner.update_maglev(key, table)
    }
    fn delete_maglev(&mut self, key: MaglevKeyV4) -> Result<(), MapWriteError> {
        self.tick()?;
        self.inner.delete_maglev(key)
    }
    fn dump(&self) -> Result<ServiceMapsDump, MapWriteError> {
        self.inner.dump()
    }
}

#[test]
fn failed_writes_leave_consistent_maps_and_are_retried() {
    // Fail at every possible point of a change that grows one Service and
    // shrinks another; each time the maps stay consistent (the observer),
    // and the next change, or a full resync, finishes the job.
    let mut failures = 0;
    for fail_at in 0..12 {
        for recover_with_resync in [false, true] {
            let mut maps = FailingMaps {
                inner: MemoryServiceMaps {
                    observer: Some(assert_consistent),
                    ..MemoryServiceMaps::default()
                },
                fail_in: None,
            };
            let mut proxy = ProxyState::new(node());
            proxy.full_resync(&mut maps).unwrap();
            proxy.upsert_service(&mut maps, &web()).unwrap();
            proxy.upsert_service(&mut maps, &api()).unwrap();
            proxy
                .upsert_endpoint_slice(&mut maps, &web_slice().ep("10.0.0.1"))
                .unwrap();
            proxy
                .upsert_endpoint_slice(
                    &mut maps,
                    &api_slice().ep("10.0.1.1").ep("10.0.1.2").ep("10.0.1.3"),
                )
                .unwrap();
            // One slice moves from api to web: web grows, api shrinks.
            maps.fail_in = Some(fail_at);
            let moved = slice("default", "api-1", "web")
                .port("http", 8080)
                .ep("10.0.1.1")
                .ep("10.0.1.2")
                .ep("10.0.1.3");
            let result = proxy.upsert_endpoint_slice(&mut maps, &moved);
            match result {
                Ok(_) => {
                    assert!(
                        maps.fail_in.is_some(),
                        "fail_at {fail_at}: the change needs fewer ops"
                    );
                    maps.fail_in = None;
                }
                Err(err) => {
                    assert!(err.to_string().starts_with("failed to "), "{err}");
                    failures += 1;
                }
            }
            if recover_with_resync {
                proxy.full_resync(&mut maps).unwrap();
            } else {
                proxy
                    .upsert_endpoint_slice(
                        &mut maps,
                        &slice("default", "db-1", "db")
                            .port("sql", 5432)
                            .ep("10.0.2.1"),
                    )
                    .unwrap();
            }
            assert_converged(&proxy, &maps.inner.state);
            assert_eq!(
                render_maps(&maps.inner.state),
                [
                    "10.96.0.10:80/TCP all [-] -> 10.0.0.1:8080 10.0.1.1:8080 10.0.1.2:8080 10.0.1.3:8080",
                    "10.96.0.20:80/TCP all [-] -> reject",
                ],
                "fail_at {fail_at}"
            );
        }
    }
    assert_eq!(
        failures,
        2 * 8,
        "the change is 8 operations, each one failed once per recovery mode"
    );
}

/// 10,000 Services of 10 endpoints: one endpoint change is a handful of
/// operations on one Service, however many there are. (Timings are printed,
/// not asserted: this is a debug build on a shared machine.)
#[test]
fn one_change_among_ten_thousand_services() {
    const SERVICES: u32 = 10_000;
    const ENDPOINTS: u32 = 10;
    let objects = cluster(SERVICES, ENDPOINTS);
    let mut maps = MemoryServiceMaps::default();
    let mut proxy = ProxyState::new(node());
    let started = Instant::now();
    for (service, slice) in &objects {
        proxy.upsert_service(&mut maps, service).unwrap();
        proxy.upsert_endpoint_slice(&mut maps, slice).unwrap();
    }
    let report = proxy.full_resync(&mut maps).unwrap();
    let total = SERVICES as usize * (1 + ENDPOINTS as usize);
    assert_eq!(maps.state.services.len(), total);
    assert_eq!(maps.state.backends.len(), (SERVICES * ENDPOINTS) as usize);
    assert_eq!(
        report.ops,
        total + (SERVICES * ENDPOINTS) as usize + SERVICES as usize
    );
    println!(
        "programmed {SERVICES} Services from scratch in {:?}",
        started.elapsed()
    );

    // Replace the last endpoint of one Service, then add one.
    maps.observer = Some(assert_consistent);
    maps.ops.clear();
    let i = 5_000;
    let (_, slice) = &objects[i as usize];
    let mut changed = slice.clone();
    let endpoints = changed.0.endpoints.as_mut().unwrap();
    endpoints.last_mut().unwrap().addresses = vec![pod_ip(SERVICES * ENDPOINTS + 1).to_string()];
    let report = proxy.upsert_endpoint_slice(&mut maps, &changed).unwrap();
    assert_eq!(
        maps.ops.iter().map(render_op).collect::<Vec<_>>(),
        [
            "set backend 100001 = 10.129.134.161:8080",
            "set slot 10.96.19.137:80/TCP#10 -> backend 100001",
            "del backend 50010",
        ]
    );
    assert_eq!((report.ops, report.services), (3, 1));

    let endpoints = changed.0.endpoints.as_mut().unwrap();
    let mut extra = endpoints[0].clone();
    extra.addresses = vec![pod_ip(SERVICES * ENDPOINTS + 2).to_string()];
    endpoints.push(extra);
    maps.observer = None; // the observer walks every entry after each op
    let started = Instant::now();
    let report = proxy.upsert_endpoint_slice(&mut maps, &changed).unwrap();
    let elapsed = started.elapsed();
    assert_eq!((report.ops, report.services), (3, 1));
    println!(
        "one endpoint added among {SERVICES} Services: {} ops in {elapsed:?}",
        report.ops
    );
}

// ---------------------------------------------------------------- Maglev

fn maglev_web() -> SvcBuilder {
    web().lb_algorithm("maglev")
}

#[test]
fn a_maglev_service_gets_its_table_before_its_master() {
    let mut h = Harness::new();
    h.svc(&maglev_web());
    h.slice(&web_slice().ep("10.0.0.1").ep("10.0.0.2"));
    let ops = h.ops();
    let table = ops.iter().position(|op| op.starts_with("set maglev")).expect("a table is written");
    let master = ops
        .iter()
        .rposition(|op| op.starts_with("set master"))
        .expect("the master is written");
    assert!(table < master, "table after master: {ops:#?}");
    assert_eq!(h.lines(), ["10.96.0.10:80/TCP all [maglev] -> 10.0.0.1:8080 10.0.0.2:8080"]);
    assert_eq!(h.maps.state.maglev.len(), 1);

    // A third endpoint: one new table, nothing else rewritten but what grows.
    h.slice(&web_slice().ep("10.0.0.1").ep("10.0.0.2").ep("10.0.0.3"));
    assert_eq!(
        h.ops(),
        [
            "set backend 3 = 10.0.0.3:8080",
            "set maglev 1/0",
            "set slot 10.96.0.10:80/TCP#3 -> backend 3",
            "set master 10.96.0.10:80/TCP count=3 id=1 [maglev]",
        ]
    );
    // An endpoint leaves: the table stops naming it before it is deleted
    // (the observer checks every intermediate state).
    h.slice(&web_slice().ep("10.0.0.2").ep("10.0.0.3"));
    let ops = h.ops();
    let table = ops.iter().position(|op| op == "set maglev 1/0").expect("new table");
    let gone = ops.iter().position(|op| op == "del backend 1").expect("backend deleted");
    assert!(table < gone, "{ops:#?}");
}

#[test]
fn the_agent_default_and_the_annotation_choose_the_algorithm() {
    let mut h = Harness::new();
    h.proxy = ProxyState::new(node()).with_lb_algorithm(LbAlgorithm::Maglev);
    h.proxy.full_resync(&mut h.maps).unwrap();
    h.svc(&web());
    h.svc(&api().lb_algorithm("random"));
    h.slice(&web_slice().ep("10.0.0.1"));
    h.slice(&api_slice().ep("10.0.1.1"));
    assert_eq!(
        h.lines(),
        [
            "10.96.0.10:80/TCP all [maglev] -> 10.0.0.1:8080",
            "10.96.0.20:80/TCP all [-] -> 10.0.1.1:8080",
        ]
    );
    // An unknown value is the agent's default, not an error.
    h.svc(&api().lb_algorithm("round-robin"));
    assert_eq!(h.lines()[1], "10.96.0.20:80/TCP all [maglev] -> 10.0.1.1:8080");
    assert_eq!(h.maps.state.maglev.len(), 2);
}

#[test]
fn turning_maglev_off_or_losing_every_endpoint_removes_the_table_after_the_master() {
    let mut h = Harness::new();
    h.svc(&maglev_web());
    h.slice(&web_slice().ep("10.0.0.1").ep("10.0.0.2"));
    h.ops();
    h.svc(&web());
    assert_eq!(
        h.ops(),
        ["set master 10.96.0.10:80/TCP count=2 id=1", "del maglev 1/0"]
    );
    h.svc(&maglev_web());
    h.ops();
    h.slice(&web_slice());
    let ops = h.ops();
    assert!(ops.contains(&"del maglev 1/0".to_owned()), "{ops:#?}");
    assert_eq!(h.lines(), ["10.96.0.10:80/TCP all [maglev] -> reject"]);
    h.slice(&web_slice().ep("10.0.0.1"));
    h.delete_svc("default", "web");
    assert!(h.maps.state.maglev.is_empty());
    assert!(h.maps.state.services.is_empty());
}

#[test]
fn a_restarted_agent_adopts_maglev_tables_and_deletes_orphans() {
    let mut h = Harness::new();
    h.svc(&maglev_web());
    h.slice(&web_slice().ep("10.0.0.1").ep("10.0.0.2").ep("10.0.0.3"));
    let mut dump = h.maps.dump().unwrap();
    // A table nothing names (left by a crash between two writes).
    let orphan = MaglevKeyV4 { service_id: 42, scope: scope::LOCAL, pad: [0; 3] };
    let some_table = dump.maglev.values().next().unwrap().clone();
    dump.maglev.insert(orphan, some_table);
    let mut maps = MemoryServiceMaps {
        state: dump,
        observer: Some(assert_consistent),
        ..MemoryServiceMaps::default()
    };
    let mut proxy = ProxyState::new(node());
    proxy.adopt(maps.dump().unwrap()).unwrap();
    proxy.upsert_service(&mut maps, &maglev_web()).unwrap();
    proxy
        .upsert_endpoint_slice(&mut maps, &web_slice().ep("10.0.0.1").ep("10.0.0.2").ep("10.0.0.3"))
        .unwrap();
    let report = proxy.full_resync(&mut maps).unwrap();
    assert_eq!(maps.ops.iter().map(render_op).collect::<Vec<_>>(), ["del maglev 42/1"]);
    assert_eq!(report.ops, 1);
    assert_converged(&proxy, &maps.state);
}

#[test]
fn failed_maglev_writes_leave_consistent_maps_and_are_retried() {
    for fail_at in 0..6 {
        let mut maps = FailingMaps {
            inner: MemoryServiceMaps {
                observer: Some(assert_consistent),
                ..MemoryServiceMaps::default()
            },
            fail_in: None,
        };
        let mut proxy = ProxyState::new(node());
        proxy.full_resync(&mut maps).unwrap();
        proxy.upsert_service(&mut maps, &maglev_web()).unwrap();
        proxy
            .upsert_endpoint_slice(&mut maps, &web_slice().ep("10.0.0.1").ep("10.0.0.2"))
            .unwrap();
        // Swap one endpoint for another: backend, table, slot, sweep.
        maps.fail_in = Some(fail_at);
        let _ = proxy.upsert_endpoint_slice(&mut maps, &web_slice().ep("10.0.0.2").ep("10.0.0.3"));
        maps.fail_in = None;
        proxy.full_resync(&mut maps).unwrap();
        assert_converged(&proxy, &maps.inner.state);
        assert_eq!(
            render_maps(&maps.inner.state),
            ["10.96.0.10:80/TCP all [maglev] -> 10.0.0.2:8080 10.0.0.3:8080"],
            "fail_at {fail_at}"
        );
    }
}

// ---------------------------------------------------------------- stale UDP flows

#[test]
fn backends_leaving_udp_frontends_are_reported_for_conntrack_cleanup() {
    let dns = || {
        svc("kube-system", "dns")
            .cluster_ip("10.96.0.53")
            .port("dns", 53, 5353)
            .protocol("UDP")
    };
    let dns_slice = || slice("kube-system", "dns-1", "dns").port_proto("dns", 5353, "UDP");
    let mut h = Harness::new();
    h.svc(&dns());
    h.slice(&dns_slice().ep("10.0.0.1").ep("10.0.0.2"));
    h.svc(&web());
    h.slice(&web_slice().ep("10.0.0.1").ep("10.0.0.2"));
    assert!(h.proxy.take_stale_backends().is_empty());

    // A TCP endpoint leaving needs no cleanup: its established flows end
    // on their own, and may go on meanwhile.
    h.slice(&web_slice().ep("10.0.0.1"));
    assert!(h.proxy.take_stale_backends().is_empty());

    h.slice(&dns_slice().ep("10.0.0.1"));
    let stale = h.proxy.take_stale_backends();
    let rendered: Vec<(Ipv4Addr, u16, u8)> = stale
        .iter()
        .map(|s| (Ipv4Addr::from(s.addr.to_ne_bytes()), u16::from_be(s.port), s.proto))
        .collect();
    assert_eq!(rendered, [(Ipv4Addr::new(10, 0, 0, 2), 5353, proto::UDP)]);
    assert_eq!(stale[0].service_id, h.proxy.service_frontends("kube-system", "dns")[0].service_id.unwrap());
    assert!(h.proxy.take_stale_backends().is_empty(), "taken once");

    // The Service goes: every backend it had.
    h.delete_svc("kube-system", "dns");
    assert_eq!(h.proxy.take_stale_backends().len(), 1);
}
