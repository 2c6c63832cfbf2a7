//! Builds small OCI image archives (busybox-static based) without a registry, for containerd to import.
//!
//! An archive is an OCI image layout in a tar (`oci-layout`, `index.json`,
//! `blobs/sha256/...`) holding one uncompressed layer: `/bin/busybox` plus a
//! symlink per applet, a minimal `/etc`, and the usual empty directories. The
//! index carries the `io.containerd.image.name` annotation, so
//! `ctr -n k8s.io images import` (and the node agent's import endpoint) name
//! the image as asked. Archives are deterministic: the same spec gives the
//! same bytes, so importing twice changes nothing.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The sandbox ("pause") image the node agent configures containerd with.
pub const PAUSE_IMAGE: &str = "registry.coxswain.local/pause:3.10";

/// Where Debian's `busybox-static` installs its binary.
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";

/// Applets linked when `busybox --list` cannot be run.
const FALLBACK_APPLETS: &[&str] = &[
    "sh", "ash", "cat", "echo", "env", "false", "grep", "head", "hostname", "httpd", "id", "kill",
    "ls", "mkdir", "nc", "printenv", "ps", "pwd", "rm", "sed", "sleep", "tail", "test", "touch",
    "true", "wc", "wget",
];

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The busybox binary could not be read.
    #[error("failed to read the busybox binary {path}: {source} (install busybox-static)")]
    ReadBusybox {
        /// The path tried.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing the tar stream failed.
    #[error("failed to write the image archive: {0}")]
    Write(#[source] std::io::Error),
    /// The image name is not a valid reference.
    #[error("invalid image name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What to build.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Image reference (`name:tag`; a bare name gets `docker.io/library/` and
    /// `:latest`, as containerd's CRI plugin normalizes it).
    pub name: String,
    /// `Entrypoint` of the image config.
    pub entrypoint: Vec<String>,
    /// `Cmd` of the image config.
    pub cmd: Vec<String>,
    /// `Env` of the image config (`KEY=value`).
    pub env: Vec<String>,
    /// `WorkingDir` of the image config.
    pub working_dir: Option<String>,
    /// The statically linked busybox to copy in.
    pub busybox: PathBuf,
    /// Extra regular files: absolute path in the image, content, mode.
    pub files: Vec<(String, Vec<u8>, u32)>,
}

impl ImageSpec {
    /// A busybox image whose default command is `sh`.
    pub fn busybox(name: &str) -> ImageSpec {
        ImageSpec {
            name: name.to_owned(),
            entrypoint: Vec::new(),
            cmd: vec!["sh".into()],
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            working_dir: None,
            busybox: PathBuf::from(DEFAULT_BUSYBOX),
            files: Vec::new(),
        }
    }

    /// The sandbox image: busybox whose process sleeps until killed.
    pub fn pause(name: &str) -> ImageSpec {
        ImageSpec {
            entrypoint: vec!["/bin/sleep".into(), "infinity".into()],
            cmd: Vec::new(),
            ..ImageSpec::busybox(name)
        }
    }
}

/// The fully qualified form of an image reference, as containerd's CRI
/// plugin stores it: `busybox` → `docker.io/library/busybox:latest`,
/// `me/app:1` → `docker.io/me/app:1`, `reg.local:5000/app` → `reg.local:5000/app:latest`.
pub fn normalize_reference(name: &str) -> Result<String> {
    let invalid = |reason| Error::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("the name is empty"));
    }
    if name.chars().any(char::is_whitespace) {
        return Err(invalid("it contains whitespace"));
    }
    if split_tag(name).0.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(invalid(
            "repository names are lower case (only the tag may have upper case)",
        ));
    }
    Ok(qualify(name))
}

