//! Service load balancing at tc: Service address → backend (DNAT) for new
//! and established flows, and backend → Service address (reverse NAT) for
//! replies. Two hash lookups per new flow, one per packet of an established
//! flow, whatever the number of Services.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_redirect, bpf_skb_change_tail},
    macros::{classifier, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::TcContext,
};
use coxswain_ebpf_common::{
    AFFINITY_MAX_ENTRIES, AffinityKeyV4, AffinityValue, BACKENDS_MAX_ENTRIES, BackendV4,
    CONNTRACK_MAX_ENTRIES, Counters, CtKeyV4, CtValue, MAGLEV_MAX_ENTRIES, MAGLEV_TABLE_SIZE,
    MaglevKeyV4, MaglevTable, NodeConfigV4, REV_NAT_MAX_ENTRIES, RevNatV4, SERVICES_MAX_ENTRIES,
    ServiceKeyV4, ServiceValue, backend_flags, ct_dir, ct_flags, flow_hash, proto, scope,
    service_flags,
};

/// Service master and slot entries (see `ServiceKeyV4`). Pinned by name so
/// that a restarted agent finds the same maps and established flows keep
/// their backends.
#[map]
pub(crate) static SERVICES_V4: HashMap<ServiceKeyV4, ServiceValue> =
    HashMap::pinned(SERVICES_MAX_ENTRIES, 0);

#[map]
static BACKENDS_V4: HashMap<u32, BackendV4> = HashMap::pinned(BACKENDS_MAX_ENTRIES, 0);

#[map]
pub(crate) static REV_NAT_V4: HashMap<u32, RevNatV4> = HashMap::pinned(REV_NAT_MAX_ENTRIES, 0);

/// Maglev lookup tables of the master entries with `service_flags::MAGLEV`.
/// Not preallocated (`BPF_F_NO_PREALLOC`): each table is 64 KiB, and only
/// Services that ask for Maglev have one.
#[map]
static MAGLEV_V4: HashMap<MaglevKeyV4, MaglevTable> =
    HashMap::pinned(MAGLEV_MAX_ENTRIES, BPF_F_NO_PREALLOC);

const BPF_F_NO_PREALLOC: u32 = 1;

#[map]
static CONNTRACK_V4: LruHashMap<CtKeyV4, CtValue> = LruHashMap::pinned(CONNTRACK_MAX_ENTRIES, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IP_CSUM_OFF: usize = ETH_HLEN + 10;
const IP_SRC_OFF: usize = ETH_HLEN + 12;
const IP_DST_OFF: usize = ETH_HLEN + 16;

#[map]
pub(crate) static NODE_CONFIG_V4: Array<NodeConfigV4> = Array::pinned(1, 0);

#[map]
static AFFINITY_V4: LruHashMap<AffinityKeyV4, AffinityValue> =
    LruHashMap::pinned(AFFINITY_MAX_ENTRIES, 0);

/// Packets and bytes per Service frontend (by service id), per CPU.
#[map]
pub(crate) static SERVICE_COUNTERS: PerCpuArray<Counters> =
    PerCpuArray::pinned(REV_NAT_MAX_ENTRIES, 0);

/// Packets and bytes per backend (by backend id), per CPU.
#[map]
pub(crate) static BACKEND_COUNTERS: PerCpuArray<Counters> =
    PerCpuArray::pinned(BACKENDS_MAX_ENTRIES, 0);

/// Adds one packet of `len` bytes to a counter map entry.
#[inline(always)]
pub(crate) fn count(map: &PerCpuArray<Counters>, id: u32, len: u64) {
    // Ids are bounded by the array's size (the agent allocates them so);
    // an out-of-range one is simply not counted.
    if let Some(c) = map.get_ptr_mut(id) {
        // SAFETY: a per-CPU value: only this CPU writes it while we run.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
        }
    }
}

/// Pod side: traffic from pods (and replies from local backends).
#[classifier]
pub fn service_tc(ctx: TcContext) -> i32 {
    match try_service(&ctx, false) {
        Ok(action) => action,
        // A packet we cannot parse is not ours to judge.
        Err(()) => TC_ACT_OK,
    }
}

