//! Socket-level load balancing for traffic the node itself originates: a
//! `connect()` or `sendmsg()` to a Service address is given a backend's
//! address before any packet exists, so no packet to a ClusterIP ever
//! leaves a host socket untranslated. Replies (`recvmsg`) and
//! `getpeername()` show the Service address again.

use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_set_retval},
    macros::{cgroup_sock_addr, map},
    maps::LruHashMap,
    programs::SockAddrContext,
};
use coxswain_ebpf_common::{
    RevNatV4, SOCK_REV_NAT_MAX_ENTRIES, ServiceKeyV4, SockRevNatKeyV4, proto, scope,
};

use crate::service::{NODE_CONFIG_V4, SERVICES_V4, pick_backend};

#[map]
static SOCK_REV_NAT_V4: LruHashMap<SockRevNatKeyV4, RevNatV4> =
    LruHashMap::pinned(SOCK_REV_NAT_MAX_ENTRIES, 0);

/// Let the syscall proceed.
const ALLOW: i32 = 1;
/// Fail the syscall (with the errno set by `bpf_set_retval`).
const DENY: i32 = 0;
const ECONNREFUSED: i32 = 111;

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    translate(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    translate(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx)
}

/// Whether the socket lives in the network namespace this node's agent
/// serves. Several nodes may share one cgroup hierarchy (network-namespace
/// nodes on one machine); each balances only its own sockets, and pods,
/// which have namespaces of their own, go through the tc path.
#[inline(always)]
fn ours(ctx: &SockAddrContext) -> bool {
    let Some(cfg) = NODE_CONFIG_V4.get(0) else {
        return true;
    };
    cfg.netns_cookie == 0 || unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) } == cfg.netns_cookie
}

#[inline(always)]
fn translate(ctx: &SockAddrContext) -> i32 {
    if !ours(ctx) {
        return ALLOW;
    }
    // SAFETY: the context pointer the kernel gave this program.
    let sa = unsafe { &mut *ctx.sock_addr };
    let protocol = sa.protocol as u8;
    if protocol != proto::TCP && protocol != proto::UDP {
        return ALLOW;
    }
    let master_key = ServiceKeyV4 {
        addr: sa.user_ip4,
        port: sa.user_port as u16,
        slot: 0,
        proto: protocol,
        scope: scope::ALL,
        pad: [0; 2],
    };
    let Some(master) = SERVICES_V4.get_ptr(&master_key) else {
        return ALLOW;
    };
    let master = unsafe { *master };
    if master.count == 0 {
        // No usable endpoint: refuse the connect like kube-proxy's REJECT.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return DENY;
    }
    // Host sockets all share the node's identity as "client" for ClientIP
    // affinity.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some((_, backend)) = pick_backend(&master_key, &master, 0, None, now) else {
        return ALLOW;
    };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let key = SockRevNatKeyV4 {
        cookie,
        addr: backend.addr,
        port: backend.port,
        pad: 0,
    };
    let rev = RevNatV4 {
        addr: sa.user_ip4,
        port: sa.user_port as u16,
        pad: 0,
    };
    let _ = SOCK_REV_NAT_V4.insert(&key, &rev, 0);
    sa.user_ip4 = backend.addr;
    sa.user_port = u32::from(backend.port);
    ALLOW
}

#[inline(always)]
fn reverse(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the context pointer the kernel gave this program.
    let sa = unsafe { &mut *ctx.sock_addr };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let key = SockRevNatKeyV4 {
        cookie,
        addr: sa.user_ip4,
        port: sa.user_port as u16,
        pad: 0,
    };
    if let Some(rev) = SOCK_REV_NAT_V4.get_ptr(&key) {
        let rev = unsafe { *rev };
        sa.user_ip4 = rev.addr;
        sa.user_port = u32::from(rev.port);
    }
    ALLOW
}
