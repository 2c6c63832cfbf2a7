//! The kube-proxy-style baselines with real packets: the same behaviours
//! the eBPF dataplane's tests check (`service_dataplane.rs`,
//! `proxy_dataplane.rs`), in iptables mode and in nftables mode.
//!
//! Kubernetes objects go through the sync engine (`ProxyState`, with
//! in-memory maps as its sink); its wanted state (`desired()`) is rendered
//! by `coxswain_proxy::iptables` or `coxswain_proxy::nftables` and applied
//! in the node namespace of a `RoutedTopology`: host 0 is the client, hosts
//! 1 to 3 answer with their names (`b1`..`b3`), host 4 stands for the
//! node's uplink, where the Service range is routed (and ends: it does not
//! forward). Each test runs once per mode, each in a topology of its own.

use std::{
    collections::BTreeSet,
    net::{SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use coxswain_dataplane::MemoryServiceMaps;
use coxswain_proxy::{
    NodeInfo, ProxyState,
    iptables::{self, IptablesOptions, IptablesRuleset},
    nftables::{self, NftOptions},
};
use coxswain_tests::{
    baseline,
    fixture::{TARGET_PORT, TIMEOUT, VIP, ask, connect},
    netns::{NetNs, RoutedTopology},
    require_root,
    servers::NameServer,
};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// The node's tables are ours: whole-table restores (as the bench runs).
    Iptables,
    /// kube-proxy's way: `--noflush` restores beside a foreign rule, jump
    /// rules ensured one by one, stale chains deleted.
    IptablesShared,
    Nftables,
}

/// Every mode, with the offset of its topology's `10.<net>.x.x` range.
const MODES: [(Mode, u8); 3] = [
    (Mode::Iptables, 0),
    (Mode::IptablesShared, 1),
    (Mode::Nftables, 2),
];

/// A chain and rule in the nat table that are not ours (shared mode).
const FOREIGN_CHAIN: &str = "FOREIGN-PORTALS";

/// A node running one baseline mode between a client and three backends.
struct Node {
    mode: Mode,
    proxy: ProxyState,
    maps: MemoryServiceMaps,
    /// The last iptables sync (its chains, for the next one).
    iptables: Option<IptablesRuleset>,
    _servers: Vec<NameServer>,
    topo: RoutedTopology,
}

impl Node {
    /// A topology on `10.<net>.0.0/16` with `services` and `slices` synced.
    fn new(mode: Mode, net: u8, services: &[Service], slices: &[EndpointSlice]) -> Self {
        require_root();
        let topo = RoutedTopology::create(net, 5).expect("create topology");
        baseline::route_services_to_sink(&topo, 4).expect("route the Service range");
        if mode == Mode::IptablesShared {
            for args in [
                &["-t", "nat", "-N", FOREIGN_CHAIN][..],
                &["-t", "nat", "-A", FOREIGN_CHAIN, "-j", "RETURN"],
                &["-t", "nat", "-A", "PREROUTING", "-j", FOREIGN_CHAIN],
            ] {
                let out = topo.node.exec("iptables", args).expect("run iptables");
                assert!(out.status.success(), "iptables {args:?} failed");
            }
            for jump in iptables::JUMP_RULES {
                baseline::iptables_ensure_jump(
                    &topo.node,
                    jump.table,
                    jump.chain,
                    jump.rule,
                    jump.target,
                )
                .expect("ensure jump rule");
            }
        }
        let servers = (1..=3)
            .map(|i| {
                NameServer::start(&topo.hosts[i].ns, &format!("b{i}"), TARGET_PORT)
                    .expect("start server")
            })
            .collect();
        let mut node = Node {
            mode,
            proxy: ProxyState::new(NodeInfo {
                name: "node-a".into(),
                addresses: vec![],
            }),
            maps: MemoryServiceMaps::default(),
            iptables: None,
            _servers: servers,
            topo,
        };
        for service in services {
            node.proxy.upsert_service(&mut node.maps, service).unwrap();
        }
        for slice in slices {
            node.proxy
                .upsert_endpoint_slice(&mut node.maps, slice)
                .unwrap();
        }
        node.proxy.full_resync(&mut node.maps).unwrap();
        node.full_sync().expect("initial sync");
        node
    }

    fn client(&self) -> &NetNs {
        &self.topo.hosts[0].ns
    }

    /// Host `i`'s address as an endpoint.
    fn endpoint(&self, i: usize) -> String {
        self.topo.hosts[i].addr.to_string()
    }

    /// Renders everything and applies it (a full sync).
    fn full_sync(&mut self) -> Result<()> {
        let desired = self.proxy.desired();
        match self.mode {
            Mode::Iptables | Mode::IptablesShared => {
                let rules = iptables::render(
                    &desired,
                    &iptables_options(self.mode),
                    self.iptables.as_ref(),
                );
                baseline::iptables_restore(&self.topo.node, rules.restore_args(), &rules.restore)?;
                self.iptables = Some(rules);
            }
            Mode::Nftables => {
                baseline::nft(
                    &self.topo.node,
                    &nftables::full(&desired, &NftOptions::default()),
                )?;
            }
        }
        Ok(())
    }

    /// A changed EndpointSlice of `web`, synced as each mode's proxy does:
    /// iptables rewrites everything, nftables only that Service.
    fn upsert_slice(&mut self, slice: &EndpointSlice) -> Result<()> {
        let before = self.proxy.service_frontends("default", "web");
        self.proxy.upsert_endpoint_slice(&mut self.maps, slice)?;
        self.after_change(&before)
    }

    fn after_change(&mut self, before: &[coxswain_proxy::FrontendView]) -> Result<()> {
        match self.mode {
            Mode::Iptables | Mode::IptablesShared => self.full_sync(),
            Mode::Nftables => {
                let after = self.proxy.service_frontends("default", "web");
                let script = nftables::update(before, &after, &NftOptions::default());
                baseline::nft(&self.topo.node, &script)
            }
        }
    }

    /// The names of the backends reached by `n` new connections.
    fn reached(&self, n: usize) -> BTreeSet<String> {
        (0..n)
            .map(|i| {
                let mut stream = connect(self.client(), 80)
                    .unwrap_or_else(|e| panic!("{:?}: connection {i}: {e:#}", self.mode));
                ask(&mut stream, "hi")
                    .unwrap_or_else(|e| panic!("{:?}: connection {i}: {e:#}", self.mode))
            })
            .collect()
    }
}

/// Whole-table restores (as the bench runs) or kube-proxy's shared tables.
fn iptables_options(mode: Mode) -> IptablesOptions {
    IptablesOptions {
        shared_tables: mode == Mode::IptablesShared,
        ..IptablesOptions::default()
    }
}

/// `default/web` on the test VIP with one port per entry of `ports`
/// (name, port, protocol), each targeting the backends' port.
fn service(ports: &[(&str, u16, &str)]) -> Service {
    let ports: Vec<_> = ports
        .iter()
        .map(|(name, port, protocol)| {
            json!({"name": name, "port": port, "targetPort": TARGET_PORT, "protocol": protocol})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"namespace": "default", "name": "web"},
        "spec": {"type": "ClusterIP", "clusterIP": VIP.to_string(), "ports": ports}
    }))
    .expect("service")
}

