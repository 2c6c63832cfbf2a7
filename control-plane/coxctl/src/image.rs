//! `coxctl image import FILE` (into a node's containerd through its agent)
//! and `coxctl image build NAME -o FILE` (a busybox-static OCI archive, for
//! machines without a registry).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use coxswain_agent_api::{IMAGES_IMPORT_PATH, ImportedImages};

/// Options of `coxctl image`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// Imports an image archive (OCI layout or docker-save tar) into a
    /// node's containerd, through its node agent.
    Import {
        /// The archive.
        file: PathBuf,
        /// The node agent's endpoint.
        #[arg(long, env = "COXSWAIN_AGENT", default_value = "http://127.0.0.1:10249")]
        agent: String,
    },
    /// Builds an OCI image archive holding busybox (busybox-static) and its
    /// applets.
    Build {
        /// Image name, e.g. `registry.local/tools:1`.
        name: String,
        /// Output file.
        #[arg(long, short = 'o')]
        output: PathBuf,
        /// Entrypoint (repeat for each word).
        #[arg(long)]
        entrypoint: Vec<String>,
        /// Default command (repeat for each word; default `sh`).
        #[arg(long)]
        cmd: Vec<String>,
        /// Environment variables, `KEY=value` (repeatable).
        #[arg(long)]
        env: Vec<String>,
        /// The busybox binary to copy in.
        #[arg(long, default_value = coxswain_oci_image::DEFAULT_BUSYBOX)]
        busybox: PathBuf,
    },
}

/// Runs `coxctl image ...`.
pub fn run(args: &Args) -> Result<()> {
    match &args.what {
        What::Import { file, agent } => {
            let bytes = std::fs::read(file).with_context(|| format!("failed to read {}", file.display()))?;
            if bytes.is_empty() {
                bail!("{} is empty: expected an image archive (tar)", file.display());
            }
            let url = format!("{}{IMAGES_IMPORT_PATH}", agent.trim_end_matches('/'));
            let mut response = ureq::post(&url)
                .header("content-type", "application/x-tar")
                .config()
                .http_status_as_error(false)
                .build()
                .send(&bytes[..])
                .with_context(|| format!("failed to reach the node agent at {agent}"))?;
            if !response.status().is_success() {
                let text = response.body_mut().read_to_string().unwrap_or_default();
                bail!("the node agent refused {}: {} {}", file.display(), response.status(), text.trim());
            }
            let imported: ImportedImages = response
                .body_mut()
                .read_json()
                .context("failed to decode the node agent's answer")?;
            for name in imported.images {
                println!("imported {name}");
            }
            Ok(())
        }
        What::Build { name, output, entrypoint, cmd, env, busybox } => {
            let mut spec = coxswain_oci_image::ImageSpec::busybox(name);
            spec.busybox = busybox.clone();
            if !entrypoint.is_empty() {
                spec.entrypoint = entrypoint.clone();
                spec.cmd.clear();
            }
            if !cmd.is_empty() {
                spec.cmd = cmd.clone();
            }
            spec.env.extend(env.iter().cloned());
            coxswain_oci_image::write_archive(&spec, output)
                .with_context(|| format!("failed to build {name} into {}", output.display()))?;
            println!("wrote {} ({})", output.display(), coxswain_oci_image::normalize_reference(name)?);
            Ok(())
        }
    }
}
