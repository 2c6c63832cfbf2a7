//! CertificateSigningRequests: the approver and the signer of kube-controller-manager's
//! `csrapproving` and `csrsigning`, for the requests a joining node makes.
//!
//! - Approval: a request for signer `kubernetes.io/kube-apiserver-client-kubelet`, made by a
//!   bootstrap token user (`system:bootstrappers`) or by the node itself (renewal), asking
//!   for exactly `CN=system:node:<name>, O=system:nodes` with client usages, is approved
//!   (`AutoApproved`). Anything else waits for a human (`kubectl certificate approve`).
//! - Signing: an approved request of a known signer (`kube-apiserver-client-kubelet`,
//!   `kube-apiserver-client`) gets a certificate from the cluster CA, which this process
//!   must hold (a [`CsrSigner`] in the context); without one, signing is left to others.

use std::sync::Arc;

use base64::Engine;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;
use tracing::{info, warn};

use crate::{Context, reconciler};

/// The controller's name in `--controllers`.
pub const NAME: &str = "csr";
/// The signer of kubelet client certificates.
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The signer of other API client certificates.
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";

/// Signs certificate signing requests with the cluster CA.
pub trait CsrSigner: Send + Sync + std::fmt::Debug {
    /// A PEM client certificate for the PEM request, or why not.
    fn sign_client(&self, csr_pem: &str) -> Result<String, String>;
    /// `(common name, organizations)` of a PEM request whose signature verifies.
    fn subject(&self, csr_pem: &str) -> Result<(String, Vec<String>), String>;
}

/// Errors of the CSR controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing the approval or the certificate failed.
    #[error("failed to {what} CertificateSigningRequest {name}: {source}")]
    Write {
        what: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// The watch machinery stopped.
    #[error("failed to run the csr controller: its watches ended")]
    Stopped,
}

struct State {
    ctx: Context,
    signer: Option<Arc<dyn CsrSigner>>,
}

fn condition(csr: &CertificateSigningRequest, kind: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == kind && c.status == "True"))
}

fn request_pem(csr: &CertificateSigningRequest) -> String {
    String::from_utf8_lossy(&csr.spec.request.0).into_owned()
}

/// Why a request qualifies for automatic approval, or `None`.
pub fn auto_approvable(csr: &CertificateSigningRequest, subject: &(String, Vec<String>)) -> Option<&'static str> {
    if csr.spec.signer_name != KUBELET_CLIENT_SIGNER {
        return None;
    }
    let (cn, orgs) = subject;
    let node = cn.strip_prefix("system:node:").filter(|n| !n.is_empty())?;
    if orgs.as_slice() != ["system:nodes"] {
        return None;
    }
    let usages = csr.spec.usages.clone().unwrap_or_default();
    let allowed = ["digital signature", "key encipherment", "client auth"];
    if !usages.iter().any(|u| u == "client auth") || usages.iter().any(|u| !allowed.contains(&u.as_str())) {
        return None;
    }
    let groups = csr.spec.groups.clone().unwrap_or_default();
    let requester = csr.spec.username.as_deref().unwrap_or_default();
    if groups.iter().any(|g| g == "system:bootstrappers") {
        return Some("a bootstrap token asked for a node's client certificate");
    }
    if requester == format!("system:node:{node}") && groups.iter().any(|g| g == "system:nodes") {
        return Some("a node renewed its own client certificate");
    }
    None
}

