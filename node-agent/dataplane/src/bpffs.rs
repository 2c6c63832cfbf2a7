//! Making sure bpffs is mounted and the pin directory exists.

use std::path::Path;

use crate::{Error, Result};

const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Mounts bpffs at `/sys/fs/bpf` if the pin directory lives there and
/// nothing is mounted yet, then creates the directory.
pub(crate) fn ensure_pin_dir(pin_dir: &Path) -> Result<()> {
    let pin_err = |source| Error::PinDir {
        path: pin_dir.to_owned(),
        source,
    };
    if pin_dir.starts_with(BPFFS_ROOT) && !bpffs_mounted() {
        nix::mount::mount(
            Some("bpf"),
            BPFFS_ROOT,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|errno| pin_err(std::io::Error::from(errno)))?;
    }
    std::fs::create_dir_all(pin_dir).map_err(pin_err)
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|line| {
            let mut fields = line.split_whitespace().skip(1);
            fields.next() == Some(BPFFS_ROOT) && fields.next() == Some("bpf")
        })
}
