//! Pod Security Standards, as the PodSecurity admission plugin enforces them per namespace
//! (`pod-security.kubernetes.io/enforce: privileged | baseline | restricted`): the checks of
//! the `baseline` and `restricted` profiles on a pod spec, with upstream's wording so that
//! `kubectl` users read the refusal they know:
//!
//! `violates PodSecurity "restricted:latest": privileged (container "app" must not set
//! securityContext.privileged=true), ...`

use std::collections::BTreeMap;

use serde_json::Value;

/// The namespace label that sets the enforced level.
pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";
/// The namespace label whose level only warns.
pub const WARN_LABEL: &str = "pod-security.kubernetes.io/warn";

/// A Pod Security Standards level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// No restriction.
    Privileged,
    /// Known privilege escalations prevented.
    Baseline,
    /// Current pod hardening best practice.
    Restricted,
}

impl Level {
    /// Parses a label value.
    pub fn parse(s: &str) -> Result<Level, String> {
        match s {
            "privileged" => Ok(Level::Privileged),
            "baseline" => Ok(Level::Baseline),
            "restricted" => Ok(Level::Restricted),
            other => Err(format!(
                "{other:?} is not a Pod Security level: use privileged, baseline or restricted"
            )),
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// Capabilities the baseline profile allows adding.
const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
];
/// Sysctls the baseline profile allows.
const SAFE_SYSCTLS: [&str; 8] = [
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
];
/// Volume types the restricted profile allows.
const RESTRICTED_VOLUMES: [&str; 8] = [
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
];

fn containers(spec: &Value) -> Vec<(&str, &Value)> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| spec.get(*k).and_then(Value::as_array).into_iter().flatten())
        .map(|c| (c.get("name").and_then(Value::as_str).unwrap_or_default(), c))
        .collect()
}

fn quoted(names: &[String]) -> String {
    names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
}

fn containers_phrase(names: &[String]) -> String {
    if names.len() == 1 {
        format!("container {}", quoted(names))
    } else {
        format!("containers {}", quoted(names))
    }
}

/// Failed checks in order, each `"<check> (<detail>)"`.
#[derive(Debug, Default)]
struct Findings(Vec<String>);

impl Findings {
    fn add(&mut self, check: &str, detail: String) {
        self.0.push(format!("{check} ({detail})"));
    }
}

fn sc<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    v.pointer(&format!("/securityContext/{path}"))
}

