//! Writes a volume's files so that readers never see a partial update (upstream's
//! `AtomicWriter`): the payload goes into a fresh hidden directory `..<timestamp>.<n>`, the
//! symlink `..data` is swapped to it with one `rename(2)`, and every top-level entry the
//! user sees is a symlink through `..data` (`token -> ..data/token`). A reader opening
//! `token` gets the old file or the new one, never a mix; the previous directory is removed
//! after the swap, and entries no longer in the payload go away. An unchanged payload
//! writes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

/// The symlink to the current payload directory.
pub const DATA_DIR: &str = "..data";
const DATA_DIR_TMP: &str = "..data_tmp";

/// One file of a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProjection {
    /// Its contents.
    pub data: Vec<u8>,
    /// Its permission bits.
    pub mode: u32,
}

/// A volume's files by path relative to the volume.
pub type Payload = BTreeMap<String, FileProjection>;

/// Refuses absolute paths, `..` components and names starting with `..` (reserved for the
/// writer's own entries), as upstream's `validatePath`.
pub fn validate_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the path is empty".to_owned());
    }
    if path.len() > 4096 {
        return Err(format!("the path {path:?} is longer than 4096 characters"));
    }
    let p = Path::new(path);
    if p.is_absolute() {
        return Err(format!("the path {path:?} must be relative"));
    }
    for c in p.components() {
        match c {
            Component::Normal(part) if part.to_string_lossy().starts_with("..") => {
                return Err(format!("the path {path:?} must not start with \"..\""));
            }
            Component::Normal(_) => {}
            _ => return Err(format!("the path {path:?} must not contain \"..\"")),
        }
    }
    Ok(())
}

fn top_level(path: &str) -> &str {
    path.split('/').next().unwrap_or(path)
}

/// The payload currently visible through `..data`, if any.
fn current_payload(dir: &Path) -> io::Result<Option<(PathBuf, Payload)>> {
    let link = dir.join(DATA_DIR);
    let target = match std::fs::read_link(&link) {
        Ok(t) => dir.join(t),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut payload = Payload::new();
    let mut stack = vec![target.clone()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
                continue;
            }
            let rel = entry.path().strip_prefix(&target).map_err(io::Error::other)?.to_string_lossy().into_owned();
            let data = std::fs::read(entry.path())?;
            payload.insert(rel, FileProjection { data, mode: meta.permissions().mode() & 0o7777 });
        }
    }
    Ok(Some((target, payload)))
}

