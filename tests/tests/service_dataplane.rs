//! Service translation in the kernel with real packets: a client namespace
//! reaches a ClusterIP through the node namespace where `service_tc` runs,
//! and three backend namespaces answer with their names.
//!
//! The maps are programmed directly through `ServiceMaps` here; the proxy's
//! sync engine is tested against the same trait.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::Context;
use coxswain_dataplane::ServiceMaps;
use coxswain_ebpf_common::{BackendV4, RevNatV4, ServiceKeyV4, ServiceValue, proto, scope};
use coxswain_tests::fixture::{
    Fixture, TIMEOUT, VIP, abort, ask, connect, connect_from, load_and_attach,
};

fn key(port: u16, protocol: u8, slot: u16) -> ServiceKeyV4 {
    ServiceKeyV4 {
        addr: u32::from(VIP).to_be(),
        port: port.to_be(),
        slot,
        proto: protocol,
        scope: scope::ALL,
        pad: [0; 2],
    }
}

/// Programs `VIP:port` with `backends` (id, backend), growing safely:
/// backends, slots, reverse NAT, then the master entry.
fn program(
    maps: &mut impl ServiceMaps,
    port: u16,
    protocol: u8,
    service_id: u32,
    backends: &[(u32, BackendV4)],
) {
    program_with(
        maps,
        port,
        protocol,
        service_id,
        backends,
        ServiceValue::default(),
    );
}

/// [`program`] with master flags and affinity timeout from `master`.
fn program_with(
    maps: &mut impl ServiceMaps,
    port: u16,
    protocol: u8,
    service_id: u32,
    backends: &[(u32, BackendV4)],
    master: ServiceValue,
) {
    for (id, b) in backends {
        maps.update_backend(
            *id,
            BackendV4 {
                proto: protocol,
                ..*b
            },
        )
        .unwrap();
    }
    for (slot, (id, _)) in backends.iter().enumerate() {
        let value = ServiceValue {
            backend_id: *id,
            service_id,
            ..Default::default()
        };
        maps.update_service(key(port, protocol, slot as u16 + 1), value)
            .unwrap();
    }
    let rev = RevNatV4 {
        addr: u32::from(VIP).to_be(),
        port: port.to_be(),
        pad: 0,
    };
    maps.update_rev_nat(service_id, rev).unwrap();
    let master = ServiceValue {
        count: backends.len() as u16,
        service_id,
        ..master
    };
    maps.update_service(key(port, protocol, 0), master).unwrap();
}

#[test]
fn clusterip_tcp_spreads_connections_over_every_backend() {
    let mut fx = Fixture::new(203);
    let backends: Vec<_> = (1..=3).map(|i| (i as u32, fx.backend(i))).collect();
    program(fx.dataplane.service_maps(), 80, proto::TCP, 1, &backends);

    let mut seen = BTreeMap::<String, usize>::new();
    for i in 0..60 {
        let mut stream =
            connect(fx.client(), 80).unwrap_or_else(|e| panic!("connection {i}: {e:#}"));
        let name = ask(&mut stream, "hello").unwrap_or_else(|e| panic!("connection {i}: {e:#}"));
        *seen.entry(name).or_default() += 1;
    }
    // Random choice among 3: each is missed by 60 connections with
    // probability (2/3)^60 < 1e-10.
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        ["b1", "b2", "b3"],
        "spread: {seen:?}"
    );
}

#[test]
fn clusterip_udp_replies_come_from_the_service_address() {
    let mut fx = Fixture::new(204);
    let backends: Vec<_> = (1..=3).map(|i| (i as u32, fx.backend(i))).collect();
    program(fx.dataplane.service_maps(), 53, proto::UDP, 7, &backends);

    let replies = fx
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
        .expect("udp exchange");
    let mut names = std::collections::BTreeSet::new();
    for (i, (from, reply)) in replies.iter().enumerate() {
        assert_eq!(
            *from,
            SocketAddr::from((VIP, 53)),
            "reply {i} not reverse-translated"
        );
        let (name, echoed) = reply.split_once(':').expect("named reply");
        assert_eq!(echoed, format!("q{i}"));
        names.insert(name.to_owned());
    }
    assert_eq!(
        names.len(),
        3,
        "30 UDP flows should reach all 3 backends: {names:?}"
    );
}

