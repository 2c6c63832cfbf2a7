//! Map key and value layouts shared by the kernel programs and the node agent.
//!
//! This crate is the single source of truth for every eBPF map layout: the
//! kernel side (`coxswain-ebpf`, `no_std`, nightly, `bpfel-unknown-none`) and
//! user space (`coxswain-dataplane`, with the `user` feature) both depend on
//! it. Every type is `#[repr(C)]`, `Copy`, and has no implicit padding, so the
//! bytes the kernel reads are exactly the bytes user space wrote.
#![no_std]

/// Names of maps and programs inside the eBPF object, as user space looks
/// them up.
pub mod names {
    /// Per-CPU hash map: [`IfaceCounterKey`](crate::IfaceCounterKey) →
    /// [`Counters`](crate::Counters).
    pub const IFACE_COUNTERS: &str = "IFACE_COUNTERS";
    /// tc classifier counting packets on ingress.
    pub const PROG_TC_INGRESS: &str = "count_tc_ingress";
    /// tc classifier counting packets on egress.
    pub const PROG_TC_EGRESS: &str = "count_tc_egress";
    /// XDP program counting packets at the driver.
    pub const PROG_XDP: &str = "count_xdp";

    /// Hash map: [`ServiceKeyV4`](crate::ServiceKeyV4) →
    /// [`ServiceValue`](crate::ServiceValue).
    pub const SERVICES_V4: &str = "SERVICES_V4";
    /// Hash map: backend id (`u32`) → [`BackendV4`](crate::BackendV4).
    pub const BACKENDS_V4: &str = "BACKENDS_V4";
    /// Hash map: service id (`u32`) → [`RevNatV4`](crate::RevNatV4).
    pub const REV_NAT_V4: &str = "REV_NAT_V4";
    /// LRU hash map: [`CtKeyV4`](crate::CtKeyV4) → [`CtValue`](crate::CtValue).
    pub const CONNTRACK_V4: &str = "CONNTRACK_V4";
    /// LRU hash map: [`SockRevNatKeyV4`](crate::SockRevNatKeyV4) →
    /// [`RevNatV4`](crate::RevNatV4): which Service a socket-translated
    /// backend address stands for.
    pub const SOCK_REV_NAT_V4: &str = "SOCK_REV_NAT_V4";
    /// cgroup `connect4`: Service address → backend for host sockets.
    pub const PROG_SOCK_CONNECT4: &str = "sock_connect4";
    /// cgroup `sendmsg4`: the same for unconnected UDP.
    pub const PROG_SOCK_SENDMSG4: &str = "sock_sendmsg4";
    /// cgroup `recvmsg4`: backend → Service address for UDP replies.
    pub const PROG_SOCK_RECVMSG4: &str = "sock_recvmsg4";
    /// cgroup `getpeername4`: the peer of a translated socket is the Service.
    pub const PROG_SOCK_GETPEERNAME4: &str = "sock_getpeername4";
    /// Array (one entry): [`NodeConfigV4`](crate::NodeConfigV4).
    pub const NODE_CONFIG_V4: &str = "NODE_CONFIG_V4";
    /// LRU hash map: [`AffinityKeyV4`](crate::AffinityKeyV4) →
    /// [`AffinityValue`](crate::AffinityValue).
    pub const AFFINITY_V4: &str = "AFFINITY_V4";
    /// Per-CPU array indexed by service id → [`Counters`](crate::Counters),
    /// packets and bytes of translated flows (both directions). An array:
    /// ids are dense, and an array lookup costs the packet path no hashing.
    pub const SERVICE_COUNTERS: &str = "SERVICE_COUNTERS";
    /// Per-CPU array indexed by backend id → [`Counters`](crate::Counters).
    pub const BACKEND_COUNTERS: &str = "BACKEND_COUNTERS";
    /// Maps of earlier versions a loader removes from the pin directory
    /// (per-CPU hash maps the counter arrays replaced).
    pub const RETIRED: &[&str] = &["SERVICE_STATS", "BACKEND_STATS"];
    /// tc classifier for the node's uplink: NodePort, externalIPs and
    /// load-balancer IPs from other machines (honours
    /// `externalTrafficPolicy`), and the replies of source-NATed flows.
    pub const PROG_NODEPORT_TC: &str = "nodeport_tc";
    /// XDP program for the node's uplink: NodePort acceleration (external
    /// flows translated, and those to other nodes sent back out, before an
    /// skb exists); what it does not handle passes to `nodeport_tc`.
    pub const PROG_NODEPORT_XDP: &str = "nodeport_xdp";
    /// Per-CPU array indexed by [`nodeport_verdict`](crate::nodeport_verdict)
    /// → [`Counters`](crate::Counters): what `nodeport_xdp` did with packets.
    pub const NODEPORT_XDP_STATS: &str = "NODEPORT_XDP_STATS";
    /// tc classifier on the uplink's egress: replies of external flows get
    /// the Service address back as their source.
    pub const PROG_NODEPORT_EGRESS_TC: &str = "nodeport_egress_tc";
    /// tc classifier translating Service traffic (ingress of the interfaces
    /// where client traffic enters the node's datapath).
    pub const PROG_SERVICE_TC: &str = "service_tc";
    /// Hash map: [`MaglevKeyV4`](crate::MaglevKeyV4) →
    /// [`MaglevTable`](crate::MaglevTable), the Maglev lookup table of a
    /// master entry with [`service_flags::MAGLEV`](crate::service_flags::MAGLEV).
    pub const MAGLEV_V4: &str = "MAGLEV_V4";
}