/// The slice of `web` with `endpoints` (address, ready) for `ports` (name,
/// protocol) on the backends' port.
fn slice(endpoints: &[(String, bool)], ports: &[(&str, &str)]) -> EndpointSlice {
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|(addr, ready)| {
            json!({
                "addresses": [addr],
                "conditions": {"ready": ready, "serving": ready, "terminating": false},
                "nodeName": "node-a"
            })
        })
        .collect();
    let ports: Vec<_> = ports
        .iter()
        .map(|(name, protocol)| json!({"name": name, "port": TARGET_PORT, "protocol": protocol}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {
            "namespace": "default",
            "name": "web-abc12",
            "labels": {"kubernetes.io/service-name": "web"}
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports
    }))
    .expect("slice")
}

/// Endpoints on hosts `hosts`, all ready, with the addresses `topo` gives.
fn ready(net: u8, hosts: &[usize]) -> Vec<(String, bool)> {
    hosts
        .iter()
        .map(|i| (format!("10.{net}.{i}.2"), true))
        .collect()
}

#[test]
fn clusterip_tcp_spreads_connections_over_every_backend() {
    for (mode, offset) in MODES {
        let net = 221 + offset;
        let node = Node::new(
            mode,
            net,
            &[service(&[("http", 80, "TCP")])],
            &[slice(&ready(net, &[1, 2, 3]), &[("http", "TCP")])],
        );
        // Random choice among 3: each is missed by 60 connections with
        // probability (2/3)^60 < 1e-10.
        assert_eq!(
            node.reached(60),
            BTreeSet::from(["b1".into(), "b2".into(), "b3".into()]),
            "{mode:?}"
        );
    }
}

