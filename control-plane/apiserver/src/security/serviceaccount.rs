//! The ServiceAccount admission plugin, as upstream's: a pod without `serviceAccountName`
//! gets `default`; the ServiceAccount must exist (the `default` one is looked for a little
//! longer, since the serviceaccount controller creates it shortly after its namespace); unless
//! the pod or its ServiceAccount says `automountServiceAccountToken: false`, every container
//! and init container mounts the projected volume `kube-api-access-<suffix>` (a bound token,
//! the cluster CA from the `kube-root-ca.crt` ConfigMap and the namespace) read-only at
//! `/var/run/secrets/kubernetes.io/serviceaccount`; the ServiceAccount's image pull secrets
//! are copied to a pod that names none. Mirror pods are left alone but may not reference
//! ServiceAccounts, Secrets or token projections.

use std::time::Duration;

use serde_json::{Value, json};

use crate::handlers::Ctx;
use crate::object;
use crate::status::{ApiError, Result};

/// The ServiceAccount of pods that name none.
pub(crate) const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// The prefix of the token volume's name.
pub(crate) const VOLUME_PREFIX: &str = "kube-api-access-";
/// Where the token volume is mounted in every container.
pub(crate) const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The lifetime of automounted tokens (upstream's `WarnOnlyBoundTokenExpirationSeconds`).
pub(crate) const TOKEN_EXPIRATION_SECONDS: i64 = 3607;
/// The ConfigMap every namespace gets with the cluster CA.
pub(crate) const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";
const MIRROR: &str = "kubernetes.io/config.mirror";
/// Direct lookups of the `default` ServiceAccount before giving up (upstream: 10).
const DEFAULT_ATTEMPTS: usize = 10;

/// The projected volume source of the automounted token (upstream's `TokenVolumeSource`).
pub(crate) fn token_volume_source() -> Value {
    json!({
        "defaultMode": 0o644,
        "sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": TOKEN_EXPIRATION_SECONDS}},
            {"configMap": {"name": ROOT_CA_CONFIG_MAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [
                {"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}},
            ]}},
        ],
    })
}

fn is_mirror(pod: &Value) -> bool {
    pod.pointer("/metadata/annotations").and_then(|a| a.get(MIRROR)).is_some()
}

/// Whether the token is mounted: the pod's choice, else the ServiceAccount's, else yes.
pub(crate) fn should_automount(spec: &Value, service_account: &Value) -> bool {
    spec.get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| service_account.get("automountServiceAccountToken").and_then(Value::as_bool))
        .unwrap_or(true)
}

/// Adds the token volume (named `kube-api-access-<suffix>`, or the pod's existing one) and its
/// read-only mount to every container and init container that has nothing mounted at
/// [`MOUNT_PATH`]; the volume is added only if some container mounts it.
pub(crate) fn mount_token(spec: &mut Value, suffix: &str) {
    let existing = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .find(|n| n.starts_with(VOLUME_PREFIX))
        .map(str::to_owned);
    let has_volume = existing.is_some();
    let name = existing.unwrap_or_else(|| format!("{VOLUME_PREFIX}{suffix}"));
    let mount = json!({"name": name, "readOnly": true, "mountPath": MOUNT_PATH});
    let mut needed = false;
    for list in ["initContainers", "containers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else { continue };
        for c in containers {
            let taken = c
                .get("volumeMounts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(MOUNT_PATH));
            if taken {
                continue;
            }
            match c.get_mut("volumeMounts").and_then(Value::as_array_mut) {
                Some(mounts) => mounts.push(mount.clone()),
                None => c["volumeMounts"] = json!([mount.clone()]),
            }
            needed = true;
        }
    }
    if needed && !has_volume {
        let volume = json!({"name": name, "projected": token_volume_source()});
        match spec.get_mut("volumes").and_then(Value::as_array_mut) {
            Some(volumes) => volumes.push(volume),
            None => spec["volumes"] = json!([volume]),
        }
    }
}

/// Whether the pod references a Secret anywhere (volumes, env, envFrom, pull secrets).
fn references_secrets(spec: &Value) -> bool {
    let volumes = spec.get("volumes").and_then(Value::as_array).into_iter().flatten();
    let in_volumes = volumes.clone().any(|v| {
        v.get("secret").is_some()
            || v.pointer("/projected/sources")
                .and_then(Value::as_array)
                .is_some_and(|s| s.iter().any(|s| s.get("secret").is_some()))
    });
    let containers = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| spec.get(*k).and_then(Value::as_array).into_iter().flatten());
    let in_containers = containers.clone().any(|c| {
        c.get("envFrom").and_then(Value::as_array).is_some_and(|l| l.iter().any(|e| e.get("secretRef").is_some()))
            || c.get("env").and_then(Value::as_array).is_some_and(|l| {
                l.iter().any(|e| e.pointer("/valueFrom/secretKeyRef").is_some())
            })
    });
    let pull = spec.get("imagePullSecrets").and_then(Value::as_array).is_some_and(|l| !l.is_empty());
    in_volumes || in_containers || pull
}

