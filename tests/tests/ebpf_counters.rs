//! The first proof of the eBPF chain: the counter programs built by
//! `cargo xtask build-ebpf`, loaded and attached by the node agent's
//! dataplane crate, count real packets crossing a veth pair.

use coxswain_dataplane::{Dataplane, Hook, LoadOptions, TcDirection, XdpMode, locate_object};
use coxswain_tests::{
    netns::{PinDir, VethPair},
    require_root,
};

const PINGS: u64 = 5;
/// An ICMP echo of ping's default 56-byte payload: 14 (Ethernet) + 20 (IPv4)
/// + 8 (ICMP) + 56.
const ECHO_FRAME_BYTES: u64 = 98;

#[test]
fn tc_and_xdp_count_real_packets_and_detach_on_drop() {
    require_root();
    let object = locate_object(None).expect("eBPF object (run `cargo xtask build-ebpf`)");
    let topo = VethPair::create("10.201.7").expect("create veth topology");
    let pins = PinDir::new();

    let (ifindex, counters) = topo
        .b
        .run_in(|| {
            let ifindex = nix::net::if_::if_nametoindex(topo.b_if.as_str())?;
            let mut dataplane = Dataplane::load_file_with(
                &object,
                &LoadOptions {
                    pin_dir: pins.path().to_owned(),
                },
            )?;
            dataplane.attach_tc(&topo.b_if, TcDirection::Ingress)?;
            dataplane.attach_tc(&topo.b_if, TcDirection::Egress)?;
            dataplane.attach_xdp(&topo.b_if, XdpMode::Driver)?;

            let ping = topo.a.exec(
                "ping",
                &[
                    "-c",
                    &PINGS.to_string(),
                    "-i",
                    "0.05",
                    "-W",
                    "2",
                    &topo.b_addr,
                ],
            )?;
            anyhow::ensure!(
                ping.status.success(),
                "ping across the veth failed: {}",
                String::from_utf8_lossy(&ping.stdout)
            );
            Ok((ifindex, dataplane.iface_counters()?))
        })
        .expect("attach programs and send packets");

    let get = |hook| counters.get(&(ifindex, hook)).copied().unwrap_or_default();
    let (xdp, ingress, egress) = (get(Hook::Xdp), get(Hook::TcIngress), get(Hook::TcEgress));
    // Echo requests (and ARP) arrive through XDP and then tc ingress; the
    // replies leave through tc egress.
    for (hook, c) in [("xdp", xdp), ("tc ingress", ingress), ("tc egress", egress)] {
        assert!(
            c.packets >= PINGS,
            "{hook} counted {} packets, expected at least {PINGS}",
            c.packets
        );
        assert!(
            c.bytes >= PINGS * ECHO_FRAME_BYTES,
            "{hook} counted {} bytes for {} packets",
            c.bytes,
            c.packets
        );
    }
    // Nothing else was counted: only the interface we attached to.
    assert!(
        counters.keys().all(|(i, _)| *i == ifindex),
        "unexpected interfaces: {counters:?}"
    );

    // The Dataplane was dropped at the end of the closure: the links are gone.
    let link = topo
        .b
        .ip(&["-d", "link", "show", &topo.b_if])
        .expect("show link");
    assert!(
        !link.contains("prog/xdp"),
        "xdp still attached after drop:\n{link}"
    );
    let tc = topo
        .b
        .exec("bpftool", &["net", "show", "dev", &topo.b_if])
        .expect("bpftool");
    let tc = String::from_utf8_lossy(&tc.stdout);
    assert!(
        !tc.contains("count_tc"),
        "tc programs still attached after drop:\n{tc}"
    );
}

#[test]
fn missing_interface_is_a_clear_error() {
    require_root();
    let object = locate_object(None).expect("eBPF object (run `cargo xtask build-ebpf`)");
    let topo = VethPair::create("10.201.8").expect("create veth topology");
    let pins = PinDir::new();
    let err = topo
        .b
        .run_in(|| {
            let mut dataplane = Dataplane::load_file_with(
                &object,
                &LoadOptions {
                    pin_dir: pins.path().to_owned(),
                },
            )?;
            Ok(dataplane
                .attach_tc("no-such-if0", TcDirection::Ingress)
                .unwrap_err())
        })
        .expect("load");
    let msg = err.to_string();
    assert!(
        msg.contains("no-such-if0") && msg.contains("count_tc_ingress"),
        "unclear error: {msg}"
    );
}
