//! Images: importing OCI archives into containerd's `k8s.io` namespace
//! (no registry is needed), and making sure a container's image is present
//! according to its `imagePullPolicy`.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use crate::cri::Cri;

/// Errors of image handling.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `ctr images import` failed.
    #[error("failed to import image archive {path}: {message}")]
    Import {
        /// The archive.
        path: PathBuf,
        /// What ctr said.
        message: String,
    },
    /// Building the pause image failed.
    #[error("failed to build the pause image: {0}")]
    Build(#[from] coxswain_oci_image::Error),
    /// The archive could not be staged on disk.
    #[error("failed to stage image archive {path}: {source}")]
    Stage {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A CRI call failed.
    #[error(transparent)]
    Cri(#[from] crate::cri::Error),
}

/// Imports an OCI (or docker) image archive with `ctr` into the `k8s.io`
/// namespace of the containerd at `socket`, unpacked for the overlayfs
/// snapshotter. Returns the image names the archive declares.
pub async fn import_archive(ctr: &Path, socket: &Path, archive: &Path) -> Result<Vec<String>, Error> {
    let out = tokio::process::Command::new(ctr)
        .arg("--address")
        .arg(socket)
        .args(["--namespace", "k8s.io", "images", "import"])
        .arg(archive)
        .output()
        .await
        .map_err(|e| Error::Import {
            path: archive.to_owned(),
            message: format!("cannot run {}: {e}", ctr.display()),
        })?;
    if !out.status.success() {
        return Err(Error::Import {
            path: archive.to_owned(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    let names = std::fs::read(archive)
        .ok()
        .and_then(|b| coxswain_oci_image::archive_image_names(&b).ok())
        .unwrap_or_default();
    if names.is_empty() {
        // Docker archives: ctr prints "unpacking NAME (sha256:...)...done".
        return Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("unpacking "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect());
    }
    Ok(names)
}

/// Imports archive bytes (an upload) through a temporary file in `dir`.
pub async fn import_bytes(
    ctr: &Path,
    socket: &Path,
    dir: &Path,
    bytes: &[u8],
) -> Result<Vec<String>, Error> {
    let stage = |source| Error::Stage {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(stage)?;
    let path = dir.join(format!(
        "upload-{}-{}.tar",
        std::process::id(),
        jiff::Timestamp::now().as_nanosecond()
    ));
    std::fs::write(&path, bytes).map_err(stage)?;
    let result = import_archive(ctr, socket, &path).await;
    let _ = std::fs::remove_file(&path);
    result
}

/// Imports every `*.tar` of a preload directory; returns the names imported.
pub async fn import_dir(ctr: &Path, socket: &Path, dir: &Path) -> Result<Vec<String>, Error> {
    let mut names = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Stage {
        path: dir.to_owned(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "tar"))
        .collect();
    files.sort();
    for file in files {
        names.extend(import_archive(ctr, socket, &file).await?);
    }
    Ok(names)
}

/// Makes sure the sandbox image exists, building it from busybox-static and
/// importing it when missing.
pub async fn ensure_pause_image(
    cri: &Cri,
    ctr: &Path,
    image: &str,
    scratch: &Path,
) -> Result<(), Error> {
    if cri.image_id(image).await?.is_some() {
        return Ok(());
    }
    let bytes = coxswain_oci_image::build_archive(&coxswain_oci_image::ImageSpec::pause(image))?;
    import_bytes(ctr, cri.socket(), scratch, &bytes).await?;
    Ok(())
}

/// Why a container's image is not available.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFailure {
    /// `ErrImagePull`, `ErrImageNeverPull` or `InvalidImageName`.
    pub reason: &'static str,
    /// Human-readable detail.
    pub message: String,
}

/// How long a pull may take before it counts as failed.
pub const PULL_TIMEOUT: Duration = Duration::from_secs(30);

/// How a container's image came to be there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageOutcome {
    /// It was present already.
    Present,
    /// It was pulled, taking this long.
    Pulled(Duration),
}

/// Ensures `image` is present per `policy` (`Always`, `IfNotPresent`, `Never`);
/// `on_pull` is called just before a pull starts.
pub async fn ensure_image(cri: &Cri, image: &str, policy: &str, on_pull: impl FnOnce()) -> Result<ImageOutcome, ImageFailure> {
    if image.trim().is_empty() {
        return Err(ImageFailure {
            reason: "InvalidImageName",
            message: "the container has no image".into(),
        });
    }
    if let Err(e) = coxswain_oci_image::normalize_reference(image) {
        return Err(ImageFailure {
            reason: "InvalidImageName",
            message: e.to_string(),
        });
    }
    let present = cri.image_id(image).await.map_err(|e| ImageFailure {
        reason: "ErrImagePull",
        message: e.to_string(),
    })?;
    match (policy, present) {
        ("Never", Some(_)) | ("IfNotPresent", Some(_)) => Ok(ImageOutcome::Present),
        ("Never", None) => Err(ImageFailure {
            reason: "ErrImageNeverPull",
            message: format!(
                "Container image \"{image}\" is not present with pull policy of Never"
            ),
        }),
        _ => {
            on_pull();
            let started = std::time::Instant::now();
            match cri.pull_image(image, PULL_TIMEOUT).await {
            Ok(_) => Ok(ImageOutcome::Pulled(started.elapsed())),
            Err(e) => Err(ImageFailure {
                reason: "ErrImagePull",
                message: format!(
                    "failed to pull image \"{image}\": {} (no registry is reachable from this node: import the image with `coxctl image import FILE`)",
                    e.message()
                ),
            }),
            }
        }
    }
}