/// A new `..<UTC time>.<nanoseconds>` directory (upstream's names, `..2006_01_02_15_04_05.N`).
fn new_timestamped_dir(dir: &Path) -> io::Result<PathBuf> {
    let now = jiff::Timestamp::now();
    let stamp = now.strftime("..%Y_%m_%d_%H_%M_%S").to_string();
    let nanos = i64::from(now.subsec_nanosecond());
    for n in 0i64.. {
        let candidate = dir.join(format!("{stamp}.{:09}", (nanos + n) % 1_000_000_000));
        match std::fs::create_dir(&candidate) {
            Ok(()) => {
                std::fs::set_permissions(&candidate, std::fs::Permissions::from_mode(0o755))?;
                return Ok(candidate);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    unreachable!("a directory cannot hold every candidate name")
}

/// Makes `dir` show exactly `payload`; returns whether anything changed. Paths must pass
/// [`validate_path`].
pub fn write(dir: &Path, payload: &Payload) -> io::Result<bool> {
    for path in payload.keys() {
        validate_path(path).map_err(io::Error::other)?;
    }
    std::fs::create_dir_all(dir)?;
    let old = current_payload(dir)?;
    let changed = old.as_ref().is_none_or(|(_, p)| p != payload);
    if changed {
        let fresh = new_timestamped_dir(dir)?;
        for (rel, file) in payload {
            let path = fresh.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, &file.data)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file.mode))?;
        }
        let name = fresh.file_name().map(PathBuf::from).ok_or_else(|| io::Error::other("unnamed payload directory"))?;
        let tmp = dir.join(DATA_DIR_TMP);
        let _ = std::fs::remove_file(&tmp);
        symlink(&name, &tmp)?;
        // The swap: readers see the old payload or the new one, whole.
        std::fs::rename(&tmp, dir.join(DATA_DIR))?;
    }
    // User-visible names: a symlink through `..data` per top-level entry.
    let wanted: BTreeSet<&str> = payload.keys().map(|p| top_level(p)).collect();
    for top in &wanted {
        let visible = dir.join(top);
        let target = Path::new(DATA_DIR).join(top);
        match std::fs::symlink_metadata(&visible) {
            Ok(meta) if meta.file_type().is_symlink() && std::fs::read_link(&visible)? == target => continue,
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&visible)?,
            Ok(_) => std::fs::remove_file(&visible)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        symlink(&target, &visible)?;
    }
    if changed && let Some((old_dir, _)) = old {
        std::fs::remove_dir_all(old_dir)?;
    }
    // Entries of earlier payloads (and of the plain layout older kubelets wrote).
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("..") || wanted.contains(name.as_str()) {
            continue;
        }
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(data: &str, mode: u32) -> FileProjection {
        FileProjection { data: data.as_bytes().to_vec(), mode }
    }

    fn payload(files: &[(&str, &str, u32)]) -> Payload {
        files.iter().map(|(p, d, m)| ((*p).to_owned(), file(d, *m))).collect()
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn files_appear_through_the_data_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let p = payload(&[("token", "t1", 0o644), ("sub/ca.crt", "ca", 0o600), ("namespace", "default", 0o644)]);
        assert!(write(dir.path(), &p).unwrap());
        assert_eq!(std::fs::read_to_string(dir.path().join("token")).unwrap(), "t1");
        assert_eq!(std::fs::read_to_string(dir.path().join("sub/ca.crt")).unwrap(), "ca");
        assert_eq!(std::fs::read_link(dir.path().join("token")).unwrap(), Path::new("..data/token"));
        assert_eq!(std::fs::read_link(dir.path().join("sub")).unwrap(), Path::new("..data/sub"));
        let mode = std::fs::metadata(dir.path().join("sub/ca.crt")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names = entries(dir.path());
        assert_eq!(names.len(), 5, "{names:?}");
        assert!(names[0].starts_with("..2") && names[1] == "..data", "{names:?}");
        // The same payload again writes nothing.
        let before = std::fs::read_link(dir.path().join(DATA_DIR)).unwrap();
        assert!(!write(dir.path(), &p).unwrap());
        assert_eq!(std::fs::read_link(dir.path().join(DATA_DIR)).unwrap(), before);
    }

    #[test]
    fn an_update_swaps_the_whole_payload_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &payload(&[("token", "old", 0o644), ("gone", "x", 0o644)])).unwrap();
        let first = std::fs::read_link(dir.path().join(DATA_DIR)).unwrap();
        // A reader holding the old file keeps reading it whole.
        let mut held = std::fs::File::open(dir.path().join("token")).unwrap();
        assert!(write(dir.path(), &payload(&[("token", "new", 0o644)])).unwrap());
        let second = std::fs::read_link(dir.path().join(DATA_DIR)).unwrap();
        assert_ne!(first, second);
        assert!(!dir.path().join(&first).exists(), "the previous payload directory is removed");
        assert!(!dir.path().join("gone").exists() && std::fs::symlink_metadata(dir.path().join("gone")).is_err());
        assert_eq!(std::fs::read_to_string(dir.path().join("token")).unwrap(), "new");
        let mut old = String::new();
        std::io::Read::read_to_string(&mut held, &mut old).unwrap();
        assert_eq!(old, "old");
        assert_eq!(entries(dir.path()).len(), 3, "{:?}", entries(dir.path()));
    }

    #[test]
    fn a_plain_file_of_an_older_layout_becomes_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("color"), "stale").unwrap();
        std::fs::write(dir.path().join("leftover"), "x").unwrap();
        write(dir.path(), &payload(&[("color", "blue", 0o644)])).unwrap();
        assert!(std::fs::symlink_metadata(dir.path().join("color")).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(dir.path().join("color")).unwrap(), "blue");
        assert!(!dir.path().join("leftover").exists());
    }

    #[test]
    fn a_reader_never_sees_a_partial_payload() {
        let dir = tempfile::tempdir().unwrap();
        let big = |c: char| c.to_string().repeat(256 * 1024);
        write(dir.path(), &payload(&[("a", &big('a'), 0o644), ("b", &big('a'), 0o644)])).unwrap();
        let path = dir.path().to_owned();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Both files through the same `..data`: always from one payload.
                    let data = std::fs::read_link(path.join(DATA_DIR)).unwrap();
                    let (Ok(a), Ok(b)) = (
                        std::fs::read_to_string(path.join(&data).join("a")),
                        std::fs::read_to_string(path.join(&data).join("b")),
                    ) else {
                        continue; // that payload was just removed: read again
                    };
                    assert!(a.len() == 256 * 1024 && a == b, "a torn payload");
                    // (A payload removed while the path resolved is not found: read again.)
                    let Ok(visible) = std::fs::read_to_string(path.join("a")) else { continue };
                    assert_eq!(visible.len(), 256 * 1024, "a partial file");
                    assert!(visible.chars().all(|c| c == visible.chars().next().unwrap()));
                    reads += 1;
                }
                reads
            })
        };
        for i in 0..40 {
            let c = if i % 2 == 0 { 'b' } else { 'a' };
            write(dir.path(), &payload(&[("a", &big(c), 0o644), ("b", &big(c), 0o644)])).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    }

    #[test]
    fn paths_stay_inside_the_volume() {
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "..data", "a/..hidden"] {
            assert!(validate_path(bad).is_err(), "{bad:?}");
        }
        for good in ["token", "a/b/c", "a.b", ".hidden"] {
            assert!(validate_path(good).is_ok(), "{good:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(write(dir.path(), &payload(&[("../escape", "x", 0o644)])).is_err());
        assert!(!dir.path().parent().unwrap().join("escape").exists());
    }
}