async fn sync(csr: &CertificateSigningRequest, state: &State) -> Result<(), Error> {
    let name = csr.name_any();
    if condition(csr, "Denied") || condition(csr, "Failed") {
        return Ok(());
    }
    let api: Api<CertificateSigningRequest> = Api::all(state.ctx.client.clone());
    let Some(signer) = &state.signer else { return Ok(()) };
    let pem = request_pem(csr);
    if !condition(csr, "Approved") {
        let subject = match signer.subject(&pem) {
            Ok(s) => s,
            Err(e) => {
                warn!(csr = %name, error = %e, "unreadable certificate signing request; leaving it for a human");
                return Ok(());
            }
        };
        let Some(reason) = auto_approvable(csr, &subject) else { return Ok(()) };
        let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let mut conditions = csr
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .map(|c| serde_json::to_value(c).unwrap_or_default())
            .unwrap_or_else(|| json!([]));
        if let Some(list) = conditions.as_array_mut() {
            list.push(json!({"type": "Approved", "status": "True", "reason": "AutoApproved",
                "message": format!("Auto approving: {reason}"), "lastUpdateTime": now, "lastTransitionTime": now}));
        }
        api.patch_subresource(
            "approval",
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": conditions}})),
        )
        .await
        .map_err(|source| Error::Write { what: "approve", name: name.clone(), source })?;
        info!(csr = %name, subject = %subject.0, "approved certificate signing request");
        // The approval's watch event brings the request back for signing.
        return Ok(());
    }
    let has_certificate = csr
        .status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty());
    if has_certificate || ![KUBELET_CLIENT_SIGNER, CLIENT_SIGNER].contains(&csr.spec.signer_name.as_str()) {
        return Ok(());
    }
    let certificate = match signer.sign_client(&pem) {
        Ok(c) => c,
        Err(e) => {
            warn!(csr = %name, error = %e, "cannot sign the certificate signing request");
            let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
            let mut conditions = serde_json::to_value(
                csr.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default(),
            )
            .unwrap_or_else(|_| json!([]));
            if let Some(list) = conditions.as_array_mut() {
                list.push(json!({"type": "Failed", "status": "True", "reason": "SigningFailed",
                    "message": e, "lastUpdateTime": now, "lastTransitionTime": now}));
            }
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": {"conditions": conditions}})))
                .await
                .map_err(|source| Error::Write { what: "fail", name: name.clone(), source })?;
            return Ok(());
        }
    };
    let encoded = base64::engine::general_purpose::STANDARD.encode(certificate.as_bytes());
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": {"certificate": encoded}})))
        .await
        .map_err(|source| Error::Write { what: "sign", name: name.clone(), source })?;
    info!(csr = %name, signer = %csr.spec.signer_name, "issued a certificate");
    Ok(())
}

/// Runs the CSR approver and signer until their watch ends.
pub async fn run(ctx: Context) -> Result<(), Error> {
    let client = ctx.client.clone();
    let signer = ctx.config.csr_signer.clone();
    if signer.is_none() {
        info!("no cluster CA in this process: certificate signing requests are left to others");
    }
    let metrics = ctx.metrics().clone();
    let state = Arc::new(State { ctx, signer });
    info!("starting the csr controller");
    let controller =
        Controller::new(Api::<CertificateSigningRequest>::all(client), watcher::Config::default());
    reconciler::run(controller, NAME, metrics, state, |csr: Arc<CertificateSigningRequest>, state: Arc<State>| async move {
        sync(&csr, &state).await.map(|()| Action::await_change())
    })
    .await;
    Err(Error::Stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr(signer: &str, user: &str, groups: &[&str], usages: &[&str]) -> CertificateSigningRequest {
        serde_json::from_value(json!({
            "metadata": {"name": "x"},
            "spec": {"request": "", "signerName": signer, "username": user, "groups": groups, "usages": usages},
        }))
        .unwrap()
    }

    #[test]
    fn only_node_client_requests_from_bootstrappers_or_the_node_are_auto_approved() {
        let node = ("system:node:n2".to_owned(), vec!["system:nodes".to_owned()]);
        let usages = ["digital signature", "client auth"];
        let cases = [
            (csr(KUBELET_CLIENT_SIGNER, "system:bootstrap:abcdef", &["system:bootstrappers"], &usages), &node, true),
            (csr(KUBELET_CLIENT_SIGNER, "system:node:n2", &["system:nodes"], &usages), &node, true),
            // another node renewing for n2
            (csr(KUBELET_CLIENT_SIGNER, "system:node:n1", &["system:nodes"], &usages), &node, false),
            (csr(KUBELET_CLIENT_SIGNER, "alice", &["dev"], &usages), &node, false),
            (csr(CLIENT_SIGNER, "system:bootstrap:abcdef", &["system:bootstrappers"], &usages), &node, false),
            (csr(KUBELET_CLIENT_SIGNER, "system:bootstrap:abcdef", &["system:bootstrappers"], &["server auth"]), &node, false),
        ];
        for (request, subject, want) in &cases {
            assert_eq!(auto_approvable(request, subject).is_some(), *want, "{:?}", request.spec);
        }
        let admin = ("kubernetes-admin".to_owned(), vec!["system:masters".to_owned()]);
        assert!(auto_approvable(&cases[0].0, &admin).is_none(), "a bootstrap token cannot get an admin certificate");
        let extra_group = ("system:node:n2".to_owned(), vec!["system:nodes".to_owned(), "system:masters".to_owned()]);
        assert!(auto_approvable(&cases[0].0, &extra_group).is_none());
    }
}
