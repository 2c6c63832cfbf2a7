//! Network namespaces and veth pairs created by `ip`, deleted on drop.

use std::{
    fs::File,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};

/// A named network namespace (`ip netns add`), deleted on drop, which also
/// deletes every interface inside it.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call, e.g. `cx12345-3`.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}{}-{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl NetNs {
    /// Creates a namespace with loopback up.
    pub fn create(name: &str) -> Result<Self> {
        ip(&["netns", "add", name])?;
        let ns = NetNs {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> ...`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Runs a command inside the namespace (`ip netns exec`).
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .with_context(|| format!("failed to run {program} in netns {}", self.name))
    }

    /// Runs `f` on a new thread that has entered this namespace, so that
    /// interface names and netlink calls resolve inside it. Other threads are
    /// unaffected.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file =
                        File::open(&path).with_context(|| format!("failed to open {path}"))?;
                    setns(&file, CloneFlags::CLONE_NEWNET)
                        .with_context(|| format!("failed to enter netns {}", self.name))?;
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("warning: failed to delete netns {}: {e:#}", self.name);
        }
    }
}

/// Two namespaces joined by a veth pair with addresses from a /30: `a` holds
/// `a_if` with `a_addr`, `b` holds `b_if` with `b_addr`.
#[derive(Debug)]
pub struct VethPair {
    /// First namespace.
    pub a: NetNs,
    /// Second namespace.
    pub b: NetNs,
    /// Interface name in `a`.
    pub a_if: String,
    /// Interface name in `b`.
    pub b_if: String,
    /// Address of `a_if` (no prefix length).
    pub a_addr: String,
    /// Address of `b_if` (no prefix length).
    pub b_addr: String,
}

impl VethPair {
    /// Creates both namespaces and the pair. `subnet` is the first three
    /// octets of a /30 network used only inside these namespaces, e.g.
    /// `"10.201.7"` gives `.1` and `.2`.
    pub fn create(subnet: &str) -> Result<Self> {
        let base = unique_name("cx");
        let a = NetNs::create(&format!("{base}a"))?;
        let b = NetNs::create(&format!("{base}b"))?;
        let (a_if, b_if) = ("veth-a".to_owned(), "veth-b".to_owned());
        a.ip(&[
            "link",
            "add",
            &a_if,
            "type",
            "veth",
            "peer",
            "name",
            &b_if,
            "netns",
            b.name(),
        ])?;
        let (a_addr, b_addr) = (format!("{subnet}.1"), format!("{subnet}.2"));
        a.ip(&["addr", "add", &format!("{a_addr}/30"), "dev", &a_if])?;
        b.ip(&["addr", "add", &format!("{b_addr}/30"), "dev", &b_if])?;
        a.ip(&["link", "set", &a_if, "up"])?;
        b.ip(&["link", "set", &b_if, "up"])?;
        Ok(VethPair {
            a,
            b,
            a_if,
            b_if,
            a_addr,
            b_addr,
        })
    }
}

/// Runs `ip` with `args`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("failed to run ip")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A "node" namespace that routes between hosts, each in its own namespace
/// joined to the node by a veth pair on `10.<net>.<i>.0/30` (host `.2`, node
/// `.1`). Hosts have a default route via the node and nothing else, so any
/// packet they send stays inside the topology.
#[derive(Debug)]
pub struct RoutedTopology {
    /// Hosts, in creation order.
    pub hosts: Vec<Host>,
    /// The router, where the dataplane under test runs.
    pub node: NetNs,
}

/// One host of a [`RoutedTopology`].
#[derive(Debug)]
pub struct Host {
    /// Its namespace (holds `eth0`).
    pub ns: NetNs,
    /// Its address.
    pub addr: std::net::Ipv4Addr,
    /// The node-side interface of its link.
    pub node_if: String,
}

impl RoutedTopology {
    /// Creates a node and `hosts` hosts on `10.<net>.<i>.0/30`.
    pub fn create(net: u8, hosts: usize) -> Result<Self> {
        let base = unique_name("cx");
        let node = NetNs::create(&format!("{base}n"))?;
        node.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        let mut out = Vec::new();
        for i in 0..hosts {
            let ns = NetNs::create(&format!("{base}h{i}"))?;
            let node_if = format!("h{i}");
            node.ip(&[
                "link",
                "add",
                &node_if,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ])?;
            node.ip(&[
                "addr",
                "add",
                &format!("10.{net}.{i}.1/30"),
                "dev",
                &node_if,
            ])?;
            node.ip(&["link", "set", &node_if, "up"])?;
            ns.ip(&["addr", "add", &format!("10.{net}.{i}.2/30"), "dev", "eth0"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
            ns.ip(&["route", "add", "default", "via", &format!("10.{net}.{i}.1")])?;
            out.push(Host {
                ns,
                addr: std::net::Ipv4Addr::new(10, net, i as u8, 2),
                node_if,
            });
        }
        // Hosts drop before the node: deleting the node first would leave the
        // host namespaces briefly without their peer, which is harmless but
        // noisier.
        Ok(RoutedTopology { hosts: out, node })
    }
}

/// A unique bpffs directory for a test's pinned maps, removed on drop.
#[derive(Debug)]
pub struct PinDir {
    path: std::path::PathBuf,
}

impl PinDir {
    /// `/sys/fs/bpf/<unique>`; the loader creates it (and mounts bpffs if
    /// needed).
    pub fn new() -> Self {
        PinDir {
            path: std::path::PathBuf::from("/sys/fs/bpf").join(unique_name("coxswain-test-")),
        }
    }

    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Default for PinDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if self.path.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.path)
        {
            eprintln!("warning: failed to remove {}: {e}", self.path.display());
        }
    }
}

/// Two nodes and a client on one LAN (a bridge in a namespace of its own),
/// each node with one pod behind a routed /30, as nodes of a cluster are:
///
/// ```text
///  client 10.<net>.0.100 ──┐
///  node-a 10.<net>.0.1  ───┼── bridge (lan)      pod-a 10.<net>.1.2 ── node-a
///  node-b 10.<net>.0.2  ───┘                     pod-b 10.<net>.2.2 ── node-b
/// ```
///
/// Each node routes the other's pod network through it. The client knows
/// only the LAN, and a pod on node B answers the client directly over the
/// LAN unless its traffic was source-NATed to node A.
#[derive(Debug)]
pub struct TwoNodeLan {
    /// Pods: `[pod-a, pod-b]`.
    pub pods: [NetNs; 2],
    /// Pod addresses.
    pub pod_addrs: [std::net::Ipv4Addr; 2],
    /// Nodes: `[node-a, node-b]`; each has `uplink` on the LAN and `pod`
    /// towards its pod.
    pub nodes: [NetNs; 2],
    /// Node addresses on the LAN.
    pub node_addrs: [std::net::Ipv4Addr; 2],
    /// The client on the LAN.
    pub client: NetNs,
    /// Its address.
    pub client_addr: std::net::Ipv4Addr,
    /// Held for its Drop (deletes the bridge and the ports).
    _lan: NetNs,
}

impl TwoNodeLan {
    /// Builds the topology on `10.<net>.0.0/16`.
    pub fn create(net: u8) -> Result<Self> {
        let base = unique_name("cl");
        let lan = NetNs::create(&format!("{base}lan"))?;
        lan.ip(&["link", "add", "br0", "type", "bridge"])?;
        lan.ip(&["link", "set", "br0", "up"])?;
        let attach = |ns: &NetNs, port: &str, addr: &str| -> Result<()> {
            lan.ip(&[
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                "uplink",
                "netns",
                ns.name(),
            ])?;
            lan.ip(&["link", "set", port, "master", "br0"])?;
            lan.ip(&["link", "set", port, "up"])?;
            ns.ip(&["addr", "add", addr, "dev", "uplink"])?;
            ns.ip(&["link", "set", "uplink", "up"])?;
            Ok(())
        };
        let client = NetNs::create(&format!("{base}c"))?;
        attach(&client, "p-client", &format!("10.{net}.0.100/24"))?;
        let mut nodes = Vec::new();
        let mut pods = Vec::new();
        for i in 0..2u8 {
            let node = NetNs::create(&format!("{base}n{i}"))?;
            node.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
            node.exec("sysctl", &["-qw", "net.ipv4.conf.all.send_redirects=0"])?;
            attach(
                &node,
                &format!("p-node{i}"),
                &format!("10.{net}.0.{}/24", i + 1),
            )?;
            let pod = NetNs::create(&format!("{base}p{i}"))?;
            node.ip(&[
                "link",
                "add",
                "pod",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                pod.name(),
            ])?;
            node.ip(&[
                "addr",
                "add",
                &format!("10.{net}.{}.1/30", i + 1),
                "dev",
                "pod",
            ])?;
            node.ip(&["link", "set", "pod", "up"])?;
            pod.ip(&[
                "addr",
                "add",
                &format!("10.{net}.{}.2/30", i + 1),
                "dev",
                "eth0",
            ])?;
            pod.ip(&["link", "set", "eth0", "up"])?;
            pod.ip(&[
                "route",
                "add",
                "default",
                "via",
                &format!("10.{net}.{}.1", i + 1),
            ])?;
            nodes.push(node);
            pods.push(pod);
        }
        // Each node reaches the other's pods through it.
        nodes[0].ip(&[
            "route",
            "add",
            &format!("10.{net}.2.0/24"),
            "via",
            &format!("10.{net}.0.2"),
        ])?;
        nodes[1].ip(&[
            "route",
            "add",
            &format!("10.{net}.1.0/24"),
            "via",
            &format!("10.{net}.0.1"),
        ])?;
        let ip = |c: u8, d: u8| std::net::Ipv4Addr::new(10, net, c, d);
        let [pod_a, pod_b]: [NetNs; 2] = pods.try_into().expect("two pods");
        let [node_a, node_b]: [NetNs; 2] = nodes.try_into().expect("two nodes");
        Ok(TwoNodeLan {
            pods: [pod_a, pod_b],
            pod_addrs: [ip(1, 2), ip(2, 2)],
            nodes: [node_a, node_b],
            node_addrs: [ip(0, 1), ip(0, 2)],
            client,
            client_addr: ip(0, 100),
            _lan: lan,
        })
    }

    /// Node `i`'s address on its link to its pod (the pod's gateway,
    /// `10.<net>.<i + 1>.1`).
    pub fn pod_gateway(&self, i: usize) -> std::net::Ipv4Addr {
        let [a, b, c, _] = self.pod_addrs[i].octets();
        std::net::Ipv4Addr::new(a, b, c, 1)
    }

    /// The LAN namespace (the bridge and its ports `p-client`, `p-node0`,
    /// `p-node1`).
    pub fn lan(&self) -> &NetNs {
        &self._lan
    }

    /// Makes the client and the pods send complete checksums, as packets
    /// from other machines carry them. A local stack sending through veths
    /// leaves them partial (offloaded), the kernel remembering it in the
    /// skb, which XDP cannot see: its incremental update assumes complete
    /// checksums, as every NIC delivers.
    pub fn complete_checksums(&self) -> Result<()> {
        let ethtool = |ns: &NetNs, args: &[&str]| -> Result<()> {
            let out = ns.exec("ethtool", args)?;
            anyhow::ensure!(
                out.status.success(),
                "ethtool {args:?} in {}: {}",
                ns.name(),
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        ethtool(&self.client, &["-K", "uplink", "tx", "off"])?;
        for pod in &self.pods {
            ethtool(pod, &["-K", "eth0", "tx", "off"])?;
        }
        Ok(())
    }
}
