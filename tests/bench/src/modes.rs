//! Programming each mode's node from Kubernetes objects: the sync engine
//! (`ProxyState`) for all of them, writing the kernel maps for eBPF, and
//! in memory for the kube-proxy baselines, whose wanted state is rendered
//! by `coxswain_proxy::iptables` / `nftables` and loaded with
//! `iptables-restore` / `nft -f`.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use coxswain_dataplane::{Dataplane, LoadOptions, MemoryServiceMaps, ServiceMaps};
use coxswain_proxy::{
    NodeInfo, ProxyState,
    iptables::{self, IptablesOptions, IptablesRuleset},
    nftables::{self, NftOptions},
};
use coxswain_tests::{
    baseline,
    netns::{NetNs, PinDir},
};

use crate::{
    client::Targets,
    objects::{NAMESPACE, service, service_name, slice},
    topology::{
        ENDPOINTS, Mode, NODE_BACKEND_IF, NODE_CLIENT_IF, SERVICE_PORT, TARGET_PORT, endpoint,
    },
};

/// Shapes of the baselines: the node owns its tables (whole-table restores,
/// no `--noflush`), and no hairpin masquerading, so that a Service with 10
/// endpoints is the 21 iptables rules of the measured baselines. Both
/// choices make iptables faster, not slower. No cluster CIDR (kube-proxy's
/// default): the bench's ClusterIPs would get one masquerading rule more,
/// and it has no `externalTrafficPolicy: Local` Service to tell pods apart
/// for.
pub const IPTABLES: IptablesOptions = IptablesOptions {
    masquerade_hairpin: false,
    shared_tables: false,
    cluster_cidr: None,
};
/// As [`IPTABLES`], for nftables.
pub const NFTABLES: NftOptions = NftOptions {
    masquerade_hairpin: false,
    cluster_cidr: None,
};

fn node_info() -> NodeInfo {
    NodeInfo {
        name: "bench-node".into(),
        addresses: vec![],
    }
}

/// What programming all Services cost.
#[derive(Clone, Copy, Debug, Default)]
pub struct Programmed {
    /// From the objects in memory to the packet path following them.
    pub elapsed: Duration,
    /// iptables rules, nft script lines, or map operations.
    pub size: usize,
}

/// One mode's node and its proxy.
pub struct ModeNode {
    /// The mode.
    pub mode: Mode,
    proxy: ProxyState,
    memory: MemoryServiceMaps,
    iptables: Option<IptablesRuleset>,
    /// The loaded service program (eBPF mode).
    dataplane: Option<Dataplane>,
    /// Services programmed.
    pub services: usize,
}

impl std::fmt::Debug for ModeNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModeNode")
            .field("mode", &self.mode)
            .field("services", &self.services)
            .finish_non_exhaustive()
    }
}

impl ModeNode {
    /// The node of `mode`; for eBPF, loads `object` with maps pinned in
    /// `pins` and attaches `service_tc` to both of the node's interfaces.
    pub fn new(mode: Mode, ns: &NetNs, object: &Path, pins: &PinDir) -> Result<Self> {
        let dataplane = match mode {
            Mode::Ebpf => Some(ns.run_in(|| {
                let mut dataplane = Dataplane::load_file_with(
                    object,
                    &LoadOptions {
                        pin_dir: pins.path().to_owned(),
                    },
                )?;
                for iface in [NODE_CLIENT_IF, NODE_BACKEND_IF] {
                    dataplane
                        .attach_service_tc(iface)
                        .with_context(|| format!("attach service_tc to {iface}"))?;
                }
                Ok(dataplane)
            })?),
            _ => None,
        };
        Ok(ModeNode {
            mode,
            proxy: ProxyState::new(node_info()),
            memory: MemoryServiceMaps::default(),
            iptables: None,
            dataplane,
            services: 0,
        })
    }

