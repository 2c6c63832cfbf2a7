//! Loading the object and attaching its programs to interfaces.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf,
    maps::PerCpuHashMap,
    programs::{SchedClassifier, TcAttachType, Xdp, XdpMode},
};
use coxswain_ebpf_common::{Counters, Hook, IfaceCounterKey, names};
use tracing::{debug, info, warn};

use crate::{Error, IfaceCounters, KernelServiceMaps, Result, sum_per_cpu};

/// Where maps are pinned unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/coxswain";

/// How to load the object.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// bpffs directory where the service and conntrack maps are pinned. A
    /// new agent loading with the same directory reuses the maps, so flows
    /// and Services survive agent restarts and upgrades.
    pub pin_dir: PathBuf,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
        }
    }
}

/// Direction of a tc attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcDirection {
    /// Packets the interface receives.
    Ingress,
    /// Packets the interface transmits.
    Egress,
}

/// The loaded eBPF object and its attachments.
///
/// Interface names resolve in the network namespace of the calling thread.
/// Dropping a `Dataplane` detaches every program it attached (tcx and XDP
/// links are owned by the process).
pub struct Dataplane {
    pub(crate) ebpf: Ebpf,
    pin_dir: PathBuf,
    service_maps: KernelServiceMaps,
    /// Kept alive for as long as the programs run: dropping the logger closes
    /// the log ring buffer, and any later program load would fail.
    log_pump: Option<LogPump>,
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane").finish_non_exhaustive()
    }
}

enum LogPump {
    /// A tokio task drains the ring buffer into `tracing` (through `log`).
    Task(tokio::task::JoinHandle<()>),
    /// No runtime at load time: keep the ring buffer open, undrained.
    Idle(
        #[allow(dead_code, reason = "held only to keep the ring buffer open")]
        Box<aya_log::EbpfLogger<&'static dyn log::Log>>,
    ),
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        if let Some(LogPump::Task(task)) = self.log_pump.take() {
            task.abort();
        }
    }
}

impl Dataplane {
    /// Reads and loads the object at `path`, pinning maps in
    /// [`DEFAULT_PIN_DIR`].
    pub fn load_file(path: &Path) -> Result<Self> {
        Self::load_file_with(path, &LoadOptions::default())
    }

