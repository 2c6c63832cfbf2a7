//! CertificateSigningRequests: the approver and the signer of kube-controller-manager's
//! `csrapproving` and `csrsigning`, for the requests a joining node makes.
//!
//! - Approval: a request for signer `kubernetes.io/kube-apiserver-client-kubelet`, made by a
//!   bootstrap token user (`system:bootstrappers`) or by the node itself (renewal), asking
//!   for exactly `CN=system:node:<name>, O=system:nodes` with client usages, is approved
//!   (`AutoApproved`). Anything else waits for a human (`kubectl certificate approve`).
//! - Serving certificates (signer `kubernetes.io/kubelet-serving`), which upstream leaves to
//!   an external approver: a request made by the node itself (`system:node:<name>` in
//!   `system:nodes`) for `CN=system:node:<name>, O=system:nodes`, with usages among digital
//!   signature, key encipherment and server auth (the last required), and subject
//!   alternative names that are all addresses (IP) or host names (DNS) of that Node's
//!   `status.addresses` is approved; a node's request that fails any of these is denied
//!   (`AutoDenied`, saying why), so a node cannot get a certificate for another's address.
//!   Requests by anyone else wait for a human.
//! - Signing: an approved request of a known signer (`kube-apiserver-client-kubelet`,
//!   `kube-apiserver-client`, `kubelet-serving`) gets a certificate from the cluster CA, which
//!   this process must hold (a [`CsrSigner`] in the context); without one, signing is left
//!   to others.

use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::Node;
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

/// The signer of kubelet serving certificates.
pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";

/// The subject alternative names a request asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestedNames {
    /// DNS names.
    pub dns: Vec<String>,
    /// IP addresses.
    pub ips: Vec<IpAddr>,
    /// Any other kind (email, URI, ...), as text.
    pub other: Vec<String>,
}

/// Signs certificate signing requests with the cluster CA.
pub trait CsrSigner: Send + Sync + std::fmt::Debug {
    /// A PEM client certificate for the PEM request, or why not.
    fn sign_client(&self, csr_pem: &str) -> Result<String, String>;
    /// `(common name, organizations)` of a PEM request whose signature verifies.
    fn subject(&self, csr_pem: &str) -> Result<(String, Vec<String>), String>;
    /// A PEM serving certificate (`server auth`, the request's names) for the PEM request.
    fn sign_serving(&self, _csr_pem: &str) -> Result<String, String> {
        Err("this signer issues no serving certificates".to_owned())
    }
    /// The subject alternative names of a PEM request whose signature verifies.
    fn names(&self, _csr_pem: &str) -> Result<RequestedNames, String> {
        Err("this signer cannot read subject alternative names".to_owned())
    }
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

/// What the approver does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Approve, for this reason.
    Approve(String),
    /// Deny, for this reason.
    Deny(String),
}

/// The node a kubelet-serving request was made by (`system:node:<name>` in `system:nodes`).
pub fn serving_requester(csr: &CertificateSigningRequest) -> Option<String> {
    if csr.spec.signer_name != KUBELET_SERVING_SIGNER {
        return None;
    }
    let groups = csr.spec.groups.clone().unwrap_or_default();
    let node = csr.spec.username.as_deref()?.strip_prefix("system:node:").filter(|n| !n.is_empty())?;
    groups.iter().any(|g| g == "system:nodes").then(|| node.to_owned())
}

