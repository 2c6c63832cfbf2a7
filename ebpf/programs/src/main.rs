//! Coxswain's kernel programs: tc classifiers and an XDP program.
//!
//! This first set counts packets and bytes per (interface, hook) in a per-CPU
//! hash map, proving the whole chain (build, load, attach, read back) end to
//! end. Map layouts come from `coxswain-ebpf-common`; nothing here knows
//! about Kubernetes.
#![no_std]
#![no_main]

mod service;
mod sock;
mod xdp;

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    macros::{classifier, map, xdp},
    maps::PerCpuHashMap,
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::error;
use coxswain_ebpf_common::{Counters, Hook, IFACE_COUNTERS_MAX_ENTRIES, IfaceCounterKey};

/// Packets and bytes per (ifindex, hook), one slot per CPU so that no atomic
/// operation is needed on the packet path.
#[map]
static IFACE_COUNTERS: PerCpuHashMap<IfaceCounterKey, Counters> =
    PerCpuHashMap::with_max_entries(IFACE_COUNTERS_MAX_ENTRIES, 0);

#[classifier]
pub fn count_tc_ingress(ctx: TcContext) -> i32 {
    count_skb(&ctx, Hook::TcIngress);
    TC_ACT_OK
}

#[classifier]
pub fn count_tc_egress(ctx: TcContext) -> i32 {
    count_skb(&ctx, Hook::TcEgress);
    TC_ACT_OK
}

#[xdp]
pub fn count_xdp(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let ifindex = ctx.ingress_ifindex() as u32;
    if try_count(ifindex, Hook::Xdp, len).is_err() {
        error!(&ctx, "iface counter map full: ifindex {}", ifindex);
    }
    xdp_action::XDP_PASS
}

#[inline(always)]
fn count_skb(ctx: &TcContext, hook: Hook) {
    // SAFETY: `skb` is the context pointer the kernel handed to this program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if try_count(ifindex, hook, u64::from(ctx.len())).is_err() {
        error!(ctx, "iface counter map full: ifindex {}", ifindex);
    }
}

#[inline(always)]
fn try_count(ifindex: u32, hook: Hook, len: u64) -> Result<(), i64> {
    let key = IfaceCounterKey {
        ifindex,
        hook: hook as u32,
    };
    match IFACE_COUNTERS.get_ptr_mut(&key) {
        Some(counters) => {
            // SAFETY: per-CPU value, only this CPU writes it while we run.
            unsafe {
                (*counters).packets += 1;
                (*counters).bytes += len;
            }
            Ok(())
        }
        None => {
            let first = Counters {
                packets: 1,
                bytes: len,
            };
            IFACE_COUNTERS
                .insert(&key, &first, 0)
                .map_err(|e| i64::from(e))
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
