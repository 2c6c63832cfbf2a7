//! The benchmark's network: one client namespace, one backend namespace,
//! and between them one node namespace per mode, so that no mode's rules
//! tax another's packets (every new flow entering a node with iptables
//! rules walks its Service chain, whatever its destination) and no mode has
//! to be reprogrammed to switch.
//!
//! ```text
//!                      ┌─ node direct   (routing only) ─┐
//!  client  m0..m3 ─────┼─ node ebpf     (service_tc)   ─┼───── n0..n3  backend
//!  64 source addresses ├─ node iptables (kube-proxy)   ─┤      endpoints 10.244.0.1-10 on lo,
//!  per mode            └─ node nftables (kube-proxy)   ─┘      change targets 10.244.1.x on lo
//! ```
//!
//! Mode `m` (index in [`MODES`]): client link 10.(110+m).0.0/24 (node .254,
//! client sources .1-.64), backend link 10.(120+m).0.0/24 (backend .1,
//! node .254), Service addresses 10.(96+m).0.0/16. The client routes only
//! each mode's Service range (and, for `direct`, the endpoints) to that
//! mode's node; the backend routes each client subnet back through the node
//! it came from. Nothing routes anywhere else, so no packet can leave the
//! topology.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use coxswain_tests::{
    baseline,
    netns::{NetNs, unique_name},
};

/// The node's interface towards the client.
pub const NODE_CLIENT_IF: &str = "cx-client";
/// The node's interface towards the backends.
pub const NODE_BACKEND_IF: &str = "cx-backend";
/// Source addresses per mode on the client.
pub const SOURCES_PER_MODE: u8 = 64;
/// Endpoints every Service has (addresses on the backend's loopback).
pub const ENDPOINTS: u8 = 10;
/// Addresses for endpoint changes (each change moves a Service to one of
/// these, which answers with its own address).
pub const CHANGE_TARGETS: u8 = 250;
/// The port every endpoint serves.
pub const TARGET_PORT: u16 = 8080;
/// The port of every Service.
pub const SERVICE_PORT: u16 = 80;

/// How a node handles Service traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// No Services: clients connect to endpoint addresses; the node only
    /// routes. The ceiling.
    Direct,
    /// `service_tc` with maps programmed by the sync engine.
    Ebpf,
    /// kube-proxy's iptables mode.
    Iptables,
    /// kube-proxy's nftables mode.
    Nftables,
}

/// Every mode, in column order.
pub const MODES: [Mode; 4] = [Mode::Direct, Mode::Ebpf, Mode::Iptables, Mode::Nftables];

impl Mode {
    /// `direct`, `ebpf`, `iptables`, `nftables`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Ebpf => "ebpf",
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
        }
    }

    /// Position in [`MODES`].
    pub const fn index(self) -> u8 {
        match self {
            Mode::Direct => 0,
            Mode::Ebpf => 1,
            Mode::Iptables => 2,
            Mode::Nftables => 3,
        }
    }

    /// The `i`-th Service address of this mode (10.(96+m).x.y, avoiding .0
    /// and .255).
    pub fn vip(self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 96 + self.index(), (i / 250) as u8, (i % 250) as u8 + 1)
    }

    /// The client's source addresses for this mode.
    pub fn sources(self) -> Vec<Ipv4Addr> {
        (1..=SOURCES_PER_MODE)
            .map(|i| Ipv4Addr::new(10, 110 + self.index(), 0, i))
            .collect()
    }
}

/// Endpoint `i` (1-based) shared by every Service.
pub fn endpoint(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 0, i)
}

/// Change target `i` (1-based).
pub fn change_target(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, i)
}

/// The namespaces; dropping it deletes them all (and every interface).
#[derive(Debug)]
pub struct Topology {
    /// One node per mode, in [`MODES`] order.
    pub nodes: Vec<NetNs>,
    /// Where the load generator runs.
    pub client: NetNs,
    /// Where the servers run.
    pub backend: NetNs,
}

