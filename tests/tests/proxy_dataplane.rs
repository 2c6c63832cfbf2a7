//! The proxy's sync engine driving the kernel dataplane with real packets:
//! Kubernetes objects in, connections through the ClusterIP out.

use std::collections::BTreeSet;

use coxswain_dataplane::ServiceMaps;
use coxswain_proxy::{NodeInfo, ProxyState};
use coxswain_tests::fixture::{Fixture, ask, connect, load_and_attach};
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