/// What the NodePort XDP program did with a packet (indexes of
/// `NODEPORT_XDP_STATS`).
pub mod nodeport_verdict {
    /// Every verdict, in index order.
    pub const ALL: [u32; 3] = [LOCAL, TX, PASS];
    /// Translated for a backend on this node and passed up the stack.
    pub const LOCAL: u32 = 0;
    /// Translated and sent back out of the uplink (a backend on another
    /// node, or the reply to the client of such a flow).
    pub const TX: u32 = 1;
    /// Addressed to a Service but left to the tc program (no endpoint to
    /// refuse with, next hop not resolved yet, IP options, fragments...).
    pub const PASS: u32 = 2;

    /// `local`, `tx` or `pass`.
    pub const fn name(verdict: u32) -> &'static str {
        match verdict {
            LOCAL => "local",
            TX => "tx",
            PASS => "pass",
            _ => "unknown",
        }
    }
}

/// Upper bound of distinct (interface, hook) pairs the counter map holds.
pub const IFACE_COUNTERS_MAX_ENTRIES: u32 = 4096;

/// The attachment point that counted a packet.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// tc (clsact) ingress.
    TcIngress = 0,
    /// tc (clsact) egress.
    TcEgress = 1,
    /// XDP, before the kernel allocates an skb.
    Xdp = 2,
}

impl Hook {
    /// Every hook, in a stable order.
    pub const ALL: [Hook; 3] = [Hook::TcIngress, Hook::TcEgress, Hook::Xdp];

    /// Decodes the raw value stored in [`IfaceCounterKey::hook`].
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(Hook::TcIngress),
            1 => Some(Hook::TcEgress),
            2 => Some(Hook::Xdp),
            _ => None,
        }
    }

    /// A short lowercase name, used in metrics labels and CLI output.
    pub const fn as_str(self) -> &'static str {
        match self {
            Hook::TcIngress => "tc_ingress",
            Hook::TcEgress => "tc_egress",
            Hook::Xdp => "xdp",
        }
    }
}

/// Key of the per-interface counter map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfaceCounterKey {
    /// Interface index in the network namespace where the program runs.
    pub ifindex: u32,
    /// A [`Hook`] as `u32`.
    pub hook: u32,
}

/// Packet and byte counters; per CPU in the kernel, summed by user space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets seen.
    pub packets: u64,
    /// Bytes seen, counting from the Ethernet header.
    pub bytes: u64,
}

impl Counters {
    /// Adds another CPU's counters to these.
    pub fn add(&mut self, other: &Counters) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
    }
}

/// Upper bound of service entries (one master entry per Service port plus
/// one slot per backend).
pub const SERVICES_MAX_ENTRIES: u32 = 262_144;
/// Upper bound of distinct backends.
pub const BACKENDS_MAX_ENTRIES: u32 = 131_072;
/// Upper bound of reverse-NAT entries (one per Service port).
pub const REV_NAT_MAX_ENTRIES: u32 = 65_536;
/// Upper bound of tracked flows (both directions count); least recently used
/// entries are evicted first.
pub const CONNTRACK_MAX_ENTRIES: u32 = 262_144;

/// IP protocol numbers as stored in keys.
pub mod proto {
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// SCTP.
    pub const SCTP: u8 = 132;
}

/// Which part of a Service address a [`ServiceKeyV4`] entry is reached by.
pub mod scope {
    /// Traffic from anywhere (the ClusterIP, or external traffic under
    /// `externalTrafficPolicy: Cluster`).
    pub const ALL: u8 = 0;
    /// Only node-local backends, for traffic arriving from outside the node
    /// at an external address (NodePort, externalIP, load-balancer IP) of a
    /// Service with `externalTrafficPolicy: Local`; the uplink program looks
    /// this scope up first. (`internalTrafficPolicy: Local` needs no scope of
    /// its own: the ClusterIP's `ALL` entry then lists only local backends.)
    pub const LOCAL: u8 = 1;
}

