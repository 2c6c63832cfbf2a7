//! The proxy's sync engine driving the kernel dataplane with real packets:
//! Kubernetes objects in, connections through the ClusterIP out.

use std::collections::{BTreeMap, BTreeSet};

use coxswain_dataplane::ServiceMaps;
use coxswain_proxy::{NodeInfo, ProxyState};
use coxswain_tests::fixture::{Fixture, abort, ask, connect, connect_from, load_and_attach};
use coxswain_tests::netns::PinDir;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::json;

fn service() -> Service {
    serde_json::from_value(json!({
        "metadata": {"namespace": "default", "name": "web"},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "10.96.0.10",
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
        }
    }))
    .expect("service")
}

/// A slice for `web` with the given (host index, ready) endpoints.
fn slice(fx: &Fixture, endpoints: &[(usize, bool)]) -> EndpointSlice {
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|(i, ready)| {
            json!({
                "addresses": [fx.topo.hosts[*i].addr.to_string()],
                "conditions": {"ready": ready, "serving": ready, "terminating": false},
                "nodeName": "node-a"
            })
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {
            "namespace": "default",
            "name": "web-abc12",
            "labels": {"kubernetes.io/service-name": "web"}
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    }))
    .expect("slice")
}

fn node() -> NodeInfo {
    NodeInfo {
        name: "node-a".into(),
        addresses: vec![],
    }
}

/// Names of the backends reached by `n` new connections.
fn reached(fx: &Fixture, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|i| {
            let mut stream =
                connect(fx.client(), 80).unwrap_or_else(|e| panic!("connection {i}: {e:#}"));
            ask(&mut stream, "hi").unwrap_or_else(|e| panic!("connection {i}: {e:#}"))
        })
        .collect()
}

#[test]
fn kubernetes_objects_become_kernel_load_balancing() {
    let mut fx = Fixture::new(208);
    let mut proxy = ProxyState::new(node());
    proxy
        .adopt(fx.dataplane.service_maps().dump().unwrap())
        .unwrap();
    let all_ready = slice(&fx, &[(1, true), (2, true), (3, true)]);
    {
        let maps = fx.dataplane.service_maps();
        proxy.upsert_service(maps, &service()).unwrap();
        proxy.upsert_endpoint_slice(maps, &all_ready).unwrap();
        proxy.full_resync(maps).unwrap();
    }
    // The named target port resolved through the slice; all three serve.
    assert_eq!(
        reached(&fx, 45),
        BTreeSet::from(["b1".into(), "b2".into(), "b3".into()])
    );

    // b3 stops being ready: new connections avoid it at once.
    let b3_not_ready = slice(&fx, &[(1, true), (2, true), (3, false)]);
    let report = proxy
        .upsert_endpoint_slice(fx.dataplane.service_maps(), &b3_not_ready)
        .unwrap();
    assert!(
        report.ops > 0 && report.ops <= 4,
        "one endpoint change took {} ops",
        report.ops
    );
    assert_eq!(reached(&fx, 30), BTreeSet::from(["b1".into(), "b2".into()]));

    // An agent restart: a new engine adopts the pinned maps and, with the
    // same objects, writes nothing.
    let Fixture {
        dataplane,
        topo,
        pins,
        servers,
    } = fx;
    drop(dataplane);
    let mut fx = Fixture {
        dataplane: load_and_attach(&topo, &pins).expect("reload"),
        topo,
        pins,
        servers,
    };
    let mut proxy = ProxyState::new(node());
    proxy
        .adopt(fx.dataplane.service_maps().dump().unwrap())
        .unwrap();
    {
        let maps = fx.dataplane.service_maps();
        proxy.upsert_service(maps, &service()).unwrap();
        proxy.upsert_endpoint_slice(maps, &b3_not_ready).unwrap();
        let report = proxy.full_resync(maps).unwrap();
        assert_eq!(report.ops, 0, "resync after restart rewrote the maps");
    }
    assert_eq!(reached(&fx, 20), BTreeSet::from(["b1".into(), "b2".into()]));

    // The slice goes away: the Service has no endpoint and refuses at once.
    proxy
        .delete_endpoint_slice(fx.dataplane.service_maps(), "default", "web-abc12")
        .unwrap();
    let err = connect(fx.client(), 80).expect_err("no endpoints");
    let io = err.downcast_ref::<std::io::Error>().expect("io error");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused, "{err:#}");

    // The Service is deleted: its address is no longer translated at all,
    // and every map is empty again.
    proxy
        .delete_service(fx.dataplane.service_maps(), "default", "web")
        .unwrap();
    let dump = fx.dataplane.service_maps().dump().unwrap();
    assert!(
        dump.services.is_empty() && dump.backends.is_empty() && dump.rev_nat.is_empty(),
        "maps not empty: {dump:?}"
    );
}

/// The backend each client port reaches, one short connection per port
/// (closed with a RST so that the next round can reuse the port at once).
fn backends_by_port(fx: &Fixture, ports: std::ops::Range<u16>) -> BTreeMap<u16, String> {
    ports
        .map(|port| {
            let (stream, name) =
                connect_from(fx, port).unwrap_or_else(|e| panic!("from port {port}: {e:#}"));
            abort(stream);
            (port, name)
        })
        .collect()
}

