//! The node: registration with capacity, allocatable, addresses, nodeInfo
//! and conditions read from the machine; the heartbeat Lease in
//! `kube-node-lease` renewed every 10 s; status updates when something
//! changes; the pod CIDR the control plane assigned.

use std::{collections::BTreeMap, path::Path, time::Duration};

use k8s_openapi::api::{coordination::v1::Lease, core::v1::Node};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tracing::{info, warn};

/// Errors of node registration and heartbeats.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("failed to {what}: {source}")]
    Api {
        /// What was attempted.
        what: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
}

/// How often the Lease is renewed.
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// The Lease duration (upstream's default).
pub const LEASE_DURATION_S: i32 = 40;
/// Status is re-posted at least this often even when nothing changed.
pub const STATUS_REFRESH: Duration = Duration::from_secs(60);

/// What the machine offers.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    /// Logical CPUs.
    pub cpus: u64,
    /// Total memory, bytes.
    pub memory: u64,
    /// Available memory, bytes.
    pub memory_available: u64,
    /// Size of the filesystem holding the kubelet's root, bytes.
    pub disk: u64,
    /// Free space there, bytes.
    pub disk_free: u64,
    /// Processes running, and the limit.
    pub pids: (u64, u64),
}

fn meminfo(field: &str, text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Reads the machine (`/proc`, statvfs of `root`).
pub fn read_machine(root: &Path) -> Machine {
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let (disk, disk_free) = nix::sys::statvfs::statvfs(root)
        .map(|s| {
            let f = s.fragment_size();
            (s.blocks() * f, s.blocks_available() * f)
        })
        .unwrap_or((0, 0));
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    let running = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
                .count() as u64
        })
        .unwrap_or(0);
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
        memory: meminfo("MemTotal", &mem).unwrap_or(0),
        memory_available: meminfo("MemAvailable", &mem).unwrap_or(0),
        disk,
        disk_free,
        pids: (running, pid_max),
    }
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| "Linux".into())
}

/// Static facts about the node for the status.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    /// The node's name.
    pub name: String,
    /// Its InternalIP.
    pub ip: String,
    /// The kubelet endpoint port.
    pub kubelet_port: u16,
    /// `containerd://1.6.20`.
    pub runtime_version: String,
    /// Maximum pods.
    pub max_pods: u32,
}

fn condition(ty: &str, ok: bool, reason: &str, message: &str) -> (String, bool, String, String) {
    (ty.into(), ok, reason.into(), message.into())
}

/// The node's conditions from the machine and whether the runtime and
/// network are ready: (type, status, reason, message).
pub fn conditions(m: &Machine, runtime_ready: Result<(), String>) -> Vec<(String, bool, String, String)> {
    let memory_pressure = m.memory_available > 0 && m.memory_available < 100 << 20;
    let disk_pressure = m.disk > 0 && m.disk_free * 10 < m.disk;
    let pid_pressure = m.pids.1 > 0 && m.pids.0 * 10 > m.pids.1 * 9;
    vec![
        condition(
            "MemoryPressure",
            memory_pressure,
            if memory_pressure { "KubeletHasInsufficientMemory" } else { "KubeletHasSufficientMemory" },
            if memory_pressure { "kubelet has insufficient memory available" } else { "kubelet has sufficient memory available" },
        ),
        condition(
            "DiskPressure",
            disk_pressure,
            if disk_pressure { "KubeletHasDiskPressure" } else { "KubeletHasNoDiskPressure" },
            if disk_pressure { "kubelet has disk pressure" } else { "kubelet has no disk pressure" },
        ),
        condition(
            "PIDPressure",
            pid_pressure,
            if pid_pressure { "KubeletHasInsufficientPID" } else { "KubeletHasSufficientPID" },
            if pid_pressure { "kubelet has insufficient PID available" } else { "kubelet has sufficient PID available" },
        ),
        match runtime_ready {
            Ok(()) => condition("Ready", true, "KubeletReady", "kubelet is posting ready status"),
            Err(why) => condition("Ready", false, "KubeletNotReady", &why),
        },
    ]
}

/// The reason of the Node event upstream's kubelet records when condition `ty` becomes
/// `status` (`Node <name> status is now: <reason>`).
pub fn condition_event(ty: &str, status: bool) -> Option<&'static str> {
    Some(match (ty, status) {
        ("MemoryPressure", false) => "NodeHasSufficientMemory",
        ("MemoryPressure", true) => "NodeHasInsufficientMemory",
        ("DiskPressure", false) => "NodeHasNoDiskPressure",
        ("DiskPressure", true) => "NodeHasDiskPressure",
        ("PIDPressure", false) => "NodeHasSufficientPID",
        ("PIDPressure", true) => "NodeHasInsufficientPID",
        ("Ready", true) => "NodeReady",
        ("Ready", false) => "NodeNotReady",
        _ => return None,
    })
}

