//! Pod interfaces: the Service program on the tc ingress of every port of
//! the pod bridge (`--pod-bridge`), including the ports CNI adds later.
//!
//! The program must sit on each pod's host-side veth rather than on the
//! bridge itself: a backend answering a client on the same bridge replies at
//! layer 2, and that reply never reaches the bridge device, only the
//! backend's veth. Ports are found with an rtnetlink dump (sysfs would show
//! the host's interfaces when the agent runs in another network namespace
//! entered without remounting /sys) and followed with link notifications;
//! the kubelet also asks for a sync right after a pod's sandbox gets its
//! network and before any of its containers starts, so a pod's first packet
//! to a Service is already translated.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use coxswain_dataplane::Dataplane;
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tracing::{debug, info, warn};

/// The pin name prefix of `service_tc` links (see the dataplane's
/// `attach_service_tc`).
const SERVICE_LINK_PREFIX: &str = "link_service_tc_";
/// rtnetlink multicast group of link changes.
const RTMGRP_LINK: u32 = 1;
/// Resync period when no notification arrives (lost notifications, a
/// bridge created after start).
const RESYNC: Duration = Duration::from_secs(5);

/// One interface as rtnetlink reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Link {
    index: u32,
    name: String,
    master: Option<u32>,
}

/// The Service program on every port of one bridge.
#[derive(Debug)]
pub struct PodLinks {
    bridge: String,
    /// Interfaces named on the command line: never detached here.
    explicit: BTreeSet<String>,
    dataplane: Arc<Mutex<Dataplane>>,
    /// Port name → ifindex it was attached at.
    attached: Mutex<BTreeMap<String, u32>>,
}

impl PodLinks {
    /// Follows the ports of `bridge`; `explicit` are the `--service-iface`
    /// names (their pins are not ours to remove).
    pub fn new(
        bridge: String,
        explicit: impl IntoIterator<Item = String>,
        dataplane: Arc<Mutex<Dataplane>>,
    ) -> PodLinks {
        PodLinks {
            bridge,
            explicit: explicit.into_iter().collect(),
            dataplane,
            attached: Mutex::new(BTreeMap::new()),
        }
    }

    /// Attaches to new ports, forgets ports that left (their pinned links
    /// are removed, so a later interface of the same name starts clean).
    /// Returns the number of ports attached now.
    pub fn sync(&self, pin_dir: &Path) -> Result<usize> {
        let links = dump_links().context("failed to list interfaces over rtnetlink")?;
        let bridge = links.iter().find(|l| l.name == self.bridge).map(|l| l.index);
        let ports: BTreeMap<String, u32> = links
            .iter()
            .filter(|l| bridge.is_some() && l.master == bridge && !self.explicit.contains(&l.name))
            .map(|l| (l.name.clone(), l.index))
            .collect();
        let mut attached = self.attached.lock().expect("pod links lock");
        let mut dataplane = self.dataplane.lock().expect("dataplane lock");
        for (name, index) in &ports {
            if attached.get(name) == Some(index) {
                continue;
            }
            if let Err(e) = dataplane.attach_pod_tc(name) {
                // A pinned link left by an interface of the same name that
                // is gone: drop it and attach afresh.
                debug!(iface = %name, error = %e, "retrying after removing a stale pinned link");
                dataplane.detach_service_tc(name)?;
                dataplane
                    .attach_pod_tc(name)
                    .with_context(|| format!("failed to attach the Service program to pod interface {name}"))?;
            }
            info!(iface = %name, bridge = %self.bridge, "Service program attached to pod interface");
            attached.insert(name.clone(), *index);
        }
        let gone: Vec<String> = attached
            .keys()
            .filter(|name| !ports.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            attached.remove(&name);
            dataplane.detach_service_tc(&name)?;
            debug!(iface = %name, "pod interface gone");
        }
        // Pins of ports that disappeared while no agent ran.
        let present: BTreeSet<&str> = links.iter().map(|l| l.name.as_str()).collect();
        if let Ok(entries) = std::fs::read_dir(pin_dir) {
            for entry in entries.flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                let Some(iface) = file.strip_prefix(SERVICE_LINK_PREFIX) else {
                    continue;
                };
                if !present.contains(iface) && !self.explicit.contains(iface) {
                    dataplane.detach_service_tc(iface)?;
                    debug!(iface, "removed the pinned link of a vanished interface");
                }
            }
        }
        Ok(attached.len())
    }

    /// Follows link notifications on a thread of its own, syncing on each
    /// (and every few seconds regardless). Returns at once.
    pub fn spawn(self: Arc<Self>, pin_dir: std::path::PathBuf) -> Result<()> {
        let mut socket = Socket::new(NETLINK_ROUTE).context("rtnetlink socket")?;
        socket
            .bind(&SocketAddr::new(0, RTMGRP_LINK))
            .context("failed to subscribe to link notifications")?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("pod-links-events".into())
            .spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match socket.recv(&mut &mut buf[..], 0) {
                        // A full channel already holds a pending sync.
                        Ok(_) => {
                            let _ = tx.try_send(());
                        }
                        Err(e) => {
                            warn!(error = %e, "link notifications failed; periodic sync only");
                            return;
                        }
                    }
                }
            })
            .context("spawn the link notification thread")?;
        std::thread::Builder::new()
            .name("pod-links".into())
            .spawn(move || {
                loop {
                    if let Err(e) = self.sync(&pin_dir) {
                        warn!(error = %format!("{e:#}"), bridge = %self.bridge, "pod interface sync failed");
                    }
                    match rx.recv_timeout(RESYNC) {
                        Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                            // Notifications stopped: keep the periodic sync.
                            std::thread::sleep(RESYNC);
                        }
                    }
                }
            })
            .context("spawn the pod interface thread")?;
        Ok(())
    }
}

/// Every interface of the calling thread's network namespace.
fn dump_links() -> Result<Vec<Link>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut request = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(LinkMessage::default())),
    );
    request.header.flags = NLM_F_DUMP | NLM_F_REQUEST;
    request.header.sequence_number = 1;
    request.finalize();
    let mut buf = vec![0u8; request.buffer_len()];
    request.serialize(&mut buf[..]);
    socket.send(&buf[..], 0)?;

    let mut links = Vec::new();
    let mut receive = vec![0u8; 64 * 1024];
    loop {
        let size = socket.recv(&mut &mut receive[..], 0)?;
        let mut offset = 0;
        while offset < size {
            let message: NetlinkMessage<RouteNetlinkMessage> =
                NetlinkMessage::deserialize(&receive[offset..size])
                    .map_err(|e| anyhow::anyhow!("malformed rtnetlink reply: {e}"))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::Done(_) => return Ok(links),
                NetlinkPayload::Error(e) => bail!("rtnetlink link dump failed: {e:?}"),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    let mut name = None;
                    let mut master = None;
                    for attribute in &link.attributes {
                        match attribute {
                            LinkAttribute::IfName(n) => name = Some(n.clone()),
                            LinkAttribute::Controller(m) => master = Some(*m),
                            _ => {}
                        }
                    }
                    if let Some(name) = name {
                        links.push(Link {
                            index: link.header.index,
                            name,
                            master,
                        });
                    }
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_lists_loopback() {
        let links = dump_links().expect("rtnetlink dump");
        let lo = links.iter().find(|l| l.name == "lo").expect("lo in the dump");
        assert_eq!(lo.index, 1);
        assert_eq!(lo.master, None);
    }
}
