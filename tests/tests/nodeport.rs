//! NodePort from another machine over the node's uplink: a client on the
//! LAN reaches a Service through node A's address; endpoints on node A and
//! node B; `externalTrafficPolicy` Cluster (source NAT for node B's pod)
//! and Local (client address kept, only node A's pod).

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
};

use coxswain_dataplane::{Dataplane, LoadOptions, XdpMode, locate_object};
use coxswain_ebpf_common::nodeport_verdict;
use coxswain_proxy::{NodeInfo, ProxyState};
use coxswain_tests::{
    fixture::TIMEOUT,
    netns::{PinDir, TwoNodeLan},
    require_root,
    servers::{NameServer, WHOAMI},
};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::json;

const NODE_PORT: u16 = 30080;

struct Cluster {
    lan: TwoNodeLan,
    /// Node A's LAN port with an XDP program of its own, for native XDP.
    _switch_port: Option<(Dataplane, PinDir)>,
    dataplane: Dataplane,
    proxy: ProxyState,
    _servers: Vec<NameServer>,
    _pins: PinDir,
}

impl Cluster {
    fn new(net: u8) -> Self {
        Self::with_xdp(net, None)
    }

    /// Node A with NodePort acceleration at XDP in `xdp` mode (and the tc
    /// programs, as the agent attaches them).
    fn with_xdp(net: u8, xdp: Option<XdpMode>) -> Self {
        require_root();
        let lan = TwoNodeLan::create(net).expect("topology");
        if xdp.is_some() {
            lan.complete_checksums().expect("complete checksums");
        }
        // Native XDP on a veth sends frames back out (XDP_TX) only to a
        // peer that processes XDP frames: give node A's LAN port a program
        // (the packet counter, which passes everything), as a NIC would be.
        let switch_port = (xdp == Some(XdpMode::Driver)).then(|| {
            let pins = PinDir::new();
            let object = locate_object(None).expect("eBPF object");
            let dp = lan
                .lan()
                .run_in(|| {
                    let mut dp = Dataplane::load_file_with(
                        &object,
                        &LoadOptions {
                            pin_dir: pins.path().to_owned(),
                        },
                    )?;
                    dp.attach_xdp("p-node0", XdpMode::Driver)?;
                    Ok(dp)
                })
                .expect("XDP on node A's LAN port");
            (dp, pins)
        });
        let servers = vec![
            NameServer::start(&lan.pods[0], "a", 8080).expect("server on pod-a"),
            NameServer::start(&lan.pods[1], "b", 8080).expect("server on pod-b"),
        ];
        let pins = PinDir::new();
        let object = locate_object(None).expect("eBPF object");
        let node_a = lan.node_addrs[0];
        let mut dataplane = lan.nodes[0]
            .run_in(|| {
                let mut dp = Dataplane::load_file_with(
                    &object,
                    &LoadOptions {
                        pin_dir: pins.path().to_owned(),
                    },
                )?;
                dp.attach_nodeport_tc("uplink")?;
                if let Some(mode) = xdp {
                    dp.attach_nodeport_xdp("uplink", mode)?;
                }
                dp.attach_service_tc("pod")?;
                Ok(dp)
            })
            .expect("dataplane on node-a");
        dataplane
            .set_snat_address(Some(node_a))
            .expect("snat address");
        let mut proxy = ProxyState::new(NodeInfo {
            name: "node-a".into(),
            addresses: vec![node_a],
        });
        proxy
            .full_resync(dataplane.service_maps())
            .expect("initial sync");
        Cluster {
            lan,
            _switch_port: switch_port,
            dataplane,
            proxy,
            _servers: servers,
            _pins: pins,
        }
    }