/// The Node events due now that the conditions are `conds`, given what was already told
/// (`told`, updated): one per condition whose status is new.
pub fn condition_events(told: &mut BTreeMap<String, bool>, conds: &[(String, bool, String, String)]) -> Vec<&'static str> {
    let mut out = Vec::new();
    for (ty, status, _, _) in conds {
        if told.get(ty) != Some(status) {
            told.insert(ty.clone(), *status);
            out.extend(condition_event(ty, *status));
        }
    }
    out
}

/// The node's `status` (without heartbeat times), comparable across updates.
pub fn node_status(facts: &NodeFacts, m: &Machine, conds: &[(String, bool, String, String)]) -> Value {
    let gib = |b: u64| format!("{}Ki", b / 1024);
    let capacity = json!({
        "cpu": m.cpus.to_string(),
        "memory": gib(m.memory),
        "pods": facts.max_pods.to_string(),
        "ephemeral-storage": gib(m.disk),
    });
    // Reserve a little for the system, as upstream's eviction threshold does.
    let allocatable = json!({
        "cpu": m.cpus.to_string(),
        "memory": gib(m.memory.saturating_sub(100 << 20)),
        "pods": facts.max_pods.to_string(),
        "ephemeral-storage": gib(m.disk - m.disk / 10),
    });
    let hostname = read_trim("/proc/sys/kernel/hostname");
    let system_uuid = match read_trim("/sys/class/dmi/id/product_uuid") {
        u if u.is_empty() => read_trim("/etc/machine-id"),
        u => u,
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    let conditions: Vec<Value> = conds
        .iter()
        .map(|(ty, ok, reason, message)| {
            json!({"type": ty, "status": if *ok { "True" } else { "False" }, "reason": reason, "message": message})
        })
        .collect();
    json!({
        "capacity": capacity,
        "allocatable": allocatable,
        "addresses": [
            {"type": "InternalIP", "address": facts.ip},
            {"type": "Hostname", "address": if hostname.is_empty() { facts.name.clone() } else { hostname }},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": facts.kubelet_port}},
        "nodeInfo": {
            "machineID": read_trim("/etc/machine-id"),
            "systemUUID": system_uuid,
            "bootID": read_trim("/proc/sys/kernel/random/boot_id"),
            "kernelVersion": read_trim("/proc/sys/kernel/osrelease"),
            "osImage": os_image(),
            "containerRuntimeVersion": facts.runtime_version,
            "kubeletVersion": concat!("v1.33.0-coxswain.", env!("CARGO_PKG_VERSION")),
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": arch,
        },
        "conditions": conditions,
    })
}

/// Creates the Node if missing (with `spec.podCIDR` from `fallback_cidr`);
/// returns the Node as stored.
pub async fn register(client: &kube::Client, facts: &NodeFacts, fallback_cidr: Option<&str>) -> Result<Node, Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    if let Some(node) = nodes.get_opt(&facts.name).await.map_err(|source| Error::Api {
        what: format!("read node {}", facts.name),
        source,
    })? {
        return Ok(node);
    }
    let arch = match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a };
    let mut node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": facts.name,
            "labels": {
                "kubernetes.io/hostname": facts.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": arch,
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": arch,
            },
        },
        "spec": {},
    }))
    .unwrap_or_default();
    if let (Some(cidr), Some(spec)) = (fallback_cidr, node.spec.as_mut()) {
        spec.pod_cidr = Some(cidr.to_owned());
        spec.pod_cidrs = Some(vec![cidr.to_owned()]);
    }
    match nodes.create(&PostParams::default(), &node).await {
        Ok(n) => {
            info!(node = %facts.name, "registered the node");
            Ok(n)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => nodes.get(&facts.name).await.map_err(|source| Error::Api {
            what: format!("read node {}", facts.name),
            source,
        }),
        Err(source) => Err(Error::Api {
            what: format!("register node {}", facts.name),
            source,
        }),
    }
}

/// Posts the node status, stamping heartbeat and transition times.
pub async fn post_status(
    client: &kube::Client,
    name: &str,
    status: &Value,
    since: &mut BTreeMap<String, (bool, String)>,
) -> Result<(), Error> {
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut status = status.clone();
    for c in status["conditions"].as_array_mut().into_iter().flatten() {
        let ty = c["type"].as_str().unwrap_or_default().to_owned();
        let ok = c["status"] == "True";
        let entry = since.entry(ty).or_insert_with(|| (ok, now.clone()));
        if entry.0 != ok {
            *entry = (ok, now.clone());
        }
        c["lastHeartbeatTime"] = json!(now);
        c["lastTransitionTime"] = json!(entry.1);
    }
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&json!({"status": status})))
        .await
        .map_err(|source| Error::Api {
            what: format!("update the status of node {name}"),
            source,
        })?;
    Ok(())
}

