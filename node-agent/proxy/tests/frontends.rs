//! What each kind of Service becomes in the maps: a table of objects and the
//! master entries they produce, one line per master:
//! `address:port/PROTO scope [service flags] -> backends in slot order`.
//!
//! Every case runs two ways that must agree: objects applied one by one to a
//! synced engine (each change written as it comes), and objects loaded
//! before the first full resync. Both check the kernel's consistency after
//! every map operation.

mod support;

use coxswain_dataplane::MemoryServiceMaps;
use coxswain_proxy::ProxyState;
use support::{
    Harness, NODE, SliceBuilder, SvcBuilder, assert_consistent, assert_converged, node,
    render_maps, slice, svc,
};

struct Case {
    name: &'static str,
    services: Vec<SvcBuilder>,
    slices: Vec<SliceBuilder>,
    want: &'static [&'static str],
}

fn web() -> SvcBuilder {
    svc("default", "web").cluster_ip("10.96.0.10")
}

fn web_slice(name: &str) -> SliceBuilder {
    slice("default", name, "web").port("http", 8080)
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "ClusterIP with three endpoints, slots sorted by address",
            services: vec![web().port("http", 80, 8080)],
            slices: vec![
                web_slice("web-1")
                    .ep("10.0.0.3")
                    .ep("10.0.0.1")
                    .ep("10.0.0.2"),
            ],
            want: &["10.96.0.10:80/TCP all [-] -> 10.0.0.1:8080 10.0.0.2:8080 10.0.0.3:8080"],
        },
        Case {
            name: "headless Service is ignored",
            services: vec![svc("default", "web").headless().port("http", 80, 8080)],
            slices: vec![web_slice("web-1").ep("10.0.0.1")],
            want: &[],
        },
        Case {
            name: "ExternalName Service is ignored",
            services: vec![
                svc("default", "web")
                    .external_name("example.com")
                    .port("http", 80, 8080),
            ],
            slices: vec![],
            want: &[],
        },
        Case {
            name: "IPv6-only Service is ignored",
            services: vec![
                svc("default", "web")
                    .cluster_ip("fd00::10")
                    .port("http", 80, 8080),
            ],
            slices: vec![web_slice("web-1").ep("10.0.0.1")],
            want: &[],
        },
        Case {
            name: "no slice yet: master kept with count 0, traffic rejected",
            services: vec![web().port("http", 80, 8080)],
            slices: vec![],
            want: &["10.96.0.10:80/TCP all [-] -> reject"],
        },
        Case {
            name: "named targetPort resolves through each slice's port",
            services: vec![web().port_to("http", 80, "web")],
            slices: vec![
                web_slice("web-1").ep("10.0.0.1"),
                slice("default", "web-2", "web")
                    .port("http", 9090)
                    .ep("10.0.0.2"),
            ],
            want: &["10.96.0.10:80/TCP all [-] -> 10.0.0.1:8080 10.0.0.2:9090"],
        },
        Case {
            name: "not-ready endpoints are excluded while one is ready",
            services: vec![web().port("http", 80, 8080)],
            slices: vec![
                web_slice("web-1")
                    .ep("10.0.0.1")
                    .not_ready("10.0.0.2")
                    .terminating("10.0.0.3", true),
            ],
            want: &["10.96.0.10:80/TCP all [-] -> 10.0.0.1:8080"],
        },
        Case {
            name: "none ready: serving terminating endpoints take over",
            services: vec![web().port("http", 80, 8080)],
            slices: vec![
                web_slice("web-1")
                    .not_ready("10.0.0.1")
                    .terminating("10.0.0.2", true)
                    .terminating("10.0.0.3", false),
            ],
            want: &["10.96.0.10:80/TCP all [-] -> 10.0.0.2:8080(terminating)"],
        },
        Case {
            name: "terminating and not serving: rejected",
            services: vec![web().port("http", 80, 8080)],
            slices: vec![web_slice("web-1").terminating("10.0.0.2", false)],
            want: &["10.96.0.10:80/TCP all [-] -> reject"],
        },
        Case {
            name: "conditions unset: ready",
            services: vec![web().port("http", 80, 8080)],
            slices: vec![web_slice("web-1").ep_cond("10.0.0.1", None, None, None, None)],
            want: &["10.96.0.10:80/TCP all [-] -> 10.0.0.1:8080"],
        },
        Case {
            name: "multiple ports, matched by name",
            services: vec![web().port("http", 80, 8080).port("metrics", 9090, 9100)],
            slices: vec![
                slice("default", "web-1", "web")
                    .port("metrics", 9100)
                    .port("http", 8080)
                    .ep("10.0.0.1"),
            ],
            want: &[
                "10.96.0.10:80/TCP all [-] -> 10.0.0.1:8080",
                "10.96.0.10:9090/TCP all [-] -> 10.0.0.1:9100",
            ],
        },
        Case {
            name: "unnamed port matches unnamed slice port",
            services: vec![web().port("", 80, 8080)],
            slices: vec![
                slice("default", "web-1", "web")
                    .port("", 8080)
                    .ep("10.0.0.1"),
            ],
            want: &["10.96.0.10:80/TCP all [-] -> 10.0.0.1:8080"],
        },
        Case {
            name: "UDP and TCP on the same port number are separate frontends",
            services: vec![
                svc("kube-system", "dns")
                    .cluster_ip("10.96.0.10")
                    .port("dns", 53, 53)
                    .protocol("UDP")
                    .port("dns-tcp", 53, 53),
            ],
            slices: vec![
                slice("kube-system", "dns-1", "dns")
                    .port_proto("dns", 53, "UDP")
                    .port("dns-tcp", 53)
                    .ep("10.0.0.1")
                    .ep("10.0.0.2"),
            ],
            want: &[
                "10.96.0.10:53/TCP all [-] -> 10.0.0.1:53 10.0.0.2:53",
                "10.96.0.10:53/UDP all [-] -> 10.0.0.1:53 10.0.0.2:53",
            ],
        },
        Case {
            name: "SCTP",
            services: vec![web().port("sig", 3868, 3868).protocol("SCTP")],
            slices: vec![
                slice("default", "web-1", "web")
                    .port_proto("sig", 3868, "SCTP")
                    .ep("10.0.0.1"),
            ],
            want: &["10.96.0.10:3868/SCTP all [-] -> 10.0.0.1:3868"],
        },
        Case {
            name: "slice port of another protocol does not match",
            services: vec![web().port("dns", 53, 53).protocol("UDP")],
            slices: vec![
                slice("default", "web-1", "web")
                    .port("dns", 53)
                    .ep("10.0.0.1"),
            ],
            want: &["10.96.0.10:53/UDP all [-] -> reject"],
        },
        Case {
            name: "NodePort on every node address, source NAT",
            services: vec![
                web()
                    .type_("NodePort")
                    .port("http", 80, 8080)
                    .node_port(30080),
            ],
            slices: vec![web_slice("web-1").ep("10.0.0.1")],
            want: &[
                "10.96.0.10:80/TCP all [-] -> 10.0.0.1:8080",
                "192.168.1.10:30080/TCP all [snat,node-port] -> 10.0.0.1:8080",
                "192.168.2.10:30080/TCP all [snat,node-port] -> 10.0.0.1:8080",
            ],
        },
        Case {
            name: "nodePort on a ClusterIP Service is not served",
            services: vec![web().port("http", 80, 8080).node_port(30080)],
            slices: vec![web_slice("web-1").ep("10.0.0.1")],
            want: &["10.96.0.10:80/TCP all [-] -> 10.0.0.1:8080"],
        },
        Case {
            name: "externalIPs and load-balancer ingress (ipMode Proxy skipped)",
            services: vec![
                web()
                    .type_("LoadBalancer")
                    .port("http", 80, 8080)
                    .node_port(30080)
                    .external_ip("203.0.113.5")
                    .lb_ingress("198.51.100.7")
                    .lb_ingress_mode("198.51.100.8", Some("Proxy")),
            ],
            slices: vec![web_slice("web-1").ep("10.0.0.1")],
            want: &[
                "10.96.0.10:80/TCP all [-] -> 10.0.0.1:8080",
                "192.168.1.10:30080/TCP all [snat,node-port] -> 10.0.0.1:8080",
                "192.168.2.10:30080/TCP all [snat,node-port] -> 10.0.0.1:8080",
                "198.51.100.7:80/TCP all [snat,external] -> 10.0.0.1:8080",
                "203.0.113.5:80/TCP all [snat,external] -> 10.0.0.1:8080",
            ],
        },
        Case {
            name: "externalTrafficPolicy Local: all scope for pods here, local scope for outside",
            services: vec![
                web()
                    .type_("NodePort")
                    .etp_local()
                    .port("http", 80, 8080)
                    .node_port(30080)
                    .external_ip("203.0.113.5"),
            ],
            slices: vec![web_slice("web-1").ep_on("10.0.0.1", NODE).ep("10.0.0.2")],
            want: &[
                "10.96.0.10:80/TCP all [-] -> 10.0.0.1:8080(local) 10.0.0.2:8080",
                "192.168.1.10:30080/TCP all [node-port] -> 10.0.0.1:8080(local) 10.0.0.2:8080",
                "192.168.1.10:30080/TCP local [node-port] -> 10.0.0.1:8080(local)",
                "192.168.2.10:30080/TCP all [node-port] -> 10.0.0.1:8080(local) 10.0.0.2:8080",
                "192.168.2.10:30080/TCP local [node-port] -> 10.0.0.1:8080(local)",
                "203.0.113.5:80/TCP all [external] -> 10.0.0.1:8080(local) 10.0.0.2:8080",
                "203.0.113.5:80/TCP local [external] -> 10.0.0.1:8080(local)",
            ],
        },
        Case {
            name: "externalTrafficPolicy Local without a local endpoint: outside traffic rejected",
            services: vec![
                web()
                    .type_("NodePort")
                    .etp_local()
                    .port("http", 80, 8080)
                    .node_port(30080),
            ],
            slices: vec![web_slice("web-1").ep("10.0.0.2")],
            want: &[
                "10.96.0.10:80/TCP all [-] -> 10.0.0.2:8080",
                "192.168.1.10:30080/TCP all [node-port] -> 10.0.0.2:8080",
                "192.168.1.10:30080/TCP local [node-port] -> reject",
                "192.168.2.10:30080/TCP all [node-port] -> 10.0.0.2:8080",
                "192.168.2.10:30080/TCP local [node-port] -> reject",
            ],
        },
        Case {
            name: "internalTrafficPolicy Local: ClusterIP uses local endpoints only, NodePort all",
            services: vec![
                web()
                    .type_("NodePort")
                    .itp_local()
                    .port("http", 80, 8080)
                    .node_port(30080),
            ],
            slices: vec![web_slice("web-1").ep_on("10.0.0.1", NODE).ep("10.0.0.2")],
            want: &[
                "10.96.0.10:80/TCP all [-] -> 10.0.0.1:8080(local)",
                "192.168.1.10:30080/TCP all [snat,node-port] -> 10.0.0.1:8080(local) 10.0.0.2:8080",
                "192.168.2.10:30080/TCP all [snat,node-port] -> 10.0.0.1:8080(local) 10.0.0.2:8080",
            ],
        },
        Case {
            name: "ClientIP affinity, default timeout",
            services: vec![web().affinity(None).port("http", 80, 8080)],
            slices: vec![web_slice("web-1").ep("10.0.0.1")],
            want: &["10.96.0.10:80/TCP all [affinity] timeout=10800s -> 10.0.0.1:8080"],
        },
        Case {
            name: "ClientIP affinity with a timeout, on every frontend",
            services: vec![
                web()
                    .type_("NodePort")
                    .affinity(Some(60))
                    .port("http", 80, 8080)
                    .node_port(30080),
            ],
            slices: vec![web_slice("web-1").ep("10.0.0.1")],
            want: &[
                "10.96.0.10:80/TCP all [affinity] timeout=60s -> 10.0.0.1:8080",
                "192.168.1.10:30080/TCP all [affinity,snat,node-port] timeout=60s -> 10.0.0.1:8080",
                "192.168.2.10:30080/TCP all [affinity,snat,node-port] timeout=60s -> 10.0.0.1:8080",
            ],
        },
        Case {
            name: "several slices, duplicate endpoints counted once",
            services: vec![web().port("http", 80, 8080)],
            slices: vec![
                web_slice("web-1").ep("10.0.0.1").ep("10.0.0.2"),
                web_slice("web-2").ep("10.0.0.2").ep("10.0.0.3"),
            ],
            want: &["10.96.0.10:80/TCP all [-] -> 10.0.0.1:8080 10.0.0.2:8080 10.0.0.3:8080"],
        },
        Case {
            name: "IPv6 slices, unlabeled slices and other Services' slices are ignored",
            services: vec![web().port("http", 80, 8080)],
            slices: vec![
                web_slice("web-1").ep("10.0.0.1"),
                web_slice("web-v6").address_type("IPv6").ep("fd00::1"),
                slice("default", "api-1", "api")
                    .port("http", 8080)
                    .ep("10.0.0.9"),
                slice("other", "web-1", "web")
                    .port("http", 8080)
                    .ep("10.0.0.8"),
            ],
            want: &["10.96.0.10:80/TCP all [-] -> 10.0.0.1:8080"],
        },
    ]
}