/// Splits `repo[:tag][@digest]` into the repository and the rest.
fn split_tag(name: &str) -> (&str, Option<&str>) {
    let without_digest = name.split('@').next().unwrap_or(name);
    let last_slash = without_digest.rfind('/').map_or(0, |i| i + 1);
    match without_digest[last_slash..].rfind(':') {
        Some(i) => (
            &name[..last_slash + i],
            Some(&without_digest[last_slash + i + 1..]),
        ),
        None => (without_digest, None),
    }
}

fn qualify(name: &str) -> String {
    let first = name.split('/').next().unwrap_or(name);
    let has_domain = name.contains('/')
        && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut out = if has_domain {
        name.to_owned()
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    let (_, tag) = split_tag(&out);
    if tag.is_none() && !out.contains('@') {
        out.push_str(":latest");
    }
    out
}

fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in hash {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// The applets of a busybox binary (`busybox --list`), or a fixed list.
fn applets(busybox: &Path) -> Vec<String> {
    std::process::Command::new(busybox)
        .arg("--list")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.contains('/') && *l != "busybox")
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| FALLBACK_APPLETS.iter().map(|s| (*s).to_owned()).collect())
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn append_file(
    out: &mut tar::Builder<Vec<u8>>,
    path: &str,
    data: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    let mut h = header(tar::EntryType::Regular, data.len() as u64, mode);
    out.append_data(&mut h, path, data)
}

fn append_dir(out: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) -> std::io::Result<()> {
    let mut h = header(tar::EntryType::Directory, 0, mode);
    out.append_data(&mut h, path, std::io::empty())
}

/// The root filesystem layer (an uncompressed tar).
fn layer(spec: &ImageSpec) -> Result<Vec<u8>> {
    let busybox = std::fs::read(&spec.busybox).map_err(|source| Error::ReadBusybox {
        path: spec.busybox.clone(),
        source,
    })?;
    let mut out = tar::Builder::new(Vec::new());
    out.mode(tar::HeaderMode::Deterministic);
    let write = |out: &mut tar::Builder<Vec<u8>>| -> std::io::Result<()> {
        for (dir, mode) in [
            ("bin/", 0o755),
            ("dev/", 0o755),
            ("etc/", 0o755),
            ("proc/", 0o555),
            ("root/", 0o700),
            ("sys/", 0o555),
            ("tmp/", 0o1777),
            ("usr/", 0o755),
            ("usr/bin/", 0o755),
            ("var/", 0o755),
            ("var/www/", 0o755),
        ] {
            append_dir(out, dir, mode)?;
        }
        append_file(out, "bin/busybox", &busybox, 0o755)?;
        for applet in applets(&spec.busybox) {
            let mut h = header(tar::EntryType::Symlink, 0, 0o777);
            out.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
        }
        append_file(
            out,
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
            0o644,
        )?;
        append_file(out, "etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644)?;
        for (path, data, mode) in &spec.files {
            append_file(out, path.trim_start_matches('/'), data, *mode)?;
        }
        Ok(())
    };
    write(&mut out).map_err(Error::Write)?;
    out.into_inner().map_err(Error::Write)
}

/// Builds the archive of `spec` in memory.
pub fn build_archive(spec: &ImageSpec) -> Result<Vec<u8>> {
    let name = normalize_reference(&spec.name)?;
    let layer = layer(spec)?;
    let layer_digest = digest(&layer);
    let mut config = json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {
            "Env": spec.env,
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": "coxswain-oci-image"}],
    });
    if !spec.entrypoint.is_empty() {
        config["config"]["Entrypoint"] = json!(spec.entrypoint);
    }
    if !spec.cmd.is_empty() {
        config["config"]["Cmd"] = json!(spec.cmd);
    }
    if let Some(dir) = &spec.working_dir {
        config["config"]["WorkingDir"] = json!(dir);
    }
    let config = to_bytes(&config);
    let config_digest = digest(&config);
    let manifest = to_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer.len(),
        }],
    }));
    let manifest_digest = digest(&manifest);
    let tag = split_tag(&name).1.unwrap_or("latest").to_owned();
    let index = to_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": {"architecture": oci_arch(), "os": "linux"},
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }));

    let mut out = tar::Builder::new(Vec::new());
    let write = |out: &mut tar::Builder<Vec<u8>>| -> std::io::Result<()> {
        append_file(out, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644)?;
        append_dir(out, "blobs/", 0o755)?;
        append_dir(out, "blobs/sha256/", 0o755)?;
        for (d, blob) in [
            (&layer_digest, &layer),
            (&config_digest, &config),
            (&manifest_digest, &manifest),
        ] {
            let hex = d.trim_start_matches("sha256:");
            append_file(out, &format!("blobs/sha256/{hex}"), blob, 0o644)?;
        }
        append_file(out, "index.json", &index, 0o644)
    };
    write(&mut out).map_err(Error::Write)?;
    out.into_inner().map_err(Error::Write)
}