    /// Removes every Service (untimed), then programs `n` from scratch:
    /// the engine is fed the objects and converges, then (iptables,
    /// nftables) its wanted state is rendered and loaded in one command,
    /// killed after `limit` (the error is then a
    /// [`baseline::TimedOut`]).
    pub fn program(&mut self, ns: &NetNs, n: usize, limit: Duration) -> Result<Programmed> {
        // Untimed: back to nothing.
        match self.mode {
            Mode::Direct => {
                self.services = n;
                return Ok(Programmed::default());
            }
            Mode::Ebpf => {
                let maps = self.kernel_maps();
                let mut cleaner = ProxyState::new(node_info());
                cleaner.adopt(maps.dump()?)?;
                cleaner.full_resync(maps)?;
                anyhow::ensure!(
                    maps.dump()?.services.is_empty(),
                    "eBPF service map not empty after cleaning"
                );
            }
            Mode::Iptables | Mode::Nftables => baseline::reset_netfilter(ns)?,
        }
        let services: Vec<_> = (0..n).map(|i| service(self.mode, i)).collect();
        let endpoints: Vec<Ipv4Addr> = (1..=ENDPOINTS).map(endpoint).collect();
        let slices: Vec<_> = (0..n).map(|i| slice(i, &endpoints)).collect();

        let start = Instant::now();
        let mut proxy = ProxyState::new(node_info());
        let size = match self.mode {
            Mode::Direct => unreachable!("returned above"),
            Mode::Ebpf => {
                let maps = self.kernel_maps();
                for s in &services {
                    proxy.upsert_service(maps, s)?;
                }
                for s in &slices {
                    proxy.upsert_endpoint_slice(maps, s)?;
                }
                proxy.full_resync(maps)?.ops
            }
            Mode::Iptables | Mode::Nftables => {
                self.memory = MemoryServiceMaps::default();
                for s in &services {
                    proxy.upsert_service(&mut self.memory, s)?;
                }
                for s in &slices {
                    proxy.upsert_endpoint_slice(&mut self.memory, s)?;
                }
                proxy.full_resync(&mut self.memory)?;
                let desired = proxy.desired();
                if self.mode == Mode::Iptables {
                    let rules = iptables::render(&desired, &IPTABLES, None);
                    baseline::run_with_stdin_within(
                        ns,
                        "iptables-restore",
                        rules.restore_args(),
                        &rules.restore,
                        Some(limit),
                    )?;
                    let size = rules.rules;
                    self.iptables = Some(rules);
                    size
                } else {
                    let script = nftables::full(&desired, &NFTABLES);
                    baseline::run_with_stdin_within(ns, "nft", &["-f", "-"], &script, Some(limit))?;
                    script.lines().count()
                }
            }
        };
        let elapsed = start.elapsed();
        self.proxy = proxy;
        self.services = n;
        Ok(Programmed { elapsed, size })
    }

    /// Moves Service `i` to the single endpoint `to`, synced as each mode's
    /// proxy syncs one change: eBPF writes the difference into the maps,
    /// iptables restores everything (kube-proxy's full sync), nftables
    /// replaces that Service's chains and elements. Returns the time the
    /// sync took (the packet path may still lag; the caller probes).
    pub fn change(&mut self, ns: &NetNs, i: usize, to: Ipv4Addr) -> Result<Duration> {
        let new_slice = slice(i, &[to]);
        let start = Instant::now();
        match self.mode {
            Mode::Direct => anyhow::bail!("direct mode has no Services to change"),
            Mode::Ebpf => {
                let maps = self
                    .dataplane
                    .as_mut()
                    .expect("eBPF mode has a dataplane")
                    .service_maps();
                self.proxy.upsert_endpoint_slice(maps, &new_slice)?;
            }
            Mode::Iptables => {
                self.proxy
                    .upsert_endpoint_slice(&mut self.memory, &new_slice)?;
                let rules =
                    iptables::render(&self.proxy.desired(), &IPTABLES, self.iptables.as_ref());
                baseline::iptables_restore(ns, rules.restore_args(), &rules.restore)?;
                self.iptables = Some(rules);
            }
            Mode::Nftables => {
                let name = service_name(i);
                let before = self.proxy.service_frontends(NAMESPACE, &name);
                self.proxy
                    .upsert_endpoint_slice(&mut self.memory, &new_slice)?;
                let after = self.proxy.service_frontends(NAMESPACE, &name);
                baseline::nft(ns, &nftables::update(&before, &after, &NFTABLES))?;
            }
        }
        Ok(start.elapsed())
    }

    /// Where clients connect for the programmed Services.
    pub fn targets(&self) -> Targets {
        let per_service = (0..self.services)
            .map(|i| match self.mode {
                Mode::Direct => (1..=ENDPOINTS)
                    .map(|e| SocketAddrV4::new(endpoint(e), TARGET_PORT))
                    .collect(),
                _ => vec![SocketAddrV4::new(self.mode.vip(i), SERVICE_PORT)],
            })
            .collect();
        Targets {
            per_service,
            sources: self.mode.sources(),
        }
    }

    fn kernel_maps(&mut self) -> &mut coxswain_dataplane::KernelServiceMaps {
        self.dataplane
            .as_mut()
            .expect("eBPF mode has a dataplane")
            .service_maps()
    }
}
