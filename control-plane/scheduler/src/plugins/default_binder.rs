//! `DefaultBinder`: binds through the `binding` subresource (POST pods/NAME/binding).

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, PostParams};

use crate::cache::PodInfo;
use crate::framework::{BindError, BindPlugin, Plugin};

/// Binds pods with a `Binding` object.
#[derive(Clone)]
pub struct DefaultBinder {
    client: Client,
}

impl std::fmt::Debug for DefaultBinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DefaultBinder").finish_non_exhaustive()
    }
}

impl DefaultBinder {
    pub fn new(client: Client) -> DefaultBinder {
        DefaultBinder { client }
    }
}

impl Plugin for DefaultBinder {
    fn name(&self) -> &'static str {
        "DefaultBinder"
    }
}

impl BindPlugin for DefaultBinder {
    fn bind(&self, pod: Arc<PodInfo>, node: Arc<str>) -> BoxFuture<'static, Result<(), BindError>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        async move {
            let binding = Binding {
                metadata: ObjectMeta {
                    name: Some(pod.name.clone()),
                    namespace: Some(pod.namespace.clone()),
                    uid: (!pod.uid.is_empty()).then(|| pod.uid.clone()),
                    ..Default::default()
                },
                target: ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Node".into()),
                    name: Some(node.to_string()),
                    ..Default::default()
                },
            };
            api.create_subresource::<_, serde_json::Value>(
                "binding",
                &pod.name,
                &PostParams::default(),
                &binding,
            )
            .await
            .map(drop)
            .map_err(|e| BindError {
                pod: pod.key.to_string(),
                node: node.to_string(),
                permanent: matches!(&e, kube::Error::Api(s) if s.code == 404 || s.code == 409),
                message: e.to_string(),
            })
        }
        .boxed()
    }
}
