//! The agent's `/dataplane/*` endpoints: what the kernel holds, as JSON
//! (`coxswain-agent-api` types), for `coxctl dataplane`.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use coxswain_agent_api::{
    BackendEntry, CONNTRACK_PATH, COUNTERS_PATH, ConntrackEntry, CounterEntry, NODEPORT_XDP_PATH,
    SERVICES_PATH, VerdictEntry,
    ServiceEntry, Traffic,
};
use coxswain_dataplane::{Counters, Dataplane, ServiceMaps};
use coxswain_ebpf_common::{ct_dir, ct_flags, proto, scope};
use coxswain_proxy::{BACKEND_FLAG_NAMES, SERVICE_FLAG_NAMES};
use tokio::sync::{mpsc, oneshot};

/// A question to the proxy loop: which Kubernetes Service owns each
/// service id.
pub type NamesRequest = oneshot::Sender<HashMap<u32, String>>;

/// State of the endpoints.
#[derive(Clone)]
pub struct ApiState {
    /// The loaded dataplane.
    pub dataplane: Arc<Mutex<Dataplane>>,
    /// The proxy loop, when it runs.
    pub names: Option<mpsc::Sender<NamesRequest>>,
}

/// Routes of the dataplane API.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route(SERVICES_PATH, get(services))
        .route(CONNTRACK_PATH, get(conntrack))
        .route(COUNTERS_PATH, get(counters))
        .route(NODEPORT_XDP_PATH, get(nodeport_xdp))
        .with_state(state)
}

fn lock(dataplane: &Mutex<Dataplane>) -> std::sync::MutexGuard<'_, Dataplane> {
    dataplane.lock().unwrap_or_else(|e| e.into_inner())
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("failed to read the dataplane: {e}"),
    )
        .into_response()
}

fn addr(be: u32) -> String {
    Ipv4Addr::from(u32::from_be(be)).to_string()
}

fn protocol(p: u8) -> String {
    match p {
        proto::TCP => "TCP",
        proto::UDP => "UDP",
        proto::SCTP => "SCTP",
        _ => "?",
    }
    .to_owned()
}

fn names<T: Copy + std::ops::BitAnd<Output = T> + PartialEq + Default>(
    flags: T,
    table: &[(T, &str)],
) -> Vec<String> {
    table
        .iter()
        .filter(|(bit, _)| flags & *bit != T::default())
        .map(|(_, name)| (*name).to_owned())
        .collect()
}

fn traffic(c: Option<&Counters>) -> Traffic {
    c.map(|c| Traffic {
        packets: c.packets,
        bytes: c.bytes,
    })
    .unwrap_or_default()
}

async fn services(State(state): State<ApiState>) -> Response {
    let owners = match &state.names {
        Some(tx) => {
            let (reply, rx) = oneshot::channel();
            match tx.send(reply).await {
                Ok(()) => rx.await.unwrap_or_default(),
                Err(_) => HashMap::new(),
            }
        }
        None => HashMap::new(),
    };
    let dp = lock(&state.dataplane);
    let (dump, service_stats, backend_stats) = {
        let mut dp = dp;
        let dump = match dp.service_maps().dump() {
            Ok(d) => d,
            Err(e) => return unavailable(e),
        };
        let service_ids = dump.services.values().map(|v| v.service_id);
        let ss = match dp.service_stats(service_ids.collect::<std::collections::BTreeSet<_>>()) {
            Ok(s) => s,
            Err(e) => return unavailable(e),
        };
        let bs = match dp.backend_stats(dump.backends.keys().copied()) {
            Ok(s) => s,
            Err(e) => return unavailable(e),
        };
        (dump, ss, bs)
    };
    let mut out = Vec::new();
    for (key, master) in dump.services.iter().filter(|(k, _)| k.slot == 0) {
        let backends = (1..=master.count)
            .filter_map(|slot| {
                dump.services
                    .get(&coxswain_ebpf_common::ServiceKeyV4 { slot, ..*key })
            })
            .filter_map(|v| dump.backends.get(&v.backend_id).map(|b| (v.backend_id, b)))
            .map(|(id, b)| BackendEntry {
                id,
                addr: addr(b.addr),
                port: u16::from_be(b.port),
                flags: names(b.flags, &BACKEND_FLAG_NAMES),
                traffic: traffic(backend_stats.get(&id)),
            })
            .collect();
        out.push(ServiceEntry {
            service: owners.get(&master.service_id).cloned(),
            addr: addr(key.addr),
            port: u16::from_be(key.port),
            protocol: protocol(key.proto),
            scope: if key.scope == scope::LOCAL {
                "local"
            } else {
                "all"
            }
            .to_owned(),
            flags: names(master.flags, &SERVICE_FLAG_NAMES),
            service_id: master.service_id,
            affinity_timeout_s: master.affinity_timeout_s,
            backends,
            traffic: traffic(service_stats.get(&master.service_id)),
        });
    }
    out.sort_by(|a, b| (&a.service, &a.addr, a.port).cmp(&(&b.service, &b.addr, b.port)));
    Json(out).into_response()
}

