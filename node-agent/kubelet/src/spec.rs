//! From a Pod to CRI configs: the sandbox config and each container's config
//! (command, args, env with ConfigMap/Secret/downward API sources and the
//! Services' variables, working dir, ports, mounts, resources). The volumes
//! on disk are `volumes.rs`'s.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, Pod, Secret, Service, Volume};

use crate::cri::{LABEL_CONTAINER_NAME, LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID};

/// Why a container's config could not be built (shown as
/// `CreateContainerConfigError`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A referenced ConfigMap does not exist.
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    /// A referenced Secret does not exist.
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    /// A referenced key is missing.
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    KeyNotFound {
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The key.
        key: String,
    },
    /// A downward API field is not supported.
    #[error("unsupported fieldRef fieldPath {0:?}")]
    UnsupportedField(String),
    /// A volume mount names no volume of the pod.
    #[error("volume mount {0:?} names no volume of the pod")]
    UnknownVolume(String),
    /// A volume could not be written.
    #[error("failed to prepare volume {volume}: {message}")]
    Volume {
        /// The volume.
        volume: String,
        /// What went wrong.
        message: String,
    },
    /// A volume cannot be set up yet (its source is missing, its token not issued): the pod
    /// waits in `ContainerCreating` and the kubelet tries again.
    #[error("MountVolume.SetUp failed for volume {volume:?} : {message}")]
    Mount {
        /// The volume.
        volume: String,
        /// What is missing.
        message: String,
    },
    /// The Services are not listed yet, so their environment variables are unknown.
    #[error("services have not yet been read at least once, cannot construct envvars")]
    ServicesNotListed,
}

/// Where ConfigMaps, Secrets and Services are read from (the reflector stores in the
/// agent, a map in tests).
pub trait ObjectSource: Send + Sync {
    /// The ConfigMap `namespace/name`.
    fn config_map(&self, namespace: &str, name: &str) -> Option<ConfigMap>;
    /// The Secret `namespace/name`.
    fn secret(&self, namespace: &str, name: &str) -> Option<Secret>;
    /// Every Service, or `None` before they have been listed once.
    fn services(&self) -> Option<Vec<Service>>;
}

/// What the node adds to a pod's environment.
#[derive(Debug, Clone)]
pub struct PodContext<'a> {
    /// The node's name.
    pub node_name: &'a str,
    /// The node's IP.
    pub host_ip: &'a str,
    /// The pod's IP (empty before the sandbox has one).
    pub pod_ip: &'a str,
    /// Root of the pod's volumes: `<root>/pods/<uid>/volumes`.
    pub volumes_dir: &'a Path,
}

fn meta_str<'a>(pod: &'a Pod, f: impl Fn(&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<&'a String>) -> &'a str {
    f(&pod.metadata).map_or("", String::as_str)
}

/// The pod's name, namespace and uid.
pub fn pod_key(pod: &Pod) -> (&str, &str, &str) {
    (
        meta_str(pod, |m| m.name.as_ref()),
        meta_str(pod, |m| m.namespace.as_ref()),
        meta_str(pod, |m| m.uid.as_ref()),
    )
}

/// Whether the pod uses the node's network namespace.
pub fn host_network(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false)
}

fn namespace_options(pod: &Pod) -> cri::NamespaceOption {
    let spec = pod.spec.as_ref();
    cri::NamespaceOption {
        network: if host_network(pod) {
            cri::NamespaceMode::Node as i32
        } else {
            cri::NamespaceMode::Pod as i32
        },
        pid: if spec.and_then(|s| s.host_pid).unwrap_or(false) {
            cri::NamespaceMode::Node as i32
        } else if spec.and_then(|s| s.share_process_namespace).unwrap_or(false) {
            cri::NamespaceMode::Pod as i32
        } else {
            cri::NamespaceMode::Container as i32
        },
        ipc: if spec.and_then(|s| s.host_ipc).unwrap_or(false) {
            cri::NamespaceMode::Node as i32
        } else {
            cri::NamespaceMode::Pod as i32
        },
        ..Default::default()
    }
}

