//! A pod's volumes on disk: emptyDir and hostPath directories, and the volumes whose files
//! the kubelet writes, through the [`atomic_writer`](crate::atomic_writer) so that readers
//! never see a partial update: configMap, secret, downwardAPI and projected (serviceAccountToken,
//! configMap, secret and downwardAPI sources), with `items`, `optional`, `defaultMode` and
//! per-item `mode` as upstream. Building a volume's files is pure ([`payload`]); the tokens
//! it needs are fetched beforehand ([`token_requests`]) and handed in.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, Volume,
};

use crate::atomic_writer::{self, FileProjection, Payload};
use crate::spec::{ConfigError, ObjectSource, PodContext, pod_key, volume_path};
use crate::tokens::TokenKey;

/// The mode of files whose volume names none (upstream's 0644 for every kind).
pub const DEFAULT_MODE: u32 = 0o644;

/// Tokens by (volume name, index of the source in the projected volume).
pub type Tokens = HashMap<(String, usize), String>;

fn mount_error(volume: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Mount { volume: volume.to_owned(), message: message.into() }
}

/// The tokens the pod's projected volumes need, with where each goes.
pub fn token_requests(pod: &Pod) -> Vec<((String, usize), TokenKey)> {
    let (name, namespace, uid) = pod_key(pod);
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_default();
    let mut out = Vec::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let Some(projected) = &v.projected else { continue };
        for (i, source) in projected.sources.iter().flatten().enumerate() {
            let Some(t) = &source.service_account_token else { continue };
            out.push((
                (v.name.clone(), i),
                TokenKey {
                    namespace: namespace.to_owned(),
                    service_account: sa.clone(),
                    pod_name: name.to_owned(),
                    pod_uid: uid.to_owned(),
                    audience: t.audience.clone().filter(|a| !a.is_empty()),
                    expiration_seconds: t.expiration_seconds.unwrap_or(3600),
                },
            ));
        }
    }
    out
}

fn mode(explicit: Option<i32>, default: u32) -> u32 {
    explicit.map_or(default, |m| (m as u32) & 0o7777)
}

fn config_map_files(cm: ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut all: BTreeMap<String, Vec<u8>> =
        cm.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
    all.extend(cm.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)));
    all
}

fn secret_files(s: Secret) -> BTreeMap<String, Vec<u8>> {
    // stringData wins, as the API server's merge into data would make it.
    let mut all: BTreeMap<String, Vec<u8>> =
        s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
    all.extend(s.string_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())));
    all
}

/// Upstream's `MakePayload`: every key, or the `items` asked for (a missing key is an error
/// unless the source is optional).
fn key_payload(
    all: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: u32,
    optional: bool,
    missing_key: impl Fn(&str) -> String,
    volume: &str,
    out: &mut Payload,
) -> Result<(), ConfigError> {
    match items {
        None | Some([]) => {
            for (k, data) in all {
                out.insert(k, FileProjection { data, mode: default_mode });
            }
        }
        Some(items) => {
            for item in items {
                match all.get(&item.key) {
                    Some(data) => {
                        out.insert(item.path.clone(), FileProjection { data: data.clone(), mode: mode(item.mode, default_mode) });
                    }
                    None if optional => {}
                    None => return Err(mount_error(volume, missing_key(&item.key))),
                }
            }
        }
    }
    Ok(())
}

