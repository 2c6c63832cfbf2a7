//! The map entries one Service asks for: its frontends, each with the
//! ordered list of backends for its slots.
//!
//! A pure function of the Service, its EndpointSlices and the node; ids are
//! not decided here (see `programmed`).

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::net::Ipv4Addr;

use coxswain_ebpf_common::{backend_flags, service_flags};

use crate::keys::{BackendKey, FrontendKey, MasterKey, Scope};
use crate::model::{LbAlgorithm, NodeInfo, ServiceModel, ServicePortModel, SliceModel};

/// The most slots a master can count (`ServiceValue::count` is a `u16`).
const MAX_SLOTS: usize = u16::MAX as usize;

/// How a frontend address was derived from the Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrontendKind {
    /// `spec.clusterIP`.
    ClusterIp,
    /// A node address and the port's `nodePort`.
    NodePort,
    /// An `externalIPs` entry or a load-balancer ingress IP.
    External,
}

impl FrontendKind {
    /// `cluster-ip`, `node-port` or `external`.
    pub const fn as_str(self) -> &'static str {
        match self {
            FrontendKind::ClusterIp => "cluster-ip",
            FrontendKind::NodePort => "node-port",
            FrontendKind::External => "external",
        }
    }
}

/// One master entry a Service wants, with its slots in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DesiredMaster {
    pub kind: FrontendKind,
    /// The Service port's name (`""` when unnamed).
    pub port_name: String,
    /// [`service_flags`].
    pub flags: u16,
    /// With [`service_flags::AFFINITY`], else 0.
    pub affinity_timeout_s: u32,
    /// Slot `i + 1` names `backends[i]`; sorted by address and port.
    pub backends: Vec<DesiredBackend>,
}

/// A backend one slot names, with the flags this Service sees it with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DesiredBackend {
    pub key: BackendKey,
    /// [`backend_flags`].
    pub flags: u8,
}

/// One endpoint of one Service port, merged over the Service's slices.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
}

impl Candidate {
    /// Which copy of a duplicated endpoint wins: ready, then serving and
    /// terminating, then the rest.
    fn rank(&self) -> u8 {
        if self.ready {
            2
        } else if self.serving && self.terminating {
            1
        } else {
            0
        }
    }

    fn flags(&self) -> u8 {
        let mut flags = 0;
        if self.local {
            flags |= backend_flags::LOCAL;
        }
        if self.terminating {
            flags |= backend_flags::TERMINATING;
        }
        flags
    }
}

