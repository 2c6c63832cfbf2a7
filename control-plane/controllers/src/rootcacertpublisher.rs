//! The root CA certificate publisher (upstream's `root-ca-cert-publisher`): a
//! `kube-root-ca.crt` ConfigMap in every active namespace holding the cluster CA under
//! `ca.crt`, which pods read (through their projected token volume) to verify the API server.
//! A deleted ConfigMap is recreated and an edited one put back.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use tracing::{debug, info, warn};

use crate::Context;
use crate::backoff::Backoff;

/// The controller's name in `--controllers` (upstream's `root-ca-cert-publisher` and
/// `root-ca-certificate-publisher-controller` work too).
pub const NAME: &str = "rootcacertpublisher";
/// The ConfigMap every namespace gets.
pub const CONFIG_MAP: &str = "kube-root-ca.crt";
/// Its key holding the CA bundle (PEM).
pub const CA_KEY: &str = "ca.crt";
/// The annotation that says what the ConfigMap is for.
pub const DESCRIPTION_ANNOTATION: &str = "kubernetes.io/description";
/// Upstream's description.
pub const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal \
     endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across \
     distributions of Kubernetes clusters.";

/// Errors of the root CA publisher.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading, creating or updating the ConfigMap failed.
    #[error("failed to {verb} ConfigMap {namespace}/kube-root-ca.crt: {source}")]
    Write {
        /// What was being done.
        verb: &'static str,
        /// The namespace.
        namespace: String,
        #[source]
        source: kube::Error,
    },
    /// The watch machinery stopped.
    #[error("failed to run the root CA publisher: its watches ended")]
    Stopped,
}

struct State {
    ctx: Context,
    ca: String,
    backoff: Backoff,
}

/// Whether `cm` is what the publisher wants: the CA under `ca.crt` and nothing else in
/// `data`, and a description.
pub fn is_current(cm: &ConfigMap, ca: &str) -> bool {
    let data = cm.data.clone().unwrap_or_default();
    let described = cm
        .annotations()
        .get(DESCRIPTION_ANNOTATION)
        .is_some_and(|d| !d.is_empty());
    data.len() == 1 && data.get(CA_KEY).map(String::as_str) == Some(ca) && described
}

fn wanted_data(ca: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(CA_KEY.to_owned(), ca.to_owned())])
}

async fn sync(namespace: &Namespace, state: &State) -> Result<(), Error> {
    let active = namespace
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_none_or(|p| p == "Active");
    if namespace.metadata.deletion_timestamp.is_some() || !active {
        return Ok(());
    }
    let ns = namespace.name_any();
    let api: Api<ConfigMap> = Api::namespaced(state.ctx.client.clone(), &ns);
    let fail = |verb: &'static str, namespace: &str| {
        let namespace = namespace.to_owned();
        move |source| Error::Write { verb, namespace, source }
    };
    let current = api.get_opt(CONFIG_MAP).await.map_err(fail("read", &ns))?;
    match current {
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(CONFIG_MAP.to_owned()),
                    namespace: Some(ns.clone()),
                    annotations: Some(BTreeMap::from([(
                        DESCRIPTION_ANNOTATION.to_owned(),
                        DESCRIPTION.to_owned(),
                    )])),
                    ..ObjectMeta::default()
                },
                data: Some(wanted_data(&state.ca)),
                ..ConfigMap::default()
            };
            match api.create(&PostParams::default(), &cm).await {
                Ok(_) => {
                    info!(namespace = %ns, "published the root CA certificate");
                    Ok(())
                }
                // The namespace is gone or terminating: nothing to do.
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 403 => {
                    debug!(namespace = %ns, message = %s.message, "namespace is going away");
                    Ok(())
                }
                Err(e) => Err(fail("create", &ns)(e)),
            }
        }
        Some(cm) if is_current(&cm, &state.ca) => Ok(()),
        Some(mut cm) => {
            cm.data = Some(wanted_data(&state.ca));
            cm.annotations_mut()
                .insert(DESCRIPTION_ANNOTATION.to_owned(), DESCRIPTION.to_owned());
            // The resourceVersion read above makes this a compare-and-swap.
            api.replace(CONFIG_MAP, &PostParams::default(), &cm)
                .await
                .map_err(fail("update", &ns))?;
            info!(namespace = %ns, "put the root CA certificate back");
            Ok(())
        }
    }
}

async fn reconcile(namespace: Arc<Namespace>, state: Arc<State>) -> Result<Action, Error> {
    let result = state.ctx.metrics().reconcile(NAME, sync(&namespace, &state)).await;
    if result.is_ok() {
        state.backoff.reset(&namespace.name_any());
    }
    result.map(|()| Action::await_change())
}

fn error_policy(namespace: Arc<Namespace>, error: &Error, state: Arc<State>) -> Action {
    let delay = state.backoff.next_delay(&namespace.name_any());
    warn!(%error, retry_in = ?delay, "root CA publication failed");
    Action::requeue(delay)
}

/// Runs the publisher until its watches end. Without a CA to publish
/// (`Config::root_ca_cert`) it has nothing to do and waits forever.
pub async fn run(ctx: Context) -> Result<(), Error> {
    let Some(ca) = ctx.config.root_ca_cert.clone() else {
        warn!("no root CA certificate configured: kube-root-ca.crt ConfigMaps are not published");
        std::future::pending::<()>().await;
        return Ok(());
    };
    let client = ctx.client.clone();
    let state = Arc::new(State { ctx, ca, backoff: Backoff::default() });
    info!("starting the root CA certificate publisher");
    Controller::new(Api::<Namespace>::all(client.clone()), watcher::Config::default())
        .watches(
            Api::<ConfigMap>::all(client),
            watcher::Config::default().fields(&format!("metadata.name={CONFIG_MAP}")),
            |cm| cm.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns)),
        )
        .run(reconcile, error_policy, state)
        .for_each(|_| std::future::ready(()))
        .await;
    Err(Error::Stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(data: &[(&str, &str)], described: bool) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                annotations: described.then(|| BTreeMap::from([(DESCRIPTION_ANNOTATION.to_owned(), DESCRIPTION.to_owned())])),
                ..ObjectMeta::default()
            },
            data: Some(data.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
            ..ConfigMap::default()
        }
    }

    #[test]
    fn only_the_ca_with_a_description_is_current() {
        let ca = "-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n";
        assert!(is_current(&cm(&[("ca.crt", ca)], true), ca));
        assert!(!is_current(&cm(&[("ca.crt", ca)], false), ca), "the description is put back");
        assert!(!is_current(&cm(&[("ca.crt", "tampered")], true), ca));
        assert!(!is_current(&cm(&[("ca.crt", ca), ("extra", "x")], true), ca));
        assert!(!is_current(&cm(&[], true), ca));
    }
}
