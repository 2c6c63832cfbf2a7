//! The connection to an API server: kubeconfig lookup (`--kubeconfig`, `$KUBECONFIG`,
//! `~/.kube/config`), context and namespace selection, and how server errors read.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Where the cluster is and which namespace to work in (global flags, as kubectl's).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Cluster options")]
pub struct ClusterArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current-context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// The namespace (default: the context's namespace, else `default`).
    #[arg(long, short = 'n', global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

/// A client plus what the commands need to know about where it points.
#[derive(Clone)]
pub struct Connection {
    /// The kube client.
    pub client: Client,
    /// The namespace commands work in (`-n`, else the context's, else `default`).
    pub namespace: String,
    /// Whether `-n` was given explicitly (apply compares it with objects' namespaces).
    pub namespace_explicit: bool,
    /// The API server's URL, for messages.
    pub url: String,
    /// The cluster CA the kubeconfig trusts (DER), if it names one.
    pub ca_der: Option<Vec<u8>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("url", &self.url)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// Reads the kubeconfig the flags and environment point at.
fn read_kubeconfig(args: &ClusterArgs) -> Result<Kubeconfig> {
    if let Some(path) = &args.kubeconfig {
        return Kubeconfig::read_from(path)
            .with_context(|| format!("failed to read the kubeconfig {}", path.display()));
    }
    if std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty()) {
        let from_env = Kubeconfig::from_env()
            .context("failed to read the kubeconfig files named by $KUBECONFIG")?;
        if let Some(config) = from_env {
            return Ok(config);
        }
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).ok_or_else(|| {
        anyhow!("no kubeconfig: pass --kubeconfig or set $KUBECONFIG ($HOME is not set either)")
    })?;
    let path = home.join(".kube/config");
    if !path.exists() {
        bail!(
            "no kubeconfig: {} does not exist; pass --kubeconfig FILE or set $KUBECONFIG \
             (Coxswain's control plane writes DATA_DIR/admin.kubeconfig)",
            path.display()
        );
    }
    Kubeconfig::read_from(&path)
        .with_context(|| format!("failed to read the kubeconfig {}", path.display()))
}

/// Connects (lazily: no request is made) to the cluster the flags select.
pub async fn connect(args: &ClusterArgs) -> Result<Connection> {
    let kubeconfig = read_kubeconfig(args)?;
    if let Some(context) = &args.context
        && !kubeconfig.contexts.iter().any(|c| &c.name == context)
    {
        let known: Vec<&str> = kubeconfig
            .contexts
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        bail!(
            "context \"{context}\" not found in the kubeconfig (it has: {})",
            known.join(", ")
        );
    }
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .context("failed to load the kubeconfig's current context")?;
    // `logs -f` may be quiet for hours; like kubectl, no read timeout (watches end on the
    // server's own timeout, connections still time out).
    config.read_timeout = None;
    config.connect_timeout = Some(Duration::from_secs(10));
    let url = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_owned();
    let namespace_explicit = args.namespace.is_some();
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let ca_der = config.root_cert.as_ref().and_then(|certs| certs.first().cloned());
    let client = Client::try_from(config).context("failed to build the API client")?;
    Ok(Connection {
        client,
        namespace,
        namespace_explicit,
        url,
        ca_der,
    })
}

/// Turns a client error into what a user reads: `Error from server (NotFound): pods "x" not
/// found` for the server's `Status`, or a line naming the unreachable server.
pub fn server_error(error: kube::Error, url: &str) -> anyhow::Error {
    match error {
        kube::Error::Api(status) => anyhow!(format_status(&status)),
        kube::Error::HyperError(e) => anyhow!("cannot reach the API server at {url}: {e}"),
        kube::Error::Service(e) => {
            // Connection refused and similar come wrapped; show the innermost cause.
            let mut cause: &dyn std::error::Error = e.as_ref();
            while let Some(next) = cause.source() {
                cause = next;
            }
            anyhow!("cannot reach the API server at {url}: {cause}")
        }
        other => anyhow!(other),
    }
}

/// `Error from server (Reason): message`, as kubectl prints a `Status`.
pub fn format_status(status: &kube::core::Status) -> String {
    let reason = if status.reason.is_empty() {
        format!("code {}", status.code)
    } else {
        status.reason.clone()
    };
    let message = if status.message.is_empty() {
        "(no message)"
    } else {
        status.message.as_str()
    };
    format!("Error from server ({reason}): {message}")
}

/// Whether `error` is the server's 404.
pub fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(s) if s.code == 404)
}

/// Extension for results of kube calls: map errors through [`server_error`].
pub trait KubeResultExt<T> {
    /// Maps the error to a readable one.
    fn server(self, conn: &Connection) -> Result<T>;
}

impl<T> KubeResultExt<T> for Result<T, kube::Error> {
    fn server(self, conn: &Connection) -> Result<T> {
        self.map_err(|e| server_error(e, &conn.url))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reads_like_kubectl() {
        let status =
            kube::core::Status::failure("pods \"web\" not found", "NotFound").with_code(404);
        assert_eq!(
            format_status(&status),
            "Error from server (NotFound): pods \"web\" not found"
        );
        let bare = kube::core::Status::failure("", "").with_code(500);
        assert_eq!(
            format_status(&bare),
            "Error from server (code 500): (no message)"
        );
    }
}