/// Creates or renews the node's Lease.
pub async fn renew_lease(client: &kube::Client, node: &Node) -> Result<(), Error> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let t = jiff::Timestamp::now();
    let now = format!("{}.{:06}Z", t.strftime("%Y-%m-%dT%H:%M:%S"), t.subsec_microsecond());
    let patch = json!({"spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION_S, "renewTime": now}});
    match leases.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let lease: Lease = serde_json::from_value(json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": name,
                    "namespace": "kube-node-lease",
                    "ownerReferences": [{
                        "apiVersion": "v1", "kind": "Node", "name": name,
                        "uid": node.metadata.uid.clone().unwrap_or_default(),
                    }],
                },
                "spec": patch["spec"],
            }))
            .unwrap_or_default();
            match leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                Err(source) => Err(Error::Api { what: format!("create lease kube-node-lease/{name}"), source }),
            }
        }
        Err(source) => Err(Error::Api { what: format!("renew lease kube-node-lease/{name}"), source }),
    }
}

/// The node's pod CIDR: `spec.podCIDR` (assigned by the control plane) or the fallback.
pub fn pod_cidr(node: &Node, fallback: Option<&str>) -> Option<String> {
    node.spec
        .as_ref()
        .and_then(|s| s.pod_cidr.clone())
        .filter(|c| !c.is_empty())
        .or_else(|| fallback.map(str::to_owned))
}

/// Warns once per distinct failure.
#[derive(Debug, Default)]
pub struct WarnOnce(Option<String>);

impl WarnOnce {
    /// Logs `msg` unless it is the same as last time.
    pub fn warn(&mut self, msg: String) {
        if self.0.as_ref() != Some(&msg) {
            warn!("{msg}");
            self.0 = Some(msg);
        }
    }

    /// Forgets the last failure.
    pub fn clear(&mut self) {
        self.0 = None;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn condition_changes_become_node_events_once() {
        let cond = |ty: &str, ok: bool| (ty.to_owned(), ok, String::new(), String::new());
        let mut told = BTreeMap::new();
        let first = [cond("MemoryPressure", false), cond("DiskPressure", false), cond("PIDPressure", false), cond("Ready", false)];
        assert_eq!(
            condition_events(&mut told, &first),
            vec!["NodeHasSufficientMemory", "NodeHasNoDiskPressure", "NodeHasSufficientPID", "NodeNotReady"]
        );
        assert!(condition_events(&mut told, &first).is_empty(), "nothing changed: nothing told");
        let ready = [cond("MemoryPressure", false), cond("DiskPressure", false), cond("PIDPressure", false), cond("Ready", true)];
        assert_eq!(condition_events(&mut told, &ready), vec!["NodeReady"]);
        let pressure = [cond("MemoryPressure", true), cond("DiskPressure", false), cond("PIDPressure", false), cond("Ready", true)];
        assert_eq!(condition_events(&mut told, &pressure), vec!["NodeHasInsufficientMemory"]);
    }

    use super::*;

    #[test]
    fn conditions_reflect_pressure() {
        let m = Machine { cpus: 2, memory: 8 << 30, memory_available: 50 << 20, disk: 100, disk_free: 5, pids: (10, 100) };
        let c = conditions(&m, Err("no pod CIDR yet".into()));
        let by: BTreeMap<_, _> = c.iter().map(|(t, ok, _, _)| (t.as_str(), *ok)).collect();
        assert!(by["MemoryPressure"]);
        assert!(by["DiskPressure"]);
        assert!(!by["PIDPressure"]);
        assert!(!by["Ready"]);
        let s = node_status(&NodeFacts { name: "n".into(), ip: "10.1.0.2".into(), kubelet_port: 10250, runtime_version: "containerd://1.6.20".into(), max_pods: 110 }, &m, &c);
        assert_eq!(s["capacity"]["cpu"], "2");
        assert_eq!(s["capacity"]["pods"], "110");
        assert_eq!(s["addresses"][0]["address"], "10.1.0.2");
        assert_eq!(s["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250);
    }

    #[test]
    fn reads_the_machine() {
        let m = read_machine(Path::new("/"));
        assert!(m.cpus >= 1 && m.memory > 0 && m.disk > 0);
    }
}
