//! NodePort acceleration at XDP on the node's uplink: external flows to
//! NodePorts, externalIPs and load-balancer IPs are translated before the
//! kernel allocates an skb. A flow to a backend on this node is rewritten
//! and passed up (the kernel routes it to the pod); a flow to a backend on
//! another node is rewritten (source-NATed to this node) and sent straight
//! back out of the uplink (`XDP_TX`), as are the replies coming back from
//! that node, so the node's stack never sees them.
//!
//! Every flow shares the conntrack map with the tc programs, and anything
//! this program does not handle (IP options, fragments, SCTP, a Service
//! without endpoints to refuse, a next hop whose neighbour entry the kernel
//! has not resolved yet, replies of other flows) is passed unchanged to the
//! tc program on the same uplink, which does the complete job. So attaching
//! this program only ever moves work earlier, never changes what happens.

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, xdp_action},
    helpers::{bpf_fib_lookup, bpf_ktime_get_ns},
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use coxswain_ebpf_common::{Counters, ct_flags, nodeport_verdict, proto};

/// Packets and bytes per verdict (`nodeport_verdict`), per CPU.
#[map]
static NODEPORT_XDP_STATS: PerCpuArray<Counters> = PerCpuArray::pinned(4, 0);

use crate::service::{
    BACKEND_COUNTERS, Flow, Forward, REV_NAT_V4, SERVICE_COUNTERS, count, forward_flow, lookup_master,
    reply_entry,
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
/// Only IPv4 headers without options take this path.
const IP_HLEN: usize = 20;
const L4_OFF: usize = ETH_HLEN + IP_HLEN;
const IP_CSUM_OFF: usize = ETH_HLEN + 10;
const IP_SRC_OFF: usize = ETH_HLEN + 12;
const IP_DST_OFF: usize = ETH_HLEN + 16;
const AF_INET: u8 = 2;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;

#[xdp]
pub fn nodeport_xdp(ctx: XdpContext) -> u32 {
    match try_nodeport_xdp(&ctx) {
        Ok(action) => action,
        // Not ours to judge: the tc program sees it next.
        Err(()) => xdp_action::XDP_PASS,
    }
}

/// A pointer to `T` at `off` in the packet, bounds-checked for the verifier.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Result<*mut T, ()> {
    let start = ctx.data();
    if start + off + core::mem::size_of::<T>() > ctx.data_end() {
        return Err(());
    }
    Ok((start + off) as *mut T)
}

#[inline(always)]
fn load<T: Copy>(ctx: &XdpContext, off: usize) -> Result<T, ()> {
    // SAFETY: in bounds (checked); packet data may be unaligned.
    Ok(unsafe { core::ptr::read_unaligned(ptr_at::<T>(ctx, off)?) })
}

#[inline(always)]
fn store<T: Copy>(ctx: &XdpContext, off: usize, value: T) -> Result<(), ()> {
    // SAFETY: as in `load`.
    unsafe { core::ptr::write_unaligned(ptr_at::<T>(ctx, off)?, value) };
    Ok(())
}

/// The flow of a plain IPv4 TCP or UDP packet; `None` for anything else.
#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<Option<Flow>, ()> {
    if u16::from_be(load::<u16>(ctx, 12)?) != ETH_P_IP {
        return Ok(None);
    }
    if load::<u8>(ctx, ETH_HLEN)? != 0x45 {
        return Ok(None);
    }
    // Fragments (more-fragments flag or an offset) go the tc way.
    if u16::from_be(load::<u16>(ctx, ETH_HLEN + 6)?) & 0x3fff != 0 {
        return Ok(None);
    }
    let proto = load::<u8>(ctx, ETH_HLEN + 9)?;
    let tcp_flags = match proto {
        proto::TCP => load::<u8>(ctx, L4_OFF + 13)?,
        proto::UDP => {
            // The checksum must be in the packet for the rewrite.
            load::<u16>(ctx, L4_OFF + 6)?;
            0
        }
        _ => return Ok(None),
    };
    if proto == proto::TCP {
        load::<u16>(ctx, L4_OFF + 16)?;
    }
    Ok(Some(Flow {
        saddr: load(ctx, IP_SRC_OFF)?,
        daddr: load(ctx, IP_DST_OFF)?,
        sport: load(ctx, L4_OFF)?,
        dport: load(ctx, L4_OFF + 2)?,
        proto,
        l4_off: L4_OFF,
        tcp_flags,
    }))
}