/// Builds the archive of `spec` into the file `path`.
pub fn write_archive(spec: &ImageSpec, path: &Path) -> Result<()> {
    let bytes = build_archive(spec)?;
    std::fs::write(path, bytes).map_err(Error::Write)
}

/// The image names (`io.containerd.image.name`) an OCI layout archive
/// declares, read from its `index.json`.
pub fn archive_image_names(archive: &[u8]) -> Result<Vec<String>> {
    let mut reader = tar::Archive::new(archive);
    for entry in reader.entries().map_err(Error::Write)? {
        let mut entry = entry.map_err(Error::Write)?;
        let path = entry.path().map_err(Error::Write)?.into_owned();
        if path == Path::new("index.json") {
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut body).map_err(Error::Write)?;
            let index: Value = serde_json::from_slice(&body)
                .map_err(|e| Error::Write(std::io::Error::other(e)))?;
            return Ok(index["manifests"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["annotations"]["io.containerd.image.name"].as_str())
                .map(str::to_owned)
                .collect());
        }
    }
    Ok(Vec::new())
}

fn to_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_references_like_containerd() {
        for (input, want) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("me/app:v1", "docker.io/me/app:v1"),
            ("registry.coxswain.local/pause:3.10", "registry.coxswain.local/pause:3.10"),
            ("reg.local:5000/app", "reg.local:5000/app:latest"),
            ("localhost/app:Tag", "localhost/app:Tag"),
        ] {
            assert_eq!(normalize_reference(input).unwrap(), want, "{input}");
        }
        assert!(normalize_reference("").is_err());
        assert!(normalize_reference("Busybox").is_err());
        assert!(normalize_reference("bad name").is_err());
    }

    #[test]
    fn archive_is_an_oci_layout_naming_the_image() {
        if !Path::new(DEFAULT_BUSYBOX).exists() {
            eprintln!("skipping: {DEFAULT_BUSYBOX} is missing");
            return;
        }
        let spec = ImageSpec::busybox("coxswain.local/box:t1");
        let bytes = build_archive(&spec).unwrap();
        assert_eq!(bytes, build_archive(&spec).unwrap(), "deterministic");
        assert_eq!(
            archive_image_names(&bytes).unwrap(),
            vec!["coxswain.local/box:t1".to_owned()]
        );
        let mut names = Vec::new();
        for e in tar::Archive::new(&bytes[..]).entries().unwrap() {
            names.push(e.unwrap().path().unwrap().display().to_string());
        }
        assert!(names.contains(&"oci-layout".to_owned()));
        assert_eq!(
            names.iter().filter(|n| n.starts_with("blobs/sha256/") && n.len() > 20).count(),
            3
        );
    }

    #[test]
    fn missing_busybox_is_a_clear_error() {
        let spec = ImageSpec {
            busybox: PathBuf::from("/nonexistent/busybox"),
            ..ImageSpec::busybox("x:1")
        };
        let err = build_archive(&spec).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/busybox"), "{err}");
    }
}