fn uses_token_projection(spec: &Value) -> bool {
    spec.get("volumes").and_then(Value::as_array).into_iter().flatten().any(|v| {
        v.pointer("/projected/sources")
            .and_then(Value::as_array)
            .is_some_and(|s| s.iter().any(|s| s.get("serviceAccountToken").is_some()))
    })
}

/// What a mirror pod may not do; the refusal's message.
pub(crate) fn mirror_refusal(spec: &Value) -> Option<&'static str> {
    if spec.get("serviceAccountName").and_then(Value::as_str).is_some_and(|s| !s.is_empty()) {
        return Some("a mirror pod may not reference service accounts");
    }
    if references_secrets(spec) {
        return Some("a mirror pod may not reference secrets");
    }
    if uses_token_projection(spec) {
        return Some("a mirror pod may not use ServiceAccountToken volume projections");
    }
    None
}

/// Reads the ServiceAccount `namespace/name`, looking again for a while for `default`.
async fn service_account(ctx: &Ctx, namespace: &str, name: &str) -> Result<Option<Value>> {
    let c = crate::namespaces::ctx(&ctx.state, "", "serviceaccounts", Some(namespace))?;
    let attempts = if name == DEFAULT_SERVICE_ACCOUNT { DEFAULT_ATTEMPTS } else { 1 };
    // Upstream waits 100 to 200 ms between attempts.
    let pause = Duration::from_millis(100 + u64::from(uuid::Uuid::new_v4().as_bytes()[0]) * 100 / 255);
    for attempt in 0..attempts {
        if attempt > 0 {
            tokio::time::sleep(pause).await;
        }
        match c.current(name).await {
            Ok((sa, _)) => return Ok(Some(sa)),
            Err(ApiError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Admits a pod being created in `namespace`: see the module documentation.
pub(crate) async fn admit(ctx: &Ctx, namespace: &str, pod: &mut Value) -> Result<()> {
    let name = object::name(pod).to_owned();
    let refuse = |message: String| ApiError::Forbidden {
        target: ctx.target(&name),
        message: format!("pods {name:?} is forbidden: {message}"),
    };
    let spec = pod.get("spec").cloned().unwrap_or_else(|| json!({}));
    if is_mirror(pod) {
        return match mirror_refusal(&spec) {
            Some(message) => Err(refuse(message.to_owned())),
            None => Ok(()),
        };
    }
    // The deprecated `serviceAccount` field stands in for an empty `serviceAccountName`.
    let sa_name = ["serviceAccountName", "serviceAccount"]
        .iter()
        .filter_map(|f| spec.get(*f).and_then(Value::as_str))
        .find(|s| !s.is_empty())
        .unwrap_or(DEFAULT_SERVICE_ACCOUNT)
        .to_owned();
    let Some(sa) = service_account(ctx, namespace, &sa_name).await? else {
        return Err(refuse(format!(
            "error looking up service account {namespace}/{sa_name}: serviceaccount {sa_name:?} not found"
        )));
    };
    let spec = &mut pod["spec"];
    spec["serviceAccountName"] = json!(sa_name);
    spec["serviceAccount"] = json!(sa_name);
    if should_automount(spec, &sa) {
        mount_token(spec, &crate::handlers::create::random_suffix());
    }
    let pull_secrets = spec.get("imagePullSecrets").and_then(Value::as_array).is_some_and(|l| !l.is_empty());
    if !pull_secrets
        && let Some(from_sa) = sa.get("imagePullSecrets").and_then(Value::as_array).filter(|l| !l.is_empty())
    {
        let names: Vec<Value> = from_sa
            .iter()
            .filter_map(|s| s.get("name").and_then(Value::as_str))
            .map(|n| json!({"name": n}))
            .collect();
        spec["imagePullSecrets"] = json!(names);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: Value) -> Value {
        v
    }

    #[test]
    fn every_container_mounts_the_projected_token_volume() {
        let mut s = spec(json!({
            "initContainers": [{"name": "init", "image": "i"}],
            "containers": [
                {"name": "a", "image": "i", "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                {"name": "b", "image": "i"},
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        }));
        mount_token(&mut s, "x7k2q");
        let mount = json!({"name": "kube-api-access-x7k2q", "readOnly": true, "mountPath": MOUNT_PATH});
        assert_eq!(s["initContainers"][0]["volumeMounts"], json!([mount]));
        assert_eq!(s["containers"][0]["volumeMounts"][1], mount);
        assert_eq!(s["containers"][1]["volumeMounts"], json!([mount]));
        assert_eq!(s["volumes"][1], json!({
            "name": "kube-api-access-x7k2q",
            "projected": {
                "defaultMode": 420,
                "sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                ],
            },
        }));
        // The typed PodSpec accepts the shape.
        let _: k8s_openapi::api::core::v1::PodSpec = serde_json::from_value(s).unwrap();
    }

    #[test]
    fn a_container_with_its_own_mount_there_keeps_it() {
        let own = json!({"name": "mine", "mountPath": MOUNT_PATH});
        let mut s = spec(json!({
            "containers": [{"name": "a", "image": "i", "volumeMounts": [own]}],
            "volumes": [{"name": "mine", "emptyDir": {}}],
        }));
        mount_token(&mut s, "abcde");
        assert_eq!(s["containers"][0]["volumeMounts"], json!([own]));
        assert_eq!(s["volumes"].as_array().unwrap().len(), 1, "no container needs the token volume");
    }

    #[test]
    fn an_existing_token_volume_is_reused() {
        let mut s = spec(json!({
            "containers": [{"name": "a", "image": "i"}],
            "volumes": [{"name": "kube-api-access-old11", "projected": {"sources": []}}],
        }));
        mount_token(&mut s, "new22");
        assert_eq!(s["containers"][0]["volumeMounts"][0]["name"], "kube-api-access-old11");
        assert_eq!(s["volumes"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn automount_follows_the_pod_then_the_service_account() {
        let yes = json!({"automountServiceAccountToken": true});
        let no = json!({"automountServiceAccountToken": false});
        let unset = json!({});
        let table = [
            (&unset, &unset, true),
            (&unset, &no, false),
            (&yes, &no, true),
            (&no, &yes, false),
            (&no, &unset, false),
        ];
        for (pod, sa, want) in table {
            assert_eq!(should_automount(pod, sa), want, "pod {pod} sa {sa}");
        }
    }

    #[test]
    fn mirror_pods_may_not_reference_accounts_secrets_or_tokens() {
        let c = json!([{"name": "a", "image": "i"}]);
        let table = [
            (json!({"containers": c}), None),
            (json!({"containers": c, "serviceAccountName": "default"}), Some("a mirror pod may not reference service accounts")),
            (json!({"containers": c, "volumes": [{"name": "s", "secret": {"secretName": "x"}}]}), Some("a mirror pod may not reference secrets")),
            (
                json!({"containers": [{"name": "a", "image": "i", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}]}),
                Some("a mirror pod may not reference secrets"),
            ),
            (
                json!({"containers": c, "volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}]}),
                Some("a mirror pod may not use ServiceAccountToken volume projections"),
            ),
        ];
        for (spec, want) in table {
            assert_eq!(mirror_refusal(&spec), want, "{spec}");
        }
    }
}
