//! Name rules: RFC 1123 labels and subdomains, qualified names (label keys), label values.
//! Each returns `None` when valid, else the message upstream gives.

fn is_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// An RFC 1123 label: at most 63 lowercase alphanumerics or '-', alphanumeric at both ends.
pub(crate) fn dns1123_label(s: &str) -> Option<String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| is_alnum(c) || c == '-')
        && s.starts_with(is_alnum)
        && s.ends_with(is_alnum);
    (!ok).then(|| {
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', \
         and must start and end with an alphanumeric character (e.g. 'my-name', or '123-abc'), \
         and be at most 63 characters"
            .to_owned()
    })
}

/// An RFC 1123 subdomain: at most 253 characters, dot-separated labels.
pub(crate) fn dns1123_subdomain(s: &str) -> Option<String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part.chars().all(|c| is_alnum(c) || c == '-')
                && part.starts_with(is_alnum)
                && part.ends_with(is_alnum)
        });
    (!ok).then(|| {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' \
         or '.', and must start and end with an alphanumeric character (e.g. 'example.com'), \
         and be at most 253 characters"
            .to_owned()
    })
}

/// A name usable as a URL path segment (RBAC objects).
pub(crate) fn path_segment_name(s: &str) -> Option<String> {
    if s == "." || s == ".." {
        return Some(format!("may not be '{s}'"));
    }
    if s.contains('/') || s.contains('%') {
        return Some("may not contain '/' or '%'".to_owned());
    }
    None
}

fn name_part(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| alnum(c) || c == '-' || c == '_' || c == '.')
        && s.starts_with(alnum)
        && s.ends_with(alnum)
}

/// A qualified name (label or annotation key): an optional DNS subdomain prefix and '/', then
/// a name of at most 63 alphanumerics, '-', '_' or '.'.
pub(crate) fn qualified_name(s: &str) -> Option<String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix
        && dns1123_subdomain(p).is_some()
    {
        return Some("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'".to_owned());
    }
    if !name_part(name) {
        return Some(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start \
             and end with an alphanumeric character (e.g. 'MyName', or 'my.name', or \
             '123-abc'), with an optional DNS subdomain prefix and '/' (e.g. \
             'example.com/MyName')"
                .to_owned(),
        );
    }
    None
}

/// A label value: empty, or at most 63 alphanumerics, '-', '_' or '.', alphanumeric at both ends.
pub(crate) fn label_value(s: &str) -> Option<String> {
    if s.is_empty() || name_part(s) {
        None
    } else {
        Some(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', \
             '_' or '.', and must start and end with an alphanumeric character, at most 63 \
             characters"
                .to_owned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules_table() {
        // (input, label ok, subdomain ok, qualified name ok, label value ok)
        let table = [
            ("web", true, true, true, true),
            ("web-1", true, true, true, true),
            ("a.b", false, true, true, true),
            ("Web", false, false, true, true),
            ("-web", false, false, false, false),
            ("", false, false, false, true),
            ("app.kubernetes.io/name", false, false, true, false),
            ("x_y", false, false, true, true),
        ];
        for (s, label, sub, qn, lv) in table {
            assert_eq!(dns1123_label(s).is_none(), label, "label {s:?}");
            assert_eq!(dns1123_subdomain(s).is_none(), sub, "subdomain {s:?}");
            assert_eq!(qualified_name(s).is_none(), qn, "qualified {s:?}");
            assert_eq!(label_value(s).is_none(), lv, "value {s:?}");
        }
        assert!(dns1123_label(&"a".repeat(64)).is_some());
        assert!(path_segment_name("system:controller").is_none());
        assert!(path_segment_name("a/b").is_some());
    }
}