/// Programs `web` (Maglev) with the given endpoints, after `occupy`
/// endpoints of another Service, so that backend ids differ between runs.
fn maglev_node(fx: &mut Fixture, occupy: usize, endpoints: &[(usize, bool)]) -> ProxyState {
    let mut proxy = ProxyState::new(node());
    let mut web = service();
    web.metadata.annotations = Some(BTreeMap::from([(
        coxswain_proxy::LB_ALGORITHM_ANNOTATION.to_owned(),
        "maglev".to_owned(),
    )]));
    let web_slice = slice(fx, endpoints);
    let maps = fx.dataplane.service_maps();
    if occupy > 0 {
        let mut other = service();
        other.metadata.name = Some("other".into());
        other.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.5".into()); // programmed first: lower address
        let addresses: Vec<_> = (0..occupy).map(|i| format!("10.250.9.{}", i + 1)).collect();
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"namespace": "default", "name": "other-1",
                         "labels": {"kubernetes.io/service-name": "other"}},
            "addressType": "IPv4",
            "endpoints": addresses.iter().map(|a| json!({"addresses": [a], "conditions": {"ready": true}})).collect::<Vec<_>>(),
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))
        .unwrap();
        proxy.upsert_service(maps, &other).unwrap();
        proxy.upsert_endpoint_slice(maps, &slice).unwrap();
    }
    proxy.upsert_service(maps, &web).unwrap();
    proxy.upsert_endpoint_slice(maps, &web_slice).unwrap();
    proxy.full_resync(maps).unwrap();
    proxy
}

#[test]
fn maglev_gives_a_flow_the_same_backend_on_every_node_and_a_change_moves_few_flows() {
    let mut fx = Fixture::new(216);
    let all = [(1, true), (2, true), (3, true)];
    let mut proxy = maglev_node(&mut fx, 0, &all);
    let ports = 40300..40336;
    let first = backends_by_port(&fx, ports.clone());
    let used: BTreeSet<&String> = first.values().collect();
    assert_eq!(used.len(), 3, "36 flows use every backend: {first:?}");

    // Another node: fresh maps, other backend ids, the same Service. Every
    // flow takes the backend it took on the first node. (The first node's
    // programs go with their pins: pinned links outlive the agent.)
    let Fixture { dataplane, topo, servers, pins } = fx;
    drop(dataplane);
    drop(pins);
    let pins = PinDir::new();
    let mut fx = Fixture {
        dataplane: load_and_attach(&topo, &pins).expect("load a second node's dataplane"),
        topo,
        pins,
        servers,
    };
    drop(proxy);
    proxy = maglev_node(&mut fx, 5, &all);
    let ids: Vec<Option<u32>> = proxy
        .service_frontends("default", "web")
        .iter()
        .flat_map(|f| f.backends.iter().map(|b| b.backend_id))
        .collect();
    assert_eq!(ids, [Some(6), Some(7), Some(8)], "the second node numbers backends differently");
    assert_eq!(backends_by_port(&fx, ports.clone()), first, "a flow's backend depends on the node");

    // b3 leaves: its flows move, every other flow keeps its backend (with a
    // random choice, each of those would stay with probability 1/2).
    let without_b3 = slice(&fx, &[(1, true), (2, true), (3, false)]);
    proxy
        .upsert_endpoint_slice(fx.dataplane.service_maps(), &without_b3)
        .unwrap();
    let after = backends_by_port(&fx, ports);

    for (port, before) in &first {
        if before == "b3" {
            assert_ne!(after[port], "b3", "port {port} still reaches the removed backend");
        } else {
            assert_eq!(&after[port], before, "port {port} moved although its backend stayed");
        }
    }
}

/// A UDP flow has no end conntrack could see: a client that keeps sending
/// follows its entry to a backend that left the Service, until the agent
/// deletes the flows of departed backends, as kube-proxy does.
#[test]
fn udp_flows_of_a_departed_backend_are_deleted_and_rebalanced() {
    let mut fx = Fixture::new(219);
    let mut proxy = ProxyState::new(node());
    let dns: Service = serde_json::from_value(json!({
        "metadata": {"namespace": "default", "name": "web"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "protocol": "UDP"}]}
    }))
    .unwrap();
    let udp_slice = |fx: &Fixture, endpoints: &[(usize, bool)]| {
        let mut slice = slice(fx, endpoints);
        for port in slice.ports.iter_mut().flatten() {
            port.protocol = Some("UDP".into());
        }
        slice
    };
    let all = udp_slice(&fx, &[(1, true), (2, true), (3, true)]);
    {
        let maps = fx.dataplane.service_maps();
        proxy.upsert_service(maps, &dns).unwrap();
        proxy.upsert_endpoint_slice(maps, &all).unwrap();
        proxy.full_resync(maps).unwrap();
    }
    let socket = fx
        .client()
        .run_in(|| {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
            socket.set_read_timeout(Some(coxswain_tests::fixture::TIMEOUT))?;
            socket.connect((coxswain_tests::fixture::VIP, 80))?;
            Ok(socket)
        })
        .unwrap();
    let ask = |msg: &str| -> String {
        socket.send(msg.as_bytes()).expect("send");
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).unwrap_or_else(|e| panic!("reply to {msg}: {e}"));
        let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
        reply.split_once(':').expect("named reply").0.to_owned()
    };
    let first = ask("q1");
    let leaving: usize = first.trim_start_matches('b').parse().unwrap();
    let remaining: Vec<(usize, bool)> = (1..=3).map(|i| (i, i != leaving)).collect();
    let without = udp_slice(&fx, &remaining);
    proxy
        .upsert_endpoint_slice(fx.dataplane.service_maps(), &without)
        .unwrap();
    // Its server still runs: the flow's entry still leads there.
    assert_eq!(ask("q2"), first, "the conntrack entry no longer held the flow");
    let stale = proxy.take_stale_backends();
    assert_eq!(stale.len(), 1, "{stale:?}");
    let deleted = fx.dataplane.flush_stale(&stale).expect("flush");
    assert_eq!(deleted, 2, "the flow's forward and reply entries");
    for i in 3..10 {
        assert_ne!(ask(&format!("q{i}")), first, "datagram {i} went to the departed backend");
    }
}