/// A packet of a Service flow left to the tc program.
#[inline(always)]
fn pass(len: u64) -> Result<u32, ()> {
    count(&NODEPORT_XDP_STATS, nodeport_verdict::PASS, len);
    Ok(xdp_action::XDP_PASS)
}

#[inline(always)]
fn try_nodeport_xdp(ctx: &XdpContext) -> Result<u32, ()> {
    let Some(flow) = parse(ctx)? else {
        return Ok(xdp_action::XDP_PASS);
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let len = (ctx.data_end() - ctx.data()) as u64;

    // The reply of an external flow this node source-NATed to a backend on
    // another node: back to the client, from the Service address, out of
    // the interface it came in on.
    if let Some(ct) = reply_entry(&flow, now) {
        const SNAT_EXTERNAL: u16 = ct_flags::SNAT | ct_flags::EXTERNAL;
        if ct.flags & SNAT_EXTERNAL != SNAT_EXTERNAL {
            return pass(len);
        }
        let Some(rev) = REV_NAT_V4.get_ptr(&ct.service_id) else {
            return pass(len);
        };
        let rev = unsafe { *rev };
        let Some(macs) = next_hop(ctx, &flow, rev.addr, ct.client_addr)? else {
            return pass(len);
        };
        rewrite(ctx, &flow, Some((rev.addr, rev.port)), (ct.client_addr, flow.dport))?;
        set_macs(ctx, &macs)?;
        count(&SERVICE_COUNTERS, ct.service_id, len);
        count(&BACKEND_COUNTERS, ct.backend_id, len);
        count(&NODEPORT_XDP_STATS, nodeport_verdict::TX, len);
        return Ok(xdp_action::XDP_TX);
    }

    let Some((master_key, master)) = lookup_master(&flow, true) else {
        return Ok(xdp_action::XDP_PASS);
    };
    if master.count == 0 {
        // The tc program answers with an ICMP port-unreachable.
        return pass(len);
    }
    let ct = match forward_flow(&master_key, &master, &flow, true, now) {
        Forward::Flow(ct) => ct,
        Forward::Reject | Forward::Drop => return pass(len),
    };
    if ct.flags & ct_flags::SNAT != 0 {
        // A backend on another node: this node's address as the source,
        // straight back out of the uplink towards that node. Without a
        // resolved next hop, the tc path does the same from the same
        // conntrack entries (its egress program applies the source NAT).
        let Some(macs) = next_hop(ctx, &flow, ct.snat_addr, ct.backend_addr)? else {
            return pass(len);
        };
        rewrite(
            ctx,
            &flow,
            Some((ct.snat_addr, flow.sport)),
            (ct.backend_addr, ct.backend_port),
        )?;
        set_macs(ctx, &macs)?;
        count(&SERVICE_COUNTERS, ct.service_id, len);
        count(&BACKEND_COUNTERS, ct.backend_id, len);
        count(&NODEPORT_XDP_STATS, nodeport_verdict::TX, len);
        return Ok(xdp_action::XDP_TX);
    }
    // A backend on this node: rewritten here, routed to the pod by the
    // kernel. Its replies leave through the uplink's egress program.
    rewrite(ctx, &flow, None, (ct.backend_addr, ct.backend_port))?;
    count(&SERVICE_COUNTERS, ct.service_id, len);
    count(&BACKEND_COUNTERS, ct.backend_id, len);
    count(&NODEPORT_XDP_STATS, nodeport_verdict::LOCAL, len);
    Ok(xdp_action::XDP_PASS)
}

/// Source and destination MAC of the next hop towards `daddr`, when the
/// route leaves through the interface the packet came in on and the kernel
/// knows the neighbour.
#[inline(always)]
fn next_hop(ctx: &XdpContext, flow: &Flow, saddr: u32, daddr: u32) -> Result<Option<[u8; 12]>, ()> {
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let tot_len = u16::from_be(load::<u16>(ctx, ETH_HLEN + 2)?);
    // SAFETY: a plain C struct; zero is a valid value of every field.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = flow.proto;
    params.sport = flow.sport;
    params.dport = flow.dport;
    params.__bindgen_anon_1.tot_len = tot_len;
    params.ifindex = ifindex;
    params.__bindgen_anon_3.ipv4_src = saddr;
    params.__bindgen_anon_4.ipv4_dst = daddr;
    // SAFETY: the context and a stack struct of the size passed.
    let ret = unsafe {
        bpf_fib_lookup(
            ctx.ctx.cast(),
            &mut params,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if ret != BPF_FIB_LKUP_RET_SUCCESS || params.ifindex != ifindex {
        return Ok(None);
    }
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&params.dmac);
    macs[6..].copy_from_slice(&params.smac);
    Ok(Some(macs))
}

#[inline(always)]
fn set_macs(ctx: &XdpContext, macs: &[u8; 12]) -> Result<(), ()> {
    store(ctx, 0, *macs)
}

/// Rewrites the source (when given) and destination address and port,
/// fixing the IPv4 and L4 checksums incrementally (RFC 1624).
#[inline(always)]
fn rewrite(
    ctx: &XdpContext,
    flow: &Flow,
    src: Option<(u32, u16)>,
    dst: (u32, u16),
) -> Result<(), ()> {
    let l4_csum_off = match flow.proto {
        proto::TCP => L4_OFF + 16,
        _ => L4_OFF + 6,
    };
    let mut ip_csum: u16 = load(ctx, IP_CSUM_OFF)?;
    let mut l4_csum: u16 = load(ctx, l4_csum_off)?;
    // A UDP datagram without checksum stays without.
    let l4_has_csum = flow.proto == proto::TCP || l4_csum != 0;
    let mut edit = |old_addr: u32, new_addr: u32, old_port: u16, new_port: u16| {
        ip_csum = csum_replace4(ip_csum, old_addr, new_addr);
        l4_csum = csum_replace4(l4_csum, old_addr, new_addr);
        l4_csum = csum_replace2(l4_csum, old_port, new_port);
    };
    if let Some((addr, port)) = src {
        edit(flow.saddr, addr, flow.sport, port);
    }
    edit(flow.daddr, dst.0, flow.dport, dst.1);
    if let Some((addr, port)) = src {
        store(ctx, IP_SRC_OFF, addr)?;
        store(ctx, L4_OFF, port)?;
    }
    store(ctx, IP_DST_OFF, dst.0)?;
    store(ctx, L4_OFF + 2, dst.1)?;
    store(ctx, IP_CSUM_OFF, ip_csum)?;
    if l4_has_csum {
        // In UDP, 0 means "no checksum": a computed 0 is sent as its
        // ones'-complement twin.
        if flow.proto == proto::UDP && l4_csum == 0 {
            l4_csum = 0xffff;
        }
        store(ctx, l4_csum_off, l4_csum)?;
    }
    Ok(())
}

/// The checksum `csum` after a 32-bit field changed from `old` to `new`.
/// All values as the packet holds them (network byte order read natively):
/// ones'-complement sums do not depend on byte order.
#[inline(always)]
fn csum_replace4(csum: u16, old: u32, new: u32) -> u16 {
    let mut sum = u32::from(!csum);
    sum += (!old >> 16) + (!old & 0xffff);
    sum += (new >> 16) + (new & 0xffff);
    fold(sum)
}

/// [`csum_replace4`] for a 16-bit field.
#[inline(always)]
fn csum_replace2(csum: u16, old: u16, new: u16) -> u16 {
    let sum = u32::from(!csum) + u32::from(!old) + u32::from(new);
    fold(sum)
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
