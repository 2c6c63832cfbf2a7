//! Utilities for Coxswain's integration tests: privilege checks and network
//! namespace topologies that clean up after themselves.
//!
//! Every address used lives inside namespaces created here, so test traffic
//! never reaches the machine's uplink.

pub mod baseline;
pub mod fixture;
pub mod kubelet_env;
pub mod netns;
pub mod servers;

/// Fails the test with a clear message unless it runs as root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, eBPF): run it with `cargo xtask test` as root"
    );
}

/// A binary of this workspace, built by `cargo build --bins` (which
/// `cargo xtask test` runs first) next to the test executables.
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join(name))
        .expect("target directory");
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --bins`; `cargo xtask test` does it)",
        path.display()
    );
    path
}