/// Key of the service map. IPv4; an IPv6 twin (`ServiceKeyV6`) keeps the
/// same shape with a 16-byte address.
///
/// Slot 0 is the Service's *master* entry ([`ServiceValue::count`] backends,
/// flags, id); slots `1..=count` each name one backend. A lookup therefore
/// costs two hash lookups (master, then `1 + hash % count`) whatever the
/// number of Services or backends.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKeyV4 {
    /// Service address (ClusterIP, node address for NodePort, external or
    /// load-balancer IP), network byte order.
    pub addr: u32,
    /// Service port, network byte order.
    pub port: u16,
    /// Backend slot: 0 for the master entry.
    pub slot: u16,
    /// One of [`proto`].
    pub proto: u8,
    /// One of [`scope`].
    pub scope: u8,
    /// Always zero (explicit padding, so keys hash identically).
    pub pad: [u8; 2],
}

/// Flags of a Service master entry.
pub mod service_flags {
    /// `sessionAffinity: ClientIP`.
    pub const AFFINITY: u16 = 1 << 0;
    /// Source NAT to the node address is needed when forwarding to a
    /// backend on another node (external traffic, `Cluster` policy).
    pub const SNAT: u16 = 1 << 1;
    /// The address is a NodePort on a node address.
    pub const NODE_PORT: u16 = 1 << 2;
    /// The address is an externalIP or load-balancer ingress IP.
    pub const EXTERNAL: u16 = 1 << 3;
    /// Backends are selected with the Service's Maglev table.
    pub const MAGLEV: u16 = 1 << 4;
}

/// Entries of a Maglev lookup table: a prime (Maglev needs the table size
/// prime so that every backend's permutation visits every entry), the
/// default of Cilium's `--bpf-lb-maglev-table-size`. With `N` backends each
/// owns `M / N` entries, rounded up or down, and a backend change moves
/// about `M / N` of them: about 1/N of the flows, those of the backend that
/// came or went, plus a small fraction (below 1% for `N` up to 100).
pub const MAGLEV_TABLE_SIZE: usize = 16_381;
/// Upper bound of Maglev tables (one per master entry with
/// [`service_flags::MAGLEV`]). The map is not preallocated: a table costs
/// its 64 KiB only while it exists.
pub const MAGLEV_MAX_ENTRIES: u32 = 16_384;

/// A Maglev lookup table: entry `hash(flow) % MAGLEV_TABLE_SIZE` names the
/// backend id a new flow takes.
pub type MaglevTable = [u32; MAGLEV_TABLE_SIZE];

/// Key of the Maglev map: one table per master entry (a frontend in one
/// scope, since the `LOCAL` scope lists other backends than `ALL`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MaglevKeyV4 {
    /// The master entry's [`ServiceValue::service_id`].
    pub service_id: u32,
    /// The master entry's [`scope`].
    pub scope: u8,
    /// Always zero.
    pub pad: [u8; 3],
}

/// Seeds of the flow hash the kernel programs compute for Maglev. Every
/// node must use the same, so that any node sends a given flow to the same
/// backend (what lets a flow survive being moved to another node by an
/// upstream router).
pub mod flow_hash {
    /// Initial value of the hash.
    pub const SEED: u32 = 0x2c0f_57a1;

    /// murmur3's 32-bit finalizer: every input bit affects every output bit.
    #[inline(always)]
    pub const fn fmix32(mut h: u32) -> u32 {
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^= h >> 16;
        h
    }

    /// The hash of a flow's 5-tuple, as the packet carries it (addresses
    /// and ports in network byte order, read as native integers).
    #[inline(always)]
    pub const fn of_tuple(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> u32 {
        let mut h = SEED;
        h = fmix32(h ^ saddr);
        h = fmix32(h ^ daddr);
        h = fmix32(h ^ ((sport as u32) << 16 | dport as u32));
        fmix32(h ^ proto as u32)
    }
}

/// Value of the service map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    /// In a slot entry, the backend's id; 0 in the master entry.
    pub backend_id: u32,
    /// In the master entry, the number of backend slots (0: no usable
    /// endpoint, reject); 0 in a slot entry.
    pub count: u16,
    /// [`service_flags`] (master entry).
    pub flags: u16,
    /// Service port id, also the reverse-NAT id; the same in the master and
    /// slot entries.
    pub service_id: u32,
    /// ClientIP affinity timeout in seconds (master entry, with
    /// [`service_flags::AFFINITY`]).
    pub affinity_timeout_s: u32,
}