/// The verdict on a kubelet serving certificate request made by node `node` (see
/// [`serving_requester`]), given what it asks for and the Node as stored (`None`: no such
/// Node).
pub fn serving_verdict(
    csr: &CertificateSigningRequest,
    node: &str,
    subject: &(String, Vec<String>),
    names: &RequestedNames,
    stored: Option<&Node>,
) -> Verdict {
    let (cn, orgs) = subject;
    let user = format!("system:node:{node}");
    if *cn != user {
        return Verdict::Deny(format!("a kubelet serving certificate of {user} must have the common name {user}, not {cn:?}"));
    }
    if orgs.as_slice() != ["system:nodes"] {
        return Verdict::Deny(format!("a kubelet serving certificate must have the organization system:nodes only, not {orgs:?}"));
    }
    let usages = csr.spec.usages.clone().unwrap_or_default();
    let allowed = ["digital signature", "key encipherment", "server auth"];
    if !usages.iter().any(|u| u == "server auth") || usages.iter().any(|u| !allowed.contains(&u.as_str())) {
        return Verdict::Deny(format!("a kubelet serving certificate allows the usages {allowed:?} and needs \"server auth\"; asked for {usages:?}"));
    }
    if !names.other.is_empty() {
        return Verdict::Deny(format!("a kubelet serving certificate names only DNS names and IP addresses, not {:?}", names.other));
    }
    if names.dns.is_empty() && names.ips.is_empty() {
        return Verdict::Deny("a kubelet serving certificate must name at least one DNS name or IP address".to_owned());
    }
    let Some(stored) = stored else {
        return Verdict::Deny(format!("node {node} does not exist"));
    };
    let addresses = stored.status.as_ref().and_then(|s| s.addresses.clone()).unwrap_or_default();
    let has = |types: &[&str], value: &str| addresses.iter().any(|a| types.contains(&a.type_.as_str()) && a.address == value);
    let foreign_ips: Vec<String> = names
        .ips
        .iter()
        .map(IpAddr::to_string)
        .filter(|ip| !has(&["InternalIP", "ExternalIP"], ip))
        .collect();
    let foreign_dns: Vec<&String> = names
        .dns
        .iter()
        .filter(|d| !has(&["Hostname", "InternalDNS", "ExternalDNS"], d))
        .collect();
    if !foreign_ips.is_empty() || !foreign_dns.is_empty() {
        let mut foreign: Vec<String> = foreign_ips;
        foreign.extend(foreign_dns.into_iter().cloned());
        return Verdict::Deny(format!(
            "the subject alternative names {foreign:?} are not addresses of node {node} (its status.addresses)"
        ));
    }
    Verdict::Approve(format!("node {node} asked for a serving certificate for its own addresses"))
}

/// Appends a condition to the request's and writes them through `approval`.
async fn decide(api: &Api<CertificateSigningRequest>, csr: &CertificateSigningRequest, kind: &str, reason: &str, message: &str) -> Result<(), Error> {
    let name = csr.name_any();
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut conditions = csr
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .map(|c| serde_json::to_value(c).unwrap_or_default())
        .unwrap_or_else(|| json!([]));
    if let Some(list) = conditions.as_array_mut() {
        list.push(json!({"type": kind, "status": "True", "reason": reason,
            "message": message, "lastUpdateTime": now, "lastTransitionTime": now}));
    }
    api.patch_subresource("approval", &name, &PatchParams::default(), &Patch::Merge(json!({"status": {"conditions": conditions}})))
        .await
        .map_err(|source| Error::Write { what: if kind == "Denied" { "deny" } else { "approve" }, name: name.clone(), source })?;
    Ok(())
}

/// Approves or denies a kubelet serving request of `node`.
async fn review_serving(csr: &CertificateSigningRequest, node: &str, signer: &dyn CsrSigner, state: &State, api: &Api<CertificateSigningRequest>) -> Result<(), Error> {
    let name = csr.name_any();
    let pem = request_pem(csr);
    let read = signer.subject(&pem).and_then(|subject| Ok((subject, signer.names(&pem)?)));
    let verdict = match read {
        Err(e) => Verdict::Deny(format!("the request is unreadable: {e}")),
        Ok((subject, names)) => {
            let nodes: Api<Node> = Api::all(state.ctx.client.clone());
            let stored = nodes
                .get_opt(node)
                .await
                .map_err(|source| Error::Write { what: "read the node of", name: name.clone(), source })?;
            serving_verdict(csr, node, &subject, &names, stored.as_ref())
        }
    };
    match verdict {
        Verdict::Approve(reason) => {
            decide(api, csr, "Approved", "AutoApproved", &format!("Auto approving: {reason}")).await?;
            info!(csr = %name, %node, "approved a kubelet serving certificate request");
        }
        Verdict::Deny(reason) => {
            decide(api, csr, "Denied", "AutoDenied", &reason).await?;
            warn!(csr = %name, %node, %reason, "denied a kubelet serving certificate request");
        }
    }
    Ok(())
}

