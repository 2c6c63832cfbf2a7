//! `coxctl token create|list|delete`: bootstrap tokens, as `kubeadm token`. A token is a
//! Secret `kube-system/bootstrap-token-<id>` that the API server accepts as a bearer token
//! (`<id>.<secret>`) until it expires; `create` prints the command that joins a node with it,
//! pinned to the cluster CA by its public-key hash.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use coxswain_auth::authn::BootstrapToken;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

use crate::client::{Connection, server_error};

const NAMESPACE: &str = "kube-system";
const TOKEN_TYPE: &str = "bootstrap.kubernetes.io/token";
/// The group joining nodes get, as kubeadm's default node token.
pub const DEFAULT_GROUP: &str = "system:bootstrappers:coxswain:default-node-token";

/// Arguments of `coxctl token`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Creates a bootstrap token and prints the command that joins a node with it.
    Create {
        /// How long the token is valid (`24h`, `30m`; `0` never expires).
        #[arg(long, default_value = "24h", value_parser = crate::rollout::parse_duration)]
        ttl: Duration,
        /// A note shown by `token list`.
        #[arg(long)]
        description: Option<String>,
    },
    /// Lists the bootstrap tokens.
    List,
    /// Deletes bootstrap tokens, by id or whole token.
    Delete {
        /// `<id>` or `<id>.<secret>`.
        #[arg(required = true)]
        tokens: Vec<String>,
    },
}

/// Runs `coxctl token ...`.
pub async fn run(conn: &Connection, args: &Args) -> Result<i32> {
    let api: Api<Secret> = Api::namespaced(conn.client.clone(), NAMESPACE);
    let mut out = std::io::stdout().lock();
    match &args.command {
        TokenCommand::Create { ttl, description } => {
            let hash = ca_hash(conn)?;
            let token = BootstrapToken::generate();
            let mut data = serde_json::Map::new();
            data.insert("token-id".into(), json!(token.id));
            data.insert("token-secret".into(), json!(token.secret));
            data.insert("usage-bootstrap-authentication".into(), json!("true"));
            data.insert("usage-bootstrap-signing".into(), json!("true"));
            data.insert("auth-extra-groups".into(), json!(DEFAULT_GROUP));
            if !ttl.is_zero() {
                let at = jiff::Timestamp::now()
                    + jiff::SignedDuration::try_from(*ttl).context("--ttl is too long")?;
                data.insert("expiration".into(), json!(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()));
            }
            if let Some(d) = description {
                data.insert("description".into(), json!(d));
            }
            let secret: Secret = serde_json::from_value(json!({
                "metadata": {"name": token.secret_name(), "namespace": NAMESPACE},
                "type": TOKEN_TYPE,
                "stringData": data,
            }))?;
            api.create(&PostParams::default(), &secret)
                .await
                .map_err(|e| server_error(e, &conn.url))?;
            writeln!(
                out,
                "coxswain-node-agent join {} --token {} --discovery-token-ca-cert-hash {hash}",
                conn.url,
                token.text()
            )?;
        }
        TokenCommand::List => {
            let secrets = api
                .list(&ListParams::default())
                .await
                .map_err(|e| server_error(e, &conn.url))?;
            let rows: Vec<Vec<String>> = secrets
                .items
                .iter()
                .filter(|s| s.type_.as_deref() == Some(TOKEN_TYPE))
                .map(row)
                .collect();
            out.write_all(render(&rows)?.as_bytes())?;
        }
        TokenCommand::Delete { tokens } => {
            for t in tokens {
                let id = t.split('.').next().unwrap_or_default();
                if id.len() != 6 || !id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
                    bail!("{t:?} is not a bootstrap token or token id ([a-z0-9]{{6}})");
                }
                match api.delete(&format!("bootstrap-token-{id}"), &DeleteParams::default()).await {
                    Ok(_) => writeln!(out, "bootstrap token {id:?} deleted")?,
                    Err(e) if crate::client::is_not_found(&e) => bail!("bootstrap token {id:?} not found"),
                    Err(e) => return Err(server_error(e, &conn.url)),
                }
            }
        }
    }
    Ok(0)
}

/// The kubeconfig's CA as kubeadm's `sha256:<hex>` public-key hash.
fn ca_hash(conn: &Connection) -> Result<String> {
    let der = conn
        .ca_der
        .as_ref()
        .context("the kubeconfig names no certificate authority: a join command needs the cluster CA to pin")?;
    coxswain_auth::pki::public_key_hash(der).context("the kubeconfig's certificate authority is unreadable")
}

fn field(secret: &Secret, key: &str) -> String {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default()
}

fn row(secret: &Secret) -> Vec<String> {
    let id = field(secret, "token-id");
    let token = format!("{id}.{}", field(secret, "token-secret"));
    let expiration = field(secret, "expiration");
    let ttl = match expiration.parse::<jiff::Timestamp>() {
        Ok(at) => {
            let left = at.as_second() - jiff::Timestamp::now().as_second();
            if left <= 0 {
                "<expired>".to_owned()
            } else if left >= 3600 {
                format!("{}h", left / 3600)
            } else {
                format!("{}m", (left + 59) / 60)
            }
        }
        Err(_) => "<forever>".to_owned(),
    };
    let usages: Vec<&str> = ["authentication", "signing"]
        .into_iter()
        .filter(|u| field(secret, &format!("usage-bootstrap-{u}")) == "true")
        .collect();
    vec![
        token,
        ttl,
        if expiration.is_empty() { "<never>".to_owned() } else { expiration },
        usages.join(","),
        match field(secret, "description") {
            d if d.is_empty() => "<none>".to_owned(),
            d => d,
        },
        field(secret, "auth-extra-groups"),
    ]
}

fn render(rows: &[Vec<String>]) -> Result<String> {
    let mut w = tabwriter::TabWriter::new(Vec::new()).padding(3).minwidth(0);
    writeln!(w, "TOKEN\tTTL\tEXPIRES\tUSAGES\tDESCRIPTION\tEXTRA GROUPS")?;
    for r in rows {
        writeln!(w, "{}", r.join("\t"))?;
    }
    let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("render the table: {e}"))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn secret(expiration: Option<i64>) -> Secret {
        let mut data = serde_json::Map::new();
        for (k, v) in [("token-id", "abcdef"), ("token-secret", "0123456789abcdef"), ("usage-bootstrap-authentication", "true")] {
            data.insert(k.into(), json!(base64::engine::general_purpose::STANDARD.encode(v)));
        }
        if let Some(secs) = expiration {
            let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(secs);
            data.insert("expiration".into(), json!(base64::engine::general_purpose::STANDARD.encode(at.to_string())));
        }
        serde_json::from_value(json!({"metadata": {"name": "bootstrap-token-abcdef"}, "type": TOKEN_TYPE, "data": data})).unwrap()
    }

    #[test]
    fn rows_show_token_ttl_and_usages() {
        let r = row(&secret(Some(5 * 3600 + 30)));
        assert_eq!(r[0], "abcdef.0123456789abcdef");
        assert_eq!(r[1], "5h");
        assert_eq!(r[3], "authentication");
        assert_eq!(row(&secret(Some(-5)))[1], "<expired>");
        assert_eq!(row(&secret(Some(90)))[1], "2m");
        assert_eq!(row(&secret(None))[1], "<forever>");
        let table = render(&[row(&secret(None))]).unwrap();
        assert!(table.starts_with("TOKEN"), "{table}");
    }
}