/// The checks of `level` that `spec` (a PodSpec) fails; empty when it is allowed.
pub fn check(spec: &Value, level: Level) -> Vec<String> {
    let mut f = Findings::default();
    if level == Level::Privileged {
        return f.0;
    }
    let cs = containers(spec);
    // --- baseline ---
    let host: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .iter()
        .filter(|k| spec.get(**k).and_then(Value::as_bool) == Some(true))
        .map(|k| format!("{k}=true"))
        .collect();
    if !host.is_empty() {
        f.add("host namespaces", host.join(", "));
    }
    let privileged: Vec<String> = cs
        .iter()
        .filter(|(_, c)| sc(c, "privileged").and_then(Value::as_bool) == Some(true))
        .map(|(n, _)| (*n).to_owned())
        .collect();
    if !privileged.is_empty() {
        f.add("privileged", format!("{} must not set securityContext.privileged=true", containers_phrase(&privileged)));
    }
    let mut added: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (n, c) in &cs {
        for cap in sc(c, "capabilities/add").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            if !BASELINE_CAPABILITIES.contains(&cap) {
                added.entry((*n).to_owned()).or_default().push(cap.to_owned());
            }
        }
    }
    if !added.is_empty() {
        let parts: Vec<String> = added
            .iter()
            .map(|(n, caps)| format!("container {n:?} must not include {} in securityContext.capabilities.add", quoted(caps)))
            .collect();
        f.add("non-default capabilities", parts.join("; "));
    }
    let volumes: Vec<&Value> = spec.get("volumes").and_then(Value::as_array).into_iter().flatten().collect();
    let host_path: Vec<String> = volumes
        .iter()
        .filter(|v| v.get("hostPath").is_some())
        .map(|v| v.get("name").and_then(Value::as_str).unwrap_or_default().to_owned())
        .collect();
    if !host_path.is_empty() {
        let noun = if host_path.len() == 1 { "volume" } else { "volumes" };
        f.add("hostPath volumes", format!("{noun} {}", quoted(&host_path)));
    }
    let mut host_ports = Vec::new();
    for (n, c) in &cs {
        for port in c.get("ports").and_then(Value::as_array).into_iter().flatten() {
            if let Some(hp) = port.get("hostPort").and_then(Value::as_i64).filter(|p| *p != 0) {
                host_ports.push(format!("container {n:?} uses hostPort {hp}"));
            }
        }
    }
    if !host_ports.is_empty() {
        f.add("hostPort", host_ports.join(", "));
    }
    let unconfined = |v: &Value| sc(v, "seccompProfile/type").and_then(Value::as_str) == Some("Unconfined");
    let mut seccomp_bad: Vec<String> = Vec::new();
    if unconfined(spec) {
        seccomp_bad.push("pod".to_owned());
    }
    seccomp_bad.extend(cs.iter().filter(|(_, c)| unconfined(c)).map(|(n, _)| format!("container {n:?}")));
    if !seccomp_bad.is_empty() {
        f.add("seccompProfile", format!("{} must not set securityContext.seccompProfile.type to \"Unconfined\"", seccomp_bad.join(" and ")));
    }
    let proc_mount: Vec<String> = cs
        .iter()
        .filter(|(_, c)| sc(c, "procMount").and_then(Value::as_str).is_some_and(|m| m != "Default"))
        .map(|(n, _)| (*n).to_owned())
        .collect();
    if !proc_mount.is_empty() {
        f.add("procMount", format!("{} must not set securityContext.procMount to \"Unmasked\"", containers_phrase(&proc_mount)));
    }
    let sysctls: Vec<String> = spec
        .pointer("/securityContext/sysctls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("name").and_then(Value::as_str))
        .filter(|n| !SAFE_SYSCTLS.contains(n))
        .map(str::to_owned)
        .collect();
    if !sysctls.is_empty() {
        f.add("forbidden sysctls", sysctls.join(", "));
    }
    if level == Level::Baseline {
        return f.0;
    }
    // --- restricted ---
    let mut restricted_volumes = Vec::new();
    for v in &volumes {
        let name = v.get("name").and_then(Value::as_str).unwrap_or_default();
        if let Some(kind) = v.as_object().and_then(|o| o.keys().find(|k| *k != "name"))
            && !RESTRICTED_VOLUMES.contains(&kind.as_str())
        {
            restricted_volumes.push(format!("volume {name:?} uses restricted volume type {kind:?}"));
        }
    }
    if !restricted_volumes.is_empty() {
        f.add("restricted volume types", restricted_volumes.join(", "));
    }
    let escalation: Vec<String> = cs
        .iter()
        .filter(|(_, c)| sc(c, "allowPrivilegeEscalation").and_then(Value::as_bool) != Some(false))
        .map(|(n, _)| (*n).to_owned())
        .collect();
    if !escalation.is_empty() {
        f.add("allowPrivilegeEscalation != false", format!("{} must set securityContext.allowPrivilegeEscalation=false", containers_phrase(&escalation)));
    }
    let caps: Vec<String> = cs
        .iter()
        .filter(|(_, c)| {
            let drops_all = sc(c, "capabilities/drop")
                .and_then(Value::as_array)
                .is_some_and(|d| d.iter().any(|x| x == "ALL"));
            let adds_only_bind = sc(c, "capabilities/add")
                .and_then(Value::as_array)
                .is_none_or(|a| a.iter().all(|x| x == "NET_BIND_SERVICE"));
            !(drops_all && adds_only_bind)
        })
        .map(|(n, _)| (*n).to_owned())
        .collect();
    if !caps.is_empty() {
        f.add("unrestricted capabilities", format!("{} must set securityContext.capabilities.drop=[\"ALL\"]", containers_phrase(&caps)));
    }
    let pod_non_root = spec.pointer("/securityContext/runAsNonRoot").and_then(Value::as_bool);
    let non_root: Vec<String> = cs
        .iter()
        .filter(|(_, c)| match sc(c, "runAsNonRoot").and_then(Value::as_bool) {
            Some(v) => !v,
            None => pod_non_root != Some(true),
        })
        .map(|(n, _)| (*n).to_owned())
        .collect();
    if !non_root.is_empty() {
        f.add("runAsNonRoot != true", format!("pod or {} must set securityContext.runAsNonRoot=true", containers_phrase(&non_root)));
    }
    let root_user = |v: &Value| sc(v, "runAsUser").and_then(Value::as_i64) == Some(0);
    let mut roots: Vec<String> = Vec::new();
    if root_user(spec) {
        roots.push("pod".to_owned());
    }
    roots.extend(cs.iter().filter(|(_, c)| root_user(c)).map(|(n, _)| format!("container {n:?}")));
    if !roots.is_empty() {
        f.add("runAsUser=0", format!("{} must not set runAsUser=0", roots.join(" and ")));
    }
    let allowed_seccomp = |v: Option<&Value>| matches!(v.and_then(Value::as_str), Some("RuntimeDefault" | "Localhost"));
    let pod_seccomp = allowed_seccomp(spec.pointer("/securityContext/seccompProfile/type"));
    let seccomp: Vec<String> = cs
        .iter()
        .filter(|(_, c)| match sc(c, "seccompProfile/type") {
            Some(t) => !allowed_seccomp(Some(t)),
            None => !pod_seccomp,
        })
        .map(|(n, _)| (*n).to_owned())
        .collect();
    if !seccomp.is_empty() && !f.0.iter().any(|x| x.starts_with("seccompProfile")) {
        f.add("seccompProfile", format!("pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"", containers_phrase(&seccomp)));
    }
    f.0
}

/// Upstream's refusal text for a pod failing `level`.
pub fn violation_message(level: Level, findings: &[String]) -> String {
    format!("violates PodSecurity \"{}:latest\": {}", level.as_str(), findings.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn restricted_ok() -> Value {
        json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "app", "image": "x", "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}],
            "volumes": [{"name": "cfg", "configMap": {"name": "c"}}],
        })
    }

    #[test]
    fn a_hardened_pod_passes_every_level() {
        for level in [Level::Privileged, Level::Baseline, Level::Restricted] {
            assert!(check(&restricted_ok(), level).is_empty(), "{level:?}: {:?}", check(&restricted_ok(), level));
        }
    }

    #[test]
    fn a_plain_pod_passes_baseline_but_not_restricted() {
        let plain = json!({"containers": [{"name": "web", "image": "nginx"}]});
        assert!(check(&plain, Level::Baseline).is_empty());
        let found = check(&plain, Level::Restricted);
        let text = found.join(", ");
        for want in ["allowPrivilegeEscalation != false (container \"web\"", "unrestricted capabilities", "runAsNonRoot != true (pod or container \"web\"", "seccompProfile (pod or container \"web\""] {
            assert!(text.contains(want), "{want}: {text}");
        }
    }

    #[test]
    fn baseline_refuses_host_access_and_privilege() {
        let cases = [
            (json!({"hostNetwork": true, "containers": [{"name": "a"}]}), "host namespaces (hostNetwork=true)"),
            (json!({"containers": [{"name": "a", "securityContext": {"privileged": true}}]}), "privileged (container \"a\" must not set securityContext.privileged=true)"),
            (json!({"containers": [{"name": "a", "securityContext": {"capabilities": {"add": ["NET_ADMIN", "CHOWN"]}}}]}), "non-default capabilities (container \"a\" must not include \"NET_ADMIN\" in securityContext.capabilities.add)"),
            (json!({"containers": [{"name": "a"}], "volumes": [{"name": "root", "hostPath": {"path": "/"}}]}), "hostPath volumes (volume \"root\")"),
            (json!({"containers": [{"name": "a", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}), "hostPort (container \"a\" uses hostPort 8080)"),
            (json!({"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}, "containers": [{"name": "a"}]}), "forbidden sysctls (kernel.msgmax)"),
        ];
        for (spec, want) in cases {
            let found = check(&spec, Level::Baseline);
            assert_eq!(found.first().map(String::as_str), Some(want), "{found:?}");
            assert!(check(&spec, Level::Privileged).is_empty());
        }
    }

    #[test]
    fn restricted_names_every_container_and_volume() {
        let mut spec = restricted_ok();
        spec["initContainers"] = json!([{"name": "init", "securityContext": {"runAsUser": 0}}]);
        spec["volumes"] = json!([{"name": "data", "hostPath": {"path": "/data"}}]);
        let text = violation_message(Level::Restricted, &check(&spec, Level::Restricted));
        assert!(text.starts_with("violates PodSecurity \"restricted:latest\": hostPath volumes (volume \"data\")"), "{text}");
        assert!(text.contains("restricted volume types (volume \"data\" uses restricted volume type \"hostPath\")"), "{text}");
        assert!(text.contains("allowPrivilegeEscalation != false (container \"init\""), "{text}");
        assert!(text.contains("runAsUser=0 (container \"init\" must not set runAsUser=0)"), "{text}");
        assert!(!text.contains("container \"app\""), "{text}");
    }

    #[test]
    fn levels_parse() {
        assert_eq!(Level::parse("restricted"), Ok(Level::Restricted));
        assert!(Level::parse("strict").is_err());
    }
}