impl Topology {
    /// Creates everything.
    pub fn create() -> Result<Self> {
        let base = unique_name("cxb");
        let client = NetNs::create(&format!("{base}c"))?;
        let backend = NetNs::create(&format!("{base}b"))?;
        let mut nodes = Vec::new();
        // Kernel defaults in a new namespace, set explicitly: no reverse-path
        // filtering (replies come back through the node they left by).
        for ns in [&client, &backend] {
            sysctls(
                ns,
                &[
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0",
                ],
            )?;
        }
        // Many ephemeral ports per source address.
        sysctls(&client, &["net.ipv4.ip_local_port_range=1024 65535"])?;
        // No per-destination TCP metrics cache: the client reaches N
        // Service addresses in the translated modes but only 10 endpoint
        // addresses in `direct`, and that cache's churn (a client-side
        // cost, not the dataplane's) would otherwise favour `direct`.
        for ns in [&client, &backend] {
            sysctls(ns, &["net.ipv4.tcp_no_metrics_save=1"])?;
        }
        let mut backend_batch = String::new();
        for i in 1..=ENDPOINTS {
            backend_batch.push_str(&format!("addr add {}/32 dev lo\n", endpoint(i)));
        }
        for i in 1..=CHANGE_TARGETS {
            backend_batch.push_str(&format!("addr add {}/32 dev lo\n", change_target(i)));
        }
        let mut client_batch = String::new();
        for mode in MODES {
            let m = mode.index();
            let node = NetNs::create(&format!("{base}{}", &mode.as_str()[..3]))?;
            sysctls(
                &node,
                &[
                    "net.ipv4.ip_forward=1",
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0",
                ],
            )?;
            if matches!(mode, Mode::Iptables | Mode::Nftables) {
                // Conntrack keeps closed flows 120 s in TIME_WAIT; at the
                // rates measured here the table (262,144 entries) would fill
                // and drop new flows, which is a sizing matter, not the
                // dataplane's cost. Fewer entries only make lookups
                // cheaper for the baselines.
                sysctls(
                    &node,
                    &["net.netfilter.nf_conntrack_tcp_timeout_time_wait=30"],
                )?;
            }
            let client_if = format!("m{m}");
            let backend_if = format!("n{m}");
            node.ip(&[
                "link",
                "add",
                NODE_CLIENT_IF,
                "type",
                "veth",
                "peer",
                "name",
                &client_if,
                "netns",
                client.name(),
            ])?;
            node.ip(&[
                "link",
                "add",
                NODE_BACKEND_IF,
                "type",
                "veth",
                "peer",
                "name",
                &backend_if,
                "netns",
                backend.name(),
            ])?;
            let client_net = format!("10.{}.0", 110 + m);
            let backend_net = format!("10.{}.0", 120 + m);
            let node_batch = format!(
                "addr add {client_net}.254/24 dev {NODE_CLIENT_IF}\n\
                 addr add {backend_net}.254/24 dev {NODE_BACKEND_IF}\n\
                 link set {NODE_CLIENT_IF} up\n\
                 link set {NODE_BACKEND_IF} up\n\
                 route add 10.244.0.0/16 via {backend_net}.1\n"
            );
            ip_batch(&node, &node_batch)?;
            for source in mode.sources() {
                client_batch.push_str(&format!("addr add {source}/24 dev {client_if}\n"));
            }
            client_batch.push_str(&format!("link set {client_if} up\n"));
            let routed = match mode {
                Mode::Direct => "10.244.0.0/16".to_owned(),
                _ => format!("10.{}.0.0/16", 96 + m),
            };
            client_batch.push_str(&format!("route add {routed} via {client_net}.254\n"));
            backend_batch.push_str(&format!(
                "addr add {backend_net}.1/24 dev {backend_if}\n\
                 link set {backend_if} up\n\
                 route add {client_net}.0/24 via {backend_net}.254\n"
            ));
            nodes.push(node);
        }
        ip_batch(&client, &client_batch)?;
        ip_batch(&backend, &backend_batch)?;
        Ok(Topology {
            nodes,
            client,
            backend,
        })
    }

    /// The node of `mode`.
    pub fn node(&self, mode: Mode) -> &NetNs {
        &self.nodes[usize::from(mode.index())]
    }
}

/// `ip -batch -` in `ns`.
fn ip_batch(ns: &NetNs, batch: &str) -> Result<()> {
    baseline::run_with_stdin(ns, "ip", &["-batch", "-"], batch)
        .with_context(|| format!("failed to configure netns {}", ns.name()))
}

fn sysctls(ns: &NetNs, settings: &[&str]) -> Result<()> {
    for setting in settings {
        let out = ns.exec("sysctl", &["-qw", setting])?;
        anyhow::ensure!(
            out.status.success(),
            "failed to set {setting} in netns {}: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