    /// Reads and loads the object at `path`.
    pub fn load_file_with(path: &Path, options: &LoadOptions) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::ReadObject {
            path: path.to_owned(),
            source,
        })?;
        info!(path = %path.display(), size = bytes.len(), pin_dir = %options.pin_dir.display(), "loading eBPF object");
        Self::load(&bytes, options)
    }

    /// Loads an object from memory: creates its maps, but loads no program
    /// into the kernel until it is first attached.
    pub fn load(bytes: &[u8], options: &LoadOptions) -> Result<Self> {
        crate::bpffs::ensure_pin_dir(&options.pin_dir)?;
        // Maps an earlier version pinned and this one replaced.
        for retired in names::RETIRED {
            match std::fs::remove_file(options.pin_dir.join(retired)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    warn!(map = retired, error = %e, "failed to remove a retired pinned map");
                }
                _ => {}
            }
        }
        let mut ebpf = aya::EbpfLoader::new()
            .default_map_pin_directory(&options.pin_dir)
            .load(bytes)
            .map_err(Error::Load)?;
        let service_maps = KernelServiceMaps::take(&mut ebpf).map_err(Error::ServiceMaps)?;
        let log_pump = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(spawn_log_pump(logger)),
            Err(e) => {
                warn!(error = %e, "eBPF logging unavailable");
                None
            }
        };
        Ok(Self {
            ebpf,
            pin_dir: options.pin_dir.clone(),
            service_maps,
            log_pump,
        })
    }

    fn program<T>(&mut self, name: &'static str) -> Result<&mut T>
    where
        for<'a> &'a mut T:
            TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
        T: LoadOnce,
    {
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or(Error::MissingProgram(name))?;
        let program: &mut T = program
            .try_into()
            .map_err(|source| Error::Program { name, source })?;
        program
            .load_once()
            .map_err(|source| Error::Program { name, source })?;
        Ok(program)
    }

    /// Attaches the packet counter to `iface` on tc ingress or egress (tcx on
    /// kernels >= 6.6, a clsact qdisc before).
    pub fn attach_tc(&mut self, iface: &str, direction: TcDirection) -> Result<()> {
        let (name, attach_type) = match direction {
            TcDirection::Ingress => (names::PROG_TC_INGRESS, TcAttachType::Ingress),
            TcDirection::Egress => (names::PROG_TC_EGRESS, TcAttachType::Egress),
        };
        if !has_tcx() {
            // "exists" is harmless: another program already added the qdisc.
            if let Err(e) = aya::programs::tc::qdisc_add_clsact(iface) {
                debug!(iface, error = %e, "clsact qdisc not added");
            }
        }
        let program: &mut SchedClassifier = self.program(name)?;
        program
            .attach(iface, attach_type)
            .map_err(|source| Error::Attach {
                name,
                iface: iface.to_owned(),
                source,
            })?;
        info!(iface, program = name, ?direction, "attached tc program");
        Ok(())
    }

    /// Attaches the XDP packet counter to `iface`.
    pub fn attach_xdp(&mut self, iface: &str, mode: XdpMode) -> Result<()> {
        let name = names::PROG_XDP;
        let program: &mut Xdp = self.program(name)?;
        program
            .attach(iface, mode)
            .map_err(|source| Error::Attach {
                name,
                iface: iface.to_owned(),
                source,
            })?;
        info!(iface, program = name, ?mode, "attached xdp program");
        Ok(())
    }

    /// The service maps, to program Services.
    pub fn service_maps(&mut self) -> &mut KernelServiceMaps {
        &mut self.service_maps
    }

    /// Attaches the Service translation program to `iface` on tc ingress:
    /// every interface where client traffic or backend replies enter the
    /// node's datapath.
    ///
    /// On Linux >= 6.6 the tcx link is pinned in the pin directory, so the
    /// program keeps translating while the agent restarts; a new agent finds
    /// the pinned link and atomically swaps its own program in. Remove the
    /// pin ([`Dataplane::detach_service_tc`]) to detach.
    pub fn attach_service_tc(&mut self, iface: &str) -> Result<()> {
        self.attach_pinned_tc(names::PROG_SERVICE_TC, iface, TcAttachType::Ingress)
    }

    /// Attaches to a pod's host-side interface: the Service program on its
    /// ingress (what the pod sends) and the egress program on its egress
    /// (replies of flows the pod sent to a node address, e.g. a NodePort,
    /// take the Service address as their source after routing). Pinned
    /// like [`Dataplane::attach_service_tc`]; [`Dataplane::detach_service_tc`]
    /// removes both.
    pub fn attach_pod_tc(&mut self, iface: &str) -> Result<()> {
        self.attach_pinned_tc(names::PROG_NODEPORT_EGRESS_TC, iface, TcAttachType::Egress)?;
        self.attach_pinned_tc(names::PROG_SERVICE_TC, iface, TcAttachType::Ingress)
    }

    /// Attaches the uplink program to `iface` on tc ingress: NodePorts,
    /// externalIPs and load-balancer IPs reached from other machines
    /// (`externalTrafficPolicy` honoured; source NAT to the address set by
    /// [`Dataplane::set_snat_address`] for backends on other nodes), plus
    /// everything `service_tc` does. Pinned like
    /// [`Dataplane::attach_service_tc`].
    pub fn attach_nodeport_tc(&mut self, iface: &str) -> Result<()> {
        self.attach_pinned_tc(names::PROG_NODEPORT_EGRESS_TC, iface, TcAttachType::Egress)?;
        self.attach_pinned_tc(names::PROG_NODEPORT_TC, iface, TcAttachType::Ingress)
    }

    /// Attaches NodePort acceleration to `iface` at XDP in `mode` (call
    /// after [`Dataplane::attach_nodeport_tc`], which stays the fallback for
    /// every packet the XDP program passes on). On a veth, native mode needs
    /// the peer to process XDP frames (GRO on, or an XDP program of its own)
    /// for the flows it sends back out. The link is pinned like the tc links
    /// (kept across restarts, the new program swapped in); an existing pin
    /// keeps the mode it was attached with.
    pub fn attach_nodeport_xdp(&mut self, iface: &str, mode: XdpMode) -> Result<()> {
        use aya::programs::links::{FdLink, PinnedLink};
        use aya::programs::xdp::XdpLink;
        let name = names::PROG_NODEPORT_XDP;
        let pin = self.pin_dir.join(format!("link_{name}_{iface}"));
        let link_err = |source: Box<dyn std::error::Error + Send + Sync>| Error::PinLink {
            path: pin.clone(),
            source,
        };
        let attach_err = |source| Error::Attach {
            name,
            iface: iface.to_owned(),
            source,
        };
        let existing = PinnedLink::from_pin(&pin).ok();
        let program: &mut Xdp = self.program(name)?;
        match existing {
            Some(old) => {
                let link = XdpLink::try_from(FdLink::from(old)).map_err(|e| link_err(e.into()))?;
                let id = program.attach_to_link(link).map_err(attach_err)?;
                // Already pinned: dropping our handle leaves it attached.
                let _ = program.take_link(id);
                info!(iface, program = name, pin = %pin.display(), "replaced XDP program in pinned link");
            }
            None => {
                let id = program.attach(iface, mode).map_err(attach_err)?;
                let link = program.take_link(id).map_err(attach_err)?;
                let link = FdLink::try_from(link).map_err(|e| link_err(e.into()))?;
                link.pin(&pin).map_err(|e| link_err(e.into()))?;
                info!(iface, program = name, ?mode, pin = %pin.display(), "attached XDP program");
            }
        }
        Ok(())
    }

    /// Detaches NodePort acceleration from `iface` (removes its pinned
    /// link). Absent is not an error.
    pub fn detach_nodeport_xdp(&self, iface: &str) -> Result<()> {
        self.remove_pin(
            self.pin_dir
                .join(format!("link_{}_{iface}", names::PROG_NODEPORT_XDP)),
        )
    }

    /// Sets the node address external flows are source-NATed to when their
    /// backend runs on another node (`None`: never SNAT).
    pub fn set_snat_address(&mut self, addr: Option<std::net::Ipv4Addr>) -> Result<()> {
        self.update_node_config(|config| config.snat_addr = addr.map_or(0, |a| u32::from(a).to_be()))
    }

    /// Read-modify-write of the node's one configuration entry.
    fn update_node_config(
        &mut self,
        change: impl FnOnce(&mut coxswain_ebpf_common::NodeConfigV4),
    ) -> Result<()> {
        let name = names::NODE_CONFIG_V4;
        let map = self.ebpf.map_mut(name).ok_or(Error::MissingMap(name))?;
        let mut array: aya::maps::Array<_, coxswain_ebpf_common::NodeConfigV4> =
            aya::maps::Array::try_from(map).map_err(|source| Error::Map { name, source })?;
        let mut config = array.get(&0, 0).map_err(|source| Error::Map { name, source })?;
        change(&mut config);
        array
            .set(0, config, 0)
            .map_err(|source| Error::Map { name, source })
    }

    fn attach_pinned_tc(
        &mut self,
        name: &'static str,
        iface: &str,
        attach_type: TcAttachType,
    ) -> Result<()> {
        use aya::programs::{
            LinkOrder,
            links::{FdLink, PinnedLink},
            tc::{SchedClassifierLink, TcAttachOptions},
        };
        let pin = self.pin_dir.join(format!("link_{name}_{iface}"));
        let link_err = |source: Box<dyn std::error::Error + Send + Sync>| Error::PinLink {
            path: pin.clone(),
            source,
        };
        if !has_tcx() {
            if let Err(e) = aya::programs::tc::qdisc_add_clsact(iface) {
                debug!(iface, error = %e, "clsact qdisc not added");
            }
            let program: &mut SchedClassifier = self.program(name)?;
            program
                .attach(iface, attach_type)
                .map_err(|source| Error::Attach {
                    name,
                    iface: iface.to_owned(),
                    source,
                })?;
            info!(
                iface,
                program = name,
                "attached service program (netlink; not kept across restarts)"
            );
            return Ok(());
        }
        let existing = PinnedLink::from_pin(&pin).ok();
        let program: &mut SchedClassifier = self.program(name)?;
        match existing {
            Some(old) => {
                let link = SchedClassifierLink::try_from(FdLink::from(old))
                    .map_err(|e| link_err(e.into()))?;
                let id = program
                    .attach_to_link(link)
                    .map_err(|source| Error::Attach {
                        name,
                        iface: iface.to_owned(),
                        source,
                    })?;
                // Already pinned: dropping our handle leaves it attached.
                let _ = program.take_link(id);
                info!(iface, program = name, pin = %pin.display(), "replaced service program in pinned link");
            }
            None => {
                let id = program
                    .attach_with_options(
                        iface,
                        attach_type,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(|source| Error::Attach {
                        name,
                        iface: iface.to_owned(),
                        source,
                    })?;
                let link = program.take_link(id).map_err(|source| Error::Attach {
                    name,
                    iface: iface.to_owned(),
                    source,
                })?;
                let link = FdLink::try_from(link).map_err(|e| link_err(e.into()))?;
                link.pin(&pin).map_err(|e| link_err(e.into()))?;
                info!(iface, program = name, pin = %pin.display(), "attached service program");
            }
        }
        Ok(())
    }

    /// Detaches the Service (or uplink) program from `iface` by removing
    /// its pinned link. Absent is not an error.
    pub fn detach_service_tc(&self, iface: &str) -> Result<()> {
        for name in [
            names::PROG_SERVICE_TC,
            names::PROG_NODEPORT_TC,
            names::PROG_NODEPORT_EGRESS_TC,
            names::PROG_NODEPORT_XDP,
        ] {
            self.remove_pin(self.pin_dir.join(format!("link_{name}_{iface}")))?;
        }
        Ok(())
    }

    fn sock_lb_pin(&self, name: &str, cgroup: &Path) -> PathBuf {
        self.pin_dir
            .join(format!("link_{name}_{}", cgroup_pin_suffix(cgroup)))
    }

    fn remove_pin(&self, pin: PathBuf) -> Result<()> {
        match std::fs::remove_file(&pin) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::PinDir {
                path: pin,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Attaches socket load balancing (cgroup `connect4`, `sendmsg4`,
    /// `recvmsg4`, `getpeername4`) to the cgroup v2 directory `cgroup`, so
    /// that processes in it (the whole node, for the root cgroup) reach
    /// Services without any packet to a Service address leaving a socket.
    ///
    /// The links are pinned, so translation continues while the agent
    /// restarts. A restarted agent attaches its own programs first, then
    /// replaces the old pins; in between both run, which is harmless: the
    /// second sees a backend address, not a Service.
    pub fn attach_socket_lb(&mut self, cgroup: &Path) -> Result<()> {
        use aya::programs::{CgroupAttachMode, CgroupSockAddr, links::FdLink};
        let dir = std::fs::File::open(cgroup).map_err(|source| Error::Cgroup {
            path: cgroup.to_owned(),
            source,
        })?;
        // Only sockets of this network namespace are ours to balance: other
        // nodes may share the cgroup, and pods have their own namespaces.
        let cookie = current_netns_cookie().map_err(|source| Error::Cgroup {
            path: cgroup.to_owned(),
            source,
        })?;
        self.update_node_config(|config| config.netns_cookie = cookie)?;
        for name in SOCK_LB_PROGRAMS {
            let pin = self.sock_lb_pin(name, cgroup);
            let link_err = |source: Box<dyn std::error::Error + Send + Sync>| Error::PinLink {
                path: pin.clone(),
                source,
            };
            let target = cgroup.display().to_string();
            let program: &mut CgroupSockAddr = self.program(name)?;
            let id = program
                // With bpf links (Linux >= 5.7) flags must be 0 (`Single`), and
                // several links still coexist on one cgroup.
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(|source| Error::Attach {
                    name,
                    iface: target.clone(),
                    source,
                })?;
            let link = program.take_link(id).map_err(|source| Error::Attach {
                name,
                iface: target.clone(),
                source,
            })?;
            let link = FdLink::try_from(link).map_err(|e| link_err(e.into()))?;
            // Replace a previous agent's pin: its link detaches once unpinned.
            match std::fs::remove_file(&pin) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(link_err(e.into()));
                }
                _ => {}
            }
            link.pin(&pin).map_err(|e| link_err(e.into()))?;
            info!(cgroup = %target, program = name, "attached socket load balancing");
        }
        Ok(())
    }

    /// Detaches socket load balancing from `cgroup` (removes the pins).
    pub fn detach_socket_lb(&self, cgroup: &Path) -> Result<()> {
        for name in SOCK_LB_PROGRAMS {
            self.remove_pin(self.sock_lb_pin(name, cgroup))?;
        }
        Ok(())
    }

    /// Packets and bytes of the Service frontends `ids` (service ids),
    /// summed over CPUs. Ids never counted are left out.
    pub fn service_stats(
        &self,
        ids: impl IntoIterator<Item = u32>,
    ) -> Result<std::collections::BTreeMap<u32, Counters>> {
        self.array_counters(names::SERVICE_COUNTERS, ids)
    }

    /// Packets and bytes of the backends `ids`, summed over CPUs.
    pub fn backend_stats(
        &self,
        ids: impl IntoIterator<Item = u32>,
    ) -> Result<std::collections::BTreeMap<u32, Counters>> {
        self.array_counters(names::BACKEND_COUNTERS, ids)
    }

    /// Packets and bytes per NodePort XDP verdict
    /// ([`coxswain_ebpf_common::nodeport_verdict`]), summed over CPUs.
    pub fn nodeport_xdp_stats(&self) -> Result<std::collections::BTreeMap<u32, Counters>> {
        self.array_counters(
            names::NODEPORT_XDP_STATS,
            coxswain_ebpf_common::nodeport_verdict::ALL,
        )
    }

    fn array_counters(
        &self,
        name: &'static str,
        ids: impl IntoIterator<Item = u32>,
    ) -> Result<std::collections::BTreeMap<u32, Counters>> {
        let map = self.ebpf.map(name).ok_or(Error::MissingMap(name))?;
        let map: aya::maps::PerCpuArray<_, Counters> =
            aya::maps::PerCpuArray::try_from(map).map_err(|source| Error::Map { name, source })?;
        let mut out = std::collections::BTreeMap::new();
        for id in ids {
            let values = match map.get(&id, 0) {
                Ok(values) => values,
                // An id beyond the array was never counted.
                Err(aya::maps::MapError::OutOfBounds { .. }) => continue,
                Err(source) => return Err(Error::Map { name, source }),
            };
            let sum = sum_per_cpu(values.iter());
            if sum.packets > 0 {
                out.insert(id, sum);
            }
        }
        Ok(out)
    }

    /// Up to `limit` tracked flows (both directions' entries).
    pub fn conntrack(
        &self,
        limit: usize,
    ) -> Result<Vec<(coxswain_ebpf_common::CtKeyV4, coxswain_ebpf_common::CtValue)>> {
        let name = names::CONNTRACK_V4;
        let map = self.ebpf.map(name).ok_or(Error::MissingMap(name))?;
        let map: aya::maps::HashMap<
            _,
            coxswain_ebpf_common::CtKeyV4,
            coxswain_ebpf_common::CtValue,
        > = aya::maps::HashMap::try_from(map).map_err(|source| Error::Map { name, source })?;
        let mut out = Vec::new();
        // An entry evicted while we iterate is simply skipped.
        out.extend(map.iter().take(limit).flatten());
        Ok(out)
    }

    /// Reads the per-interface counters, summed over CPUs.
    pub fn iface_counters(&self) -> Result<IfaceCounters> {
        let name = names::IFACE_COUNTERS;
        let map = self.ebpf.map(name).ok_or(Error::MissingMap(name))?;
        let map: PerCpuHashMap<_, IfaceCounterKey, Counters> =
            PerCpuHashMap::try_from(map).map_err(|source| Error::Map { name, source })?;
        let mut out = IfaceCounters::new();
        for entry in map.iter() {
            let (key, values) = entry.map_err(|source| Error::Map { name, source })?;
            let Some(hook) = Hook::from_raw(key.hook) else {
                continue;
            };
            out.insert((key.ifindex, hook), sum_per_cpu(values.iter()));
        }
        Ok(out)
    }
}

/// The socket load-balancing programs, attached and detached together.
const SOCK_LB_PROGRAMS: [&str; 4] = [
    names::PROG_SOCK_CONNECT4,
    names::PROG_SOCK_SENDMSG4,
    names::PROG_SOCK_RECVMSG4,
    names::PROG_SOCK_GETPEERNAME4,
];

/// A pin-file-safe rendering of a cgroup path.
fn cgroup_pin_suffix(cgroup: &Path) -> String {
    cgroup.to_string_lossy().trim_matches('/').replace('/', "_")
}

/// tcx (bpf_link based tc attachment, no qdisc) exists since Linux 6.6.
fn has_tcx() -> bool {
    use aya::util::KernelVersion;
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// Loads a program unless it is already in the kernel.
trait LoadOnce {
    fn load_once(&mut self) -> Result<(), aya::programs::ProgramError>;
}

impl LoadOnce for SchedClassifier {
    fn load_once(&mut self) -> Result<(), aya::programs::ProgramError> {
        if self.fd().is_ok() {
            Ok(())
        } else {
            self.load()
        }
    }
}

impl LoadOnce for aya::programs::CgroupSockAddr {
    fn load_once(&mut self) -> Result<(), aya::programs::ProgramError> {
        if self.fd().is_ok() {
            Ok(())
        } else {
            self.load()
        }
    }
}

impl LoadOnce for Xdp {
    fn load_once(&mut self) -> Result<(), aya::programs::ProgramError> {
        if self.fd().is_ok() {
            Ok(())
        } else {
            self.load()
        }
    }
}

fn spawn_log_pump(logger: aya_log::EbpfLogger<&'static dyn log::Log>) -> LogPump {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return LogPump::Idle(Box::new(logger));
    };
    LogPump::Task(handle.spawn(async move {
        #[allow(
            unsafe_code,
            reason = "the AsyncFd owns the logger, which owns the ring buffer fd, so the fd outlives its registration"
        )]
        // SAFETY: see the allow above.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
        };
        let mut fd = match registered {
            Ok(fd) => fd,
            Err(e) => {
                warn!(error = %e, "failed to poll the eBPF log ring buffer");
                return;
            }
        };
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`,
/// Linux >= 5.14), as `bpf_get_netns_cookie` reports it to the programs.
fn current_netns_cookie() -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    #[allow(unsafe_code, reason = "getsockopt has no safe wrapper for SO_NETNS_COOKIE")]
    // SAFETY: a valid socket and an out-buffer of the advertised length.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}
