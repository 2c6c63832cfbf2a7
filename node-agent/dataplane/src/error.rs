//! Errors of the dataplane loader.

use std::path::PathBuf;

/// Errors from loading, attaching or reading the eBPF dataplane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The eBPF object was not found in any of the searched places.
    #[error(
        "failed to find the eBPF object (searched: {searched}); build it with `cargo xtask build-ebpf` or set {env}",
        env = crate::EBPF_OBJECT_ENV
    )]
    ObjectNotFound {
        /// The places searched, comma separated.
        searched: String,
    },
    /// The eBPF object file could not be read.
    #[error("failed to read eBPF object {path}: {source}")]
    ReadObject {
        /// Path of the object.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel or aya refused the object (maps, BTF, relocations).
    #[error("failed to load eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    /// The object lacks a program this version of the agent expects.
    #[error("eBPF object has no program named {0}; rebuild it with `cargo xtask build-ebpf`")]
    MissingProgram(&'static str),
    /// The object lacks a map this version of the agent expects.
    #[error("eBPF object has no map named {0}; rebuild it with `cargo xtask build-ebpf`")]
    MissingMap(&'static str),
    /// The verifier rejected a program, or its type was unexpected.
    #[error("failed to load program {name}: {source}")]
    Program {
        /// Program name.
        name: &'static str,
        /// The aya error (the verifier log is in its chain).
        #[source]
        source: aya::programs::ProgramError,
    },
    /// Attaching a program to an interface failed.
    #[error("failed to attach {name} to interface {iface}: {source}")]
    Attach {
        /// Program name.
        name: &'static str,
        /// Interface name.
        iface: String,
        /// The aya error.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// The service maps could not be opened.
    #[error("failed to open the service maps: {0}")]
    ServiceMaps(#[source] crate::MapWriteError),
    /// The bpffs pin directory could not be prepared.
    #[error("failed to prepare bpffs pin directory {path}: {source}")]
    PinDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The cgroup v2 directory to attach to could not be opened.
    #[error("failed to open cgroup {path} (a cgroup v2 directory is needed): {source}")]
    Cgroup {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A program link could not be pinned or reopened.
    #[error("failed to pin or reopen link {path}: {source}")]
    PinLink {
        /// The pin path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A map could not be opened or read.
    #[error("failed to read map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// The aya error.
        #[source]
        source: aya::maps::MapError,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