#[test]
fn established_flow_survives_endpoint_removal_and_agent_restart() {
    let mut fx = Fixture::new(205);
    let backends: Vec<_> = (1..=3).map(|i| (i as u32, fx.backend(i))).collect();
    program(fx.dataplane.service_maps(), 80, proto::TCP, 1, &backends);

    let mut stream = connect(fx.client(), 80).expect("connect");
    let first = ask(&mut stream, "one").expect("first request");
    let chosen: usize = first.trim_start_matches('b').parse().expect("backend name");

    // The chosen endpoint leaves the Service: shrink (master first), then
    // drop its slot and backend entry, as the sync engine does.
    let remaining: Vec<_> = backends
        .iter()
        .copied()
        .filter(|(id, _)| *id != chosen as u32)
        .collect();
    {
        let maps = fx.dataplane.service_maps();
        program(maps, 80, proto::TCP, 1, &remaining);
        maps.delete_service(key(80, proto::TCP, 3)).unwrap();
        maps.delete_backend(chosen as u32).unwrap();
    }
    assert_eq!(
        ask(&mut stream, "two").expect("after endpoint removal"),
        first,
        "established flow moved"
    );
    for i in 0..10 {
        let mut other = connect(fx.client(), 80).expect("new connection");
        let name = ask(&mut other, "new").expect("new connection request");
        assert_ne!(
            name, first,
            "new connection {i} reached the removed endpoint"
        );
    }

    // Restart: the agent's programs go away and a new instance loads with
    // the same pin directory. The pinned conntrack keeps the flow.
    let Fixture {
        dataplane,
        topo,
        pins,
        servers: _servers,
    } = fx;
    drop(dataplane);
    let _dataplane = load_and_attach(&topo, &pins).expect("reload");
    assert_eq!(
        ask(&mut stream, "three").expect("after restart"),
        first,
        "flow lost across restart"
    );
    drop(stream);
}

#[test]
fn service_without_endpoints_refuses_at_once() {
    let mut fx = Fixture::new(206);
    program(fx.dataplane.service_maps(), 80, proto::TCP, 1, &[]);
    program(fx.dataplane.service_maps(), 53, proto::UDP, 2, &[]);

    let (tcp, udp) = fx
        .client()
        .run_in(|| {
            let start = std::time::Instant::now();
            let tcp = TcpStream::connect_timeout(&SocketAddr::from((VIP, 80)), TIMEOUT)
                .map(|_| ())
                .map_err(|e| (e.kind(), start.elapsed()));
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.connect(SocketAddrV4::new(VIP, 53))?;
            socket.set_read_timeout(Some(TIMEOUT))?;
            socket.send(b"anyone?")?;
            let start = std::time::Instant::now();
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
            "{what}: {kind:?} after {elapsed:?}"
        );
        // Refused by the first packet's answer, not by a retransmission.
        assert!(
            elapsed < Duration::from_millis(900),
            "{what} refused only after {elapsed:?}"
        );
    }

    // The same Service with an endpoint answers again.
    let backend = fx.backend(1);
    program(
        fx.dataplane.service_maps(),
        80,
        proto::TCP,
        1,
        &[(1, backend)],
    );
    let mut stream = connect(fx.client(), 80).expect("connect after endpoint appears");
    assert_eq!(ask(&mut stream, "hi").expect("request"), "b1");
}

/// A cgroup v2 directory for one test, removed on drop.
struct TestCgroup(std::path::PathBuf);

