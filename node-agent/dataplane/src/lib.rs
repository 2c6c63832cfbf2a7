//! Loads Coxswain's eBPF object, attaches its programs and reads its maps.
//!
//! This crate is the only place in user space that makes bpf syscalls (through
//! aya). Map layouts come from `coxswain-ebpf-common`.

mod counters;
mod error;
mod loader;
mod object;

pub use aya::programs::XdpMode;
pub use coxswain_ebpf_common::{Counters, Hook, IfaceCounterKey};
pub use counters::{IfaceCounters, sum_per_cpu};
pub use error::{Error, Result};
pub use loader::{Dataplane, TcDirection};
pub use object::{EBPF_OBJECT_ENV, locate_object};
