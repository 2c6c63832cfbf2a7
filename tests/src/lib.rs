//! Utilities for Coxswain's integration tests: privilege checks and network
//! namespace topologies that clean up after themselves.
//!
//! Every address used lives inside namespaces created here, so test traffic
//! never reaches the machine's uplink.

pub mod fixture;
pub mod netns;
pub mod servers;

/// Fails the test with a clear message unless it runs as root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, eBPF): run it with `cargo xtask test` as root"
    );
}