/// The sandbox config (`attempt` counts sandboxes made for this pod).
pub fn sandbox_config(pod: &Pod, attempt: u32, log_dir: &Path) -> cri::PodSandboxConfig {
    let (name, namespace, uid) = pod_key(pod);
    let spec = pod.spec.as_ref();
    let hostname = if host_network(pod) {
        String::new()
    } else {
        spec.and_then(|s| s.hostname.clone())
            .unwrap_or_else(|| name.to_owned())
    };
    let port_mappings = spec
        .into_iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.unwrap_or(0) > 0)
        .map(|p| cri::PortMapping {
            protocol: match p.protocol.as_deref() {
                Some("UDP") => cri::Protocol::Udp as i32,
                Some("SCTP") => cri::Protocol::Sctp as i32,
                _ => cri::Protocol::Tcp as i32,
            },
            container_port: p.container_port,
            host_port: p.host_port.unwrap_or(0),
            host_ip: p.host_ip.clone().unwrap_or_default(),
        })
        .collect();
    let mut labels: HashMap<String, String> = pod
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    labels.insert(LABEL_POD_NAME.into(), name.into());
    labels.insert(LABEL_POD_NAMESPACE.into(), namespace.into());
    labels.insert(LABEL_POD_UID.into(), uid.into());
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: namespace.into(),
            attempt,
        }),
        hostname,
        log_directory: log_dir.display().to_string(),
        port_mappings,
        labels,
        annotations: pod
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options(pod)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn field_ref(pod: &Pod, ctx: &PodContext<'_>, path: &str) -> Result<String, ConfigError> {
    let (name, namespace, uid) = pod_key(pod);
    let spec = pod.spec.as_ref();
    let index = |map: &Option<BTreeMap<String, String>>, prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix("']"))
            .map(|k| map.as_ref().and_then(|m| m.get(k)).cloned().unwrap_or_default())
    };
    Ok(match path {
        "metadata.name" => name.into(),
        "metadata.namespace" => namespace.into(),
        "metadata.uid" => uid.into(),
        "spec.nodeName" => ctx.node_name.into(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => ctx.pod_ip.into(),
        "status.hostIP" | "status.hostIPs" => ctx.host_ip.into(),
        p => index(&pod.metadata.labels, "metadata.labels['")
            .or_else(|| index(&pod.metadata.annotations, "metadata.annotations['"))
            .ok_or_else(|| ConfigError::UnsupportedField(p.to_owned()))?,
    })
}

pub(crate) fn resource_field(c: &Container, resource: &str, divisor: Option<&str>) -> String {
    let (which, name) = resource.split_once('.').unwrap_or(("limits", resource));
    let r = c.resources.as_ref();
    let map = match which {
        "requests" => r.and_then(|r| r.requests.as_ref()),
        _ => r.and_then(|r| r.limits.as_ref()),
    };
    let value = map
        .and_then(|m| m.get(name))
        .and_then(|q| crate::resources::parse_quantity(&q.0));
    let divisor = divisor
        .and_then(crate::resources::parse_quantity)
        .filter(|d| *d > 0.0)
        .unwrap_or(1.0);
    match value {
        Some(v) => ((v / divisor).ceil() as i64).to_string(),
        // Unset limits are the node's allocatable upstream; 0 here.
        None => "0".into(),
    }
}