/// A backend: one endpoint address and target port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendV4 {
    /// Endpoint address, network byte order.
    pub addr: u32,
    /// Target port, network byte order.
    pub port: u16,
    /// One of [`proto`].
    pub proto: u8,
    /// [`backend_flags`].
    pub flags: u8,
}

/// Flags of a backend.
pub mod backend_flags {
    /// The endpoint is terminating (still serving).
    pub const TERMINATING: u8 = 1 << 0;
    /// The endpoint runs on this node.
    pub const LOCAL: u8 = 1 << 1;
}

/// Reverse-NAT entry: what replies from a backend of this Service port must
/// carry as their source.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevNatV4 {
    /// Service address, network byte order.
    pub addr: u32,
    /// Service port, network byte order.
    pub port: u16,
    /// Always zero.
    pub pad: u16,
}

/// Key of the conntrack map: a flow's 5-tuple as seen on the wire, before
/// translation for the forward direction, after it for replies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKeyV4 {
    /// Source address, network byte order.
    pub saddr: u32,
    /// Destination address, network byte order.
    pub daddr: u32,
    /// Source port, network byte order.
    pub sport: u16,
    /// Destination port, network byte order.
    pub dport: u16,
    /// One of [`proto`].
    pub proto: u8,
    /// [`ct_dir`]: which direction this key describes.
    pub dir: u8,
    /// Always zero.
    pub pad: [u8; 2],
}

/// Upper bound of socket reverse-NAT entries (least recently used evicted).
pub const SOCK_REV_NAT_MAX_ENTRIES: u32 = 65_536;

/// Key of the socket reverse-NAT map: a socket (by cookie) and the backend
/// its destination was translated to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockRevNatKeyV4 {
    /// `bpf_get_socket_cookie` of the socket.
    pub cookie: u64,
    /// Backend address, network byte order.
    pub addr: u32,
    /// Backend port, network byte order.
    pub port: u16,
    /// Always zero.
    pub pad: u16,
}

/// Direction of a conntrack entry.
pub mod ct_dir {
    /// Client → Service: the value names the chosen backend.
    pub const FORWARD: u8 = 0;
    /// Backend → client: the value names the Service to translate back to.
    pub const REPLY: u8 = 1;
    /// Backend → client as the reply of an external flow leaves the node's
    /// uplink (after any source NAT was undone): where its source gets the
    /// Service address back.
    pub const EGRESS: u8 = 2;
    /// Client → backend as a source-NATed external flow leaves the node's
    /// uplink towards the backend's node: where its source becomes the node
    /// address (done on egress, after routing, for the same martian reason).
    pub const SNAT_OUT: u8 = 3;
}

/// Value of the conntrack map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtValue {
    /// The backend chosen for the flow.
    pub backend_id: u32,
    /// The Service port (reverse-NAT id) the flow was addressed to.
    pub service_id: u32,
    /// Last time a packet of the flow was seen (`bpf_ktime_get_ns`).
    pub last_seen_ns: u64,
    /// The backend's address (network byte order), kept in the entry so an
    /// established flow keeps reaching its endpoint even after the endpoint
    /// leaves the Service, as with kube-proxy's conntrack.
    pub backend_addr: u32,
    /// The backend's port, network byte order.
    pub backend_port: u16,
    /// [`ct_flags`].
    pub flags: u16,
    /// With [`ct_flags::SNAT`]: the client's address, which replies get
    /// back as their destination (network byte order).
    pub client_addr: u32,
    /// With [`ct_flags::SNAT`]: the node address the flow was given as its
    /// source (network byte order).
    pub snat_addr: u32,
}

/// Flags of a conntrack entry.
pub mod ct_flags {
    /// The flow's source was rewritten to a node address (external traffic
    /// to a backend on another node, `externalTrafficPolicy: Cluster`).
    pub const SNAT: u16 = 1 << 0;
    /// The flow arrived from outside the node (uplink), was addressed to a
    /// node address (a pod reaching a NodePort), or was sent to a backend at
    /// the node's own address (a host-network endpoint). Its replies get the
    /// Service address back as they leave (through the uplink, or through
    /// the pod's interface), not when they enter the node: a source equal
    /// to a node address would be dropped as martian on input.
    pub const EXTERNAL: u16 = 1 << 1;
    /// A FIN or RST was seen on this entry's direction: the connection is
    /// closing. The flow's entries expire after
    /// [`ct_lifetime::TCP_CLOSING_S`](super::ct_lifetime::TCP_CLOSING_S), and a
    /// new SYN on the same tuple (port reuse) is balanced afresh instead of
    /// following the old connection's backend.
    pub const CLOSING: u16 = 1 << 2;
}

