//! Kubernetes quantities (`500m`, `64Mi`, `1.5`) and container resources as
//! CRI Linux resources (cgroup cpu shares and quota, memory limit).

use k8s_cri::v1::LinuxContainerResources;
use k8s_openapi::api::core::v1::ResourceRequirements;

/// The CFS period the quota is expressed in (as upstream: 100 ms).
pub const CPU_PERIOD_US: i64 = 100_000;

/// Parses a quantity into a number (`1Ki` = 1024, `1k` = 1000, `500m` = 0.5).
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let num: f64 = num.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some(num * factor)
}

/// CPU in millicores from a quantity (rounded up, as upstream).
pub fn millicpu(q: &str) -> Option<i64> {
    parse_quantity(q).map(|v| (v * 1000.0).ceil() as i64)
}

/// Bytes from a quantity.
pub fn bytes(q: &str) -> Option<i64> {
    parse_quantity(q).map(|v| v.ceil() as i64)
}

fn get<'a>(
    map: &'a Option<std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    key: &str,
) -> Option<&'a str> {
    map.as_ref()?.get(key).map(|q| q.0.as_str())
}

/// CRI Linux resources for a container: cpu shares from the request (or the
/// limit; 2 when neither, as upstream), CFS quota from the cpu limit, memory
/// limit from the memory limit.
pub fn linux_resources(r: Option<&ResourceRequirements>) -> LinuxContainerResources {
    let limits = r.and_then(|r| r.limits.clone());
    let requests = r.and_then(|r| r.requests.clone());
    let cpu_request = get(&requests, "cpu")
        .or_else(|| get(&limits, "cpu"))
        .and_then(millicpu);
    let shares = cpu_request.map_or(2, |m| (m * 1024 / 1000).max(2));
    let (period, quota) = match get(&limits, "cpu").and_then(millicpu) {
        // The kernel's minimum quota is 1 ms.
        Some(m) => (CPU_PERIOD_US, (m * CPU_PERIOD_US / 1000).max(1000)),
        None => (0, 0),
    };
    LinuxContainerResources {
        cpu_period: period,
        cpu_quota: quota,
        cpu_shares: shares,
        memory_limit_in_bytes: get(&limits, "memory").and_then(bytes).unwrap_or(0),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    #[test]
    fn parses_quantities() {
        for (q, want) in [
            ("1", 1.0),
            ("500m", 0.5),
            ("1.5", 1.5),
            ("64Mi", 67_108_864.0),
            ("1G", 1e9),
            ("2Ki", 2048.0),
            ("129e6", 129e6),
        ] {
            assert_eq!(parse_quantity(q), Some(want), "{q}");
        }
        assert_eq!(parse_quantity("12x"), None);
        assert_eq!(parse_quantity(""), None);
    }

    #[test]
    fn resources_become_cgroup_settings() {
        let req = |cpu: &str, mem: &str| ResourceRequirements {
            limits: Some(
                [
                    ("cpu".to_owned(), Quantity(cpu.into())),
                    ("memory".to_owned(), Quantity(mem.into())),
                ]
                .into(),
            ),
            ..Default::default()
        };
        let r = linux_resources(Some(&req("250m", "64Mi")));
        assert_eq!(r.cpu_shares, 256);
        assert_eq!(r.cpu_period, 100_000);
        assert_eq!(r.cpu_quota, 25_000);
        assert_eq!(r.memory_limit_in_bytes, 64 << 20);
        let none = linux_resources(None);
        assert_eq!((none.cpu_shares, none.cpu_quota, none.memory_limit_in_bytes), (2, 0, 0));
    }
}