/// Uplink side: traffic from other machines to NodePorts, externalIPs and
/// load-balancer IPs, and replies to source-NATed flows.
#[classifier]
pub fn nodeport_tc(ctx: TcContext) -> i32 {
    match try_service(&ctx, true) {
        Ok(action) => action,
        Err(()) => TC_ACT_OK,
    }
}

/// Uplink egress: replies of external flows leave with the Service address.
#[classifier]
pub fn nodeport_egress_tc(ctx: TcContext) -> i32 {
    match try_egress(&ctx) {
        Ok(action) => action,
        Err(()) => TC_ACT_OK,
    }
}

#[inline(always)]
fn try_egress(ctx: &TcContext) -> Result<i32, ()> {
    let Some(flow) = parse(ctx)? else {
        return Ok(TC_ACT_OK);
    };
    let mut key = flow.key(ct_dir::SNAT_OUT);
    // Client → remote backend: take the node's address as the source.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(ct) = CONNTRACK_V4.get_ptr_mut(&key) {
        let snat_addr = unsafe {
            (*ct).last_seen_ns = now;
            (*ct).snat_addr
        };
        rewrite_addr(ctx, &flow, IP_SRC_OFF, flow.saddr, snat_addr)?;
        return Ok(TC_ACT_OK);
    }
    // Backend → client: take the Service address as the source.
    key.dir = ct_dir::EGRESS;
    let Some(ct) = CONNTRACK_V4.get_ptr_mut(&key) else {
        return Ok(TC_ACT_OK);
    };
    let service_id = unsafe {
        (*ct).last_seen_ns = now;
        (*ct).service_id
    };
    if let Some(rev) = REV_NAT_V4.get_ptr(&service_id) {
        let rev = unsafe { *rev };
        rewrite(
            ctx,
            &flow,
            IP_SRC_OFF,
            flow.saddr,
            rev.addr,
            flow.l4_off,
            flow.sport,
            rev.port,
        )?;
    }
    Ok(TC_ACT_OK)
}

/// The parts of an IPv4 TCP/UDP packet the translation needs.
pub(crate) struct Flow {
    pub(crate) saddr: u32,
    pub(crate) daddr: u32,
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    pub(crate) proto: u8,
    pub(crate) l4_off: usize,
    /// TCP flags (0 for other protocols).
    pub(crate) tcp_flags: u8,
}

/// TCP header flag bits.
mod tcp {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

impl Flow {
    /// The conntrack key of this packet's tuple in direction `dir`.
    #[inline(always)]
    pub(crate) fn key(&self, dir: u8) -> CtKeyV4 {
        CtKeyV4 {
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            dir,
            pad: [0; 2],
        }
    }

    /// A FIN or RST: the connection is closing.
    #[inline(always)]
    fn closes(&self) -> bool {
        self.tcp_flags & (tcp::FIN | tcp::RST) != 0
    }