impl TestCgroup {
    fn new() -> Self {
        let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(std::path::Path::new)
            .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.subtree_control").exists())
            .expect("a cgroup v2 hierarchy");
        let dir = root.join(coxswain_tests::netns::unique_name("coxswain-test-"));
        std::fs::create_dir(&dir).expect("create test cgroup");
        TestCgroup(dir)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Runs a Python snippet as a process of the node (its netns) inside
/// `cgroup`. `nsenter` rather than `ip netns exec`, which would remount
/// /sys and hide the cgroup hierarchy.
fn node_python(fx: &Fixture, cgroup: &TestCgroup, code: &str) -> String {
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec python3 -c \"$0\"",
        cgroup.0.display()
    );
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", fx.topo.node.name()))
        .args(["sh", "-c", &script, code])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn host_sockets_reach_services_through_socket_load_balancing() {
    let mut fx = Fixture::new(207);
    let backends: Vec<_> = (1..=3).map(|i| (i as u32, fx.backend(i))).collect();
    program(fx.dataplane.service_maps(), 80, proto::TCP, 1, &backends);
    program(fx.dataplane.service_maps(), 53, proto::UDP, 2, &backends);
    program(fx.dataplane.service_maps(), 81, proto::TCP, 3, &[]);
    let cgroup = TestCgroup::new();
    // Attached from the node's network namespace, as the agent runs there:
    // only sockets of that namespace are balanced.
    let dataplane = &mut fx.dataplane;
    fx.topo
        .node
        .run_in(|| dataplane.attach_socket_lb(&cgroup.0).map_err(Into::into))
        .expect("attach socket lb");

    // TCP: every connection lands on a backend; the peer name stays the
    // Service address.
    let tcp = node_python(
        &fx,
        &cgroup,
        r#"
import socket
names = set()
for i in range(30):
    s = socket.create_connection(('10.96.0.10', 80), 2)
    s.sendall(b'x')
    names.add(s.recv(64).decode().split(':')[0])
    assert s.getpeername() == ('10.96.0.10', 80), s.getpeername()
    s.close()
print(','.join(sorted(names)))
"#,
    );
    assert_eq!(tcp, "b1,b2,b3");

    // Unconnected UDP: replies appear to come from the Service.
    let udp = node_python(
        &fx,
        &cgroup,
        r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(b'q', ('10.96.0.10', 53))
data, peer = s.recvfrom(64)
print(peer[0], peer[1], data.decode().split(':')[1])
"#,
    );
    assert_eq!(udp, "10.96.0.10 53 q");

    // No endpoints: refused by connect() itself.
    let refused = node_python(
        &fx,
        &cgroup,
        r#"
import socket
try:
    socket.create_connection(('10.96.0.10', 81), 2)
    print('connected')
except ConnectionRefusedError:
    print('refused')
"#,
    );
    assert_eq!(refused, "refused");

    // Detached: the same connect is no longer translated, and since the
    // node has no route for the ClusterIP it fails locally.
    fx.dataplane.detach_socket_lb(&cgroup.0).expect("detach");
    let after = node_python(
        &fx,
        &cgroup,
        r#"
import socket
try:
    socket.create_connection(('10.96.0.10', 80), 1)
    print('connected')
except OSError as e:
    print('failed')
"#,
    );
    assert_eq!(after, "failed");
}

#[test]
fn client_ip_affinity_keeps_a_client_on_one_backend() {
    let mut fx = Fixture::new(211);
    let backends: Vec<_> = (1..=3).map(|i| (i as u32, fx.backend(i))).collect();
    let sticky = ServiceValue {
        flags: coxswain_ebpf_common::service_flags::AFFINITY,
        affinity_timeout_s: 10_800,
        ..Default::default()
    };
    program_with(
        fx.dataplane.service_maps(),
        80,
        proto::TCP,
        1,
        &backends,
        sticky,
    );
    let mut seen = BTreeMap::<String, usize>::new();
    for i in 0..30 {
        let mut stream =
            connect(fx.client(), 80).unwrap_or_else(|e| panic!("connection {i}: {e:#}"));
        *seen
            .entry(ask(&mut stream, "hi").expect("request"))
            .or_default() += 1;
    }
    assert_eq!(
        seen.len(),
        1,
        "30 connections of one client spread despite affinity: {seen:?}"
    );
}

#[test]
fn hairpin_a_pod_reaches_itself_through_its_service() {
    let mut fx = Fixture::new(212);
    // The Service's only endpoint is backend b1, and b1 is also the client.
    let b1 = fx.backend(1);
    program(fx.dataplane.service_maps(), 80, proto::TCP, 1, &[(1, b1)]);
    let (name, seen_as) = fx.topo.hosts[1]
        .ns
        .run_in(|| {
            let mut stream = TcpStream::connect_timeout(&SocketAddr::from((VIP, 80)), TIMEOUT)?;
            stream.set_read_timeout(Some(TIMEOUT))?;
            let name = ask(&mut stream, "self")?;
            std::io::Write::write_all(&mut stream, coxswain_tests::servers::WHOAMI)?;
            let mut buf = [0u8; 64];
            let n = std::io::Read::read(&mut stream, &mut buf)?;
            Ok((name, String::from_utf8_lossy(&buf[..n]).into_owned()))
        })
        .expect("hairpin connection");
    assert_eq!(name, "b1");
    // The pod saw the Service address as its peer, not itself.
    assert_eq!(seen_as, format!("b1:{VIP}"));
}

/// Waits until the kernel marked the flow from client port `port` closing. `abort` returns
/// once the RST is queued; the node's softirq may handle it after a SYN the client sends
/// next from another CPU, and the test is about what happens after the close.
fn wait_closing(fx: &Fixture, port: u16) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    while std::time::Instant::now() < deadline {
        let entries = fx.dataplane.conntrack(10_000).expect("read conntrack");
        if entries.iter().any(|(k, v)| {
            k.dir == coxswain_ebpf_common::ct_dir::FORWARD
                && k.sport == port.to_be()
                && v.flags & coxswain_ebpf_common::ct_flags::CLOSING != 0
        }) {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("the flow from port {port} was never marked closing");
}

#[test]
fn closed_connections_are_collected_and_a_reused_port_is_balanced_afresh() {
    let mut fx = Fixture::new(215);
    let backends: Vec<_> = (1..=3).map(|i| (i as u32, fx.backend(i))).collect();
    program(fx.dataplane.service_maps(), 80, proto::TCP, 1, &backends);

    let (mut open, open_name) = connect_from(&fx, 40100).expect("open connection");
    let (closed, first) = connect_from(&fx, 40123).expect("first connection");
    abort(closed);
    wait_closing(&fx, 40123);

    // The backend of the closed connection leaves the Service but keeps running.
    let chosen: u32 = first.trim_start_matches('b').parse().expect("backend name");
    let remaining: Vec<_> = backends.iter().copied().filter(|(id, _)| *id != chosen).collect();
    {
        let maps = fx.dataplane.service_maps();
        program(maps, 80, proto::TCP, 1, &remaining);
        maps.delete_service(key(80, proto::TCP, 3)).unwrap();
        maps.delete_backend(chosen).unwrap();
    }
    // The client reuses its port: a new connection, balanced over the current backends
    // rather than sent after the old connection's backend.
    for i in 0..5 {
        let (again, name) = connect_from(&fx, 40123).expect("reconnect from the same port");
        assert_ne!(name, first, "round {i}: a reused port followed the closed connection");
        abort(again);
        wait_closing(&fx, 40123);
    }
    let entries = fx.dataplane.conntrack(10_000).expect("read conntrack");
    // Each reuse replaced the closed flow's entries: one reply entry for port 40123 left.
    let replies_to_reused_port = entries
        .iter()
        .filter(|(k, _)| k.dir == coxswain_ebpf_common::ct_dir::REPLY && k.dport == 40123u16.to_be())
        .count();
    assert_eq!(replies_to_reused_port, 1, "stale entries of replaced flows: {entries:?}");

    // Eleven seconds later (as the collector sees it), the closed flow is gone and the open
    // connection is untouched and still answers from its backend.
    let later = coxswain_dataplane::monotonic_now_ns() + 11_000_000_000;
    let stats = fx.dataplane.conntrack_gc(later).expect("collect");
    assert_eq!(stats.expired_flows, 1, "{stats:?}");
    assert_eq!(stats.deleted, 2, "{stats:?}");
    let left = fx.dataplane.conntrack(10_000).expect("read conntrack");
    assert_eq!(left.len(), 2, "only the open connection's entries remain: {left:?}");
    assert!(left.iter().all(|(k, _)| k.sport == 40100u16.to_be() || k.dport == 40100u16.to_be()));
    assert_eq!(ask(&mut open, "still").expect("open connection after GC"), open_name);

    // Seven hours of silence expire even an open connection.
    let much_later = coxswain_dataplane::monotonic_now_ns() + 7 * 3600 * 1_000_000_000;
    let stats = fx.dataplane.conntrack_gc(much_later).expect("collect");
    assert_eq!((stats.expired_flows, stats.deleted), (1, 2), "{stats:?}");
}

#[test]
fn a_backend_at_the_nodes_own_address_answers_as_the_service() {
    // The API server behind `kubernetes` (or any host-network endpoint) listens on the node
    // itself: its replies leave the host stack towards the pod without entering any tc
    // ingress, and must still come from the Service address.
    let mut fx = Fixture::new(214);
    let node_addr = std::net::Ipv4Addr::new(10, 214, 1, 1);
    let _node_server = coxswain_tests::servers::NameServer::start(&fx.topo.node, "node", 6443).expect("a server on the node");
    let client_if = fx.topo.hosts[0].node_if.clone();
    fx.topo
        .node
        .run_in(|| Ok(fx.dataplane.attach_pod_tc(&client_if)?))
        .expect("attach to the client's interface as to a pod's");
    fx.dataplane.set_snat_address(Some(node_addr)).unwrap();
    let backend = BackendV4 {
        addr: u32::from(node_addr).to_be(),
        port: 6443u16.to_be(),
        proto: 0,
        flags: 0,
    };
    program(fx.dataplane.service_maps(), 443, proto::TCP, 3, &[(3, backend)]);
    for i in 0..5 {
        let mut stream = connect(fx.client(), 443).unwrap_or_else(|e| panic!("connection {i}: {e:#}"));
        assert_eq!(stream.peer_addr().unwrap(), SocketAddr::from((VIP, 443)));
        assert_eq!(ask(&mut stream, "hello").unwrap_or_else(|e| panic!("connection {i}: {e:#}")), "node");
    }
}