/// How long a flow's conntrack entries live after its last packet, as the
/// node agent's garbage collector applies them (the kernel side only records
/// `last_seen_ns` and [`ct_flags::CLOSING`]). Cilium's defaults.
pub mod ct_lifetime {
    /// An open TCP connection.
    pub const TCP_S: u64 = 6 * 3600;
    /// A TCP connection after a FIN or RST.
    pub const TCP_CLOSING_S: u64 = 10;
    /// UDP and SCTP flows.
    pub const OTHER_S: u64 = 60;

    /// The lifetime of a flow of `proto` (an IP protocol number), closing or not.
    pub const fn seconds(proto: u8, closing: bool) -> u64 {
        match (proto, closing) {
            (super::proto::TCP, false) => TCP_S,
            (super::proto::TCP, true) => TCP_CLOSING_S,
            _ => OTHER_S,
        }
    }
}

/// This node's settings for the kernel programs (one entry, index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeConfigV4 {
    /// The address external flows are source-NATed to when they must reach
    /// a backend on another node (network byte order; 0: never SNAT).
    pub snat_addr: u32,
    /// Always zero.
    pub pad: u32,
    /// The network namespace (its cookie, `SO_NETNS_COOKIE`) whose sockets
    /// the socket programs balance; sockets of other namespaces (pods,
    /// other nodes sharing the cgroup) are left to their own datapath.
    /// 0: every socket.
    pub netns_cookie: u64,
}

/// Key of the ClientIP affinity map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityKeyV4 {
    /// Client address, network byte order.
    pub client_addr: u32,
    /// The Service frontend.
    pub service_id: u32,
}

/// Value of the ClientIP affinity map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    /// When the client last started a flow to the Service.
    pub last_used_ns: u64,
    /// The backend the client sticks to.
    pub backend_id: u32,
    /// Always zero.
    pub pad: u32,
}

/// Upper bound of ClientIP affinity entries (least recently used evicted).
pub const AFFINITY_MAX_ENTRIES: u32 = 65_536;

#[cfg(feature = "user")]
mod pod {
    #![allow(
        unsafe_code,
        reason = "aya::Pod is an unsafe marker: each type is repr(C), Copy and has no padding"
    )]
    unsafe impl aya::Pod for super::IfaceCounterKey {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for super::ServiceKeyV4 {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::BackendV4 {}
    unsafe impl aya::Pod for super::RevNatV4 {}
    unsafe impl aya::Pod for super::CtKeyV4 {}
    unsafe impl aya::Pod for super::CtValue {}
    unsafe impl aya::Pod for super::SockRevNatKeyV4 {}
    unsafe impl aya::Pod for super::NodeConfigV4 {}
    unsafe impl aya::Pod for super::AffinityKeyV4 {}
    unsafe impl aya::Pod for super::AffinityValue {}
    unsafe impl aya::Pod for super::MaglevKeyV4 {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(core::mem::size_of::<IfaceCounterKey>(), 8);
        assert_eq!(core::mem::size_of::<Counters>(), 16);
        assert_eq!(core::mem::size_of::<ServiceKeyV4>(), 12);
        assert_eq!(core::mem::size_of::<ServiceValue>(), 16);
        assert_eq!(core::mem::size_of::<BackendV4>(), 8);
        assert_eq!(core::mem::size_of::<RevNatV4>(), 8);
        assert_eq!(core::mem::size_of::<CtKeyV4>(), 16);
        assert_eq!(core::mem::size_of::<CtValue>(), 32);
        assert_eq!(core::mem::size_of::<NodeConfigV4>(), 16);
        assert_eq!(core::mem::size_of::<AffinityKeyV4>(), 8);
        assert_eq!(core::mem::size_of::<AffinityValue>(), 16);
        assert_eq!(core::mem::size_of::<SockRevNatKeyV4>(), 16);
        assert_eq!(core::mem::size_of::<MaglevKeyV4>(), 8);
        assert_eq!(core::mem::size_of::<MaglevTable>(), MAGLEV_TABLE_SIZE * 4);
    }

    #[test]
    fn hook_round_trips_through_raw() {
        for hook in Hook::ALL {
            assert_eq!(Hook::from_raw(hook as u32), Some(hook));
        }
        assert_eq!(Hook::from_raw(3), None);
    }
}
