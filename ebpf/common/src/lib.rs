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

#[cfg(feature = "user")]
mod pod {
    #![allow(
        unsafe_code,
        reason = "aya::Pod is an unsafe marker: each type is repr(C), Copy and has no padding"
    )]
    unsafe impl aya::Pod for super::IfaceCounterKey {}
    unsafe impl aya::Pod for super::Counters {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(core::mem::size_of::<IfaceCounterKey>(), 8);
        assert_eq!(core::mem::size_of::<Counters>(), 16);
    }

    #[test]
    fn hook_round_trips_through_raw() {
        for hook in Hook::ALL {
            assert_eq!(Hook::from_raw(hook as u32), Some(hook));
        }
        assert_eq!(Hook::from_raw(3), None);
    }
}