#[test]
fn applied_one_by_one() {
    for case in cases() {
        // Service first, then its slices.
        let mut h = Harness::new();
        for service in &case.services {
            h.svc(service);
        }
        for slice in &case.slices {
            h.slice(slice);
        }
        assert_eq!(h.lines(), case.want, "{} (service first)", case.name);

        // Slices first, then the Service.
        let mut h = Harness::new();
        for slice in &case.slices {
            h.slice(slice);
        }
        for service in &case.services {
            h.svc(service);
        }
        assert_eq!(h.lines(), case.want, "{} (slices first)", case.name);
    }
}

#[test]
fn loaded_then_resynced() {
    for case in cases() {
        let mut maps = MemoryServiceMaps {
            observer: Some(assert_consistent),
            ..MemoryServiceMaps::default()
        };
        let mut proxy = ProxyState::new(node());
        for service in &case.services {
            let report = proxy.upsert_service(&mut maps, service).unwrap();
            assert!(report.deferred && report.ops == 0, "{}", case.name);
        }
        for slice in &case.slices {
            let report = proxy.upsert_endpoint_slice(&mut maps, slice).unwrap();
            assert!(report.deferred && report.ops == 0, "{}", case.name);
        }
        assert!(
            maps.ops.is_empty(),
            "{}: nothing written before the first resync",
            case.name
        );
        proxy.full_resync(&mut maps).unwrap();
        assert_eq!(render_maps(&maps.state), case.want, "{}", case.name);
        assert_converged(&proxy, &maps.state);
    }
}