/// Go's `%q` of a string, as upstream's `FormatMap` writes label values.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `key="value"` lines, sorted by key (upstream's `fieldpath.FormatMap`).
pub fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn downward_value(pod: &Pod, item: &DownwardAPIVolumeFile, volume: &str) -> Result<String, ConfigError> {
    let (name, namespace, uid) = pod_key(pod);
    if let Some(f) = &item.field_ref {
        let path = f.field_path.as_str();
        let subscript = |prefix: &str, map: Option<&BTreeMap<String, String>>| {
            path.strip_prefix(prefix)
                .and_then(|r| r.strip_suffix("']"))
                .map(|k| map.and_then(|m| m.get(k)).cloned().unwrap_or_default())
        };
        return Ok(match path {
            "metadata.name" => name.to_owned(),
            "metadata.namespace" => namespace.to_owned(),
            "metadata.uid" => uid.to_owned(),
            "metadata.labels" => format_map(pod.metadata.labels.as_ref()),
            "metadata.annotations" => format_map(pod.metadata.annotations.as_ref()),
            p => subscript("metadata.labels['", pod.metadata.labels.as_ref())
                .or_else(|| subscript("metadata.annotations['", pod.metadata.annotations.as_ref()))
                .ok_or_else(|| mount_error(volume, format!("unsupported fieldRef fieldPath {p:?} in a downwardAPI volume")))?,
        });
    }
    if let Some(r) = &item.resource_field_ref {
        let container = r.container_name.as_deref().unwrap_or_default();
        let c = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()))
            .find(|c| c.name == container)
            .ok_or_else(|| mount_error(volume, format!("resourceFieldRef names no container {container:?}")))?;
        return Ok(crate::spec::resource_field(c, &r.resource, r.divisor.as_ref().map(|d| d.0.as_str())));
    }
    Err(mount_error(volume, format!("downwardAPI item {:?} has neither fieldRef nor resourceFieldRef", item.path)))
}

fn downward_payload(pod: &Pod, items: &[DownwardAPIVolumeFile], default_mode: u32, volume: &str, out: &mut Payload) -> Result<(), ConfigError> {
    for item in items {
        let value = downward_value(pod, item, volume)?;
        out.insert(item.path.clone(), FileProjection { data: value.into_bytes(), mode: mode(item.mode, default_mode) });
    }
    Ok(())
}

/// The files of `volume`, or `None` for volumes the kubelet does not write (emptyDir,
/// hostPath).
pub fn payload(pod: &Pod, volume: &Volume, objects: &dyn ObjectSource, tokens: &Tokens) -> Result<Option<Payload>, ConfigError> {
    let (_, namespace, _) = pod_key(pod);
    let v = volume.name.as_str();
    let mut out = Payload::new();
    if let Some(cm) = &volume.config_map {
        let default = mode(cm.default_mode, DEFAULT_MODE);
        let optional = cm.optional == Some(true);
        match objects.config_map(namespace, &cm.name) {
            Some(obj) => key_payload(config_map_files(obj), cm.items.as_deref(), default, optional,
                |k| format!("configmap references non-existent config key: {k}"), v, &mut out)?,
            None if optional => {}
            None => return Err(mount_error(v, format!("configmap {:?} not found", cm.name))),
        }
    } else if let Some(s) = &volume.secret {
        let default = mode(s.default_mode, DEFAULT_MODE);
        let optional = s.optional == Some(true);
        let name = s.secret_name.clone().unwrap_or_default();
        match objects.secret(namespace, &name) {
            Some(obj) => key_payload(secret_files(obj), s.items.as_deref(), default, optional,
                |k| format!("references non-existent secret key: {k}"), v, &mut out)?,
            None if optional => {}
            None => return Err(mount_error(v, format!("secret {name:?} not found"))),
        }
    } else if let Some(d) = &volume.downward_api {
        downward_payload(pod, d.items.as_deref().unwrap_or_default(), mode(d.default_mode, DEFAULT_MODE), v, &mut out)?;
    } else if let Some(p) = &volume.projected {
        let default = mode(p.default_mode, DEFAULT_MODE);
        for (i, source) in p.sources.iter().flatten().enumerate() {
            if let Some(cm) = &source.config_map {
                let optional = cm.optional == Some(true);
                match objects.config_map(namespace, &cm.name) {
                    Some(obj) => key_payload(config_map_files(obj), cm.items.as_deref(), default, optional,
                        |k| format!("configmap references non-existent config key: {k}"), v, &mut out)?,
                    None if optional => {}
                    None => return Err(mount_error(v, format!("configmap {:?} not found", cm.name))),
                }
            } else if let Some(s) = &source.secret {
                let optional = s.optional == Some(true);
                match objects.secret(namespace, &s.name) {
                    Some(obj) => key_payload(secret_files(obj), s.items.as_deref(), default, optional,
                        |k| format!("secret references non-existent secret key: {k}"), v, &mut out)?,
                    None if optional => {}
                    None => return Err(mount_error(v, format!("secret {:?} not found", s.name))),
                }
            } else if let Some(d) = &source.downward_api {
                downward_payload(pod, d.items.as_deref().unwrap_or_default(), default, v, &mut out)?;
            } else if let Some(t) = &source.service_account_token {
                let token = tokens
                    .get(&(volume.name.clone(), i))
                    .ok_or_else(|| mount_error(v, "failed to fetch token: not requested yet"))?;
                out.insert(t.path.clone(), FileProjection { data: token.clone().into_bytes(), mode: default });
            }
        }
    } else {
        return Ok(None);
    }
    for path in out.keys() {
        atomic_writer::validate_path(path).map_err(|e| mount_error(v, e))?;
    }
    Ok(Some(out))
}

