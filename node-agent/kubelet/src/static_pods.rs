//! Static pods: manifests in a directory, mirrored into the API as pods
//! bound to this node (annotated `kubernetes.io/config.mirror`), which the
//! kubelet then runs like any other. A removed or changed file removes or
//! replaces its mirror pod.
//!
//! Unlike upstream, a static pod runs only once its mirror exists, so it
//! needs the API server to be reachable.

use std::{collections::BTreeMap, hash::{Hash, Hasher}, path::Path};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use tracing::{info, warn};

/// Annotation of mirror pods (value: the manifest's hash).
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Errors of reading manifests.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A manifest is not a valid Pod.
    #[error("failed to parse static pod manifest {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
}

/// Reads the manifests of `dir` as mirror pods for `node`.
pub fn read_manifests(dir: &Path, node: &str) -> (Vec<Pod>, Vec<Error>) {
    let mut pods = Vec::new();
    let mut errors = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (pods, errors);
    };
    let mut files: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml" || e == "json"))
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        match serde_yaml_ng::from_str::<Pod>(&text) {
            Ok(mut pod) => {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                text.hash(&mut h);
                node.hash(&mut h);
                let hash = format!("{:016x}", h.finish());
                let base = pod.metadata.name.clone().unwrap_or_default();
                if base.is_empty() {
                    errors.push(Error::Parse { path: path.display().to_string(), message: "metadata.name is required".into() });
                    continue;
                }
                pod.metadata.name = Some(format!("{base}-{node}"));
                pod.metadata.namespace.get_or_insert_with(|| "default".into());
                let ann = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
                ann.insert(MIRROR_ANNOTATION.into(), hash.clone());
                ann.insert("kubernetes.io/config.hash".into(), hash);
                ann.insert("kubernetes.io/config.source".into(), "file".into());
                if let Some(spec) = pod.spec.as_mut() {
                    spec.node_name = Some(node.to_owned());
                }
                pods.push(pod);
            }
            Err(e) => errors.push(Error::Parse { path: path.display().to_string(), message: e.to_string() }),
        }
    }
    (pods, errors)
}

/// Makes the API's mirror pods match the manifests.
pub async fn sync_mirrors(client: &kube::Client, dir: &Path, node: &str) {
    let (wanted, errors) = read_manifests(dir, node);
    for e in errors {
        warn!("{e}");
    }
    let all: Api<Pod> = Api::all(client.clone());
    let existing = match all.list(&ListParams::default().fields(&format!("spec.nodeName={node}"))).await {
        Ok(l) => l.items,
        Err(e) => {
            warn!(error = %e, "failed to list mirror pods");
            return;
        }
    };
    let mirror_of = |p: &Pod| p.metadata.annotations.as_ref().and_then(|a| a.get(MIRROR_ANNOTATION)).cloned();
    for pod in &wanted {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let current = existing.iter().find(|p| p.metadata.name.as_deref() == Some(&name) && p.metadata.namespace.as_deref() == Some(&ns));
        match current {
            Some(p) if mirror_of(p) == mirror_of(pod) => {}
            Some(p) if p.metadata.deletion_timestamp.is_some() => {}
            Some(_) => {
                info!(pod = %name, "static pod manifest changed: replacing its mirror pod");
                let _ = api.delete(&name, &DeleteParams::default()).await;
            }
            None => match api.create(&PostParams::default(), pod).await {
                Ok(_) => info!(pod = %format!("{ns}/{name}"), "created mirror pod"),
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => warn!(pod = %name, error = %e, "failed to create mirror pod"),
            },
        }
    }
    for p in existing.iter().filter(|p| mirror_of(p).is_some()) {
        let gone = !wanted.iter().any(|w| w.metadata.name == p.metadata.name && w.metadata.namespace == p.metadata.namespace);
        if gone && p.metadata.deletion_timestamp.is_none() {
            let api: Api<Pod> = Api::namespaced(client.clone(), p.metadata.namespace.as_deref().unwrap_or("default"));
            info!(pod = ?p.metadata.name, "static pod manifest removed: deleting its mirror pod");
            let _ = api.delete(p.metadata.name.as_deref().unwrap_or_default(), &DeleteParams::default()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_become_mirror_pods() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("web.yaml"), "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: busybox:1\n").unwrap();
        std::fs::write(dir.path().join("bad.yaml"), "kind: Pod\nspec: 12\n").unwrap();
        std::fs::write(dir.path().join("README"), "ignored").unwrap();
        let (pods, errors) = read_manifests(dir.path(), "n1");
        assert_eq!(pods.len(), 1);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let p = &pods[0];
        assert_eq!(p.metadata.name.as_deref(), Some("web-n1"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
        assert!(p.metadata.annotations.as_ref().unwrap().contains_key(MIRROR_ANNOTATION));
    }
}