/// Every master entry `service` asks for, keyed and ordered by master key.
/// When two of its frontends share an address, port and protocol (an
/// externalIP equal to a node address, say), the first one wins.
/// `default_algorithm` applies unless the Service names its own.
pub(crate) fn desired_masters<'a>(
    service: &ServiceModel,
    slices: impl Iterator<Item = &'a SliceModel> + Clone,
    node: &NodeInfo,
    default_algorithm: LbAlgorithm,
) -> BTreeMap<MasterKey, DesiredMaster> {
    let mut masters = BTreeMap::new();
    let mut service_flags = if service.affinity_timeout_s.is_some() {
        service_flags::AFFINITY
    } else {
        0
    };
    if service.lb_algorithm.unwrap_or(default_algorithm) == LbAlgorithm::Maglev {
        service_flags |= service_flags::MAGLEV;
    }
    let affinity_timeout_s = service.affinity_timeout_s.unwrap_or(0);
    for port in &service.ports {
        let candidates = candidates(port, slices.clone(), node);
        let all = select(&candidates, false);
        let local = if service.internal_local || service.external_local {
            select(&candidates, true)
        } else {
            Vec::new()
        };
        let mut add = |addr: Ipv4Addr,
                       port_number: u16,
                       scope: Scope,
                       kind: FrontendKind,
                       flags: u16,
                       backends: &Vec<DesiredBackend>| {
            let key = MasterKey {
                frontend: FrontendKey {
                    addr,
                    port: port_number,
                    protocol: port.protocol,
                },
                scope,
            };
            if let Entry::Vacant(slot) = masters.entry(key) {
                slot.insert(DesiredMaster {
                    kind,
                    port_name: port.name.clone(),
                    flags: flags | service_flags,
                    affinity_timeout_s,
                    backends: backends.clone(),
                });
            }
        };

        let cluster_backends = if service.internal_local { &local } else { &all };
        add(
            service.cluster_ip,
            port.port,
            Scope::All,
            FrontendKind::ClusterIp,
            0,
            cluster_backends,
        );

        let node_frontends = port.node_port.into_iter().flat_map(|node_port| {
            node.addresses
                .iter()
                .map(move |&addr| (addr, node_port, FrontendKind::NodePort))
        });
        let external_frontends = service
            .external_ips
            .iter()
            .map(|&addr| (addr, port.port, FrontendKind::External));
        for (addr, port_number, kind) in node_frontends.chain(external_frontends) {
            let kind_flag = match kind {
                FrontendKind::NodePort => service_flags::NODE_PORT,
                _ => service_flags::EXTERNAL,
            };
            if service.external_local {
                // Pods on this node reach every endpoint; traffic from
                // outside (looked up in the local scope first) only the
                // local ones, keeping the client's address.
                add(addr, port_number, Scope::All, kind, kind_flag, &all);
                add(addr, port_number, Scope::Local, kind, kind_flag, &local);
            } else {
                add(
                    addr,
                    port_number,
                    Scope::All,
                    kind,
                    kind_flag | service_flags::SNAT,
                    &all,
                );
            }
        }
    }
    masters
}

/// The endpoints of `port` over every slice, deduplicated by address and
/// port, sorted.
fn candidates<'a>(
    port: &ServicePortModel,
    slices: impl Iterator<Item = &'a SliceModel>,
    node: &NodeInfo,
) -> BTreeMap<BackendKey, Candidate> {
    let mut candidates = BTreeMap::new();
    for slice in slices {
        // Ports match by name: that is how a named targetPort resolves, per
        // slice, to each pod's container port.
        let Some(slice_port) = slice
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol)
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let key = BackendKey {
                addr: endpoint.addr,
                port: slice_port.port,
                protocol: port.protocol,
            };
            let candidate = Candidate {
                ready: endpoint.ready,
                serving: endpoint.serving,
                terminating: endpoint.terminating,
                local: !node.name.is_empty()
                    && endpoint.node_name.as_deref() == Some(node.name.as_str()),
            };
            candidates
                .entry(key)
                .and_modify(|seen: &mut Candidate| {
                    if candidate.rank() > seen.rank() {
                        *seen = candidate;
                    }
                })
                .or_insert(candidate);
        }
    }
    candidates
}

