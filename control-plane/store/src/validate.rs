//! Argument checks shared by both backends, so bad input fails the same way everywhere.

use crate::{Error, Result, Revision};

/// The largest value a write accepts, in bytes: 1.5 MiB, etcd's default request limit
/// (`--max-request-bytes`). An etcd cluster behind [`crate::EtcdStore`] must accept requests
/// of at least `MAX_VALUE_SIZE + MAX_KEY_SIZE` plus framing; 2 MiB is enough.
pub const MAX_VALUE_SIZE: usize = 1536 * 1024;

/// The longest key or prefix accepted, in bytes.
pub const MAX_KEY_SIZE: usize = 4096;

fn invalid_key(key: &str, reason: &'static str) -> Error {
    let mut shown = key.to_owned();
    if shown.len() > 128 {
        let mut end = 128;
        while !shown.is_char_boundary(end) {
            end -= 1;
        }
        shown.truncate(end);
        shown.push('…');
    }
    Error::InvalidKey { key: shown, reason }
}

fn check_common(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(invalid_key(key, "must not be empty"));
    }
    if !key.starts_with('/') {
        return Err(invalid_key(key, "must start with '/'"));
    }
    if key.len() > MAX_KEY_SIZE {
        return Err(invalid_key(key, "longer than MAX_KEY_SIZE (4096 bytes)"));
    }
    if key.contains('\0') {
        return Err(invalid_key(key, "must not contain NUL"));
    }
    Ok(())
}

/// Checks a key naming one object: non-empty, starts with '/', does not end with '/'.
pub(crate) fn key(key: &str) -> Result<()> {
    check_common(key)?;
    if key.ends_with('/') {
        return Err(invalid_key(
            key,
            "must not end with '/' (that names a prefix)",
        ));
    }
    Ok(())
}

/// Checks a prefix for list and count: starts and ends with '/'.
pub(crate) fn prefix(prefix: &str) -> Result<()> {
    check_common(prefix)?;
    if !prefix.ends_with('/') {
        return Err(invalid_key(prefix, "a prefix must end with '/'"));
    }
    Ok(())
}

/// Checks a watch target: a prefix (ends with '/') or a single key.
pub(crate) fn key_or_prefix(target: &str) -> Result<()> {
    check_common(target)
}

/// Checks a value's size.
pub(crate) fn value(key: &str, value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE_SIZE {
        return Err(Error::ValueTooLarge {
            key: key.to_owned(),
            size: value.len(),
            limit: MAX_VALUE_SIZE,
        });
    }
    Ok(())
}

/// Checks a revision that must name a real revision (reads at a revision, CAS expectations).
pub(crate) fn revision(revision: Revision) -> Result<()> {
    if revision < 1 {
        return Err(Error::InvalidRevision {
            revision,
            reason: "must be at least 1",
        });
    }
    Ok(())
}

/// Checks the start of a watch ("events after `from`"): zero means from the beginning.
pub(crate) fn watch_start(from: Revision) -> Result<()> {
    if from < 0 {
        return Err(Error::InvalidRevision {
            revision: from,
            reason: "a watch starts after a revision of 0 or more",
        });
    }
    Ok(())
}

/// The first key after every key starting with `prefix` (the exclusive end of its range).
///
/// `prefix` is non-empty and ends with '/' or another ASCII byte below 0x7f in every use here,
/// so incrementing the last byte keeps it valid UTF-8.
pub(crate) fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return String::from_utf8(bytes).unwrap_or_default();
        }
    }
    // Only reachable for prefixes made of bytes >= 0x7f, which `prefix` rejects (they
    // start with '/'); an empty end means "no upper bound" to callers.
    String::new()
}

/// Whether `key` is selected by a watch target (prefix if it ends with '/', else exact key).
pub(crate) fn selects(target: &str, key: &str) -> bool {
    if target.ends_with('/') {
        key.starts_with(target)
    } else {
        key == target
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_rules() {
        // (input, accepted as key, accepted as prefix, accepted as watch target)
        let table: &[(&str, bool, bool, bool)] = &[
            ("/pods/a", true, false, true),
            ("/pods/", false, true, true),
            ("/", false, true, true),
            ("", false, false, false),
            ("pods/a", false, false, false),
            ("/a\0b", false, false, false),
        ];
        for &(input, as_key, as_prefix, as_target) in table {
            assert_eq!(key(input).is_ok(), as_key, "key({input:?})");
            assert_eq!(prefix(input).is_ok(), as_prefix, "prefix({input:?})");
            assert_eq!(key_or_prefix(input).is_ok(), as_target, "target({input:?})");
        }
        assert!(key(&format!("/{}", "x".repeat(MAX_KEY_SIZE))).is_err());
    }

    #[test]
    fn prefix_end_and_selection() {
        assert_eq!(prefix_end("/pods/"), "/pods0");
        assert_eq!(prefix_end("/"), "0");
        assert!(selects("/pods/", "/pods/a"));
        assert!(!selects("/pods/", "/podsx"));
        assert!(selects("/pods/a", "/pods/a"));
        assert!(!selects("/pods/a", "/pods/ab"));
    }

    #[test]
    fn value_limit() {
        assert!(value("/k", &vec![0; MAX_VALUE_SIZE]).is_ok());
        assert!(matches!(
            value("/k", &vec![0; MAX_VALUE_SIZE + 1]),
            Err(Error::ValueTooLarge { size, limit: MAX_VALUE_SIZE, .. }) if size == MAX_VALUE_SIZE + 1
        ));
    }
}
