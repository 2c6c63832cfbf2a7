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
//!
//! NodePorts over an uplink (as `nodeport.rs` tests the eBPF dataplane) run
//! on a `TwoNodeLan`: a client on the LAN reaches node A's NodePort, the
//! rules applied in node A's namespace, with endpoints on node A and node
//! B, under both `externalTrafficPolicy` values.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::{SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use coxswain_dataplane::MemoryServiceMaps;
use coxswain_proxy::{
    FrontendView, NodeInfo, ProxyState,
    iptables::{self, IptablesOptions, IptablesRuleset, Ipv4Cidr},
    nftables::{self, NftOptions},
};
use coxswain_tests::{
    baseline,
    fixture::{TARGET_PORT, TIMEOUT, VIP, ask, connect},
    netns::{NetNs, RoutedTopology, TwoNodeLan},
    require_root,
    servers::{NameServer, WHOAMI},
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

/// One mode's rules in one node namespace, synced as that mode's proxy
/// syncs them.
struct Rules {
    mode: Mode,
    /// The pods' sources (`--cluster-cidr`).
    cluster_cidr: Option<Ipv4Cidr>,
    /// The last iptables sync (its chains, for the next one).
    previous: Option<IptablesRuleset>,
}

impl Rules {
    /// In shared mode, `ns` first gets a foreign chain and rule in `nat`
    /// and the jump rules into ours, as kube-proxy finds and ensures them.
    fn new(mode: Mode, ns: &NetNs, cluster_cidr: Option<Ipv4Cidr>) -> Self {
        if mode == Mode::IptablesShared {
            for args in [
                &["-t", "nat", "-N", FOREIGN_CHAIN][..],
                &["-t", "nat", "-A", FOREIGN_CHAIN, "-j", "RETURN"],
                &["-t", "nat", "-A", "PREROUTING", "-j", FOREIGN_CHAIN],
            ] {
                let out = ns.exec("iptables", args).expect("run iptables");
                assert!(out.status.success(), "iptables {args:?} failed");
            }
            for jump in iptables::JUMP_RULES {
                baseline::iptables_ensure_jump(ns, jump.table, jump.chain, jump.rule, jump.target)
                    .expect("ensure jump rule");
            }
        }
        Rules {
            mode,
            cluster_cidr,
            previous: None,
        }
    }

    /// Renders everything and applies it (a full sync).
    fn full_sync(&mut self, ns: &NetNs, desired: &[FrontendView]) -> Result<()> {
        match self.mode {
            Mode::Iptables | Mode::IptablesShared => {
                let options = IptablesOptions {
                    shared_tables: self.mode == Mode::IptablesShared,
                    cluster_cidr: self.cluster_cidr,
                    ..IptablesOptions::default()
                };
                let rules = iptables::render(desired, &options, self.previous.as_ref());
                baseline::iptables_restore(ns, rules.restore_args(), &rules.restore)?;
                self.previous = Some(rules);
            }
            Mode::Nftables => {
                baseline::nft(ns, &nftables::full(desired, &self.nft_options()))?;
            }
        }
        Ok(())
    }

    /// One Service changed from `before` to `after`: iptables rewrites
    /// everything (`desired`), nftables only that Service.
    fn after_change(
        &mut self,
        ns: &NetNs,
        before: &[FrontendView],
        after: &[FrontendView],
        desired: &[FrontendView],
    ) -> Result<()> {
        match self.mode {
            Mode::Iptables | Mode::IptablesShared => self.full_sync(ns, desired),
            Mode::Nftables => {
                baseline::nft(ns, &nftables::update(before, after, &self.nft_options()))
            }
        }
    }

    fn nft_options(&self) -> NftOptions {
        NftOptions {
            cluster_cidr: self.cluster_cidr,
            ..NftOptions::default()
        }
    }
}

/// A node running one baseline mode between a client and three backends.
struct Node {
    mode: Mode,
    proxy: ProxyState,
    maps: MemoryServiceMaps,
    rules: Rules,
    _servers: Vec<NameServer>,
    topo: RoutedTopology,
}

impl Node {
    /// A topology on `10.<net>.0.0/16` with `services` and `slices` synced.
    fn new(mode: Mode, net: u8, services: &[Service], slices: &[EndpointSlice]) -> Self {
        require_root();
        let topo = RoutedTopology::create(net, 5).expect("create topology");
        baseline::route_services_to_sink(&topo, 4).expect("route the Service range");
        let rules = Rules::new(mode, &topo.node, None);
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
            rules,
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
        node.rules
            .full_sync(&node.topo.node, &node.proxy.desired())
            .expect("initial sync");
        node
    }

    fn client(&self) -> &NetNs {
        &self.topo.hosts[0].ns
    }

    /// Host `i`'s address as an endpoint.
    fn endpoint(&self, i: usize) -> String {
        self.topo.hosts[i].addr.to_string()
    }

    /// A changed EndpointSlice of `web`, synced as each mode's proxy does.
    fn upsert_slice(&mut self, slice: &EndpointSlice) -> Result<()> {
        let before = self.proxy.service_frontends("default", "web");
        self.proxy.upsert_endpoint_slice(&mut self.maps, slice)?;
        self.after_change(&before)
    }

    fn after_change(&mut self, before: &[FrontendView]) -> Result<()> {
        let after = self.proxy.service_frontends("default", "web");
        self.rules
            .after_change(&self.topo.node, before, &after, &self.proxy.desired())
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

const NODE_PORT: u16 = 30080;

/// How long a dropped connection attempt is given: one SYN, no
/// retransmission (the first comes after a second).
const DROP_WAIT: Duration = Duration::from_millis(900);

/// Node A of a `TwoNodeLan` running one baseline mode, with `web`'s
/// endpoints on pod-a (node A) and pod-b (node B); node B only routes.
struct Lan {
    mode: Mode,
    lan: TwoNodeLan,
    proxy: ProxyState,
    maps: MemoryServiceMaps,
    rules: Rules,
    _servers: Vec<NameServer>,
}

impl Lan {
    fn new(mode: Mode, net: u8) -> Self {
        require_root();
        let lan = TwoNodeLan::create(net).expect("topology");
        let servers = vec![
            NameServer::start(&lan.pods[0], "a", TARGET_PORT).expect("server on pod-a"),
            NameServer::start(&lan.pods[1], "b", TARGET_PORT).expect("server on pod-b"),
        ];
        // Pods are told apart by node A's pod network (kube-proxy's
        // `NodeCIDR` detection): the LAN shares `10.<net>.0.0/16` with the
        // pods, so no CIDR holds both pods and not the client.
        let pods = Ipv4Cidr::new(lan.pod_addrs[0], 24).expect("a /24");
        let rules = Rules::new(mode, &lan.nodes[0], Some(pods));
        let mut proxy = ProxyState::new(NodeInfo {
            name: "node-a".into(),
            addresses: vec![lan.node_addrs[0]],
        });
        let mut maps = MemoryServiceMaps::default();
        proxy.full_resync(&mut maps).expect("initial resync");
        let mut node = Lan {
            mode,
            lan,
            proxy,
            maps,
            rules,
            _servers: servers,
        };
        node.rules
            .full_sync(&node.lan.nodes[0], &node.proxy.desired())
            .expect("initial sync");
        node
    }

    /// The NodePort Service `web` under `policy`, with endpoints on the
    /// pods `endpoints` (0: pod-a on node-a, 1: pod-b on node-b), synced.
    fn program(&mut self, policy: &str, endpoints: &[usize]) {
        let service: Service = serde_json::from_value(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {
                "type": "NodePort",
                "clusterIP": "10.96.0.20",
                "externalTrafficPolicy": policy,
                "ports": [{"port": 80, "targetPort": TARGET_PORT, "nodePort": NODE_PORT, "protocol": "TCP"}]
            }
        }))
        .expect("service");
        let endpoints: Vec<_> = endpoints
            .iter()
            .map(|&i| {
                let node = ["node-a", "node-b"][i];
                json!({
                    "addresses": [self.lan.pod_addrs[i].to_string()],
                    "conditions": {"ready": true},
                    "nodeName": node
                })
            })
            .collect();
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"namespace": "default", "name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"port": TARGET_PORT, "protocol": "TCP"}]
        }))
        .expect("slice");
        let before = self.proxy.service_frontends("default", "web");
        self.proxy
            .upsert_service(&mut self.maps, &service)
            .expect("service");
        self.proxy
            .upsert_endpoint_slice(&mut self.maps, &slice)
            .expect("slice");
        let after = self.proxy.service_frontends("default", "web");
        self.rules
            .after_change(&self.lan.nodes[0], &before, &after, &self.proxy.desired())
            .unwrap_or_else(|e| panic!("{:?}: sync: {e:#}", self.mode));
    }

    /// `n` connections from `from` to node A's NodePort, each given
    /// `timeout` to connect: which pod answered and the client address it
    /// saw (`a:10.1.0.100`), with counts.
    fn whoami(
        &self,
        from: &NetNs,
        n: usize,
        timeout: Duration,
    ) -> std::io::Result<BTreeMap<String, usize>> {
        let target = SocketAddr::from((self.lan.node_addrs[0], NODE_PORT));
        from.run_in(|| {
            let mut seen = BTreeMap::new();
            for _ in 0..n {
                let mut stream = TcpStream::connect_timeout(&target, timeout)?;
                stream.set_read_timeout(Some(TIMEOUT))?;
                stream.write_all(WHOAMI)?;
                let mut buf = [0u8; 128];
                let len = stream.read(&mut buf)?;
                *seen
                    .entry(String::from_utf8_lossy(&buf[..len]).into_owned())
                    .or_insert(0) += 1;
            }
            Ok(seen)
        })
        .map_err(|e| match e.downcast::<std::io::Error>() {
            Ok(io) => io,
            Err(other) => std::io::Error::other(format!("{other:#}")),
        })
    }
}