    /// Programs the NodePort Service `web` with the given endpoints (pod
    /// index, node name).
    fn program(&mut self, policy: &str, endpoints: &[usize]) {
        let service: Service = serde_json::from_value(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {
                "type": "NodePort",
                "clusterIP": "10.96.0.20",
                "externalTrafficPolicy": policy,
                "ports": [{"port": 80, "targetPort": 8080, "nodePort": NODE_PORT, "protocol": "TCP"}]
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
            "ports": [{"port": 8080, "protocol": "TCP"}]
        }))
        .expect("slice");
        let maps = self.dataplane.service_maps();
        self.proxy.upsert_service(maps, &service).expect("service");
        self.proxy
            .upsert_endpoint_slice(maps, &slice)
            .expect("slice");
    }

    /// `n` connections from the client to node A's NodePort: which pod
    /// answered, and the client address that pod saw, with counts.
    fn whoami(&self, n: usize) -> Result<BTreeMap<String, usize>, std::io::Error> {
        let target = SocketAddr::from((self.lan.node_addrs[0], NODE_PORT));
        self.lan
            .client
            .run_in(|| {
                let mut seen = BTreeMap::new();
                for _ in 0..n {
                    let mut stream = TcpStream::connect_timeout(&target, TIMEOUT)?;
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
                Err(other) => std::io::Error::other(other.to_string()),
            })
    }
}

#[test]
fn nodeport_cluster_policy_reaches_both_nodes_with_snat_for_the_remote_one() {
    let mut c = Cluster::new(209);
    c.program("Cluster", &[0, 1]);
    let seen = c.whoami(40).expect("connections through the NodePort");
    let client = c.lan.client_addr.to_string();
    let node_a = c.lan.node_addrs[0].to_string();
    // Pod a (local) sees the real client; pod b (on node B) sees node A,
    // which is how its replies find their way back through node A.
    let kinds: Vec<&String> = seen.keys().collect();
    assert_eq!(
        kinds,
        [&format!("a:{client}"), &format!("b:{node_a}")],
        "seen: {seen:?}"
    );
}

#[test]
fn nodeport_local_policy_keeps_the_client_address_and_stays_on_the_node() {
    let mut c = Cluster::new(210);
    c.program("Local", &[0, 1]);
    let seen = c.whoami(20).expect("connections through the NodePort");
    let client = c.lan.client_addr.to_string();
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        [&format!("a:{client}")],
        "seen: {seen:?}"
    );

    // Only a remote endpoint: node A has nothing local to offer and
    // refuses, rather than forwarding or black-holing.
    c.program("Local", &[1]);
    let err = c.whoami(1).expect_err("no local endpoint");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}

/// Packets per NodePort XDP verdict on node A.
fn xdp_verdicts(c: &Cluster) -> BTreeMap<&'static str, u64> {
    c.dataplane
        .nodeport_xdp_stats()
        .expect("read XDP stats")
        .into_iter()
        .map(|(verdict, counters)| (nodeport_verdict::name(verdict), counters.packets))
        .collect()
}

/// With acceleration, the same answers as with tc alone, but the work is
/// done at XDP: flows to node A's pod are translated there and passed up,
/// flows to node B's pod (and their replies) are translated and sent back
/// out of the uplink without entering node A's stack.
fn nodeport_at_xdp(net: u8, mode: XdpMode) {
    let mut c = Cluster::with_xdp(net, Some(mode));
    c.program("Cluster", &[0, 1]);
    let seen = c.whoami(40).expect("connections through the NodePort");
    let client = c.lan.client_addr.to_string();
    let node_a = c.lan.node_addrs[0].to_string();
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        [&format!("a:{client}"), &format!("b:{node_a}")],
        "seen: {seen:?}"
    );
    let verdicts = xdp_verdicts(&c);
    // Each connection is at least 3 packets from the client and 2 replies.
    assert!(verdicts.get("local").copied().unwrap_or(0) >= 3, "{verdicts:?}");
    assert!(verdicts.get("tx").copied().unwrap_or(0) >= 5, "{verdicts:?}");

    // Local policy: the client address kept, node A's pod only; with no
    // local endpoint the tc program behind refuses the connection.
    c.program("Local", &[0, 1]);
    let seen = c.whoami(20).expect("connections through the NodePort");
    assert_eq!(seen.keys().collect::<Vec<_>>(), [&format!("a:{client}")], "seen: {seen:?}");
    c.program("Local", &[1]);
    let err = c.whoami(1).expect_err("no local endpoint");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(xdp_verdicts(&c).get("pass").copied().unwrap_or(0) >= 1, "the refusal is tc's");
}

#[test]
fn nodeport_at_native_xdp_translates_before_the_stack() {
    nodeport_at_xdp(217, XdpMode::Driver);
}

#[test]
fn nodeport_at_generic_xdp_translates_before_the_stack() {
    nodeport_at_xdp(218, XdpMode::Skb);
}
