//! Liveness, readiness and startup probes (exec, httpGet, tcpSocket) with
//! their timing fields, run by one task per container. Results land in a
//! shared [`ProbeResults`] and wake the pod's worker.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::{Container, Probe},
    apimachinery::pkg::util::intstr::IntOrString,
};
use tokio::{io::{AsyncReadExt, AsyncWriteExt}, net::TcpStream, sync::Notify};

use crate::cri::Cri;

/// What the probes of one container concluded so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeState {
    /// The startup probe passed (or there is none).
    pub started: bool,
    /// The readiness probe passes (or there is none and the container started).
    pub ready: bool,
    /// The liveness or startup probe failed `failureThreshold` times in a row:
    /// the container must be restarted.
    pub unhealthy: bool,
}

/// Probe results by container id.
pub type ProbeResults = Arc<Mutex<HashMap<String, ProbeState>>>;

/// Where probes connect to.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    /// The CRI client (exec probes).
    pub cri: Cri,
    /// The container id.
    pub container_id: String,
    /// The address httpGet and tcpSocket probes use when they name no host
    /// (the pod IP; the node's address for hostNetwork pods).
    pub address: String,
}

/// The outcome of one probe run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The probe passed.
    Success,
    /// The probe failed, with why.
    Failure(String),
}

fn secs(v: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(v.unwrap_or(default).max(0) as u64)
}

fn port(c: &Container, p: &IntOrString) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name))
            .and_then(|cp| u16::try_from(cp.container_port).ok())
            .ok_or_else(|| format!("container has no port named {name:?}")),
    }
}