/// The pods that answered, and what they saw, without the counts.
fn kinds(seen: &BTreeMap<String, usize>) -> Vec<&str> {
    seen.keys().map(String::as_str).collect()
}

#[test]
fn nodeport_cluster_policy_reaches_both_nodes_masqueraded() {
    for (mode, offset) in MODES {
        let mut node = Lan::new(mode, 239 + offset);
        node.program("Cluster", &[0, 1]);
        let seen = node
            .whoami(&node.lan.client, 40, TIMEOUT)
            .unwrap_or_else(|e| panic!("{mode:?}: connections through the NodePort: {e}"));
        // kube-proxy masquerades all external traffic under Cluster (its
        // KUBE-EXT chain marks every packet): pod-a sees node A's address
        // on its link, pod-b node A's LAN address, neither the client.
        // (The eBPF dataplane source-NATs only the flows it sends to
        // another node: there pod-a sees the client.) Each pod is missed by
        // 40 random choices with probability 2^-40.
        let (pod_gateway, node_a) = (
            format!("a:{}", node.lan.pod_gateway(0)),
            format!("b:{}", node.lan.node_addrs[0]),
        );
        assert_eq!(
            kinds(&seen),
            [pod_gateway.as_str(), node_a.as_str()],
            "{mode:?}: {seen:?}"
        );
    }
}