#[test]
fn clusterip_udp_replies_come_from_the_service_address() {
    for (mode, offset) in MODES {
        let net = 224 + offset;
        let node = Node::new(
            mode,
            net,
            &[service(&[("dns", 53, "UDP")])],
            &[slice(&ready(net, &[1, 2, 3]), &[("dns", "UDP")])],
        );
        let replies = node
            .client()
            .run_in(|| {
                let mut out = Vec::new();
                for i in 0..30 {
                    // A new source port each time: a new flow, balanced anew.
                    let socket = UdpSocket::bind("0.0.0.0:0")?;
                    socket.set_read_timeout(Some(TIMEOUT))?;
                    socket.send_to(format!("q{i}").as_bytes(), SocketAddrV4::new(VIP, 53))?;
                    let mut buf = [0u8; 256];
                    let (n, from) = socket
                        .recv_from(&mut buf)
                        .with_context(|| format!("datagram {i}"))?;
                    out.push((from, String::from_utf8_lossy(&buf[..n]).into_owned()));
                }
                Ok(out)
            })
            .unwrap_or_else(|e| panic!("{mode:?}: udp exchange: {e:#}"));
        let mut names = BTreeSet::new();
        for (i, (from, reply)) in replies.iter().enumerate() {
            assert_eq!(
                *from,
                SocketAddr::from((VIP, 53)),
                "{mode:?}: reply {i} not reverse-translated"
            );
            let (name, echoed) = reply.split_once(':').expect("named reply");
            assert_eq!(echoed, format!("q{i}"), "{mode:?}");
            names.insert(name.to_owned());
        }
        assert_eq!(names.len(), 3, "{mode:?}: 30 UDP flows reached {names:?}");
    }
}

#[test]
fn service_without_endpoints_refuses_at_once() {
    for (mode, offset) in MODES {
        let net = 227 + offset;
        let ports = [("http", "TCP"), ("dns", "UDP")];
        let mut node = Node::new(
            mode,
            net,
            &[service(&[("http", 80, "TCP"), ("dns", 53, "UDP")])],
            &[slice(&[], &ports)],
        );
        let (tcp, udp) = node
            .client()
            .run_in(|| {
                let start = Instant::now();
                let tcp = TcpStream::connect_timeout(&SocketAddr::from((VIP, 80)), TIMEOUT)
                    .map(|_| ())
                    .map_err(|e| (e.kind(), start.elapsed()));
                let socket = UdpSocket::bind("0.0.0.0:0")?;
                socket.connect(SocketAddrV4::new(VIP, 53))?;
                socket.set_read_timeout(Some(TIMEOUT))?;
                socket.send(b"anyone?")?;
                let start = Instant::now();
                let udp = socket
                    .recv(&mut [0u8; 64])
                    .map(|_| ())
                    .map_err(|e| (e.kind(), start.elapsed()));
                Ok((tcp, udp))
            })
            .expect("client");
        for (what, result) in [("tcp connect", tcp), ("udp recv", udp)] {
            let (kind, elapsed) = result.expect_err(what);
            assert_eq!(
                kind,
                std::io::ErrorKind::ConnectionRefused,
                "{mode:?}: {what}: {kind:?} after {elapsed:?}"
            );
            // Refused by the first packet's answer, not by a retransmission.
            assert!(
                elapsed < Duration::from_millis(900),
                "{mode:?}: {what} refused only after {elapsed:?}"
            );
        }

        // An endpoint appears: the same Service answers (for nftables, the
        // frontend moves from the reject map to the Service map).
        let one = node.endpoint(1);
        node.upsert_slice(&slice(&[(one, true)], &ports))
            .unwrap_or_else(|e| panic!("{mode:?}: sync: {e:#}"));
        let mut stream = connect(node.client(), 80)
            .unwrap_or_else(|e| panic!("{mode:?}: connect after endpoint appears: {e:#}"));
        assert_eq!(ask(&mut stream, "hi").expect("request"), "b1", "{mode:?}");
    }
}