/// Creates (or refreshes) the pod's volumes on disk: emptyDir directories, hostPath
/// directories and files of type `*OrCreate` (and checks the others), and the files of
/// configMap, secret, downwardAPI and projected volumes (with `tokens` for the projected
/// serviceAccountToken sources).
pub fn prepare_volumes(
    pod: &Pod,
    ctx: &PodContext<'_>,
    objects: &dyn ObjectSource,
    tokens: &Tokens,
) -> Result<(), ConfigError> {
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let dir = volume_path(ctx, v);
        let io = |e: std::io::Error| mount_error(&v.name, e.to_string());
        if let Some(h) = &v.host_path {
            match h.type_.as_deref() {
                Some("DirectoryOrCreate") => std::fs::create_dir_all(&dir).map_err(io)?,
                Some("FileOrCreate") => {
                    if let Some(parent) = dir.parent() {
                        std::fs::create_dir_all(parent).map_err(io)?;
                    }
                    std::fs::OpenOptions::new().create(true).append(true).open(&dir).map_err(io)?;
                }
                Some("Directory") if !dir.is_dir() => {
                    return Err(mount_error(&v.name, format!("hostPath type check failed: {} is not a directory", dir.display())));
                }
                Some("File") if !dir.is_file() => {
                    return Err(mount_error(&v.name, format!("hostPath type check failed: {} is not a file", dir.display())));
                }
                _ => {}
            }
            continue;
        }
        match payload(pod, v, objects, tokens)? {
            Some(files) => {
                atomic_writer::write(&dir, &files).map_err(io)?;
            }
            None => std::fs::create_dir_all(&dir).map_err(io)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use k8s_openapi::ByteString;
    use serde_json::json;

    use super::*;

    struct Objects;
    impl ObjectSource for Objects {
        fn config_map(&self, ns: &str, name: &str) -> Option<ConfigMap> {
            match (ns, name) {
                ("team", "kube-root-ca.crt") => Some(serde_json::from_value(json!({"data": {"ca.crt": "PEM"}})).unwrap()),
                ("team", "cfg") => Some(serde_json::from_value(json!({"data": {"a": "1", "b": "2"}, "binaryData": {"bin": "AAE="}})).unwrap()),
                _ => None,
            }
        }
        fn secret(&self, ns: &str, name: &str) -> Option<Secret> {
            (ns == "team" && name == "sec").then(|| Secret {
                data: Some([("password".to_owned(), ByteString(b"hunter2".to_vec()))].into()),
                ..Default::default()
            })
        }
        fn services(&self) -> Option<Vec<k8s_openapi::api::core::v1::Service>> {
            Some(Vec::new())
        }
    }

    fn pod(volumes: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-0", "namespace": "team", "uid": "u-1",
                "labels": {"app": "web", "tier": "a\"b"}, "annotations": {"note": "x"}},
            "spec": {"serviceAccountName": "robot", "containers": [{"name": "c", "image": "i",
                "resources": {"limits": {"memory": "64Mi"}}}], "volumes": volumes},
        }))
        .unwrap()
    }

    /// The token volume the ServiceAccount admission plugin adds.
    fn kube_api_access() -> serde_json::Value {
        json!({"name": "kube-api-access-abcde", "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]}})
    }

    fn files(p: &Payload) -> Vec<(&str, &str, u32)> {
        p.iter().map(|(k, f)| (k.as_str(), std::str::from_utf8(&f.data).unwrap_or("<binary>"), f.mode)).collect()
    }

    #[test]
    fn the_token_volume_holds_the_token_the_ca_and_the_namespace() {
        let p = pod(json!([kube_api_access()]));
        let wanted = token_requests(&p);
        assert_eq!(wanted.len(), 1);
        let ((volume, index), key) = &wanted[0];
        assert_eq!((volume.as_str(), *index), ("kube-api-access-abcde", 0));
        assert_eq!(key, &TokenKey {
            namespace: "team".into(), service_account: "robot".into(), pod_name: "web-0".into(),
            pod_uid: "u-1".into(), audience: None, expiration_seconds: 3607,
        });
        let tokens: Tokens = [((volume.clone(), 0), "eyJ.token".to_owned())].into();
        let v = &p.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0];
        let got = payload(&p, v, &Objects, &tokens).unwrap().unwrap();
        assert_eq!(files(&got), vec![("ca.crt", "PEM", 0o644), ("namespace", "team", 0o644), ("token", "eyJ.token", 0o644)]);
        // Without its token, the volume cannot be written yet.
        let err = payload(&p, v, &Objects, &Tokens::new()).unwrap_err();
        assert!(err.to_string().contains("kube-api-access-abcde") && err.to_string().contains("failed to fetch token"), "{err}");
    }

    #[test]
    fn projected_sources_honour_items_optional_and_modes() {
        let v = json!({"name": "all", "projected": {"defaultMode": 0o600, "sources": [
            {"configMap": {"name": "cfg", "items": [{"key": "a", "path": "cfg/a.txt", "mode": 0o400}]}},
            {"secret": {"name": "sec"}},
            {"configMap": {"name": "absent", "optional": true}},
            {"secret": {"name": "sec", "optional": true, "items": [{"key": "nope", "path": "nope"}]}},
            {"downwardAPI": {"items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "app", "fieldRef": {"fieldPath": "metadata.labels['app']"}},
                {"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "limits.memory", "divisor": "1Mi"}, "mode": 0o444},
            ]}},
            {"serviceAccountToken": {"path": "vault-token", "audience": "vault", "expirationSeconds": 600}},
        ]}});
        let p = pod(json!([v]));
        let wanted = token_requests(&p);
        assert_eq!(wanted[0].0, ("all".to_owned(), 5));
        assert_eq!(wanted[0].1.audience.as_deref(), Some("vault"));
        assert_eq!(wanted[0].1.expiration_seconds, 600);
        let tokens: Tokens = [(("all".to_owned(), 5), "t".to_owned())].into();
        let volume = &p.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0];
        let got = payload(&p, volume, &Objects, &tokens).unwrap().unwrap();
        assert_eq!(files(&got), vec![
            ("app", "web", 0o600),
            ("cfg/a.txt", "1", 0o400),
            ("labels", "app=\"web\"\ntier=\"a\\\"b\"", 0o600),
            ("mem", "64", 0o444),
            ("password", "hunter2", 0o600),
            ("vault-token", "t", 0o600),
        ]);
    }

    #[test]
    fn missing_sources_say_what_is_missing() {
        let cases = [
            (json!({"name": "v", "configMap": {"name": "absent"}}), r#"MountVolume.SetUp failed for volume "v" : configmap "absent" not found"#),
            (json!({"name": "v", "secret": {"secretName": "absent"}}), r#"MountVolume.SetUp failed for volume "v" : secret "absent" not found"#),
            (json!({"name": "v", "configMap": {"name": "cfg", "items": [{"key": "zz", "path": "z"}]}}),
                r#"MountVolume.SetUp failed for volume "v" : configmap references non-existent config key: zz"#),
            (json!({"name": "v", "projected": {"sources": [{"secret": {"name": "sec", "items": [{"key": "zz", "path": "z"}]}}]}}),
                r#"MountVolume.SetUp failed for volume "v" : secret references non-existent secret key: zz"#),
            (json!({"name": "v", "downwardAPI": {"items": [{"path": "ip", "fieldRef": {"fieldPath": "status.podIP"}}]}}),
                r#"MountVolume.SetUp failed for volume "v" : unsupported fieldRef fieldPath "status.podIP" in a downwardAPI volume"#),
            (json!({"name": "v", "configMap": {"name": "cfg", "items": [{"key": "a", "path": "../escape"}]}}),
                r#"MountVolume.SetUp failed for volume "v" : the path "../escape" must not contain "..""#),
        ];
        for (v, want) in cases {
            let p = pod(json!([v]));
            let volume = &p.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0];
            assert_eq!(payload(&p, volume, &Objects, &Tokens::new()).unwrap_err().to_string(), want);
        }
        let p = pod(json!([{"name": "v", "configMap": {"name": "absent", "optional": true}}]));
        let volume = &p.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0];
        assert_eq!(payload(&p, volume, &Objects, &Tokens::new()).unwrap(), Some(Payload::new()), "optional: empty");
    }

    #[test]
    fn volumes_are_written_atomically_and_refreshed() {
        let dir = tempfile::tempdir().unwrap();
        let p = pod(json!([kube_api_access(), {"name": "cfg", "configMap": {"name": "cfg", "defaultMode": 0o640}}, {"name": "scratch", "emptyDir": {}}]));
        let ctx = PodContext { node_name: "n1", host_ip: "10.0.0.1", pod_ip: "10.244.0.5", volumes_dir: dir.path() };
        let tokens = |t: &str| -> Tokens { [(("kube-api-access-abcde".to_owned(), 0), t.to_owned())].into() };
        prepare_volumes(&p, &ctx, &Objects, &tokens("first")).unwrap();
        let access = dir.path().join("kube-api-access-abcde");
        assert_eq!(std::fs::read_to_string(access.join("token")).unwrap(), "first");
        assert_eq!(std::fs::read_to_string(access.join("ca.crt")).unwrap(), "PEM");
        assert_eq!(std::fs::read_to_string(access.join("namespace")).unwrap(), "team");
        assert!(std::fs::symlink_metadata(access.join("token")).unwrap().file_type().is_symlink());
        let data = std::fs::read_link(access.join("..data")).unwrap();
        assert_eq!(std::fs::read(dir.path().join("cfg/bin")).unwrap(), vec![0, 1]);
        let m = std::fs::metadata(dir.path().join("cfg/a")).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o640);
        assert!(dir.path().join("scratch").is_dir());
        // A renewed token replaces the payload; an unchanged one leaves it.
        prepare_volumes(&p, &ctx, &Objects, &tokens("first")).unwrap();
        assert_eq!(std::fs::read_link(access.join("..data")).unwrap(), data);
        prepare_volumes(&p, &ctx, &Objects, &tokens("second")).unwrap();
        assert_eq!(std::fs::read_to_string(access.join("token")).unwrap(), "second");
        assert_ne!(std::fs::read_link(access.join("..data")).unwrap(), data);
        assert!(!Path::new(&access.join(&data)).exists());
    }
}