/// The usable endpoints: ready ones, or when there are none, those serving
/// while terminating (so connections drain instead of being refused).
fn select(candidates: &BTreeMap<BackendKey, Candidate>, local_only: bool) -> Vec<DesiredBackend> {
    let pool = || {
        candidates
            .iter()
            .filter(move |(_, c)| !local_only || c.local)
    };
    let mut chosen: Vec<DesiredBackend> = pool()
        .filter(|(_, c)| c.ready)
        .map(|(&key, c)| DesiredBackend {
            key,
            flags: c.flags(),
        })
        .collect();
    if chosen.is_empty() {
        chosen = pool()
            .filter(|(_, c)| c.serving && c.terminating)
            .map(|(&key, c)| DesiredBackend {
                key,
                flags: c.flags(),
            })
            .collect();
    }
    if chosen.len() > MAX_SLOTS {
        tracing::warn!(
            endpoints = chosen.len(),
            max = MAX_SLOTS,
            "Service port has more endpoints than a master can count; using the first"
        );
        chosen.truncate(MAX_SLOTS);
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Protocol;
    use crate::model::{EndpointModel, SlicePortModel};

    fn master(addr: [u8; 4], port: u16, scope: Scope) -> MasterKey {
        MasterKey {
            frontend: FrontendKey {
                addr: Ipv4Addr::from(addr),
                port,
                protocol: Protocol::Tcp,
            },
            scope,
        }
    }

    fn service() -> ServiceModel {
        ServiceModel {
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
            ports: vec![ServicePortModel {
                name: "http".into(),
                port: 80,
                protocol: Protocol::Tcp,
                node_port: None,
            }],
            node_ports: false,
            external_ips: vec![],
            external_local: false,
            internal_local: false,
            affinity_timeout_s: None,
            lb_algorithm: None,
        }
    }

    fn endpoint(
        last: u8,
        node: &str,
        ready: bool,
        serving: bool,
        terminating: bool,
    ) -> EndpointModel {
        EndpointModel {
            addr: Ipv4Addr::new(10, 0, 0, last),
            ready,
            serving,
            terminating,
            node_name: Some(node.into()),
        }
    }

    fn slice(endpoints: Vec<EndpointModel>) -> SliceModel {
        SliceModel {
            service: "web".into(),
            ports: vec![SlicePortModel {
                name: "http".into(),
                port: 8080,
                protocol: Protocol::Tcp,
            }],
            endpoints,
        }
    }

    fn backends(masters: &BTreeMap<MasterKey, DesiredMaster>, key: MasterKey) -> Vec<(u8, u8)> {
        masters[&key]
            .backends
            .iter()
            .map(|b| (b.key.addr.octets()[3], b.flags))
            .collect()
    }

    /// Which endpoints a ClusterIP uses, as kube-proxy chooses them.
    #[test]
    fn endpoint_selection() {
        const T: u8 = backend_flags::TERMINATING;
        const L: u8 = backend_flags::LOCAL;
        #[allow(clippy::type_complexity, reason = "a table")]
        let table: [(&str, bool, Vec<EndpointModel>, Vec<(u8, u8)>); 6] = [
            (
                "ready only",
                false,
                vec![
                    endpoint(2, "b", true, true, false),
                    endpoint(1, "a", false, false, false),
                ],
                vec![(2, 0)],
            ),
            (
                "terminating fallback",
                false,
                vec![
                    endpoint(1, "a", false, true, true),
                    endpoint(2, "b", false, false, true),
                ],
                vec![(1, L | T)],
            ),
            (
                "no fallback when one is ready",
                false,
                vec![
                    endpoint(1, "a", false, true, true),
                    endpoint(2, "b", true, true, false),
                ],
                vec![(2, 0)],
            ),
            (
                "nothing usable",
                false,
                vec![endpoint(1, "a", false, false, false)],
                vec![],
            ),
            (
                "internal local",
                true,
                vec![
                    endpoint(1, "a", true, true, false),
                    endpoint(2, "b", true, true, false),
                ],
                vec![(1, L)],
            ),
            (
                "internal local falls back per locality",
                true,
                vec![
                    endpoint(1, "a", false, true, true),
                    endpoint(2, "b", true, true, false),
                ],
                vec![(1, L | T)],
            ),
        ];
        let node = NodeInfo {
            name: "a".into(),
            addresses: vec![],
        };
        for (name, internal_local, endpoints, want) in table {
            let svc = ServiceModel {
                internal_local,
                ..service()
            };
            let slices = [slice(endpoints)];
            let masters = desired_masters(&svc, slices.iter(), &node, LbAlgorithm::Random);
            assert_eq!(
                backends(&masters, master([10, 96, 0, 10], 80, Scope::All)),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn duplicates_across_slices_keep_the_best_copy() {
        let slices = [
            slice(vec![
                endpoint(1, "a", false, false, false),
                endpoint(3, "a", true, true, false),
            ]),
            slice(vec![
                endpoint(1, "a", true, true, false),
                endpoint(2, "a", true, true, false),
            ]),
        ];
        let masters = desired_masters(&service(), slices.iter(), &NodeInfo::default(), LbAlgorithm::Random);
        assert_eq!(
            backends(&masters, master([10, 96, 0, 10], 80, Scope::All)),
            vec![(1, 0), (2, 0), (3, 0)]
        );
    }
}