#[test]
fn nodeport_local_policy_keeps_the_client_address_and_drops_without_a_local_endpoint() {
    for (mode, offset) in MODES {
        let mut node = Lan::new(mode, 242 + offset);
        let client = node.lan.client_addr;
        node.program("Local", &[0, 1]);
        let seen = node
            .whoami(&node.lan.client, 20, TIMEOUT)
            .unwrap_or_else(|e| panic!("{mode:?}: connections through the NodePort: {e}"));
        // Only node A's pod, which sees the client itself: not masqueraded.
        assert_eq!(kinds(&seen), [format!("a:{client}")], "{mode:?}: {seen:?}");

        // Only a remote endpoint: kube-proxy drops outside traffic ("has no
        // local endpoints"), so the client's SYN goes unanswered; without
        // that rule node A, with no listener on the port, would reset it.
        // (The eBPF dataplane refuses instead.)
        node.program("Local", &[1]);
        let start = Instant::now();
        let err = node
            .whoami(&node.lan.client, 1, DROP_WAIT)
            .expect_err("no local endpoint");
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::TimedOut,
            "{mode:?}: {err} after {:?}",
            start.elapsed()
        );

        // Pods (by the cluster CIDR) and node A itself are no outside
        // clients: they reach the remote endpoint, a pod with its own
        // address, the node masqueraded.
        let pod_a = node.lan.pod_addrs[0];
        let seen = node
            .whoami(&node.lan.pods[0], 5, TIMEOUT)
            .unwrap_or_else(|e| panic!("{mode:?}: pod-a to its node's NodePort: {e}"));
        assert_eq!(kinds(&seen), [format!("b:{pod_a}")], "{mode:?}: {seen:?}");
        let node_a = node.lan.node_addrs[0];
        let seen = node
            .whoami(&node.lan.nodes[0], 5, TIMEOUT)
            .unwrap_or_else(|e| panic!("{mode:?}: node A to its own NodePort: {e}"));
        assert_eq!(kinds(&seen), [format!("b:{node_a}")], "{mode:?}: {seen:?}");

        // A local endpoint again: outside clients reach it.
        node.program("Local", &[0, 1]);
        let seen = node
            .whoami(&node.lan.client, 5, TIMEOUT)
            .unwrap_or_else(|e| panic!("{mode:?}: the local endpoint is back: {e}"));
        assert_eq!(kinds(&seen), [format!("a:{client}")], "{mode:?}: {seen:?}");
    }
}
