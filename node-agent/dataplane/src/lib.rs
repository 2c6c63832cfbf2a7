//! Loads Coxswain's eBPF object, attaches its programs and reads its maps.
//!
//! This crate is the only place in user space that makes bpf syscalls (through
//! aya). Map layouts come from `coxswain-ebpf-common`.

mod bpffs;
mod counters;
mod error;
mod kernel_maps;
mod loader;
mod object;
mod service_maps;

pub use aya::programs::XdpMode;
pub use coxswain_ebpf_common::{Counters, Hook, IfaceCounterKey};
pub use counters::{IfaceCounters, sum_per_cpu};
pub use error::{Error, Result};
pub use kernel_maps::KernelServiceMaps;
pub use loader::{Dataplane, DEFAULT_PIN_DIR, LoadOptions, TcDirection};
pub use object::{EBPF_OBJECT_ENV, locate_object};
pub use service_maps::{MapOp, MapWriteError, MemoryServiceMaps, ServiceMaps, ServiceMapsDump};
