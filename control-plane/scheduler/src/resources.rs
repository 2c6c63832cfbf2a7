//! Resource quantities (`100m`, `1Gi`, `2e3`) and what a pod requests of a node.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// CPU (millicores) a pod with no CPU request is counted for when scoring, as upstream's
/// `DefaultMilliCPURequest`: otherwise request-less pods would all pile onto one node.
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// Memory (bytes) a pod with no memory request is counted for when scoring (200 MiB).
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// Amounts of the resources the scheduler accounts for. CPU is in millicores, the rest in
/// units (bytes, pods, devices).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    pub pods: i64,
    /// Extended resources (`nvidia.com/gpu`, `hugepages-2Mi`, ...).
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    /// Resources named in a `ResourceList` (allocatable, requests, limits).
    pub fn from_list(list: &BTreeMap<String, Quantity>) -> Resources {
        let mut r = Resources::default();
        for (name, q) in list {
            r.set(name, q);
        }
        r
    }

    fn set(&mut self, name: &str, q: &Quantity) {
        match name {
            "cpu" => self.milli_cpu = parse_milli(&q.0).unwrap_or(0),
            "memory" => self.memory = parse_value(&q.0).unwrap_or(0),
            "ephemeral-storage" => self.ephemeral_storage = parse_value(&q.0).unwrap_or(0),
            "pods" => self.pods = parse_value(&q.0).unwrap_or(0),
            other => {
                self.scalar
                    .insert(other.to_owned(), parse_value(&q.0).unwrap_or(0));
            }
        }
    }

    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu += other.milli_cpu;
        self.memory += other.memory;
        self.ephemeral_storage += other.ephemeral_storage;
        self.pods += other.pods;
        for (k, v) in &other.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }

    /// Subtracts `other` from `self`.
    pub fn sub(&mut self, other: &Resources) {
        self.milli_cpu -= other.milli_cpu;
        self.memory -= other.memory;
        self.ephemeral_storage -= other.ephemeral_storage;
        self.pods -= other.pods;
        for (k, v) in &other.scalar {
            *self.scalar.entry(k.clone()).or_default() -= v;
        }
    }

    /// Component-wise maximum (for init containers, which run one at a time).
    fn max_with(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }
}

/// What one container requests: `requests`, falling back to `limits` per resource (the API
/// server's defaulting does the same; we do not rely on it).
fn container_requests(c: &Container) -> Resources {
    let Some(res) = &c.resources else {
        return Resources::default();
    };
    let mut r = Resources::default();
    if let Some(limits) = &res.limits {
        for (name, q) in limits {
            r.set(name, q);
        }
    }
    if let Some(requests) = &res.requests {
        for (name, q) in requests {
            r.set(name, q);
        }
    }
    r
}

/// What a pod requests of its node, computed as upstream's `PodRequests`: the sum of its
/// containers (plus restartable "sidecar" init containers), or the largest regular init
/// container if larger, plus the pod overhead; `pods` is always 1.
pub fn pod_requests(pod: &Pod) -> Resources {
    let mut total = Resources::default();
    let Some(spec) = &pod.spec else {
        total.pods = 1;
        return total;
    };
    for c in &spec.containers {
        total.add(&container_requests(c));
    }
    let mut sidecars = Resources::default();
    let mut init_max = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let r = container_requests(c);
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars.add(&r);
            init_max.max_with(&sidecars);
        } else {
            let mut with_sidecars = r;
            with_sidecars.add(&sidecars);
            init_max.max_with(&with_sidecars);
        }
    }
    total.add(&sidecars);
    total.max_with(&init_max);
    if let Some(overhead) = &spec.overhead {
        total.add(&Resources::from_list(overhead));
    }
    total.pods = 1;
    total
}

/// CPU and memory a pod is counted for when scoring: its requests, with upstream's
/// defaults for a container that requests none.
pub fn pod_non_zero_requests(pod: &Pod) -> (i64, i64) {
    let Some(spec) = &pod.spec else {
        return (DEFAULT_MILLI_CPU_REQUEST, DEFAULT_MEMORY_REQUEST);
    };
    let mut cpu = 0;
    let mut mem = 0;
    for c in &spec.containers {
        let r = container_requests(c);
        cpu += if r.milli_cpu == 0 {
            DEFAULT_MILLI_CPU_REQUEST
        } else {
            r.milli_cpu
        };
        mem += if r.memory == 0 {
            DEFAULT_MEMORY_REQUEST
        } else {
            r.memory
        };
    }
    if spec.containers.is_empty() {
        cpu = DEFAULT_MILLI_CPU_REQUEST;
        mem = DEFAULT_MEMORY_REQUEST;
    }
    (cpu, mem)
}

/// Quantities are parsed once, in `coxswain-resources` (upstream's `resource.Quantity`).
pub use coxswain_resources::quantity::{parse_milli, parse_value};

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};

    #[test]
    fn quantities_parse_like_upstream() {
        let table: &[(&str, Option<i64>, Option<i64>)] = &[
            ("1", Some(1000), Some(1)),
            ("100m", Some(100), Some(1)),
            ("0.5", Some(500), Some(1)),
            ("2.5", Some(2500), Some(3)),
            ("1Ki", Some(1_024_000), Some(1024)),
            ("1Gi", Some(1_073_741_824_000), Some(1_073_741_824)),
            ("1G", Some(1_000_000_000_000), Some(1_000_000_000)),
            ("1e3", Some(1_000_000), Some(1000)),
            ("1.5Mi", Some(1_572_864_000), Some(1_572_864)),
            ("250n", Some(1), Some(1)),
            ("", None, None),
            ("abc", None, None),
            ("1Qi", None, None),
        ];
        for (s, milli, value) in table {
            assert_eq!(parse_milli(s), *milli, "milli of {s:?}");
            assert_eq!(parse_value(s), *value, "value of {s:?}");
        }
    }

    fn container(cpu: &str, mem: &str) -> Container {
        let mut requests = BTreeMap::new();
        if !cpu.is_empty() {
            requests.insert("cpu".to_owned(), Quantity(cpu.to_owned()));
        }
        if !mem.is_empty() {
            requests.insert("memory".to_owned(), Quantity(mem.to_owned()));
        }
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: Some(requests),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pod_requests_take_the_larger_of_containers_and_init_containers() {
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![container("200m", "100Mi"), container("300m", "")],
                init_containers: Some(vec![container("1", "50Mi")]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = pod_requests(&pod);
        assert_eq!(r.milli_cpu, 1000);
        assert_eq!(r.memory, 100 * 1024 * 1024);
        assert_eq!(r.pods, 1);
        assert_eq!(
            pod_non_zero_requests(&pod),
            (500, 100 * 1024 * 1024 + DEFAULT_MEMORY_REQUEST)
        );
    }

    #[test]
    fn limits_stand_in_for_missing_requests() {
        let mut c = Container {
            name: "c".into(),
            ..Default::default()
        };
        c.resources = Some(ResourceRequirements {
            limits: Some(BTreeMap::from([("cpu".to_owned(), Quantity("2".into()))])),
            ..Default::default()
        });
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![c],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(pod_requests(&pod).milli_cpu, 2000);
    }
}
