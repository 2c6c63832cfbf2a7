//! Loads Coxswain's eBPF object, attaches its programs and reads its maps.
//!
//! This crate is the only place in user space that makes bpf syscalls (through
//! aya). Map layouts come from `coxswain-ebpf-common`.
#![allow(
    clippy::result_large_err,
    reason = "aya's error types are large; `Error` is returned only on cold paths (load, attach, reads)"
)]

mod bpffs;
mod conntrack;
mod counters;
mod error;
mod kernel_maps;
mod loader;
mod object;
mod service_maps;

pub use aya::programs::XdpMode;
pub use conntrack::{ConntrackGc, GcStats, StaleBackend, monotonic_now_ns, stale_keys};
pub use counters::{IfaceCounters, sum_per_cpu};
pub use coxswain_ebpf_common::{Counters, Hook, IfaceCounterKey};
pub use error::{Error, Result};
pub use kernel_maps::KernelServiceMaps;
pub use loader::{DEFAULT_PIN_DIR, Dataplane, LoadOptions, TcDirection};
pub use object::{EBPF_OBJECT_ENV, locate_object};
pub use service_maps::{MapOp, MapWriteError, MemoryServiceMaps, ServiceMaps, ServiceMapsDump};
