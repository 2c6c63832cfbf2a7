//! The real node agent binary serves what the kernel holds, and `coxctl
//! dataplane` shows it: Services with backends, per-backend traffic, flows.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use coxswain_agent_api::{ConntrackEntry, ServiceEntry};
use coxswain_dataplane::ServiceMaps;
use coxswain_ebpf_common::{RevNatV4, ServiceKeyV4, ServiceValue, proto, scope};
use coxswain_tests::{
    fixture::{Fixture, VIP, ask, connect},
    workspace_bin,
};

/// The agent process, killed on drop.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn coxctl(fx: &Fixture, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", fx.topo.node.name()])
        .arg(workspace_bin("coxctl"))
        .args(args)
        .output()
        .expect("run coxctl");
    assert!(
        out.status.success(),
        "coxctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn coxctl_shows_services_backends_traffic_and_flows() {
    let mut fx = Fixture::new(213);
    // Program a Service with three backends through the pinned maps.
    {
        let backends: Vec<_> = (1..=3).map(|i| fx.backend(i)).collect();
        let maps = fx.dataplane.service_maps();
        for i in 1..=3u32 {
            let b = coxswain_ebpf_common::BackendV4 {
                proto: proto::TCP,
                ..backends[i as usize - 1]
            };
            maps.update_backend(i, b).unwrap();
            let key = ServiceKeyV4 {
                addr: u32::from(VIP).to_be(),
                port: 80u16.to_be(),
                slot: i as u16,
                proto: proto::TCP,
                scope: scope::ALL,
                pad: [0; 2],
            };
            maps.update_service(
                key,
                ServiceValue {
                    backend_id: i,
                    service_id: 1,
                    ..Default::default()
                },
            )
            .unwrap();
        }
        maps.update_rev_nat(
            1,
            RevNatV4 {
                addr: u32::from(VIP).to_be(),
                port: 80u16.to_be(),
                pad: 0,
            },
        )
        .unwrap();
        let master = ServiceKeyV4 {
            addr: u32::from(VIP).to_be(),
            port: 80u16.to_be(),
            slot: 0,
            proto: proto::TCP,
            scope: scope::ALL,
            pad: [0; 2],
        };
        maps.update_service(
            master,
            ServiceValue {
                count: 3,
                service_id: 1,
                ..Default::default()
            },
        )
        .unwrap();
    }
    // The real agent, on the same pinned maps, in the node's namespace
    // (`nsenter`: `ip netns exec` would remount /sys and hide the bpffs
    // holding the pins).
    let agent = Agent(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", fx.topo.node.name()))
            .arg(workspace_bin("coxswain-node-agent"))
            .args(["--service-iface", "h0", "--pin-dir"])
            .arg(fx.pins.path())
            .args(["--metrics-addr", "127.0.0.1:10249"])
            .env(
                "COXSWAIN_EBPF_OBJECT",
                coxswain_dataplane::locate_object(None).unwrap(),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the node agent"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("ip")
            .args(["netns", "exec", fx.topo.node.name()])
            .arg(workspace_bin("coxctl"))
            .args(["dataplane", "services", "-o", "json"])
            .output()
            .expect("run coxctl");
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not answer: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    for _ in 0..12 {
        let mut stream = connect(fx.client(), 80).expect("connect through the Service");
        ask(&mut stream, "hello").expect("request");
    }
    let services: Vec<ServiceEntry> =
        serde_json::from_str(&coxctl(&fx, &["dataplane", "services", "-o", "json"])).expect("json");
    assert_eq!(services.len(), 1, "{services:?}");
    let svc = &services[0];
    assert_eq!(
        (svc.addr.as_str(), svc.port, svc.protocol.as_str()),
        ("10.96.0.10", 80, "TCP")
    );
    assert_eq!(svc.backends.len(), 3);
    // 12 connections, each at least SYN, request and FIN both ways.
    assert!(
        svc.traffic.packets >= 12 * 6,
        "service traffic {:?}",
        svc.traffic
    );
    let per_backend: u64 = svc.backends.iter().map(|b| b.traffic.packets).sum();
    assert_eq!(
        per_backend, svc.traffic.packets,
        "backend traffic does not add up to the service's"
    );

    let flows: Vec<ConntrackEntry> =
        serde_json::from_str(&coxctl(&fx, &["dataplane", "conntrack", "-o", "json"]))
            .expect("json");
    let forward = flows.iter().filter(|f| f.direction == "forward").count();
    assert!(
        forward >= 12,
        "expected the 12 flows' forward entries: {flows:?}"
    );
    assert!(
        flows
            .iter()
            .all(|f| f.destination != "10.96.0.10:80" || f.direction == "forward")
    );

    // The human tables name what they show.
    let table = coxctl(&fx, &["dataplane", "services"]);
    assert!(
        table.contains("10.96.0.10:80/TCP") && table.lines().count() == 2,
        "{table}"
    );
    let stats = coxctl(&fx, &["dataplane", "stats"]);
    assert!(stats.contains("PACKETS"), "{stats}");
    drop(agent);
}