async fn sync(csr: &CertificateSigningRequest, state: &State) -> Result<(), Error> {
    let name = csr.name_any();
    if condition(csr, "Denied") || condition(csr, "Failed") {
        return Ok(());
    }
    let api: Api<CertificateSigningRequest> = Api::all(state.ctx.client.clone());
    let Some(signer) = &state.signer else { return Ok(()) };
    let pem = request_pem(csr);
    if !condition(csr, "Approved") && let Some(node) = serving_requester(csr) {
        // The approval's watch event brings the request back for signing.
        return review_serving(csr, &node, signer.as_ref(), state, &api).await;
    }
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
    if has_certificate || ![KUBELET_CLIENT_SIGNER, CLIENT_SIGNER, KUBELET_SERVING_SIGNER].contains(&csr.spec.signer_name.as_str()) {
        return Ok(());
    }
    let signed = if csr.spec.signer_name == KUBELET_SERVING_SIGNER {
        signer.sign_serving(&pem)
    } else {
        signer.sign_client(&pem)
    };
    let certificate = match signed {
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

    #[test]
    fn serving_requests_are_approved_only_for_the_nodes_own_addresses() {
        let stored: Node = serde_json::from_value(json!({
            "metadata": {"name": "n2"},
            "status": {"addresses": [
                {"type": "InternalIP", "address": "10.236.2.2"},
                {"type": "Hostname", "address": "host-2"},
            ]},
        }))
        .unwrap();
        let serving = ["digital signature", "key encipherment", "server auth"];
        let request = csr(KUBELET_SERVING_SIGNER, "system:node:n2", &["system:nodes", "system:authenticated"], &serving);
        assert_eq!(serving_requester(&request).as_deref(), Some("n2"));
        // Only nodes ask: a bootstrap token or a user is left for a human.
        assert_eq!(serving_requester(&csr(KUBELET_SERVING_SIGNER, "system:bootstrap:abcdef", &["system:bootstrappers"], &serving)), None);
        assert_eq!(serving_requester(&csr(KUBELET_SERVING_SIGNER, "alice", &["dev"], &serving)), None);
        assert_eq!(serving_requester(&csr(KUBELET_CLIENT_SIGNER, "system:node:n2", &["system:nodes"], &serving)), None);

        let subject = ("system:node:n2".to_owned(), vec!["system:nodes".to_owned()]);
        let names = |dns: &[&str], ips: &[&str]| RequestedNames {
            dns: dns.iter().map(|d| (*d).to_owned()).collect(),
            ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
            other: Vec::new(),
        };
        let approve = |v: Verdict| matches!(v, Verdict::Approve(_));
        let deny = |v: &Verdict, needle: &str| matches!(v, Verdict::Deny(m) if m.contains(needle));
        assert!(approve(serving_verdict(&request, "n2", &subject, &names(&["host-2"], &["10.236.2.2"]), Some(&stored))));
        assert!(approve(serving_verdict(&request, "n2", &subject, &names(&[], &["10.236.2.2"]), Some(&stored))));
        type Case<'a> = (CertificateSigningRequest, (String, Vec<String>), RequestedNames, Option<&'a Node>, &'a str);
        let cases: Vec<Case> = vec![
            // Another node's address, or a name the node does not have.
            (request.clone(), subject.clone(), names(&["host-2"], &["10.236.2.2", "10.236.1.2"]), Some(&stored), "[\"10.236.1.2\"] are not addresses of node n2"),
            (request.clone(), subject.clone(), names(&["kubernetes.default"], &[]), Some(&stored), "not addresses of node n2"),
            (request.clone(), subject.clone(), names(&[], &[]), Some(&stored), "at least one"),
            (request.clone(), subject.clone(), RequestedNames { other: vec!["a@b.c".into()], ..names(&[], &["10.236.2.2"]) }, Some(&stored), "only DNS names"),
            // The subject must be the node itself.
            (request.clone(), ("system:node:n1".into(), vec!["system:nodes".into()]), names(&[], &["10.236.2.2"]), Some(&stored), "common name"),
            (request.clone(), ("system:node:n2".into(), vec!["system:nodes".into(), "system:masters".into()]), names(&[], &["10.236.2.2"]), Some(&stored), "organization"),
            (csr(KUBELET_SERVING_SIGNER, "system:node:n2", &["system:nodes"], &["server auth", "client auth"]), subject.clone(), names(&[], &["10.236.2.2"]), Some(&stored), "usages"),
            (csr(KUBELET_SERVING_SIGNER, "system:node:n2", &["system:nodes"], &["digital signature"]), subject.clone(), names(&[], &["10.236.2.2"]), Some(&stored), "server auth"),
            (request.clone(), subject.clone(), names(&[], &["10.236.2.2"]), None, "does not exist"),
        ];
        for (request, subject, names, stored, needle) in &cases {
            let verdict = serving_verdict(request, "n2", subject, names, *stored);
            assert!(deny(&verdict, needle), "{names:?} {subject:?}: {verdict:?}");
        }
    }
}