/// Expands `$(VAR)` references to earlier variables (`$$` escapes), as upstream.
pub fn expand(s: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn secret_value(s: &Secret, key: &str) -> Option<String> {
    s.string_data.as_ref().and_then(|d| d.get(key)).cloned().or_else(|| {
        s.data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    })
}

fn config_map_value(cm: &ConfigMap, key: &str) -> Option<String> {
    cm.data.as_ref().and_then(|d| d.get(key)).cloned().or_else(|| {
        cm.binary_data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    })
}

/// `FOO-BAR` → `FOO_BAR` (upstream's `makeEnvVariableName`).
fn env_name(s: &str) -> String {
    s.to_uppercase().replace('-', "_")
}

/// The environment variables of Services a container gets (upstream's
/// `getServiceEnvVarMap` and `envvars.FromServices`): those of `default/kubernetes` always,
/// those of the pod's own namespace with `enableServiceLinks`; `{NAME}_SERVICE_HOST`,
/// `{NAME}_SERVICE_PORT`, one `{NAME}_SERVICE_PORT_{PORT}` per named port, and the Docker
/// link family `{NAME}_PORT`, `{NAME}_PORT_{n}_{PROTO}` with `_PROTO`, `_PORT`, `_ADDR`.
pub fn service_env(services: &[Service], namespace: &str, enable_links: bool) -> BTreeMap<String, String> {
    let mut chosen: BTreeMap<String, &Service> = BTreeMap::new();
    for svc in services {
        let ip = svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()).unwrap_or_default();
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let name = svc.metadata.name.clone().unwrap_or_default();
        let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
        if ns == "default" && name == "kubernetes" {
            chosen.entry(name).or_insert(svc);
        } else if ns == namespace && enable_links {
            chosen.insert(name, svc);
        }
    }
    let mut env = BTreeMap::new();
    for (name, svc) in chosen {
        let spec = svc.spec.as_ref();
        let ip = spec.and_then(|s| s.cluster_ip.clone()).unwrap_or_default();
        let ports = spec.and_then(|s| s.ports.clone()).unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        let prefix = env_name(&name);
        env.insert(format!("{prefix}_SERVICE_HOST"), ip.clone());
        env.insert(format!("{prefix}_SERVICE_PORT"), first.port.to_string());
        for p in &ports {
            if let Some(port_name) = p.name.as_deref().filter(|n| !n.is_empty()) {
                env.insert(format!("{prefix}_SERVICE_PORT_{}", env_name(port_name)), p.port.to_string());
            }
        }
        let host = if ip.contains(':') { format!("[{ip}]") } else { ip.clone() };
        for (i, p) in ports.iter().enumerate() {
            let proto = p.protocol.clone().unwrap_or_else(|| "TCP".to_owned());
            let url = format!("{}://{host}:{}", proto.to_lowercase(), p.port);
            if i == 0 {
                env.insert(format!("{prefix}_PORT"), url.clone());
            }
            let port_prefix = format!("{prefix}_PORT_{}_{}", p.port, proto.to_uppercase());
            env.insert(format!("{port_prefix}_PROTO"), proto.to_lowercase());
            env.insert(format!("{port_prefix}_PORT"), p.port.to_string());
            env.insert(format!("{port_prefix}_ADDR"), ip.clone());
            env.insert(port_prefix, url);
        }
    }
    env
}