    /// A SYN without ACK: a client opening a new connection.
    #[inline(always)]
    fn opens(&self) -> bool {
        self.tcp_flags & (tcp::SYN | tcp::ACK) == tcp::SYN
    }
}

/// Reads the packet's headers in two loads (Ethernet and IPv4 headers,
/// then the start of the L4 header), rather than one helper call per field.
#[inline(always)]
fn parse(ctx: &TcContext) -> Result<Option<Flow>, ()> {
    // Shorter frames carry no IPv4 header, so nothing to translate.
    let Ok(head) = ctx.load::<[u8; ETH_HLEN + 20]>(0) else {
        return Ok(None);
    };
    if u16::from_be_bytes([head[12], head[13]]) != ETH_P_IP {
        return Ok(None);
    }
    let ihl = usize::from(head[ETH_HLEN] & 0x0f) * 4;
    if ihl < 20 {
        return Err(());
    }
    // Only the first fragment carries ports; later fragments pass through.
    if u16::from_be_bytes([head[ETH_HLEN + 6], head[ETH_HLEN + 7]]) & 0x1fff != 0 {
        return Ok(None);
    }
    let proto = head[ETH_HLEN + 9];
    let l4_off = ETH_HLEN + ihl;
    let (ports, tcp_flags) = match proto {
        proto::TCP => {
            let l4: [u8; 14] = ctx.load(l4_off).map_err(|_| ())?;
            ([l4[0], l4[1], l4[2], l4[3]], l4[13])
        }
        proto::UDP | proto::SCTP => (ctx.load::<[u8; 4]>(l4_off).map_err(|_| ())?, 0),
        _ => return Ok(None),
    };
    let word = |at: usize| u32::from_ne_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    Ok(Some(Flow {
        saddr: word(IP_SRC_OFF),
        daddr: word(IP_DST_OFF),
        sport: u16::from_ne_bytes([ports[0], ports[1]]),
        dport: u16::from_ne_bytes([ports[2], ports[3]]),
        proto,
        l4_off,
        tcp_flags,
    }))
}

#[inline(always)]
fn try_service(ctx: &TcContext, external: bool) -> Result<i32, ()> {
    let Some(flow) = parse(ctx)? else {
        return Ok(TC_ACT_OK);
    };
    let now = unsafe { bpf_ktime_get_ns() };

    // A reply from a backend: restore the Service address as the source
    // (and, for a source-NATed flow, the client as the destination).
    if let Some(ct) = reply_entry(&flow, now) {
        let len = u64::from(ctx.len());
        count(&SERVICE_COUNTERS, ct.service_id, len);
        count(&BACKEND_COUNTERS, ct.backend_id, len);
        if ct.flags & ct_flags::SNAT != 0 {
            rewrite_addr(ctx, &flow, IP_DST_OFF, flow.daddr, ct.client_addr)?;
        }
        // External flows get their Service source back on the way out of
        // the uplink (`nodeport_egress_tc`).
        if ct.flags & ct_flags::EXTERNAL == 0 {
            if let Some(rev) = REV_NAT_V4.get_ptr(&ct.service_id) {
                let rev = unsafe { *rev };
                rewrite(
                    ctx,
                    &flow,
                    IP_SRC_OFF,
                    flow.saddr,
                    rev.addr,
                    flow.l4_off,
                    flow.sport,
                    rev.port,
                )?;
            }
        }
        return Ok(TC_ACT_OK);
    }

    let Some((master_key, master)) = lookup_master(&flow, external) else {
        return Ok(TC_ACT_OK);
    };
    let ct = match forward_flow(&master_key, &master, &flow, external, now) {
        Forward::Flow(ct) => ct,
        // No usable endpoint: refuse at once rather than black-hole, as
        // kube-proxy's REJECT rule does.
        Forward::Reject => return Ok(reject(ctx)),
        Forward::Drop => return Ok(TC_ACT_SHOT),
    };
    let len = u64::from(ctx.len());
    count(&SERVICE_COUNTERS, ct.service_id, len);
    count(&BACKEND_COUNTERS, ct.backend_id, len);
    // Hairpin flows take their new source here; external flows on the
    // uplink's egress (`nodeport_egress_tc`), after routing.
    if ct.flags & ct_flags::SNAT != 0 && ct.flags & ct_flags::EXTERNAL == 0 {
        rewrite_addr(ctx, &flow, IP_SRC_OFF, flow.saddr, ct.snat_addr)?;
    }
    rewrite(
        ctx,
        &flow,
        IP_DST_OFF,
        flow.daddr,
        ct.backend_addr,
        flow.l4_off + 2,
        flow.dport,
        ct.backend_port,
    )?;
    Ok(TC_ACT_OK)
}

/// The conntrack reply entry of a packet from a backend, refreshed (last
/// seen, closing on FIN or RST).
#[inline(always)]
pub(crate) fn reply_entry(flow: &Flow, now: u64) -> Option<CtValue> {
    let ct = CONNTRACK_V4.get_ptr_mut(&flow.key(ct_dir::REPLY))?;
    // SAFETY: a valid map value pointer; a racing writer can only make the
    // timestamp slightly stale.
    Some(unsafe {
        (*ct).last_seen_ns = now;
        if flow.closes() {
            (*ct).flags |= ct_flags::CLOSING;
        }
        *ct
    })
}

/// The Service master entry the packet is addressed to. From outside the
/// node (`external`), a Service with `externalTrafficPolicy: Local` has a
/// LOCAL-scope entry listing only this node's endpoints; it wins over the
/// ALL entry.
#[inline(always)]
pub(crate) fn lookup_master(flow: &Flow, external: bool) -> Option<(ServiceKeyV4, ServiceValue)> {
    let mut key = ServiceKeyV4 {
        addr: flow.daddr,
        port: flow.dport,
        slot: 0,
        proto: flow.proto,
        scope: scope::LOCAL,
        pad: [0; 2],
    };
    if external {
        if let Some(master) = SERVICES_V4.get_ptr(&key) {
            return Some((key, unsafe { *master }));
        }
    }
    key.scope = scope::ALL;
    let master = SERVICES_V4.get_ptr(&key)?;
    Some((key, unsafe { *master }))
}

/// What becomes of a packet addressed to a Service.
pub(crate) enum Forward {
    /// Translate it as this flow's entry says.
    Flow(CtValue),
    /// No usable endpoint: refuse it.
    Reject,
    /// The maps are inconsistent for a moment: drop it (the client
    /// retransmits).
    Drop,
}

/// Follows the flow's conntrack forward entry or, for a new flow, picks a
/// backend and records the flow's entries.
#[inline(always)]
pub(crate) fn forward_flow(
    master_key: &ServiceKeyV4,
    master: &ServiceValue,
    flow: &Flow,
    external: bool,
    now: u64,
) -> Forward {
    let fwd_key = flow.key(ct_dir::FORWARD);
    // An established flow keeps its backend, even after endpoint changes.
    // A new SYN on the tuple of a closed connection (the client reused its
    // port) is a new connection: it is balanced afresh rather than sent to
    // the old connection's backend, which may have left the Service.
    if let Some(ct) = CONNTRACK_V4.get_ptr_mut(&fwd_key) {
        unsafe {
            if (*ct).flags & ct_flags::CLOSING != 0 && flow.opens() {
                // The old connection's other entries go with it; the forward
                // entry is overwritten below.
                let old = *ct;
                let keys = FlowKeys::of(&fwd_key, &old);
                let _ = CONNTRACK_V4.remove(&keys.reply);
                if old.flags & ct_flags::EXTERNAL != 0 {
                    let _ = CONNTRACK_V4.remove(&keys.egress);
                    if old.flags & ct_flags::SNAT != 0 {
                        let _ = CONNTRACK_V4.remove(&keys.snat_out);
                    }
                }
            } else {
                (*ct).last_seen_ns = now;
                if flow.closes() {
                    (*ct).flags |= ct_flags::CLOSING;
                }
                return Forward::Flow(*ct);
            }
        }
    }
    if master.count == 0 {
        return Forward::Reject;
    }
    let Some((backend_id, b)) = pick_backend(master_key, master, flow.saddr, Some(flow), now)
    else {
        return Forward::Drop;
    };
    // External traffic to a backend on another node must come back through
    // this node: give it a node address as its source. Replies get their
    // Service source back on egress, after routing, when the flow came from
    // outside or is addressed to a node address (a pod reaching a
    // NodePort): a reply whose source is a node address would be dropped as
    // martian when it enters the node from another one.
    let mut flags = if external || master.flags & service_flags::NODE_PORT != 0 {
        ct_flags::EXTERNAL
    } else {
        0
    };
    // A backend at the node's own address (a host-network endpoint such as
    // the API server behind `kubernetes`) answers from the host stack: its
    // replies enter through no tc ingress, so, as for external flows, they
    // get their Service source on the egress of the pod's interface.
    if !external {
        if let Some(cfg) = NODE_CONFIG_V4.get(0) {
            if cfg.snat_addr != 0 && cfg.snat_addr == b.addr {
                flags |= ct_flags::EXTERNAL;
            }
        }
    }
    let mut snat_addr = 0;
    if external && master.flags & service_flags::SNAT != 0 && b.flags & backend_flags::LOCAL == 0 {
        if let Some(cfg) = NODE_CONFIG_V4.get(0) {
            if cfg.snat_addr != 0 {
                flags |= ct_flags::SNAT;
                snat_addr = cfg.snat_addr;
            }
        }
    }
    // Hairpin: a pod reaching itself through its Service would see its own
    // address as the source and drop the packet; give the flow the Service
    // address as its source instead.
    if !external && b.addr == flow.saddr {
        flags |= ct_flags::SNAT;
        snat_addr = flow.daddr;
    }
    let value = CtValue {
        backend_id,
        service_id: master.service_id,
        last_seen_ns: now,
        backend_addr: b.addr,
        backend_port: b.port,
        flags,
        client_addr: flow.saddr,
        snat_addr,
    };
    let keys = FlowKeys::of(&fwd_key, &value);
    // When the table is full, LRU eviction makes room; a failed insert only
    // means this flow is balanced again on its next packet.
    let _ = CONNTRACK_V4.insert(&fwd_key, &value, 0);
    let _ = CONNTRACK_V4.insert(&keys.reply, &value, 0);
    if flags & ct_flags::EXTERNAL != 0 {
        let _ = CONNTRACK_V4.insert(&keys.egress, &value, 0);
        if flags & ct_flags::SNAT != 0 {
            let _ = CONNTRACK_V4.insert(&keys.snat_out, &value, 0);
        }
    }
    Forward::Flow(value)
}

/// The other entries of the flow whose forward entry is `fwd` with `value`.
struct FlowKeys {
    /// Backend → client (or → the SNAT address): replies entering the node.
    reply: CtKeyV4,
    /// Backend → client as it leaves through the uplink (external flows).
    egress: CtKeyV4,
    /// Client → backend as it leaves through the uplink (source-NATed flows).
    snat_out: CtKeyV4,
}

impl FlowKeys {
    #[inline(always)]
    fn of(fwd: &CtKeyV4, value: &CtValue) -> FlowKeys {
        let reply = CtKeyV4 {
            saddr: value.backend_addr,
            daddr: if value.flags & ct_flags::SNAT != 0 {
                value.snat_addr
            } else {
                fwd.saddr
            },
            sport: value.backend_port,
            dport: fwd.sport,
            proto: fwd.proto,
            dir: ct_dir::REPLY,
            pad: [0; 2],
        };
        FlowKeys {
            reply,
            egress: CtKeyV4 {
                daddr: fwd.saddr,
                dir: ct_dir::EGRESS,
                ..reply
            },
            snat_out: CtKeyV4 {
                daddr: value.backend_addr,
                dport: value.backend_port,
                dir: ct_dir::SNAT_OUT,
                ..*fwd
            },
        }
    }
}

/// Chooses a backend for a new flow from `client`: the client's affine
/// backend while its affinity lasts (sessionAffinity ClientIP), otherwise
/// the Maglev table's entry for the flow's hash (with
/// `service_flags::MAGLEV`, when the packet's 5-tuple is known), otherwise a
/// random slot. Socket load balancing passes no flow (the source port may
/// not exist yet) and always takes a random slot.
#[inline(always)]
pub(crate) fn pick_backend(
    master_key: &ServiceKeyV4,
    master: &ServiceValue,
    client: u32,
    flow: Option<&Flow>,
    now: u64,
) -> Option<(u32, BackendV4)> {
    let affinity = master.flags & service_flags::AFFINITY != 0;
    let aff_key = AffinityKeyV4 {
        client_addr: client,
        service_id: master.service_id,
    };
    if affinity {
        if let Some(aff) = AFFINITY_V4.get_ptr_mut(&aff_key) {
            let aff = unsafe { &mut *aff };
            let timeout_ns = u64::from(master.affinity_timeout_s) * 1_000_000_000;
            if now.wrapping_sub(aff.last_used_ns) < timeout_ns {
                if let Some(b) = BACKENDS_V4.get_ptr(&aff.backend_id) {
                    aff.last_used_ns = now;
                    return Some((aff.backend_id, unsafe { *b }));
                }
            }
        }
    }
    let maglev = match flow {
        Some(flow) if master.flags & service_flags::MAGLEV != 0 => MAGLEV_V4
            .get_ptr(&MaglevKeyV4 {
                service_id: master.service_id,
                scope: master_key.scope,
                pad: [0; 3],
            })
            .map(|table| (table, flow_hash::of_tuple(flow.saddr, flow.daddr, flow.sport, flow.dport, flow.proto))),
        _ => None,
    };
    // `pick` walks slots (random choice) or table entries (Maglev).
    let (mut pick, modulus) = match maglev {
        Some((_, hash)) => (hash % MAGLEV_TABLE_SIZE as u32, MAGLEV_TABLE_SIZE as u32),
        None => {
            let count = u32::from(master.count);
            (unsafe { bpf_get_prandom_u32() } % count, count)
        }
    };
    let candidate = |pick: u32| match maglev {
        Some((table, _)) => maglev_backend(table, pick),
        None => slot_backend(master_key, pick),
    };
    let (mut backend_id, mut b) = candidate(pick)?;
    // A client that reuses its source port towards another Service address
    // may land on a backend that still holds the previous connection on the
    // same 4-tuple (TIME_WAIT): the new SYN would be answered as part of the
    // old connection. Like netfilter NAT keeping translated tuples unique,
    // move on to the next slot (or table entry) while the 4-tuple was used
    // recently (a few tries; the last candidate is used in any case).
    if let Some(flow) = flow {
        let mut tries = 0;
        while tries < CLASH_TRIES
            && master.count > 1
            && tuple_in_use(&b, client, flow.sport, master_key.proto, now)
        {
            pick = (pick + 1) % modulus;
            (backend_id, b) = candidate(pick)?;
            tries += 1;
        }
    }
    if affinity {
        let value = AffinityValue {
            last_used_ns: now,
            backend_id,
            pad: 0,
        };
        let _ = AFFINITY_V4.insert(&aff_key, &value, 0);
    }
    Some((backend_id, b))
}

/// The backend named by entry `pick` of a Maglev table.
#[inline(always)]
fn maglev_backend(table: *const MaglevTable, pick: u32) -> Option<(u32, BackendV4)> {
    // LLVM knows `pick` is below the table size (it is a remainder) and
    // would drop the check below, which the verifier cannot do without:
    // the volatile read hides what LLVM knows.
    // SAFETY: reads a local.
    let pick = unsafe { core::ptr::read_volatile(&pick) } as usize;
    if pick >= MAGLEV_TABLE_SIZE {
        return None;
    }
    // SAFETY: a map value pointer, valid for the program's run; `pick` is
    // in bounds.
    let backend_id = unsafe { *table.cast::<u32>().add(pick) };
    let b = unsafe { *BACKENDS_V4.get_ptr(&backend_id)? };
    Some((backend_id, b))
}

/// How many other slots a new flow tries when its 4-tuple at the backend is
/// still in use.
const CLASH_TRIES: u32 = 3;
/// How long a backend may keep a closed connection's 4-tuple (Linux's
/// TIME_WAIT is 60 s).
const TUPLE_REUSE_NS: u64 = 60 * 1_000_000_000;

/// The backend in slot `pick + 1`.
#[inline(always)]
fn slot_backend(master_key: &ServiceKeyV4, pick: u32) -> Option<(u32, BackendV4)> {
    let slot_key = ServiceKeyV4 {
        slot: (pick + 1) as u16,
        ..*master_key
    };
    let slot = SERVICES_V4.get_ptr(&slot_key)?;
    let backend_id = unsafe { (*slot).backend_id };
    let b = unsafe { *BACKENDS_V4.get_ptr(&backend_id)? };
    Some((backend_id, b))
}

/// Whether another flow used the 4-tuple (backend, client) recently.
#[inline(always)]
fn tuple_in_use(b: &BackendV4, client: u32, client_port: u16, proto: u8, now: u64) -> bool {
    let key = CtKeyV4 {
        saddr: b.addr,
        daddr: client,
        sport: b.port,
        dport: client_port,
        proto,
        dir: ct_dir::REPLY,
        pad: [0; 2],
    };
    match CONNTRACK_V4.get_ptr(&key) {
        Some(ct) => now.wrapping_sub(unsafe { (*ct).last_seen_ns }) < TUPLE_REUSE_NS,
        None => false,
    }
}

/// Rewrites one IPv4 address of the packet, fixing the IPv4 and L4
/// checksums incrementally.
#[inline(always)]
fn rewrite_addr(
    ctx: &TcContext,
    flow: &Flow,
    addr_off: usize,
    old_addr: u32,
    new_addr: u32,
) -> Result<(), ()> {
    rewrite(ctx, flow, addr_off, old_addr, new_addr, 0, 0, 0)
}

/// Bytes of the ICMP error built by [`reject`]: Ethernet, IPv4, ICMP, then
/// the offending packet's IPv4 header and first 8 bytes of its L4 header.
const REJECT_LEN: usize = ETH_HLEN + 20 + 8 + 28;

/// Turns the packet in place into an ICMP port-unreachable from the Service
/// address back to the client, and sends it out of the interface it came
/// in on. The client's TCP `connect()` fails with `ECONNREFUSED`, and a
/// connected UDP socket reports the same error.
#[inline(always)]
fn reject(ctx: &TcContext) -> i32 {
    match try_reject(ctx) {
        Ok(action) => action,
        Err(()) => TC_ACT_SHOT,
    }
}

#[inline(always)]
fn try_reject(ctx: &TcContext) -> Result<i32, ()> {
    // Only plain 20-byte IPv4 headers; packets with options are dropped.
    let orig: [u8; ETH_HLEN + 28] = ctx.load(0).map_err(|_| ())?;
    if orig[ETH_HLEN] != 0x45 {
        return Err(());
    }
    let mut out = [0u8; REJECT_LEN];
    // Ethernet: back to where the packet came from.
    out[0..6].copy_from_slice(&orig[6..12]);
    out[6..12].copy_from_slice(&orig[0..6]);
    out[12] = 0x08;
    out[13] = 0x00;
    // IPv4 header.
    let ip = ETH_HLEN;
    out[ip] = 0x45;
    out[ip + 2..ip + 4].copy_from_slice(&((20 + 8 + 28) as u16).to_be_bytes());
    out[ip + 8] = 64; // TTL
    out[ip + 9] = 1; // ICMP
    out[ip + 12..ip + 16].copy_from_slice(&orig[ip + 16..ip + 20]); // from the Service address
    out[ip + 16..ip + 20].copy_from_slice(&orig[ip + 12..ip + 16]); // to the client
    let ip_csum = checksum(&out[ip..ip + 20]);
    out[ip + 10..ip + 12].copy_from_slice(&ip_csum.to_be_bytes());
    // ICMP destination unreachable, port unreachable, quoting the packet.
    let icmp = ip + 20;
    out[icmp] = 3;
    out[icmp + 1] = 3;
    out[icmp + 8..icmp + 36].copy_from_slice(&orig[ETH_HLEN..ETH_HLEN + 28]);
    let icmp_csum = checksum(&out[icmp..icmp + 36]);
    out[icmp + 2..icmp + 4].copy_from_slice(&icmp_csum.to_be_bytes());

    // SAFETY: the context pointer the kernel gave this program.
    let ret = unsafe { bpf_skb_change_tail(ctx.skb.skb, REJECT_LEN as u32, 0) };
    if ret != 0 {
        return Err(());
    }
    ctx.store(0, &out, 0).map_err(|_| ())?;
    // SAFETY: as above.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    Ok(unsafe { bpf_redirect(ifindex, 0) } as i32)
}

/// The Internet checksum of `bytes` (even length).
#[inline(always)]
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in bytes.chunks_exact(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    // Two folds suffice for the short headers summed here (< 2^16 words).
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Rewrites one address and one port of the packet, fixing the IPv4 and L4
/// checksums incrementally.
#[inline(always)]
#[allow(clippy::too_many_arguments, reason = "one packet rewrite, all scalars")]
fn rewrite(
    ctx: &TcContext,
    flow: &Flow,
    addr_off: usize,
    old_addr: u32,
    new_addr: u32,
    port_off: usize,
    old_port: u16,
    new_port: u16,
) -> Result<(), ()> {
    let csum_off = match flow.proto {
        proto::TCP => Some((flow.l4_off + 16, 0u64)),
        proto::UDP => Some((flow.l4_off + 6, u64::from(BPF_F_MARK_MANGLED_0))),
        // SCTP uses a CRC32c over the payload, not affected by addresses
        // or ports of the pseudo header.
        _ => None,
    };
    if old_addr != new_addr {
        if let Some((off, extra)) = csum_off {
            ctx.l4_csum_replace(
                off,
                u64::from(old_addr),
                u64::from(new_addr),
                u64::from(BPF_F_PSEUDO_HDR) | extra | 4,
            )
            .map_err(|_| ())?;
        }
        ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(old_addr), u64::from(new_addr), 4)
            .map_err(|_| ())?;
        ctx.store(addr_off, &new_addr, 0).map_err(|_| ())?;
    }
    if old_port != new_port {
        if let Some((off, extra)) = csum_off {
            ctx.l4_csum_replace(off, u64::from(old_port), u64::from(new_port), extra | 2)
                .map_err(|_| ())?;
        }
        ctx.store(port_off, &new_port, 0).map_err(|_| ())?;
    }
    Ok(())
}