#[derive(serde::Deserialize)]
struct ConntrackQuery {
    /// At most this many entries (default 1000).
    limit: Option<usize>,
}

async fn conntrack(State(state): State<ApiState>, Query(q): Query<ConntrackQuery>) -> Response {
    let entries = match lock(&state.dataplane).conntrack(q.limit.unwrap_or(1000)) {
        Ok(e) => e,
        Err(e) => return unavailable(e),
    };
    let now = monotonic_ns();
    let out: Vec<ConntrackEntry> = entries
        .into_iter()
        .map(|(k, v)| ConntrackEntry {
            direction: match k.dir {
                ct_dir::FORWARD => "forward",
                ct_dir::REPLY => "reply",
                ct_dir::EGRESS => "egress",
                ct_dir::SNAT_OUT => "snat-out",
                _ => "?",
            }
            .to_owned(),
            protocol: protocol(k.proto),
            source: format!("{}:{}", addr(k.saddr), u16::from_be(k.sport)),
            destination: format!("{}:{}", addr(k.daddr), u16::from_be(k.dport)),
            backend: format!("{}:{}", addr(v.backend_addr), u16::from_be(v.backend_port)),
            service_id: v.service_id,
            flags: names(
                v.flags,
                &[
                    (ct_flags::SNAT, "snat"),
                    (ct_flags::EXTERNAL, "external"),
                    (ct_flags::CLOSING, "closing"),
                ],
            ),
            idle_s: now.saturating_sub(v.last_seen_ns) as f64 / 1e9,
        })
        .collect();
    Json(out).into_response()
}

/// `bpf_ktime_get_ns`'s clock (CLOCK_MONOTONIC) in user space.
fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

async fn counters(State(state): State<ApiState>) -> Response {
    let counters = match lock(&state.dataplane).iface_counters() {
        Ok(c) => c,
        Err(e) => return unavailable(e),
    };
    let names = iface_names();
    let rows: Vec<CounterEntry> = counters
        .iter()
        .map(|((ifindex, hook), c)| CounterEntry {
            ifindex: *ifindex,
            iface: names.get(ifindex).cloned(),
            hook: hook.as_str().to_owned(),
            packets: c.packets,
            bytes: c.bytes,
        })
        .collect();
    Json(rows).into_response()
}

async fn nodeport_xdp(State(state): State<ApiState>) -> Response {
    let stats = match lock(&state.dataplane).nodeport_xdp_stats() {
        Ok(s) => s,
        Err(e) => return unavailable(e),
    };
    let rows: Vec<VerdictEntry> = stats
        .iter()
        .map(|(verdict, c)| VerdictEntry {
            verdict: coxswain_ebpf_common::nodeport_verdict::name(*verdict).to_owned(),
            packets: c.packets,
            bytes: c.bytes,
        })
        .collect();
    Json(rows).into_response()
}

/// Interface names by index, from sysfs of the agent's network namespace.
pub fn iface_names() -> BTreeMap<u32, String> {
    let Ok(dir) = std::fs::read_dir("/sys/class/net") else {
        return BTreeMap::new();
    };
    dir.flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let index = std::fs::read_to_string(entry.path().join("ifindex")).ok()?;
            Some((index.trim().parse().ok()?, name))
        })
        .collect()
}