/// The container's environment, in order, with every source resolved: the container's own
/// variables as declared, then the Services' ones it did not set (see [`service_env`]);
/// `$(VAR)` references may name either.
pub fn environment(
    pod: &Pod,
    c: &Container,
    ctx: &PodContext<'_>,
    objects: &dyn ObjectSource,
) -> Result<Vec<(String, String)>, ConfigError> {
    let (_, namespace, _) = pod_key(pod);
    let services = objects.services().ok_or(ConfigError::ServicesNotListed)?;
    let links = pod.spec.as_ref().and_then(|s| s.enable_service_links).unwrap_or(true);
    let service_vars = service_env(&services, namespace, links);
    let mut out: Vec<(String, String)> = Vec::new();
    let mut vars: HashMap<String, String> = service_vars.clone().into_iter().collect();
    let set = |out: &mut Vec<(String, String)>, vars: &mut HashMap<String, String>, k: String, v: String| {
        if let Some(slot) = out.iter_mut().find(|(name, _)| *name == k) {
            slot.1 = v.clone();
        } else {
            out.push((k.clone(), v.clone()));
        }
        vars.insert(k, v);
    };
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match objects.config_map(namespace, &r.name) {
                Some(cm) => {
                    for (k, v) in cm.data.clone().unwrap_or_default() {
                        set(&mut out, &mut vars, format!("{prefix}{k}"), v);
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError::ConfigMapNotFound(r.name.clone())),
            }
        }
        if let Some(r) = &from.secret_ref {
            match objects.secret(namespace, &r.name) {
                Some(s) => {
                    for (k, v) in s.data.clone().unwrap_or_default() {
                        set(&mut out, &mut vars, format!("{prefix}{k}"), String::from_utf8_lossy(&v.0).into_owned());
                    }
                    for (k, v) in s.string_data.clone().unwrap_or_default() {
                        set(&mut out, &mut vars, format!("{prefix}{k}"), v);
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError::SecretNotFound(r.name.clone())),
            }
        }
    }
    for EnvVar { name, value, value_from } in c.env.iter().flatten() {
        let value = match (value, value_from) {
            (_, Some(from)) => {
                if let Some(r) = &from.config_map_key_ref {
                    let optional = r.optional == Some(true);
                    match objects.config_map(namespace, &r.name) {
                        None if optional => continue,
                        None => return Err(ConfigError::ConfigMapNotFound(r.name.clone())),
                        Some(cm) => match config_map_value(&cm, &r.key) {
                            Some(v) => v,
                            None if optional => continue,
                            None => {
                                return Err(ConfigError::KeyNotFound {
                                    kind: "ConfigMap",
                                    namespace: namespace.into(),
                                    name: r.name.clone(),
                                    key: r.key.clone(),
                                });
                            }
                        },
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let optional = r.optional == Some(true);
                    match objects.secret(namespace, &r.name) {
                        None if optional => continue,
                        None => return Err(ConfigError::SecretNotFound(r.name.clone())),
                        Some(s) => match secret_value(&s, &r.key) {
                            Some(v) => v,
                            None if optional => continue,
                            None => {
                                return Err(ConfigError::KeyNotFound {
                                    kind: "Secret",
                                    namespace: namespace.into(),
                                    name: r.name.clone(),
                                    key: r.key.clone(),
                                });
                            }
                        },
                    }
                } else if let Some(f) = &from.field_ref {
                    field_ref(pod, ctx, &f.field_path)?
                } else if let Some(r) = &from.resource_field_ref {
                    resource_field(c, &r.resource, r.divisor.as_ref().map(|d| d.0.as_str()))
                } else {
                    String::new()
                }
            }
            (Some(v), None) => expand(v, &vars),
            (None, None) => String::new(),
        };
        set(&mut out, &mut vars, name.clone(), value);
    }
    for (k, v) in service_vars {
        if !out.iter().any(|(name, _)| *name == k) {
            out.push((k, v));
        }
    }
    Ok(out)
}

/// The host directory of a volume.
pub fn volume_path(ctx: &PodContext<'_>, volume: &Volume) -> PathBuf {
    match &volume.host_path {
        Some(h) => PathBuf::from(&h.path),
        None => ctx.volumes_dir.join(&volume.name),
    }
}

/// The container's config for attempt `attempt`.
pub fn container_config(
    pod: &Pod,
    c: &Container,
    attempt: u32,
    ctx: &PodContext<'_>,
    objects: &dyn ObjectSource,
) -> Result<cri::ContainerConfig, ConfigError> {
    let (name, namespace, uid) = pod_key(pod);
    let env = environment(pod, c, ctx, objects)?;
    let vars: HashMap<String, String> = env.iter().cloned().collect();
    let volumes: HashMap<&str, &Volume> = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .map(|v| (v.name.as_str(), v))
        .collect();
    let mut mounts = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let v = volumes
            .get(m.name.as_str())
            .ok_or_else(|| ConfigError::UnknownVolume(m.name.clone()))?;
        let mut host = volume_path(ctx, v);
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            if sub.split('/').any(|p| p == "..") || sub.starts_with('/') {
                return Err(ConfigError::Volume {
                    volume: m.name.clone(),
                    message: format!("subPath {sub:?} must be a relative path inside the volume"),
                });
            }
            host = host.join(sub);
            if !host.exists() {
                std::fs::create_dir_all(&host).map_err(|e| ConfigError::Volume {
                    volume: m.name.clone(),
                    message: e.to_string(),
                })?;
            }
        }
        mounts.push(cri::Mount {
            container_path: m.mount_path.clone(),
            host_path: host.display().to_string(),
            readonly: m.read_only.unwrap_or(false)
                || v.config_map.is_some()
                || v.secret.is_some()
                || v.projected.is_some()
                || v.downward_api.is_some(),
            ..Default::default()
        });
    }
    let mut labels = HashMap::new();
    labels.insert(LABEL_POD_NAME.to_owned(), name.to_owned());
    labels.insert(LABEL_POD_NAMESPACE.to_owned(), namespace.to_owned());
    labels.insert(LABEL_POD_UID.to_owned(), uid.to_owned());
    labels.insert(LABEL_CONTAINER_NAME.to_owned(), c.name.clone());
    let security = c.security_context.as_ref();
    Ok(cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: c.name.clone(),
            attempt,
        }),
        image: Some(cri::ImageSpec {
            image: c.image.clone().unwrap_or_default(),
            ..Default::default()
        }),
        command: c
            .command
            .iter()
            .flatten()
            .map(|s| expand(s, &vars))
            .collect(),
        args: c.args.iter().flatten().map(|s| expand(s, &vars)).collect(),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs: env
            .into_iter()
            .map(|(key, value)| cri::KeyValue { key, value })
            .collect(),
        mounts,
        labels,
        log_path: format!("{}/{attempt}.log", c.name),
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(crate::resources::linux_resources(c.resources.as_ref())),
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(namespace_options(pod)),
                privileged: security.and_then(|s| s.privileged).unwrap_or(false),
                run_as_user: security
                    .and_then(|s| s.run_as_user)
                    .map(|value| cri::Int64Value { value }),
                readonly_rootfs: security
                    .and_then(|s| s.read_only_root_filesystem)
                    .unwrap_or(false),
                ..Default::default()
            }),
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use serde_json::json;

    struct Objects;
    impl ObjectSource for Objects {
        fn config_map(&self, ns: &str, name: &str) -> Option<ConfigMap> {
            (ns == "default" && name == "cfg").then(|| {
                serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"color": "blue", "size": "L"}})).unwrap()
            })
        }
        fn secret(&self, ns: &str, name: &str) -> Option<Secret> {
            (ns == "default" && name == "sec").then(|| Secret {
                data: Some([("password".to_owned(), ByteString(b"hunter2".to_vec()))].into()),
                ..Default::default()
            })
        }
        fn services(&self) -> Option<Vec<Service>> {
            Some(Vec::new())
        }
    }

    fn pod(containers: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u1", "labels": {"app": "web"}},
            "spec": {"containers": containers},
        }))
        .unwrap()
    }

    fn ctx() -> PodContext<'static> {
        PodContext {
            node_name: "n1",
            host_ip: "10.0.0.1",
            pod_ip: "10.244.0.5",
            volumes_dir: Path::new("/nonexistent"),
        }
    }

    #[test]
    fn env_sources_resolve_in_order() {
        let p = pod(json!([{"name": "c", "image": "i",
            "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CM_"}],
            "env": [
                {"name": "A", "value": "a"},
                {"name": "B", "value": "$(A)-b-$$(A)-$(MISSING)"},
                {"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "color"}}},
                {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": true}}},
            ]}]));
        let c = &p.spec.as_ref().unwrap().containers[0];
        let env = environment(&p, c, &ctx(), &Objects).unwrap();
        let want: Vec<(&str, &str)> = vec![
            ("CM_color", "blue"),
            ("CM_size", "L"),
            ("A", "a"),
            ("B", "a-b-$(A)-$(MISSING)"),
            ("COLOR", "blue"),
            ("PW", "hunter2"),
            ("POD", "p"),
            ("NS", "default"),
            ("IP", "10.244.0.5"),
            ("NODE", "n1"),
            ("APP", "web"),
        ];
        let got: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn an_indexed_jobs_index_comes_through_the_annotation_field_ref() {
        // What the Job controller adds to every container of an Indexed Job's pods.
        let mut p = pod(json!([{"name": "c", "image": "i", "env": [
            {"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {"apiVersion": "v1",
                "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
        ]}]));
        p.metadata.annotations = Some(BTreeMap::from([(
            "batch.kubernetes.io/job-completion-index".to_owned(),
            "3".to_owned(),
        )]));
        let c = &p.spec.as_ref().unwrap().containers[0];
        let env = environment(&p, c, &ctx(), &Objects).unwrap();
        assert_eq!(env, vec![("JOB_COMPLETION_INDEX".to_owned(), "3".to_owned())]);
    }

    #[test]
    fn missing_references_are_config_errors() {
        for (env, want) in [
            (json!({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}), "configmap \"nope\" not found"),
            (json!({"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}), "secret \"nope\" not found"),
            (json!({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}}), "couldn't find key k in ConfigMap default/cfg"),
        ] {
            let p = pod(json!([{"name": "c", "image": "i", "env": [env]}]));
            let c = &p.spec.as_ref().unwrap().containers[0];
            let err = environment(&p, c, &ctx(), &Objects).unwrap_err();
            assert_eq!(err.to_string(), want);
        }
    }

    #[test]
    fn volumes_are_written_and_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = pod(json!([{"name": "c", "image": "i", "volumeMounts": [
            {"name": "cfg", "mountPath": "/etc/cfg"},
            {"name": "scratch", "mountPath": "/scratch"},
        ]}]));
        p.spec.as_mut().unwrap().volumes = Some(serde_json::from_value(json!([
            {"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "color", "path": "sub/color.txt"}]}},
            {"name": "sec", "secret": {"secretName": "sec"}},
            {"name": "scratch", "emptyDir": {}},
        ])).unwrap());
        let ctx = PodContext { volumes_dir: dir.path(), ..ctx() };
        crate::volumes::prepare_volumes(&p, &ctx, &Objects, &Default::default()).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("cfg/sub/color.txt")).unwrap(), "blue");
        assert_eq!(std::fs::read_to_string(dir.path().join("sec/password")).unwrap(), "hunter2");
        assert!(dir.path().join("scratch").is_dir());
        let c = &p.spec.as_ref().unwrap().containers[0];
        let cfg = container_config(&p, c, 3, &ctx, &Objects).unwrap();
        assert_eq!(cfg.log_path, "c/3.log");
        assert_eq!(cfg.mounts.len(), 2);
        assert!(cfg.mounts[0].readonly);
        assert_eq!(cfg.mounts[1].host_path, dir.path().join("scratch").display().to_string());
    }

    fn service(ns: &str, name: &str, ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": ports}})).unwrap()
    }

    struct WithServices(Vec<Service>);
    impl ObjectSource for WithServices {
        fn config_map(&self, _: &str, _: &str) -> Option<ConfigMap> {
            None
        }
        fn secret(&self, _: &str, _: &str) -> Option<Secret> {
            None
        }
        fn services(&self) -> Option<Vec<Service>> {
            Some(self.0.clone())
        }
    }

    #[test]
    fn the_kubernetes_service_is_in_every_environment() {
        let services = vec![
            service("default", "kubernetes", "10.96.0.1", json!([{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}])),
            service("default", "web-front", "10.96.4.4", json!([{"name": "http", "port": 80}, {"name": "metrics", "port": 9090, "protocol": "UDP"}])),
            service("default", "headless", "None", json!([{"port": 80}])),
            service("other", "db", "10.96.5.5", json!([{"port": 5432}])),
        ];
        let env = service_env(&services, "default", true);
        let want: BTreeMap<String, String> = [
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
            ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
            ("KUBERNETES_PORT", "tcp://10.96.0.1:443"),
            ("KUBERNETES_PORT_443_TCP", "tcp://10.96.0.1:443"),
            ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
            ("KUBERNETES_PORT_443_TCP_PORT", "443"),
            ("KUBERNETES_PORT_443_TCP_ADDR", "10.96.0.1"),
            ("WEB_FRONT_SERVICE_HOST", "10.96.4.4"),
            ("WEB_FRONT_SERVICE_PORT", "80"),
            ("WEB_FRONT_SERVICE_PORT_HTTP", "80"),
            ("WEB_FRONT_SERVICE_PORT_METRICS", "9090"),
            ("WEB_FRONT_PORT", "tcp://10.96.4.4:80"),
            ("WEB_FRONT_PORT_80_TCP", "tcp://10.96.4.4:80"),
            ("WEB_FRONT_PORT_80_TCP_PROTO", "tcp"),
            ("WEB_FRONT_PORT_80_TCP_PORT", "80"),
            ("WEB_FRONT_PORT_80_TCP_ADDR", "10.96.4.4"),
            ("WEB_FRONT_PORT_9090_UDP", "udp://10.96.4.4:9090"),
            ("WEB_FRONT_PORT_9090_UDP_PROTO", "udp"),
            ("WEB_FRONT_PORT_9090_UDP_PORT", "9090"),
            ("WEB_FRONT_PORT_9090_UDP_ADDR", "10.96.4.4"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(env, want);
        // Elsewhere, or without service links, only the kubernetes Service.
        let other = service_env(&services, "other", false);
        assert_eq!(other.keys().filter(|k| k.starts_with("KUBERNETES_")).count(), 8);
        assert_eq!(other.len(), 8, "{other:?}");
        assert!(service_env(&services, "other", true).contains_key("DB_SERVICE_HOST"));

        // The container's own variables come first and win; $(VAR) may name a Service's.
        let p = pod(json!([{"name": "c", "image": "i", "env": [
            {"name": "KUBERNETES_SERVICE_PORT", "value": "1"},
            {"name": "API", "value": "https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)"},
        ]}]));
        let c = &p.spec.as_ref().unwrap().containers[0];
        let env = environment(&p, c, &ctx(), &WithServices(services)).unwrap();
        assert_eq!(env[0], ("KUBERNETES_SERVICE_PORT".to_owned(), "1".to_owned()));
        assert_eq!(env[1], ("API".to_owned(), "https://10.96.0.1:1".to_owned()));
        assert!(env.contains(&("KUBERNETES_SERVICE_HOST".to_owned(), "10.96.0.1".to_owned())));
        assert_eq!(env.iter().filter(|(k, _)| k == "KUBERNETES_SERVICE_PORT").count(), 1);
    }

    #[test]
    fn unlisted_services_hold_the_container_back() {
        struct NotYet;
        impl ObjectSource for NotYet {
            fn config_map(&self, _: &str, _: &str) -> Option<ConfigMap> {
                None
            }
            fn secret(&self, _: &str, _: &str) -> Option<Secret> {
                None
            }
            fn services(&self) -> Option<Vec<Service>> {
                None
            }
        }
        let p = pod(json!([{"name": "c", "image": "i"}]));
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert_eq!(environment(&p, c, &ctx(), &NotYet).unwrap_err(), ConfigError::ServicesNotListed);
    }

    #[test]
    fn expands_like_upstream() {
        let vars: HashMap<String, String> = [("X".to_owned(), "1".to_owned())].into();
        assert_eq!(expand("a$(X)b", &vars), "a1b");
        assert_eq!(expand("$$(X)", &vars), "$(X)");
        assert_eq!(expand("$(Y)", &vars), "$(Y)");
        assert_eq!(expand("$X $", &vars), "$X $");
    }
}
