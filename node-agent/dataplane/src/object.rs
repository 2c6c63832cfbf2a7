//! Finds the eBPF object that `cargo xtask build-ebpf` produced.

use std::{
    env,
    path::{Path, PathBuf},
    time::SystemTime,
};

use crate::{Error, Result};

/// Environment variable that names the eBPF object explicitly.
pub const EBPF_OBJECT_ENV: &str = "COXSWAIN_EBPF_OBJECT";

/// Where the object lives relative to a cargo target directory.
const TARGET_RELATIVE: [&str; 2] = [
    "bpfel-unknown-none/release/coxswain-ebpf",
    "bpfel-unknown-none/debug/coxswain-ebpf",
];

/// Installed location, for packaged agents.
const INSTALLED: &str = "/usr/local/lib/coxswain/coxswain-ebpf";

/// Returns the eBPF object to load.
///
/// Order: an explicit path, then `$COXSWAIN_EBPF_OBJECT`, then the newest of
/// the build outputs found in a cargo target directory above the running
/// executable (so `target/debug/coxswain-node-agent` and test binaries in
/// `target/debug/deps/` find `target/bpfel-unknown-none/*/coxswain-ebpf`),
/// then the installed location.
pub fn locate_object(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    if let Some(path) = env::var_os(EBPF_OBJECT_ENV) {
        return Ok(PathBuf::from(path));
    }
    let mut searched = Vec::new();
    let exe = env::current_exe().ok();
    let candidates = exe
        .iter()
        .flat_map(|exe| exe.ancestors().skip(1).take(4))
        .flat_map(|dir| TARGET_RELATIVE.iter().map(move |rel| dir.join(rel)))
        .chain(std::iter::once(PathBuf::from(INSTALLED)));
    let mut best: Option<(SystemTime, PathBuf)> = None;
    for candidate in candidates {
        match candidate.metadata().and_then(|m| m.modified()) {
            Ok(mtime) if best.as_ref().is_none_or(|(t, _)| mtime > *t) => {
                best = Some((mtime, candidate));
            }
            Ok(_) => {}
            Err(_) => searched.push(candidate.display().to_string()),
        }
    }
    best.map(|(_, path)| path)
        .ok_or_else(|| Error::ObjectNotFound {
            searched: searched.join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_path_wins() {
        let path = Path::new("/nonexistent/obj");
        assert_eq!(locate_object(Some(path)).unwrap(), path);
    }
}