/// Runs a probe once.
pub async fn run_once(probe: &Probe, c: &Container, target: &ProbeTarget) -> Outcome {
    let timeout = secs(probe.timeout_seconds, 1).max(Duration::from_secs(1));
    if let Some(exec) = &probe.exec {
        let cmd = exec.command.clone().unwrap_or_default();
        return match target.cri.exec_sync(&target.container_id, cmd, timeout).await {
            Ok((0, _, _)) => Outcome::Success,
            Ok((code, out, err)) => Outcome::Failure(format!(
                "exit code {code}: {}{}",
                String::from_utf8_lossy(&out).trim(),
                String::from_utf8_lossy(&err).trim()
            )),
            Err(e) => Outcome::Failure(e.message()),
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = match port(c, &tcp.port) {
            Ok(p) => p,
            Err(e) => return Outcome::Failure(e),
        };
        let host = tcp.host.clone().unwrap_or_else(|| target.address.clone());
        return match tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port))).await {
            Ok(Ok(_)) => Outcome::Success,
            Ok(Err(e)) => Outcome::Failure(format!("dial tcp {host}:{port}: {e}")),
            Err(_) => Outcome::Failure(format!("dial tcp {host}:{port}: timeout after {timeout:?}")),
        };
    }
    if let Some(http) = &probe.http_get {
        let port = match port(c, &http.port) {
            Ok(p) => p,
            Err(e) => return Outcome::Failure(e),
        };
        if http.scheme.as_deref() == Some("HTTPS") {
            return Outcome::Failure("HTTPS probes are not supported yet".into());
        }
        let host = http.host.clone().unwrap_or_else(|| target.address.clone());
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/coxswain\r\nAccept: */*\r\nConnection: close\r\n"
        );
        for h in http.http_headers.iter().flatten() {
            req.push_str(&format!("{}: {}\r\n", h.name, h.value));
        }
        req.push_str("\r\n");
        let attempt = async {
            let mut s = TcpStream::connect((host.as_str(), port)).await?;
            s.write_all(req.as_bytes()).await?;
            let mut buf = vec![0u8; 1024];
            let mut n = 0;
            while n < 12 {
                let r = s.read(&mut buf[n..]).await?;
                if r == 0 {
                    break;
                }
                n += r;
            }
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf[..n]).into_owned())
        };
        return match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(head)) => {
                let code: Option<u16> = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok());
                match code {
                    Some(c) if (200..400).contains(&c) => Outcome::Success,
                    Some(c) => Outcome::Failure(format!("HTTP probe failed with statuscode: {c}")),
                    None => Outcome::Failure(format!("malformed HTTP response: {head:?}")),
                }
            }
            Ok(Err(e)) => Outcome::Failure(format!("Get http://{host}:{port}{path}: {e}")),
            Err(_) => Outcome::Failure(format!(
                "Get http://{host}:{port}{path}: timeout after {timeout:?}"
            )),
        };
    }
    Outcome::Failure("probe has no handler (exec, httpGet or tcpSocket)".into())
}

fn update(results: &ProbeResults, id: &str, wake: &Notify, f: impl FnOnce(&mut ProbeState)) {
    let mut map = results.lock().unwrap_or_else(|e| e.into_inner());
    let state = map.entry(id.to_owned()).or_insert(ProbeState {
        started: false,
        ready: false,
        unhealthy: false,
    });
    let before = *state;
    f(state);
    if *state != before {
        wake.notify_one();
    }
}

/// Where failed probe runs are told (upstream's `Unhealthy` Events, one per failed run).
#[derive(Debug, Clone)]
pub struct ProbeEvents {
    /// The kubelet's Event queue.
    pub queue: crate::events::EventQueue,
    /// The pod the container belongs to.
    pub pod: k8s_openapi::api::core::v1::Pod,
}

impl ProbeEvents {
    fn failed(&self, c: &Container, kind: &str, why: &str) {
        self.queue.pod(
            &self.pod,
            Some(&c.name),
            coxswain_runtime::events::EventType::Warning,
            crate::events::reason::UNHEALTHY,
            format!("{kind} probe failed: {why}"),
        );
    }
}

/// Runs `probe` until the task is aborted, calling `on_result(passed)` with
/// each threshold-crossing verdict and `on_failure(why)` with every failed run.
async fn probe_loop(
    probe: &Probe,
    c: &Container,
    target: &ProbeTarget,
    on_failure: impl Fn(&str),
    mut on_result: impl FnMut(bool) -> bool,
) {
    tokio::time::sleep(secs(probe.initial_delay_seconds, 0)).await;
    let period = secs(probe.period_seconds, 10).max(Duration::from_secs(1));
    let success_threshold = probe.success_threshold.unwrap_or(1).max(1);
    let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1);
    let (mut successes, mut failures) = (0, 0);
    loop {
        match run_once(probe, c, target).await {
            Outcome::Success => {
                successes += 1;
                failures = 0;
                if successes >= success_threshold && !on_result(true) {
                    return;
                }
            }
            Outcome::Failure(why) => {
                tracing::debug!(container = %c.name, %why, "probe failed");
                on_failure(&why);
                failures += 1;
                successes = 0;
                if failures >= failure_threshold && !on_result(false) {
                    return;
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

/// Runs the probes of one container until aborted: the startup probe first,
/// then liveness and readiness side by side.
pub async fn run_container_probes(
    c: Container,
    target: ProbeTarget,
    results: ProbeResults,
    wake: Arc<Notify>,
    events: ProbeEvents,
) {
    let id = target.container_id.clone();
    if let Some(startup) = &c.startup_probe {
        let mut started = false;
        probe_loop(startup, &c, &target, |why| events.failed(&c, "Startup", why), |ok| {
            started = ok;
            if !ok {
                update(&results, &id, &wake, |s| s.unhealthy = true);
            }
            false
        })
        .await;
        if !started {
            return;
        }
    }
    update(&results, &id, &wake, |s| {
        s.started = true;
        if c.readiness_probe.is_none() {
            s.ready = true;
        }
    });
    let liveness = async {
        if let Some(p) = &c.liveness_probe {
            probe_loop(p, &c, &target, |why| events.failed(&c, "Liveness", why), |ok| {
                if !ok {
                    update(&results, &id, &wake, |s| s.unhealthy = true);
                }
                ok
            })
            .await;
        }
    };
    let readiness = async {
        if let Some(p) = &c.readiness_probe {
            probe_loop(p, &c, &target, |why| events.failed(&c, "Readiness", why), |ok| {
                update(&results, &id, &wake, |s| s.ready = ok);
                true
            })
            .await;
        }
    };
    tokio::join!(liveness, readiness);
}