#[test]
fn removed_endpoint_gets_no_new_connections_and_keeps_its_flows() {
    for (mode, offset) in MODES {
        let net = 230 + offset;
        let ports = [("http", "TCP")];
        let mut node = Node::new(
            mode,
            net,
            &[service(&[("http", 80, "TCP")])],
            &[slice(&ready(net, &[1, 2, 3]), &ports)],
        );
        // A connection that landed on b3 (each lands there with p = 1/3;
        // 60 misses have probability < 1e-10).
        let (mut on_b3, _) = (0..60)
            .map(|_| {
                let mut stream = connect(node.client(), 80).expect("connect");
                let name = ask(&mut stream, "hi").expect("request");
                (stream, name)
            })
            .find(|(_, name)| name == "b3")
            .unwrap_or_else(|| panic!("{mode:?}: no connection reached b3"));

        // b3 stops being ready.
        let mut endpoints = ready(net, &[1, 2]);
        endpoints.push((node.endpoint(3), false));
        node.upsert_slice(&slice(&endpoints, &ports))
            .unwrap_or_else(|e| panic!("{mode:?}: sync: {e:#}"));
        assert_eq!(
            node.reached(30),
            BTreeSet::from(["b1".into(), "b2".into()]),
            "{mode:?}: new connections after b3 left"
        );
        // Conntrack keeps the established flow on b3, as kube-proxy's
        // clusters do (and as the eBPF conntrack does).
        assert_eq!(
            ask(&mut on_b3, "still there?").expect("established flow"),
            "b3",
            "{mode:?}"
        );

        // The Service is deleted: nothing of it is left in the node.
        let before = node.proxy.service_frontends("default", "web");
        node.proxy
            .delete_service(&mut node.maps, "default", "web")
            .unwrap();
        node.after_change(&before)
            .unwrap_or_else(|e| panic!("{mode:?}: sync: {e:#}"));
        let listing = match mode {
            Mode::Iptables | Mode::IptablesShared => node.topo.node.exec("iptables-save", &[]),
            Mode::Nftables => node
                .topo
                .node
                .exec("nft", &["list", "table", "ip", "coxswain"]),
        }
        .expect("list rules");
        let listing = String::from_utf8_lossy(&listing.stdout);
        for leftover in ["COX-SVC-", "COX-SEP-", "default/web", "10.96.0.10"] {
            assert!(
                !listing.contains(leftover),
                "{mode:?}: {leftover} left after the Service was deleted:\n{listing}"
            );
        }
        if mode == Mode::IptablesShared {
            assert!(
                listing.contains(&format!("-A PREROUTING -j {FOREIGN_CHAIN}")),
                "{mode:?}: the foreign rule did not survive the syncs:\n{listing}"
            );
        }
    }
}

#[test]
fn client_ip_affinity_keeps_a_client_on_one_backend() {
    for (mode, offset) in MODES {
        let net = 233 + offset;
        let mut web = service(&[("http", 80, "TCP")]);
        let spec = web.spec.as_mut().expect("spec");
        spec.session_affinity = Some("ClientIP".into());
        let node = Node::new(
            mode,
            net,
            &[web],
            &[slice(&ready(net, &[1, 2, 3]), &[("http", "TCP")])],
        );
        // Without affinity, 20 connections stay on one of 3 backends with
        // probability 3 * (1/3)^20 < 1e-8.
        let reached = node.reached(20);
        assert_eq!(reached.len(), 1, "{mode:?}: one client reached {reached:?}");
    }
}

#[test]
fn hairpin_a_backend_reaches_itself_through_its_service() {
    for (mode, offset) in MODES {
        let net = 236 + offset;
        let node = Node::new(
            mode,
            net,
            &[service(&[("http", 80, "TCP")])],
            &[slice(&ready(net, &[1]), &[("http", "TCP")])],
        );
        // b1's only route is through the node: its own Service sends it back
        // to itself, masqueraded so that the reply returns through the node
        // (it would otherwise see its own address as the source).
        let name = node.topo.hosts[1]
            .ns
            .run_in(|| {
                let mut stream = TcpStream::connect_timeout(&SocketAddr::from((VIP, 80)), TIMEOUT)?;
                stream.set_read_timeout(Some(TIMEOUT))?;
                ask(&mut stream, "me?")
            })
            .unwrap_or_else(|e| panic!("{mode:?}: hairpin connection: {e:#}"));
        assert_eq!(name, "b1", "{mode:?}");
    }
}
