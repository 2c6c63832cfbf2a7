//! The ServiceAccount controller: a `default` ServiceAccount in every active namespace,
//! recreated when deleted.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;
use tracing::{debug, info};

use crate::{Context, reconciler};

/// The controller's name in `--controllers`.
pub const NAME: &str = "serviceaccount";
/// The ServiceAccount every namespace gets.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// Errors of the ServiceAccount controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating the ServiceAccount failed.
    #[error("failed to create ServiceAccount {namespace}/default: {source}")]
    Create {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    /// The watch machinery stopped.
    #[error("failed to run the serviceaccount controller: its watches ended")]
    Stopped,
}

struct State {
    ctx: Context,
}

async fn ensure_default(namespace: &Namespace, state: &State) -> Result<(), Error> {
    let active = namespace
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_none_or(|p| p == "Active");
    if namespace.metadata.deletion_timestamp.is_some() || !active {
        return Ok(());
    }
    let name = namespace.name_any();
    let api: Api<ServiceAccount> = Api::namespaced(state.ctx.client.clone(), &name);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(DEFAULT_SERVICE_ACCOUNT.to_owned()),
            namespace: Some(name.clone()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    match api.create(&PostParams::default(), &sa).await {
        Ok(_) => {
            info!(namespace = %name, "created the default ServiceAccount");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        // The namespace started terminating in between: nothing to do.
        Err(kube::Error::Api(s)) if s.code == 403 || s.code == 404 => {
            debug!(namespace = %name, message = %s.message, "namespace is going away");
            Ok(())
        }
        Err(source) => Err(Error::Create {
            namespace: name,
            source,
        }),
    }
}

/// Runs the ServiceAccount controller until its watches end.
pub async fn run(ctx: Context) -> Result<(), Error> {
    let client = ctx.client.clone();
    let metrics = ctx.metrics().clone();
    let state = Arc::new(State { ctx });
    info!("starting the serviceaccount controller");
    let controller = Controller::new(Api::<Namespace>::all(client.clone()), watcher::Config::default())
        .watches(
            Api::<ServiceAccount>::all(client),
            watcher::Config::default().fields(&format!("metadata.name={DEFAULT_SERVICE_ACCOUNT}")),
            |sa| sa.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns)),
        );
    reconciler::run(controller, NAME, metrics, state, |namespace: Arc<Namespace>, state: Arc<State>| async move {
        ensure_default(&namespace, &state).await.map(|()| Action::await_change())
    })
    .await;
    Err(Error::Stopped)
}
